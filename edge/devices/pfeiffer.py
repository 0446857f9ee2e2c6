"""Pfeiffer Vacuum gauges on RS-485: the telegram codec, the poller that feeds the core, its config.

The HD reactor reads its chamber vacuum (Pirani / cold-cathode gauge) over RS-485 with the
Pfeiffer Vacuum protocol. The core sees it as an *injected* channel: this module asks the
gauge, checks every byte of the answer and pushes the pressure into the core with a core
timestamp. The core marks the channel STALE when no value arrives within its max age, and the
``stale`` interlock on it drops the heater: a gauge that went quiet cannot let the charge heat.

The protocol (Pfeiffer Vacuum operating instructions, chapter "Pfeiffer Vacuum Protocol for
RS-485", e.g. of the PPT 100 / RPT 100 / HPT 100 transmitters and the TC 110 drive) is plain
ASCII, one telegram per line::

    address(3) action(2) parameter(3) length(2) data(length) checksum(3) CR

- address ``001``..``255`` (``000`` = every unit, ``9xx`` = a group: neither is answered);
- action ``00`` = data query (data ``=?``), ``10`` = data answer, or control command (write);
- checksum = sum of the ASCII codes from the first address digit to the last data character,
  modulo 256, as three decimal digits;
- an error answer carries ``NO_DEF`` (no such parameter), ``_RANGE`` (data out of range) or
  ``_LOGIC`` (logic access violation) as its data;
- parameter 740 is the pressure in the ``u_expo_new`` format ``aaaabb`` = a.aaa * 10^(bb-20)
  in hPa (= mbar): ``100023`` is 1.000e3 mbar; parameter 303 is the error code, ``000000``
  when the sensor is healthy, ``Err001``... when not.

Decoding is strict: any byte outside printable ASCII, a wrong length, a bad checksum, a
non-digit where a digit belongs raises a :class:`PfeifferError` subclass, never anything else
and never a value. The poller counts each kind and resynchronises on the next CR.

Why the poller stamps a value with the core clock at the moment its answer arrived: the gauge
measures continuously and answers with its latest reading when it forms the answer, so the
reading is at most one telegram time old when its last byte arrives (about 20 ms at 9600 Bd),
far below the channel's max age. The send time would wrongly age a reading that was taken
after it, and the poller's own (wall) clock is not the core's clock (in the HIL rig the core
runs on the plant's clock): the core refuses timestamps from another clock. An answer that
comes too late (after its transaction's timeout) is never injected: by then the poller cannot
say when it was measured.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, fields
from typing import Any, Protocol

import serial  # type: ignore[import-untyped]  # no stubs for pyserial 3.5 in the venv

from edge.core import ChannelStatus, CoreError
from edge.devices.serial_device import SerialDevice
from edge.spec.instruments.pfeiffer import PfeifferConfig

log = logging.getLogger(__name__)

CR = b"\r"
ACTION_QUERY = 0          # "00": data query, data "=?"
ACTION_DATA = 10          # "10": data answer, or control command (write)
QUERY_DATA = "=?"
PARAM_ERROR_CODE = 303    # "000000" = no error, "Err001" = transmitter defective, ...
PARAM_PRESSURE = 740      # u_expo_new, hPa = mbar
NO_SENSOR_ERROR = "000000"
ERROR_ANSWERS = ("NO_DEF", "_RANGE", "_LOGIC")
HEADER_LEN = 10           # address 3 + action 2 + parameter 3 + length 2
MAX_DATA_LEN = 99         # the length field has two digits
MAX_TELEGRAM_LEN = HEADER_LEN + MAX_DATA_LEN + 3 + 1

_DIGITS = re.compile(rb"[0-9]+")


# ---------------------------------------------------------------- errors


class PfeifferError(ValueError):
    """A telegram that cannot be used. The decoder raises this family and nothing else."""


class ChecksumError(PfeifferError):
    """Well formed, but the checksum does not match: corrupted on the line."""


class MalformedTelegram(PfeifferError):
    """Not a telegram of this protocol: bad byte, missing CR, wrong length, non-digit field."""


class UnexpectedTelegram(PfeifferError):
    """A valid telegram that is not the answer asked for (a query, an echo, another exchange)."""


class WrongAddress(UnexpectedTelegram):
    """Answer from another unit than the one asked."""


class WrongParameter(UnexpectedTelegram):
    """Answer about another parameter than the one asked."""


class GaugeErrorAnswer(PfeifferError):
    """The gauge answered with an error code (``NO_DEF``, ``_RANGE`` or ``_LOGIC``)."""

    def __init__(self, code: str, parameter: int) -> None:
        super().__init__(f"gauge answered {code} for parameter {parameter:03d}")
        self.code = code
        self.parameter = parameter


# ---------------------------------------------------------------- codec


@dataclass(frozen=True)
class Telegram:
    address: int
    action: int
    parameter: int
    data: str

    def encode(self) -> bytes:
        return encode_telegram(self.address, self.action, self.parameter, self.data)


def checksum(body: bytes) -> int:
    """Sum of the ASCII codes of address..data, modulo 256."""
    return sum(body) % 256


def encode_telegram(address: int, action: int, parameter: int, data: str) -> bytes:
    """One telegram, CR included. Arguments outside the protocol raise ValueError."""
    if not 0 <= address <= 999:
        raise ValueError(f"address {address}: expected 0..999")
    if not 0 <= action <= 99:
        raise ValueError(f"action {action}: expected 0..99")
    if not 0 <= parameter <= 999:
        raise ValueError(f"parameter {parameter}: expected 0..999")
    if len(data) > MAX_DATA_LEN or any(not 32 <= ord(c) <= 127 for c in data):
        raise ValueError(f"data {data!r}: expected at most {MAX_DATA_LEN} printable ASCII characters")
    body = f"{address:03d}{action:02d}{parameter:03d}{len(data):02d}{data}".encode("ascii")
    return body + f"{checksum(body):03d}".encode("ascii") + CR


def encode_query(address: int, parameter: int) -> bytes:
    return encode_telegram(address, ACTION_QUERY, parameter, QUERY_DATA)


def encode_answer(address: int, parameter: int, data: str) -> bytes:
    return encode_telegram(address, ACTION_DATA, parameter, data)


def decode_telegram(frame: bytes) -> Telegram:
    """Check and split one CR-terminated telegram; raises only :class:`PfeifferError` subclasses.

    The checksum is judged before the header fields: it covers them, so a frame whose
    checksum fails was corrupted in transit, one whose checksum holds but fields do not is
    something else speaking on the line.
    """
    if not frame.endswith(CR):
        raise MalformedTelegram("no CR at the end")
    body = frame[:-1]
    if len(body) < HEADER_LEN + 3:
        raise MalformedTelegram(f"{len(frame)} bytes: a telegram has at least {HEADER_LEN + 4}")
    bad = next((b for b in body if not 32 <= b <= 127), None)
    if bad is not None:
        raise MalformedTelegram(f"byte 0x{bad:02x} outside printable ASCII")
    if not _DIGITS.fullmatch(body[-3:]):
        raise MalformedTelegram(f"checksum field {body[-3:].decode('ascii')!r} is not 3 digits")
    want = checksum(body[:-3])
    if int(body[-3:]) != want:
        raise ChecksumError(f"checksum {body[-3:].decode('ascii')} but the telegram sums to {want:03d}")
    if not _DIGITS.fullmatch(body[:HEADER_LEN]):
        raise MalformedTelegram(f"header {body[:HEADER_LEN].decode('ascii')!r} is not 10 digits")
    address, action, parameter, length = int(body[0:3]), int(body[3:5]), int(body[5:8]), int(body[8:10])
    data = body[HEADER_LEN:-3].decode("ascii")
    if len(data) != length:
        raise MalformedTelegram(f"length field says {length} data characters, there are {len(data)}")
    if action not in (ACTION_QUERY, ACTION_DATA):
        raise MalformedTelegram(f"action {action:02d} is neither 00 (query) nor 10 (data)")
    return Telegram(address, action, parameter, data)


def answer_data(telegram: Telegram, address: int, parameter: int) -> str:
    """The data of ``telegram`` if it answers (address, parameter); else the reason, raised."""
    if telegram.action != ACTION_DATA:
        raise UnexpectedTelegram(f"a query (action 00) for {telegram.address:03d}, not an answer")
    if telegram.address != address:
        raise WrongAddress(f"answer from unit {telegram.address:03d}, asked {address:03d}")
    if telegram.parameter != parameter:
        raise WrongParameter(f"answer about parameter {telegram.parameter:03d}, asked {parameter:03d}")
    if telegram.data in ERROR_ANSWERS:
        raise GaugeErrorAnswer(telegram.data, parameter)
    return telegram.data


def parse_answer(frame: bytes, address: int, parameter: int) -> str:
    """Decode ``frame`` and return its data if it is the answer asked for."""
    return answer_data(decode_telegram(frame), address, parameter)


def encode_pressure(mbar: float) -> str:
    """u_expo_new ``aaaabb``: four significant digits, exponent offset by 20."""
    if not (math.isfinite(mbar) and mbar > 0):
        raise ValueError(f"pressure {mbar!r} mbar: expected a finite number > 0")
    mantissa, exponent = f"{mbar:.3e}".split("e")   # "1.234", "-05": decimal rounding, carry included
    bb = int(exponent) + 20
    if not 0 <= bb <= 99:
        raise ValueError(f"pressure {mbar!r} mbar: outside what u_expo_new can carry (1e-20 .. 9.999e79)")
    return mantissa.replace(".", "") + f"{bb:02d}"


def decode_pressure(data: str) -> float:
    """mbar from ``aaaabb``; the mantissa must be normalised (1000..9999), as the gauges send it."""
    raw = data.encode("ascii", errors="replace")
    if len(raw) != 6 or not _DIGITS.fullmatch(raw):
        raise MalformedTelegram(f"pressure {data!r}: expected 6 digits aaaabb")
    mantissa, bb = int(data[:4]), int(data[4:])
    if mantissa < 1000:
        raise MalformedTelegram(f"pressure {data!r}: mantissa {mantissa:04d} not normalised (1000..9999)")
    return float(f"{mantissa}e{bb - 20 - 3}")   # decimal to float in one correctly rounded step


class TelegramSplitter:
    """Cuts a byte stream into CR-terminated lines, at most ``MAX_TELEGRAM_LEN`` bytes each.

    A run of bytes longer than any telegram without a CR is garbage: it is dropped with
    everything up to the next CR, and counted (``overlong``, ``discarded_bytes``).
    """

    def __init__(self, max_len: int = MAX_TELEGRAM_LEN) -> None:
        self.max_len = max_len
        self._buf = bytearray()
        self._skipping = False
        self.overlong = 0
        self.discarded_bytes = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines: list[bytes] = []
        while True:
            end = self._buf.find(CR)
            if end < 0:
                if len(self._buf) > self.max_len:
                    self._drop_overlong(len(self._buf))
                return lines
            if self._skipping or end + 1 > self.max_len:
                self._drop_overlong(end + 1)
                self._skipping = False
                continue
            lines.append(bytes(self._buf[:end + 1]))
            del self._buf[:end + 1]

    def _drop_overlong(self, n: int) -> None:
        if not self._skipping:
            self.overlong += 1
        self._skipping = True
        self.discarded_bytes += n
        del self._buf[:n]

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line."""
        return len(self._buf)

    def clear(self) -> int:
        """Drop an unfinished line; how many bytes went."""
        n = len(self._buf)
        self._buf.clear()
        self._skipping = False
        return n


# ---------------------------------------------------------------- config

PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}  # the file's letters


# ---------------------------------------------------------------- poller


class InjectTarget(Protocol):
    """What the poller needs of :class:`edge.core.Core` (a test can wrap the real one)."""

    @property
    def channel_names(self) -> tuple[str, ...]: ...

    def now_ns(self) -> int: ...

    def inject(self, name: str, value: float, status: ChannelStatus = ChannelStatus.OK,
               t_ns: int | None = None) -> None: ...


@dataclass(frozen=True)
class GaugeCounters:
    """A snapshot for telemetry. Every byte that was not used is in one of these counts."""

    polls: int = 0                # queries sent
    good: int = 0                 # valid answers to the query asked
    injected: int = 0             # values pushed into the core (OK or FAULT)
    checksum_errors: int = 0
    malformed: int = 0            # not a telegram, overlong, unfinished, or bad pressure data
    unexpected: int = 0           # valid telegrams that answer something else (late answer, other unit)
    echoes: int = 0               # our own query heard back (half-duplex adapters with echo)
    error_answers: int = 0        # NO_DEF / _RANGE / _LOGIC
    sensor_errors: int = 0        # parameter 303 answers reporting an error (Err...; Wrn... is a warning)
    timeouts: int = 0             # queries without any answer in time
    discarded_bytes: int = 0      # bytes thrown away while resynchronising
    port_lost: int = 0            # the port failed under us (unplugged adapter, closed pty)
    open_failures: int = 0        # attempts to (re)open that failed
    reconnects: int = 0           # successful re-opens after a loss
    inject_refused: int = 0       # the core refused a value (should stay 0)
    internal_errors: int = 0      # unexpected errors in the poller (logged; the port is reopened)
    connected: bool = False
    sensor_fault: bool = False    # the last parameter 303 answer reported an error
    last_value: float = math.nan  # mbar, NaN until the first good reading or while faulted
    last_status: int = int(ChannelStatus.NODATA)
    last_error: str = ""


@dataclass
class _Answer:
    data: str | None      # None when the gauge answered an error code
    error: str | None
    t_ns: int             # core clock when the line's CR arrived


READ_SLICE_S = 0.02           # read in short slices so stop() is prompt and deadlines are kept
RECONNECT_MIN_S = 0.1
_LINE_FIELDS = ("port_lost", "open_failures", "reconnects", "internal_errors", "connected", "last_error")


class GaugePoller(SerialDevice[serial.Serial]):
    """Polls one gauge on its own thread (:class:`SerialDevice`) and injects the pressure into the core.

    Each cycle: parameter 303 (every ``error_check_every`` cycles), then parameter 740. The
    pressure is injected OK, or FAULT (NaN) when 303 reports a sensor error, its answer was an
    error code, or the gauge answered 740 with an error code; a cycle where 303 could not be
    read injects nothing (a value is vouched for only with a fresh health answer). Whether the
    pressure is in range is the core's business (the channel's ``range``). Bad frames,
    timeouts and a lost port are counted, never injected; the port is reopened with
    back-off, so the channel just goes STALE while the gauge is away.
    """

    def __init__(self, core: InjectTarget, config: PfeifferConfig) -> None:
        if config.channel not in core.channel_names:
            raise ValueError(f"gauge channel {config.channel!r} is not a channel of the core "
                             f"(known: {', '.join(core.channel_names)})")
        super().__init__(f"gauge {config.channel}", config.port, backoff_min_s=RECONNECT_MIN_S,
                         backoff_max_s=max(RECONNECT_MIN_S, config.reconnect_max_ms / 1000.0))
        self.core = core
        self.config = config
        self._counts: dict[str, Any] = {f.name: f.default for f in fields(GaugeCounters) if f.name not in _LINE_FIELDS}
        self._splitter = TelegramSplitter()
        self._cycle_no = 0
        self._sensor_fault = False
        self._warned_no_303 = False

    def counters(self) -> GaugeCounters:
        line = self.line_counters()
        with self._lock:
            return GaugeCounters(**self._counts, **{k: getattr(line, k) for k in _LINE_FIELDS})

    # ---- the protocol on the line ----

    def _open_port(self) -> serial.Serial:
        cfg = self.config
        port = serial.Serial(port=cfg.port, baudrate=cfg.baud, bytesize=cfg.bytesize, parity=PARITIES[cfg.parity],
                             stopbits=cfg.stopbits, timeout=READ_SLICE_S, write_timeout=1.0, exclusive=True)
        self._splitter.clear()
        self._cycle_no = 0   # the first cycle on a (re)opened port asks 303: it may be another gauge now
        return port

    def _exchange(self, port: serial.Serial) -> float:
        started = time.monotonic()
        try:
            self._cycle(port)
        except CoreError as e:   # the core is closing under us: nothing to feed
            self._note(f"core: {e}")
        self._cycle_no += 1
        return max(0.0, self.config.poll_ms / 1000.0 - (time.monotonic() - started))

    # ---- internals ----

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _set(self, **kw: Any) -> None:
        with self._lock:
            self._counts.update(kw)

    def _cycle(self, port: serial.Serial) -> None:
        every = self.config.error_check_every
        if every and self._cycle_no % every == 0:
            health = self._transact(port, PARAM_ERROR_CODE)
            if health is None:
                return
            self._judge_health(health)
        answer = self._transact(port, PARAM_PRESSURE)
        if answer is None:
            return
        if answer.data is None:
            self._inject(math.nan, ChannelStatus.FAULT, answer.t_ns)
            return
        try:
            mbar = decode_pressure(answer.data)
        except MalformedTelegram as e:
            self._count("malformed")
            self._note(str(e))
            return
        if self._sensor_fault:
            self._inject(math.nan, ChannelStatus.FAULT, answer.t_ns)
        else:
            self._inject(mbar, ChannelStatus.OK, answer.t_ns)

    def _judge_health(self, health: _Answer) -> None:
        if health.data is None:
            # a gauge without parameter 303: say so loudly, and vouch for nothing
            if not self._warned_no_303:
                log.warning("gauge %s: parameter 303 answered %s; set error_check_every = 0 for a gauge "
                            "without an error code", self.config.channel, health.error)
                self._warned_no_303 = True
            fault = True
        elif health.data.startswith("Wrn"):
            fault = False   # a warning: the reading is still valid
        else:
            fault = health.data != NO_SENSOR_ERROR
        if fault and health.data is not None:
            self._count("sensor_errors")
        if fault != self._sensor_fault:
            log.warning("gauge %s: sensor %s (303 = %s)", self.config.channel, "FAULT" if fault else "healthy",
                        health.data or health.error)
        self._sensor_fault = fault
        self._set(sensor_fault=fault)

    def _inject(self, value: float, status: ChannelStatus, t_ns: int) -> None:
        try:
            self.core.inject(self.config.channel, value, status, t_ns)
        except (CoreError, KeyError) as e:
            self._count("inject_refused")
            self._note(f"core refused the value: {e}")
            log.warning("gauge %s: core refused %r: %s", self.config.channel, value, e)
            return
        self._count("injected")
        self._set(last_value=value, last_status=int(status))

    def _discard_pending(self, port: serial.Serial) -> None:
        """Before a query: whatever is on the line now cannot be its answer; classify and drop it."""
        waiting = port.in_waiting
        lines, _ = self._feed(port.read(waiting)) if waiting else ([], False)
        for line in lines:
            self._classify_stray(line)
        tail = self._splitter.clear()
        if tail:
            self._count("malformed")
            self._count("discarded_bytes", tail)

    def _classify_stray(self, line: bytes) -> None:
        self._count("discarded_bytes", len(line))
        try:
            decode_telegram(line)
        except ChecksumError:
            self._count("checksum_errors")
        except MalformedTelegram:
            self._count("malformed")
        else:
            self._count("unexpected")   # e.g. a late answer: its time is unknown, so it is not used

    def _feed(self, data: bytes) -> tuple[list[bytes], bool]:
        """Split arrived bytes into lines; an overlong run is counted malformed. (lines, overlong?)"""
        overlong, dropped = self._splitter.overlong, self._splitter.discarded_bytes
        lines = self._splitter.feed(data)
        if self._splitter.discarded_bytes != dropped:
            self._count("discarded_bytes", self._splitter.discarded_bytes - dropped)
        if self._splitter.overlong != overlong:
            self._count("malformed", self._splitter.overlong - overlong)
            self._note("more bytes than any telegram without a CR: dropped up to the next CR")
            return lines, True
        return lines, False

    def _transact(self, port: serial.Serial, parameter: int) -> _Answer | None:
        """One query and its answer, or None (the reason counted). Port errors propagate."""
        cfg = self.config
        self._discard_pending(port)
        query = encode_query(cfg.address, parameter)
        port.write(query)
        self._count("polls")
        deadline = time.monotonic() + cfg.timeout_ms / 1000.0
        saw_bad = False
        while not self.stopping:
            lines, overlong = self._feed(port.read(max(1, port.in_waiting)))
            saw_bad = saw_bad or overlong
            t_ns = self.core.now_ns() if lines else 0
            for i, line in enumerate(lines):
                result = self._judge(line, parameter, query, t_ns)
                if isinstance(result, _Answer):
                    for after in lines[i + 1:]:   # behind the answer: not asked for, counted
                        self._classify_stray(after)
                    return result
                saw_bad = saw_bad or result
            if time.monotonic() >= deadline:
                break
        if not saw_bad and not self.stopping:
            self._count("timeouts")
            self._note(f"no answer to parameter {parameter:03d} within {cfg.timeout_ms:g} ms")
        return None

    def _judge(self, line: bytes, parameter: int, query: bytes, t_ns: int) -> _Answer | bool:
        """An answer, or whether the line was bad (True) / merely not ours (False)."""
        try:
            telegram = decode_telegram(line)
            if line == query:
                self._count("echoes")
                return False
            data = answer_data(telegram, self.config.address, parameter)
        except GaugeErrorAnswer as e:
            self._count("error_answers")
            self._note(str(e))
            return _Answer(None, e.code, t_ns)
        except UnexpectedTelegram as e:
            self._count("unexpected")
            self._count("discarded_bytes", len(line))
            self._note(str(e))
            return False
        except ChecksumError as e:
            self._count("checksum_errors")
            self._count("discarded_bytes", len(line))
            self._note(str(e))
            return True
        except MalformedTelegram as e:
            self._count("malformed")
            self._count("discarded_bytes", len(line))
            self._note(str(e))
            return True
        self._count("good")
        return _Answer(data, None, t_ns)
