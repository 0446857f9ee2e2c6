"""``reedge hil run``: run scenarios on the virtual rig, measure, judge, and write the evidence.

Per scenario: a rig (plant + the real controller process), the scenario's steps fired when their
conditions hold, then every expectation turned into a measurement with its limits and outcome
(OpenHTF's idea: a run is a record of measurements, not a pass/fail bit). Written per scenario to
``--report-dir``: ``NAME.json`` (the record: measurements, events, faults, versions and the hashes
of the scenario, station and recipe), ``NAME.junit.xml`` and ``NAME.png``; beside them the rig's
work folder (plant log, controller log, run state) for a post-mortem.

The rig is closed in ``finally`` and on SIGINT/SIGTERM/SIGHUP (a dropped SSH session): no process and no
register file outlives a run, also when a scenario crashes.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import pathlib
import platform
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge import __version__
from edge.batch.record import BATCHES_DIR, RecordError, batch_dir, read_record
from edge.operator.verbs import VERBS
from edge.spec.instruments.pfeiffer import PfeifferConfig
from edge.spec.station import Station, load_station
from hil.lag import LagProbe, is_probe_reply, lag_measurement
from hil.measures import FINAL, judge, measure, phase_of, read_rows
from hil.rig import STOP_SIGNALS, RigConfig, RigError, ScenarioRig, VirtualRig
from hil.scenario import Condition, Scenario, Step, load_scenario

UNITS = {"degC": "temperature", "bar abs": "pressure", "bar": "pressure", "mbar": "vacuum", "%LEL": "gas",
         "%vol": "gas", "l/min": "flow"}


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP during a run."""


@dataclass
class Fired:
    step: Step
    t_s: float
    wall_ns: int
    clear_at_s: float | None = None
    cleared: bool = False


@dataclass
class SafeWatch:
    """From a step on, when every output of a rule's action was at its safe level (core change stamps)."""

    since_wall_ns: int
    outputs: tuple[tuple[int, int], ...]        # (line, safe level)
    safe_wall_ns: int | None = None


@dataclass
class Run:
    """Everything observed during one scenario run."""

    scenario: Scenario
    station: Station
    fired: dict[str, Fired] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)     # step id -> plant time its condition first held
    events: list[dict[str, Any]] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)
    trips: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    safe_watches: dict[str, SafeWatch] = field(default_factory=dict)
    forced: list[dict[str, Any]] = field(default_factory=list)   # FORCED_SAFE events: rule, output, wall_ns
    controller_dead_ok: bool = False
    error: str | None = None
    end_reason: str = ""
    seen_lines: int = 0
    channels: dict[str, float | None] = field(default_factory=dict)
    truth: dict[str, float] = field(default_factory=dict)     # the plant's true values (marks on quantities)
    final: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] | None = None     # the batch record's body, read once the controller stopped
    record_folders: int = 0                  # batch record folders the run left in the state dir
    record_revision: int = 0                 # until = "batch_record": the end record's revision last read
    record_polled_wall: float = 0.0
    lag: LagProbe | None = None              # the controller's scan lag (hil/lag.py), once it was started
    started_wall: float = 0.0
    ended_plant_s: float = 0.0
    ended_ns: int = 0                        # the rig's stamp at the end of the drive


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP raise Interrupted in the runner, so ``finally`` closes the rig."""

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_scenario(sc: Scenario, report_dir: pathlib.Path,
                 progress: Callable[[Run, ScenarioRig], None] | None = None, *,
                 controller_args: Sequence[str] = ()) -> dict[str, Any]:
    """Run one scenario; write its JSON, JUnit and PNG; return the record.

    ``controller_args`` go to ``reedge run`` as they are (``reedge demo`` passes ``--broker``)."""
    from hil import report

    station = load_station(sc.station)
    work = report_dir / f"{sc.name}.work"
    if work.exists():
        for old in sorted(work.rglob("*"), reverse=True):
            old.unlink() if old.is_file() or old.is_symlink() else old.rmdir()
    run = Run(sc, station, started_wall=time.monotonic())
    cfg = RigConfig(station=sc.station, plant=sc.plant, time_scale=sc.time_scale, workdir=work,
                    plant_params=sc.plant_params, relay_timeout_s=sc.relay_timeout_s,
                    relay_outputs=sc.relay_outputs, log_every_s=sc.log_every_s, scan_s=sc.scan_s,
                    serial=serial_devices(station, sc.meter_start, sc.meter_gain),
                    controller_args=tuple(controller_args), feed=sc.feed, mass_in_kg=sc.mass_in_kg,
                    power_loss=any(step.kind == "power_loss" for step in sc.steps))
    rig: ScenarioRig
    if sc.clock == "lockstep":
        from hil.lockstep_rig import LockstepScenarioRig

        rig = LockstepScenarioRig(cfg)
    else:
        rig = VirtualRig(cfg)
    started_utc = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    try:
        rig.start()
        for step in sc.steps:       # a fault "from the start" is there before the controller runs: no race
            if _from_the_start(step):
                _fire(run, rig, step, rig.plant_s())
        rig.start_controller(sc.recipe, sc.batch_id)
        if rig.clock == "realtime":        # in lockstep the scan is driven by the plant's clock: no lag to probe
            run.lag = LagProbe(sc.scan_s, rig.write_controller)
        _drive(run, rig, progress)
        run.final = rig.snapshot()
        run.final["written_now"] = {o.name: rig.regs.do(o.line) for o in station.core.outputs} if rig.regs else {}
    except (RigError, OSError, ValueError, KeyError) as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        rig.close()
    _read_batch_record(run, rig.state_dir)
    rows = read_rows(rig.log_path)
    record = _record(run, rows, started_utc, rig)
    report_dir.mkdir(parents=True, exist_ok=True)
    report.write_json(record, report_dir / f"{sc.name}.json")
    report.write_junit([record], report_dir / f"{sc.name}.junit.xml")
    try:
        report.plot(record, rows, report_dir / f"{sc.name}.png")
    except Exception as exc:      # a plot must never hide a record
        record.setdefault("notes", []).append(f"plot failed: {exc}")
    return record


def serial_devices(station: Station, meter_start: Mapping[str, float],
                    meter_gain: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """The rig emulates each serial instrument the station declares: a gauge per Pfeiffer instrument, one
    Modbus bus per port with its meters, each counting the plant metric the station's [accounting] reads
    from it (``heater_j`` for the energy meter, the gas fed for a flow meter)."""
    devices: dict[str, dict[str, Any]] = {}
    acc = station.accounting
    metric_of = {src.partition(".")[0]: metric for src, metric in ((acc.energy, "heater_j"), (acc.h2, "h2_fed_mol"),
                                                                  (acc.ar, "ar_fed_mol")) if src is not None}
    for name, inst in station.instruments.items():
        if isinstance(inst, PfeifferConfig):
            devices[name] = {"type": "pfeiffer", "channel": inst.channel, "address": inst.address}
            continue
        if inst.profile not in METER_DEVICES:
            raise ValueError(f"instruments.{name}: the rig emulates the {', '.join(METER_DEVICES)} profiles, "
                             f"not {inst.profile!r}")
        device, default_start = METER_DEVICES[inst.profile]
        bus = devices.setdefault(f"modbus:{inst.port}", {"type": "modbus", "instruments": {}})
        bus["instruments"][name] = {"device": device, "address": inst.address, "metric": metric_of.get(name),
                                    "start": meter_start.get(name, default_start), "gain": meter_gain.get(name, 1.0)}
    return devices


#: profile -> (emulated device, its counter's reading when the rig starts unless the scenario says)
METER_DEVICES = {"sdm630": ("sdm630", 48_213.6), "reedge_mfc": ("mfc", 5_000.0)}


def _record_revision(run: Run, state_dir: pathlib.Path, every_s: float) -> int:
    """The revision of the batch's record on disk, read at most every ``every_s`` (wall); 0 while there is none.

    Lets a run end on what the controller did (the mass out recorded, say) instead of a settle time in
    which something outside the rig must act: that is a race with the wall clock on a loaded machine."""
    now = time.monotonic()
    if now - run.record_polled_wall < every_s:
        return run.record_revision
    run.record_polled_wall = now
    try:
        body = read_record(batch_dir(state_dir, run.scenario.batch_id))["body"]
    except RecordError:
        return run.record_revision          # not written yet, or caught mid-write: ask again
    run.record_revision = int(body.get("revision", 0)) if body.get("record") == "end" else 0
    return run.record_revision


def _read_batch_record(run: Run, state_dir: pathlib.Path) -> None:
    root = state_dir / BATCHES_DIR
    run.record_folders = sum(1 for d in root.iterdir() if d.is_dir()) if root.is_dir() else 0
    try:
        run.record = read_record(batch_dir(state_dir, run.scenario.batch_id))["body"]
    except RecordError as exc:
        run.record = None
        if run.error is None and run.scenario.recipe is not None:
            run.events.append({"kind": "record", "message": str(exc), "t_s": run.ended_plant_s,
                               "wall_ns": run.ended_ns})


# ---------------------------------------------------------------- the drive loop


def _drive(run: Run, rig: ScenarioRig, progress: Callable[[Run, ScenarioRig], None] | None) -> None:
    sc = run.scenario
    wall_limit = time.monotonic() + sc.max_plant_s / sc.time_scale * 2.0 + 60.0
    end_at: float | None = None
    need_channels = any(s.at.channel or s.at.quantity for s in sc.steps)
    while True:
        _collect(run, rig)
        t = rig.plant_s()
        if run.lag is not None and rig.controller_alive():
            run.lag.poll(t)
        if need_channels and rig.channels_due():
            run.channels, run.truth = rig.channels()
        rig.check(controller_may_be_dead=run.controller_dead_ok)
        for step in sc.steps:
            if step.id not in run.fired and _holds(run, step, t):
                _fire(run, rig, step, t)
        for fired in run.fired.values():
            if fired.clear_at_s is not None and not fired.cleared and t >= fired.clear_at_s:
                _clear(run, rig, fired)
        _watch_safe(run, rig)
        if end_at is None:
            reason = _ended(run, rig, t)
            if reason:
                run.end_reason = reason
                end_at = t + sc.settle_s
        if end_at is not None and t >= end_at and all(f.cleared or f.clear_at_s is None for f in run.fired.values()):
            break
        if t >= sc.max_plant_s:
            run.end_reason = run.end_reason or f"max_plant_h reached ({sc.max_plant_s / 3600:g} h)"
            break
        if rig.clock == "realtime" and time.monotonic() > wall_limit:
            raise RigError(f"the scenario ran {time.monotonic() - run.started_wall:.0f} s of wall time without "
                           f"reaching its end (plant at {t:.0f} s): the rig cannot keep up with time_scale "
                           f"{sc.time_scale:g}")
        if progress is not None:
            progress(run, rig)
        rig.advance()
    run.ended_plant_s = rig.plant_s()
    run.ended_ns = rig.now_ns()
    _collect(run, rig)


def _collect(run: Run, rig: ScenarioRig) -> None:
    lines = rig.controller_lines(run.seen_lines)
    run.seen_lines += len(lines)
    for line in lines:
        d = line.data
        kind = d.get("type")
        if run.lag is not None and kind == "ready":
            run.lag.ready()
        if is_probe_reply(d):               # the lag probe's answer: not an event of the run
            if run.lag is not None:
                run.lag.reply(float(d.get("t_s") or math.nan))
            continue
        if kind == "status":
            run.status = d
            continue
        if kind == "event":
            ev = {"t_s": d.get("t_s"), "wall_ns": line.wall_ns, "source": "controller", "kind": d.get("kind"),
                  "message": d.get("message", ""), "data": d.get("data", {})}
            run.events.append(ev)
            if ev["kind"] == "phase":
                run.phases.append({"t_s": ev["t_s"], "wall_ns": line.wall_ns, "phase": ev["data"].get("phase")})
            elif ev["kind"] == "trip":
                trip = {"t_s": ev["t_s"], "wall_ns": line.wall_ns, "rule": ev["data"].get("rule"),
                        "first_out": bool(ev["data"].get("first_out")), "core_wall_ns": ev["data"].get("wall_ns")}
                run.trips.append(trip)
            elif ev["data"].get("core_kind") == "FORCED_SAFE":   # the core forcing one output for a trip
                run.forced.append({"rule": ev["data"].get("rule"), "output": ev["data"].get("output"),
                                   "wall_ns": ev["data"].get("wall_ns")})
        elif kind in ("ready", "reply", "exit"):
            run.events.append({"t_s": d.get("t_s"), "wall_ns": line.wall_ns, "source": "controller", "kind": kind,
                               "message": d.get("message", "")})


def _from_the_start(step: Step) -> bool:
    """A plant fault at ``t_s = 0`` and nothing else (e.g. a welded watchdog relay): fired before the controller
    starts, so the core's start-up (its watchdog proof test) meets it, whatever the start-up's wall time."""
    return step.kind not in NOT_PLANT_FAULTS and step.at == Condition(t_s=0.0)


#: steps the plant process does not carry out (the runner acts on the controller, or nothing is done)
NOT_PLANT_FAULTS = ("mark", "operator", "controller_hang", "process_freeze", "power_loss")


def _holds(run: Run, step: Step, t: float) -> bool:
    """The step's condition; ``after_s`` counts plant time from when the rest of it first held."""
    c: Condition = step.at
    ok = True
    if c.after is not None:
        ok = ok and c.after in run.fired and t - run.fired[c.after].t_s >= c.delay_s
    if c.t_s is not None:
        ok = ok and t >= c.t_s
    if c.phase is not None:
        ok = ok and phase_of(run) == c.phase
    if c.held is not None:
        ok = ok and bool(run.status.get("held")) == c.held and rig_status_fresh(run, step)
    if c.channel is not None:
        v = run.channels.get(c.channel)
        ok = ok and v is not None and (c.above is None or v > c.above) and (c.below is None or v < c.below)
    if c.trip is not None:      # the controller reported the trip (after the core forced its outputs safe)
        ok = ok and any(tr["rule"] == c.trip for tr in run.trips)
    if c.quantity is not None:
        q = run.truth.get(c.quantity)
        ok = ok and q is not None and (c.above is None or q > c.above) and (c.below is None or q < c.below)
    if not ok:
        run.since.pop(step.id, None)
        return False
    first = run.since.setdefault(step.id, t)
    return t - first >= c.after_s


def rig_status_fresh(run: Run, step: Step) -> bool:
    """A held condition that follows a step must see a status reported after that step fired."""
    if step.at.after is None:
        return True
    fired = run.fired.get(step.at.after)
    return fired is not None and bool(run.status) and float(run.status.get("t_s") or 0.0) >= fired.t_s


def _fire(run: Run, rig: ScenarioRig, step: Step, t: float) -> None:
    wall = rig.now_ns()
    if step.kind == "mark":
        pass                                # a named moment: nothing is done
    elif step.kind == "operator" and step.action == "limiter_reset":   # at the cabinet, not the controller
        reply = rig.plant_command(cmd="limiter_reset")
        wall, t = int(reply["wall_ns"]), float(reply["t_s"])
    elif step.kind == "operator":
        assert step.action is not None
        takes_reason = any(a.name == "reason" for a in VERBS[step.action].args)   # resume and skip take none
        rig.controller_command(step.action, **({"reason": f"HIL step {step.id}"} if takes_reason else {}))
    elif step.kind == "controller_hang":
        wall = rig.signal_controller(signal.SIGUSR1)
        rig.hung = True
        if run.lag is not None:
            run.lag.pause(for_good=True)    # hung on purpose: it answers nothing any more
    elif step.kind == "process_freeze":
        if run.lag is not None:
            run.lag.pause()
        wall = rig.signal_controller(signal.SIGSTOP)
    elif step.kind == "power_loss":
        if run.lag is not None:
            run.lag.pause()                 # until the restarted controller says ready
        # the controller's board and the cabinet lose the same supply at the same instant: the outputs go dark
        # at once, while the inputs the dying core could still read are held until it is dead (a live core
        # reading the dark cabinet's open limiter contact latched limiter_tripped, which a real board never sees;
        # killing it first left the cabinet powered on its last outputs meanwhile: H2 flowed, under load)
        reply = rig.plant_command(cmd="power", on=False, hold_inputs=True)
        wall = int(reply["wall_ns"])
        run.controller_dead_ok = True
        rig.kill_controller()
        rig.plant_command(cmd="board_dead")
    else:
        reply = rig.plant_command(cmd="fault", kind=step.kind, params=dict(step.params))
        wall, t = int(reply["wall_ns"]), float(reply["t_s"])
    clear = t + step.duration_s if step.duration_s is not None else None
    run.fired[step.id] = Fired(step, t, wall, clear)
    run.events.append({"t_s": t, "wall_ns": wall, "source": "rig", "kind": step.kind if step.kind in
                       ("operator", "mark") else "fault", "message": f"{step.id}: {step.action or step.kind}"
                       f"{' ' + json.dumps(dict(step.params)) if step.params else ''}"})
    for exp in run.scenario.expectations:
        if exp.measure == "safe_latency_ms" and exp.args.get("after") == step.id:
            # from a step (a hang: the controller cannot report the trip): the action's outputs going safe.
            # Burst-fired outputs are off most ticks anyway, so they only count when nothing else would.
            rule = next(r for r in run.station.core.rules if r.name == exp.args["rule"])
            duty = {loop.output for loop in run.station.loops}
            names = [o for o in rule.action if o not in duty] or list(rule.action)
            lines = {o.name: (o.line, o.safe_level) for o in run.station.core.outputs}
            run.safe_watches[exp.name] = SafeWatch(wall, tuple(lines[o] for o in names))


def _clear(run: Run, rig: ScenarioRig, fired: Fired) -> None:
    step = fired.step
    t = rig.plant_s()
    if step.kind == "process_freeze":
        rig.signal_controller(signal.SIGCONT)
        if run.lag is not None:
            run.lag.resume()
    elif step.kind == "power_loss":
        rig.plant_command(cmd="power", on=True)
        rig.start_controller()          # no recipe: it recovers the interrupted batch from its run state
        run.controller_dead_ok = False
    elif step.kind not in ("controller_hang", "mark", "operator"):
        rig.plant_command(cmd="clear", kind=step.kind, params=dict(step.params))
    fired.cleared = True
    run.events.append({"t_s": t, "wall_ns": rig.now_ns(), "source": "rig", "kind": "fault",
                       "message": f"{step.id}: cleared"})


def _safe_since(regs: Any, outputs: Sequence[tuple[int, int]], since_wall_ns: int) -> int | None:
    """When every output was at its safe level, counting from ``since``: an output that changed to safe
    after it counts from its change (the core's stamp), one already safe from ``since``. None: not all safe."""
    if not all(regs.do(line) == safe for line, safe in outputs):
        return None
    stamps: list[int] = [regs.do_changed_wall_ns(line) for line, _ in outputs]
    return max([since_wall_ns, *(s for s in stamps if s >= since_wall_ns)])


def _watch_safe(run: Run, rig: ScenarioRig) -> None:
    regs = rig.regs
    if regs is None:
        return
    for watch in run.safe_watches.values():
        if watch.safe_wall_ns is None:
            watch.safe_wall_ns = _safe_since(regs, watch.outputs, watch.since_wall_ns)



def _ended(run: Run, rig: ScenarioRig, t: float) -> str:
    sc = run.scenario
    if sc.until_after is not None:
        fired = run.fired.get(sc.until_after)
        if fired is None or (run.phases and run.phases[-1]["wall_ns"] < fired.wall_ns) or not run.phases:
            return ""                  # only a phase reached after that step counts
    if sc.until == "batch_end" and phase_of(run) in FINAL and run.status.get("finished"):
        return f"batch {phase_of(run)}"
    if sc.until == "batch_record" and phase_of(run) in FINAL and run.status.get("finished"):
        revision = _record_revision(run, rig.state_dir, every_s=0.5 if rig.clock == "realtime" else 0.0)
        if revision >= sc.until_revision:
            return f"batch {phase_of(run)}, its record at revision {revision}"
    if sc.until == "phase" and phase_of(run) == sc.until_phase:
        return f"phase {sc.until_phase} reached"
    if sc.until == "time" and t >= sc.max_plant_s:
        return "time"
    return ""


def _sha256(path: pathlib.Path | None) -> str | None:
    if path is None:
        return None
    with contextlib.suppress(OSError):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return None


def _record(run: Run, rows: Sequence[dict[str, Any]], started_utc: str, rig: ScenarioRig) -> dict[str, Any]:
    sc = run.scenario
    measurements = []
    for exp in sc.expectations:
        try:
            value, unit, note = measure(run, rows, exp) if run.error is None else (None, "", "the run failed")
        except (KeyError, TypeError, ValueError) as exc:
            value, unit, note = None, "", f"could not measure: {exc}"
        measurements.append({"name": exp.name, "measure": exp.measure, "value": value, "unit": unit,
                             "limits": dict(exp.limits), "outcome": "pass" if judge(value, exp.limits) else "fail",
                             "description": exp.description or note, "note": note})
    unfired = [s.id for s in sc.steps if s.id not in run.fired and s.kind != "mark"]   # a mark may never come
    measurements.append({"name": "steps_fired", "measure": "steps_fired", "value": not unfired, "unit": "",
                         "limits": {"equals": True}, "outcome": "pass" if not unfired else "fail",
                         "description": "every fault and operator step of the scenario happened",
                         "note": f"never fired: {', '.join(unfired)}" if unfired else ""})
    ended = bool(run.end_reason) and (sc.until == "time" or not run.end_reason.startswith("max_plant_h"))
    measurements.append({"name": "run_ended", "measure": "run_ended", "value": ended, "unit": "",
                         "limits": {"equals": True}, "outcome": "pass" if ended else "fail",
                         "description": f"the run reached its end condition ({sc.until}) within max_plant_h",
                         "note": run.end_reason})
    measurements.append(lag_measurement(run.lag, sc.max_lag_s, sc.time_scale, lockstep=sc.clock == "lockstep"))
    outcome = "error" if run.error else "pass" if all(m["outcome"] == "pass" for m in measurements) else "fail"
    t0 = rig.t0_ns()
    events = [{k: v for k, v in e.items() if k != "wall_ns"} | {"wall_s": round((e["wall_ns"] - t0) / 1e9, 4)}
              for e in run.events]
    for e in run.final.get("events", []):
        events.append({"t_s": e["t_s"], "wall_s": round((e["wall_ns"] - t0) / 1e9, 4), "source": "plant",
                       "kind": e["kind"], "message": e["message"]})
    events.sort(key=lambda e: (e.get("t_s") or 0.0))
    units = dict(run.station.channel_units)
    return {
        "scenario": sc.name, "file": str(sc.source), "description": sc.description, "outcome": outcome,
        "error": run.error, "end_reason": run.end_reason,
        "station": {"path": str(sc.station), "sha256": _sha256(sc.station)},
        "recipe": {"path": str(sc.recipe), "sha256": _sha256(sc.recipe)} if sc.recipe else None,
        "scenario_sha256": sc.sha256,
        "versions": {"reedge": __version__, "python": platform.python_version(), "platform": platform.platform()},
        "clock": sc.clock, "time_scale": sc.time_scale if sc.clock == "realtime" else None,
        "started_utc": started_utc,
        "wall_s": round(time.monotonic() - run.started_wall, 3), "plant_s": round(run.ended_plant_s, 3),
        "faults": [{"name": f.step.id, "kind": f.step.kind, "t_s": f.t_s,
                    "wall_s": round((f.wall_ns - t0) / 1e9, 4), "params": dict(f.step.params)}
                   for f in run.fired.values()],
        "events": events, "measurements": measurements,
        "channels": {name: {"unit": u, "group": UNITS.get(u, "other")} for name, u in units.items()
                     if any(name in r["ch"] for r in rows[:1])},
        "outputs": [o.name for o in run.station.core.outputs if o.name != run.station.core.watchdog_output],
        "workdir": str(rig.workdir),
    }


def run_files(paths: Sequence[pathlib.Path], report_dir: pathlib.Path, *, print_fn: Callable[[str], None] = print,
              progress: Callable[[Run, ScenarioRig], None] | None = None) -> int:
    """The CLI's job: check every file first, run each, print the summaries; 0 only when all pass."""
    from edge.spec.reader import SpecError
    from hil import report

    scenarios: list[Scenario] = []
    problems: list[str] = []
    for path in paths:
        try:
            scenarios.append(load_scenario(path))
        except SpecError as exc:
            problems.append(str(exc))
    if problems:
        for p in problems:
            print_fn(p)
        return 2
    records = []
    try:
        with interruptible():
            for sc in scenarios:
                pace = f"at {sc.time_scale:g}x" if sc.clock == "realtime" else "in lockstep"
                print_fn(f"== {sc.name} ({sc.source}) {pace}")
                record = run_scenario(sc, report_dir, progress)
                records.append(record)
                for line in report.summary_lines(record):
                    print_fn(line)
    except Interrupted as exc:
        print_fn(f"interrupted ({exc}): the rig was stopped and cleaned up; {len(records)} scenario(s) finished")
        return 130
    report.write_junit(records, report_dir / "junit.xml")
    failed = [r["scenario"] for r in records if r["outcome"] != "pass"]
    print_fn(f"{len(records) - len(failed)}/{len(records)} scenarios passed"
             + (f"; failed: {', '.join(failed)}" if failed else "") + f"; reports in {report_dir}")
    return 1 if failed else 0

