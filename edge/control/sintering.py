"""The vacuum sintering sequence for pressed NdFeB compacts, as the process sheet reads.

pump_down -> heating -> sinter -> quench -> anneal_1 -> anneal_2 -> cooling

- pump_down: the pump runs until the vacuum is below ``to_mbar`` (no heat before).
- heating: the pump runs throughout; the recipe's program ramps up with degassing holds:
  ``wait`` segments that let the vacuum recover from the binder and hydrogen bursts before
  the ramp goes on.
- sinter: the program (e.g. 1040-1100 degC for hours), under vacuum.
- quench: heat off, pump isolated, argon backfilled to ``backfill_to_bar`` with the
  circulation fan on, until the charge is below ``cool_to_c``.
- anneal_1 / anneal_2: re-evacuated, the programs (~900 degC, then ~500-600 degC): heating
  argon in a closed retort would raise its pressure far beyond the limit, so anneals run
  under vacuum.
- cooling: argon and fan again, the cooling program, done below ``unload_below_c``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from edge.control.programmer import ProgState
from edge.control.sequencer import Demand, Readings, Sequencer


class SinteringSequencer(Sequencer):
    PROCESS: ClassVar[str] = "sintering"
    PHASES: ClassVar[tuple[str, ...]] = ("pump_down", "heating", "sinter", "quench", "anneal_1", "anneal_2",
                                         "cooling")

    def _p(self, phase: str) -> Any:
        return self.recipe.params(phase)

    def _vacuum(self, r: Readings) -> float:
        return self.vacuum_mbar(r)

    def _temp(self, r: Readings) -> float:
        return r.get(self.recipe.control_channel, math.nan)

    def _pumping(self) -> dict[str, int]:
        out = self.closed()
        out.update({self.plumbing.vacuum_pump: 1, self.plumbing.vacuum_valve: 1})
        return out

    def _gas_cooling(self, r: Readings, gas: str, to_bar: float) -> dict[str, int]:
        """Inert gas to ``to_bar`` with the fan on once backfilled: forced convection through the hot zone."""
        out = self.backfill_inert(r, gas, to_bar)
        if self.plumbing.quench_fan and self.data.get("backfilled"):
            out[self.plumbing.quench_fan] = 1
        return out

    def _programmed(self, phase: str, now_s: float, r: Readings, outputs: dict[str, int]) -> Demand:
        st = self.run_program(phase, now_s, r)
        outputs = {**outputs, **st.outputs}   # the program's gas segments act on top of the phase's pumping
        if st.state is ProgState.ABORTED:
            self.abort(now_s, f"{phase}: {st.message}")
        elif st.state is ProgState.END:
            self.results["final_vacuum_mbar"] = self._vacuum(r)   # the last vacuum phase's (anneal_2) is kept
            self.next_phase(now_s, f"{phase} program complete at {self._temp(r):.0f} degC, "
                                   f"{self._vacuum(r):.3g} mbar")
        return Demand(setpoint_c=st.setpoint_c, outputs=outputs, program=st)

    def phase_pump_down(self, now_s: float, r: Readings) -> Demand:
        p = self._p("pump_down")
        if self.in_phase_s(now_s) > float(p["timeout_min"]) * 60.0:
            self.abort(now_s, f"pump-down: {p['to_mbar']} mbar not reached within {p['timeout_min']} min "
                              f"(at {self._vacuum(r):.3g} mbar: a leak?)")
            return Demand(outputs=self.closed())
        if self._vacuum(r) <= float(p["to_mbar"]):
            self.next_phase(now_s, f"pumped down to {self._vacuum(r):.3g} mbar")
        return Demand(outputs=self._pumping())

    def phase_heating(self, now_s: float, r: Readings) -> Demand:
        return self._programmed("heating", now_s, r, self._pumping())

    def phase_sinter(self, now_s: float, r: Readings) -> Demand:
        return self._programmed("sinter", now_s, r, self._pumping())

    def phase_quench(self, now_s: float, r: Readings) -> Demand:
        p = self._p("quench")
        if self.in_phase_s(now_s) > float(p["timeout_min"]) * 60.0:
            self.abort(now_s, f"quench: {p['cool_to_c']} degC not reached within {p['timeout_min']} min")
            return Demand(outputs=self.closed())
        out = self._gas_cooling(r, str(p.get("gas", "Ar")), float(p["backfill_to_bar"]))
        if self.data.get("backfilled") and self._temp(r) <= float(p["cool_to_c"]):
            self.next_phase(now_s, f"quenched to {self._temp(r):.0f} degC under {p.get('gas', 'Ar')}")
        return Demand(setpoint_c=None, outputs=out)

    def phase_anneal_1(self, now_s: float, r: Readings) -> Demand:
        self.flags["inert"] = False   # the anneals run under vacuum
        return self._programmed("anneal_1", now_s, r, self._pumping())

    def phase_anneal_2(self, now_s: float, r: Readings) -> Demand:
        return self._programmed("anneal_2", now_s, r, self._pumping())

    def phase_cooling(self, now_s: float, r: Readings) -> Demand:
        p = self._p("cooling")
        out = self._gas_cooling(r, str(p.get("gas", "Ar")), float(p["backfill_to_bar"]))
        st = self.run_program("cooling", now_s, r)
        if st.state is ProgState.ABORTED:
            self.abort(now_s, f"cooling: {st.message}")
        elif st.state is ProgState.END and self._temp(r) <= float(p.get("unload_below_c", 60.0)):
            self.enter("done", now_s, f"cooled to {self._temp(r):.0f} degC: ready to unload")
        return Demand(setpoint_c=st.setpoint_c if st.state is not ProgState.END else None, outputs=out, program=st)

    def restart_point(self, phase: str) -> tuple[str, str | None]:
        if phase == "pump_down":
            return phase, "pump-down restarts"
        if phase == "quench":
            return phase, "the quench restarts (argon and fan)"
        return phase, None
