"""``reedge tail``: the StreamTracker's reading of sequence numbers, and the command against a real broker
(mosquitto when installed, else the embedded amqtt broker) fed by paho."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.telemetry import envelope as E
from edge.telemetry.tail import StreamTracker, check_message
from edge.telemetry.topics import StationTopics

T = StationTopics("pilot-line", "hd-01")


def env(stream: str, seq: int, boot: str = "boot-a", body: dict[str, Any] | None = None) -> E.Envelope:
    return E.parse(E.build(site="pilot-line", station="hd-01", boot_id=boot, stream=stream, seq=seq, created_ns=0,
                           body=body or {}))


def kinds(findings: list[Any]) -> list[tuple[str, int, int]]:
    return [(f.kind, f.first, f.last) for f in findings]


def test_in_order_is_quiet_and_a_gap_is_reported_then_a_late_one_closes_it() -> None:
    t = StreamTracker()
    assert [kinds(t.observe(env("telemetry", s))) for s in (5, 6, 7)] == [[], [], []]
    assert kinds(t.observe(env("telemetry", 11))) == [("gap", 8, 10)]
    assert t.lost == 3
    assert kinds(t.observe(env("telemetry", 9))) == [("late", 9, 9)]
    assert t.lost == 2
    assert kinds(t.observe(env("telemetry", 12))) == []


def test_a_resent_message_is_a_duplicate() -> None:
    t = StreamTracker()
    for s in (1, 2, 3):
        t.observe(env("event", s))
    assert kinds(t.observe(env("event", 2))) == [("duplicate", 2, 2)]
    assert t.summary()[0]["duplicates"] == 1 and t.lost == 0


def test_streams_and_stations_are_tracked_apart() -> None:
    t = StreamTracker()
    t.observe(env("telemetry", 10))
    t.observe(env("event", 1))
    assert kinds(t.observe(env("event", 2))) == []
    assert kinds(t.observe(env("telemetry", 11))) == []


def birth(boot: str, last_seq: dict[str, int]) -> E.Envelope:
    return E.parse(E.birth(site="pilot-line", station="hd-01", boot_id=boot, connection=1, now_ns=0,
                           boot_started_ns=0, software="t", previous=E.PreviousBoot("boot-a", last_seq)))


def test_a_lost_tail_is_told_from_a_quiet_stream_by_the_birth() -> None:
    t = StreamTracker()
    for s in (1, 2, 3):
        t.observe(env("telemetry", s))
    t.observe(env("event", 1))
    # the station rebooted: its previous boot had reached telemetry 5 and event 1
    assert kinds(t.observe(birth("boot-b", {"telemetry": 5, "event": 1}))) == [("tail_pending", 4, 5)]
    # the first message of the new boot, on the event stream: the station sends events before its
    # telemetry backlog, so telemetry 4..5 may still come: nothing is lost yet
    assert kinds(t.observe(env("event", 2, boot="boot-b"))) == []
    assert t.lost == 0
    # the new boot's first telemetry: the old backlog is through, telemetry 4..5 never came
    assert kinds(t.observe(env("telemetry", 6, boot="boot-b"))) == [("lost_tail", 4, 5)]
    assert t.lost == 2
    assert kinds(t.observe(env("telemetry", 7, boot="boot-b"))) == []


def test_a_windows_heads_tell_a_lost_last_event_within_the_boot_and_a_late_copy_is_late() -> None:
    t = StreamTracker()
    t.observe(env("event", 1))
    t.observe(env("event", 2))
    assert kinds(t.observe(env("telemetry", 1, body={"heads": {"event": 2}}))) == []
    assert kinds(t.observe(env("telemetry", 2, body={"heads": {"event": 4, "batch": 9}}))) == [("lost_tail", 3, 4)]
    assert t.lost == 2                       # batch: never seen by this tail, nothing to judge
    assert kinds(t.observe(env("telemetry", 3, body={"heads": {"event": 4}}))) == []     # said once
    assert kinds(t.observe(env("event", 4))) == [("late", 4, 4)]                          # re-sent
    assert t.lost == 1


def test_after_a_reboot_the_old_telemetry_backlog_may_follow_the_new_boots_events() -> None:
    t = StreamTracker()
    t.observe(env("telemetry", 1))
    t.observe(env("event", 1))
    t.observe(birth("boot-b", {"telemetry": 3, "event": 2}))
    assert kinds(t.observe(env("event", 3, boot="boot-b"))) == [("lost_tail", 2, 2)]   # events: in order
    for s in (2, 3):       # the old boot's telemetry backlog, sent after the new boot's event
        assert kinds(t.observe(env("telemetry", s))) == []
    assert kinds(t.observe(env("telemetry", 4, boot="boot-b"))) == []
    assert t.lost == 1


def test_a_backlog_that_arrives_after_the_birth_is_not_lost() -> None:
    t = StreamTracker()
    t.observe(env("telemetry", 1))
    t.observe(birth("boot-b", {"telemetry": 3}))
    for s in (2, 3):       # the old boot's backlog, sent after the birth
        assert kinds(t.observe(env("telemetry", s))) == []
    assert kinds(t.observe(env("telemetry", 4, boot="boot-b"))) == []
    assert t.lost == 0


def test_thinning_explains_a_gap() -> None:
    t = StreamTracker()
    t.observe(env("telemetry", 1))
    assert kinds(t.observe(env("telemetry", 9))) == [("gap", 2, 8)]
    report = {"kind": "telemetry_thinned", "removed": 4, "bytes_freed": 400, "quota_bytes": 16384, "thinnings": 1,
              "stride": 2, "last_ns": 0, "streams": [{"stream": "telemetry", "first_seq": 2, "last_seq": 8,
                                                      "removed": 4}]}
    assert kinds(t.observe(env("event", 1, body=report))) == [("thinned", 2, 8)]
    assert t.lost == 0 and t.summary()[1]["thinned"] == 7


def test_numbers_going_back_under_a_new_boot_is_a_restart_not_a_duplicate() -> None:
    t = StreamTracker()
    for s in (40, 41):
        t.observe(env("state", s))
    assert kinds(t.observe(env("state", 1, boot="fresh"))) == [("restart", 1, 1)]
    assert kinds(t.observe(env("state", 2, boot="fresh"))) == []


def test_a_retained_message_does_not_start_the_numbering() -> None:
    t = StreamTracker()
    assert t.observe(env("state", 5), retained=True) == []
    assert kinds(t.observe(env("state", 9))) == []         # 6..8 were published before we subscribed
    assert kinds(t.observe(env("state", 10))) == []


def test_check_message_validates_topic_envelope_and_body() -> None:
    good = E.build(site="pilot-line", station="hd-01", boot_id="b", stream="reply", seq=1, created_ns=0,
                   body={"command_id": None, "verb": "hold", "result": "rejected", "code": "not_json",
                         "message": "x", "replayed": False})
    assert check_message(T.reply("hold"), good).problems == []
    assert "envelope says" in check_message(T.event, good).problems[0]
    bad = E.build(site="pilot-line", station="hd-01", boot_id="b", stream="reply", seq=1, created_ns=0,
                  body={"result": "maybe"})
    assert any("/body" in p for p in check_message(T.reply("hold"), bad).problems)
    assert check_message("other/topic", good).problems
    cmd = check_message(T.cmd("hold", "scada-hd"), b'{"schema": "x"}')
    assert cmd.problems and cmd.envelope is None
    inbox = check_message(f"{T.root}/reply/scada-hd/req-7", good)     # a sender's own reply inbox
    assert inbox.problems == [] and inbox.envelope is not None


def _command(issuer: str | None) -> bytes:
    doc = {"schema": "https://reeproduce.eu/schemas/reedge/v1/cmd-hold.json", "command_id": "7d9c0e8a-0001",
           "issued_at": "2025-03-14T09:26:53.589Z", "args": {}}
    return json.dumps(doc if issuer is None else {**doc, "issuer": issuer}).encode()


def test_a_command_naming_another_issuer_than_its_sender_is_reported() -> None:
    assert check_message(T.cmd("hold", "scada-hd"), _command("scada-hd")).problems == []
    assert check_message(T.cmd("hold", "scada-hd"), _command(None)).problems == []
    forged = check_message(T.cmd("hold", "scada-hd"), _command("service-laptop")).problems
    assert forged == ["issuer 'service-laptop' is not the sender 'scada-hd' of the topic: the station rejects it"]


def test_deep_nesting_is_reported_not_raised() -> None:
    """A message nesting 300 levels: json.loads takes it (from any caller's stack depth: pytest -n runs this
    deeper than paho's thread would), the schema validator would recurse to death (inside paho's network
    thread, which would end the tail). Deeper than json.loads itself can go is "not JSON" (RecursionError)."""
    deep = _command("scada-hd").replace(b"{}", b"[" * 300 + b"]" * 300)
    assert isinstance(json.loads(deep), dict)
    cmd = check_message(T.cmd("hold", "scada-hd"), deep)
    assert cmd.problems == ["payload nests deeper than 32 levels: not checked"] and cmd.command is None
    body = E.build(site="pilot-line", station="hd-01", boot_id="b", stream="event", seq=1, created_ns=0,
                   body={"kind": "phase", "x": None}).replace(b"null", b"[" * 300 + b"]" * 300)
    assert isinstance(json.loads(body), dict)
    ev = check_message(T.event, body)
    assert ev.problems == ["payload nests deeper than 32 levels: not checked"] and ev.envelope is None
    assert check_message(T.event, b"\xff" + body).problems      # and bad bytes still get their own answer


# ---- the command against a real broker ---------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def broker(tmp_path: Any) -> Iterator[int]:
    if shutil.which("mosquitto"):
        port = _free_port()
        conf = tmp_path / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "mosquitto did not start"
                time.sleep(0.05)
        try:
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    else:
        from edge.telemetry.embedded_broker import EmbeddedBroker

        b = EmbeddedBroker().start()
        try:
            assert b.port is not None
            yield b.port
        finally:
            b.stop()


def publish_all(port: int, messages: list[tuple[str, bytes, bool]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tail-test-publisher", protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload, retain in messages:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout=20)
    finally:
        client.disconnect()
        client.loop_stop()


def test_tail_reports_gap_duplicate_and_invalid_from_a_real_broker(broker: int) -> None:
    port = broker

    def tele(seq: int) -> bytes:
        return E.build(site="pilot-line", station="hd-01", boot_id="boot-a", stream="telemetry", seq=seq,
                       created_ns=0, body={"window": {"start_ns": 0, "end_ns": 1, "first_tick": 1, "last_tick": 1,
                                                      "samples": 1, "ticks_missed": 0}, "channels": {}})

    proc = subprocess.Popen([sys.executable, "-m", "edge", "tail", "--broker", f"mqtt://127.0.0.1:{port}",
                             "--site", "pilot-line", "--json", "--count", "5", "--seconds", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline().startswith("# tail reedge/v1/pilot-line/+/#")
        assert proc.stderr.readline().startswith("# subscribed to reedge/v1/pilot-line/+/#")   # SUBACK received
        publish_all(port, [(T.telemetry, tele(1), False), (T.telemetry, tele(2), False),
                           (T.telemetry, tele(5), False), (T.telemetry, tele(2), False),
                           (T.event, b'{"not": "an envelope"}', False)])
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = [json.loads(line) for line in out.splitlines()]
    messages = [r for r in records if r["type"] == "message"]
    assert [m.get("seq") for m in messages] == [1, 2, 5, 2, None]
    assert [m["valid"] for m in messages] == [True, True, True, True, False]
    findings = [(r["kind"], r["first"], r["last"]) for r in records if r["type"] == "finding"]
    assert findings == [("gap", 3, 4), ("duplicate", 2, 2)]
    total = records[-1]
    assert total == {"type": "total", "invalid": 1, "lost": 2}
    assert proc.returncode == 1, "invalid or lost messages make the exit status 1"
