"""What goes on the ``event`` stream: one body per core event, process event or command, and its priority.

Every event body has ``kind`` (what happened), ``source`` (who says so: ``core``, ``controller``,
``alarms``, ``commands``), ``severity`` (``info`` < ``warning`` < ``alarm`` < ``critical``),
``message`` (one line a person can read) and the fields of its kind at the top level (``rule``,
``output``, ``first_out``, ``alarm``, ``phase``...); what has no field of its own goes in
``data``. ``mqtt_schemas/event.json`` is the contract; the outbox's own ``telemetry_thinned``
report shares the stream with its own shape.

The outbox priority decides what a full disk may thin (only telemetry) and tells the reader
what matters: trips, core faults, dropped outputs and alarms are ``Priority.ALARM``; the rest
``Priority.EVENT``. Nothing here drops an event: a kind this module does not know (a newer
controller) becomes ``kind: other`` with its original kind in ``data``, and values JSON cannot
carry (NaN, infinity, objects) become null or text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge.control.controller import ProcessEvent
from edge.core import CoreEvent, EventKind
from edge.telemetry.outbox import Priority

MAX_MESSAGE = 1000


@dataclass(frozen=True)
class EventDraft:
    """An event body ready for ``outbox.put("event", topics.event, body, priority=priority)``."""

    body: dict[str, Any]
    priority: Priority


#: Core event kind -> (event kind, severity, priority). Every EventKind is here (a test checks).
CORE_EVENTS: dict[EventKind, tuple[str, str, Priority]] = {
    EventKind.TRIP: ("trip", "critical", Priority.ALARM),
    EventKind.CLEAR: ("clear", "info", Priority.EVENT),
    EventKind.RESET: ("reset", "info", Priority.EVENT),
    EventKind.RESET_REFUSED: ("reset_refused", "warning", Priority.EVENT),
    EventKind.REFUSED: ("output_refused", "warning", Priority.EVENT),
    EventKind.PERMISSIVE_DROP: ("permissive_drop", "alarm", Priority.ALARM),
    EventKind.KEEPALIVE_DROP: ("keepalive_drop", "alarm", Priority.ALARM),
    EventKind.FORCED_SAFE: ("forced_safe", "alarm", Priority.ALARM),
    EventKind.OVERRUN: ("overrun", "warning", Priority.EVENT),
    EventKind.DRIVER_ERROR: ("driver_error", "alarm", Priority.ALARM),
    EventKind.STARTED: ("core_started", "info", Priority.EVENT),
    EventKind.STOPPED: ("core_stopped", "info", Priority.EVENT),
    EventKind.CORE_FAULT: ("core_fault", "critical", Priority.ALARM),
}

#: ProcessEvent.kind -> (event kind, source, severity, priority); alarms take their own severity.
PROCESS_EVENTS: dict[str, tuple[str, str, str, Priority]] = {
    "batch": ("batch", "controller", "info", Priority.EVENT),
    "phase": ("phase", "controller", "info", Priority.EVENT),
    "trip": ("trip", "core", "critical", Priority.ALARM),           # a core trip, relayed by the controller
    "core": ("core", "core", "warning", Priority.ALARM),            # another core event (kind unknown: see below)
    "refused": ("output_refused", "controller", "warning", Priority.EVENT),
    "alarm": ("alarm", "alarms", "alarm", Priority.ALARM),
    "operator": ("operator_action", "controller", "info", Priority.EVENT),
    "recovery": ("recovery", "controller", "warning", Priority.EVENT),
    # an instrument's serial port opened, could not be opened, lost, open again (edge.devices.serial_device)
    "connection": ("connection", "devices", "warning", Priority.EVENT),
    # a loop's autotune between batches: started, each relay cycle, done with the gains, or failed (edge.control.tuning)
    "autotune": ("autotune", "controller", "info", Priority.EVENT),
}

# fields that have their own place in the body (mqtt_schemas/event.json), with how to read them
_NAME_FIELDS = ("rule", "output", "channel")
_FLAG_FIELDS = ("first_out", "sensor_bad", "local_input", "nuisance")


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` with what JSON cannot carry replaced: NaN/inf -> None, unknown objects -> text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth > 8:
        return str(value)[:200]
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, depth + 1) for v in value]
    return str(value)[:200]


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _text(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 3] + "..."


def core_event(e: CoreEvent) -> EventDraft:
    """A core event (trip, clear, reset, refusal, output drop, overrun, driver error, core fault...)."""
    kind, severity, priority = CORE_EVENTS[e.kind]
    body: dict[str, Any] = {"kind": kind, "source": "core", "severity": severity, "message": _text(e.detail),
                            "t_core_s": e.t_ns / 1e9, "core_seq": e.seq, "rule": e.rule, "output": e.output,
                            "channel": e.channel, "first_out": e.first_out, "sensor_bad": e.sensor_bad,
                            "local_input": e.local_input, "value": _number(e.value),
                            "threshold": _number(e.threshold)}
    return EventDraft(body, priority)


def process_event(e: ProcessEvent) -> EventDraft:
    """A controller event: batch, phase change, relayed trip, refusal, alarm, operator action, recovery.

    A relayed core event that carries the ``CoreEvent`` itself in ``data["core_event"]`` is mapped
    exactly as ``core_event`` does (recommended: the controller's ``"core"`` events otherwise lose
    their kind).
    """
    data = dict(e.data)
    original = data.pop("core_event", None)
    if isinstance(original, CoreEvent):
        return core_event(original)
    spec = PROCESS_EVENTS.get(e.kind)
    if spec is None:
        kind, source, severity, priority = "other", "controller", "warning", Priority.EVENT
        data["original_kind"] = e.kind
    else:
        kind, source, severity, priority = spec
    body: dict[str, Any] = {"kind": kind, "source": source, "severity": severity, "message": _text(e.message),
                            "t_core_s": _number(e.t_s)}
    for key in _NAME_FIELDS:
        if key in data and (data[key] is None or isinstance(data[key], str)):
            body[key] = data.pop(key)
    for key in _FLAG_FIELDS:
        if isinstance(data.get(key), bool):
            body[key] = data.pop(key)
    if kind == "trip":
        body.setdefault("first_out", False)
        body.setdefault("rule", None)
    if kind == "phase":
        for key in ("phase", "previous", "reason"):
            body[key] = str(data.pop(key, ""))[:64 if key != "reason" else MAX_MESSAGE]
    if kind == "alarm":
        body["alarm"] = data.pop("alarm", None)
        body["alarm_event"] = data.pop("state", None)
        sev = data.pop("severity", None)
        if sev in ("warning", "alarm", "critical"):
            body["severity"] = sev
    if kind == "connection" and data.get("change") in ("opened", "reopened"):
        body["severity"] = "info"
    batch = data.get("batch")
    if isinstance(batch, Mapping) and isinstance(batch.get("id"), str):
        body["batch_id"] = batch["id"]
    elif isinstance(batch, str):
        body["batch_id"] = data.pop("batch")
    if data:
        body["data"] = json_safe(data)
    return EventDraft(body, priority)


def command_event(*, verb: str | None, command_id: str | None, issuer: str, result: str, code: str,
                  message: str) -> EventDraft:
    """The audit record of an answered command: who asked what, and the answer (verb, id and issuer are
    left out when the command could not be read far enough to know them)."""
    body: dict[str, Any] = {"kind": "command", "source": "commands",
                            "severity": "info" if result == "accepted" else "warning", "message": _text(message),
                            "result": result, "code": code}
    if verb is not None:
        body["verb"] = verb
    if command_id is not None:
        body["command_id"] = command_id
    if issuer:
        body["issuer"] = issuer[:128]
    return EventDraft(body, Priority.EVENT)
