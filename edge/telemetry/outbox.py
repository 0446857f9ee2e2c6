"""The durable outbox: every message is on disk before it is sent, pending until the broker acknowledged it, then
kept a while as history for a consumer that lost it.

paho keeps its queue in memory and brokers drop silently past their per-client limits, so the
station's own queue is the only place a message cannot be lost. This one is a SQLite database
in WAL mode (stdlib ``sqlite3``), one file per station, owned by one process at a time.

How the MQTT session uses it::

    outbox = Outbox("/var/lib/reedge/outbox.db", quota_bytes=256 << 20, boot_id=boot)
    msg = outbox.put("telemetry", topic, {"chamber_temp": 612.4}, priority=Priority.TELEMETRY)
    # network thread, after every (re)connect:
    outbox.requeue_inflight()
    for msg in outbox.pending(100):          # others, then telemetry; oldest first; fsynced
        publish(msg)                         # envelope from msg.boot_id, msg.stream, msg.seq, msg.created_ns
        outbox.mark_inflight([msg.id])
    # on PUBACK:
    outbox.ack(msg.id)                       # history from now on, for:
    # a consumer asks for what it lost (the station's resend command):
    outbox.resend(boot_id, "telemetry", 1000, 1119)   # -> Resent(requeued, pending, missing); pending again

**Sequence numbers.** ``put`` gives each message the next number of its stream (1, 2, 3, ...).
The stream's last number lives in its own table, written in the same transaction as the
message, so numbers survive acknowledgement (the row goes at last, the counter stays), restarts and
crashes, and are never reused. Each message also keeps the boot id it was created under: a
message re-sent after a crash carries the same (boot id, stream, seq) as its first copy, so a
consumer recognises the duplicate; a gap in a stream's numbers is a lost message unless a
thinning report (below) names it. ``last_sequences()`` feeds the birth message, so a consumer
can tell a lost tail from a stream that has simply been quiet. The stored payload is the body
only; the session builds the envelope at send time from the message's fields, which are all
stored, so a re-sent duplicate is byte-for-byte the same message.

**Order.** ``pending`` returns every message that is not telemetry (events and alarms, state,
batch records, replies) before any telemetry, and each of the two classes in insertion order
(``AUTOINCREMENT`` ids never go back, even after the newest row is acknowledged). So each stream
keeps its order (a stream's messages are all of one class: ``put`` refuses a stream that would
mix them), a command's audit event still goes before its reply (both events, in insertion
order), after a long outage a trip reaches the SCADA in the first window of the reconnect instead of
behind an hour of telemetry, and what a window's ``heads`` name went out before it (``_pending_ids``). Starvation:
telemetry waits only while other messages are pending, and those come at the rate of process events (a few per
minute at most), while the network sends hundreds per second; a trickle of events delays
telemetry by one window's round trip, never forever. An event put while a telemetry backlog is
being sent waits only for what the session has already read ahead (at most one window, the
broker's Receive Maximum, 20 for mosquitto): measured on the development VM with a 20,000-message
backlog draining, the station published it after 0 to 19 telemetry messages, 3 to 13 ms after the
put (a slow subscriber may see it later: the broker's queue to it is in between). The cost does
not grow with the backlog: one range of the index ``messages_by_priority (priority, id)`` per
priority, ids only, merged, then the rows of the chosen ids: ``pending(20)`` takes 0.4 ms with
a 1,000,000-message backlog on the development VM (``bench/bench_outbox.py``; 0.05 ms for the
global-order query it replaced). Priority decides nothing else about sending; it decides what
the quota may thin.

**Durability: group commit** (``edge.telemetry.outbox_commit``). A put commits without an fsync
(SQLite ``synchronous=NORMAL``): when it returns, a process kill keeps it (the OS has it), and
the controller thread never waits for the disk. One fsync of the WAL then covers every commit
before it: the syncer thread runs one as soon as a put committed (so a trip put while no broker
is there is on disk one or two fsyncs later: 2 to 40 ms on an SD card), and ``pending`` returns
only messages an fsync covers (it runs one itself if needed). So (a) a message is on disk before
it is sent; (b) a sent sequence number is never given again after a power cut (the counter is
in the message's transaction, which the fsync covers); (c) the session acknowledges a command to
the broker only after ``sync()``, so its stored answer is durable first. Acks (a message made
history, or deleted) are lazily durable: a power cut (not a process kill) may bring back as pending
messages the broker had acknowledged, duplicates the consumer detects; the next fsync makes every
earlier frame of the log durable (one file, synced as a whole; a torn unsynced tail fails its
checksums and is discarded on recovery). A resend commits like a put and the syncer fsyncs it,
but ``pending`` does not wait for that: what it makes pending was durable since its put, and a
resend lost to a power cut is asked again. ``synchronous="FULL"`` fsyncs every commit on the putting thread (the
old way), ``"NORMAL"`` never fsyncs (hosts with power-loss protection, tests). Put + pend + ack
in ``bench/bench_outbox.py`` on the development VM (virtio disk, ext4, shared and loaded): 4,100
messages/s with group commit, 2,500 with ``FULL``, 6,000 with ``NORMAL`` (160,000 for a deque in
memory).

**Quota and priorities.** ``quota_bytes`` bounds the stored size of the pending messages (payload,
topic, stream and ``ROW_OVERHEAD`` bytes for the row and its index entries; the file itself
is larger by page slack and by the WAL, about ``outbox_file.JOURNAL_LIMIT``; deleted space is reused, not
given back, since the next outage will need it again). History (below) only borrows the room the
pending messages leave: when a put would take pending and history together over the quota, the
oldest history is pruned first (down to the quota less 1/16 of it, looking at ``HISTORY_PRUNE_ROWS``
rows at most per put), since it is worth less than what was never sent; so the file holds about a quota
of messages, as without history. When a put would take the pending messages over
the quota, telemetry, and only telemetry, is **thinned, evenly over time**: at level L only the
telemetry messages whose sequence number is a multiple of 2**L are kept. A walk from the oldest
pending telemetry brings each message to the current level until the total is back under the
quota minus a headroom of 1/16 of it; the next put that needs room resumes the walk, and when
the walk has reached the newest message and more room is still needed, the level goes up by
one and the walk starts again from the oldest. After a long outage the backlog thus holds every
2**L-th sample of the whole outage, and the latest ones at full resolution. Once acks have
brought telemetry back under 1/8 of the quota, the level starts again from 0 for the next outage. (Deleting "every
other message of the oldest half" at each pass, tried first, erases the start of a long outage:
the same old messages are halved again at every pass.) The level and the walk's position are
stored with the thinning, so a restart continues where it was.

Each thinning is reported on the event stream, in the same transaction as the deletions, by an
``EVENT`` message: ``{"kind": "telemetry_thinned", "removed", "bytes_freed", "quota_bytes",
"thinnings", "stride", "last_ns", "streams": [{"stream", "first_seq", "last_seq", "removed"}]}``:
every telemetry gap between ``first_seq`` and ``last_seq`` of a stream is thinning, not loss. As
long as ``pending`` has not returned that report, later thinnings extend it (ranges widened,
counts added) instead of storing another, so a week-long outage costs one report; once handed
out it is frozen (a re-send must be identical) and the next thinning starts a new one. Limits:

* at most ``THIN_STEP_ROWS`` telemetry rows are walked per put, so a put never stalls the
  controller scan for long, whatever the backlog (the dead-man is waiting): 16 ms at most,
  measured on the development VM with a backlog of 1,000,000 messages;
* telemetry is not thinned below 1/8 of the quota, and thinning starts only when thinnable
  telemetry exceeds 1/8 + 1/16 of it; messages in flight (or handed out by ``pending`` and not yet
  marked) are never thinned. When alarms fill the disk, telemetry keeps a sparse sample of its
  whole history, and thinning runs once per 1/16 of the quota of new telemetry, not at every put.

Alarms, events, state and batch records are **never dropped**: when the quota is full of them,
``put`` still stores them, the outbox goes over quota, and ``stats().over_quota`` says so.
Losing a trip record is worse than using more disk. The same holds for telemetry that cannot
be thinned further (at the floor above): it is stored. Nothing is ever dropped without a trace,
so ``stats().dropped`` is 0; it is reported so that a status message can say it. If the disk
itself is full, ``put`` raises ``OutboxError`` and stores nothing: the caller knows.

**History and resend** (``edge.telemetry.outbox_history``): ``ack`` does not delete, the message becomes
history (marked ``acked``, out of every pending query, not counted against the quota), bounded by
``history_bytes`` (0: deleted as before); ``resend`` makes a range of it pending again, byte-identical and
never retained, for a consumer that lost what the broker had acknowledged.

**Inflight is in memory.** ``mark_inflight`` only records ids in a dict: nothing is written,
so sending costs no disk write (an SD card's wear and latency), and a restart has nothing to
undo: every message on disk is pending again, in order. The dict is bounded by the session's
send window and its read-ahead of one window (it holds only what was marked and not yet acked or
requeued).

**What was just put is not read back.** ``put`` keeps the messages it stored (``FRESH_MAX`` at most, dropped
once acknowledged, thinned or closed) and ``pending`` hands those out as they were put, reading from the file
only the others (a backlog from an earlier process, a thinning report, whatever did not fit): in the steady
state a message is written once and never read, and its body, which ``put`` encoded itself, is not parsed
again at send time (``Message.body_checked``). Half of the outbox's Python work per message went into reading
rows back and rebuilding them, on the thread that also handles the broker's acknowledgements.

**Bounded memory.** Nothing loads the backlog: ``pending`` reads ``limit`` rows, thinning walks
rows in chunks, the per-priority counts and bytes are kept as running totals (computed once
at open by SQLite, streaming), and SQLite's page cache is bounded (``cache_size``).

**Threads.** One connection, opened with ``check_same_thread=False``, guarded by one lock:
the controller thread puts while the MQTT thread pends and acks. SQLite serialises writers
anyway, so a connection per thread would only add busy-waiting on the write lock and make the
running totals harder to keep exact. ``sqlite3`` releases the GIL while SQLite works.

**One owner.** The database file is ``flock``-ed while an ``Outbox`` holds it (a second one,
in this process or another, gets ``OutboxLocked``): two owners would send everything twice
and keep wrong totals. The kernel releases the lock when the process dies, however it dies.
(A ``flock`` on a separate descriptor does not interact with SQLite's POSIX locks, and that
descriptor is closed only after the connection.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.telemetry.outbox_commit import GroupCommit, Mode
from edge.telemetry.outbox_file import prepare_file
from edge.telemetry.outbox_history import HISTORY_PRUNE_ROWS, History, HistoryMixin
from edge.telemetry.outbox_prepare import Prepared, prepare
from edge.telemetry.outbox_types import (
    MAX_RESEND,
    ROW_OVERHEAD,
    SEND_CLASSES,
    Draft,
    InvalidMessage,
    Message,
    OutboxError,
    OutboxLocked,
    OutboxStats,
    Priority,
    PriorityStats,
    Resent,
)

__all__ = ["DEFAULT_HISTORY", "MAX_RESEND", "ROW_OVERHEAD", "Draft", "InvalidMessage", "Message",
           "Outbox", "OutboxError", "OutboxLocked", "OutboxStats", "Priority", "PriorityStats", "Resent"]

DEFAULT_QUOTA = 256 * 1024 * 1024
DEFAULT_HISTORY = 64 * 1024 * 1024
MIN_QUOTA = 16 * 1024
HEADROOM_DIV = 16            # a thinning frees down to quota - quota/16 ...
FLOOR_DIV = 8                # ... but never thins telemetry below quota/8
THIN_STEP_ROWS = 4096        # telemetry rows walked at most per put
THIN_CHUNK = 512
REPORT_RESERVE = 1024        # room kept for the thinning report when thinning
MAX_LEVEL = 62
MAX_PENDING = 100_000
FRESH_MAX = 4096             # messages put by this process that pending hands out without reading them back

SELECT_MESSAGE = ("SELECT m.id, b.boot_id, m.stream, m.seq, m.topic, m.payload, m.priority, m.qos, m.retain,"
                  " m.created_ns, m.size FROM messages m JOIN boots b ON b.n = m.boot")


@dataclass
class _Tx:
    """What a write transaction changes in memory, applied only once it has committed."""

    counts: list[int]
    sizes: list[int]
    seqs: dict[str, int]
    level: int             # telemetry is thinned to seq % 2**level == 0 ...
    clean_id: int          # ... for every telemetry id up to this one
    report_id: int | None
    history: History
    thinned: int = 0
    thinning_events: int = 0
    doomed: list[int] = field(default_factory=list)   # ids thinned


class Outbox(HistoryMixin):
    """A durable, ordered, quota-bounded message queue in one SQLite file (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], *, quota_bytes: int = DEFAULT_QUOTA, boot_id: str | None = None,
                 event_stream: str = "event", event_topic: str = "event",
                 synchronous: Mode = "GROUP", history_bytes: int = DEFAULT_HISTORY) -> None:
        """Open (or create) the outbox at ``path`` and take ownership of it.

        ``boot_id`` tags the messages put from now on (default: a new random id per open).
        ``event_stream`` / ``event_topic`` are where thinning is reported (the session passes the
        full ``reedge/v1/{site}/{station}/event`` topic). ``history_bytes`` bounds what is kept of
        acknowledged messages for ``resend`` (0: none, an acknowledged message is deleted).
        """
        if isinstance(quota_bytes, bool) or not isinstance(quota_bytes, int) or quota_bytes < MIN_QUOTA:
            raise ValueError(f"quota_bytes must be an integer of at least {MIN_QUOTA}, got {quota_bytes!r}")
        if isinstance(history_bytes, bool) or not isinstance(history_bytes, int) or history_bytes < 0:
            raise ValueError(f"history_bytes must be an integer of at least 0 (0: no history), got {history_bytes!r}")
        if synchronous not in ("GROUP", "FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'GROUP', 'FULL' or 'NORMAL', got {synchronous!r}")
        prepare(event_stream, event_topic, b"", Priority.EVENT, 1, False)  # the event target must be valid
        if boot_id is None:
            boot_id = uuid.uuid4().hex
        if not isinstance(boot_id, str) or not boot_id or len(boot_id) > 128:
            raise ValueError(f"boot_id must be a non-empty string of at most 128 characters, got {boot_id!r}")
        self.path = pathlib.Path(path)
        self.boot_id = boot_id
        self.quota_bytes = quota_bytes
        self.history_bytes = history_bytes
        self.event_stream = event_stream
        self.event_topic = event_topic
        self._put_sync = "FULL" if synchronous == "FULL" else "NORMAL"   # GROUP: an fsync covers many (below)
        self._report_gen = 0                 # the commit that last changed the open thinning report
        self._offered: dict[int, int] = {}   # what pending returned last: id -> its bytes if telemetry, else 0
        self._fresh: dict[int, Message] = {}  # what this process put and is still stored, as put (module docstring)
        self._lock = threading.RLock()
        self._inflight: dict[int, int] = {}  # id -> its bytes if telemetry (in flight: not thinnable), else 0
        self._inflight_tele = 0
        self._stream_class: dict[str, bool] = {}   # stream -> its messages are telemetry (class of "Order")
        self._report_id: int | None = None   # the thinning report later thinnings may still extend
        self._sync_mode = ""
        self._closed = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._owner_fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(self._owner_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._owner_fd)
            raise OutboxLocked(f"{self.path}: the outbox is already open (another controller process,"
                               " or a second Outbox in this one)") from None
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        except sqlite3.Error as e:
            os.close(self._owner_fd)
            raise OutboxError(f"{self.path}: cannot open: {e}") from e
        try:
            self._open()
            self._commit = GroupCommit(f"{self.path}-wal", synchronous)
            # what a killed process left may be in the OS's cache only: on disk before any of it is sent
            self._commit.committed(self._conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0])
            self._commit.sync()
        except BaseException as e:
            self._conn.close()
            os.close(self._owner_fd)
            if isinstance(e, sqlite3.Error | OSError):
                raise OutboxError(f"{self.path}: cannot open the outbox: {e}") from e
            raise
        self._closed = False

    # ---- opening -------------------------------------------------------------------------

    def _open(self) -> None:
        c = self._conn
        problem = prepare_file(c)
        if problem is not None:
            raise OutboxError(f"{self.path}: {problem}")
        self._set_sync(self._put_sync)
        self._last_seq: dict[str, int] = dict(c.execute("SELECT stream, last_seq FROM streams").fetchall())
        counters = dict(c.execute("SELECT name, value FROM counters").fetchall())
        self._thinned = int(counters.get("thinned", 0))
        self._thinning_events = int(counters.get("thinning_events", 0))
        self._level = int(counters.get("thin_level", 0))
        self._clean_id = int(counters.get("thin_clean_id", 0))
        self._counts = [0] * len(Priority)
        self._sizes = [0] * len(Priority)
        self._history = History()           # edge.telemetry.outbox_history
        known = {int(p) for p in Priority}
        for priority, acked, n, b in c.execute("SELECT priority, acked, count(*), coalesce(sum(size), 0) FROM messages"
                                               " GROUP BY priority, acked"):
            if priority not in known:
                raise OutboxError(f"{self.path}: holds messages of a priority this code does not know ({priority})")
            if acked:
                self._history.count += int(n)
                self._history.bytes += int(b)
            else:
                self._counts[priority], self._sizes[priority] = int(n), int(b)
        c.execute("BEGIN IMMEDIATE")
        try:
            new = c.execute("INSERT OR IGNORE INTO boots (boot_id, opened_ns) VALUES (?, ?)",
                            (self.boot_id, time.time_ns())).rowcount == 1
            self._boot_n = int(c.execute("SELECT n FROM boots WHERE boot_id = ?", (self.boot_id,)).fetchone()[0])
            # Boots are numbered in order and messages are appended, so a boot older than the oldest
            # message's (pending or history) has no message left; the table stays as short as the
            # backlog's and the history's span, plus the boot just before this one: the birth names it
            # with its last sequence numbers.
            prev = c.execute("SELECT n, boot_id FROM boots WHERE n < ? ORDER BY n DESC LIMIT 1",
                             (self._boot_n,)).fetchone()
            self.previous_boot_id: str | None = prev[1] if prev else None
            if new and prev is not None:     # what the previous boot gave, at most: resend's bound for it
                c.execute("INSERT OR REPLACE INTO boot_seqs (boot, stream, last_seq)"
                          " SELECT ?, stream, last_seq FROM streams", (prev[0],))
            oldest = c.execute("SELECT boot FROM messages ORDER BY id LIMIT 1").fetchone()
            keep_from = min(self._boot_n, oldest[0]) if oldest else self._boot_n
            if prev is not None:
                keep_from = min(keep_from, int(prev[0]))
            c.execute("DELETE FROM boots WHERE n < ?", (keep_from,))
            c.execute("DELETE FROM boot_seqs WHERE boot < ?", (keep_from,))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def _set_sync(self, mode: str) -> None:
        if self._sync_mode != mode:
            self._conn.execute(f"PRAGMA synchronous={mode}")
            self._sync_mode = mode

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"{self.path}: the outbox is closed")

    # ---- putting -------------------------------------------------------------------------

    def put(self, stream: str, topic: str, payload: bytes | Mapping[str, Any], *, priority: Priority,
            qos: int = 1, retain: bool = False) -> Message:
        """Store one message durably and return it with its sequence number; nothing is stored on error."""
        return self.put_many([Draft(stream, topic, payload, priority, qos, retain)])[0]

    def put_many(self, drafts: Iterable[Draft]) -> list[Message]:
        """Store several messages in one transaction: all of them, in order, or none (fsynced by the group commit)."""
        prepared = []
        for d in drafts:
            if not isinstance(d, Draft):
                raise InvalidMessage(f"put_many takes Draft(stream, topic, payload, priority, ...), got {d!r:.80}")
            prepared.append(prepare(*d))
        if not prepared:
            return []
        with self._lock:
            self._check_open()
            for p in prepared:   # one class per stream, or "Order" (module docstring) would break its order
                if self._stream_class.setdefault(p.stream, p.priority.thinnable) != p.priority.thinnable:
                    raise InvalidMessage(f"stream {p.stream!r} cannot mix telemetry and other priorities"
                                         f" (got {p.priority.name}): its order would not hold; nothing stored")
            c = self._conn
            tx = _Tx(list(self._counts), list(self._sizes), {}, self._level, self._clean_id, self._report_id,
                     self._history.copy())
            out: list[Message] = []
            try:
                self._set_sync(self._put_sync)
                c.execute("BEGIN IMMEDIATE")
                try:
                    self._make_room(tx, sum(p.size for p in prepared))
                    out = self._insert(tx, prepared)
                    c.executemany("INSERT INTO streams (stream, last_seq) VALUES (?, ?)"
                                  " ON CONFLICT (stream) DO UPDATE SET last_seq = excluded.last_seq",
                                  list(tx.seqs.items()))
                    c.execute("COMMIT")
                except BaseException:
                    c.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise OutboxError(f"{self.path}: cannot store {len(prepared)} message(s), nothing stored: {e}") from e
            gen = self._commit.committed(out[-1].id)
            if tx.thinned:
                self._report_gen = gen
            for msg_id in tx.doomed:
                self._offered.pop(msg_id, None)
                self._fresh.pop(msg_id, None)
            if tx.report_id is not None:
                self._fresh.pop(tx.report_id, None)   # a thinning report is rewritten in place: read it back
            room = FRESH_MAX - len(self._fresh)
            if room > 0:
                self._fresh.update((m.id, m) for m in out[:room])
            self._counts, self._sizes, self._report_id = tx.counts, tx.sizes, tx.report_id
            self._history = tx.history
            self._level, self._clean_id = tx.level, tx.clean_id
            self._last_seq.update(tx.seqs)
            self._thinned += tx.thinned
            self._thinning_events += tx.thinning_events
            return out

    def _insert(self, tx: _Tx, prepared: list[Prepared]) -> list[Message]:
        """Insert in one statement. In a write transaction of the one writer, AUTOINCREMENT gives consecutive ids."""
        rows = []
        for p in prepared:
            seq = tx.seqs.get(p.stream, self._last_seq.get(p.stream, 0)) + 1
            tx.seqs[p.stream] = seq
            tx.counts[p.priority] += 1
            tx.sizes[p.priority] += p.size
            rows.append((self._boot_n, p.stream, seq, p.topic, p.payload, int(p.priority), p.qos, int(p.retain),
                         time.time_ns(), p.size))
        self._conn.executemany(
            "INSERT INTO messages (boot, stream, seq, topic, payload, priority, qos, retain, created_ns, size)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        first = self._conn.execute("SELECT last_insert_rowid()").fetchone()[0] - len(rows) + 1
        return [Message(first + i, self.boot_id, p.stream, r[2], p.topic, p.payload, p.priority, p.qos, p.retain, r[8],
                        p.checked) for i, (p, r) in enumerate(zip(prepared, rows, strict=True))]

    # ---- the quota -----------------------------------------------------------------------

    def _make_room(self, tx: _Tx, incoming: int) -> None:
        """Prune history, then thin telemetry, if ``incoming`` bytes would take the outbox over its quota (module
        docstring: history gives up its room first, then telemetry is thinned).

        Thinning works by level: at level L, telemetry keeps the messages whose sequence number is
        a multiple of 2**L. A walk from the oldest telemetry brings every message to the current
        level, remembering how far it got (``clean_id``); when it reaches the newest and more room
        is needed, the level goes up and the walk starts again. So the backlog is decimated evenly
        over the whole outage, never wiped at one end, and each put walks at most THIN_STEP_ROWS.
        """
        quota = self.quota_bytes
        tele = Priority.TELEMETRY
        pending = sum(tx.sizes)
        if pending + tx.history.bytes + incoming <= quota:
            return
        headroom, floor = quota // HEADROOM_DIV, quota // FLOOR_DIV
        if tx.history.count:
            self._prune_history(tx.history, max(0, quota - headroom - pending - incoming), HISTORY_PRUNE_ROWS)
        if pending + incoming <= quota:
            return
        if tx.sizes[tele] - self._inflight_tele < floor + headroom:
            return
        goal = quota - headroom
        c = self._conn
        ranges: dict[str, list[int]] = {}   # stream -> [first_seq, last_seq, removed, bytes]
        walked = 0
        fruitless_walk = False               # a whole walk at the current level, in this call, removed nothing

        def satisfied() -> bool:  # with room for the report itself
            return sum(tx.sizes) + incoming + REPORT_RESERVE <= goal or tx.sizes[tele] - self._inflight_tele <= floor

        while not satisfied() and walked < THIN_STEP_ROWS and tx.counts[tele] > 0:
            if tx.level == 0:
                tx.level, tx.clean_id, fruitless_walk = 1, 0, True
            stride = 1 << tx.level
            rows = c.execute("SELECT id, stream, seq, size FROM messages WHERE priority = ? AND id > ? AND acked = 0"
                             " ORDER BY id LIMIT ?",
                             (int(tele), tx.clean_id, min(THIN_CHUNK, THIN_STEP_ROWS - walked))).fetchall()
            if not rows:                     # every telemetry message is at this level
                if fruitless_walk or tx.level >= MAX_LEVEL:
                    break
                tx.level, tx.clean_id, fruitless_walk = tx.level + 1, 0, True
                continue
            doomed: list[tuple[int]] = []
            for msg_id, stream, seq, size in rows:
                walked += 1
                tx.clean_id = msg_id
                if seq % stride == 0 or msg_id in self._inflight or msg_id in self._offered:
                    continue                 # kept at this level, or being sent right now (or about to be)
                doomed.append((msg_id,))
                fruitless_walk = False
                tx.counts[tele] -= 1
                tx.sizes[tele] -= size
                r = ranges.setdefault(stream, [seq, seq, 0, 0])
                r[0], r[1] = min(r[0], seq), max(r[1], seq)
                r[2] += 1
                r[3] += size
                if satisfied():
                    break
            c.executemany("DELETE FROM messages WHERE id = ?", doomed)
            tx.doomed += (i for (i,) in doomed)
        if walked:
            c.executemany("INSERT INTO counters (name, value) VALUES (?, ?)"
                          " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                          [("thin_level", tx.level), ("thin_clean_id", tx.clean_id)])
        if ranges:
            self._report(tx, ranges)

    def _report(self, tx: _Tx, ranges: dict[str, list[int]]) -> None:
        """Record a thinning on the event stream: extend the open report, or store a new one.

        A report nobody has read yet (``pending`` never returned it) is updated in place, in the
        same transaction as the deletions it describes, so a long outage costs one report instead
        of one per thinning; per stream its range widens to cover every removed message.
        """
        c = self._conn
        removed = sum(r[2] for r in ranges.values())
        freed = sum(r[3] for r in ranges.values())
        old: tuple[bytes, int] | None = None
        if tx.report_id is not None and tx.report_id not in self._inflight:
            old = c.execute("SELECT payload, size FROM messages WHERE id = ? AND acked = 0", (tx.report_id,)).fetchone()
        if old is not None:
            assert tx.report_id is not None
            report: dict[str, Any] = json.loads(old[0])
            for entry in report["streams"]:
                r = ranges.pop(entry["stream"], None)
                if r is not None:
                    entry["first_seq"] = min(entry["first_seq"], r[0])
                    entry["last_seq"] = max(entry["last_seq"], r[1])
                    entry["removed"] += r[2]
            report["streams"].extend({"stream": k, "first_seq": r[0], "last_seq": r[1], "removed": r[2]}
                                     for k, r in sorted(ranges.items()))
            report["removed"] += removed
            report["bytes_freed"] += freed
            report["thinnings"] += 1
            report["stride"] = 1 << tx.level
            report["last_ns"] = time.time_ns()
            p = prepare(self.event_stream, self.event_topic, report, Priority.EVENT, 1, False)
            c.execute("UPDATE messages SET payload = ?, size = ? WHERE id = ?", (p.payload, p.size, tx.report_id))
            tx.sizes[Priority.EVENT] += p.size - old[1]
        else:
            report = {  # compact: it is never dropped
                "kind": "telemetry_thinned",
                "removed": removed,
                "bytes_freed": freed,
                "quota_bytes": self.quota_bytes,
                "thinnings": 1,
                "stride": 1 << tx.level,
                "last_ns": time.time_ns(),
                "streams": [{"stream": k, "first_seq": r[0], "last_seq": r[1], "removed": r[2]}
                            for k, r in sorted(ranges.items())],
            }
            p = prepare(self.event_stream, self.event_topic, report, Priority.EVENT, 1, False)
            tx.report_id = self._insert(tx, [p])[0].id
            tx.thinning_events += 1
        tx.thinned += removed
        c.executemany("INSERT INTO counters (name, value) VALUES (?, ?)"
                      " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                      [("thinned", self._thinned + tx.thinned),
                       ("thinning_events", self._thinning_events + tx.thinning_events)])

    # ---- sending -------------------------------------------------------------------------

    def pending(self, limit: int = 100, *, wait: bool = True) -> list[Message]:
        """Up to ``limit`` messages not in flight: every other message before telemetry, each class oldest
        first (insertion order, hence in order per stream; module docstring, "Order")."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PENDING:
            raise ValueError(f"limit must be an integer from 1 to {MAX_PENDING}, got {limit!r}")
        # Nothing leaves before the fsync that covers it (module docstring, "Durability"). ``wait=False`` (the
        # session): while the syncer's fsync runs, what is durable already goes; it waits only if that is nothing.
        # After a failed fsync the durable point is frozen (outbox_commit): what it covers may still go, nothing
        # newer, and no error here (the session would reconnect for ever over a disk it cannot fix).
        if self._commit.failed:
            return self._take(limit)
        self._fsync(wait=wait)
        out = self._take(limit)
        if not out and not wait and self._commit.behind:
            self._fsync(wait=True)
            out = self._take(limit)
        return out

    def _take(self, limit: int) -> list[Message]:
        with self._lock:
            self._check_open()
            try:
                ids = self._pending_ids(SEND_CLASSES[0], limit)
                if len(ids) < limit:   # everything that is not telemetry fits: telemetry fills the rest
                    ids += self._pending_ids(SEND_CLASSES[1], limit - len(ids))
                unread = [i for i in ids if i not in self._fresh]
                rows = {r[0]: r for r in self._conn.execute(
                    f"{SELECT_MESSAGE} WHERE m.id IN ({','.join('?' * len(unread))})", unread)} if unread else {}
            except sqlite3.Error as e:
                raise OutboxError(f"{self.path}: cannot read pending messages: {e}") from e
            out: list[Message] = []
            self._offered = {}
            tele = Priority.TELEMETRY
            for msg_id in ids:
                m = self._fresh.get(msg_id)
                if m is None:
                    r = rows[msg_id]
                    m = Message(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), Priority(r[6]), r[7], bool(r[8]), r[9])
                    self._offered[msg_id] = r[10] if r[6] == tele else 0
                else:
                    self._offered[msg_id] = m.size if m.priority is tele else 0
                if msg_id == self._report_id:
                    self._report_id = None    # handed out: frozen from now on, a re-send must be identical
                out.append(m)
            return out

    def _pending_ids(self, priorities: tuple[Priority, ...], limit: int) -> list[int]:
        """The ids of the oldest ``limit`` messages of these priorities not in flight: one range of the index
        ``(priority, id)`` per priority (ids only: no table row is read), merged; the cost does not grow
        with the backlog of any class."""
        want = limit + len(self._inflight)   # at most len(inflight) of them are in flight
        durable = self._commit.durable_id
        # an open thinning report changed by a commit no fsync covers yet waits: a re-send must be identical
        skip = self._report_id if self._report_gen > self._commit.durable_gen else None
        ids: list[int] = []
        for p in priorities:
            if self._counts[p]:              # the running totals spare a query per empty priority
                ids += [i for (i,) in self._conn.execute(
                    "SELECT id FROM messages WHERE priority = ? AND id <= ? AND acked = 0 ORDER BY id LIMIT ?",
                    (int(p), durable, want + 1))]
        ids.sort()
        if skip is not None:   # what was put after the report waits with it: the events, or the event stream
            # would go out of order, and the telemetry, whose windows name the events put before them (heads)
            ids = [i for i in ids if i < skip]
        return [i for i in ids if i not in self._inflight][:limit]

    def mark_inflight(self, ids: Iterable[int]) -> int:
        """Record that these messages were handed to the network; ``pending`` skips them until requeued.

        Only ids still pending are marked (an id already acked is ignored, history or not); returns how many were.
        """
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return 0
        with self._lock:
            self._check_open()
            marked = 0
            rest = []
            for msg_id in wanted:        # what pending just returned needs no query (thinning and acks forget it)
                tele = self._offered.pop(msg_id, None)
                if tele is None:
                    rest.append(msg_id)
                    continue
                if msg_id not in self._inflight:
                    self._inflight[msg_id] = tele
                    self._inflight_tele += tele
                marked += 1
            wanted = rest
            try:
                for start in range(0, len(wanted), 500):
                    chunk = wanted[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    for msg_id, priority, size in self._conn.execute(
                            f"SELECT id, priority, size FROM messages WHERE id IN ({marks}) AND acked = 0", chunk):
                        if msg_id not in self._inflight:
                            tele = size if priority == Priority.TELEMETRY else 0
                            self._inflight[msg_id] = tele
                            self._inflight_tele += tele
                        marked += 1
            except sqlite3.Error as e:
                raise OutboxError(f"{self.path}: cannot mark messages in flight: {e}") from e
            return marked

    def ack(self, msg_id: int) -> bool:
        """The broker acknowledged ``msg_id``: it becomes history (or goes, without history). False if it was not
        pending (already acked)."""
        return self.ack_many([msg_id]) == 1

    def ack_many(self, ids: Iterable[int], *, drop: bool = False) -> int:
        """Several acknowledged messages become history (are deleted, without history) in one transaction, and
        the oldest history goes past ``history_bytes``; returns how many were pending. ``drop``: deleted, never
        history (a message the broker refused for good: a resend must not send it again)."""
        wanted = [int(i) for i in ids]
        if not wanted:
            return 0
        keep = self.history_bytes > 0 and not drop
        with self._lock:
            self._check_open()
            c = self._conn
            counts, sizes, history = list(self._counts), list(self._sizes), self._history.copy()
            done: list[tuple[int, int, int]] = []
            try:
                self._set_sync("NORMAL")   # a lost ack is a detectable duplicate; see the module docstring
                c.execute("BEGIN IMMEDIATE")
                try:
                    for start in range(0, len(wanted), 500):
                        chunk = wanted[start:start + 500]
                        marks = ",".join("?" * len(chunk))
                        if keep:   # SELECT then UPDATE: an UPDATE ... RETURNING costs half an ack more
                            done += c.execute(f"SELECT id, priority, size FROM messages WHERE id IN ({marks})"
                                              " AND acked = 0", chunk).fetchall()
                            c.execute(f"UPDATE messages SET acked = 1 WHERE id IN ({marks}) AND acked = 0", chunk)
                        else:
                            done += c.execute(f"DELETE FROM messages WHERE id IN ({marks}) AND acked = 0"
                                              " RETURNING id, priority, size", chunk).fetchall()
                    for _, priority, size in done:
                        counts[priority] -= 1
                        sizes[priority] -= size
                    if keep and done:
                        history.count += len(done)
                        history.bytes += sum(r[2] for r in done)
                        history.start = min(history.start, min(r[0] for r in done))
                    if history.bytes > self.history_bytes:   # pruned with headroom: not at every ack
                        self._prune_history(history, self.history_bytes - self.history_bytes // HEADROOM_DIV,
                                            max(HISTORY_PRUNE_ROWS, 2 * len(done)))
                    # The backlog is sent (telemetry below the floor): the next outage thins from level 1 again,
                    # not at the stride the last one needed.
                    rethin = self._level > 0 and sizes[Priority.TELEMETRY] < self.quota_bytes // FLOOR_DIV
                    if rethin:
                        c.execute("UPDATE counters SET value = 0 WHERE name IN ('thin_level', 'thin_clean_id')")
                    c.execute("COMMIT")
                except BaseException:
                    c.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise OutboxError(f"{self.path}: cannot record acknowledged messages: {e}") from e
            self._counts, self._sizes, self._history = counts, sizes, history
            if rethin:
                self._level = self._clean_id = 0
            for msg_id in wanted:
                self._inflight_tele -= self._inflight.pop(msg_id, 0)
                self._offered.pop(msg_id, None)
                self._fresh.pop(msg_id, None)
            return len(done)

    def requeue_inflight(self, ids: Iterable[int] | None = None) -> int:
        """Pending again in place: all in flight (after a reconnect), or ``ids`` (refused for now). How many."""
        with self._lock:
            self._check_open()
            if ids is None:
                n, self._inflight_tele = len(self._inflight), 0
                self._inflight.clear()
                return n
            gone = [self._inflight.pop(i) for i in set(ids) if i in self._inflight]
            self._inflight_tele -= sum(gone)
            return len(gone)

    def sync(self) -> None:
        """Return once everything put before this call is on disk (fsynced): ``outbox_commit``."""
        self._fsync(wait=True)

    def _fsync(self, *, wait: bool) -> None:
        try:
            self._commit.sync(wait=wait)
        except OSError as e:
            raise OutboxError(f"{self.path}: cannot fsync the outbox's log: {e}") from e

    # ---- looking -------------------------------------------------------------------------

    def last_sequences(self) -> dict[str, int]:
        """The last sequence number given on each stream (for the birth message)."""
        with self._lock:
            self._check_open()
            return dict(self._last_seq)

    def stats(self) -> OutboxStats:
        with self._lock:
            self._check_open()
            try:
                oldest = min((r for p in Priority if self._counts[p] for r in self._conn.execute(
                    "SELECT id, created_ns FROM messages WHERE priority = ? AND acked = 0 ORDER BY id LIMIT 1",
                    (int(p),))),
                    default=None)
            except sqlite3.Error as e:
                raise OutboxError(f"{self.path}: cannot read stats: {e}") from e
            age = None if oldest is None else max(0.0, (time.time_ns() - oldest[1]) / 1e9)
            file_bytes = 0
            for suffix in ("", "-wal"):
                with contextlib.suppress(FileNotFoundError):
                    file_bytes += os.stat(f"{self.path}{suffix}").st_size
            total = sum(self._sizes)
            return OutboxStats(
                count=sum(self._counts), bytes=total, quota_bytes=self.quota_bytes, over_quota=total > self.quota_bytes,
                by_priority={p: PriorityStats(self._counts[p], self._sizes[p]) for p in Priority},
                inflight=len(self._inflight), oldest_age_s=age, thinned=self._thinned,
                thinning_events=self._thinning_events, file_bytes=file_bytes, history_count=self._history.count,
                history_bytes=self._history.bytes)

    # ---- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database (SQLite checkpoints the WAL) and give up ownership. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._fresh.clear()
            try:
                self._commit.close()
            finally:
                try:
                    self._conn.close()
                finally:
                    os.close(self._owner_fd)

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{sum(self._counts)} messages"
        return f"Outbox({str(self.path)!r}, {state})"

