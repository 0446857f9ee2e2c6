"""Commands from MQTT: checked, authorised, executed at most once, and always answered.

A command arrives on ``reedge/v1/{site}/{station}/cmd/{verb}`` (``mqtt_schemas/cmd-{verb}.json``)::

    {"schema": "https://reeproduce.eu/schemas/reedge/v1/cmd-hold.json", "command_id": "7d9c0e8a-...",
     "issued_at": "2025-03-14T09:26:53.589Z", "issuer": "scada-hd", "args": {"reason": "door check"}}

``CommandHandler.handle`` takes it through these steps, in this order, and the first that fails
answers ``rejected`` with its code (``mqtt_schemas/reply.json``); nothing has changed then:

==================  =====================================================================
``unknown_verb``    the topic is not one of this station's ``cmd/{verb}`` topics
``too_large``       the payload is larger than ``[mqtt.commands] max_payload_bytes``: refused
                    before it is parsed (a JSON bomb costs nothing)
``not_json``        not UTF-8 JSON
``invalid``         not valid against the verb's schema (every problem listed), or a bad reply_to
``id_reused``       the command id was seen with a different payload
(replay)            the id was seen with the same payload: the original answer, ``replayed``
                    true, and nothing is executed again (``outcome_unknown`` if the station
                    restarted while executing it: it is not executed again either)
``stale``/``future`` ``issued_at`` older than ``max_age_s``, or more than ``max_future_s`` ahead
``unauthorised``    the issuer's roles do not allow the verb (``edge.telemetry.access``)
``not_allowed``     reset, on a station whose file does not set ``allow_remote_reset``
``interlock``       the core or the controller refused for safety (a latched trip, a reset while
                    the condition persists, an output the gate holds safe)
``state``/``refused`` the process cannot do it now (no batch to hold), or the controller refused
``error``           the target failed unexpectedly (the message says how); the station is as it was
==================  =====================================================================

**At most once.** Command ids are kept in a small SQLite file (``CommandLedger``, beside the
run state) for ``remember_s``. Before a command executes, its id is committed with
``synchronous=FULL``; its answer is stored after. So a restart never executes a command again:
a replay after a crash in the middle gets ``outcome_unknown``. A replay older than
``remember_s`` is rejected as stale by its own ``issued_at``, so forgetting ids is safe.

**Replies** go to the MQTT 5 response topic if the command had one, else to ``reply_to`` in the
payload (the MQTT 3.1.1 fallback), else to ``reply/{verb}``; the body always carries the
command id, and the MQTT 5 correlation data (base64) so the session can set the property. A
reply topic may not point into another stream (``StationTopics.check_reply_topic``). Each
answer also yields an audit event (who asked what, and the answer) for the ``event`` stream.

Execution goes through ``CommandTarget``, which knows nothing of MQTT; ``ControllerTarget``
adapts a ``Controller`` to it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from edge.telemetry.access import CommandSettings
from edge.telemetry.envelope import EnvelopeError, parse_rfc3339
from edge.telemetry.events import EventDraft, command_event
from edge.telemetry.schemas import errors as schema_errors
from edge.telemetry.topics import VERBS, StationTopics, TopicError, command_schema, parse_topic

Code = Literal["ok", "too_large", "not_json", "invalid", "unknown_verb", "unauthorised", "stale", "future",
               "id_reused", "not_allowed", "interlock", "state", "refused", "outcome_unknown", "error"]
MAX_CORRELATION = 256


class CommandRefused(Exception):
    """Raised by a CommandTarget that will not do it: ``code`` is interlock, state, refused or invalid."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code: Code = code
        self.message = message


@dataclass(frozen=True)
class StartRequest:
    recipe: str            # the recipe's name on the station (file name without .toml)
    recipe_sha256: str     # what the sender reviewed: a different file is refused
    batch_id: str
    operator: str
    issuer: str


class CommandTarget(Protocol):
    """What commands may do to the process. Raise CommandRefused (or the core's refusals) to say no."""

    def start_batch(self, request: StartRequest) -> None: ...
    def hold(self, reason: str) -> None: ...
    def resume(self) -> None: ...
    def abort(self, reason: str) -> None: ...
    def ack_alarm(self, alarm: str) -> None: ...
    def reset(self, rule: str | None) -> None: ...


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

class CommandLedger:
    """Command ids with their payload digest and answer, in one SQLite file; see the module docstring."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS commands (command_id TEXT PRIMARY KEY, digest TEXT NOT NULL,"
                             " verb TEXT NOT NULL, issuer TEXT NOT NULL, received_ns INTEGER NOT NULL, reply TEXT)")
        except sqlite3.Error as e:
            raise OSError(f"{self.path}: cannot open the command ledger: {e}") from e

    def lookup(self, command_id: str) -> tuple[str, dict[str, Any] | None] | None:
        """(payload digest, stored answer or None while/if it was executing), or None if unknown."""
        with self._lock:
            row = self._db.execute("SELECT digest, reply FROM commands WHERE command_id = ?", (command_id,)).fetchone()
        if row is None:
            return None
        return str(row[0]), (json.loads(row[1]) if row[1] is not None else None)

    def begin(self, command_id: str, digest: str, verb: str, issuer: str, now_ns: int,
              reply: dict[str, Any] | None = None) -> None:
        """Record the id durably (before executing it: a crash after this never runs it again)."""
        with self._lock:
            self._db.execute("INSERT INTO commands (command_id, digest, verb, issuer, received_ns, reply)"
                             " VALUES (?, ?, ?, ?, ?, ?)",
                             (command_id, digest, verb, issuer, now_ns, None if reply is None else json.dumps(reply)))

    def finish(self, command_id: str, reply: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("UPDATE commands SET reply = ? WHERE command_id = ?", (json.dumps(reply), command_id))

    def prune(self, now_ns: int, keep_s: float) -> int:
        """Forget ids older than ``keep_s``; returns how many."""
        with self._lock:
            cur = self._db.execute("DELETE FROM commands WHERE received_ns < ?", (now_ns - int(keep_s * 1e9),))
            return cur.rowcount

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

    verb: str | None
    reply_topic: str | None
    correlation: bytes | None
    command_id: str | None = None
    issuer: str = ""
    notes: list[str] = field(default_factory=list)


class CommandHandler:
    """Turns one received command into at most one action and exactly one answer (module docstring)."""

    def __init__(self, *, topics: StationTopics, settings: CommandSettings, allow_remote_reset: bool,
                 target: CommandTarget, ledger: CommandLedger, clock: Callable[[], int] = time.time_ns) -> None:
        self.topics = topics
        self.settings = settings
        self.allow_remote_reset = allow_remote_reset
        self.target = target
        self.ledger = ledger
        self.clock = clock
        self._lock = threading.Lock()   # one command at a time: a replay racing its original waits for its answer

    def handle(self, topic: str, payload: bytes, *, response_topic: str | None = None,
               correlation_data: bytes | None = None) -> Outcome:
        """One received command. ``response_topic``/``correlation_data``: the MQTT 5 properties, if any."""
        with self._lock:
            return self._handle(topic, bytes(payload), response_topic, correlation_data)

    def _handle(self, topic: str, payload: bytes, response_topic: str | None,
                correlation: bytes | None) -> Outcome:
        if correlation is not None and len(correlation) > MAX_CORRELATION:
            correlation = None      # not echoed: a reply must stay small; the command id still correlates
        d = _Draft(None, None, correlation)
        try:
            parts = parse_topic(topic)
            if parts.stream != "cmd" or (parts.site, parts.station) != (self.topics.site, self.topics.station):
                raise TopicError(f"{topic!r} is not a command topic of {self.topics.root}")
            d.verb = parts.verb
        except TopicError as e:
            d.reply_topic = self._reply_topic(response_topic, None, None, d)
            return self._answer(d, "unknown_verb", f"{e} (verbs: {', '.join(VERBS)})")
        assert d.verb is not None
        d.reply_topic = self._reply_topic(response_topic, None, d.verb, d)
        limit = self.settings.max_payload_bytes
        if len(payload) > limit:
            return self._answer(d, "too_large", f"payload is {len(payload)} bytes, at most {limit} are accepted")
        try:
            doc = json.loads(payload.decode("utf-8"))  # UTF-8 only: no UTF-16/32 guessing
        except UnicodeDecodeError as e:
            return self._answer(d, "not_json", f"payload is not UTF-8: {e}")
        except (ValueError, RecursionError) as e:
            return self._answer(d, "not_json", f"payload is not JSON: {e}")
        if isinstance(doc, dict):
            if isinstance(doc.get("command_id"), str) and 8 <= len(doc["command_id"]) <= 64:
                d.command_id = doc["command_id"]
            if isinstance(doc.get("issuer"), str):
                d.issuer = doc["issuer"][:128]
            if response_topic is None and "reply_to" in doc:
                d.reply_topic = self._reply_topic(None, doc["reply_to"], d.verb, d)
        problems = schema_errors(doc, command_schema(d.verb))
        if problems or d.notes:
            return self._answer(d, "invalid", "; ".join(d.notes + problems))
        assert d.command_id is not None
        digest = hashlib.sha256(payload).hexdigest()
        known = self.ledger.lookup(d.command_id)
        if known is not None:
            return self._replay(d, digest, *known)
        now = self.clock()
        try:
            issued = parse_rfc3339(doc["issued_at"], "issued_at")
        except EnvelopeError as e:   # the schema's pattern admits a few impossible dates (month 13)
            return self._answer(d, "invalid", str(e))
        age_s = (now - issued) / 1e9
        if age_s > self.settings.max_age_s:
            return self._remember(d, digest, now, "stale", f"issued {age_s:.1f} s ago, at most"
                                                           f" {self.settings.max_age_s} s are accepted")
        if -age_s > self.settings.max_future_s:
            return self._remember(d, digest, now, "future", f"issued {-age_s:.1f} s in the future (station clock),"
                                                            f" at most {self.settings.max_future_s} s are accepted")
        if d.verb not in self.settings.verbs_for(d.issuer):
            roles = sorted(self.settings.roles.get(d.issuer, ()))
            who = f"roles {', '.join(roles)}" if roles else "no role on this station"
            return self._remember(d, digest, now, "unauthorised", f"{d.issuer!r} ({who}) may not {d.verb}")
        if d.verb == "reset" and not self.allow_remote_reset:
            return self._remember(d, digest, now, "not_allowed", "this station does not allow remote reset"
                                                                 " ([station] allow_remote_reset = false): reset"
                                                                 " at the cabinet")
        self.ledger.begin(d.command_id, digest, d.verb, d.issuer, now)
        code, message = self._execute(d.verb, doc)
        out = self._answer(d, code, message, executed=code == "ok")
        self.ledger.finish(d.command_id, self._stored(out.reply))
        self.ledger.prune(now, self.settings.remember_s)
        return out

    def _reply_topic(self, response_topic: str | None, reply_to: object, verb: str | None, d: _Draft) -> str | None:
        """MQTT 5 response topic, else the payload's reply_to, else reply/{verb}; a bad one is noted."""
        for candidate, what in ((response_topic, "response topic"), (reply_to, "reply_to")):
            if candidate is None:
                continue
            try:
                return self.topics.check_reply_topic(candidate)
            except TopicError as e:
                d.notes.append(f"{what}: {e}")
        return self.topics.reply(verb) if verb is not None else None

    def _replay(self, d: _Draft, digest: str, known_digest: str, stored: dict[str, Any] | None) -> Outcome:
        assert d.command_id is not None
        if known_digest != digest:
            return self._answer(d, "id_reused", f"command id {d.command_id} was already used for a different"
                                                " command: use a new id for each command")
        if stored is None:
            return self._answer(d, "outcome_unknown", "this command was being executed when the station restarted;"
                                                      " it is not executed again: check the state", replayed=True)
        return self._answer(d, stored["code"], stored["message"], replayed=True)

    def _remember(self, d: _Draft, digest: str, now: int, code: Code, message: str) -> Outcome:
        """A rejection of a well-formed command: stored, so that a replay gets the same answer."""
        assert d.command_id is not None and d.verb is not None
        out = self._answer(d, code, message)
        self.ledger.begin(d.command_id, digest, d.verb, d.issuer, now, self._stored(out.reply))
        return out

    @staticmethod
    def _stored(reply: dict[str, Any]) -> dict[str, Any]:
        return {"code": reply["code"], "message": reply["message"]}

    def _execute(self, verb: str, doc: dict[str, Any]) -> tuple[Code, str]:
        from edge.control.controller import BatchRejected
        from edge.core import OutputRefused, ResetRefused

        args: dict[str, Any] = doc["args"]
        try:
            if verb == "start":
                self.target.start_batch(StartRequest(args["recipe"], args["recipe_sha256"], args["batch_id"],
                                                     args.get("operator", doc["issuer"]), doc["issuer"]))
                return "ok", f"batch {args['batch_id']} started with recipe {args['recipe']}"
            if verb == "hold":
                reason = args.get("reason", f"held by {doc['issuer']}")
                self.target.hold(reason)
                return "ok", f"held: {reason}"
            if verb == "resume":
                self.target.resume()
                return "ok", "resumed"
            if verb == "abort":
                reason = args.get("reason", f"aborted by {doc['issuer']}")
                self.target.abort(reason)
                return "ok", f"aborting: {reason}"
            if verb == "ack_alarm":
                self.target.ack_alarm(args["alarm"])
                return "ok", f"alarm {args['alarm']} acknowledged"
            if verb == "reset":
                self.target.reset(args.get("rule"))
                return "ok", f"interlock {args['rule']} reset" if "rule" in args else "latched interlocks reset"
        except CommandRefused as e:
            return e.code, e.message
        except (ResetRefused, OutputRefused) as e:
            return "interlock", e.message
        except BatchRejected as e:
            return "refused", str(e)
        except KeyError as e:
            return "invalid", f"unknown name: {e.args[0] if e.args else e}"
        except Exception as e:   # the station must answer and keep running whatever a target does
            return "error", f"{type(e).__name__}: {e}"
        raise AssertionError(f"no execution for verb {verb!r}")   # pragma: no cover - VERBS are all handled

    def _answer(self, d: _Draft, code: Code, message: str, *, replayed: bool = False,
                executed: bool = False) -> Outcome:
        result = "accepted" if code == "ok" else "rejected"
        message = message if len(message) <= 1000 else message[:997] + "..."
        reply: dict[str, Any] = {"command_id": d.command_id, "verb": d.verb, "result": result, "code": code,
                                 "message": message, "replayed": replayed}
        if d.correlation is not None:
            reply["correlation_data"] = base64.b64encode(d.correlation).decode()
        audit = command_event(verb=d.verb, command_id=d.command_id, issuer=d.issuer, result=result, code=code,
                              message=f"{d.verb or 'command'} {result}: {message}")
        return Outcome(d.reply_topic, reply, d.correlation, audit, executed)


# ---- the Controller as a target ----------------------------------------------------------------

class ControllerTarget:
    """Adapts ``edge.control.controller.Controller`` to ``CommandTarget``; recipes come from ``recipes_dir``.

    Start checks, in order: the recipe file exists, its SHA-256 is the one the sender named, it parses;
    then ``Controller.start_batch`` checks the fit to the station, running batches and tripped interlocks.
    """

    def __init__(self, controller: Any, recipes_dir: str | os.PathLike[str]) -> None:
        self.ctl = controller
        self.recipes_dir = pathlib.Path(recipes_dir)

    def start_batch(self, request: StartRequest) -> None:
        from edge.control.recipe import RecipeError, parse_recipe

        tripped = [name for name, r in self.ctl.core.rules().items() if r.tripped]
        if tripped:
            raise CommandRefused("interlock", f"interlocks tripped: {', '.join(tripped)} (clear and reset them first)")
        path = self.recipes_dir / f"{request.recipe}.toml"
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise CommandRefused("invalid", f"no recipe {request.recipe!r} on this station ({e.strerror})") from None
        digest = hashlib.sha256(raw).hexdigest()
        if digest != request.recipe_sha256:
            raise CommandRefused("invalid", f"recipe {request.recipe!r} on this station has SHA-256 {digest[:12]}...,"
                                            f" not the {request.recipe_sha256[:12]}... the command names")
        try:
            recipe = parse_recipe(raw.decode("utf-8"), str(path))
        except (RecipeError, UnicodeDecodeError) as e:
            raise CommandRefused("invalid", f"recipe {request.recipe!r} does not load: {e}") from None
        self.ctl.start_batch(recipe, batch_id=request.batch_id, operator=request.operator)

    def hold(self, reason: str) -> None:
        self._running("hold")
        self.ctl.hold(reason)

    def resume(self) -> None:
        seq = self._running("resume")
        if seq.held is None:
            raise CommandRefused("state", "the sequence is not held")
        self.ctl.resume()

    def abort(self, reason: str) -> None:
        self._running("abort")
        self.ctl.abort(reason)

    def ack_alarm(self, alarm: str) -> None:
        if alarm not in self.ctl.alarms.states():
            raise CommandRefused("invalid", f"no alarm {alarm!r} on this station")
        event = self.ctl.alarms.acknowledge(alarm, self.ctl.now_s())
        if event is None:
            raise CommandRefused("state", f"alarm {alarm!r} has nothing to acknowledge")
        self.ctl.emit(event.t_s, "alarm", event.message, alarm=event.name, state=event.kind, severity=event.severity)

    def reset(self, rule: str | None) -> None:
        if rule is not None and rule not in self.ctl.core.rule_names:
            raise CommandRefused("invalid", f"no interlock {rule!r} on this station")
        self.ctl.core.reset(rule)     # ResetRefused while the condition persists: answered "interlock"
        self.ctl.emit(self.ctl.now_s(), "operator", f"remote reset of {rule or 'latched interlocks'}")

    def _running(self, verb: str) -> Any:
        seq = self.ctl.sequencer
        if seq is None or not seq.running:
            raise CommandRefused("state", f"no batch is running: nothing to {verb}")
        return seq
