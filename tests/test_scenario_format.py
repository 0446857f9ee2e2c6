"""Scenario-format additions for the safety-integrity scenarios (issue 13): marks at a crossing of a published
channel or of a plant's true value, steps timed after an operator step or a mark (``delay_s``), measures over the
plant's true values with after/before windows, the new faults and the cabinet's limiter_reset; each key checked."""

from __future__ import annotations

import pathlib

import pytest

from edge.spec.reader import SpecError
from hil.measures import measure
from hil.runner import Fired, Run
from hil.scenario import Expectation, parse_scenario

ROOT = pathlib.Path(__file__).resolve().parent.parent

SCENARIO = """
[scenario]
station = "{root}/stations/hd_reactor_sim.toml"
recipe = "{root}/recipes/hd_standard.toml"

[[marks]]
id = "lel_warning"
at = {{ channel = "h2_room", above = 10.0 }}

[[marks]]
id = "wall_hot"
at = {{ quantity = "wall_temp", above = 590.0 }}

[[faults]]
kind = "tc_offset"
channel = "chamber_temp_safety"
offset_c = -150
at = {{ after = "hold_degas", delay_s = 30 }}

[[faults]]
kind = "tc_drift"
channel = "chamber_temp"
c_per_min = -2.5
at = {{ after = "wall_hot" }}

[[faults]]
kind = "relay_welded"
at = {{ t_s = 0 }}

[[operator]]
action = "hold"
id = "hold_degas"
at = {{ phase = "degas" }}

[[operator]]
action = "limiter_reset"
id = "reset_limiter"
at = {{ after = "tc_offset", delay_s = 600 }}

[run]
until = "batch_end"
max_plant_h = 4

[[expect]]
measure = "max_true"
quantity = "charge_temp"
after = "lel_warning"
before = "reset_limiter"
max = 900
{extra}
"""


def parse(extra: str = "", **swap: str) -> object:
    text = SCENARIO.format(root=ROOT, extra=extra)
    for old, new in swap.items():
        assert old.replace("_", " ") in text or old in text
        text = text.replace(old.replace("__", " "), new)
    return parse_scenario(text, pathlib.Path("/tmp/format.toml"))


def errors(extra: str = "", **swap: str) -> str:
    with pytest.raises(SpecError) as info:
        parse(extra, **swap)
    return str(info.value)


def test_marks_delays_true_measures_and_new_faults_parse() -> None:
    sc = parse()
    steps = {s.id: s for s in sc.steps}   # type: ignore[attr-defined]
    assert steps["lel_warning"].kind == "mark" and steps["lel_warning"].at.channel == "h2_room"
    assert steps["wall_hot"].at.quantity == "wall_temp"
    assert steps["tc_offset"].params == {"channel": "chamber_temp_safety", "offset_c": -150}
    assert steps["tc_offset"].at.after == "hold_degas" and steps["tc_offset"].at.delay_s == 30, \
        "a fault may follow an operator step declared after it in the file"
    assert steps["reset_limiter"].action == "limiter_reset"
    exp = sc.expectations[0]    # type: ignore[attr-defined]
    assert exp.measure == "max_true" and exp.args == {"quantity": "charge_temp", "after": "lel_warning",
                                                      "before": "reset_limiter"}


@pytest.mark.parametrize(("old", "new", "words"), [
    ('quantity = "wall_temp"', 'quantity = "wal_temp"', "marks[1].at.quantity: unknown true quantity"),
    ('quantity = "charge_temp"', 'quantity = "elements_temp"', "expect[0].quantity: unknown true quantity"),
    ("offset_c = -150", "offset = -150", "faults[0].offset_c: missing"),
    ('after = "hold_degas", delay_s = 30', "delay_s = 30", "delay_s: counts from the `after` step"),
    ('at = {{ after = "wall_hot" }}', 'at = {{ after = "tc_drift" }}', "waits on itself"),
    ('before = "reset_limiter"', 'before = "nowhere"', "expect[0].before: unknown step or mark 'nowhere'"),
    ('id = "lel_warning"\n', "", "marks[0].id: missing"),
    ('channel = "h2_room", above = 10.0', 'channel = "h2_room"', "needs above = or below ="),
])
def test_a_bad_new_key_is_named(old: str, new: str, words: str) -> None:
    text = SCENARIO.format(root=ROOT, extra="").replace(old.replace("{{", "{").replace("}}", "}"),
                                                         new.replace("{{", "{").replace("}}", "}"))
    with pytest.raises(SpecError) as info:
        parse_scenario(text, pathlib.Path("/tmp/format.toml"))
    assert words in str(info.value)


def test_before_applies_only_to_windowed_measures() -> None:
    message = errors('\n[[expect]]\nmeasure = "first_trip"\nbefore = "lel_warning"\nequals = "none"\n')
    assert "expect[1].before: does not apply to first_trip" in message


def test_max_true_is_measured_over_the_rows_truth_extremes_in_its_window() -> None:
    sc = parse()
    run = Run(sc, None)   # type: ignore[arg-type]
    steps = {s.id: s for s in sc.steps}   # type: ignore[attr-defined]
    run.fired = {"lel_warning": Fired(steps["lel_warning"], 100.0, 0),
                 "reset_limiter": Fired(steps["reset_limiter"], 300.0, 0)}
    rows = [{"t_s": t, "ch": {}, "true": {"charge_temp": v}, "true_max": {"charge_temp": v + 1}}
            for t, v in ((0.0, 950.0), (100.0, 500.0), (200.0, 880.0), (300.0, 600.0), (400.0, 990.0))]
    exp = Expectation("m", "max_true", {"quantity": "charge_temp", "after": "lel_warning", "before": "reset_limiter"},
                      {"max": 900})
    assert measure(run, rows, exp)[0] == 881.0, "the extremes of every plant step, inside the window only"


def test_a_mark_at_a_trip_fires_once_the_controller_reported_that_rule() -> None:
    from hil.runner import _holds

    sc = parse('\n[[marks]]\nid = "tripped"\nat = { trip = "chamber_overtemp" }\n')
    mark = next(s for s in sc.steps if s.id == "tripped")   # type: ignore[attr-defined]
    assert mark.kind == "mark" and mark.at.trip == "chamber_overtemp"
    run = Run(sc, None)   # type: ignore[arg-type]
    assert not _holds(run, mark, 10.0), "no trip reported yet"
    run.trips.append({"t_s": 5.0, "wall_ns": 1, "rule": "h2_leak", "first_out": True, "core_wall_ns": 1})
    assert not _holds(run, mark, 11.0), "another rule's trip does not count"
    run.trips.append({"t_s": 12.0, "wall_ns": 2, "rule": "chamber_overtemp", "first_out": False, "core_wall_ns": 2})
    assert _holds(run, mark, 12.0)


def test_a_trip_condition_names_an_interlock_of_the_station() -> None:
    message = errors('\n[[marks]]\nid = "tripped"\nat = { trip = "chamber_overtmp" }\n')
    assert "marks[2].at.trip: unknown interlock 'chamber_overtmp'" in message, message


def test_step_plant_s_is_the_plant_time_between_two_steps_in_order() -> None:
    sc = parse('\n[[expect]]\nmeasure = "step_plant_s"\nstep = "lel_warning"\nto = "reset_limiter"\nmax = 600\n')
    exp = sc.expectations[1]    # type: ignore[attr-defined]
    assert exp.args == {"step": "lel_warning", "to": "reset_limiter"}
    run = Run(sc, None)   # type: ignore[arg-type]
    steps = {s.id: s for s in sc.steps}   # type: ignore[attr-defined]
    assert measure(run, [], exp)[0] is None, "neither fired: nothing to measure"
    run.fired = {"lel_warning": Fired(steps["lel_warning"], 100.0, 10)}
    assert measure(run, [], exp)[0] is None, "the end never came: not measured (so the limit fails)"
    run.fired["reset_limiter"] = Fired(steps["reset_limiter"], 350.5, 20)
    assert measure(run, [], exp)[:2] == (250.5, "s")
    run.fired["reset_limiter"] = Fired(steps["reset_limiter"], 50.0, 5)
    assert measure(run, [], exp)[0] is None, "an end before the start is no interval"


def test_step_plant_s_names_both_steps() -> None:
    message = errors('\n[[expect]]\nmeasure = "step_plant_s"\nstep = "lel_warning"\nto = "nowhere"\nmax = 1\n')
    assert "expect[1].to: unknown step or mark 'nowhere'" in message, message
    message = errors('\n[[expect]]\nmeasure = "step_plant_s"\nstep = "lel_warning"\nmax = 1\n')
    assert "expect[1].to: missing: step_plant_s needs to" in message, message


def test_a_condition_on_a_digital_input_is_refused_at_parse_time() -> None:
    """The runner sees the plant's analog values only: a mark on K1's aux contact never fired (it parsed)."""
    message = errors('\n[[marks]]\nid = "k1_open"\nat = { channel = "contactor_closed", below = 0.5 }\n')
    assert "marks[2].at.channel: 'contactor_closed' is a digital input" in message, message


def test_a_missing_station_file_is_the_only_error_reported() -> None:
    """A scenario whose station file is missing said so, then also `unknown fault 'h2_leak'` and unknown steps:
    without the station there is no plant to know the faults from (issue 16 item 15). Now only the cause."""
    text = (ROOT / "hil/scenarios/hd_h2_leak_absorption.toml").read_text()
    text = text.replace('station = "../../stations/hd_reactor_sim.toml"', 'station = "../../stations/no_such.toml"')
    with pytest.raises(SpecError) as info:
        parse_scenario(text, ROOT / "hil/scenarios/copy.toml")
    assert [e.key_path for e in info.value.errors] == ["scenario.station"]
    assert "no_such.toml" in str(info.value)
