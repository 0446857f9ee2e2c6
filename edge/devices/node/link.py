"""The framed link between the edge and a sensor node: bytes <-> checked frames, and the payloads.

Pure functions and one small decoder class, no I/O, so it can be fuzzed and benchmarked alone.
Its twin on the node is ``boards/firmware/pico_node/nodelink.py`` (MicroPython); the protocol is
described for technicians in ``boards/firmware/README.md``. One frame on the wire (link protocol 2)::

    body = type u8 | boot u16 | seq u16 | ack u16 | len u16 | payload (len bytes) | crc u32   (big-endian)
    wire = stuff(cobs(body)) + b"\\x00"

* ``len`` is the payload's length: a body of any other length is refused before its CRC is looked at.
  A frame cut short or two frames glued (a delimiter lost or turned to data) never match it; a lost or
  added byte almost never does, and the CRC-32 catches the rest.
* CRC-32 (ISO-HDLC, as ``binascii.crc32`` / zlib; check value 0xCBF43926) over everything before it,
  the length included. The node has the same function in C (MicroPython's ``binascii.crc32``).
* COBS removes every 0x00, so 0x00 only ends a frame and a receiver resynchronises on the next one.
* Stuffing then removes every 0x03 (0x03 -> 0x1B 0x23, 0x1B -> 0x1B 0x3B). 0x03 is Ctrl-C: the node
  keeps MicroPython's keyboard interrupt armed so a technician can always stop it with mpremote,
  and no frame byte may ever look like one.

Protocol 1 had no ``len`` and a CRC-16/CCITT-FALSE: with no final XOR, a body with one 0x00 added at its
end still passed, and so did one with its last 0x00 lost (one frame in 256 ends so), and the virtual
node acted on such an OUTPUTS frame. A node still speaking it is recognised (:func:`protocol_1_frame`),
counted (``Decoder.old_protocol``) and named, and never acted on.
"""

from __future__ import annotations

import binascii
import enum
import json
import math
import struct
from dataclasses import dataclass

PROTOCOL = 2
MAX_BODY = 512              # the node's limit too; longer input is dropped and counted
ESC = 0x1B
HEADER = struct.Struct(">BHHHH")     # type, boot, seq, ack, len
_CRC = struct.Struct(">I")
OVERHEAD = HEADER.size + _CRC.size   # 13: the shortest body
_U16 = struct.Struct(">H")
_READINGS_HEAD = struct.Struct(">HIIB")
_READING = struct.Struct(">BBBf")
_STATUS = struct.Struct(">HIBHH10H")
REPL_MAGIC = b"REPL"
RESET_MAGIC = b"RESET"


class FrameType(enum.IntEnum):
    HELLO = 0x01         # node -> edge, unsequenced: identity, config hash, channel and output names
    READINGS = 0x02      # node -> edge, sequenced: one sample of every channel
    STATUS = 0x03        # node -> edge, sequenced: outputs, dead-man, the node's link counters
    OUTPUTS = 0x10       # edge -> node: levels u16 | echo u16 (newest node seq received); feeds the dead-man; ack
    HELLO_REQ = 0x11     # edge -> node: send HELLO now
    ENTER_REPL = 0x12    # edge -> node: outputs safe, stop, leave the console to the REPL (payload b"REPL")
    RESET = 0x13         # edge -> node: outputs safe, machine.reset() (payload b"RESET")


SEQUENCED = frozenset({FrameType.READINGS, FrameType.STATUS})

# reading status bits sent by the node
NODE_FAULT = 1
NODE_RANGE = 2


class LinkError(ValueError):
    """A payload that passed its CRC but does not make sense (wrong length, bad JSON, wrong fields)."""


class CrcError(LinkError):
    """The frame decoded but its CRC does not match: bytes changed on the way."""


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    boot: int
    seq: int
    ack: int
    payload: bytes = b""


def crc32(data: bytes | bytearray | memoryview) -> int:
    """CRC-32/ISO-HDLC, the frame check of protocol 2."""
    return binascii.crc32(data)


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE: the frame check of protocol 1, kept only to recognise a node not yet reflashed."""
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
    if len(frame.payload) + OVERHEAD > MAX_BODY:
        raise LinkError(f"frame body of {len(frame.payload) + OVERHEAD} bytes exceeds {MAX_BODY}")
    body = HEADER.pack(frame.type, frame.boot & 0xFFFF, frame.seq & 0xFFFF, frame.ack & 0xFFFF,
                       len(frame.payload)) + frame.payload
    body += _CRC.pack(crc32(body))
    return stuff(cobs_encode(body)) + b"\x00"


def unframe(raw: bytes) -> bytes:
    """The body from the bytes between two delimiters (unstuffed, COBS decoded); LinkError if they are not."""
    return cobs_decode(unstuff(raw))


def check_body(body: bytes) -> Frame:
    """The frame a body holds; LinkError says why it is refused (the node's decoder refuses in the same order)."""
    if len(body) > MAX_BODY:
        raise LinkError("frame too long")
    if len(body) < OVERHEAD:
        raise LinkError("frame too short")
    n = len(body) - _CRC.size
    ftype, boot, seq, ack, length = HEADER.unpack_from(body)
    if length != n - HEADER.size:
        raise LinkError(f"frame length {n - HEADER.size} but its len field says {length}")
    if crc32(body[:n]) != _CRC.unpack_from(body, n)[0]:
        raise CrcError("CRC mismatch")
    return Frame(ftype, boot, seq, ack, body[HEADER.size:n])


def protocol_1_frame(body: bytes) -> Frame | None:
    """The frame a body holds if it is a whole frame of link protocol 1 (no len field, CRC-16), else None.

    Only to tell a technician that the node runs firmware older than this edge: such a frame is
    counted and never acted on. A damaged protocol-2 body passes this check about once in 65,536."""
    if len(body) < 9 or crc16(body[:-2]) != _U16.unpack_from(body, len(body) - 2)[0]:
        return None
    ftype, boot, seq, ack = struct.unpack_from(">BHHH", body)
    return Frame(ftype, boot, seq, ack, body[7:-2])


class Decoder:
    """Feed it bytes in any chunking; get back whole checked frames. Every reject is counted, never raised."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._over = False
        self.frames = 0
        self.crc_errors = 0
        self.framing_errors = 0
        self.oversize = 0
        self.old_protocol = 0        # whole protocol-1 frames among the refused: reflash the node

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
                self._decode(raw, out)

    def _decode(self, raw: bytes, out: list[Frame]) -> None:
        try:
            body = unframe(raw)
        except LinkError:
            self.framing_errors += 1
            return
        try:
            out.append(check_body(body))
            self.frames += 1
            return
        except CrcError:
            self.crc_errors += 1
        except LinkError:
            self.framing_errors += 1
        if protocol_1_frame(body) is not None:
            self.old_protocol += 1

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
    rx_refused: int       # frames whose payload length was wrong for their type (or of a type the node lacks)


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


_OUTPUTS = struct.Struct(">HH")


def outputs_payload(levels: int, echo: int) -> bytes:
    """OUTPUTS payload: the levels, and ``echo``, the newest node seq the edge has received.

    The node obeys the frame only while the first send of ``echo`` is at most its deadman_ms old, so a frame
    that waited in any buffer between the edge's decision and the node can neither drive nor feed its dead-man.
    """
    return _OUTPUTS.pack(levels & 0xFFFF, echo & 0xFFFF)


def parse_outputs(payload: bytes) -> tuple[int, int]:
    """(levels, echo) of an OUTPUTS payload (the node's parse, for tests and the rig); LinkError if malformed."""
    if len(payload) != _OUTPUTS.size:
        raise LinkError(f"OUTPUTS payload is {_OUTPUTS.size} bytes (levels, echo), got {len(payload)}")
    levels, echo = _OUTPUTS.unpack(payload)
    return levels, echo


def readings_payload(base: int, sample: int, t_ms: int, items: list[tuple[int, int, int, float]]) -> bytes:
    """What the node sends; the edge uses it only in tests and the virtual rig."""
    out = _READINGS_HEAD.pack(base & 0xFFFF, sample & 0xFFFFFFFF, t_ms & 0xFFFFFFFF, len(items))
    for index, status, detail, value in items:
        out += _READING.pack(index, status, detail, value if math.isfinite(value) else math.nan)
    return out
