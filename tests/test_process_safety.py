"""The process side of the safety function (issue 13), against plant models through the real C core.

Alarms that act (the beacon, the room H2 warning that stops H2), air leaking into the hot charge,
the safe sequence per trip cause, and recovery that re-checks what changed. Plant, core and
controller step together on the plant's clock (``hil.lockstep``): no wall-clock races.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
from collections.abc import Iterator

import pytest

from edge.control.controller import BatchRejected, Controller
from edge.spec.reader import SpecError
from edge.spec.recipe_reader import load_recipe, parse_recipe
from edge.spec.station import Station, load_station, parse_station
from hil.lockstep import LockstepRig
from hil.plants.cabinet import build_cabinet
from hil.plants.hd_reactor import HDParams, HDReactor
from hil.plants.safety_hw import WatchdogRelay

ROOT = pathlib.Path(__file__).resolve().parent.parent
HD_PATH = ROOT / "stations" / "hd_reactor_sim.toml"
HD_STATION = load_station(HD_PATH)
HD_RECIPE = load_recipe(ROOT / "recipes" / "hd_standard.toml")


@pytest.fixture
def hd(tmp_path: pathlib.Path) -> Iterator[tuple[LockstepRig, Controller, HDReactor]]:
    plant = HDReactor(HDParams(room_m3=8.0))    # the reactor's own enclosure, where the detector is
    with LockstepRig(HD_STATION, plant, dt_s=2.0) as rig:
        ctl = Controller(rig.core, rig.station, state_path=tmp_path / "run.json")
        rig.step(ctl.step)
        yield rig, ctl, plant


GAUGE_POLL_S = 120.0    # the real-time rig at 600x reads the RS-485 gauge every 200 ms of wall time


@pytest.fixture
def hd_slow_gauge(tmp_path: pathlib.Path) -> Iterator[tuple[LockstepRig, Controller, HDReactor]]:
    """As the rig at 600x sees it: the vacuum gauge read every GAUGE_POLL_S of plant time (its max age stretched
    to match, as the rig binding does) and a coarse 20 s scan (the charge swings about the setpoint). The
    detector before this fix aborted this fixture's normal batch at the 350 degC wait (lockstep at 2 s did not)."""
    channels = tuple(dataclasses.replace(c, max_age_ms=c.max_age_ms + 1000 * GAUGE_POLL_S)
                     if c.name == "chamber_vacuum" else c for c in HD_STATION.core.channels)
    station = dataclasses.replace(HD_STATION, core=dataclasses.replace(HD_STATION.core, channels=channels))
    plant = HDReactor(HDParams(room_m3=8.0))
    with LockstepRig(station, plant, dt_s=20.0) as rig:
        rig.poll_s["chamber_vacuum"] = GAUGE_POLL_S
        ctl = Controller(rig.core, rig.station, state_path=tmp_path / "run.json")
        rig.step(ctl.step)
        yield rig, ctl, plant


def beacon(rig: LockstepRig) -> int:
    return rig.core.outputs()["alarm_beacon"].level


def in_phase(ctl: Controller, phase: str) -> bool:
    return ctl.sequencer is not None and ctl.sequencer.phase == phase


# ---------------------------------------------------------------- 1. the beacon


def test_beacon_is_off_through_a_normal_batch(hd: tuple[LockstepRig, Controller, HDReactor]) -> None:
    """It used to be on all batch long: its safe level is 1 and nothing ever asked for 0."""
    rig, ctl, _ = hd
    ctl.start_batch(HD_RECIPE, batch_id="beacon-1")
    on_s = 0.0

    def scan() -> None:
        nonlocal on_s
        ctl.step()
        on_s += rig.dt_s * beacon(rig)

    assert rig.run_until(ctl.batch_finished, 30 * 3600, scan)
    assert in_phase(ctl, "done")
    assert on_s == 0.0, f"beacon on for {on_s:.0f} s of a normal batch"


def test_beacon_on_at_a_trip_and_off_after_reset_and_acknowledgement(
        hd: tuple[LockstepRig, Controller, HDReactor]) -> None:
    rig, ctl, plant = hd
    ctl.start_batch(HD_RECIPE, batch_id="beacon-2")
    assert rig.run_until(lambda: in_phase(ctl, "purge"), 3600, ctl.step)
    assert beacon(rig) == 0
    plant.s.cooling_water_lost = True
    assert rig.run_until(lambda: rig.core.rules()["cooling_water_low"].tripped, 120, ctl.step)
    rig.step(ctl.step)
    assert beacon(rig) == 1, "a trip lights the beacon"
    plant.s.cooling_water_lost = False
    rig.run_until(lambda: rig.core.rules()["cooling_water_low"].resettable, 120, ctl.step)
    rig.run_until(ctl.batch_finished, 3600, ctl.step)
    assert beacon(rig) == 1, "still tripped: still on"
    rig.core.reset()
    rig.step(ctl.step)
    assert not rig.core.rules()["cooling_water_low"].tripped
    assert ctl.alarms.unacknowledged() == [] or beacon(rig) == 1, "an unacknowledged alarm keeps it on"
    ctl.alarms.acknowledge_all(ctl.now_s())
    rig.step(ctl.step)
    assert beacon(rig) == 0, "reset and acknowledged: silent"


def test_unacknowledged_alarm_lights_the_beacon_until_acknowledged(
        hd: tuple[LockstepRig, Controller, HDReactor]) -> None:
    rig, ctl, plant = hd
    plant.s.room_h2_mol = 3.0              # about 15 %LEL in the enclosure: the warning, not the trip
    assert rig.run_until(lambda: "h2_room_warning" in ctl.alarms.unacknowledged(), 60, ctl.step)
    rig.step(ctl.step)
    assert beacon(rig) == 1
    rig.run_until(lambda: "h2_room_warning" not in ctl.alarms.states() or plant.room_lel() < 5.0, 3600, ctl.step)
    rig.step(ctl.step)
    assert beacon(rig) == 1, "latched: the warning went away but nobody saw it"
    ctl.alarms.acknowledge("h2_room_warning", ctl.now_s())
    rig.step(ctl.step)
    assert beacon(rig) == 0


def test_annunciator_beacon_checked_by_the_loader() -> None:
    text = HD_PATH.read_text()
    with pytest.raises(SpecError, match=r"annunciator\.beacon.*did you mean"):
        parse_station(text.replace('beacon = "alarm_beacon"', 'beacon = "alarm_beacon2"'), "x.toml")
    with pytest.raises(SpecError, match=r"annunciator\.beacon.*safe_level 0"):
        parse_station(text.replace('beacon = "alarm_beacon"', 'beacon = "h2_inlet_valve"'), "x.toml")


# ---------------------------------------------------------------- 2. the room H2 warning stops H2


def test_h2_room_warning_stops_h2_admission_at_once(hd: tuple[LockstepRig, Controller, HDReactor]) -> None:
    """A flange leaks during admission: from the warning at 10 %LEL no more hydrogen goes in. Before the
    warning acted, 8.7 mol more were fed after it (the permissive refused new requests, the sequence kept
    asking, the valve reopened whenever the room dipped under 10 %LEL) until the trip at 25 %LEL."""
    rig, ctl, plant = hd
    ctl.start_batch(HD_RECIPE, batch_id="h2-warn")
    assert rig.run_until(lambda: in_phase(ctl, "h2_admission"), 5 * 3600, ctl.step)
    rig.step(ctl.step)
    plant.s.room_leak_mol_s_bar = 2.0
    fed_at_warning: float | None = None

    def scan() -> None:
        nonlocal fed_at_warning
        ctl.step()
        if fed_at_warning is None and "h2_room_warning" in ctl.alarms.active():
            fed_at_warning = plant.s.h2_fed_mol

    rig.run_until(lambda: False, 1800, scan)
    assert fed_at_warning is not None, "the warning was raised"
    after = plant.s.h2_fed_mol - fed_at_warning
    assert after <= 0.1, f"{after:.2f} mol H2 admitted after the warning"
    seq = ctl.sequencer
    assert seq is not None and seq.held == "alarm h2_room_warning", "the recipe holds"
    with pytest.raises(BatchRejected, match="h2_room_warning"):
        ctl.resume()                        # latched and unacknowledged: it still holds
    ctl.alarms.acknowledge("h2_room_warning", ctl.now_s())
    plant.s.room_leak_mol_s_bar = 0.0
    rig.run_until(lambda: not ctl.holding_alarms(), 3600, ctl.step)
    ctl.resume()
    assert rig.run_until(lambda: in_phase(ctl, "absorption"), 3600, ctl.step), "admission goes on once cleared"


def test_alarm_on_active_checked_by_the_loader() -> None:
    text = HD_PATH.read_text()
    assert dataclasses.replace(HD_STATION).alarms[0].on_active == ("hold", "stop_h2")
    with pytest.raises(SpecError, match=r"alarms\.h2_room_warning\.on_active.*expected one of: hold, stop_h2"):
        parse_station(text.replace('on_active = ["hold", "stop_h2"]', 'on_active = ["hold", "stop_H2"]'), "x.toml")


# ---------------------------------------------------------------- 3. air into the hot, hydrided charge


INLEAK_BOUNDS = {"hd": (55.0, 28.0), "hd_slow_gauge": (105.0, 55.0)}   # min to the heat cut, MJ after the leak


@pytest.mark.parametrize("rig_kind", ["hd", "hd_slow_gauge"])
def test_air_inleak_at_the_degassing_soak_cuts_heat_and_backfills_argon(
        rig_kind: str, request: pytest.FixtureRequest) -> None:
    """20 mbar l/s of air into the retort under vacuum once the charge is at the 600 degC soak. Before,
    the batch heated on for the rest of degassing (the hold-out run: 83 MJ after the leak). Measured here:
    heat cut 47.3 min after the leak began, 24.8 MJ after it (scan 2 s, gauge fresh every scan); 95.7 min,
    49.7 MJ with the rig's 120 s gauge poll and a 20 s scan (the charge swings +-5 degC at the soak and
    spans with a larger swing are not judged). Seen from the vacuum gauge alone, a 20 mbar l/s leak shows
    only once the soak's desorption (150 mbar at its start) has fallen to about twice the leak's floor:
    the detector no longer extrapolates (see edge/control/hd.py), the price of no false aborts."""
    rig, ctl, plant = request.getfixturevalue(rig_kind)
    ctl.start_batch(HD_RECIPE, batch_id="inleak")
    assert rig.run_until(lambda: in_phase(ctl, "degassing") and plant.s.charge_c >= 595.0, 12 * 3600, ctl.step)
    plant.s.extra_air_leak_mbar_l_s = 20.0
    leak_s, heat_j, ar_mol = rig.plant_s, plant.s.heater_j, plant.s.ar_fed_mol
    cut_s: float | None = None
    pumped_after_cut = 0.0

    def scan() -> None:
        nonlocal cut_s, pumped_after_cut
        outs = rig.core.outputs()     # what the core drove after the previous scan's requests
        if cut_s is not None:
            pumped_after_cut += rig.dt_s * outs["vacuum_pump"].level * outs["vacuum_valve"].level
        ctl.step()
        if cut_s is None and in_phase(ctl, "aborting") and ctl.last_duties["heater"] == 0.0:
            cut_s = rig.plant_s

    assert rig.run_until(ctl.batch_finished, 3 * 3600, scan)
    seq = ctl.sequencer
    assert seq is not None and seq.phase == "aborted"
    assert seq.abort_reason is not None and seq.abort_reason.startswith("air in-leak during degassing")
    assert cut_s is not None
    minutes = (cut_s - leak_s) / 60
    bound_min, bound_mj = INLEAK_BOUNDS[rig_kind]
    assert minutes <= bound_min, f"heat cut {minutes:.1f} min after the leak began"
    heat_mj = (plant.s.heater_j - heat_j) / 1e6
    assert heat_mj < bound_mj, f"{heat_mj:.1f} MJ of heat after the leak"
    assert pumped_after_cut == 0.0, "no pumping against the in-leak"
    assert plant.s.ar_fed_mol > ar_mol and plant.pressure_bar() >= 1.0, "argon in, above atmosphere"
    rig.run_until(lambda: False, 3600, ctl.step)
    assert plant.pressure_bar() >= 1.0, "kept under argon while it cools"
    assert plant.s.charge_c < 590.0


@pytest.mark.parametrize("rig_kind", ["hd", "hd_slow_gauge"])
def test_normal_degassing_is_not_taken_for_an_inleak(rig_kind: str, request: pytest.FixtureRequest) -> None:
    """The desorption peaks (about 100 mbar at the 350 degC wait, tens at 600) decay: no false in-leak, also
    with the gauge read every 120 s of plant time as on the rig at 600x (the rig's every batch aborted at the
    350 degC wait: "vacuum 44.9 -> 37.9 -> 32.2 mbar over 4 min settles near 9.26 mbar")."""
    rig, ctl, _ = request.getfixturevalue(rig_kind)
    ctl.start_batch(HD_RECIPE, batch_id="no-inleak")
    assert rig.run_until(lambda: in_phase(ctl, "cooling") or ctl.batch_finished(), 12 * 3600, ctl.step)
    assert ctl.sequencer is not None
    assert in_phase(ctl, "cooling"), ctl.sequencer.abort_reason


# ---------------------------------------------------------------- 4. safe sequence per trip cause


def test_cooling_water_loss_at_temperature_isolates_without_pumping(
        hd: tuple[LockstepRig, Controller, HDReactor]) -> None:
    """[safe_sequences] cooling_water_low = "isolate": heat off, valves closed, no pump against a hot wall
    the jacket no longer cools, no argon: the charge keeps its atmosphere. (Before: evacuate, then argon.)"""
    rig, ctl, plant = hd
    ctl.start_batch(HD_RECIPE, batch_id="cw-loss")
    assert rig.run_until(lambda: in_phase(ctl, "degassing") and plant.s.charge_c >= 400.0, 12 * 3600, ctl.step)
    plant.s.cooling_water_lost = True
    assert rig.run_until(lambda: rig.core.rules()["cooling_water_low"].tripped, 60, ctl.step)
    rig.step(ctl.step)                # the scan that aborts (the pump ran until then, as degassing wants)
    ar_mol = plant.s.ar_fed_mol
    pumped = 0.0

    def scan() -> None:
        nonlocal pumped
        outs = rig.core.outputs()     # what the core drove after the previous scan's requests
        pumped += rig.dt_s * outs["vacuum_pump"].level * outs["vacuum_valve"].level
        ctl.step()

    assert rig.run_until(ctl.batch_finished, 600, scan)
    rig.run_until(lambda: False, 1800, scan)
    seq = ctl.sequencer
    assert seq is not None and seq.phase == "aborted" and seq.flags["safe_sequence"] == "isolate"
    assert pumped == 0.0, f"pumped {pumped:.0f} s against the hot wall after the trip"
    assert plant.s.ar_fed_mol == ar_mol, "the charge keeps its atmosphere"
    assert rig.core.outputs()["heater"].level == 0


def test_an_unmapped_trip_keeps_the_default_safe_sequence(hd: tuple[LockstepRig, Controller, HDReactor]) -> None:
    rig, ctl, plant = hd
    ctl.start_batch(HD_RECIPE, batch_id="estop")
    assert rig.run_until(lambda: in_phase(ctl, "purge"), 3600, ctl.step)
    plant.s.estop_pressed = True
    assert rig.run_until(lambda: in_phase(ctl, "aborting") or ctl.batch_finished(), 60, ctl.step)
    seq = ctl.sequencer
    assert seq is not None and seq.flags["safe_sequence"] == "evacuate_backfill"


@pytest.mark.parametrize(("line", "message"), [
    ('cooling_water_lo = "isolate"', r"safe_sequences\.cooling_water_lo.*unknown interlock or process cause.*"
                                     r"cooling_water_low"),
    ('cooling_water_low = "vacuum"', r"safe_sequences\.cooling_water_low.*expected one of: evacuate_backfill, "
                                     r"backfill, isolate"),
])
def test_safe_sequences_checked_by_the_loader(line: str, message: str) -> None:
    text = HD_PATH.read_text().replace('cooling_water_low = "isolate"', line)
    with pytest.raises(SpecError, match=message):
        parse_station(text, "x.toml")


# ---------------------------------------------------------------- 5. recovery re-checks what changed


def recover_under(tmp_path: pathlib.Path, station: Station, state_path: pathlib.Path,
                  ) -> tuple[LockstepRig, Controller, str | None]:
    rig = LockstepRig(station, HDReactor(), dt_s=2.0)
    ctl = Controller(rig.core, rig.station, state_path=state_path)
    rig.step(ctl.step)
    return rig, ctl, ctl.recover()


def interrupted_in_degassing(rig: LockstepRig, ctl: Controller) -> pathlib.Path:
    recipe = parse_recipe(HD_RECIPE.text.replace('strategy = "hold"', 'strategy = "continue"', 1),
                          str(HD_RECIPE.source))
    ctl.start_batch(recipe, batch_id="recover")
    assert rig.run_until(lambda: in_phase(ctl, "degassing"), 12 * 3600, ctl.step)
    ctl.save(force=True)
    return ctl.store.path


def test_recovery_under_an_edited_station_file_aborts(tmp_path: pathlib.Path,
                                                      hd: tuple[LockstepRig, Controller, HDReactor]) -> None:
    state_path = interrupted_in_degassing(hd[0], hd[1])
    unchanged = tmp_path / "unchanged.json"
    shutil.copy(state_path, unchanged)
    edited = parse_station(HD_PATH.read_text().replace("threshold = 930.0", "threshold = 990.0"), str(HD_PATH))
    rig, ctl, message = recover_under(tmp_path, edited, state_path)
    try:
        seq = ctl.sequencer
        assert seq is not None and seq.phase == "aborting"
        assert message is not None and "station file changed" in message
        assert seq.abort_reason is not None and "station file changed since the batch started" in seq.abort_reason
        assert any(e.kind == "recovery" and "station file changed" in e.message for e in ctl.events)
    finally:
        rig.close()
    rig, ctl, _ = recover_under(tmp_path, HD_STATION, unchanged)   # the same file: it goes on
    try:
        assert ctl.sequencer is not None and ctl.sequencer.phase == "degassing"
    finally:
        rig.close()


def test_recovery_with_a_recipe_the_station_no_longer_allows_aborts(
        tmp_path: pathlib.Path, hd: tuple[LockstepRig, Controller, HDReactor]) -> None:
    state_path = interrupted_in_degassing(hd[0], hd[1])
    lowered = dataclasses.replace(HD_STATION, limits=dataclasses.replace(HD_STATION.limits, max_temperature_c=550.0))
    rig, ctl, _ = recover_under(tmp_path, lowered, state_path)
    try:
        seq = ctl.sequencer
        assert seq is not None and seq.phase == "aborting"
        assert seq.abort_reason is not None and "recipe no longer fits this station" in seq.abort_reason
        assert "550" in seq.abort_reason
    finally:
        rig.close()


def test_a_welded_watchdog_relay_fails_the_proof_test_and_no_batch_starts(tmp_path: pathlib.Path) -> None:
    """The relay's contact welded in: the core's start-up proof test never sees it drop; while it runs the
    stats say so, when its time is up it is a core fault, and the controller refuses to start a batch with
    that reason (before: the batch started and collected refusals until the fault aborted it)."""
    plant = HDReactor(HDParams())
    station = load_station(HD_PATH)
    relay = WatchdogRelay(timeout_s=3.0, outputs=("heater", "h2_inlet_valve"))
    cabinet = build_cabinet(station, station.identity.kind, plant, relay)
    cabinet.relay_welded = True
    with LockstepRig(station, plant, dt_s=1.0, cabinet=cabinet) as rig:
        ctl = Controller(rig.core, rig.station, state_path=tmp_path / "run.json")
        assert rig.core.stats().proof_pending, "the feedback never dropped: the proof test is still waiting"
        assert rig.core.stats().core_fault == 0
        rig.run_until(lambda: not rig.core.stats().proof_pending, 10.0, ctl.step)
        assert rig.core.core_fault_text() == "watchdog relay proof test failed"
        with pytest.raises(BatchRejected, match="core fault: watchdog relay proof test failed"):
            ctl.start_batch(HD_RECIPE, batch_id="welded-relay")
        assert ctl.sequencer is None
        outputs = rig.core.outputs()
        assert not any(outputs[name].level != spec.safe_level
                       for name, spec in ((o.name, o) for o in station.core.outputs) if name != "watchdog_line")
