"""The edge's node-link codec, protocol 2 (length + CRC-32) against protocol 1 (CRC-16, no length).

The same traffic (an OUTPUTS frame and a READINGS frame of four channels per node sample, 400 frames)
is encoded and decoded by ``edge.devices.node.link`` and by protocol 1 rebuilt from the same module's
COBS, stuffing and CRC-16 (what the edge still uses to recognise an old node), both through the same
path (split at the delimiters, unframe, check), so the ratio is the price of the format alone: the
length field and CRC-32 against CRC-16. The figure is frames per second through encode + decode.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from bench.figures import Figure
from edge.devices.node import link
from edge.devices.node.link import Frame

BASELINE = "protocol 1 (CRC-16, no length), same COBS and stuffing"


def traffic(n: int) -> list[Frame]:
    out: list[Frame] = []
    for i in range(n):
        out.append(Frame(0x10, 0xBEEF, i, i, struct.pack(">H", i & 3)))
        items = [(k, 0, 0, 800.0 + k) for k in range(4)]
        out.append(Frame(0x02, 0xBEEF, i, i, link.readings_payload(i, i, i * 100, items)))
    return out


def protocol_1_round_trip(frames: list[Frame]) -> int:
    wire = bytearray()
    for f in frames:
        body = struct.pack(">BHHH", f.type, f.boot, f.seq, f.ack) + f.payload
        wire += link.stuff(link.cobs_encode(body + struct.pack(">H", link.crc16(body)))) + b"\x00"
    got = 0
    for raw in bytes(wire).split(b"\x00"):
        if raw and link.protocol_1_frame(link.unframe(raw)) is not None:
            got += 1
    return got


def protocol_2_round_trip(frames: list[Frame]) -> int:
    wire = b"".join(link.encode(f) for f in frames)
    return len([link.check_body(link.unframe(raw)) for raw in wire.split(b"\x00") if raw])


def timed(fn: Callable[[list[Frame]], int], frames: list[Frame]) -> float:
    t = time.perf_counter()
    assert fn(frames) == len(frames)
    return time.perf_counter() - t


def run(quick: bool = False) -> list[Figure]:
    frames = traffic(200)
    new = old = float("inf")
    for _ in range(5 if quick else 60):       # interleaved, best of each: the machine is shared and noisy
        new = min(new, timed(protocol_2_round_trip, frames))
        old = min(old, timed(protocol_1_round_trip, frames))
    return [Figure("node link encode + decode (protocol 2)", len(frames) / new, "frames/s", BASELINE,
                   len(frames) / old)]
