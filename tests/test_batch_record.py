"""The batch record (edge.batch): counters to consumption, and one record per batch through a power loss.

The recorder runs here beside the real controller and the real C core on the lock-step rig (the plant
model steps with the core's clock); the meters are the plant's own totals read as a meter's counter would
show them (a uint32 H2 totaliser in 0.001 NL wraps). The Modbus path itself is tested in test_modbus.py
and the whole chain (plant meters on a pty, the controller process) in the HIL scenarios
hd_normal_batch, hd_meter_faults and hd_power_loss_batch_record.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from edge.batch.accounting import CounterTracker
from edge.batch.message import mqtt_end_body, mqtt_start_body
from edge.batch.record import (
    RECORD_FILE,
    TREND_FILE,
    BatchRecorder,
    RecordError,
    batch_dir,
    read_record,
)
from edge.control.controller import BatchRejected, Controller
from edge.spec.accounting import AccountingConfig
from edge.spec.reader import SpecError
from edge.spec.recipe_reader import load_recipe
from edge.spec.station import load_station
from edge.telemetry import schemas
from hil.lockstep import LockstepRig
from hil.plants.hd_reactor import HDReactor

ROOT = pathlib.Path(__file__).resolve().parent.parent
STATION = load_station(ROOT / "stations" / "hd_reactor_sim.toml")
RECIPE = load_recipe(ROOT / "recipes" / "hd_standard.toml")
EPOCH = 1_800_000_000.0
NL_PER_MOL = 22.414
WRAP_NL = 2**32 * 0.001
CONFIG = AccountingConfig(energy="heater_meter.energy_kwh", h2="h2_meter.total_nl", ar="ar_meter.total_nl",
                          heater_rated_kw={"heater": 12.0}, grid_kg_co2e_per_kwh=0.25, gap_s=600.0,
                          close_wait_s=600.0, free_volume_l=200.0,
                          max_rate_per_h={"energy": 18.0, "h2": 6000.0, "ar": 6000.0})


@dataclass
class Sample:          # what edge.devices.modbus.CounterSample carries
    instrument: str
    measurement: str
    t_ns: int
    value: float
    rollover: float | None


class Meters:
    """The plant's totals as the station's meters show them, read every ``every_s`` of plant time."""

    def __init__(self, plant: HDReactor, *, h2_start: float = 5000.0, every_s: float = 60.0) -> None:
        self.plant, self.h2_start, self.every_s = plant, h2_start, every_s
        self.silent: set[str] = set()
        self.reversed_ct = False        # the heater meter's CT fitted backwards: its import counter stands still
        self._next = -math.inf

    def read(self, now_ns: int) -> list[Sample]:
        if now_ns / 1e9 < self._next:
            return []
        self._next = now_ns / 1e9 + self.every_s
        s = self.plant.s
        kwh = 0.0 if self.reversed_ct else s.heater_j / 3.6e6
        out = [Sample("heater_meter", "energy_kwh", now_ns, 48_213.6 + kwh, None),
               Sample("h2_meter", "total_nl", now_ns, round((self.h2_start + s.h2_fed_mol * NL_PER_MOL) / 0.001)
                      % 2**32 * 0.001, WRAP_NL),
               Sample("ar_meter", "total_nl", now_ns, round((700.0 + s.ar_fed_mol * NL_PER_MOL) / 0.001)
                      % 2**32 * 0.001, WRAP_NL)]
        return [x for x in out if x.instrument not in self.silent]


@dataclass
class Station:
    rig: LockstepRig
    plant: HDReactor
    ctl: Controller
    recorder: BatchRecorder
    meters: Meters

    def scan(self) -> None:
        self.ctl.step()
        self.recorder.scan(self.ctl, self.meters.read(self.rig.core.now_ns()))


def controller(rig: LockstepRig, state: pathlib.Path) -> Controller:
    return Controller(rig.core, rig.station, state_path=state / "run-state.json",
                      wall_clock=lambda: EPOCH + rig.core.now_ns() / 1e9)


def recorder(state: pathlib.Path, config: AccountingConfig = CONFIG) -> BatchRecorder:
    return BatchRecorder(state, STATION, site="pilot-line", station_id="hd-01", config=config)


@pytest.fixture
def station(tmp_path: pathlib.Path) -> Iterator[Station]:
    plant = HDReactor()
    with LockstepRig(STATION, plant, dt_s=2.0) as rig:
        ctl = controller(rig, tmp_path)
        rig.step(ctl.step)
        yield Station(rig, plant, ctl, recorder(tmp_path), Meters(plant, h2_start=WRAP_NL - 400.0))


def run_batch(st: Station, batch_id: str = "hd-rec-1") -> dict[str, Any]:
    st.ctl.start_batch(RECIPE, batch_id=batch_id, operator="test", feed="EoL motor magnets", mass_in_kg=25.0)
    assert st.rig.run_until(lambda: st.recorder.current is not None and st.recorder.current["record"] == "end",
                            30 * 3600, st.scan)
    assert st.recorder.current is not None
    return st.recorder.current


def test_a_whole_batch_is_recorded_and_its_figures_are_the_plants(station: Station) -> None:
    st = station
    body = run_batch(st)
    acc = body["accounting"]
    meters = acc["meters"]
    assert body["record"] == "end" and body["revision"] == 1 and body["outcome"] == "done"
    assert [p["phase"] for p in body["phases"]] == ["load_check", "leak_test", "purge", "h2_admission", "absorption",
                                                    "degassing", "cooling", "unload"]
    assert sum(p["duration_s"] for p in body["phases"]) == pytest.approx(body["duration_s"], abs=1.0)
    # energy: the meter's counter (float32 not modelled here) equals the plant's joules
    assert meters["energy"]["complete"] and meters["energy"]["value"] == pytest.approx(
        st.plant.s.heater_j / 3.6e6, rel=1e-6)
    # H2: the totaliser wrapped once; the difference across the wrap is still the plant's H2 fed
    assert meters["h2"]["rollovers"] == 1 and meters["h2"]["complete"]
    assert meters["h2"]["value"] == pytest.approx(st.plant.s.h2_fed_mol * NL_PER_MOL, abs=0.002)
    assert meters["ar"]["value"] == pytest.approx(st.plant.s.ar_fed_mol * NL_PER_MOL, abs=0.002)
    assert acc["complete"] is True
    # the duty model is a cross-check of the metered energy, not a copy of it
    assert acc["heater_model_kwh"] == pytest.approx(meters["energy"]["value"], rel=0.03)
    assert acc["kg_co2e"] == pytest.approx(meters["energy"]["value"] * 0.25)
    assert acc["per_kg"]["kwh"] == pytest.approx(meters["energy"]["value"] / 25.0)
    assert acc["per_kg"]["nl_h2"] == pytest.approx(meters["h2"]["value"] / 25.0)
    # the H2 the charge took up, estimated at the end of absorption, near the plant's capacity
    assert acc["h2_absorbed_nl"] == pytest.approx(st.plant.x_max() * NL_PER_MOL, rel=0.05)
    # on disk: the same record, checked, with a trend for the report
    folder = batch_dir(st.recorder.state_dir, "hd-rec-1")
    doc = read_record(folder)
    assert doc["body"] == body
    rows = (folder / TREND_FILE).read_text().splitlines()
    assert rows[0].startswith("unix_s,setpoint_c,heater_duty,") and len(rows) > 1000
    assert not list(folder.glob(".*.tmp"))
    # on MQTT: both records valid against the schema, the accounting flat
    for kind, msg in (("start", mqtt_start_body(body)), ("end", mqtt_end_body(body))):
        envelope = {"schema": "https://reeproduce.eu/schemas/reedge/v1/batch.json", "schema_version": "1.1",
                    "site": "pilot-line", "station": "hd-01", "boot_id": "0" * 32, "stream": "batch", "seq": 1,
                    "ts": "2027-01-15T08:00:00.000Z", "body": msg}
        assert schemas.errors(envelope, "batch.json") == [], kind
    assert mqtt_end_body(body)["accounting"]["energy_kwh"] == meters["energy"]["value"]
    check_quality(st, body, folder / TREND_FILE)


def check_quality(st: Station, body: dict[str, Any], trend: pathlib.Path) -> None:
    """The record's quality figures are what the sequence measured (as its phase changes said, to 3 digits),
    and the soak time what the trend shows: control reading within 5 degC of a setpoint held constant
    (9730 s in the record, 9710 s in the trend: 3600 s at 350 degC, 6110 s at 600 degC)."""
    q = body["quality"]
    reasons = {e.data["previous"]: e.data["reason"] for e in st.ctl.events if e.kind == "phase"}
    assert f"{q['leak_rise_mbar_per_min']:.3g} mbar/min" in reasons["leak_test"]
    assert f"O2 {q['o2_after_purge_pct']:.3g} %" in reasons["purge"]
    assert f"after {q['h2_top_ups']} top-up(s)" in reasons["absorption"] and q["h2_top_ups"] >= 1
    assert f"vacuum {q['final_vacuum_mbar']:.3g} mbar" in reasons["degassing"]
    assert q["interlock_trips"] == 0 == sum(e["kind"] == "trip" for e in body["events"])
    rows = [r.split(",") for r in trend.read_text().splitlines()[1:]]
    col = trend.read_text().splitlines()[0].split(",").index("chamber_temp")
    soak = 0.0
    for a, b in itertools.pairwise(rows):
        # (above 100 degC: the degassing's evacuate segment holds the room-temperature start, no soak)
        if a[1] and a[1] == b[1] and float(a[1]) > 100.0 and all(abs(float(r[col]) - float(r[1])) <= 5.0
                                                                 for r in (a, b)):
            soak += float(b[0]) - float(a[0])
    # the 600 degC dwell alone is 60 min; the record counts scan by scan (2 s), the trend every 10 s
    assert q["soak_in_band_s"] >= 3600.0 and q["soak_in_band_s"] == pytest.approx(soak, abs=60.0)


def test_the_first_phase_starts_when_the_batch_starts(tmp_path: pathlib.Path) -> None:
    """As on a running station: time passes between the clocks' reads (here 50 ms at each wall-clock read;
    wall and core are one clock, as with `reedge run` on the HIL plant). The start and the first phase are one
    instant and must be one time in the record (the first phase was put 50 ms before "Started")."""
    plant = HDReactor()
    with LockstepRig(STATION, plant, dt_s=2.0) as rig:
        def wall_clock() -> float:
            rig.regs.advance(50_000_000)
            return EPOCH + rig.core.now_ns() / 1e9

        ctl = Controller(rig.core, rig.station, state_path=tmp_path / "run-state.json", wall_clock=wall_clock)
        rig.step(ctl.step)
        rec = recorder(tmp_path)
        ctl.start_batch(RECIPE, batch_id="hd-clock", mass_in_kg=25.0)
        for _ in range(3):
            rig.step(ctl.step)
            rec.scan(ctl)
        assert rec.current is not None
        phases = rec.current["phases"]
        assert [p["phase"] for p in phases] == ["load_check", "leak_test"]
        assert phases[0]["started"] == rec.current["started"]
        assert phases[1]["started"] == phases[0]["ended"] > phases[0]["started"]


def test_a_power_loss_continues_the_same_record(station: Station, tmp_path: pathlib.Path) -> None:
    st = station
    st.ctl.start_batch(RECIPE, batch_id="hd-rec-2", operator="test", mass_in_kg=25.0)
    assert st.rig.run_until(lambda: st.ctl.sequencer is not None and st.ctl.sequencer.phase == "degassing",
                            30 * 3600, st.scan)
    st.rig.run_until(lambda: False, 1800, st.scan)           # half an hour into degassing
    # the controller dies (no close(), no last save) and a new one starts on the same state dir: the core
    # of the lock-step rig runs on (a real power loss, with the outage, is the HIL scenario
    # hd_power_loss_batch_record)
    ctl = controller(st.rig, tmp_path)
    rec = recorder(tmp_path)
    assert ctl.recover() is not None
    st2 = Station(st.rig, st.plant, ctl, rec, st.meters)
    ctl.resume()                                              # the recipe's power-fail strategy holds
    assert st.rig.run_until(lambda: rec.current is not None and rec.current["record"] == "end", 30 * 3600, st2.scan)
    body = rec.current
    assert body is not None and body["outcome"] == "done"
    assert len(body["interruptions"]) == 1 and body["interruptions"][0]["outage_s"] >= 0.0
    assert sorted(p.name for p in (tmp_path / "batches").iterdir()) == ["hd-rec-2"]
    # one record, whole: the degassing interrupted is closed at the outage and starts again after it
    assert [p["phase"] for p in body["phases"]].count("degassing") == 2
    assert body["accounting"]["meters"]["energy"]["value"] == pytest.approx(st.plant.s.heater_j / 3.6e6, rel=1e-6)
    assert body["accounting"]["meters"]["h2"]["value"] == pytest.approx(st.plant.s.h2_fed_mol * NL_PER_MOL,
                                                                        abs=0.002)
    assert body["accounting"]["complete"] is True


def test_a_meter_silent_until_the_end_leaves_its_figure_incomplete(station: Station) -> None:
    st = station
    st.ctl.start_batch(RECIPE, batch_id="hd-rec-3", mass_in_kg=25.0)
    assert st.rig.run_until(lambda: st.ctl.sequencer is not None and st.ctl.sequencer.phase == "absorption",
                            30 * 3600, st.scan)
    st.meters.silent.add("ar_meter")
    body = run_batch_rest(st)
    ar = body["accounting"]["meters"]["ar"]
    assert ar["complete"] is False and body["accounting"]["complete"] is False
    assert ar["value"] < st.plant.s.ar_fed_mol * NL_PER_MOL - 1.0       # lower than the truth, and it says so
    assert any("no reading at or after the end" in n for n in ar["notes"])
    assert ar["gaps"] and ar["gaps"][-1]["to"] == body["ended"]
    assert body["accounting"]["meters"]["energy"]["complete"] is True
    assert mqtt_end_body(body)["accounting"]["ar_complete"] is False


def test_metered_energy_far_below_the_heater_model_is_a_meter_fault(station: Station) -> None:
    st = station
    st.meters.reversed_ct = True
    st.ctl.start_batch(RECIPE, batch_id="hd-rec-ct", mass_in_kg=25.0)
    assert st.rig.run_until(lambda: st.ctl.heater_model.kwh >= 2.0, 30 * 3600, st.scan)
    st.ctl.abort("test: enough heat to judge the meter")
    body = run_batch_rest(st)
    acc, energy = body["accounting"], body["accounting"]["meters"]["energy"]
    assert energy["value"] == 0.0 and acc["heater_model_kwh"] >= 2.0
    assert energy["complete"] is False and acc["complete"] is False     # never "complete" at 0 kWh
    assert any(n.startswith("meter fault: metered 0 kWh is below 50% of the heater model") for n in energy["notes"])
    assert mqtt_end_body(body)["accounting"]["energy_complete"] is False


def run_batch_rest(st: Station) -> dict[str, Any]:
    assert st.rig.run_until(lambda: st.recorder.current is not None and st.recorder.current["record"] == "end",
                            30 * 3600, st.scan)
    assert st.recorder.current is not None
    return st.recorder.current


def test_mass_out_amends_the_finished_record_and_bad_masses_change_nothing(station: Station) -> None:
    st = station
    st.ctl.start_batch(RECIPE, batch_id="hd-rec-4", mass_in_kg=25.0)
    st.ctl.abort("test")
    body = run_batch_rest(st)
    assert body["revision"] == 1 and body["outcome"] == "aborted"
    for bad in (-1.0, 0.0, math.nan, math.inf, "25", True, 2e5):
        with pytest.raises(ValueError, match="mass out"):
            st.recorder.set_mass_out(bad, st.ctl.wall_clock())  # type: ignore[arg-type]
    assert st.recorder.current is not None and st.recorder.current["revision"] == 1
    st.recorder.set_mass_out(25.1, st.ctl.wall_clock())
    amended = read_record(batch_dir(st.recorder.state_dir, "hd-rec-4"))["body"]
    assert amended["revision"] == 2 and amended["product"] == {"mass_out_kg": 25.1, "yield_pct": 100.4}
    with pytest.raises(BatchRejected, match="mass in"):
        st.ctl.start_batch(RECIPE, batch_id="hd-rec-5", mass_in_kg=-3.0)
    with pytest.raises(BatchRejected, match="batch id"):
        st.ctl.start_batch(RECIPE, batch_id="../escape")


def test_a_damaged_record_is_detected_and_kept_aside(station: Station) -> None:
    st = station
    st.ctl.start_batch(RECIPE, batch_id="hd-rec-6", mass_in_kg=25.0)
    st.rig.run_until(lambda: False, 120, st.scan)
    folder = batch_dir(st.recorder.state_dir, "hd-rec-6")
    path = folder / RECORD_FILE
    doc = json.loads(path.read_text())
    doc["body"]["operator"] = "someone else"                 # edited by hand: the checksum no longer matches
    path.write_text(json.dumps(doc))
    with pytest.raises(RecordError, match="damaged"):
        read_record(folder)
    rec = recorder(st.recorder.state_dir)
    rec.scan(st.ctl)
    assert len(list(folder.glob(f"{RECORD_FILE}.damaged-*"))) == 1     # kept for the investigation
    assert read_record(folder)["body"]["operator"] == ""               # a new record, not the edited one
    with pytest.raises(RecordError, match="no such batch folder"):
        read_record(folder.parent / "nothing-here")
    (folder.parent / "empty").mkdir()
    with pytest.raises(RecordError, match="no batch record"):
        read_record(folder.parent / "empty")


# ---- the counter arithmetic ----

def tracker(**kw: float) -> CounterTracker:
    t = CounterTracker("h2", "m.total_nl", "NL", gap_s=kw.pop("gap_s", 100.0), max_rate=kw.pop("max_rate", 10.0))
    t.open_window(kw.pop("start", 0.0))
    return t


def test_counter_roll_over_reset_jump_and_noise() -> None:
    t = tracker()
    for time_s, value in ((0, WRAP_NL - 5.0), (10, WRAP_NL - 1.0), (20, 3.0), (30, 2.9999999)):
        t.add(time_s, value, WRAP_NL)
    assert t.rollovers == 1 and t.total == pytest.approx(8.0) and not t.broken    # float noise is not a reset
    t.add(40, 1.0, WRAP_NL)          # a fall from the lower half: no roll-over explains it, a reset
    assert t.broken and "reset" in t.notes[-1] and t.total == pytest.approx(8.0)
    t.add(50, 5000.0, WRAP_NL)       # 4999 NL in 10 s at most 10 NL/s: a glitch, left out
    assert "jumped" in t.notes[-1] and t.total == pytest.approx(8.0)
    t.add(45, 9999.0, WRAP_NL)       # a reading stamped before the last one: the clock went back
    assert "clock went backwards" in t.notes[-1] and t.last is not None and t.last.value == 9999.0
    q = t.quantity(0.0, 45.0)
    assert q["complete"] is False and q["value"] == pytest.approx(8.0) and q["rollovers"] == 1


def test_without_a_rate_a_reset_is_never_taken_for_a_roll_over() -> None:
    t = tracker(max_rate=math.inf)
    t.add(0.0, 1240.0, WRAP_NL)
    t.add(60.0, 0.0, WRAP_NL)        # the totaliser was cleared: not 4.29 million NL
    assert t.rollovers == 0 and t.total == 0.0 and t.broken and "reset" in t.notes[0]


def test_a_counter_that_may_have_wrapped_twice_is_incomplete() -> None:
    t = tracker(max_rate=10.0, gap_s=5000.0)
    t.add(0.0, 100.0, 6553.6)        # a uint16 totaliser in 0.1 NL: it wraps at 6553.6 NL
    t.add(1000.0, 200.0, 6553.6)     # 1000 s at up to 10 NL/s: 100 NL, or 6653.6, or 13207.2...
    assert t.broken and "more than once" in t.notes[0]


def test_a_device_fault_in_the_batch_makes_the_figure_incomplete() -> None:
    t = tracker()
    t.add(0.0, 1.0)
    t.add(10.0, math.nan)            # the meter's status word said fault: its count then is not trusted
    t.add(20.0, 2.0)
    q = t.quantity(0.0, 20.0)
    assert q["value"] == 1.0 and q["complete"] is False and "device fault" in q["notes"][0]


def test_a_fault_just_before_the_start_spoils_the_share_that_counts() -> None:
    t = CounterTracker("h2", "m.total_nl", "NL", gap_s=100.0, max_rate=10.0)
    t.add(0.0, 100.0)
    t.add(5.0, math.nan)             # a device fault before the batch, in the interval that straddles its start
    t.open_window(10.0)
    t.add(20.0, 150.0)
    assert t.total == pytest.approx(25.0) and t.quantity(10.0, None)["complete"] is False


def test_float_noise_is_neither_a_reset_nor_counted_twice() -> None:
    t = tracker()
    base = 4_000_000.0               # a float32 totaliser near 4 million NL re-reads a hair lower now and then
    for i, wobble in enumerate((0.0, -1.0, 0.0, -1.0, 0.0, -1.0, 0.0)):
        t.add(float(i), base + wobble)
    assert t.total == 0.0 and not t.broken


def test_counter_gaps_start_and_end() -> None:
    t = tracker(gap_s=100.0)
    t.add(500.0, 10.0)
    t.add(900.0, 20.0)               # 400 s without a reading: a gap the totaliser bridges
    q = t.quantity(t_start=0.0, t_end=900.0)
    assert q["value"] == 10.0 and q["gaps"] == [{"from": 500.0, "to": 900.0, "duration_s": 400.0}]
    assert q["complete"] is False and "after the start" in q["notes"][0]   # nothing read near the start
    t2 = tracker()
    t2.add(0.0, 1.0)
    t2.add(50.0, 2.0)
    assert t2.quantity(0.0, 50.0)["complete"] is True
    assert t2.quantity(0.0, 60.0)["complete"] is False      # the end reading is missing
    snap = json.loads(json.dumps(t.snapshot()))
    t3 = tracker()
    t3.restore(snap)
    assert t3.quantity(0.0, 900.0) == q
    assert tracker().quantity(0.0, 10.0)["value"] is None   # never read: unknown, not zero


def test_the_batch_takes_its_share_of_the_intervals_at_its_start_and_end() -> None:
    t = CounterTracker("energy", "m.energy_kwh", "kWh", gap_s=100.0, max_rate=1.0)
    t.add(0.0, 1.0)
    t.add(950.0, 7.0)                # before the batch: nothing counts
    t.open_window(1000.0)
    assert t.first is not None and t.first.value == 7.0 and t.total == 0.0
    t.add(1050.0, 8.0)               # half of this interval is the batch's
    assert t.total == pytest.approx(0.5)
    t.close_window(1100.0)
    t.add(1150.0, 10.0)              # and half of this one
    assert t.total == pytest.approx(1.5) and not t.broken
    t.add(1200.0, 20.0)              # after the end: nothing
    assert t.total == pytest.approx(1.5)
    assert t.quantity(1000.0, 1100.0)["complete"] is True
    late = CounterTracker("energy", "m.energy_kwh", "kWh", gap_s=100.0, max_rate=1.0)
    late.add(0.0, 1.0)
    late.open_window(1000.0)          # the last reading is 1000 s before the start
    late.add(1100.0, 2.0)             # its split of 1100 s across the start is only an estimate
    assert late.broken and "across the batch's start" in late.notes[0]


# ---- the station file ----

def write_station(tmp_path: pathlib.Path, accounting: str) -> pathlib.Path:
    text = (ROOT / "stations" / "hd_reactor_sim.toml").read_text()
    head, _, rest = text.partition("\n[accounting]\n")
    _, _, tail = rest.partition("\n[limits]\n")
    path = tmp_path / "station.toml"
    path.write_text(f"{head}\n[accounting]\n{accounting}\n\n[limits]\n{tail}")
    return path


@pytest.mark.parametrize(("accounting", "where", "says"), [
    ('energy = "heater_metr.energy_kwh"', "accounting.energy", "heater_meter"),
    ('energy = "heater_meter.power_w"', "accounting.energy", "not a counter"),
    ('energy = "vacuum_gauge.pressure"', "accounting.energy", "no counters"),
    ('h2 = "h2_meter.totl_nl"', "accounting.h2", "total_nl"),
    ("heater_rated_kw = { vent_valve = 3.0 }", "accounting.heater_rated_kw.vent_valve", "control loop"),
    ("heater_rated_kw = { heater = -1.0 }", "accounting.heater_rated_kw.heater", "expected a number"),
    ("max_rate_per_h = { energi = 5.0 }", "accounting.max_rate_per_h.energi", "energy"),
    ("grid_kg_co2e_per_kwh = 50", "accounting.grid_kg_co2e_per_kwh", "from 0 to 10"),
    ("gap = 10", "accounting.gap", "gap_s"),
    ('free_volume_l = 200\npressure_channel = "chamber_presure"', "accounting.pressure_channel",
     "chamber_pressure"),
    ('energy = "heater_meter.energy_kwh"\nh2 = "heater_meter.energy_kwh"', "accounting.h2", "counts kWh"),
    ('h2 = "h2_meter.total_nl"\nar = "h2_meter.total_nl"', "accounting.ar", "already the h2 meter"),
    ('h2 = "h2_meter.total_nl"', "accounting.max_rate_per_h", "reset cannot be told from a roll-over"),
    ('energy = "heater_meter.energy_kwh"\ngap_s = 1', "accounting.gap_s", "less than three polls"),
    ('energy = "heater_meter.energy_kwh"\nclose_wait_s = 0.1', "accounting.close_wait_s", "less than one poll"),
])
def test_accounting_section_errors_name_the_key(tmp_path: pathlib.Path, accounting: str, where: str,
                                                says: str) -> None:
    with pytest.raises(SpecError) as err:
        load_station(write_station(tmp_path, accounting))
    text = str(err.value)
    assert where in text and says in text, text


def test_the_example_stations_account_their_meters() -> None:
    acc = STATION.accounting
    assert (acc.energy, acc.h2, acc.ar) == ("heater_meter.energy_kwh", "h2_meter.total_nl", "ar_meter.total_nl")
    sinter = load_station(ROOT / "stations" / "sintering_furnace_sim.toml").accounting
    assert sinter.energy == "heater_meter.energy_kwh" and sinter.h2 is None and dict(sinter.heater_rated_kw) == {
        "heater": 60.0}


def test_the_operator_records_the_mass_out_on_the_controllers_stdin(station: Station) -> None:
    from edge.app.stdin_commands import answer, read_line
    from edge.operator.execute import Operator
    from edge.operator.target import ControllerTarget

    st = station
    operator = Operator(ControllerTarget(st.ctl, ROOT / "recipes", st.recorder), allow_remote_reset=False)

    def execute(cmd: dict[str, object]) -> tuple[bool, str]:
        done = answer(operator, read_line(json.dumps(cmd)))
        return done.result == "accepted", done.message

    assert execute({"cmd": "record_mass", "mass_out_kg": 25.0})[0] is False   # no batch yet
    assert execute({"cmd": "hold"}) == (False, "no batch is running: nothing to hold")   # as over MQTT
    st.ctl.start_batch(RECIPE, batch_id="hd-rec-7", mass_in_kg=25.0)
    st.scan()
    ok, reason = execute({"cmd": "record_mass", "mass_out_kg": "heavy"})
    assert not ok and "mass out must be a number" in reason
    ok, reason = execute({"cmd": "record_mass", "batch_id": "hd-rec-0", "mass_out_kg": 24.0})
    assert not ok and "not this station's current batch" in reason
    assert st.recorder.body is not None and st.recorder.body["product"]["mass_out_kg"] is None   # nothing changed
    assert execute({"cmd": "record_mass", "mass_out_kg": 24.0}) == (
        True, "mass out 24 kg recorded for the current batch")
    assert st.recorder.body["product"] == {"mass_out_kg": 24.0, "yield_pct": 96.0}


def test_a_start_command_on_a_full_state_dir_is_answered_with_the_reason(station: Station,
                                                                          tmp_path: pathlib.Path) -> None:
    """Issue 16 item 4: the command's answer (MQTT's and stdin's, one operator path) says why; nothing started,
    no record folder made. The free-space reading is the seam (real full disks: tests/test_run_output.py)."""
    from edge.app.stdin_commands import answer, read_line
    from edge.files import room_problem
    from edge.operator.execute import Operator
    from edge.operator.target import ControllerTarget

    st = station
    st.ctl.storage_check = lambda: room_problem(tmp_path, free_bytes=lambda folder: 2 * 1024 * 1024)
    operator = Operator(ControllerTarget(st.ctl, ROOT / "recipes", st.recorder), allow_remote_reset=False)
    sha = hashlib.sha256((ROOT / "recipes" / "hd_standard.toml").read_bytes()).hexdigest()
    done = answer(operator, read_line(json.dumps({"cmd": "start", "recipe": "hd_standard", "recipe_sha256": sha,
                                                   "batch_id": "hd-full"})))
    assert (done.result, done.code) == ("rejected", "refused"), done
    assert done.message.startswith(f"the state dir {tmp_path} has 2.0 MiB free, a batch needs at least 16.0 MiB"), done
    st.scan()
    assert st.ctl.sequencer is None and not (tmp_path / "batches" / "hd-full").exists()


def test_a_finished_records_figures_are_fixed_at_its_end(station: Station, tmp_path: pathlib.Path) -> None:
    st = station
    st.ctl.batch_id_check = st.recorder.id_in_use
    st.ctl.start_batch(RECIPE, batch_id="hd-rec-8", mass_in_kg=25.0)
    st.rig.run_until(lambda: False, 600, st.scan)
    st.ctl.abort("test")
    end = copy.deepcopy(run_batch_rest(st))
    st.rig.run_until(lambda: False, 3600, st.scan)              # the meters go on counting after the end
    st.recorder.set_mass_out(24.0, st.ctl.wall_clock())
    amended = st.recorder.current
    assert amended is not None and amended["revision"] == 2 and amended["accounting"] == end["accounting"]
    # a restart after the end: the stored record is taken as it is, figures and all
    rec = recorder(tmp_path)
    rec.scan(st.ctl)
    assert rec.current is not None and rec.current["accounting"] == end["accounting"]
    rec.set_mass_out(24.5, st.ctl.wall_clock())
    assert rec.current["revision"] == 3 and rec.current["accounting"] == end["accounting"]
    # and the id is spent: a new batch must have its own
    with pytest.raises(BatchRejected, match="has a record already"):
        st.ctl.start_batch(RECIPE, batch_id="hd-rec-8")


def test_a_new_batch_before_the_last_ones_end_readings_finishes_that_record(station: Station) -> None:
    st = station
    st.ctl.start_batch(RECIPE, batch_id="hd-rec-9", mass_in_kg=25.0)
    assert st.rig.run_until(lambda: st.ctl.sequencer is not None and st.ctl.sequencer.phase == "unload",
                            30 * 3600, st.scan)
    st.meters.silent.update({"heater_meter", "h2_meter", "ar_meter"})      # no end readings come
    assert st.rig.run_until(lambda: st.recorder.closing, 3600, st.scan)
    st.recorder.take_published()
    st.ctl.start_batch(RECIPE, batch_id="hd-rec-10", mass_in_kg=25.0)
    st.scan()
    first = read_record(batch_dir(st.recorder.state_dir, "hd-rec-9"))["body"]
    # it finished "done" (its sequence did), its figures incomplete (no end readings), and it is published
    assert (first["record"], first["outcome"], first["reason"]) == ("end", "done", None)
    assert first["accounting"]["complete"] is False
    sent = st.recorder.take_published()
    assert [(kind, body["batch_id"]) for kind, body in sent] == [("end", "hd-rec-9"), ("start", "hd-rec-10")]
    assert st.recorder.body is not None and st.recorder.body["batch_id"] == "hd-rec-10"


def test_the_record_survives_a_disk_that_refuses_writes(station: Station, tmp_path: pathlib.Path) -> None:
    st = station
    said: list[str] = []
    st.recorder.say = said.append
    (tmp_path / "batches").write_text("not a folder")       # every write of the record fails
    st.ctl.start_batch(RECIPE, batch_id="hd-rec-11", mass_in_kg=25.0)
    st.rig.run_until(lambda: False, 600, st.scan)          # the control goes on: no exception out of scan()
    assert st.ctl.sequencer is not None and st.ctl.sequencer.running
    assert len([m for m in said if "NotADirectoryError" in m or "FileExistsError" in m]) == 1, said
    with pytest.raises(ValueError, match="could not be written"):
        st.recorder.set_mass_out(20.0, st.ctl.wall_clock())
    (tmp_path / "batches").unlink()                          # the disk is fixed
    st.rig.run_until(lambda: False, 600, st.scan)
    assert read_record(batch_dir(tmp_path, "hd-rec-11"))["body"]["record"] == "open"
    assert any("written again" in m for m in said)


def test_an_open_record_without_its_batch_is_closed_as_incomplete(station: Station, tmp_path: pathlib.Path) -> None:
    st = station
    st.ctl.start_batch(RECIPE, batch_id="hd-rec-12", mass_in_kg=25.0)
    st.rig.run_until(lambda: False, 600, st.scan)          # then the run state is lost: nobody recovers it
    ctl = controller(st.rig, tmp_path / "other")
    rec = recorder(tmp_path)
    assert rec.close_orphans(ctl) == ["hd-rec-12"]
    body = read_record(batch_dir(tmp_path, "hd-rec-12"))["body"]
    assert (body["record"], body["outcome"], body["accounting"]["complete"]) == ("end", "aborted", False)
    assert "run state was lost" in body["reason"]
    assert rec.close_orphans(ctl) == []                      # once


def test_a_meter_channel_must_outlive_two_polls(tmp_path: pathlib.Path) -> None:
    text = (ROOT / "stations" / "hd_reactor_sim.toml").read_text()
    slow = text.replace('poll_ms = 500\nchannels = { power_w = "heater_power" }',
                        'poll_ms = 4000\nchannels = { power_w = "heater_power" }')
    assert slow != text
    path = tmp_path / "station.toml"
    path.write_text(slow)
    with pytest.raises(SpecError, match=r"instruments\.heater_meter\.channels\.power_w: 'heater_power' has "
                                          r"max_age_ms 5000, less than two polls"):
        load_station(path)


def test_the_record_counts_nuisance_alarms_and_deviation_alarm_rests(station: Station) -> None:
    """Issue 16 item 18: each batch counts its nuisance alarms (chattering raises, fleeting clears) and the rests
    of its deviation alarms (the program asked for more than the plant follows), on disk and in the end record."""
    st = station
    st.ctl.start_batch(RECIPE, batch_id="hd-rec-n", operator="test", mass_in_kg=25.0)
    assert st.rig.run_until(lambda: st.recorder.body is not None, 600, st.scan)
    now = st.ctl.now_s()
    for state, flags in (("rested", {}), ("raised", {"nuisance": True}), ("cleared", {"nuisance": True}),
                         ("raised", {})):
        st.ctl.emit(now, "alarm", "m", alarm="chamber_temp_deviation", state=state, severity="warning", **flags)
    st.rig.run_until(lambda: False, 10, st.scan)
    body = st.recorder.body
    assert body is not None
    assert (body["quality"]["nuisance_alarms"], body["quality"]["deviation_alarm_rests"]) == (2, 1)
    st.recorder.close(st.ctl)                           # at stop: on disk, for the next start to continue
    assert read_record(batch_dir(st.recorder.state_dir, "hd-rec-n"))["body"]["quality"]["nuisance_alarms"] == 2
