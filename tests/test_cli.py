"""The ``reedge`` command line as a technician runs it: real processes, real output."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
STATION = ROOT / "stations" / "hd_reactor_sim.toml"


def reedge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_tc_conversion_both_ways() -> None:
    out = reedge("tc", "K", "--mv", "4.096")
    assert out.returncode == 0, out.stderr
    assert abs(float(out.stdout.split()[0]) - 100.0) < 0.01   # NIST table: 4.096 mV at 100 degC
    out = reedge("tc", "K", "--celsius", "100")
    assert out.returncode == 0 and abs(float(out.stdout.split()[0]) - 4.096) < 0.0005


def test_tc_out_of_range_is_one_clear_line() -> None:
    out = reedge("tc", "K", "--mv", "99")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "range" in out.stderr


def test_station_check_lists_interlocks() -> None:
    out = reedge("station", "check", str(STATION))
    assert out.returncode == 0, out.stderr
    assert "pilot-line/hd-01" in out.stdout
    assert "interlock h2_leak: high h2_room 25" in out.stdout
    assert "interlock controller_deadman: deadman" in out.stdout


def test_station_check_bad_file_names_the_key(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(STATION.read_text().replace('channel = "h2_room"', 'channel = "h2_rooom"', 1))
    out = reedge("station", "check", str(bad))
    assert out.returncode == 2
    assert "interlocks.h2_leak.channel" in out.stderr and "h2_rooom" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_demo_runs_to_the_safe_state() -> None:
    out = reedge("demo", "--time-scale", "20", "--no-color", timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    text = out.stdout
    assert "refused: permissive o2_pct < 1 does not hold" in text
    assert "h2_inlet_valve dropped: permissive on h2_room stopped holding" in text
    assert "interlock h2_leak tripped FIRST OUT" in text
    assert "Safe state, first out: h2_leak" in text
    assert "interlock h2_leak reset refused" in text
    assert re.search(r"interlock h2_leak reset$", text, re.M), "the local reset itself is reported"
    after_reset = text.split("nothing re-energises by itself after a reset:")[1]
    assert "energised" not in after_reset.split("== Summary")[0]
    assert "demo complete" in text
