"""The HIL report writers (hil/report.py): JSON record, JUnit XML, PNG plot, terminal summary.

The data is a synthetic HD run: leak test, argon purges, H2 admission and absorption with its
exotherm, an H2 leak injected at 2400 s that trips ``h2_leak``, a watchdog relay drop. Run this
module as a script to render it for a look: ``python -m tests.test_hil_report /tmp/hil_report_sample.png``
(add ``fail`` for the failing variant).
"""

from __future__ import annotations

import copy
import json
import math
import os
import pathlib
import struct
import sys
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import pytest

from hil import report

OUTPUTS = ["h2_inlet_valve", "ar_inlet_valve", "vent_valve", "vacuum_pump", "vacuum_valve", "heater",
           "cooling_water_valve", "alarm_beacon"]
CHANNELS = {
    "chamber_temp": {"unit": "degC", "group": "temperature"},
    "chamber_temp_safety": {"unit": "degC", "group": "temperature"},
    "chamber_pressure": {"unit": "bar abs", "group": "pressure"},
    "chamber_vacuum": {"unit": "mbar", "group": "vacuum"},
    "h2_room": {"unit": "%LEL", "group": "gas"},
    "o2_pct": {"unit": "%vol", "group": "gas"},
    "cooling_water_flow": {"unit": "l/min", "group": "flow"},
    "lid_closed": {"unit": "", "group": "digital"},
}
LEAK_T, TRIP_T, RELAY_T = 2400.0, 2410.5, 4000.0


def hd_record(outcome: str = "pass") -> dict[str, Any]:
    """A record as the runner fills it; ``fail`` makes the latency measurement fail."""
    latency = 1.7 if outcome == "pass" else 73.2
    return {
        "scenario": "hd_h2_leak_absorption",
        "file": "hil/scenarios/hd_h2_leak_absorption.toml",
        "description": "H2 leak into the enclosure during absorption: h2_leak trips first, H2 and heater off",
        "outcome": outcome,
        "error": None,
        "station": {"path": "stations/hd_reactor_sim.toml", "sha256": "ab" * 32},
        "recipe": {"path": "recipes/hd_standard.toml", "sha256": "cd" * 32},
        "scenario_sha256": "ef" * 32,
        "versions": {"reedge": "0.1.0", "python": "3.11.7", "platform": "Linux-x86_64", "core_abi": "3"},
        "time_scale": 200.0,
        "started_utc": "2026-11-29T09:10:00.123Z",
        "wall_s": 23.4,
        "plant_s": 5400.0,
        "faults": [{"name": "h2_leak", "t_s": LEAK_T, "wall_s": 12.1, "params": {"rate_mol_s_bar": 0.05}}],
        "events": [
            {"t_s": 0.0, "wall_s": 0.0, "source": "controller", "kind": "phase", "message": "leak_test"},
            {"t_s": 300.0, "wall_s": 1.5, "source": "controller", "kind": "phase", "message": "inert_purge"},
            {"t_s": 1200.0, "wall_s": 6.0, "source": "controller", "kind": "phase", "message": "h2_admission"},
            {"t_s": 1500.0, "wall_s": 7.5, "source": "controller", "kind": "phase", "message": "absorption"},
            {"t_s": LEAK_T, "wall_s": 12.1, "source": "rig", "kind": "fault", "message": "h2_leak 0.05 mol/s/bar"},
            {"t_s": 2404.0, "wall_s": 12.15, "source": "controller", "kind": "alarm",
             "message": "h2_room_warning 10 %LEL"},
            {"t_s": TRIP_T, "wall_s": 12.2, "source": "core", "kind": "trip",
             "message": "h2_leak: h2_room 25.3 %LEL > 25"},
            {"t_s": 2411.0, "wall_s": 12.21, "source": "controller", "kind": "phase", "message": "aborted"},
            {"t_s": RELAY_T, "wall_s": 20.0, "source": "plant", "kind": "relay", "message": "watchdog relay dropped"},
        ],
        "measurements": [
            {"name": "first_trip", "value": "h2_leak", "unit": "", "limits": {"equals": "h2_leak"},
             "outcome": "pass", "description": "which interlock tripped first"},
            {"name": "safe_latency_ms.h2_leak", "value": latency, "unit": "ms", "limits": {"max": 50},
             "outcome": outcome, "description": "trip to safe outputs"},
            {"name": "final_output.heater", "value": 0, "unit": "", "limits": {"equals": 0}, "outcome": "pass"},
        ],
        "channels": copy.deepcopy(CHANNELS),
        "outputs": list(OUTPUTS),
    }


def hd_rows(n: int = 5400, plant_s: float = 5400.0) -> list[dict[str, Any]]:
    """A fake HD run logged every plant_s / n seconds: phases, exotherm, leak, trip, relay drop."""
    rows = []
    for i in range(n):
        t = plant_s * i / n
        s = t * 5400.0 / plant_s  # the story is told on a 5400 s clock whatever the duration
        tripped = s >= TRIP_T
        purging = 300 <= s < 1200
        evacuating = purging and int((s - 300) // 150) % 2 == 0
        h2 = 1200 <= s < TRIP_T
        temp = 20.0 + min(s, TRIP_T) / TRIP_T * 130.0 + (25.0 * math.exp(-((s - 1900) / 200) ** 2))
        if tripped:
            temp = 150.0 * math.exp(-(s - TRIP_T) / 3000.0) + 20.0 * (1 - math.exp(-(s - TRIP_T) / 3000.0))
        pressure = 1.0
        if evacuating:
            pressure = 0.002
        elif h2:
            pressure = 1.5 - 0.4 * ((s - 1200) % 300) / 300
        vacuum = pressure * 1000.0 if pressure > 0.01 else 0.05 + 0.01 * math.sin(s)
        h2_room = 0.0 if s < LEAK_T else min(40.0, (s - LEAK_T) * 2.5) * (math.exp(-(s - TRIP_T) / 200) if tripped
                                                                          else 1.0)
        on = 1 if not (s >= RELAY_T and s < RELAY_T + 120) else 0
        rows.append({
            "t_s": t,
            "wall_s": t / 200.0,
            "ch": {"chamber_temp": temp, "chamber_temp_safety": temp + 4.0, "chamber_pressure": pressure,
                   "chamber_vacuum": vacuum, "h2_room": h2_room, "o2_pct": 20.9 if s < 300 else 0.3,
                   "cooling_water_flow": 8.0 + 0.2 * math.sin(s / 50), "lid_closed": True},
            "out": {"h2_inlet_valve": int(h2 and (s - 1200) % 300 < 30), "ar_inlet_valve": int(purging and
                                                                                               not evacuating),
                    "vent_valve": int(tripped), "vacuum_pump": int(evacuating), "vacuum_valve": int(evacuating),
                    "heater": 0.0 if tripped else 0.35 + 0.3 * math.sin(s / 400) ** 2,
                    "cooling_water_valve": 1 * on, "alarm_beacon": int(s >= 2404)},
            "relay": on,
            "power": 1,
        })
    return rows


def png_size(path: pathlib.Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def pixels_near(path: pathlib.Path, hex_colour: str, tol: float = 0.02) -> int:
    """How many pixels of the PNG have this colour."""
    import matplotlib.image

    img = matplotlib.image.imread(str(path))[:, :, :3]
    rgb = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(img - rgb).max(axis=2) < tol).sum())


def sorted_everywhere(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert keys == sorted(keys), keys
    return dict(pairs)


# ---------------------------------------------------------------------------- JSON


def test_json_round_trips_sorted_and_indented(tmp_path: pathlib.Path) -> None:
    record = hd_record()
    path = tmp_path / "out" / "record.json"  # the directory does not exist yet
    report.write_json(record, path)
    text = path.read_text()
    assert json.loads(text, object_pairs_hook=sorted_everywhere) == record
    assert text.splitlines()[1].startswith('  "') and not text.splitlines()[1].startswith('   ')
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]  # no temporary file left


def test_json_non_finite_numbers_become_null(tmp_path: pathlib.Path) -> None:
    record = hd_record()
    record["measurements"][1]["value"] = math.nan
    record["extra"] = {"series": [1.0, math.inf, -math.inf, (2.0, math.nan)]}
    path = tmp_path / "r.json"
    report.write_json(record, path)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)
    assert back["measurements"][1]["value"] is None
    assert back["extra"]["series"] == [1.0, None, None, [2.0, None]]


def test_json_unserialisable_value_raises_and_keeps_previous_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "r.json"
    report.write_json(hd_record(), path)
    before = path.read_bytes()
    bad = hd_record("fail")
    bad["measurements"][0]["value"] = object()
    with pytest.raises(TypeError):
        report.write_json(bad, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_json_failure_while_writing_leaves_no_partial_file(tmp_path: pathlib.Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fails at fsync (full, pulled out): the old file stays whole, the temporary one goes."""
    path = tmp_path / "r.json"
    report.write_json(hd_record(), path)
    before = path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        report.write_json(hd_record("fail"), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


# ---------------------------------------------------------------------------- JUnit


def error_record() -> dict[str, Any]:
    record = hd_record("fail")
    record["outcome"] = "error"
    record["error"] = "rig: plant process exited with code -11\nTraceback follows"
    record["measurements"] = record["measurements"][:2]
    record["measurements"][1]["value"] = None
    return record


def test_junit_counts_properties_and_messages(tmp_path: pathlib.Path) -> None:
    records = [hd_record("pass"), hd_record("fail"), error_record()]
    records[1]["scenario"] = "hd_h2_leak_slow_sensor"
    records[2]["scenario"] = "hd_plant_crash"
    path = tmp_path / "junit.xml"
    report.write_junit(records, path)
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["hd_h2_leak_absorption", "hd_h2_leak_slow_sensor", "hd_plant_crash"]
    # per suite: (tests, failures, errors); the error record has a "run" case with the error plus its 2 measurements
    expected = [(3, 0, 0), (3, 1, 0), (3, 1, 1)]
    for suite, (tests, failures, errors) in zip(suites, expected, strict=True):
        assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == (str(tests), str(failures),
                                                                                    str(errors))
        assert len(suite.findall("testcase")) == tests
        assert len(suite.findall("testcase/failure")) == failures
        assert len(suite.findall("testcase/error")) == errors
        assert suite.get("time") == "23.400"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("9", "2", "1")
    assert root.get("time") == "70.200"

    props = {p.get("name"): p.get("value") for p in suites[0].findall("properties/property")}
    assert props["version.reedge"] == "0.1.0"
    assert props["version.core_abi"] == "3"
    assert props["station.sha256"] == "ab" * 32
    assert props["recipe.path"] == "recipes/hd_standard.toml"
    assert props["scenario.sha256"] == "ef" * 32
    assert float(props["time_scale"] or "nan") == 200.0
    assert float(props["plant_s"] or "nan") == 5400.0

    failure = suites[1].find("testcase[@name='safe_latency_ms.h2_leak']/failure")
    assert failure is not None
    assert "73.2 ms" in failure.get("message", "") and "max 50" in failure.get("message", "")
    assert "trip to safe outputs" in (failure.text or "")
    error = suites[2].find("testcase[@name='run']/error")
    assert error is not None and "exited with code -11" in (error.text or "")
    not_measured = suites[2].find("testcase[@name='safe_latency_ms.h2_leak']/failure")
    assert not_measured is not None and "not measured" in not_measured.get("message", "")
    assert "trip: h2_leak" in (suites[0].findtext("system-out") or "")


def test_junit_survives_control_characters(tmp_path: pathlib.Path) -> None:
    """Garbage from a serial line ends up in messages; the XML must still parse."""
    record = error_record()
    record["error"] = "node link: frame \x00\x07\x1b[2J\ud800 bad CRC"
    record["events"].append({"t_s": 3.0, "kind": "alarm", "source": "rig", "message": "rx \x01\x02\x03"})
    path = tmp_path / "junit.xml"
    report.write_junit([record], path)
    root = ET.parse(path).getroot()
    error = root.find("testsuite/testcase/error")
    assert error is not None and "\\x00\\x07" in (error.text or "") and "bad CRC" in (error.text or "")


def test_junit_fail_without_failed_measurement_is_still_a_failure(tmp_path: pathlib.Path) -> None:
    record = hd_record("pass")
    record["outcome"] = "fail"
    path = tmp_path / "junit.xml"
    report.write_junit([record], path)
    root = ET.parse(path).getroot()
    assert root.get("failures") == "1"
    assert root.find("testsuite/testcase[@name='run']/failure") is not None


def test_junit_no_records(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "junit.xml"
    report.write_junit([], path)
    root = ET.parse(path).getroot()
    assert (root.tag, root.get("tests"), len(root)) == ("testsuites", "0", 0)


# ---------------------------------------------------------------------------- summary


def test_summary_lines() -> None:
    lines = report.summary_lines(hd_record("fail"))
    assert lines[0].startswith("hd_h2_leak_absorption: FAIL")
    assert "time scale 200x" in lines[0]
    assert "  PASS first_trip = h2_leak (equals h2_leak)" in lines
    assert "  FAIL safe_latency_ms.h2_leak = 73.2 ms (max 50)" in lines
    assert "  PASS final_output.heater = 0 (equals 0)" in lines
    err = report.summary_lines(error_record())
    assert err[0].startswith("hd_h2_leak_absorption: ERROR")
    assert err[1] == "  error: rig: plant process exited with code -11\nTraceback follows"
    assert "  FAIL safe_latency_ms.h2_leak = not measured (max 50)" in err
    assert report.summary_lines({"measurements": [{"name": "x", "value": True, "limits": {"one_of": [1, "a"]},
                                                   "outcome": "pass"}]})[1:] == ["  PASS x = true (one of 1, a)"]


def test_a_failed_runs_summary_tells_its_last_events_and_a_passed_one_does_not() -> None:
    failed = report.summary_lines(hd_record("fail"))
    story = failed[failed.index("  what happened (the last 9 of 9 events):") + 1:]
    assert story[0] == f"    {0:9d} s  controller phase: leak_test"
    assert story[6] == f"    {TRIP_T:9.0f} s  core trip: h2_leak: h2_room 25.3 %LEL > 25"
    assert len(story) == 9
    assert not any(line.startswith("  what happened") for line in report.summary_lines(hd_record("pass")))
    many = hd_record("fail")
    many["events"] = [{"t_s": float(i), "source": "controller", "kind": "alarm", "message": f"a{i}"} for i in range(50)]
    lines = report.summary_lines(many)
    assert f"  what happened (the last {report.STORY_EVENTS} of 50 events):" in lines
    assert lines[-1].endswith("controller alarm: a49") and not any(line.endswith(" a29") for line in lines)



# ---------------------------------------------------------------------------- plot


def test_plot_is_a_png_of_the_expected_size_and_shows_the_outcome(tmp_path: pathlib.Path) -> None:
    rows = hd_rows(2000)
    passing, failing = tmp_path / "pass.png", tmp_path / "fail.png"
    report.plot(hd_record("pass"), rows, passing)
    report.plot(hd_record("fail"), rows, failing)
    assert png_size(passing) == png_size(failing) == (1400, 1000)
    green = report.OUTCOME_COLOUR["pass"]
    assert pixels_near(passing, green) > 200  # the PASS badge
    assert pixels_near(failing, green) < 20
    # the box listing the failed measurement (a few pixels of that tint come from anti-aliased red lines)
    assert pixels_near(failing, "#fff0f0") > 4 * pixels_near(passing, "#fff0f0")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("case", ["empty", "single_row", "all_nan_channel", "no_events", "long_run",
                                  "unknown_group_and_extra_channel", "none_values", "vacuum_not_positive",
                                  "minimal_record"])
def test_plot_edge_cases(tmp_path: pathlib.Path, case: str) -> None:
    record, rows = hd_record("pass"), hd_rows(300)
    if case == "empty":
        rows = []
    elif case == "single_row":
        rows = rows[:1]
    elif case == "all_nan_channel":
        for r in rows:
            r["ch"]["chamber_temp"] = math.nan
    elif case == "no_events":
        record["events"], record["faults"] = [], []
    elif case == "long_run":  # 12 h of plant time, 20k rows
        rows = hd_rows(20000, 12 * 3600.0)
    elif case == "unknown_group_and_extra_channel":
        record["channels"]["mains_power_kw"] = {"unit": "kW", "group": "electrical"}
        for r in rows:
            r["ch"]["mains_power_kw"] = 12.0
            r["ch"]["not_in_record"] = 1.0
            r["out"]["not_in_record_out"] = 1
    elif case == "none_values":
        for r in rows[::3]:
            r["ch"] = {k: None for k in r["ch"]}
            r["out"]["heater"] = None
            r["relay"] = None
    elif case == "vacuum_not_positive":
        for r in rows:
            r["ch"]["chamber_vacuum"] = 0.0
    elif case == "minimal_record":
        record = {"scenario": "bare", "outcome": "error", "error": "boom"}
    path = tmp_path / "p.png"
    report.plot(record, rows, path)
    assert png_size(path) == (1400, 1000)


def test_plot_long_run_keeps_a_one_row_spike(tmp_path: pathlib.Path) -> None:
    """20k rows, one of them a pressure spike: the plotted line must reach it."""
    rows = hd_rows(20000, 12 * 3600.0)
    t = np.array([r["t_s"] for r in rows])
    y = np.array([r["ch"]["chamber_pressure"] for r in rows])
    y[12345] = 9.5
    x, v = report.envelope(t, y)
    assert len(x) <= report.MAX_PLOT_POINTS
    assert np.nanmax(v) == 9.5 and np.nanmin(v) == y.min()
    assert bool(np.all(np.diff(x) >= 0))
    assert x[int(np.nanargmax(v))] == t[12345]


def test_envelope_keeps_gaps_where_the_sensor_was_silent() -> None:
    t = np.arange(10000.0)
    y = np.sin(t / 100)
    y[4000:6000] = np.nan
    x, v = report.envelope(t, y, max_points=500)
    silent = (x > 4100) & (x < 5900)
    assert silent.any() and bool(np.isnan(v[silent]).all())
    assert not np.isnan(v[x < 3900]).any()


def test_event_labels_never_drop_faults_and_trips() -> None:
    n_phase = 60
    xs = [0.5] * n_phase + [0.5, 0.501, 0.502, 0.99]
    texts = ["phase: something long"] * n_phase + ["fault: h2_leak", "trip: h2_leak", "trip: estop", "trip: lid"]
    prios = [3] * n_phase + [0, 0, 0, 0]
    placed = report._place_labels(xs, texts, prios, char_frac=0.005)
    indices = {i for i, _, _ in placed}
    assert {n_phase, n_phase + 1, n_phase + 2, n_phase + 3} <= indices
    assert len(placed) <= report.MAX_EVENT_LABELS + 4
    assert len(placed) < len(texts)  # the crowd of phases was thinned
    right_edge = next(left for i, _, left in placed if i == n_phase + 3)
    assert right_edge  # a label at the right edge is drawn to the left of its line


def test_event_labels_do_not_overlap_each_other_or_the_lines_of_labels_above() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        xs = [float(x) for x in rng.uniform(0, 1, n)]
        texts = ["x" * int(k) for k in rng.integers(3, 34, n)]
        placed = report._place_labels(xs, texts, [3] * n, char_frac=0.005)
        assert 0 < len(placed) <= min(n, report.MAX_EVENT_LABELS)
        boxes = []
        for i, row, left in placed:
            width = len(texts[i]) * 0.005
            lo, hi = (xs[i] - width, xs[i]) if left else (xs[i], xs[i] + width)
            assert hi <= 1.0  # a label near the right edge is drawn to the left of its line
            boxes.append((lo, hi, row, xs[i]))
        for a, (a_lo, a_hi, a_row, a_x) in enumerate(boxes):
            for b, (b_lo, b_hi, b_row, b_x) in enumerate(boxes):
                if a == b:
                    continue
                assert a_row != b_row or a_hi <= b_lo or b_hi <= a_lo
                if b_row > a_row and abs(b_x - a_x) >= 1.5 * 0.005:  # b hangs above a: its line must miss a's text
                    assert not a_lo <= b_x <= a_hi


# the events of a real run (hd_h2_leak_absorption, lockstep) as the controller, the rig and the plant word them
REAL_EVENTS = [
    (1.0, "controller", "ready", "controller for pilot-line/hd-01 running (lockstep)"),
    (1.0, "controller", "batch", "batch hil-hd_h2_leak_absorption started: HD of sintered NdFeB scrap, 25 kg"),
    (1.0, "controller", "phase", "idle -> load_check: batch started"),
    (2.0, "controller", "phase", "load_check -> leak_test: load checked: lid closed, E-stop healthy, cooling water on"),
    (1152.0, "controller", "phase", "leak_test -> purge: leak test passed: -0.000736 mbar/min <= 0.05"),
    (1872.0, "controller", "phase", "purge -> h2_admission: purged in 1 cycle(s), O2 0.00918 %"),
    (2169.0, "controller", "phase", "h2_admission -> absorption: H2 admitted to 1.80 bar abs"),
    (LEAK_T, "rig", "fault", 'h2_leak: h2_leak {"rate_mol_s_bar": 0.5}'),
    (LEAK_T, "plant", "fault", "h2_leak on"),
    (2404.0, "controller", "core", "h2_inlet_valve dropped: permissive on h2_room stopped holding (10.1633)"),
    (2405.0, "controller", "alarm", "Hydrogen detected in the reactor room (10 %LEL): H2 stopped, recipe held; "
                                    "ventilate and find the leak"),
    (2405.0, "controller", "alarm", "recipe held by alarm h2_room_warning"),
    (TRIP_T, "controller", "trip", "interlock h2_leak tripped FIRST OUT: h2_room 25.4453 vs 25"),
    (TRIP_T, "controller", "core", "vent_valve forced to its safe level by interlock h2_leak"),
    (2411.0, "controller", "phase", "absorption -> aborting: interlock h2_leak tripped"),
    (RELAY_T, "plant", "relay", "watchdog relay dropped"),
    *((2700.0 + 30 * k, "controller", "core", "vent_valve refused: held safe by interlock h2_leak") for k in range(40)),
]


def test_event_labels_are_short_words_never_json_and_drawn_without_overlap() -> None:
    """Measured on the drawn figure: every label's box as rendered, not the placer's estimate of it."""
    from matplotlib.text import Annotation, Text

    record = hd_record("pass")
    record["events"] = [{"t_s": t, "source": src, "kind": kind, "message": msg} for t, src, kind, msg in REAL_EVENTS]
    record["faults"].append({"kind": "mark", "name": "running", "params": {}, "t_s": 600.0})   # fired steps: marks too
    fig = report.figure(record, hd_rows(2000))
    renderer = fig.canvas.get_renderer()       # type: ignore[attr-defined]
    fig.draw(renderer)
    labels = [a for ax in fig.axes for a in ax.texts if isinstance(a, Annotation)]
    texts = [a.get_text() for a in labels]
    assert "TRIP h2_leak" in texts and texts.count("fault h2_leak") == 1, texts   # the rig's and plant's note: one
    assert {"leak_test", "purge", "h2_admission"} <= set(texts), texts                  # phases by their name
    assert not any(c in t for t in texts for c in "{}[]\"->"), texts                        # no JSON, no "a -> b"
    assert texts.count("core: vent_valve refused") <= 1, texts                           # a repeat labelled once
    assert not any(t.startswith("fault running") for t in texts), texts        # a mark is no fault
    boxes = [Text.get_window_extent(a, renderer) for a in labels]      # the text alone, without its line
    for i, a in enumerate(boxes):
        for j in range(i + 1, len(boxes)):
            b = boxes[j]
            overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0)
            overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert overlap_x <= 0.5 or overlap_y <= 0.5, f"{texts[i]!r} and {texts[j]!r} overlap"


@pytest.mark.parametrize(("kind", "message", "label"), [
    ("phase", "leak_test -> purge: leak test passed: -0.000736 mbar/min <= 0.05", "purge"),
    ("phase", "aborted", "aborted"),
    ("trip", "interlock chamber_tc_break tripped FIRST OUT: chamber_temp nan vs 0", "TRIP chamber_tc_break"),
    ("fault", 'tc_open: tc_open {"channel": "chamber_temp"}', "fault tc_open"),
    ("fault", "cooling_water_loss off", "fault cooling_water_loss cleared"),
    ("fault", "gauge_noise: cleared", "fault gauge_noise cleared"),
    ("mark", "batch_started: mark", "batch_started"),
    ("batch", "batch hil-hd aborted: safe sequence complete (interlock h2_leak tripped)", "batch aborted"),
    ("refused", "'vent_valve' is held safe by interlock 'h2_leak' (latched: reset needed)",
     "refused: 'vent_valve' is held saf\u2026"),
    ("reply", 'ok {"verb": "record_mass"}', "reply: ok"),
])
def test_event_label(kind: str, message: str, label: str) -> None:
    assert report.event_label(kind, message) == label


def test_panels_split_groups_with_more_than_two_units() -> None:
    record = {"channels": {"a": {"unit": "kW", "group": "other"}, "b": {"unit": "V", "group": "other"},
                           "c": {"unit": "A", "group": "weird"}, "d": {"unit": "degC", "group": "temperature"},
                           "sw": {"unit": "", "group": "digital"}}}
    panels, digital = report._panels(record, [{"ch": {"e": 1.0}}])
    assert digital == ["sw"]
    assert [(title, lists) for title, _, lists in panels] == [
        ("temperature", [["d"]]), ("other", [["a"], ["b"]]), ("other", [["c"], ["e"]])]


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/hil_report_sample.png")
    outcome = sys.argv[2] if len(sys.argv) > 2 else "pass"
    report.plot(hd_record(outcome), hd_rows(), out)
    print("\n".join(report.summary_lines(hd_record(outcome))))
    print(out)
