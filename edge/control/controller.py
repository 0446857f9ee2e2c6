"""The process controller: one scan reads the core, runs the sequence, the loops and the alarms,
and asks the core for outputs. The core's gate has the last word on every output.

A scan (``step``), in order:
  1. heartbeat the core's dead-man; take ONE snapshot of the core (``Core.snapshot``: the clock, every
     channel, output and rule, all of one tick) that every part of the scan reads: readings (NaN where
     the status is not OK), their stamps, the trips, the outputs forced safe (a trip the sampler takes
     during the scan is the next scan's to see, as its event is; the gate refuses meanwhile whatever
     it forces);
  2. drain the core's events: a trip aborts the batch to the safe sequence;
  3. step the sequencer: it returns a ``Demand`` (temperature setpoint, gas-valve levels); the agree
     rules' bands follow it (``edge.control.bands``: the station's ``soak_band`` at a settled soak);
  4. the PID loops turn the setpoint into heater duty; no setpoint means no heat;
  5. request every demanded output level (each scan: this refreshes the keep-alives); a
     refusal is an event with the gate's reason, reported once until something changes (the reason, an
     acceptance, a reset): an output a trip holds safe is asked for once and not again until the trip is
     reset; one a permissive refuses is asked again every RETRY_REFUSED_S, quietly (the core's own event
     for each retry is not relayed: ~120 identical events an hour after a trip said nothing new);
  6. the alarms, and what the station declares an alarm does while it is on the list (``on_active``:
     ``hold`` holds the recipe, ``stop_h2`` closes the H2 inlet in this very scan and keeps it closed);
  7. the beacon (``[annunciator] beacon``): on while a trip or an unacknowledged alarm exists, off
     otherwise; 8. persist the run state on every change and every few seconds.

The order matters for 5 and 6: the alarms are judged before the outputs are asked for, so that an
alarm that stops H2 closes the valve in the scan that raised it, not one scan later.

Everything a person or a historian should know goes to ``events`` (``ProcessEvent``), which
the telemetry drains. Start, operator actions and power-fail recovery are methods.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.control.alarms import AlarmEngine
from edge.control.bands import SoakBands
from edge.control.hd import HDSequencer
from edge.control.heater_model import HeaterModel
from edge.control.pid import Pid
from edge.control.runstate import RunStateCorrupt, RunStateStore
from edge.control.sequencer import Demand, Sequencer
from edge.control.sintering import SinteringSequencer
from edge.control.tuning import AIR_IN_FACTOR, PUMP_DOWN_S, LoopTuning, TuneRejected, result_fields
from edge.core import Core, CoreEvent, CoreSnapshot, EventKind, OutputRefused
from edge.files import room_problem
from edge.spec.alarms import SEVERITIES
from edge.spec.loops import LoopSpec
from edge.spec.recipe import Recipe
from edge.spec.recipe_check import check_recipe
from edge.spec.recipe_reader import parse_recipe
from edge.spec.station import Station

SEQUENCERS: dict[str, type[Sequencer]] = {"hd": HDSequencer, "sintering": SinteringSequencer}
SAVE_EVERY_S = 5.0   # wall seconds between periodic run-state saves (changes are saved at once)
RETRY_REFUSED_S = 30.0   # plant seconds before a refused output is asked for again
REFUSAL_FORGOTTEN_S = 120.0  # accepted this long without a new refusal: the refusal is over
BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")   # also its record's folder name (edge.batch)
REFUSED_ABORT_S = 600.0  # a demanded output refused this long aborts the batch: the step cannot proceed


@dataclass(frozen=True)
class ProcessEvent:
    t_s: float            # plant/core clock
    kind: str             # batch | phase | trip | core | refused | alarm | operator | recovery | band | connection
    message: str
    data: dict[str, Any] = field(default_factory=dict)


class BatchRejected(RuntimeError):
    """A batch cannot start: the recipe does not fit the station, a trip is active, one runs, or the state dir
    cannot take its run state and record (``edge.files.room_problem``)."""


class Controller:
    def __init__(self, core: Core, station: Station, *, state_path: str | os.PathLike[str],
                 wall_clock: Callable[[], float] = time.time, save_every_s: float = SAVE_EVERY_S,
                 save_clock: Callable[[], float] = time.monotonic) -> None:
        """``wall_clock`` (unix seconds) measures power-fail outages across restarts; the HIL rig passes
        the plant's clock, the only one that keeps running through its simulated outages. An outage is
        known to within ``save_every_s`` of ``save_clock`` (the periodic save; wall seconds); the real-time rig
        shortens it by its time scale, so that the outage on the plant's clock stays as precise as on a real
        station; the lockstep rig's ``save_clock`` is its plant's clock (slowed down), so that what a power loss
        leaves on disk is the same every run."""
        self.save_every_s = save_every_s
        self.save_clock = save_clock
        self.core = core
        self.station = station
        self.wall_clock = wall_clock
        self.store = RunStateStore(state_path, clock=wall_clock)
        self.sequencer: Sequencer | None = None
        self.recipe: Recipe | None = None
        self.batch: dict[str, Any] = {}
        self._holding_alarms = {a.name for a in station.alarms if "hold" in a.on_active}
        self._h2_stopping_alarms = {a.name for a in station.alarms if "stop_h2" in a.on_active}
        self._latched_rules = {r.name for r in station.core.rules if r.latch}
        sounds = SEVERITIES[SEVERITIES.index(station.beacon_sounds_from):]
        self._sounding_alarms = {a.name for a in station.alarms if a.severity in sounds}
        self.loops = {spec.name: (spec, Pid.for_loop(spec)) for spec in station.loops}
        self._duty_outputs = {spec.output for spec in station.loops}
        self.alarms = AlarmEngine(station.alarms)
        self.bands = SoakBands(core, station.core.rules)   # agree rules narrowed at a settled soak
        self.events: list[ProcessEvent] = []
        self.last_demand = Demand()
        self.last_duties: dict[str, float] = {}   # duty output -> duty applied by the last scan (batch record)
        self.outage_from_unix: float | None = None  # recover(): when the interrupted run was last saved
        # the heaters' energy from their applied duty and rated power, per batch, kept in the run state (the
        # batch record's cross-check of the metered energy: edge.batch)
        self.heater_model = HeaterModel(dict(station.accounting.heater_rated_kw))
        # why a batch id may not be used (``reedge run``: it has a batch record already); None: it may
        self.batch_id_check: Callable[[str], str | None] = lambda batch_id: None
        # why the state dir cannot take a batch's run state and record now (not writable, too full); None: it can
        self.storage_check: Callable[[], str | None] = lambda: room_problem(self.store.path.parent)
        self._safe = {o.name: o.safe_level for o in station.core.outputs}
        # safety contactors (outputs that supply others): closed whenever the station runs and nothing forces them
        self._contactors = tuple(o.name for o in station.core.outputs if o.supplies)
        # output -> [reason, refused since, last try, accepted at (None while refused)]; an output the
        # gate accepts and then drops again (a permissive flickering) keeps its "since"
        self._refusals: dict[str, list[Any]] = {}
        self._requested: set[str] = set()
        self._said_refused: dict[str, str] = {}   # output -> the refusal reason last reported (see _refused)
        self._changes_seen = 0     # phase changes already turned into events
        self._last_save_wall = 0.0
        self._saved_key: tuple[Any, ...] = ()
        self._snap: CoreSnapshot | None = None   # the scan's view of the core, while a scan runs
        self.tuning: LoopTuning | None = None      # a loop's autotune, between batches (edge.control.tuning)
        self.tune_only = False    # `reedge autotune`: this controller tunes and stops, it starts no batch

    # ---- clock and inputs ----

    def now_s(self) -> float:
        return self.core.now_ns() / 1e9

    def readings(self) -> dict[str, float]:
        return self.core.snapshot().readings

    def stamps(self) -> dict[str, float]:
        """When each channel's latest reading was taken (s, the core's clock, as ``now_s``)."""
        return self.core.snapshot().stamps

    def emit(self, t_s: float, kind: str, message: str, **data: Any) -> None:
        self.events.append(ProcessEvent(t_s, kind, message, data))

    def allowed(self, name: str, level: int) -> bool:
        """Would the core accept this level now? (Not forced safe by a trip.) In a scan: as of its snapshot
        (only a tick forces an output, and the gate judges every request anyway)."""
        state = (self._snap or self.core.snapshot()).outputs.get(name)
        return state is not None and (level == self._safe[name] or not state.forced)

    # ---- batches ----

    def start_batch(self, recipe: Recipe, *, batch_id: str, operator: str = "", feed: str = "",
                    mass_in_kg: float | None = None) -> None:
        """``feed`` and ``mass_in_kg``: what was loaded (the batch record's input side)."""
        if not BATCH_ID.fullmatch(batch_id):
            raise BatchRejected(f"batch id {batch_id!r}: letters, digits and . _ : - only, starting with a letter"
                                " or digit, at most 64 (it names the batch's record folder)")
        used = self.batch_id_check(batch_id)
        if used is not None:
            raise BatchRejected(used)
        if mass_in_kg is not None and not (isinstance(mass_in_kg, int | float) and math.isfinite(mass_in_kg)
                                           and 0 < mass_in_kg <= 1e5):
            raise BatchRejected(f"mass in must be a number of kg above 0 and at most 100000, got {mass_in_kg!r}")
        if self.sequencer is not None and self.sequencer.running:
            raise BatchRejected(f"batch {self.batch.get('id')} is running (phase {self.sequencer.phase})")
        if self.tuning is not None:
            raise BatchRejected(f"loop {self.tuning.loop.name} is being autotuned: abort the tune first")
        if self.tune_only:
            raise BatchRejected("this controller runs `reedge autotune`: no batch until it has stopped")
        problems = check_recipe(recipe, self.station)
        if problems:
            raise BatchRejected("recipe does not fit this station:\n" + "\n".join(f"  {p}" for p in problems))
        fault = self.core.core_fault_text()
        if fault:       # e.g. a welded watchdog relay: nothing may leave its safe level, so no batch either
            raise BatchRejected(f"core fault: {fault}: every output is held safe (fix the cause, reset at the "
                                "cabinet)")
        tripped = [name for name, r in self.core.rules().items() if r.tripped]
        if tripped:
            raise BatchRejected(f"interlocks tripped: {', '.join(tripped)} (clear and reset them first)")
        kind = SEQUENCERS.get(recipe.process)
        if kind is None:
            raise BatchRejected(f"no sequencer for process {recipe.process!r}")
        storage = self.storage_check()   # last: it writes a file; a batch that cannot save would run unrecorded
        if storage is not None:
            raise BatchRejected(storage)
        now = self.now_s()
        self.recipe = recipe
        self.sequencer = self._new_sequencer(kind, recipe)
        self._changes_seen = 0
        self.batch = {"id": batch_id, "operator": operator, "feed": feed, "mass_in_kg": mass_in_kg,
                      "recipe": recipe.name,
                      "recipe_sha256": hashlib.sha256(recipe.text.encode()).hexdigest(),
                      "started_unix_s": self.wall_clock(), "started_s": now}
        for _, pid in self.loops.values():
            pid.reset()
        self.heater_model.kwh = 0.0
        self.heater_model.restart()
        self.sequencer.start(now)
        self.emit(now, "batch", f"batch {batch_id} started: {recipe.name}", batch=dict(self.batch))
        self.save(force=True)

    def _new_sequencer(self, kind: type[Sequencer], recipe: Recipe) -> Sequencer:
        return kind(recipe, self.station.plumbing, self.allowed,
                    ramp_back_rate_c_per_min=self.station.limits.max_ramp_c_per_min,
                    safe_sequences=self.station.safe_sequences)

    def hold(self, reason: str = "operator hold") -> None:
        self._seq().hold(reason)
        self.emit(self.now_s(), "operator", f"hold: {reason}")

    def resume(self) -> None:
        """Refused (BatchRejected) while an alarm that holds the recipe is still on the operator's list."""
        holding = self.holding_alarms()
        if holding:
            raise BatchRejected(f"alarm {', '.join(holding)} holds the recipe: clear and acknowledge it first")
        self._seq().resume(self.now_s())
        self.emit(self.now_s(), "operator", "resume")

    def skip(self) -> None:
        self._seq().skip(self.now_s())
        self.emit(self.now_s(), "operator", "skip segment")

    def abort(self, reason: str = "operator abort") -> None:
        """The batch to its safe sequence; with no batch running, a loop's autotune ends (heater off)."""
        if self.tuning is not None and not (self.sequencer is not None and self.sequencer.running):
            self._end_tune(self.now_s(), f"aborted: {reason}")
            self.emit(self.now_s(), "operator", f"abort: {reason}")
            return
        self._seq().abort(self.now_s(), reason)
        self.emit(self.now_s(), "operator", f"abort: {reason}")

    # ---- a loop's autotune (edge.control.tuning) ----

    def start_autotune(self, loop: str, setpoint_c: object) -> None:
        """Tune ``loop`` around ``setpoint_c`` between batches; ``TuneRejected`` says why not."""
        if self.sequencer is not None and self.sequencer.running:
            raise TuneRejected(f"batch {self.batch.get('id')} is running (phase {self.sequencer.phase}): tune "
                               "between batches")
        if self.tuning is not None:
            raise TuneRejected(f"loop {self.tuning.loop.name} is being autotuned already")
        spec = LoopTuning.check(self.loops[loop][0] if loop in self.loops else None, loop, list(self.loops),
                                setpoint_c, self.station.limits.max_temperature_for)
        fault = self.core.core_fault_text()
        tripped = [name for name, r in self.core.rules().items() if r.tripped]
        if fault or tripped:
            raise TuneRejected(f"core fault: {fault}" if fault else
                               f"interlocks tripped: {', '.join(tripped)} (clear and reset them first)")
        channel = self.station.plumbing.vacuum_channel
        if channel not in self.core.snapshot().readings:
            raise TuneRejected(f"the tune heats only under vacuum, as a recipe does, and this station has no vacuum "
                               f"channel {channel!r}")
        now = self.now_s()
        assert isinstance(setpoint_c, int | float)
        self.tuning = LoopTuning(spec, float(setpoint_c), now)
        self.loops[loop][1].reset()
        self.emit(now, "autotune", f"autotune of loop {loop} started: pumping down, then a relay "
                  f"{spec.out_min:g}-{spec.out_max:g} around {setpoint_c:g} degC", loop=loop,
                  setpoint_c=float(setpoint_c), state="started")

    def _tune(self, now: float, spec: LoopSpec, readings: Mapping[str, float], forced: bool) -> float:
        """The duty the tune asks of its loop's output this scan; ends the tune when it is done or must stop."""
        tuning = self.tuning
        assert tuning is not None
        if forced:
            self._end_tune(now, f"aborted: the core holds {spec.output} safe (a trip)")
            return 0.0
        channel, limit = self.station.plumbing.vacuum_channel, self.station.limits.min_vacuum_before_heating_mbar
        vacuum = readings.get(channel, math.nan)
        if not tuning.pumped:           # no heat before the vacuum a recipe needs (recipe_check's rule)
            if vacuum <= limit:
                tuning.pumped = True
                self.emit(now, "autotune", f"autotune of loop {spec.name}: {channel} {vacuum:.3g} mbar, at most "
                          f"{limit:g}: the relay starts", loop=spec.name, state="pumped")
            elif now - tuning.started_s > PUMP_DOWN_S:
                self._end_tune(now, f"aborted: {channel} still {vacuum:.3g} mbar after {PUMP_DOWN_S / 60:g} min of "
                                    f"pumping, above {limit:g} (a leak, the pump, the gauge?)")
                return 0.0
            else:
                return 0.0
        if not vacuum <= AIR_IN_FACTOR * limit:
            self._end_tune(now, f"aborted: {channel} reads {vacuum:g} mbar: air or gas is coming in (the pump runs "
                                f"throughout the tune)")
            return 0.0
        duty = tuning.step(readings.get(spec.pv, math.nan), now)
        for cycle in tuning.new_cycles():
            self.emit(now, "autotune", f"autotune of loop {spec.name}: cycle {cycle['cycle']}, period "
                      f"{cycle['period_s']:g} s, amplitude {cycle['amplitude_c']:g} degC", loop=spec.name,
                      state="cycle", **cycle)
        if tuning.result is not None or tuning.failed is not None:
            self._end_tune(now, "")
            return 0.0
        return duty

    def _end_tune(self, now: float, why: str) -> None:
        """The tune is over: its result or why not as one event; the loop back to manual at 0 (heater off)."""
        tuning, self.tuning = self.tuning, None
        if tuning is None:
            return
        name = tuning.loop.name
        self.loops[name][1].set_manual(0.0)
        self.core.set_duty(tuning.loop.output, 0.0)    # the safe level: always accepted
        result = tuning.result
        if result is not None and not why:
            fields = result_fields(name, result)
            self.emit(now, "autotune", f"autotune of loop {name} done: Ku {fields['ku']:g}, Tu {fields['tu_s']:g} s: "
                      f"kp {fields['kp']:g}, ti_s {fields['ti_s']:g}, td_s {fields['td_s']:g} "
                      f"({result.rule}, {result.cycles} cycles)", state="done", **fields)
        else:
            self.emit(now, "autotune", f"autotune of loop {name} {why or 'failed: ' + str(tuning.failed)}; "
                      "heater off", loop=name, state="failed")

    def batch_finished(self) -> bool:
        """A batch ran and is done or aborted."""
        return self.sequencer is not None and self.sequencer.finished

    def _seq(self) -> Sequencer:
        if self.sequencer is None:
            raise BatchRejected("no batch")
        return self.sequencer

    # ---- power-fail recovery ----

    def recover(self) -> str | None:
        """Resume a batch a power loss interrupted, as its recipe says. None when there is none."""
        now = self.now_s()
        try:
            loaded = self.store.load()
        except RunStateCorrupt as exc:
            kept = self.store.quarantine()
            self.emit(now, "recovery", f"run state unreadable, kept as {kept.name}: {exc}; no batch resumed")
            return f"corrupt run state quarantined: {exc}"
        if loaded is None:
            return None
        state, saved_unix = loaded
        self.outage_from_unix = saved_unix
        recipe = parse_recipe(state["recipe_text"], state.get("recipe_source", "<run state>"))
        kind = SEQUENCERS[recipe.process]
        self.recipe = recipe
        self.batch = dict(state["batch"])
        self.sequencer = self._new_sequencer(kind, recipe)
        self._changes_seen = 0
        outage_s = self.wall_clock() - saved_unix
        if outage_s < 0:
            # the wall clock is behind the last save (no RTC, NTP not yet synced): the outage is unknown,
            # and an unknown outage may be longer than the recipe allows
            self.emit(now, "recovery", f"system clock is {-outage_s:.0f} s behind the last save: outage unknown")
            outage_s = math.inf
        message = self.sequencer.recover(state["sequencer"], now, self.readings(), outage_s=outage_s)
        changed = self._changed_since(state, recipe)
        if changed is not None and self.sequencer.running and self.sequencer.phase != "aborting":
            self.sequencer.abort(now, f"recovery refused: {changed}")
            message = f"{message}; aborted: {changed}"
        for name, snap in state.get("loops", {}).items():
            if name in self.loops:
                self.loops[name][1].restore(snap)
        if state.get("alarms"):
            self.alarms.restore(state["alarms"])
        self.heater_model.kwh = float(state.get("heater_model_kwh", 0.0))
        self.heater_model.restart()       # a new boot's core clock; without power nothing heated meanwhile
        self.emit(now, "recovery", message, outage_s=outage_s, batch=self.batch.get("id"))
        self.save(force=True)
        return message

    def _changed_since(self, state: Mapping[str, Any], recipe: Recipe) -> str | None:
        """Why the interrupted batch may not go on under this station, or None. The run state names the
        station and the hash of its file's text; a different station, a different (or unknown) file, or a
        recipe that no longer passes the station's current limits: the batch goes to the safe sequence."""
        saved_id, saved_hash = state.get("station"), state.get("station_sha256")
        if saved_id != self.station.identity.station_id:
            return f"the batch was run by station {saved_id!r}, this is {self.station.identity.station_id!r}"
        if saved_hash != self.station.content_sha256:
            now = self.station.content_sha256[:12]
            what = "not recorded" if saved_hash is None else f"{str(saved_hash)[:12]}, now {now}"
            return f"the station file changed since the batch started (sha256 {what})"
        problems = check_recipe(recipe, self.station)
        if problems:
            return "the recipe no longer fits this station: " + "; ".join(str(p) for p in problems)
        return None

    # ---- the scan ----

    def step(self) -> None:
        self.core.heartbeat()
        snap = self._snap = self.core.snapshot()
        try:
            self._scan(snap)
        finally:
            self._snap = None

    def _scan(self, snap: CoreSnapshot) -> None:
        """One scan on one snapshot of the core (see the module docstring)."""
        now = snap.t_s
        readings = snap.readings
        for event in self.core.drain_events():
            self._core_event(now, event)
        seq = self.sequencer
        if seq is not None and seq.running and seq.phase != "aborting":
            # events can be missed (a trip latched before a restart, an overflowing ring): the state decides
            tripped = snap.tripped
            if tripped:
                seq.abort(now, f"interlock {tripped[0]} tripped", cause=tripped[0])
        if self.tuning is not None and snap.tripped:      # any trip ends a tune, whatever outputs it forces
            self._end_tune(now, f"aborted: interlock {snap.tripped[0]} tripped")
        heating = seq is not None and seq.running     # before the step: the scan that finishes still counts
        if seq is not None:
            seq.stamps = snap.stamps
        demand = seq.step(now, readings) if seq is not None else Demand()
        if self.tuning is not None:      # the gas side is the tune's: the pump on, every other valve closed
            pl = self.station.plumbing
            demand = Demand(outputs={pl.vacuum_pump: 1, pl.vacuum_valve: 1})
        self.last_demand = demand
        self._bands(now, demand, readings)
        if heating:
            self.heater_model.update(now, self.last_duties)   # the duties of the last scan held until now
        duties = self._loops(now, readings, demand, snap)
        self.last_duties = duties
        for a in self.alarms.update(now, readings, {name: demand.setpoint_c for name in self.loops}, duties):
            flags = {"nuisance": True} if a.nuisance else {}
            self.emit(now, "alarm", a.message, alarm=a.name, state=a.kind, severity=a.severity, **flags)
        demand = self._alarm_actions(now, demand)
        self._outputs(now, demand, snap)
        self._beacon(snap)
        self._report_phases()
        self.save()

    def _report_phases(self) -> None:
        """The sequence's phase changes since the last scan as events (and the batch's end)."""
        seq = self.sequencer
        if seq is None:
            return
        for change in seq.changes[self._changes_seen:]:
            self.emit(change.t_s, "phase", f"{change.previous} -> {change.phase}: {change.reason}",
                      phase=change.phase, previous=change.previous, reason=change.reason)
            if change.phase in seq.FINAL:
                self.emit(change.t_s, "batch", f"batch {self.batch.get('id')} {change.phase}: {change.reason}")
        self._changes_seen = len(seq.changes)

    def _bands(self, now: float, demand: Demand, readings: Mapping[str, float]) -> None:
        """The agreement bands for this scan: narrowed at a settled soak of a running batch, else the
        station's (the core refuses anything looser, and keeps a tripped rule's band until reset)."""
        seq = self.sequencer
        active = seq is not None and seq.running and seq.phase != "aborting"
        pv = readings.get(self.recipe.control_channel, math.nan) if self.recipe is not None else math.nan
        for change in self.bands.update(now, demand, pv, active):
            self.emit(now, "band", f"{change.rule}: band {change.band:g} ({change.reason})", rule=change.rule,
                      band=change.band)

    # ---- alarms that act ----

    def holding_alarms(self) -> list[str]:
        """Alarms declared ``on_active = ["hold"]`` that are on the operator's list (active or unacked)."""
        return [name for name in self.alarms.active() if name in self._holding_alarms]

    def _alarm_actions(self, now: float, demand: Demand) -> Demand:
        """What the station declares an alarm does while it is active or unacknowledged: ``hold`` the
        recipe (the sequencer holds from the next scan), ``stop_h2`` (the H2 inlet closed in this scan)."""
        listed = self.alarms.active()
        stopping = [name for name in listed if name in self._h2_stopping_alarms]
        h2 = self.station.plumbing.inlet_valves.get("H2")
        closed = self._safe.get(h2 or "")
        if stopping and h2 is not None and closed is not None and demand.outputs.get(h2, closed) != closed:
            demand = Demand(setpoint_c=demand.setpoint_c, outputs={**demand.outputs, h2: closed},
                            program=demand.program)
        holding = [name for name in listed if name in self._holding_alarms]
        seq = self.sequencer
        if holding and seq is not None and seq.running and seq.phase != "aborting" and seq.held is None:
            seq.hold(f"alarm {holding[0]}")
            self.emit(now, "alarm", f"recipe held by alarm {holding[0]}", alarm=holding[0], state="hold")
        return demand

    def beacon_wanted(self, snap: CoreSnapshot | None = None) -> bool:
        """On while a trip exists (a latched rule tripped, or any rule tripped while a batch runs: a lid
        opened to load the idle furnace is no alarm) or an alarm at least as severe as the station's
        ``[annunciator] sounds_from`` is unacknowledged. ``snap``: the scan's (default: the core now)."""
        seq = self.sequencer
        running = seq is not None and seq.running
        tripped = any(running or name in self._latched_rules for name in (snap or self.core.snapshot()).tripped)
        return tripped or any(name in self._sounding_alarms for name in self.alarms.unacknowledged())

    def _beacon(self, snap: CoreSnapshot) -> None:
        """Drive the beacon each scan; a trip that has it in its action forces it on in the core anyway."""
        name = self.station.beacon
        if name is None:
            return
        level = 1 if self.beacon_wanted(snap) else 0
        state = snap.outputs.get(name)
        if state is None or state.forced:
            return
        try:
            self.core.request_output(name, level)
        except OutputRefused as exc:
            self._refused(self.now_s(), name, exc.message)

    def drain_core_events(self) -> None:
        """The core's pending events as ProcessEvents, without a scan (at shutdown, after ``core.stop()``:
        a scan would drive the outputs again)."""
        now = self.now_s()
        for event in self.core.drain_events():
            self._core_event(now, event)

    def _core_event(self, now: float, e: CoreEvent) -> None:
        if e.kind is EventKind.OVERRUN:
            return
        if e.kind is EventKind.REFUSED and e.output in self._said_refused:
            return     # a refusal of this controller's request: it reports them itself, once (_refused_said)
        if e.kind is EventKind.RESET:
            self._said_refused.clear()     # after a reset a refusal is news again
        kind = "trip" if e.kind is EventKind.TRIP else "core"
        # core_event: the original, so the telemetry maps its kind exactly (edge.telemetry.events)
        self.emit(e.t_ns / 1e9, kind, e.detail, rule=e.rule, output=e.output, first_out=e.first_out, core_event=e,
                  core_kind=e.kind.name, wall_ns=e.wall_ns)
        if e.kind is EventKind.TRIP and self.sequencer is not None and self.sequencer.running:
            self.sequencer.abort(now, f"interlock {e.rule} tripped", cause=e.rule)
        if e.kind is EventKind.TRIP and self.tuning is not None:   # even one that cleared since the last scan
            self._end_tune(now, f"aborted: interlock {e.rule} tripped")

    def _loops(self, now: float, readings: Mapping[str, float], demand: Demand,
               snap: CoreSnapshot) -> dict[str, float]:
        """Setpoint -> duty per loop. While no heat is wanted, or the gate holds the heater off (a trip
        forces it, or a refusal waits for its retry), the loop tracks 0 in manual: the integrator cannot
        wind up against a heater that is not heating, and the return to auto is bumpless."""
        duties: dict[str, float] = {}
        states = snap.outputs
        for spec, pid in self.loops.values():
            out = spec.output
            if self.tuning is not None and self.tuning.loop.name == spec.name:
                duty = self._tune(now, spec, readings, states[out].forced)
                try:
                    self.core.set_duty(out, duty)
                except OutputRefused as exc:
                    self._end_tune(now, f"aborted: {out} refused: {exc.message}")
                    duty = 0.0
                duties[out] = duty
                continue
            refused = self._refusals.get(out)
            waiting = refused is not None and refused[3] is None and now - refused[2] < RETRY_REFUSED_S
            if demand.setpoint_c is None or states[out].forced or waiting:
                if pid.mode == "auto" or pid.output != 0.0:
                    pid.set_manual(0.0)
                self.core.set_duty(out, 0.0)   # the safe level: always accepted
                duties[out] = 0.0
                continue
            if pid.mode == "manual":
                pid.set_auto(now)
            duty = pid.update(demand.setpoint_c, readings.get(spec.pv, math.nan), now)
            try:
                self.core.set_duty(out, duty)
                if duty > 0:
                    self._accepted(now, out)
            except OutputRefused as exc:
                self._refused(now, out, exc.message)
                pid.set_manual(0.0)
                duty = 0.0
            duties[out] = duty     # what was applied: the loop-break alarm judges that
        return duties

    def _outputs(self, now: float, demand: Demand, snap: CoreSnapshot) -> None:
        self._keep_contactors_closed(demand, snap)
        for name, level in demand.outputs.items():
            refused = self._refusals.get(name)
            away = level != self._safe[name]
            if away and name in self._said_refused and snap.outputs[name].forced:
                continue   # a trip holds it safe and that was said: asked again once the trip is reset
            if refused is not None and refused[3] is None and away and now - refused[2] < RETRY_REFUSED_S:
                continue   # asked again later: a refusal is an event, not something to hammer every scan
            try:
                self.core.request_output(name, level)
                self._accepted(now, name, away)
                self._requested.add(name)
            except OutputRefused as exc:
                self._refused(now, name, exc.message)
        self._check_refusals(now, demand)
        for name in self._requested - set(demand.outputs):   # no longer demanded: back to safe
            self.core.request_output(name, self._safe[name])
            self._requested.discard(name)

    def _keep_contactors_closed(self, demand: Demand, snap: CoreSnapshot) -> None:
        """Request every safety contactor on, each scan (its keep-alive), unless a trip or the watchdog
        proof test holds it open: then the core's events say why, and asking would only add refusals."""
        if not self._contactors:
            return
        states = snap.outputs
        for name in self._contactors:
            if name in demand.outputs or states[name].forced:
                continue
            try:
                self.core.request_output(name, 1 - self._safe[name])
                self._said_refused.pop(name, None)
            except OutputRefused as exc:   # a permissive on it: said once per reason, asked again each scan
                self._refused_said(self.now_s(), name, exc.message)

    def _refused(self, now: float, name: str, reason: str) -> None:
        previous = self._refusals.get(name)
        self._refused_said(now, name, reason)
        self._refusals[name] = [reason, previous[1] if previous else now, now, None]

    def _refused_said(self, now: float, name: str, reason: str) -> None:
        """Report a refusal when it is news: a new reason for this output since it was last accepted, or since
        a reset (``_core_event``); the same refusal on a retry is not (nor is the core's event for it)."""
        if self._said_refused.get(name) != reason:
            self.emit(now, "refused", reason, output=name)
            self._said_refused[name] = reason

    def _accepted(self, now: float, name: str, away: bool = True) -> None:
        """``away``: the level was not the safe one (the safe level is always accepted: that says nothing)."""
        record = self._refusals.get(name)
        if record is not None and record[3] is None:
            record[3] = now
        if away:
            self._said_refused.pop(name, None)

    def _check_refusals(self, now: float, demand: Demand) -> None:
        """An output the sequence needs, refused for REFUSED_ABORT_S: the step cannot go on."""
        for name in list(self._refusals):
            if name not in demand.outputs and not (name in self._duty_outputs and demand.setpoint_c is not None):
                del self._refusals[name]      # no longer wanted: forget the refusal
                continue
            reason, since, _, accepted = self._refusals[name]
            if accepted is not None and now - accepted >= REFUSAL_FORGOTTEN_S:
                del self._refusals[name]
                continue
            seq = self.sequencer
            if seq is not None and seq.running and seq.phase != "aborting" and now - since >= REFUSED_ABORT_S:
                seq.abort(now, f"{name} refused for {(now - since) / 60:.0f} min: {reason}")
                del self._refusals[name]

    # ---- persistence ----

    def snapshot(self) -> dict[str, Any]:
        assert self.sequencer is not None and self.recipe is not None
        return {"batch": self.batch, "recipe_text": self.recipe.text, "recipe_source": str(self.recipe.source),
                "station": self.station.identity.station_id, "station_sha256": self.station.content_sha256,
                "sequencer": self.sequencer.snapshot(self.now_s()),
                "loops": {name: pid.snapshot() for name, (_, pid) in self.loops.items()},
                "alarms": self.alarms.snapshot(), "heater_model_kwh": self.heater_model.kwh}

    def save(self, force: bool = False) -> None:
        seq = self.sequencer
        if seq is None:
            return
        prog = seq.program
        key = (seq.phase, seq.held, seq.data.get("step"), prog.segment_index if prog is not None else None)
        wall = self.save_clock()
        if force or key != self._saved_key or wall - self._last_save_wall >= self.save_every_s:
            try:
                self.store.save(self.snapshot())
            except OSError as exc:
                # a full or failing disk must not stop the scan (the dead-man would trip the batch):
                # report it once per failure, keep controlling, try again next scan
                if self._saved_key != ("failed",):
                    self.emit(self.now_s(), "recovery", f"run state could not be saved: {exc}")
                self._saved_key = ("failed",)
                return
            self._saved_key = key
            self._last_save_wall = wall
