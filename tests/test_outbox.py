"""The durable outbox: order, sequence numbers, crashes, the quota, bad input, threads, memory.

The crash tests run a real writer process (this module run as a script: ``python -m
tests.test_outbox writer PATH SEED``) and kill it with SIGKILL while it puts, then reopen the
file it left. The writer prints a line only after each put has returned, so every printed
message must be on disk (or explained by an ack or a thinning event).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pathlib
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from edge.telemetry import outbox as outbox_module
from edge.telemetry.outbox import (
    ROW_OVERHEAD,
    Draft,
    InvalidMessage,
    Message,
    Outbox,
    OutboxError,
    OutboxLocked,
    Priority,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOPIC = "reedge/v1/pilot/hd-01/"


def sample(i: int) -> dict[str, Any]:
    return {"chamber_temp": 20.0 + i * 0.01, "pressure_mbar": 1013.25, "h2_flow_slm": 0.0, "i": i}


def stored(path: pathlib.Path) -> list[tuple[int, str, int, int, bytes]]:
    """Every pending row (id, stream, seq, priority, payload), read with plain sqlite3 behind the outbox's back
    (acknowledged messages kept as history are not: ``tests/test_outbox_history.py``)."""
    with sqlite3.connect(path) as c:
        return c.execute("SELECT id, stream, seq, priority, payload FROM messages WHERE acked = 0"
                         " ORDER BY id").fetchall()


def integrity(path: pathlib.Path) -> str:
    c = sqlite3.connect(path)
    try:
        return str(c.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        c.close()


def thinning_events(messages: list[Message] | list[tuple[int, str, int, int, bytes]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        payload = m.payload if isinstance(m, Message) else m[4]
        body = json.loads(payload)
        if isinstance(body, dict) and body.get("kind") == "telemetry_thinned":
            out.append(body)
    return out


def thinned_seqs(events: list[dict[str, Any]], stream: str) -> list[tuple[int, int]]:
    return [(s["first_seq"], s["last_seq"]) for e in events for s in e["streams"] if s["stream"] == stream]


def drain(ob: Outbox) -> list[Message]:
    """Everything pending, in order, without acknowledging it."""
    out: list[Message] = []
    while batch := ob.pending(500):
        out.extend(batch)
        ob.mark_inflight(m.id for m in batch)
    ob.requeue_inflight()
    return out


# ---- order and sequence numbers ---------------------------------------------------------------


def test_put_numbers_each_stream_and_pending_sends_other_messages_before_telemetry(tmp_path: pathlib.Path) -> None:
    with Outbox(tmp_path / "o.db", boot_id="boot-a") as ob:
        put = [ob.put("telemetry", TOPIC + "telemetry", sample(0), priority=Priority.TELEMETRY),
               ob.put("event", TOPIC + "event", {"kind": "door_opened"}, priority=Priority.EVENT),
               ob.put("telemetry", TOPIC + "telemetry", b"raw bytes", priority=Priority.TELEMETRY, qos=0),
               ob.put("state", TOPIC + "state", {"phase": "purge"}, priority=Priority.STATE, retain=True),
               ob.put("telemetry", TOPIC + "telemetry", sample(2), priority=Priority.TELEMETRY)]
        assert [(m.stream, m.seq) for m in put] == [("telemetry", 1), ("event", 1), ("telemetry", 2),
                                                    ("state", 1), ("telemetry", 3)]
        assert [m.id for m in put] == sorted(m.id for m in put)
        first_others = [put[1], put[3], put[0], put[2], put[4]]    # each class in insertion order
        assert ob.pending(10) == first_others
        assert ob.pending(2) == first_others[:2]
        ob.mark_inflight([put[1].id])
        assert ob.pending(2) == [put[3], put[0]]
        assert put[1].payload == b'{"kind":"door_opened"}' and put[2].payload == b"raw bytes"
        assert put[3].retain and put[2].qos == 0 and put[0].qos == 1
        assert put[0].key == ("boot-a", "telemetry", 1)
        assert ob.last_sequences() == {"telemetry": 3, "event": 1, "state": 1}
        assert put[0].size == len(put[0].payload) + len(put[0].topic) + len("telemetry") + ROW_OVERHEAD


def test_pending_hands_out_what_put_stored_without_reading_it_back_and_the_same_after_a_restart(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What this process put is handed out as put (its encoded body marked checked, so the session does not
    parse it again); what did not fit in memory, and everything after a restart, is read back from the file,
    marked unchecked, and equal field for field. Acknowledged and thinned messages are never handed out."""
    monkeypatch.setattr(outbox_module, "FRESH_MAX", 3)
    path = tmp_path / "o.db"
    with Outbox(path, boot_id="b1", synchronous="NORMAL") as ob:
        put = [ob.put("telemetry", TOPIC + "telemetry", sample(i), priority=Priority.TELEMETRY) for i in range(5)]
        put.append(ob.put("event", TOPIC + "event", b'{"raw":true}', priority=Priority.EVENT))
        got = drain(ob)
        assert got == [put[5], *put[:5]]               # every field but body_checked compared
        assert [m.body_checked for m in got] == [False, True, True, True, False, False]   # bytes: not checked
        ob.ack_many([put[0].id, put[1].id])
        assert drain(ob) == [put[5], *put[2:5]]
    with Outbox(path, boot_id="b2", synchronous="NORMAL") as ob:
        again = drain(ob)
        assert again == [put[5], *put[2:5]] and not any(m.body_checked for m in again)
        assert [bytes(m.payload) for m in again] == [bytes(m.payload) for m in (put[5], *put[2:5])]


def test_order_and_numbers_continue_across_restarts_and_acks(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, boot_id="boot-1") as ob:
        first = [ob.put(s, TOPIC + s, {"n": i}, priority=Priority.EVENT) for i in range(6) for s in ("a", "b")]
        assert ob.ack(first[-1].id) and ob.ack(first[-2].id)     # the newest rows go: ids must not come back
    with Outbox(path, boot_id="boot-2") as ob:
        assert ob.last_sequences() == {"a": 6, "b": 6}
        second = [ob.put(s, TOPIC + s, {"n": i}, priority=Priority.EVENT) for i in range(3) for s in ("b", "a")]
        assert [(m.stream, m.seq) for m in second[:2]] == [("b", 7), ("a", 7)]
        assert min(m.id for m in second) > max(m.id for m in first)
        got = drain(ob)
        assert got == first[:-2] + second
        for stream in ("a", "b"):
            seqs = [m.seq for m in got if m.stream == stream]
            assert seqs == [1, 2, 3, 4, 5, 7, 8, 9]               # 6 was acked, never given again
        assert {m.boot_id for m in got[:10]} == {"boot-1"} and {m.boot_id for m in got[10:]} == {"boot-2"}
        assert ob.ack_many(m.id for m in got) == len(got)
    with Outbox(path, boot_id="boot-3") as ob:
        assert ob.stats().count == 0
        assert ob.put("a", TOPIC + "a", {}, priority=Priority.ALARM).seq == 10   # empty outbox, numbers go on
        assert ob.previous_boot_id == "boot-2", "remembered although every message of boot-2 was acknowledged"


def test_the_previous_boot_and_its_last_numbers_feed_the_birth(tmp_path: pathlib.Path) -> None:
    from edge.telemetry.envelope import previous_boot

    path = tmp_path / "o.db"
    with Outbox(path, boot_id="first") as ob:
        assert ob.previous_boot_id is None
        ob.ack_many(m.id for m in [ob.put("event", TOPIC, {}, priority=Priority.EVENT) for _ in range(3)])
    for boot, before in (("second", "first"), ("third", "second"), ("fourth", "third")):
        with Outbox(path, boot_id=boot) as ob:
            prev = previous_boot(ob)
            assert prev.boot_id == before and prev.last_seq == {"event": 3}
    with Outbox(path, boot_id="fourth") as ob:      # the same boot opening again (a restart of the session)
        assert ob.previous_boot_id == "third"


def test_requeue_after_reconnect_and_after_restart_sends_the_same_messages_again(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, boot_id="b1") as ob:
        msgs = [ob.put("telemetry", TOPIC + "telemetry", sample(i), priority=Priority.TELEMETRY) for i in range(10)]
        sent = ob.pending(4)
        assert ob.mark_inflight(m.id for m in sent) == 4
        assert ob.pending(3) == msgs[4:7]                           # in flight: skipped
        assert ob.ack(msgs[1].id) and not ob.ack(msgs[1].id)         # a second ack of the same id: nothing
        assert ob.stats().inflight == 3
        assert ob.requeue_inflight() == 3                           # the connection dropped
        assert ob.pending(100) == [msgs[0], *msgs[2:]]              # in their places, in order
        ob.mark_inflight([msgs[0].id, msgs[2].id, 999_999])         # an unknown id is not marked
        assert ob.stats().inflight == 2
    with Outbox(path, boot_id="b2") as ob:                          # restart: nothing is in flight
        again = ob.pending(100)
        assert again == [msgs[0], *msgs[2:]]
        assert [m.key for m in again][:2] == [("b1", "telemetry", 1), ("b1", "telemetry", 3)]


def test_a_crash_after_sending_gives_duplicates_with_the_same_identity(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.db"
    child = subprocess.run([sys.executable, "-m", "tests.test_outbox", "sent-not-acked", str(path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    sent = [tuple(k) for k in json.loads(child.stdout)]
    assert len(sent) == 5
    with Outbox(path, boot_id="after") as ob:
        again = ob.pending(100)
        assert [m.key for m in again] == sent                       # the same (boot, stream, seq): a duplicate
        assert all(m.boot_id != "after" for m in again)
        assert ob.put("event", TOPIC + "event", {}, priority=Priority.EVENT).key == ("after", "event", 6)


# ---- crash safety ----------------------------------------------------------------------------

WRITER_STREAMS = [("telemetry", Priority.TELEMETRY)] * 17 + [("state", Priority.STATE), ("alarm", Priority.ALARM),
                                                               ("batch", Priority.BATCH)]


def writer(path: str, seed: int) -> None:
    """Put forever with a small quota (so thinning happens) while a second thread sends and acks "state"."""
    rng = random.Random(seed)
    ob = Outbox(path, quota_bytes=32 * 1024, boot_id=f"writer-{seed}")
    out_lock = threading.Lock()

    def say(line: str) -> None:
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def network() -> None:
        rounds = 0
        while True:
            batch = ob.pending(50)
            ob.mark_inflight(m.id for m in batch)
            for m in batch:
                if m.stream == "state":
                    say(f"A {m.id} {m.stream} {m.seq}")            # the intent, before the ack
                    ob.ack(m.id)
            rounds += 1
            if rounds % 10 == 0 or not batch:
                ob.requeue_inflight()                               # a reconnect
                time.sleep(0.001)

    threading.Thread(target=network, daemon=True).start()
    i = 0
    while True:
        stream, priority = rng.choice(WRITER_STREAMS)
        if rng.random() < 0.05:
            msgs = ob.put_many([Draft(stream, TOPIC + stream, sample(i + k), priority) for k in range(3)])
        else:
            msgs = [ob.put(stream, TOPIC + stream, sample(i), priority=priority)]
        for m in msgs:
            say(f"P {m.id} {m.stream} {m.seq}")
        i += len(msgs)


def first_output(proc: subprocess.Popen[str]) -> str:
    """What the writer printed up to its first whole line, read from the pipe's descriptor.

    Not ``proc.stdout.readline()``: that buffers whatever else is already in the pipe, and
    ``communicate`` then reads the descriptor directly, so those lines (puts and acks the writer
    made) were lost to the check, which then reported a state message acked by nobody (seen
    twice on a loaded machine, where the writer prints many lines before the first read)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.decode()


@pytest.mark.slow
def test_sigkill_while_putting_loses_no_returned_put_and_never_corrupts(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.db"
    rng = random.Random(20240611)
    puts: dict[int, tuple[str, int]] = {}        # id -> (stream, seq), every put that returned, all rounds
    acked: dict[int, tuple[str, int]] = {}       # acks that may have happened
    keys_seen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + 120
    rounds = 20
    for r in range(rounds):
        assert time.monotonic() < deadline, "the crash test took too long"
        proc = subprocess.Popen([sys.executable, "-m", "tests.test_outbox", "writer", str(path), str(r)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = first_output(proc)
        assert first.startswith(("P ", "A ")), proc.stderr.read() if proc.stderr else first
        time.sleep(rng.uniform(0.02, 0.4))
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err
        lines = (first + rest).split("\n")
        for line in lines[:-1]:                  # the last piece may be a line cut by the kill
            kind, id_text, name, seq_text = line.split()
            target = puts if kind == "P" else acked
            target[int(id_text)] = (name, int(seq_text))
            if kind == "P":
                assert (name, int(seq_text)) not in keys_seen, f"sequence reused: {name} {seq_text}"
                keys_seen.add((name, int(seq_text)))

        assert integrity(path) == "ok"
        with Outbox(path, quota_bytes=32 * 1024, boot_id=f"check-{r}") as ob:
            last = ob.last_sequences()
            st = ob.stats()
        rows = stored(path)
        by_id = {row[0]: (row[1], row[2]) for row in rows}
        events = thinning_events([row for row in rows if row[1] == "event"])
        ranges = thinned_seqs(events, "telemetry")
        for msg_id, (stream, seq) in puts.items():
            if msg_id in by_id:
                assert by_id[msg_id] == (stream, seq)
            elif msg_id in acked:
                assert stream == "state"
            else:
                assert stream == "telemetry" and any(a <= seq <= b for a, b in ranges), \
                    f"round {r}: returned put {stream} {seq} (id {msg_id}) is lost"
        for stream in ("telemetry", "state", "alarm", "batch", "event"):
            on_disk = {seq for (s, seq) in by_id.values() if s == stream}
            if not on_disk and stream not in last:
                continue
            assert max(on_disk | {0}) <= last[stream]
            assert max((seq for s, seq in puts.values() if s == stream), default=0) <= last[stream]
            missing = set(range(1, last[stream] + 1)) - on_disk
            if stream == "telemetry":
                assert len(missing) == sum(s["removed"] for e in events for s in e["streams"])
                assert all(any(a <= seq <= b for a, b in ranges) for seq in missing)
            elif stream == "state":
                assert missing <= {seq for s, seq in acked.values() if s == "state"}
            else:
                assert not missing, f"round {r}: {stream} has gaps {sorted(missing)[:10]}"
        assert st.thinned == sum(e["removed"] for e in events)
        assert st.thinning_events == len(events)
        assert st.count == len(rows)
    assert len(puts) > 1000, "the writers hardly wrote: the test proves little"
    assert any(thinning_events([r for r in stored(path) if r[1] == "event"])), "no kill landed after a thinning"


# ---- the quota ------------------------------------------------------------------------------


def test_a_long_outage_thins_telemetry_reports_it_and_keeps_every_other_record(tmp_path: pathlib.Path) -> None:
    quota = 64 * 1024
    n = 20_000
    expected: dict[str, list[int]] = {"alarm": [], "batch": [], "state": [], "event": []}
    with Outbox(tmp_path / "o.db", quota_bytes=quota, synchronous="NORMAL") as ob:
        for i in range(n):
            ob.put("telemetry", TOPIC + "telemetry", sample(i), priority=Priority.TELEMETRY)
            for every, stream, priority in ((400, "alarm", Priority.ALARM), (2000, "batch", Priority.BATCH),
                                            (1000, "state", Priority.STATE), (1500, "event", Priority.EVENT)):
                if i % every == every - 1:
                    m = ob.put(stream, TOPIC + stream, {"kind": stream, "i": i}, priority=priority)
                    expected[stream].append(m.seq)
            assert ob.stats().bytes <= quota
        st = ob.stats()
        got = drain(ob)
    assert not st.over_quota and st.dropped == 0
    events = thinning_events([m for m in got if m.stream == "event"])
    assert events and st.thinning_events == len(events)
    assert st.thinned == sum(e["removed"] for e in events) > n / 2
    # every alarm, batch record, state and operator event is there, in order, numbered without a gap
    for stream in ("alarm", "batch", "state"):
        body = [json.loads(m.payload) for m in got if m.stream == stream]
        assert [m.seq for m in got if m.stream == stream] == list(range(1, len(body) + 1)) == expected[stream]
        assert all(b["kind"] == stream for b in body)
    own = [m for m in got if m.stream == "event"]
    assert [m.seq for m in own] == list(range(1, len(own) + 1))
    assert len(own) == len(events) + len(expected["event"])
    # telemetry: every gap is named by a thinning event, and the gaps add up to what was thinned
    tele = [m.seq for m in got if m.stream == "telemetry"]
    assert tele == sorted(tele)
    missing = set(range(1, n + 1)) - set(tele)
    ranges = thinned_seqs(events, "telemetry")
    assert len(missing) == st.thinned
    assert all(any(a <= s <= b for a, b in ranges) for s in missing)
    # a spread over time: every tenth of the outage kept about as many samples, the latest at least as many
    per_tenth = [sum(1 for s in tele if tenth * n // 10 < s <= (tenth + 1) * n // 10) for tenth in range(10)]
    assert min(per_tenth[:9]) >= 5 and max(per_tenth[:9]) <= 2 * min(per_tenth[:9]), per_tenth
    assert per_tenth[9] >= max(per_tenth[:9]) and tele[-1] == n
    assert len(events) == 1 and events[0]["stride"] >= 32   # nobody read the report: one, kept up to date
    # and the reports themselves stay a small part of the quota
    assert sum(m.size for m in got if m.stream == "event") < quota / 4


def outage(ob: Outbox, start: int, n: int) -> None:
    for i in range(start, start + n):
        ob.put("telemetry", TOPIC + "telemetry", sample(i), priority=Priority.TELEMETRY)


def test_thinning_goes_on_across_a_restart_and_starts_afresh_after_the_backlog_is_sent(tmp_path: pathlib.Path) -> None:
    path, quota = tmp_path / "o.db", 32 * 1024
    with Outbox(path, quota_bytes=quota, synchronous="NORMAL") as ob:
        outage(ob, 0, 5000)
        before = thinning_events(drain(ob))
    with Outbox(path, quota_bytes=quota, synchronous="NORMAL") as ob:      # the controller restarted mid-outage
        outage(ob, 5000, 5000)
        got = drain(ob)
        after = thinning_events(got)[len(before):]
        assert before and after and after[0]["stride"] >= before[-1]["stride"] >= 16
        tele = [m.seq for m in got if m.stream == "telemetry"]
        assert sum(1 for s in tele if s <= 5000) >= len(tele) // 4          # the first half is not wiped out
        ob.ack_many(m.id for m in got)                                      # the broker is back: all sent
        outage(ob, 10_000, 250)                                 # a short outage: every other message suffices
        fresh = thinning_events(drain(ob))
        assert len(fresh) == 1 and fresh[0]["stride"] == 2 and fresh[0]["streams"][0]["first_seq"] > 10_000


def test_alarms_are_never_dropped_even_far_over_quota_and_telemetry_keeps_a_floor(tmp_path: pathlib.Path) -> None:
    quota = 16 * 1024
    with Outbox(tmp_path / "o.db", quota_bytes=quota, synchronous="NORMAL") as ob:
        alarms = [ob.put("alarm", TOPIC + "event", {"rule": "h2_leak", "i": i, "pad": "x" * 100},
                         priority=Priority.ALARM) for i in range(400)]
        tele_bytes = 0
        for i in range(2000):
            tele_bytes += ob.put("telemetry", TOPIC + "telemetry", sample(i), priority=Priority.TELEMETRY).size
            if i % 100 == 0:
                ob.put("batch", TOPIC + "batch", {"batch": f"b{i}"}, priority=Priority.BATCH)
        st = ob.stats()
        got = drain(ob)
    assert st.over_quota and st.bytes > 3 * quota
    assert st.by_priority[Priority.ALARM].count == 400 and st.by_priority[Priority.BATCH].count == 20
    assert [m for m in got if m.stream == "alarm"] == alarms
    tele = st.by_priority[Priority.TELEMETRY]
    assert quota // 8 - 200 <= tele.bytes <= quota // 8 + quota // 16 + 200   # thinned around its floor
    # thinning events cannot flood the outbox: each one frees at least ~1/16 of the quota
    assert 0 < st.thinning_events <= tele_bytes / (quota / 16) + 1


def test_thinning_never_removes_a_message_in_flight(tmp_path: pathlib.Path) -> None:
    with Outbox(tmp_path / "o.db", quota_bytes=16 * 1024, synchronous="NORMAL") as ob:
        early = [ob.put("telemetry", TOPIC + "t", sample(i), priority=Priority.TELEMETRY) for i in range(20)]
        ob.mark_inflight(m.id for m in early)
        for i in range(2000):
            ob.put("telemetry", TOPIC + "t", sample(i), priority=Priority.TELEMETRY)
        assert ob.stats().thinned > 0
        assert ob.ack_many(m.id for m in early) == 20


# ---- bad input and misuse -------------------------------------------------------------------


class NotJson:
    pass


BAD_PUTS: list[tuple[str, dict[str, Any], str]] = [
    ("not serialisable", {"payload": {"when": NotJson()}}, "not JSON-serialisable"),
    ("nan", {"payload": {"t": math.nan}}, "not JSON-serialisable"),
    ("str payload", {"payload": "text"}, "bytes or a dict"),
    ("list payload", {"payload": [1, 2]}, "bytes or a dict"),
    ("int priority", {"priority": 3}, "priority must be a Priority"),
    ("str priority", {"priority": "ALARM"}, "priority must be a Priority"),
    ("None priority", {"priority": None}, "priority must be a Priority"),
    ("empty stream", {"stream": ""}, "stream must be"),
    ("stream with space", {"stream": "tele metry"}, "stream must be"),
    ("stream not str", {"stream": 5}, "stream must be"),
    ("empty topic", {"topic": ""}, "topic must be"),
    ("wildcard topic", {"topic": "reedge/+/x"}, "wildcard"),
    ("qos 3", {"qos": 3}, "qos must be"),
    ("qos bool", {"qos": True}, "qos must be"),
    ("retain str", {"retain": "yes"}, "retain must be"),
]


@pytest.mark.parametrize(("case", "change", "message"), BAD_PUTS, ids=[b[0] for b in BAD_PUTS])
def test_bad_input_is_refused_clearly_and_stores_nothing(tmp_path: pathlib.Path, case: str,
                                                         change: dict[str, Any], message: str) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        ob.put("telemetry", TOPIC + "t", sample(0), priority=Priority.TELEMETRY)
        before, seqs = ob.stats(), ob.last_sequences()
        args: dict[str, Any] = {"stream": "telemetry", "topic": TOPIC + "t", "payload": sample(1),
                                "priority": Priority.TELEMETRY, **change}
        with pytest.raises(InvalidMessage, match=message):
            ob.put(args.pop("stream"), args.pop("topic"), args.pop("payload"), **args)
        with pytest.raises(InvalidMessage):                         # one bad draft: the whole batch is refused
            ob.put_many([Draft("state", TOPIC + "s", {}, Priority.STATE),
                         Draft(**{"stream": "telemetry", "topic": TOPIC + "t", "payload": {},
                                  "priority": Priority.TELEMETRY, **change})])
        assert ob.stats().count == before.count and ob.stats().bytes == before.bytes
        assert ob.last_sequences() == seqs
        assert ob.put("telemetry", TOPIC + "t", sample(2), priority=Priority.TELEMETRY).seq == 2
    assert len(stored(tmp_path / "o.db")) == 2


def test_put_many_takes_only_drafts(tmp_path: pathlib.Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        with pytest.raises(InvalidMessage, match="Draft"):
            ob.put_many([("telemetry", TOPIC + "t", {}, Priority.TELEMETRY)])  # type: ignore[list-item]
        assert ob.put_many([]) == [] and ob.stats().count == 0


def test_a_full_disk_refuses_the_put_and_leaves_no_gap(tmp_path: pathlib.Path) -> None:
    with Outbox(tmp_path / "o.db", quota_bytes=1 << 30) as ob:
        ob.put("event", TOPIC + "e", {}, priority=Priority.EVENT)
        pages = ob._conn.execute("PRAGMA page_count").fetchone()[0]
        ob._conn.execute(f"PRAGMA max_page_count = {pages + 2}")    # what a full disk looks like to SQLite
        with pytest.raises(OutboxError, match="nothing stored"):
            ob.put("event", TOPIC + "e", b"x" * 100_000, priority=Priority.EVENT)
        assert ob.stats().count == 1 and ob.last_sequences() == {"event": 1}
        assert ob.put("event", TOPIC + "e", {}, priority=Priority.EVENT).seq == 2


def test_one_owner_at_a_time_and_other_files_are_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path)
    with pytest.raises(OutboxLocked, match="already open"):
        Outbox(path)
    ob.close()
    ob.close()                                                      # idempotent
    with pytest.raises(OutboxError, match="closed"):
        ob.pending()
    Outbox(path).close()                                            # free again
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(OutboxError, match="cannot open"):
        Outbox(garbage)
    assert garbage.read_bytes() == b"this is not a database at all" * 100
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE t (x)")
    c.close()
    with pytest.raises(OutboxError, match="not an outbox"):
        Outbox(other)
    with pytest.raises(ValueError, match="quota_bytes"):
        Outbox(tmp_path / "q.db", quota_bytes=100)
    with pytest.raises(ValueError, match="limit"):
        Outbox(path).pending(0)


def test_stats_match_the_database_after_a_restart(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        assert ob.stats().oldest_age_s is None
        msgs = [ob.put(s, TOPIC + s, {"i": i}, priority=p) for i in range(30)
                for s, p in (("telemetry", Priority.TELEMETRY), ("alarm", Priority.ALARM))]
        ob.ack_many(m.id for m in msgs[::3])
        before = ob.stats()
        time.sleep(0.01)
        assert ob.stats().oldest_age_s is not None and ob.stats().oldest_age_s >= 0.01  # type: ignore[operator]
    with Outbox(path) as ob:
        after = ob.stats()
    assert (after.count, after.bytes, after.by_priority) == (before.count, before.bytes, before.by_priority)
    assert after.count == len(stored(path)) == 40
    assert after.as_dict()["by_priority"]["alarm"]["count"] == before.by_priority[Priority.ALARM].count


# ---- threads and memory ---------------------------------------------------------------------


def test_the_controller_puts_while_the_network_thread_sends_and_acks(tmp_path: pathlib.Path) -> None:
    n = 3000
    with Outbox(tmp_path / "o.db", synchronous="NORMAL") as ob:
        done = threading.Event()
        errors: list[BaseException] = []
        acked: list[Message] = []

        def controller() -> None:
            try:
                for i in range(n):
                    ob.put(f"s{i % 3}", TOPIC + "t", sample(i), priority=Priority.TELEMETRY)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)
            finally:
                done.set()

        def network() -> None:
            try:
                rounds = 0
                while not (done.is_set() and ob.stats().count == 0):
                    batch = ob.pending(37)
                    ob.mark_inflight(m.id for m in batch)
                    rounds += 1
                    if rounds % 7 == 0:
                        ob.requeue_inflight()                      # a reconnect: re-sent, not lost
                        continue
                    for m in batch:
                        if ob.ack(m.id):
                            acked.append(m)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=controller), threading.Thread(target=network)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(acked) == n and len({m.id for m in acked}) == n
        for s in ("s0", "s1", "s2"):
            assert [m.seq for m in acked if m.stream == s] == list(range(1, n // 3 + 1))  # in order per stream
        assert ob.stats().count == 0 and ob.stats().inflight == 0


def rss_probe(path: str) -> None:
    """Open the outbox, look at it, page through and ack 20,000 messages; print the peak RSS in kB."""
    with Outbox(path, synchronous="NORMAL") as ob:
        ob.stats()
        ob.last_sequences()
        for _ in range(200):
            batch = ob.pending(100)
            ob.mark_inflight(m.id for m in batch)
            ob.ack_many(m.id for m in batch)
        ob.put("telemetry", TOPIC + "t", sample(0), priority=Priority.TELEMETRY)
    status = pathlib.Path("/proc/self/status").read_text()
    print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


@pytest.mark.slow
def test_a_large_backlog_does_not_grow_the_process(tmp_path: pathlib.Path) -> None:
    peak: dict[int, int] = {}
    for backlog in (20_000, 300_000):
        path = tmp_path / f"o{backlog}.db"
        with Outbox(path, quota_bytes=1 << 30, synchronous="NORMAL") as ob:
            for start in range(0, backlog, 2000):
                ob.put_many([Draft("telemetry", TOPIC + "t", sample(i), Priority.TELEMETRY)
                             for i in range(start, start + 2000)])
        out = subprocess.run([sys.executable, "-m", "tests.test_outbox", "rss", str(path)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        peak[backlog] = int(out.stdout.split()[-1])
    assert peak[300_000] - peak[20_000] < 12 * 1024, peak         # kB: the page cache, not the backlog


# ---- the child processes --------------------------------------------------------------------


def sent_not_acked(path: str) -> None:
    """Put 5, hand them to the 'network', and die by SIGKILL before any ack."""
    ob = Outbox(path, boot_id="before-crash")
    for i in range(5):
        ob.put("event", TOPIC + "event", {"i": i}, priority=Priority.EVENT)
    batch = ob.pending(10)
    ob.mark_inflight(m.id for m in batch)
    print(json.dumps([list(m.key) for m in batch]), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    if sys.argv[1] == "writer":
        writer(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "sent-not-acked":
        sent_not_acked(sys.argv[2])
    elif sys.argv[1] == "rss":
        rss_probe(sys.argv[2])


def test_a_stream_cannot_mix_telemetry_and_other_priorities(tmp_path: pathlib.Path) -> None:
    """Telemetry is sent after the rest: a stream holding both would lose its order, so it is refused."""
    with Outbox(tmp_path / "o.db", synchronous="NORMAL") as ob:
        ob.put("event", TOPIC + "event", {"n": 1}, priority=Priority.EVENT)
        ob.put("event", TOPIC + "event", {"n": 2}, priority=Priority.ALARM)         # both "other": fine
        with pytest.raises(InvalidMessage, match="cannot mix telemetry"):
            ob.put("event", TOPIC + "event", {"n": 3}, priority=Priority.TELEMETRY)
        assert ob.stats().count == 2 and ob.last_sequences() == {"event": 2}


# ---- group commit: one fsync for many puts, always before sending --------------------------------


class FsyncSeam:
    """Records how far each fsync of an outbox's ``-wal`` file reached: when it begins, the highest message id
    committed (``sqlite_sequence``, read on a connection of its own, not from the outbox's bookkeeping);
    once it has returned, every id up to that one is durable. SQLite's own fsyncs (``synchronous=FULL``)
    are not seen here: the promise is about the group commit's."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.durable_upto = 0
        self.fsyncs = 0
        self._lock = threading.Lock()
        real = os.fsync

        def fsync(fd: int) -> None:
            name = os.readlink(f"/proc/self/fd/{fd}")
            if not name.endswith("-wal"):
                real(fd)
                return
            with contextlib.closing(sqlite3.connect(f"file:{name[:-4]}?mode=ro", uri=True)) as c:
                row = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
            real(fd)
            with self._lock:
                self.durable_upto = max(self.durable_upto, row[0] if row else 0)
                self.fsyncs += 1
        monkeypatch.setattr(os, "fsync", fsync)

    def is_durable(self, msg_id: int) -> bool:
        with self._lock:
            return msg_id <= self.durable_upto


def test_group_commit_puts_without_fsync_and_pending_hands_out_only_what_an_fsync_covers(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seam = FsyncSeam(monkeypatch)
    with Outbox(tmp_path / "o.db") as ob:          # the default: synchronous="GROUP"
        for round_ in range(20):
            ob.put_many([Draft("telemetry", TOPIC + "telemetry", sample(i), Priority.TELEMETRY)
                                for i in range(10)])
            ob.put("event", TOPIC + "event", {"kind": "trip", "round": round_}, priority=Priority.ALARM)
            for m in ob.pending(50, wait=round_ % 2 == 0):      # wait=False: the session's way
                assert seam.is_durable(m.id), f"{m.key} handed out before an fsync covered it"
                ob.ack(m.id)
        while batch := ob.pending(50):                           # what wait=False left for later
            assert all(seam.is_durable(m.id) for m in batch)
            ob.ack_many(m.id for m in batch)
        assert ob.stats().count == 0
        assert seam.fsyncs <= 2 * 20 + 1             # at most one per put transaction (+ the open), none per ack


def test_group_commit_makes_a_put_durable_by_itself_while_nothing_is_sent(tmp_path: pathlib.Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A trip put during an outage (nobody calls pending) is fsynced by the syncer thread, not at some later send."""
    seam = FsyncSeam(monkeypatch)
    with Outbox(tmp_path / "o.db") as ob:
        for i in range(5):
            trip = ob.put("event", TOPIC + "event", {"kind": "trip", "i": i}, priority=Priority.ALARM)
            deadline = time.monotonic() + 60                         # a safety net, not a measurement
            while not seam.is_durable(trip.id):
                assert time.monotonic() < deadline, "the put was never fsynced"
                time.sleep(0.005)
        assert ob.stats().count == 5


def _slow_wal_fsync(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """(gate, entered): while ``gate`` is clear, an fsync of an outbox's log waits for it (an SD card), having set
    ``entered``."""
    gate, entered = threading.Event(), threading.Event()
    gate.set()
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("-wal") and not gate.is_set():
            entered.set()
            assert gate.wait(60), "the test never opened the gate"
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return gate, entered


def _thinning(ob: Outbox) -> int:
    """Telemetry put until the quota thins it (an outage): an open thinning report. The next window's index."""
    i = 0
    while ob.stats().thinning_events == 0:
        ob.put("telemetry", TOPIC + "telemetry", {"i": i, "pad": "x" * 40}, priority=Priority.TELEMETRY)
        i += 1
    return i


def test_an_open_thinning_report_waiting_for_its_fsync_holds_back_the_events_after_it(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """review15: a thinning extends the open report in place; until an fsync covers that, pending skips the
    report, and it used to hand out the events put after it (event seq 2 before seq 1) while the syncer's fsync
    was running (wait=False, the session's way)."""
    gate, entered = _slow_wal_fsync(monkeypatch)
    with Outbox(tmp_path / "o.db", quota_bytes=32 * 1024) as ob:
        i = _thinning(ob)
        trip = ob.put("event", TOPIC + "event", {"kind": "trip"}, priority=Priority.ALARM)
        ob.sync()
        gate.clear()                                  # the syncer's next fsync is slow (an SD card)
        thinned = ob.stats().thinned
        while ob.stats().thinned == thinned:          # a later thinning extends the open report in place
            ob.put("telemetry", TOPIC + "telemetry", {"i": i, "pad": "x" * 40}, priority=Priority.TELEMETRY)
            i += 1
        assert entered.wait(60), "the syncer never began its fsync"
        first = ob.pending(50, wait=False)            # whatever the syncer is doing: never the trip before the report
        ob.mark_inflight(m.id for m in first)
        gate.set()
        rest = drain(ob)
        events = [m.seq for m in first + rest if m.stream == "event"]
        assert trip.seq == 2 and events == [1, 2], events


def test_while_the_report_waits_for_its_fsync_no_window_overtakes_the_events_held_with_it(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A window names the other streams' numbers put before it (heads, schema 1.4), so it must not go out before
    them. A trip and then a window, both durable; a later thinning extends the open report and its fsync is
    slow: the trip waits with the report, and the window used to go ahead of it (review of heads)."""
    gate, entered = _slow_wal_fsync(monkeypatch)
    with Outbox(tmp_path / "o.db", quota_bytes=32 * 1024) as ob:
        i = _thinning(ob)
        trip = ob.put("event", TOPIC + "event", {"kind": "trip"}, priority=Priority.ALARM)
        window = ob.put("telemetry", TOPIC + "telemetry", {"i": i, "heads": {"event": trip.seq}},
                        priority=Priority.TELEMETRY)
        ob.sync()                                     # both durable
        gate.clear()
        thinned = ob.stats().thinned
        while ob.stats().thinned == thinned:          # a later thinning extends the open report in place
            i += 1
            ob.put("telemetry", TOPIC + "telemetry", {"i": i, "pad": "x" * 40}, priority=Priority.TELEMETRY)
        assert entered.wait(60), "the syncer never began its fsync"
        first = ob.pending(500, wait=False)
        ob.mark_inflight(m.id for m in first)
        assert trip.id not in {m.id for m in first}, "the trip went before the report it follows"
        assert window.id not in {m.id for m in first}, "the window went before the trip it names"
        gate.set()
        sent = first + drain(ob)
        order = [m.id for m in sent]
        assert order.index(trip.id) < order.index(window.id)


def test_thinning_spares_what_pending_just_handed_out_before_it_is_marked_in_flight(tmp_path: pathlib.Path) -> None:
    """review15: the session reads a window (pending), then marks it in flight; a put thinning in between deleted a
    message already handed out (158 puts in: seq 2, mark_inflight 19 of 20): the session sent it all the same and
    the thinning report named it removed, so the report no longer matched the consumer's gaps."""
    with Outbox(tmp_path / "o.db", quota_bytes=32 * 1024, synchronous="NORMAL") as ob:
        i = 0
        while ob.stats().thinning_events == 0:       # an outage: the quota is reached
            ob.put("telemetry", TOPIC + "telemetry", {"i": i, "pad": "x" * 40}, priority=Priority.TELEMETRY)
            i += 1
        drain(ob)                                     # the open report handed out: the next thinning starts another
        window = ob.pending(20)
        batch = [m for m in window if m.stream == "telemetry"]
        assert len(batch) >= 10
        thinned = ob.stats().thinned
        for _ in range(2000):                         # the controller's puts while the session is between the two
            ob.put("telemetry", TOPIC + "telemetry", {"i": i, "pad": "x" * 40}, priority=Priority.TELEMETRY)
            i += 1
        assert ob.stats().thinned > thinned + 100, "no thinning walked past the window: the test proves nothing"
        assert ob.mark_inflight(m.id for m in window) == len(window)
        reports = thinning_events([m for m in drain(ob) if m.stream == "event"])
        named = {s for a, b in thinned_seqs(reports, "telemetry") for s in range(a, b + 1)}
        removed = named - {m.seq for m in drain(ob) if m.stream == "telemetry"}
        assert not removed & {m.seq for m in batch}, sorted(removed & {m.seq for m in batch})


def test_after_a_failed_fsync_nothing_newer_is_handed_out_even_when_later_fsyncs_succeed(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After an fsync error Linux may drop the pages it could not write and report the next fsync as a success:
    retrying would call durable what is not on the disk. The durable point stays frozen until the outbox is
    opened again (review15); what was durable before still goes, nothing put since, and sync() says why."""
    real = os.fsync
    fail = threading.Event()

    def fsync(fd: int) -> None:
        if fail.is_set():
            fail.clear()                             # one EIO, then "success" again: the kernel's false comfort
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        before = ob.put("event", TOPIC + "event", {"kind": "trip"}, priority=Priority.ALARM)
        ob.sync()
        fail.set()
        after = ob.put("event", TOPIC + "event", {"kind": "phase"}, priority=Priority.EVENT)
        deadline = time.monotonic() + 30
        while fail.is_set():                          # the syncer meets the EIO
            assert time.monotonic() < deadline, "the syncer never tried to fsync the put"
            time.sleep(0.01)
        later = ob.put("event", TOPIC + "event", {"kind": "phase"}, priority=Priority.EVENT)
        for wait in (False, True):
            assert [m.id for m in ob.pending(10, wait=wait)] == [before.id]
        with pytest.raises(OutboxError, match="restarted"):
            ob.sync()
    with Outbox(path) as again:                        # opened again: fsynced from the file, sent from there
        assert [m.id for m in again.pending(10)] == [before.id, after.id, later.id]
