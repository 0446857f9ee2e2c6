"""The setpoint programmer: every segment kind, holdback, operator actions, timing, power-fail recovery."""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable, Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.control.programmer import Programmer, ProgramStatus, ProgState
from edge.spec.plumbing import GasPlumbing
from edge.spec.recipe import (
    AdmitH2,
    Backfill,
    Dwell,
    End,
    Evacuate,
    GasOff,
    Holdback,
    Level,
    PressureStable,
    Ramp,
    Segment,
    Step,
    Threshold,
    Vent,
    Wait,
)
from edge.spec.recipe_reader import load_recipe

ROOT = pathlib.Path(__file__).resolve().parent.parent
PL = GasPlumbing()  # h2_inlet_valve, ar_inlet_valve, vacuum_pump, vacuum_valve, vent_valve
PV = "chamber_temp"
OFF = Holdback()
CLOSED = {"h2_inlet_valve": 0, "ar_inlet_valve": 0, "vacuum_pump": 0, "vacuum_valve": 0, "vent_valve": 0}
PUMPING = {**CLOSED, "vacuum_pump": 1, "vacuum_valve": 1}


def prog(*segments: Segment, holdback: Holdback = OFF) -> Programmer:
    return Programmer(segments, PL, default_holdback=holdback, pv_channel=PV)


def run(p: Programmer, t0: float, t1: float, dt: float = 1.0,
        readings: Callable[[float], Mapping[str, float]] | Mapping[str, float] | None = None) -> ProgramStatus:
    """Step p every dt from t0 (exclusive) to t1 (inclusive); return the last status."""
    status = None
    n = round((t1 - t0) / dt)
    for i in range(1, n + 1):
        t = t0 + i * dt
        r = readings(t) if callable(readings) else (readings or {})
        status = p.step(t, r)
    assert status is not None
    return status


# ============================================================================ temperature segments


def test_ramp_by_rate_moves_the_setpoint_and_ends_on_time() -> None:
    p = prog(Ramp(120.0, rate_c_per_min=10.0), Dwell(5.0))
    p.start(0.0, 20.0)
    s = p.step(0.0, {PV: 20.0})
    assert s.state is ProgState.RUN and s.setpoint_c == 20.0 and s.segment_kind == "ramp"
    assert s.remaining_s == pytest.approx(600.0 + 300.0)
    s = run(p, 0.0, 300.0, readings={PV: 70.0})
    assert s.setpoint_c == pytest.approx(70.0)
    assert s.segment_elapsed_s == pytest.approx(300.0)
    assert s.remaining_s == pytest.approx(300.0 + 300.0)
    s = run(p, 300.0, 600.0, readings={PV: 120.0})
    assert s.segment_index == 1 and s.segment_kind == "dwell" and s.setpoint_c == 120.0


def test_ramp_down_by_rate() -> None:
    p = prog(Ramp(50.0, rate_c_per_min=5.0))
    p.start(0.0, 100.0)
    assert run(p, 0.0, 300.0, readings={PV: 75.0}).setpoint_c == pytest.approx(75.0)
    s = run(p, 300.0, 600.0, readings={PV: 50.0})
    assert s.state is ProgState.END and s.setpoint_c == 50.0


def test_ramp_by_time_takes_its_duration_whatever_the_span() -> None:
    p = prog(Ramp(220.0, duration_min=20.0))
    p.start(0.0, 20.0)
    assert run(p, 0.0, 600.0, readings={PV: 120.0}).setpoint_c == pytest.approx(120.0)
    s = run(p, 600.0, 1200.0, readings={PV: 220.0})
    assert s.state is ProgState.END and s.setpoint_c == pytest.approx(220.0)
    flat = prog(Ramp(20.0, duration_min=10.0), Dwell(1.0))
    flat.start(0.0, 20.0)
    assert run(flat, 0.0, 599.0, readings={PV: 20.0}).segment_index == 0  # a flat ramp by time still lasts 10 min
    assert run(flat, 599.0, 601.0, readings={PV: 20.0}).segment_index == 1


def test_a_segment_ending_within_a_scan_hands_the_rest_to_the_next() -> None:
    p = prog(Ramp(120.0, rate_c_per_min=10.0), Dwell(10.0), Step(30.0))
    p.start(0.0, 20.0)
    s = p.step(900.0, {PV: 120.0})  # one 15 min scan: 10 min of ramp, 5 min of dwell
    assert s.segment_index == 1 and s.segment_elapsed_s == pytest.approx(300.0)
    s = p.step(1200.0, {PV: 120.0})  # the dwell ends at 1200 s exactly; the step takes no time
    assert s.state is ProgState.END and s.setpoint_c == 30.0


def test_step_jumps_the_setpoint_at_once() -> None:
    p = prog(Step(400.0), Dwell(1.0))
    p.start(0.0, 20.0)
    s = p.step(0.0, {PV: 20.0})
    assert s.setpoint_c == 400.0 and s.segment_kind == "dwell"


def test_dwell_holds_the_setpoint_for_its_duration() -> None:
    p = prog(Dwell(30.0), End("heaters_off"))
    p.start(0.0, 250.0)
    s = run(p, 0.0, 1799.0, readings={PV: 250.0})
    assert s.segment_kind == "dwell" and s.setpoint_c == 250.0
    s = run(p, 1799.0, 1800.0, readings={PV: 250.0})
    assert s.state is ProgState.END and s.setpoint_c is None


def test_start_is_bumpless_and_without_a_pv_the_setpoint_waits_for_one() -> None:
    p = prog(Ramp(100.0, rate_c_per_min=10.0))
    p.start(0.0, math.nan)
    s = p.step(60.0, {PV: math.nan})
    assert s.setpoint_c is None and s.state is ProgState.HOLDBACK and "no valid reading" in s.message
    s = p.step(120.0, {PV: 40.0})
    assert s.state is ProgState.RUN and s.setpoint_c == pytest.approx(50.0)  # from 40 at 10/min for 60 s


# ============================================================================ holdback


@pytest.mark.parametrize("mode,pv,held", [
    ("lo", lambda t: 80.0, True), ("lo", lambda t: 700.0, False),
    ("hi", lambda t: 120.0, True), ("hi", lambda t: 0.0, False),
    ("band", lambda t: 80.0, True), ("band", lambda t: 120.0, True), ("band", lambda t: 105.0 + t / 10.0, False),
    ("off", lambda t: -400.0, False),
])
def test_holdback_on_a_ramp_stops_the_setpoint(mode: str, pv: Callable[[float], float], held: bool) -> None:
    hb = Holdback(mode, 10.0)  # type: ignore[arg-type]
    p = prog(Ramp(600.0, rate_c_per_min=6.0, holdback=hb))
    p.start(0.0, 100.0)
    s = run(p, 0.0, 600.0, readings=lambda t: {PV: pv(t)})
    if held:
        assert s.state is ProgState.HOLDBACK and s.setpoint_c == pytest.approx(100.0)
        assert s.holdback_s == pytest.approx(600.0) and s.segment_elapsed_s == 0.0
        assert f"holdback {mode}" in s.message
    else:
        assert s.state is ProgState.RUN and s.setpoint_c == pytest.approx(160.0) and s.message == ""


def test_holdback_resumes_the_ramp_when_the_pv_catches_up() -> None:
    p = prog(Ramp(200.0, rate_c_per_min=10.0), holdback=Holdback("lo", 5.0))
    p.start(0.0, 100.0)
    s = run(p, 0.0, 120.0, readings={PV: 100.0})  # the PV does not follow: the setpoint stops 5 degC ahead
    assert s.state is ProgState.HOLDBACK and 105.0 <= s.setpoint_c <= 105.2  # type: ignore[operator]
    s = run(p, 120.0, 180.0, readings=lambda t: {PV: 106.0 + (t - 120.0) / 6.0})
    assert s.state is ProgState.RUN and s.setpoint_c > 110.0  # type: ignore[operator]


@pytest.mark.parametrize("mode,outside_pv", [("lo", 590.0), ("hi", 610.0), ("band", 590.0), ("band", 610.0)])
def test_holdback_extends_a_dwell_by_exactly_the_time_outside(mode: str, outside_pv: float) -> None:
    """Guaranteed soak: 10 min at 600 +- 5; the PV is outside for 180 s in the middle."""
    p = prog(Dwell(10.0, holdback=Holdback(mode, 5.0)), End("hold_setpoint"))  # type: ignore[arg-type]
    p.start(0.0, 600.0)

    def pv(t: float) -> Mapping[str, float]:
        return {PV: outside_pv if 200.0 < t <= 380.0 else 601.0}

    s = run(p, 0.0, 779.0, readings=pv)
    assert s.segment_kind == "dwell" and s.segment_elapsed_s == pytest.approx(599.0)
    assert s.holdback_s == pytest.approx(180.0)
    s = run(p, 779.0, 780.0, readings=pv)
    assert s.state is ProgState.END and s.elapsed_s == pytest.approx(780.0)


def test_a_nan_pv_is_outside_the_band() -> None:
    p = prog(Dwell(10.0), holdback=Holdback("lo", 5.0))
    p.start(0.0, 600.0)
    s = run(p, 0.0, 60.0, readings={PV: math.nan})
    assert s.state is ProgState.HOLDBACK and s.segment_elapsed_s == 0.0 and "no valid reading" in s.message


def test_segment_holdback_overrides_the_default() -> None:
    p = prog(Dwell(1.0, holdback=Holdback("off")), holdback=Holdback("band", 1.0))
    p.start(0.0, 600.0)
    assert run(p, 0.0, 60.0, readings={PV: 20.0}).state is ProgState.END


# ============================================================================ waits


@pytest.mark.parametrize("until,good,bad", [
    (Threshold("chamber_vacuum", 0.1, above=False), {"chamber_vacuum": 0.05}, {"chamber_vacuum": 0.2}),
    (Threshold(PV, 300.0, above=True), {PV: 301.0}, {PV: 299.0}),
    (Level("lid_closed", 1), {"lid_closed": 1.0}, {"lid_closed": 0.0}),
])
def test_wait_ends_when_its_condition_holds(until: Threshold | Level, good: dict[str, float],
                                            bad: dict[str, float]) -> None:
    p = prog(Wait(until, timeout_min=10.0), Dwell(5.0))
    p.start(0.0, 300.0)
    s = run(p, 0.0, 120.0, readings=bad)
    assert s.segment_kind == "wait" and s.setpoint_c == 300.0 and s.remaining_s is None
    assert s.remaining_max_s == pytest.approx(480.0 + 300.0)
    s = run(p, 120.0, 121.0, readings=good)
    assert s.segment_kind == "dwell"


def test_wait_a_nan_never_satisfies_a_condition() -> None:
    p = prog(Wait(Threshold("chamber_vacuum", 0.1, above=False), timeout_min=1.0))
    p.start(0.0, 20.0)
    assert run(p, 0.0, 59.0, readings={"chamber_vacuum": math.nan}).segment_kind == "wait"


def test_wait_for_stable_pressure() -> None:
    p = prog(Wait(PressureStable(within_bar=0.01, for_min=20.0), timeout_min=120.0))
    p.start(0.0, 25.0)

    def pressure(t: float) -> Mapping[str, float]:  # falls 0.03 bar/min until 30 min, then stable (noise 0.004)
        base = 1.8 - 0.03 * min(t, 1800.0) / 60.0
        return {"chamber_pressure": base + (0.002 if int(t // 10) % 2 else -0.002)}

    s = run(p, 0.0, 1800.0 + 20 * 60.0 - 10.0, dt=10.0, readings=pressure)
    assert s.segment_kind == "wait"
    s = run(p, 1800.0 + 20 * 60.0 - 10.0, 1800.0 + 20 * 60.0 + 20.0, dt=10.0, readings=pressure)
    assert s.state is ProgState.END


def test_wait_timeout_abort_names_the_segment() -> None:
    p = prog(Dwell(1.0), Wait(Threshold("chamber_vacuum", 0.1, above=False), timeout_min=5.0, label="degas"))
    p.start(0.0, 600.0)
    s = run(p, 0.0, 60.0 + 299.0, readings={"chamber_vacuum": 1.0})
    assert s.state is ProgState.RUN
    s = run(p, 359.0, 360.0, readings={"chamber_vacuum": 1.0})
    assert s.state is ProgState.ABORTED and s.setpoint_c is None
    assert s.message == 'wait #1 "degas" timed out after 5 min waiting for chamber_vacuum below 0.1'
    assert s.outputs == {"h2_inlet_valve": 0, "ar_inlet_valve": 0}


def test_wait_timeout_hold_then_resume_waits_another_timeout() -> None:
    p = prog(Wait(Threshold(PV, 500.0, above=True), timeout_min=5.0, on_timeout="hold"), Dwell(1.0))
    p.start(0.0, 400.0)
    s = run(p, 0.0, 300.0, readings={PV: 400.0})
    assert s.state is ProgState.HOLD and "timed out after 5 min" in s.message and "resume" in s.message
    s = run(p, 300.0, 900.0, readings={PV: 400.0})
    assert s.state is ProgState.HOLD and s.segment_elapsed_s == pytest.approx(300.0)
    p.resume(900.0)
    s = run(p, 900.0, 1199.0, readings={PV: 400.0})
    assert s.state is ProgState.RUN
    s = run(p, 1199.0, 1200.0, readings={PV: 400.0})
    assert s.state is ProgState.HOLD


def test_wait_timeout_continue_goes_to_the_next_segment() -> None:
    p = prog(Wait(Threshold(PV, 500.0, above=True), timeout_min=5.0, on_timeout="continue"), Dwell(1.0))
    p.start(0.0, 400.0)
    s = p.step(330.0, {PV: 400.0})  # 300 s of wait, then 30 s of the dwell
    assert s.segment_kind == "dwell" and s.segment_elapsed_s == pytest.approx(30.0)


# ============================================================================ gas segments


def test_no_gas_demand_before_the_first_gas_segment() -> None:
    p = prog(Dwell(1.0), Evacuate(1.0, timeout_min=10.0))
    p.start(0.0, 20.0)
    assert p.step(1.0, {PV: 20.0}).outputs == {}


def test_evacuate_then_pumping_goes_on() -> None:
    p = prog(Evacuate(0.5, timeout_min=30.0), Dwell(10.0), GasOff())
    p.start(0.0, 20.0)
    s = p.step(1.0, {"chamber_vacuum": 1000.0})
    assert s.outputs == PUMPING  # inlets closed, the vent at its CLOSED level 0 (its safe level is 1, open)
    s = p.step(2.0, {"chamber_vacuum": 0.4})
    assert s.segment_kind == "dwell" and s.outputs == PUMPING
    s = p.step(2.0 + 600.0, {"chamber_vacuum": 0.4})
    assert s.state is ProgState.END and s.outputs == CLOSED


def test_evacuate_timeout_aborts() -> None:
    p = prog(Evacuate(0.5, timeout_min=30.0))
    p.start(0.0, 20.0)
    s = run(p, 0.0, 1800.0, dt=60.0, readings={"chamber_vacuum": 5.0})
    assert s.state is ProgState.ABORTED and s.message.startswith("evacuate #0 timed out after 30 min")


def test_backfill_opens_its_gas_inlet_then_all_closed() -> None:
    p = prog(Backfill("Ar", 1.1, timeout_min=10.0), Dwell(1.0))
    p.start(0.0, 20.0)
    assert p.step(1.0, {"chamber_pressure": 0.0}).outputs == {**CLOSED, "ar_inlet_valve": 1}
    s = p.step(2.0, {"chamber_pressure": 1.1})
    assert s.segment_kind == "dwell" and s.outputs == CLOSED


def test_backfill_with_a_gas_without_inlet_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="no inlet valve for gas 'N2'"):
        prog(Backfill("N2", 1.1, timeout_min=10.0))


def test_admit_h2_then_top_up_with_hysteresis_until_gas_off() -> None:
    p = prog(AdmitH2(1.8, top_up_below_bar=1.6, timeout_min=30.0), Dwell(60.0), GasOff(), Dwell(10.0))
    p.start(0.0, 25.0)
    h2_open = {**CLOSED, "h2_inlet_valve": 1}
    assert p.step(1.0, {"chamber_pressure": 0.0}).outputs == h2_open
    s = p.step(2.0, {"chamber_pressure": 1.8})
    assert s.segment_kind == "dwell" and s.outputs == CLOSED
    assert p.step(3.0, {"chamber_pressure": 1.7}).outputs == CLOSED     # above the top-up point
    assert p.step(4.0, {"chamber_pressure": 1.59}).outputs == h2_open   # below it: refill
    assert p.step(5.0, {"chamber_pressure": 1.7}).outputs == h2_open    # ... up to 1.8
    assert p.step(6.0, {"chamber_pressure": 1.8}).outputs == CLOSED
    assert p.step(7.0, {"chamber_pressure": math.nan}).outputs == CLOSED  # never H2 on a blind gauge
    s = p.step(2.0 + 3600.0, {"chamber_pressure": 1.0})                  # gas_off: no more top-up
    assert s.segment_kind == "dwell" and s.segment_index == 3 and s.outputs == CLOSED


def test_top_up_stops_at_the_end_of_the_program_and_in_a_hold() -> None:
    p = prog(AdmitH2(1.8, top_up_below_bar=1.6, timeout_min=30.0), Dwell(1.0))
    p.start(0.0, 25.0)
    p.step(1.0, {"chamber_pressure": 1.8})
    assert p.step(2.0, {"chamber_pressure": 1.5}).outputs["h2_inlet_valve"] == 1
    p.hold(2.0)
    assert p.step(3.0, {"chamber_pressure": 1.5}).outputs["h2_inlet_valve"] == 0
    p.resume(3.0)
    assert p.step(4.0, {"chamber_pressure": 1.5}).outputs["h2_inlet_valve"] == 1
    s = p.step(100.0, {"chamber_pressure": 1.5})
    assert s.state is ProgState.END and s.outputs["h2_inlet_valve"] == 0


def test_vent_opens_the_vent() -> None:
    p = prog(Vent(1.05, timeout_min=10.0), Dwell(1.0))
    p.start(0.0, 50.0)
    assert p.step(1.0, {"chamber_pressure": 1.8}).outputs == {**CLOSED, "vent_valve": 1}
    assert p.step(2.0, {"chamber_pressure": 1.04}).outputs == CLOSED


def test_gas_off_closes_everything() -> None:
    p = prog(Evacuate(1.0, timeout_min=10.0), GasOff(), Dwell(1.0))
    p.start(0.0, 20.0)
    s = p.step(1.0, {"chamber_vacuum": 0.5})
    assert s.segment_kind == "dwell" and s.outputs == CLOSED


def test_quench_fan_is_a_gas_output_too() -> None:
    plumbing = GasPlumbing(inlet_valves={"Ar": "ar_inlet_valve"}, quench_fan="quench_fan")
    p = Programmer([Backfill("Ar", 1.2, timeout_min=10.0)], plumbing, default_holdback=OFF, pv_channel=PV)
    p.start(0.0, 20.0)
    assert p.step(1.0, {}).outputs == {"ar_inlet_valve": 1, "vacuum_pump": 0, "vacuum_valve": 0, "vent_valve": 0,
                                       "quench_fan": 0}


# ============================================================================ end


def test_end_heaters_off_drops_the_setpoint() -> None:
    p = prog(Step(300.0), End("heaters_off"))
    p.start(0.0, 20.0)
    s = p.step(0.0, {})
    assert s.state is ProgState.END and s.setpoint_c is None and s.segment_kind == "end"
    assert s.message == "program complete" and s.remaining_s == 0.0


def test_end_hold_setpoint_and_no_end_keep_the_setpoint() -> None:
    for program in ((Step(300.0), End("hold_setpoint")), (Step(300.0),)):
        p = prog(*program)
        p.start(0.0, 20.0)
        s = p.step(0.0, {})
        assert s.state is ProgState.END and s.setpoint_c == 300.0
        assert p.step(1000.0, {}).elapsed_s == 0.0  # nothing runs after the end


# ============================================================================ operator


def test_hold_and_resume() -> None:
    p = prog(Ramp(120.0, rate_c_per_min=10.0))
    p.start(0.0, 20.0)
    run(p, 0.0, 120.0, readings={PV: 40.0})
    p.hold(0.0)  # the sequencer passes no time: the hold takes effect from the last scan
    s = run(p, 120.0, 720.0, readings={PV: 40.0})
    assert s.state is ProgState.HOLD and s.setpoint_c == pytest.approx(40.0) and s.message == "held by the operator"
    assert s.elapsed_s == pytest.approx(720.0) and s.segment_elapsed_s == pytest.approx(120.0)
    p.resume(720.0)
    s = run(p, 720.0, 780.0, readings={PV: 50.0})
    assert s.state is ProgState.RUN and s.setpoint_c == pytest.approx(50.0)


def test_skip_a_ramp_keeps_the_setpoint_where_it_is() -> None:
    p = prog(Ramp(600.0, rate_c_per_min=10.0), Dwell(10.0))
    p.start(0.0, 20.0)
    run(p, 0.0, 60.0, readings={PV: 25.0})
    p.skip(60.0)
    s = p.step(61.0, {PV: 30.0})
    assert s.segment_kind == "dwell" and s.setpoint_c == pytest.approx(30.0)


def test_skip_in_an_operator_hold_stays_held_and_skip_a_timeout_hold_runs() -> None:
    p = prog(Dwell(10.0), Dwell(10.0), Wait(Threshold(PV, 900.0, above=True), timeout_min=1.0, on_timeout="hold"),
             Dwell(10.0))
    p.start(0.0, 20.0)
    p.hold(0.0)
    p.skip(0.0)
    s = p.step(10.0, {PV: 20.0})
    assert s.state is ProgState.HOLD and s.segment_index == 1
    p.skip(10.0)
    p.resume(10.0)
    s = p.step(70.0, {PV: 20.0})
    assert s.state is ProgState.HOLD and s.segment_index == 2  # the wait timed out into a hold
    p.skip(70.0)
    s = p.step(71.0, {PV: 20.0})
    assert s.state is ProgState.RUN and s.segment_index == 3


def test_skip_stops_at_the_end() -> None:
    for program in ((Dwell(10.0),), (Dwell(10.0), End("heaters_off"))):
        p = prog(*program)
        p.start(0.0, 300.0)
        p.hold(0.0)
        for _ in range(3):  # held: the skips do not run the program off its end
            p.skip(0.0)
        assert p.step(1.0, {PV: 300.0}).segment_index == 1
        p.resume(1.0)
        s = p.step(2.0, {PV: 300.0})
        assert s.state is ProgState.END and s.setpoint_c == (None if len(program) == 2 else 300.0)


def test_skipping_admit_h2_does_not_start_the_top_up() -> None:
    p = prog(AdmitH2(1.8, top_up_below_bar=1.6, timeout_min=30.0), Dwell(10.0))
    p.start(0.0, 20.0)
    p.step(1.0, {"chamber_pressure": 0.5})
    p.skip(1.0)
    assert p.step(2.0, {"chamber_pressure": 0.5}).outputs == CLOSED


def test_abort() -> None:
    p = prog(AdmitH2(1.8, top_up_below_bar=1.6, timeout_min=30.0), Dwell(10.0))
    p.start(0.0, 20.0)
    p.step(1.0, {"chamber_pressure": 0.5})
    p.abort("operator abort: smell of gas")
    p.abort("second reason")
    s = p.step(2.0, {"chamber_pressure": 0.5})
    assert s.state is ProgState.ABORTED and s.setpoint_c is None and s.message == "operator abort: smell of gas"
    assert s.outputs == {"h2_inlet_valve": 0, "ar_inlet_valve": 0}


# ============================================================================ time


def test_elapsed_and_remaining() -> None:
    p = prog(Ramp(120.0, rate_c_per_min=10.0), Dwell(20.0), Wait(Threshold(PV, 0.0, above=True), timeout_min=30.0),
             Ramp(20.0, duration_min=50.0))
    p.start(0.0, 20.0)
    s = p.step(300.0, {PV: 0.0})
    assert s.elapsed_s == 300.0
    assert s.remaining_s is None  # a wait is ahead
    assert s.remaining_max_s == pytest.approx(300.0 + 1200.0 + 1800.0 + 3000.0)
    s = run(p, 300.0, 1801.0, readings={PV: 0.0})  # ramp and dwell done, 1 s into the wait
    assert s.segment_kind == "wait" and s.remaining_max_s == pytest.approx(1799.0 + 3000.0)
    s = p.step(1802.0, {PV: 1.0})  # the wait ends at the scan that sees its condition
    assert s.segment_kind == "ramp" and s.remaining_s == pytest.approx(3000.0)
    assert p.step(1812.0, {PV: 1.0}).remaining_s == pytest.approx(2990.0)


def test_step_is_pure_in_time_and_deterministic() -> None:
    def once() -> list[ProgramStatus]:
        p = prog(Ramp(300.0, rate_c_per_min=7.0), Dwell(3.0), holdback=Holdback("band", 4.0))
        p.start(5.0, 20.0)
        out = []
        for i in range(400):
            t = 5.0 + i * 1.7
            out.append(p.step(t, {PV: 20.0 + i * 0.19}))
            out.append(p.step(t, {PV: 20.0 + i * 0.19}))  # the same instant again: nothing moves
        return out

    a, b = once(), once()
    assert a == b
    assert all(a[i].setpoint_c == a[i + 1].setpoint_c for i in range(0, len(a), 2))


def test_a_clock_that_steps_back_runs_nothing() -> None:
    p = prog(Dwell(10.0))
    p.start(100.0, 20.0)
    p.step(160.0, {PV: 20.0})
    s = p.step(50.0, {PV: 20.0})
    assert s.segment_elapsed_s == 60.0
    assert p.step(161.0, {PV: 20.0}).segment_elapsed_s == 61.0


def test_reset_until_started() -> None:
    p = prog(Dwell(1.0))
    s = p.step(10.0, {PV: 20.0})
    assert s.state is ProgState.RESET and s.setpoint_c is None and s.outputs == {}


# ============================================================================ snapshot and power-fail recovery


PROGRAM: tuple[Segment, ...] = (Ramp(600.0, rate_c_per_min=5.0), Dwell(60.0, label="soak"), End("heaters_off"))


def interrupted_in_the_soak() -> tuple[Programmer, dict[str, object]]:
    """A program 30 min into its 60 min soak at 600 degC, snapshot through JSON."""
    p = prog(*PROGRAM, holdback=Holdback("band", 10.0))
    p.start(0.0, 20.0)
    run(p, 0.0, 116 * 60.0 + 30 * 60.0, dt=10.0, readings=lambda t: {PV: min(600.0, 20.0 + 5.0 * t / 60.0)})
    snap = json.loads(json.dumps(p.snapshot(), allow_nan=False))
    assert snap["segment_index"] == 1 and snap["segment_clock_s"] == pytest.approx(1800.0)
    return p, snap


def restore(snap: dict[str, object], strategy: str, pv: float, now: float = 50_000.0) -> Programmer:
    return Programmer.restore(PROGRAM, PL, snap, default_holdback=Holdback("band", 10.0), now_s=now,
                              strategy=strategy, pv_c=pv, pv_channel=PV)


def test_snapshot_is_json_safe_and_restores_the_same_status() -> None:
    p, snap = interrupted_in_the_soak()
    q = restore(snap, "continue", 600.0, now=p.snapshot()["saved_at_s"])  # type: ignore[arg-type]
    now = float(p.snapshot()["saved_at_s"])  # type: ignore[arg-type]
    assert q.step(now + 10.0, {PV: 600.0}) == p.step(now + 10.0, {PV: 600.0})


def test_restore_continue_does_not_count_the_outage() -> None:
    _, snap = interrupted_in_the_soak()
    q = restore(snap, "continue", 598.0)
    s = q.step(50_000.0, {PV: 598.0})
    assert s.state is ProgState.RUN and s.setpoint_c == 600.0 and s.segment_elapsed_s == pytest.approx(1800.0)
    s = run(q, 50_000.0, 50_000.0 + 1799.0, dt=1.0, readings={PV: 600.0})
    assert s.segment_label == "soak"
    assert run(q, 51_799.0, 51_800.0, readings={PV: 600.0}).state is ProgState.END


def test_restore_ramp_back_ramps_from_the_pv_at_the_last_ramps_rate_then_soaks_on() -> None:
    _, snap = interrupted_in_the_soak()
    q = restore(snap, "ramp_back", 500.0)
    s = q.step(50_000.0, {PV: 500.0})
    assert s.setpoint_c == 500.0 and "ramping back to 600.0 degC" in s.message
    s = run(q, 50_000.0, 50_000.0 + 600.0, dt=10.0, readings=lambda t: {PV: 500.0 + 5.0 * (t - 50_000.0) / 60.0})
    assert s.setpoint_c == pytest.approx(550.0) and s.segment_elapsed_s == pytest.approx(1800.0)
    s = run(q, 50_600.0, 50_600.0 + 1200.0 + 1800.0, dt=10.0,
            readings=lambda t: {PV: min(600.0, 500.0 + 5.0 * (t - 50_000.0) / 60.0)})
    assert s.state is ProgState.END  # 20 min back to 600, then the remaining 30 min of soak


def test_restore_ramp_back_uses_the_interrupted_ramps_rate_or_joins_a_cooling_ramp() -> None:
    program = (Ramp(600.0, rate_c_per_min=4.0), Ramp(100.0, rate_c_per_min=10.0))
    p = Programmer(program, PL, default_holdback=OFF, pv_channel=PV)
    p.start(0.0, 20.0)
    run(p, 0.0, 60.0 * 60.0, dt=60.0, readings={PV: 260.0})  # setpoint at 260 on the way up
    q = Programmer.restore(program, PL, p.snapshot(), default_holdback=OFF, now_s=0.0, strategy="ramp_back",
                           pv_c=200.0, pv_channel=PV)
    assert q.step(60.0, {PV: 200.0}).setpoint_c == pytest.approx(204.0)  # from 200 at the ramp's 4 degC/min
    run(p, 3600.0, 8700.0 + 1200.0, dt=60.0, readings={PV: 400.0})  # 8700 s to 600, then 20 min down: 400
    assert p.step(9900.0, {PV: 400.0}).setpoint_c == pytest.approx(400.0)
    q = Programmer.restore(program, PL, p.snapshot(), default_holdback=OFF, now_s=0.0, strategy="ramp_back",
                           pv_c=300.0, pv_channel=PV)
    s = q.step(0.0, {PV: 300.0})
    assert s.setpoint_c == 300.0 and s.state is ProgState.RUN  # cooled further in the outage: no reheating
    assert q.step(60.0, {PV: 290.0}).setpoint_c == pytest.approx(290.0)


def test_restore_ramp_back_without_a_valid_pv_holds() -> None:
    _, snap = interrupted_in_the_soak()
    q = restore(snap, "ramp_back", math.nan)
    s = q.step(50_000.0, {PV: math.nan})
    assert s.state is ProgState.HOLD and s.setpoint_c is None and "no valid reading" in s.message


def test_restore_hold_holds_at_the_pv_and_ramps_back_on_resume() -> None:
    _, snap = interrupted_in_the_soak()
    q = restore(snap, "hold", 450.0)
    s = q.step(50_100.0, {PV: 450.0})
    assert s.state is ProgState.HOLD and s.setpoint_c == 450.0 and "resume to ramp back to 600.0" in s.message
    q.resume(50_100.0)
    s = q.step(50_160.0, {PV: 452.0})
    assert s.state is ProgState.RUN and s.setpoint_c == pytest.approx(455.0)


def test_restore_abort() -> None:
    _, snap = interrupted_in_the_soak()
    s = restore(snap, "abort", 600.0).step(50_000.0, {PV: 600.0})
    assert s.state is ProgState.ABORTED and "strategy is abort" in s.message and s.setpoint_c is None


def test_restore_refuses_a_snapshot_of_another_program_or_a_damaged_one() -> None:
    _, snap = interrupted_in_the_soak()
    with pytest.raises(ValueError, match="another program"):
        Programmer.restore(PROGRAM[:2], PL, snap, default_holdback=OFF, now_s=0.0, strategy="continue", pv_c=600.0)
    with pytest.raises(ValueError, match="damaged"):
        restore({k: v for k, v in snap.items() if k != "gas"}, "continue", 600.0)
    with pytest.raises(ValueError, match="finite"):
        restore({**snap, "segment_clock_s": "x"}, "continue", 600.0)
    with pytest.raises(ValueError, match="strategy"):
        restore(snap, "pray", 600.0)


# ============================================================================ with a recipe


def test_the_hd_degassing_program_runs_to_its_end_on_a_plant() -> None:
    """The example recipe's degassing program against a first-order plant: pump, heat, soak, end."""
    recipe = load_recipe(ROOT / "recipes" / "hd_standard.toml")
    p = Programmer(recipe.program("degassing"), PL, default_holdback=recipe.holdback, pv_channel=PV)
    t, pv, vacuum, hydrogen = 0.0, 22.0, 1500.0, 1.0
    p.start(t, pv)
    seen = set()
    while t < 10 * 3600.0:
        t += 10.0
        s = p.step(t, {PV: pv, "chamber_vacuum": vacuum})
        seen.add(s.segment_kind)
        if s.setpoint_c is not None:
            pv += (s.setpoint_c - pv) * 0.2
        desorbed = hydrogen * 0.005 if pv > 300.0 else 0.0  # the matrix hydride gives its hydrogen off
        hydrogen -= desorbed
        if s.outputs.get("vacuum_pump"):
            vacuum = max(0.02 + 200.0 * desorbed, vacuum * 0.8)
        if s.state is ProgState.END:
            break
    assert s.state is ProgState.END and s.setpoint_c == 600.0 and s.outputs == PUMPING
    assert seen == {"evacuate", "ramp", "wait", "dwell", "end"}
    assert 3.0 * 3600.0 < t < 5.0 * 3600.0  # ramps 116 min, soak 60 min, pumping and waits


# ============================================================================ property: any program, any readings

_holdbacks = st.one_of(st.none(), st.builds(Holdback, st.sampled_from(["off", "lo", "hi", "band"]),
                                            st.floats(0.5, 50.0)))
_timeouts = {"timeout_min": st.floats(0.5, 30.0), "on_timeout": st.sampled_from(["abort", "hold", "continue"])}
_segments = st.one_of(
    st.builds(Ramp, st.floats(0.0, 1000.0), rate_c_per_min=st.floats(0.5, 20.0), holdback=_holdbacks),
    st.builds(Ramp, st.floats(0.0, 1000.0), duration_min=st.floats(0.5, 60.0), holdback=_holdbacks),
    st.builds(Step, st.floats(0.0, 1000.0)),
    st.builds(Dwell, st.floats(0.5, 60.0), holdback=_holdbacks),
    st.builds(Wait, st.one_of(st.builds(Threshold, st.just(PV), st.floats(0.0, 1000.0), st.booleans()),
                              st.builds(Level, st.just("lid_closed"), st.sampled_from([0, 1])),
                              st.builds(PressureStable, st.floats(0.001, 0.1), st.floats(0.5, 10.0))), **_timeouts),
    st.builds(Evacuate, st.floats(0.01, 10.0), **_timeouts),
    st.builds(Backfill, st.sampled_from(["Ar", "H2"]), st.floats(0.5, 2.0), **_timeouts),
    st.builds(lambda to, **kw: AdmitH2(to, to - 0.2, **kw), st.floats(0.5, 2.0), **_timeouts),
    st.builds(Vent, st.floats(1.0, 1.5), **_timeouts),
    st.builds(GasOff),
)
_programs = st.tuples(st.lists(_segments, min_size=1, max_size=6),
                      st.one_of(st.none(), st.builds(End, st.sampled_from(["heaters_off", "hold_setpoint"]))))
_readings = st.fixed_dictionaries({
    PV: st.one_of(st.floats(0.0, 1000.0), st.just(math.nan)),
    "chamber_vacuum": st.one_of(st.floats(0.001, 1000.0), st.just(math.nan)),
    "chamber_pressure": st.one_of(st.floats(0.0, 2.5), st.just(math.nan)),
    "lid_closed": st.sampled_from([0.0, 1.0]),
})
_scans = st.lists(st.tuples(st.floats(0.0, 900.0), _readings, st.sampled_from(["", "", "", "hold", "resume", "skip"])),
                  min_size=1, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_programs, st.one_of(st.floats(0.0, 600.0), st.just(math.nan)), _scans, st.integers(0, 40),
       st.builds(Holdback, st.sampled_from(["off", "lo", "hi", "band"]), st.floats(0.5, 20.0)))
def test_any_program_runs_safely_and_a_snapshot_resumes_it_exactly(
        program: tuple[list[Segment], End | None], pv0: float, scans: list[tuple[float, dict[str, float], str]],
        cut: int, holdback: Holdback) -> None:
    segments = (*program[0], *((program[1],) if program[1] else ()))
    p = Programmer(segments, PL, default_holdback=holdback, pv_channel=PV)
    p.start(0.0, pv0)
    t, q, elapsed = 0.0, None, 0.0
    for i, (dt, readings, action) in enumerate(scans):
        if i == cut:  # a power loss with no outage: restoring must change nothing
            q = Programmer.restore(segments, PL, json.loads(json.dumps(p.snapshot(), allow_nan=False)),
                                   default_holdback=holdback, now_s=t, strategy="continue", pv_c=math.nan,
                                   pv_channel=PV)
        t += dt
        for prog_ in (p, q) if q is not None else (p,):
            if action == "hold":
                prog_.hold(t)
            elif action == "resume":
                prog_.resume(t)
            elif action == "skip":
                prog_.skip(t)
        s = p.step(t, readings)
        if q is not None:
            assert q.step(t, readings) == s
        assert set(s.outputs) <= set(PL.outputs) and set(s.outputs.values()) <= {0, 1}
        if s.outputs.get("h2_inlet_valve") == 1:
            assert s.state in (ProgState.RUN, ProgState.HOLDBACK)
        assert s.setpoint_c is None or math.isfinite(s.setpoint_c)
        assert s.elapsed_s >= elapsed and s.segment_elapsed_s >= 0.0
        elapsed = s.elapsed_s
        if s.state is ProgState.ABORTED:
            assert s.setpoint_c is None and s.message
