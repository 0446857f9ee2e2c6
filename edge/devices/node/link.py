"""The framed link between the edge and a sensor node: bytes <-> checked frames, and the payloads.

Pure functions and one small decoder class, no I/O, so it can be fuzzed and benchmarked alone.
Its twin on the node is ``boards/firmware/pico_node/nodelink.py`` (MicroPython); the protocol is
described for technicians in ``boards/firmware/README.md``. One frame on the wire::

    body = type u8 | boot u16 | seq u16 | ack u16 | payload | crc u16      (big-endian)
    wire = stuff(cobs(body)) + b"\\x00"

* CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, not reflected, xorout 0; check value 0x29B1)
  over everything before it. ``binascii.crc_hqx(data, 0xFFFF)`` is exactly that, in C.
* COBS removes every 0x00, so 0x00 only ends a frame and a receiver resynchronises on the next one.
* Stuffing then removes every 0x03 (0x03 -> 0x1B 0x23, 0x1B -> 0x1B 0x3B). 0x03 is Ctrl-C: the node
  keeps MicroPython's keyboard interrupt armed so a technician can always stop it with mpremote,
  and no frame byte may ever look like one.
"""

from __future__ import annotations

import binascii
import enum
import json
import math
import struct
from dataclasses import dataclass

PROTOCOL = 1
MAX_BODY = 512              # the node's limit too; longer input is dropped and counted
ESC = 0x1B
HEADER = struct.Struct(">BHHH")
_CRC = struct.Struct(">H")
_U16 = struct.Struct(">H")
_READINGS_HEAD = struct.Struct(">HIIB")
_READING = struct.Struct(">BBBf")
_STATUS = struct.Struct(">HIBHH9H")
REPL_MAGIC = b"REPL"
RESET_MAGIC = b"RESET"


class FrameType(enum.IntEnum):
    HELLO = 0x01         # node -> edge, unsequenced: identity, config hash, channel and output names
    READINGS = 0x02      # node -> edge, sequenced: one sample of every channel
    STATUS = 0x03        # node -> edge, sequenced: outputs, dead-man, the node's link counters
    OUTPUTS = 0x10       # edge -> node: commanded output levels; feeds the node's dead-man; carries the ack
    HELLO_REQ = 0x11     # edge -> node: send HELLO now
    ENTER_REPL = 0x12    # edge -> node: outputs safe, stop, leave the console to the REPL (payload b"REPL")
    RESET = 0x13         # edge -> node: outputs safe, machine.reset() (payload b"RESET")


SEQUENCED = frozenset({FrameType.READINGS, FrameType.STATUS})

# reading status bits sent by the node
NODE_FAULT = 1
NODE_RANGE = 2


class LinkError(ValueError):
    """A payload that passed its CRC but does not make sense (wrong length, bad JSON, wrong fields)."""


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    boot: int
    seq: int
    ack: int
    payload: bytes = b""


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE."""
    return binascii.crc_hqx(data, 0xFFFF)


def cobs_encode(data: bytes) -> bytes:
    out = bytearray()
    for chunk in data.split(b"\x00"):
        while len(chunk) >= 254:
            out.append(0xFF)
            out += chunk[:254]
            chunk = chunk[254:]
        out.append(len(chunk) + 1)
        out += chunk
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of cobs_encode; LinkError on anything that is not COBS."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        end = i + code
        if code == 0 or end > n:
            raise LinkError("bad COBS block")
        block = data[i + 1:end]
        if 0 in block:
            raise LinkError("zero inside a COBS block")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def stuff(data: bytes) -> bytes:
    if 0x03 not in data and ESC not in data:
        return data
    return data.replace(b"\x1b", b"\x1b\x3b").replace(b"\x03", b"\x1b\x23")


def unstuff(data: bytes) -> bytes:
    if 0x03 in data:
        raise LinkError("raw 0x03 in a frame")
    if ESC not in data:
        return data
    parts = data.split(b"\x1b")
    out = bytearray(parts[0])
    for part in parts[1:]:
        if not part or part[0] not in (0x23, 0x3B):
            raise LinkError("bad escape")
        out.append(part[0] ^ 0x20)
        out += part[1:]
    return bytes(out)


def encode(frame: Frame) -> bytes:
    """Wire bytes of one frame, delimiter included."""
    body = HEADER.pack(frame.type, frame.boot & 0xFFFF, frame.seq & 0xFFFF, frame.ack & 0xFFFF) + frame.payload
    if len(body) + 2 > MAX_BODY:
        raise LinkError(f"frame body of {len(body) + 2} bytes exceeds {MAX_BODY}")
    body += _CRC.pack(crc16(body))
    return stuff(cobs_encode(body)) + b"\x00"


def decode_body(raw: bytes) -> Frame:
    """One frame from the bytes between two delimiters; LinkError says why it is rejected."""
    body = cobs_decode(unstuff(raw))
    if len(body) > MAX_BODY:
        raise LinkError("frame too long")
    if len(body) < HEADER.size + 2:
        raise LinkError("frame too short")
    n = len(body) - 2
    if crc16(body[:n]) != _CRC.unpack_from(body, n)[0]:
        raise CrcError("CRC mismatch")
    ftype, boot, seq, ack = HEADER.unpack_from(body)
    return Frame(ftype, boot, seq, ack, body[HEADER.size:n])


class CrcError(LinkError):
    """The frame decoded but its CRC does not match: bytes changed on the way."""


class Decoder:
    """Feed it bytes in any chunking; get back whole checked frames. Every reject is counted, never raised."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._over = False
        self.frames = 0
        self.crc_errors = 0
        self.framing_errors = 0
        self.oversize = 0

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        start = 0
        while True:
            end = data.find(0, start)
            if end < 0:
                self._take(data[start:])
                return out
            self._take(data[start:end])
            raw, over = bytes(self._buf), self._over
            self._buf.clear()
            self._over = False
            start = end + 1
            if over:
                self.oversize += 1
            elif raw:                       # empty: back-to-back delimiters, a resync, not an error
                try:
                    out.append(decode_body(raw))
                    self.frames += 1
                except CrcError:
                    self.crc_errors += 1
                except LinkError:
                    self.framing_errors += 1

    def _take(self, chunk: bytes) -> None:
        if self._over:
            return
        if len(self._buf) + len(chunk) > 2 * MAX_BODY + 8:   # stuffing and COBS at most double it
            self._over = True
            self._buf.clear()
        else:
            self._buf += chunk


# ---- payloads ----

@dataclass(frozen=True)
class Hello:
    protocol: int
    firmware: str
    node_id: str
    config_hash: str
    uid: str
    boot: int
    channels: tuple[str, ...]
    outputs: tuple[str, ...]
    safe_levels: tuple[int, ...]
    deadman_ms: int
    period_ms: int
    error: str          # non-empty: the node's node.json is missing or invalid, and why


def _int(d: dict[str, object], name: str) -> int:
    v = d.get(name)
    if not isinstance(v, int) or isinstance(v, bool):
        raise LinkError(f"HELLO field {name!r} missing or not an integer")
    return v


def _str(d: dict[str, object], name: str) -> str:
    v = d.get(name)
    if not isinstance(v, str):
        raise LinkError(f"HELLO field {name!r} missing or not a string")
    return v


def _names(d: dict[str, object], name: str) -> tuple[str, ...]:
    v = d.get(name)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise LinkError(f"HELLO field {name!r} must list strings")
    return tuple(v)


def parse_hello(payload: bytes) -> Hello:
    try:
        d = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise LinkError(f"HELLO is not JSON: {e}") from None
    if not isinstance(d, dict):
        raise LinkError("HELLO is not a JSON object")
    outputs = _names(d, "outputs")
    safe = d.get("safe", [0] * len(outputs))
    if not isinstance(safe, list) or len(safe) != len(outputs) or any(s not in (0, 1) for s in safe):
        raise LinkError("HELLO field 'safe' must give 0 or 1 for every output")
    error = d.get("error", "")
    return Hello(protocol=_int(d, "proto"), firmware=_str(d, "fw"), node_id=_str(d, "node"),
                 config_hash=_str(d, "cfg"), uid=_str(d, "uid"), boot=_int(d, "boot"),
                 channels=_names(d, "channels"), outputs=outputs, safe_levels=tuple(int(s) for s in safe),
                 deadman_ms=_int(d, "deadman_ms"), period_ms=_int(d, "period_ms"),
                 error=error if isinstance(error, str) else repr(error))


@dataclass(frozen=True)
class Reading:
    index: int
    status: int          # NODE_FAULT | NODE_RANGE
    detail: int          # MAX31856 fault register, or errno of a failed I2C read
    value: float


@dataclass(frozen=True)
class Readings:
    base: int            # the node's oldest unacknowledged sequence number when sent
    sample: int          # the node's sample counter (1, 2, 3 ... per boot; wraps at 2**32)
    t_ms: int            # node uptime at the sample (wraps at 2**32)
    items: tuple[Reading, ...]


def parse_readings(payload: bytes) -> Readings:
    if len(payload) < _READINGS_HEAD.size:
        raise LinkError("READINGS too short")
    base, sample, t_ms, n = _READINGS_HEAD.unpack_from(payload)
    if len(payload) != _READINGS_HEAD.size + n * _READING.size:
        raise LinkError(f"READINGS says {n} readings but carries {len(payload)} bytes")
    items = tuple(Reading(*_READING.unpack_from(payload, _READINGS_HEAD.size + i * _READING.size))
                  for i in range(n))
    return Readings(base, sample, t_ms, items)


@dataclass(frozen=True)
class NodeStatus:
    base: int
    uptime_ms: int
    linked: bool
    tripped: bool
    config_error: bool
    levels: int           # outputs as driven now, bit i = output i of HELLO
    commanded: int
    rx_frames: int
    rx_crc_errors: int
    rx_framing_errors: int
    rx_oversize: int
    rx_duplicates: int
    rx_gaps: int
    tx_retransmits: int
    tx_expired: int
    deadman_trips: int


def parse_status(payload: bytes) -> NodeStatus:
    if len(payload) != _STATUS.size:
        raise LinkError(f"STATUS is {len(payload)} bytes, expected {_STATUS.size}")
    base, uptime, flags, levels, commanded, *counters = _STATUS.unpack(payload)
    return NodeStatus(base, uptime, bool(flags & 1), bool(flags & 2), bool(flags & 4), levels, commanded, *counters)


def payload_base(payload: bytes) -> int:
    """The base field that opens every sequenced payload."""
    if len(payload) < 2:
        raise LinkError("sequenced payload without base")
    return int(_U16.unpack_from(payload)[0])


def outputs_payload(levels: int) -> bytes:
    return _U16.pack(levels & 0xFFFF)


def readings_payload(base: int, sample: int, t_ms: int, items: list[tuple[int, int, int, float]]) -> bytes:
    """What the node sends; the edge uses it only in tests and the virtual rig."""
    out = _READINGS_HEAD.pack(base & 0xFFFF, sample & 0xFFFFFFFF, t_ms & 0xFFFFFFFF, len(items))
    for index, status, detail, value in items:
        out += _READING.pack(index, status, detail, value if math.isfinite(value) else math.nan)
    return out
