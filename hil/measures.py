"""The scenario runner's measurements (``hil.runner``): each expectation of a scenario turned into a value with
its unit and a note, from what the run observed (``Run``) and the plant's log rows, and judged against its limits."""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hil.scenario import Expectation

if TYPE_CHECKING:
    from hil.runner import Fired, Run

FINAL = ("done", "aborted")


def phase_of(run: Run) -> str | None:
    return run.phases[-1]["phase"] if run.phases else run.status.get("phase")


def read_rows(path: pathlib.Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


def measure(run: Run, rows: Sequence[dict[str, Any]], exp: Expectation) -> tuple[Any, str, str]:
    """(value, unit, note) of one expectation's measurement; value None when it could not be measured."""
    a = exp.args
    for key in ("after", "step", "to"):
        if key in a and a[key] not in run.fired:
            return None, "", f"step {a[key]!r} never fired: nothing to measure after it"
    after = run.fired.get(a["after"]) if "after" in a else None
    m = exp.measure
    plant_events = run.final.get("events", [])
    if m == "batch_outcome":
        phase = phase_of(run)
        return (phase if phase in FINAL else "running" if phase else "not started"), "", ""
    if m == "final_phase":
        return phase_of(run), "", ""
    if m == "phases":
        return [p["phase"] for p in run.phases], "", ""
    if m == "phases_after":
        step = run.fired.get(a["step"])
        return ([p["phase"] for p in run.phases if p["wall_ns"] >= step.wall_ns] if step else None), "", ""
    trips = [tr for tr in run.trips if after is None or tr["wall_ns"] >= after.wall_ns]
    if m == "first_trip":
        first = next((tr for tr in trips if tr["first_out"]), trips[0] if trips else None)
        return (first["rule"] if first else "none"), "", ""
    if m == "trip_count":
        return len(trips), "", ""
    if m == "trips":
        return sorted({tr["rule"] for tr in trips}), "", ""
    if m == "safe_latency_ms":
        return _safe_latency(run, exp)
    if m == "trip_plant_s":
        step = run.fired.get(a["step"])
        trip = next((tr for tr in run.trips if tr["rule"] == a["rule"] and step and tr["wall_ns"] >= step.wall_ns),
                    None)
        if step is None or trip is None:
            return None, "s", "no such trip after the step"
        return round(float(trip["t_s"]) - step.t_s, 3), "s", "plant time from the fault to the trip"
    if m == "step_plant_s":
        start, end = run.fired[a["step"]], run.fired[a["to"]]
        if end.wall_ns < start.wall_ns:
            return None, "s", f"{a['to']!r} fired before {a['step']!r}"
        return round(end.t_s - start.t_s, 3), "s", f"plant time from {a['step']} to {a['to']}"
    if m in ("relay_latency_ms", "relay_dropped", "written_safe_at_relay_drop"):
        step = run.fired.get(a.get("step", a.get("after", "")))
        drops = [e for e in plant_events if e["kind"] == "relay" and "dropped" in e["message"]
                 and (step is None or e["wall_ns"] >= step.wall_ns)]
        if m == "relay_dropped":
            return bool(drops), "", ""
        if not drops:
            return None, "ms" if m == "relay_latency_ms" else "", "the relay did not drop"
        if m == "relay_latency_ms":
            assert step is not None
            return (round((drops[0]["wall_ns"] - step.wall_ns) / 1e6, 3), "ms",
                    f"wall clock; the relay's own {run.scenario.relay_timeout_s * 1e3:g} ms timeout, counted from the "
                    f"last edge of the watchdog line before the step")
        safe = {o.name: o.safe_level for o in run.station.core.outputs}
        return all(int(v) == safe[k] for k, v in drops[0].get("written", {}).items()), "", \
            "were the core's written levels already safe when the relay dropped"
    if m == "final_output":
        if a["output"] in {loop.output for loop in run.station.loops} and rows:
            mean = rows[-1]["out"].get(a["output"])      # burst fire: off at most instants even when heating
            note = "mean level over the last log row, as the plant saw it"
            return (None if mean is None else round(mean, 3)), "", note
        v = run.final.get("effective", {}).get(a["output"])
        return (None if v is None else round(v)), "", "what the plant sees (after relay and power)"
    if m == "written_output":
        v = run.final.get("written_now", {}).get(a["output"])
        return v, "", "what the core wrote"
    before = run.fired.get(a["before"]) if "before" in a else None
    if "before" in a and before is None:
        return None, "", f"step {a['before']!r} never fired: the window has no end"
    window = [r for r in rows
              if (after is None or r["t_s"] >= after.t_s) and (before is None or r["t_s"] <= before.t_s)]
    if m in ("output_on_s", "output_off_s"):
        return _on_time(rows, a, after, before, off=m == "output_off_s")
    if m in ("max_true", "min_true"):
        key = "true_max" if m == "max_true" else "true_min"   # each row holds the truth's extremes since the last
        values = [r.get(key, r.get("true", {})).get(a["quantity"]) for r in window]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        if not finite:
            return None, "", "no plant rows in the window"
        return (round(max(finite) if m == "max_true" else min(finite), 4), "",
                f"the plant's true {a['quantity']} over every plant step (not a published channel)")
    if m in ("max_channel", "min_channel"):
        key = "max" if m == "max_channel" else "min"     # each row holds the extremes of every step since the last
        values = [r.get(key, r["ch"]).get(a["channel"]) for r in window]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        unit = run.station.channel_units.get(a["channel"], "")
        if not finite:
            return None, unit, "no reading"
        return round(max(finite) if m == "max_channel" else min(finite), 4), unit, ""
    if m == "plant_metric":
        return run.final.get("metrics", {}).get(a["metric"]), "", "the plant's truth at the end"
    if m == "plant_metric_delta":
        return _metric_delta(run, rows, a)
    if m == "recovered_outage_s":
        outages = [e["data"]["outage_s"] for e in run.events
                   if e["kind"] == "recovery" and isinstance(e.get("data", {}).get("outage_s"), int | float)]
        return (round(outages[-1], 3) if outages else None), "s", "the outage the controller measured on recovery"
    if m == "recovered_outage_gap_s":
        # what the controller's outage holds beyond the rig's own measure of it (power loss to the recovery, on
        # the plant's clock, the controller's boot included): its last save before the power went, no more.
        # Unlike a bound on the outage itself, this does not depend on how long the boot took on this machine.
        recoveries = [e for e in run.events if e["kind"] == "recovery"
                      and isinstance(e.get("data", {}).get("outage_s"), int | float)]
        losses = [f.t_s for f in run.fired.values() if f.step.kind == "power_loss"]
        if not recoveries or not losses:
            return None, "s", "no power loss followed by a recovery"
        last = recoveries[-1]
        earlier = [t for t in losses if t <= float(last["t_s"])]
        if not earlier:
            return None, "s", "no power loss before the recovery"
        dark = float(last["t_s"]) - max(earlier)
        return (round(last["data"]["outage_s"] - dark, 3), "s",
                f"the controller's outage minus the rig's {dark:.1f} plant s from the power loss to the recovery")
    if m == "instrument_counter":
        counters = run.status.get("instruments", {}).get(a["device"])
        if counters is None:
            return None, "", f"the controller reported no instrument {a['device']!r}"
        return counters.get(a["counter"]), "", "the controller's last report of the instrument's counters"
    if m in ("batch_record", "metered_error_pct"):
        return _from_record(run, a)
    if m == "batch_records":
        return run.record_folders, "", "record folders in the controller's state dir"
    if m == "batch_rejected":
        rejected = [e["message"] for e in run.events if e.get("source") == "controller" and e["kind"] == "batch"
                    and e["message"].startswith("batch rejected: ")]
        return (rejected[0].removeprefix("batch rejected: ") if rejected else ""), "", \
            "the controller's reason for refusing the batch at start (empty: it was not refused)"
    if m == "held":
        return bool(run.status.get("held")), "", "the controller's last status: is the recipe held"
    if m == "abort_reason":
        aborts = [e["message"] for e in run.events if e.get("source") == "controller" and e["kind"] == "phase"
                  and e.get("data", {}).get("phase") == "aborting"]
        return (aborts[0] if aborts else "none"), "", "the phase event into aborting: its reason"
    if m == "core_fault":
        faults = [e["message"] for e in run.events if e.get("source") == "controller" and e["kind"] == "core"
                  and e["message"].startswith("CORE FAULT")]
        return (faults[0] if faults else "none"), "", "the core's first core-fault event"
    if m == "controller_restarts":
        return sum(1 for e in run.events if e["kind"] == "ready") - 1, "", ""
    raise ValueError(f"unknown measure {m}")


#: meter -> (plant metric, factor to the record's unit)
METER_TRUTH = {"energy": ("heater_j", 1 / 3.6e6), "h2": ("h2_fed_mol", 22.414), "ar": ("ar_fed_mol", 22.414)}


def _from_record(run: Run, a: Mapping[str, Any]) -> tuple[Any, str, str]:
    """A field of the batch record, or a metered figure against the plant's truth."""
    body = run.record
    if body is None:
        return None, "", "no batch record"
    if "path" in a:
        value: Any = body
        for part in str(a["path"]).split("."):
            if not isinstance(value, dict) or part not in value:
                return None, "", f"the record has no {a['path']}"
            value = value[part]
        return (len(value) if isinstance(value, list) else value), "", f"batch record {a['path']}"
    meter = str(a["meter"])
    metric, factor = METER_TRUTH[meter]
    q = body["accounting"]["meters"].get(meter)
    truth = run.final.get("metrics", {}).get(metric)
    if q is None or q["value"] is None or not truth:
        return None, "%", f"no metered {meter} or no plant {metric}"
    true = truth * factor
    return (round(abs(q["value"] - true) / true * 100.0, 4), "%",
            f"metered {q['value']:.4g} {q['unit']} vs the plant's {true:.4g} ({metric}; complete={q['complete']})")


def _safe_latency(run: Run, exp: Expectation) -> tuple[Any, str, str]:
    rule_name = exp.args["rule"]
    rule = next(r for r in run.station.core.rules if r.name == rule_name)
    if exp.name in run.safe_watches:
        w = run.safe_watches[exp.name]
        if w.safe_wall_ns is None:
            return None, "ms", "the outputs never went safe"
        return (round((w.safe_wall_ns - w.since_wall_ns) / 1e6, 3), "ms",
                f"wall clock from step {exp.args['after']} to the last safe output of {rule_name}")
    trip = next((tr for tr in run.trips if tr["rule"] == rule_name and isinstance(tr.get("core_wall_ns"), int)), None)
    if trip is None:
        return None, "ms", f"{rule_name} never tripped"
    trip_ns = int(trip["core_wall_ns"])
    # the onset that caused it: the last one before the trip, still holding (a filter lag of the core's
    # view behind the plant's may let the plant see it clear a moment before the core trips)
    onsets = [o for o in run.final.get("onsets", []) if o["rule"] == rule_name and o["onset_wall_ns"] <= trip_ns]
    if not onsets or (onsets[-1]["cleared_wall_ns"] is not None and onsets[-1]["cleared_wall_ns"] < trip_ns - 100e6):
        return None, "ms", f"{rule_name} tripped without a published value beyond its threshold just before"
    onset = int(onsets[-1]["onset_wall_ns"])
    # each output of the action is safe when the core forced it (FORCED_SAFE, its own stamp), or was already
    # at its safe level at the trip (then the trip keeps it there): the output stamps of a burst-fired heater
    # would say nothing (it is off most ticks anyway)
    safe = trip_ns
    for output in rule.action:
        forced = [int(f["wall_ns"]) for f in run.forced if f["rule"] == rule_name and f["output"] == output
                  and isinstance(f["wall_ns"], int) and f["wall_ns"] >= trip_ns]
        if forced:
            safe = max(safe, min(forced))
    tripped_ms = (trip_ns - onset) / 1e6
    return (round((safe - onset) / 1e6, 3), "ms",
            f"wall clock from the first published value beyond the threshold to the last output of the trip's "
            f"action forced safe (the core's own stamps); the core tripped {tripped_ms:.2f} ms after the onset, "
            f"including the rule's debounce ({rule.debounce_ms:g} ms plant, counted in steps of the plant clock: "
            f"~{run.scenario.time_scale * 2e-3:g} s plant per 2 ms plant loop at {run.scenario.time_scale:g}x)")


def _on_time(rows: Sequence[dict[str, Any]], a: Mapping[str, Any], after: Fired | None,
             before: Fired | None, *, off: bool = False) -> tuple[Any, str, str]:
    """Plant seconds an output was on (or ``off``: a row's span less its on-time), from the plant's per-row
    sums (a burst-fired output counts its duty).

    A row sums the plant steps since the row before it; every row that overlaps the window counts whole,
    so the figure can only be too high (by at most one row at each end), never miss an output that was on."""
    level = str(a.get("level", "effective"))
    key = "on_s" if level == "effective" else "written_on_s"
    total, counted, prev_t = 0.0, 0, 0.0
    for r in rows:
        t = float(r["t_s"])
        overlaps = (after is None or t > after.t_s) and (before is None or prev_t < before.t_s)
        span, prev_t = t - prev_t, t
        if not overlaps:
            continue
        if key not in r:
            return None, "s", "the plant rows carry no on-times"
        on = float(r[key].get(a["output"], 0.0))
        total += max(span - on, 0.0) if off else on
        counted += 1
    if not counted:
        return None, "s", "no plant rows in the window"
    how = "as the plant's device felt it (after K1, relay, power, stuck)" if level == "effective" \
        else "as the core wrote it"
    state = "off" if off else "on"
    return round(total, 4), "s", (f"plant seconds {a['output']} was {state}, {how}, over {counted} rows (rows "
                                  "that overlap the window count whole: at most one row too many at each end)")


def _metric_delta(run: Run, rows: Sequence[dict[str, Any]], a: Mapping[str, Any]) -> tuple[Any, str, str]:
    step = run.fired.get(a["step"])
    if step is None:
        return None, "", "the step never fired"
    metric, phase = a["metric"], a.get("until_phase")
    end = next((p for p in run.phases if p["phase"] == phase and p["wall_ns"] >= step.wall_ns), None)
    end_t = float(end["t_s"]) if end else math.inf
    start_row = next((r for r in rows if r["t_s"] >= step.t_s), None)
    end_row = next((r for r in reversed(rows) if r["t_s"] <= end_t), None)
    if start_row is None or end_row is None or end_row["t_s"] < start_row["t_s"]:
        return None, "", "no plant rows in the interval"
    delta = end_row["plant"][metric] - start_row["plant"][metric]
    until = f"the {phase} phase at {end_t:.0f} s" if end else "the end of the run"
    return round(delta, 6), "", f"{metric} from step {a['step']} ({step.t_s:.0f} s) to {until}"


def judge(value: Any, limits: Mapping[str, Any]) -> bool:
    if value is None:
        return False
    ok = True
    if "equals" in limits:
        ok &= value == limits["equals"]
    if "one_of" in limits:
        ok &= value in limits["one_of"]
    if "min" in limits:
        ok &= isinstance(value, int | float) and value >= limits["min"]
    if "max" in limits:
        ok &= isinstance(value, int | float) and value <= limits["max"]
    if "contains" in limits:
        ok &= isinstance(value, str) and str(limits["contains"]) in value
    if "includes" in limits:
        ok &= isinstance(value, list) and _subsequence(limits["includes"], value)
    return bool(ok)


def _subsequence(needle: Sequence[Any], hay: Sequence[Any]) -> bool:
    it = iter(hay)
    return all(any(x == y for y in it) for x in needle)
