"""Topics and envelopes: names that cannot break a topic, deterministic bytes from the outbox's stored
fields (a re-send is identical, also after reopening), the birth's previous-boot sequences, parse errors."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.telemetry import envelope as E
from edge.telemetry import schemas
from edge.telemetry.outbox import Outbox, Priority
from edge.telemetry.topics import STREAMS, StationTopics, TopicError, TopicParts, parse_topic, subscription
from edge.timestamps import TimestampError, parse_rfc3339, rfc3339_ms

T = StationTopics("pilot-line", "hd-01")


# ---- topics --------------------------------------------------------------------------------------

def test_topics_of_a_station() -> None:
    assert T.status == "reedge/v1/pilot-line/hd-01/status"
    assert T.telemetry.endswith("/hd-01/telemetry") and T.state.endswith("/state") and T.batch.endswith("/batch")
    assert T.cmd("ack_alarm", "scada-hd") == "reedge/v1/pilot-line/hd-01/cmd/scada-hd/ack_alarm"
    assert T.cmd("hold", "CN with Spaces") == "reedge/v1/pilot-line/hd-01/cmd/CN with Spaces/hold"
    assert T.reply("reset") == "reedge/v1/pilot-line/hd-01/reply/reset"
    assert T.cmd_filter == "reedge/v1/pilot-line/hd-01/cmd/+/+"
    assert subscription() == "reedge/v1/+/+/#"
    assert subscription("pilot-line") == "reedge/v1/pilot-line/+/#"


@pytest.mark.parametrize("bad", ["", "+", "#", "hd/01", "HD-01", "-hd", "hd 01", "$sys", "a" * 33, "hd\x00"])
def test_a_name_that_would_break_a_topic_is_refused_clearly(bad: str) -> None:
    with pytest.raises(TopicError, match=r"station .* cannot be an MQTT topic level"):
        StationTopics("pilot-line", bad)
    if bad != "+":   # the wildcard is what subscription means by "every station"
        with pytest.raises(TopicError, match="station"):
            subscription("pilot-line", bad)


def test_unknown_verb_and_stream_are_refused() -> None:
    with pytest.raises(TopicError, match="unknown command verb 'explode'"):
        T.cmd("explode", "scada-hd")
    for bad in ("", "scada/hd", "scada+", "#", " scada", "a\nb", "x" * 129):
        with pytest.raises(TopicError, match="cannot be a command topic level"):
            T.cmd("hold", bad)
    with pytest.raises(TopicError, match="needs the sender's identity"):
        T.topic("cmd", "hold")
    with pytest.raises(TopicError, match="unknown stream"):
        T.topic("logs")


def test_parse_topic_round_trips_every_topic() -> None:
    for name, spec in STREAMS.items():
        topic = T.topic(name, "hold", "scada-hd") if "{verb}" in spec.suffix else T.topic(name)
        parts = parse_topic(topic)
        assert (parts.site, parts.station, parts.stream) == ("pilot-line", "hd-01", name)
    assert parse_topic(T.cmd("reset", "service-laptop")) == TopicParts("pilot-line", "hd-01", "cmd", "reset",
                                                                       "service-laptop")
    inbox = parse_topic(f"{T.root}/reply/scada-hd/req/7")
    assert (inbox.stream, inbox.identity, inbox.verb) == ("reply", "scada-hd", None)
    for bad in ("reedge/v2/a/b/status", "reedge/v1/a/b", "reedge/v1/a/b/cmd/scada/explode",
                "reedge/v1/a/b/cmd/hold", "reedge/v1/a/b/cmd/scada/hold/x", "reedge/v1/a/b/status/x",
                "reedge/v1/a/b/reply/scada", "reedge/v1/a/b/reply/scada//x", "reedge/v1/a/b/reply/scada/x/"):
        with pytest.raises(TopicError):
            parse_topic(bad)


def test_reply_topics_a_command_may_ask_for() -> None:
    inbox = f"{T.root}/reply/scada-hd/7"
    assert T.check_reply_topic(inbox, identity="scada-hd") == inbox
    assert T.check_reply_topic(inbox + "/a/b", identity="scada-hd") == inbox + "/a/b"
    assert T.check_reply_topic(T.reply("hold"), identity="scada-hd") == T.reply("hold")
    for bad in ("scada/replies/7", T.state, T.event, "reedge/v1/pilot-line/hd-02/reply/hold",
                "reedge/v1/pilot-line/hd-02/reply/scada-hd/7", f"{T.root}/reply/other/7", f"{T.root}/reply/scada-hd",
                f"{T.root}/reply/scada-hd/", f"{T.root}/reply/scada-hd/+", "scada/+", "$SYS/x", "", "a\nb", 7):
        with pytest.raises(TopicError):
            T.check_reply_topic(bad, identity="scada-hd")


# ---- envelopes ----------------------------------------------------------------------------------

def test_envelope_is_byte_identical_on_resend_and_after_reopening(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, boot_id="boot-a", synchronous="NORMAL") as ob:
        msg = ob.put("telemetry", T.telemetry, {"channels": {"chamber_temp": {"last": 612.4}}, "z": 1, "a": [1, 2]},
                     priority=Priority.TELEMETRY)
        first = E.envelope(msg, site="pilot-line", station="hd-01")
        again = E.envelope(ob.pending(1)[0], site="pilot-line", station="hd-01")
    with Outbox(path, boot_id="boot-b", synchronous="NORMAL") as ob:   # a restart: another boot re-sends it
        resent = E.envelope(ob.pending(1)[0], site="pilot-line", station="hd-01")
    assert first == again == resent
    doc = json.loads(first)
    assert list(doc) == list(E.KEYS)
    assert (doc["boot_id"], doc["stream"], doc["seq"]) == ("boot-a", "telemetry", 1)
    assert doc["body"] == {"channels": {"chamber_temp": {"last": 612.4}}, "z": 1, "a": [1, 2]}
    assert first.endswith(b',"body":' + msg.payload + b"}"), "the stored body is spliced as it is"
    assert schemas.errors(doc, "envelope.json") == []


def test_timestamp_is_utc_rfc3339_with_milliseconds_of_created_ns() -> None:
    ns = 1_741_944_413_589_999_999
    assert rfc3339_ms(ns) == "2025-03-14T09:26:53.589Z"
    assert parse_rfc3339("2025-03-14T09:26:53.589Z") == 1_741_944_413_589_000_000
    assert parse_rfc3339("2025-03-14T10:26:53.589+01:00") == 1_741_944_413_589_000_000
    with pytest.raises(TimestampError, match="issued_at must be an RFC 3339 date-time"):
        parse_rfc3339("2025-03-14 09:26:53", "issued_at")
    raw = E.build(site="s1", station="st1", boot_id="b1", stream="event", seq=3, created_ns=ns, body={"x": 1})
    env = E.parse(raw)
    assert env.ts == "2025-03-14T09:26:53.589Z" and env.t_ns == 1_741_944_413_589_000_000
    assert env.key == ("b1", "event", 3) and env.body == {"x": 1}


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"stream": "cmd"}, "not a published stream"),
    ({"stream": "logs"}, "not a published stream"),
    ({"seq": 0}, "seq must be an integer from 1"),
    ({"boot_id": "has space"}, "boot id"),
    ({"station": "HD"}, "station"),
    ({"body": b"[1,2]"}, "must be a JSON object"),
    ({"body": b"{not json"}, "not JSON"),
    ({"body": {"v": float("nan")}}, "not JSON-serialisable"),
])
def test_build_refuses_what_cannot_be_an_envelope(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"site": "s", "station": "st", "boot_id": "b", "stream": "event", "seq": 1,
                               "created_ns": 0, "body": {}}
    args.update(kwargs)
    with pytest.raises(E.EnvelopeError, match=match):
        E.build(**args)  # type: ignore[arg-type]


def _doc() -> dict[str, object]:
    raw = E.build(site="s", station="st", boot_id="b", stream="state", seq=9, created_ns=0, body={})
    doc: dict[str, object] = json.loads(raw)
    return doc


@pytest.mark.parametrize(("change", "match"), [
    (lambda d: d.pop("seq"), "lacks seq"),
    (lambda d: d.update(extra=1), "unknown field"),
    (lambda d: d.update(stream="telemetry"), "does not belong to stream 'telemetry'"),
    (lambda d: d.update(schema_version="2.0"), "not a 1.x version"),
    (lambda d: d.update(seq=True), "seq must be an integer"),
    (lambda d: d.update(ts="yesterday"), "RFC 3339"),
    (lambda d: d.update(body=[]), "body must be a JSON object"),
    (lambda d: d.update(site="a/b"), "site"),
])
def test_parse_says_what_is_wrong(change, match: str) -> None:
    doc = _doc()
    change(doc)
    with pytest.raises(E.EnvelopeError, match=match):
        E.parse(json.dumps(doc).encode())


def test_parse_refuses_non_json_and_non_objects() -> None:
    for raw, match in ((b"\xff\xfe", "UTF-8"), (b"{", "not JSON"), (b"[]", "JSON object"),
                       (b"\xef\xbb\xbf{}", "not JSON: it begins with a byte order mark")):
        with pytest.raises(E.EnvelopeError, match=match):
            E.parse(raw)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_parse_refuses_the_numbers_json_has_not(constant: str) -> None:
    """Python's json reads NaN and Infinity; RFC 8259, PostgreSQL's jsonb and every JSON reader do not."""
    doc = _doc()
    doc["body"] = {"channels": {"t": {"last": 1.5}}}
    raw = json.dumps(doc).replace("1.5", constant).encode()
    with pytest.raises(E.EnvelopeError, match=f"payload is not JSON: {constant} is not a JSON number"):
        E.parse(raw)
    E.parse(raw.replace(constant.encode(), b"1e308"))


def _parsed_alike(raw: bytes) -> None:
    """The compiled parse (orjson) either leaves ``raw`` to json (None) or reads exactly what json reads:
    the same types, values and key order (``repr``: 1, 1.0, True and -0.0 all differ)."""
    pytest.importorskip("orjson")
    fast = E._fast_loads(raw)
    try:
        reference: object = E._loads(raw)
    except E.EnvelopeError:
        assert fast is None, raw
        return
    assert fast is None or repr(fast) == repr(reference), raw


# what either parser could read differently: every one is read as json reads it, or left to json
_EDGES = [b"\xef\xbb\xbf{}", b'{"a":"\\ud800"}', b'{"a":"\\udc00\\ud800"}', b'{"a":"\\ud83d\\ude00"}',
          b'{"a":1e400}', b'{"a":-1e400}', b'{"a":1e-400}', b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-0.0}',
          b'{"a":-0}', b'{"a":9223372036854775807}', b'{"a":9223372036854775808}', b'{"a":-9223372036854775809}',
          b'{"a":18446744073709551616}', b'{"a":123456789012345678901234567890}', b'{"a":1' + b"0" * 400 + b"}",
          b'{"a":1,"b":2,"a":3}', b'{"a":1}\x0b', b'\x0c{"a":1}', b'{"a":1}\x00', b'{"a":1} x', b'{"a":"\x01"}',
          b'{"a":"\xc0\xaf"}', b'{"a":"\xed\xa0\x80"}', b'{"a":"\xf4\x90\x80\x80"}', b'{"a":"\xe2\x82"}',
          b"[" * 2000 + b"]" * 2000, b'{"a":1.0e+2,"b":1E2,"c":0.1e1,"d":5e-324,"e":2.4703282292062328e-324}',
          b'{"a":01}', b'{"a":.5}', b'{"a":1.}', b'{"a":+1}', b'{"a":true,"b":false,"c":null}', b'{"\\u0000":1}',
          b'{"a":"\\u0000"}', b' \t\r\n{"a" : [ 1 , 2 ] }\n', b"", b" ", b"{}", b"[]", b"1", b'"s"']

_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 80), max_value=2 ** 80)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=25)


@pytest.mark.parametrize("raw", _EDGES)
def test_the_compiled_parse_reads_every_edge_as_json_does_or_leaves_it_to_json(raw: bytes) -> None:
    _parsed_alike(raw)


@settings(max_examples=400, deadline=None)
@given(value=_JSON_VALUES, ascii_only=st.booleans(), spaced=st.booleans())
def test_the_compiled_parse_reads_generated_documents_as_json_does(value: object, ascii_only: bool,
                                                                    spaced: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only, indent=1 if spaced else None).encode("utf-8",
                                                                                         "surrogatepass")
    _parsed_alike(raw)


@settings(max_examples=400, deadline=None)
@given(at=st.integers(min_value=0, max_value=10_000), byte=st.integers(min_value=0, max_value=255),
       insert=st.booleans())
def test_the_compiled_parse_reads_a_damaged_envelope_as_json_does(at: int, byte: int, insert: bool) -> None:
    raw = (schemas.schema_dir() / "examples" / "telemetry.json").read_bytes()
    at %= len(raw)
    _parsed_alike(raw[:at] + bytes([byte]) + raw[at + (0 if insert else 1):])


def test_the_compiled_parse_is_the_one_used_for_a_station_message_where_installed() -> None:
    """The historian's extra (and ./dev) installs orjson: a real envelope takes the fast path there."""
    pytest.importorskip("orjson")
    raw = (schemas.schema_dir() / "examples" / "telemetry.json").read_bytes()
    assert E._fast_loads(raw) == json.loads(raw)
    assert E.parse(raw).body == json.loads(raw)["body"]


@pytest.mark.parametrize("compiled", [True, False])
def test_a_number_beyond_a_double_is_not_valid_against_any_schema(compiled: bool,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``1e400`` parses as infinity (``parse_constant`` never sees it), which jsonschema calls a number: the
    schema check refuses it (and NaN), with the compiled validator and without, and keeps every finite one."""
    if not compiled:
        monkeypatch.setattr(schemas, "_fast_is_valid", lambda _name: None)
    raw = (schemas.schema_dir() / "examples" / "telemetry.json").read_text()
    assert '"last": 612.4' in raw
    for number in ("1e400", "-2E+308", "9" * 308 + "e1", "1" * 400 + ".5", "NaN"):
        doc = json.loads(raw.replace('"last": 612.4', f'"last": {number}'))
        found = schemas.errors(doc, "telemetry.json")
        assert found == ["/body/channels/chamber_temp/last: " + repr(doc["body"]["channels"]["chamber_temp"]["last"])
                         + " is not a JSON number (a number beyond a double reads as inf)"], (number, found)
    for number in ("1e308", "1.7976931348623157e+308", "1e-400", "1.5e+15", "1" * 280):
        assert schemas.errors(json.loads(raw.replace('"last": 612.4', f'"last": {number}')), "telemetry.json") == []


# ---- birth and Will -----------------------------------------------------------------------------

def test_birth_carries_where_the_previous_boot_left_each_stream(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, boot_id="boot-a", synchronous="NORMAL") as ob:
        for i in range(5):
            ob.put("telemetry", T.telemetry, {"i": i}, priority=Priority.TELEMETRY)
        ob.put("event", T.event, {"kind": "x"}, priority=Priority.EVENT)
        for m in ob.pending(100):
            ob.ack(m.id)          # everything sent: the numbers must still be known
    with Outbox(path, boot_id="boot-b", synchronous="NORMAL") as ob:
        previous = E.previous_boot(ob, "boot-a")      # before this boot puts anything
        assert previous.last_seq == {"telemetry": 5, "event": 1}
        raw = E.birth(site="pilot-line", station="hd-01", boot_id="boot-b", connection=1, now_ns=10**18,
                      boot_started_ns=10**18, software="reedge test", previous=previous)
        nxt = ob.put("telemetry", T.telemetry, {"i": 5}, priority=Priority.TELEMETRY)
    doc = json.loads(raw)
    assert schemas.errors(doc, "status.json") == []
    assert doc["seq"] == 1 and doc["body"]["state"] == "online"
    assert doc["body"]["previous_boot"] == {"boot_id": "boot-a", "last_seq": {"event": 1, "telemetry": 5}}
    assert nxt.seq == 6, "numbers continue across boots: the birth's 5 is where this boot's numbering resumes"


def test_will_and_birth_numbers_are_unique_per_connection() -> None:
    births = [E.status_seq(n, True) for n in range(1, 5)]
    offline = [E.status_seq(n, False) for n in range(1, 5)]
    assert sorted(births + offline) == list(range(1, 9))
    raw = E.will(site="pilot-line", station="hd-01", boot_id="boot-b", connection=2, now_ns=0)
    env = E.parse(raw)
    assert env.seq == 4 and env.body == {"state": "offline", "connection": 2, "reason": "connection_lost"}
    assert schemas.errors(json.loads(raw), "status.json") == []
    with pytest.raises(E.EnvelopeError, match="connection"):
        E.status_seq(0, True)


def test_envelope_of_an_outbox_message_is_byte_for_byte_what_build_makes(tmp_path: pathlib.Path) -> None:
    """``envelope`` caches the header and the second of ``ts``: its bytes must be ``build``'s, every time."""
    with Outbox(tmp_path / "o.db", boot_id="boot-a", synchronous="NORMAL") as ob:
        msgs = [ob.put(s, T.topic(s, None), {"i": i, "ü": "é"}, priority=Priority.EVENT if s != "telemetry" else
                       Priority.TELEMETRY) for i in range(3) for s in ("telemetry", "event", "state")]
    for ns in (0, 999_999, 1_000_000, 1_717_000_000_999_999_999, 1_717_000_001_000_000_000, 1_717_000_000_123_456_789):
        for m in msgs:
            m2 = dataclasses.replace(m, created_ns=ns)
            assert E.envelope(m2, site="pilot-line", station="hd-01") == E.build(
                site="pilot-line", station="hd-01", boot_id=m2.boot_id, stream=m2.stream, seq=m2.seq,
                created_ns=ns, body=m2.payload)
    with pytest.raises(E.EnvelopeError, match="not JSON"):   # a body read back from the file is checked again
        E.envelope(dataclasses.replace(msgs[0], payload=b"{", body_checked=False), site="pilot-line", station="hd-01")


def test_a_parsed_envelope_gives_back_the_object_it_was_parsed_from() -> None:
    """``Envelope.document()`` is what the schema is checked against (``reedge tail``, the historian): for every
    example message it equals a plain ``json.loads`` of the payload, value for value and type for type."""
    examples = sorted((schemas.schema_dir() / "examples").glob("*.json"))
    parsed = 0
    for path in examples:
        raw = path.read_bytes()
        doc = json.loads(raw)
        if doc.get("stream") not in STREAMS or STREAMS[doc["stream"]].direction != "publish":
            continue           # a command example: not an envelope
        got = E.parse(raw).document()
        assert got == doc and list(got) == list(E.KEYS), path.name
        assert [type(v) for v in got.values()] == [type(doc[k]) for k in got], path.name
        parsed += 1
    assert parsed >= 12
