"""Gaps as data: what the sequence numbers say is missing, per (site, station, boot, stream), kept in the database.

The semantics are ``edge.telemetry.tail.StreamTracker``'s (read its docstring): numbers count per stream
from 1 and continue across boots; a skipped number is a **gap**; one that arrives after all is **late** and
shrinks the gap (it closes it, or splits it in two); a ``telemetry_thinned`` event names ranges the outbox
removed on purpose, and a refused-message event (``message_refused``) one number the broker refused: a
gap inside them is **explained**, not lost; the **birth** (status ``online``) of a boot names the last
number the previous boot gave on each stream, so once the first message of the new boot arrives in a
stream's send class (the outbox sends everything that is not telemetry first, then telemetry, each class
in order), what is still missing of the previous boot on that stream is its **lost tail**, even on a
stream that stays quiet (if nothing of the previous boot on that stream is stored yet, as when the other
worker still holds it, the birth's claim waits in ``boots.tail_pending`` and is checked when the first
is). Retained messages do not start the numbering of a boot from the birth: a
retained birth was published before we subscribed, and what came before it is not ours to miss; nor does the
birth of a later connection of the boot (a reconnect), which a historian that subscribed mid-boot gets live.

What differs from the tail is where the state lives. ``coverage`` holds, per (boot, stream), the lowest
and highest number stored; every hole between them is a row of ``gaps`` (``closed`` null while open,
``explained`` null while it counts as lost, ``unrecoverable`` set once the station said it no longer holds
those numbers: ``edge.historian.resend`` asks for the open ones); ``explained`` keeps the thinning and
refusal reports, which arrive *before* the telemetry they explain (the outbox sends events first). So the
state survives a restart, and two workers share it.

**N workers, one station.** With a shared subscription, two workers get interleaved halves of one stream:
worker A may commit #5 while worker B still holds #4 in its open batch. Two choices make that right:

* *Each station's gap bookkeeping is serialised*: an ingest transaction takes the station's lock before it
  (``Tx.lock_stations``: PostgreSQL advisory transaction locks, in one sorted order so two transactions
  never wait on each other crosswise; SQLite has one writer anyway) and holds it to its commit, so the
  coverage and gap rows of a station are read and written by one transaction at a time, each seeing what
  the one before committed.
* *A gap is only a gap once nobody has the message*: A's commit does open a gap row for #4 (the database
  says what it holds), and B's commit closes it a moment later. What is *reported* (the log line, the open
  gap count, the fleet page) is a gap still open ``SETTLE_S`` after it was opened (``settled``): longer
  than any batch a worker holds (``consumer.py`` commits within a second) and than the broker's redelivery
  of a dead worker's messages to the other. A gap row younger than that is a message in flight: filled,
  its row is deleted (round-robin delivery opens one every second message); a gap filled after it settled
  stays, closed, as history. The listing reads the open and explained gaps only, bounded (``gap_rows``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.historian.store import Store, Tx, rows_relations
from edge.telemetry.outbox import Priority
from edge.telemetry.topics import STREAMS
from edge.timestamps import parse_rfc3339, rfc3339_ms

SETTLE_S = 15.0        # a gap younger than this may be a message another worker still holds (docstring)
MAX_LISTED = 1000      # the page and ``reedge historian gaps`` list at most this many gaps (``gap_rows``)

Key = tuple[str, str, str, str]      # site, station, boot_id, stream


@dataclass(frozen=True)
class Span:
    """The numbers ``first_seq`` to ``last_seq`` of one (site, station, boot, stream)."""

    site: str
    station: str
    boot_id: str
    stream: str
    first_seq: int
    last_seq: int

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


@dataclass(frozen=True)
class Gap(Span):
    """One row of ``gaps`` as it changed: opened (``closed`` None) or closed."""

    kind: str            # gap | lost_tail | late (closed by a late message) | unrecoverable
    explained: str | None = None

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


@dataclass
class _Boot:
    previous_boot_id: str | None
    tail_pending: dict[str, int] | None     # None: no live birth seen for this boot
    previous_last: dict[str, int] | None = None   # where its numbers start: the previous boot's last (a birth)
    dirty: bool = False


@dataclass
class GapBook:
    """The gap bookkeeping of one ingest transaction; ``flush`` writes coverage and boots back.

    The station's lock must be held (``Tx.lock_station``) before its first call for that station."""

    tx: Tx
    now: str
    coverage: dict[Key, list[int]] = field(default_factory=dict)       # [first, last]
    boots: dict[tuple[str, str, str], _Boot] = field(default_factory=dict)
    touched: set[Key] = field(default_factory=set)
    opened: list[Gap] = field(default_factory=list)
    closed: list[Gap] = field(default_factory=list)
    unrecoverable_gaps: list[Gap] = field(default_factory=list)

    # ---- loading ----

    def prefetch(self, boots: set[tuple[str, str, str]]) -> None:
        """Coverage and boots rows of these (site, station, boot) in two queries, not one per message."""
        todo = sorted(b for b in boots if b not in self.boots)
        self.boots.update((b, _Boot(None, None)) for b in todo)     # a boot of no row yet
        for keys, params in rows_relations(self.tx.dialect, todo, ("text", "text", "text")):
            for site, station, boot, stream, lo, hi in self.tx.query(
                    "SELECT site, station, boot_id, stream, first_seq, last_seq FROM coverage"
                    f" WHERE (site, station, boot_id) IN ({keys})", params):
                self.coverage[(site, station, boot, stream)] = [int(lo), int(hi)]
            for site, station, boot, prev, pending, last in self.tx.query(
                    "SELECT site, station, boot_id, previous_boot_id, tail_pending, previous_last_seq FROM boots"
                    f" WHERE (site, station, boot_id) IN ({keys})", params):
                self.boots[(site, station, boot)] = _Boot(prev, _json_seqs(pending), _json_seqs(last))

    def _boot(self, site: str, station: str, boot: str) -> _Boot:
        if (site, station, boot) not in self.boots:
            self.prefetch({(site, station, boot)})
        return self.boots[(site, station, boot)]

    def _cov(self, key: Key) -> list[int] | None:
        self._boot(*key[:3])         # loads the boot's coverage too
        return self.coverage.get(key)

    # ---- what the messages say ----

    def seen(self, site: str, station: str, boot: str, stream: str, seq: int) -> None:
        """A new (not duplicate) message of a tracked stream was stored."""
        key = (site, station, boot, stream)
        cov = self._cov(key)
        self.touched.add(key)
        if cov is None:
            info = self._boot(site, station, boot)
            start = None if info.tail_pending is None else _start(info, stream)
            if start is not None and seq > start:
                self._open(key, start, seq - 1, "gap", "missing since the boot's start (its birth named the"
                           f" previous boot's last #{start - 1})")
                self._cover_first(key, start, seq)
            else:
                self._cover_first(key, seq, seq)
            return
        if seq > cov[1] + 1:
            self._open(key, cov[1] + 1, seq - 1, "gap", "")
            cov[1] = seq
        elif seq == cov[1] + 1:
            cov[1] = seq
        elif seq < cov[0]:
            if seq + 1 <= cov[0] - 1:
                self._open(key, seq + 1, cov[0] - 1, "gap", "")
            cov[0] = seq
        else:
            self._fill(key, seq)

    def birth(self, site: str, station: str, boot: str, previous_boot_id: str | None,
              last_seq: dict[str, int], *, live: bool) -> None:
        """A status ``online`` message (new in the ledger). Only a live birth (of the boot's first connection:
        the caller's ``live``) sets what the boot's numbers start from and what the previous boot must have sent
        (module docstring)."""
        info = self._boot(site, station, boot)
        if previous_boot_id and info.previous_boot_id is None:
            info.previous_boot_id, info.dirty = previous_boot_id, True
        if info.previous_last is None and last_seq:      # as the boots row keeps it (the first birth's)
            info.previous_last = dict(last_seq)
        if not live or info.tail_pending is not None:
            return
        last = {s: n for s, n in last_seq.items() if s in STREAMS and STREAMS[s].tracked}
        info.tail_pending, info.dirty = dict(last), True
        for stream, n in sorted(last.items()):
            key = (site, station, boot, stream)
            cov = self._cov(key)
            if cov is not None and cov[0] > n + 1:     # this boot's first messages were stored before its birth
                self._open(key, n + 1, cov[0] - 1, "gap", f"missing since the boot's start (previous boot's last #{n})")
                cov[0] = n + 1
                self.touched.add(key)
        for stream in sorted({s for (si, st, b, s) in self.coverage if (si, st, b) == (site, station, boot)}):
            self._settle_tail(site, station, boot, stream)

    def heads(self, site: str, station: str, boot: str, heads: dict[str, int]) -> None:
        """A telemetry window of ``boot`` names the last number given so far on each other stream (``heads``,
        schema 1.4): what this boot's coverage of one lacks up to it is a **lost tail** now, not at that stream's
        next message or the next boot's birth (a lost trip event would otherwise stay unseen for hours). The
        outbox sends every other stream before telemetry, so those numbers went out before the window; one a
        worker still holds is a gap that closes before it settles. A stream with nothing of this boot stored
        yet starts where the boot's live birth said the previous boot ended (as in ``seen``: without a live
        birth, what came before we subscribed is not ours to miss; the next window says it again)."""
        info = self._boot(site, station, boot)
        for stream, n in sorted(heads.items()):      # as ``topics.window_heads`` reads them
            key = (site, station, boot, stream)
            cov = self._cov(key)
            detail = f"lost tail: a telemetry window of this boot said the stream reached #{n}"
            if cov is not None:
                if cov[1] < n:
                    self._open(key, cov[1] + 1, n, "lost_tail", detail)
                    cov[1] = n
                    self.touched.add(key)
                continue
            if info.tail_pending is None or info.previous_last is None:    # no live birth: not ours to miss
                continue
            start = _start(info, stream) or 1       # a stream the birth does not name was never used: from 1
            if n < start:
                continue
            self._open(key, start, n, "lost_tail", detail)
            self._cover_first(key, start, n)

    def explain(self, site: str, station: str, stream: str, lo: int, hi: int, why: str) -> None:
        """Numbers ``lo..hi`` of ``stream`` are missing on purpose (thinned, refused): remember it, and mark
        the open gaps in them explained (in any boot: the numbers are the stream's, across boots)."""
        if lo > hi:
            return
        self.tx.execute("INSERT INTO explained (site, station, stream, first_seq, last_seq, why)"
                        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", (site, station, stream, lo, hi, why))
        # an unrecoverable gap too: a station asked for a message it had dropped on purpose (the broker refused
        # it) says "missing", and its refusal report may come later; explained, it is not a loss
        self._mark_open(site, station, None, stream, lo, hi, lambda detail: (why, detail, None),
                        unrecoverable_too=True)

    def unrecoverable(self, site: str, station: str, boot: str, stream: str, lo: int, hi: int, detail: str) -> None:
        """The station said it no longer holds numbers ``lo..hi`` of ``boot``'s ``stream`` (its answer to a
        ``resend``, ``edge.historian.resend``): the open gaps in them are marked unrecoverable (split where they
        reach beyond), never asked for again."""
        if lo > hi:
            return
        marked = self._mark_open(site, station, boot, stream, lo, hi,
                                 lambda old: (None, (old + "; " if old else "") + detail, self.now))
        self.unrecoverable_gaps += (Gap(site, station, boot, stream, x, y, "unrecoverable") for _, x, y in marked)

    def _mark_open(self, site: str, station: str, boot: str | None, stream: str, lo: int, hi: int,
                   mark: Callable[[str], tuple[str | None, str, str | None]], *,
                   unrecoverable_too: bool = False) -> list[tuple[str, int, int]]:
        """The open gaps of ``stream`` (of ``boot``, or of every boot) that overlap ``lo..hi``, split where the range
        ends; the part inside becomes ``mark(its detail)``: (explained, detail, unrecoverable). Returns the parts
        marked, (boot, first, last). ``unrecoverable_too``: the unrecoverable ones as well (the parts outside the
        range stay so)."""
        which = "closed IS NULL AND explained IS NULL" if unrecoverable_too else _OPEN
        sql = (f"SELECT boot_id, first_seq, last_seq, opened, detail, unrecoverable FROM gaps WHERE site = ?"
               f" AND station = ? AND stream = ? AND {which} AND first_seq <= ? AND last_seq >= ?")
        params: list[Any] = [site, station, stream, hi, lo]
        if boot is not None:
            sql += " AND boot_id = ?"
            params.append(boot)
        marked = []
        for b_id, a, b, opened, detail, lost in self.tx.query(sql, params):
            a, b = int(a), int(b)
            self._delete(site, station, b_id, stream, a)
            x, y = max(a, lo), min(b, hi)
            for p, q, inside in ((a, x - 1, False), (x, y, True), (y + 1, b, False)):
                if p <= q:
                    self._insert(site, station, b_id, stream, p, q, opened,
                                 *(mark(detail) if inside else (None, detail, lost)))
            marked.append((str(b_id), x, y))
        return marked

    # ---- the pieces ----

    def _cover_first(self, key: Key, lo: int, hi: int) -> None:
        """The boot's first coverage of a stream: later births' claims about it, and its own birth's claims of
        the stream's send class, are due now."""
        site, station, boot, stream = key
        self.coverage[key] = [lo, hi]
        self.touched.add(key)
        self._claims_about(site, station, boot, stream)
        self._settle_tail(site, station, boot, stream)      # this boot's first in the class: its claims

    def _settle_tail(self, site: str, station: str, boot: str, stream: str) -> None:
        """``boot`` stored its first message in ``stream``'s send class: what its birth said the previous boot
        sent in that class is due. A claim whose previous boot has no coverage yet on that stream stays (in
        ``tail_pending``) until that coverage is created (``_claims_about``): with two workers, the first
        message of the new boot may commit before any of the previous boot's."""
        info = self._boot(site, station, boot)
        if not info.tail_pending:
            return
        telemetry = _is_telemetry(stream)
        for s, last in sorted(info.tail_pending.items()):
            if _is_telemetry(s) != telemetry:
                continue
            prev = self._previous_boot(site, station, boot, s, last)
            if prev is not None and self._cov((site, station, prev, s)) is not None:
                self._check_tail(site, station, boot, prev, s, last)

    def _claims_about(self, site: str, station: str, prev: str, stream: str) -> None:
        """``prev`` got its first coverage on ``stream``: check the claims of later births still waiting for it
        (named ``prev`` as their previous boot, or named none and ``prev``'s numbers are at or below the claim),
        once the claiming boot's send class of ``stream`` has started."""
        rows = self.tx.query("SELECT boot_id, tail_pending FROM boots WHERE site = ? AND station = ? AND boot_id <> ?"
                             " AND (previous_boot_id = ? OR previous_boot_id IS NULL) AND tail_pending IS NOT NULL",
                             (site, station, prev, prev))
        boots = {str(b) for b, pending in rows if stream in (_json_seqs(pending) or {})}
        boots |= {b for (si, st, b) in self.boots if (si, st) == (site, station) and b != prev}
        first = self.coverage[(site, station, prev, stream)][0]
        telemetry = _is_telemetry(stream)
        for boot in sorted(boots):
            info = self._boot(site, station, boot)
            last = (info.tail_pending or {}).get(stream)
            if last is None or info.previous_boot_id not in (None, prev) or (info.previous_boot_id is None
                                                                               and first > last):
                continue
            if any((si, st, b) == (site, station, boot) and _is_telemetry(s) == telemetry
                   for (si, st, b, s) in self.coverage):       # its class started: the claim is due
                self._check_tail(site, station, boot, prev, stream, last)

    def _check_tail(self, site: str, station: str, boot: str, prev: str, stream: str, last: int) -> None:
        """The birth of ``boot`` said ``prev`` reached ``last`` on ``stream``: what ``prev``'s coverage lacks
        of it is its lost tail. The claim is settled."""
        info = self.boots[(site, station, boot)]
        assert info.tail_pending is not None
        del info.tail_pending[stream]
        info.dirty = True
        key = (site, station, prev, stream)
        cov = self.coverage[key]
        if cov[1] < last:
            self._open(key, cov[1] + 1, last, "lost_tail",
                       f"lost tail: the birth of boot {boot[:12]} said this boot reached #{last}")
            cov[1] = last
            self.touched.add(key)

    def _previous_boot(self, site: str, station: str, boot: str, stream: str, last: int) -> str | None:
        """The boot the birth of ``boot`` spoke of: named in it, else the other boot whose numbers on
        ``stream`` end highest at or below ``last`` (the outbox's counters are shared by all boots), as stored
        or as this transaction has it."""
        named = self.boots[(site, station, boot)].previous_boot_id
        if named:
            return named
        ends = {str(b): int(n) for b, n in self.tx.query(
            "SELECT boot_id, last_seq FROM coverage WHERE site = ? AND station = ? AND stream = ? AND boot_id <> ?",
            (site, station, stream, boot))}
        ends.update({b: c[1] for (si, st, b, s), c in self.coverage.items()
                     if (si, st, s) == (site, station, stream) and b != boot})
        below = [(n, b) for b, n in ends.items() if n <= last]
        return max(below)[1] if below else None

    def _open(self, key: Key, lo: int, hi: int, kind: str, detail: str) -> None:
        """A new hole ``lo..hi``: gap rows, split where the explained ranges cover part of it."""
        site, station, _, stream = key
        covered = sorted((int(a), int(b), str(w)) for a, b, w in self.tx.query(
            "SELECT first_seq, last_seq, why FROM explained WHERE site = ? AND station = ? AND stream = ?"
            " AND first_seq <= ? AND last_seq >= ?", (site, station, stream, hi, lo)))
        detail = detail or f"{hi - lo + 1} missing"
        pos = lo
        for a, b, why in covered:
            a, b = max(a, pos), min(b, hi)
            if a > b:
                continue
            if pos < a:
                self._new_gap(key, pos, a - 1, kind, None, detail)
            self._new_gap(key, a, b, kind, why, detail)
            pos = b + 1
        if pos <= hi:
            self._new_gap(key, pos, hi, kind, None, detail)

    def _new_gap(self, key: Key, lo: int, hi: int, kind: str, why: str | None, detail: str) -> None:
        self._insert(*key, lo, hi, self.now, why, detail)
        self.opened.append(Gap(*key, lo, hi, kind, why))

    def _fill(self, key: Key, seq: int) -> None:
        """A late message: the open gap that holds it shrinks, splits in two, or closes: a closed row stays as
        history only if the gap had settled (``SETTLE_S``); younger, it was a message the other worker held
        (every second one, with round-robin delivery), and its row is deleted."""
        site, station, boot, stream = key
        rows = self.tx.query("SELECT first_seq, last_seq, opened, explained, detail, unrecoverable FROM gaps"
                             " WHERE site = ? AND station = ? AND boot_id = ? AND stream = ? AND closed IS NULL"
                             " AND first_seq <= ? AND last_seq >= ?", (*key, seq, seq))
        if not rows:
            return
        a, b, opened, why, detail, lost = rows[0]
        a, b = int(a), int(b)
        if a == b:
            if parse_rfc3339(self.now) - parse_rfc3339(opened, "opened") < SETTLE_S * 1e9:
                self._delete(site, station, boot, stream, a)        # in flight: it never was a gap
            else:
                self.tx.execute("UPDATE gaps SET closed = ?, detail = ? WHERE site = ? AND station = ?"
                                " AND boot_id = ? AND stream = ? AND first_seq = ?",
                                (self.now, (detail + "; " if detail else "") + "the missing arrived late", *key, a))
            self.closed.append(Gap(*key, a, b, "late", why))
            return
        self._delete(site, station, boot, stream, a)
        for p, q in ((a, seq - 1), (seq + 1, b)):
            if p <= q:
                self._insert(site, station, boot, stream, p, q, opened, why, detail, lost)

    def _insert(self, site: str, station: str, boot: str, stream: str, lo: int, hi: int, opened: str,
                why: str | None, detail: str, unrecoverable: str | None = None) -> None:
        self.tx.execute("INSERT INTO gaps (site, station, boot_id, stream, first_seq, last_seq, opened, closed,"
                        " explained, detail, unrecoverable) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                        (site, station, boot, stream, lo, hi, opened, why, detail, unrecoverable))

    def _delete(self, site: str, station: str, boot: str, stream: str, first: int) -> None:
        self.tx.execute("DELETE FROM gaps WHERE site = ? AND station = ? AND boot_id = ? AND stream = ?"
                        " AND first_seq = ?", (site, station, boot, stream, first))

    def flush(self) -> None:
        """Write the touched coverage rows and the boots' tail state back (same transaction)."""
        rows = [(*k, *self.coverage[k]) for k in sorted(self.touched)]
        for values, params in rows_relations(self.tx.dialect, rows, ("text", "text", "text", "text", "bigint",
                                                                    "bigint")):
            self.tx.execute(f"INSERT INTO coverage (site, station, boot_id, stream, first_seq, last_seq) {values}"
                            " ON CONFLICT (site, station, boot_id, stream) DO UPDATE"
                            " SET first_seq = excluded.first_seq, last_seq = excluded.last_seq", params)
        self.touched.clear()
        for (site, station, boot), info in sorted(self.boots.items()):
            if info.dirty:
                self.tx.execute("UPDATE boots SET previous_boot_id = ?, tail_pending = ? WHERE site = ?"
                                " AND station = ? AND boot_id = ?",
                                (info.previous_boot_id, None if info.tail_pending is None
                                 else json.dumps(info.tail_pending, sort_keys=True), site, station, boot))
                info.dirty = False


def _start(info: _Boot, stream: str) -> int | None:
    """Where the boot's numbers on ``stream`` start, as its birth said (the previous boot's last + 1), if it did."""
    last = (info.previous_last or {}).get(stream)
    return None if last is None else last + 1


def _json_seqs(value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    doc = json.loads(value) if isinstance(value, str) else value
    return {str(k): int(v) for k, v in doc.items() if isinstance(v, int)} if isinstance(doc, dict) else None


def _is_telemetry(stream: str) -> bool:
    """The outbox's send class of a stream (as ``edge.telemetry.tail``: telemetry goes after everything else)."""
    spec = STREAMS.get(stream)
    return spec is not None and spec.priority is Priority.TELEMETRY


# ---- reading ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GapRow(Span):
    """One row of ``gaps`` as stored."""

    opened: str
    closed: str | None
    explained: str | None
    detail: str
    unrecoverable: str | None = None     # when the station said it no longer holds these (``resend``)


_OPEN = "closed IS NULL AND explained IS NULL AND unrecoverable IS NULL"


def gap_rows(store: Store, *, open_only: bool = False, settled_before: str | None = None,
             limit: int | None = None, unrecoverable: bool = False) -> list[GapRow]:
    """The gaps, oldest first. By default the listing (the page, ``reedge historian gaps``): the open, the
    unrecoverable and the explained ones (a closed one is history, not read), at most ``limit``
    (``MAX_LISTED``), the open ones first, then the newest. ``open_only``: all those not closed, not explained
    and not unrecoverable (what counts as lost so far, and may still be re-sent; the log and ``gaps --open``
    say each), with ``unrecoverable`` the unrecoverable ones too, unless a ``limit`` is given;
    ``settled_before``: only those opened before that time (``settled``)."""
    sql = ("SELECT site, station, boot_id, stream, first_seq, last_seq, opened, closed, explained, detail,"
           " unrecoverable FROM gaps")
    where = [("closed IS NULL AND explained IS NULL" if unrecoverable else _OPEN) if open_only
             else "(closed IS NULL OR explained IS NOT NULL)"]
    params: list[Any] = []
    if settled_before is not None:
        where.append("opened < ?")
        params.append(settled_before)
    sql += " WHERE " + " AND ".join(where)
    if limit is None and not open_only:
        limit = MAX_LISTED
    if limit is not None:
        sql += (" ORDER BY explained IS NOT NULL, unrecoverable IS NOT NULL, opened DESC, site, station, stream,"
                " first_seq DESC LIMIT ?")
        params.append(int(limit))
    rows = [GapRow(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), r[6], r[7], r[8], r[9], r[10])
            for r in store.query(sql, params)]
    return sorted(rows, key=lambda g: (g.opened, g.site, g.station, g.stream, g.first_seq))


def open_gap_count(store: Store, *, settled_before: str | None = None) -> tuple[int, int]:
    """How many gaps are open (unexplained, not unrecoverable), and how many messages they miss: all of them,
    not bounded as the listing is (``MAX_LISTED``); ``settled_before`` as ``gap_rows`` takes it."""
    if settled_before is None:
        return _gap_totals(store, _OPEN)
    return _gap_totals(store, f"{_OPEN} AND opened < ?", (settled_before,))


def unrecoverable_count(store: Store) -> tuple[int, int]:
    """How many gaps are unrecoverable (the stations no longer hold them), and how many messages they miss."""
    return _gap_totals(store, "closed IS NULL AND unrecoverable IS NOT NULL")


def _gap_totals(store: Store, where: str, params: Sequence[Any] = ()) -> tuple[int, int]:
    count, missing = store.query(f"SELECT COUNT(*), COALESCE(SUM(last_seq - first_seq + 1), 0) FROM gaps"
                                 f" WHERE {where}", params)[0]
    return int(count), int(missing)


def settled(now_ns: int, settle_s: float = SETTLE_S) -> str:
    """The ``settled_before`` time: gaps opened before it are not messages in flight."""
    return rfc3339_ms(now_ns - int(settle_s * 1e9))


def age_s(opened: str, now_ns: int) -> float:
    return (now_ns - parse_rfc3339(opened, "opened")) / 1e9
