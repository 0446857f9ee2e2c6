"""``reedge plant``: the virtual plant alone, a controller started by hand from the line it prints, and SIGHUP (a
dropped SSH session) ending both cleanly. Real processes, the real register file and ptys."""

from __future__ import annotations

import json
import os
import pathlib
import queue
import shlex
import signal
import subprocess
import sys
import threading
from typing import IO

import pytest

from edge.app import cli
from hil.runner import Interrupted, interruptible

ROOT = pathlib.Path(__file__).resolve().parent.parent
STATION = ROOT / "stations" / "hd_reactor_sim.toml"


def _lines(stream: IO[str]) -> queue.Queue[str | None]:
    """The stream's lines as they come (None at its end), read by a thread: waits have deadlines, never a hang."""
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            q.put(line.rstrip("\n"))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _next(q: queue.Queue[str | None], what: str, timeout_s: float = 60.0) -> str:
    try:
        line = q.get(timeout=timeout_s)
    except queue.Empty:
        raise AssertionError(f"{what}: nothing within {timeout_s:.0f} s") from None
    assert line is not None, f"{what}: the output ended"
    return line


def _processes_using(text: str) -> list[int]:
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_plant_serves_a_controller_started_from_the_line_it_prints_and_sighup_ends_both_cleanly(
        tmp_path: pathlib.Path) -> None:
    rig_dir = tmp_path / "rig"
    plant = subprocess.Popen([sys.executable, "-m", "edge", "plant", str(STATION), "--time-scale", "20",
                              "--dir", str(rig_dir)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    controller: subprocess.Popen[str] | None = None
    try:
        assert plant.stdout is not None
        out = _lines(plant.stdout)
        head = _next(out, "the plant's first line")
        assert head.startswith("virtual hd_reactor plant for"), head
        regs = pathlib.Path(head.split("register file ", 1)[1].split(";", 1)[0])
        assert regs.exists() and "vacuum_gauge on /dev/pts/" in head, head
        run_line = ""
        while not run_line:
            line = _next(out, "the reedge run line")
            run_line = line.strip() if line.strip().startswith("reedge run ") else ""
        argv = shlex.split(run_line)
        assert argv[:2] == ["reedge", "run"] and (rig_dir / "rig.json").exists(), run_line
        # the line as printed (plus --json, which the plant's hint offers, to read the controller's status)
        controller = subprocess.Popen([sys.executable, "-m", "edge", *argv[1:], "--json"], cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True)
        assert controller.stdout is not None
        lines = _lines(controller.stdout)
        ready = json.loads(_next(lines, "the controller's ready line"))
        assert ready["type"] == "ready", ready
        status: dict[str, object] = {}
        while not status:          # a few plant seconds on, the gauge and the meters answered from the plant
            data = json.loads(_next(lines, "a status with the plant's instruments read"))
            inst = data.get("instruments", {}) if data.get("type") == "status" else {}
            if (data.get("t_s", 0) - ready["t_s"] >= 3.0 and inst["vacuum_gauge"]["good"] >= 2
                    and inst["heater_meter"]["good"] >= 1):
                status = data
        assert status["instruments"]["vacuum_gauge"]["last_value"] == pytest.approx(1000.0, abs=50)  # type: ignore[index]

        os.killpg(controller.pid, signal.SIGHUP)        # the SSH session of the controller's terminal dropped
        assert controller.wait(timeout=60) == 0
        rest = []
        while (left := lines.get(timeout=30)) is not None:
            rest.append(json.loads(left))
        assert rest[-1]["type"] == "exit", rest[-3:]     # it stopped as on SIGTERM: core stopped, exit line

        os.killpg(plant.pid, signal.SIGHUP)
        assert plant.wait(timeout=60) == 0, plant.stderr.read() if plant.stderr else ""
        tail = []
        while (printed := out.get(timeout=30)) is not None:
            tail.append(printed)
        assert tail[-1].startswith("stopped (SIGHUP)"), tail
        assert not regs.exists() and not (rig_dir / "rig.json").exists()
        assert (rig_dir / "plant-log.jsonl").stat().st_size > 0 and (rig_dir / "state").is_dir()
        assert _processes_using(str(rig_dir / "plant.json")) == [], "the plant process outlived the command"
    finally:
        for p in (controller, plant):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_run_without_the_plant_names_reedge_plant(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    station = tmp_path / "station.toml"
    station.write_text(STATION.read_text().replace('path = "/dev/shm/reedge-hd-01.regs"',
                                                   f'path = "{tmp_path / "absent.regs"}"', 1))
    assert cli.main(["run", "--station", str(station), "--state-dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err
    assert f"`reedge plant {station}`" in err and "--rig DIR" in err, err


def test_plant_refuses_a_station_wired_to_real_hardware_before_starting_anything(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plant", str(ROOT / "stations" / "hd-02.toml"), "--dir", str(tmp_path / "rig")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reedge plant: ") and "no `sim` driver" in err and err.count("\n") == 1, err
    assert not (tmp_path / "rig").exists()
    assert cli.main(["plant", str(STATION), "--time-scale", "0", "--dir", str(tmp_path / "rig")]) == 2
    assert "--time-scale must be within 1 .. 1500" in capsys.readouterr().err
    assert not (tmp_path / "rig").exists()


def test_sighup_interrupts_a_scenario_run_like_sigterm() -> None:
    """The runner (``reedge hil run``, ``reedge demo``) closes its rig on SIGHUP as on SIGTERM; before, SIGHUP's
    default action killed it on the spot and left the controller and the register file behind."""
    seen: list[int] = []

    def outside(signum: int, _frame: object) -> None:      # stands in for the default action, which would end pytest
        seen.append(signum)

    before = signal.signal(signal.SIGHUP, outside)
    try:
        with pytest.raises(Interrupted, match="SIGHUP"), interruptible():
            signal.raise_signal(signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is outside and seen == []    # put back after the run
    finally:
        signal.signal(signal.SIGHUP, before)


def test_sighup_stops_the_demo_and_its_rig_cleans_up(tmp_path: pathlib.Path) -> None:
    """``reedge demo`` handles SIGHUP (and SIGTERM) as ``reedge hil run`` does: before, either signal's default action
    ended it on the spot, its rig never closed. A lockstep scenario keeps it cheap: its rig's register file lives in
    a temporary folder (here TMPDIR), which must be gone after the stop."""
    scenario = tmp_path / "long.toml"
    scenario.write_text(f'[scenario]\ndescription = "a batch stopped by a hang-up"\nstation = "{STATION}"\n'
                        f'recipe = "{ROOT / "recipes" / "hd_standard.toml"}"\n[rig]\nclock = "lockstep"\n'
                        '[run]\nuntil = "batch_end"\nmax_plant_h = 16\n'
                        '[[expect]]\nmeasure = "batch_outcome"\nequals = "done"\n')
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    demo = subprocess.Popen([sys.executable, "-m", "edge", "demo", "--scenario", str(scenario), "--no-broker",
                             "--no-color", "--report-dir", str(tmp_path / "r")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "TMPDIR": str(tmp)})
    try:
        assert demo.stdout is not None
        out = _lines(demo.stdout)
        while "phase leak_test" not in _next(out, "the demo's batch under way"):
            pass
        assert list(tmp.iterdir()), "the lockstep rig's register file folder"
        os.killpg(demo.pid, signal.SIGHUP)
        assert demo.wait(timeout=60) == 130, demo.stderr.read() if demo.stderr else ""
        tail = []
        while (printed := out.get(timeout=30)) is not None:
            tail.append(printed)
        assert "interrupted (SIGHUP): the rig was stopped and cleaned up" in tail, tail
        assert list(tmp.iterdir()) == [], "the rig's register file outlived the demo"
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
