"""PID loops for heating: ISA standard form, derivative on measurement, conditional integration.

One ``Pid`` is stepped every scan with ``update(sp, pv, now_s)``; ``now_s`` is plant time and may
advance in uneven steps (or not at all). With ``e = sp - pv``::

    P = Kp * (b*sp - pv)                       b = setpoint_weight_b (1: plain error)
    I = Kp/Ti * integral(e dt)                 held in output units, so retunes stay bumpless
    Tf * dD/dt + D = -Kp*Td * dpv/dt           Tf = Td * derivative_filter (= Td/N)
    u = clamp(P + I + D, out_min, out_max)

and per scan, with ``dt = now_s - last`` (any dt >= 0)::

    I += Kp*dt/Ti * e                               (unless the anti-windup says no)
    D  = (Tf*D - Kp*Td*(pv - pv_prev)) / (Tf + dt)  (backward difference: stable for every dt)

Reverse acting (a heating loop): ``kp > 0`` and the output rises when the PV is below the setpoint.

Why derivative on the measurement: a setpoint step (a recipe's step segment) must not kick the
heater to full power for one scan; only a moving PV produces derivative action.

Anti-windup: **conditional integration** (integrator clamping). The integrator does not move while
the output sits on a limit and integrating would push it further in; a step that would cross the
limit is trimmed to end on it. Chosen over back-calculation because a furnace heat-up holds the
heater at 100 % for hours: the integrator keeps its last useful value, so the output comes off the
limit as soon as P + I drop below it (before the error changes sign, which keeps overshoot small),
and at the latest within one scan of the error changing sign; and there is no tracking time
constant to tune per furnace. Saturation the PID cannot see (the core's gate forcing the heater
off) is the controller's to report: it puts the loop in manual at the forced level and back to
auto afterwards, which is bumpless. At that return the derivative restarts from zero and the
integrator takes only the P term's share (``I = u - P``): a derivative carried through manual (a
quench: the PV falling 1.3 degC/s while no heat was wanted, D = +7.8) would otherwise be frozen into
the integrator as -7.8 and keep the heater off for hours after the PV fell below the setpoint.

Sensor break (a non-finite PV, which is how the core reports a faulted channel): in auto the
output goes to ``sensor_break_output`` and the integrator is frozen; when the PV comes back the
derivative restarts from the new reading (no kick), no integration happens over the gap, and
the output resumes from the frozen integrator, i.e. where the loop was before the break.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from edge.spec.loops import LoopSpec, PidGains

__all__ = ["Pid", "PidMode"]

PidMode = Literal["auto", "manual"]
SNAPSHOT_VERSION = 1


class Pid:
    """A PID loop stepped by ``update``; see the module docstring for the equations and choices."""

    @classmethod
    def for_loop(cls, loop: LoopSpec) -> Pid:
        """The PID a ``[loops.NAME]`` of the station file describes."""
        return cls(loop.gains, out_min=loop.out_min, out_max=loop.out_max, derivative_filter=loop.derivative_filter,
                   sensor_break_output=loop.sensor_break_output, setpoint_weight_b=loop.setpoint_weight_b)

    def __init__(
        self,
        gains: PidGains,
        *,
        out_min: float = 0.0,
        out_max: float = 1.0,
        derivative_filter: float = 0.1,
        sensor_break_output: float = 0.0,
        setpoint_weight_b: float = 1.0,
    ) -> None:
        if not (math.isfinite(out_min) and math.isfinite(out_max) and out_min < out_max):
            raise ValueError(f"need finite out_min < out_max, got {out_min}, {out_max}")
        if not 0.0 <= derivative_filter <= 1.0:
            raise ValueError(f"derivative_filter must be within 0..1 (Td/N with N >= 1), got {derivative_filter}")
        if not out_min <= sensor_break_output <= out_max:
            raise ValueError(f"sensor_break_output {sensor_break_output} is outside {out_min}..{out_max}")
        if not (math.isfinite(setpoint_weight_b) and 0.0 <= setpoint_weight_b <= 1.0):
            raise ValueError(f"setpoint_weight_b must be within 0..1, got {setpoint_weight_b}")
        self._gains = gains
        self.out_min = out_min
        self.out_max = out_max
        self.derivative_filter = derivative_filter
        self.sensor_break_output = sensor_break_output
        self.setpoint_weight_b = setpoint_weight_b
        self._mode: PidMode = "auto"
        self._manual_output = out_min
        self._integral = 0.0       # the I term, in output units
        self._d_term = 0.0         # the filtered D term, in output units
        self._output = out_min
        self._last_t: float | None = None
        self._pv_prev: float | None = None  # None: the next valid PV (re)starts the derivative
        self._last_sp: float | None = None
        self._sensor_bad = False
        self._transfer = False     # back-calculate the integrator on the next auto scan (bumpless)

    # ---------------------------------------------------------------- state

    @property
    def gains(self) -> PidGains:
        return self._gains

    @property
    def mode(self) -> PidMode:
        return self._mode

    @property
    def output(self) -> float:
        """The output of the last ``update`` (or the manual output just set)."""
        return self._output

    @property
    def integral(self) -> float:
        """The I term in output units."""
        return self._integral

    @property
    def sensor_bad(self) -> bool:
        """True while the last PV was not a number (the output is ``sensor_break_output``)."""
        return self._sensor_bad

    # ---------------------------------------------------------------- the scan

    def update(self, sp: float, pv: float, now_s: float) -> float:
        """One scan: the output to apply. A non-finite ``pv`` is a sensor break; a non-finite
        ``sp`` is a programming error (ValueError): with no setpoint, do not run the loop."""
        if not math.isfinite(sp):
            raise ValueError(f"setpoint must be a finite number, got {sp}")
        dt = self._advance_clock(now_s)
        if not math.isfinite(pv):
            self._sensor_bad = True
            self._pv_prev = None  # restart the derivative when the PV returns (no kick)
            self._output = self._manual_output if self._mode == "manual" else self.sensor_break_output
            return self._output
        restarting = self._pv_prev is None
        if self._sensor_bad or restarting:
            dt = 0.0  # nothing is integrated over a gap, and no derivative from a stale PV
            self._sensor_bad = False
            self._d_term = 0.0
            self._pv_prev = pv
        kp, ti, td = self._gains.kp, self._gains.ti_s, self._gains.td_s
        p_term = kp * (self.setpoint_weight_b * sp - pv)
        self._d_term = self._derivative(pv, dt, kp, td)
        self._pv_prev = pv
        self._last_sp = sp

        if self._mode == "manual":
            self._output = self._manual_output
            self._transfer = True
            return self._output
        if self._transfer:  # manual -> auto: start exactly where the output was, without the derivative
            self._d_term = 0.0   # a transient (the PV fell fast while nobody heated): into the integrator it
            self._integral = self._output - p_term   # would stay, and hold the heater off for hours
            self._transfer = False
        elif ti > 0.0 and dt > 0.0:
            self._integrate(kp * dt / ti * (sp - pv), p_term + self._d_term)
        self._output = min(max(p_term + self._integral + self._d_term, self.out_min), self.out_max)
        return self._output

    def _advance_clock(self, now_s: float) -> float:
        """dt since the last scan; 0 on the first scan, on a repeated time and if time went back."""
        if not math.isfinite(now_s):
            raise ValueError(f"now_s must be a finite number, got {now_s}")
        last, self._last_t = self._last_t, now_s
        return max(now_s - last, 0.0) if last is not None else 0.0

    def _derivative(self, pv: float, dt: float, kp: float, td: float) -> float:
        """Filtered derivative of the measurement (backward difference, any dt >= 0)."""
        if td <= 0.0 or self._pv_prev is None:
            return 0.0
        tf = td * self.derivative_filter
        if tf + dt <= 0.0:  # unfiltered and no time passed: hold
            return self._d_term
        return (tf * self._d_term - kp * td * (pv - self._pv_prev)) / (tf + dt)

    def _integrate(self, step: float, rest: float) -> None:
        """Conditional integration: never integrate further into a limit; trim a step that crosses it."""
        new = self._integral + step
        if step > 0.0 and rest + new > self.out_max:
            new = max(self._integral, self.out_max - rest)
        elif step < 0.0 and rest + new < self.out_min:
            new = min(self._integral, self.out_min - rest)
        self._integral = new

    # ---------------------------------------------------------------- operator actions

    def set_manual(self, output: float | None = None) -> None:
        """Manual mode at ``output`` (None: hold the present output, a bumpless auto -> manual)."""
        value = self._output if output is None else output
        if not (math.isfinite(value) and self.out_min <= value <= self.out_max):
            raise ValueError(f"manual output {value} is outside {self.out_min}..{self.out_max}")
        self._mode = "manual"
        self._manual_output = value
        self._output = value
        self._transfer = True

    def set_auto(self, now_s: float) -> None:
        """Back to auto, bumpless: the next scan back-calculates the integrator so that its output
        equals the present one. ``now_s`` is recorded as the last scan time if no scan ran yet."""
        if self._mode == "auto":
            return
        self._mode = "auto"
        self._transfer = True
        if self._last_t is None:
            self._advance_clock(now_s)

    def retune(self, gains: PidGains) -> None:
        """New gains without a bump: the integrator absorbs the change of the P term."""
        self._gains = gains
        if self._last_sp is not None and self._pv_prev is not None:
            self._d_term = 0.0
            self._integral = self._output - gains.kp * (self.setpoint_weight_b * self._last_sp - self._pv_prev)

    def reset(self) -> None:
        """Forget the history (integrator, derivative, time base); mode and manual output stay."""
        self._integral = 0.0
        self._d_term = 0.0
        self._last_t = None
        self._pv_prev = None
        self._last_sp = None
        self._sensor_bad = False
        self._transfer = False
        self._output = self._manual_output if self._mode == "manual" else self.out_min

    # ---------------------------------------------------------------- power-fail recovery

    def snapshot(self) -> dict[str, object]:
        """JSON-safe state. Times are not kept: plant time restarts with the process."""
        return {
            "version": SNAPSHOT_VERSION,
            "gains": {"kp": self._gains.kp, "ti_s": self._gains.ti_s, "td_s": self._gains.td_s},
            "mode": self._mode,
            "manual_output": self._manual_output,
            "integral": self._integral,
            "output": self._output,
        }

    def restore(self, snapshot: Mapping[str, object]) -> None:
        """Resume from ``snapshot()``: gains, mode, integrator and output. The next scan restarts
        the time base and the derivative (nothing integrated over the outage, no kick). Output
        limits stay those of this instance (the station file's). A malformed snapshot raises
        ValueError and changes nothing."""
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown PID snapshot version {snapshot.get('version')!r}")
        gains_data = snapshot.get("gains")
        if not isinstance(gains_data, Mapping):
            raise ValueError("PID snapshot: 'gains' must be a mapping")
        gains = PidGains(_number(gains_data, "kp"), _number(gains_data, "ti_s"), _number(gains_data, "td_s"))
        mode = snapshot.get("mode")
        if mode not in ("auto", "manual"):
            raise ValueError(f"PID snapshot: bad mode {mode!r}")
        manual = _clamp(_number(snapshot, "manual_output"), self.out_min, self.out_max)
        integral = _number(snapshot, "integral")
        output = _clamp(_number(snapshot, "output"), self.out_min, self.out_max)
        self.reset()
        self._gains = gains
        self._mode = "auto" if mode == "auto" else "manual"
        self._manual_output = manual
        self._integral = integral
        self._output = manual if mode == "manual" else output


def _number(data: Mapping[str, object], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"PID snapshot: {key!r} must be a finite number, got {value!r}")
    return float(value)


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(max(value, lo), hi)
