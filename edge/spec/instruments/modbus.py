"""``[instruments.NAME]`` with ``type = "modbus"``: one Modbus RTU instrument, and the register maps.

The bus poller is ``edge.devices.modbus`` (its docstring shows the maps and a station-file example); this is
what the station file says about an instrument, the built-in register maps and how a map is read in blocks.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from edge.spec.instruments.pfeiffer import PARITY_LETTERS, SERIAL_DEVICE, STANDARD_BAUDS  # (registers pfeiffer first)
from edge.spec.instruments.registry import register
from edge.spec.reader import Table, choice, exact, integer_in, matching, number_in, one_of_ints, unknown

__all__ = [
    "ANSWER_OVERHEAD_BYTES",
    "CUSTOM",
    "PROFILES",
    "PROFILE_NAMES",
    "Block",
    "MeasurementKind",
    "ModbusConfig",
    "Register",
    "RegisterType",
    "WordOrder",
    "decode_words",
    "default_rollover",
    "plan_blocks",
    "read_modbus",
    "shared_port_problems",
]

RegisterType = Literal["float32", "uint32", "int32", "uint16", "int16"]
WordOrder = Literal["big", "little"]
MeasurementKind = Literal["gauge", "counter", "status"]

# words and the struct format of the big-endian bytes (Modbus sends each word high byte first)
_FORMATS: dict[str, tuple[int, str]] = {
    "float32": (2, ">f"), "uint32": (2, ">I"), "int32": (2, ">i"), "uint16": (1, ">H"), "int16": (1, ">h"),
}
REGISTER_TYPES: tuple[RegisterType, ...] = ("float32", "uint32", "int32", "uint16", "int16")
WORD_ORDERS: tuple[WordOrder, ...] = ("big", "little")
KINDS: tuple[MeasurementKind, ...] = ("gauge", "counter", "status")
FUNCTIONS = (3, 4)                 # read holding registers, read input registers
MAX_BLOCK_REGISTERS = 125          # the most one read request may ask for (Modbus application protocol)
REQUEST_BYTES = 8                  # address, function, start (2), count (2), CRC (2)
ANSWER_OVERHEAD_BYTES = 5          # address, function, byte count, CRC (2)


# ---------------------------------------------------------------- registers


@dataclass(frozen=True)
class Register:
    """One measurement of an instrument's map: where it is, how it is encoded, what it means."""

    function: int                 # 3 = holding registers, 4 = input registers
    address: int                  # 0-based, as on the wire
    type: RegisterType
    word_order: WordOrder = "big"  # "big": high word first; bytes within a word are always high first
    scale: float = 1.0            # value = raw * scale
    unit: str = ""
    kind: MeasurementKind = "gauge"
    rollover: float | None = None  # counters: the modulus at which the reading wraps, in the scaled unit

    @property
    def words(self) -> int:
        return _FORMATS[self.type][0]

    def decode(self, words: Sequence[int]) -> float:
        return float(decode_words(words, self.type, self.word_order)) * self.scale


def decode_words(words: Sequence[int], type_: RegisterType, word_order: WordOrder = "big") -> float | int:
    """The raw value of 16-bit register contents; ValueError if the word count does not fit the type."""
    n, fmt = _FORMATS[type_]
    if len(words) != n or any(not 0 <= w <= 0xFFFF for w in words):
        raise ValueError(f"{type_} takes {n} register(s) of 0..65535, got {list(words)}")
    ordered = list(words) if word_order == "big" else list(reversed(words))
    value: float | int = struct.unpack(fmt, struct.pack(f">{n}H", *ordered))[0]
    return value


def default_rollover(type_: RegisterType, scale: float) -> float | None:
    """An integer counter wraps at 2**bits raw counts; a float one has no modulus of its own."""
    if type_ == "float32":
        return None
    return float(2 ** (16 * _FORMATS[type_][0])) * abs(scale)


def _f32(address: int, unit: str, kind: MeasurementKind = "gauge") -> Register:
    return Register(4, address, "float32", unit=unit, kind=kind)


PROFILES: Mapping[str, Mapping[str, Register]] = {
    "sdm630": {
        "voltage_l1_v": _f32(0x0000, "V"),
        "voltage_l2_v": _f32(0x0002, "V"),
        "voltage_l3_v": _f32(0x0004, "V"),
        "current_l1_a": _f32(0x0006, "A"),
        "current_l2_a": _f32(0x0008, "A"),
        "current_l3_a": _f32(0x000A, "A"),
        "power_w": _f32(0x0034, "W"),
        "energy_kwh": _f32(0x0048, "kWh", "counter"),
    },
    "reedge_mfc": {
        "flow_nl_min": _f32(0x0000, "NL/min"),
        "total_nl": Register(4, 0x0002, "uint32", scale=0.001, unit="NL", kind="counter",
                             rollover=default_rollover("uint32", 0.001)),
        "status": Register(4, 0x0004, "uint16", kind="status"),
    },
}
CUSTOM = "custom"
PROFILE_NAMES = (*PROFILES, CUSTOM)


@dataclass(frozen=True)
class Block:
    """One read request: contiguous registers of one function code, and the measurements in them."""

    function: int
    start: int
    count: int
    measurements: tuple[tuple[str, Register], ...]

    @property
    def has_status(self) -> bool:
        return any(r.kind == "status" for _, r in self.measurements)

    def values(self, words: Sequence[int]) -> dict[str, float]:
        """Each measurement's scaled value from this block's answer."""
        if len(words) != self.count:
            raise ValueError(f"a block of {self.count} registers, got {len(words)}")
        return {name: r.decode(words[r.address - self.start:r.address - self.start + r.words])
                for name, r in self.measurements}


def plan_blocks(registers: Mapping[str, Register]) -> tuple[Block, ...]:
    """Fewest requests for a map: touching registers of one function share one (up to 125 registers).

    Gaps are never bridged (a device may answer exception 02 for a register it does not have).
    Blocks holding a status word come first: they decide whether the rest of the round is used.
    """
    blocks: list[Block] = []
    ordered = sorted(registers.items(), key=lambda item: (item[1].function, item[1].address))
    members: list[tuple[str, Register]] = []
    for name, reg in ordered:
        if members:
            first = members[0][1]
            end = max(r.address + r.words for _, r in members)
            if (reg.function == first.function and reg.address <= end
                    and max(end, reg.address + reg.words) - first.address <= MAX_BLOCK_REGISTERS):
                members.append((name, reg))
                continue
            blocks.append(_block(members))
        members = [(name, reg)]
    if members:
        blocks.append(_block(members))
    return tuple(sorted(blocks, key=lambda b: not b.has_status))


def _block(members: list[tuple[str, Register]]) -> Block:
    start = members[0][1].address
    end = max(r.address + r.words for _, r in members)
    return Block(members[0][1].function, start, end - start, tuple(members))


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
_NAME_HELP = "a lowercase letter, then lowercase letters, digits or _, at most 31"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}")
_measurement_name = matching(_NAME, f"expected {_NAME_HELP}")
_core_channel = matching(_NAME, f"expected a core channel name ({_NAME_HELP})")
_unit = matching(re.compile(r"[^\s\x00-\x1f\x7f]{0,16}"), "expected a unit of at most 16 characters without spaces")
_positive = number_in(0.0, lo_open=True)


def read_modbus(t: Table) -> ModbusConfig | None:
    """``[instruments.NAME]`` with ``type = "modbus"`` -> config; every problem is reported to ``t``.

    Whether the channels exist and whether instruments sharing a port agree is judged by the station
    reader (``edge.spec.station``), which sees them all."""
    t.need("type", exact("modbus", "the instrument type"), "\"modbus\"")
    port = t.need("port", SERIAL_DEVICE, "the serial device, e.g. \"/dev/ttyUSB0\"")
    address = t.need("address", integer_in(1, 247), "the slave address (1 to 247)")
    profile = t.need("profile", choice(PROFILE_NAMES), "the register map (" + ", ".join(PROFILE_NAMES) + ")")
    values: dict[str, Any] = {}
    for key, conv in (("baud", one_of_ints(STANDARD_BAUDS)), ("bytesize", one_of_ints((7, 8))),
                      ("stopbits", one_of_ints((1, 2))), ("parity", choice(PARITY_LETTERS)),
                      ("poll_ms", number_in(20.0, 60_000.0)), ("timeout_ms", number_in(10.0, 10_000.0)),
                      ("reconnect_max_ms", number_in(100.0, 600_000.0))):
        value = t.get(key, conv)
        if value is not None:
            values[key] = value

    registers: dict[str, Register] | None = None
    if profile == CUSTOM:
        registers = _read_registers(t)
        if t.has("rollover"):
            t.report("rollover", "with profile = \"custom\" a counter's rollover goes in its register table "
                                 "(registers.NAME.rollover)")
    elif profile is not None:
        registers = dict(PROFILES[profile])
        if t.has("registers"):
            t.report("registers", f"only with profile = \"custom\": the {profile} map is built in "
                                  "(edge/spec/instruments/modbus.py)")
        _read_rollover(t, registers)
    else:
        t.accept("registers", "rollover")   # a broken profile is the problem: these keys are not unknown
    channels = _read_channels(t, registers)
    t.finish()

    if not t.ok or registers is None or address is None or port is None or profile is None:
        return None
    cfg = ModbusConfig(port=port, address=address, profile=profile, registers=registers, channels=channels,
                       **values)
    longest = max((b.count for b in cfg.blocks()), default=0)
    if cfg.timeout_ms > cfg.poll_ms:
        t.report("timeout_ms", f"{cfg.timeout_ms:g} ms is longer than poll_ms ({cfg.poll_ms:g} ms): "
                               "a silent instrument would stretch every round")
    elif cfg.timeout_ms < 2 * cfg.answer_time_ms(longest):
        t.report("timeout_ms", f"{cfg.timeout_ms:g} ms is too short: at {cfg.baud} Bd a request and its answer "
                               f"of {longest} registers take {cfg.answer_time_ms(longest):.0f} ms on the line "
                               "(give at least twice that)")
    return cfg if t.ok else None


def _read_registers(t: Table) -> dict[str, Register] | None:
    """``[instruments.NAME.registers.MEAS]`` tables -> the custom map (None if any is broken)."""
    section = t.table("registers", expected="[registers.NAME] tables (one per measurement)")
    if section is None:
        if "registers" not in t.data:
            t.report("registers", "missing: profile = \"custom\" needs [registers.NAME] tables, e.g. "
                                  "function = 4, address = 0, type = \"float32\"")
        return None
    if not section.data:
        t.report("registers", "empty: declare at least one [registers.NAME] table")
        return None
    found: dict[str, Register] = {}
    broken = False
    for name, entry in section.named_tables(_measurement_name):
        reg = _read_register(entry) if entry is not None else None
        if reg is None or not section.ok:
            broken = True
            if reg is None:
                continue
        assert entry is not None
        for other_name, other in found.items():
            if other.function == reg.function and (other.address < reg.address + reg.words
                                                   and reg.address < other.address + other.words):
                entry.report("address", f"register {reg.address} overlaps {other_name} "
                                        f"(function {other.function}, {other.address})")
                broken = True
        found[name] = reg
    return None if broken else found


def _read_register(t: Table) -> Register | None:
    function = t.need("function", one_of_ints(FUNCTIONS), "the read function (3 holding, 4 input)")
    address = t.need("address", integer_in(0, 65535), "the 0-based register address (0 to 65535)")
    type_ = cast("RegisterType | None", t.need("type", choice(REGISTER_TYPES), "the encoding ("
                                               + ", ".join(REGISTER_TYPES) + ")"))
    order = cast("WordOrder", t.get("word_order", choice(WORD_ORDERS), "big"))
    kind = cast("MeasurementKind", t.get("kind", choice(KINDS), "gauge"))
    scale = t.get("scale", number_in(-1e12, 1e12))
    if scale is not None and (scale == 0 or (kind == "counter" and scale < 0)):
        t.report("scale", "a counter's scale must be > 0" if kind == "counter" else "a scale of 0 reads nothing")
    unit = t.get("unit", _unit, "")
    rollover = t.get("rollover", _positive)
    if "rollover" in t.data and kind != "counter":
        t.report("rollover", f"only counters wrap (this is a {kind}: set kind = \"counter\")")
    if kind == "status" and type_ == "float32":
        t.report("type", "a status word is an integer (uint16, int16, uint32 or int32)")
    if type_ is not None and address is not None and address + _FORMATS[type_][0] > 65536:
        t.report("address", f"a {type_} at {address} runs past register 65535")
    t.finish()
    if not t.ok or function is None or address is None or type_ is None:
        return None
    scale = 1.0 if scale is None else scale
    if kind == "counter" and rollover is None:
        rollover = default_rollover(type_, scale)
    return Register(function, address, type_, order, scale, unit, kind, rollover if kind == "counter" else None)


def _read_rollover(t: Table, registers: dict[str, Register]) -> None:
    """``rollover = { MEAS = modulus }`` for a built-in profile's counters."""
    section = t.table("rollover", expected="a table: counter = modulus, e.g. { energy_kwh = 1000000.0 }")
    if section is None:
        return
    counters = [n for n, reg in registers.items() if reg.kind == "counter"]
    for name in list(section.data):
        if name not in counters:
            section.accept(name)
            section.report(name, unknown("counter", name, counters))
        elif (modulus := section.get(name, _positive)) is not None:
            registers[name] = replace(registers[name], rollover=modulus)


def _read_channels(t: Table, registers: Mapping[str, Register] | None) -> dict[str, str]:
    """``channels = { MEAS = "core_channel" }``: which measurements are injected, and where."""
    section = t.table("channels", expected="a table: measurement = \"injected core channel\"")
    if section is None:
        return {}
    found: dict[str, str] = {}
    fed: dict[str, str] = {}
    for meas in list(section.data):
        section.accept(meas)
        if registers is not None and meas not in registers:
            section.report(meas, unknown("measurement", meas, registers))
            continue
        if registers is not None and registers[meas].kind == "status":
            section.report(meas, "a status word is not a value: it marks the instrument's other values FAULT")
            continue
        target = section.get(meas, _core_channel)
        if target is None:
            continue
        if target in fed:
            section.report(meas, f"channel '{target}' is already fed by {fed[target]} of this instrument")
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


register("modbus", read_modbus)
