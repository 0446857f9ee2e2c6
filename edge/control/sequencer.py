"""The common machinery of the process sequencers (HD reactor, sintering furnace).

A sequencer is an explicit state machine: one method per phase, named after the process
sheet, each returning what it wants from the plant this scan (a ``Demand``: a temperature
setpoint for the control loop and gas-valve levels) and calling ``enter()`` when the phase
is done, with the reason. The recipe supplies the numbers; the phases supply the process
knowledge (when a leak test has passed, when absorption is complete).

Every phase change is recorded (``changes``: name, entry time, why the previous one ended)
for the event stream. Any interlock trip, a failed check or an operator abort goes to a
**safe sequence**: heaters off and H2 shut at once, then what the cause needs, as the station's
[safe_sequences] declares it per cause (a rule name, or ``air_inleak``):

- ``evacuate_backfill`` (the default): an inert purge as far as the core allows (evacuate and
  backfill argon, or, when a trip holds the vent open, an argon flush through the vent);
- ``backfill``: no pumping (air leaking in would be drawn onto the hot hydride), argon straight in
  and kept a little above atmosphere while the charge cools;
- ``isolate``: every gas valve closed, pump off: the charge keeps its atmosphere (cooling water
  lost: pumping against a hot wall without cooling is not safe).

then ``aborted``. The phase-local data lives in ``self.data`` and is
JSON-safe, so the whole sequencer can be snapshot for power-fail recovery.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edge.control.programmer import Programmer, ProgramStatus, ProgState
from edge.spec.plumbing import GasPlumbing
from edge.spec.recipe import INERT_HIGH_BAR, INERT_LOW_BAR, Recipe

Readings = Mapping[str, float]   # channel name -> value, NaN when the channel is not OK

ABORT_FLUSH_S = 300.0            # argon flush through an open vent in the safe sequence
ABORT_EVACUATE_MBAR = 10.0       # the safe sequence's evacuation before the argon backfill
ABORT_BACKFILL_BAR = 1.05
ABORT_STEP_TIMEOUT_S = 1800.0
TRANSDUCER_MIN_BAR = 0.5         # below this the process transducer is too coarse to stand for the vacuum gauge


@dataclass
class Demand:
    """What the sequencer wants from the plant this scan."""

    setpoint_c: float | None = None                 # None: no heat (the loop drives 0)
    outputs: dict[str, int] = field(default_factory=dict)  # output -> level (1 = open / running)
    program: ProgramStatus | None = None


@dataclass(frozen=True)
class PhaseChange:
    t_s: float
    phase: str
    previous: str
    reason: str                                     # why `previous` ended


class Sequencer:
    """Base class: phase bookkeeping, programs, operator actions, safe sequence, snapshots."""

    PROCESS: ClassVar[str] = ""
    PHASES: ClassVar[tuple[str, ...]] = ()          # the normal order
    FINAL: ClassVar[tuple[str, ...]] = ("done", "aborted")

    def __init__(self, recipe: Recipe, plumbing: GasPlumbing,
                 allowed: Callable[[str, int], bool] | None = None, *,
                 ramp_back_rate_c_per_min: float | None = None,
                 safe_sequences: Mapping[str, str] | None = None) -> None:
        """``allowed(output, level)`` tells whether the core would accept a level now (no trip forcing it);
        ``ramp_back_rate_c_per_min`` is the station's ramp limit, for a ramp back after a power loss;
        ``safe_sequences``: cause -> safe sequence (the station's [safe_sequences]), default evacuate_backfill."""
        self.safe_sequences = dict(safe_sequences or {})
        self.ramp_back_rate_c_per_min = ramp_back_rate_c_per_min
        self.recipe = recipe
        self.plumbing = plumbing
        self.allowed = allowed or (lambda name, level: True)
        self.phase = "idle"
        self.entered_s = 0.0
        self.data: dict[str, Any] = {}
        self.changes: list[PhaseChange] = []
        self.program: Programmer | None = None
        self.held: str | None = None                # why the operator (or recovery) holds the sequence
        self.abort_reason: str | None = None
        self.flags: dict[str, Any] = {}             # batch-wide facts that outlive a phase (JSON-safe)
        # what the phases measured, for the batch record's quality section (leak rise, O2 after purge,
        # H2 top-ups, final vacuum): kept here because a phase's data is gone in the scan it ends
        self.results: dict[str, float] = {}
        # channel -> when its latest reading was taken (s, the core's clock; the controller sets it every
        # scan): a slow gauge's repeat is not a new measurement, and its time is not the scan's
        self.stamps: Mapping[str, float] = {}
        self._last_scan_s: float | None = None
        self._last_outputs: dict[str, int] = {}

    # ---- bookkeeping ----

    @property
    def finished(self) -> bool:
        return self.phase in self.FINAL

    @property
    def running(self) -> bool:
        return self.phase not in ("idle", *self.FINAL)

    def enter(self, phase: str, now_s: float, reason: str) -> None:
        self.changes.append(PhaseChange(now_s, phase, self.phase, reason))
        self.phase = phase
        self.entered_s = now_s
        self.data = {}
        self.program = None

    def in_phase_s(self, now_s: float) -> float:
        return now_s - self.entered_s

    def next_phase(self, now_s: float, reason: str) -> None:
        i = self.PHASES.index(self.phase)
        self.enter(self.PHASES[i + 1] if i + 1 < len(self.PHASES) else "done", now_s, reason)

    def start(self, now_s: float) -> None:
        if self.running:
            raise RuntimeError(f"a batch is already running (phase {self.phase})")
        self.enter(self.PHASES[0], now_s, "batch started")

    # ---- programs (the temperature profiles inside phases) ----

    def run_program(self, phase: str, now_s: float, readings: Readings) -> ProgramStatus:
        """Step the phase's program from the recipe, starting it on the first call."""
        if self.program is None:
            self.program = Programmer(self.recipe.program(phase), self.plumbing,
                                      default_holdback=self.recipe.holdback,
                                      pv_channel=self.recipe.control_channel)
            self.program.start(now_s, readings.get(self.recipe.control_channel, math.nan))
        return self.program.step(now_s, readings)

    # ---- operator actions ----

    def hold(self, reason: str = "operator hold") -> None:
        self.held = reason
        if self.program is not None:
            self.program.hold(0.0)

    def resume(self, now_s: float) -> None:
        self.held = None
        if self.program is not None and self.program.state in (ProgState.HOLD,):
            self.program.resume(now_s)

    def skip(self, now_s: float) -> None:
        """Skip the current program segment (not a phase: phases guard the process)."""
        if self.program is not None:
            self.program.skip(now_s)

    def abort(self, now_s: float, reason: str, cause: str | None = None) -> None:
        """Go to the safe sequence the cause maps to (idempotent: a second abort keeps the first reason and
        sequence). ``cause``: an interlock rule's name or a process cause; None: the default sequence."""
        if self.phase in ("aborting", "aborted", "done", "idle"):
            return
        self.abort_reason = reason
        self.held = None
        self.flags["safe_sequence"] = self.safe_sequences.get(cause or "", "evacuate_backfill")
        self.flags["abort_cause"] = cause
        self.enter("aborting", now_s, reason)

    # ---- the scan ----

    def step(self, now_s: float, readings: Readings) -> Demand:
        if self.phase == "idle":
            return Demand()
        if self.phase in ("done", "aborted"):
            return Demand(outputs=self.keep_inert(readings))
        if self.phase == "aborting":
            return self.safe_sequence(now_s, readings)
        if self.held is not None:
            self._pause_clocks(now_s)
            return self.holding(now_s, readings)
        self._last_scan_s = now_s
        demand: Demand = getattr(self, f"phase_{self.phase}")(now_s, readings)
        self._last_outputs = dict(demand.outputs)
        return demand

    def _pause_clocks(self, now_s: float) -> None:
        """While held, the phase's own timers (timeouts, waits) stand still: a hold is not a delay of the process."""
        last = self._last_scan_s if self._last_scan_s is not None else now_s
        self._shift(now_s - last)
        self._last_scan_s = now_s

    def _shift(self, dt: float) -> None:
        self.entered_s += dt
        self.data = {k: (float(v) + dt if k.endswith("_at_s") else v) for k, v in self.data.items()}

    def holding(self, now_s: float, readings: Readings) -> Demand:
        """While held: keep the temperature where it is, close the gas inlets, and leave the pump, the
        vacuum valve and the vent as they were (a hold must not vent the charge gas or lose the vacuum)."""
        sp = None
        if self.program is not None:
            st = self.program.step(now_s, readings)
            sp = st.setpoint_c
        outputs = dict(self._last_outputs)
        outputs.update({v: 0 for v in self.plumbing.inlet_valves.values()})
        return Demand(setpoint_c=sp, outputs=outputs)

    def vacuum_mbar(self, r: Readings) -> float:
        """The vacuum gauge; the process transducer stands in only above TRANSDUCER_MIN_BAR, where its
        accuracy means something. NaN (no decision possible: wait, and let the timeout act) otherwise."""
        v = r.get(self.plumbing.vacuum_channel, math.nan)
        if not math.isnan(v):
            return v
        bar = r.get(self.plumbing.pressure_channel, math.nan)
        return bar * 1000.0 if bar >= TRANSDUCER_MIN_BAR else math.nan

    def backfill_inert(self, r: Readings, gas: str, to_bar: float) -> dict[str, int]:
        """The recipe's inert ``gas`` to its ``backfill_to_bar`` once, then kept above atmosphere by
        ``keep_inert`` with the same gas (the recipe check holds ``to_bar`` at or above INERT_HIGH_BAR, so
        the band never overrides the recipe's figure)."""
        out = self.closed()
        if not self.data.get("backfilled"):
            if r.get(self.plumbing.pressure_channel, math.nan) >= to_bar:
                self.data["backfilled"] = True
                self.flags.update(inert=True, inert_gas=gas)
            else:
                out[self.plumbing.inlet(gas)] = 1
            return out
        return self.keep_inert(r)

    def keep_inert(self, r: Readings) -> dict[str, int]:
        """Once inert gas has been let in to cool or to make safe, keep it a little above atmosphere
        (INERT_LOW_BAR to INERT_HIGH_BAR): a hot charge cools and the pressure falls, and seals then draw
        air onto pyrophoric powder. Topped up with the gas the recipe backfilled (argon by default)."""
        out = self.closed()
        ar = self.plumbing.inlet_valves.get(str(self.flags.get("inert_gas", "Ar")))
        if not self.flags.get("inert") or ar is None or not self.allowed(ar, 1):
            return out
        p = r.get(self.plumbing.pressure_channel, math.nan)
        filling = bool(self.flags.get("inert_filling"))
        if p < INERT_LOW_BAR:
            filling = True
        elif not p < INERT_HIGH_BAR:
            filling = False
        self.flags["inert_filling"] = filling
        out[ar] = 1 if filling else 0
        return out

    def closed(self) -> dict[str, int]:
        """Every gas valve closed, pump off: the idle gas state (the vent's closed level is 0)."""
        return {name: 0 for name in self.plumbing.outputs}

    def safe_sequence(self, now_s: float, readings: Readings) -> Demand:
        """Heaters off and H2 shut now, then the cause's sequence (``flags["safe_sequence"]``)."""
        kind = self.flags.get("safe_sequence", "evacuate_backfill")
        if kind == "isolate":
            self.enter("aborted", now_s, f"safe sequence isolate complete: heat off, valves closed, the charge "
                                         f"keeps its atmosphere ({self.abort_reason})")
            return Demand(outputs=self.closed())
        if kind == "backfill" and self.data.get("step", "start") == "start":
            ar = self.plumbing.inlet_valves.get("Ar")
            self.data["step_at_s"] = now_s
            self.data["step"] = "backfill" if ar is not None and self.allowed(ar, 1) else "closed"
        return self._evacuate_backfill(now_s, readings)

    def _evacuate_backfill(self, now_s: float, readings: Readings) -> Demand:
        """Heaters off and H2 shut now, then an inert purge as far as the core allows."""
        pl = self.plumbing
        out = self.closed()
        step = self.data.setdefault("step", "start")
        t_step = now_s - self.data.setdefault("step_at_s", now_s)
        pressure = readings.get(pl.pressure_channel, math.nan)
        vacuum = self.vacuum_mbar(readings)
        ar = pl.inlet_valves.get("Ar")

        def to(next_step: str) -> None:
            self.data["step"], self.data["step_at_s"] = next_step, now_s

        if step == "start":
            if ar is None or not self.allowed(ar, 1):
                to("closed")
            elif not self.allowed(pl.vent_valve, 0):       # a trip holds the vent open: flush through it
                to("flush")
            elif self.allowed(pl.vacuum_pump, 1) and self.allowed(pl.vacuum_valve, 1):
                to("evacuate")
            else:
                to("backfill")
        elif step == "flush" and ar is not None:
            out.update({ar: 1, pl.vent_valve: 1})
            if t_step >= ABORT_FLUSH_S or not self.allowed(ar, 1):
                to("closed")
        elif step == "evacuate":
            out.update({pl.vacuum_pump: 1, pl.vacuum_valve: 1})
            pump_allowed = self.allowed(pl.vacuum_pump, 1) and self.allowed(pl.vacuum_valve, 1)
            if vacuum <= ABORT_EVACUATE_MBAR or t_step >= ABORT_STEP_TIMEOUT_S or not pump_allowed:
                to("backfill")
        elif step == "backfill" and ar is not None:
            out[ar] = 1
            self.flags["inert"] = True
            if pressure >= ABORT_BACKFILL_BAR or t_step >= ABORT_STEP_TIMEOUT_S or not self.allowed(ar, 1):
                to("closed")
        if self.data["step"] == "closed":
            self.enter("aborted", now_s, f"safe sequence complete ({self.abort_reason})")
            return Demand(outputs=self.closed())
        return Demand(setpoint_c=None, outputs=out)

    # ---- snapshots and power-fail recovery ----
    # Times in ``data`` are stored under keys ending in "_at_s" (plant clock); recovery shifts
    # them to the new clock so that an outage does not count against a phase's timers.

    def snapshot(self, now_s: float) -> dict[str, Any]:
        return {"process": self.PROCESS, "phase": self.phase, "entered_s": self.entered_s, "data": self.data,
                "held": self.held, "abort_reason": self.abort_reason, "flags": self.flags, "results": self.results,
                "saved_at_s": now_s,
                "program": self.program.snapshot() if self.program is not None else None}

    def restart_point(self, phase: str) -> tuple[str, str | None]:
        """Where an interrupted phase resumes, and why it moves (None: in place). Subclasses refine."""
        return phase, None

    def recover(self, snap: Mapping[str, Any], now_s: float, readings: Readings, *, outage_s: float) -> str:
        """Resume after a power loss as the recipe says; returns what was done, for the event log."""
        pf = self.recipe.power_fail
        phase = str(snap["phase"])
        self.phase, self.entered_s = phase, float(snap["entered_s"])
        self.data = dict(snap["data"])
        self._shift(now_s - float(snap["saved_at_s"]))
        self._last_scan_s = now_s
        self.held, self.abort_reason = snap.get("held"), snap.get("abort_reason")
        self.flags = dict(snap.get("flags") or {})
        self.results = dict(snap.get("results") or {})
        if phase in ("idle", *self.FINAL):
            return f"nothing to resume (phase {phase})"
        if phase == "aborting":
            return "power loss during the safe sequence: continuing it"
        minutes = outage_s / 60.0
        if minutes > pf.max_outage_min:
            self.abort(now_s, f"power loss of {minutes:.1f} min exceeds the recipe's {pf.max_outage_min:g} min")
            return self.abort_reason or ""
        if pf.strategy == "abort":
            self.abort(now_s, f"power loss of {minutes:.1f} min: the recipe's strategy is abort")
            return self.abort_reason or ""
        target, why = self.restart_point(phase)
        if why is not None:
            self.enter(target, now_s, f"recovered after a power loss of {minutes:.1f} min: {why}")
        elif snap.get("program") is not None:
            self.program = Programmer.restore(
                self.recipe.program(phase), self.plumbing, snap["program"], default_holdback=self.recipe.holdback,
                pv_channel=self.recipe.control_channel, now_s=now_s, strategy=pf.strategy,
                pv_c=readings.get(self.recipe.control_channel, math.nan),
                ramp_back_rate_c_per_min=self.ramp_back_rate_c_per_min)
        if pf.strategy == "hold":
            self.held = f"recovered after a power loss of {minutes:.1f} min in {phase}: resume to continue"
        return (f"recovered after a power loss of {minutes:.1f} min in {phase}: "
                f"{why or pf.strategy.replace('_', ' ')}, now in {self.phase}")
