"""Relay autotune (Åström–Hägglund): let a relay make the loop oscillate, read Ku and Tu off the cycle.

The relay replaces the PID: the output is ``high`` until the PV rises above ``setpoint +
hysteresis``, then ``low`` until it falls below ``setpoint - hysteresis``, and so on. A plant with
enough phase lag settles into a limit cycle at about its ultimate frequency ``w = 2 pi / Tu``,
where its phase is about -180 degrees; the gain there is the ultimate gain.

``Ku`` is taken from the **first harmonics** of the relay output ``u`` and the PV ``y`` over each
cycle (harmonic balance)::

    U1 = integral over one cycle of u(t) exp(-j w t) dt,   Y1 likewise for y(t) - mean(y)
    Ku = |U1| / |Y1|

For a linear plant in a periodic steady state ``Y1 = G(jw) U1`` holds exactly, so this is
``1/|G(jw)|`` at the cycle's frequency, whatever the PV's waveform. The textbook describing-function
estimate from the relay amplitude ``d`` and the PV amplitude ``a`` (half the peak-to-peak)::

    Ku_df = 4 d / (pi * sqrt(a^2 - h^2))      d = (high - low) / 2 * sin(pi * D)

(``h`` the hysteresis, whose describing function puts the cycle on the line Im = -pi*h/(4d), the
square root taking the real part; ``D`` the fraction of the cycle the relay is high, ``sin(pi*D)``
the first harmonic of an asymmetric square wave) treats the PV as a sine. On a first-order plus
dead-time plant the PV is closer to a triangle and ``Ku_df`` reads 11-21 % low, against 0-3 % for
the harmonic balance (tests/test_autotune.py); the harmonic balance also averages noise over the
cycle where peaks pick it up. Both are reported; the gains use ``ku``.

**Bias**: the estimate assumes a cycle symmetric about the setpoint, i.e. a relay centred on the
output the setpoint needs. A furnace at 150 degC may need 20 % while the relay swings 0..100 %: the
cycle is lopsided and slower (Ku and Tu come out 20-30 % off). So after each cycle the relay is
re-centred on that cycle's mean output, ``u0 = mean(u)``, with ``d = min(u0 - relay_low,
relay_high - u0)``, until the centre moves less than 2 % of the span; only cycles after the last
move count.

Gains: **Tyreus–Luyben** (PID ``Kc = Ku/2.2, Ti = 2.2 Tu, Td = Tu/6.3``; PI ``Kc = Ku/3.2,
Ti = 2.2 Tu``). Chosen over Ziegler–Nichols (``Kc = 0.6 Ku, Ti = Tu/2``, quarter-amplitude decay,
25 % and more overshoot) because a furnace must not overshoot into its charge: Tyreus–Luyben has
about a third of ZN's gain and four times its integral time, and stays stable when the process gain
grows with temperature.

Cycles are counted between successive rising crossings of ``setpoint + hysteresis``; the first one
(start-up) and the one after each re-centring are discarded, and the result is the mean of the last
``cycles`` cycles once their periods and amplitudes agree within 10 %.
"""

from __future__ import annotations

import cmath
import math
from dataclasses import dataclass
from typing import Literal

from edge.spec.loops import PidGains

__all__ = ["AutotuneResult", "RelayAutotune", "TuningRule", "tyreus_luyben"]

TuningRule = Literal["tyreus_luyben_pid", "tyreus_luyben_pi"]
SETTLED_SPREAD = 0.10   # the cycles used must agree within 10 % (period and amplitude)
RECENTRE_STEP = 0.02    # re-centre the relay while its centre moves more than 2 % of the span
MIN_AMPLITUDE = 0.10    # the relay keeps at least 10 % of the half span, however close to a limit


@dataclass(frozen=True)
class AutotuneResult:
    ku: float            # ultimate gain, output fraction per unit of PV (harmonic balance)
    tu_s: float          # ultimate period, s
    amplitude: float     # PV amplitude a (half peak-to-peak), PV units
    gains: PidGains
    relay_low: float = 0.0    # the relay levels the result was measured with (after re-centring)
    relay_high: float = 1.0
    relay_amplitude: float = 0.0  # the effective d above
    ku_describing_function: float = 0.0  # 4d / (pi sqrt(a^2 - h^2)), for comparison
    cycles: int = 0
    rule: TuningRule = "tyreus_luyben_pid"


def tyreus_luyben(ku: float, tu_s: float, rule: TuningRule = "tyreus_luyben_pid") -> PidGains:
    """Tyreus–Luyben gains (ISA form) from the ultimate gain and period."""
    if rule == "tyreus_luyben_pi":
        return PidGains(kp=ku / 3.2, ti_s=2.2 * tu_s, td_s=0.0)
    return PidGains(kp=ku / 2.2, ti_s=2.2 * tu_s, td_s=tu_s / 6.3)


@dataclass(frozen=True)
class _Cycle:
    period: float
    amplitude: float  # (max - min) / 2 of the PV
    high_s: float     # time the relay was high within the cycle
    mean_output: float
    gain: float       # |U1| / |Y1| over this cycle


class RelayAutotune:
    """Step it every scan with the PV; apply what ``step`` returns until ``done`` or ``failed``.

    ``relay_low``/``relay_high`` bound the output (re-centring stays within them). After the end,
    either way, ``step`` returns ``relay_low``: hand the loop back to its PID."""

    def __init__(
        self,
        setpoint: float,
        *,
        relay_high: float = 1.0,
        relay_low: float = 0.0,
        hysteresis: float = 0.5,
        cycles: int = 3,
        max_duration_s: float = 6 * 3600.0,
        rule: TuningRule = "tyreus_luyben_pid",
        recentre: bool = True,
    ) -> None:
        if not all(math.isfinite(x) for x in (setpoint, relay_high, relay_low, hysteresis, max_duration_s)):
            raise ValueError("autotune parameters must be finite numbers")
        if not relay_high > relay_low:
            raise ValueError(f"relay_high ({relay_high}) must be above relay_low ({relay_low})")
        if hysteresis < 0.0:
            raise ValueError(f"hysteresis must be >= 0, got {hysteresis}")
        if cycles < 1:
            raise ValueError(f"cycles must be >= 1, got {cycles}")
        if max_duration_s <= 0.0:
            raise ValueError(f"max_duration_s must be > 0, got {max_duration_s}")
        if rule not in ("tyreus_luyben_pid", "tyreus_luyben_pi"):
            raise ValueError(f"unknown tuning rule {rule!r}")
        self.setpoint = setpoint
        self.relay_high = relay_high
        self.relay_low = relay_low
        self.hysteresis = hysteresis
        self.cycles = cycles
        self.max_duration_s = max_duration_s
        self.rule: TuningRule = rule
        self.recentre = recentre
        self._levels = (relay_low, relay_high)  # what the relay switches between now
        self._start_s: float | None = None
        self._high = False
        self._cycle_start: float | None = None  # last rising crossing of setpoint + hysteresis
        self._samples: list[tuple[float, float, float]] = []  # this cycle: (t, pv, output held until next)
        self._cycles: list[_Cycle] = []
        self._counted_from = 1  # index of the first cycle that may count (the first is the start-up)
        self._seen = (math.inf, -math.inf)
        self._result: AutotuneResult | None = None
        self._failed: str | None = None

    # ---------------------------------------------------------------- state

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def failed(self) -> str | None:
        """Why it failed, or None."""
        return self._failed

    @property
    def finished(self) -> bool:
        return self.done or self._failed is not None

    @property
    def cycles_measured(self) -> list[tuple[float, float]]:
        """Every relay cycle measured so far: (period s, PV amplitude), start-up included (progress)."""
        return [(c.period, c.amplitude) for c in self._cycles]

    @property
    def result(self) -> AutotuneResult:
        if self._result is None:
            state = f"it failed: {self._failed}" if self._failed else "it is still running"
            raise RuntimeError(f"no autotune result: {state}")
        return self._result

    # ---------------------------------------------------------------- the scan

    def step(self, pv: float, now_s: float) -> float:
        """One scan: the relay output to apply."""
        if self.finished:
            return self.relay_low
        if not math.isfinite(pv):
            return self._fail(f"the PV is not a number (sensor break) at t = {now_s:g} s")
        if self._start_s is None:
            self._start_s = now_s
            self._high = pv < self.setpoint
        self._seen = (min(self._seen[0], pv), max(self._seen[1], pv))
        if self._high and pv > self.setpoint + self.hysteresis:
            self._high = False
            self._close_cycle(now_s, pv)
        elif not self._high and pv < self.setpoint - self.hysteresis:
            self._high = True
        if self.finished:
            return self.relay_low
        if now_s - self._start_s > self.max_duration_s:
            return self._fail(self._why_not_done())
        output = self._levels[1] if self._high else self._levels[0]
        if self._cycle_start is not None and (not self._samples or now_s > self._samples[-1][0]):
            self._samples.append((now_s, pv, output))
        return output

    # ---------------------------------------------------------------- cycles

    def _close_cycle(self, now_s: float, pv: float) -> None:
        """A rising crossing ends one cycle and starts the next."""
        if self._cycle_start is not None and len(self._samples) >= 2:
            self._cycles.append(_measure(self._samples, now_s, pv, self._levels[1]))
            if self.recentre:
                self._recentre(self._cycles[-1].mean_output)
            self._evaluate()
        self._cycle_start = now_s
        self._samples = []

    def _recentre(self, centre: float) -> None:
        """Centre the relay on the output the setpoint needs (the last cycle's mean output)."""
        lo, hi = self.relay_low, self.relay_high
        if abs(centre - sum(self._levels) / 2.0) <= RECENTRE_STEP * (hi - lo):
            return
        d = max(min(centre - lo, hi - centre), MIN_AMPLITUDE * (hi - lo) / 2.0)
        centre = min(max(centre, lo + d), hi - d)
        self._levels = (centre - d, centre + d)
        self._counted_from = len(self._cycles) + 1  # the next cycle still starts from the old levels

    def _evaluate(self) -> None:
        recent = self._cycles[self._counted_from:][-self.cycles:]
        if len(recent) < self.cycles or _spread([c.period for c in recent]) > SETTLED_SPREAD \
                or _spread([c.amplitude for c in recent]) > SETTLED_SPREAD:
            return
        n = len(recent)
        tu = sum(c.period for c in recent) / n
        a = sum(c.amplitude for c in recent) / n
        ku = sum(c.gain for c in recent) / n
        duty = sum(c.high_s for c in recent) / sum(c.period for c in recent)
        low, high = self._levels
        d = (high - low) / 2.0 * math.sin(math.pi * duty)
        if a <= self.hysteresis or not (math.isfinite(ku) and ku > 0.0):
            self._fail(f"the PV amplitude ({a:g}) is not above the hysteresis ({self.hysteresis:g})")
            return
        ku_df = 4.0 * d / (math.pi * math.sqrt(a * a - self.hysteresis ** 2))
        self._result = AutotuneResult(
            ku=ku, tu_s=tu, amplitude=a, gains=tyreus_luyben(ku, tu, self.rule), relay_low=low, relay_high=high,
            relay_amplitude=d, ku_describing_function=ku_df, cycles=n, rule=self.rule)

    def _why_not_done(self) -> str:
        head = f"no settled oscillation within max_duration_s = {self.max_duration_s:g} s"
        lo, hi = self.setpoint - self.hysteresis, self.setpoint + self.hysteresis
        if self._seen[1] <= hi or self._seen[0] >= lo:
            return (f"{head}: the PV ({self._seen[0]:g} to {self._seen[1]:g}) never crossed the band "
                    f"{lo:g} to {hi:g} around the setpoint both ways (can the output range "
                    f"{self.relay_low:g} to {self.relay_high:g} reach the setpoint?)")
        counted = max(len(self._cycles) - self._counted_from, 0)
        return f"{head}: {counted} cycles counted of the {self.cycles} needed, not yet agreeing within 10 %"

    def _fail(self, reason: str) -> float:
        self._failed = reason
        self._high = False
        return self.relay_low


def _measure(samples: list[tuple[float, float, float]], end_s: float, end_pv: float, high: float) -> _Cycle:
    """One cycle: period, PV amplitude, time high, mean output and |U1| / |Y1|.

    The output is held between samples (exact integral), the PV linear between them (trapezoids);
    times are taken from the cycle's start."""
    t0 = samples[0][0]
    times = [t - t0 for t, _, _ in samples] + [end_s - t0]
    pvs = [pv for _, pv, _ in samples] + [end_pv]
    outs = [u for _, _, u in samples]
    spans = [times[k + 1] - times[k] for k in range(len(samples))]
    period = times[-1]
    w = 2.0 * math.pi / period
    mean_pv = sum((pvs[k] + pvs[k + 1]) / 2.0 * spans[k] for k in range(len(samples))) / period
    rot = [cmath.exp(-1j * w * t) for t in times]
    y1 = sum(((pvs[k] - mean_pv) * rot[k] + (pvs[k + 1] - mean_pv) * rot[k + 1]) / 2.0 * spans[k]
             for k in range(len(samples)))
    u1 = sum(outs[k] * (rot[k] - rot[k + 1]) for k in range(len(samples))) / (1j * w)
    return _Cycle(
        period=period,
        amplitude=(max(pvs) - min(pvs)) / 2.0,
        high_s=sum(spans[k] for k in range(len(samples)) if outs[k] == high),
        mean_output=sum(outs[k] * spans[k] for k in range(len(samples))) / period,
        gain=abs(u1) / abs(y1) if abs(y1) > 0.0 else math.inf,
    )


def _spread(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return (max(values) - min(values)) / abs(mean) if mean else math.inf
