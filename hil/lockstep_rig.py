"""The lockstep scenario rig: a scenario file's plant, core, cabinet, controller and batch recorder in one
process, stepped together on the plant's clock (``[rig] clock = "lockstep"``, hil/README.md "The two clocks").

The same pieces as the real-time rig (``hil.rig``), without its processes and wall clock: the plant side
(``hil.plant_sim.PlantSim``: physics, cabinet, faults, rows, meter counters), the real C core stepped one
tick per plant step (``hil.lockstep.LockstepRig``: register file, wiring, power-up proof test, the relay
judged on the plant's clock), and the real controller as ``reedge run`` assembles it, scanned every
``scan_s`` plant seconds by ``edge.app.run.Scan`` with its ``Reporter`` writing the JSON lines the runner
reads. Operator lines go through the same stdin command path (``edge.app.stdin_commands``).

Serial instruments: the Modbus meters are the plant's emulated devices (``hil.devices.modbus_meters``),
their registers read every ``poll_ms`` of plant time and decoded, injected and sampled by the product's own
bus code (``edge.devices.modbus``), without a pty; a Pfeiffer gauge's channel is injected every step, as
``edge.io`` would after a poll. What this rig does not model: ptys and their faults, process signals (hang,
freeze), wall-clock latencies. The scenario file refuses what needs them (``hil.scenario``).

A power loss (``power_loss``) is the board dying with the cabinet: the controller, its recorder and its core are
dropped where they stand, no shutdown code of the controller's runs (no save, no record closed, no event
drained), so what is on disk is what a SIGKILL or a power cut leaves there: the run state and the record as last
saved, the trend rows appended, the latch file. The core is freed as the kernel frees a killed process's (its
latch file's lock released; the file is a shared mapping, already holding every latch). When the power comes
back the board boots: a new core from the station restores the latch file and runs its power-up proof test,
and the controller starts through the same start-up as ``reedge run`` (``controller_for``, ``begin``), which
recovers the batch from the run state and continues its record. In a scenario with a power loss
(``RigConfig.power_loss``) the controller's saves are paced on the plant's clock (``SAVE_CLOCK_SCALE``), so that
what the power loss leaves on disk is the same every run; elsewhere on the wall clock, as on a station (a save
every 5 s of wall time: a few in a whole run, whose measurements they do not touch). The boot takes no plant
time here (the real-time rig's plant runs at 1x meanwhile): a real SIGKILL of real processes and an outage
measured across a real boot are the real-time scenarios' (``hd_power_loss_absorption``).

Liveness timeouts (the dead-man, output keep-alives, injected channels' ages) are scaled by ``scan_s`` (at
least 1), as the real-time rig scales them by its time scale: they guard the software's pace, and here a
scan comes every ``scan_s`` plant seconds exactly, as on a station scanning every second.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pathlib
import signal
import time
from collections.abc import Callable
from typing import Any, TextIO, cast

from edge.app.rig_binding import RigBinding
from edge.app.run import Devices, Reporter, Scan, begin, controller_for
from edge.app.stdin_commands import read_line
from edge.batch.record import BatchRecorder
from edge.control.controller import SAVE_EVERY_S, Controller
from edge.devices.modbus import ModbusBus
from edge.spec.instruments.modbus import ModbusConfig
from edge.spec.recipe_reader import load_recipe
from edge.spec.station import Station, load_station
from hil.lockstep import LockstepRig
from hil.plant_sim import PlantSim
from hil.plants.safety_hw import WatchdogRelay
from hil.rig import PLANT_EPOCH_UNIX, ControllerLine, RigConfig, RigError, RigFolder

#: plant steps per scan: the core ticks once per step. Half a scan is as fine as the real-time rig's plant loop
#: or finer (2 ms of wall x the time scale: 0.4 s at 200x, 1.2 s at 600x, 2.4 s at 1200x; scans of 1, 2 and 4 s
#: in the scenarios), and the plant models integrate in steps of up to 1 s within a step anyway
STEPS_PER_SCAN = 2
STATUS_EVERY_S = 60.0   # plant seconds between status lines (and on every change of phase, hold or finish)
T0_S = 1.0          # the core's clock starts at 1 s (hil.lockstep): the plant's rows start there too
#: with a power loss in the scenario, the controller's save clock (run state, batch record, trend appends) is the
#: plant's, this many times slower: paced on the plant's clock, a power loss leaves the same files every run; slowed
#: down, as the real-time rig's wall clock is by its time scale, their periodic saves (a few ms of wall time each)
#: come every 5 min of plant time instead of every 5 s (a recovery's outage is known to within that; changes are
#: saved at once anyway). Every 5 s of plant time they cost a 10 h batch 2 s more.
SAVE_CLOCK_SCALE = 60.0


class _Lines(io.TextIOBase):
    """The stream ``Reporter`` writes to: each JSON line becomes a ``ControllerLine``, stamped by the rig."""

    def __init__(self, stamp: Callable[[], int]) -> None:
        super().__init__()
        self.lines: list[ControllerLine] = []
        self._stamp = stamp

    def write(self, text: str) -> int:
        for raw in text.splitlines():
            if raw.strip():
                try:
                    data = json.loads(raw)
                except ValueError:
                    data = {"type": "text", "message": raw}
                self.lines.append(ControllerLine(self._stamp(), data))
        return len(text)


class _Meters:
    """The station's Modbus meters read from the plant's emulated devices on the plant's clock, through the
    product's bus code (decode, inject, sample and count as ``ModbusBus``'s port workers do, minus the line).

    Each is read every ``poll_ms`` (scaled as the ages are), or, when that is more often, every half of the
    shortest age its injected channels may have (``max_age_ms``, scaled; 5 s without one): fresh, as on a
    station, without reading registers every plant step (the step's largest cost; the real-time rig reads
    them every 500 ms of wall time: 100 to 600 s of plant time)."""

    def __init__(self, bus: ModbusBus, devices: dict[str, Any], configs: dict[str, ModbusConfig],
                 station: Station, scale: float) -> None:
        self.bus, self.devices, self.configs = bus, devices, configs
        ages = {c.name: c.max_age_ms for c in station.core.channels}
        self.every_s = {name: max(cfg.poll_ms * scale, min((ages[ch] for ch in cfg.channels.values() if ch in ages),
                                                            default=5000.0 * scale) / 2) / 1000.0
                        for name, cfg in configs.items()}
        self.due_s = dict.fromkeys(configs, 0.0)

    def poll(self, plant_s: float, t_ns: int) -> None:
        for name in self.bus.instruments:
            if plant_s < self.due_s[name]:
                continue
            self.due_s[name] = plant_s + self.every_s[name]
            self.bus.read_round(name, self.devices[name].read, t_ns)


class LockstepScenarioRig(RigFolder):
    """A scenario's rig on the plant's clock (module docstring); the runner drives it as it drives
    ``hil.rig.VirtualRig`` (``hil.rig.ScenarioRig``)."""

    clock = "lockstep"

    def __init__(self, cfg: RigConfig) -> None:
        super().__init__(cfg)
        self.step_s = step_s = cfg.scan_s / STEPS_PER_SCAN
        self.scan_every = STEPS_PER_SCAN
        self.scale = max(1.0, cfg.scan_s)
        self.hung = False
        self.closed = False
        self._last_stamp = 0
        self._lines = _Lines(self.now_ns)
        self._commands: list[str] = []
        self._steps = 0
        self.scan: Scan | None = None
        self.ctl: Controller | None = None
        self.starts: list[int] = []
        station = load_station(cfg.station)
        station = RigBinding(register_file="", time_scale=self.scale, plant_epoch_unix=PLANT_EPOCH_UNIX).apply(station)
        if station.core.latch_file is None:      # as reedge run: latched trips in the state dir
            station = dataclasses.replace(station, core=dataclasses.replace(
                station.core, latch_file=str(self.state_dir / "latched-trips")))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ls = LockstepRig(station, None, dt_s=step_s)
        self.station = self.ls.station
        self.regs = self.ls.regs
        relay = WatchdogRelay(timeout_s=1.5 * step_s, outputs=tuple(cfg.relay_outputs))
        try:
            self.sim = PlantSim(self.station, cfg.plant, cfg.plant_params, self.regs, relay, self.log_path,
                                cfg.log_every_s, self.now_ns)
        except BaseException:
            self.ls.close()           # the core and the register file are made: nothing outlives a failed start
            raise
        self.sim.t_s = self.sim._next_row = T0_S
        self._meter_configs: dict[str, ModbusConfig] = {}
        self._meter_devices: dict[str, Any] = {}
        for dev in cfg.serial.values():
            if dev.get("type") == "modbus":
                self._meter_devices.update(zip(dev["instruments"], self.sim.add_meters(dev["instruments"]),
                                               strict=True))
        for name in self._meter_devices:
            inst = self.station.instruments[name]
            assert isinstance(inst, ModbusConfig)
            self._meter_configs[name] = inst
        self.meters = self._meters_on_core()

    def _meters_on_core(self) -> _Meters | None:
        """The meters' bus on the current core (a booted board's controller opens its bus anew)."""
        if not self._meter_configs:
            return None
        return _Meters(ModbusBus(self.ls.core, list(self._meter_configs.items())), self._meter_devices,
                       self._meter_configs, self.station, self.scale)

    # ---- lifecycle ----
    def start(self) -> None:
        self.ls.attach(self.sim.plant, self.sim.field, self.sim.sensors)

    def start_controller(self, recipe: pathlib.Path | None = None, batch_id: str | None = None) -> None:
        if self.ctl is not None:
            raise RigError("the controller is already running")
        if not self.ls.core_alive:           # the power is back: the board boots, a new core, a new bus
            self.ls.board_boots(int(self.regs.regs.plant_ns))
            self.meters = self._meters_on_core()
        core, station = self.ls.core, self.station
        recorder = BatchRecorder(self.state_dir, station, site=station.identity.site,
                                 station_id=station.identity.station_id, config=station.accounting,
                                 say=self._say, save_every_s=SAVE_EVERY_S, save_clock=self.save_clock)
        devices = Devices(recorder, buses=[self.meters.bus] if self.meters else [])
        ctl, operator = controller_for(core, station, self.state_dir, recorder,
                                       recipe.parent if recipe is not None else station.source.parent,
                                       lambda: PLANT_EPOCH_UNIX + core.now_ns() / 1e9, SAVE_EVERY_S)
        ctl.save_clock = self.save_clock     # (SAVE_CLOCK_SCALE)
        reporter = Reporter(True, cast(TextIO, self._lines))
        recovered, _ = begin(ctl, recorder, reporter, load_recipe(recipe) if recipe is not None else None, recipe,
                             batch_id=batch_id or "hil", feed=self.cfg.feed, mass_in_kg=self.cfg.mass_in_kg)
        reporter.write("ready", f"controller for {station.identity.site}/{station.identity.station_id} running "
                       "(lockstep)", pid=os.getpid(), recovered=recovered, t_s=ctl.now_s())
        self.ctl = ctl
        self.scan = Scan(ctl, reporter, devices, operator, clock=ctl.now_s, status_every_s=STATUS_EVERY_S)
        self.starts.append(self.now_ns())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.scan is not None and self.ctl is not None:
                self.scan.stop(readings_wait_s=0.0)
                self.ctl.save(force=True)
        finally:
            self.sim.log.close()
            self.ls.close()

    def __enter__(self) -> LockstepScenarioRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _say(text: str) -> None:
        """The recorder's notes: the journal's on a station; nothing reads them here."""

    # ---- the clock ----
    def now_ns(self) -> int:
        """A stamp: the plant's clock, made strictly increasing (what happened later has a later stamp)."""
        self._last_stamp = max(self._last_stamp + 1, int(self.regs.regs.plant_ns))
        return self._last_stamp

    def plant_s(self) -> float:
        return int(self.regs.regs.plant_ns) / 1e9

    def save_clock(self) -> float:
        """The controller's and the recorder's clock for pacing their saves: the plant's, slowed down, in a
        scenario with a power loss (``SAVE_CLOCK_SCALE``); the wall clock otherwise, as on a station."""
        return self.plant_s() / SAVE_CLOCK_SCALE if self.cfg.power_loss else time.monotonic()

    def t0_ns(self) -> int:
        return self.starts[0] if self.starts else 0

    def advance(self) -> None:
        """Step the plant until the controller has scanned once more (or one step without a controller)."""
        while True:
            self._step()
            if self.scan is None or self._steps % self.scan_every == 0:
                return

    def _step(self) -> None:
        ls, sim = self.ls, self.sim
        written = ls.written()
        ls.judge_relay(written)
        analog, digital, broken = sim.advance(written, self.step_s)
        ls.plant_s += self.step_s
        self.regs.regs.plant_ns = round((T0_S + ls.plant_s) * 1e9)
        ls.publish(analog, digital, broken)
        self._steps += 1
        if not ls.core_alive:
            return                            # the board is dark: no core, no bus, no controller
        if self.meters is not None:
            self.meters.poll(ls.plant_s, ls.core.now_ns())
        if self.scan is not None and self._steps % self.scan_every == 0:
            self.scan.step()
            lines, self._commands = self._commands, []
            self.scan.answer([read_line(line) for line in lines])
        ls.core.run_ticks(1)

    def channels_due(self) -> bool:
        return True           # the runner reads the channels after every scan

    def check(self, controller_may_be_dead: bool) -> None:
        """Nothing here can die on its own: an exception would have come out of ``advance``."""

    # ---- the plant ----
    def plant_command(self, **cmd: Any) -> dict[str, Any]:
        try:
            reply = self.sim.command(cmd)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RigError(f"plant refused {cmd}: {type(exc).__name__}: {exc}") from exc
        if not reply.get("ok"):
            raise RigError(f"plant refused {cmd}: {reply.get('error')}")
        return reply

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = self.sim.snapshot()
        return snap

    def channels(self) -> tuple[dict[str, Any], dict[str, float]]:
        """As the snapshot's channels and truth, without building the rest of a snapshot every scan."""
        return ({k: (v if math.isfinite(v) else None) for k, v in self.sim.last_analog.items()},
                self.sim.plant.true_values())

    # ---- the controller ----
    def controller_alive(self) -> bool:
        return self.scan is not None

    def controller_command(self, verb: str, **fields: Any) -> None:
        self.write_controller(json.dumps({"cmd": verb, **fields}) + "\n", verb)

    def write_controller(self, line: str, what: str = "a line") -> None:
        """A command line, read at the next scan (as ``reedge run`` reads its stdin once per scan)."""
        if self.scan is None:
            raise RigError(f"cannot send {what!r}: the controller is not running")
        self._commands.extend(part for part in line.splitlines() if part.strip())

    def controller_lines(self, since: int = 0) -> list[ControllerLine]:
        return self._lines.lines[since:]

    def signal_controller(self, sig: signal.Signals) -> int:
        raise RigError(f"cannot send {sig.name} in lockstep: the controller is not a process here "
                       "(a real-time scenario's step)")

    def kill_controller(self) -> int:
        """The board loses its power (the runner has switched the cabinet off): controller, recorder and core
        dropped where they stand, nothing saved or closed (module docstring)."""
        if self.ctl is None:
            raise RigError("cannot kill the controller: it is not running")
        self.scan = self.ctl = None
        self.meters = None
        self._commands = []                   # lines not read yet die with the process
        self.ls.board_dead()
        return self.now_ns()
