"""Meter counters -> what a batch consumed, honestly: roll-over, resets, gaps, and whether the figure is whole.

A batch's energy and gas are the difference of the meters' own totalisers (kWh, normal litres) between
the batch's start and its end, summed reading by reading. Counting deltas of a totaliser, rather than
integrating a power or flow reading, is what makes the figure right when polls are missed: a meter that
was silent for ten minutes and answers again has counted those ten minutes itself.

A tracker follows its counter all the time; the batch is a window ``[start, end]`` on it. Each reading
after the first gives ``delta = value - previous``, and the part of the interval between the two
readings that lies inside the window counts (linearly: the reading before the start and the first one
after it share the interval at the start, and likewise at the end, so no poll period is counted twice
or lost). The delta is judged first:

- a fall with a known ``rollover`` modulus (a uint32 totaliser) is a roll-over only when the previous
  reading was in the counter's upper half, the new one in its lower half, and ``delta + rollover`` is
  plausible: it is added and counted. A counter that can wrap more than once between two readings
  (``max_rate x dt >= rollover``) leaves the figure incomplete;
- any other fall beyond float noise is a reset (a replaced meter, a cleared counter): what was used
  across it is unknown, so the figure becomes **incomplete** (a lower bound), and counting goes on
  from the new value;
- a rise faster than the meter's plausible maximum (``max_rate``, e.g. the heater's rated power with
  margin) is not believed: it is left out and the figure becomes incomplete, never silently high.

Gaps: two readings further apart than ``gap_s`` are a gap, recorded with its times. Inside the window
the totaliser bridges it, so the figure stays complete (the gap is listed: that is where the live value
was missing). A gap across the start or the end is different: the split of that interval is only an
estimate, and so is the figure (**incomplete**). So is a figure without a reading near the start or at
or after the end, one whose meter reported a device fault (a NaN reading: what it counted then is not
trusted), and one across a clock that went backwards. The record says why, each time.

A meter can also count wrong without any of that showing: a current transformer fitted backwards leaves
an SDM630's import counter at 0 (it counts the export register instead), a CT on one phase of three
counts a third. The heater-duty model (rated power x applied duty) is the cross-check: metered energy
below ``METER_FAULT_RATIO`` of the model, once the model has counted ``METER_FAULT_MIN_KWH``, is a meter
fault (:func:`meter_fault`) and the figure is incomplete with that reason. Half is far outside what a
healthy meter shows: the model matches the meter within 3 % in the HIL batch, and a mains voltage 10 %
low takes a resistive heater's power down by 19 %, not by half.

All times are unix seconds on the controller's wall clock seam (the plant's clock on the HIL rig).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

NOISE = 1e-6          # relative: a float32 counter re-read may come back a hair lower; not a reset
MAX_GAPS = 50         # listed in the record; more are counted only
MAX_NOTES = 20
FAULT_NOTE = "the meter reported a device fault: what it counted then is not trusted"
METER_FAULT_RATIO = 0.5       # metered energy below this share of the heater model: a meter fault
METER_FAULT_MIN_KWH = 1.0     # ... judged once the model counted this much (a batch that hardly heated: no judgement)


def meter_fault(metered_kwh: float | None, model_kwh: float | None) -> str | None:
    """Why the metered energy cannot be the heaters' (far below the duty model: module docstring), or None."""
    if metered_kwh is None or model_kwh is None or not model_kwh >= METER_FAULT_MIN_KWH:
        return None
    if metered_kwh >= METER_FAULT_RATIO * model_kwh:
        return None
    return (f"meter fault: metered {metered_kwh:.3g} kWh is below {METER_FAULT_RATIO:.0%} of the heater model's "
            f"{model_kwh:.3g} kWh (a current transformer fitted backwards or not on the heater's phases?)")


@dataclass
class Reading:
    t: float              # unix seconds
    value: float


@dataclass
class CounterTracker:
    """One totaliser (``source`` = ``instrument.measurement``), followed all the time; the batch is its window."""

    name: str                  # energy | h2 | ar | cooling_water
    source: str
    unit: str                  # kWh | NL | L
    gap_s: float               # readings further apart than this: a gap
    max_rate: float = math.inf  # unit per second, the most the meter can plausibly count
    start: float | None = None  # the window (the batch); None: no batch, nothing counts
    end: float | None = None
    total: float = 0.0
    readings: int = 0          # readings inside the window
    rollovers: int = 0
    first: Reading | None = None   # the reading the window's figure starts from
    last: Reading | None = None    # the latest reading, in or out of the window
    gaps: list[tuple[float, float]] = field(default_factory=list)
    gaps_unlisted: int = 0
    notes: list[str] = field(default_factory=list)
    broken: bool = False       # the total is a lower bound (or an estimate): the record says why
    _fault_since_last: bool = False   # a NaN (device fault) came since the last good reading

    def open_window(self, start: float) -> None:
        """A batch starts at ``start``: count from the last reading before it (interpolated to the start)."""
        self.start, self.end = start, None
        self.total, self.readings, self.rollovers, self.broken = 0.0, 0, 0, False
        self.gaps, self.gaps_unlisted, self.notes = [], 0, []
        self.first = self.last            # before the start: shares the interval to the next reading
        self.readings = 1 if self.last is not None and self.last.t >= start else 0

    def close_window(self, end: float) -> None:
        """The batch ended at ``end``: a reading after it still counts its share up to the end."""
        self.end = end

    def _inside(self, t: float) -> bool:
        return self.start is not None and t >= self.start and (self.end is None or t <= self.end)

    def add(self, t: float, value: float, rollover: float | None = None) -> None:
        """One reading of the counter; NaN: the meter reported a device fault at ``t``."""
        last = self.last
        if not math.isfinite(value):
            if self._inside(t):
                self._break(FAULT_NOTE)
            self._fault_since_last = True     # the interval to the next good reading is not trusted either
            return
        if last is not None and t < last.t:
            if self._inside(last.t) or self._inside(t):
                self._break("the clock went backwards between two readings: what was used then is unknown")
            self.last = Reading(t, value)
            return
        self.last = Reading(t, value)
        if last is None:
            if self._inside(t):
                self.first = Reading(t, value)
                self.readings += 1
            return
        faulted, self._fault_since_last = self._fault_since_last, False
        if self.start is None or t <= self.start or (self.end is not None and last.t >= self.end):
            return                                     # wholly outside the window
        if self.first is None:
            self.first = last
        dt = t - last.t
        lo, hi = max(last.t, self.start), min(t, self.end if self.end is not None else t)
        share = (hi - lo) / dt if dt > 0 else 1.0
        delta = self._delta(last, value, dt, rollover)
        if delta is None:                 # within float noise below the last value: keep the higher one
            self.last = Reading(t, last.value)
            delta = 0.0
        if faulted and share > 0:
            self._break(FAULT_NOTE)
        if dt > self.gap_s:
            self._gap(lo, hi)
            if share < 1.0:
                self._break(f"no reading for {dt:.0f} s across the batch's "
                            f"{'start' if last.t < self.start else 'end'}: its share of that interval is estimated")
        self.total += max(delta, 0.0) * share
        if self._inside(t):
            self.readings += 1

    def _delta(self, last: Reading, value: float, dt: float, rollover: float | None) -> float | None:
        """What was used between the two readings; None: a fall within float noise (nothing used)."""
        delta = value - last.value
        slack = NOISE * max(abs(value), abs(last.value), 1.0)
        allowed = self.max_rate * max(dt, 0.0) + slack
        # (a wrapping counter without a max rate cannot be judged here: the station file requires one)
        if rollover is not None and rollover > 0 and math.isfinite(self.max_rate) and self.max_rate * dt >= rollover:
            self._break(f"{dt:.0f} s between readings: the counter may have wrapped more than once")
        if -slack <= delta < 0:
            return None
        if delta < -slack:
            wrapped = delta + rollover if rollover is not None and rollover > 0 else math.nan
            if (last.value >= 0.5 * rollover if rollover else False) and value < 0.5 * (rollover or 0.0) \
                    and 0 <= wrapped <= allowed:
                self.rollovers += 1
                return wrapped
            self._break(f"counter went back from {last.value:g} to {value:g} {self.unit}: reset or replaced;"
                        " what was used across it is unknown")
            return 0.0
        if delta > allowed:
            self._break(f"counter jumped by {delta:g} {self.unit} in {dt:.0f} s (more than the plausible "
                        f"{self.max_rate * 3600:g} {self.unit}/h): left out")
            return 0.0
        return delta

    def _gap(self, t0: float, t1: float) -> None:
        if len(self.gaps) < MAX_GAPS:
            self.gaps.append((t0, t1))
        else:
            self.gaps_unlisted += 1

    def _break(self, text: str) -> None:
        self.broken = True
        if len(self.notes) < MAX_NOTES and text not in self.notes:
            self.notes.append(text)

    def has_reading_after(self, t: float) -> bool:
        return self.last is not None and self.last.t >= t

    def quantity(self, t_start: float, t_end: float | None) -> dict[str, Any]:
        """The record's figure (``t_end`` None while the batch runs: only the start is judged)."""
        notes = list(self.notes)
        complete = not self.broken
        if self.first is None:
            complete = False
            notes.append(f"{self.source}: no reading during the batch: {self.name} unknown")
        else:
            if self.first.t > t_start + self.gap_s:
                complete = False
                notes.append(f"first reading {self.first.t - t_start:.0f} s after the start: what was used before"
                             " it is missing")
            if t_end is not None and self.last is not None and self.last.t < t_end:
                complete = False
                notes.append(f"no reading at or after the end (last {t_end - self.last.t:.0f} s before it): what"
                             " was used after it is missing")
        gaps = list(self.gaps)
        if t_end is not None and self.last is not None and t_end - self.last.t > self.gap_s:
            gaps.append((self.last.t, t_end))
        if self.gaps_unlisted:
            notes.append(f"{self.gaps_unlisted} more gap(s) not listed")
        last = self.last if self.last is not None and (t_end is None or self.last.t <= t_end + self.gap_s) else None
        return {"value": None if self.first is None else round(self.total, 6), "unit": self.unit,
                "complete": complete, "source": self.source, "readings": self.readings,
                "rollovers": self.rollovers,
                "gaps": [{"from": a, "to": b, "duration_s": round(b - a, 3)} for a, b in gaps],
                "first": None if self.first is None else {"t": self.first.t, "value": self.first.value},
                "last": None if last is None else {"t": last.t, "value": last.value},
                "notes": notes}

    # ---- persistence (the record continues across a power loss) ----

    def snapshot(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "total": self.total, "readings": self.readings,
                "rollovers": self.rollovers,
                "first": None if self.first is None else [self.first.t, self.first.value],
                "last": None if self.last is None else [self.last.t, self.last.value],
                "gaps": [list(g) for g in self.gaps], "gaps_unlisted": self.gaps_unlisted,
                "notes": list(self.notes), "broken": self.broken}

    def restore(self, snap: dict[str, Any]) -> None:
        """KeyError / TypeError / ValueError: not a snapshot of a tracker (the caller treats it as damage)."""
        start, end = snap.get("start"), snap.get("end")
        self.start = None if start is None else float(start)
        self.end = None if end is None else float(end)
        self.total = float(snap["total"])
        self.readings = int(snap["readings"])
        self.rollovers = int(snap["rollovers"])
        self.first = None if snap["first"] is None else Reading(*map(float, snap["first"]))
        self.last = None if snap["last"] is None else Reading(*map(float, snap["last"]))
        self.gaps = [(float(a), float(b)) for a, b in snap["gaps"]]
        self.gaps_unlisted = int(snap["gaps_unlisted"])
        self.notes = [str(n) for n in snap["notes"]]
        self.broken = bool(snap["broken"])

