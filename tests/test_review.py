"""An adversarial review of issue 13's safety layers, station-file side: can a station file get a
safety contactor out of an action, or make its trip do the unsafe thing? (The core side is in
cext/tests/test_review.c.)"""

from __future__ import annotations

from tests.test_config import SOURCE, loads, problems, put


def _action(station: object, name: str) -> tuple[str, ...]:
    return next(r.action for r in station.core.rules if r.name == name)  # type: ignore[attr-defined]


def test_a_contactor_may_not_supply_an_output_whose_safe_level_is_1() -> None:
    """A contactor only takes power away: an output it supplies goes to its de-energised level (0)
    when it opens. Supplying the cooling-water valve (safe open, level 1) made every trip that opens
    the valve also drop K1, which closed it: the trip did the unsafe thing."""
    found = problems(put("outputs.safety_contactor.supplies", ["heater", "cooling_water_valve"]))
    matching = [e for e in found if e.key_path == "outputs.safety_contactor.supplies"]
    assert matching and "cooling_water_valve" in matching[0].message and "safe_level" in matching[0].message, found
    assert all(e.source == SOURCE for e in found)


def test_a_contactor_upstream_of_a_contactor_is_dropped_too() -> None:
    """K0 supplies K1, K1 supplies the heater: a rule cutting the heater got K1 but not K0, so a
    welded K1 kept heating through the trip although K0 could cut it. The closure is taken."""
    station = loads(put("outputs.k0", {"driver": "plant", "line": 12, "safe_level": 0,
                                       "supplies": ["safety_contactor"]}))
    action = _action(station, "chamber_overtemp")
    assert "heater" in action and "safety_contactor" in action and "k0" in action, action


def test_a_cycle_of_supplies_is_refused() -> None:
    found = problems(put("outputs.k0", {"driver": "plant", "line": 12, "safe_level": 0,
                                        "supplies": ["safety_contactor"]}),
                     put("outputs.safety_contactor.supplies", ["heater", "h2_inlet_valve", "k0"]))
    assert any(e.key_path.endswith(".supplies") and "cycle" in e.message for e in found), found


def test_an_event_ring_too_small_for_the_interlocks_is_refused_naming_the_key() -> None:
    """The core keeps a reserve of rules + 8 slots for latched trips and core faults, at most half
    the ring: a 16-slot ring with this station's interlocks dropped latched trips (the core now
    refuses such a rule; the loader says it first, naming the key)."""
    found = problems(put("core.event_ring", 16))
    matching = [e for e in found if e.key_path == "core.event_ring"]
    assert matching and "2 * (interlocks + 8)" in matching[0].message, found
