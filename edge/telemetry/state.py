"""The ``state`` stream: the process state as one retained message, published whenever it changes.

A dashboard that connects mid-batch gets the retained message and knows at once what runs,
in which phase, whether it is held, which outputs are on or forced safe, which interlocks are
tripped (and which first), which alarms an operator must see. ``StateTracker.update`` is called
every scan and returns a body only when something in it changed, so the stream costs nothing
while nothing happens and misses no change that lasted a scan.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge.control.alarms import AlarmEngine
from edge.control.controller import Controller
from edge.control.sequencer import Sequencer
from edge.core import Core


def state_body(*, core: Core, sequencer: Sequencer | None, batch: Mapping[str, Any], alarms: AlarmEngine | None,
               remote_reset: bool) -> dict[str, Any]:
    """The state body (``mqtt_schemas/state.json``) from the pieces that hold it."""
    if sequencer is None or sequencer.phase == "idle":
        run, phase = "idle", None
    elif sequencer.finished:
        run, phase = sequencer.phase, sequencer.phase
    else:
        run, phase = ("held" if sequencer.held is not None else "running"), sequencer.phase
    rules = core.rules()
    body: dict[str, Any] = {
        "run": run,
        "phase": phase,
        "held": sequencer.held if sequencer is not None else None,
        "abort_reason": sequencer.abort_reason if sequencer is not None else None,
        "batch": None,
        "outputs": {name: {"level": int(o.level), "requested": o.requested, "forced": o.forced}
                    for name, o in core.outputs().items()},
        "interlocks": {"tripped": [n for n, r in rules.items() if r.tripped],
                       "resettable": [n for n, r in rules.items() if r.resettable],
                       "first_out": next((n for n, r in rules.items() if r.first_out), None)},
        "alarms": {"active": alarms.active() if alarms else [],
                   "unacknowledged": alarms.unacknowledged() if alarms else []},
        "remote_reset": remote_reset,
    }
    if batch.get("id"):
        body["batch"] = {"id": str(batch["id"]), "recipe": str(batch.get("recipe", "")),
                         "recipe_sha256": str(batch.get("recipe_sha256", "")),
                         "operator": str(batch.get("operator", ""))}
    return body


def controller_state(ctl: Controller) -> dict[str, Any]:
    return state_body(core=ctl.core, sequencer=ctl.sequencer, batch=ctl.batch, alarms=ctl.alarms,
                      remote_reset=ctl.station.allow_remote_reset)


class StateTracker:
    """Remembers the last state published; ``update`` returns the new body only when it differs."""

    def __init__(self) -> None:
        self._last: dict[str, Any] | None = None

    def update(self, body: dict[str, Any]) -> dict[str, Any] | None:
        if body == self._last:
            return None
        self._last = body
        return body
