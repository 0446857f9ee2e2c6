"""The HIL scenarios of the repository, run by the same runner as ``reedge hil run``; and the runner's
own promises: a bad scenario file is refused with the key named, and nothing outlives a run."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from edge.spec.reader import SpecError
from hil.lag import PROBE_LINE, LagProbe, is_probe_reply
from hil.regfile import default_dir
from hil.runner import run_scenario
from hil.scenario import DEFAULT_MAX_LAG_S, load_scenario, parse_scenario

ROOT = pathlib.Path(__file__).resolve().parent.parent
# run by other tests, the same runner: hd_normal_batch is the demo (tests/test_cli.py runs it through `reedge
# demo`); hd_h2_leak_absorption runs twice in test_a_lockstep_run_gives_the_same_measurements_every_time
RUN_ELSEWHERE = ("hd_normal_batch", "hd_h2_leak_absorption")
SCENARIOS = sorted(p for p in (ROOT / "hil" / "scenarios").glob("*.toml") if p.stem not in RUN_ELSEWHERE)


@pytest.mark.slow
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_passes(path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    passed_with_its_evidence(run_scenario(load_scenario(path), tmp_path), tmp_path, path.stem)


def passed_with_its_evidence(record: dict[str, Any], report_dir: pathlib.Path, stem: str) -> None:
    """The run passed, and its JSON, JUnit and PNG are written (the JSON as the record)."""
    from hil.report import summary_lines

    summary = "\n".join(summary_lines(record))
    assert record["outcome"] == "pass", f"{summary}\nwork folder: {record['workdir']}"
    for suffix in (".json", ".junit.xml", ".png"):
        assert (report_dir / f"{stem}{suffix}").stat().st_size > 0
    saved = json.loads((report_dir / f"{stem}.json").read_text())
    assert [m["name"] for m in saved["measurements"]] == [m["name"] for m in record["measurements"]]
    assert saved["station"]["sha256"] and saved["scenario_sha256"] and saved["versions"]["reedge"]
    for m in saved["measurements"]:
        if m["name"].startswith(("safe_latency_ms", "relay_latency_ms")):
            assert m["value"] is not None and m["limits"], "a trip's latency is measured against a limit"


# ---------------------------------------------------------------- malformed files

GOOD = """
[scenario]
station = "{root}/stations/hd_reactor_sim.toml"
recipe = "{root}/recipes/hd_standard.toml"
time_scale = 200

[[faults]]
kind = "h2_leak"
rate_mol_s_bar = 0.5
at = {{ phase = "absorption", after_s = 600 }}

[run]
until = "batch_end"
max_plant_h = 4

[[expect]]
measure = "first_trip"
equals = "h2_leak"
"""


def parse(text: str) -> None:
    parse_scenario(text.format(root=ROOT), pathlib.Path("/tmp/bad_scenario.toml"))


def errors_of(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse(text)
    return str(info.value)


def test_the_good_template_parses() -> None:
    sc = parse_scenario(GOOD.format(root=ROOT), pathlib.Path("/tmp/good.toml"))
    assert sc.name == "good" and sc.time_scale == 200.0 and sc.steps[0].params == {"rate_mol_s_bar": 0.5}
    assert sc.expectations[0].name == "first_trip"


@pytest.mark.parametrize(("change", "key", "words"), [
    (("time_scale = 200", "time_scal = 200"), "scenario.time_scal", "did you mean 'time_scale'"),
    (("time_scale = 200", "time_scale = \"fast\""), "scenario.time_scale", "expected a number"),
    (("time_scale = 200", "time_scale = 0.5"), "scenario.time_scale", "expected a number from 1 to 1500, got 0.5"),
    (("kind = \"h2_leak\"", "kind = \"h2_leek\""), "faults[0].kind", "did you mean 'h2_leak'"),
    (("rate_mol_s_bar = 0.5", "rate = 0.5"), "faults[0].rate", "unknown key"),
    (("rate_mol_s_bar = 0.5\n", ""), "faults[0].rate_mol_s_bar", "needs rate_mol_s_bar"),
    (("phase = \"absorption\"", "phase = \"absorption\", chanel = \"x\""), "faults[0].at.chanel",
     "did you mean 'channel'"),
    (("max_plant_h = 4", "max_plant = 4"), "run.max_plant_h", "missing"),
    (("until = \"batch_end\"", "until = \"forever\""), "run.until",
     "expected one of: batch_end, batch_record, phase, time; got \"forever\""),
    (("until = \"batch_end\"", "until = \"batch_end\"\nrevision = 2"), "run.revision",
     "applies to run.until = \"batch_record\" only"),
    (("until = \"batch_end\"", "until = \"batch_record\"\nrevision = 0"), "run.revision",
     "expected an integer from 1 to 1000, got 0"),
    (("measure = \"first_trip\"", "measure = \"first_trp\""), "expect[0].measure", "did you mean 'first_trip'"),
    (("equals = \"h2_leak\"", "within = 1"), "expect[0].within", "unknown key"),
    (("station = \"{root}/stations/hd_reactor_sim.toml\"", "station = \"nowhere.toml\""), "scenario.station",
     "cannot read"),
    (("[[expect]]\nmeasure = \"first_trip\"\nequals = \"h2_leak\"",
      "[[expect]]\nmeasure = \"final_output\"\noutput = \"heatr\"\nequals = 0"), "expect[0].output",
     "did you mean 'heater'"),
    (("[[expect]]\nmeasure = \"first_trip\"\nequals = \"h2_leak\"",
      "[[expect]]\nmeasure = \"trip_plant_s\"\nrule = \"h2_leak\"\nstep = \"leak\"\nmax = 1"), "expect[0].step",
     "unknown step 'leak'"),
    (("[run]", "[[faults]]\nkind = \"process_freeze\"\nat = {{ t_s = 10 }}\n[run]"), "faults[1].duration_s",
     "how long"),
    (("[run]", "[rig]\nmeter_start = {{ h2_metr = 4294000.0 }}\n[run]"), "rig.meter_start.h2_metr",
     "did you mean 'h2_meter'"),
    (("[run]", "[[faults]]\nkind = \"meter_silent\"\nat = {{ t_s = 10 }}\n[run]"), "faults[1].device",
     "needs device"),
    (("[run]", "[[faults]]\nkind = \"meter_crc_burst\"\ndevice = \"ar_metr\"\nat = {{ t_s = 10 }}\n[run]"),
     "faults[1].device", "did you mean 'ar_meter'"),
    (("[[expect]]\nmeasure = \"first_trip\"\nequals = \"h2_leak\"",
      "[[expect]]\nmeasure = \"metered_error_pct\"\nmeter = \"power\"\nmax = 2"), "expect[0].meter",
     "unknown metered quantity 'power'"),
    (("[[expect]]\nmeasure = \"first_trip\"\nequals = \"h2_leak\"",
      "[[expect]]\nmeasure = \"batch_record\"\nequals = 1"), "expect[0].path", "missing"),
    (("[run]", "[rig]\nclock = \"lockstp\"\n[run]"), "rig.clock", "did you mean 'lockstep'"),
    (("[run]", "[rig]\nclock = \"lockstep\"\n[run]"), "scenario.time_scale",
     "a lockstep scenario (rig.clock = \"lockstep\") has no time scale"),
])
def test_a_malformed_scenario_names_the_key(change: tuple[str, str], key: str, words: str) -> None:
    assert change[0] in GOOD
    message = errors_of(GOOD.replace(*change, 1))
    assert f"/tmp/bad_scenario.toml: {key}: " in message, message
    assert words in message, message


LOCKSTEP = GOOD.replace("time_scale = 200\n", "").replace("[run]", "[rig]\nclock = \"lockstep\"\n[run]", 1)


@pytest.mark.parametrize(("change", "key", "words"), [
    (("[run]", "[[faults]]\nkind = \"controller_hang\"\nat = {{ t_s = 10 }}\n[run]"), "faults[1].kind",
     "controller_hang needs the real-time rig"),
    (("[run]", "[[faults]]\nkind = \"meter_silent\"\ndevice = \"ar_meter\"\nat = {{ t_s = 10 }}\n[run]"),
     "faults[1].kind", "meter_silent needs the real-time rig"),
    (("clock = \"lockstep\"", "clock = \"lockstep\"\nrelay_timeout_ms = 500"), "rig.relay_timeout_ms",
     "applies to the real-time rig only"),
    (("clock = \"lockstep\"", "clock = \"lockstep\"\nmax_lag_s = 60"), "rig.max_lag_s",
     "applies to the real-time rig only"),
    (("[[expect]]\nmeasure = \"first_trip\"", "[[expect]]\nmeasure = \"safe_latency_ms\"\nrule = \"h2_leak\"\nmax = 25"
      "\n[[expect]]\nmeasure = \"first_trip\""), "expect[0].measure", "safe_latency_ms is a wall-clock latency"),
])
def test_a_lockstep_scenario_refuses_what_needs_the_wall_clock(change: tuple[str, str], key: str, words: str) -> None:
    assert change[0] in LOCKSTEP
    message = errors_of(LOCKSTEP.replace(*change, 1))
    assert f"/tmp/bad_scenario.toml: {key}: " in message, message
    assert words in message, message


def test_a_lockstep_run_gives_the_same_measurements_every_time(tmp_path: pathlib.Path) -> None:
    """Plant, core and controller stepped together: the same file, the same record (wall times aside), and
    ``reedge hil run`` says which clock ran it."""
    from hil.runner import run_files

    path = ROOT / "hil" / "scenarios" / "hd_h2_leak_absorption.toml"
    sc = load_scenario(path)
    assert sc.clock == "lockstep"
    printed: list[str] = []
    assert run_files([path], tmp_path / "a", print_fn=printed.append) == 0
    assert printed[0] == f"== hd_h2_leak_absorption ({path}) in lockstep" and "(lockstep, plant " in printed[1]
    first = json.loads((tmp_path / "a" / "hd_h2_leak_absorption.json").read_text())
    second = run_scenario(sc, tmp_path / "b")
    passed_with_its_evidence(second, tmp_path / "b", "hd_h2_leak_absorption")   # (not in test_scenario_passes)
    assert first["clock"] == second["clock"] == "lockstep" and first["time_scale"] is None
    assert first["outcome"] == "pass"
    assert first["measurements"] == second["measurements"]
    assert [(e["t_s"], e["message"]) for e in first["events"]] == [(e["t_s"], e["message"]) for e in second["events"]]
    assert first["plant_s"] == second["plant_s"]


def test_a_lockstep_power_loss_leaves_the_disk_as_it_was_and_the_board_boots_from_it(tmp_path: pathlib.Path) -> None:
    """The lockstep rig's power loss (hil/lockstep_rig.py): no shutdown code of the controller's runs (the files
    are byte for byte what they were before the power went, through the dark), and the controller that boots
    measures its outage from the run state as last saved: 100 s before the loss, the periodic save every 300 s
    of plant time from absorption's start (hd_power_loss_absorption proves the same on the real processes)."""
    path = ROOT / "tests" / "data" / "hd_lockstep_power_loss.toml"
    files: dict[str, Any] = {"before": None, "dark": []}

    def on_disk(rig: Any) -> dict[str, bytes]:
        return {str(f.relative_to(rig.state_dir)): f.read_bytes() for f in sorted(rig.state_dir.rglob("*"))
                if f.is_file()}

    def watch(run: Any, rig: Any) -> None:
        loss = run.fired.get("power_loss")
        if loss is None:
            files["before"] = on_disk(rig)
        elif not loss.cleared:
            assert not rig.controller_alive()
            files["dark"].append(on_disk(rig))

    record = run_scenario(load_scenario(path), tmp_path, watch)
    passed_with_its_evidence(record, tmp_path, path.stem)
    values = {m["name"]: m["value"] for m in record["measurements"]}
    assert values["recovered_outage_gap_s"] == pytest.approx(100.0, abs=0.01)
    assert len(files["dark"]) > 100 and all(seen == files["before"] for seen in files["dark"])
    assert {"run-state.json", "latched-trips"} <= set(files["before"])


def test_a_latched_trip_outlives_the_lockstep_boards_death(tmp_path: pathlib.Path) -> None:
    """board_dead frees the core as the kernel frees a killed process's (its latch file released, nothing
    else done); board_boots builds a new core that restores the trip from the latch file and runs its proof test."""
    import dataclasses

    from edge.spec.station import load_station
    from hil.lockstep import LockstepRig
    from hil.plants.hd_reactor import HDParams, HDReactor

    station = load_station(ROOT / "stations" / "hd_reactor_sim.toml")
    station = dataclasses.replace(station, core=dataclasses.replace(station.core,
                                                                    latch_file=str(tmp_path / "latched-trips")))
    with LockstepRig(station, HDReactor(HDParams(room_m3=8.0)), dt_s=1.0) as rig:
        rig.offsets["h2_room"] = 40.0                  # the detector reads 40 %LEL: h2_leak (latched) trips
        assert rig.run_until(lambda: "h2_leak" in rig.core.snapshot().tripped, 60.0, rig.core.heartbeat)
        rig.offsets.clear()
        rig.run_until(lambda: False, 10.0, rig.core.heartbeat)
        assert "h2_leak" in rig.core.snapshot().tripped and rig.core_alive
        rig.board_dead()
        assert not rig.core_alive
        rig.run_until(lambda: False, 30.0)             # dark: the plant goes on, nothing ticks
        rig.board_boots(int(rig.regs.regs.plant_ns))
        assert rig.core_alive and rig.core.restored_trips == 1
        assert not rig.core.stats().proof_pending and rig.core.stats().core_fault == 0
        rig.run_until(lambda: False, 10.0, rig.core.heartbeat)
        assert "h2_leak" in rig.core.snapshot().tripped


def test_a_run_can_end_on_its_batch_records_revision() -> None:
    text = GOOD.format(root=ROOT).replace("until = \"batch_end\"", "until = \"batch_record\"\nrevision = 2")
    sc = parse_scenario(text, pathlib.Path("/tmp/good.toml"))
    assert (sc.until, sc.until_revision) == ("batch_record", 2)


def test_every_problem_is_reported_at_once() -> None:
    text = GOOD.replace("time_scale = 200", "time_scale = -1").replace("kind = \"h2_leak\"", "kind = \"x\"")
    message = errors_of(text)
    assert "scenario.time_scale" in message and "faults[0].kind" in message


def test_not_toml_at_all() -> None:
    assert "/tmp/bad_scenario.toml: TOML syntax error at line 1" in errors_of("[scenario\nname=")


def test_the_cli_refuses_a_bad_file_before_starting_anything(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.format(root=ROOT).replace("max_plant_h", "max_plant_hours"))
    proc = subprocess.Popen([sys.executable, "-m", "edge", "hil", "run", str(bad), "--report-dir",
                             str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"{bad}: run.max_plant_hours: unknown key" in out
    assert not (tmp_path / "out").exists()
    assert register_files(proc.pid) == set()


def register_files(runner_pid: int) -> set[pathlib.Path]:
    """The register files the runner with this pid made (the rig names them after its pid), so that
    tests running beside this one (pytest -n) cannot disturb the count."""
    return set(default_dir().glob(f"reedge-rig-{runner_pid}-*"))


# ---------------------------------------------------------------- the controller's lag

IDLE = """
[scenario]
station = "{root}/stations/hd_reactor_sim.toml"
time_scale = 600

[run]
until = "time"
max_plant_h = 1           # 6 s of wall time, most of it after the controller's start-up

[[expect]]
measure = "batch_outcome"
equals = "not started"
"""


def test_a_controller_that_falls_behind_fails_the_run_saying_by_how_much_and_when(tmp_path: pathlib.Path) -> None:
    """The rig stalls the controller as a starved CPU would (SIGSTOP, unknown to the runner) for 0.3 s of wall
    time, 180 s of plant time at 600x (the watchdog relay's 0.5 s stays in): the run fails on its lag, with the
    figure and the moment. (Every scenario of test_scenario_passes shows the other side: a measured lag within
    its limit.)"""
    sc = parse_scenario(IDLE.format(root=ROOT), tmp_path / "idle.toml")
    stalled: list[float] = []

    def stall(run: Any, rig: Any) -> None:
        if not stalled and run.lag is not None and run.lag.answered >= 5:     # running, its lag measured
            t = rig.plant_s()
            run.lag.poll(t)                       # a probe is out during the stall
            os.killpg(rig.controller.pid, signal.SIGSTOP)
            time.sleep(0.3)
            os.killpg(rig.controller.pid, signal.SIGCONT)
            stalled.append(t)

    record = run_scenario(sc, tmp_path, stall)
    lag = next(m for m in record["measurements"] if m["name"] == "controller_lag_s")
    assert stalled and record["outcome"] == "fail", lag
    assert [m["name"] for m in record["measurements"] if m["outcome"] == "fail"] == ["controller_lag_s"]
    assert lag["value"] > sc.max_lag_s, lag
    assert lag["note"].startswith(f"the controller fell behind the plant by {lag['value']:g} s at plant time "), lag
    at = float(lag["note"].split("at plant time ")[1].split(" s")[0])
    assert stalled[0] < at < stalled[0] + 0.3 * 600 + 120, (stalled, lag["note"])
    assert not [e for e in record["events"] if e["kind"] == "reply"], "a probe's answer is not an event of the run"


def test_the_lag_probe_times_each_answer_and_ignores_what_a_freeze_or_a_power_loss_left_out() -> None:
    written: list[str] = []
    probe = LagProbe(scan_s=2.0, write=written.append)
    probe.poll(10.0)
    assert written == [], "nothing before the controller said ready"
    probe.ready()
    probe.poll(10.0)
    probe.poll(11.0)                               # one probe out at a time
    assert written == [PROBE_LINE]
    probe.reply(11.5)                              # read by the next scan: on time
    assert (probe.worst_s, probe.answered) == (0.0, 1)
    probe.poll(20.0)
    probe.reply(57.0)                              # 37 s after it was written, 35 s later than one scan
    assert (probe.worst_s, probe.worst_at_s) == (35.0, 57.0)
    probe.poll(60.0)
    probe.pause()                                  # frozen on purpose with a probe out
    probe.poll(61.0)
    probe.resume()
    probe.poll(500.0)                              # no new probe until the voided one's late answer came
    assert len(written) == 3
    probe.reply(600.0)                             # that late answer is no lag
    assert (probe.worst_s, probe.answered) == (35.0, 2)
    probe.poll(601.0)
    probe.pause()                                  # a power loss: the dead controller never answers
    probe.ready()                                  # the restarted one said ready
    probe.poll(900.0)
    probe.reply(901.0)
    assert (probe.worst_s, probe.answered) == (35.0, 3) and len(written) == 5
    probe.pause(for_good=True)                     # hung on purpose: nothing more
    probe.resume()
    probe.ready()
    probe.poll(1000.0)
    assert len(written) == 5
    assert is_probe_reply({"type": "reply", "source": "stdin", "cmd": None, "code": "invalid"})
    assert not is_probe_reply({"type": "reply", "source": "stdin", "cmd": "hold"})
    assert not is_probe_reply({"type": "reply", "source": "mqtt", "cmd": None})


def test_max_lag_s_is_read_and_checked() -> None:
    def with_limit(value: str) -> str:
        return IDLE.format(root=ROOT).replace("time_scale = 600", f"time_scale = 600\n[rig]\nmax_lag_s = {value}")

    assert parse_scenario(with_limit("45"), pathlib.Path("/tmp/good.toml")).max_lag_s == 45.0
    assert parse_scenario(IDLE.format(root=ROOT), pathlib.Path("/tmp/good.toml")).max_lag_s == DEFAULT_MAX_LAG_S
    with pytest.raises(SpecError) as info:
        parse_scenario(with_limit("-1"), pathlib.Path("/tmp/bad_scenario.toml"))
    assert "rig.max_lag_s: expected a number from 0 to 3600, got -1" in str(info.value)


# ---------------------------------------------------------------- cleanup


def rig_processes(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (the run's report folder)."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


def start_runner(tmp_path: pathlib.Path) -> tuple[subprocess.Popen[str], pathlib.Path]:
    report_dir = tmp_path / "reports"
    runner = subprocess.Popen([sys.executable, "-m", "edge", "hil", "run",
                               str(ROOT / "hil" / "scenarios" / "hd_normal_batch.toml"), "--report-dir",
                               str(report_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while len(rig_processes(work_marker(report_dir))) < 2:       # the plant and the controller
        assert runner.poll() is None, runner.stdout.read() if runner.stdout else ""
        assert time.monotonic() < deadline, "the rig did not start"
        time.sleep(0.1)
    time.sleep(1.0)
    return runner, report_dir


def work_marker(report_dir: pathlib.Path) -> str:
    """The rig's work folder: on the plant's and the controller's command lines, not the runner's."""
    return str(report_dir / "hd_normal_batch.work")


def runner_output(runner: subprocess.Popen[str]) -> str:
    out, _ = runner.communicate(timeout=60)
    return out


def test_an_interrupted_run_leaves_no_process_and_no_register_file(tmp_path: pathlib.Path) -> None:
    runner, report_dir = start_runner(tmp_path)
    assert register_files(runner.pid), "the rig made its register file"
    runner.send_signal(signal.SIGINT)
    out = runner_output(runner)
    assert runner.returncode == 130, out
    assert "interrupted" in out
    assert rig_processes(work_marker(report_dir)) == []
    assert register_files(runner.pid) == set()


def test_a_crashed_plant_ends_the_scenario_as_an_error_and_is_cleaned_up(tmp_path: pathlib.Path) -> None:
    runner, report_dir = start_runner(tmp_path)
    plant = next(pid for pid in rig_processes(work_marker(report_dir))
                 if b"hil.plant_process" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes())
    os.kill(plant, signal.SIGKILL)
    out = runner_output(runner)
    assert runner.returncode == 1, out
    record = json.loads((report_dir / "hd_normal_batch.json").read_text())
    assert record["outcome"] == "error" and "plant process exited" in record["error"]
    assert rig_processes(work_marker(report_dir)) == []
    assert register_files(runner.pid) == set()
