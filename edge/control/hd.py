"""The hydrogen-decrepitation (HD) sequence, as the process sheet reads.

load_check -> leak_test -> purge -> h2_admission -> absorption -> degassing -> cooling -> unload

- load_check: lid closed, E-stop healthy, cooling water flowing, charge cold, vessel at
  about atmospheric pressure. Otherwise the sequence holds with the reason.
- leak_test: evacuate, isolate the pump, watch the pressure rise for ``hold_min``; a rise
  faster than ``max_rise_mbar_per_min`` fails the batch (a leaking retort must never see H2).
- purge: evacuate / backfill argon, repeated until the O2 analyser (read at pressure) shows
  less than ``o2_max_pct``; then a last evacuation so hydrogen goes into vacuum.
- h2_admission: only with the charge below ``max_start_temperature_c`` (absorption is
  exothermic); H2 in to ``pressure_bar``.
- absorption: the pressure drops as the charge absorbs; it is topped up below
  ``top_up_below_bar``. Complete when, after absorption has started (a top-up, or a drop of
  more than the stability band), the pressure stays within ``stable_within_bar`` for
  ``stable_for_min`` with no top-up. An exotherm beyond ``max_exotherm_c`` pauses top-ups
  until the charge cools back; no absorption within ``max_duration_h`` aborts.
- degassing: H2 shut, pump on throughout, the recipe's program (ramp to ~600 degC, waits for
  the vacuum to recover); complete when the program ends with the vacuum below
  ``vacuum_recovered_mbar``. Air leaking into the hot hydride is watched for (``_inleak``), with
  the cause ``air_inleak`` (the station's [safe_sequences] says what follows; by default argon in,
  no pumping).
- cooling: pump off, the inert ``gas`` backfilled to ``backfill_to_bar`` (then kept above atmosphere),
  the cooling program; heaters off at its end.
- unload: done when the charge is below the unload temperature.

The air in-leak detector (``_inleak``) reads the vacuum gauge only. Under the pump the vacuum is
p = (desorption + in-leak) / S: honest desorption at a steady temperature dies away (the model's
charge with a time constant of 900 s), an in-leak Q holds a floor Q/S (20 mbar l/s with the 10 m3/h
pump: 7.2 mbar). The check runs only at a real soak after the desorption peak: a dwell, the program's
end, or a wait held at the program's top temperature, with the charge steady (within
INLEAK_STEADY_C over the window); the 350 degC "let the peak pass" wait is the peak itself and is not
judged. Samples are the gauge's own fresh readings at their own times (``Sequencer.stamps``: the core
stamps every reading), at least INLEAK_SAMPLE_S apart: on the rig at 600x the RS-485 gauge is read every
120 s of plant time, and a stale repeat read as "not improving". The verdict: above INLEAK_FLOOR_MBAR,
the vacuum decays slower than one e-fold in INLEAK_TAU_MAX_S (or rises) over two consecutive spans.
That is a projected floor of at least 1 - 900/2700 = 2/3 of the reading, not an extrapolation: three-point
(Aitken) extrapolation amplifies a few % of gauge error, a stale sample or a slower, diffusion-like
tail 5-7 fold and called 30-100 mbar desorption peaks leaks. The price: a 20 mbar l/s leak under a
150 mbar desorption at the soak's start is seen when the desorption has fallen to about twice the
leak's floor (47 min in the model with a 2 s scan, 96 min with the rig's slow gauge and coarse
scan: tests/test_process_safety.py holds the bounds), not in minutes.
The O2 channel is not used: the station's analyser is read at pressure (the purge), an extractive
analyser cannot draw a sample from a rough vacuum, and the oxygen of air entering a 600 degC hydride
is taken up by the charge (it burns) and by the hydrogen, so the gas phase need not show it; the
nitrogen and argon that stay are what the gauge sees.

After a power loss hydrogen is never re-admitted automatically: a batch interrupted in
h2_admission or absorption restarts from the purge and holds before admitting H2 until the
operator resumes (``recover``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from edge.control.programmer import ProgState
from edge.control.sequencer import Demand, Readings, Sequencer

ATM_BAR = 1.013
SETTLE_S = 30.0          # after a backfill, let the O2 analyser see the new gas
POST_PROGRAM_WAIT_S = 3600.0   # degassing: how long the vacuum may take to recover after the program
INLEAK_SAMPLE_S = 120.0        # degassing: the gauge's readings at least this far apart are the in-leak samples
INLEAK_STEADY_C = 5.0          # ... over three samples the charge moved less than this: a swing of the charge
                               # modulates its desorption (10 degC made a coarse-scan batch abort at 600 degC)
INLEAK_TAU_MAX_S = 2700.0      # ... honest desorption at a steady temperature e-folds faster than this (the
                               # model's charge: 900 s; a real charge's time constant is measured and set here)
INLEAK_FLOOR_MBAR = 3.0        # ... a vacuum that settles above this is air coming in (the tight vessel with its
                               # 10 m3/h pump settles near 0.001 mbar; 20 mbar l/s of air holds about 7 mbar)
INLEAK_HOT_C = 200.0           # ... checked only with the charge this hot: a hot hydride burns in air


class HDSequencer(Sequencer):
    PROCESS: ClassVar[str] = "hd"
    PHASES: ClassVar[tuple[str, ...]] = ("load_check", "leak_test", "purge", "h2_admission", "absorption",
                                         "degassing", "cooling", "unload")
    H2_PHASES: ClassVar[tuple[str, ...]] = ("h2_admission", "absorption")

    def _p(self, phase: str) -> Any:
        return self.recipe.params(phase)

    def _pressure(self, r: Readings) -> float:
        return r.get(self.plumbing.pressure_channel, math.nan)

    def _vacuum(self, r: Readings) -> float:
        return self.vacuum_mbar(r)

    def _temp(self, r: Readings) -> float:
        return r.get(self.recipe.control_channel, math.nan)

    def _evacuate(self) -> dict[str, int]:
        out = self.closed()
        out.update({self.plumbing.vacuum_pump: 1, self.plumbing.vacuum_valve: 1})
        return out

    def _fill(self, gas: str) -> dict[str, int]:
        out = self.closed()
        out[self.plumbing.inlet(gas)] = 1
        return out

    def _timed_out(self, now_s: float, minutes: float, what: str) -> bool:
        if self.in_phase_s(now_s) > minutes * 60.0:
            self.abort(now_s, f"{self.phase}: {what} not reached within {minutes:g} min")
            return True
        return False

    # ---- phases ----

    def phase_load_check(self, now_s: float, r: Readings) -> Demand:
        problems = []
        for name, want in (("lid_closed", 1.0), ("estop_ok", 1.0), ("cooling_water_ok", 1.0)):
            if name in r and r[name] != want:
                problems.append(f"{name} is not {int(want)}")
        t, p = self._temp(r), self._pressure(r)
        limit = float(self._p("unload").get("max_temperature_c", 50.0))
        if not t <= limit:
            problems.append(f"charge at {t:.0f} degC (load below {limit:g})")
        if not 0.8 <= p <= 1.3:
            problems.append(f"vessel at {p:.2f} bar abs (expected about atmospheric)")
        if problems:
            self.data["problems"] = problems
            return Demand(outputs=self.closed())
        self.next_phase(now_s, "load checked: lid closed, E-stop healthy, cooling water on")
        return Demand(outputs=self.closed())

    def phase_leak_test(self, now_s: float, r: Readings) -> Demand:
        p = self._p("leak_test")
        step = self.data.setdefault("step", "evacuate")
        vac = self._vacuum(r)
        if step == "evacuate":
            if self._timed_out(now_s, float(p["timeout_min"]), f"vacuum of {p['evacuate_to_mbar']} mbar"):
                return Demand(outputs=self.closed())
            if vac <= float(p["evacuate_to_mbar"]):
                self.data.update(step="isolated", since_at_s=now_s, start_mbar=vac)
            return Demand(outputs=self._evacuate())
        held_s = now_s - float(self.data["since_at_s"])
        if held_s >= float(p["hold_min"]) * 60.0:
            rise = (vac - float(self.data["start_mbar"])) / (held_s / 60.0)
            self.data["rise_mbar_per_min"] = self.results["leak_rise_mbar_per_min"] = rise
            limit = float(p["max_rise_mbar_per_min"])
            if not rise <= limit:
                self.abort(now_s, f"leak test failed: pressure rise {rise:.3g} mbar/min > {limit:g}")
            else:
                self.next_phase(now_s, f"leak test passed: {rise:.3g} mbar/min <= {limit:g}")
        return Demand(outputs=self.closed())

    def phase_purge(self, now_s: float, r: Readings) -> Demand:
        p = self._p("purge")
        if self._timed_out(now_s, float(p["timeout_min"]), f"O2 below {p['o2_max_pct']} %"):
            return Demand(outputs=self.closed())
        step = self.data.setdefault("step", "evacuate")
        cycles = int(self.data.setdefault("cycles", 0))
        if step == "evacuate":
            if self._vacuum(r) <= float(p["evacuate_to_mbar"]):
                if self.data.get("o2_ok"):
                    self.next_phase(now_s, f"purged in {cycles} cycle(s), O2 {self.data['o2_pct']:.3g} %")
                    return Demand(outputs=self.closed())
                self.data.update(step="backfill")
            return Demand(outputs=self._evacuate())
        if step == "backfill":
            if self._pressure(r) >= float(p["backfill_to_bar"]):
                self.data.update(step="settle", since_at_s=now_s, cycles=cycles + 1)
                return Demand(outputs=self.closed())
            return Demand(outputs=self._fill(str(p["gas"])))
        # settle: read the O2 analyser at pressure
        if now_s - float(self.data["since_at_s"]) >= SETTLE_S:
            o2 = r.get(self.plumbing.o2_channel or "", math.nan)
            self.data["o2_pct"] = o2
            if o2 <= float(p["o2_max_pct"]):
                self.data.update(step="evacuate", o2_ok=True)
                self.results["o2_after_purge_pct"] = o2
            elif cycles >= int(p["max_cycles"]):
                self.abort(now_s, f"purge: O2 still {o2:.3g} % after {cycles} cycles (limit {p['o2_max_pct']} %)")
            else:
                self.data.update(step="evacuate")
        return Demand(outputs=self.closed())

    def phase_h2_admission(self, now_s: float, r: Readings) -> Demand:
        p = self._p("h2_admission")
        if self.flags.pop("confirm_h2", False):
            self.held = "after a power loss during hydrogen handling the vessel was purged again: resume to admit H2"
            return Demand(outputs=self.closed())
        if self._timed_out(now_s, float(p["timeout_min"]), f"H2 at {p['pressure_bar']} bar"):
            return Demand(outputs=self.closed())
        t = self._temp(r)
        if not self.data.get("opened") and not t <= float(p["max_start_temperature_c"]):
            self.data["waiting"] = f"charge at {t:.0f} degC, H2 only below {p['max_start_temperature_c']} degC"
            return Demand(outputs=self.closed())
        self.data.pop("waiting", None)
        self.data["opened"] = True   # the start-temperature gate applies before the first opening only
        if self._pressure(r) >= float(p["pressure_bar"]):
            self.next_phase(now_s, f"H2 admitted to {self._pressure(r):.2f} bar abs")
            return Demand(outputs=self.closed())
        return Demand(outputs=self._fill("H2"))

    def phase_absorption(self, now_s: float, r: Readings) -> Demand:
        p = self._p("absorption")
        target = float(self._p("h2_admission")["pressure_bar"])
        pressure, t = self._pressure(r), self._temp(r)
        d = self.data
        d.setdefault("start_c", t)
        d.setdefault("top_ups", 0)
        self.results.setdefault("h2_top_ups", 0)
        d.setdefault("ref_bar", pressure)
        d.setdefault("ref_at_s", now_s)
        d.setdefault("filling", False)
        if self.in_phase_s(now_s) > float(p["max_duration_h"]) * 3600.0:
            why = "no absorption started" if not d.get("started") else "absorption did not complete"
            self.abort(now_s, f"absorption: {why} within {p['max_duration_h']} h")
            return Demand(outputs=self.closed())
        # a NaN temperature counts as too hot: no hydrogen while the exotherm cannot be watched
        too_hot = not t - float(d["start_c"]) <= float(p["max_exotherm_c"])
        d["exotherm_paused"] = too_hot
        if d["filling"]:
            if pressure >= target or too_hot:
                d["filling"] = False
                d.update(ref_bar=pressure, ref_at_s=now_s)
        elif pressure < float(p["top_up_below_bar"]) and not too_hot:
            d["filling"] = True
            d["top_ups"] = int(d["top_ups"]) + 1
            self.results["h2_top_ups"] += 1       # the batch's, across a re-purge after a power loss
            d["started"] = True
        band = float(p["stable_within_bar"])
        if abs(pressure - float(d["ref_bar"])) > band:
            if pressure < float(d["ref_bar"]) - band:
                d["started"] = True
            d.update(ref_bar=pressure, ref_at_s=now_s)
        stable_s = now_s - float(d["ref_at_s"])
        fed = pressure >= float(p["top_up_below_bar"]) and not too_hot   # not starved of H2 by an exotherm pause
        if d.get("started") and not d["filling"] and fed and stable_s >= float(p["stable_for_min"]) * 60.0:
            self.next_phase(now_s, f"absorption complete: pressure stable within {band:g} bar for "
                                   f"{stable_s / 60:.0f} min after {d['top_ups']} top-up(s)")
            return Demand(outputs=self.closed())
        out = self.closed()
        if d["filling"]:
            out[self.plumbing.inlet("H2")] = 1
        return Demand(outputs=out)

    def phase_degassing(self, now_s: float, r: Readings) -> Demand:
        p = self._p("degassing")
        st = self.run_program("degassing", now_s, r)
        out = self._evacuate()   # the pump runs throughout: desorbed hydrogen goes to the stack
        out.update(st.outputs)   # unless the recipe's program asks otherwise (its gas segments)
        top_c = max((float(getattr(seg, "to_c", -math.inf)) for seg in self.recipe.program("degassing")),
                    default=-math.inf)
        soaking = st.setpoint_c is not None and (st.segment_kind in ("dwell", "end") or
                                                  (st.segment_kind == "wait" and st.setpoint_c >= top_c))
        inleak = self._inleak(now_s, r, st.setpoint_c if soaking else None)
        if inleak is not None:
            self.abort(now_s, f"air in-leak during degassing: {inleak}", cause="air_inleak")
        elif st.state is ProgState.ABORTED:
            self.abort(now_s, f"degassing: {st.message}")
        elif st.state is ProgState.END:
            ended = self.data.setdefault("ended_at_s", now_s)
            if self._vacuum(r) <= float(p["vacuum_recovered_mbar"]):
                self.results["final_vacuum_mbar"] = self._vacuum(r)
                self.next_phase(now_s, f"degassed: vacuum {self._vacuum(r):.3g} mbar at {self._temp(r):.0f} degC")
            elif now_s - float(ended) > POST_PROGRAM_WAIT_S:
                self.abort(now_s, f"degassing: vacuum still {self._vacuum(r):.3g} mbar "
                                  f"{POST_PROGRAM_WAIT_S / 60:.0f} min after the program ended")
        return Demand(setpoint_c=st.setpoint_c, outputs=out, program=st)

    def _inleak(self, now_s: float, r: Readings, soak_c: float | None) -> str | None:
        """Air coming into the hot charge under vacuum, or None (the module docstring says why so).

        Three fresh gauge readings, at their own times at least INLEAK_SAMPLE_S apart, at a soak after the
        desorption peak (``soak_c``: the setpoint held) and a steady temperature. A vacuum above the floor that
        decays slower than one e-fold in INLEAK_TAU_MAX_S over both spans is air coming in. A NaN gauge
        decides nothing (its own rule acts)."""
        vac, t = self._vacuum(r), self._temp(r)
        at_s = float(self.stamps.get(self.plumbing.vacuum_channel, now_s))
        if not (math.isfinite(vac) and math.isfinite(t)) or t < INLEAK_HOT_C or soak_c is None:
            self.data["inleak_samples"] = []
            return None
        samples: list[list[float]] = list(self.data.get("inleak_samples", []))
        if samples and at_s - samples[-1][3] < INLEAK_SAMPLE_S:
            return None                 # not a new reading far enough on: a repeat is no sample
        samples = [*samples, [vac, t, soak_c, at_s]][-3:]
        self.data["inleak_samples"] = samples
        if len(samples) < 3 or len({s[2] for s in samples}) > 1 \
                or max(s[1] for s in samples) - min(s[1] for s in samples) > INLEAK_STEADY_C:
            return None
        (p1, _, _, t1), (p2, _, _, t2), (p3, _, _, t3) = samples
        if not p3 > INLEAK_FLOOR_MBAR:
            return None
        if p2 > p1 * math.exp(-(t2 - t1) / INLEAK_TAU_MAX_S) and p3 > p2 * math.exp(-(t3 - t2) / INLEAK_TAU_MAX_S):
            return (f"vacuum {p1:.3g} -> {p2:.3g} -> {p3:.3g} mbar over {(t3 - t1) / 60:.1f} min at {t:.0f} degC, "
                    f"above {INLEAK_FLOOR_MBAR:g} mbar, decays slower than one e-fold in "
                    f"{INLEAK_TAU_MAX_S / 60:g} min (desorption alone dies away faster)")
        return None

    def phase_cooling(self, now_s: float, r: Readings) -> Demand:
        p = self._p("cooling")
        out = self.backfill_inert(r, str(p["gas"]), float(p["backfill_to_bar"]))   # then kept (keep_inert)
        st = self.run_program("cooling", now_s, r)
        limit = float(self._p("unload").get("max_temperature_c", 50.0))
        if st.state is ProgState.ABORTED:
            self.abort(now_s, f"cooling: {st.message}")
        elif st.state is ProgState.END and self._temp(r) <= limit:
            self.next_phase(now_s, f"cooled to {self._temp(r):.0f} degC under {p.get('gas', 'Ar')}")
        return Demand(setpoint_c=st.setpoint_c if st.state is not ProgState.END else None, outputs=out, program=st)

    def phase_unload(self, now_s: float, r: Readings) -> Demand:
        limit = float(self._p("unload").get("max_temperature_c", 50.0))
        out = self.keep_inert(r)
        if self._temp(r) <= limit and self._pressure(r) >= 1.0:
            self.enter("done", now_s, f"ready to unload at {self._temp(r):.0f} degC under argon at "
                                      f"{self._pressure(r):.2f} bar abs")
        return Demand(outputs=out)

    # ---- power-fail recovery ----

    def restart_point(self, phase: str) -> tuple[str, str | None]:
        """Where an interrupted phase resumes, and why it is moved (None when it resumes in place)."""
        if phase in self.H2_PHASES:
            self.flags["confirm_h2"] = True
            return "purge", "hydrogen is never re-admitted automatically after a power loss: purging again"
        if phase in ("load_check", "leak_test", "purge"):
            return phase, f"{phase} restarts from its beginning (its measurements were interrupted)"
        return phase, None
