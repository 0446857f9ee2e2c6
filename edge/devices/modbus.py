"""Modbus RTU instruments on RS-485: the bus poller that feeds the core, their config.

The furnaces' meters hang on an RS-485 bus: a three-phase power meter on the heater feed and
mass-flow meters on the H2 and Ar lines. This module polls them over Modbus RTU
(``minimalmodbus`` over pyserial) and does two things with what they say:

- *gauges* (power, flow, phase voltages and currents) go into the core as injected channels,
  stamped with the core clock when the answer arrived. The core marks a channel STALE when no
  value came within its max age, so a meter that went quiet is seen, never trusted;
- *counters* (energy in kWh, gas totalisers in normal litres) are handed to the batch
  accounting as :class:`CounterSample` records (``ModbusBus.drain_samples``), with the modulus
  at which the meter's register wraps, so the accounting can take differences across a wrap.

Register maps (the built-in ``sdm630`` and ``reedge_mfc`` profiles, and ``custom`` maps) are described and
defined in :mod:`edge.devices.modbus_map`.

A *status* register (``kind = "status"``, also usable in a custom map) vouches for the other
readings of its instrument: nonzero injects every gauge of the round as FAULT and hands its
counters to the accounting as NaN ("not trusted now": the batch figure is then marked incomplete);
a round whose status could not be read injects nothing. Status blocks are
read first in each round for that reason.

In the station file::

    [instruments.heater_meter]
    type = "modbus"
    port = "/dev/serial/by-id/usb-FTDI_USB-RS485_Cable-if00-port0"
    address = 1
    profile = "sdm630"
    baud = 9600
    poll_ms = 500
    channels = { power_w = "heater_power" }      # measurement = injected core channel
    rollover = { energy_kwh = 1000000.0 }        # optional: where a float counter wraps

    [instruments.mfc_custom]                      # a vendor map, register by register
    type = "modbus"
    port = "/dev/ttyUSB1"
    address = 7
    profile = "custom"
    channels = { flow = "ar_flow" }
    [instruments.mfc_custom.registers.flow]
    function = 4
    address = 0x20
    type = "float32"
    word_order = "little"                         # low word first
    unit = "NL/min"

Timestamps: a meter answers with its latest reading, so the reading is at most one answer's
line time old when the answer's last byte arrives (tens of ms at 9600 Bd), far below any
channel's max age; the poller's own clock is not the core's (in the HIL rig the core runs on
the plant's clock), so the core's ``now_ns()`` is read when the answer is in.

What is counted, per instrument (:class:`InstrumentCounters`): ``minimalmodbus`` raises
``NoResponseError`` when not one byte came back in time (a timeout: the meter is silent or
absent), a ``SlaveReportedException`` for a Modbus exception response, and
``InvalidResponseError`` for everything else. Its exceptions carry no bytes, so the port keeps
the last answer read: an answer of the expected length whose CRC does not match was corrupted
on the line (``crc_errors``); shorter, or from another address or function, is ``malformed``.
None of them is ever injected. A port that fails (adapter unplugged, pty closed) is reopened
with back-off; meanwhile the channels go STALE. Two costs of the library, accepted: an exception
answer holds the bus for the request's whole timeout (minimalmodbus waits for the length a normal
answer would have), and RTU has no transaction id, so the input buffer is flushed before each
request: an answer that comes after its timeout is dropped there, never taken for the next one
(unless it arrives in the instant between that flush and the next answer).

Why one ``serial.Serial`` per port, opened here: ``minimalmodbus`` shares a port between
instruments through a process-wide table keyed by the port name, opened at 19200 Bd and reopened
behind the caller's back; an ``Instrument`` also accepts an open ``serial.Serial`` (2.1), which
lets one thread own the port, its settings, its reopening, and the one transaction at a time
that an RS-485 bus allows.
"""

from __future__ import annotations

import enum
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import TracebackType
from typing import Any, cast

import minimalmodbus  # type: ignore[import-untyped]  # no py.typed marker in 2.1.1
import serial  # type: ignore[import-untyped]  # no stubs for pyserial 3.5 in the venv

from edge.core import ChannelStatus, CoreError
from edge.devices.modbus_map import (
    _FORMATS,
    ANSWER_OVERHEAD_BYTES,
    CUSTOM,
    FUNCTIONS,
    KINDS,
    PROFILE_NAMES,
    PROFILES,
    REGISTER_TYPES,
    REQUEST_BYTES,
    WORD_ORDERS,
    Block,
    MeasurementKind,
    Register,
    RegisterType,
    WordOrder,
    default_rollover,
    plan_blocks,
)
from edge.devices.pfeiffer import PARITIES, STANDARD_BAUDS, InjectTarget
from edge.devices.serial_device import SerialDevice
from edge.spec.reader import describe, did_you_mean, join, unknown

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- config


@dataclass(frozen=True)
class ModbusConfig:
    """One instrument (one slave address) on a serial port. Times in ms, as in the station file."""

    port: str                         # a stable name: /dev/serial/by-id/... or a udev symlink
    address: int                      # 1..247
    profile: str                      # "sdm630", "reedge_mfc" or "custom"
    registers: Mapping[str, Register]  # the map in use: a built-in profile's (with rollover settings) or custom
    channels: Mapping[str, str] = field(default_factory=dict)  # measurement -> injected core channel
    baud: int = 9600
    bytesize: int = 8
    parity: str = "N"                 # N, E or O; instruments sharing a port must agree
    stopbits: int = 1
    poll_ms: float = 1000.0           # start to start of one round of this instrument's requests
    timeout_ms: float = 200.0         # per request: the whole answer must be in by then
    reconnect_max_ms: float = 5000.0  # reopen back-off doubles from 100 ms up to this

    @property
    def serial_settings(self) -> tuple[int, str, int, int]:
        return self.baud, self.parity, self.bytesize, self.stopbits

    def blocks(self) -> tuple[Block, ...]:
        return plan_blocks(self.registers)

    def answer_time_ms(self, registers: int) -> float:
        """Line time of one read request plus its answer carrying ``registers`` registers."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        chars = REQUEST_BYTES + ANSWER_OVERHEAD_BYTES + 2 * registers
        return chars * bits * 1000.0 / self.baud


KEYS = ("type", "port", "address", "profile", "channels", "registers", "rollover", "baud", "bytesize", "parity",
        "stopbits", "poll_ms", "timeout_ms", "reconnect_max_ms")
REGISTER_KEYS = ("function", "address", "type", "word_order", "scale", "unit", "kind", "rollover")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}")
_UNIT = re.compile(r"[^\s\x00-\x1f\x7f]{1,16}")
_NAME_HELP = "a lowercase letter, then lowercase letters, digits or _, at most 31"


class _Reader:
    """Typed getters for one table that note every problem as ``key.path: message`` and go on."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def bad(self, path: str, key: str, message: str) -> None:
        self.problems.append(f"{join(path, key)}: {message}")

    def keys(self, table: Mapping[str, object], path: str, allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                self.bad(path, key, f"unknown key{did_you_mean(key, allowed)} (expected: {', '.join(allowed)})")

    def number(self, table: Mapping[str, object], path: str, key: str, lo: float, hi: float) -> float | None:
        if key not in table:
            return None
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            self.bad(path, key, f"expected a number from {lo:g} to {hi:g}, got {describe(v)}")
        elif not lo <= v <= hi:
            self.bad(path, key, f"expected a number from {lo:g} to {hi:g}, got {v:g}")
        else:
            return float(v)
        return None

    def positive(self, table: Mapping[str, object], path: str, key: str) -> float | None:
        if key not in table:
            return None
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            self.bad(path, key, f"expected a number > 0, got {describe(v)}")
            return None
        return float(v)

    def integer(self, table: Mapping[str, object], path: str, key: str, allowed: tuple[int, ...] | range,
                required: str = "") -> int | None:
        wanted = (f"{allowed.start} to {allowed.stop - 1}" if isinstance(allowed, range)
                  else ", ".join(map(str, allowed)))
        if key not in table:
            if required:
                self.bad(path, key, f"missing: expected {required} ({wanted})")
            return None
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, int):
            self.bad(path, key, f"expected an integer ({wanted}), got {describe(v)}")
        elif v not in allowed:
            self.bad(path, key, f"expected {wanted}, got {v}")
        else:
            return v
        return None

    def choice(self, table: Mapping[str, object], path: str, key: str, options: tuple[str, ...],
               required: str = "") -> str | None:
        listed = ", ".join(f'"{o}"' for o in options)
        if key not in table:
            if required:
                self.bad(path, key, f"missing: expected {required} ({listed})")
            return None
        v = table[key]
        if not isinstance(v, str):
            self.bad(path, key, f"expected one of {listed}, got {describe(v)}")
        elif v not in options:
            self.bad(path, key, f"expected one of {listed}, got \"{v}\"{did_you_mean(v, options)}")
        else:
            return v
        return None

    def table(self, table: Mapping[str, object], path: str, key: str, expected: str) -> Mapping[str, object] | None:
        if key not in table:
            return None
        v = table[key]
        if not isinstance(v, dict):
            self.bad(path, key, f"expected {expected}, got {describe(v)}")
            return None
        return cast("Mapping[str, object]", v)


def parse_modbus_instrument(table: Mapping[str, object], key_path: str) -> ModbusConfig:
    """``[instruments.NAME]`` with ``type = "modbus"`` -> config; ValueError names every bad key.

    Every problem is listed (one ``key.path: message`` per line), so a technician fixes the
    table in one pass. Whether the channels exist and whether instruments sharing a port agree
    is judged by the station reader (``edge.spec.station``), which sees them all.
    """
    problems: list[str] = []
    r = _Reader(problems)
    r.keys(table, key_path, KEYS)
    if table.get("type") != "modbus":
        kind = table.get("type")
        r.bad(key_path, "type", f"expected \"modbus\" ({'missing' if kind is None else 'got ' + describe(kind)})")
    values: dict[str, Any] = {}
    port = table.get("port")
    if not isinstance(port, str) or not port.strip():
        r.bad(key_path, "port", "missing: expected the serial device, e.g. \"/dev/ttyUSB0\"" if port is None
              else f"expected a serial device path, got {describe(port)}")
    else:
        values["port"] = port
    address = r.integer(table, key_path, "address", range(1, 248), required="the slave address")
    profile = r.choice(table, key_path, "profile", PROFILE_NAMES, required="the register map")
    for key, allowed in (("baud", STANDARD_BAUDS), ("bytesize", (7, 8)), ("stopbits", (1, 2))):
        if (v := r.integer(table, key_path, key, allowed)) is not None:
            values[key] = v
    if (parity := r.choice(table, key_path, "parity", tuple(PARITIES))) is not None:
        values["parity"] = parity
    for key, lo, hi in (("poll_ms", 20.0, 60_000.0), ("timeout_ms", 10.0, 10_000.0),
                        ("reconnect_max_ms", 100.0, 600_000.0)):
        if (n := r.number(table, key_path, key, lo, hi)) is not None:
            values[key] = n

    registers: dict[str, Register] | None = None
    if profile == CUSTOM:
        registers = _read_registers(r, table, key_path)
        if "rollover" in table:
            r.bad(key_path, "rollover", "with profile = \"custom\" a counter's rollover goes in its register "
                                        "table (registers.NAME.rollover)")
    elif profile is not None:
        registers = dict(PROFILES[profile])
        if "registers" in table:
            r.bad(key_path, "registers", f"only with profile = \"custom\": the {profile} map is built in "
                                         "(edge/devices/modbus.py)")
        _read_rollover(r, table, key_path, registers)
    channels = _read_channels(r, table, key_path, registers)

    if not problems and registers is not None and address is not None:
        cfg = ModbusConfig(address=address, profile=cast("str", profile), registers=registers, channels=channels,
                           **values)
        longest = max((b.count for b in cfg.blocks()), default=0)
        if cfg.timeout_ms > cfg.poll_ms:
            r.bad(key_path, "timeout_ms", f"{cfg.timeout_ms:g} ms is longer than poll_ms ({cfg.poll_ms:g} ms): "
                                          "a silent instrument would stretch every round")
        elif cfg.timeout_ms < 2 * cfg.answer_time_ms(longest):
            r.bad(key_path, "timeout_ms", f"{cfg.timeout_ms:g} ms is too short: at {cfg.baud} Bd a request and "
                                          f"its answer of {longest} registers take {cfg.answer_time_ms(longest):.0f} "
                                          "ms on the line (give at least twice that)")
        if not problems:
            return cfg
    raise ValueError("\n".join(problems))


def _read_registers(r: _Reader, table: Mapping[str, object], key_path: str) -> dict[str, Register] | None:
    """``[instruments.NAME.registers.MEAS]`` tables -> the custom map (None if any is broken)."""
    path = join(key_path, "registers")
    section = r.table(table, key_path, "registers", "[registers.NAME] tables (one per measurement)")
    if section is None:
        if "registers" not in table:
            r.bad(key_path, "registers", "missing: profile = \"custom\" needs [registers.NAME] tables, e.g. "
                                         "function = 4, address = 0, type = \"float32\"")
        return None
    if not section:
        r.bad(key_path, "registers", "empty: declare at least one [registers.NAME] table")
        return None
    found: dict[str, Register] = {}
    broken = False
    for name, entry in section.items():
        reg = _read_register(r, entry, path, name)
        if reg is None:
            broken = True
            continue
        for other_name, other in found.items():
            if other.function == reg.function and (other.address < reg.address + reg.words
                                                   and reg.address < other.address + other.words):
                r.bad(join(path, name), "address", f"register {reg.address} overlaps {other_name} "
                                                   f"(function {other.function}, {other.address})")
                broken = True
        found[name] = reg
    return None if broken else found


def _read_register(r: _Reader, entry: object, path: str, name: str) -> Register | None:
    before = len(r.problems)
    if not _NAME.fullmatch(name):
        r.bad(path, name, f"bad measurement name: {_NAME_HELP}")
    if not isinstance(entry, dict):
        r.bad(path, name, f"expected a table [{join(path, name)}], got {describe(entry)}")
        return None
    t = cast("Mapping[str, object]", entry)
    at = join(path, name)
    r.keys(t, at, REGISTER_KEYS)
    function = r.integer(t, at, "function", FUNCTIONS, required="the read function (3 holding, 4 input)")
    address = r.integer(t, at, "address", range(0, 65536), required="the 0-based register address")
    type_ = cast("RegisterType | None", r.choice(t, at, "type", REGISTER_TYPES, required="the encoding"))
    order = cast("WordOrder", r.choice(t, at, "word_order", WORD_ORDERS) or "big")
    kind = cast("MeasurementKind", r.choice(t, at, "kind", KINDS) or "gauge")
    scale = r.number(t, at, "scale", -1e12, 1e12)
    if scale is not None and (scale == 0 or (kind == "counter" and scale < 0)):
        r.bad(at, "scale", "a counter's scale must be > 0" if kind == "counter" else "a scale of 0 reads nothing")
    unit = t.get("unit", "")
    if not isinstance(unit, str) or (unit and not _UNIT.fullmatch(unit)):
        r.bad(at, "unit", f"expected a unit of at most 16 characters without spaces, got {describe(unit)}")
    rollover = r.positive(t, at, "rollover")
    if "rollover" in t and kind != "counter":
        r.bad(at, "rollover", f"only counters wrap (this is a {kind}: set kind = \"counter\")")
    if kind == "status" and type_ == "float32":
        r.bad(at, "type", "a status word is an integer (uint16, int16, uint32 or int32)")
    if type_ is not None and address is not None and address + _FORMATS[type_][0] > 65536:
        r.bad(at, "address", f"a {type_} at {address} runs past register 65535")
    if len(r.problems) != before or function is None or address is None or type_ is None:
        return None
    scale = 1.0 if scale is None else scale
    if kind == "counter" and rollover is None:
        rollover = default_rollover(type_, scale)
    return Register(function, address, type_, order, scale, cast("str", unit), kind,
                    rollover if kind == "counter" else None)


def _read_rollover(r: _Reader, table: Mapping[str, object], key_path: str, registers: dict[str, Register]) -> None:
    """``rollover = { MEAS = modulus }`` for a built-in profile's counters."""
    section = r.table(table, key_path, "rollover", "a table: counter = modulus, e.g. { energy_kwh = 1000000.0 }")
    if section is None:
        return
    path = join(key_path, "rollover")
    counters = [n for n, reg in registers.items() if reg.kind == "counter"]
    for name in section:
        if name not in counters:
            r.bad(path, name, unknown("counter", name, counters))
        elif (modulus := r.positive(section, path, name)) is not None:
            registers[name] = replace(registers[name], rollover=modulus)


def _read_channels(r: _Reader, table: Mapping[str, object], key_path: str,
                   registers: Mapping[str, Register] | None) -> dict[str, str]:
    """``channels = { MEAS = "core_channel" }``: which measurements are injected, and where."""
    section = r.table(table, key_path, "channels", "a table: measurement = \"injected core channel\"")
    if section is None:
        return {}
    path = join(key_path, "channels")
    found: dict[str, str] = {}
    fed: dict[str, str] = {}
    for meas, target in section.items():
        if registers is not None and meas not in registers:
            r.bad(path, meas, unknown("measurement", meas, registers))
            continue
        if registers is not None and registers[meas].kind == "status":
            r.bad(path, meas, "a status word is not a value: it marks the instrument's other values FAULT")
            continue
        if not isinstance(target, str) or not _NAME.fullmatch(target):
            r.bad(path, meas, f"expected a core channel name ({_NAME_HELP}), got {describe(target)}")
        elif target in fed:
            r.bad(path, meas, f"channel '{target}' is already fed by {fed[target]} of this instrument")
        else:
            fed[target] = meas
            found[meas] = target
    return found


def shared_port_problems(configs: Sequence[tuple[str, ModbusConfig]]) -> list[tuple[str, str, str]]:
    """(instrument, key, message) for instruments on one port with other serial settings or the same address.

    One port is one bus: one baud rate, one character format, and each slave address once.
    """
    problems: list[tuple[str, str, str]] = []
    first: dict[str, tuple[str, ModbusConfig]] = {}
    addresses: dict[tuple[str, int], str] = {}
    for name, cfg in configs:
        if cfg.port not in first:
            first[cfg.port] = (name, cfg)
        else:
            owner, ref = first[cfg.port]
            for key, mine, theirs in zip(("baud", "parity", "bytesize", "stopbits"), cfg.serial_settings,
                                         ref.serial_settings, strict=True):
                if mine != theirs:
                    problems.append((name, key, f"{mine} but instruments.{owner} on the same port {cfg.port} has "
                                                f"{theirs}: instruments on one bus share baud, parity, bytesize and "
                                                "stopbits"))
        other = addresses.setdefault((cfg.port, cfg.address), name)
        if other != name:
            problems.append((name, "address", f"{cfg.address} is already instruments.{other} on {cfg.port}: "
                                              "each slave on a bus needs its own address"))
    return problems


# ---------------------------------------------------------------- poller


@dataclass(frozen=True)
class CounterSample:
    """One good reading of a counter, for the batch accounting."""

    instrument: str
    measurement: str
    t_ns: int                  # core clock when the answer arrived
    value: float               # scaled (kWh, NL, ...)
    rollover: float | None     # the modulus the reading wraps at (None: it does not wrap)


@dataclass(frozen=True)
class InstrumentCounters:
    """A snapshot for telemetry. Every request that did not give a usable answer is in one of these."""

    polls: int = 0                # read requests sent
    good: int = 0                 # valid answers
    timeouts: int = 0             # not one byte of an answer in time
    crc_errors: int = 0           # an answer of the expected length with a wrong CRC: corrupted on the line
    exceptions: int = 0           # Modbus exception responses
    last_exception_code: int = 0  # 1 illegal function, 2 illegal data address, 3 illegal data value, 4 failure...
    malformed: int = 0            # truncated, another address or function, a wrong byte count
    bad_values: int = 0           # NaN or infinite floats (injected as FAULT, never sampled)
    injected: int = 0             # values pushed into the core (OK or FAULT)
    samples: int = 0              # counter samples queued for the accounting
    samples_dropped: int = 0      # queued samples dropped because nobody drained them
    port_lost: int = 0            # the port failed under us (unplugged adapter, closed pty)
    open_failures: int = 0        # attempts to (re)open that failed
    reconnects: int = 0           # successful re-opens after a loss
    inject_refused: int = 0       # the core refused a value (should stay 0)
    internal_errors: int = 0      # unexpected errors in the poller (logged; the port is reopened)
    connected: bool = False
    device_fault: bool = False    # the last status word read was nonzero
    last_error: str = ""
    last_good_t_ns: int = 0       # core clock of the last valid answer (0: none yet)


RECONNECT_MIN_S = 0.1
_LINE_FIELDS = ("port_lost", "open_failures", "reconnects", "connected")   # the port worker's, not the instrument's
MAX_PENDING_SAMPLES = 10_000  # counter samples kept for a controller that stopped draining


class _Failure(enum.Enum):
    SILENT = "silent"   # no answer at all: skip the rest of the round, the bus has others to serve
    BAD = "bad"         # an answer that cannot be used: the device is talking, go on


class _Port(serial.Serial):  # type: ignore[misc]  # pyserial is untyped: Serial is Any to mypy
    """The bus's serial port, keeping the last bytes read: minimalmodbus's errors do not carry them."""

    last_read: bytes = b""

    def read(self, size: int = 1) -> bytes:
        data = cast("bytes", super().read(size))
        self.last_read = data
        return data


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS (reflected polynomial 0xA001, start 0xFFFF); on the wire low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


@dataclass
class _Poll:
    """One instrument as its port's thread sees it."""

    name: str
    config: ModbusConfig
    blocks: tuple[Block, ...]
    due: float = 0.0           # monotonic time of its next round
    instrument: Any = None     # minimalmodbus.Instrument on the open port
    fault: bool = False
    errored: bool = False      # an unexpected error was logged for it, and no round of it completed since
    backoff_s: float = RECONNECT_MIN_S   # its wait after an unexpected error: doubles while they repeat


class ModbusBus:
    """Polls Modbus RTU instruments, one thread per serial port, and feeds the core and the accounting.

    On each port one request is on the line at a time; each instrument has its own ``poll_ms``,
    and the instrument due earliest goes next. A round reads the instrument's blocks, injects its
    gauges (OK, or FAULT for a NaN or a device fault) and queues its counters; a request that
    times out ends the round (the rest would time out too and hold up the bus). Bad answers,
    timeouts and a lost port are counted, never injected; the port is reopened with back-off.
    """

    def __init__(self, core: InjectTarget, configs: Sequence[tuple[str, ModbusConfig]], *,
                 max_samples: int = MAX_PENDING_SAMPLES) -> None:
        names = [n for n, _ in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"instrument names must be unique, got {', '.join(names)}")
        for name, cfg in configs:
            missing = [c for c in cfg.channels.values() if c not in core.channel_names]
            if missing:
                raise ValueError(f"instrument {name}: channel(s) {', '.join(missing)} are not channels of the core "
                                 f"(known: {', '.join(core.channel_names)})")
        problems = shared_port_problems(configs)
        if problems:
            raise ValueError("\n".join(f"instruments.{n}.{k}: {m}" for n, k, m in problems))
        self.core = core
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, Any]] = {
            n: {f.name: f.default for f in fields(InstrumentCounters) if f.name not in _LINE_FIELDS} for n in names}
        self._samples: deque[CounterSample] = deque()
        self._max_samples = max_samples
        by_port: dict[str, list[_Poll]] = {}
        for name, cfg in configs:
            by_port.setdefault(cfg.port, []).append(_Poll(name, cfg, cfg.blocks()))
        self._workers = [_PortWorker(self, port, polls) for port, polls in by_port.items()]
        self._started = False

    # ---- life cycle ----

    def start(self) -> None:
        if self._started:
            raise RuntimeError("bus already started")
        self._started = True
        for worker in self._workers:
            worker.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop polling and close the ports: the read on the line is cancelled, so this is prompt."""
        for worker in self._workers:
            worker.request_stop()
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> ModbusBus:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return any(w.alive for w in self._workers)

    def counters(self) -> dict[str, InstrumentCounters]:
        """Each instrument's counters; those of its port (opens, losses, connected) are its port worker's."""
        lines = {p.name: w.line_counters() for w in self._workers for p in w.polls}
        with self._lock:
            return {n: InstrumentCounters(**c, **{k: getattr(lines[n], k) for k in _LINE_FIELDS})
                    for n, c in self._counts.items()}

    def drain_samples(self) -> list[CounterSample]:
        """Every counter sample since the last call, oldest first (the controller's thread calls this)."""
        with self._lock:
            out = list(self._samples)
            self._samples.clear()
        return out

    # ---- for the port workers ----

    def _count(self, name: str, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name][key] += n

    def _set(self, name: str, **kw: Any) -> None:
        with self._lock:
            self._counts[name].update(kw)

    def _sample(self, sample: CounterSample) -> None:
        with self._lock:
            if len(self._samples) >= self._max_samples:
                dropped = self._samples.popleft()
                self._counts[dropped.instrument]["samples_dropped"] += 1
            self._samples.append(sample)
            self._counts[sample.instrument]["samples"] += 1

    def _inject(self, name: str, channel: str, value: float, status: ChannelStatus, t_ns: int) -> None:
        try:
            self.core.inject(channel, value, status, t_ns)
        except (CoreError, KeyError) as e:
            self._count(name, "inject_refused")
            self._set(name, last_error=f"core refused {channel} = {value!r}: {e}")
            log.warning("instrument %s: core refused %s = %r: %s", name, channel, value, e)
            return
        self._count(name, "injected")


class _PortWorker(SerialDevice[_Port]):
    """One serial port, the instruments on it, and the thread that owns both (:class:`SerialDevice`)."""

    def __init__(self, bus: ModbusBus, path: str, polls: list[_Poll]) -> None:
        super().__init__(f"modbus {path}", path, backoff_min_s=RECONNECT_MIN_S,
                         backoff_max_s=max(RECONNECT_MIN_S, min(p.config.reconnect_max_ms for p in polls) / 1000.0))
        self.bus = bus
        self.path = path
        self.polls = polls
        self.settings = polls[0].config
        self._current: _Poll | None = None   # the instrument whose round is on the line

    def _open_port(self) -> _Port:
        cfg = self.settings
        port = _Port(port=self.path, baudrate=cfg.baud, bytesize=cfg.bytesize, parity=PARITIES[cfg.parity],
                     stopbits=cfg.stopbits, timeout=cfg.timeout_ms / 1000.0, write_timeout=1.0, exclusive=True)
        now = time.monotonic()
        for poll in self.polls:
            instrument = minimalmodbus.Instrument(port, poll.config.address)
            instrument.clear_buffers_before_each_transaction = True   # a late answer or noise is not the next answer
            poll.instrument = instrument
            poll.due = max(poll.due, now) if poll.errored else now   # one that failed keeps its wait
        return port

    def _exchange(self, port: _Port) -> float:
        """The round of the instrument due earliest, or the wait until it is due."""
        poll = min(self.polls, key=lambda p: p.due)
        wait = poll.due - time.monotonic()
        if wait > 0:
            return wait
        self._current = poll
        try:
            self._round(port, poll)
        except CoreError as e:   # the core is closing under us: nothing to feed
            self.bus._set(poll.name, last_error=f"core: {e}")
        self._current = None
        poll.errored, poll.backoff_s = False, RECONNECT_MIN_S
        poll.due = max(poll.due + poll.config.poll_ms / 1000.0, time.monotonic())
        return 0.0

    def _note(self, text: str) -> None:
        super()._note(text)
        for poll in self.polls:
            self.bus._set(poll.name, last_error=text)

    def _unexpected(self, error: Exception) -> str | None:
        """Counted against the instrument whose round failed, which waits its back-off: the others go on."""
        poll, self._current = self._current, None
        if poll is None:
            return super()._unexpected(error)
        self.bus._count(poll.name, "internal_errors")
        self.bus._set(poll.name, last_error=f"unexpected {type(error).__name__}: {error}")
        poll.due = time.monotonic() + max(poll.config.poll_ms / 1000.0, poll.backoff_s)
        poll.backoff_s = min(poll.backoff_s * 2, self.backoff_max_s)
        first, poll.errored = not poll.errored, True
        return f"instrument {poll.name}" if first else None

    def _round(self, port: _Port, poll: _Poll) -> None:
        """Read an instrument's blocks and use them. Port errors propagate (the caller reopens)."""
        for block in poll.blocks:
            if self.stopping:
                return
            answer = self._read(port, poll, block)
            if answer is _Failure.SILENT or (isinstance(answer, _Failure) and block.has_status):
                return   # a silent device, or no fresh status word: nothing more of this round is used
            if not isinstance(answer, _Failure):
                self._use(poll, block, *answer)

    def _use(self, poll: _Poll, block: Block, words: list[int], t_ns: int) -> None:
        values = block.values(words)
        statuses = [values[n] for n, r in block.measurements if r.kind == "status"]
        if statuses:
            fault = any(v != 0 for v in statuses)
            if fault != poll.fault:
                log.warning("instrument %s: device %s (status %s)", poll.name, "FAULT" if fault else "healthy",
                            ", ".join(f"{int(v)}" for v in statuses))
            poll.fault = fault
            self.bus._set(poll.name, device_fault=fault)
        for name, reg in block.measurements:
            if reg.kind == "status":
                continue
            value = values[name]
            finite = math.isfinite(value)
            if not finite:
                self.bus._count(poll.name, "bad_values")
                self.bus._set(poll.name, last_error=f"{name} read {value!r}")
            channel = poll.config.channels.get(name)
            if channel is not None:
                if finite and not poll.fault:
                    self.bus._inject(poll.name, channel, value, ChannelStatus.OK, t_ns)
                else:
                    self.bus._inject(poll.name, channel, math.nan, ChannelStatus.FAULT, t_ns)
            if reg.kind == "counter":
                # a faulted meter's or a non-finite count goes to the accounting as NaN: "not trusted now"
                # (withheld, the accounting would bridge the fault with the totaliser and call it whole)
                good = finite and not poll.fault
                self.bus._sample(CounterSample(poll.name, name, t_ns, value if good else math.nan, reg.rollover))

    def _read(self, port: _Port, poll: _Poll, block: Block) -> tuple[list[int], int] | _Failure:
        """One request and its answer: (registers, core ns at arrival), or why not (counted)."""
        timeout_s = poll.config.timeout_ms / 1000.0
        if port.timeout != timeout_s:
            port.timeout = timeout_s
        port.last_read = b""
        self.bus._count(poll.name, "polls")
        name = poll.name
        try:
            words = poll.instrument.read_registers(block.start, block.count, functioncode=block.function)
        except minimalmodbus.NoResponseError:
            if not self.stopping:
                self.bus._count(name, "timeouts")
                self.bus._set(name, last_error=f"no answer from address {poll.config.address} within "
                                               f"{poll.config.timeout_ms:g} ms")
            return _Failure.SILENT
        except minimalmodbus.SlaveReportedException as e:
            raw = port.last_read
            code = raw[2] if len(raw) >= 3 and raw[1] & 0x80 else 0
            self.bus._count(name, "exceptions")
            self.bus._set(name, last_exception_code=code, last_error=f"exception {code} for registers "
                                                                     f"{block.start}+{block.count}: {e}")
            return _Failure.BAD
        except (minimalmodbus.ModbusException, ValueError) as e:   # InvalidResponseError, mostly
            if self.stopping:
                return _Failure.SILENT
            raw = port.last_read
            expected = ANSWER_OVERHEAD_BYTES + 2 * block.count
            corrupted = len(raw) == expected and crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little")
            self.bus._count(name, "crc_errors" if corrupted else "malformed")
            self.bus._set(name, last_error=f"{'CRC error' if corrupted else 'unusable answer'}: {e}")
            return _Failure.BAD
        t_ns = self.bus.core.now_ns()
        self.bus._count(name, "good")
        self.bus._set(name, last_good_t_ns=t_ns)
        return [int(w) for w in words], t_ns
