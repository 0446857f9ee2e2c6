"""PID loops on simulated plants: tuning rule figures, anti-windup against a naive PID, derivative on the
measurement, bumpless transfers, sensor break, uneven scans, power-fail snapshots, and the example
station's loop on the HD reactor plant model.

The plant is a first-order-plus-dead-time model integrated exactly per step (zero-order hold on the
input), ``K e^(-theta s) / (tau s + 1)``, with the PID scanned at a coarser period than the plant step.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import pathlib
from collections.abc import Callable
from typing import Protocol

import pytest

from edge.control.pid import Pid
from edge.spec.loops import LoopSpec, PidGains
from edge.spec.station import load_station
from hil.plants.hd_reactor import SMALL_RETORT, HDReactor

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Fopdt:
    """y' = (K u(t - theta) - y) / tau, exact over each step of dt with u held; y is the deviation."""

    def __init__(self, k: float, tau_s: float, theta_s: float, dt: float, u0: float = 0.0) -> None:
        self.k, self.dt = k, dt
        self.y = k * u0
        self.alpha = 1.0 - math.exp(-dt / tau_s)
        self.delay: collections.deque[float] = collections.deque([u0] * max(1, round(theta_s / dt)))

    def step(self, u: float) -> float:
        self.delay.append(u)
        self.y += self.alpha * (self.k * self.delay.popleft() - self.y)
        return self.y


class Controller(Protocol):
    def update(self, sp: float, pv: float, now_s: float) -> float: ...


def simulate(ctrl: Controller, plant: Fopdt, sp: Callable[[float], float], duration_s: float,
             scan_s: float = 0.1, ambient: float = 0.0) -> list[tuple[float, float, float]]:
    """(t, pv, output) per scan; the plant steps ``scan_s / plant.dt`` times per scan."""
    steps = round(scan_s / plant.dt)
    t, pv, log = 0.0, ambient + plant.y, []
    while t < duration_s - 1e-9:
        u = ctrl.update(sp(t), pv, t)
        for _ in range(steps):
            pv = ambient + plant.step(u)
        t += scan_s
        log.append((t, pv, u))
    return log


class NaivePid:
    """The textbook PI with its output clamped and its integrator unprotected: the windup baseline."""

    def __init__(self, gains: PidGains) -> None:
        self.gains, self.integral = gains, 0.0
        self.last: float | None = None

    def update(self, sp: float, pv: float, now_s: float) -> float:
        dt = 0.0 if self.last is None else now_s - self.last
        self.last = now_s
        self.integral += self.gains.kp * dt / self.gains.ti_s * (sp - pv)
        return min(max(self.gains.kp * (sp - pv) + self.integral, 0.0), 1.0)


def mode_of(pid: Pid) -> str:
    """The mode, read afresh (mypy would keep a narrowed literal across set_auto/set_manual)."""
    return pid.mode


def simc_pi(k: float, tau_s: float, theta_s: float) -> PidGains:
    """Skogestad's SIMC rule with tau_c = theta: Kc = tau / (K 2 theta), Ti = min(tau, 8 theta)."""
    return PidGains(kp=tau_s / (k * 2.0 * theta_s), ti_s=min(tau_s, 8.0 * theta_s), td_s=0.0)


# ---------------------------------------------------------------- tuning and windup on FOPDT plants


def test_step_response_of_a_fopdt_plant_with_simc_gains() -> None:
    # K = 2, tau = 60 s, theta = 10 s; SIMC PI: kp = 1.5, ti = 60 s. Measured: 4.1 % overshoot,
    # within 2 % of the step after 60.3 s (SIMC's nominal closed loop: theta + 4 tau_c = 50 s).
    gains = simc_pi(2.0, 60.0, 10.0)
    log = simulate(Pid(gains), Fopdt(2.0, 60.0, 10.0, dt=0.01), lambda t: 0.5, 400.0)
    peak = max(pv for _, pv, _ in log)
    settled_at = max(t for t, pv, _ in log if abs(pv - 0.5) > 0.01)
    assert (peak - 0.5) / 0.5 < 0.05
    assert settled_at < 75.0
    assert abs(log[-1][1] - 0.5) < 1e-4  # no offset: integral action


def test_anti_windup_heat_up_does_not_overshoot_where_a_naive_pid_does() -> None:
    # A furnace-like plant: 600 degC per unit output, tau 20 min, 1 min dead time; heat from 20 to
    # 400 degC. The output is saturated for ~16 min. Measured: 0.0 degC overshoot against 151 degC.
    gains = simc_pi(600.0, 1200.0, 60.0)
    runs = {name: simulate(ctrl, Fopdt(600.0, 1200.0, 60.0, dt=0.1), lambda t: 400.0, 4 * 3600.0, scan_s=1.0,
                           ambient=20.0)
            for name, ctrl in (("protected", Pid(gains)), ("naive", NaivePid(gains)))}
    overshoot = {name: max(pv for _, pv, _ in log) - 400.0 for name, log in runs.items()}
    assert overshoot["protected"] < 2.0
    assert overshoot["naive"] > 100.0
    for name, log in runs.items():
        assert abs(log[-1][1] - 400.0) < 1.0, name


def test_anti_windup_output_leaves_the_limit_when_the_error_changes_sign() -> None:
    # An unreachable setpoint (800 degC; the plant tops out at 620) holds the output at 100 % for two
    # hours; then the recipe asks for 500 degC. Measured: the protected PID leaves the limit on the
    # very next scan and holds 500 +- 5 degC within 23 min; the naive one is still at 100 % four hours later.
    gains = simc_pi(600.0, 1200.0, 60.0)

    def setpoint(t: float) -> float:
        return 800.0 if t < 7200.0 else 500.0

    for name, ctrl in (("protected", Pid(gains)), ("naive", NaivePid(gains))):
        log = simulate(ctrl, Fopdt(600.0, 1200.0, 60.0, dt=0.1), setpoint, 7200.0 + 4 * 3600.0, scan_s=1.0,
                       ambient=20.0)
        before = [u for t, _, u in log if 3600.0 < t <= 7200.0]
        after = [(t, pv, u) for t, pv, u in log if t > 7200.0]
        assert min(before) == 1.0, name  # saturated all along
        leaves = next((t - 7200.0 for t, _, u in after if u < 1.0), math.inf)
        if name == "protected":
            assert leaves <= 1.0
            assert max(t for t, pv, _ in after if abs(pv - 500.0) > 5.0) - 7200.0 < 1500.0
        else:
            assert leaves == math.inf
            assert after[-1][1] > 600.0


# ---------------------------------------------------------------- derivative, transfers, sensor break


def test_no_derivative_kick_on_a_setpoint_step_but_action_on_a_pv_step() -> None:
    gains = PidGains(kp=0.02, ti_s=600.0, td_s=60.0)
    pid = Pid(gains, out_min=-10.0, out_max=10.0)  # wide limits: nothing is clipped here
    for k in range(50):
        pid.update(100.0, 100.0, k * 0.1)
    before = pid.output
    after = pid.update(105.0, 100.0, 5.0)  # setpoint step of 5
    dt_integral = gains.kp * 0.1 / gains.ti_s * 5.0
    assert after - before == pytest.approx(gains.kp * 5.0 + dt_integral, rel=1e-9)  # P and I only

    pid2 = Pid(gains, out_min=-10.0, out_max=10.0)
    for k in range(50):
        pid2.update(100.0, 100.0, k * 0.1)
    kicked = pid2.update(100.0, 95.0, 5.0)  # the same error from a PV step: derivative acts
    tf = gains.td_s * 0.1
    expected_d = gains.kp * gains.td_s * 5.0 / (tf + 0.1)
    assert kicked - before == pytest.approx(gains.kp * 5.0 + dt_integral + expected_d, rel=1e-9)
    assert kicked - before > 5 * (after - before)


def test_first_call_initialises_without_a_derivative_kick() -> None:
    pid = Pid(PidGains(kp=0.01, ti_s=100.0, td_s=50.0))
    assert pid.update(300.0, 250.0, 1000.0) == pytest.approx(0.01 * 50.0)  # P only: no D, no dt yet


def test_bumpless_manual_to_auto_and_auto_to_manual() -> None:
    pid = Pid(PidGains(kp=0.05, ti_s=300.0, td_s=30.0))
    plant = Fopdt(600.0, 1200.0, 60.0, dt=0.1)
    pv, t = 20.0, 0.0
    pid.set_manual(0.3)
    assert mode_of(pid) == "manual"
    for _ in range(600):  # an hour in manual at 30 %: the PV drifts, the setpoint is 400
        assert pid.update(400.0, pv, t) == 0.3
        for _ in range(10):
            pv = 20.0 + plant.step(0.3)
        t += 1.0
    pid.set_auto(t)
    assert mode_of(pid) == "auto"
    outputs = []
    for _ in range(50):  # 100 ms scans
        outputs.append(pid.update(400.0, pv, t))
        pv = 20.0 + plant.step(outputs[-1])
        t += 0.1
    # no bump at the transfer (a fresh PID would jump to 100 %: P alone is 0.05 x 209 degC), then the
    # integral moves it at kp/Ti x e = 0.0035 per scan
    assert 400.0 - pv > 200.0
    assert outputs[0] == pytest.approx(0.3, abs=1e-12)
    assert max(abs(b - a) for a, b in itertools.pairwise(outputs)) < 0.005
    pid.set_manual()  # None: hold the present output
    assert pid.update(400.0, pv, t) == outputs[-1]


def test_retune_is_bumpless() -> None:
    pid = Pid(PidGains(kp=0.05, ti_s=300.0, td_s=0.0))
    for k in range(100):
        pid.update(200.0, 190.0 + 0.05 * k, float(k))
    before = pid.output
    pid.retune(PidGains(kp=0.2, ti_s=100.0, td_s=20.0))  # 4x the gain: P alone would jump by 0.76
    assert pid.update(200.0, 194.95, 99.0) == pytest.approx(before, abs=1e-12)  # same scan time: nothing else moves
    assert pid.update(200.0, 194.95, 100.0) == pytest.approx(before + 0.2 / 100.0 * 5.05, abs=1e-12)


def test_sensor_break_goes_to_its_output_freezes_the_integrator_and_resumes_without_a_bump() -> None:
    gains = PidGains(kp=0.05, ti_s=300.0, td_s=60.0)

    def steady() -> Pid:
        pid = Pid(gains, sensor_break_output=0.1, out_min=-5.0, out_max=5.0)
        for k in range(300):  # half a minute 0.5 degC below the setpoint: the integrator creeps up
            pid.update(500.0, 499.5, k * 0.1)
        return pid

    pid = steady()
    before, integral = pid.output, pid.integral
    for k in range(1, 601):  # a minute without a valid PV
        assert pid.update(500.0, math.nan, 30.0 + k * 0.1) == 0.1
        assert pid.sensor_bad
    assert pid.integral == integral  # frozen: nothing integrated on a missing PV, nor over the gap
    assert pid.update(500.0, 499.5, 90.1) == pytest.approx(before, abs=1e-12)  # back where it was
    assert not pid.sensor_bad

    # a PV that returns 3 degC lower moves the output by P alone (3 kp = 0.15) ...
    pid = steady()
    pid.update(500.0, math.nan, 30.0)
    assert pid.update(500.0, 496.5, 30.1) - before == pytest.approx(gains.kp * 3.0, abs=1e-12)
    # ... where the same 3 degC step without a break is a derivative kick: kp Td 3 / (Tf + dt) = 1.48 more
    pid = steady()
    kick = pid.update(500.0, 496.5, 30.0) - before
    assert kick == pytest.approx(gains.kp * 3.0 + gains.kp * gains.td_s * 3.0 / (6.0 + 0.1)
                                 + gains.kp * 0.1 / gains.ti_s * 3.5, abs=1e-12)


def test_sensor_break_in_manual_keeps_the_manual_output() -> None:
    pid = Pid(PidGains(0.05, 300.0, 0.0), sensor_break_output=0.0)
    pid.set_manual(0.4)
    assert pid.update(100.0, math.nan, 0.0) == 0.4
    assert pid.update(100.0, math.inf, 1.0) == 0.4


def test_repeated_time_and_uneven_steps() -> None:
    gains = PidGains(kp=0.01, ti_s=100.0, td_s=0.0)
    pid = Pid(gains, out_min=-1.0, out_max=1.0)
    pid.update(10.0, 0.0, 0.0)
    out = pid.update(10.0, 0.0, 0.0)  # dt = 0: nothing integrated
    assert out == pytest.approx(0.1)
    for t in (0.05, 0.3, 0.31, 2.0, 2.0, 7.5, 10.0):  # uneven, with a repeat
        out = pid.update(10.0, 0.0, t)
    assert pid.integral == pytest.approx(gains.kp / gains.ti_s * 10.0 * 10.0)  # exact integral of e dt
    pid.update(10.0, 0.0, 5.0)  # time going back integrates nothing
    assert pid.integral == pytest.approx(0.01)
    with_d = Pid(PidGains(kp=0.01, ti_s=0.0, td_s=10.0), derivative_filter=0.0, out_min=-1, out_max=1)
    with_d.update(0.0, 0.0, 0.0)
    assert math.isfinite(with_d.update(0.0, 1.0, 0.0))  # unfiltered derivative with dt = 0: held, no division


def test_output_is_clamped_and_ti_zero_means_no_integral() -> None:
    pid = Pid(PidGains(kp=1.0, ti_s=0.0, td_s=0.0), out_min=0.1, out_max=0.9, sensor_break_output=0.1)
    assert pid.update(100.0, 0.0, 0.0) == 0.9
    assert pid.update(0.0, 100.0, 1.0) == 0.1
    for t in range(2, 100):
        pid.update(10.0, 9.8, float(t))
    assert pid.integral == 0.0
    assert pid.output == pytest.approx(0.2)


def test_reset_forgets_history() -> None:
    pid = Pid(PidGains(0.05, 100.0, 10.0))
    for t in range(100):
        pid.update(100.0, 90.0, float(t))
    pid.reset()
    assert pid.integral == 0.0
    assert pid.update(100.0, 90.0, 500.0) == pytest.approx(0.5)


def test_snapshot_is_json_safe_and_restores_state() -> None:
    pid = Pid(PidGains(0.05, 300.0, 30.0))
    for t in range(200):
        pid.update(300.0, 280.0 + 0.05 * t, float(t))
    text = json.dumps(pid.snapshot())
    fresh = Pid(PidGains(1.0, 1.0, 0.0))
    fresh.restore(json.loads(text))
    assert fresh.gains == pid.gains and fresh.integral == pid.integral and mode_of(fresh) == "auto"
    # after a power cut plant time restarts: nothing is integrated over the outage, no derivative kick
    out = fresh.update(300.0, 290.0, 0.0)
    assert out == pytest.approx(0.05 * 10.0 + pid.integral)
    pid.set_manual(0.25)
    fresh.restore(json.loads(json.dumps(pid.snapshot())))
    assert mode_of(fresh) == "manual" and fresh.update(300.0, 290.0, 1.0) == 0.25


@pytest.mark.parametrize("bad", [
    {}, {"version": 2}, {"version": 1, "gains": {"kp": 0, "ti_s": 1, "td_s": 0}, "mode": "auto",
                         "manual_output": 0, "integral": 0, "output": 0},
    {"version": 1, "gains": {"kp": 1, "ti_s": 1, "td_s": 0}, "mode": "cascade", "manual_output": 0,
     "integral": 0, "output": 0},
    {"version": 1, "gains": {"kp": 1, "ti_s": 1, "td_s": 0}, "mode": "auto", "manual_output": 0,
     "integral": float("nan"), "output": 0},
    {"version": 1, "gains": [1, 1, 0], "mode": "auto", "manual_output": 0, "integral": 0, "output": 0},
])
def test_malformed_snapshot_is_refused_and_changes_nothing(bad: dict[str, object]) -> None:
    pid = Pid(PidGains(0.05, 300.0, 0.0))
    pid.update(100.0, 90.0, 0.0)
    before = pid.snapshot()
    with pytest.raises(ValueError):
        pid.restore(bad)
    assert pid.snapshot() == before


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="kp must be > 0"):
        PidGains(0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        PidGains(1.0, math.inf, 0.0)
    with pytest.raises(ValueError, match="out_min < out_max"):
        Pid(PidGains(1.0, 1.0, 0.0), out_min=1.0, out_max=0.0)
    with pytest.raises(ValueError, match="sensor_break_output"):
        Pid(PidGains(1.0, 1.0, 0.0), sensor_break_output=2.0)
    pid = Pid(PidGains(1.0, 1.0, 0.0))
    with pytest.raises(ValueError, match="manual output"):
        pid.set_manual(1.5)
    with pytest.raises(ValueError, match="setpoint"):
        pid.update(math.nan, 1.0, 0.0)


# ---------------------------------------------------------------- the example station's loop on the plant model


def _run_chamber_loop(loop: LoopSpec, vacuum: bool) -> list[tuple[float, float]]:
    """Hold 200 degC for 30 min from steady state, then step the setpoint to 220 degC for 90 min.

    The heater is burst-fired: each 1 s scan is heater on for u s and off for 1 - u s (the loop
    scans every 100 ms on the controller; its time constants, 10 s and up, make 1 s faithful)."""
    plant = HDReactor(SMALL_RETORT)
    plant.s.n_air = 0.0
    plant.s.n_ar = 0.0 if vacuum else 1.013e5 * SMALL_RETORT.volume_m3 / (8.314 * 473.15)
    plant.s.wall_c = plant.s.charge_c = 200.0
    pid = Pid.for_loop(loop)
    hold = SMALL_RETORT.g_wall_jacket * (200.0 - SMALL_RETORT.t_water_c) / SMALL_RETORT.heater_w
    pid.set_manual(hold)  # the furnace has been holding 200 degC by hand: hand over bumplessly
    pid.set_auto(0.0)
    log = []
    for k in range(2 * 3600):
        t = float(k)
        u = pid.update(200.0 if t < 1800.0 else 220.0, plant.s.charge_c, t)
        plant.step({"heater": 1}, u)
        plant.step({"heater": 0}, 1.0 - u)
        log.append((t + 1.0, plant.s.charge_c))
    return log


@pytest.mark.parametrize("vacuum, overshoot_max, settle_max_s", [(False, 2.0, 35 * 60.0), (True, 8.0, 45 * 60.0)])
def test_example_station_loop_controls_the_hd_plant_model(vacuum: bool, overshoot_max: float,
                                                          settle_max_s: float) -> None:
    # Measured with setpoint weight b = 1 (the station's choice, because recipes ramp: with b < 1 a ramp
    # lags by (1-b)*Ti*rate and stalls in holdback): a 20 degC setpoint STEP overshoots 1.7 degC under
    # argon and 6.8 degC under vacuum, where the retort wall's stored heat reaches the charge late.
    # (With b = 0.7 it was 0.0 and 1.8 degC; recipes use ramps with holdback, not steps, at temperature.)
    loop = load_station(ROOT / "stations" / "hd_reactor_sim.toml").loops[0]
    log = _run_chamber_loop(loop, vacuum)
    assert max(abs(pv - 200.0) for t, pv in log if t <= 1800.0) < 0.2  # bumpless hand-over, steady hold
    after = [(t, pv) for t, pv in log if t > 1800.0]
    assert max(pv for _, pv in after) - 220.0 < overshoot_max
    assert max(t for t, pv in after if abs(pv - 220.0) > 0.5) - 1800.0 < settle_max_s


def test_a_derivative_carried_through_manual_does_not_wind_the_integrator_at_the_transfer() -> None:
    """The sintering anneal after a quench: the loop tracked 0 % in manual while the charge fell 1.3 degC/s, then
    the program's ramp put it in auto at the PV. The transfer put the derivative's transient (+7.8) into the
    integrator (-7.8): with the charge 18 degC below the setpoint the heater stayed off for 1.9 h (issue 16
    review). The transfer is still bumpless, and the loop now heats as soon as the PV is below the setpoint."""
    pid = Pid(PidGains(kp=0.05, ti_s=1200.0, td_s=120.0))
    pid.set_manual(0.0)
    pv, t = 900.0, 0.0
    for _ in range(600):                     # the quench: 1.3 degC/s down, no heat wanted
        pid.update(pv, pv, t)
        pv, t = pv - 1.3, t + 1.0
    pid.set_auto(t)
    assert pid.update(pv + 3.0, pv, t) == pytest.approx(0.0, abs=1e-12)    # bumpless: 0 % as in manual
    assert abs(pid.integral) < 1.0
    t += 1.0
    for _ in range(60):                      # the charge settles 18 degC below the ramp's setpoint
        out = pid.update(88.0, 70.0, t)
        t += 1.0
    assert out > 0.5
