"""Telemetry content from the real C core (sim driver, stepped tick by tick on the plant clock): every
sample counted, statistics equal to what was written, FAULT samples excluded and flagged, ring overflow
reported; event and state bodies from real core events and states, valid against their schemas."""

from __future__ import annotations

import json
import math
import pathlib
import random
from collections.abc import Iterator

import pytest

from edge.control.controller import ProcessEvent
from edge.core import Core, EventKind
from edge.spec.core import ChannelSpec, CoreSpec, DriverSpec, OutputSpec, RuleSpec
from edge.telemetry import envelope as E
from edge.telemetry import events, schemas
from edge.telemetry.aggregate import Aggregator, flag_names
from edge.telemetry.outbox import Priority
from edge.telemetry.state import StateTracker, state_body
from hil.regfile import RegisterFile

TICK_NS = 1_000_000
START_NS = 5_000_000_000   # a window boundary: windows are aligned on core time


def spec(path: pathlib.Path, sample_ring: int = 4096) -> CoreSpec:
    return CoreSpec(
        period_ms=1.0, sample_ring=sample_ring, reset_channel="reset_button",
        drivers=(DriverSpec("plant", "sim", {"path": str(path)}),),
        channels=(ChannelSpec("chamber_temp", "analog", "plant", 0, range_lo=-50, range_hi=1200),
                  ChannelSpec("chamber_pressure", "analog", "plant", 1, range_lo=0, range_hi=10),
                  ChannelSpec("reset_button", "digital", "plant", 0)),
        outputs=(OutputSpec("heater", "plant", 0, 0), OutputSpec("vent_valve", "plant", 1, 1)),
        rules=(RuleSpec("chamber_overpressure", "high", "chamber_pressure", 2.5, ("heater", "vent_valve"),
                        hysteresis=0.1),),
    )


@pytest.fixture
def rig(tmp_path: pathlib.Path) -> Iterator[tuple[RegisterFile, Core]]:
    path = tmp_path / "plant.regs"
    regs = RegisterFile.create(path)
    regs.use_plant_clock(start_ns=START_NS - TICK_NS)
    core = Core(spec(path))
    try:
        yield regs, core
    finally:
        core.close()
        regs.close()


def tick(regs: RegisterFile, core: Core, temp: float, pressure: float, fault: bool = False) -> None:
    regs.set_ai(0, temp)
    regs.set_ai(1, pressure, fault=fault)
    regs.advance(TICK_NS)
    core.run_ticks(1)


def test_every_sample_is_counted_and_the_statistics_are_those_written(rig: tuple[RegisterFile, Core]) -> None:
    regs, core = rig
    agg = Aggregator.for_core(core, window_s=1.0)
    rnd = random.Random(7)
    written: list[tuple[float, float, bool]] = []
    windows = []
    for i in range(2500):
        temp, pressure = rnd.uniform(20.0, 900.0), rnd.uniform(0.5, 2.0)
        fault = i % 97 == 5
        written.append((temp, pressure, fault))
        tick(regs, core, temp, pressure, fault)
        if i % 300 == 299:            # drained now and then, as the telemetry thread does
            windows += agg.drain(core)
    windows += agg.drain(core)
    last = agg.flush()
    assert last is not None
    windows.append(last)
    assert [w["window"]["samples"] for w in windows] == [1000, 1000, 500]
    assert sum(w["window"]["samples"] for w in windows) == 2500 == core.stats().ticks
    for n, w in enumerate(windows):
        part = written[n * 1000:(n + 1) * 1000]
        assert w["window"]["start_ns"] == START_NS + n * 1_000_000_000
        assert w["window"]["ticks_missed"] == 0
        temp = w["channels"]["chamber_temp"]
        temps = [t for t, _, _ in part]
        assert temp["count"] == temp["valid"] == len(part)
        assert temp["min"] == min(temps) and temp["max"] == max(temps) and temp["last"] == temps[-1]
        assert temp["mean"] == pytest.approx(math.fsum(temps) / len(temps), rel=1e-12)
        assert temp["status"] == []
        pres = w["channels"]["chamber_pressure"]
        good = [p for _, p, f in part if not f]
        assert pres["count"] == len(part) and pres["valid"] == len(good) < len(part)
        assert pres["min"] == min(good) and pres["max"] == max(good)
        assert pres["mean"] == pytest.approx(math.fsum(good) / len(good), rel=1e-12)
        assert pres["status"] == ["FAULT"], "a fault in the window shows, though the last sample is fine"
        body = E.build(site="s", station="st", boot_id="b", stream="telemetry", seq=n + 1, created_ns=0, body=w)
        assert schemas.errors(json.loads(body), "telemetry.json") == []


def test_a_window_without_a_number_has_null_statistics(rig: tuple[RegisterFile, Core]) -> None:
    regs, core = rig
    agg = Aggregator.for_core(core, window_s=0.05)
    for _ in range(60):
        tick(regs, core, 500.0, 1.0, fault=True)
    (w,) = agg.drain(core)
    pres = w["channels"]["chamber_pressure"]
    assert pres == {"last": None, "min": None, "max": None, "mean": None, "count": 50, "valid": 0,
                    "status": ["FAULT"]}


def test_samples_the_ring_lost_are_reported_as_missed_ticks(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "plant.regs"
    with RegisterFile.create(path) as regs:
        regs.use_plant_clock(start_ns=START_NS - TICK_NS)
        core = Core(spec(path, sample_ring=16))
        try:
            agg = Aggregator.for_core(core, window_s=1.0)
            for i in range(200):
                tick(regs, core, 100.0 + i, 1.0)
                if i < 20:
                    agg.drain(core)    # then the consumer stalls and the ring overflows
            bodies = agg.drain(core)       # the ring kept the oldest; the newest were lost
            tick(regs, core, 0.0, 1.0)      # the next sample shows the hole
            bodies += agg.drain(core)
            last = agg.flush()
            assert not bodies and last is not None
            lost = core.stats().samples_lost
            assert lost > 0
            assert last["window"]["ticks_missed"] == lost
            assert last["window"]["samples"] + lost == 201
        finally:
            core.close()


def test_window_must_be_sensible() -> None:
    for bad in (0, -1, 1e9, True, "1"):
        with pytest.raises(ValueError, match="telemetry window"):
            Aggregator(["a"], window_s=bad)  # type: ignore[arg-type]


def test_flag_names() -> None:
    assert flag_names(0) == [] and flag_names(1 | 4) == ["FAULT", "STALE"] and flag_names(15) == [
        "FAULT", "RANGE", "STALE", "NODATA"]


# ---- events and state ---------------------------------------------------------------------------

def _valid_event(draft: events.EventDraft) -> dict[str, object]:
    doc = json.loads(E.build(site="s", station="st", boot_id="b", stream="event", seq=1, created_ns=0,
                             body=draft.body))
    assert schemas.errors(doc, "event.json") == [], draft.body
    return draft.body


def test_every_core_event_kind_has_a_mapping() -> None:
    assert set(events.CORE_EVENTS) == set(EventKind)


def test_a_real_trip_and_reset_refusal_become_valid_events_with_alarm_priority(rig: tuple[RegisterFile, Core]) -> None:
    regs, core = rig
    for _ in range(3):
        tick(regs, core, 300.0, 1.0)
    tick(regs, core, 300.0, 2.8)            # over pressure: trips, latched
    core.drain_events()
    with pytest.raises(Exception, match="chamber_overpressure"):
        core.reset()                        # the condition persists: refused
    got = {e.kind: events.core_event(e) for e in core.drain_events()}
    tick(regs, core, 300.0, 2.8)
    trip_events = [events.core_event(e) for e in core.drain_events()]
    drafts = list(got.values()) + trip_events
    for d in drafts:
        _valid_event(d)
    assert EventKind.RESET_REFUSED in got
    assert got[EventKind.RESET_REFUSED].body["kind"] == "reset_refused"


def test_trip_event_fields(rig: tuple[RegisterFile, Core]) -> None:
    regs, core = rig
    core.drain_events()
    for _ in range(2):
        tick(regs, core, 300.0, 1.0)
    tick(regs, core, 300.0, 2.8)
    trips = [events.core_event(e) for e in core.drain_events() if e.kind is EventKind.TRIP]
    assert len(trips) == 1
    body = _valid_event(trips[0])
    assert trips[0].priority is Priority.ALARM
    assert body["rule"] == "chamber_overpressure" and body["first_out"] is True
    assert body["value"] == pytest.approx(2.8) and body["threshold"] == 2.5 and body["severity"] == "critical"


@pytest.mark.parametrize(("event", "kind", "priority"), [
    (ProcessEvent(1.0, "batch", "batch b1 started: hd", {"batch": {"id": "b1", "recipe": "hd"}}), "batch",
     Priority.EVENT),
    (ProcessEvent(2.0, "phase", "purge -> h2", {"phase": "h2", "previous": "purge", "reason": "done"}), "phase",
     Priority.EVENT),
    (ProcessEvent(3.0, "trip", "interlock x tripped", {"rule": "chamber_overpressure", "output": None,
                                                      "first_out": True}), "trip", Priority.ALARM),
    (ProcessEvent(3.5, "core", "heater dropped", {"rule": None, "output": "heater", "first_out": False}), "core",
     Priority.ALARM),
    (ProcessEvent(4.0, "refused", "h2 refused: permissive", {"output": "h2_inlet_valve"}), "output_refused",
     Priority.EVENT),
    (ProcessEvent(5.0, "alarm", "too hot", {"alarm": "chamber_hot", "state": "raised", "severity": "critical"}),
     "alarm", Priority.ALARM),
    (ProcessEvent(6.0, "operator", "hold: door", {}), "operator_action", Priority.EVENT),
    (ProcessEvent(7.0, "recovery", "resumed", {"outage_s": math.inf, "batch": "b1"}), "recovery", Priority.EVENT),
    (ProcessEvent(8.0, "teleport", "a kind from a newer controller", {"x": object()}), "other", Priority.EVENT),
    (ProcessEvent(9.0, "connection", "gauge vacuum_gauge: could not open port /dev/x: No such file or directory",
                  {"device": "gauge vacuum_gauge", "port": "/dev/x", "change": "cannot_open",
                   "cause": "No such file or directory"}), "connection", Priority.EVENT),
])
def test_every_process_event_kind_maps_to_a_valid_event(event: ProcessEvent, kind: str, priority: Priority) -> None:
    draft = events.process_event(event)
    body = _valid_event(draft)
    assert body["kind"] == kind and draft.priority is priority
    assert body["message"] == event.message


def test_process_event_details_land_in_their_fields() -> None:
    alarm = events.process_event(ProcessEvent(5.0, "alarm", "hot", {"alarm": "chamber_hot", "state": "raised",
                                                                     "severity": "critical"})).body
    assert (alarm["alarm"], alarm["alarm_event"], alarm["severity"]) == ("chamber_hot", "raised", "critical")
    rec = events.process_event(ProcessEvent(7.0, "recovery", "r", {"outage_s": math.inf, "batch": "b1"})).body
    assert rec["batch_id"] == "b1" and rec["data"] == {"outage_s": None}, "infinity is not JSON: null"
    other = events.process_event(ProcessEvent(8.0, "teleport", "m", {})).body
    assert other["data"] == {"original_kind": "teleport"}
    down = events.process_event(ProcessEvent(9.0, "connection", "m", {"change": "lost", "cause": "EIO"})).body
    up = events.process_event(ProcessEvent(9.5, "connection", "m", {"change": "reopened"})).body
    assert (down["source"], down["severity"], up["severity"]) == ("devices", "warning", "info")
    assert down["data"] == {"change": "lost", "cause": "EIO"}


def test_state_body_from_a_real_core_and_only_on_change(rig: tuple[RegisterFile, Core]) -> None:
    regs, core = rig
    tick(regs, core, 20.0, 1.0)
    tracker = StateTracker()
    first = tracker.update(state_body(core=core, sequencer=None, batch={}, alarms=None, remote_reset=False))
    assert first is not None and first["run"] == "idle" and first["interlocks"]["tripped"] == []
    assert tracker.update(state_body(core=core, sequencer=None, batch={}, alarms=None, remote_reset=False)) is None
    tick(regs, core, 20.0, 2.9)
    tripped = tracker.update(state_body(core=core, sequencer=None, batch={}, alarms=None, remote_reset=False))
    assert tripped is not None
    assert tripped["interlocks"] == {"tripped": ["chamber_overpressure"], "resettable": [],
                                     "first_out": "chamber_overpressure"}
    assert tripped["outputs"]["vent_valve"] == {"level": 1, "requested": False, "forced": True}
    doc = json.loads(E.build(site="s", station="st", boot_id="b", stream="state", seq=2, created_ns=0, body=tripped))
    assert schemas.errors(doc, "state.json") == []
