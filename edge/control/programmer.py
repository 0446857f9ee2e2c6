"""The setpoint programmer: runs one program (a phase's segments from the recipe) scan by scan.

What a furnace technician knows from an industrial programmer (Eurotherm 3504 / nanodac class):
ramps by rate or by time, steps, dwells, waits for a condition, holdback (guaranteed soak),
operator hold / resume / skip / abort, power-fail recovery (continue, ramp back, hold, abort),
plus the gas segments of a vacuum furnace (evacuate, backfill, admit H2 with top-up, vent).

Why it is written this way:

- ``step(now_s, readings)`` is the only thing that moves it, and it uses no clock but ``now_s``:
  the same scans give the same result, a simulated ten-hour batch runs in milliseconds, and a
  snapshot taken at any scan resumes exactly. Time the program did not run (a hold, holdback,
  a power outage) is simply not added to the segment's clock.
- Each scan interval is judged by the readings at its end: a PV outside the holdback band at
  ``now_s`` means the interval since the previous scan did not count. So a dwell is extended by
  exactly the time the PV was seen outside, to the scan period.
- A segment that ends within an interval hands the rest of the interval to the next one, so
  timing does not depend on the scan period.
- It decides nothing about safety: the interlocks in the C core do. Its gas demands are
  *intents* (output name -> level) that the sequencer merges and the core's gate may refuse.

Gas outputs: while a gas segment runs it demands every gas output of the plumbing (evacuate:
pump 1, vacuum valve 1, inlets 0, vent 0 -- the vent's closed level is 0 although it is safe
OPEN). After it, the state it left goes on through later segments: pumping after an evacuate,
all closed after a backfill or vent, H2 top-up after an admit_h2 (until a gas_off or the end).
Before the first gas segment there is no demand (an empty mapping): the sequencer decides.
"""

from __future__ import annotations

import enum
import hashlib
import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from edge.spec.plumbing import GasPlumbing
from edge.spec.recipe import (
    AdmitH2,
    Backfill,
    Condition,
    Dwell,
    End,
    Evacuate,
    GasOff,
    Holdback,
    Level,
    Ramp,
    Segment,
    Step,
    Threshold,
    Vent,
    Wait,
    describe_segment,
    segment_minutes,
    setpoint_after,
)

__all__ = ["DEFAULT_RAMP_BACK_C_PER_MIN", "ProgState", "ProgramStatus", "Programmer"]

SNAPSHOT_FORMAT = "reedge-programmer"
SNAPSHOT_VERSION = 1
EPS_S = 1e-9  # a segment due within this is due now (float sums of scan periods)
#: Ramp-back rate when neither the interrupted segment, nor the caller, nor an earlier ramp gives one.
DEFAULT_RAMP_BACK_C_PER_MIN = 2.0

GasMode = Literal["none", "pumping", "closed", "top_up"]
HoldCause = Literal["", "operator", "timeout", "power_fail"]
Strategy = Literal["continue", "ramp_back", "hold", "abort"]
_GAS_SEGMENTS = (Evacuate, Backfill, AdmitH2, Vent)


class ProgState(enum.Enum):
    RESET = "reset"          # not started
    RUN = "run"
    HOLD = "hold"            # operator hold, a timeout with on_timeout = "hold", or power-fail recovery
    HOLDBACK = "holdback"    # the PV is outside the holdback band: the segment's clock stops
    END = "end"
    ABORTED = "aborted"


@dataclass(frozen=True)
class ProgramStatus:
    state: ProgState
    segment_index: int          # len(program) once it ran off its end without an end segment
    segment_label: str
    segment_kind: str
    setpoint_c: float | None    # None: no temperature demand (heaters off)
    outputs: Mapping[str, int]  # gas intents: output -> level (1 = open / running); empty = no demand
    elapsed_s: float            # since start: includes holds and holdback, not power outages
    segment_elapsed_s: float    # the segment's own clock: stops in hold and holdback
    remaining_s: float | None   # estimate; None while a wait or gas segment is current or ahead
    message: str                # why holding / in holdback / aborted, for a person
    remaining_max_s: float | None = None  # as remaining_s with each wait and gas segment at its full timeout
    holdback_s: float = 0.0     # time this segment has spent in holdback


class Programmer:
    """One program, stepped by the caller's scan. See the module docstring for the rules."""

    def __init__(self, program: Sequence[Segment], plumbing: GasPlumbing, *, default_holdback: Holdback,
                 pv_channel: str = "chamber_temp") -> None:
        self.program: tuple[Segment, ...] = tuple(program)
        self.plumbing = plumbing
        self.default_holdback = default_holdback
        self.pv_channel = pv_channel
        _check_program(self.program, plumbing)
        self._reset()

    def _reset(self) -> None:
        self._state = ProgState.RESET
        self._index = 0
        self._clock = 0.0          # the segment's clock, s
        self._timeout_base = 0.0   # the segment clock at which its timeout period began
        self._holdback_s = 0.0
        self._elapsed = 0.0
        self._last_now = 0.0
        self._sp: float | None = None
        self._sp0: float | None = None   # the setpoint when the segment began (ramps by time)
        self._gas: GasMode = "none"
        self._top_up: tuple[float, float] | None = None  # (to_bar, below_bar)
        self._filling = False
        self._hold_cause: HoldCause = ""
        self._message = ""
        self._ref: tuple[float, float] | None = None     # pressure-stable reference: (bar, segment clock)
        self._recovery: tuple[float, float] | None = None  # ramp back: (target degC, degC/min)

    # ------------------------------------------------------------------ operator

    @property
    def state(self) -> ProgState:
        return self._state

    @property
    def segment_index(self) -> int:
        return self._index

    def start(self, now_s: float, pv_c: float) -> None:
        """Start at the first segment; the setpoint starts at the PV (bumpless; None if the PV is NaN)."""
        self._reset()
        self._state = ProgState.RUN
        self._last_now = now_s
        self._sp = self._sp0 = pv_c if math.isfinite(pv_c) else None

    def hold(self, now_s: float) -> None:
        """Operator hold: everything stops (setpoint, dwell, timeouts, H2 top-up). It takes effect from the
        last scan: the programmer cannot run the time since without readings."""
        if self._state in (ProgState.RUN, ProgState.HOLDBACK):
            self._state, self._hold_cause, self._message = ProgState.HOLD, "operator", "held by the operator"

    def resume(self, now_s: float) -> None:
        """Leave a hold. After a timeout hold the segment gets another full timeout; after a power-fail
        hold the setpoint ramps back first (``restore``)."""
        if self._state is not ProgState.HOLD:
            return
        if now_s > self._last_now:  # the held time counts in elapsed_s, not in the segment
            self._elapsed += now_s - self._last_now
            self._last_now = now_s
        if self._hold_cause == "timeout":
            self._timeout_base = self._clock
        self._state, self._hold_cause, self._message = ProgState.RUN, "", ""

    def skip(self, now_s: float) -> None:
        """End the current segment now and go to the next. The setpoint stays where it is (a skipped ramp
        does not jump to its target: that would heat faster than the ramp limit); a skipped admit_h2
        does not start the top-up; a skipped evacuate leaves the pump running. A hold by the operator
        or a power-fail hold stays a hold; holdback and a timeout hold end with their segment."""
        if self._state not in (ProgState.RUN, ProgState.HOLDBACK, ProgState.HOLD):
            return
        if self._index >= len(self.program) or isinstance(self.program[self._index], End):
            return  # nothing left to skip (an end segment is where the program stops)
        self._recovery = None
        segment = self.program[self._index]
        if isinstance(segment, _GAS_SEGMENTS):
            self._after_gas(segment, completed=False)
        if self._state is ProgState.HOLDBACK or self._hold_cause == "timeout":
            self._state, self._hold_cause, self._message = ProgState.RUN, "", ""
        self._next()

    def abort(self, reason: str) -> None:
        """Abort: no setpoint (heaters off), gas inlets closed. A second abort keeps the first reason."""
        if self._state is ProgState.ABORTED:
            return
        self._state, self._message = ProgState.ABORTED, reason
        self._sp = None
        self._recovery = None
        self._gas, self._top_up, self._filling = "closed", None, False

    # ------------------------------------------------------------------ the scan

    def step(self, now_s: float, readings: Mapping[str, float]) -> ProgramStatus:
        """Advance to ``now_s`` with the readings of this scan (channel -> value, NaN when not OK)."""
        if self._state is ProgState.RESET:
            return self._status()
        dt = now_s - self._last_now
        dt = dt if dt > 0.0 else 0.0  # a clock that steps back (or NaN) runs nothing
        if now_s > self._last_now:
            self._last_now = now_s
        pv = _reading(readings, self.pv_channel)
        if self._state in (ProgState.RUN, ProgState.HOLDBACK):
            self._elapsed += dt
            self._advance(dt, readings, pv)
        elif self._state is ProgState.HOLD:
            self._elapsed += dt
        self._update_top_up(readings)
        return self._status()

    def _advance(self, budget: float, readings: Mapping[str, float], pv: float) -> None:
        for _ in range(len(self.program) + 2):  # each pass ends a segment: bounded
            if self._recovery is not None:
                budget = self._ramp_back(budget, pv)
                if self._recovery is not None:
                    return
            if self._index >= len(self.program):
                self._finish(None)
                return
            used, done = self._run(self.program[self._index], budget, readings, pv)
            budget = max(0.0, budget - used)
            if not done or self._state not in (ProgState.RUN, ProgState.HOLDBACK):
                return
            self._next()

    def _next(self) -> None:
        self._index += 1
        self._clock = self._timeout_base = self._holdback_s = 0.0
        self._sp0 = self._sp
        self._ref = None
        if self._state is ProgState.HOLDBACK:
            self._state, self._message = ProgState.RUN, ""

    def _finish(self, end: End | None) -> None:
        """End: ``heaters_off`` drops the setpoint; without an end segment the setpoint is held."""
        self._state, self._message = ProgState.END, "program complete"
        if end is not None and end.action == "heaters_off":
            self._sp = None
        if self._gas == "top_up":
            self._gas, self._top_up, self._filling = "closed", None, False

    def _run(self, segment: Segment, budget: float, readings: Mapping[str, float], pv: float) -> tuple[float, bool]:
        """Run one segment for up to ``budget`` seconds: (seconds used, whether it ended)."""
        if isinstance(segment, Ramp):
            return self._ramp(segment, budget, pv)
        if isinstance(segment, Step):
            self._sp = segment.to_c
            return 0.0, True
        if isinstance(segment, Dwell):
            return self._dwell(segment, budget, pv)
        if isinstance(segment, GasOff):
            self._gas, self._top_up, self._filling = "closed", None, False
            return 0.0, True
        if isinstance(segment, End):
            self._finish(segment)
            return 0.0, False
        self._state, self._message = ProgState.RUN, ""
        met = self._met(segment, readings, self._clock + budget)
        if met:
            self._clock += budget
            if isinstance(segment, _GAS_SEGMENTS):
                self._after_gas(segment, completed=True)
            return budget, True
        return self._timed(segment, budget)

    # ---- temperature segments ----

    def _held_back(self, holdback: Holdback, pv: float, budget: float) -> bool:
        """Whether this interval is lost to holdback (state and message follow)."""
        sp = self._sp
        outside = holdback.outside(pv, sp) if sp is not None else holdback.mode != "off" and math.isnan(pv)
        if not outside:
            self._state, self._message = ProgState.RUN, ""
            return False
        self._state = ProgState.HOLDBACK
        self._holdback_s += budget
        if math.isnan(pv):
            self._message = f"holdback: no valid reading of {self.pv_channel}"
        else:
            side = "below" if sp is not None and pv < sp else "above"
            self._message = (f"holdback {holdback.mode}: {self.pv_channel} {pv:.1f} degC is {side} the setpoint "
                             f"{sp if sp is not None else math.nan:.1f} by more than {holdback.band_c:g} degC")
        return True

    def _ramp(self, segment: Ramp, budget: float, pv: float) -> tuple[float, bool]:
        if self._sp is None:  # started without a valid PV: the ramp starts from the first one
            if not math.isfinite(pv):
                self._state, self._message = ProgState.HOLDBACK, f"no valid reading of {self.pv_channel} " \
                                                                 "to start the ramp from"
                self._holdback_s += budget
                return budget, False
            self._sp = self._sp0 = pv
        if self._sp0 is None:
            self._sp0 = self._sp
        if self._held_back(segment.holdback or self.default_holdback, pv, budget):
            return budget, False
        target, sp0 = segment.to_c, self._sp0
        total = _ramp_seconds(segment, sp0)
        left = total - self._clock
        if budget >= left - EPS_S:
            self._sp, self._clock = target, total
            return max(left, 0.0), True
        self._clock += budget  # the setpoint follows from the clock: exact, whatever the scan period
        self._sp = sp0 + (target - sp0) * self._clock / total
        return budget, False

    def _dwell(self, segment: Dwell, budget: float, pv: float) -> tuple[float, bool]:
        if self._sp is None and math.isfinite(pv):
            self._sp = pv  # a dwell holds the setpoint it finds; with none yet, the PV
        if self._held_back(segment.holdback or self.default_holdback, pv, budget):
            return budget, False
        left = segment.duration_min * 60.0 - self._clock
        if budget >= left - EPS_S:
            self._clock += max(left, 0.0)
            return max(left, 0.0), True
        self._clock += budget
        return budget, False

    # ---- waits and gas segments ----

    def _met(self, segment: Segment, readings: Mapping[str, float], clock: float) -> bool:
        pl = self.plumbing
        if isinstance(segment, Wait):
            return self._condition(segment.until, readings, clock)
        if isinstance(segment, Evacuate):
            return _reading(readings, pl.vacuum_channel) <= segment.to_mbar
        if isinstance(segment, Backfill | AdmitH2):
            return _reading(readings, pl.pressure_channel) >= segment.to_bar
        if isinstance(segment, Vent):
            return _reading(readings, pl.pressure_channel) <= segment.to_bar
        return False

    def _condition(self, until: Condition, readings: Mapping[str, float], clock: float) -> bool:
        """NaN never satisfies a condition: a broken gauge must not end a wait."""
        if isinstance(until, Threshold):
            value = _reading(readings, until.channel)
            return value > until.value if until.above else value < until.value
        if isinstance(until, Level):
            return _reading(readings, until.channel) == until.level
        pressure = _reading(readings, self.plumbing.pressure_channel)
        if math.isnan(pressure):
            self._ref = None
            return False
        if self._ref is None or abs(pressure - self._ref[0]) > until.within_bar:
            self._ref = (pressure, clock)
            return False
        return clock - self._ref[1] >= until.for_min * 60.0

    def _timed(self, segment: Wait | Evacuate | Backfill | AdmitH2 | Vent, budget: float) -> tuple[float, bool]:
        """The condition is not met: run the clock, and act on the timeout when it comes."""
        limit = segment.timeout_min * 60.0
        ran = self._clock - self._timeout_base
        if ran + budget < limit - EPS_S:
            self._clock += budget
            return budget, False
        used = max(0.0, limit - ran)
        self._clock += used
        what = f"{describe_segment(segment, self._index)} timed out after {segment.timeout_min:g} min"
        if isinstance(segment, Wait):
            what += f" waiting for {segment.until.describe()}"
        if segment.on_timeout == "abort":
            self.abort(what)
            return used, False
        if segment.on_timeout == "hold":
            self._state, self._hold_cause = ProgState.HOLD, "timeout"
            self._message = f"{what}: holding (resume to wait another {segment.timeout_min:g} min, or skip)"
            return used, False
        if isinstance(segment, _GAS_SEGMENTS):
            self._after_gas(segment, completed=False)
        return used, True

    def _after_gas(self, segment: Evacuate | Backfill | AdmitH2 | Vent, *, completed: bool) -> None:
        """What a gas segment leaves for the later segments. Only a completed admit_h2 starts the top-up:
        H2 is never fed into a vessel whose first fill did not reach its pressure."""
        if isinstance(segment, Evacuate):
            self._gas, self._top_up = "pumping", None
        elif isinstance(segment, AdmitH2) and completed:
            self._gas, self._top_up = "top_up", (segment.to_bar, segment.top_up_below_bar)
        else:
            self._gas, self._top_up = "closed", None
        self._filling = False

    def _update_top_up(self, readings: Mapping[str, float]) -> None:
        """H2 top-up with hysteresis: open below top_up_below_bar, closed at to_bar; never on a NaN."""
        if self._top_up is None or self._state not in (ProgState.RUN, ProgState.HOLDBACK):
            self._filling = False
            return
        to_bar, below_bar = self._top_up
        pressure = _reading(readings, self.plumbing.pressure_channel)
        if math.isnan(pressure) or pressure >= to_bar:
            self._filling = False
        elif pressure < below_bar:
            self._filling = True

    def _outputs(self) -> dict[str, int]:
        pl = self.plumbing
        if self._state is ProgState.RESET:
            return {}
        if self._state is ProgState.ABORTED:
            return {name: 0 for name in pl.inlet_valves.values()}
        closed = {name: 0 for name in pl.outputs}
        pumping = {**closed, pl.vacuum_pump: 1, pl.vacuum_valve: 1}
        segment = self.program[self._index] if self._index < len(self.program) else None
        if isinstance(segment, _GAS_SEGMENTS) and self._state is not ProgState.END:
            if isinstance(segment, Evacuate):
                return pumping  # also while held: pumping is never a hazard
            if self._state is ProgState.HOLD:
                return closed
            if isinstance(segment, Backfill):
                return {**closed, pl.inlet(segment.gas): 1}
            if isinstance(segment, AdmitH2):
                return {**closed, pl.inlet("H2"): 1}
            return {**closed, pl.vent_valve: 1}
        if self._gas == "none":
            return {}
        if self._gas == "pumping":
            return pumping
        if self._gas == "top_up":
            return {**closed, pl.inlet("H2"): int(self._filling)}
        return closed

    # ------------------------------------------------------------------ status

    def _status(self) -> ProgramStatus:
        segment = self.program[self._index] if self._index < len(self.program) else None
        remaining, remaining_max = self._remaining()
        return ProgramStatus(
            state=self._state,
            segment_index=self._index,
            segment_label=segment.label if segment is not None else "",
            segment_kind=segment.kind if segment is not None else "end",
            setpoint_c=self._sp if self._state is not ProgState.RESET else None,
            outputs=types.MappingProxyType(self._outputs()),
            elapsed_s=self._elapsed,
            segment_elapsed_s=self._clock,
            remaining_s=remaining,
            message=self._message,
            remaining_max_s=remaining_max,
            holdback_s=self._holdback_s,
        )

    def _remaining(self) -> tuple[float | None, float | None]:
        """(estimate, worst case) in s: ramps and dwells exactly, waits and gas segments unknown / timeout."""
        if self._state in (ProgState.END, ProgState.ABORTED):
            return 0.0, 0.0
        known, total, worst = True, 0.0, 0.0
        sp = self._sp
        if self._recovery is not None and sp is not None:
            total += abs(self._recovery[0] - sp) / self._recovery[1] * 60.0
            sp = self._recovery[0]
        for i in range(self._index, len(self.program)):
            segment = self.program[i]
            minutes, exact = segment_minutes(segment, sp)
            seconds = minutes * 60.0
            if i == self._index and self._state is not ProgState.RESET:
                if (isinstance(segment, Ramp) and segment.rate_c_per_min is None) or isinstance(segment, Dwell):
                    seconds = max(0.0, seconds - self._clock)
                elif not exact:
                    seconds = max(0.0, seconds - (self._clock - self._timeout_base))
            if exact:
                total += seconds
            else:
                known = False
            worst += seconds
            sp = setpoint_after(segment, sp)
        return (total if known else None), worst

    # ------------------------------------------------------------------ snapshot and power-fail recovery

    def snapshot(self) -> dict[str, object]:
        """Everything needed to resume, JSON-safe (no NaN)."""
        return {
            "format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "program_sha256": _digest(self.program),
            "state": self._state.value, "segment_index": self._index, "segment_clock_s": self._clock,
            "timeout_base_s": self._timeout_base, "holdback_s": self._holdback_s, "elapsed_s": self._elapsed,
            "saved_at_s": self._last_now, "setpoint_c": self._sp, "segment_start_setpoint_c": self._sp0,
            "gas": self._gas, "top_up": list(self._top_up) if self._top_up is not None else None,
            "hold_cause": self._hold_cause, "message": self._message,
            "pressure_ref": list(self._ref) if self._ref is not None else None,
            "recovery": list(self._recovery) if self._recovery is not None else None,
        }

    @classmethod
    def restore(cls, program: Sequence[Segment], plumbing: GasPlumbing, snapshot: Mapping[str, object], *,
                default_holdback: Holdback, now_s: float, strategy: str, pv_c: float,
                pv_channel: str = "chamber_temp", ramp_back_rate_c_per_min: float | None = None) -> Programmer:
        """A programmer resumed after a power loss, by the recipe's strategy. The outage is not counted:
        the time base is shifted to ``now_s``.

        - ``continue``: where it was; the setpoint returns at once to the interrupted one.
        - ``ramp_back``: the setpoint starts at the measured PV and ramps back to the interrupted
          setpoint at the segment's rate if it is a ramp, else at ``ramp_back_rate_c_per_min`` (give
          the station's ramp limit), else at the last ramp's rate; then the segment goes on. A ramp
          the PV has already overtaken (a cooling ramp that cooled further in the outage) is joined
          at the PV instead.
        - ``hold``: in HOLD with the setpoint at the measured PV (heaters off if it is NaN); on resume it
          ramps back as above, then goes on.
        - ``abort``: ABORTED.
        A program that had not started, had ended or was aborted is restored as it was."""
        if strategy not in ("continue", "ramp_back", "hold", "abort"):
            raise ValueError(f"unknown power-fail strategy {strategy!r} (continue, ramp_back, hold or abort)")
        programmer = cls(program, plumbing, default_holdback=default_holdback, pv_channel=pv_channel)
        programmer._load(snapshot)
        programmer._last_now = now_s
        if programmer._state in (ProgState.RESET, ProgState.END, ProgState.ABORTED):
            return programmer
        if strategy == "abort":
            programmer.abort("power loss: the recipe's power-fail strategy is abort")
            return programmer
        if programmer._state is ProgState.HOLDBACK:
            programmer._state = ProgState.RUN  # re-judged at the next scan
        if strategy == "continue":
            return programmer
        rate = programmer._ramp_back_rate(ramp_back_rate_c_per_min)
        # a program that was held when the power went is held at the measured temperature too: its old
        # setpoint may be far from where the charge is now, and resuming must ramp back, not jump
        if strategy == "ramp_back" and programmer._state is not ProgState.HOLD:
            programmer._begin_ramp_back(pv_c, rate)
        else:
            target = programmer._sp
            programmer._sp = pv_c if math.isfinite(pv_c) else None
            programmer._recovery = (target, rate) if target is not None else None
            programmer._state, programmer._hold_cause = ProgState.HOLD, "power_fail"
            back = ": resume to go on" if target is None else f": resume to ramp back to {target:.1f} degC and go on"
            programmer._message = f"power loss: held at the measured temperature{back}"
        return programmer

    def _ramp_back_rate(self, fallback: float | None) -> float:
        """degC/min: the interrupted ramp's, else the caller's, else the last earlier ramp's, else any ramp's."""
        segment = self.program[self._index] if self._index < len(self.program) else None
        if isinstance(segment, Ramp):
            return _ramp_rate(segment, self._sp0)
        if fallback is not None and fallback > 0:
            return fallback
        earlier = [s for s in self.program[: self._index] if isinstance(s, Ramp)]
        later = [s for s in self.program[self._index:] if isinstance(s, Ramp)]
        for ramp in (*reversed(earlier), *later):
            if ramp.rate_c_per_min is not None:
                return ramp.rate_c_per_min
        return DEFAULT_RAMP_BACK_C_PER_MIN

    def _begin_ramp_back(self, pv: float, rate: float) -> None:
        target = self._sp
        if target is None:
            return
        if not math.isfinite(pv):
            self._sp, self._recovery = None, (target, rate)
            self._state, self._hold_cause = ProgState.HOLD, "power_fail"
            self._message = (f"power loss: no valid reading of {self.pv_channel} to ramp back from: resume when "
                             "the thermocouple reads")
            return
        segment = self.program[self._index] if self._index < len(self.program) else None
        if isinstance(segment, Ramp) and self._sp0 is not None and segment.to_c != self._sp0:
            direction = math.copysign(1.0, segment.to_c - self._sp0)
            if (pv - target) * direction > 0:  # the PV is further along the ramp: join it there
                joined = min(pv, segment.to_c) if direction > 0 else max(pv, segment.to_c)
                self._sp = joined
                self._clock = _ramp_seconds(segment, self._sp0) * (joined - self._sp0) / (segment.to_c - self._sp0)
                self._message = f"power loss: ramp joined at the measured {joined:.1f} degC"
                return
        self._sp, self._recovery = pv, (target, rate)
        self._message = f"power loss: ramping back to {target:.1f} degC at {rate:g} degC/min"

    def _ramp_back(self, budget: float, pv: float) -> float:
        """Run the ramp back to the interrupted setpoint; returns the time left for the segment."""
        assert self._recovery is not None
        target, rate = self._recovery
        if self._sp is None:
            if not math.isfinite(pv):
                self._state = ProgState.HOLDBACK
                self._message = f"no valid reading of {self.pv_channel} to ramp back from"
                self._holdback_s += budget
                return 0.0
            self._sp = pv
        segment = self.program[self._index] if self._index < len(self.program) else None
        holdback = segment.holdback if isinstance(segment, Ramp | Dwell) and segment.holdback else \
            self.default_holdback
        if self._held_back(holdback, pv, budget):
            return 0.0
        gap = target - self._sp
        need = abs(gap) / (rate / 60.0)
        if budget >= need - EPS_S:
            self._sp, self._recovery = target, None
            return budget - need
        self._sp += math.copysign(rate / 60.0 * budget, gap)
        self._message = f"ramping back to {target:.1f} degC after a power loss"
        return 0.0

    def _load(self, snap: Mapping[str, object]) -> None:
        """Read a snapshot; anything that does not fit this program raises ValueError (never trusted)."""
        try:
            if snap.get("format") != SNAPSHOT_FORMAT or snap.get("version") != SNAPSHOT_VERSION:
                raise ValueError("not a programmer snapshot of this version")
            if snap.get("program_sha256") != _digest(self.program):
                raise ValueError("the snapshot belongs to another program (the recipe changed?)")
            self._state = ProgState(snap["state"])
            self._index = int(cast(int, snap["segment_index"]))
            if not 0 <= self._index <= len(self.program):
                raise ValueError(f"segment index {self._index} out of range")
            self._clock = _float(snap["segment_clock_s"])
            self._timeout_base = _float(snap["timeout_base_s"])
            self._holdback_s = _float(snap["holdback_s"])
            self._elapsed = _float(snap["elapsed_s"])
            self._sp = _opt_float(snap["setpoint_c"])
            self._sp0 = _opt_float(snap["segment_start_setpoint_c"])
            gas = snap["gas"]
            if gas not in ("none", "pumping", "closed", "top_up"):
                raise ValueError(f"bad gas mode {gas!r}")
            self._gas = gas
            self._top_up = _opt_pair(snap["top_up"])
            cause = snap["hold_cause"]
            if cause not in ("", "operator", "timeout", "power_fail"):
                raise ValueError(f"bad hold cause {cause!r}")
            self._hold_cause = cause
            self._message = str(snap["message"])
            self._ref = _opt_pair(snap["pressure_ref"])
            self._recovery = _opt_pair(snap["recovery"])
        except (KeyError, TypeError, OverflowError) as exc:
            raise ValueError(f"programmer snapshot is incomplete or damaged: {exc!r}") from None


# ============================================================================ helpers


def _check_program(program: tuple[Segment, ...], plumbing: GasPlumbing) -> None:
    """What the programmer cannot run at all (``check_recipe`` reports these, and more, earlier)."""
    for index, segment in enumerate(program):
        where = describe_segment(segment, index)
        if isinstance(segment, End) and index != len(program) - 1:
            raise ValueError(f"{where}: an end segment must be the last")
        times = [getattr(segment, key, None) for key in ("rate_c_per_min", "duration_min", "timeout_min")]
        if any(t is not None and not (math.isfinite(t) and t > 0) for t in times):
            raise ValueError(f"{where}: rates, durations and timeouts must be finite and > 0")
        if isinstance(segment, Ramp) and (segment.rate_c_per_min is None) == (segment.duration_min is None):
            raise ValueError(f"{where}: a ramp takes exactly one of rate_c_per_min and duration_min")
        if isinstance(segment, Backfill):
            plumbing.inlet(segment.gas)
        if isinstance(segment, AdmitH2):
            plumbing.inlet("H2")


def _reading(readings: Mapping[str, float], channel: str | None) -> float:
    if channel is None:
        return math.nan
    value = readings.get(channel, math.nan)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _ramp_seconds(ramp: Ramp, sp0: float) -> float:
    """A ramp's whole duration from ``sp0``: by rate, or its duration_min."""
    if ramp.rate_c_per_min is not None:
        return abs(ramp.to_c - sp0) / ramp.rate_c_per_min * 60.0
    return (ramp.duration_min or 0.0) * 60.0


def _ramp_rate(ramp: Ramp, sp0: float | None) -> float:
    if ramp.rate_c_per_min is not None:
        return ramp.rate_c_per_min
    span = abs(ramp.to_c - sp0) if sp0 is not None else 0.0
    minutes = ramp.duration_min or 0.0
    return span / minutes if span > 0 and minutes > 0 else DEFAULT_RAMP_BACK_C_PER_MIN


def _digest(program: tuple[Segment, ...]) -> str:
    return hashlib.sha256(repr(program).encode()).hexdigest()


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)


def _opt_float(value: object) -> float | None:
    return None if value is None else _float(value)


def _opt_pair(value: object) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"expected a pair of numbers, got {value!r}")
    return _float(value[0]), _float(value[1])
