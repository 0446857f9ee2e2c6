"""The outbox's history of what the broker acknowledged, and ``resend`` (``Outbox`` has these through ``HistoryMixin``;
they work on its connection and totals, under its lock: split out of ``edge.telemetry.outbox`` for size).

The broker may lose what it acknowledged (mosquitto 2.0.11 does not
restore shared subscriptions after a restart, so what arrives before the subscribers are back goes
to nobody; a killed broker loses what it queued since its last autosave), and only the consumer
can tell: the plant historian knows every stream's gaps. So ``ack`` does not delete: the message
becomes **history**. Its row stays, marked ``acked``, and leaves the partial index
``messages_by_priority (priority, id) WHERE acked = 0`` that every pending query reads: an ack
takes one entry out of that index, as the deletion did, and rewrites its row in place, so it costs
about what the deletion cost (figures below). History is not counted in ``stats().count``, ``bytes``,
``by_priority`` nor against the quota (``history_count`` and ``history_bytes`` say what is kept).
``history_bytes`` (default 64 MiB; 0: an acknowledged message is deleted, as before) bounds it:
when an ack takes it over, the oldest history (by id) is deleted down to 1/16 below the bound, in
the ack's transaction, by a walk by id that looks at ``HISTORY_PRUNE_ROWS`` rows at most per call
(or twice what the call acknowledged), so an ack never stalls a put for long; it starts where the
last one stopped (history is older than what is pending, acks coming in send order; pending rows
it meets, an old backlog behind newer history, are passed once). A boot whose messages are only
history is still known, as long as they are there.

``resend(boot_id, stream, first_seq, last_seq)`` makes the history of that range of that boot's
stream pending again, in one transaction. Each message keeps its id (it goes before the newer
messages of its class), boot id, stream, seq, ``created_ns``, topic and payload, so the session's
envelope is byte-identical to the first copy and the consumer's exactly-once store takes it as the
one it missed; only ``retain`` is cleared (an old state must never replace the retained current
one). Acknowledged again, it is history again (and, by its old id, the first to be pruned). The
answer, ``Resent``, counts every number of the range up to the last the stream was given under
that boot (a later number is not lost, it does not exist yet) once: ``requeued``, ``pending``
(not acknowledged yet, or in flight: it goes anyway) or ``missing``, merged inclusive ranges
(pruned, thinned, acknowledged without history; all of them when the boot is unknown here). The
numbers are found through the index ``messages_by_seq (stream, seq)`` (a number is unique per
stream, across boots); an earlier boot's last numbers are recorded when the next one opens
(table ``boot_seqs``). At most ``MAX_RESEND`` numbers per call (``ValueError`` beyond, and for a
range that is empty or starts below 1): the transaction holds the outbox's lock, and a put waits
for it: 3 ms for 1,000 numbers, 270 ms for 100,000 on the development VM,
which is why ``MAX_RESEND`` is 5,000 (a resend runs on the controller's scan thread).

What history costs, measured on the development VM against the outbox without it (2026-12-07,
three interleaved runs of ``bench/bench_outbox.py``, best of each): the replay of a 100,000-message
backlog, one ack per message (the ack path), 34,100 messages/s (33,500 without); put + pend + ack
8,400 (9,600) with group commit, 11,000 (13,300) with ``NORMAL``: a put adds an entry to
``messages_by_seq``; ``pending(20)`` on a 1,000,000-message backlog and the resident memory are
unchanged; the MQTT session end to end (``bench/bench_session.py``) is within its noise.
``ack_many(20)`` takes 77 us (51: in a batch the UPDATE costs 1.3 us a message more than the
DELETE did), and once the history is full one call in about 60 also prunes a step of about 5 ms:
the deletions the acks used to do.
"""

from __future__ import annotations

import pathlib
import sqlite3
import threading
from dataclasses import dataclass

from edge.telemetry.outbox_commit import GroupCommit
from edge.telemetry.outbox_types import MAX_RESEND, RESEND_BYTES, OutboxError, Resent

PRUNE_BYTES = 8 << 20        # bytes one prune step deletes at most (the next ack goes on)
HISTORY_PRUNE_ROWS = 1024    # rows the history's pruning walk looks at, at most, per call (more when one ack_many
                             # brought more)


@dataclass
class History:
    """The history's running totals, and where its pruning walk starts: no history row has a lower id."""

    count: int = 0
    bytes: int = 0
    start: int = 0

    def copy(self) -> History:
        return History(self.count, self.bytes, self.start)


def missing_ranges(first: int, last: int, held: list[int]) -> list[tuple[int, int]]:
    """The inclusive ranges of ``first..last`` not in ``held`` (sorted, inside it)."""
    out: list[tuple[int, int]] = []
    nxt = first
    for seq in held:
        if seq > nxt:
            out.append((nxt, seq - 1))
        nxt = seq + 1
    if nxt <= last:
        out.append((nxt, last))
    return out


class HistoryMixin:
    """``Outbox``'s history methods; the state they use is the outbox's (``edge.telemetry.outbox``)."""

    path: pathlib.Path
    _conn: sqlite3.Connection
    _lock: threading.RLock
    _commit: GroupCommit
    _boot_n: int
    _last_seq: dict[str, int]
    _counts: list[int]
    _sizes: list[int]
    _history: History
    _put_sync: str

    def _check_open(self) -> None:
        raise NotImplementedError

    def _set_sync(self, mode: str) -> None:
        raise NotImplementedError

    def _prune_history(self, history: History, goal: int, max_rows: int) -> None:
        """Delete the oldest history (by id) until its bytes are at most ``goal``, in the caller's transaction,
        looking at ``max_rows`` rows and deleting ``PRUNE_BYTES`` at most (the deletion's work follows the bytes:
        a step of a 4 GiB history was 269 MB and held a put 1.4 s): a walk by id from ``history.start``
        (``history`` is updated); the next ack goes on.

        History is mostly older than what is pending (acks come in send order), so the walk finds it at once;
        pending rows it passes (an old backlog behind newer history) are passed for good, ``start`` moves on."""
        c = self._conn
        first, last = history.start, None
        freed = 0
        cur = c.execute("SELECT id, size, acked FROM messages WHERE id >= ? ORDER BY id LIMIT ?", (first, max_rows))
        try:
            for msg_id, size, acked in cur:
                history.start = msg_id + 1
                if acked:                     # every history row the walk meets goes: one range to delete
                    last = msg_id
                    history.count -= 1
                    history.bytes -= size
                    freed += size
                    if history.bytes <= goal or freed >= PRUNE_BYTES:
                        break
        finally:
            cur.close()
        if last is not None:
            c.execute("DELETE FROM messages WHERE id BETWEEN ? AND ? AND acked = 1", (first, last))

    def resend(self, boot_id: str, stream: str, first_seq: int, last_seq: int) -> Resent:
        """Make the history of ``boot_id``'s ``stream`` from ``first_seq`` to ``last_seq`` pending again (module
        docstring): one transaction, covered by the group commit like a put.

        Each number of the range up to the last the stream was given under that boot is counted once: requeued
        (history, pending again with its old id, unchanged but for ``retain``, cleared), pending (not acked yet)
        or missing (inclusive ranges: pruned, thinned...; everything when the boot is unknown here). Once
        ``RESEND_BYTES`` are requeued the rest is left for another ask: ``rest_from`` says where it starts."""
        for name, value in (("boot_id", boot_id), ("stream", stream)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        for name, number in (("first_seq", first_seq), ("last_seq", last_seq)):
            if isinstance(number, bool) or not isinstance(number, int):
                raise ValueError(f"{name} must be an integer, got {number!r}")
        if first_seq < 1:
            raise ValueError(f"first_seq must be at least 1 (numbers start at 1), got {first_seq}")
        if last_seq < first_seq:
            raise ValueError(f"last_seq ({last_seq}) is before first_seq ({first_seq})")
        if last_seq - first_seq >= MAX_RESEND:
            raise ValueError(f"a resend covers at most {MAX_RESEND} numbers, {first_seq}-{last_seq} is"
                             f" {last_seq - first_seq + 1}: ask in parts")
        with self._lock:
            self._check_open()
            c = self._conn
            counts, sizes, history = list(self._counts), list(self._sizes), self._history.copy()
            requeued: list[int] = []
            rest_from: int | None = None
            try:
                row = c.execute("SELECT n FROM boots WHERE boot_id = ?", (boot_id,)).fetchone()
                if row is None:
                    return Resent(0, 0, [(first_seq, last_seq)])
                if row[0] == self._boot_n:
                    top = self._last_seq.get(stream, 0)
                else:
                    bound = c.execute("SELECT last_seq FROM boot_seqs WHERE boot = ? AND stream = ?",
                                      (row[0], stream)).fetchone()
                    top = bound[0] if bound else 0
                top = min(top, last_seq)
                # in order of number, and no further than RESEND_BYTES requeued: the work (reading the rows, whose
                # large bodies lie in overflow pages, and rewriting them) follows the bytes, not the count, and a
                # resend runs on the controller's scan thread (5,000 batch records of 12 kB took 0.5 to 2 s)
                rows = []
                moved = 0
                cur = c.execute("SELECT id, seq, priority, size, acked FROM messages WHERE stream = ?"
                                " AND seq BETWEEN ? AND ? AND boot = ? ORDER BY seq", (stream, first_seq, top, row[0]))
                try:
                    for msg_id, seq, priority, size, acked in cur:
                        if moved >= RESEND_BYTES:
                            rest_from, top = seq, seq - 1
                            break
                        rows.append((msg_id, seq))
                        if acked:
                            requeued.append(msg_id)
                            counts[priority] += 1
                            sizes[priority] += size
                            history.count -= 1
                            history.bytes -= size
                            moved += size
                finally:
                    cur.close()
                if requeued:
                    self._set_sync(self._put_sync)
                    c.execute("BEGIN IMMEDIATE")
                    try:
                        for start in range(0, len(requeued), 500):
                            chunk = requeued[start:start + 500]
                            marks = ",".join("?" * len(chunk))
                            c.execute(f"UPDATE messages SET acked = 0, retain = 0 WHERE id IN ({marks})", chunk)
                        c.execute("COMMIT")
                    except BaseException:
                        c.execute("ROLLBACK")
                        raise
            except sqlite3.Error as e:
                raise OutboxError(f"{self.path}: cannot resend {stream!r} {first_seq}-{last_seq}, nothing changed:"
                                  f" {e}") from e
            if requeued:
                self._commit.committed(0)
                self._counts, self._sizes, self._history = counts, sizes, history
            return Resent(len(requeued), len(rows) - len(requeued),
                          missing_ranges(first_seq, top, sorted(r[1] for r in rows)), rest_from)
