"""Scenario files (``hil/scenarios/*.toml``): what to run, what to break, and what must follow.

The format is described in ``hil/README.md``. A scenario is read and checked completely before
anything starts: every problem is reported with the file and key path (``faults[2].at.phase``)
and a "did you mean", and a scenario with a problem never starts a rig.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.spec.reader import (
    Problems,
    SpecError,
    Table,
    boolean,
    choice,
    describe,
    integer_in,
    join,
    list_of,
    number,
    number_in,
    parse_toml,
    read_text,
    string,
    unknown,
)
from edge.spec.recipe_reader import load_recipe
from edge.spec.station import Station, load_station
from hil.plants import PLANTS
from hil.resources import scenario_reference

# controller and rig faults, the same for every plant; each with its parameters (name -> required)
RIG_FAULTS: dict[str, dict[str, bool]] = {
    "tc_open": {"channel": True},
    "sensor_drift": {"channel": True, "rate_per_min": False, "offset": False},
    "tc_offset": {"channel": True, "offset_c": True},      # a thermocouple reading off by a fixed amount
    "tc_drift": {"channel": True, "c_per_min": True},      # a thermocouple drifting from the moment it fires
    "relay_welded": {},                                    # the watchdog relay's contact and aux contact stay closed
    "valve_stuck": {"output": True, "level": False},
    "serial_garbage": {"device": False, "bytes": False},
    "gauge_silent": {"device": False},
    "meter_silent": {"device": True},                     # a Modbus meter stops answering (until cleared)
    "meter_crc_burst": {"device": True, "answers": False},  # its bus's next n answers arrive corrupted
    "controller_hang": {},
    "process_freeze": {},
    "power_loss": {},
}
OPERATOR_ACTIONS = ("hold", "resume", "abort", "skip", "limiter_reset")   # limiter_reset: at the cabinet
MAX_TIME_SCALE = 1500.0
CLOCKS = ("realtime", "lockstep")   # [rig] clock: the plant on the wall clock, or stepped with the controller
#: what only the real-time rig can do: signal the controller's process, or act on a serial line (a pty). A power
#: loss is on both: the lockstep rig drops the controller and its core where they stand (``hil.lockstep_rig``)
REALTIME_FAULTS = ("controller_hang", "process_freeze", "serial_garbage", "gauge_silent",
                   "meter_silent", "meter_crc_burst")
WALL_CLOCK_MEASURES = ("safe_latency_ms", "relay_latency_ms")   # wall-clock latencies: no meaning in lockstep
CONDITION_KEYS = ("t_s", "phase", "held", "channel", "quantity", "above", "below", "after", "after_s", "delay_s",
                  "trip")
UNTIL = ("batch_end", "batch_record", "phase", "time")
MEASURES: dict[str, tuple[str, ...]] = {   # measure -> the keys it needs besides its limits
    "batch_outcome": (), "final_phase": (), "phases": (), "phases_after": ("step",),
    "first_trip": (), "trip_count": (), "trips": (),
    "safe_latency_ms": ("rule",), "trip_plant_s": ("rule", "step"),
    "relay_latency_ms": ("step",), "relay_dropped": (), "written_safe_at_relay_drop": ("step",),
    "final_output": ("output",), "written_output": ("output",),
    "max_channel": ("channel",), "min_channel": ("channel",),
    "max_true": ("quantity",), "min_true": ("quantity",),     # over the plant's true values (every plant step)
    "plant_metric": ("metric",), "plant_metric_delta": ("metric", "step"),   # until_phase optional: else to the end
    "controller_restarts": (), "instrument_counter": ("device", "counter"), "recovered_outage_s": (),
    "recovered_outage_gap_s": (),       # the controller's outage minus the rig's (power loss to recovery, plant s)
    "batch_record": ("path",),          # a field of the batch record (a list gives its length)
    "metered_error_pct": ("meter",),    # |metered - plant truth| / truth of energy, h2 or ar, in %
    "batch_records": (),                # how many record folders the run left
    "output_on_s": ("output",),         # plant seconds an output was on (level: effective | written)
    "output_off_s": ("output",),        # ... and off (e.g. a beacon that must stay on after a trip)
    "batch_rejected": (),               # why the controller refused to start the batch ("" if it did not)
    "held": (),                         # the recipe held at the end (the controller's last status)
    "abort_reason": (),                 # the sequence's reason for aborting, in words ("none" if it did not)
    "core_fault": (),                   # the core's first CORE FAULT, in words ("none" if there was none)
    "step_plant_s": ("step", "to"),     # plant seconds from one step (fault, operator, mark) to another that follows it
}
LIMIT_KEYS = ("min", "max", "equals", "one_of", "includes", "contains")   # contains: a substring of a text
OPTIONAL_MEASURE_KEYS = ("name", "description", "after", "before", "until_phase", "level")
# measures that take `before` besides `after`
WINDOWED = ("max_channel", "min_channel", "max_true", "min_true", "output_on_s", "output_off_s")
ON_LEVELS = ("effective", "written")   # output_on_s: as the plant's device felt it, or as the core wrote it


def exp_measure_takes_until(measure: str | None) -> bool:
    return measure == "plant_metric_delta"





@dataclass(frozen=True)
class Condition:
    t_s: float | None = None
    phase: str | None = None
    held: bool | None = None
    channel: str | None = None
    quantity: str | None = None        # a plant's true value (``hil.plants`` ``true_values()``), not a channel
    above: float | None = None
    below: float | None = None
    after: str | None = None           # another step's id: only once that step has fired
    after_s: float = 0.0               # plant seconds after the rest of the condition first held
    delay_s: float = 0.0               # plant seconds after the ``after`` step fired
    trip: str | None = None            # an interlock: once the controller reported it tripped (a mark at a trip)


@dataclass(frozen=True)
class Step:
    id: str
    kind: str                          # a fault kind, "operator" or "mark"
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
    clock: str                          # "realtime" (the default) or "lockstep"
    meter_start: Mapping[str, float]    # instrument -> its counter's reading when the rig starts
    meter_gain: Mapping[str, float]     # instrument -> how much it reads high (1.01) or low: its accuracy
    feed: str                           # what the batch record says was loaded
    mass_in_kg: float | None
    relay_timeout_s: float
    relay_outputs: tuple[str, ...]
    log_every_s: float
    scan_s: float
    max_lag_s: float                   # the controller may scan at most this late (plant s) before the run fails
    until: str
    until_phase: str | None
    until_after: str | None            # the end condition counts only once this step has fired
    until_revision: int                # until = "batch_record": the batch ended and its record reached this revision
    max_plant_s: float
    settle_s: float
    steps: tuple[Step, ...]
    expectations: tuple[Expectation, ...]


#: plant seconds a scan may come late (hil/lag.py) before the run fails: past that the physics is no longer
#: the controller's doing (hil/README.md, "The controller's lag", has the lags measured on a loaded machine)
DEFAULT_MAX_LAG_S = 120.0

# in file order, for the report
SECTIONS = ("scenario", "plant", "rig", "run", "marks", "faults", "operator", "expect")


def load_scenario(path: str | pathlib.Path) -> Scenario:
    path = pathlib.Path(path)
    return parse_scenario(read_text(path, "scenario file"), path)


def _table(parent: Table, key: str, *, required: bool = False) -> Table:
    """A sub-table to read; missing or not a table (reported) reads as an empty one, so reading goes on."""
    found = parent.table(key, required=required, expected=f"the [{join(parent.path, key)}] table")
    return found if found is not None else parent.sub({}, f".{key}" if parent.path else key)


def parse_scenario(text: str, path: pathlib.Path) -> Scenario:
    source = str(path)
    raw = parse_toml(text, source)
    problems = Problems(source)
    top = Table(problems, raw, "", noun="section")
    head = _table(top, "scenario", required=True)
    name = head.get("name", string, path.stem) or path.stem
    station_path, station = _station(head, path)
    recipe_path = _recipe(head, path)
    station_kind: str | None = station.identity.kind if station else None
    kind = head.get("plant", string, station_kind)
    if kind is not None and head.has_error("plant"):
        kind = None
    elif kind is not None and kind not in PLANTS:
        head.report("plant", unknown("plant", kind, PLANTS))
        kind = None
    elif kind is None and station is not None:
        head.report("plant", f"station kind {station.identity.kind!r} has no plant model; name one "
                    f"(known: {', '.join(PLANTS)})")
    # the rig keeps the controller's dead-man at its wall-clock value (x time_scale on the plant clock);
    # the core accepts at most 3600 s, and the controller does not keep up with its scan beyond ~1500x
    scale = head.get("time_scale", number_in(1.0, MAX_TIME_SCALE), 1.0)
    rig = _table(top, "rig")
    clock = rig.get("clock", choice(CLOCKS), "realtime")
    lockstep = clock == "lockstep"
    if lockstep and head.has("time_scale"):
        head.report("time_scale", "a lockstep scenario (rig.clock = \"lockstep\") has no time scale: it runs as "
                    "fast as the machine steps it")
    description = head.get("description", string, "")
    batch_id = head.get("batch_id", string, f"hil-{name}") or name
    feed = head.get("feed", string, "")
    mass_in_kg = head.get("mass_in_kg", number_in(0.001, 1e5))

    plant_params: dict[str, float] = {}
    params = _table(top, "plant")
    if kind is not None:
        allowed = [f.name for f in dataclasses.fields(PLANTS[kind].params_type)]
        params.accept(*allowed)
        for key in params.data:
            if key in allowed:
                value = params.get(key, number)
                if value is not None:
                    plant_params[key] = value
        params.finish()

    meter_start: dict[str, float] = {}
    meter_gain: dict[str, float] = {}
    for table_key, found, low, high in (("meter_start", meter_start, 0.0, 1e12), ("meter_gain", meter_gain, 0.5, 1.5)):
        meters = _table(rig, table_key)
        for key in meters.data:
            value = meters.get(key, number_in(low, high))
            if station and key not in station.instruments:
                meters.report(key, unknown("instrument", key, list(station.instruments)))
            elif value is not None:
                found[key] = value
    outputs = [o.name for o in station.core.outputs] if station else []
    default_relay: list[str] = [o for o in ("heater", "h2_inlet_valve") if o in outputs]
    relay_outputs = rig.get("relay_outputs", list_of(string, "output names", max_len=64, unique=False),
                            default_relay)
    for i, o in enumerate(relay_outputs):
        if station and o not in outputs:
            problems.add(f"rig.relay_outputs[{i}]", unknown("output", o, sorted(outputs)))
    relay_timeout_ms = rig.get("relay_timeout_ms", number_in(10.0, 60_000.0), 500.0)
    for key, why in (("relay_timeout_ms", "the watchdog relay is judged on the plant's clock, one step at a time"),
                     ("max_lag_s", "the controller scans on the plant's clock: it cannot fall behind")):
        if lockstep and rig.has(key):
            rig.report(key, f"applies to the real-time rig only (rig.clock = \"lockstep\": {why})")
    log_every_s = rig.get("log_every_s", number_in(0.1, 3600.0), 10.0)
    scan_s = rig.get("scan_s", number_in(0.1, 60.0), 1.0)
    max_lag_s = rig.get("max_lag_s", number_in(0.0, 3600.0), DEFAULT_MAX_LAG_S)
    rig.finish()

    run = _table(top, "run", required=True)
    until = run.get("until", choice(UNTIL), "batch_end")
    until_phase = run.get("phase", string)
    if until == "phase" and until_phase is None and not run.has_error("phase"):
        run.report("phase", "run.until = \"phase\" needs the phase to run until")
    until_revision = run.get("revision", integer_in(1, 1000), 1)
    if run.has("revision") and until != "batch_record":
        run.report("revision", "applies to run.until = \"batch_record\" only")
    max_h = run.need("max_plant_h", number_in(0.001, 1000.0), "the longest the scenario may run, in plant hours")
    settle_s = run.get("settle_s", number_in(0.0), 0.0)
    ctx = _Context(station=station, kind=kind, clock=clock)
    steps = _steps(top, ctx)
    until_after = run.get("after", string)
    if until_after is not None and until_after not in {s.id for s in steps}:
        run.report("after", unknown("step", until_after, [s.id for s in steps]))
    run.finish()
    expectations = _expectations(top, ctx, {s.id for s in steps})
    if not expectations and not top.has_error("expect"):
        top.report("expect", "a scenario needs at least one [[expect]]")
    head.finish()
    top.finish()
    problems.raise_if_any(SECTIONS)
    assert station_path is not None and kind is not None
    return Scenario(
        name=name, source=path, sha256=hashlib.sha256(text.encode()).hexdigest(), description=description,
        station=station_path, recipe=recipe_path, plant=kind, time_scale=scale, batch_id=batch_id,
        plant_params=plant_params, clock=clock, meter_start=meter_start, meter_gain=meter_gain, feed=feed,
        mass_in_kg=mass_in_kg,
        relay_timeout_s=relay_timeout_ms / 1e3, relay_outputs=tuple(relay_outputs), log_every_s=log_every_s,
        scan_s=scan_s, max_lag_s=max_lag_s, until=until, until_phase=until_phase, until_after=until_after,
        until_revision=until_revision,
        max_plant_s=(max_h or 1.0) * 3600.0, settle_s=settle_s, steps=tuple(steps), expectations=tuple(expectations))


@dataclass
class _Context:
    station: Station | None
    kind: str | None
    clock: str = "realtime"

    def channels(self) -> list[str]:
        return [c.name for c in self.station.core.channels] if self.station else []

    def digital_channels(self) -> list[str]:
        return [c.name for c in self.station.core.channels if c.kind == "digital"] if self.station else []

    def outputs(self) -> list[str]:
        return [o.name for o in self.station.core.outputs] if self.station else []

    def rules(self) -> list[str]:
        return [r.name for r in self.station.core.rules] if self.station else []

    def devices(self) -> list[str]:
        return list(self.station.instruments) if self.station else []

    def quantities(self) -> list[str]:
        return list(PLANTS[self.kind].true_quantities) if self.kind in PLANTS else []


def _station(head: Table, path: pathlib.Path) -> tuple[pathlib.Path | None, Station | None]:
    if not head.has("station"):
        head.report("station", "missing: the station file to run (relative to this file)")
        return None, None
    rel = head.get("station", string)
    if rel is None:
        return None, None
    station_path = scenario_reference(path, rel)
    try:
        return station_path, load_station(station_path)
    except SpecError as exc:
        head.report("station", f"{rel}: the station file has problems:\n{exc}")
    except OSError as exc:
        head.report("station", f"{rel}: cannot read: {exc.strerror or exc}")
    return None, None


def _recipe(head: Table, path: pathlib.Path) -> pathlib.Path | None:
    rel = head.get("recipe", string)
    if rel is None:
        return None
    recipe_path = scenario_reference(path, rel)
    try:
        load_recipe(recipe_path)
    except SpecError as exc:
        head.report("recipe", f"{rel}: the recipe has problems:\n{exc}")
    except OSError as exc:
        head.report("recipe", f"{rel}: cannot read: {exc.strerror or exc}")
    return recipe_path


def _when(t: Table, ctx: _Context, step_ids: Sequence[str], missing: str) -> Condition:
    """The step's ``at``: when it happens."""
    if not t.has("at"):
        t.report("at", f"missing: {missing}")
        return Condition(t_s=0.0)
    at = t.table("at", expected="a table like { phase = \"absorption\", after_s = 600 }")
    return _condition(at, ctx, step_ids) if at is not None else Condition()


def _condition(c: Table, ctx: _Context, step_ids: Sequence[str]) -> Condition:
    channel = c.get("channel", string)
    if channel is not None and ctx.station and channel not in ctx.channels():
        c.report("channel", unknown("channel", channel, ctx.channels()))
    elif channel is not None and channel in ctx.digital_channels():   # the runner sees the analog values only
        c.report("channel", f"{channel!r} is a digital input: a condition watches an analog channel or a true "
                            f"quantity (to follow what a contact reports, use the trip of its rule: trip = \"...\")")
    quantity = c.get("quantity", string)
    if quantity is not None and ctx.kind and quantity not in ctx.quantities():
        c.report("quantity", unknown(f"true quantity of {ctx.kind}", quantity, ctx.quantities()))
    if channel is not None and quantity is not None:
        c.report("quantity", "a condition watches a channel or a true quantity, not both")
    for key, name in (("channel", channel), ("quantity", quantity)):
        if name is not None and not c.has("above") and not c.has("below"):
            c.report(key, f"a {key} condition needs above = or below =")
    after = c.get("after", string)
    if after is not None and after not in step_ids:
        c.report("after", unknown("step", after, step_ids) if step_ids else "no step to follow")
    trip = c.get("trip", string)
    if trip is not None and ctx.station and trip not in ctx.rules():
        c.report("trip", unknown("interlock", trip, ctx.rules()))
    delay = c.get("delay_s", number_in(0.0), 0.0)
    if c.has("delay_s") and after is None and not c.has_error("after"):
        c.report("delay_s", "counts from the `after` step: name it (after = \"STEP_OR_MARK_ID\")")
    cond = Condition(t_s=c.get("t_s", number_in(0.0)), phase=c.get("phase", string), held=c.get("held", boolean),
                     channel=channel, quantity=quantity, above=c.get("above", number), below=c.get("below", number),
                     after=after, after_s=c.get("after_s", number_in(0.0), 0.0), delay_s=delay, trip=trip)
    if not c.data:
        c.report(None, "an empty condition: say when (t_s, phase, held, channel, quantity, after, trip)")
    c.finish()
    return cond


def _steps(top: Table, ctx: _Context) -> list[Step]:
    """Marks, faults and operator steps. Any may follow any other (``after``), whatever its section: the ids
    are gathered first; a step that waits on itself, directly or round a loop, is reported (it never fires)."""
    readers = {"marks": _mark, "faults": _fault, "operator": _operator}
    tables = [(section, t) for section in readers for t in _array_of_tables(top, section)]
    marks = sum(1 for section, _ in tables if section == "marks")
    ids = [_step_id(section, t, i - marks) for i, (section, t) in enumerate(tables)]   # operator_N: N as before
    steps: list[Step] = []
    seen: list[str] = []
    for (section, t), step_id in zip(tables, ids, strict=True):
        step = readers[section](t, ctx, ids, step_id)
        if step is not None:
            if step.id in seen:
                t.report("id", f"step id {step.id!r} is used twice")
            seen.append(step.id)
            steps.append(step)
    follows = {s.id: s.at.after for s in steps}
    for s in steps:
        at, hops = s.at.after, 0
        while at is not None and at != s.id and hops <= len(steps):
            at, hops = follows.get(at), hops + 1
        if at == s.id:
            top.problems.add(f"{s.id}.at.after", f"step {s.id!r} waits on itself (after = ...): it would never fire")
    return steps


def _step_id(section: str, t: Table, index: int) -> str:
    """The id a step will have (read again, with its checks, by the step's reader)."""
    value = t.data.get("id")
    if isinstance(value, str) and value:
        return value
    if section == "faults":
        return str(t.data.get("kind", ""))
    if section == "operator":
        return f"{t.data.get('action', '')}_{index}"
    return ""


def _mark(t: Table, ctx: _Context, ids: Sequence[str], default_id: str = "") -> Step | None:
    """A named moment, e.g. when h2_room first exceeds 10 %LEL: nothing is done, steps and measurements
    may follow it (``after = "ID"``)."""
    step_id = t.need("id", string, "the mark's name, for `after = \"ID\"`")
    at = _when(t, ctx, ids, "when it is reached, e.g. at = { channel = \"h2_room\", above = 10.0 }")
    t.finish()
    return None if step_id is None else Step(step_id, "mark", at)


def _array_of_tables(top: Table, section: str) -> list[Table]:
    """The [[section]] tables, each to be read at ``section[i]``; anything else is reported."""
    if not top.has(section):
        return []
    items = top.data[section]
    if not isinstance(items, list):
        top.report(section, f"expected [[{section}]] tables, got {describe(items)}")
        return []
    tables = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            tables.append(top.sub(item, f"{section}[{i}]"))
        else:
            top.problems.add(f"{section}[{i}]", f"expected a table, got {describe(item)}")
    return tables


def _fault(t: Table, ctx: _Context, ids: Sequence[str], default_id: str = "") -> Step | None:
    # without a plant (the station file failed, reported there) any plant's fault is taken: no follow-on error
    physical = PLANTS[ctx.kind].faults if ctx.kind else {k: f for p in PLANTS.values() for k, f in p.faults.items()}
    known = [*physical, *RIG_FAULTS]
    kind = t.need("kind", string, f"one of {', '.join(known)}")
    if kind is None:
        return None
    if kind not in known:
        t.report("kind", unknown("fault", kind, known))
        return None
    if ctx.clock == "lockstep" and kind in REALTIME_FAULTS:
        t.report("kind", f"{kind} needs the real-time rig (a controller process, a serial line): not in a lockstep "
                 "scenario (rig.clock = \"lockstep\")")
    param = physical[kind].param if kind in physical else None
    params_needed: dict[str, bool] = {param: True} if param is not None else dict(RIG_FAULTS.get(kind, {}))
    params: dict[str, Any] = {}
    names = {"channel": ("channel", ctx.channels()), "output": ("output", ctx.outputs()),
             "device": ("serial device", ctx.devices())}
    for key, required in params_needed.items():
        if not t.has(key):
            if required:
                t.report(key, f"missing: the {kind} fault needs {key}")
            continue
        if key in names:
            value: Any = t.get(key, string)
            what, known_names = names[key]
            if value is not None and ctx.station and value not in known_names:
                t.report(key, unknown(what, value, known_names) if known_names or key != "device"
                         else "the station has no serial instruments ([instruments.NAME])")
        else:
            value = t.get(key, number)
        params[key] = value
    duration = t.get("duration_s", number_in(0.0))
    if kind in ("process_freeze", "power_loss") and duration is None and not t.has_error("duration_s"):
        t.report("duration_s", f"missing: how long the {kind} lasts, in plant seconds")
    step_id = t.get("id", string, kind) or kind
    at = _when(t, ctx, ids, "when the fault happens, e.g. at = { t_s = 600 }")
    t.finish()
    return Step(step_id, kind, at, params, duration)


def _operator(t: Table, ctx: _Context, ids: Sequence[str], default_id: str = "") -> Step | None:
    action = t.need("action", choice(OPERATOR_ACTIONS), "the operator's action: " + ", ".join(OPERATOR_ACTIONS))
    step_id = t.get("id", string, default_id) or str(action)
    at = _when(t, ctx, ids, "when the operator acts")
    t.finish()
    return None if action is None else Step(step_id, "operator", at, {}, None, action)


def _expectations(top: Table, ctx: _Context, step_ids: set[str]) -> list[Expectation]:
    out: list[Expectation] = []
    names: set[str] = set()
    for t in _array_of_tables(top, "expect"):
        measure = t.need("measure", string, "what to measure, one of " + ", ".join(MEASURES))
        if measure is None:
            continue
        if measure not in MEASURES:
            t.report("measure", unknown("measurement", measure, MEASURES))
            continue
        if ctx.clock == "lockstep" and measure in WALL_CLOCK_MEASURES:
            t.report("measure", f"{measure} is a wall-clock latency: a real-time scenario's measure, not a lockstep "
                     "one (rig.clock = \"lockstep\"; hil/README.md, \"The two clocks\")")
        args: dict[str, Any] = {}
        for key in MEASURES[measure]:
            if not t.has(key):
                t.report(key, f"missing: {measure} needs {key}")
                continue
            args[key] = t.data[key]
        _check_args(t, args, ctx, step_ids)
        if t.has("until_phase"):
            if exp_measure_takes_until(measure):
                args["until_phase"] = t.data["until_phase"]
            else:
                t.report("until_phase", f"does not apply to {measure}")
        if t.has("level"):
            if measure in ("output_on_s", "output_off_s"):
                args["level"] = t.get("level", choice(ON_LEVELS), "effective")
            else:
                t.report("level", f"does not apply to {measure} (only to output_on_s, output_off_s)")
        for key in ("after", "before"):
            if not t.has(key):
                continue
            if key == "before" and measure not in WINDOWED:
                t.report(key, f"does not apply to {measure} (only to {', '.join(WINDOWED)})")
            elif t.data[key] not in step_ids:
                t.report(key, unknown("step or mark", str(t.data[key]), sorted(step_ids)))
            args[key] = t.data[key]
        limits = {k: t.data[k] for k in LIMIT_KEYS if t.has(k)}
        if not limits:
            t.report(None, f"no limit: give one of {', '.join(LIMIT_KEYS)}")
        for key in ("min", "max"):
            t.get(key, number)
        for key in ("one_of", "includes"):
            t.get(key, list_of(_as_is, "values", max_len=1000, unique=False))
        t.get("contains", string)
        name = t.get("name", string) or ".".join([measure, *[str(v) for v in args.values()]])
        if name in names:
            t.report("name", f"measurement name {name!r} is used twice: name one of them")
        names.add(name)
        out.append(Expectation(name, measure, args, limits, t.get("description", string, "")))
        t.finish()
    return out


def _as_is(value: object) -> object:
    return value


def _check_args(t: Table, args: Mapping[str, Any], ctx: _Context, step_ids: set[str]) -> None:
    checks = {"rule": ("interlock", ctx.rules()), "output": ("output", ctx.outputs()),
              "channel": ("channel", ctx.channels()), "step": ("step", sorted(step_ids)),
              "to": ("step or mark", sorted(step_ids)),
              "meter": ("metered quantity", ["energy", "h2", "ar"]), "quantity": ("true quantity", ctx.quantities())}
    for key, value in args.items():
        if key in checks and (ctx.station or key in ("step", "to", "meter") or (key == "quantity" and ctx.kind)):
            what, known = checks[key]
            if value not in known:
                t.report(key, unknown(what, str(value), known))
