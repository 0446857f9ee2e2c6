"""Issue 13's layers of defence through the spec and the binding: discrepancy and agree rules from a
station file, a contactor added to every rule that cuts what it supplies, the watchdog proof test on a
lockstep core, the dead-man fed by the scan thread only, and remote resets refused by the core itself."""

from __future__ import annotations

import dataclasses
import pathlib
import threading
from typing import Any

import pytest

from edge.core import Core, CoreError, OutputRefused, ResetRefused
from edge.spec.core import RuleSpec
from edge.spec.station import Station, load_station
from hil.regfile import RegisterFile
from tests.test_config import SOURCE, drop, loads, problems, put

ROOT = pathlib.Path(__file__).resolve().parent.parent
HD = ROOT / "stations" / "hd_reactor_sim.toml"


def _rule(station: Station, name: str) -> RuleSpec:
    return next(r for r in station.core.rules if r.name == name)


# ---------------------------------------------------------------- the station file


def test_hd_station_declares_feedback_contactor_and_proof() -> None:
    station = load_station(HD)
    core = station.core
    assert (core.watchdog_feedback, core.allow_remote_reset) == ("watchdog_relay_ok", False)
    assert core.max_tick_gap_ms > 0
    heater_fb = _rule(station, "heater_feedback")
    assert (heater_fb.kind, heater_fb.output, heater_fb.channel, heater_fb.threshold) == \
        ("discrepancy", "heater", "heater_current", 5.0)
    agree = _rule(station, "chamber_tc_disagree")
    assert (agree.kind, agree.channel, agree.channel2) == ("agree", "chamber_temp", "chamber_temp_safety")
    contactor = next(o for o in core.outputs if o.name == "safety_contactor")
    assert contactor.supplies == ("heater", "h2_inlet_valve") and contactor.safe_level == 0
    # every rule cutting the heater or the H2 valve opens K1 too; the dead-man's "all" already does
    for rule in core.rules:
        if {"heater", "h2_inlet_valve"} & set(rule.action):
            assert "safety_contactor" in rule.action, rule.name


def test_a_rule_not_cutting_a_supplied_output_leaves_the_contactor() -> None:
    station = loads(put("interlocks.estop.action", ["vent_valve"]))
    assert _rule(station, "estop").action == ("vent_valve",)


BAD = [
    ("interlocks.heater_feedback.output", "missing", drop("interlocks.heater_feedback.output")),
    ("interlocks.heater_feedback.output", "watchdog line", put("interlocks.heater_feedback.output", "watchdog_line")),
    ("interlocks.heater_feedback.output", "unknown output", put("interlocks.heater_feedback.output", "heatr")),
    ("interlocks.heater_feedback.threshold", "outside", put("interlocks.heater_feedback.threshold", 80.0)),
    ("interlocks.contactor_feedback.threshold", "digital", put("interlocks.contactor_feedback.threshold", 0.5)),
    ("interlocks.chamber_tc_disagree.channel2", "same channel",
     put("interlocks.chamber_tc_disagree.channel2", "chamber_temp")),
    ("interlocks.chamber_tc_disagree.channel2", "digital",
     put("interlocks.chamber_tc_disagree.channel2", "lid_closed")),
    ("interlocks.chamber_tc_disagree.threshold", "above 0", put("interlocks.chamber_tc_disagree.threshold", 0.0)),
    ("interlocks.chamber_overtemp.output", "", put("interlocks.chamber_overtemp.output", "heater")),
    ("outputs.safety_contactor.supplies", "safe_level = 0", put("outputs.safety_contactor.safe_level", 1)),
    ("outputs.safety_contactor.supplies", "unknown output", put("outputs.safety_contactor.supplies", ["heatr"])),
    ("outputs.safety_contactor.supplies", "itself", put("outputs.safety_contactor.supplies", ["safety_contactor"])),
    ("core.watchdog_feedback", "digital", put("core.watchdog_feedback", "chamber_temp")),
    ("core.watchdog_feedback", "watchdog_output", drop("core.watchdog_output")),
    ("core.max_tick_gap_ms", "shorter than one sampler period", put("core.max_tick_gap_ms", 0.5)),
    ("interlocks.lid_open.local_reset_only", "true or false", put("interlocks.lid_open.local_reset_only", "yes")),
]


@pytest.mark.parametrize("key_path, fragment, edit", BAD, ids=[f"{b[0]}:{b[1]}" for b in BAD])
def test_bad_layer_keys_are_refused_naming_the_key(key_path: str, fragment: str, edit: object) -> None:
    found = problems(edit)  # type: ignore[arg-type]
    listing = "\n".join(map(str, found))
    matching = [e for e in found if e.key_path == key_path]
    assert matching and any(fragment in e.message for e in matching), listing
    assert all(e.source == SOURCE for e in found)


# ---------------------------------------------------------------- the binding, on a lockstep core


class Rig:
    """The HD station's core stepped tick by tick; the test drives the register file like a plant."""

    def __init__(self, tmp: pathlib.Path, **core_changes: Any) -> None:
        station = load_station(HD)
        path = tmp / "plant.regs"
        self.regs = RegisterFile.create(path)
        self.regs.use_plant_clock(start_ns=1_000_000_000)
        drivers = tuple(dataclasses.replace(d, params={**d.params, "path": str(path)}) for d in station.core.drivers)
        keep = {"heater_feedback", "contactor_feedback", "estop", "controller_deadman"}
        rules = tuple(r for r in station.core.rules if r.name in keep)   # the rest would trip on a blank rig
        self.spec = dataclasses.replace(station.core, drivers=drivers, latch_file=None,
                                        **{"rules": rules, **core_changes})
        self.inputs = {c.name: c for c in self.spec.channels}
        self.regs.set_di(self.inputs["estop_ok"].input, True)
        self.regs.set_ai(self.inputs["heater_current"].input, 4.0)      # 4 mA: 0 A
        self.lines = {o.name: o.line for o in self.spec.outputs}
        self.core = Core(self.spec)
        self.t_ns = 1_000_000_000
        self.relay_alive = True
        self.beat = True                     # the scan feeds the dead-man every tick

    def di(self, name: str, level: bool) -> None:
        self.regs.set_di(self.inputs[name].input, level)

    def ms(self, n: int) -> None:
        for _ in range(n):
            line = self.regs.do(self.lines["watchdog_line"])
            self.t_ns += 1_000_000
            self.regs.regs.plant_ns = self.t_ns
            if self.beat:
                self.core.heartbeat()
            self.core.run_ticks(1)
            # the watchdog relay: energised while its line keeps changing
            self.di("watchdog_relay_ok", self.relay_alive and self.regs.do(self.lines["watchdog_line"]) != line)


def test_outputs_wait_for_the_watchdog_proof_and_a_welded_relay_faults(tmp_path: pathlib.Path) -> None:
    rig = Rig(tmp_path)
    rig.di("watchdog_relay_ok", True)       # reads energised before the line ever moved: not yet proved
    rig.relay_alive = False
    rig.regs.set_di(rig.inputs["watchdog_relay_ok"].input, True)
    rig.core.run_ticks(1)
    with pytest.raises(OutputRefused, match="watchdog proof test running"):
        rig.core.request_output("safety_contactor", 1)
    rig.relay_alive = True
    rig.ms(15)                               # dropped (line held), then toggled and picked up: 5 ticks each
    rig.core.request_output("safety_contactor", 1)
    rig.ms(2)
    assert rig.regs.do(rig.lines["safety_contactor"]) == 1
    rig.core.close()


def test_contactor_feedback_trips_and_opens_what_it_supplies(tmp_path: pathlib.Path) -> None:
    rig = Rig(tmp_path)
    rig.ms(15)                               # the watchdog relay proved (5 ticks dropped, 5 picked up)
    rig.core.request_output("safety_contactor", 1)
    rig.di("contactor_closed", True)
    rig.ms(100)
    assert not rig.core.rules()["contactor_feedback"].tripped
    debounce = int(next(r for r in rig.spec.rules if r.name == "contactor_feedback").debounce_ms)
    rig.di("contactor_closed", False)        # K1 drops out while commanded closed
    rig.ms(debounce - 1)
    assert not rig.core.rules()["contactor_feedback"].tripped
    rig.ms(3 + 2)                            # + 2 ticks: the station's majority vote of 5 on the aux contact
    assert rig.core.rules()["contactor_feedback"].tripped
    assert rig.core.outputs()["safety_contactor"].level == 0
    events = [e for e in rig.core.drain_events() if e.rule == "contactor_feedback" and e.kind.name == "TRIP"]
    assert events and "safety_contactor written 1 but contactor_closed" in events[0].detail
    rig.core.close()


def test_a_welded_contactor_with_a_chattering_aux_contact_still_trips(tmp_path: pathlib.Path) -> None:
    """K1 welded shut, its aux contact reading open one tick in 40: the station's majority vote on
    contactor_closed keeps the disagreement steady, so contactor_feedback trips after its debounce (the
    core restarts a discrepancy's count on every agreeing tick: without the vote it never tripped)."""
    rig = Rig(tmp_path)
    rig.ms(15)
    debounce = int(next(r for r in rig.spec.rules if r.name == "contactor_feedback").debounce_ms)
    for k in range(debounce + 200):          # K1 written open (never requested), yet its contact reads closed
        rig.di("contactor_closed", k % 40 != 0)
        rig.ms(1)
    assert rig.core.rules()["contactor_feedback"].tripped
    rig.core.close()


def test_a_helper_thread_cannot_feed_the_deadman(tmp_path: pathlib.Path) -> None:
    rig = Rig(tmp_path)
    rig.beat = False
    rig.ms(1)                                # this thread steps the core: it is the scan
    refused: list[BaseException] = []

    def helper() -> None:
        try:
            rig.core.heartbeat()
        except CoreError as e:
            refused.append(e)

    for _ in range(25):                      # 2.5 s: past the station's 2 s dead-man
        t = threading.Thread(target=helper)
        t.start()
        t.join()
        rig.ms(100)
    assert len(refused) == 25 and "scan thread" in str(refused[0])
    assert rig.core.rules()["controller_deadman"].tripped
    rig.core.heartbeat()                     # the scan itself may
    rig.core.close()


def test_remote_reset_is_refused_by_the_core(tmp_path: pathlib.Path) -> None:
    rig = Rig(tmp_path)
    rig.ms(5)
    rig.di("estop_ok", False)
    rig.ms(5)
    rig.di("estop_ok", True)
    rig.ms(5)
    assert rig.core.rules()["estop"].tripped
    with pytest.raises(ResetRefused, match="allow_remote_reset"):
        rig.core.reset(remote=True)           # the station says allow_remote_reset = false
    assert rig.core.rules()["estop"].tripped
    rig.core.reset()                          # local
    assert not rig.core.rules()["estop"].tripped
    rig.core.close()

    allowed = Rig(tmp_path / "..", allow_remote_reset=True,
                  rules=tuple(dataclasses.replace(r, local_reset_only=r.name == "estop") for r in rig.spec.rules))
    allowed.ms(5)
    allowed.di("estop_ok", False)
    allowed.ms(5)
    allowed.di("estop_ok", True)
    allowed.ms(5)
    with pytest.raises(ResetRefused, match="only be reset locally"):
        allowed.core.reset("estop", remote=True)
    allowed.core.reset("estop")
    allowed.core.close()
