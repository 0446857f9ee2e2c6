"""Recipes: parsing (file problems, all at once), the check against a station, the expanded profile,
the `reedge recipe` commands, and a fuzz of the parser."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import tomllib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.control.profile import expand_profile
from edge.spec.reader import SpecError
from edge.spec.recipe import (
    PHASES,
    SEGMENT_KINDS,
    Dwell,
    End,
    Holdback,
    Ramp,
    Recipe,
    Threshold,
    Wait,
)
from edge.spec.recipe_check import RecipeProblem, check_recipe
from edge.spec.recipe_reader import load_recipe, parse_recipe
from edge.spec.station import Station, load_station, parse_station

ROOT = pathlib.Path(__file__).resolve().parent.parent
HD_PATH = ROOT / "recipes" / "hd_standard.toml"
SF_PATH = ROOT / "recipes" / "sintering_standard.toml"
HD_TEXT = HD_PATH.read_text()
SF_TEXT = SF_PATH.read_text()
HD_STATION_PATH = ROOT / "stations" / "hd_reactor_sim.toml"
SF_STATION_PATH = ROOT / "stations" / "sintering_furnace_sim.toml"
HD_STATION = load_station(HD_STATION_PATH)
SF_STATION = load_station(SF_STATION_PATH)


def edit(text: str, *pairs: tuple[str, str]) -> str:
    for old, new in pairs:
        assert old in text, f"not in the text: {old!r}"
        text = text.replace(old, new, 1)
    return text


def hd(*pairs: tuple[str, str]) -> str:
    return edit(HD_TEXT, *pairs)


def sf(*pairs: tuple[str, str]) -> str:
    return edit(SF_TEXT, *pairs)


def problems(text: str, station: Station = HD_STATION) -> list[RecipeProblem]:
    return check_recipe(parse_recipe(text, "r.toml"), station)


def only_problem(text: str, station: Station = HD_STATION) -> RecipeProblem:
    found = problems(text, station)
    assert len(found) == 1, found
    return found[0]


def parse_errors(text: str) -> list[SpecError]:
    with pytest.raises(SpecError) as info:
        parse_recipe(text, "r.toml")
    return list(info.value.errors)


def only_error(text: str) -> SpecError:
    errors = parse_errors(text)
    assert len(errors) == 1, [str(e) for e in errors]
    assert errors[0].source == "r.toml"
    return errors[0]


# the segments of the HD example that the tests change
RAMP_350 = 'kind = "ramp"\nto_c = 350.0\nrate_c_per_min = 5.0'
RAMP_600 = 'to_c = 600.0\nrate_c_per_min = 5.0'
WAIT_PEAK = 'until = { channel = "chamber_vacuum", below = 0.5 }\ntimeout_min = 180'
WAIT_RECOVERED = 'until = { channel = "chamber_vacuum", below = 0.1 }'
EVACUATE = ('label = "pump out the free hydrogen"\nkind = "evacuate"                '
            '# at room temperature first: heating starts only at <= 0.1 mbar\nto_mbar = 0.1\ntimeout_min = 120\n')
COOLING_END = '[[cooling.program]]\nkind = "end"'


# ============================================================================ the examples


def test_the_example_recipes_parse() -> None:
    r = load_recipe(HD_PATH)
    assert (r.name, r.process, r.version, r.control_channel) == ("HD of sintered NdFeB scrap, 25 kg", "hd", 1,
                                                                 "chamber_temp")
    assert r.source == str(HD_PATH) and r.text == HD_TEXT
    assert (r.power_fail.strategy, r.power_fail.max_outage_min) == ("hold", 30)
    assert r.holdback == Holdback("band", 10.0)
    assert [p.name for p in r.phases] == [spec.name for spec in PHASES["hd"]]
    assert r.params("absorption")["top_up_below_bar"] == 1.6 and r.params("purge")["max_cycles"] == 5
    assert r.charge_kg == 25.0
    program = r.program("degassing")
    assert [s.kind for s in program] == ["evacuate", "ramp", "wait", "ramp", "dwell", "wait", "end"]
    assert program[1] == Ramp(350.0, rate_c_per_min=5.0, label="heat to the matrix desorption")
    assert program[5] == Wait(Threshold("chamber_vacuum", 0.1, above=False), 120.0, "abort", "vacuum recovered")
    assert r.program("cooling")[0].holdback == Holdback("hi", 20.0)  # type: ignore[union-attr]
    assert r.program("unload") == ()
    with pytest.raises(KeyError, match="no phase 'sinter'"):
        r.phase("sinter")
    s = load_recipe(SF_PATH)
    assert s.process == "sintering" and [p.name for p in s.phases] == [spec.name for spec in PHASES["sintering"]]
    assert s.program("sinter")[1] == Dwell(240.0, label="sinter") and s.program("sinter")[2] == End("heaters_off")


def test_the_example_recipes_fit_their_stations() -> None:
    assert check_recipe(load_recipe(HD_PATH), HD_STATION) == []
    assert check_recipe(load_recipe(SF_PATH), SF_STATION) == []


def test_the_sintering_station_loads() -> None:
    assert SF_STATION.identity.kind == "sintering_furnace"
    assert SF_STATION.limits.max_temperature_c == 1150.0 and SF_STATION.limits.best_vacuum_mbar == 0.0001
    assert SF_STATION.plumbing.quench_fan == "quench_fan" and SF_STATION.plumbing.o2_channel is None


def test_expanded_profile() -> None:
    steps = expand_profile(load_recipe(HD_PATH), HD_STATION)
    assert steps[0].phase == "load" and steps[0].kind == "phase" and steps[0].end_min == 0.0
    leak = steps[1]
    assert (leak.phase, leak.start_min, leak.end_min, leak.worst_case, leak.sp_start_c) == ("leak_test", 0.0, 70.0,
                                                                                           True, None)
    ramp = next(s for s in steps if s.phase == "degassing" and s.index == 1)
    assert (ramp.sp_start_c, ramp.sp_end_c, ramp.end_min - ramp.start_min, ramp.worst_case) == (20.0, 350.0, 66.0,
                                                                                                False)
    evacuate = next(s for s in steps if s.kind == "evacuate")
    assert evacuate.worst_case and "vacuum_pump on" in evacuate.action
    assert steps[-1].phase == "unload" and steps[-1].end_min == pytest.approx(1256.0)
    quench = next(s for s in expand_profile(load_recipe(SF_PATH)) if s.phase == "quench")
    assert (quench.temp_start_c, quench.temp_end_c, quench.sp_start_c) == (1060.0, 80.0, None)


# ============================================================================ check against the station: limits


def test_a_ramp_faster_than_the_limit() -> None:
    p = only_problem(hd((RAMP_350, RAMP_350.replace("5.0", "15.0"))))
    assert p.key_path == "degassing.program[1].rate_c_per_min"
    assert p.message == ('ramp #1 "heat to the matrix desorption": heating at 15 degC/min is faster than the '
                         "station's max_ramp_c_per_min (10 degC/min)")
    assert str(p) == f"{p.key_path}: {p.message}"


def test_a_ramp_by_time_faster_than_the_limit() -> None:
    p = only_problem(hd((RAMP_350, RAMP_350.replace("rate_c_per_min = 5.0", "duration_min = 10"))))
    assert p.key_path == "degassing.program[1].duration_min"
    assert "heating at 33 degC/min (20 to 350 degC in 10 min) is faster than the station's max_ramp_c_per_min" \
        in p.message


def test_cooling_faster_than_the_limit() -> None:
    p = only_problem(hd(("to_c = 50.0\nrate_c_per_min = 5.0", "to_c = 50.0\nrate_c_per_min = 30.0")))
    assert p.key_path == "cooling.program[0].rate_c_per_min"
    assert p.message == ('ramp #0 "controlled cooling": cooling at 30 degC/min is faster than the station\'s '
                         "max_cooling_c_per_min (20 degC/min)")


def test_a_target_above_the_maximum() -> None:
    p = only_problem(hd((RAMP_600, RAMP_600.replace("600.0", "950.0"))))
    assert p.key_path == "degassing.program[3].to_c"
    assert p.message == ('ramp #3 "heat to degassing temperature": 950 degC is above the station\'s '
                         "max_temperature_c (900 degC)")


def test_a_target_above_the_zone_limit() -> None:
    text = edit(HD_STATION_PATH.read_text(), ("max_temperature_c = 900.0 ", "zone_max_temperature_c = "
                                              "{ chamber_temp = 550.0 }\nmax_temperature_c = 900.0 "))
    station = parse_station(text, "hd.toml")
    found = problems(HD_TEXT, station)
    assert [p.key_path for p in found] == ["degassing.program[3].to_c"]
    assert "600 degC is above the station's zone_max_temperature_c.chamber_temp (550 degC)" in found[0].message


def test_h2_above_its_pressure_limit() -> None:
    p = only_problem(hd(("pressure_bar = 1.8 ", "pressure_bar = 2.1 ")))
    assert p.key_path == "h2_admission.pressure_bar"
    assert p.message == "H2 at 2.1 bar is above the station's max_h2_pressure_bar (2 bar abs)"
    admit = '[[cooling.program]]\nkind = "admit_h2"\nto_bar = 2.1\ntop_up_below_bar = 1.5\ntimeout_min = 10\n\n'
    p = only_problem(hd((COOLING_END, admit + COOLING_END)))
    assert p.key_path == "cooling.program[1].to_bar"
    assert p.message == "admit_h2 #1: H2 at 2.1 bar is above the station's max_h2_pressure_bar (2 bar abs)"


def test_any_pressure_above_the_limit() -> None:
    p = only_problem(hd(("backfill_to_bar = 1.1", "backfill_to_bar = 2.5")))
    assert (p.key_path, p.message) == ("purge.backfill_to_bar", "2.5 bar is above the station's max_pressure_bar "
                                                                "(2.2 bar abs)")
    backfill = '[[cooling.program]]\nkind = "backfill"\ngas = "Ar"\nto_bar = 2.3\ntimeout_min = 10\n\n'
    p = only_problem(hd((COOLING_END, backfill + COOLING_END)))
    assert p.key_path == "cooling.program[1].to_bar" and "2.3 bar is above the station's max_pressure_bar" in p.message


def test_heating_before_the_vacuum_limit() -> None:
    p = only_problem(hd(("[[degassing.program]]\n" + EVACUATE, "")))
    assert p.key_path == "degassing.program[0]"
    assert p.message.startswith(
        'ramp #0 "heat to the matrix desorption": heating to 350 degC before the vacuum reached the station\'s '
        "min_vacuum_before_heating_mbar (0.1 mbar): before it, hydrogen after absorption. Start with an evacuate "
        "segment (to_mbar <= 0.1) or a wait for chamber_vacuum below it")
    p = only_problem(hd(("to_mbar = 0.1\ntimeout_min = 120", "to_mbar = 1.0\ntimeout_min = 120")))
    assert p.key_path == "degassing.program[1]"
    assert "before it, the vessel was evacuated to 1 mbar only (degassing.program[0])" in p.message


def test_a_wait_for_vacuum_satisfies_the_heating_rule() -> None:
    wait = ('kind = "wait"\nuntil = { channel = "chamber_vacuum", below = 0.1 }\ntimeout_min = 120\n')
    assert problems(hd((EVACUATE, wait))) == []
    in_bar = 'kind = "wait"\nuntil = { channel = "chamber_pressure", below = 0.0001 }\ntimeout_min = 120\n'
    assert problems(hd((EVACUATE, in_bar))) == []  # 0.0001 bar = 0.1 mbar


def test_heating_before_the_vacuum_limit_in_sintering() -> None:
    p = only_problem(sf(("to_mbar = 0.0005", "to_mbar = 0.01")), SF_STATION)
    assert p.key_path == "heating.program[0]"
    assert "(0.005 mbar): before it, pump_down ends at 0.01 mbar (pump_down.to_mbar)" in p.message
    no_evacuation = sf(('[[anneal_1.program]]\nlabel = "pump out the quench argon"\nkind = "evacuate"  ', "# "),
                       ("to_mbar = 0.005\ntimeout_min = 60\n\n", "\n"))
    found = problems(no_evacuation, SF_STATION)
    assert [p.key_path for p in found] == ["anneal_1.program[0]"]
    assert "before it, the quench gas after quench" in found[0].message
    reheating = sf(("to_c = 50.0\nrate_c_per_min = 10.0", "to_c = 600.0\nrate_c_per_min = 5.0"))
    p = only_problem(reheating, SF_STATION)
    assert p.key_path == "cooling.program[0]" and "before it, Ar backfilled at the start of cooling" in p.message


def test_a_wait_for_a_vacuum_better_than_the_pumps_reach() -> None:
    p = only_problem(hd((WAIT_RECOVERED, WAIT_RECOVERED.replace("0.1", "0.0005"))))
    assert p.key_path == "degassing.program[5].until.below"
    assert p.message == ('wait #5 "vacuum recovered": 0.0005 mbar is a better vacuum than the station\'s pumps reach '
                         "(best_vacuum_mbar 0.001 mbar): it would never be reached")
    p = only_problem(hd(("evacuate_to_mbar = 0.5", "evacuate_to_mbar = 0.0002")))
    assert p.key_path == "leak_test.evacuate_to_mbar" and "better vacuum than the station's pumps reach" in p.message


def test_a_wait_on_an_unknown_channel() -> None:
    p = only_problem(hd((WAIT_PEAK, WAIT_PEAK.replace('"chamber_vacuum"', '"chamber_vac"'))))
    assert p.key_path == "degassing.program[2].until.channel"
    assert p.message.startswith('wait #2 "let the desorption peak pass": unknown channel \'chamber_vac\' (expected '
                                "one of: cj_temp, chamber_temp,")
    assert p.message.endswith("in this station") and "did you mean 'chamber_vacuum'?" in p.message


def test_a_wait_whose_condition_does_not_suit_the_channel() -> None:
    p = only_problem(hd((WAIT_PEAK, WAIT_PEAK.replace("below = 0.5", "level = 1"))))
    assert p.key_path == "degassing.program[2].until.level" and "is injected; level applies to digital" in p.message
    p = only_problem(hd((WAIT_PEAK, WAIT_PEAK.replace('"chamber_vacuum"', '"lid_closed"'))))
    assert p.key_path == "degassing.program[2].until.below" and "is digital: use level = 0 or 1" in p.message
    p = only_problem(hd((WAIT_PEAK, WAIT_PEAK.replace("0.5", "0.00001"))))
    assert "0.00001" not in p.message and "1e-05 mbar is outside channel 'chamber_vacuum''s range" in p.message


def test_a_gas_not_allowed() -> None:
    p = only_problem(hd(('gas = "Ar"\nbackfill_to_bar = 1.05', 'gas = "N2"\nbackfill_to_bar = 1.05')))
    assert (p.key_path, p.message) == ("cooling.gas", "N2 is not in the station's allowed_gases (H2, Ar)")
    backfill = '[[cooling.program]]\nkind = "backfill"\ngas = "He"\nto_bar = 1.1\ntimeout_min = 10\n\n'
    p = only_problem(hd((COOLING_END, backfill + COOLING_END)))
    assert (p.key_path, p.message) == ("cooling.program[1].gas",
                                       "backfill #1: He is not in the station's allowed_gases (H2, Ar)")
    p = only_problem(hd(('gas = "Ar"\nevacuate_to_mbar = 1.0', 'gas = "H2"\nevacuate_to_mbar = 1.0')))
    assert (p.key_path, p.message) == ("purge.gas", "H2 is not inert: this step needs an inert gas such as Ar")
    found = problems(HD_TEXT, SF_STATION)
    assert ("h2_admission.pressure_bar", "H2 is not in the station's allowed_gases (Ar)") in \
        [(p.key_path, p.message) for p in found]


def test_h2_admission_above_its_temperature_limit() -> None:
    p = only_problem(hd(("max_start_temperature_c = 40.0", "max_start_temperature_c = 200.0")))
    assert p.key_path == "h2_admission.max_start_temperature_c"
    assert p.message == ("200 degC: H2 may be admitted only below the station's max_h2_admission_temperature_c "
                         "(150 degC)")
    admit = '[[degassing.program]]\nkind = "admit_h2"\nto_bar = 1.5\ntop_up_below_bar = 1.2\ntimeout_min = 10\n\n'
    found = problems(hd(('[[degassing.program]]\nlabel = "let the desorption', admit + '[[degassing.program]]\n'
                         'label = "let the desorption')))
    assert ("degassing.program[2]", "admit_h2 #2: admits H2 with the setpoint at 350 degC, above the station's "
                                    "max_h2_admission_temperature_c (150 degC)") in [(p.key_path, p.message)
                                                                                     for p in found]
    assert any(p.key_path == "degassing.program[4]" and "H2 was let in" in p.message for p in found)


def test_a_batch_longer_than_the_limit() -> None:
    p = only_problem(hd(("max_duration_h = 6", "max_duration_h = 12")))
    assert p.key_path == "recipe"
    assert p.message == ("the batch may take 26.9 h (waits and gas steps counted at their timeouts), more than the "
                         "station's max_batch_duration_h (24 h): shorten the program or the timeouts")


def test_a_charge_above_the_limit() -> None:
    p = only_problem(hd(("charge_kg = 25.0", "charge_kg = 30.0")))
    assert (p.key_path, p.message) == ("load.charge_kg", "30 kg is more than the station's max_charge_kg (25 kg)")


def test_the_recipe_must_suit_the_station() -> None:
    found = problems(HD_TEXT, SF_STATION)
    assert found[0] == RecipeProblem("recipe.process", "an hd recipe runs on an hd_reactor; station sf-01 is a "
                                                       "sintering_furnace")
    p = only_problem(hd(('control_channel = "chamber_temp"', 'control_channel = "chamber_tmp"')))
    assert p.key_path == "recipe.control_channel" and "unknown channel 'chamber_tmp'" in p.message
    p = only_problem(hd(('control_channel = "chamber_temp"', 'control_channel = "chamber_pressure"')))
    assert p.message == "channel 'chamber_pressure' reads 'bar', not a temperature"
    p = only_problem(hd(('control_channel = "chamber_temp"', 'control_channel = "chamber_temp_safety"')))
    assert "no PID loop of this station controls 'chamber_temp_safety'" in p.message


def test_a_vent_below_atmospheric_pressure() -> None:
    vent = '[[cooling.program]]\nkind = "vent"\nto_bar = 1.0\ntimeout_min = 10\n\n'
    p = only_problem(hd((COOLING_END, vent + COOLING_END)))
    assert p.key_path == "cooling.program[1].to_bar" and "cannot bring the vessel below atmospheric" in p.message


def test_absorption_top_up_must_be_below_the_admission_pressure() -> None:
    p = only_problem(hd(("top_up_below_bar = 1.6", "top_up_below_bar = 1.9")))
    assert p.key_path == "absorption.top_up_below_bar" and "must be below h2_admission.pressure_bar" in p.message


# ============================================================================ parsing: the file on its own


def test_an_unknown_segment_kind() -> None:
    e = only_error(hd((RAMP_350, RAMP_350.replace('"ramp"', '"rmap"'))))
    assert e.key_path == "degassing.program[1].kind"
    assert e.message == ('segment #1: expected one of: ramp, step, dwell, wait, evacuate, backfill, admit_h2, vent, '
                         "gas_off, end; got \"rmap\"; did you mean 'ramp'?")
    assert str(e) == f"r.toml: degassing.program[1].kind: {e.message}"


def test_a_wait_without_a_timeout() -> None:
    e = only_error(hd((WAIT_PEAK, WAIT_PEAK.replace("\ntimeout_min = 180", ""))))
    assert e.key_path == "degassing.program[2].timeout_min"
    assert e.message == ('wait #2 "let the desorption peak pass": missing: expected a timeout: a wait segment needs '
                         "timeout_min, the longest it may take in min (a condition that never comes would hold the "
                         "furnace forever)")


def test_gas_segments_need_a_timeout_too() -> None:
    e = only_error(hd(("to_mbar = 0.1\ntimeout_min = 120\n", "to_mbar = 0.1\n")))
    assert e.key_path == "degassing.program[0].timeout_min"
    assert e.message.startswith('evacuate #0 "pump out the free hydrogen": missing: expected a timeout: an evacuate '
                                "segment needs timeout_min")


@pytest.mark.parametrize("old,new,key,message", [
    ("rate_c_per_min = 5.0", "rate = 5.0", "degassing.program[1].rate", "missing unit: did you mean rate_c_per_min?"),
    ("to_c = 350.0", "to = 350.0", "degassing.program[1].to", "missing unit: did you mean to_c?"),
    ("rate_c_per_min = 5.0", "rate_c_per_s = 5.0", "degassing.program[1].rate_c_per_s",
     "wrong unit: did you mean rate_c_per_min? (units are part of the key name: rate_c_per_min)"),
])
def test_a_missing_unit(old: str, new: str, key: str, message: str) -> None:
    e = only_error(hd((RAMP_350, RAMP_350.replace(old, new))))
    assert e.key_path == key
    assert e.message == f'ramp #1 "heat to the matrix desorption": {message}'


def test_a_missing_unit_in_a_phase_table_and_a_wait() -> None:
    e = only_error(hd(("charge_kg = 25.0", "charge = 25.0")))
    assert (e.key_path, e.message) == ("load.charge", "missing unit: did you mean charge_kg?")
    e = only_error(hd(("timeout_min = 60", "timeout = 60")))
    assert (e.key_path, e.message) == ("leak_test.timeout", "missing unit: did you mean timeout_min?")
    e = only_error(hd(("duration_min = 60  ", "duration_h = 1  ")))
    assert e.key_path == "degassing.program[4].duration_h" and "wrong unit: did you mean duration_min?" in e.message


def test_unknown_keys_get_a_did_you_mean() -> None:
    e = only_error(hd(("rate_c_per_min = 5.0", "rate_c_per_mn = 5.0")))
    assert e.key_path == "degassing.program[1].rate_c_per_mn"
    assert e.message.endswith("did you mean 'rate_c_per_min'?") and "unknown key 'rate_c_per_mn'" in e.message
    e = only_error(hd(("[degassing]\n", "[degasing]\n")).replace("[[degassing.program]]", "[[degasing.program]]"))
    assert e.key_path == "degasing" and "unknown table 'degasing'" in e.message
    errors = parse_errors(hd(("[degassing]\n", "[degasing]\n")))
    assert [e.key_path for e in errors] == ["degasing", "degassing.vacuum_recovered_mbar"]  # in file order


def test_a_key_that_belongs_to_another_segment_kind() -> None:
    e = only_error(hd(("kind = \"dwell\"\nduration_min = 60", "kind = \"dwell\"\nduration_min = 60\nto_c = 600.0")))
    assert (e.key_path, e.message) == ("degassing.program[4].to_c",
                                       'dwell #4 "degassing soak": does not apply to a dwell segment')


def test_ramps_take_exactly_one_of_rate_and_duration() -> None:
    e = only_error(hd((RAMP_350, RAMP_350 + "\nduration_min = 30")))
    assert (e.key_path, e.message) == ("degassing.program[1].duration_min", 'ramp #1 "heat to the matrix desorption": '
                                       "a ramp takes rate_c_per_min or duration_min, not both")
    e = only_error(hd((RAMP_350, RAMP_350.replace("\nrate_c_per_min = 5.0", ""))))
    assert e.key_path == "degassing.program[1]" and e.message.endswith(
        "missing: a ramp needs rate_c_per_min (degC/min) or duration_min (min)")


def test_phases_of_the_other_process_and_missing_phases() -> None:
    e = only_error(HD_TEXT + "\n[sinter]\nfoo = 1\n")
    assert (e.key_path, e.message) == ("sinter", "does not apply to hd recipes: it is a phase of sintering recipes "
                                                 "(process = \"sintering\")")
    e = only_error(hd(("[unload]\nmax_temperature_c = 50.0", "")))
    assert e.key_path == "unload" and e.message.startswith("missing: expected [unload]")
    errors = parse_errors(sf(('process = "sintering"', 'process = "hd"')))
    found = {(e.key_path, e.message) for e in errors}
    assert ("pump_down", "does not apply to hd recipes: it is a phase of sintering recipes (process = "
                         "\"sintering\")") in found
    assert any(key == "leak_test" and message.startswith("missing: expected [leak_test]") for key, message in found)


def test_an_end_segment_must_be_last() -> None:
    e = only_error(hd(("kind = \"end\"\naction = \"heaters_off\"", "kind = \"end\"\naction = \"heaters_off\"\n\n"
                       "[[cooling.program]]\nkind = \"step\"\nto_c = 20.0")))
    assert (e.key_path, e.message) == ("cooling.program[1]", "end #1: an end segment must be the last of the program "
                                                             "(it is #1 of 3)")


def test_many_problems_come_together_in_file_order() -> None:
    text = hd(("version = 1", "version = 0"), ("band_c = 10.0", "band_c = -1"),
              ("rate_c_per_min = 5.0", "rate = 5.0"), ("[unload]\nmax_temperature_c = 50.0", ""))
    with pytest.raises(SpecError) as info:
        parse_recipe(text, "r.toml")
    errors = info.value.errors
    assert [e.key_path for e in errors] == ["recipe.version", "holdback.band_c", "degassing.program[1].rate",
                                            "unload"]
    assert errors[0].message == "expected an integer from 1 to 1000000, got 0"
    assert str(info.value).splitlines()[1] == "r.toml: holdback.band_c: expected a number > 0 and <= 1000, got -1"
    assert info.value.key_path == "recipe.version"


def test_wrong_types_and_values() -> None:
    e = only_error(hd(("charge_kg = 25.0", 'charge_kg = "25"')))
    assert (e.key_path, e.message) == ("load.charge_kg", 'expected a number, got string "25"')
    e = only_error(hd(('strategy = "hold"', 'strategy = "pray"')))
    assert e.message == 'expected one of: continue, ramp_back, hold, abort; got "pray"'
    e = only_error(hd(('strategy = "hold"', 'strategy = 3')))  # a number for a name: the options, not "a string"
    assert (e.key_path, e.message) == ("power_fail.strategy",
                                       "expected one of: continue, ramp_back, hold, abort; got integer 3")
    e = only_error(hd(("charge_kg = 25.0", "charge_kg = 2e6")))
    assert e.message == "expected a number > 0 and <= 1000000, got 2000000"
    e = only_error(hd(('name = "HD of sintered NdFeB scrap, 25 kg"', 'name = "  "')))
    assert (e.key_path, e.message) == ("recipe.name", "expected a non-empty string")
    e = only_error(hd(("max_cycles = 5", "max_cycles = 2.5")))
    assert e.message == "expected an integer from 1 to 1000, got number 2.5"
    e = only_error(hd(("to_c = 350.0", "to_c = true")))
    assert e.message.endswith("expected a number, got boolean true")
    e = only_error(hd(('{ channel = "chamber_vacuum", below = 0.5 }', '{ channel = "chamber_vacuum", below = 0.5, '
                                                                      'above = 1.0 }')))
    assert e.key_path == "degassing.program[2].until" and "give one condition, not above and below" in e.message


def test_holdback_needs_a_band() -> None:
    e = only_error(hd(("mode = \"band\"\nband_c = 10.0", "mode = \"band\"")))
    assert (e.key_path, e.message) == ("holdback.band_c", "missing: holdback band needs band_c, the band in degC "
                                                          "around the setpoint")


def test_the_file_cannot_be_read_or_parsed() -> None:
    e = only_error("[recipe]\nname = \n")
    assert e.key_path == "" and e.message.startswith("TOML syntax error at line 2, column 8")
    with pytest.raises(SpecError, match="cannot read the recipe file"):
        load_recipe(ROOT / "recipes" / "no_such.toml")
    errors = parse_errors("")
    assert [e.key_path for e in errors] == ["recipe", "power_fail"]


# ============================================================================ the command line


def reedge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env=env)


def test_cli_validate_ok() -> None:
    run = reedge("recipe", "validate", "recipes/hd_standard.toml", "--station", "stations/hd_reactor_sim.toml")
    assert run.returncode == 0, run.stderr
    assert run.stdout == ('recipes/hd_standard.toml: OK  "HD of sintered NdFeB scrap, 25 kg" (hd, version 1) fits '
                          "station pilot-line/hd-01: 8 phases, 9 program segments, at most 20.9 h\n")
    run = reedge("recipe", "validate", "recipes/sintering_standard.toml", "--station",
                 "stations/sintering_furnace_sim.toml")
    assert run.returncode == 0 and "OK" in run.stdout


def test_cli_validate_problems(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "fast.toml"
    path.write_text(hd((RAMP_350, RAMP_350.replace("5.0", "15.0")), ("charge_kg = 25.0", "charge_kg = 30.0")))
    run = reedge("recipe", "validate", str(path), "--station", "stations/hd_reactor_sim.toml")
    assert run.returncode == 1
    assert run.stdout.splitlines() == [
        f"{path}: load.charge_kg: 30 kg is more than the station's max_charge_kg (25 kg)",
        f'{path}: degassing.program[1].rate_c_per_min: ramp #1 "heat to the matrix desorption": heating at 15 degC/min '
        "is faster than the station's max_ramp_c_per_min (10 degC/min)",
    ]


def test_cli_validate_unreadable(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(hd(("rate_c_per_min = 5.0", "rate = 5.0"), ("[unload]\nmax_temperature_c = 50.0", "")))
    run = reedge("recipe", "validate", str(path), "--station", "stations/hd_reactor_sim.toml")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines() == [
        f'{path}: degassing.program[1].rate: ramp #1 "heat to the matrix desorption": missing unit: did you mean '
        "rate_c_per_min?",
        f"{path}: unload: missing: expected [unload] (ready to unload)",
    ]
    path.write_text("[recipe\n")
    run = reedge("recipe", "validate", str(path), "--station", "stations/hd_reactor_sim.toml")
    assert run.returncode == 2 and run.stderr.startswith(f"{path}: TOML syntax error at line 1")
    run = reedge("recipe", "validate", str(tmp_path / "none.toml"), "--station", "stations/hd_reactor_sim.toml")
    assert run.returncode == 2 and "cannot read the recipe file" in run.stderr
    run = reedge("recipe", "validate", "recipes/hd_standard.toml", "--station", str(tmp_path / "none.toml"))
    assert run.returncode == 2 and run.stderr.startswith("reedge recipe: ")


def test_cli_show_prints_the_profile() -> None:
    run = reedge("recipe", "show", "recipes/hd_standard.toml", "--station", "stations/hd_reactor_sim.toml")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[1].split() == ["phase", "#", "kind", "start", "end", "setpoint", "degC", "what"]
    ramp = next(line for line in lines if "heat to the matrix desorption" in line)
    assert ramp.split()[:7] == ["degassing", "1", "ramp", "11:10", "12:16", "20", "->"]
    assert re.search(r"^leak_test +- +phase +0:00 +1:10\* +off +evacuate to 0\.5 mbar", run.stdout, re.M)
    assert "total: at most 20:56 (h:mm)" in lines
    assert "0 problem(s) against station pilot-line/hd-01" in lines


def test_cli_show_draws_a_png(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "profile.png"
    run = reedge("recipe", "show", "recipes/sintering_standard.toml", "--png", str(png))
    assert run.returncode == 0, run.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert f"profile drawn: {png}" in run.stdout


def test_cli_show_without_matplotlib_says_how_to_install_it(tmp_path: pathlib.Path) -> None:
    code = "import sys; sys.modules['matplotlib'] = None; from edge.app.cli import main; sys.exit(main(sys.argv[1:]))"
    run = subprocess.run([sys.executable, "-c", code, "recipe", "show", "recipes/hd_standard.toml", "--png",
                          str(tmp_path / "x.png")], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**os.environ})
    assert run.returncode == 2
    assert "--png needs matplotlib, which is not installed: .venv/bin/pip install matplotlib" in run.stderr
    assert not (tmp_path / "x.png").exists()


# ============================================================================ fuzz


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_dumps(document: dict[str, Any]) -> str:
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in document.items() if not isinstance(v, dict)]
    for k, v in document.items():
        if isinstance(v, dict):
            lines.append(f"[{toml_key(k)}]")
            lines.extend(f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in v.items())
    return "\n".join(lines) + "\n"


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            found.extend(paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found.extend(paths(v, (*prefix, i)))
    return found


SCALARS = st.one_of(st.booleans(), st.integers(-(10**30), 10**30), st.floats(), st.text(max_size=12),
                    st.sampled_from(["ramp", "wait", "end", "H2", "Ar", "chamber_temp", "chamber_vacuum", "band",
                                     "hold", "sintering", "hd", "heaters_off"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["kind", "to_c", "rate", "channel", "below", "timeout_min", "x", ""]) | st.text(max_size=6),
    inner, max_size=3), max_leaves=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_parse_recipe_raises_only_recipe_errors(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from([HD_TEXT, SF_TEXT]))
    document: dict[str, Any] = tomllib.loads(base)
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.sampled_from(paths(document)))
        parent: Any = document
        for step in where[:-1]:
            parent = parent[step]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[where[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(st.text(max_size=10))] = data.draw(VALUES)
        else:
            parent[where[-1]] = data.draw(VALUES)
        if not document:
            break
    text = toml_dumps(document)
    try:
        recipe = parse_recipe(text, "fuzz.toml")
    except SpecError as exc:
        assert exc.errors and all(isinstance(e, SpecError) and str(e).startswith("fuzz.toml") for e in exc.errors)
        return
    assert isinstance(recipe, Recipe)
    for station in (HD_STATION, SF_STATION):  # a parsed recipe can always be checked and expanded
        assert all(isinstance(p, RecipeProblem) for p in check_recipe(recipe, station))
        expand_profile(recipe, station)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400) | st.builds(lambda cut, junk: HD_TEXT[:cut] + junk,
                                         st.integers(0, len(HD_TEXT)), st.text(max_size=40)))
def test_fuzz_parse_recipe_with_any_text(text: str) -> None:
    with contextlib.suppress(SpecError):
        parse_recipe(text, "fuzz.toml")


def test_every_phase_key_has_its_unit_and_the_readme_documents_it() -> None:
    readme = (ROOT / "recipes" / "README.md").read_text()
    for specs in PHASES.values():
        for spec in specs:
            assert f"`[{spec.name}]`" in readme, spec.name
            for param in spec.params:
                assert f"`{param.key}`" in readme, param.key
                if param.kind == "number":
                    assert re.search(r"_(c|kg|min|h|mbar|bar|pct|mbar_per_min)$", param.key), param.key
    for kind in SEGMENT_KINDS:
        assert f"`{kind}`" in readme, kind
    for strategy in ("continue", "ramp_back", "hold", "abort"):
        assert f"**{strategy}**" in readme


def test_a_key_of_another_segment_kind_with_the_wrong_unit() -> None:
    e = only_error(hd(("to_mbar = 0.1\ntimeout_min = 120", "to_bar = 0.1\ntimeout_min = 120")))
    assert e.key_path == "degassing.program[0].to_bar"
    assert e.message.endswith("wrong unit: did you mean to_mbar? (units are part of the key name: to_mbar)")


def test_a_cooling_backfill_below_the_kept_band_is_refused() -> None:
    """cooling.backfill_to_bar is honoured (issue 16 item 17); a figure the keep-inert band would override is
    refused, and one above the station's limit too."""
    p = only_problem(hd(('gas = "Ar"\nbackfill_to_bar = 1.05', 'gas = "Ar"\nbackfill_to_bar = 1.03')))
    assert (p.key_path, p.message) == ("cooling.backfill_to_bar", "1.03 bar is below 1.05 bar abs: after the backfill "
                                       "the gas is kept at 1.02-1.05 bar abs (above atmosphere, so that no air is "
                                       "drawn in as the charge cools): backfill to at least 1.05")
    p = only_problem(hd(('gas = "Ar"\nbackfill_to_bar = 1.05', 'gas = "Ar"\nbackfill_to_bar = 2.5')))
    assert (p.key_path, p.message) == ("cooling.backfill_to_bar",
                                       "2.5 bar is above the station's max_pressure_bar (2.2 bar abs)")
    assert problems(sf(("backfill_to_bar = 1.2", "backfill_to_bar = 1.0")), SF_STATION)[0].key_path \
        == "quench.backfill_to_bar"


def test_hd_cooling_backfills_to_the_recipes_pressure_then_keeps_it_inert() -> None:
    """The HD cooling phase fills its gas to cooling.backfill_to_bar (it was ignored: argon to 1.05 whatever
    the recipe said), then keeps the band above atmosphere with the same gas."""
    from edge.control.hd import HDSequencer

    recipe = parse_recipe(hd(('gas = "Ar"\nbackfill_to_bar = 1.05', 'gas = "Ar"\nbackfill_to_bar = 1.6')), "r.toml")
    assert check_recipe(recipe, HD_STATION) == []
    seq = HDSequencer(recipe, HD_STATION.plumbing)
    seq.enter("cooling", 0.0, "test")
    ar = HD_STATION.plumbing.inlet_valves["Ar"]

    def ar_open(t: float, bar: float) -> int:
        return seq.step(t, {"chamber_pressure": bar, recipe.control_channel: 500.0}).outputs[ar]

    assert [ar_open(1.0, 0.001), ar_open(2.0, 1.3), ar_open(3.0, 1.59)] == [1, 1, 1]
    assert [ar_open(4.0, 1.6), ar_open(5.0, 1.3), ar_open(6.0, 1.03)] == [0, 0, 0]   # filled; cooling gas shrinks
    assert [ar_open(7.0, 1.01), ar_open(8.0, 1.04), ar_open(9.0, 1.05)] == [1, 1, 0]  # kept above atmosphere
