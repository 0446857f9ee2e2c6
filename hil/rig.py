"""The virtual rig: a plant process and the real controller process on one register file.

``VirtualRig`` starts the plant (``hil.plant_process``) in its own process group with a fresh
register file, then the controller exactly as a station runs it (``reedge run``), pointed at the
rig by a ``rig.json`` binding (``edge.app.rig_binding``). It can do to the controller what a
furnace's life does to it: hang its scan loop (SIGUSR1: the core's dead-man must act), freeze the
whole process (SIGSTOP: only the external watchdog relay can act), kill it in a power loss and start
it again. Serial devices get
pseudo-terminals. The plant logs every channel and output at a fixed plant-time rate.

Everything it starts is stopped and every file it made in shared memory is removed by ``close()``,
which the runner calls from ``finally`` and from its signal handlers; it is idempotent.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from edge.app.rig_binding import RigBinding
from hil.regfile import RegisterFile, default_dir

PLANT_EPOCH_UNIX = 1_800_000_000.0    # the plant clock's origin as a unix time (for run-state stamps)
POLL_S = 0.01                         # the runner's look at a real-time rig: every 10 ms of wall time
CHANNELS_EVERY_S = 0.05
_counter = itertools.count()
#: what ends a run cleanly: Ctrl-C, a stop, and SIGHUP (the terminal or SSH session went away); the default
#: action of SIGHUP would kill the runner on the spot and leave the controller and the register file behind
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class RigError(RuntimeError):
    """The rig could not do what a scenario asked (a process died, a command failed)."""


@dataclass
class ControllerLine:
    """One JSON line from the controller, with the wall time (monotonic ns) it was read."""

    wall_ns: int
    data: dict[str, Any]


@dataclass
class RigConfig:
    station: pathlib.Path
    plant: str
    time_scale: float
    workdir: pathlib.Path
    plant_params: Mapping[str, float] = field(default_factory=dict)
    relay_timeout_s: float = 0.5
    relay_outputs: Sequence[str] = ("heater", "h2_inlet_valve")
    log_every_s: float = 10.0
    serial: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    scan_s: float = 1.0
    controller_args: Sequence[str] = ()   # more ``reedge run`` options, e.g. ("--broker", "mqtt://127.0.0.1:1883")
    feed: str = ""                        # the batch's --feed and --mass-in-kg (with a recipe)
    mass_in_kg: float | None = None
    stop_grace_s: float = 15.0            # SIGTERM to SIGKILL: room for the controller's MQTT flush (--mqtt-flush-s)
    power_loss: bool = False              # the scenario cuts the power: the lockstep rig paces saves on its clock


class ScenarioRig(Protocol):
    """What the scenario runner (``hil.runner``) drives: ``VirtualRig`` on the wall clock, or
    ``hil.lockstep_rig.LockstepScenarioRig`` on the plant's. ``now_ns`` stamps what the runner sees (the order
    of steps, lines and plant events); ``advance`` lets the plant run on until the runner looks again."""

    clock: str                      # "realtime" or "lockstep": the scenario's [rig] clock
    workdir: pathlib.Path
    state_dir: pathlib.Path
    log_path: pathlib.Path
    controller_log: pathlib.Path
    hung: bool

    @property
    def regs(self) -> RegisterFile | None: ...

    def start(self) -> None: ...
    def start_controller(self, recipe: pathlib.Path | None = None, batch_id: str | None = None) -> None: ...
    def close(self) -> None: ...
    def now_ns(self) -> int: ...
    def t0_ns(self) -> int: ...
    def plant_s(self) -> float: ...
    def advance(self) -> None: ...
    def channels_due(self) -> bool: ...
    def check(self, controller_may_be_dead: bool) -> None: ...
    def plant_command(self, **cmd: Any) -> dict[str, Any]: ...
    def snapshot(self) -> dict[str, Any]: ...
    def channels(self) -> tuple[dict[str, Any], dict[str, float]]: ...
    def controller_alive(self) -> bool: ...
    def controller_command(self, verb: str, **fields: Any) -> None: ...
    def write_controller(self, line: str, what: str = "a line") -> None: ...
    def controller_lines(self, since: int = 0) -> list[ControllerLine]: ...
    def signal_controller(self, sig: signal.Signals) -> int: ...
    def kill_controller(self) -> int: ...


class RigFolder:
    """Where a rig keeps a run's evidence, the same for both clocks: the plant's log, the controller's log and its
    state dir (run state, batch records) in the scenario's work folder."""

    def __init__(self, cfg: RigConfig) -> None:
        self.cfg = cfg
        self.workdir = cfg.workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.workdir / "state"
        self.log_path = self.workdir / "plant-log.jsonl"
        self.controller_log = self.workdir / "controller.log"


class VirtualRig(RigFolder):
    clock = "realtime"

    def __init__(self, cfg: RigConfig) -> None:
        super().__init__(cfg)
        self.regs_path = default_dir() / f"reedge-rig-{os.getpid()}-{next(_counter)}.regs"
        self.regs: RegisterFile | None = None
        self.plant: subprocess.Popen[str] | None = None
        self.controller: subprocess.Popen[str] | None = None
        self.lines: list[ControllerLine] = []
        self.status: dict[str, Any] = {}
        self.serial: dict[str, str] = {}
        self.controller_starts: list[int] = []     # wall ns of every controller start
        self._plant_lock = threading.Lock()
        self._lines_lock = threading.Lock()
        self._readers: list[threading.Thread] = []
        self._stderr_files: list[IO[str]] = []
        self.frozen = False
        self.hung = False          # a hung controller cannot act on SIGTERM: it is killed
        self.closed = False
        self._channels_read = 0.0

    # ---- lifecycle ----
    def start(self) -> None:
        self.regs = RegisterFile.create(self.regs_path)
        plant_cfg = {
            "station": str(self.cfg.station), "plant": self.cfg.plant, "params": dict(self.cfg.plant_params),
            "register_file": str(self.regs_path), "time_scale": self.cfg.time_scale,
            "relay_timeout_s": self.cfg.relay_timeout_s, "relay_outputs": list(self.cfg.relay_outputs),
            "log": str(self.log_path), "log_every_s": self.cfg.log_every_s,
            "serial": {k: dict(v) for k, v in self.cfg.serial.items()},
        }
        cfg_path = self.workdir / "plant.json"
        cfg_path.write_text(json.dumps(plant_cfg, indent=1))
        err = open(self.workdir / "plant.stderr", "w")  # noqa: SIM115 - closed in close()
        self._stderr_files.append(err)
        self.plant = subprocess.Popen([sys.executable, "-m", "hil.plant_process", str(cfg_path)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                      start_new_session=True)
        ready = self._plant_reply(timeout_s=30.0)
        if not ready.get("ready"):
            raise RigError(f"the plant did not start: {ready}")
        self.serial = dict(ready.get("serial", {}))
        RigBinding(register_file=str(self.regs_path), time_scale=self.cfg.time_scale,
                   plant_epoch_unix=PLANT_EPOCH_UNIX, serial=self.serial).write(self.workdir)

    def start_controller(self, recipe: pathlib.Path | None = None, batch_id: str | None = None) -> None:
        if self.controller is not None and self.controller.poll() is None:
            raise RigError("the controller is already running")
        argv = [sys.executable, "-m", "edge", "run", "--station", str(self.cfg.station),
                "--state-dir", str(self.state_dir), "--rig", str(self.workdir), "--json", "--commands", "stdin",
                "--scan-s", str(self.cfg.scan_s)]
        if recipe is not None:
            argv += ["--recipe", str(recipe), "--batch-id", batch_id or "hil"]
            argv += ["--feed", self.cfg.feed] if self.cfg.feed else []
            argv += ["--mass-in-kg", repr(self.cfg.mass_in_kg)] if self.cfg.mass_in_kg is not None else []
        argv += list(self.cfg.controller_args)
        err = open(self.controller_log, "a")  # noqa: SIM115 - closed in close()
        self._stderr_files.append(err)
        self.controller = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                           text=True, start_new_session=True)
        self.controller_starts.append(time.monotonic_ns())
        self.frozen = False
        reader = threading.Thread(target=self._read_controller, args=(self.controller,), daemon=True)
        reader.start()
        self._readers.append(reader)

    def _read_controller(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                data = json.loads(raw)
            except ValueError:
                data = {"type": "text", "message": raw.rstrip()}
            line = ControllerLine(time.monotonic_ns(), data)
            with self._lines_lock:
                self.lines.append(line)
                if data.get("type") == "status":
                    self.status = data

    def close(self) -> None:
        """Stop everything, remove the register file. Safe to call twice; a second stop signal (STOP_SIGNALS)
        while it runs waits until it is done (blocked, delivered after) instead of cutting it short."""
        if self.closed:
            return
        self.closed = True
        main = threading.current_thread() is threading.main_thread()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS)) if main else None
        try:
            self._close()
        finally:
            if blocked is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _close(self) -> None:
        proc = self.controller
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)      # a frozen process cannot handle SIGTERM
                os.killpg(proc.pid, signal.SIGKILL if self.hung else signal.SIGTERM)
            _wait_or_kill(proc, self.cfg.stop_grace_s)
        plant = self.plant
        if plant is not None and plant.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert plant.stdin is not None
                plant.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                plant.stdin.flush()
            _wait_or_kill(plant, 5.0)
        for p in (proc, plant):
            if p is not None:
                for stream in (p.stdin, p.stdout):
                    with contextlib.suppress(OSError, ValueError):
                        if stream is not None:
                            stream.close()
        for f in self._stderr_files:
            f.close()
        if self.regs is not None:
            self.regs.close()
        self.regs_path.unlink(missing_ok=True)

    def __enter__(self) -> VirtualRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the clock ----
    def now_ns(self) -> int:
        return time.monotonic_ns()

    def t0_ns(self) -> int:
        """The wall time the controller first started (the record's wall seconds count from it)."""
        return self.controller_starts[0] if self.controller_starts else 0

    def advance(self) -> None:
        """The plant runs on by itself: the runner looks again after a short nap."""
        time.sleep(POLL_S)

    def channels_due(self) -> bool:
        """Channel snapshots at most every 50 ms of wall time (each is a round trip to the plant process)."""
        if time.monotonic() - self._channels_read < CHANNELS_EVERY_S:
            return False
        self._channels_read = time.monotonic()
        return True

    def check(self, controller_may_be_dead: bool) -> None:
        """A RigError when the plant process, or the controller when it should be running, exited."""
        if self.plant is not None and self.plant.poll() is not None:
            raise RigError(f"the plant process exited (code {self.plant.poll()}); see {self.workdir / 'plant.stderr'}")
        if not self.controller_alive() and not controller_may_be_dead:
            code = self.controller.poll() if self.controller else None
            raise RigError(f"the controller exited (code {code}); see {self.controller_log}")

    # ---- the plant ----
    def _plant_reply(self, timeout_s: float = 10.0) -> dict[str, Any]:
        plant = self.plant
        assert plant is not None and plant.stdout is not None
        ready, _, _ = select.select([plant.stdout], [], [], timeout_s)
        line = plant.stdout.readline() if ready else ""
        if not line:
            code = plant.poll()
            raise RigError(f"the plant process {'exited with ' + str(code) if code is not None else 'did not answer'}"
                           f" (see {self.workdir / 'plant.stderr'})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def plant_command(self, **cmd: Any) -> dict[str, Any]:
        plant = self.plant
        if plant is None or plant.poll() is not None:
            raise RigError("the plant process is not running")
        with self._plant_lock:
            assert plant.stdin is not None
            plant.stdin.write(json.dumps(cmd) + "\n")
            plant.stdin.flush()
            reply = self._plant_reply()
        if not reply.get("ok"):
            raise RigError(f"plant refused {cmd}: {reply.get('error')}")
        return reply

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = self.plant_command(cmd="snapshot")["snapshot"]
        return snap

    def channels(self) -> tuple[dict[str, Any], dict[str, float]]:
        """The published channels (None: broken) and the plant's true values, for the steps' conditions."""
        snap = self.snapshot()
        return snap.get("channels", {}), snap.get("truth", {})

    def plant_s(self) -> float:
        assert self.regs is not None
        return int(self.regs.regs.plant_ns) / 1e9

    # ---- the controller ----
    def controller_alive(self) -> bool:
        return self.controller is not None and self.controller.poll() is None

    def controller_command(self, verb: str, **fields: Any) -> None:
        self.write_controller(json.dumps({"cmd": verb, **fields}) + "\n", verb)

    def write_controller(self, line: str, what: str = "a line") -> None:
        """One line on the controller's stdin (``--commands stdin``)."""
        proc = self.controller
        if proc is None or proc.poll() is not None:
            raise RigError(f"cannot send {what!r}: the controller is not running")
        assert proc.stdin is not None
        proc.stdin.write(line)
        proc.stdin.flush()

    def signal_controller(self, sig: signal.Signals) -> int:
        """Send ``sig`` to the controller's process group; returns the wall time (monotonic ns) it was sent."""
        proc = self.controller
        if proc is None or proc.poll() is not None:
            raise RigError(f"cannot send {sig.name}: the controller is not running")
        at = time.monotonic_ns()
        os.killpg(proc.pid, sig)
        if sig == signal.SIGSTOP:
            self.frozen = True
        elif sig == signal.SIGCONT:
            self.frozen = False
        return at

    def kill_controller(self) -> int:
        at = self.signal_controller(signal.SIGKILL)
        assert self.controller is not None
        self.controller.wait()
        return at

    def controller_lines(self, since: int = 0) -> list[ControllerLine]:
        with self._lines_lock:
            return self.lines[since:]

    def wait_for(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise RigError(f"{what}: not within {timeout_s:.0f} s")
            time.sleep(0.01)


def _wait_or_kill(proc: subprocess.Popen[str], timeout_s: float) -> None:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
