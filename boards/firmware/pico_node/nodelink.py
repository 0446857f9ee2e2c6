# The node side of the framed link to the edge (MicroPython; the edge's twin is edge/devices/node/link.py).
#
# Wire format of one frame, link protocol 2 (see ../README.md for the whole protocol):
#   body  = type u8 | boot u16 | seq u16 | ack u16 | len u16 | payload (len bytes) | crc u32   (big-endian)
#   crc   = CRC-32 (as zlib and binascii.crc32: reflected 0x04C11DB7, init and xorout 0xFFFFFFFF) over
#           the body before it, length included
#   wire  = stuff(cobs(body)) + 0x00
# COBS removes every 0x00 so 0x00 only ever ends a frame; the stuffing step then removes every 0x03
# (Ctrl-C: 0x03 -> 0x1B 0x23, 0x1B -> 0x1B 0x3B), so the node can keep MicroPython's keyboard
# interrupt armed and a technician's Ctrl-C (mpremote, Thonny, a terminal) always stops the firmware,
# while no frame byte can ever be taken for one.
# Why a length and CRC-32: protocol 1 (no length, CRC-16/CCITT-FALSE) accepted a body with a 0x00
# added or, when the CRC ended in 0x00, removed: a lost byte, a delimiter turned to data. A body whose
# length disagrees with `len` is refused outright; CRC-32 is binascii's, in C on the rp2 port (and
# faster there than protocol 1's CRC-16 in Python).

import struct
from binascii import crc32

try:                        # for mypy only: MicroPython has no typing module and never evaluates annotations
    from typing import TypeAlias

    Frame: TypeAlias = "tuple[int, int, int, int, bytes]"   # (type, boot, seq, ack, payload)
except ImportError:
    pass

MAX_BODY = 512          # longest body the decoder accepts; longer input is counted and dropped
HEADER = ">BHHHH"       # type, boot, seq, ack, len
HEADER_LEN = 9
OVERHEAD = 13           # header and CRC: the shortest body
ESC = 0x1B

# node -> edge
HELLO = 0x01
READINGS = 0x02
STATUS = 0x03
# edge -> node
OUTPUTS = 0x10
HELLO_REQ = 0x11
ENTER_REPL = 0x12
RESET = 0x13


def cobs_encode(data: bytes | bytearray) -> bytearray:
    out = bytearray(b"\x00")
    code_at = 0
    code = 1
    for b in data:
        if b:
            out.append(b)
            code += 1
        if not b or code == 0xFF:
            out[code_at] = code
            code_at = len(out)
            out.append(0)
            code = 1
    out[code_at] = code
    return out


def cobs_decode(data: bytes | bytearray) -> bytearray | None:
    """None when the bytes are not valid COBS."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        end = i + code
        if code == 0 or end > n:
            return None
        for j in range(i + 1, end):
            b = data[j]
            if b == 0:
                return None
            out.append(b)
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return out


def stuff(data: bytes | bytearray) -> bytearray:
    out = bytearray()
    for b in data:
        if b == 0x03 or b == ESC:
            out.append(ESC)
            out.append(b ^ 0x20)
        else:
            out.append(b)
    return out


def unstuff(data: bytes | bytearray) -> bytearray | None:
    out = bytearray()
    esc = False
    for b in data:
        if esc:
            if b != 0x23 and b != 0x3B:
                return None
            out.append(b ^ 0x20)
            esc = False
        elif b == ESC:
            esc = True
        elif b == 0x03:
            return None
        else:
            out.append(b)
    return None if esc else out


def encode(ftype: int, boot: int, seq: int, ack: int, payload: bytes = b"") -> bytes:
    if len(payload) + OVERHEAD > MAX_BODY:
        raise ValueError("frame too long")
    body = struct.pack(HEADER, ftype, boot & 0xFFFF, seq & 0xFFFF, ack & 0xFFFF, len(payload)) + payload
    body += struct.pack(">I", crc32(body))
    return bytes(stuff(cobs_encode(body))) + b"\x00"


class Decoder:
    """Bytes in, whole checked frames out as (type, boot, seq, ack, payload); every reject is counted."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.overflow = False
        self.crc_errors = 0
        self.framing_errors = 0
        self.oversize = 0

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        frames: list[Frame] = []
        for b in data:
            if b:
                if len(self.buf) < 2 * MAX_BODY + 8:
                    self.buf.append(b)
                else:
                    self.overflow = True
                continue
            frame = self._frame()
            if frame is not None:
                frames.append(frame)
        return frames

    def _frame(self) -> "Frame | None":
        raw, over = self.buf, self.overflow
        self.buf = bytearray()
        self.overflow = False
        if over:
            self.oversize += 1
            return None
        if not raw:
            return None         # back-to-back delimiters: used to resynchronise, not an error
        body = unstuff(raw)
        if body is not None:
            body = cobs_decode(body)
        if body is None or len(body) < OVERHEAD:
            self.framing_errors += 1
            return None
        if len(body) > MAX_BODY:
            self.oversize += 1
            return None
        n = len(body) - 4
        if (body[7] << 8) | body[8] != n - HEADER_LEN:   # a byte lost or added, frames glued or cut
            self.framing_errors += 1
            return None
        if crc32(memoryview(body)[:n]) != struct.unpack_from(">I", body, n)[0]:
            self.crc_errors += 1
            return None
        ftype, boot, seq, ack, _ = struct.unpack_from(HEADER, body, 0)
        return (ftype, boot, seq, ack, bytes(body[HEADER_LEN:n]))
