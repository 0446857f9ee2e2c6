"""Damaged frames for fuzzing the link's two decoders (edge and node) with one seeded generator.

Every sample is a stream: a delimiter, then a frame with one fault of its kind, then what follows it on a
real link (the next frame, or a lone 0x00 as the edge sends on opening a port and the node before its
first HELLO), then a delimiter. No frame of the damaged part is intact, so a decoder must accept nothing
from it but the follower, when the fault left that whole.

The frames are the link's real traffic: OUTPUTS with few outputs set, READINGS, STATUS and HELLO_REQ,
with small sequence numbers. Zero bytes are common in them, which is where protocol 1 was weak.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator

from edge.devices.node import link

Tup = tuple[int, int, int, int, bytes]       # (type, boot, seq, ack, payload), the node decoder's own shape
Encoder = Callable[[Tup], bytes]

KINDS = ("lose", "insert", "delimiter_to_data", "data_to_delimiter", "bit_flips", "truncate", "glue")


def traffic(rng: random.Random) -> Tup:
    boot, seq, ack = rng.getrandbits(16), rng.randrange(300), rng.randrange(300)
    kind = rng.randrange(4)
    if kind == 0:
        return (0x10, boot, seq, ack, struct.pack(">H", rng.randrange(4)))
    if kind == 1:
        items = [(i, 0, 0, round(rng.uniform(0, 1000), 1)) for i in range(rng.randrange(1, 4))]
        return (0x02, boot, seq, ack, link.readings_payload(seq, rng.randrange(1000), rng.randrange(10**5), items))
    if kind == 2:
        counters = [rng.randrange(3) for _ in range(10)]
        return (0x03, boot, seq, ack, struct.pack(">HIBHH10H", seq, rng.randrange(10**5), 1, 1, 1, *counters))
    return (0x11, 0, seq, 0, b"")


def damage(kind: str, wire: bytes, follower: bytes, rng: random.Random) -> tuple[bytes, bool]:
    """(the damaged frame and what follows it, whether the follower frame is still whole)."""
    b = bytearray(wire)                  # the frame, its delimiter last
    tail = follower if rng.random() < 0.5 else b"\x00"
    if kind == "lose":                   # a data byte (losing the delimiter is "glue")
        del b[rng.randrange(len(b) - 1)]
    elif kind == "insert":
        b.insert(rng.randrange(len(b)), rng.randrange(1, 256))
    elif kind == "delimiter_to_data":
        b[-1] = rng.randrange(1, 256)
    elif kind == "data_to_delimiter":
        b[rng.randrange(len(b) - 1)] = 0
    elif kind == "bit_flips":            # 1 to 3 distinct bits, the delimiter's included
        for bit in rng.sample(range(8 * len(b)), rng.randrange(1, 4)):
            b[bit // 8] ^= 1 << (bit % 8)
    elif kind == "truncate":             # cut short, then whatever comes next
        del b[rng.randrange(1, len(b) - 1):]
    elif kind == "glue":                 # the delimiter lost between two frames
        del b[-1]
        tail = follower
    else:
        raise ValueError(kind)
    return bytes(b) + tail, tail == follower and b[-1] == 0


def samples(kind: str, n: int, encode: Encoder, seed: int) -> Iterator[tuple[bytes, Tup | None]]:
    """n streams of one kind of fault: (bytes to feed, the frame a decoder may take from them or None)."""
    rng = random.Random(f"{seed}-{kind}")
    for _ in range(n):
        follower = traffic(rng)
        stream, whole = damage(kind, encode(traffic(rng)), encode(follower), rng)
        yield b"\x00" + stream + b"\x00", follower if whole else None


def false_accepts(kind: str, n: int, encode: Encoder, decode: Callable[[bytes], list[Tup]], seed: int) -> int:
    """How many frames a decoder took from the damaged parts of n samples."""
    bad = 0
    for stream, follower in samples(kind, n, encode, seed):
        bad += sum(1 for f in decode(stream) if f != follower)
    return bad


# ---- protocol 1, only to show that the fuzz finds what it was weak at ----

def protocol_1_encode(t: Tup) -> bytes:
    body = struct.pack(">BHHH", *t[:4]) + t[4]
    body += struct.pack(">H", link.crc16(body))
    return link.stuff(link.cobs_encode(body)) + b"\x00"


def protocol_1_decode(stream: bytes) -> list[Tup]:
    out: list[Tup] = []
    for raw in stream.split(b"\x00"):
        try:
            f = link.protocol_1_frame(link.unframe(raw)) if raw else None
        except link.LinkError:
            f = None
        if f is not None:
            out.append((f.type, f.boot, f.seq, f.ack, f.payload))
    return out
