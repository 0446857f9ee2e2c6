"""The edge's frame codec (edge/devices/node/link.py): CRC, COBS, Ctrl-C stuffing, the decoder and the payloads."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.devices.node import link
from edge.devices.node.link import Frame, FrameType, LinkError

frames = st.builds(Frame, st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
                   st.integers(0, 0xFFFF), st.binary(max_size=link.MAX_BODY - 9))


def test_crc_is_ccitt_false() -> None:
    assert link.crc16(b"123456789") == 0x29B1        # the catalogue check value of CRC-16/CCITT-FALSE
    assert link.crc16(b"") == 0xFFFF


@given(st.binary(max_size=2000))
def test_cobs_round_trips_and_never_emits_zero(data: bytes) -> None:
    enc = link.cobs_encode(data)
    assert 0 not in enc
    assert link.cobs_decode(enc) == data


@given(frames)
def test_wire_bytes_hold_no_zero_but_the_delimiter_and_never_ctrl_c(frame: Frame) -> None:
    wire = link.encode(frame)
    assert wire.endswith(b"\x00") and 0 not in wire[:-1]
    assert 0x03 not in wire                          # a Ctrl-C byte would stop the node's firmware


@given(st.lists(frames, min_size=1, max_size=5), st.data())
def test_decoder_returns_every_frame_whatever_the_chunking(fs: list[Frame], data: st.DataObject) -> None:
    wire = b"".join(link.encode(f) for f in fs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    dec = link.Decoder()
    got: list[Frame] = []
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        got += dec.feed(wire[a:b])
    assert got == fs
    assert dec.crc_errors == dec.framing_errors == dec.oversize == 0


@given(frames, st.data())
def test_any_single_bit_error_is_caught(frame: Frame, data: st.DataObject) -> None:
    wire = bytearray(link.encode(frame))
    i = data.draw(st.integers(0, len(wire) - 2))
    wire[i] ^= 1 << data.draw(st.integers(0, 7))
    dec = link.Decoder()
    got = dec.feed(bytes(wire))
    assert frame not in got
    assert dec.crc_errors + dec.framing_errors + dec.oversize >= 1


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=1500), max_size=8))
def test_random_bytes_never_crash_the_decoder(chunks: list[bytes]) -> None:
    dec = link.Decoder()
    for c in chunks:
        for f in dec.feed(c):
            assert isinstance(f, Frame)


def test_garbage_before_a_frame_costs_only_the_garbage() -> None:
    frame = Frame(FrameType.OUTPUTS, 1, 2, 3, b"\x00\x01")
    dec = link.Decoder()
    got = dec.feed(b"\r\x03\x04 noise" + b"\x00" + link.encode(frame))
    assert got == [frame] and dec.framing_errors == 1


def test_an_endless_frame_is_dropped_and_counted_then_the_link_recovers() -> None:
    frame = Frame(FrameType.STATUS, 1, 2, 3)
    dec = link.Decoder()
    assert dec.feed(b"\x01" * 5000) == []
    assert dec.feed(b"\x00" + link.encode(frame)) == [frame]
    assert dec.oversize == 1


def test_too_long_a_frame_is_refused_when_encoding() -> None:
    with pytest.raises(LinkError, match="exceeds"):
        link.encode(Frame(FrameType.READINGS, 0, 0, 0, bytes(link.MAX_BODY)))


def hello_payload(**over: object) -> bytes:
    d: dict[str, object] = {"proto": 1, "fw": "1.0.0", "node": "n1", "cfg": "00ff", "uid": "e660", "boot": 7,
                            "channels": ["a", "b"], "outputs": ["v"], "safe": [1], "deadman_ms": 500,
                            "period_ms": 100, "error": ""}
    d.update(over)
    return json.dumps(d).encode()


def test_hello_parses_and_bad_hellos_are_refused_with_the_field_named() -> None:
    h = link.parse_hello(hello_payload())
    assert (h.node_id, h.channels, h.outputs, h.safe_levels) == ("n1", ("a", "b"), ("v",), (1,))
    with pytest.raises(LinkError, match="'boot'"):
        link.parse_hello(hello_payload(boot="7"))
    with pytest.raises(LinkError, match="'safe'"):
        link.parse_hello(hello_payload(safe=[2]))
    with pytest.raises(LinkError, match="not JSON"):
        link.parse_hello(b"\xff{")


def test_readings_and_status_round_trip_and_reject_wrong_lengths() -> None:
    p = link.readings_payload(5, 42, 1000, [(0, 0, 0, 851.25), (1, link.NODE_FAULT, 1, float("nan"))])
    r = link.parse_readings(p)
    assert (r.base, r.sample, r.t_ms) == (5, 42, 1000)
    assert r.items[0].value == 851.25 and r.items[1].status == link.NODE_FAULT
    with pytest.raises(LinkError, match="says 2 readings"):
        link.parse_readings(p[:-1])
    s = struct.pack(">HIBHH9H", 3, 99, 0b011, 1, 1, *range(9))
    st_ = link.parse_status(s)
    assert st_.linked and st_.tripped and not st_.config_error and st_.tx_retransmits == 6
    with pytest.raises(LinkError):
        link.parse_status(s + b"\x00")
