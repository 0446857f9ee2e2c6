"""The process side of the safety function (issue 13), against plant models through the real C core.

Alarms that act (the beacon, the room H2 warning that stops H2), air leaking into the hot charge,
the safe sequence per trip cause, and recovery that re-checks what changed. Plant, core and
controller step together on the plant's clock (``hil.lockstep``): no wall-clock races.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator

import pytest

from edge.control.controller import BatchRejected, Controller
from edge.spec.reader import SpecError
from edge.spec.recipe_reader import load_recipe
from edge.spec.station import load_station, parse_station
from hil.lockstep import LockstepRig
from hil.plants.hd_reactor import HDParams, HDReactor

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
