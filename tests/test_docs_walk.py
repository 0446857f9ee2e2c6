"""boards/README.md walked as a technician would: its shell blocks run as written.

Every fenced ``sh`` block of the file is marked by the HTML comment on the line before it:

* ``<!-- walk -->``: each line is a command; run in document order, each must exit 0;
* ``<!-- walk: serve -->``: one long-running command (``reedge node sim``) started before the walk's next
  block, ready when it prints ``ready``, kept running beside the rest, then stopped with Ctrl-C (SIGINT),
  after which it must exit 0;
* ``<!-- no walk: why -->``: not run (real USB devices, an SD card, root on a Pi); the reason is required.

The walk runs in a scratch folder holding a link to the repository's ``stations/`` (the docs name
``stations/hd-02.toml`` relative to a checkout), with ``reedge`` on PATH running this checkout's code.
Output text is not compared: the docs show what the commands print, the test that they work as written.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "boards" / "README.md"
WAIT_S = 180.0        # per command: a safety net on a loaded 2-core machine, never a measurement
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
MARK = re.compile(r"<!--\s*(walk|walk:\s*serve|no walk:\s*(.*?))\s*-->$")


def blocks(text: str) -> list[tuple[str, str, str, int]]:
    """(language, body, mark, line number) of every fenced block; mark is the comment just before it, or ''."""
    found = []
    for m in BLOCK.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        mark = MARK.fullmatch(before)
        found.append((m.group(1), m.group(2), mark.group(0) if mark else "", text[:m.start()].count("\n") + 1))
    return found


def commands(body: str) -> list[str]:
    return [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_every_shell_block_says_whether_it_is_walked() -> None:
    """A command block without a mark would silently escape the walk; a `no walk` must say why. Commands are
    never hidden in text blocks as `$ ...` transcripts, where the walk would not see them."""
    text = DOC.read_text()
    found = blocks(text)
    shell = [b for b in found if b[0] in ("sh", "bash", "shell", "console")]
    assert len(shell) >= 5, "the shell blocks of boards/README.md were not found"
    for lang, _body, mark, line in shell:
        assert lang == "sh", f"boards/README.md:{line}: write shell blocks as ```sh"
        assert mark, f"boards/README.md:{line}: mark the block <!-- walk -->, <!-- walk: serve --> or " \
                     "<!-- no walk: why -->"
        why = MARK.fullmatch(mark)
        if mark.startswith("<!-- no walk"):
            assert why is not None and len(why.group(2)) > 10, f"boards/README.md:{line}: say why it is not walked"
    for lang, body, _mark, line in found:
        if lang != "sh":
            assert not re.search(r"^\$ ", body, re.M), f"boards/README.md:{line}: a command in a {lang or 'plain'} " \
                                                       "block; put it in a ```sh block with its mark"
    walked = [c for _l, body, mark, _n in shell if mark.startswith("<!-- walk") for c in commands(body)]
    assert any(c.startswith("reedge node sim") for c in walked) and any(c.startswith("reedge flash") for c in walked)
    assert any(c.startswith("reedge provision") for c in walked)


@pytest.fixture()
def scratch(tmp_path: pathlib.Path) -> tuple[pathlib.Path, dict[str, str]]:
    """A technician's folder: `stations/` of the checkout, and `reedge` on PATH running this checkout."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "stations").symlink_to(ROOT / "stations")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "reedge"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -m edge \"$@\"\n")
    script.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT)}
    return work, env


def _wait_ready(proc: subprocess.Popen[bytes], log: pathlib.Path, command: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if "ready" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"`{command}` never said it was ready; it printed: {log.read_text(errors='replace')!r}")


def test_walk_the_technicians_commands(scratch: tuple[pathlib.Path, dict[str, str]]) -> None:
    work, env = scratch
    served: list[tuple[str, subprocess.Popen[bytes]]] = []
    ran: list[str] = []
    outputs: list[str] = []
    try:
        for _lang, body, mark, line in blocks(DOC.read_text()):
            if mark == "<!-- walk: serve -->":
                (command,) = commands(body)
                log = work.parent / f"serve-{len(served)}.log"
                with open(log, "wb") as out:
                    proc = subprocess.Popen(["sh", "-c", f"exec {command}"], cwd=work, env=env, stdout=out,
                                            stderr=subprocess.STDOUT)
                served.append((command, proc))
                _wait_ready(proc, log, command)
            elif mark == "<!-- walk -->":
                for command in commands(body):
                    done = subprocess.run(["sh", "-c", command], cwd=work, env=env, capture_output=True, text=True,
                                          timeout=WAIT_S)
                    assert done.returncode == 0, f"boards/README.md:{line}: `{command}` exited {done.returncode}:\n" \
                                                 f"{done.stdout}{done.stderr}"
                    ran.append(command)
                    outputs.append(done.stdout)
        for command, proc in served:
            proc.send_signal(signal.SIGINT)        # Ctrl-C in its terminal
            assert proc.wait(timeout=WAIT_S) == 0, f"`{command}` did not end cleanly on Ctrl-C"
    finally:
        for _command, proc in served:     # after a failure: Ctrl-C first, so the sim cleans up its pty and folders
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=WAIT_S)
    assert len(ran) >= 8, ran
    # what the walk left is what the docs say it leaves: the node flashed, the image provisioned, the link gone
    assert (work / "rootfs" / "etc" / "reedge" / "station.toml").read_bytes() == \
        (ROOT / "stations" / "hd-02.toml").read_bytes()
    assert not (work / "pico0").is_symlink()
    # the real firmware's HELLO after the flash carried the config hash stations/hd-02.toml expects of its node
    node = tomllib.loads((ROOT / "stations" / "hd-02.toml").read_text())["sensor_nodes"]["node_a"]
    hello = f"hello: node {node['node_id']} firmware {node['firmware']} config {node['config_hash']} "
    assert any(hello in out for out in outputs), (hello, outputs)
