"""The agreement band that follows the process (issue 13, "Sensor disagreement"): an agree rule's
``soak_band`` applied by the controller at a settled soak, through a core that only accepts a stricter band.

Plant, real C core and controller step together on the plant's clock (``hil.lockstep``).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Iterator

import pytest

from edge.control.controller import Controller
from edge.core import CoreError
from edge.spec.recipe_reader import load_recipe
from edge.spec.station import Station, load_station
from hil.lockstep import LockstepRig, Plant
from hil.plants.hd_reactor import HDParams, HDReactor
from hil.plants.sintering_furnace import SinteringFurnace
from tests.test_config import SOURCE, problems, put

ROOT = pathlib.Path(__file__).resolve().parent.parent
HD_STATION = load_station(ROOT / "stations" / "hd_reactor_sim.toml")
SINTER_STATION = load_station(ROOT / "stations" / "sintering_furnace_sim.toml")
RULE = "chamber_tc_disagree"
DRIFT_C_PER_MIN = 2.0
# process, station, recipe, plant, phase, soak setpoint
CASES: dict[str, tuple[Station, str, Callable[[], Plant], str, float]] = {
    "hd": (HD_STATION, "hd_standard.toml", lambda: HDReactor(HDParams(room_m3=8.0)), "degassing", 600.0),
    "sintering": (SINTER_STATION, "sintering_standard.toml", SinteringFurnace, "sinter", 1060.0),
}


def _soak_band(station: Station) -> float:
    band = next(r.soak_band for r in station.core.rules if r.name == RULE)
    assert band is not None
    return band


@pytest.fixture(params=sorted(CASES))
def process(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[tuple[str, LockstepRig, Controller]]:
    station, recipe, plant, _, _ = CASES[request.param]
    with LockstepRig(station, plant(), dt_s=2.0) as rig:
        ctl = Controller(rig.core, rig.station, state_path=tmp_path / "run.json")
        rig.step(ctl.step)
        ctl.start_batch(load_recipe(ROOT / "recipes" / recipe), batch_id=f"band-{request.param}")
        yield request.param, rig, ctl


def test_control_tc_drifting_low_at_the_soak_trips_at_the_soak_band(
        process: tuple[str, LockstepRig, Controller]) -> None:
    """The control TC drifts low at 2 degC/min from the soak's start; the controller heats the charge to
    make up. With only the ramp-wide band (150 HD, 300 sintering) the charge reached 740 degC at the HD
    600 degC soak, and 1179.5 degC at the 1060 degC sinter (station limit 1150: only the elements' own
    over-temperature at 1180 stopped it). Measured with the soak band: trips at 40 / 50, the charge at
    most 649.7 / 1112.2 degC."""
    name, rig, ctl = process
    station, _, _, phase, soak_c = CASES[name]
    true = rig.plant.true_values                              # type: ignore[attr-defined]
    band = _soak_band(station)
    assert rig.run_until(lambda: ctl.sequencer is not None and ctl.sequencer.phase == phase
                         and ctl.last_demand.program is not None and ctl.last_demand.program.segment_kind == "dwell"
                         and true()["charge_temp"] >= soak_c - 5.0, 30 * 3600, ctl.step)
    start = rig.plant_s
    hottest = 0.0

    def scan() -> None:
        nonlocal hottest
        rig.offsets["chamber_temp"] = -DRIFT_C_PER_MIN * (rig.plant_s - start) / 60.0
        ctl.step()
        hottest = max(hottest, true()["charge_temp"])

    assert rig.run_until(ctl.batch_finished, 8 * 3600, scan)
    trips = [e for e in ctl.events if e.kind == "trip" and e.data.get("first_out")]
    assert trips and trips[0].data["rule"] == RULE, [e.message for e in trips]
    assert trips[0].data["core_event"].threshold == band       # the core judged it at the soak band
    assert rig.core.rules()[RULE].threshold == band            # and keeps it while tripped
    assert hottest < station.limits.max_temperature_c, f"true charge {hottest:.1f} degC"
    assert hottest < soak_c + band + 20.0, f"true charge {hottest:.1f} degC"


def test_a_normal_batch_narrows_the_band_at_its_soaks_and_never_trips_it(
        process: tuple[str, LockstepRig, Controller]) -> None:
    name, rig, ctl = process
    station = CASES[name][0]
    assert rig.run_until(ctl.batch_finished, 40 * 3600, ctl.step)
    seq = ctl.sequencer
    assert seq is not None and seq.phase == "done", seq.abort_reason if seq is not None else None
    bands = [e.data["band"] for e in ctl.events if e.kind == "band"]
    assert _soak_band(station) in bands, "the soak band was never applied"
    assert rig.core.rules()[RULE].threshold == next(r.threshold for r in station.core.rules if r.name == RULE)
    assert not any(e.kind == "trip" for e in ctl.events)


def test_python_cannot_loosen_a_band_through_the_binding(tmp_path: pathlib.Path) -> None:
    with LockstepRig(HD_STATION, HDReactor(), dt_s=2.0) as rig:
        with pytest.raises(CoreError, match="looser than its configured threshold 150"):
            rig.core.tighten_rule(RULE, 150.5)
        with pytest.raises(CoreError, match="only high, low and agree"):
            rig.core.tighten_rule("controller_deadman", 100.0)
        assert rig.core.rules()[RULE].threshold == 150.0
        rig.core.tighten_rule(RULE, 40.0)
        assert rig.core.threshold(RULE) == 40.0


BAD = [
    ("above", put(f"interlocks.{RULE}.soak_band", 150.0), "not below the band (threshold) 150"),
    ("hysteresis", put(f"interlocks.{RULE}.hysteresis", 45.0), "not above the hysteresis 45"),
    ("kind", put("interlocks.chamber_overtemp.soak_band", 900.0), "does not apply"),
    ("text", put(f"interlocks.{RULE}.soak_band", "tight"), ""),
]


@pytest.mark.parametrize("what, edit, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_soak_band_is_refused_naming_the_key(what: str, edit: object, fragment: str) -> None:
    found = problems(edit)  # type: ignore[arg-type]
    rule = "chamber_overtemp" if what == "kind" else RULE
    matching = [e for e in found if e.key_path == f"interlocks.{rule}.soak_band"]
    assert matching and any(fragment in e.message for e in matching), "\n".join(map(str, found))
    assert all(e.source == SOURCE for e in found)


def test_the_loader_keeps_the_soak_band() -> None:
    assert dataclasses.asdict(next(r for r in HD_STATION.core.rules if r.name == RULE))["soak_band"] == 40.0
