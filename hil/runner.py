"""``reedge hil run``: run scenarios on the virtual rig, measure, judge, and write the evidence.

Per scenario: a rig (plant + the real controller process), the scenario's steps fired when their
conditions hold, then every expectation turned into a measurement with its limits and outcome
(OpenHTF's idea: a run is a record of measurements, not a pass/fail bit). Written per scenario to
``--report-dir``: ``NAME.json`` (the record: measurements, events, faults, versions and the hashes
of the scenario, station and recipe), ``NAME.junit.xml`` and ``NAME.png``; beside them the rig's
work folder (plant log, controller log, run state) for a post-mortem.

The rig is closed in ``finally`` and on SIGINT/SIGTERM: no process and no register file outlives
a run, also when a scenario crashes.
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
from hil.rig import RigConfig, RigError, VirtualRig
from hil.scenario import Condition, Expectation, Scenario, Step, load_scenario

POLL_S = 0.01
FINAL = ("done", "aborted")
UNITS = {"degC": "temperature", "bar abs": "pressure", "bar": "pressure", "mbar": "vacuum", "%LEL": "gas",
         "%vol": "gas", "l/min": "flow"}


class Interrupted(Exception):
    """SIGINT or SIGTERM during a run."""


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


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT/SIGTERM raise Interrupted in the runner, so ``finally`` closes the rig."""

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_scenario(sc: Scenario, report_dir: pathlib.Path,
                 progress: Callable[[Run, VirtualRig], None] | None = None, *,
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
    if sc.recipe is not None and sc.feed:
        controller_args = (*controller_args, "--feed", sc.feed)
    if sc.recipe is not None and sc.mass_in_kg is not None:
        controller_args = (*controller_args, "--mass-in-kg", repr(sc.mass_in_kg))
    cfg = RigConfig(station=sc.station, plant=sc.plant, time_scale=sc.time_scale, workdir=work,
                    plant_params=sc.plant_params, relay_timeout_s=sc.relay_timeout_s,
                    relay_outputs=sc.relay_outputs, log_every_s=sc.log_every_s, scan_s=sc.scan_s,
                    serial=_serial_devices(station, sc.meter_start, sc.meter_gain),
                    controller_args=tuple(controller_args))
    rig = VirtualRig(cfg)
    started_utc = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    try:
        rig.start()
        for step in sc.steps:       # a fault "from the start" is there before the controller runs: no race
            if _from_the_start(step):
                _fire(run, rig, step, rig.plant_s())
        rig.start_controller(sc.recipe, sc.batch_id)
        run.lag = LagProbe(sc.scan_s, rig.write_controller)
        _drive(run, rig, progress)
        run.final = rig.snapshot()
        run.final["written_now"] = {o.name: rig.regs.do(o.line) for o in station.core.outputs} if rig.regs else {}
    except (RigError, OSError, ValueError, KeyError) as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        rig.close()
    _read_batch_record(run, rig.state_dir)
    rows = _read_rows(rig.log_path)
    record = _record(run, rows, started_utc, rig)
    report_dir.mkdir(parents=True, exist_ok=True)
    report.write_json(record, report_dir / f"{sc.name}.json")
    report.write_junit([record], report_dir / f"{sc.name}.junit.xml")
    try:
        report.plot(record, rows, report_dir / f"{sc.name}.png")
    except Exception as exc:      # a plot must never hide a record
        record.setdefault("notes", []).append(f"plot failed: {exc}")
    return record


def _serial_devices(station: Station, meter_start: Mapping[str, float],
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


def _record_revision(run: Run, state_dir: pathlib.Path) -> int:
    """The revision of the batch's record on disk, read at most twice a (wall) second; 0 while there is none.

    Lets a run end on what the controller did (the mass out recorded, say) instead of a settle time in
    which something outside the rig must act: that is a race with the wall clock on a loaded machine."""
    now = time.monotonic()
    if now - run.record_polled_wall < 0.5:
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
                               "wall_ns": time.monotonic_ns()})


# ---------------------------------------------------------------- the drive loop


def _drive(run: Run, rig: VirtualRig, progress: Callable[[Run, VirtualRig], None] | None) -> None:
    sc = run.scenario
    wall_limit = time.monotonic() + sc.max_plant_s / sc.time_scale * 2.0 + 60.0
    end_at: float | None = None
    need_channels = any(s.at.channel or s.at.quantity for s in sc.steps)
    last_channels = 0.0
    while True:
        _collect(run, rig)
        t = rig.plant_s()
        if run.lag is not None and rig.controller_alive():
            run.lag.poll(t)
        if need_channels and time.monotonic() - last_channels > 0.05:
            snap = rig.snapshot()
            run.channels, run.truth = snap.get("channels", {}), snap.get("truth", {})
            last_channels = time.monotonic()
        if rig.plant is not None and rig.plant.poll() is not None:
            raise RigError(f"the plant process exited (code {rig.plant.poll()}); see {rig.workdir / 'plant.stderr'}")
        if not rig.controller_alive() and not run.controller_dead_ok:
            code = rig.controller.poll() if rig.controller else None
            raise RigError(f"the controller exited (code {code}); see {rig.controller_log}")
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
        if time.monotonic() > wall_limit:
            raise RigError(f"the scenario ran {time.monotonic() - run.started_wall:.0f} s of wall time without "
                           f"reaching its end (plant at {t:.0f} s): the rig cannot keep up with time_scale "
                           f"{sc.time_scale:g}")
        if progress is not None:
            progress(run, rig)
        time.sleep(POLL_S)
    run.ended_plant_s = rig.plant_s()
    _collect(run, rig)


def _collect(run: Run, rig: VirtualRig) -> None:
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


def _phase(run: Run) -> str | None:
    return run.phases[-1]["phase"] if run.phases else run.status.get("phase")


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
        ok = ok and _phase(run) == c.phase
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


def _fire(run: Run, rig: VirtualRig, step: Step, t: float) -> None:
    wall = time.monotonic_ns()
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


def _clear(run: Run, rig: VirtualRig, fired: Fired) -> None:
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
    run.events.append({"t_s": t, "wall_ns": time.monotonic_ns(), "source": "rig", "kind": "fault",
                       "message": f"{step.id}: cleared"})


def _safe_since(regs: Any, outputs: Sequence[tuple[int, int]], since_wall_ns: int) -> int | None:
    """When every output was at its safe level, counting from ``since``: an output that changed to safe
    after it counts from its change (the core's stamp), one already safe from ``since``. None: not all safe."""
    if not all(regs.do(line) == safe for line, safe in outputs):
        return None
    stamps: list[int] = [regs.do_changed_wall_ns(line) for line, _ in outputs]
    return max([since_wall_ns, *(s for s in stamps if s >= since_wall_ns)])


def _watch_safe(run: Run, rig: VirtualRig) -> None:
    regs = rig.regs
    if regs is None:
        return
    for watch in run.safe_watches.values():
        if watch.safe_wall_ns is None:
            watch.safe_wall_ns = _safe_since(regs, watch.outputs, watch.since_wall_ns)



def _ended(run: Run, rig: VirtualRig, t: float) -> str:
    sc = run.scenario
    if sc.until_after is not None:
        fired = run.fired.get(sc.until_after)
        if fired is None or (run.phases and run.phases[-1]["wall_ns"] < fired.wall_ns) or not run.phases:
            return ""                  # only a phase reached after that step counts
    if sc.until == "batch_end" and _phase(run) in FINAL and run.status.get("finished"):
        return f"batch {_phase(run)}"
    if sc.until == "batch_record" and _phase(run) in FINAL and run.status.get("finished"):
        revision = _record_revision(run, rig.state_dir)
        if revision >= sc.until_revision:
            return f"batch {_phase(run)}, its record at revision {revision}"
    if sc.until == "phase" and _phase(run) == sc.until_phase:
        return f"phase {sc.until_phase} reached"
    if sc.until == "time" and t >= sc.max_plant_s:
        return "time"
    return ""


# ---------------------------------------------------------------- measurements


def _read_rows(path: pathlib.Path) -> list[dict[str, Any]]:
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
        phase = _phase(run)
        return (phase if phase in FINAL else "running" if phase else "not started"), "", ""
    if m == "final_phase":
        return _phase(run), "", ""
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


def _sha256(path: pathlib.Path | None) -> str | None:
    if path is None:
        return None
    with contextlib.suppress(OSError):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return None


def _record(run: Run, rows: Sequence[dict[str, Any]], started_utc: str, rig: VirtualRig) -> dict[str, Any]:
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
    measurements.append(lag_measurement(run.lag, sc.max_lag_s, sc.time_scale))
    outcome = "error" if run.error else "pass" if all(m["outcome"] == "pass" for m in measurements) else "fail"
    t0 = rig.controller_starts[0] if rig.controller_starts else 0
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
        "time_scale": sc.time_scale, "started_utc": started_utc,
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
              progress: Callable[[Run, VirtualRig], None] | None = None) -> int:
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
                print_fn(f"== {sc.name} ({sc.source}) at {sc.time_scale:g}x")
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

