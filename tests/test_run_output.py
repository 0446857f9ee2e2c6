"""What a person at the furnace reads from ``reedge run`` (issue 16, items 1, 2, 4, 5): the real process, its
human output captured, with the stock station's serial ports absent, and state dirs that cannot be written.

The register file is made here with ``plant_alive`` set (no plant process: the core runs on the wall clock
with every input at zero, which trips what it should). Without the watchdog output there is no proof test to
wait for, so the controller is ready in a few seconds. A full and a read-only state dir are real: a small
tmpfs mounted in a user and mount namespace of the test's own (``unshare -rm``), gone with the process.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from hil.regfile import RegisterFile
from tests.test_safety_layers import ROOT, without_watchdog

GAUGE_PORT = "/dev/serial/by-id/usb-FTDI_USB-RS485_Cable-if00-port0"
METER_PORT = "/dev/serial/by-id/usb-FTDI_USB-RS485_Cable-if01-port0"
WAIT_S = 90.0


def station_with_absent_ports(tmp_path: pathlib.Path, regs_path: pathlib.Path) -> tuple[pathlib.Path, str, str]:
    """The stock HD station (without its watchdog output) on ``regs_path``, its serial ports pointed at paths
    that do not exist (as the stock by-id names on a machine without the adapters)."""
    station = without_watchdog(tmp_path)
    gauge, meters = str(tmp_path / "by-id" / "gauge-port0"), str(tmp_path / "by-id" / "meters-port1")
    text = station.read_text()
    for old, new in (('path = "/dev/shm/reedge-hd-01.regs"', f'path = "{regs_path}"'),
                     (f'"{GAUGE_PORT}"', f'"{gauge}"'), (f'"{METER_PORT}"', f'"{meters}"')):
        assert old in text, old
        text = text.replace(old, new)
    station.write_text(text)
    return station, gauge, meters


def wait_for(out_path: pathlib.Path, proc: subprocess.Popen[str], *texts: str) -> str:
    deadline = time.monotonic() + WAIT_S
    while True:
        text = out_path.read_text()
        if all(t in text for t in texts):
            return text
        assert proc.poll() is None, text[-3000:]
        assert time.monotonic() < deadline, f"waiting for {texts}:\n{text[-3000:]}"
        time.sleep(0.1)


def test_human_output_names_the_missing_ports_once_and_prints_no_heartbeat(tmp_path: pathlib.Path) -> None:
    regs_path = tmp_path / "plant.regs"
    with RegisterFile.create(regs_path) as regs:
        regs.regs.plant_alive = 1
        station, gauge, meters = station_with_absent_ports(tmp_path, regs_path)
        out_path = tmp_path / "controller.out"
        with open(out_path, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--station", str(station),
                                     "--state-dir", str(tmp_path / "state")], cwd=ROOT,
                                    stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            try:
                wait_for(out_path, proc, "ready: ", "trip: ")
                # the gauge is silent: its stale trip comes after its 3 s max age, the ports were retried meanwhile
                ready_at = time.monotonic()
                wait_for(out_path, proc, "vacuum_gauge_silent")
                while time.monotonic() - ready_at < 3.0:       # a heartbeat would have printed >= 2 lines by now
                    assert proc.poll() is None
                    time.sleep(0.1)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    lines = out_path.read_text().splitlines()
    missing = "No such file or directory; retried until it opens"
    assert sorted(ln for ln in lines if ln.startswith("connection: ")) == [
        f"connection: gauge vacuum_gauge: could not open port {gauge}: {missing}",
        f"connection: modbus heater_meter, h2_meter, ar_meter: could not open port {meters}: {missing}",
    ], "\n".join(lines)
    statuses = [ln for ln in lines if ln.startswith("status: ")]
    assert statuses == ["status: idle (no batch)"], "\n".join(lines)
    assert lines[-1] == "exit: controller stopped"


def unshare_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp"],
                          capture_output=True, timeout=30)
    return done.returncode == 0


needs_mounts = pytest.mark.skipif(not unshare_available(),
                                  reason="no user+mount namespaces here (unshare -rm) for a real small tmpfs")


def in_small_tmpfs(state: pathlib.Path, options: str, *command: str) -> subprocess.CompletedProcess[str]:
    """``command`` with ``state`` a fresh tmpfs mounted with ``options`` (size=..., ro) in a namespace of its own."""
    state.mkdir()
    script = f'mount -t tmpfs -o {options} tmpfs "$0" && exec "$@"'
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, str(state), *command], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


@needs_mounts
def test_a_read_only_state_dir_is_one_sentence_naming_it_and_what_to_do(tmp_path: pathlib.Path) -> None:
    """Item 5: it used to be ``latch file .../latched-trips: Read-only file system`` from the core."""
    regs_path = tmp_path / "plant.regs"
    with RegisterFile.create(regs_path) as regs:
        regs.regs.plant_alive = 1
        station, _, _ = station_with_absent_ports(tmp_path, regs_path)
        state = tmp_path / "state"
        done = in_small_tmpfs(state, "size=1m,ro", sys.executable, "-m", "edge", "run", "--station", str(station),
                              "--state-dir", str(state))
    assert done.returncode == 2, done.stderr
    error = [ln for ln in done.stderr.splitlines() if "no MQTT broker" not in ln]
    assert error == [f"reedge run: the state dir {state} (--state-dir) cannot be written: Read-only file system. "
                     "The controller keeps its latched trips, run state, batch records and MQTT outbox there. "
                     "Make it writable (a read-only file system: check the disk, e.g. with dmesg, and remount it "
                     "read-write; permissions: give it to the user the service runs as) or point --state-dir at "
                     "a writable disk, then start again"], done.stderr
    assert "latch file" not in done.stderr


@needs_mounts
def test_room_is_read_from_the_real_disk(tmp_path: pathlib.Path) -> None:
    """Item 4's check against real file systems: a 1 MiB tmpfs has not the room, a read-only one cannot be
    written, a 64 MiB one is fine (the controller's use of it: tests/test_sequences.py)."""
    probe = "import pathlib, sys; from edge.files import room_problem; print(room_problem(pathlib.Path(sys.argv[1])))"
    small = in_small_tmpfs(tmp_path / "small", "size=1m", sys.executable, "-c", probe, str(tmp_path / "small"))
    assert small.stdout.startswith(f"the state dir {tmp_path / 'small'} has 1.0 MiB free, a batch needs at least "
                                   "16.0 MiB"), small
    ro = in_small_tmpfs(tmp_path / "ro", "size=64m,ro", sys.executable, "-c", probe, str(tmp_path / "ro"))
    assert ro.stdout.strip() == f"the state dir {tmp_path / 'ro'} cannot be written (Read-only file system)", ro
    big = in_small_tmpfs(tmp_path / "big", "size=64m", sys.executable, "-c", probe, str(tmp_path / "big"))
    assert big.stdout.strip() == "None", big
