"""Commands from MQTT: checked, authorised, executed at most once, and always answered.

A command arrives on ``reedge/v1/{site}/{station}/cmd/{identity}/{verb}`` (``mqtt_schemas/cmd-{verb}.json``)::

    {"schema": "https://reeproduce.eu/schemas/reedge/v1/cmd-hold.json", "command_id": "7d9c0e8a-...",
     "issued_at": "2025-03-14T09:26:53.589Z", "issuer": "scada-hd", "args": {"reason": "door check"}}

**The sender is the topic's ``{identity}`` level**, which the broker vouches for: its ACL lets
each identity write only ``cmd/{its own name}/+`` (``edge.telemetry.topics``,
``deploy/mosquitto/acl``). Roles are looked up by that identity, never by the payload; the
payload's ``issuer`` is optional and, if present, must name the same identity.

``CommandHandler.handle`` takes a command through these steps, in this order, and the first that
fails answers ``rejected`` with its code (``mqtt_schemas/reply.json``); nothing has changed then:

==================  =====================================================================
``unknown_verb``    the topic is not one of this station's ``cmd/{identity}/{verb}`` topics
``too_large``       the payload is larger than ``[mqtt.commands] max_payload_bytes``: refused
                    before it is parsed (a JSON bomb costs nothing)
``invalid``         nested deeper than ``MAX_JSON_DEPTH``: refused before it is parsed (the
                    schema validator recurses, and a deep array would exhaust the stack)
``not_json``        not UTF-8 JSON
``invalid``         not valid against the verb's schema (every problem listed), or a reply
                    topic that is not one of the station's own (``check_reply_topic``)
``unauthorised``    the payload's ``issuer`` names another identity than the topic's
``error``           the command ledger cannot be read or written: nothing is executed
``id_reused``       the command id was seen with a different payload or from another sender
(replay)            the id was seen with the same payload: the original answer, ``replayed``
                    true, and nothing is executed again (``outcome_unknown`` if the station
                    restarted while executing it: it is not executed again either)
``stale``/``future`` ``issued_at`` older than ``max_age_s``, or more than ``max_future_s`` ahead
``unauthorised``    the sender's roles do not allow the verb (``edge.telemetry.access``)
(the operator path) ``edge.operator.Operator.execute``, the same for stdin: ``invalid`` (arguments,
                    names), ``not_allowed`` (reset on a station whose file does not set
                    ``allow_remote_reset``), ``state`` (no batch running, not held), ``interlock``
                    (the core or the controller refused for safety), ``refused`` (the controller
                    said no, the station is stopping), ``error`` (the target failed unexpectedly;
                    the station is as it was)
(``resend``)        the outbox's history instead (below): ``not_allowed`` (the station keeps no
                    history), ``invalid`` (last before first, too long a span), ``refused`` (the
                    station is stopping), ``error`` (the outbox failed; nothing was queued)
==================  =====================================================================

``handle`` never raises: anything unexpected is answered ``error`` with its reason, so a
command can never stop the controller. ``handle_many`` (what the publisher calls once per
scan) handles a list within a time budget and answers the rest ``busy`` without reading or
executing them; they may be sent again with the same command id. ``busy`` always means "not
executed: send it again" (the rate limit and a full intake answer it too, ``edge.telemetry.intake``).

**At most once.** Command ids are kept in a small SQLite file (``CommandLedger``, beside the
run state) for ``remember_s``, with a digest of sender, verb and payload. Before a command
executes, its id is committed with ``synchronous=FULL``; its answer is stored after. So a restart
never executes a command again: a replay after a crash in the middle gets ``outcome_unknown``.
A replay older than ``remember_s`` is rejected as stale by its own ``issued_at``, so forgetting
ids is safe. If storing the answer fails, the answer is still given and the row stays
"executing" (a replay gets ``outcome_unknown``). A locked ledger is given ``BUSY_TIMEOUT_S``,
then the command is refused: the controller's scan must not wait on it.

**Replies** go to ``reply/{verb}`` of the station, or, for a sender whose roles allow the verb,
to the MQTT 5 response topic or the payload's ``reply_to`` (the MQTT 3.1.1 fallback) if it is
the sender's own inbox ``reply/{identity}/...`` (``StationTopics.check_reply_topic``): the
topics the broker lets the station write, so a reply is never refused and stuck in the outbox.
A rejected or unauthorised command never chooses where the station writes. The body always
carries the command id, and the MQTT 5 correlation data (base64) so the session can set the
property. Each answer also yields an audit event (who asked what, and the answer) for the
``event`` stream, put before its reply. One deliberate exception: commands the publisher's intake
turns away in a flood (``busy`` from ``busy``, never read further than their id) share audit
events: at most one per sender and reason every ``BUSY_AUDIT_S`` (10 s), each with the count of
busy answers since the previous one and the first and last command ids (``data``), the first of a
streak before its first reply (``edge.telemetry.publisher``): 3,000 events for one flood would
bury the station's own events; the replies are each still there.

This module is only the transport: what a verb does and when it is refused is decided by
``edge.operator`` (``Operator.execute``), which stdin commands go through as well.

**resend** is the one verb about the transport itself, not the process: a consumer lost messages the
broker had acknowledged (a broker restart, a killed broker) and asks for ``first_seq..last_seq`` of one
stream of one boot again. The handler calls its ``resend`` (``Outbox.resend``, given by the publisher)
instead of the operator, after the same checks as any command (ledger, age, roles, audit event): the
history's rows of the range are queued again, byte-identical and never retained. Its answer says what
was queued, what was still pending and what the station no longer holds, in ``message`` and, for a
program, in the reply's ``data`` (``resend_data``; a replay carries the original's). Without a
history (``resend`` None, ``[mqtt] history_mb = 0``) it is answered ``not_allowed``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pathlib
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from edge.operator.execute import AuditRecord, Command, Operator
from edge.spec.access import CommandSettings
from edge.telemetry.events import EventDraft, command_event
from edge.telemetry.outbox_types import RESEND_BYTES, Resent
from edge.telemetry.schemas import errors as schema_errors
from edge.telemetry.topics import VERBS, StationTopics, TopicError, command_schema, parse_topic
from edge.timestamps import TimestampError, parse_rfc3339

Code = Literal["ok", "too_large", "not_json", "invalid", "unknown_verb", "unauthorised", "stale", "future",
               "id_reused", "not_allowed", "interlock", "state", "refused", "outcome_unknown", "busy", "error"]
MAX_CORRELATION = 256
MAX_JSON_DEPTH = 32        # commands nest 3 levels; jsonschema recurses about 5 frames per level
BUSY_TIMEOUT_S = 0.2       # how long the ledger waits for a lock before the command is refused
PRUNE_EVERY_S = 10.0       # old ids are forgotten at most this often (a prune is a write and an fsync)
LEDGER_UNAVAILABLE = "command ledger unavailable"
MAX_MISSING_LISTED = 64    # missing ranges a resend reply lists (data.missing; data.missing_count counts them all)
MAX_MISSING_SAID = 8       # ... and its message names, for people
NO_HISTORY = ("this station keeps no history of what it sent ([mqtt] history_mb = 0): nothing can be"
              " re-sent")

#: What the outbox's history does for ``resend``: (boot id, stream, first seq, last seq) -> what was queued again.
Resend = Callable[[str, str, int, int], Resent]


# ---- untrusted JSON ------------------------------------------------------------------------------

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def json_too_deep(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if arrays/objects in the JSON text ``data`` nest deeper than ``limit``.

    A scan of the bytes (brackets inside strings do not count), done before parsing: ``json.loads``
    accepts ~1000 levels in a few KB, and a schema validator then exhausts the stack on them.
    Text that is not JSON gets an answer here that is at worst too strict: it is rejected anyway.
    """
    if data.count(b"[") + data.count(b"{") <= limit:   # no more openings than the limit: none nests deeper
        return False
    depth = 0
    for b in _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKET):
        if b in b"[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


class ReceivedCommand(Protocol):
    """One message from the command subscription, as ``handle_many`` takes it (the publisher's queue items)."""

    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def response_topic(self) -> str | None: ...
    @property
    def correlation_data(self) -> bytes | None: ...


@dataclass(frozen=True)
class Received:
    """A ``ReceivedCommand``: topic, payload and the MQTT 5 properties, if any."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None


@dataclass(frozen=True)
class Outcome:
    """What the session publishes for one command: the reply (if there is a topic for it) and the audit event."""

    reply_topic: str | None
    reply: dict[str, Any]
    correlation_data: bytes | None
    event: EventDraft
    executed: bool = False

    @property
    def accepted(self) -> bool:
        return bool(self.reply["result"] == "accepted")


# ---- the ledger: command ids, persisted --------------------------------------------------------

class LedgerError(Exception):
    """The command ledger could not be read or written (locked by another process, damaged, disk failing)."""


class CommandLedger:
    """Command ids with their digest and answer, in one SQLite file; see the module docstring.

    Every method raises ``LedgerError`` (never ``sqlite3.Error``) and leaves no transaction open.
    Inside ``batch()``, writes wait for one commit at its end, except ``begin`` of a command about
    to execute, which commits at once (with everything before it).
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._deferred = False
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=busy_timeout_s)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS commands (command_id TEXT PRIMARY KEY, digest TEXT NOT NULL,"
                             " verb TEXT NOT NULL, issuer TEXT NOT NULL, received_ns INTEGER NOT NULL, reply TEXT)")
        except sqlite3.Error as e:
            raise OSError(f"{self.path}: cannot open the command ledger: {e}") from e

    def lookup(self, command_id: str) -> tuple[str, dict[str, Any] | None] | None:
        """(digest, stored answer or None while/if it was executing), or None if unknown."""
        with self._lock:
            try:
                row = self._db.execute("SELECT digest, reply FROM commands WHERE command_id = ?",
                                       (command_id,)).fetchone()
                if row is None:
                    return None
                stored = json.loads(row[1]) if row[1] is not None else None
            except (sqlite3.Error, ValueError) as e:
                raise LedgerError(f"{self.path}: cannot read the command ledger: {e}") from e
        if stored is not None and not (isinstance(stored, dict) and {"code", "message"} <= stored.keys()
                                       and isinstance(stored.get("data", {}), dict)):
            raise LedgerError(f"{self.path}: the stored answer of {command_id} is damaged")
        return str(row[0]), stored

    def begin(self, command_id: str, digest: str, verb: str, issuer: str, now_ns: int,
              reply: dict[str, Any] | None = None) -> None:
        """Record the id; without ``reply`` (it is about to execute) durably at once: a crash after this never
        runs it again. With ``reply`` (a rejection, remembered for replays) it may wait for the batch's commit."""
        self._write("INSERT INTO commands (command_id, digest, verb, issuer, received_ns, reply)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (command_id, digest, verb, issuer, now_ns, None if reply is None else json.dumps(reply)),
                    durable=reply is None)

    def finish(self, command_id: str, reply: dict[str, Any]) -> None:
        self._write("UPDATE commands SET reply = ? WHERE command_id = ?", (json.dumps(reply), command_id))

    def prune(self, now_ns: int, keep_s: float) -> int:
        """Forget ids older than ``keep_s``; returns how many."""
        return self._write("DELETE FROM commands WHERE received_ns < ?", (now_ns - int(keep_s * 1e9),))

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One commit (one fsync) for the writes inside, not one each; LedgerError at the end if it failed
        (then the deferred writes are lost: rejections are checked again if replayed, and an executed
        command, whose ``begin`` was committed, is ``outcome_unknown``)."""
        with self._lock:
            if self._deferred:
                raise RuntimeError("CommandLedger.batch() does not nest")
            self._deferred = True
            try:
                yield
            finally:
                self._deferred = False
                self._commit()

    def _write(self, sql: str, params: tuple[Any, ...], *, durable: bool = False) -> int:
        with self._lock:
            try:
                if self._deferred and not self._db.in_transaction:
                    self._db.execute("BEGIN IMMEDIATE")
                count = self._db.execute(sql, params).rowcount
            except sqlite3.Error as e:
                self._rollback()
                raise LedgerError(f"{self.path}: cannot write the command ledger: {e}") from e
            if durable or not self._deferred:
                self._commit()
            return count

    def _commit(self) -> None:
        if not self._db.in_transaction:
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise LedgerError(f"{self.path}: cannot write the command ledger: {e}") from e

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> CommandLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- the handler -------------------------------------------------------------------------------

@dataclass
class _Draft:
    """What is known of a command so far, for the answer."""

    correlation: bytes | None
    verb: str | None = None
    identity: str = ""                 # the sender, from the topic
    reply_topic: str | None = None     # where the answer goes now (the station's own until authorised)
    requested: str | None = None       # a checked reply topic the command asked for
    command_id: str | None = None
    args: dict[str, Any] = field(default_factory=dict)   # once the payload passed its schema
    notes: list[str] = field(default_factory=list)


class CommandHandler:
    """Turns one received command into at most one action and exactly one answer (module docstring)."""

    def __init__(self, *, topics: StationTopics, settings: CommandSettings, operator: Operator,
                 ledger: CommandLedger, clock: Callable[[], int] = time.time_ns,
                 timer: Callable[[], float] = time.monotonic, resend: Resend | None = None) -> None:
        """``resend``: what serves the ``resend`` verb (the outbox's history, module docstring); None: the
        station keeps none and the verb is answered ``not_allowed``."""
        self.topics = topics
        self.settings = settings
        self.operator = operator        # what the commands do: the one operator-command path
        self.resend = resend
        self._closed: str | None = None
        self.ledger = ledger
        self.clock = clock              # wall clock, ns: issued_at checks and ledger times
        self.timer = timer              # seconds, for handle_many's budget
        self._lock = threading.Lock()   # one command at a time: a replay racing its original waits for its answer
        self._next_prune_ns: int | None = None

    def close(self, reason: str) -> None:
        """From now on every command is answered ``refused`` with ``reason`` and none is executed, resend
        included (the station is stopping)."""
        self._closed = reason
        self.operator.close(reason)

    def handle(self, topic: str, payload: bytes, *, response_topic: str | None = None,
               correlation_data: bytes | None = None) -> Outcome:
        """One received command. ``response_topic``/``correlation_data``: the MQTT 5 properties, if any.
        Never raises: whatever goes wrong is answered."""
        with self._lock:
            out = self._one(topic, payload, response_topic, correlation_data)
            self._maybe_prune()
            return out

    def handle_many(self, commands: Iterable[ReceivedCommand], budget_s: float) -> list[Outcome]:
        """The commands of one scan, in order, one answer each. Once ``budget_s`` seconds (``timer``) are
        spent, the rest are answered ``busy`` without being executed (at least one is always handled):
        a flood must not stretch the controller's scan. Rejections and answers are stored in one
        ledger transaction; only a command about to execute needs its own commit."""
        if not (isinstance(budget_s, (int, float)) and budget_s >= 0):     # NaN fails too; inf: no budget
            raise ValueError(f"budget_s must be a number of seconds >= 0 (inf: no limit), got {budget_s!r}")
        with self._lock:
            start = self.timer()
            outcomes: list[Outcome] = []
            try:
                with self.ledger.batch():
                    for c in commands:
                        if outcomes and self.timer() - start >= budget_s:
                            outcomes.append(self._busy(c))
                        else:
                            outcomes.append(self._one(c.topic, c.payload, c.response_topic, c.correlation_data))
            except LedgerError:
                pass    # the answers stand; what the lost commit means is in CommandLedger.batch
            self._maybe_prune()
            return outcomes

    def _one(self, topic: str, payload: bytes, response_topic: str | None, correlation: bytes | None) -> Outcome:
        """``_handle`` with the guarantee that an answer comes out, whatever happens inside."""
        if correlation is not None and len(correlation) > MAX_CORRELATION:
            correlation = None      # not echoed: a reply must stay small; the command id still correlates
        d = _Draft(correlation)
        try:
            return self._handle(d, topic, bytes(payload), response_topic)
        except Exception as e:     # a command must never stop the controller
            try:
                return self._answer(d, "error", f"the station could not handle this command ({type(e).__name__}:"
                                                f" {e}); nothing was executed unless its reply says so")
            except Exception:
                return self._answer(_Draft(None), "error", "the station could not handle this command")

    def _handle(self, d: _Draft, topic: str, payload: bytes, response_topic: str | None) -> Outcome:
        problem = self._read_topic(d, topic)
        if problem is not None:
            return self._answer(d, "unknown_verb", problem)
        assert d.verb is not None
        limit = self.settings.max_payload_bytes
        if len(payload) > limit:
            return self._answer(d, "too_large", f"payload is {len(payload)} bytes, at most {limit} are accepted")
        if json_too_deep(payload):
            return self._answer(d, "invalid", f"payload nests deeper than {MAX_JSON_DEPTH} levels: not read")
        try:
            doc = json.loads(payload.decode("utf-8"))  # UTF-8 only: no UTF-16/32 guessing
        except UnicodeDecodeError as e:
            return self._answer(d, "not_json", f"payload is not UTF-8: {e}")
        except (ValueError, RecursionError) as e:
            return self._answer(d, "not_json", f"payload is not JSON: {e}")
        issuer: object = None
        if isinstance(doc, dict):
            d.command_id = _command_id(doc)
            issuer = doc.get("issuer")
            for candidate, what in ((response_topic, "response topic"),
                                    (None if response_topic is not None else doc.get("reply_to"), "reply_to")):
                if candidate is not None:
                    try:
                        d.requested = self.topics.check_reply_topic(candidate, identity=d.identity)
                    except TopicError as e:
                        d.notes.append(f"{what}: {e}")
        try:
            problems = schema_errors(doc, command_schema(d.verb))
        except Exception as e:   # RecursionError above all: the depth check should make it impossible
            problems = [f"cannot be checked against its schema ({type(e).__name__}: {e})"]
        if problems or d.notes:
            return self._answer(d, "invalid", "; ".join(d.notes + problems))
        assert d.command_id is not None
        if issuer is not None and issuer != d.identity:
            return self._answer(d, "unauthorised", f"the payload's issuer {str(issuer)[:128]!r} is not the sender"
                                                   f" {d.identity!r} (the cmd/IDENTITY/ level the broker vouches for)")
        if d.verb in self.settings.verbs_for(d.identity) and d.requested is not None:
            d.reply_topic = d.requested
        digest = command_digest(d.identity, d.verb, payload)
        try:
            known = self.ledger.lookup(d.command_id)
        except LedgerError as e:
            return self._answer(d, "error", f"{LEDGER_UNAVAILABLE}: not executed ({e})")
        if known is not None:
            return self._replay(d, digest, *known)
        now = self.clock()
        try:
            issued = parse_rfc3339(doc["issued_at"], "issued_at")
        except TimestampError as e:   # the schema's pattern admits a few impossible dates (month 13)
            return self._answer(d, "invalid", str(e))
        age_s = (now - issued) / 1e9
        if age_s > self.settings.max_age_s:
            return self._remember(d, digest, now, "stale", f"issued {age_s:.1f} s ago, at most"
                                                           f" {self.settings.max_age_s} s are accepted")
        if -age_s > self.settings.max_future_s:
            return self._remember(d, digest, now, "future", f"issued {-age_s:.1f} s in the future (station clock),"
                                                            f" at most {self.settings.max_future_s} s are accepted")
        if d.verb not in self.settings.verbs_for(d.identity):
            roles = sorted(self.settings.roles.get(d.identity, ()))
            who = f"roles {', '.join(roles)}" if roles else "no role on this station"
            return self._remember(d, digest, now, "unauthorised", f"{d.identity!r} ({who}) may not {d.verb}")
        try:
            self.ledger.begin(d.command_id, digest, d.verb, d.identity, now)
        except LedgerError as e:
            return self._answer(d, "error", f"{LEDGER_UNAVAILABLE}: not executed ({e})")
        d.args = doc["args"]
        if d.verb == "resend":
            code, message, data = self._resend(d.args)
            out = self._answer(d, code, message, executed=code == "ok", data=data)
        else:
            answer = self.operator.execute(Command(d.verb, d.args, d.identity, "mqtt"))
            out = self._answer(d, answer.code, answer.message, executed=answer.accepted)
        # if this fails the answer stands; the row stays "executing" and a replay gets outcome_unknown
        with contextlib.suppress(LedgerError):
            self.ledger.finish(d.command_id, self._stored(out.reply))
        return out

    def _resend(self, args: dict[str, Any]) -> tuple[Code, str, dict[str, Any] | None]:
        """A checked ``resend`` executed: its code, message and ``data`` (module docstring). The bounds are the
        outbox's (its ValueError is the answer ``invalid``), so they are written once."""
        if self._closed is not None:
            return "refused", self._closed, None
        if self.resend is None:
            return "not_allowed", NO_HISTORY, None
        boot, stream, first, last = args["boot_id"], args["stream"], args["first_seq"], args["last_seq"]
        try:
            got = self.resend(boot, stream, first, last)
        except ValueError as e:
            return "invalid", str(e), None
        except Exception as e:     # the outbox failed (disk): its transaction did not commit, nothing is queued
            return "error", f"could not re-send ({type(e).__name__}: {e}); nothing was queued again", None
        missing, count = got.missing, got.missing_count
        said = ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in missing[:MAX_MISSING_SAID])
        if len(missing) > MAX_MISSING_SAID:
            said += f" and {len(missing) - MAX_MISSING_SAID} more range(s)"
        message = (f"re-sent {got.requeued} of stream {stream}, boot {boot}, seq {first}-{last};"
                   f" {got.pending} still pending; "
                   + (f"missing {said} ({count} no longer held)" if missing else "nothing missing")
                   + (f"; from seq {got.rest_from} on not looked at (a resend moves at most {RESEND_BYTES >> 20}"
                      " MiB): ask again for the rest" if got.rest_from is not None else ""))
        data: dict[str, Any] = {"requeued": got.requeued, "pending": got.pending,
                                "missing": [[a, b] for a, b in missing[:MAX_MISSING_LISTED]], "missing_count": count}
        if got.rest_from is not None:       # where the asker takes up again (schema 1.4)
            data["rest_from"] = got.rest_from
        return "ok", message, data

    def _read_topic(self, d: _Draft, topic: str) -> str | None:
        """Sender and verb from the topic into ``d`` (and the station's own reply topic); else the problem."""
        try:
            parts = parse_topic(topic)
        except TopicError as e:
            return f"{e} (verbs: {', '.join(VERBS)})"
        if parts.stream != "cmd" or (parts.site, parts.station) != (self.topics.site, self.topics.station):
            return f"{topic!r} is not a command topic of {self.topics.root} (cmd/IDENTITY/VERB)"
        assert parts.verb is not None and parts.identity is not None
        d.verb, d.identity = parts.verb, parts.identity
        d.reply_topic = self.topics.reply(parts.verb)
        return None

    def _busy(self, c: ReceivedCommand) -> Outcome:
        """The answer to a command the scan had no time for: read only as far as its id, never executed."""
        return self.busy(c.topic, peek_command_id(bytes(c.payload), self.settings.max_payload_bytes),
                         c.correlation_data, "the station had no time left for commands in this scan")

    def busy(self, topic: str, command_id: str | None, correlation: bytes | None, why: str) -> Outcome:
        """``busy`` for a command not executed and not read further than its id (``why``: the reason), to the
        station's own reply topic; it may be sent again with the same command id."""
        d = _Draft(correlation if correlation is None or len(correlation) <= MAX_CORRELATION else None)
        with contextlib.suppress(Exception):   # no verb to name: the answer goes to the station's reply topic anyway
            self._read_topic(d, topic)
        d.command_id = command_id
        return self._answer(d, "busy", f"{why}: not executed; send it again (the same command id is fine)")

    def _maybe_prune(self) -> None:
        """Forget old ids, at most every PRUNE_EVERY_S (on every path: rejections add ids too)."""
        now = self.clock()
        if self._next_prune_ns is not None and now < self._next_prune_ns:
            return
        self._next_prune_ns = now + int(PRUNE_EVERY_S * 1e9)
        with contextlib.suppress(Exception):   # tried again next time; an old id costs only space
            self.ledger.prune(now, self.settings.remember_s)

    def _replay(self, d: _Draft, digest: str, known_digest: str, stored: dict[str, Any] | None) -> Outcome:
        assert d.command_id is not None
        if known_digest != digest:
            return self._answer(d, "id_reused", f"command id {d.command_id} was already used for a different"
                                                " command or by another sender: use a new id for each command")
        if stored is None:
            return self._answer(d, "outcome_unknown", "this command was being executed when the station restarted"
                                                      " (or its answer could not be stored); it is not executed"
                                                      " again: check the state", replayed=True)
        return self._answer(d, stored["code"], stored["message"], replayed=True, data=stored.get("data"))

    def _remember(self, d: _Draft, digest: str, now: int, code: Code, message: str) -> Outcome:
        """A rejection of a well-formed command: stored, so that a replay gets the same answer."""
        assert d.command_id is not None and d.verb is not None
        out = self._answer(d, code, message)
        with contextlib.suppress(LedgerError):   # not stored: a replay is checked again, and rejected again
            self.ledger.begin(d.command_id, digest, d.verb, d.identity, now, self._stored(out.reply))
        return out

    @staticmethod
    def _stored(reply: dict[str, Any]) -> dict[str, Any]:
        """What the ledger keeps of an answer, for replays: code, message and ``data`` (a resend's)."""
        return {k: reply[k] for k in ("code", "message", "data") if k in reply}

    def _answer(self, d: _Draft, code: Code, message: str, *, replayed: bool = False,
                executed: bool = False, data: dict[str, Any] | None = None) -> Outcome:
        result = "accepted" if code == "ok" else "rejected"
        message = message if len(message) <= 1000 else message[:997] + "..."
        reply: dict[str, Any] = {"command_id": d.command_id, "verb": d.verb, "result": result, "code": code,
                                 "message": message, "replayed": replayed}
        if d.correlation is not None:
            reply["correlation_data"] = base64.b64encode(d.correlation).decode()
        if data is not None:
            reply["data"] = data
        record = AuditRecord(d.identity, "mqtt", d.verb, d.args, code, message)
        audit = command_event(verb=record.verb, command_id=d.command_id, issuer=record.who, result=record.result,
                              code=record.code, message=record.line)
        return Outcome(d.reply_topic, reply, d.correlation, audit, executed)


def command_digest(identity: str, verb: str, payload: bytes) -> str:
    """What the ledger compares a replay by: the same id from another sender or for another verb is not a replay."""
    return hashlib.sha256(b"\0".join((identity.encode(), verb.encode(), payload))).hexdigest()


def peek_command_id(payload: bytes, max_bytes: int) -> str | None:
    """The command id of a payload of at most ``max_bytes`` that is JSON not nested too deep, else None; never
    raises (for answering a command that will not be read further)."""
    try:
        if len(payload) <= max_bytes and not json_too_deep(payload):
            doc = json.loads(payload.decode("utf-8"))
            return _command_id(doc) if isinstance(doc, dict) else None
    except Exception:
        pass
    return None


def _command_id(doc: dict[str, Any]) -> str | None:
    """The payload's command id if it looks like one (to name it in any answer, even a rejection)."""
    cid = doc.get("command_id")
    return cid if isinstance(cid, str) and 8 <= len(cid) <= 64 else None
