"""``reedge node sim``: the virtual sensor node (real MicroPython under Node.js) served on a pty by one command of
the hil plugin. It prints its port, answers as a MicroPython board on it (``boards list --probe`` sees one), and
Ctrl-C, SIGTERM and SIGHUP each end it cleanly: exit 0, the interpreter process gone, the link removed, the
flash folder given with ``--fs`` kept. Bad options are one-line errors that change nothing.
"""

from __future__ import annotations

import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
WAIT_S = 120.0      # safety nets on a loaded 2-core machine, never measurements


def reedge(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=WAIT_S,
                          cwd=cwd, env=env)


class Sim:
    """``reedge node sim`` as a child process; its output is collected line by line."""

    def __init__(self, cwd: pathlib.Path, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "edge", "node", "sim", *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, text: str) -> str:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} from reedge node sim; it printed: {''.join(self.seen)!r}")

    def stop(self, signum: int) -> tuple[int, str]:
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout=WAIT_S)
        self._pump_thread.join(timeout=WAIT_S)      # the pipe closed: every line is in the queue
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code, "".join(self.seen)

    def kill(self) -> None:
        """After a failed test: SIGTERM first, so the sim still removes its link and temporary folders."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=WAIT_S)


def interpreters_on(fs_dir: pathlib.Path) -> list[int]:
    """Pids of MicroPython runners whose flash is ``fs_dir`` (unique per test)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"fs={fs_dir.resolve()}".encode() in cmdline:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "term", "hup"])
def test_sim_serves_a_micropython_board_and_stops_cleanly(tmp_path: pathlib.Path, signum: int) -> None:
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "keep.txt").write_text("a file on the node's flash\n")
    sim = Sim(tmp_path, "--link", "pico0", "--fs", str(flash))
    try:
        sim.wait_for("ready")
        link = tmp_path / "pico0"
        assert link.is_symlink() and os.path.realpath(link).startswith("/dev/pts/")
        fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
        try:
            assert os.isatty(fd)
        finally:
            os.close(fd)
        assert interpreters_on(flash), "no MicroPython runner on this flash folder"
        if signum == signal.SIGINT:        # once is enough: the raw REPL answers as a real board's would
            probed = reedge("boards", "list", "--port", "pico0", "--probe", cwd=tmp_path)
            assert probed.returncode == 0, probed.stderr
            assert "MicroPython 1.29" in probed.stdout and "no node.json" in probed.stdout, probed.stdout
        code, out = sim.stop(signum)
    finally:
        sim.kill()
    assert code == 0, out
    assert f"stopped ({signal.Signals(signum).name})" in out, out
    assert not link.exists() and not link.is_symlink(), "the link outlived the sim"
    assert interpreters_on(flash) == [], "the MicroPython interpreter outlived the sim"
    assert (flash / "keep.txt").read_text() == "a file on the node's flash\n", "--fs is the node's flash: kept"


def test_sim_without_fs_leaves_no_temporary_flash(tmp_path: pathlib.Path) -> None:
    sim = Sim(tmp_path)
    try:
        line = sim.wait_for("flash folder")
        folder = pathlib.Path(line.split("flash folder ", 1)[1].split(" (temporary)")[0].strip())
        assert folder.is_dir() and "(temporary)" in line
        port = line.split("virtual sensor node on ", 1)[1].split(" ")[0]
        assert pathlib.Path(port).is_symlink()
        sim.wait_for("ready")
        code, out = sim.stop(signal.SIGTERM)
    finally:
        sim.kill()
    assert code == 0, out
    assert not folder.exists(), "the temporary flash folder outlived the sim"


def test_bad_options_are_one_line_errors_that_change_nothing(tmp_path: pathlib.Path) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("not a port\n")
    for args, message in ((["--link", str(taken)], "exists and is not a symlink"),
                          (["--fs", str(tmp_path / "missing")], "no such folder"),
                          (["--link", str(tmp_path / "nowhere" / "pico0")], "no such folder"),
                          (["--uid", "xyz"], "expected 16 hex digits")):
        done = reedge("node", "sim", *args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)
        assert "ready" not in done.stdout
    assert taken.read_text() == "not a port\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
