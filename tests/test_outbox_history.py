"""The outbox's history and ``Outbox.resend``: what the broker acknowledged is kept, bounded, and can go out again.

Real outbox files in ``tmp_path``; rows are read behind the outbox's back with plain sqlite3 where
the promise is about what the file holds.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sqlite3
import time

import pytest

from edge.telemetry import outbox_history
from edge.telemetry.outbox import (
    MAX_RESEND,
    Draft,
    Message,
    Outbox,
    OutboxError,
    Priority,
    Resent,
)
from edge.telemetry.outbox_file import SCHEMA_VERSION, VERSION_1
from edge.telemetry.outbox_history import HISTORY_PRUNE_ROWS
from edge.telemetry.outbox_types import RESEND_BYTES

TOPIC = "reedge/v1/pilot/hd-01/"


def tele(ob: Outbox, n: int, start: int = 0) -> list[Message]:
    return ob.put_many([Draft("telemetry", TOPIC + "telemetry", {"i": i, "pad": "x" * 40}, Priority.TELEMETRY)
                        for i in range(start, start + n)])


def send_all(ob: Outbox) -> list[Message]:
    """What the session does while the broker is there: everything pending sent and acknowledged."""
    out: list[Message] = []
    while batch := ob.pending(500):
        ob.mark_inflight(m.id for m in batch)
        ob.ack_many(m.id for m in batch)
        out.extend(batch)
    return out


def rows(path: pathlib.Path) -> list[tuple[int, str, int, int]]:
    """(id, stream, seq, acked) of every row the file holds, pending and history."""
    with sqlite3.connect(path) as c:
        got = c.execute("SELECT id, stream, seq, acked FROM messages ORDER BY id").fetchall()
    c.close()
    return got


def test_acked_messages_stay_as_history_across_a_restart_and_count_apart(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, boot_id="b1") as ob:
        sent = tele(ob, 10)
        state = ob.put("state", TOPIC + "state", {"phase": "idle"}, priority=Priority.STATE, retain=True)
        assert ob.ack_many(m.id for m in sent[:6]) == 6
        assert not ob.ack(sent[0].id), "an acked message is history: a second ack finds nothing pending"
        assert ob.mark_inflight([sent[1].id]) == 0 and ob.stats().inflight == 0, "history is never in flight"
        st = ob.stats()
        assert (st.count, st.history_count) == (5, 6)
        assert st.history_bytes == sum(m.size for m in sent[:6])
        assert st.bytes == sum(m.size for m in sent[6:]) + state.size
        assert st.by_priority[Priority.TELEMETRY].count == 4
        assert [m.id for m in ob.pending(100)] == [state.id] + [m.id for m in sent[6:]]
        assert st.as_dict()["history_count"] == 6
    assert [r[3] for r in rows(path)] == [1] * 6 + [0] * 5
    with Outbox(path, boot_id="b2") as ob:
        again = ob.stats()
        assert (again.count, again.bytes, again.history_count, again.history_bytes) == \
            (st.count, st.bytes, st.history_count, st.history_bytes)
        assert ob.resend("b1", "telemetry", 1, 6) == Resent(6, 0, [])
        send_all(ob)
        assert ob.stats().count == 0 and ob.stats().oldest_age_s is None, "history is not pending: it has no age"


def test_the_oldest_age_is_the_oldest_pending_message_s_not_the_history_s(tmp_path: pathlib.Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_800_000_000 * 10**9]
    monkeypatch.setattr(time, "time_ns", lambda: clock[0])
    with Outbox(tmp_path / "o.db", boot_id="b1", synchronous="NORMAL") as ob:
        ob.ack(tele(ob, 1)[0].id)                           # history, put at t
        clock[0] += 5 * 10**9
        tele(ob, 1)                                         # pending, put at t + 5 s
        clock[0] += 10**9
        assert ob.stats().oldest_age_s == 1.0


def test_a_resent_message_is_the_first_copy_again_with_retain_cleared_and_goes_before_newer_ones(
        tmp_path: pathlib.Path) -> None:
    with Outbox(tmp_path / "o.db", boot_id="b1") as ob:
        first = tele(ob, 5)
        states = [ob.put("state", TOPIC + "state", {"phase": p}, priority=Priority.STATE, retain=True)
                  for p in ("purge", "h2")]
        sent = send_all(ob)
        assert {m.id for m in sent} == {m.id for m in first + states}
        newer = tele(ob, 3, start=5)
        later_state = ob.put("state", TOPIC + "state", {"phase": "cool"}, priority=Priority.STATE, retain=True)
        assert ob.resend("b1", "telemetry", 2, 4) == Resent(3, 0, [])
        assert ob.resend("b1", "state", 1, 1) == Resent(1, 0, [])
        assert ob.stats().history_count == 3
        again = ob.pending(100)
        # byte-identical: boot id, stream, seq, created_ns, topic, payload, qos; old ids, so before newer ones
        # of their class; the old state is not retained (it must not overwrite the current one)
        assert again == [dataclasses.replace(states[0], retain=False), later_state, *first[1:4], *newer]
        assert states[0].retain and first[1].created_ns < newer[0].created_ns
        ob.mark_inflight(m.id for m in again)
        assert ob.ack_many(m.id for m in again) == len(again)
        assert ob.stats().count == 0 and ob.stats().history_count == len(first) + 3 + len(newer)
        assert ob.resend("b1", "telemetry", 1, 8) == Resent(8, 0, [])      # acked again: history again


def test_a_resend_is_fsynced_by_the_group_commit_like_a_put(tmp_path: pathlib.Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing calls pending after a resend while the broker is away: the syncer must fsync it by itself."""
    real = os.fsync
    wal_fsyncs: list[int] = []

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("-wal"):
            wal_fsyncs.append(fd)
        real(fd)

    with Outbox(tmp_path / "o.db", boot_id="b1") as ob:         # the default: synchronous="GROUP"
        tele(ob, 5)
        send_all(ob)
        ob.sync()
        monkeypatch.setattr(os, "fsync", fsync)
        assert ob.resend("b1", "telemetry", 2, 3) == Resent(2, 0, [])
        deadline = time.monotonic() + 60                         # a safety net, not a measurement
        while not wal_fsyncs:
            assert time.monotonic() < deadline, "the resend was never fsynced"
            time.sleep(0.005)
        assert [m.seq for m in ob.pending(10)] == [2, 3]


def test_resend_counts_every_number_once_pending_requeued_or_missing(tmp_path: pathlib.Path) -> None:
    with Outbox(tmp_path / "o.db", boot_id="b1", synchronous="NORMAL") as ob:
        msgs = tele(ob, 20)                                   # seq 1..20
        ob.mark_inflight(m.id for m in msgs)
        ob.ack_many(m.id for m in msgs[:10])                  # 1-10 history
        ob.requeue_inflight()                                 # 11-20 pending
        ob.mark_inflight([msgs[12].id])                       # 13 in flight: pending too
        with sqlite3.connect(ob.path) as c:                   # 4-5 and 8 gone (pruned, as far as resend knows)
            c.execute("DELETE FROM messages WHERE id IN (?, ?, ?)", (msgs[3].id, msgs[4].id, msgs[7].id))
        c.close()
        got = ob.resend("b1", "telemetry", 2, 15)
        assert got == Resent(requeued=6, pending=5, missing=[(4, 5), (8, 8)])   # 2,3,6,7,9,10 | 11-15
        assert got.missing_count == 3
        # beyond the stream's last number nothing was given yet: neither pending nor missing
        assert ob.resend("b1", "telemetry", 18, 30) == Resent(0, 3, [])
        assert ob.resend("b1", "nothing-here", 1, 5) == Resent(0, 0, [])
        assert ob.resend("an-unknown-boot", "telemetry", 3, 7) == Resent(0, 0, [(3, 7)])
        assert ob.resend("b1", "telemetry", 1, 1) == Resent(1, 0, [])


def test_a_resend_requeues_at_most_resend_bytes_and_says_where_the_rest_starts(tmp_path: pathlib.Path) -> None:
    """A resend runs on the controller's scan thread and its work follows the bytes (5,000 batch records of 12 kB
    took 0.5 to 2 s): it stops once RESEND_BYTES are requeued; the numbers after are neither requeued nor missing,
    and a second ask takes them. One message larger than the bound still goes (alone)."""
    with Outbox(tmp_path / "o.db", boot_id="b1", history_bytes=64 << 20, synchronous="NORMAL") as ob:
        body = {"record": "r" * 100_000}                                  # about 100 kB each: 30 of them are 3 MB
        put = ob.put_many([Draft("batch", TOPIC + "batch", body, Priority.BATCH) for _ in range(30)])
        send_all(ob)
        size = put[0].size
        fits = -(-RESEND_BYTES // size)                                  # the one that reaches the bound still goes
        first = ob.resend("b1", "batch", 1, 30)
        assert first == Resent(requeued=fits, pending=0, missing=[], rest_from=fits + 1), (first, size)
        assert sum(m.size for m in ob.pending(100)) < RESEND_BYTES + size
        second = ob.resend("b1", "batch", fits + 1, 30)
        assert second.requeued == min(fits, 30 - fits) and second.pending == 0 and second.missing == []
        assert ob.resend("b1", "batch", 1, fits) == Resent(0, fits, [])   # what the first requeued is pending now
    with Outbox(tmp_path / "big.db", boot_id="b1", synchronous="NORMAL") as ob:
        ob.put("batch", TOPIC + "batch", {"record": "r" * (RESEND_BYTES + 1)}, priority=Priority.BATCH)
        ob.put("batch", TOPIC + "batch", {"record": "small"}, priority=Priority.BATCH)
        send_all(ob)
        assert ob.resend("b1", "batch", 1, 2) == Resent(1, 0, [], rest_from=2)


def test_a_prune_step_deletes_at_most_prune_bytes_and_the_history_still_keeps_its_bound(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prune step's work follows the bytes it deletes (a step of a 4 GiB history, 269 MB, held a put 1.4 s): at
    most PRUNE_BYTES a step, the next ack goes on, and the history comes back under its bound."""
    monkeypatch.setattr(outbox_history, "PRUNE_BYTES", 50_000)
    with Outbox(tmp_path / "o.db", boot_id="b1", history_bytes=1 << 20, synchronous="NORMAL") as ob:
        steps = []
        for _ in range(60):
            put = ob.put_many([Draft("batch", TOPIC + "batch", {"r": "r" * 10_000}, Priority.BATCH)
                               for _ in range(5)])
            ob.mark_inflight(m.id for m in put)
            before = ob.stats().history_bytes
            ob.ack_many(m.id for m in put)
            steps.append(before + sum(m.size for m in put) - ob.stats().history_bytes)
        size = put[0].size
        assert max(steps) <= 50_000 + size, max(steps)          # a step of 1/16 of the bound would be 65 kB more
        assert ob.stats().history_bytes <= (1 << 20) + 5 * size


def test_a_message_dropped_for_good_is_not_history_and_a_resend_calls_it_missing(tmp_path: pathlib.Path) -> None:
    """The session drops a message the broker refused for good (``ack_many(drop=True)``): kept as history, a
    resend of its range would send it again, to be refused again (review)."""
    with Outbox(tmp_path / "o.db", boot_id="b1", synchronous="NORMAL") as ob:
        put = [ob.put("event", TOPIC + "event", {"n": n}, priority=Priority.EVENT) for n in (1, 2, 3)]
        ob.mark_inflight(m.id for m in put)
        ob.ack_many([put[0].id, put[2].id])
        assert ob.ack_many([put[1].id], drop=True) == 1
        assert ob.stats().history_count == 2 and ob.stats().count == 0
        assert ob.resend("b1", "event", 1, 3) == Resent(2, 0, [(2, 2)])
        assert [m.seq for m in ob.pending(10)] == [1, 3]


def test_resend_of_an_earlier_boot_stops_at_what_that_boot_gave(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, boot_id="b1") as ob:
        tele(ob, 10)
        send_all(ob)
    with Outbox(path, boot_id="b2") as ob:
        assert [m.seq for m in tele(ob, 5)] == [11, 12, 13, 14, 15]
        send_all(ob)
        assert ob.resend("b1", "telemetry", 8, 14) == Resent(3, 0, [])     # 11-14 were b2's, not b1's
        assert ob.resend("b2", "telemetry", 8, 14) == Resent(4, 0, [(8, 10)])
        assert [m.key for m in ob.pending(100)] == [("b1", "telemetry", s) for s in (8, 9, 10)] + \
            [("b2", "telemetry", s) for s in (11, 12, 13, 14)]


def test_bad_ranges_are_refused_clearly_and_change_nothing(tmp_path: pathlib.Path) -> None:
    with Outbox(tmp_path / "o.db", boot_id="b1") as ob:
        tele(ob, 3)
        send_all(ob)
        for args, message in (((0, 5), "first_seq must be at least 1"),
                              ((5, 4), r"last_seq \(4\) is before first_seq \(5\)"),
                              ((1, MAX_RESEND + 1), f"at most {MAX_RESEND} numbers"),
                              ((True, 3), "first_seq must be an integer"),
                              ((1, 2.0), "last_seq must be an integer")):
            with pytest.raises(ValueError, match=message):
                ob.resend("b1", "telemetry", *args)
        with pytest.raises(ValueError, match="stream must be"):
            ob.resend("b1", "", 1, 2)
        assert ob.stats().count == 0 and ob.stats().history_count == 3
        assert ob.resend("b1", "telemetry", 1, MAX_RESEND) == Resent(3, 0, [])    # the widest span allowed
    with pytest.raises(OutboxError, match="closed"):
        ob.resend("b1", "telemetry", 1, 2)


def test_history_is_pruned_oldest_first_to_its_budget(tmp_path: pathlib.Path) -> None:
    budget = 20_000
    path = tmp_path / "o.db"
    with Outbox(path, boot_id="b1", history_bytes=budget, synchronous="NORMAL") as ob:
        tele(ob, 1)
        for start in range(0, 2000, 100):
            tele(ob, 100, start)
            send_all(ob)
            assert 0 < ob.stats().history_bytes <= budget
        st = ob.stats()
        assert st.history_bytes >= budget - budget // 8, "pruned to the budget less 1/16, not far below"
        held = [r[2] for r in rows(path)]
        assert held == list(range(2002 - st.history_count, 2002)), "the newest are kept, without a hole"
        assert ob.resend("b1", "telemetry", 1, 2001) == Resent(st.history_count, 0, [(1, held[0] - 1)])


def test_pruning_walks_past_an_old_backlog_a_bounded_step_per_ack(tmp_path: pathlib.Path) -> None:
    """History newer than a pending backlog (events sent and acknowledged while old telemetry waits): each ack
    looks at HISTORY_PRUNE_ROWS rows at most, so it takes a few acks to reach that history, never a long stall."""
    budget = 4000
    with Outbox(tmp_path / "o.db", boot_id="b1", history_bytes=budget, synchronous="NORMAL") as ob:
        backlog = len(tele(ob, 3 * HISTORY_PRUNE_ROWS))
        for acks in range(1, 100):                          # the history grows over its budget...
            ob.ack(ob.put("event", TOPIC + "event", {"n": acks, "pad": "y" * 200}, priority=Priority.EVENT).id)
            if ob.stats().history_bytes > budget:
                break
        assert ob.stats().history_bytes > budget, "pruned at once: the walk went through the whole backlog"
        over_after = []                                     # ... and stays over while the walk passes the backlog
        for _ in range(6):
            ob.ack(ob.put("event", TOPIC + "event", {"n": acks, "pad": "y" * 200}, priority=Priority.EVENT).id)
            acks += 1
            over_after.append(ob.stats().history_bytes > budget)
        assert over_after[:2] == [True, True], "a single ack walked the whole backlog"
        assert not over_after[-1], "the walk never got past the backlog"
        assert ob.stats().by_priority[Priority.TELEMETRY].count == backlog     # pending is never pruned


def test_history_gives_up_its_room_before_any_telemetry_is_thinned(tmp_path: pathlib.Path) -> None:
    quota = 64 * 1024
    with Outbox(tmp_path / "o.db", boot_id="b1", quota_bytes=quota, history_bytes=quota,
                synchronous="NORMAL") as ob:
        for start in range(0, 1000, 50):                    # the broker is there: history fills
            tele(ob, 50, start)
            send_all(ob)
        full = ob.stats()
        assert full.history_bytes > quota // 2 and full.count == 0
        i = 1000
        while ob.stats().history_count:                     # an outage: pending grows into the history's room
            tele(ob, 1, i)
            i += 1
            st = ob.stats()
            assert st.thinned == 0, "telemetry thinned while history was still there"
            assert st.bytes + st.history_bytes <= quota
        assert ob.stats().bytes > quota // 2
        while ob.stats().thinned == 0:                      # and only then is telemetry thinned
            tele(ob, 1, i)
            i += 1
        assert ob.stats().history_count == 0 and not ob.stats().over_quota


def test_without_history_acked_messages_go_as_before(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, boot_id="b1", history_bytes=0) as ob:
        msgs = tele(ob, 10)
        ob.mark_inflight(m.id for m in msgs)
        assert ob.ack_many(m.id for m in msgs[:7]) == 7
        assert ob.stats().history_count == 0 and ob.stats().history_bytes == 0
        assert [r[2] for r in rows(path)] == [8, 9, 10]
        assert ob.resend("b1", "telemetry", 1, 10) == Resent(0, 3, [(1, 7)])
    with Outbox(path, boot_id="b2") as ob:                 # history switched on: from now on
        send_all(ob)
        assert ob.stats().history_count == 3
    with Outbox(path, boot_id="b3", history_bytes=0) as ob:   # and off again: what is held goes at the next ack
        ob.ack(ob.put("event", TOPIC + "event", {}, priority=Priority.EVENT).id)
        assert ob.stats().history_count == 0 and rows(path) == []
    with pytest.raises(ValueError, match="history_bytes"):
        Outbox(tmp_path / "x.db", history_bytes=-1)
    with pytest.raises(ValueError, match="history_bytes"):
        Outbox(tmp_path / "x.db", history_bytes=True)


def test_a_boot_whose_messages_are_only_history_is_remembered(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, boot_id="b1") as ob:
        tele(ob, 4)
        send_all(ob)
    for boot in ("b2", "b3", "b4"):
        with Outbox(path, boot_id=boot) as ob:
            tele(ob, 1)
            send_all(ob)
    with Outbox(path, boot_id="b5") as ob:
        assert ob.resend("b1", "telemetry", 1, 4) == Resent(4, 0, [])
        assert [m.key for m in ob.pending(10)] == [("b1", "telemetry", s) for s in range(1, 5)]


def test_a_version_1_file_is_upgraded_and_keeps_its_backlog(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as c:                       # what the previous release left: a backlog of boot "old"
        c.execute("PRAGMA journal_mode=WAL")
        c.executescript(VERSION_1)
        c.execute("INSERT INTO boots (boot_id, opened_ns) VALUES ('old', 1)")
        c.execute("INSERT INTO streams VALUES ('telemetry', 5)")
        c.executemany("INSERT INTO messages (boot, stream, seq, topic, payload, priority, qos, retain, created_ns,"
                      " size) VALUES (1, 'telemetry', ?, 't', ?, 0, 1, 0, ?, 80)",
                      [(s, b'{"i":%d}' % s, 1000 + s) for s in (3, 4, 5)])
        c.execute("PRAGMA application_id=0x52454F42")
        c.execute("PRAGMA user_version=1")
    c.close()
    with Outbox(path, boot_id="new") as ob:
        backlog = ob.pending(10)
        assert [(m.key, m.created_ns) for m in backlog] == [(("old", "telemetry", s), 1000 + s) for s in (3, 4, 5)]
        assert ob.stats().count == 3
        send_all(ob)
        assert ob.resend("old", "telemetry", 1, 9) == Resent(3, 0, [(1, 2)])   # bounded by what "old" gave
        assert tele(ob, 1)[0].seq == 6
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        plan = c.execute("EXPLAIN QUERY PLAN SELECT id FROM messages WHERE stream = 'x' AND seq BETWEEN 1 AND 3"
                         ).fetchall()
    c.close()
    assert "messages_by_seq" in str(plan)
    with sqlite3.connect(path) as c:
        c.execute("PRAGMA user_version=3")
    c.close()
    with pytest.raises(OutboxError, match="schema version 3"):
        Outbox(path)
