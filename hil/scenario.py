"""Scenario files (``hil/scenarios/*.toml``): what to run, what to break, and what must follow.

The format is described in ``hil/README.md``. A scenario is read and checked completely before
anything starts: every problem is reported with the file and key path (``faults[2].at.phase``)
and a "did you mean", and a scenario with a problem never starts a rig.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.spec.reader import SpecError, describe, parse_toml, unknown
from edge.spec.recipe_reader import load_recipe
from edge.spec.station import load_station
from hil.plants import PLANTS
from hil.resources import scenario_reference

# controller and rig faults, the same for every plant; each with its parameters (name -> required)
RIG_FAULTS: dict[str, dict[str, bool]] = {
    "tc_open": {"channel": True},
    "sensor_drift": {"channel": True, "rate_per_min": False, "offset": False},
    "valve_stuck": {"output": True, "level": False},
    "serial_garbage": {"device": False, "bytes": False},
    "gauge_silent": {"device": False},
    "meter_silent": {"device": True},                     # a Modbus meter stops answering (until cleared)
    "meter_crc_burst": {"device": True, "answers": False},  # its bus's next n answers arrive corrupted
    "controller_hang": {},
    "process_freeze": {},
    "power_loss": {},
}
OPERATOR_ACTIONS = ("hold", "resume", "abort", "skip")
MAX_TIME_SCALE = 1500.0
CONDITION_KEYS = ("t_s", "phase", "held", "channel", "above", "below", "after", "after_s")
UNTIL = ("batch_end", "phase", "time")
MEASURES: dict[str, tuple[str, ...]] = {   # measure -> the keys it needs besides its limits
    "batch_outcome": (), "final_phase": (), "phases": (), "phases_after": ("step",),
    "first_trip": (), "trip_count": (), "trips": (),
    "safe_latency_ms": ("rule",), "trip_plant_s": ("rule", "step"),
    "relay_latency_ms": ("step",), "relay_dropped": (), "written_safe_at_relay_drop": ("step",),
    "final_output": ("output",), "written_output": ("output",),
    "max_channel": ("channel",), "min_channel": ("channel",),
    "plant_metric": ("metric",), "plant_metric_delta": ("metric", "step"),   # until_phase optional: else to the end
    "controller_restarts": (), "instrument_counter": ("device", "counter"), "recovered_outage_s": (),
    "batch_record": ("path",),          # a field of the batch record (a list gives its length)
    "metered_error_pct": ("meter",),    # |metered - plant truth| / truth of energy, h2 or ar, in %
    "batch_records": (),                # how many record folders the run left
}
LIMIT_KEYS = ("min", "max", "equals", "one_of", "includes")
OPTIONAL_MEASURE_KEYS = ("name", "description", "after", "until_phase")


def exp_measure_takes_until(measure: str | None) -> bool:
    return measure == "plant_metric_delta"





@dataclass(frozen=True)
class Condition:
    t_s: float | None = None
    phase: str | None = None
    held: bool | None = None
    channel: str | None = None
    above: float | None = None
    below: float | None = None
    after: str | None = None           # another step's id: only once that step has fired
    after_s: float = 0.0               # plant seconds after the rest of the condition first held


@dataclass(frozen=True)
class Step:
    id: str
    kind: str                          # a fault kind, or "operator"
    at: Condition
    params: Mapping[str, Any] = field(default_factory=dict)
    duration_s: float | None = None    # plant seconds, then the fault is cleared (power restored, thawed)
    action: str | None = None          # operator steps


@dataclass(frozen=True)
class Expectation:
    name: str
    measure: str
    args: Mapping[str, Any]
    limits: Mapping[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Scenario:
    name: str
    source: pathlib.Path
    sha256: str
    description: str
    station: pathlib.Path
    recipe: pathlib.Path | None
    plant: str
    time_scale: float
    batch_id: str
    plant_params: Mapping[str, float]
    meter_start: Mapping[str, float]    # instrument -> its counter's reading when the rig starts
    meter_gain: Mapping[str, float]     # instrument -> how much it reads high (1.01) or low: its accuracy
    feed: str                           # what the batch record says was loaded
    mass_in_kg: float | None
    relay_timeout_s: float
    relay_outputs: tuple[str, ...]
    log_every_s: float
    scan_s: float
    until: str
    until_phase: str | None
    until_after: str | None            # the end condition counts only once this step has fired
    max_plant_s: float
    settle_s: float
    steps: tuple[Step, ...]
    expectations: tuple[Expectation, ...]


class _Reader:
    """Collects every problem with its key path instead of stopping at the first."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[SpecError] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(SpecError(self.source, path, message))

    def table(self, parent: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> dict[str, Any]:
        value = parent.get(key)
        if value is None:
            if required:
                self.error(path, f"missing table [{path}]")
            return {}
        if not isinstance(value, dict):
            self.error(path, f"expected a table, got {describe(value)}")
            return {}
        return value

    def keys(self, table: Mapping[str, Any], path: str, allowed: Sequence[str]) -> None:
        for key in table:
            if key not in allowed:
                self.error(f"{path}.{key}" if path else key, unknown("key", key, allowed))

    def number(self, table: Mapping[str, Any], key: str, path: str, default: float | None = None, *,
               low: float = -math.inf, high: float = math.inf) -> float | None:
        value = table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.error(f"{path}.{key}" if path else key, f"expected a number, got {describe(value)}")
            return default
        if not low <= value <= high:
            self.error(f"{path}.{key}" if path else key, f"must be within {low:g} .. {high:g}, got {value:g}")
            return default
        return float(value)

    def text(self, table: Mapping[str, Any], key: str, path: str, default: str | None = None) -> str | None:
        value = table.get(key, default)
        if value is not None and not isinstance(value, str):
            self.error(f"{path}.{key}" if path else key, f"expected a string, got {describe(value)}")
            return default
        return value


def load_scenario(path: str | pathlib.Path) -> Scenario:
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    return parse_scenario(text, path)


def parse_scenario(text: str, path: pathlib.Path) -> Scenario:
    source = str(path)
    raw = parse_toml(text, source)
    r = _Reader(source)
    r.keys(raw, "", ("scenario", "plant", "rig", "run", "faults", "operator", "expect"))
    head = r.table(raw, "scenario", "scenario", required=True)
    r.keys(head, "scenario", ("name", "description", "station", "recipe", "plant", "time_scale", "batch_id", "feed",
                              "mass_in_kg"))
    name = r.text(head, "name", "scenario", path.stem) or path.stem
    station_path, station = _station(r, head, path)
    recipe_path = _recipe(r, head, path, station)
    kind = r.text(head, "plant", "scenario", station.identity.kind if station else None)
    if kind is not None and kind not in PLANTS:
        r.error("scenario.plant", unknown("plant", kind, PLANTS))
        kind = None
    elif kind is None and station is not None:
        r.error("scenario.plant", f"station kind {station.identity.kind!r} has no plant model; name one "
                f"(known: {', '.join(PLANTS)})")
    # the rig keeps the controller's dead-man at its wall-clock value (x time_scale on the plant clock);
    # the core accepts at most 3600 s, and the controller does not keep up with its scan beyond ~1500x
    scale = r.number(head, "time_scale", "scenario", 1.0, low=1.0, high=MAX_TIME_SCALE) or 1.0

    plant_params: dict[str, float] = {}
    params = r.table(raw, "plant", "plant")
    if kind is not None:
        allowed = [f.name for f in dataclasses.fields(PLANTS[kind].params_type)]
        r.keys(params, "plant", allowed)
        for key in params:
            if key in allowed:
                value = r.number(params, key, "plant")
                if value is not None:
                    plant_params[key] = value

    rig = r.table(raw, "rig", "rig")
    r.keys(rig, "rig", ("relay_timeout_ms", "relay_outputs", "log_every_s", "scan_s", "meter_start", "meter_gain"))
    meter_start: dict[str, float] = {}
    meter_gain: dict[str, float] = {}
    for table_key, found, low, high in (("meter_start", meter_start, 0.0, 1e12), ("meter_gain", meter_gain, 0.5, 1.5)):
        table = r.table(rig, table_key, f"rig.{table_key}")
        for key in table:
            value = r.number(table, key, f"rig.{table_key}", None, low=low, high=high)
            if station and key not in station.instruments:
                r.error(f"rig.{table_key}.{key}", unknown("instrument", key, list(station.instruments)))
            elif value is not None:
                found[key] = value
    outputs = {o.name for o in station.core.outputs} if station else set()
    default_relay = [o for o in ("heater", "h2_inlet_valve") if o in outputs] if station else []
    relay_outputs = rig.get("relay_outputs", default_relay)
    if not isinstance(relay_outputs, list) or not all(isinstance(o, str) for o in relay_outputs):
        r.error("rig.relay_outputs", f"expected a list of output names, got {describe(relay_outputs)}")
        relay_outputs = []
    for i, o in enumerate(relay_outputs):
        if station and o not in outputs:
            r.error(f"rig.relay_outputs[{i}]", unknown("output", o, sorted(outputs)))

    run = r.table(raw, "run", "run", required=True)
    r.keys(run, "run", ("until", "phase", "after", "max_plant_h", "settle_s"))
    until = r.text(run, "until", "run", "batch_end") or "batch_end"
    if until not in UNTIL:
        r.error("run.until", unknown("end condition", until, UNTIL))
    until_phase = r.text(run, "phase", "run")
    if until == "phase" and until_phase is None:
        r.error("run.phase", "run.until = \"phase\" needs the phase to run until")
    max_h = r.number(run, "max_plant_h", "run", None, low=0.001, high=1000.0)
    if max_h is None and "max_plant_h" not in run:
        r.error("run.max_plant_h", "missing: the longest the scenario may run, in plant hours")
    ctx = _Context(station=station, kind=kind)
    steps = _steps(r, raw, ctx)
    until_after = r.text(run, "after", "run")
    if until_after is not None and until_after not in {s.id for s in steps}:
        r.error("run.after", unknown("step", until_after, [s.id for s in steps]))
    expectations = _expectations(r, raw, ctx, {s.id for s in steps})
    if not expectations:
        r.error("expect", "a scenario needs at least one [[expect]]")
    if r.errors:
        raise SpecError.several(r.errors)
    assert station_path is not None and kind is not None
    return Scenario(
        name=name, source=path, sha256=hashlib.sha256(text.encode()).hexdigest(),
        description=r.text(head, "description", "scenario", "") or "", station=station_path, recipe=recipe_path,
        plant=kind, time_scale=scale, batch_id=r.text(head, "batch_id", "scenario", f"hil-{name}") or name,
        plant_params=plant_params, meter_start=meter_start, meter_gain=meter_gain,
        feed=r.text(head, "feed", "scenario", "") or "",
        mass_in_kg=r.number(head, "mass_in_kg", "scenario", None, low=0.001, high=1e5),
        relay_timeout_s=(r.number(rig, "relay_timeout_ms", "rig", 500.0, low=10.0, high=60_000.0) or 500.0) / 1e3,
        relay_outputs=tuple(relay_outputs),
        log_every_s=r.number(rig, "log_every_s", "rig", 10.0, low=0.1, high=3600.0) or 10.0,
        scan_s=r.number(rig, "scan_s", "rig", 1.0, low=0.1, high=60.0) or 1.0, until=until, until_phase=until_phase,
        until_after=until_after,
        max_plant_s=(max_h or 1.0) * 3600.0, settle_s=r.number(run, "settle_s", "run", 0.0, low=0.0) or 0.0,
        steps=tuple(steps), expectations=tuple(expectations))


@dataclass
class _Context:
    station: Any
    kind: str | None

    def channels(self) -> list[str]:
        return [c.name for c in self.station.core.channels] if self.station else []

    def outputs(self) -> list[str]:
        return [o.name for o in self.station.core.outputs] if self.station else []

    def rules(self) -> list[str]:
        return [r.name for r in self.station.core.rules] if self.station else []

    def devices(self) -> list[str]:
        return list(self.station.instruments) if self.station else []


def _station(r: _Reader, head: Mapping[str, Any], path: pathlib.Path) -> tuple[pathlib.Path | None, Any]:
    rel = r.text(head, "station", "scenario")
    if rel is None:
        if "station" not in head:
            r.error("scenario.station", "missing: the station file to run (relative to this file)")
        return None, None
    station_path = scenario_reference(path, rel)
    try:
        return station_path, load_station(station_path)
    except SpecError as exc:
        r.error("scenario.station", f"{rel}: the station file has problems:\n{exc}")
    except OSError as exc:
        r.error("scenario.station", f"{rel}: cannot read: {exc.strerror or exc}")
    return None, None


def _recipe(r: _Reader, head: Mapping[str, Any], path: pathlib.Path, station: Any) -> pathlib.Path | None:
    rel = r.text(head, "recipe", "scenario")
    if rel is None:
        return None
    recipe_path = scenario_reference(path, rel)
    try:
        load_recipe(recipe_path)
    except SpecError as exc:
        r.error("scenario.recipe", f"{rel}: the recipe has problems:\n{exc}")
    except OSError as exc:
        r.error("scenario.recipe", f"{rel}: cannot read: {exc.strerror or exc}")
    return recipe_path


def _condition(r: _Reader, raw: Any, path: str, ctx: _Context, step_ids: Sequence[str]) -> Condition:
    if not isinstance(raw, dict):
        r.error(path, f"expected a table like {{ phase = \"absorption\", after_s = 600 }}, got {describe(raw)}")
        return Condition()
    r.keys(raw, path, CONDITION_KEYS)
    channel = r.text(raw, "channel", path)
    if channel is not None and ctx.station and channel not in ctx.channels():
        r.error(f"{path}.channel", unknown("channel", channel, ctx.channels()))
    if channel is not None and "above" not in raw and "below" not in raw:
        r.error(f"{path}.channel", "a channel condition needs above = or below =")
    after = r.text(raw, "after", path)
    if after is not None and after not in step_ids:
        r.error(f"{path}.after", unknown("step", after, step_ids) if step_ids else "no earlier step to follow")
    held = raw.get("held")
    if held is not None and not isinstance(held, bool):
        r.error(f"{path}.held", f"expected true or false, got {describe(held)}")
        held = None
    cond = Condition(t_s=r.number(raw, "t_s", path, low=0.0), phase=r.text(raw, "phase", path), held=held,
                     channel=channel, above=r.number(raw, "above", path), below=r.number(raw, "below", path),
                     after=after, after_s=r.number(raw, "after_s", path, 0.0, low=0.0) or 0.0)
    if not raw:
        r.error(path, "an empty condition: say when (t_s, phase, held, channel, after)")
    return cond


def _steps(r: _Reader, raw: Mapping[str, Any], ctx: _Context) -> list[Step]:
    steps: list[Step] = []
    ids: list[str] = []
    for section in ("faults", "operator"):
        items = raw.get(section, [])
        if not isinstance(items, list):
            r.error(section, f"expected [[{section}]] tables, got {describe(items)}")
            continue
        for i, item in enumerate(items):
            path = f"{section}[{i}]"
            if not isinstance(item, dict):
                r.error(path, f"expected a table, got {describe(item)}")
                continue
            step = _fault(r, item, path, ctx, ids) if section == "faults" else _operator(r, item, path, ctx, ids)
            if step is not None:
                if step.id in ids:
                    r.error(f"{path}.id", f"step id {step.id!r} is used twice")
                ids.append(step.id)
                steps.append(step)
    return steps


def _fault(r: _Reader, item: Mapping[str, Any], path: str, ctx: _Context, ids: Sequence[str]) -> Step | None:
    kind = r.text(item, "kind", path)
    physical = PLANTS[ctx.kind].faults if ctx.kind else {}
    known = [*physical, *RIG_FAULTS]
    if kind is None:
        r.error(f"{path}.kind", f"missing: one of {', '.join(known)}")
        return None
    if kind not in known:
        r.error(f"{path}.kind", unknown("fault", kind, known))
        return None
    param = physical[kind].param if kind in physical else None
    params_needed: dict[str, bool] = {param: True} if param is not None else dict(RIG_FAULTS.get(kind, {}))
    r.keys(item, path, ("kind", "id", "at", "duration_s", *params_needed))
    params: dict[str, Any] = {}
    for key, required in params_needed.items():
        if key not in item:
            if required:
                r.error(f"{path}.{key}", f"missing: the {kind} fault needs {key}")
            continue
        value = item[key]
        if key == "channel" and ctx.station and value not in ctx.channels():
            r.error(f"{path}.channel", unknown("channel", str(value), ctx.channels()))
        elif key == "device" and ctx.station and value not in ctx.devices():
            r.error(f"{path}.device", unknown("serial device", str(value), ctx.devices())
                    if ctx.devices() else "the station has no serial instruments ([instruments.NAME])")
        elif key == "output" and ctx.station and value not in ctx.outputs():
            r.error(f"{path}.output", unknown("output", str(value), ctx.outputs()))
        elif key not in ("channel", "output", "device"):
            value = r.number(item, key, path)
        params[key] = value
    if "at" not in item:
        r.error(f"{path}.at", "missing: when the fault happens, e.g. at = { t_s = 600 }")
    duration = r.number(item, "duration_s", path, None, low=0.0)
    if kind in ("process_freeze", "power_loss") and duration is None:
        r.error(f"{path}.duration_s", f"missing: how long the {kind} lasts, in plant seconds")
    step_id = r.text(item, "id", path, kind) or kind
    return Step(step_id, kind, _condition(r, item.get("at", {"t_s": 0}), f"{path}.at", ctx, ids), params, duration)


def _operator(r: _Reader, item: Mapping[str, Any], path: str, ctx: _Context, ids: Sequence[str]) -> Step | None:
    r.keys(item, path, ("action", "id", "at"))
    action = r.text(item, "action", path)
    if action not in OPERATOR_ACTIONS:
        r.error(f"{path}.action", unknown("operator action", str(action), OPERATOR_ACTIONS))
        return None
    if "at" not in item:
        r.error(f"{path}.at", "missing: when the operator acts")
    step_id = r.text(item, "id", path, f"{action}_{len(ids)}") or action
    return Step(step_id, "operator", _condition(r, item.get("at", {"t_s": 0}), f"{path}.at", ctx, ids), {},
                None, action)


def _expectations(r: _Reader, raw: Mapping[str, Any], ctx: _Context, step_ids: set[str]) -> list[Expectation]:
    out: list[Expectation] = []
    items = raw.get("expect", [])
    if not isinstance(items, list):
        r.error("expect", f"expected [[expect]] tables, got {describe(items)}")
        return out
    names: set[str] = set()
    for i, item in enumerate(items):
        path = f"expect[{i}]"
        if not isinstance(item, dict):
            r.error(path, f"expected a table, got {describe(item)}")
            continue
        measure = r.text(item, "measure", path)
        if measure not in MEASURES:
            r.error(f"{path}.measure", unknown("measurement", str(measure), MEASURES))
            continue
        needs = MEASURES[measure]
        r.keys(item, path, ("measure", *needs, *LIMIT_KEYS, *OPTIONAL_MEASURE_KEYS))
        args: dict[str, Any] = {}
        for key in needs:
            if key not in item:
                r.error(f"{path}.{key}", f"missing: {measure} needs {key}")
                continue
            args[key] = item[key]
        _check_args(r, path, args, ctx, step_ids)
        if "until_phase" in item:
            if exp_measure_takes_until(measure):
                args["until_phase"] = item["until_phase"]
            else:
                r.error(f"{path}.until_phase", f"does not apply to {measure}")
        if "after" in item:
            if item["after"] not in step_ids:
                r.error(f"{path}.after", unknown("step", str(item["after"]), sorted(step_ids)))
            args["after"] = item["after"]
        limits = {k: item[k] for k in LIMIT_KEYS if k in item}
        if not limits:
            r.error(path, f"no limit: give one of {', '.join(LIMIT_KEYS)}")
        for key in ("min", "max"):
            if key in limits:
                r.number(item, key, path)
        for key in ("one_of", "includes"):
            if key in limits and not isinstance(limits[key], list):
                r.error(f"{path}.{key}", f"expected a list, got {describe(limits[key])}")
        name = str(item.get("name") or ".".join([str(measure), *[str(v) for v in args.values()]]))
        if name in names:
            r.error(f"{path}.name", f"measurement name {name!r} is used twice: name one of them")
        names.add(name)
        out.append(Expectation(name, str(measure), args, limits, str(item.get("description", ""))))
    return out


def _check_args(r: _Reader, path: str, args: Mapping[str, Any], ctx: _Context, step_ids: set[str]) -> None:
    checks = {"rule": ("interlock", ctx.rules()), "output": ("output", ctx.outputs()),
              "channel": ("channel", ctx.channels()), "step": ("step", sorted(step_ids)),
              "meter": ("metered quantity", ["energy", "h2", "ar"])}
    for key, value in args.items():
        if key in checks and (ctx.station or key in ("step", "meter")):
            what, known = checks[key]
            if value not in known:
                r.error(f"{path}.{key}", unknown(what, str(value), known))
