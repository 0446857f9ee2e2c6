"""A real PostgreSQL server for the historian's tests: a temp data dir, a free loopback port, trust auth.

    server = PgServer().start()        # initdb once, then postgres; ``server.url`` for open_store
    server.stop()                      # SIGTERM: fast shutdown; ``start()`` again on the same port and data
    server.kill()                      # SIGKILL of the postmaster: a crash, recovered from WAL at the next start
    server.close()                     # stopped and its directory removed

initdb and postgres refuse to run as root (we run as root here and in CI), so as root both run as the
``postgres`` user (``setpriv``, which execs: the process we hold is the postmaster itself, so a signal
reaches it) on a directory made outside pytest's private tmp tree and chowned to that user. Not root:
as the current user. ``fsync=off``: a crash of the server process loses nothing the OS has (what the
fault tests kill), only a crash of the machine would, and the tests never do that; it keeps initdb and
every commit fast on a shared 2-core box.

When PostgreSQL is missing the tests fail under CI (``CI`` set) and skip with the reason elsewhere;
``./dev test`` installs it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from tests.mqtt_broker import SAFETY_S, free_port

PG_BINARIES = (pathlib.Path("/usr/lib/postgresql/15/bin"), pathlib.Path("/usr/lib/postgresql/16/bin"),
               pathlib.Path("/usr/lib/postgresql/17/bin"))


def postgres_bindir() -> pathlib.Path:
    """The folder of initdb and postgres; fails under CI and skips elsewhere when PostgreSQL is missing."""
    override = os.environ.get("REEDGE_PG_BINDIR")
    for folder in ([pathlib.Path(override)] if override else []) + list(PG_BINARIES):
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    found = shutil.which("initdb")
    if found:
        return pathlib.Path(found).parent
    message = "PostgreSQL is not installed (./dev test installs it: apt-get install postgresql)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class PgServer:
    """One postgres process on its own data dir and port; the database ``postgres``, user ``postgres``."""

    def __init__(self, *, port: int | None = None, settings: dict[str, str] | None = None) -> None:
        self.bindir = postgres_bindir()
        self.port = port or free_port()
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="reedge-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.settings = {"fsync": "off", "full_page_writes": "off", "max_connections": "50",
                         "shared_buffers": "32MB", **(settings or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
        self._initdb()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _initdb(self) -> None:
        done = subprocess.run([*self._as, str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                               "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"],
                              capture_output=True, text=True, timeout=SAFETY_S, cwd=self.dir)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def start(self) -> PgServer:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        options = [f"-c{k}={v}" for k, v in self.settings.items()]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*self._as, str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-h", "127.0.0.1", "-k", str(self.dir), *options],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + SAFETY_S
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"postgres not ready after {SAFETY_S:g} s:\n{self.log_text()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: open transactions are rolled back, sessions ended, a checkpoint written)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=SAFETY_S)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL of the postmaster (a crash); its children notice and leave on their own, and this waits
        for them, since postgres refuses to start again while the old shared memory is still attached."""
        if self.proc is not None and self.proc.poll() is None:
            children = _children_of(self.proc.pid)
            self.proc.kill()
            self.proc.wait(timeout=SAFETY_S)
            deadline = time.monotonic() + SAFETY_S
            while any(_alive(pid) for pid in children):
                if time.monotonic() > deadline:
                    for pid in children:
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.02)

    def close(self) -> None:
        self.stop()
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, waiting for a parent that may never reap it, has stopped)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def _children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the postmaster's backends and helpers), from /proc."""
    out = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(entry.name))
    return out
