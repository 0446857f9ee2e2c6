"""The historian asks the stations to re-send its settled gaps (the station's ``resend`` command).

A station keeps a bounded history of what the broker acknowledged (``edge.telemetry.outbox``: "History and
resend") and serves ``cmd/{identity}/resend`` (``mqtt_schemas/cmd-resend.json``): it puts those messages in
its outbox again, byte for byte, and answers on ``reply/resend`` what it re-queued and what it no longer
holds. The broker can lose what it acknowledged (mosquitto 2.0.11 forgets a share group's subscriptions
at a restart; a broker killed loses what it queued since its last save); the historian knows exactly what
is missing. So each **settled, unexplained** gap (a lost tail too: it is a gap row) is asked for:

* **who asks**: the worker whose gap check finds it (``ask_due``), in one transaction per station under the
  station's lock (``Tx.lock_station``), deciding from the ``resend_requests`` rows what that transaction
  sees: two workers never ask twice for one range, and a restarted worker goes on where the rows say;
* **what**: the gap, in spans of at most ``MAX_RESEND`` numbers, gaps of a stream close together in one
  (``spans``); the oldest gaps first; at most ``PER_STATION_PER_MINUTE`` asks per station per minute (a
  station's rate limit lets 20 through at once);
* **when**: a station the historian knows offline (its Will, its own ``offline``) is not asked until it is
  back: the command would wait in its session at the broker and arrive too old (``stale``);
* **the rest**: a station moves at most 2 MiB per resend and says where it stopped (``rest_from``, schema
  1.4): the numbers from there on count as never asked, so they are asked for as soon as the gap before them
  has closed, and a long gap (hours of a station's output lost at the broker) is taken back 2 MiB at a time
  within the per-minute budget, not one part per ``RESEND_AFTER_S`` and five parts in all;
* **again**: after ``RESEND_AFTER_S`` if the gap is still open and the answer was none, ``ok`` with nothing
  arriving, or one that means "not executed, ask again" (``busy``; ``stale``: it waited too long on the way;
  ``refused``: the station was stopping; ``outcome_unknown``, ``error``), up to ``MAX_ATTEMPTS`` asks of
  those numbers in all; any other answer (``unauthorised``: the ACL or the roles do not let this identity
  ask; ``not_allowed``: the station keeps no history; ``unknown_verb``: a station older than ``resend``) is
  not asked again: the gap stays open and is reported;
* **the answer** (``record_answer``, from ``ingest``: a reply is a stored message of the station, matched
  by its command id in the transaction that stores it): its code and data go into the request's row, and
  the numbers the station says are ``missing`` make that part of the gap **unrecoverable** (``gaps``):
  shown as such, never asked again. What it re-sent closes the gap through the exactly-once ingest (the
  copies are byte-identical to the first).

The command is the one ``mqtt_schemas/command.json`` describes (``issuer`` = the identity, a new uuid4
``command_id`` for each ask: a station answers one id once), sent QoS 1 to
``reedge/v1/{site}/{station}/cmd/{identity}/resend``; ``identity`` is the historian's MQTT identity as
the broker sees it (its username or certificate CN), since the ACL lets an identity write only its own
command level. Without one the historian does not ask (``reedge historian run --identity``).
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edge.historian.gaps import GapBook, Span, gap_rows, settled
from edge.historian.store import Store
from edge.telemetry.outbox import MAX_RESEND
from edge.telemetry.topics import SCHEMA_BASE, StationTopics, check_identity, command_schema
from edge.timestamps import parse_rfc3339, rfc3339_ms

VERB = "resend"
RESEND_AFTER_S = 120.0          # an unanswered, busy, or answered-but-unfilled ask is made again after this
MAX_ATTEMPTS = 5                # asks of the same numbers at most
PER_STATION_PER_MINUTE = 10     # asks per station per minute at most (its default burst is 20)
# the answers after which a still-open gap is asked for again (None: no answer)
AGAIN = (None, "ok", "busy", "stale", "refused", "outcome_unknown", "error")
MERGE_HELD = 50                 # gaps of a stream at most this many stored numbers apart: one ask (``spans``)
KEEP_ASKS_S = 30 * 86400.0      # an ask's row is forgotten this long after it was made (``ask_due``)


@dataclass(frozen=True)
class Request(Span):
    """One ask of a span: a row of ``resend_requests`` to publish."""

    command_id: str
    attempts: int
    issued_at: str

    def topic(self, identity: str) -> str:
        return StationTopics(self.site, self.station).topic("cmd", VERB, check_identity(identity))

    def payload(self, identity: str) -> bytes:
        """The command (``cmd-resend.json``)."""
        return json.dumps({"schema": SCHEMA_BASE + command_schema(VERB), "command_id": self.command_id,
                           "issued_at": self.issued_at, "issuer": identity,
                           "args": {"boot_id": self.boot_id, "stream": self.stream, "first_seq": self.first_seq,
                                    "last_seq": self.last_seq}}, separators=(",", ":")).encode()

    def describe(self) -> str:
        span = f"#{self.first_seq}" if self.first_seq == self.last_seq else f"#{self.first_seq}-{self.last_seq}"
        again = f" (ask {self.attempts} of {MAX_ATTEMPTS})" if self.attempts > 1 else ""
        return f"{self.site}/{self.station} {self.stream} {span} boot {self.boot_id}{again}"


def ask_due(store: Store, now_ns: int, *, settle_s: float, resend_after_s: float = RESEND_AFTER_S) -> list[Request]:
    """The asks due now, recorded (each station in its own transaction, under its lock): the caller publishes
    them after this returns. A request recorded and never published (the worker died) is simply unanswered,
    and asked again after ``resend_after_s``. A station is locked only when a plain read found something due
    for it (a gap waiting for its answer costs one read per check, not a lock). Asks made ``KEEP_ASKS_S`` ago
    are forgotten first: the table keeps about a month of asks, and a gap open that long (its asks spent) is
    asked for again, ``MAX_ATTEMPTS`` more times."""
    forget = (rfc3339_ms(now_ns - int(KEEP_ASKS_S * 1e9)),)   # the table must not grow for ever (docstring)
    if store.query("SELECT 1 FROM resend_requests WHERE asked_at < ? LIMIT 1", forget):   # a read: no write per check
        with store.transaction() as tx:
            tx.execute("DELETE FROM resend_requests WHERE asked_at < ?", forget)
    offline = {(a, b) for a, b in store.query("SELECT site, station FROM stations WHERE status = 'offline'")}
    stations = sorted({(g.site, g.station) for g in gap_rows(store, open_only=True,
                                                             settled_before=settled(now_ns, settle_s))} - offline)
    out: list[Request] = []
    for site, station in stations:
        if not _station_asks(store, site, station, now_ns, settle_s, resend_after_s):
            continue
        with store.transaction() as tx:
            tx.lock_station(site, station)
            due = _station_asks(tx, site, station, now_ns, settle_s, resend_after_s)
            if due:
                tx.executemany("INSERT INTO resend_requests (command_id, site, station, boot_id, stream, first_seq,"
                               " last_seq, asked_at, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               [(r.command_id, r.site, r.station, r.boot_id, r.stream, r.first_seq, r.last_seq,
                                 r.issued_at, r.attempts) for r in due])
        out += due
    return out


class _Reader(Protocol):
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


def spans(gaps: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges to ask for ``gaps`` (first, last) of one stream: gaps at most ``MERGE_HELD`` numbers apart in
    one ask (round-robin delivery to two workers loses every other number: one ask, not one per number; the
    station re-sends those between too, duplicates the ledger takes once), none longer than ``MAX_RESEND``."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(gaps):
        if out and lo - out[-1][1] - 1 <= MERGE_HELD and hi - out[-1][0] < MAX_RESEND:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
            continue
        out += [(a, min(hi, a + MAX_RESEND - 1)) for a in range(lo, hi + 1, MAX_RESEND)]
    return out


def _station_asks(q: _Reader, site: str, station: str, now_ns: int, settle_s: float,
                  resend_after_s: float) -> list[Request]:
    """What to ask ``station`` now, from what ``q`` (a store, or the transaction holding the station's lock)
    sees: the spans of its settled open gaps not asked for, or due again, the oldest first, within the budget."""
    gaps: dict[tuple[str, str], list[tuple[int, int, str]]] = defaultdict(list)     # first, last, opened
    for boot, stream, lo, hi, opened in q.query(
            "SELECT boot_id, stream, first_seq, last_seq, opened FROM gaps WHERE site = ? AND station = ?"
            " AND closed IS NULL AND explained IS NULL AND unrecoverable IS NULL AND opened < ?",
            (site, station, settled(now_ns, settle_s))):
        gaps[(boot, stream)].append((int(lo), int(hi), str(opened)))
    recent = int(q.query("SELECT COUNT(*) FROM resend_requests WHERE site = ? AND station = ? AND asked_at >= ?",
                         (site, station, rfc3339_ms(now_ns - 60 * 10**9)))[0][0])
    budget = PER_STATION_PER_MINUTE - recent
    if budget <= 0 or not gaps:
        return []
    # the asks that touch an open gap of this station: what was asked, when, how often, and the answer
    asked: dict[tuple[str, str], list[tuple[int, int, int, int, str | None]]] = defaultdict(list)
    for boot, stream, lo, hi, at, attempts, code, rest_from in q.query(
            "SELECT r.boot_id, r.stream, r.first_seq, r.last_seq, r.asked_at, r.attempts, r.code, r.rest_from"
            " FROM resend_requests r WHERE r.site = ? AND r.station = ? AND EXISTS (SELECT 1 FROM gaps g"
            " WHERE g.site = r.site AND g.station = r.station AND g.boot_id = r.boot_id AND g.stream = r.stream"
            " AND g.closed IS NULL AND g.explained IS NULL AND g.unrecoverable IS NULL"
            " AND g.first_seq <= r.last_seq AND g.last_seq >= r.first_seq)", (site, station)):
        if code == "ok" and rest_from is not None:    # the numbers it looked at (record_answer keeps only a
            hi = int(rest_from) - 1                   # rest_from above first_seq): the rest is a first ask
        asked[(boot, stream)].append((int(lo), int(hi), parse_rfc3339(at, "asked_at"), int(attempts), code))
    todo = []
    for (boot, stream), holes in gaps.items():
        holes.sort()
        j = 0
        for a, b in spans([(lo, hi) for lo, hi, _ in holes]):       # in order; each span covers some hole
            while holes[j][1] < a:
                j += 1
            k, opened = j, holes[j][2]
            while k < len(holes) and holes[k][0] <= b:
                opened, k = min(opened, holes[k][2]), k + 1
            todo.append((opened, stream, a, b, boot))
    due: list[Request] = []
    issued_at = rfc3339_ms(now_ns)
    for _, stream, a, b, boot in sorted(todo):
        before = [r for r in asked[(boot, stream)] if r[0] <= b and r[1] >= a]
        attempts = max((r[3] for r in before), default=0)
        if before:
            last = max(r[2] for r in before)
            if (attempts >= MAX_ATTEMPTS or any(r[4] not in AGAIN for r in before)
                    or now_ns - last < resend_after_s * 1e9):
                continue
        if len(due) >= budget:
            break
        due.append(Request(site, station, boot, stream, a, b, command_id=str(uuid.uuid4()), attempts=attempts + 1,
                           issued_at=issued_at))
    return due


@dataclass(frozen=True)
class Answer:
    """A station's answer to one of our asks (``record_answer``)."""

    request: Request
    code: str
    message: str
    requeued: int | None
    missing: list[tuple[int, int]]


def record_answer(book: GapBook, site: str, station: str, body: dict[str, Any]) -> Answer | None:
    """A new ``reply`` of ``station`` (in the ingest transaction, the station's lock held): if it answers one of
    our asks, its code and data go into the request's row and the ``missing`` numbers the station no longer
    holds make that part of the gap unrecoverable. None when it answers no ask of ours."""
    command_id = body.get("command_id")
    if body.get("verb") != VERB or not isinstance(command_id, str):
        return None
    rows = book.tx.query("SELECT boot_id, stream, first_seq, last_seq, attempts, asked_at FROM resend_requests"
                         " WHERE command_id = ? AND site = ? AND station = ?", (command_id, site, station))
    if not rows:
        return None
    boot, stream, lo, hi, attempts, asked_at = rows[0]
    request = Request(site, station, boot, stream, int(lo), int(hi), command_id=command_id, attempts=int(attempts),
                      issued_at=asked_at)
    code = str(body.get("code"))
    data: dict[str, Any] = body["data"] if isinstance(body.get("data"), dict) else {}
    requeued = data.get("requeued") if isinstance(data.get("requeued"), int) else None
    rest = data.get("rest_from")
    rest_from = (rest if isinstance(rest, int) and not isinstance(rest, bool)
                 and request.first_seq < rest <= request.last_seq else None)
    missing: list[tuple[int, int]] = []
    for entry in data.get("missing") or ():
        if (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, int) for x in entry)
                and max(entry[0], request.first_seq) <= min(entry[1], request.last_seq)):
            missing.append((max(entry[0], request.first_seq), min(entry[1], request.last_seq)))
    book.tx.execute("UPDATE resend_requests SET answered = ?, code = ?, requeued = ?, missing = ?, rest_from = ?"
                    " WHERE command_id = ?",
                    (book.now, code, requeued, json.dumps([list(m) for m in missing]), rest_from, command_id))
    if code == "ok":
        for a, b in missing:
            book.unrecoverable(site, station, boot, stream, a, b,
                               f"unrecoverable: the station no longer holds #{a}-{b} (its answer to resend"
                               f" {command_id})")
    return Answer(request, code, str(body.get("message", "")), requeued, missing)
