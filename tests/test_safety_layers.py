"""``reedge station check``: the layers of defence a station has, as a safety engineer reads them (issue 13).

Run as a technician runs it (real processes); the real-time outlook is checked against what the real
core obtains when started under the same limits and capabilities."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from edge.spec.station import load_station, parse_station
from edge.spec.station.layers import safety_layers
from hil.regfile import RegisterFile

ROOT = pathlib.Path(__file__).resolve().parent.parent
HD = ROOT / "stations" / "hd_reactor_sim.toml"
LAYER_KEYS = ["safety_contactor", "output_feedback", "sensor_agreement", "limiter", "watchdog", "tick_gap",
              "deadman", "realtime", "latch_file", "local_reset"]


def reedge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def without_watchdog(tmp_path: pathlib.Path) -> pathlib.Path:
    text = HD.read_text()
    assert 'watchdog_output = "watchdog_line"' in text
    path = tmp_path / "no_watchdog.toml"
    text = text.replace('watchdog_output = "watchdog_line"', "", 1)
    path.write_text(text.replace('watchdog_feedback = "watchdog_relay_ok"', "", 1))
    return path


def test_station_check_prints_every_layer() -> None:
    out = reedge("station", "check", str(HD))
    assert out.returncode == 0, out.stderr
    table = out.stdout.split("  safety layers:\n", 1)[1].splitlines()
    titles = ["safety contactor", "output feedback", "sensor agreement", "independent limiter", "watchdog line",
              "tick-gap supervision", "controller dead-man", "real-time scheduling",
              "latched trips survive a restart", "local reset only"]
    assert [line.split("  ")[2].strip() for line in table] == titles, out.stdout
    deadman = next(line for line in table if "controller dead-man" in line)
    assert " yes " in deadman and "2000 ms without a heartbeat" in deadman
    local = next(line for line in table if "local reset only" in line)
    assert " yes " in local and "remote resets refused by the core" in local


def test_no_watchdog_output_is_said_loudly(tmp_path: pathlib.Path) -> None:
    path = without_watchdog(tmp_path)
    out = reedge("station", "check", str(path))
    assert out.returncode == 0, out.stderr          # a valid file: the missing layer is a warning, not an error
    warning = f"WARNING: {path}: watchdog line: no watchdog output: a hung core keeps its outputs"
    assert warning in out.stderr, out.stderr
    row = next(line for line in out.stdout.splitlines() if "watchdog line" in line)
    assert " NO!! " in row
    assert reedge("station", "check", "--strict", str(path)).returncode == 1


def test_json_lists_the_layers(tmp_path: pathlib.Path) -> None:
    out = reedge("station", "check", "--json", str(without_watchdog(tmp_path)))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] is True and doc["station"]["id"] == "hd-01"
    assert [layer["key"] for layer in doc["layers"]] == LAYER_KEYS
    watchdog = next(layer for layer in doc["layers"] if layer["key"] == "watchdog")
    assert watchdog["present"] is False and watchdog["severity"] == "loud"
    assert "controller_deadman" in {rule["name"] for rule in doc["interlocks"]}
    assert set(doc["realtime_here"]) == {"sched_ok", "sched_why", "mlock_ok", "mlock_why"}


def test_a_refused_file_is_still_refused_with_the_key(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(HD.read_text().replace("threshold = 930.0", "threshold = 1500.0", 1))
    out = reedge("station", "check", "--json", str(bad))
    assert out.returncode == 2 and out.stdout == ""
    assert "interlocks.chamber_overtemp.threshold" in out.stderr and "above its top end 1100" in out.stderr


# ---------------------------------------------------------------- the layers of the stock station


def test_the_stock_hd_station_has_every_layer() -> None:
    layers = {layer.key: layer for layer in safety_layers(load_station(HD))}
    assert all(layer.present for layer in layers.values()), layers
    assert layers["safety_contactor"].detail == "safety_contactor supplies heater, h2_inlet_valve"
    assert layers["output_feedback"].severity == "ok"
    assert layers["output_feedback"].detail == ("heater <- heater_current (heater_feedback), "
                                                "safety_contactor <- contactor_closed (contactor_feedback)")
    assert "chamber_temp ~ chamber_temp_safety within 150, 40 at a settled soak" in layers["sensor_agreement"].detail
    assert layers["limiter"].detail \
        == "excess_temp: own TC at wall, 960 degC, opens safety_contactor, watched by interlocks.limiter_tripped"
    assert "proof test at start-up on watchdog_relay_ok" in layers["watchdog"].detail
    assert "above 500 ms (500 periods)" in layers["tick_gap"].detail
    assert "never remotely: limiter_tripped" in layers["local_reset"].detail


def test_a_contactor_without_feedback_is_a_weakness() -> None:
    station = load_station(HD)
    rules = tuple(r for r in station.core.rules if r.name != "contactor_feedback")
    station = dataclasses.replace(station, core=dataclasses.replace(station.core, rules=rules))
    layer = next(layer for layer in safety_layers(station) if layer.key == "output_feedback")
    assert layer.severity == "warn" and "no feedback on the contactor safety_contactor" in layer.detail


def test_a_limiter_nobody_watches_is_a_weakness() -> None:
    station = load_station(HD)
    rules = tuple(r for r in station.core.rules if r.name != "limiter_tripped")
    station = dataclasses.replace(station, core=dataclasses.replace(station.core, rules=rules))
    layer = next(layer for layer in safety_layers(station) if layer.key == "limiter")
    assert layer.present and layer.severity == "warn" and "watched by no digital interlock" in layer.detail


FULL_STATION = """
[station]
id = "sf-09"
site = "lab"
kind = "sintering_furnace"
[core]
deadman_ms = 1000
watchdog_output = "wd"
watchdog_feedback = "wd_ok"
max_tick_gap_ms = 20
rt_priority = 50
lock_memory = true
[drivers.plant]
type = "sim"
path = "/dev/shm/sf-09.regs"
[channels.zone_temp]
kind = "thermocouple"
driver = "plant"
input = 0
tc_type = "S"
cold_junction_c = 25.0
[channels.zone_temp_safety]
kind = "thermocouple"
driver = "plant"
input = 1
tc_type = "S"
cold_junction_c = 25.0
[channels.heater_current]
kind = "analog"
driver = "plant"
input = 2
unit = "A"
scale = 3.125
offset = -12.5
range = [-0.625, 51.5625]
[channels.contactor_closed]
kind = "digital"
driver = "plant"
input = 0
[channels.wd_ok]
kind = "digital"
driver = "plant"
input = 1
[channels.limiter_ok]
kind = "digital"
driver = "plant"
input = 2
[outputs.heater]
driver = "plant"
line = 0
safe_level = 0
[outputs.k1]
driver = "plant"
line = 1
safe_level = 0
supplies = ["heater"]
[outputs.wd]
driver = "plant"
line = 2
safe_level = 0
[interlocks.zone_overtemp]
kind = "high"
channel = "zone_temp_safety"
threshold = 1150.0
action = ["heater"]
[interlocks.heater_welded]
kind = "discrepancy"
output = "heater"
channel = "heater_current"
threshold = 2.0
debounce_ms = 500
action = ["heater"]
[interlocks.k1_welded]
kind = "discrepancy"
output = "k1"
channel = "contactor_closed"
debounce_ms = 200
action = ["heater"]
[interlocks.tc_disagree]
kind = "agree"
channel = "zone_temp"
channel2 = "zone_temp_safety"
threshold = 30.0
debounce_ms = 2000
action = ["heater"]
[interlocks.limiter_tripped]
kind = "digital"
channel = "limiter_ok"
threshold = 1
local_reset_only = true
action = ["heater", "k1"]
[limiter.excess]
senses = "elements"
setpoint_c = 1200.0
opens = "k1"
alarm_input = "limiter_ok"
[limits]
max_temperature_c = 1100.0
max_ramp_c_per_min = 5.0
max_pressure_bar = 1.5
min_vacuum_before_heating_mbar = 0.01
allowed_gases = ["Ar"]
"""


def test_a_station_with_every_layer_shows_them_all() -> None:
    station = parse_station(textwrap.dedent(FULL_STATION), "sf-09.toml")
    layers = {layer.key: layer for layer in safety_layers(station)}
    assert all(layer.present for layer in layers.values()), layers
    assert "k1 supplies heater" in layers["safety_contactor"].detail
    assert layers["output_feedback"].detail \
        == "heater <- heater_current (heater_welded), k1 <- contactor_closed (k1_welded)"
    assert layers["output_feedback"].severity == "ok"
    assert "zone_temp ~ zone_temp_safety within 30" in layers["sensor_agreement"].detail
    assert "watched by interlocks.limiter_tripped" in layers["limiter"].detail
    assert "proof test at start-up on wd_ok" in layers["watchdog"].detail
    assert "never remotely: limiter_tripped" in layers["local_reset"].detail


# ---------------------------------------------------------------- the real-time outlook against the real core


def _run_worker(tmp_path: pathlib.Path, prefix: list[str]) -> dict[str, Any]:
    regs = tmp_path / "rt.regs"
    RegisterFile.create(regs).close()
    out = subprocess.run([*prefix, sys.executable, "-m", "tests.realtime_worker", str(HD), str(regs)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_the_realtime_outlook_is_what_the_core_obtains(tmp_path: pathlib.Path) -> None:
    got = _run_worker(tmp_path, [])
    assert (got["predicted_sched"], got["predicted_mlock"]) == (got["got_sched"], got["got_mlock"]), got


@pytest.mark.skipif(shutil.which("setpriv") is None or shutil.which("prlimit") is None,
                    reason="needs setpriv and prlimit (util-linux) to take the privileges away")
def test_without_privileges_the_outlook_says_refused_and_the_core_agrees(tmp_path: pathlib.Path) -> None:
    drop = ["setpriv", "--bounding-set=-sys_nice,-ipc_lock", "--inh-caps=-sys_nice,-ipc_lock",
            "prlimit", "--rtprio=0", "--memlock=65536"]
    got = _run_worker(tmp_path, drop)
    assert got["predicted_sched"] is False and got["got_sched"] is False, got
    assert got["predicted_mlock"] is False and got["got_mlock"] is False, got
    assert "RLIMIT_RTPRIO 0 < 50 and no CAP_SYS_NICE" in got["sched_why"]
    assert "RLIMIT_MEMLOCK 64 KiB <" in got["mlock_why"]


def test_reedge_run_says_a_missing_watchdog_at_every_start(tmp_path: pathlib.Path) -> None:
    """The journal of a running station says the loud gaps too, not only `station check`."""
    regs_path = tmp_path / "plant.regs"
    with RegisterFile.create(regs_path) as regs:
        regs.regs.plant_alive = 1                 # wall clock: no plant process needed to start the core
        station = without_watchdog(tmp_path)
        text = station.read_text().replace('path = "/dev/shm/reedge-hd-01.regs"', f'path = "{regs_path}"', 1)
        assert str(regs_path) in text
        station.write_text(text)
        out_path = tmp_path / "controller.out"
        with open(out_path, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--station", str(station),
                                     "--state-dir", str(tmp_path / "state"), "--json"], cwd=ROOT,
                                    stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            try:
                deadline = time.monotonic() + 60
                while '"type": "ready"' not in out_path.read_text():
                    assert proc.poll() is None, out_path.read_text()[-3000:]
                    assert time.monotonic() < deadline, out_path.read_text()[-3000:]
                    time.sleep(0.1)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    text = out_path.read_text()
    assert "reedge run: WARNING: watchdog line: no watchdog output: a hung core keeps its outputs" in text, text
    assert text.index("WARNING: watchdog line") < text.index('"type": "ready"'), "said before ready"
