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
defined in :mod:`edge.spec.instruments.modbus`.

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
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from types import TracebackType
from typing import Any, cast

import minimalmodbus  # type: ignore[import-untyped]  # no py.typed marker in 2.1.1
import serial  # type: ignore[import-untyped]  # no stubs for pyserial 3.5 in the venv

from edge.core import ChannelStatus, CoreError
from edge.devices.pfeiffer import PARITIES, InjectTarget
from edge.devices.serial_device import LinkChange, SerialDevice
from edge.spec.instruments.modbus import ANSWER_OVERHEAD_BYTES, Block, ModbusConfig, shared_port_problems

log = logging.getLogger(__name__)

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

    @property
    def instruments(self) -> list[str]:
        """The instruments' names, in the order they are polled."""
        return [p.name for w in self._workers for p in w.polls]

    def read_round(self, name: str, read: Callable[[int, int, int], list[int] | int], t_ns: int) -> None:
        """One round of instrument ``name`` through ``read(function, start, count)`` (the words, or a Modbus
        exception code) instead of its port, on the caller's thread: the same decoding, injection, counter
        samples and counts as a port worker's round. The seam for a rig that emulates the devices on its own
        clock (``hil.lockstep_rig``); a station never calls it (its port workers read the line)."""
        worker, poll = next((w, p) for w in self._workers for p in w.polls if p.name == name)
        for block in poll.blocks:
            self._count(name, "polls")
            words = read(block.function, block.start, block.count)
            if isinstance(words, int):      # an exception answer: the rest of the round is not used
                self._count(name, "exceptions")
                return
            self._count(name, "good")
            self._set(name, last_good_t_ns=t_ns)
            worker._use(poll, block, words, t_ns)

    def drain_samples(self) -> list[CounterSample]:
        """Every counter sample since the last call, oldest first (the controller's thread calls this)."""
        with self._lock:
            out = list(self._samples)
            self._samples.clear()
        return out

    def drain_link_changes(self) -> list[LinkChange]:
        """Every port's state changes since the last call (:class:`LinkChange`), each naming the instruments
        on that port ("modbus heater_meter, h2_flow_meter"): the technician knows them by name, not by path."""
        return [replace(c, device=f"modbus {', '.join(p.name for p in w.polls)}")
                for w in self._workers for c in w.drain_link_changes()]

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
