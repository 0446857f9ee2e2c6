"""What a command may do to the process (``CommandTarget``) and the running station as one
(``ControllerTarget``): the state checks of every verb, then the ``Controller``, the core and the batch
recorder, whose own checks still apply (a batch already running, an interlock the core will not reset)."""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Literal, Protocol

from edge.batch.record import BatchRecorder
from edge.control.controller import Controller
from edge.control.programmer import ProgState
from edge.control.sequencer import Sequencer
from edge.control.tuning import TuneRejected
from edge.operator.verbs import StartRequest
from edge.spec.reader import SpecError
from edge.spec.recipe_reader import parse_recipe

RefusalCode = Literal["invalid", "not_allowed", "state", "interlock", "refused"]


class CommandRefused(Exception):
    """A command the process will not do now; ``code`` says why (see ``edge.operator.execute.Code``)."""

    def __init__(self, code: RefusalCode, message: str) -> None:
        super().__init__(message)
        self.code: RefusalCode = code
        self.message = message


class CommandTarget(Protocol):
    """What commands may do to the process. Raise CommandRefused (or the core's refusals) to say no."""

    def start_batch(self, request: StartRequest) -> None: ...
    def hold(self, reason: str) -> None: ...
    def resume(self) -> None: ...
    def abort(self, reason: str) -> None: ...
    def skip(self) -> None: ...
    def ack_alarm(self, alarm: str) -> None: ...
    def reset(self, rule: str | None, remote: bool = True) -> None: ...
    def record_mass(self, batch_id: str | None, mass_out_kg: float) -> None: ...
    def autotune(self, loop: str, setpoint_c: float) -> None: ...


class ControllerTarget:
    """A running station as a ``CommandTarget``: recipes come from ``recipes_dir``, ``record_mass`` goes to
    the batch ``recorder``.

    Start checks, in order: no interlock tripped, the recipe file exists, its SHA-256 is the one the
    sender named, it parses; then ``Controller.start_batch`` checks the fit to the station and a batch
    already running.
    """

    def __init__(self, controller: Controller, recipes_dir: str | os.PathLike[str],
                 recorder: BatchRecorder | None = None) -> None:
        self.ctl = controller
        self.recipes_dir = pathlib.Path(recipes_dir)
        self.recorder = recorder

    def start_batch(self, request: StartRequest) -> None:
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
        except (SpecError, UnicodeDecodeError) as e:
            raise CommandRefused("invalid", f"recipe {request.recipe!r} does not load: {e}") from None
        self.ctl.start_batch(recipe, batch_id=request.batch_id, operator=request.operator, feed=request.feed,
                             mass_in_kg=request.mass_in_kg)

    def hold(self, reason: str) -> None:
        self._running("hold")
        self.ctl.hold(reason)

    def resume(self) -> None:
        seq = self._running("resume")
        program_held = seq.program is not None and seq.program.state is ProgState.HOLD
        if seq.held is None and not program_held:
            raise CommandRefused("state", "the sequence is not held")
        self.ctl.resume()

    def abort(self, reason: str) -> None:
        if self.ctl.tuning is None:        # with no batch running an abort ends a loop's autotune
            self._running("abort")
        self.ctl.abort(reason)

    def autotune(self, loop: str, setpoint_c: float) -> None:
        try:
            self.ctl.start_autotune(loop, setpoint_c)
        except TuneRejected as exc:
            raise CommandRefused("refused", str(exc)) from None

    def skip(self) -> None:
        self._running("skip")
        self.ctl.skip()

    def ack_alarm(self, alarm: str) -> None:
        if alarm not in self.ctl.alarms.states():
            raise CommandRefused("invalid", f"no alarm {alarm!r} on this station")
        event = self.ctl.alarms.acknowledge(alarm, self.ctl.now_s())
        if event is None:
            raise CommandRefused("state", f"alarm {alarm!r} has nothing to acknowledge")
        self.ctl.emit(event.t_s, "alarm", event.message, alarm=event.name, state=event.kind, severity=event.severity)

    def reset(self, rule: str | None, remote: bool = True) -> None:
        """remote: the core enforces allow_remote_reset and local_reset_only itself, whatever Python checked."""
        if rule is not None and rule not in self.ctl.core.rule_names:
            raise CommandRefused("invalid", f"no interlock {rule!r} on this station")
        self.ctl.core.reset(rule, remote=remote)  # ResetRefused while the condition persists: answered "interlock"
        where = "remote" if remote else "local"
        self.ctl.emit(self.ctl.now_s(), "operator", f"{where} reset of {rule or 'latched interlocks'}")

    def record_mass(self, batch_id: str | None, mass_out_kg: float) -> None:
        body = self.recorder.body if self.recorder is not None else None
        if self.recorder is None or body is None or (batch_id is not None and body["batch_id"] != batch_id):
            current = "none" if body is None else body["batch_id"]
            raise CommandRefused("invalid", f"batch {batch_id or '(current)'} is not this station's current batch"
                                            f" record ({current})")
        try:
            self.recorder.set_mass_out(mass_out_kg, self.ctl.wall_clock())
        except ValueError as e:
            raise CommandRefused("invalid", str(e)) from None
        self.ctl.emit(self.ctl.now_s(), "operator", f"mass out of batch {body['batch_id']}: {mass_out_kg:g} kg")

    def _running(self, verb: str) -> Sequencer:
        seq = self.ctl.sequencer
        if seq is None or not seq.running:
            raise CommandRefused("state", f"no batch is running: nothing to {verb}")
        return seq
