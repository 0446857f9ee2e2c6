"""The controller's scan (``Controller.step``) against the scan before the core snapshot, same run.

Both controllers run the same lockstep HD batch (stations/hd_reactor_sim.toml, recipes/hd_standard.toml,
2 s plant steps, the real C core and the HD reactor model); only the time inside ``step`` is counted,
not the plant's nor the rig's. The baseline, ``LegacyScan``, is kept here only: it reads the core the
way the scan did before, through the per-call accessors of that time (``latest()`` twice, ``rules()``
twice with one cffi call per rule threshold, ``outputs()`` three times and once more per ``allowed``,
an error buffer allocated per C call, the program's whole snapshot hashed each scan for the save key).
Both must take the same decisions: the bench compares a hash of every scan's duties, output levels,
demand and phase, and fails if they differ. The two run alternately, each keeping its best round, so a
burst of load on the shared machine hits both alike.

A second figure: one ``Core.snapshot()`` against the reads of one legacy scan's core state
(``latest()`` + ``rules()`` + ``outputs()`` of that time, once each).
"""

from __future__ import annotations

import hashlib
import math
import pathlib
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench.figures import Figure
from edge.control.controller import Controller
from edge.control.sequencer import Demand
from edge.core import ChannelStatus, ChannelValue, Core, OutputState, RuleState
from edge.spec.recipe_reader import load_recipe
from edge.spec.station import load_station
from hil.lockstep import LockstepRig
from hil.plants.hd_reactor import HDReactor

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAME = "controller scan (lockstep HD batch)"
NAME_READ = "core state read per scan"
BASELINE = "the scan before the core snapshot (per-call core reads)"
LIMIT = 1.5     # measured 3.1x (quick: 5.9x) on the shared 2-core machine: a fall below 1.5 is a regression


# ---- the core reads as they were (edge/core.py before the snapshot) ----

def legacy_latest(core: Core) -> dict[str, ChannelValue]:
    names = core.channel_names
    buf = core._ffi.new("ec_value[]", max(len(names), 1))
    got = core._plain(core._lib.ec_core_latest, buf, len(names))
    return {names[i]: ChannelValue(names[i], buf[i].value, ChannelStatus(buf[i].status), buf[i].t_ns)
            for i in range(got)}


def legacy_outputs(core: Core) -> dict[str, OutputState]:
    p = core._ffi.new("uint64_t[3]")
    core._plain(core._lib.ec_core_outputs, p, p + 1, p + 2)
    return {n: OutputState((p[0] >> i) & 1, bool((p[1] >> i) & 1), bool((p[2] >> i) & 1))
            for i, n in enumerate(core.output_names)}


def legacy_rules(core: Core) -> dict[str, RuleState]:
    p = core._ffi.new("uint64_t[2]")
    first = core._ffi.new("int32_t *")
    core._plain(core._lib.ec_core_rules, p, p + 1, first)
    return {n: RuleState(bool((p[0] >> i) & 1), bool((p[1] >> i) & 1), first[0] == i, core.threshold(n))
            for i, n in enumerate(core.rule_names)}


class _LegacyCore:
    """The core as the legacy scan saw it: each read a fresh per-call accessor, each request its own
    error buffer (the C calls are the same ones)."""

    def __init__(self, core: Core) -> None:
        self._c = core

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)

    def outputs(self) -> dict[str, OutputState]:
        return legacy_outputs(self._c)

    def rules(self) -> dict[str, RuleState]:
        return legacy_rules(self._c)

    def latest(self) -> dict[str, ChannelValue]:
        return legacy_latest(self._c)

    def request_output(self, name: str, level: int) -> None:
        self._c._ffi.new("char[]", 512)     # the error buffer the legacy _call allocated per call
        self._c.request_output(name, level)

    def set_duty(self, name: str, duty: float) -> None:
        self._c._ffi.new("char[]", 512)
        self._c.set_duty(name, duty)


class _FreshView:
    """What the legacy scan's helpers read: the core's state at each access, not a snapshot."""

    def __init__(self, core: _LegacyCore) -> None:
        self._core = core

    @property
    def outputs(self) -> dict[str, OutputState]:
        return self._core.outputs()

    @property
    def tripped(self) -> tuple[str, ...]:
        return tuple(n for n, r in self._core.rules().items() if r.tripped)


class LegacyScan(Controller):
    """The scan as it was: ``step`` before the snapshot, on the legacy reads (bench only)."""

    def __init__(self, core: Core, *args: Any, **kwargs: Any) -> None:
        super().__init__(core, *args, **kwargs)
        self.core = _LegacyCore(core)   # type: ignore[assignment]

    def readings(self) -> dict[str, float]:
        return {name: (v.value if v.ok else math.nan) for name, v in self.core.latest().items()}

    def stamps(self) -> dict[str, float]:
        return {name: v.t_ns / 1e9 for name, v in self.core.latest().items()}

    def allowed(self, name: str, level: int) -> bool:
        state = self.core.outputs().get(name)
        return state is not None and (level == self._safe[name] or not state.forced)

    def step(self) -> None:
        self.core.heartbeat()
        now = self.now_s()
        readings = self.readings()
        for event in self.core.drain_events():
            self._core_event(now, event)
        seq = self.sequencer
        if seq is not None and seq.running and seq.phase != "aborting":
            tripped = [name for name, r in self.core.rules().items() if r.tripped]
            if tripped:
                seq.abort(now, f"interlock {tripped[0]} tripped", cause=tripped[0])
        heating = seq is not None and seq.running
        if seq is not None:
            seq.stamps = self.stamps()
        demand = seq.step(now, readings) if seq is not None else Demand()
        self.last_demand = demand
        self._bands(now, demand, readings)
        if heating:
            self.heater_model.update(now, self.last_duties)
        fresh: Any = _FreshView(self.core)    # type: ignore[arg-type]
        duties = self._loops(now, readings, demand, fresh)
        self.last_duties = duties
        for a in self.alarms.update(now, readings, {name: demand.setpoint_c for name in self.loops}, duties):
            self.emit(now, "alarm", a.message, alarm=a.name, state=a.kind, severity=a.severity)
        demand = self._alarm_actions(now, demand)
        self._outputs(now, demand, fresh)
        self._beacon(fresh)
        self._report_phases()
        if seq is not None and seq.program is not None:
            seq.program.snapshot()     # the save key was taken from the program's whole snapshot
        self.save()


def batch(kind: type[Controller], scans: int) -> tuple[float, int, str]:
    """(seconds inside step, scans, hash of every scan's decisions) of the first ``scans`` of an HD batch."""
    station = load_station(ROOT / "stations" / "hd_reactor_sim.toml")
    recipe = load_recipe(ROOT / "recipes" / "hd_standard.toml")
    digest = hashlib.sha256()
    spent = 0.0
    n = 0
    with tempfile.TemporaryDirectory() as tmp, LockstepRig(station, HDReactor(), dt_s=2.0) as rig:
        ctl = kind(rig.core, rig.station, state_path=pathlib.Path(tmp) / "run.json")
        rig.step(ctl.step)
        ctl.start_batch(recipe, batch_id="bench", operator="bench")

        def scan() -> None:
            nonlocal spent, n
            t0 = time.perf_counter()
            ctl.step()
            spent += time.perf_counter() - t0
            n += 1
            outs = rig.core.outputs()
            digest.update(repr((sorted(ctl.last_duties.items()), sorted((k, v.level) for k, v in outs.items()),
                                ctl.last_demand.setpoint_c, sorted(ctl.last_demand.outputs.items()),
                                ctl.sequencer.phase if ctl.sequencer else None)).encode())

        rig.run_until(lambda: ctl.batch_finished() or n >= scans, 30 * 3600, scan)
        for e in ctl.events:
            digest.update(repr((e.t_s, e.kind, e.message)).encode())
    return spent, n, digest.hexdigest()


def best_of(rounds: int, fns: dict[str, Callable[[], float]]) -> dict[str, float]:
    best = dict.fromkeys(fns, math.inf)
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], fn())
    return best


def run(quick: bool = False) -> list[Figure]:
    scans = 3000 if quick else 30_000      # the whole batch is 22,441 scans
    rounds = 2 if quick else 3
    hashes: dict[str, set[str]] = {"new": set(), "old": set()}
    counts: dict[str, int] = {}

    def timed(kind: type[Controller], key: str) -> Callable[[], float]:
        def go() -> float:
            spent, n, h = batch(kind, scans)
            hashes[key].add(h)
            counts[key] = n
            return spent / n
        return go

    best = best_of(rounds, {"new": timed(Controller, "new"), "old": timed(LegacyScan, "old")})
    if hashes["new"] != hashes["old"] or len(hashes["new"]) != 1 or counts["new"] != counts["old"]:
        raise AssertionError(f"the two scans decided differently: {hashes} over {counts} scans")

    # the core reads alone, on a core at rest (the batch's station)
    station = load_station(ROOT / "stations" / "hd_reactor_sim.toml")
    with tempfile.TemporaryDirectory(), LockstepRig(station, HDReactor(), dt_s=2.0) as rig:
        core = rig.core
        rig.step()
        reps = 2000 if quick else 20_000

        def reads_new() -> float:
            t0 = time.perf_counter()
            for _ in range(reps):
                s = core.snapshot()
                s.readings, s.stamps, s.outputs, s.tripped   # noqa: B018 - what a scan reads
            return (time.perf_counter() - t0) / reps

        def reads_old() -> float:
            t0 = time.perf_counter()
            for _ in range(reps):
                legacy_latest(core), legacy_rules(core), legacy_outputs(core)
            return (time.perf_counter() - t0) / reps

        read = best_of(rounds + 2, {"new": reads_new, "old": reads_old})

    return [Figure(f"{NAME}, {counts['new']} scans", best["new"] * 1e6, "us/scan", BASELINE, best["old"] * 1e6,
                   higher_is_better=False, limit=LIMIT),
            Figure(NAME_READ, read["new"] * 1e6, "us", "latest() + rules() + outputs() before the snapshot",
                   read["old"] * 1e6, higher_is_better=False)]
