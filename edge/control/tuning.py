"""A loop's relay autotune run on the station, between batches, under the core's interlocks.

``edge.control.autotune`` is the method (relay, harmonic balance, Tyreus–Luyben); this is how the
controller runs it on a real loop (``reedge autotune``, the maintenance role's ``autotune`` command):

- **Only when idle and safe** (no batch starts while it runs): no batch running, no interlock tripped, no
  core fault, the setpoint inside the station's temperature limit for the loop's PV.
- **Heat only under vacuum**, the rule every recipe follows before it heats (no hot zone or powder heated
  in air, no H2 left with a hydride): the tune first pumps down (heater off) to the station's
  ``min_vacuum_before_heating_mbar``, ``PUMP_DOWN_S`` at most; the pump runs throughout, every other gas
  valve closed (a finished batch's inert top-up does not run meanwhile), and a vacuum worse than
  ``AIR_IN_FACTOR`` times that limit (air or gas coming in) ends the tune.
- The relay drives the loop's output the normal way (``Core.set_duty``): the core's gate, permissives,
  interlocks and dead-man hold the limits exactly as in a batch; tuning only replaces the PID's duty.
- **Aborted, outputs safe**, by anything that makes it unsafe or pointless: any interlock trip (even one that
  cleared between two scans) or a forced output (the core already holds it safe; the tune stops asking),
  the vacuum lost, a refused duty, a sensor break, the operator's
  ``abort``, a controller restart (a tune is not resumed after a power loss: the heater stays
  off until someone asks again).
- **Progress** as events, one per measured relay cycle (period, PV amplitude), and the result (Ku, Tu and
  the gains) in one ``autotune`` event; the gains go into the station file only when a person asks
  (``reedge autotune --write``, ``edge.spec.station.gains``), never from a remote command.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.control.autotune import AutotuneResult, RelayAutotune
from edge.spec.loops import LoopSpec

__all__ = ["AIR_IN_FACTOR", "HYSTERESIS_C", "MAX_DURATION_S", "PUMP_DOWN_S", "LoopTuning", "TuneRejected"]

HYSTERESIS_C = 1.0            # the relay's switching band: above a thermocouple's noise, far below a cycle
MAX_DURATION_S = 4 * 3600.0   # a furnace that has not settled into a cycle by then will not: fail, heater off
PUMP_DOWN_S = 1800.0          # a tight vessel reaches the limit in minutes: longer is a leak, the pump or the gauge
AIR_IN_FACTOR = 100.0         # heating outgasses (a program waits for it); 100x the limit is air or gas coming in


class TuneRejected(RuntimeError):
    """An autotune cannot start (or go on): the reason, for a person."""


@dataclass
class LoopTuning:
    """One autotune of one loop: what the controller's scan asks of it."""

    loop: LoopSpec
    setpoint_c: float
    started_s: float
    tuner: RelayAutotune = field(init=False)
    cycles_said: int = 0
    pumped: bool = False      # the vacuum before heating was reached: the relay runs

    def __post_init__(self) -> None:
        self.tuner = RelayAutotune(self.setpoint_c, relay_low=self.loop.out_min, relay_high=self.loop.out_max,
                                   hysteresis=HYSTERESIS_C, max_duration_s=MAX_DURATION_S)

    @staticmethod
    def check(loop: LoopSpec | None, loop_name: str, known: list[str], setpoint_c: object,
              max_for: Callable[[str], float]) -> LoopSpec:
        """The loop to tune, or ``TuneRejected`` naming what is wrong with the request (``max_for``: the station's
        temperature limit for a channel)."""
        if loop is None:
            raise TuneRejected(f"no loop {loop_name!r} on this station (its loops: {', '.join(known) or 'none'})")
        if isinstance(setpoint_c, bool) or not isinstance(setpoint_c, int | float) or not math.isfinite(setpoint_c):
            raise TuneRejected(f"setpoint must be a number of degC, got {setpoint_c!r}")
        max_c = max_for(loop.pv)
        if not 0.0 < setpoint_c <= max_c - 2 * HYSTERESIS_C - 10.0:
            raise TuneRejected(f"setpoint {setpoint_c:g} degC: the relay swings around it, so it must stay at least "
                               f"{2 * HYSTERESIS_C + 10.0:g} degC below the station's limit for {loop.pv} "
                               f"({max_c:g} degC)")
        return loop

    def step(self, pv: float, now_s: float) -> float:
        """The relay's duty for this scan."""
        return self.tuner.step(pv, now_s)

    def new_cycles(self) -> list[dict[str, Any]]:
        """The relay cycles measured since the last call (progress for the operator)."""
        cycles = self.tuner.cycles_measured
        fresh = cycles[self.cycles_said:]
        self.cycles_said = len(cycles)
        return [{"cycle": self.cycles_said - len(fresh) + i + 1, "period_s": round(period, 1),
                 "amplitude_c": round(amplitude, 2)} for i, (period, amplitude) in enumerate(fresh)]

    @property
    def result(self) -> AutotuneResult | None:
        return self.tuner.result if self.tuner.done else None

    @property
    def failed(self) -> str | None:
        return self.tuner.failed


def result_fields(loop: str, result: AutotuneResult) -> dict[str, Any]:
    """An autotune result as event data (what ``reedge autotune --write`` and a maintenance answer use)."""
    g = result.gains
    return {"loop": loop, "kp": round(g.kp, 6), "ti_s": round(g.ti_s, 1), "td_s": round(g.td_s, 1),
            "ku": round(result.ku, 6), "tu_s": round(result.tu_s, 1), "amplitude_c": round(result.amplitude, 2),
            "cycles": result.cycles, "rule": result.rule}
