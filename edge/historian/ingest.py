"""Store a batch of received MQTT messages, exactly once, in one transaction.

    result = ingest(store, [(topic, payload, retained), ...])    # IngestResult: stored, duplicate, ...

Each message is first checked as ``reedge tail`` checks it (``edge.telemetry.tail.check_message``: topic,
envelope, the stream's schema), outside the transaction: an invalid one goes into ``quarantine`` with the
reasons, never dropped and never failing the batch, and once however often it is delivered (a row per
topic and payload: ``store.quarantine_digest``). Commands (``.../cmd/...``) are not station output:
counted as ignored.

**The same rows from both engines.** Every time that goes into a column (``ts``, a window's start and
end, a batch's start and end, a boot's start) is parsed (``parse_rfc3339``) and stored as UTC with
milliseconds whatever offset it came with, so the text sorts as the time; one that is not a real time
(30 February passes the schema's pattern) is quarantined. An integer written as ``1000.0`` (JSON Schema
calls it an integer) is stored as 1000. JSON's non-numbers (NaN, Infinity) never get this far:
``envelope.parse`` refuses them.

**Exactly once** by (site, station, boot, stream, seq): the ``received`` ledger has one row per stored
message with the SHA-256 of its payload. A key already there is a duplicate (a re-send, a retained copy
delivered again at subscribe) and changes nothing. A station re-sends byte-identical copies by contract,
so a *different* payload under a known key is not a duplicate but a conflict, and is quarantined (a
status message excepted: the broker's Will and the station's own ``offline`` share a number, and either
may come; the first stored stays).

Then per stream, for the new ones: ``telemetry`` one row per window (read one row per channel through the
view of the same name) with the window's UTC times and each channel's unit from the station description the
window names (else the latest one stored); ``event``,
``state``; ``batch`` records (start and end into one row per batch, the highest ``revision`` of the end
record wins; the accounting figures as columns, each record whole as JSON); ``description`` (by the
SHA-256 of its canonical body, RFC 8785, which is what the birth and the windows name); ``status``
(``stations`` and ``boots``, with the birth's previous-boot numbers); ``reply`` (ledger only; an answer to
the historian's own ``resend`` ask goes into its request's row, ``edge.historian.resend``). And the gaps
(``edge.historian.gaps``).

Two workers write at once (PostgreSQL). What only this message makes (its ledger row, its telemetry,
event and state rows) is written first, without a lock: no other transaction writes those keys (one that
holds the same key, a duplicate, waits on the ledger's unique index, taken in key order, and then finds
it there). What the transactions of one station share (its ``stations`` and ``boots`` rows, its
descriptions, batches, coverage and gaps) is written after taking each station's lock, in one sorted
round trip, so the gap bookkeeping of a station is done by one transaction at a time. The checks, the
JSON work and the schema validation happen before the transaction; the locks are held for the shared
part only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from edge.historian.gaps import Gap, GapBook
from edge.historian.resend import Answer, record_answer
from edge.historian.store import (
    RejectedData,
    Store,
    StoreError,
    Tx,
    is_driver_error,
    now_utc,
    quarantine_digest,
    rows_relations,
)
from edge.telemetry.description import canonical
from edge.telemetry.envelope import MAX_ENVELOPE, Envelope
from edge.telemetry.tail import check_message
from edge.telemetry.topics import STREAMS, TopicError, parse_topic, window_heads
from edge.timestamps import TimestampError, parse_rfc3339, rfc3339_ms

MAX_REASON = 2000        # a quarantine reason is the checks' lines, cut to this
#: the ledger's columns (site, station, boot_id, stream, seq, ts, stored, digest) as PostgreSQL types
LEDGER_TYPES = ("text", "text", "text", "text", "bigint", "timestamptz", "timestamptz", "text")
MAX_KEPT = MAX_ENVELOPE  # a quarantined payload is kept up to this: no envelope is larger
MAX_TOPIC = 1024
BIGINT_MAX = 2 ** 63 - 1
_orjson: Any
try:    # the historian's extra (as envelope.parse): a window's channels as JSON in a tenth of json's time
    import orjson as _orjson
except ImportError:
    _orjson = None
_JSON_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _channels_json(channels: list[tuple[Any, ...]]) -> str:
    """A window's channels as stored (``_Writer._telemetry``): compact JSON, every number finite (checked
    before: orjson would write a non-finite one as null). orjson and json may write a double differently
    (``1e16``, ``1e+16``); both read back as the same double."""
    return _orjson.dumps(channels).decode() if _orjson is not None else _JSON_ENCODE(channels)


class Received(NamedTuple):
    """One message as the broker delivered it."""

    topic: str
    payload: bytes
    retained: bool = False


@dataclass
class IngestResult:
    """What one ``ingest`` call did; ``opened``/``closed``: the gap rows it opened and closed; ``unrecoverable``:
    those the stations said they no longer hold; ``answers``: the stations' answers to our ``resend`` asks."""

    stored: int = 0
    duplicate: int = 0
    quarantined: int = 0
    ignored: int = 0
    opened: list[Gap] = field(default_factory=list)
    closed: list[Gap] = field(default_factory=list)
    unrecoverable: list[Gap] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)

    def add(self, other: IngestResult) -> None:
        self.stored += other.stored
        self.duplicate += other.duplicate
        self.quarantined += other.quarantined
        self.ignored += other.ignored


@dataclass
class _Valid:
    """A message that passed every check (``_vet``), ready for the transaction."""

    topic: str
    env: Envelope
    payload: bytes
    retained: bool
    digest: str
    times: dict[str, str | None]     # ``ts`` and the body's times, as the store keeps times (``_times``)
    key: tuple[str, str, str, str, int] = field(init=False)     # the ledger's: (site, station, boot, stream, seq)

    def __post_init__(self) -> None:
        env = self.env
        self.key = (env.site, env.station, env.boot_id, env.stream, env.seq)

    @property
    def ts(self) -> str:
        return self.times["ts"] or ""


class _Invalid(NamedTuple):
    """A message for quarantine, with why."""

    topic: str
    payload: bytes
    reason: str


_Vetted = _Valid | _Invalid | None      # None: not station output (a command), counted as ignored


def _vet(topic: str, payload: bytes | bytearray | memoryview, retained: bool = False) -> _Vetted:
    """Every check of one message that needs no database (topic, envelope, schema, times, the payload's
    digest), outside the transaction; ``ingest_isolating`` deals with a bug it meets. (Vetting
    on paho's thread as messages arrive, to overlap the worker's transaction, was measured: slower, the two
    threads then contend for the GIL at every database round trip.)"""
    payload = bytes(payload)
    try:        # a command's topic has "cmd" in it: the others are not parsed twice
        if "cmd" in topic and parse_topic(topic).stream == "cmd":
            return None
    except TopicError:
        pass            # check_message says why, below
    checked = check_message(topic, payload, retained)
    if checked.problems or checked.envelope is None:
        return _Invalid(topic, payload, "; ".join(checked.problems)[:MAX_REASON] or "not an envelope")
    try:
        times = _times(checked.envelope)
    except TimestampError as e:
        return _Invalid(topic, payload, str(e)[:MAX_REASON])
    return _Valid(topic, checked.envelope, payload, retained, hashlib.sha256(payload).hexdigest(), times)


def ingest(store: Store, items: Sequence[Received | tuple[str, bytes, bool]]) -> IngestResult:
    """Check, then store ``items`` in one transaction (module docstring). Raises ``StoreError`` (then
    nothing was stored: the caller must not acknowledge the messages)."""
    vetted = [_vet(*item) for item in items]
    result = IngestResult(ignored=sum(1 for v in vetted if v is None))
    valid = [v for v in vetted if isinstance(v, _Valid)]
    bad: list[_Invalid] = [v for v in vetted if isinstance(v, _Invalid)]
    now = now_utc()
    with store.transaction() as tx:
        # first what no other transaction writes: the ledger rows of these keys and each message's own rows
        new = _ledger(tx, store, valid, now, bad, result)
        writer = _Writer(tx, store, now)
        writer.prefetch({(v.env.site, v.env.station) for v in new if v.env.stream == "telemetry"})
        for v in new:
            writer.own_rows(v)
        writer.flush()
        # then, under the stations' locks, what their transactions share: stations, boots, batches, the gaps
        tx.lock_stations(sorted({(v.env.site, v.env.station) for v in new}))
        _stations(tx, store, new, now)
        book = GapBook(tx, now)
        book.prefetch({(v.env.site, v.env.station, v.env.boot_id) for v in new})
        for v in new:
            writer.shared_rows(v, book)
        book.flush()
        _quarantine(tx, now, bad)
    result.stored = len(new)
    result.quarantined = len(bad)
    result.opened, result.closed, result.unrecoverable = book.opened, book.closed, book.unrecoverable_gaps
    result.answers = writer.answers
    return result


def ingest_isolating(store: Store, items: Sequence[Received | tuple[str, bytes, bool]]) -> IngestResult:
    """``ingest``, and when the database refuses the batch's data (``RejectedData``) or the code fails on it,
    the batch in halves until the message that cannot be stored is alone: it goes to quarantine with the
    error, the others are stored. Any other ``StoreError`` (the database unreachable, its disk full, an I/O
    error), a database driver's own error and ``MemoryError`` still raise: they are not the message's fault
    (a valid message quarantined and acknowledged would be lost); nothing was stored, the caller tries again."""
    try:
        return ingest(store, items)      # the checks too: a bug one of them meets is that message's
    except StoreError as e:
        if not isinstance(e, RejectedData):
            raise
        error: Exception = e
    except Exception as e:      # a bug met by one message must not stop the plant's record
        if isinstance(e, MemoryError) or is_driver_error(e):
            raise StoreError(f"{store.url}: {type(e).__name__}: {e}") from e
        error = e
    if len(items) == 1:
        topic, payload, _ = items[0]
        reason = f"could not be stored: {type(error).__name__}: {error}"[:MAX_REASON]
        with store.transaction() as tx:
            _quarantine(tx, now_utc(), [_Invalid(topic, bytes(payload), reason)])
        return IngestResult(quarantined=1)
    result = IngestResult()
    for half in (items[:len(items) // 2], items[len(items) // 2:]):
        part = ingest_isolating(store, half)
        result.add(part)
        result.opened += part.opened
        result.closed += part.closed
        result.unrecoverable += part.unrecoverable
        result.answers += part.answers
    return result


def _ledger(tx: Tx, store: Store, valid: list[_Valid], now: str, bad: list[_Invalid],
            result: IngestResult) -> list[_Valid]:
    """Insert the ledger rows; returns the messages new to it, in arrival order."""
    first: dict[tuple[str, str, str, str, int], _Valid] = {}
    later: list[_Valid] = []
    for v in valid:
        if v.key in first:
            later.append(v)
        else:
            first[v.key] = v
    inserted: set[tuple[str, str, str, str, int]] = set()
    batch = list(first.values())
    returning = " ON CONFLICT DO NOTHING RETURNING site, station, boot_id, stream, seq"
    # in key order: two transactions that both hold some of the same keys (copies delivered to two workers)
    # then take those keys' index entries in the same order, one waiting for the other, never both crosswise
    ordered = sorted(batch, key=lambda v: v.key)
    for values, params in rows_relations(store.dialect, [(*v.key, v.ts, now, v.digest) for v in ordered],
                                         LEDGER_TYPES):
        rows = tx.query(f"INSERT INTO received (site, station, boot_id, stream, seq, ts, stored, digest) {values}"
                        + returning, params)
        inserted.update((r[0], r[1], r[2], r[3], int(r[4])) for r in rows)
    known = [v for v in batch if v.key not in inserted]
    stored_digest: dict[tuple[str, str, str, str, int], str] = {}
    for keys, params in rows_relations(store.dialect, [v.key for v in known], LEDGER_TYPES[:5]):
        for site, station, boot, stream, seq, digest in tx.query(
                "SELECT site, station, boot_id, stream, seq, digest FROM received WHERE"
                f" (site, station, boot_id, stream, seq) IN ({keys})", params):
            stored_digest[(site, station, boot, stream, int(seq))] = digest
    for v in batch:
        if v.key in inserted:
            stored_digest[v.key] = v.digest
    for v in [*known, *later]:
        if v.digest == stored_digest[v.key] or v.env.stream == "status":
            result.duplicate += 1
        else:
            bad.append(_Invalid(v.topic, v.payload,
                               f"conflict: {v.env.stream} #{v.env.seq} of boot {v.env.boot_id} is already stored"
                               " with different bytes (a station re-sends identical copies)"))
    return [v for v in batch if v.key in inserted]


def _quarantine(tx: Tx, now: str, bad: list[_Invalid]) -> None:
    """Keep ``bad`` (topic, payload, reason) aside, each once: a copy already there (the same topic and
    payload, delivered again) adds nothing (``quarantine_digest``)."""
    if bad:
        tx.executemany("INSERT INTO quarantine (received, topic, payload, reason, digest) VALUES (?, ?, ?, ?, ?)"
                       " ON CONFLICT DO NOTHING",
                       [(now, t[:MAX_TOPIC], *_kept(p, r), quarantine_digest(t, p)) for t, p, r in bad])


# the times of a stream's body that go into columns: (path, column)
_BODY_TIMES: dict[str, tuple[tuple[tuple[str, ...], str], ...]] = {
    "telemetry": ((("window", "start_utc"), "start_utc"), (("window", "end_utc"), "end_utc")),
    "batch": ((("started",), "started"), (("ended",), "ended")),
    "status": ((("boot_started",), "boot_started"),)}


def _times(env: Envelope) -> dict[str, str | None]:
    """``ts`` and the body's times that go into columns, as the store keeps times (UTC, milliseconds: text
    that sorts as the time does, and the same out of both engines whatever offset the message used);
    ``TimestampError`` for one that is not a real time (2025-02-30 passes the schema's pattern)."""
    out: dict[str, str | None] = {"ts": _utc_ms(env.ts, "ts")}
    for path, column in _BODY_TIMES.get(env.stream, ()):
        node: Any = env.body
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        out[column] = None if node is None else _utc_ms(node, "body/" + "/".join(path))
    return out


_CANONICAL = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.\d{3}Z")


def _utc_ms(text: Any, where: str) -> str:
    """``rfc3339_ms(parse_rfc3339(text))``. A station writes its times in that very form, so one already in it
    is only checked (its second, once per second seen: a third of ingest's time went to rebuilding them)."""
    if isinstance(text, str):
        found = _CANONICAL.fullmatch(text)
        if found is not None and _canonical_second(found.group(1)):
            return text
    return rfc3339_ms(parse_rfc3339(text, where))


@functools.lru_cache(maxsize=4096)
def _canonical_second(second: str) -> bool:
    """Whether ``second``.mmmZ is a real time that ``rfc3339_ms`` writes back as it is (not 2025-02-30, 24:00...)."""
    text = second + ".000Z"
    try:
        return rfc3339_ms(parse_rfc3339(text)) == text
    except TimestampError:
        return False


def _kept(payload: bytes, reason: str) -> tuple[bytes, str]:
    """What quarantine keeps of a payload: all of it up to ``MAX_KEPT`` (anything larger was never a station's
    message), and the reason says when it was cut."""
    if len(payload) <= MAX_KEPT:
        return payload, reason
    return payload[:MAX_KEPT], f"{reason} (payload of {len(payload)} bytes: the first {MAX_KEPT} kept)"


def _stations(tx: Tx, store: Store, new: list[_Valid], now: str) -> None:
    """One ``stations`` row per station: first seen (ingest time), last seen (the newest message's ``ts``)."""
    newest: dict[tuple[str, str], str] = {}
    for v in new:
        k = (v.env.site, v.env.station)
        newest[k] = max(newest.get(k, v.ts), v.ts)
    greatest = "GREATEST" if store.dialect == "postgresql" else "MAX"
    rows = sorted(newest.items())
    for values, params in rows_relations(store.dialect, [(site, station, now, ts) for (site, station), ts in rows],
                                         ("text", "text", "timestamptz", "timestamptz")):
        tx.execute(f"INSERT INTO stations (site, station, first_seen, last_seen) {values}"
                   f" ON CONFLICT (site, station) DO UPDATE SET last_seen = {greatest}(stations.last_seen,"
                   " excluded.last_seen)", params)


class _Writer:
    """The rows of each stream's new messages (telemetry rows gathered into one insert)."""

    def __init__(self, tx: Tx, store: Store, now: str) -> None:
        self.tx = tx
        self.store = store
        self.now = now
        self.telemetry: list[tuple[Any, ...]] = []
        self.units: dict[tuple[str, str, str | None], dict[str, str]] = {}
        self.known: dict[tuple[str, str], dict[str, str]] = {}     # station -> {digest: first seen}
        self.current: dict[tuple[str, str], str | None] = {}       # station -> the digest it names now
        self.answers: list[Answer] = []                            # answers to our resend asks

    def own_rows(self, v: _Valid) -> None:
        """The rows only this message makes (no lock needed: their keys are the ledger's, new to this batch)."""
        handler = {"telemetry": self._telemetry, "event": self._event, "state": self._state,
                   "description": self._description, "status": self._status_description}.get(v.env.stream)
        if handler is not None:
            handler(v)

    def shared_rows(self, v: _Valid, book: GapBook) -> None:
        """What other transactions of the station write too (the station's lock held), and the gaps."""
        env = v.env
        handler = {"event": self._explained, "batch": self._batch, "description": self._station_description,
                   "status": self._status, "reply": self._reply, "telemetry": self._heads}.get(env.stream)
        if handler is not None:
            handler(v, book)
        if STREAMS[env.stream].tracked:
            book.seen(env.site, env.station, env.boot_id, env.stream, env.seq)

    def flush(self) -> None:
        self.tx.copy_rows("telemetry_windows", ("site", "station", "boot_id", "seq", "start_utc", "end_utc",
                                                "channels"), self.telemetry)
        self.telemetry.clear()

    # ---- per stream ----

    def _telemetry(self, v: _Valid) -> None:
        """A window as one row, its channels as one JSON array (migration 0006: the view ``telemetry`` reads
        them a row per channel). Every value is checked here, as a column of its type would: the view casts
        them when read, so what a bigint cannot hold must never be stored (``RejectedData``: the message is
        quarantined)."""
        env, body = v.env, v.env.body
        units = self._units(env.site, env.station, body.get("description_sha256"))
        channels = []
        for name, ch in (body.get("channels") or {}).items():
            get = ch.get
            last, low, high, mean, count, valid = (get("last"), get("min"), get("max"), get("mean"), get("count"),
                                                   get("valid"))
            if not (type(last) is type(low) is type(high) is type(mean) is float
                    and last - last == low - low == high - high == mean - mean == 0.0      # finite
                    and type(count) is type(valid) is int and count <= BIGINT_MAX and valid <= BIGINT_MAX):
                last, low, high, mean = (_double(last, name, "last"), _double(low, name, "min"),  # the unusual window
                                         _double(high, name, "max"), _double(mean, name, "mean"))
                count, valid = _bigint(count, name, "count"), _bigint(valid, name, "valid")
            status = get("status")
            channels.append((name, units.get(name), last, low, high, mean, count, valid,
                             " ".join(status) if status else ""))
        self.telemetry.append((env.site, env.station, env.boot_id, env.seq, v.times.get("start_utc"),
                               v.times.get("end_utc"), _channels_json(channels)))

    def _event(self, v: _Valid) -> None:
        env, body = v.env, v.env.body
        name = next((body[k] for k in ("alarm", "rule", "phase", "code") if isinstance(body.get(k), str)), None)
        self.tx.execute("INSERT INTO events (site, station, boot_id, seq, ts, kind, name, message, body)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (env.site, env.station, env.boot_id, env.seq, v.ts, body.get("kind"), name,
                         body.get("message"), _json(body)))

    def _explained(self, v: _Valid, book: GapBook) -> None:
        """A thinning report or a refusal: the numbers it names are missing on purpose (``gaps.explain``)."""
        env, body = v.env, v.env.body
        if body.get("kind") == "telemetry_thinned":
            for entry in body.get("streams") or []:
                stream, lo, hi = entry.get("stream"), _int(entry.get("first_seq")), _int(entry.get("last_seq"))
                if isinstance(stream, str) and isinstance(lo, int) and isinstance(hi, int):
                    book.explain(env.site, env.station, stream, lo, hi, "thinned")
        data = body.get("data")
        if isinstance(data, dict) and data.get("original_kind") == "message_refused":
            stream, seq = data.get("stream"), _int(data.get("seq"))
            if isinstance(stream, str) and isinstance(seq, int):
                book.explain(env.site, env.station, stream, seq, seq, "refused")

    def _heads(self, v: _Valid, book: GapBook) -> None:
        """A window's ``heads`` (schema 1.4): the last number given on each other stream (``gaps.heads``)."""
        heads = window_heads(v.env.body.get("heads"))
        if heads:
            book.heads(v.env.site, v.env.station, v.env.boot_id, heads)

    def _reply(self, v: _Valid, book: GapBook) -> None:
        """An answer to one of the historian's ``resend`` asks: into its request's row (``resend.record_answer``)."""
        answer = record_answer(book, v.env.site, v.env.station, v.env.body)
        if answer is not None:
            self.answers.append(answer)

    def _state(self, v: _Valid) -> None:
        env, body = v.env, v.env.body
        batch = body.get("batch")
        self.tx.execute("INSERT INTO states (site, station, boot_id, seq, ts, run, phase, batch_id, body)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (env.site, env.station, env.boot_id, env.seq, v.ts, body.get("run"), body.get("phase"),
                         batch.get("id") if isinstance(batch, dict) else None, _json(body)))

    def _batch(self, v: _Valid, book: GapBook) -> None:
        env, body = v.env, v.env.body
        recipe = body.get("recipe")
        recipe_name = recipe.get("name") if isinstance(recipe, dict) else recipe if isinstance(recipe, str) else None
        mass_in = _num((body.get("feed") or {}).get("mass_in_kg"))
        if body.get("record") == "start":
            self.tx.execute(
                "INSERT INTO batches (site, station, batch_id, process, recipe, started, mass_in_kg, start_record)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (site, station, batch_id) DO UPDATE SET"
                " start_record = excluded.start_record, process = COALESCE(batches.process, excluded.process),"
                " recipe = COALESCE(batches.recipe, excluded.recipe),"
                " started = COALESCE(batches.started, excluded.started),"
                " mass_in_kg = COALESCE(batches.mass_in_kg, excluded.mass_in_kg)",
                (env.site, env.station, body.get("batch_id"), body.get("process"), recipe_name, v.times.get("started"),
                 mass_in, _json(body)))
            return
        acc = body.get("accounting") or {}
        product = body.get("product") or {}
        figures = ("energy_kwh", "h2_nl", "ar_nl", "kg_co2e", "kwh_per_kg", "nl_h2_per_kg", "kg_co2e_per_kg")
        columns = ("process", "recipe", "started", "ended", "outcome", "revision", "mass_in_kg", "mass_out_kg",
                   *figures, "trips", "alarms_raised", "complete", "end_record")
        values = (body.get("process"), recipe_name, v.times.get("started"), v.times.get("ended"), body.get("outcome"),
                  int(body.get("revision") or 1), mass_in, _num(product.get("mass_out_kg")),
                  *(_num(acc.get(f)) for f in figures), _int(acc.get("trips")), _int(acc.get("alarms_raised")),
                  acc.get("complete") if isinstance(acc.get("complete"), bool) else None, _json(body))
        keep_start = {"process", "recipe", "started", "mass_in_kg"}
        sets = ", ".join(f"{c} = COALESCE(excluded.{c}, batches.{c})" if c in keep_start else f"{c} = excluded.{c}"
                         for c in columns)
        self.tx.execute(
            f"INSERT INTO batches (site, station, batch_id, {', '.join(columns)})"
            f" VALUES (?, ?, ?, {', '.join('?' * len(columns))}) ON CONFLICT (site, station, batch_id) DO UPDATE"
            f" SET {sets} WHERE batches.revision IS NULL OR excluded.revision >= batches.revision",
            (env.site, env.station, body.get("batch_id"), *values))

    def _description(self, v: _Valid) -> None:
        """Its units, for the windows of this batch (the row itself is shared: ``_station_description``)."""
        env = v.env
        digest = _digest(env)
        _remember_units((env.site, env.station, digest), _channel_units(env.body))
        self.known.setdefault((env.site, env.station), {}).setdefault(digest, self.now)
        self.current[(env.site, env.station)] = digest
        self.units = {k: v for k, v in self.units.items() if k[:2] != (env.site, env.station)}   # a newer latest

    def _station_description(self, v: _Valid, book: GapBook) -> None:
        env = v.env
        digest = _digest(env)
        self.tx.execute("INSERT INTO descriptions (site, station, sha256, first_seen, body) VALUES (?, ?, ?, ?, ?)"
                        " ON CONFLICT DO NOTHING", (env.site, env.station, digest, self.now, _json(env.body)))
        self.tx.execute("UPDATE stations SET description_sha256 = ? WHERE site = ? AND station = ?",
                        (digest, env.site, env.station))

    def _status_description(self, v: _Valid) -> None:
        """A birth names the description current at its connect: the one its station's windows are labelled by."""
        env, body = v.env, v.env.body
        if body.get("state") == "online" and isinstance(body.get("description_sha256"), str):
            self.current[(env.site, env.station)] = body["description_sha256"]
            self.units = {k: u for k, u in self.units.items() if k[:2] != (env.site, env.station)}

    def _status(self, v: _Valid, book: GapBook) -> None:
        env, body = v.env, v.env.body
        online = body.get("state") == "online"
        self.tx.execute("UPDATE stations SET status = ?, status_ts = ?, boot_id = ?,"
                        " description_sha256 = COALESCE(?, description_sha256), software = COALESCE(?, software)"
                        " WHERE site = ? AND station = ? AND (status_ts IS NULL OR status_ts <= ?)",
                        ("online" if online else "offline", v.ts, env.boot_id, body.get("description_sha256"),
                         body.get("software"), env.site, env.station, v.ts))
        prev = body.get("previous_boot") if online else None
        prev = prev if isinstance(prev, dict) else {}
        last_seq = {k: n for k, n in ((k, _int(n)) for k, n in (prev.get("last_seq") or {}).items()) if n is not None}
        self.tx.execute(
            "INSERT INTO boots (site, station, boot_id, first_seen, boot_started, previous_boot_id, previous_last_seq)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (site, station, boot_id) DO UPDATE SET"
            " boot_started = COALESCE(boots.boot_started, excluded.boot_started),"
            " previous_boot_id = COALESCE(boots.previous_boot_id, excluded.previous_boot_id),"
            " previous_last_seq = COALESCE(boots.previous_last_seq, excluded.previous_last_seq)",
            (env.site, env.station, env.boot_id, self.now, v.times.get("boot_started"), prev.get("boot_id"),
             json.dumps(last_seq, sort_keys=True) if online and prev else None))
        if online:
            # the boot's start only from its first connection's birth, seen live: a later one (a reconnect) also
            # comes live to a historian that subscribed mid-boot, and what came before that is not ours to miss
            book.birth(env.site, env.station, env.boot_id, prev.get("boot_id"), last_seq,
                       live=not v.retained and body.get("connection") == 1)


    # ---- lookups ----

    def _units(self, site: str, station: str, sha: str | None) -> dict[str, str]:
        """The channel units of the description ``sha`` names, else of the one the station names now (its last
        birth or description), else of the last one stored, else none."""
        key = (site, station, sha)
        if key in self.units:
            return self.units[key]
        if (site, station) not in self.known:
            self._load_known({(site, station)})
        known = self.known[(site, station)]
        current = self.current.get((site, station))
        chosen = (sha if sha in known else current if current in known
                  else max(known, key=known.__getitem__, default=None))
        units: dict[str, str] = {}
        if chosen is not None:
            units = _UNITS.get((site, station, chosen)) or {}
            if (site, station, chosen) not in _UNITS:
                rows = self.tx.query("SELECT body FROM descriptions WHERE site = ? AND station = ? AND sha256 = ?",
                                     (site, station, chosen))
                units = _channel_units(json.loads(rows[0][0]))
                _remember_units((site, station, chosen), units)
        self.units[key] = units
        return units

    def prefetch(self, stations: set[tuple[str, str]]) -> None:
        """Which descriptions each station has (digest and first seen, not the bodies): one query a batch."""
        self._load_known({s for s in stations if s not in self.known})

    def _load_known(self, stations: set[tuple[str, str]]) -> None:
        todo = sorted(stations)
        for st in todo:
            self.known[st] = {}
        for keys, params in rows_relations(self.tx.dialect, todo, ("text", "text")):
            for site, station, sha, first_seen, current in self.tx.query(
                    "SELECT d.site, d.station, d.sha256, d.first_seen, s.description_sha256 FROM descriptions d"
                    " JOIN stations s ON s.site = d.site AND s.station = d.station WHERE (d.site, d.station) IN"
                    f" ({keys})", params):
                self.known[(site, station)][sha] = first_seen
                self.current[(site, station)] = current


# the units of a description by its digest: a description never changes under its digest, so this outlives a
# transaction (bounded: a plant has a few descriptions per station)
_UNITS: dict[tuple[str, str, str], dict[str, str]] = {}
MAX_UNITS = 10_000


def _remember_units(key: tuple[str, str, str], units: dict[str, str]) -> None:
    if len(_UNITS) >= MAX_UNITS:
        _UNITS.clear()
    _UNITS[key] = units


# a description's digest by its body in json.dumps' sorted form: a plant's stations mostly share one description,
# which they send at every connect, and json.dumps (C) is ten times faster than the RFC 8785 form (Python)
_DIGESTS: dict[str, str] = {}
MAX_DIGESTS = 1_000


def _digest(env: Envelope) -> str:
    """A description's identity: the SHA-256 of its body in RFC 8785 bytes, what the station sends and names.
    Cached by the body's sorted ``json.dumps``, which is as faithful (two JSON values with the same text are
    equal), and not canonical (so it is only the cache's key)."""
    key = json.dumps(env.body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = _DIGESTS.get(key)
    if digest is None:
        if len(_DIGESTS) >= MAX_DIGESTS:
            _DIGESTS.clear()
        digest = _DIGESTS[key] = hashlib.sha256(canonical(env.body)).hexdigest()
    return digest


def _channel_units(description: Any) -> dict[str, str]:
    channels = description.get("channels") if isinstance(description, dict) else None
    if not isinstance(channels, dict):
        return {}
    return {n: c["unit"] for n, c in channels.items() if isinstance(c, dict) and isinstance(c.get("unit"), str)}


def _json(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    """An integer as JSON Schema has it (``1000.0`` is one: stored as 1000 in both engines), else None."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _double(value: Any, channel: str, name: str) -> float | None:
    """``_num``, refused (``RejectedData``) when not finite, as no JSON number is (the schema check refuses
    it first: ``1e400`` reads as infinity)."""
    x = _num(value)
    if x is not None and not math.isfinite(x):
        raise RejectedData(f"channel {channel}'s {name} {x} is not a finite number")
    return x


def _bigint(value: Any, channel: str, name: str) -> int | None:
    """``_int``, refused (``RejectedData``) beyond a 64-bit integer, as a bigint column refuses it."""
    n = _int(value)
    if n is not None and not -BIGINT_MAX - 1 <= n <= BIGINT_MAX:
        raise RejectedData(f"channel {channel}'s {name} {n} is beyond a 64-bit integer")
    return n
