"""The cabinet as wired (``hil.plants.cabinet``): K1 in series with the watchdog relay and the limiter, what K1
supplies, welded parts, the current transducer; and, in lockstep with the real C core, the independent limiter
holding a furnace whose controller is wrong (both thermocouples reading 150 degC low)."""

from __future__ import annotations

import math
import pathlib

import pytest

from edge.spec.station import load_station
from hil.lockstep import LockstepRig
from hil.plants.cabinet import Cabinet, Limiter, build_cabinet, nameplate_current_a
from hil.plants.hd_reactor import HDReactor
from hil.plants.safety_hw import WatchdogRelay
from hil.plants.sintering_furnace import SinteringFurnace

ROOT = pathlib.Path(__file__).resolve().parent.parent
HD_STATION = load_station(ROOT / "stations" / "hd_reactor_sim.toml")
SINTER_STATION = load_station(ROOT / "stations" / "sintering_furnace_sim.toml")
SAFE = {"heater": 0.0, "h2_inlet_valve": 0.0, "vent_valve": 1.0, "safety_contactor": 0.0}
WRITTEN = {"heater": 1.0, "h2_inlet_valve": 1.0, "vent_valve": 0.0, "safety_contactor": 1.0}


def cabinet() -> Cabinet:
    relay = WatchdogRelay(timeout_s=0.5)
    relay.energised = True
    cab = Cabinet(SAFE, relay, contactor="safety_contactor", supplies=("heater", "h2_inlet_valve"),
                  limiters=(Limiter("excess_temp", "wall_temp", 960.0, "limiter_ok"),), nameplate_a=17.3)
    cab.driven = True
    return cab


def test_k1_feeds_what_it_supplies_only_while_its_whole_chain_is_closed() -> None:
    cab = cabinet()
    assert cab.effective(WRITTEN) == WRITTEN
    assert cab.inputs()[1] == {"contactor_closed": True, "watchdog_relay_ok": True, "limiter_ok": True}
    assert cab.effective({**WRITTEN, "safety_contactor": 0.0}) == {**SAFE, "vent_valve": 0.0}, \
        "the core opens K1: heater and H2 lose their supply; the vent is not on K1"
    cab.relay.energised = False
    assert cab.effective(WRITTEN) == {**SAFE, "vent_valve": 0.0}, "the relay's contact opens K1's coil"
    assert cab.inputs()[1]["watchdog_relay_ok"] is False
    assert cab.inputs()[1]["contactor_closed"] is False


def test_a_welded_ssr_is_downstream_of_k1_and_a_welded_k1_stays_closed() -> None:
    cab = cabinet()
    cab.stuck["heater"] = 1.0
    assert cab.effective({**WRITTEN, "heater": 0.0})["heater"] == 1.0, "welded SSR: heat although the core wrote 0"
    assert cab.effective({**WRITTEN, "heater": 0.0, "safety_contactor": 0.0})["heater"] == 0.0, \
        "welded SSR + K1 open = no heat"
    cab.stuck["safety_contactor"] = 1.0
    cab.relay.energised = False
    out = cab.effective({**WRITTEN, "safety_contactor": 0.0})
    assert out["safety_contactor"] == 1.0 and out["heater"] == 1.0, "a welded K1 opens for nobody"
    assert cab.inputs()[1]["contactor_closed"] is True, "its aux contact says so"


def test_a_welded_watchdog_relay_keeps_its_aux_contact_at_1_whatever_the_line_does() -> None:
    cab = cabinet()
    cab.relay_welded = True
    cab.relay.energised = False          # the line stopped: the coil dropped, the contact did not
    assert cab.effective(WRITTEN)["heater"] == 1.0
    assert cab.inputs()[1]["watchdog_relay_ok"] is True


def test_the_limiter_latches_opens_k1_and_is_reset_only_below_its_setpoint() -> None:
    cab = cabinet()
    assert cab.step(WRITTEN, 1.0, {"wall_temp": 950.0}, 1.0) == []
    tripped = cab.step(WRITTEN, 1.0, {"wall_temp": 961.0}, 2.0)
    assert [lim.name for lim in tripped] == ["excess_temp"]
    assert cab.effective(WRITTEN)["heater"] == 0.0 and cab.k1_closed is False
    assert cab.inputs()[1]["limiter_ok"] is False
    assert cab.step(WRITTEN, 1.0, {"wall_temp": 900.0}, 3.0) == [] and cab.limiters[0].tripped, "it latches"
    assert cab.reset_limiter(None, {"wall_temp": 970.0}) is False, "refused above its setpoint"
    assert cab.reset_limiter(None, {"wall_temp": 900.0}) is True
    assert cab.effective(WRITTEN)["heater"] == 1.0 and cab.inputs()[1]["limiter_ok"] is True
    assert cab.step(WRITTEN, 1.0, {"wall_temp": math.nan}, 4.0), "a reading it cannot take trips it"


def test_without_a_contactor_the_relay_and_limiter_chain_cuts_the_relay_outputs_directly() -> None:
    relay = WatchdogRelay(timeout_s=0.5, outputs=("heater",))
    relay.energised = True
    cab = Cabinet(SAFE, relay, limiters=(Limiter("lim", "wall_temp", 960.0, "limiter_ok"),))
    cab.driven = True
    assert cab.effective(WRITTEN)["heater"] == 1.0
    cab.step(WRITTEN, 1.0, {"wall_temp": 999.0}, 1.0)
    out = cab.effective(WRITTEN)
    assert out["heater"] == 0.0 and out["h2_inlet_valve"] == 1.0, "only the relay's outputs are on the chain"


def test_the_current_transducer_averages_the_heater_level_over_about_200_ms() -> None:
    cab = cabinet()
    for _ in range(1000):                 # 50 % burst fire in 1 ms steps, 1 s: the transducer reads the mean
        cab.step({"heater": 1.0}, 0.0005, {}, 0.0)
        cab.step({"heater": 0.0}, 0.0005, {}, 0.0)
    assert cab.inputs()[0]["heater_current"] == pytest.approx(0.5 * 17.3, rel=0.02)
    assert nameplate_current_a(12_000.0) == pytest.approx(17.32, abs=0.01)


def test_the_stations_limiters_read_the_plants_true_temperature() -> None:
    hd = build_cabinet(HD_STATION, "hd_reactor", HDReactor(), WatchdogRelay())
    sinter = build_cabinet(SINTER_STATION, "sintering_furnace", SinteringFurnace(), WatchdogRelay())
    assert [(lim.quantity, lim.setpoint_c) for lim in hd.limiters] == [("wall_temp", 960.0)]
    assert [(lim.quantity, lim.setpoint_c) for lim in sinter.limiters] == [("elements_temp", 1230.0)]
    assert "wall_temp" in HDReactor().true_values() and "elements_temp" in SinteringFurnace().true_values()
    assert hd.nameplate_a == pytest.approx(17.32, abs=0.01)


@pytest.mark.parametrize("welded_ssr", [False, True])
def test_limiter_holds_a_furnace_whose_thermocouples_both_read_150_c_low(welded_ssr: bool) -> None:
    """A wrong controller (pumped down, full heat) on wrong data: from 700 degC both thermocouples read 150 degC
    low (with a welded thyristor unit on top in the second case). The controller's own over-temperature trip
    (1180 on the elements TC) would act at a true 1330 degC; the limiter, on its own thermocouple, opens K1 at a
    true 1230: the true elements stay below 1230 + 5 degC, and the core reports the limiter's trip.
    (The sintering furnace: the HD reactor's water jacket holds its wall near 820 degC at full heat.)"""
    plant = SinteringFurnace()
    cab = build_cabinet(SINTER_STATION, "sintering_furnace", plant, WatchdogRelay())
    cab.contactor, cab.supplies = "safety_contactor", ("heater",)   # K1 as the contract wires it (`supplies`)
    if welded_ssr:
        cab.stuck["heater"] = 1.0
    peak = 0.0
    with LockstepRig(SINTER_STATION, plant, dt_s=2.0, cabinet=cab) as rig:

        def wrong_controller() -> None:
            nonlocal peak
            peak = max(peak, plant.s.zone_c)
            rig.core.heartbeat()
            outputs = rig.core.outputs()
            for name in ("safety_contactor", "vacuum_pump", "vacuum_valve"):
                if not outputs[name].forced:
                    rig.core.request_output(name, 1)
            if not outputs["heater"].forced:
                rig.core.set_duty("heater", 1.0)
            if plant.s.zone_c > 700.0:
                rig.offsets = {"chamber_temp": -150.0, "chamber_temp_safety": -150.0}

        assert rig.run_until(lambda: cab.limiters[0].tripped, 4 * 3600.0, wrong_controller), "never tripped"
        tripped_at = rig.plant_s
        rig.run_until(lambda: False, 1800.0, wrong_controller)   # half an hour on: nothing brings the heat back
        rules = rig.core.rules()
        assert rules["limiter_tripped"].tripped, "the core reports the limiter's trip"
        assert not rules["chamber_overtemp"].tripped, "the controller's own trip never saw it (reads 150 low)"
        assert cab.k1_closed is False and cab.inputs()[0]["heater_current"] < 0.01
        assert peak < 1230.0 + 5.0, f"true elements peaked at {peak:.1f} degC"
        assert plant.s.zone_c < 1230.0
        print(f"limiter tripped at {tripped_at:.0f} s plant; true elements peak {peak:.2f} degC, "
              f"{plant.s.zone_c:.0f} degC 30 min later")


@pytest.mark.parametrize(("old", "new", "words"), [
    ('senses = "wall"', 'senses = "elements"', "limiter.excess_temp.senses"),
    ("setpoint_c = 960.0", "setpoint_c = 850.0", "not above limits.max_temperature_c"),
    ('opens = "safety_contactor"', 'opens = "vent_valve"', "must be off (0) when safe"),
    ('alarm_input = "limiter_ok"', 'alarm_input = "h2_room"', "the alarm contact is a digital input"),
    ('alarm_input = "limiter_ok"', 'alarm_input = "limiter_ok"\ncolour = "red"', "limiter.excess_temp.colour"),
])
def test_a_bad_limiter_key_is_named(old: str, new: str, words: str) -> None:
    from edge.spec.reader import SpecError
    from edge.spec.station import parse_station
    text = (ROOT / "stations" / "hd_reactor_sim.toml").read_text()
    assert old in text
    with pytest.raises(SpecError) as info:
        parse_station(text.replace(old, new), "hd.toml")
    assert words in str(info.value)
