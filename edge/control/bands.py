"""Agreement bands that follow the process: an ``agree`` rule's ``soak_band`` at a settled soak.

Through a ramp the wall (or the elements) leads the charge by up to 115 degC (HD) or 226 degC (sintering),
so the station's band must be that wide. At a settled soak the two thermocouples read within a degree or
two, and a control thermocouple drifting low would let the charge climb the whole wide band before the
rule saw it. So once the soak has settled the controller narrows the band to the station's ``soak_band``
and widens it again when the soak ends (a ramp, a holdback, a hold, the safe sequence).

Only the core decides: ``Core.tighten_rule`` is refused for anything looser than the station's
threshold, and a tripped rule keeps its tight band until it is reset. This module only asks.

A soak is *settled* when the program holds a constant setpoint in a dwell, wait or end segment, running
(not in holdback nor held), and the control reading has stayed within ``SETTLE_C`` of it for
``SETTLE_S`` (measured: the thermocouples then agree within 0.7 degC in the HD batch, 1.6 degC in the
sintering cycle, stations/*_sim.toml).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edge.control.programmer import ProgState
from edge.control.sequencer import Demand
from edge.core import Core, CoreError
from edge.spec.core import RuleSpec

SETTLE_C = 5.0      # degC: the control reading this close to the setpoint ...
SETTLE_S = 600.0    # ... for this long (plant seconds), at a constant setpoint: the soak has settled
_SOAK_SEGMENTS = ("dwell", "wait", "end")


@dataclass(frozen=True)
class BandChange:
    rule: str
    band: float
    reason: str


class SoakBands:
    """The one place that sets the effective band of every agree rule with a ``soak_band``, each scan."""

    def __init__(self, core: Core, rules: Iterable[RuleSpec]) -> None:
        self.core = core
        self.rules = {r.name: r for r in rules if r.kind == "agree" and r.soak_band is not None}
        self.applied = {name: r.threshold for name, r in self.rules.items()}   # what the core has now
        self._setpoint: float | None = None
        self._settled_since: float | None = None
        self._refused: set[str] = set()
        # the control reading within SETTLE_C of a soak's setpoint this scan (settled or not yet): the batch
        # record adds up the time inside this band (its quality section)
        self.in_band = False

    def settled(self, now_s: float, demand: Demand, pv: float, active: bool) -> bool:
        """Whether the process is at a settled soak now (see the module docstring); ``pv``: the control
        reading (the recipe's control channel, NaN when bad: no soak is settled on a bad reading)."""
        prog, sp = demand.program, demand.setpoint_c
        soaking = (active and prog is not None and sp is not None and prog.segment_kind in _SOAK_SEGMENTS
                   and prog.state in (ProgState.RUN, ProgState.END))
        self.in_band = soaking and abs(pv - (sp or 0.0)) <= SETTLE_C
        if not soaking or sp != self._setpoint or not abs(pv - (sp or 0.0)) <= SETTLE_C:
            self._setpoint = sp if soaking else None
            self._settled_since = now_s if soaking and abs(pv - (sp or 0.0)) <= SETTLE_C else None
            return False
        if self._settled_since is None:
            self._settled_since = now_s
        return now_s - self._settled_since >= SETTLE_S

    def update(self, now_s: float, demand: Demand, pv: float, active: bool) -> list[BandChange]:
        """Ask the core for the band each rule should have now; the changes made (and refusals, once)."""
        soak = self.settled(now_s, demand, pv, active)     # also without rules to narrow: in_band for the record
        if not self.rules:
            return []
        changes: list[BandChange] = []
        for name, rule in self.rules.items():
            assert rule.soak_band is not None
            want = rule.soak_band if soak else rule.threshold
            if want == self.applied[name]:
                continue
            try:
                self.core.tighten_rule(name, want)
            except CoreError as exc:   # tripped at the tight band: the core keeps it until reset
                if name not in self._refused:
                    self._refused.add(name)
                    changes.append(BandChange(name, self.applied[name], f"kept: {exc.message}"))
                continue
            self._refused.discard(name)
            self.applied[name] = want
            why = (f"settled soak at {demand.setpoint_c:g} degC" if soak else "soak over: the configured band")
            changes.append(BandChange(name, want, why))
        return changes
