"""The edge's frame codec (edge/devices/node/link.py): CRC, COBS, Ctrl-C stuffing, the decoder and the payloads."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.devices.node import link
from edge.devices.node.link import Frame, FrameType, LinkError
from tests import support_faults as faults

frames = st.builds(Frame, st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
                   st.integers(0, 0xFFFF), st.binary(max_size=link.MAX_BODY - link.OVERHEAD))
FUZZ_PER_KIND = 20_000          # x 7 kinds: 140,000 damaged frames
SEED = 14


def test_crcs_are_the_catalogue_ones() -> None:
    assert link.crc32(b"123456789") == 0xCBF43926     # CRC-32/ISO-HDLC, protocol 2
    assert link.crc16(b"123456789") == 0x29B1         # CRC-16/CCITT-FALSE, protocol 1 (recognised, refused)


def test_a_frame_carries_its_payload_length_and_a_crc_32_over_it() -> None:
    body = link.cobs_decode(link.unstuff(link.encode(Frame(FrameType.OUTPUTS, 0x0102, 3, 4, b"\x00\x05"))[:-1]))
    assert body[:9] == bytes.fromhex("10 0102 0003 0004 0002")
    assert body[9:11] == b"\x00\x05" and body[11:] == link.crc32(body[:11]).to_bytes(4, "big")


def edge_decode(stream: bytes) -> list[faults.Tup]:
    return [(f.type, f.boot, f.seq, f.ack, f.payload) for f in link.Decoder().feed(stream)]


def edge_encode(t: faults.Tup) -> bytes:
    return link.encode(Frame(*t))


@pytest.mark.parametrize("kind", faults.KINDS)
def test_no_damaged_frame_is_ever_accepted(kind: str) -> None:
    """Issue 14 defect 7: a lost byte, a byte added, a delimiter turned to data or data to a delimiter,
    bit flips, a frame cut short, two frames glued: 20,000 of each on real traffic, none accepted."""
    assert faults.false_accepts(kind, FUZZ_PER_KIND, edge_encode, edge_decode, SEED) == 0


@pytest.mark.parametrize("kind", [k for k in faults.KINDS if k != "glue"])
def test_the_fuzz_finds_what_protocol_1_let_through(kind: str) -> None:
    """The same samples against protocol 1 (no length, CRC-16): each kind got damaged frames accepted,
    so a zero above means something. Glue is the exception: with no final XOR, protocol 1's CRC over a
    glued body (a valid body, 0x00, another valid body) is never right, and it never accepted one."""
    assert faults.false_accepts(kind, FUZZ_PER_KIND, faults.protocol_1_encode, faults.protocol_1_decode, SEED) > 0


def test_a_body_one_byte_longer_or_shorter_is_refused_before_its_crc() -> None:
    wire = link.encode(Frame(FrameType.OUTPUTS, 1, 2, 3, b"\x00\x01"))
    body = link.unframe(wire[:-1])
    for bad in (body + b"\x00", body[:-1], body[:9] + b"\x00" + body[9:]):
        with pytest.raises(LinkError, match="len field says 2"):
            link.check_body(bad)
    dec = link.Decoder()
    assert dec.feed(link.stuff(link.cobs_encode(body + b"\x00")) + b"\x00") == []
    assert (dec.framing_errors, dec.crc_errors) == (1, 0)


def test_a_protocol_1_frame_is_counted_as_such_and_never_returned() -> None:
    hello = faults.protocol_1_encode((FrameType.HELLO, 7, 0, 0, hello_payload(proto=1)))
    outputs = faults.protocol_1_encode((FrameType.OUTPUTS, 7, 1, 0, b"\x00\x01"))
    dec = link.Decoder()
    assert dec.feed(hello + outputs + hello) == []
    assert (dec.old_protocol, dec.framing_errors) == (3, 3)
    assert dec.feed(link.encode(Frame(FrameType.STATUS, 7, 2, 0))) == [Frame(FrameType.STATUS, 7, 2, 0)]


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
    s = struct.pack(">HIBHH10H", 3, 99, 0b011, 1, 1, *range(10))
    st_ = link.parse_status(s)
    assert st_.linked and st_.tripped and not st_.config_error and st_.tx_retransmits == 6
    assert st_.rx_refused == 9
    with pytest.raises(LinkError):
        link.parse_status(s + b"\x00")
