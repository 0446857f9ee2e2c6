"""Meter counters -> what a batch consumed, honestly: roll-over, resets, gaps, and whether the figure is whole.

A batch's energy and gas are the difference of the meters' own totalisers (kWh, normal litres) between
the batch's start and its end, summed reading by reading. Counting deltas of a totaliser, rather than
integrating a power or flow reading, is what makes the figure right when polls are missed: a meter that
was silent for ten minutes and answers again has counted those ten minutes itself.

Each reading after the first adds ``value - previous``:

- a fall of more than ``NOISE`` with a known ``rollover`` modulus (a uint32 totaliser) is a roll-over when
  ``delta + rollover`` is plausible: it is added and counted;
- any other fall is a reset (a replaced meter, a cleared counter): what was used across it is unknown, so
  the figure becomes **incomplete** (a lower bound), and counting goes on from the new value;
- a rise faster than the meter's plausible maximum (``max_rate``, e.g. the heater's rated power with
  margin) is not believed: it is left out and the figure becomes incomplete, never silently high either.

Gaps: two readings further apart than ``gap_s`` are a gap, recorded with its times. The totaliser
bridges it, so a gap in the middle keeps the figure complete; it is still shown, because it is where the
live value (the core's channel) was missing. A meter with no reading near the batch's start (the baseline)
or none at or after its end is different: the consumption before the first or after the last reading is
unknown, the figure is **incomplete**, and the record says why.

All times are unix seconds on the controller's wall clock seam (the plant's clock on the HIL rig).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

NOISE = 1e-6          # relative: a float32 counter re-read may come back a hair lower; not a reset
MAX_GAPS = 50         # listed in the record; more are counted only
MAX_NOTES = 20


@dataclass(frozen=True)
class AccountingConfig:
    """``[accounting]`` of a station: which meter counters the batch figures come from, and the factors."""

    energy: str | None = None            # "instrument.measurement" of a counter (kWh)
    h2: str | None = None                # (NL)
    ar: str | None = None                # (NL)
    cooling_water: str | None = None     # (L)
    heater_rated_kw: Mapping[str, float] = field(default_factory=dict)   # duty output -> kW
    grid_kg_co2e_per_kwh: float | None = None
    max_rate_per_h: Mapping[str, float] = field(default_factory=dict)    # meter -> most it can count per hour
    gap_s: float = 60.0                  # readings further apart than this are a gap (wall seconds)
    close_wait_s: float = 30.0           # at the end, wait this long for every meter's end reading
    trend_every_s: float = 10.0          # process seconds between trend rows
    free_volume_l: float | None = None   # HD: the retort's free volume, for the H2 absorbed
    pressure_channel: str = "chamber_pressure"   # bar absolute
    temperature_channel: str = "chamber_temp"    # degC

    def source(self, meter: str) -> str | None:
        return {"energy": self.energy, "h2": self.h2, "ar": self.ar, "cooling_water": self.cooling_water}[meter]

    def scaled(self, time_scale: float) -> AccountingConfig:
        """On the HIL rig the clock runs ``time_scale`` times faster than the pollers: their wall-clock
        periods are process time ``time_scale`` times longer (like the channels' max ages)."""
        return replace(self, gap_s=self.gap_s * time_scale, close_wait_s=self.close_wait_s * time_scale)


@dataclass
class Reading:
    t: float              # unix seconds
    value: float


@dataclass
class CounterTracker:
    """One totaliser (``source`` = ``instrument.measurement``) through one batch."""

    name: str                  # energy | h2 | ar | cooling_water
    source: str
    unit: str                  # kWh | NL | L
    gap_s: float               # readings further apart than this: a gap
    max_rate: float = math.inf  # unit per second, the most the meter can plausibly count
    total: float = 0.0
    readings: int = 0
    rollovers: int = 0
    first: Reading | None = None
    last: Reading | None = None
    gaps: list[tuple[float, float]] = field(default_factory=list)
    gaps_unlisted: int = 0
    notes: list[str] = field(default_factory=list)
    broken: bool = False       # a reset or an implausible jump: the total is a lower bound

    def add(self, t: float, value: float, rollover: float | None = None) -> None:
        """One good reading of the counter (in order; an older one than the last is ignored)."""
        if not math.isfinite(value):
            return
        last = self.last
        if last is not None and t < last.t:
            return
        self.readings += 1
        if last is None:
            self.first = self.last = Reading(t, value)
            return
        dt = t - last.t
        if dt > self.gap_s:
            self._gap(last.t, t)
        delta = value - last.value
        slack = NOISE * max(abs(value), abs(last.value), 1.0)
        allowed = self.max_rate * max(dt, 0.0) + slack
        if delta < -slack:
            if rollover is not None and rollover > 0 and 0 <= delta + rollover <= allowed:
                delta += rollover
                self.rollovers += 1
            else:
                self._note(f"counter went back from {last.value:g} to {value:g} {self.unit}: reset or replaced;"
                           " what was used across it is unknown")
                self.broken = True
                delta = 0.0
        elif delta > allowed:
            self._note(f"counter jumped by {delta:g} {self.unit} in {dt:.0f} s (more than the plausible "
                       f"{self.max_rate * 3600:g} {self.unit}/h): left out")
            self.broken = True
            delta = 0.0
        self.total += max(delta, 0.0)
        self.last = Reading(t, value)

    def _gap(self, t0: float, t1: float) -> None:
        if len(self.gaps) < MAX_GAPS:
            self.gaps.append((t0, t1))
        else:
            self.gaps_unlisted += 1

    def _note(self, text: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text)

    def rebase(self, t_start: float) -> None:
        """The batch starts at ``t_start``: keep the last reading before it as the baseline when it is
        recent enough, forget everything else."""
        last = self.last if self.last is not None and t_start - self.last.t <= self.gap_s else None
        self.total, self.readings, self.rollovers, self.broken = 0.0, 0, 0, False
        self.gaps, self.gaps_unlisted, self.notes = [], 0, []
        self.first = self.last = None
        if last is not None:
            self.first = self.last = Reading(last.t, last.value)
            self.readings = 1

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
        return {"value": None if self.first is None else round(self.total, 6), "unit": self.unit,
                "complete": complete, "source": self.source, "readings": self.readings,
                "rollovers": self.rollovers,
                "gaps": [{"from": a, "to": b, "duration_s": round(b - a, 3)} for a, b in gaps],
                "first": None if self.first is None else {"t": self.first.t, "value": self.first.value},
                "last": None if self.last is None else {"t": self.last.t, "value": self.last.value},
                "notes": notes}

    # ---- persistence (the record continues across a power loss) ----

    def snapshot(self) -> dict[str, Any]:
        return {"total": self.total, "readings": self.readings, "rollovers": self.rollovers,
                "first": None if self.first is None else [self.first.t, self.first.value],
                "last": None if self.last is None else [self.last.t, self.last.value],
                "gaps": [list(g) for g in self.gaps], "gaps_unlisted": self.gaps_unlisted,
                "notes": list(self.notes), "broken": self.broken}

    def restore(self, snap: dict[str, Any]) -> None:
        self.total = float(snap["total"])
        self.readings = int(snap["readings"])
        self.rollovers = int(snap["rollovers"])
        self.first = None if snap["first"] is None else Reading(*map(float, snap["first"]))
        self.last = None if snap["last"] is None else Reading(*map(float, snap["last"]))
        self.gaps = [(float(a), float(b)) for a, b in snap["gaps"]]
        self.gaps_unlisted = int(snap.get("gaps_unlisted", 0))
        self.notes = [str(n) for n in snap["notes"]]
        self.broken = bool(snap["broken"])


@dataclass
class HeaterModel:
    """Energy from the heaters' applied duty and rated power: the cross-check of the metered figure
    (a meter wired to the wrong feeder, a failed heater zone, a wrong CT ratio show as a ratio far from 1)."""

    rated_kw: dict[str, float]       # duty output -> rated power
    kwh: float = 0.0
    _last_t: float | None = None

    def update(self, t_s: float, duties: dict[str, float]) -> None:
        """Called once per scan with the core time and the duties applied since the previous call."""
        if self._last_t is not None and t_s > self._last_t:
            dt = t_s - self._last_t
            self.kwh += sum(self.rated_kw.get(out, 0.0) * max(0.0, min(1.0, d)) for out, d in duties.items()) \
                * dt / 3600.0
        self._last_t = t_s

    def restart(self) -> None:
        """A new boot: the core clock starts again (the outage itself heated nothing: no power)."""
        self._last_t = None
