"""``reedge run``: the controller of one station, as it runs beside the furnace (and on the HIL rig).

One process: the C core samples and guards in its own thread; this loop scans the process
controller once per ``scan_s`` of core time, feeds the serial instruments, reports every event,
answers operator commands and tells systemd it is alive. On start it first recovers a batch a
power loss interrupted (``Controller.recover``), then starts the batch it was asked for.

Output: one line per event for the journal, or JSON lines with ``--json`` (what the HIL rig
reads): ``{"type": "ready"|"event"|"status"|"reply"|"exit", ...}``. Commands, one JSON object per
line on stdin with ``--commands stdin``: ``{"cmd": "hold"|"resume"|"abort"|"skip"}``. (MQTT
commands, validated and authorised, drive the same Controller methods.)

**On the virtual rig** (``--rig DIR``, written by ``hil.rig``; never on a real station): the sim
driver's register file and the serial ports are the rig's; the core's clock is the plant's, so
the controller-liveness timeouts (the dead-man, output keep-alives, injected-channel ages) are
multiplied by the time scale: they guard the software, whose speed does not scale with the
plant's clock, and keep their wall-clock meaning. Outages are measured on the plant's clock too
(it runs on through a simulated power loss). ``SIGUSR1`` hangs the scan loop for the
controller-hang scenario: the core's dead-man, not this process, must make the plant safe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from edge.config import Station, load_station
from edge.control.controller import BatchRejected, Controller, ProcessEvent
from edge.control.recipe import RecipeError, load_recipe
from edge.core import Core
from edge.io.pfeiffer import GaugePoller
from edge.systemd import Notifier

STATUS_EVERY_S = 1.0     # wall seconds between status lines (and on every change)


class RunError(RuntimeError):
    """Something the technician must fix before the controller can run (printed, exit 2)."""


@dataclass(frozen=True)
class RigBinding:
    """What ``hil.rig`` tells a controller about the virtual rig it runs on (``DIR/rig.json``)."""

    register_file: str
    time_scale: float
    plant_epoch_unix: float = 0.0
    serial: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, directory: pathlib.Path) -> RigBinding:
        path = directory / "rig.json"
        try:
            raw = json.loads(path.read_text())
            binding = cls(register_file=str(raw["register_file"]), time_scale=float(raw["time_scale"]),
                          plant_epoch_unix=float(raw.get("plant_epoch_unix", 0.0)),
                          serial={str(k): str(v) for k, v in dict(raw.get("serial", {})).items()})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunError(f"{path}: not a rig binding ({exc})") from exc
        if not (binding.time_scale >= 1.0 and math.isfinite(binding.time_scale)):
            raise RunError(f"{path}: time_scale must be >= 1, not {binding.time_scale}")
        return binding

    def apply(self, station: Station) -> Station:
        """The station as wired to the rig, with the liveness timeouts kept in wall-clock terms."""
        s = self.time_scale
        core = station.core
        drivers = tuple(dataclasses.replace(d, params={**d.params, "path": self.register_file})
                        if d.type == "sim" else d for d in core.drivers)
        channels = tuple(dataclasses.replace(c, max_age_ms=c.max_age_ms * s) if c.kind == "injected" else c
                         for c in core.channels)
        outputs = tuple(dataclasses.replace(o, max_on_ms=o.max_on_ms * s) for o in core.outputs)
        rules = tuple(dataclasses.replace(r, threshold=r.threshold * s) if r.kind == "deadman" else r
                      for r in core.rules)
        core = dataclasses.replace(core, drivers=drivers, channels=channels, outputs=outputs, rules=rules)
        return dataclasses.replace(station, core=core)


@dataclass
class RunOptions:
    station: pathlib.Path
    state_dir: pathlib.Path
    recipe: pathlib.Path | None = None
    batch_id: str | None = None
    operator: str = ""
    scan_s: float = 1.0
    json_lines: bool = False
    commands_stdin: bool = False
    exit_when_done: bool = False
    rig: pathlib.Path | None = None


class Reporter:
    """Events and status out, one line each: human-readable for the journal, or JSON for a machine."""

    def __init__(self, json_lines: bool, stream: TextIO = sys.stdout) -> None:
        self.json_lines = json_lines
        self.stream = stream
        self._lock = threading.Lock()

    def write(self, line_type: str, text: str, **fields: Any) -> None:
        with self._lock:
            if self.json_lines:
                line = json.dumps(_finite({"type": line_type, **fields, "message": text}), default=str)
            else:
                line = f"{fields.get('kind', line_type)}: {text}"
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                pass                 # the reader went away (rig stopped): control goes on

    def event(self, e: ProcessEvent) -> None:
        self.write("event", e.message, t_s=e.t_s, kind=e.kind, data=e.data)


def _finite(value: Any) -> Any:
    """Strict JSON: a NaN reading (a broken sensor) goes out as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class Commands:
    """Operator commands as JSON lines on stdin, read without blocking the scan."""

    VERBS = ("hold", "resume", "abort", "skip")

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.closed = False

    def poll(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while not self.closed:
            ready, _, _ = select.select([self.stream], [], [], 0)
            if not ready:
                break
            line = self.stream.readline()
            if not line:
                self.closed = True
                break
            if not line.strip():
                continue
            try:
                cmd = json.loads(line)
                if not isinstance(cmd, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                out.append({"cmd": None, "error": f"not a JSON object: {exc}"})
                continue
            out.append(cmd)
        return out


def execute(ctl: Controller, cmd: dict[str, Any]) -> tuple[bool, str]:
    """(accepted, reason). The controller's own checks and the core's gate still apply."""
    verb = cmd.get("cmd")
    if verb not in Commands.VERBS:
        return False, cmd.get("error") or f"unknown command {verb!r} (known: {', '.join(Commands.VERBS)})"
    try:
        if verb == "hold":
            ctl.hold(str(cmd.get("reason", "operator hold")))
        elif verb == "resume":
            ctl.resume()
        elif verb == "abort":
            ctl.abort(str(cmd.get("reason", "operator abort")))
        else:
            ctl.skip()
    except (BatchRejected, RuntimeError, ValueError) as exc:
        return False, str(exc)
    return True, "ok"


def _hang(signum: int, frame: object) -> None:
    """The controller-hang scenario: the scan loop blocks for good, the core thread runs on."""
    while True:
        time.sleep(3600)


def run(opts: RunOptions) -> int:
    reporter = Reporter(opts.json_lines)
    notifier = Notifier()
    station = load_station(opts.station)
    binding = RigBinding.load(opts.rig) if opts.rig is not None else None
    if binding is not None:
        station = binding.apply(station)
        signal.signal(signal.SIGUSR1, _hang)
    elif any(d.type == "sim" for d in station.core.drivers) and not all(
            os.path.exists(d.params.get("path", "")) for d in station.core.drivers if d.type == "sim"):
        raise RunError("the station uses the sim driver but its register file does not exist: start the "
                       "virtual plant first (reedge demo / reedge hil run do)")
    recipe = None
    if opts.recipe is not None:
        try:
            recipe = load_recipe(opts.recipe)
        except RecipeError as exc:
            raise RunError("\n".join(str(e) for e in exc.errors)) from exc
    opts.state_dir.mkdir(parents=True, exist_ok=True)
    spec = station.core
    if spec.latch_file is None:
        spec = dataclasses.replace(spec, latch_file=str(opts.state_dir / "latched-trips"))
        station = dataclasses.replace(station, core=spec)

    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    commands = Commands(sys.stdin) if opts.commands_stdin else None

    with Core(spec) as core, contextlib.ExitStack() as instruments:
        pollers: dict[str, GaugePoller] = {}
        for name, inst in station.instruments.items():
            if binding is not None and name in binding.serial:
                inst = dataclasses.replace(inst, port=binding.serial[name])
            pollers[name] = GaugePoller(core, inst)
            pollers[name].start()
            instruments.callback(pollers[name].stop)
        clock: Callable[[], float] = time.time
        if binding is not None:
            epoch = binding.plant_epoch_unix

            def clock() -> float:
                return epoch + core.now_ns() / 1e9

        ctl = Controller(core, station, state_path=opts.state_dir / "run-state.json", wall_clock=clock)
        _wait_first_readings(core, stop)
        if core.restored_trips:
            tripped = [name for name, r in core.rules().items() if r.tripped]
            reporter.write("event", f"{core.restored_trips} latched trip(s) restored from {spec.latch_file}: "
                           f"{', '.join(tripped)}", t_s=ctl.now_s(), kind="recovery", data={"rules": tripped})
        recovered = ctl.recover()
        if recipe is not None:
            if ctl.sequencer is not None and ctl.sequencer.running:
                reporter.write("event", f"not starting {opts.recipe}: batch {ctl.batch.get('id')} was recovered",
                               t_s=ctl.now_s(), kind="batch", data={})
            else:
                try:
                    ctl.start_batch(recipe, batch_id=opts.batch_id or time.strftime("%Y%m%d-%H%M%S"),
                                    operator=opts.operator)
                except BatchRejected as exc:
                    reporter.write("event", f"batch rejected: {exc}", t_s=ctl.now_s(), kind="batch", data={})
                    if opts.exit_when_done:
                        return 1
        reporter.write("ready", f"controller for {station.identity.site}/{station.identity.station_id} running",
                       pid=os.getpid(), recovered=recovered, t_s=ctl.now_s())
        notifier.ready(f"station {station.identity.station_id}")
        return _loop(ctl, opts, reporter, notifier, commands, stop, binding, pollers)


def _wait_first_readings(core: Core, stop: threading.Event, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not stop.is_set() and time.monotonic() < deadline:
        core.heartbeat()
        if any(v.ok for v in core.latest().values()):
            return
        time.sleep(0.01)


def _loop(ctl: Controller, opts: RunOptions, reporter: Reporter, notifier: Notifier, commands: Commands | None,
          stop: threading.Event, binding: RigBinding | None, pollers: dict[str, GaugePoller]) -> int:
    scale = binding.time_scale if binding is not None else 1.0
    sent = 0
    last_status: tuple[Any, ...] = ()
    last_status_wall = 0.0
    while not stop.is_set():
        ctl.step()
        notifier.watchdog()
        for e in ctl.events[sent:]:
            reporter.event(e)
        sent = len(ctl.events)
        if len(ctl.events) > 10_000:       # reported: drop what the telemetry has seen
            del ctl.events[:sent]
            sent = 0
        seq = ctl.sequencer
        status = (seq.phase if seq else None, seq.held if seq else None, ctl.batch_finished())
        wall = time.monotonic()
        if status != last_status or wall - last_status_wall >= STATUS_EVERY_S:
            reporter.write("status", f"phase {status[0]}{' (held)' if status[1] else ''}", t_s=ctl.now_s(),
                           phase=status[0], held=status[1], finished=status[2], batch=ctl.batch.get("id"),
                           instruments={n: dataclasses.asdict(p.counters()) for n, p in pollers.items()})
            last_status, last_status_wall = status, wall
        if opts.exit_when_done and ctl.batch_finished():
            break
        if commands is not None:
            for cmd in commands.poll():
                ok, reason = execute(ctl, cmd)
                reporter.write("reply", reason, cmd=cmd.get("cmd"), accepted=ok, t_s=ctl.now_s())
        _sleep_core_time(ctl, opts.scan_s, scale, stop)
    notifier.stopping()
    with contextlib.suppress(OSError):
        ctl.save(force=True)
    reporter.write("exit", "controller stopped", t_s=ctl.now_s())
    return 0


def _sleep_core_time(ctl: Controller, scan_s: float, scale: float, stop: threading.Event) -> None:
    """Until ``scan_s`` of core time passed (the plant's clock on the rig), in short wall-clock naps."""
    end = ctl.now_s() + scan_s
    while not stop.is_set():
        left = end - ctl.now_s()
        if left <= 0:
            return
        stop.wait(min(left / scale, 0.05))
