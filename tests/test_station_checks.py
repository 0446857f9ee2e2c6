"""The station loader's consistency checks across rules and permissives (issue 13).

Each case is a small station text with one contradiction; the loader must name the key and say why,
report every problem at once, and still load the stock stations."""

from __future__ import annotations

import pathlib
import re
import textwrap

import pytest

from edge.spec.reader import SpecError
from edge.spec.station import load_station, parse_station

ROOT = pathlib.Path(__file__).resolve().parent.parent

BASE = """
[station]
id = "t-01"
site = "lab"
kind = "sintering_furnace"
[core]
deadman_ms = 1000
[drivers.plant]
type = "sim"
path = "/dev/shm/t.regs"
[channels.flow]
kind = "analog"
driver = "plant"
input = 0
unit = "l/min"
range = [0.0, 20.0]
rate_window_ms = 1000
[channels.room]
kind = "analog"
driver = "plant"
input = 1
unit = "%LEL"
range = [0.0, 100.0]
[channels.door_closed]
kind = "digital"
driver = "plant"
input = 0
[outputs.heater]
driver = "plant"
line = 0
safe_level = 0
[outputs.valve]
driver = "plant"
line = 1
safe_level = 0
[limits]
max_temperature_c = 1100.0
max_ramp_c_per_min = 5.0
max_pressure_bar = 1.5
min_vacuum_before_heating_mbar = 0.01
allowed_gases = ["Ar"]
"""


def station_text(extra: str) -> str:
    return BASE + textwrap.dedent(extra)


def errors(extra: str) -> list[SpecError]:
    with pytest.raises(SpecError) as caught:
        parse_station(station_text(extra), "t.toml")
    return list(caught.value.errors)


def one_error(extra: str, key_path: str) -> SpecError:
    found = errors(extra)
    listing = "\n".join(map(str, found))
    assert [e.key_path for e in found] == [key_path], listing
    return found[0]


def test_the_base_station_loads() -> None:
    parse_station(station_text(""), "t.toml")


@pytest.mark.parametrize("path", sorted((ROOT / "stations").glob("*.toml")), ids=lambda p: p.name)
def test_stock_stations_still_load(path: pathlib.Path) -> None:
    load_station(path)


@pytest.mark.parametrize("path", sorted((ROOT / "stations").glob("*.toml")), ids=lambda p: p.name)
def test_each_station_header_checks_its_file_with_reedge_station_check(
        path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The header's check command is `reedge station check` on this file, and it passes as written (it was a
    Python one-liner printing a traceback); no doc tells users to check a file with `python -c`."""
    from edge.app.cli import main

    header = path.read_text().split("\n\n", 1)[0]
    command = re.search(r"reedge station check (\S+)", header)
    assert command and command.group(1) == f"stations/{path.name}", f"{path.name}: header has no check command"
    monkeypatch.chdir(ROOT)
    assert main(["station", "check", command.group(1)]) == 0, capsys.readouterr()
    for doc in (ROOT / "stations" / "README.md", ROOT / "README.md", ROOT / "recipes" / "README.md", path):
        assert "python -c" not in doc.read_text(), doc


# ---------------------------------------------------------------- trip bands


def _low_high(low: float, high: float, kind: str = "", low_hyst: float = 0.0, high_hyst: float = 0.0) -> str:
    return f"""
    [interlocks.flow_low]
    kind = "{kind}low"
    channel = "flow"
    threshold = {low}
    hysteresis = {low_hyst}
    action = ["heater"]
    [interlocks.flow_high]
    kind = "{kind}high"
    channel = "flow"
    threshold = {high}
    hysteresis = {high_hyst}
    action = ["valve"]
    """


def test_low_trip_above_the_high_trip_is_refused() -> None:
    error = one_error(_low_high(12.0, 8.0), "interlocks.flow_low.threshold")
    assert "is not below interlocks.flow_high.threshold (8)" in error.message
    assert "trips whatever it reads" in error.message


def test_low_trip_equal_to_the_high_trip_is_refused() -> None:
    one_error(_low_high(8.0, 8.0), "interlocks.flow_low.threshold")


def test_low_and_high_trips_with_a_band_between_load() -> None:
    parse_station(station_text(_low_high(2.0, 18.0, low_hyst=1.0, high_hyst=1.0)), "t.toml")


def test_low_and_high_trips_on_different_channels_are_not_compared() -> None:
    high_on_flow = 'channel = "flow"\n    threshold = 8.0'
    text = _low_high(12.0, 8.0).replace(high_on_flow, high_on_flow.replace("flow", "room"))
    assert 'channel = "room"' in text
    parse_station(station_text(text), "t.toml")


def test_rate_low_above_rate_high_is_refused() -> None:
    error = one_error(_low_high(30.0, 20.0, kind="rate_"), "interlocks.flow_low.threshold")
    assert "no rate lies between them" in error.message


def test_a_clear_point_inside_the_other_trip_is_refused() -> None:
    error = one_error(_low_high(5.0, 8.0, low_hyst=4.0), "interlocks.flow_low.hysteresis")
    assert "clear point 9 above interlocks.flow_high.threshold (8)" in error.message
    error = one_error(_low_high(5.0, 8.0, high_hyst=4.0), "interlocks.flow_high.hysteresis")
    assert "clear point 4 below interlocks.flow_low.threshold (5)" in error.message


# ---------------------------------------------------------------- a threshold against the channel's range


def _rule(kind: str, threshold: float) -> str:
    return f"""
    [interlocks.flow_rule]
    kind = "{kind}"
    channel = "flow"
    threshold = {threshold}
    action = ["heater"]
    """


def test_threshold_outside_the_range_says_which_end() -> None:
    error = one_error(_rule("high", 25.0), "interlocks.flow_rule.threshold")
    assert "above its top end 20" in error.message
    error = one_error(_rule("low", -1.0), "interlocks.flow_rule.threshold")
    assert "below its bottom end 0" in error.message


def test_threshold_at_the_far_end_of_the_range_trips_only_on_a_fault() -> None:
    error = one_error(_rule("high", 20.0), "interlocks.flow_rule.threshold")
    assert "is the top end" in error.message and "only on a sensor fault" in error.message
    error = one_error(_rule("low", 0.0), "interlocks.flow_rule.threshold")
    assert "is the bottom end" in error.message
    parse_station(station_text(_rule("high", 0.0)), "t.toml")   # a high trip at the bottom end trips on flow


# ---------------------------------------------------------------- permissives that can never hold


def _terms(*terms: str, output: str = "valve") -> str:
    return "".join(f"\n[[permissives.{output}]]\n{term}\n" for term in terms)


@pytest.mark.parametrize(("first", "second", "key"), [
    ('channel = "flow"\nlt = 1.0', 'channel = "flow"\ngt = 2.0', "gt"),
    ('channel = "door_closed"\neq = 1', 'channel = "door_closed"\neq = 0', "eq"),
    ('channel = "flow"\nbetween = [0.0, 1.0]', 'channel = "flow"\ngt = 5.0', "gt"),
    ('channel = "flow"\ngt = 5.0', 'channel = "flow"\nlt = 5.0', "lt"),
], ids=["lt 1 and gt 2", "eq 1 and eq 0", "between [0,1] and gt 5", "gt 5 and lt 5"])
def test_two_terms_that_cannot_hold_together_are_refused(first: str, second: str, key: str) -> None:
    error = one_error(_terms(first, second), f"permissives.valve[1].{key}")
    assert "can never hold together with permissives.valve[0]" in error.message
    assert "could never be energised" in error.message


def test_terms_that_overlap_at_a_point_load() -> None:
    parse_station(station_text(_terms('channel = "flow"\nbetween = [0.0, 5.0]', 'channel = "flow"\nbetween = '
                                      '[5.0, 9.0]')), "t.toml")


def test_the_same_terms_on_other_outputs_or_channels_are_not_combined() -> None:
    parse_station(station_text(_terms('channel = "flow"\nlt = 1.0') + _terms('channel = "flow"\ngt = 2.0',
                                                                               output="heater")), "t.toml")
    parse_station(station_text(_terms('channel = "flow"\nlt = 1.0', 'channel = "room"\ngt = 2.0')), "t.toml")


@pytest.mark.parametrize(("term", "key"), [('lt = 0.0', "lt"), ('gt = 20.0', "gt")])
def test_a_term_at_the_end_of_the_range_can_never_hold(term: str, key: str) -> None:
    error = one_error(_terms(f'channel = "flow"\n{term}'), f"permissives.valve[0].{key}")
    assert "can never hold: channel 'flow' reads 0 to 20 l/min while healthy" in error.message


def test_a_permissive_that_holds_only_where_a_trip_cuts_the_output_is_refused() -> None:
    trip = """
    [interlocks.door_open]
    kind = "digital"
    channel = "door_closed"
    threshold = 1
    action = ["heater"]
    """
    error = one_error(trip + _terms('channel = "door_closed"\neq = 0', output="heater"), "permissives.heater[0]")
    assert "holds only where interlocks.door_open trips" in error.message
    assert "is a level inverted?" in error.message
    # the same permissive on an output the trip leaves alone is no contradiction
    parse_station(station_text(trip + _terms('channel = "door_closed"\neq = 0', output="valve")), "t.toml")


def test_a_permissive_above_a_high_trip_on_its_output_is_refused() -> None:
    trip = """
    [interlocks.gas]
    kind = "high"
    channel = "room"
    threshold = 25.0
    action = ["valve"]
    """
    error = one_error(trip + _terms('channel = "room"\ngt = 30.0'), "permissives.valve[0]")
    assert "interlocks.gas trips, which cuts 'valve'" in error.message
    # lt 30 under a trip at 25 is harmless: readings below 25 satisfy both
    parse_station(station_text(trip + _terms('channel = "room"\nlt = 30.0')), "t.toml")


def test_a_permissive_squeezed_out_by_a_low_and_a_high_trip_is_refused() -> None:
    error = one_error(_low_high(5.0, 15.0).replace('["valve"]', '["heater"]')
                      + _terms('channel = "flow"\nbetween = [16.0, 20.0]', output="heater"), "permissives.heater[0]")
    assert "holds only where interlocks.flow_high trips" in error.message
    assert "flow_low" not in error.message   # the trip that leaves [16, 20] alone is not blamed


def test_every_contradiction_is_reported_at_once() -> None:
    found = errors(_low_high(12.0, 8.0) + _terms('channel = "flow"\nlt = 1.0', 'channel = "flow"\ngt = 2.0')
                   + _rule("high", 25.0))
    assert {e.key_path for e in found} == {"interlocks.flow_low.threshold", "permissives.valve[1].gt",
                                           "interlocks.flow_rule.threshold"}
    assert all(e.source == "t.toml" for e in found)


def test_a_mistyped_meter_profile_is_reported_once_not_again_in_accounting() -> None:
    """A mistyped instrument profile made the meter unknown to [accounting] too: one mistake, two errors, the second
    one wrong (issue 16 item 15). The instrument's own error is the only one."""
    text = (ROOT / "stations/hd_reactor_sim.toml").read_text().replace('profile = "sdm630"', 'profile = "sdm360"', 1)
    with pytest.raises(SpecError) as caught:
        parse_station(text, "t.toml")
    assert [(e.key_path, e.message.split("; did")[0]) for e in caught.value.errors] == [
        ("instruments.heater_meter.profile", 'expected one of: sdm630, reedge_mfc, custom; got "sdm360"')]


def test_an_unknown_name_where_none_is_declared_says_so_plainly() -> None:
    """Not "expected one of: no step is declared"."""
    from edge.spec.reader import unknown

    assert unknown("step", "h2_leak", []) == "unknown step 'h2_leak' (no step is declared)"
    assert unknown("step", "h2_leek", ["h2_leak"]).startswith("unknown step 'h2_leek' (expected one of: h2_leak)")
