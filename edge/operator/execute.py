"""``Operator.execute``: one command, checked (verb, arguments, station policy, process state) and done,
or refused with its reason; never raises, so a command can never stop the controller."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edge.control.controller import BatchRejected
from edge.core import OutputRefused, ResetRefused
from edge.operator.target import CommandRefused, CommandTarget
from edge.operator.verbs import VERBS, InvalidArguments, StartRequest

#: ``ok``: done. The rest are refusals, nothing changed:
#: ``invalid`` (unknown verb, bad arguments, no such recipe/alarm/interlock, not the current batch),
#: ``not_allowed`` (the station's policy: no reset from a command), ``state`` (the process cannot now: no
#: batch running, not held), ``interlock`` (the core or the controller refused for safety), ``refused``
#: (the controller said no, or the station is stopping), ``busy`` (the transport had no time for it in
#: this scan: not executed, send it again), ``error`` (the target failed unexpectedly; said how).
Code = Literal["ok", "invalid", "not_allowed", "state", "interlock", "refused", "busy", "error"]


@dataclass(frozen=True)
class Command:
    """What an operator asked: ``who`` is the sender (the MQTT identity, or ``stdin``), ``via`` the transport."""

    verb: str
    args: Mapping[str, Any] = field(default_factory=dict)
    who: str = ""
    via: str = ""


@dataclass(frozen=True)
class Answer:
    code: Code
    message: str

    @property
    def accepted(self) -> bool:
        return self.code == "ok"


@dataclass(frozen=True)
class AuditRecord:
    """What each command leaves behind, for the transport to publish or print: who asked what, and the answer.
    ``verb`` is None when the command could not be read far enough to know it."""

    who: str
    via: str
    verb: str | None
    args: Mapping[str, Any]
    code: str             # an answer's ``Code``, or a transport's own (MQTT: ``unauthorised``, ``stale``, ...)
    message: str

    @property
    def result(self) -> str:
        return "accepted" if self.code == "ok" else "rejected"

    @property
    def line(self) -> str:
        return f"{self.verb or 'command'} {self.result}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"who": self.who, "via": self.via, "verb": self.verb, "args": dict(self.args), "result": self.result,
                "code": self.code, "message": self.message}


def audit(command: Command, answer: Answer) -> AuditRecord:
    return AuditRecord(command.who, command.via, command.verb, dict(command.args), answer.code, answer.message)


NO_REMOTE_RESET = ("this station does not allow remote reset ([station] allow_remote_reset = false): reset at the"
                   " cabinet")


class Operator:
    """The one path every operator command takes (``edge.operator``): stdin and MQTT call ``execute``."""

    def __init__(self, target: CommandTarget, *, allow_remote_reset: bool) -> None:
        self.target = target
        self.allow_remote_reset = allow_remote_reset
        self._closed: str | None = None

    def close(self, reason: str) -> None:
        """From now on every command is answered ``refused`` with ``reason`` and none is executed (the station
        is stopping)."""
        self._closed = reason

    def execute(self, command: Command) -> Answer:
        verb = VERBS.get(command.verb)
        if verb is None:
            return Answer("invalid", f"unknown command {command.verb!r} (known: {', '.join(VERBS)})")
        try:
            args = verb.read(command.args)
        except InvalidArguments as e:
            return Answer("invalid", str(e))
        except Exception as e:   # an argument no check foresaw: answered, never raised (the loop must go on)
            return Answer("invalid", f"arguments not understood: {type(e).__name__}: {e}")
        if command.verb == "reset" and not self.allow_remote_reset:
            return Answer("not_allowed", NO_REMOTE_RESET)
        if self._closed is not None:
            return Answer("refused", self._closed)
        try:
            return Answer("ok", self._do(command.verb, args, command.who, command.via))
        except CommandRefused as e:
            return Answer(e.code, e.message)
        except (ResetRefused, OutputRefused) as e:
            return Answer("interlock", e.message)
        except BatchRejected as e:
            return Answer("refused", str(e))
        except KeyError as e:
            return Answer("invalid", f"unknown name: {e.args[0] if e.args else e}")
        except Exception as e:   # the station must answer and keep running whatever a target does
            return Answer("error", f"{type(e).__name__}: {e}")

    def _do(self, verb: str, args: dict[str, Any], who: str, via: str = "") -> str:
        """Execute a checked command; the message of its ``ok``."""
        t = self.target
        if verb == "start":
            t.start_batch(StartRequest(args["recipe"], args["recipe_sha256"], args["batch_id"],
                                       args.get("operator", who), who, args.get("feed", ""), args.get("mass_in_kg")))
            return f"batch {args['batch_id']} started with recipe {args['recipe']}"
        if verb == "hold":
            reason = args.get("reason", f"held by {who}")
            t.hold(reason)
            return f"held: {reason}"
        if verb == "resume":
            t.resume()
            return "resumed"
        if verb == "abort":
            reason = args.get("reason", f"aborted by {who}")
            t.abort(reason)
            return f"aborting: {reason}"
        if verb == "skip":
            t.skip()
            return "segment skipped"
        if verb == "ack_alarm":
            t.ack_alarm(args["alarm"])
            return f"alarm {args['alarm']} acknowledged"
        if verb == "reset":
            t.reset(args.get("rule"), remote=via != "stdin")  # only the station's own console is local
            return f"interlock {args['rule']} reset" if "rule" in args else "latched interlocks reset"
        if verb == "record_mass":
            t.record_mass(args.get("batch_id"), args["mass_out_kg"])
            batch = f"batch {args['batch_id']}" if "batch_id" in args else "the current batch"
            return f"mass out {args['mass_out_kg']:g} kg recorded for {batch}"
        if verb == "autotune":
            t.autotune(args["loop"], float(args["setpoint_c"]))
            return (f"autotune of loop {args['loop']} around {args['setpoint_c']:g} degC started: progress and the "
                    "gains come as autotune events; abort ends it")
        raise AssertionError(f"no execution for verb {verb!r}")   # pragma: no cover - VERBS are all handled
