"""The plant models keep their books: hydrogen and energy are conserved, and the safety hardware acts.

The first checks read the plant only through what a controller would see (the published pressure
and temperature), so they test the model's physics, not its bookkeeping against itself. The last
ones run the real plant process on a register file with the real C core writing the outputs.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import time

import pytest

from edge.core import Core
from edge.spec.station import load_station
from hil.plants import PLANTS
from hil.plants.hd_reactor import HDParams, HDReactor, HDState, R
from hil.plants.safety_hw import FieldSide, WatchdogRelay
from hil.rig import RigConfig, VirtualRig

ROOT = pathlib.Path(__file__).resolve().parent.parent
HD_STATION = ROOT / "stations" / "hd_reactor_sim.toml"
CLOSED = {"heater": 0.0, "h2_inlet_valve": 0.0, "ar_inlet_valve": 0.0, "vent_valve": 0.0, "vacuum_pump": 0.0,
          "vacuum_valve": 0.0, "cooling_water_valve": 1.0}


def gas_moles_from_sensors(plant: HDReactor) -> float:
    """n = p V / (R T) from the published pressure (bar abs) and charge temperature (degC)."""
    analog, _, _ = plant.sensors()
    return analog["chamber_pressure"] * 1e5 * plant.p.volume_m3 / (R * (analog["chamber_temp"] + 273.15))


def test_hydrogen_absorbed_equals_the_moles_of_the_pressure_drop() -> None:
    p = HDParams(leak_mbar_l_s=0.0)      # a tight vessel: below atmosphere the seals would let air in
    n_h2 = 1.5e5 * p.volume_m3 / (R * 294.15)
    plant = HDReactor(p, HDState(n_air=0.0, n_h2=n_h2, incubated_s=p.incubation_s))
    before = gas_moles_from_sensors(plant)
    for _ in range(3600):
        plant.step(CLOSED, 1.0)
    after = gas_moles_from_sensors(plant)
    absorbed = plant.s.x_h2
    assert absorbed > 0.5, "a closed vessel of H2 over NdFeB absorbs"
    assert plant.s.charge_c > 21.5, "absorption is exothermic"
    assert before - after == pytest.approx(absorbed, rel=1e-9)
    assert plant.s.h2_fed_mol == 0.0 and plant.s.h2_vented_mol == 0.0


def test_absorption_slows_as_the_charge_saturates() -> None:
    p = HDParams()
    plant = HDReactor(p, HDState(n_air=0.0, n_h2=40.0, incubated_s=p.incubation_s))
    rates = []
    for _ in range(4):
        x0 = plant.s.x_h2
        for _ in range(900):
            plant.step(CLOSED, 1.0)
        rates.append((plant.s.x_h2 - x0) / 900.0)
    assert all(a > b for a, b in itertools.pairwise(rates)), rates
    assert plant.s.x_h2 <= plant.x_max()
    assert 0.003 <= p.capacity_wt <= 0.005, "0.3-0.5 wt% of the charge"


def test_hydrogen_desorbs_under_vacuum_when_heated_and_every_mole_is_accounted_for() -> None:
    p = HDParams()
    plant = HDReactor(p, HDState(n_air=0.0, n_h2=0.01, x_h2=HDParams().capacity_wt * p.charge_kg / 2.016e-3,
                                 h2_fed_mol=0.01 + HDParams().capacity_wt * p.charge_kg / 2.016e-3))
    out = {**CLOSED, "heater": 1.0, "vacuum_pump": 1.0, "vacuum_valve": 1.0}
    x0 = plant.s.x_h2
    for _ in range(6 * 3600):
        out["heater"] = 1.0 if plant.s.charge_c < 600.0 else 0.0
        plant.step(out, 1.0)
    assert plant.s.x_h2 < 0.5 * x0, "degassing at 600 degC releases most of the hydrogen"
    assert plant.s.h2_pumped_mol > 0.4 * x0
    assert plant.hydrogen_inventory_mol() == pytest.approx(plant.s.h2_fed_mol, rel=1e-9)


def test_heater_energy_is_the_integral_of_its_power() -> None:
    plant = HDReactor()
    expected = 0.0
    for i in range(5000):
        duty = (i % 7) / 6.0
        plant.step({**CLOSED, "heater": duty}, 0.5)
        expected += plant.p.heater_w * duty * 0.5
    assert plant.s.heater_j == pytest.approx(expected, rel=1e-12)


def test_room_hydrogen_comes_only_from_the_leak_and_is_ventilated_away() -> None:
    plant = HDReactor(HDParams(room_m3=8.0, incubation_s=1e9))    # no absorption: the pressure stays up
    plant.s.n_air, plant.s.n_h2 = 0.0, 1.8e5 * plant.p.volume_m3 / (R * 294.15)
    for _ in range(600):
        plant.step(CLOSED, 1.0)
    assert plant.room_lel() == 0.0
    plant.s.room_leak_mol_s_bar = 0.02
    for _ in range(300):
        plant.step(CLOSED, 1.0)
    peak = plant.room_lel()
    assert peak > 15.0
    plant.s.room_leak_mol_s_bar = 0.0
    for _ in range(1800):
        plant.step(CLOSED, 1.0)
    assert plant.room_lel() < 0.2 * peak
    assert plant.hydrogen_inventory_mol() == pytest.approx(plant.s.n_h2 + plant.s.x_h2 + plant.s.h2_leaked_mol)


def test_purging_with_argon_drives_the_oxygen_out() -> None:
    plant = HDReactor()
    assert plant.o2_pct() == pytest.approx(20.9)
    for _cycle in range(2):
        while plant.pressure_bar() > 0.01:
            plant.step({**CLOSED, "vacuum_pump": 1.0, "vacuum_valve": 1.0}, 1.0)
        while plant.pressure_bar() < 1.05:
            plant.step({**CLOSED, "ar_inlet_valve": 1.0}, 1.0)
    assert plant.o2_pct() < 0.01


def test_watchdog_relay_drops_its_outputs_only_when_the_line_stops() -> None:
    relay = WatchdogRelay(timeout_s=0.5, outputs=("heater", "h2_inlet_valve"))
    field = FieldSide({"heater": 0.0, "h2_inlet_valve": 0.0, "vent_valve": 1.0}, relay)
    written = {"heater": 1.0, "h2_inlet_valve": 1.0, "vent_valve": 0.0}
    relay.update(1_000_000_000, 1_000_000_001)
    assert field.effective(written) == {"heater": 0.0, "h2_inlet_valve": 0.0, "vent_valve": 1.0}, \
        "no core has written the lines yet: everything at its unpowered level"
    field.driven = True
    relay.energised = False
    assert field.effective(written) == {"heater": 0.0, "h2_inlet_valve": 0.0, "vent_valve": 0.0}, \
        "no pulses yet: the contactor is open"
    assert relay.update(1_000_000_000, 1_100_000_000) == "energised"
    assert field.effective(written) == written
    assert relay.update(1_000_000_000, 1_400_000_000) is None
    assert relay.update(1_000_000_000, 1_600_000_000) == "dropped"
    assert relay.dropped_wall_ns == 1_500_000_000, "dropped when its timeout ran out"
    assert field.effective(written) == {"heater": 0.0, "h2_inlet_valve": 0.0, "vent_valve": 0.0}
    field.powered = True
    field.stuck["h2_inlet_valve"] = 1.0
    assert field.effective(written)["h2_inlet_valve"] == 1.0, "a seized valve beats the relay"


def test_unknown_plant_parameter_is_named() -> None:
    with pytest.raises(KeyError, match="volume_m4"):
        PLANTS["hd_reactor"].build({"volume_m4": 1.0})


# ---------------------------------------------------------------- the real plant process and the C core


@pytest.fixture
def hd_rig(tmp_path: pathlib.Path):
    rig = VirtualRig(RigConfig(station=HD_STATION, plant="hd_reactor", time_scale=50.0, workdir=tmp_path / "rig",
                               log_every_s=1.0))
    rig.start()
    try:
        yield rig
    finally:
        rig.close()


def rig_core(rig: VirtualRig) -> Core:
    """The real core on the rig's register file, without the injected gauge channel's rules in the way."""
    station = load_station(HD_STATION)
    spec = station.core
    drivers = tuple(dataclasses.replace(d, params={**d.params, "path": str(rig.regs_path)}) for d in spec.drivers)
    rules = tuple(r for r in spec.rules if r.kind not in ("stale", "deadman"))
    return Core(dataclasses.replace(spec, drivers=drivers, rules=rules))


def test_plant_process_heater_energy_matches_the_cores_on_time(hd_rig: VirtualRig) -> None:
    """Burst fire at 37 %: the plant integrates the core's on-time, not its own aliased samples."""
    assert hd_rig.regs is not None
    heater_line = next(o.line for o in load_station(HD_STATION).core.outputs if o.name == "heater")
    with rig_core(hd_rig) as core:
        hd_rig.wait_for(lambda: hd_rig.snapshot()["relay"], 10.0, "the watchdog relay energising")
        hd_rig.wait_for(lambda: not core.stats().proof_pending, 10.0, "the core's watchdog proof test passing")
        core.request_output("vent_valve", 0)
        on0 = hd_rig.regs.do_on_ns(heater_line)
        j0 = hd_rig.snapshot()["metrics"]["heater_j"]
        t0 = hd_rig.plant_s()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            core.heartbeat()
            core.request_output("safety_contactor", 1)   # K1 feeds the heater SSR
            core.set_duty("heater", 0.37)
            time.sleep(0.02)
        core.set_duty("heater", 0.0)
        time.sleep(0.1)
        on = (hd_rig.regs.do_on_ns(heater_line) - on0) / 1e9
        joules = hd_rig.snapshot()["metrics"]["heater_j"] - j0
        elapsed = hd_rig.plant_s() - t0
    heater_w = HDParams().heater_w
    assert on == pytest.approx(0.37 * 3.0 * 50.0, rel=0.15), "the core burst-fired about 37 % of the time"
    assert joules == pytest.approx(heater_w * on, rel=0.01), f"{joules:.0f} J vs {heater_w * on:.0f} J over {elapsed}s"


def test_plant_process_relay_cuts_a_heater_a_frozen_core_left_on(hd_rig: VirtualRig) -> None:
    """Play a core by hand: write the heater on, toggle the watchdog line, then freeze (stop writing).
    The heater keeps heating on its last written level until the relay's timeout, then stops."""
    regs = hd_rig.regs
    assert regs is not None
    lines = {o.name: o.line for o in load_station(HD_STATION).core.outputs}
    r = regs.regs
    r.do_level[lines["heater"]] = 1
    r.do_level[lines["safety_contactor"]] = 1   # K1 closed: it feeds the heater SSR
    r.do_level[lines["vent_valve"]] = 1
    r.do_level[lines["cooling_water_valve"]] = 1
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:          # alive: writing every ms, the line toggling
        r.core_ticks += 1
        r.do_changed_wall_ns[lines["watchdog_line"]] = time.monotonic_ns()
        time.sleep(0.001)
    hd_rig.wait_for(lambda: hd_rig.snapshot()["relay"], 5.0, "the relay energising")
    frozen = time.monotonic_ns()                # freeze: nothing written from now on, the heater left at 1
    j0 = hd_rig.snapshot()["metrics"]["heater_j"]
    hd_rig.wait_for(lambda: not hd_rig.snapshot()["relay"], 5.0, "the relay dropping")
    j_drop = hd_rig.snapshot()["metrics"]["heater_j"]
    time.sleep(0.3)
    snap = hd_rig.snapshot()
    drop = next(e for e in snap["events"] if e["kind"] == "relay" and "dropped" in e["message"])
    assert 0.4e9 <= drop["wall_ns"] - frozen <= 0.5e9 + 0.05e9, "dropped at its 0.5 s timeout after the last edge"
    assert drop["written"]["heater"] == 1, "the frozen core still had the heater written on"
    assert j_drop - j0 > 0.5 * HDParams().heater_w * 0.4 * 50.0, "a frozen core's heater heats until the relay drops"
    assert snap["metrics"]["heater_j"] == pytest.approx(j_drop, abs=HDParams().heater_w * 2 * 0.01 * 50), \
        "and stops when it drops"
    assert snap["effective"]["heater"] == 0.0 and snap["written"]["heater"] == 1


def test_after_a_power_loss_the_plant_runs_at_1x_until_the_new_core_ticks(hd_rig: VirtualRig) -> None:
    """A board's boot takes wall seconds that do not scale: at 50x, one second of it would be 50 plant seconds of
    outage. From power on until a core ticks again the plant's clock runs at wall speed (plant_process), then at
    the time scale again. Bounds, not rates: the plant can fall behind a starved loop, never run ahead of it."""
    regs = hd_rig.regs
    assert regs is not None
    hd_rig.plant_command(cmd="power", on=False, hold_inputs=True)
    hd_rig.plant_command(cmd="board_dead")
    hd_rig.plant_command(cmd="power", on=True)
    t0, w0 = hd_rig.plant_s(), time.monotonic()
    time.sleep(1.0)
    booting = hd_rig.plant_s() - t0
    assert booting <= (time.monotonic() - w0) + 0.05, f"{booting:.2f} plant s in a wall second while booting"
    regs.regs.core_ticks += 1                    # the new core's first tick: the board is up
    t1, w1 = hd_rig.plant_s(), time.monotonic()
    hd_rig.wait_for(lambda: hd_rig.plant_s() - t1 > 5.0 * (time.monotonic() - w1) > 0.2, 30.0,
                    "the plant's clock back at the time scale")
