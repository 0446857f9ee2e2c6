"""Plant, C core and controller in one process, stepped together: deterministic and fast.

Each step: the plant advances ``dt_s`` of plant time with the outputs the core wrote and
publishes its sensors through the register file (raw signals, as field devices would);
the controller scans (heartbeat, reads, decides, asks for outputs); the core runs one tick
on the plant's clock (interlocks, gate, outputs). Nothing waits on the wall clock, so a
ten-hour batch runs in seconds and every run is the same. The real-time rig (``hil.rig``
later, and ``reedge demo``) runs the same pieces in separate processes.

Injected channels (the RS-485 vacuum gauge) are fed here, standing in for ``edge.io``.

Between the core's lines and the plant sits the cabinet as wired (``hil.plants.cabinet``: the safety
contactor, the watchdog relay, the limiters); its contacts and current transducer are published with the
plant's sensors. Here the relay judges the watchdog line on the plant's clock (an edge every tick
keeps it in): there is no wall clock in lockstep. ``offsets`` (channel -> degC) make a sensor read off
its truth, as the rig's ``tc_offset`` fault does. ``poll_s`` (channel -> plant seconds) reads an
injected channel only that often, as the real-time rig's RS-485 poll does at a high time scale (every
200 ms of wall time: 120 s of plant time at 600x); give such a channel a ``max_age_ms`` to match.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from edge.core import ChannelStatus, Core
from edge.spec.station import Station
from hil.plants.cabinet import Cabinet, build_cabinet
from hil.plants.safety_hw import WatchdogRelay
from hil.regfile import RegisterFile
from hil.wiring import Wiring


class Plant(Protocol):
    def step(self, out: Mapping[str, float], dt: float) -> None: ...
    def sensors(self) -> tuple[dict[str, float], dict[str, bool], set[str]]: ...


class LockstepRig:
    """Owns a register file and a core built from the station; the caller adds a controller. Without a plant
    here, ``attach`` one before the first step."""

    plant: Plant
    cabinet: Cabinet

    def __init__(self, station: Station, plant: Plant | None, *, dt_s: float = 1.0,
                 directory: str | os.PathLike[str] | None = None, cabinet: Cabinet | None = None) -> None:
        self.dt_s = dt_s
        self._tmp = tempfile.TemporaryDirectory(prefix="reedge-lockstep-", dir=directory)
        path = pathlib.Path(self._tmp.name) / "plant.regs"
        self.regs = RegisterFile.create(path)
        self.regs.use_plant_clock(start_ns=1_000_000_000)
        drivers = tuple(dataclasses.replace(d, params={**d.params, "path": str(path)}) if d.type == "sim" else d
                        for d in station.core.drivers)
        self.station = dataclasses.replace(station, core=dataclasses.replace(station.core, drivers=drivers))
        self.wiring = Wiring(self.station.core)
        self.core = Core(self.station.core)
        self._core_alive = True
        self.plant_s = 0.0
        self.extra_digital: dict[str, bool] = {}
        self.offsets: dict[str, float] = {}
        self.poll_s: dict[str, float] = {}
        self._polled_s: dict[str, float] = {}
        self._watchdog = self.station.core.watchdog_output
        self._watchdog_level: int | None = None
        self._watchdog_edge_ns = 0
        if plant is not None:
            self.attach(plant, cabinet)

    def attach(self, plant: Plant, cabinet: Cabinet | None = None,
               sensors: Callable[[], tuple[dict[str, float], dict[str, bool], set[str]]] | None = None) -> None:
        """The plant and its cabinet, then the power-up. ``sensors`` replaces ``plant.sensors`` and the cabinet's
        inputs (``hil.lockstep_rig``: its plant side adds the cabinet's inputs and the sensor faults itself)."""
        self.plant = plant
        self._sensors = sensors
        relay = WatchdogRelay(timeout_s=1.5 * self.dt_s, outputs=tuple(o for o in ("heater", "h2_inlet_valve")
                                                                        if o in self.wiring.lines))
        self.cabinet = cabinet or build_cabinet(self.station, self.station.identity.kind, plant, relay)
        self.cabinet.driven = True
        self._power_up(1_000_000_000)

    def _power_up(self, start_ns: int) -> None:
        """The core's first ticks: its watchdog proof test sees the relay drop (line held), then pick up (line
        toggled) before the first scan, as on a real cabinet. Each power-up tick is 1 us of plant time (the core
        takes a driver input once per clock value), from ``start_ns`` on, before the plant's next step."""
        self._publish()
        self.core.run_ticks(1)
        for k in range(1, 41):
            self.effective()
            self._publish()
            self.regs.regs.plant_ns = start_ns + k * 1_000
            self.core.run_ticks(1)
            if not self.core.stats().proof_pending:
                break

    # ---- a power loss of the controller's board (``hil.lockstep_rig``) ----

    @property
    def core_alive(self) -> bool:
        return self._core_alive

    def board_dead(self) -> None:
        """The board lost its power: the core is gone where it stood, no shutdown code of the controller's runs.
        Freeing it releases its latch file as the kernel does for a killed process; the latch image is a shared
        mapping of the file, so the file holds what it held the instant the board died."""
        self.core.close()
        self._core_alive = False

    def board_boots(self, start_ns: int) -> None:
        """The board boots again: a new core from the station, its latched trips restored from the latch file,
        its power-up proof test run at ``start_ns`` of plant time (the plant's clock goes on from there). The plant
        has stepped through the dark meanwhile: the watchdog relay, without edges, has dropped, as the proof test
        expects to find it."""
        self.core = Core(self.station.core)
        self._core_alive = True
        self._polled_s.clear()           # the new controller's first poll injects at once
        self._power_up(start_ns)

    def _publish(self) -> None:
        if self._sensors is not None:
            self.publish(*self._sensors())
            return
        analog, digital, broken = self.plant.sensors()
        cab_analog, cab_digital = self.cabinet.inputs()
        analog.update(cab_analog)
        digital.update(cab_digital)
        for name, offset in self.offsets.items():
            if name in analog:
                analog[name] += offset
        self.publish(analog, {**digital, **self.extra_digital}, broken)

    def publish(self, analog: Mapping[str, float], digital: Mapping[str, bool], broken: set[str]) -> None:
        """The sensors as field signals; the injected channels straight into the core (``poll_s`` apart)."""
        self.wiring.publish(self.regs, analog, digital, broken)
        if not self._core_alive:
            return                      # a dead board reads nothing
        now = self.core.now_ns()
        for name in self.wiring.injected:
            value = analog.get(name)
            last = self._polled_s.get(name)
            if last is not None and self.plant_s - last < self.poll_s.get(name, 0.0):
                continue
            if value is not None and math.isfinite(value):
                self._polled_s[name] = self.plant_s
                status = ChannelStatus.FAULT if name in broken else ChannelStatus.OK
                self.core.inject(name, value, status, now)

    def effective(self) -> dict[str, float]:
        """What the plant's devices do with the levels the core wrote, through the cabinet."""
        written = self.written()
        self.judge_relay(written)
        return self.cabinet.effective(written)

    def written(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.wiring.outputs(self.regs).items()}

    def judge_relay(self, written: Mapping[str, float]) -> None:
        """The watchdog relay on the plant's clock: an edge of the watchdog line every tick keeps it in."""
        now_ns = round(self.plant_s * 1e9) + 1     # > 0: the relay takes 0 for "no edge yet"
        if self._watchdog is not None:
            level = int(written.get(self._watchdog, 0))
            if self._watchdog_level is not None and level != self._watchdog_level:
                self._watchdog_edge_ns = now_ns
            self._watchdog_level = level
            self.cabinet.relay.update(self._watchdog_edge_ns, now_ns)
        else:
            self.cabinet.relay.energised = True    # no watchdog line: no relay in the chain

    def step(self, scan: Callable[[], Any] | None = None) -> None:
        effective = self.effective()
        self.plant.step(effective, self.dt_s)
        truth: Mapping[str, float] = getattr(self.plant, "true_values", dict)()
        self.cabinet.step(effective, self.dt_s, truth, self.plant_s + self.dt_s)
        self.plant_s += self.dt_s
        self.regs.regs.plant_ns = 1_000_000_000 + round(self.plant_s * 1e9)
        self._publish()
        if not self._core_alive:
            return                      # the board is dark: nothing scans, nothing ticks
        if scan is not None:
            scan()
        self.core.run_ticks(1)

    def run_until(self, done: Callable[[], bool], max_plant_s: float, scan: Callable[[], Any] | None = None) -> bool:
        """Step until ``done()``; False if ``max_plant_s`` of plant time passed first."""
        end = self.plant_s + max_plant_s
        while not done():
            if self.plant_s >= end:
                return False
            self.step(scan)
        return True

    def close(self) -> None:
        self.core.close()
        self.regs.close()
        self._tmp.cleanup()

    def __enter__(self) -> LockstepRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
