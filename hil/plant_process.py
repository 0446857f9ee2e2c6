"""The plant of the virtual rig, in its own process: physics, field wiring, safety hardware, serial devices.

Started by ``hil.rig`` as ``python -m hil.plant_process CONFIG.json``. Every ~2 ms of wall time it
reads the outputs the core wrote, passes them through the cabinet (power, watchdog relay, stuck
valves: ``hil.plants.safety_hw``), integrates the plant over the elapsed wall time times the time
scale, publishes the sensors as raw field signals (``hil.wiring``), advances the plant clock the
core reads, answers its serial devices, and logs one row of every channel and output at a fixed
plant-time rate (JSON lines).

Burst-fired outputs (the heater) enter the physics as their mean level over the step, from the
core's on-time counters: the plant's samples would alias against a level that changes every tick.

**A controller booting after a power loss runs against a plant at 1x.** A board's boot (Python, the
station file, the core's start) takes wall seconds that do not scale: at 600x a 2 s start-up would be 20
minutes of plant time in the dark, and on a loaded machine, more than the recipe's longest outage (the
recovery then aborts the batch: a verdict of the machine's load, not of the controller). So from the
power coming back until the new core's first tick the plant's clock advances at wall speed, as it would
beside a real board; the controller still measures the outage on the plant's clock, its boot included.

It also watches the interlocks from the field side: for each threshold rule of the station it
notes when the published value first met the trip condition (the onset). The runner pairs it with
the core's trip event and output-change stamps; all are CLOCK_MONOTONIC, shared by every process
of the machine, so onset-to-safe is a true wall-clock latency.

Commands (JSON lines on stdin, one JSON reply line each on stdout): ``fault``, ``clear``, ``power``,
``snapshot``, ``quit``. The first line on stdout is ``{"ready": ...}`` with the serial ports.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import select
import sys
import time
from collections.abc import Mapping
from typing import Any

from edge.spec.station import load_station
from hil.devices.modbus_meters import MeterBus
from hil.plant_sim import PlantSim
from hil.plants.safety_hw import WatchdogRelay
from hil.regfile import RegisterFile
from hil.wiring import Wiring

STEP_WALL_S = 0.002       # the loop's wall-clock period
MAX_STEP_WALL_S = 0.01    # a loop that fell behind advances the plant by at most this much wall time
PLANT_START_NS = 0   # plant time == core time: events and rows share one time axis


class PlantProcess(PlantSim):
    """The plant side (``hil.plant_sim``) in its own process, on the wall clock, with serial lines on ptys."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        station = load_station(cfg["station"])
        regs = RegisterFile(cfg["register_file"])
        self.scale = float(cfg["time_scale"])
        regs.use_plant_clock(start_ns=PLANT_START_NS, time_scale=self.scale)
        relay = WatchdogRelay(timeout_s=float(cfg.get("relay_timeout_s", 0.5)),
                              outputs=tuple(cfg.get("relay_outputs", ("heater", "h2_inlet_valve"))))
        super().__init__(station, cfg["plant"], cfg.get("params", {}), regs, relay, cfg["log"],
                         float(cfg.get("log_every_s", 10.0)), time.monotonic_ns, seed=int(cfg.get("seed", 1)))
        self.wiring = Wiring(station.core)
        self._gauge_broken: dict[str, bool] = {}
        self._rebooting = False        # power back after a loss, the new core not ticking yet: the plant at 1x
        self._on_prev = {name: self.regs.do_on_ns(line) for name, line in self.outputs.items()}
        self._on_owed = dict.fromkeys(self.outputs, 0.0)
        self._ticks_prev = self.regs.core_ticks
        for name, dev in dict(cfg.get("serial", {})).items():
            self._open_serial(name, dev)

    # ---- serial devices ----
    def _open_serial(self, name: str, dev: Mapping[str, Any]) -> None:
        from hil.devices.pfeiffer_gauge import GaugeEmulator
        from hil.devices.pty_line import open_pty

        kind = dev.get("type")
        if kind == "modbus":
            self._open_bus(dict(dev["instruments"]))
            return
        if kind != "pfeiffer":
            raise ValueError(f"serial device {name}: unknown type {kind!r} (known: pfeiffer, modbus)")
        master, slave = open_pty()
        self.gauges[name] = (GaugeEmulator(master, address=int(dev.get("address", 1))), str(dev["channel"]), slave)

    def _open_bus(self, instruments: Mapping[str, Mapping[str, Any]]) -> None:
        """One RS-485 bus (one pty) with its meters, each reading a counter of the plant's truth."""
        from hil.devices.pty_line import open_pty

        devices = self.add_meters(instruments)
        master, slave = open_pty()
        bus = MeterBus(master, devices, rng=self.rng)
        self.buses.append((bus, slave))
        for name in instruments:
            self.meters[name].bus = bus
            self.meters[name].port = slave

    def serial_ports(self) -> dict[str, str]:
        return {**{name: g[2] for name, g in self.gauges.items()}, **{n: m.port for n, m in self.meters.items()}}

    # ---- one loop iteration ----
    def written(self, span_ns: int) -> dict[str, float]:
        """Levels the core wrote; duty outputs as the mean level to apply over the next ``span_ns``
        of plant time, so that their energy is exactly the core's on-time (to within one step)."""
        out: dict[str, float] = {}
        ticks = self.regs.core_ticks
        writing = ticks != self._ticks_prev       # a frozen or dead core adds no on-time, yet its last
        self._ticks_prev = ticks                  # written level still holds the line: take that level
        for name, line in self.outputs.items():
            on = self.regs.do_on_ns(line)
            if name in self.duty_outputs and span_ns > 0 and writing:
                # the core's writes and the plant's steps are not aligned: on-time the core counted
                # beyond this step carries over to the next one instead of being clipped away
                owed = self._on_owed[name] + on - self._on_prev[name]
                level = min(max(owed / span_ns, 0.0), 1.0)
                self._on_owed[name] = owed - level * span_ns
                out[name] = level
            else:
                out[name] = float(self.regs.do(line))
            self._on_prev[name] = on
        return out

    def step(self, dt_s: float) -> None:
        now_wall = time.monotonic_ns()
        written = self.written(round(dt_s * 1e9))
        if self.watchdog is not None:
            change = self.field.relay.update(self.regs.do_changed_wall_ns(self.outputs[self.watchdog]), now_wall)
            if change is not None:
                at = self.field.relay.dropped_wall_ns if change == "dropped" else now_wall
                self.note("relay", f"watchdog relay {change}", wall_ns=at,   # the levels the core last wrote
                          written={k: self.regs.do(self.outputs[k]) for k in self.field.relay.outputs
                                   if k in self.outputs})
        analog, digital, broken = self.advance(written, dt_s)
        self.regs.regs.plant_ns = PLANT_START_NS + round(self.t_s * 1e9)
        self.wiring.publish(self.regs, analog, digital, broken)
        for gauge, channel, _ in self.gauges.values():
            value = analog.get(channel, math.nan)
            broken_gauge = channel in broken or not math.isfinite(value)
            if broken_gauge != self._gauge_broken.get(channel, False):
                gauge.sensor_error(broken_gauge)    # a broken sensor is a gauge reporting its own error
                self._gauge_broken[channel] = broken_gauge
            gauge.serve(value if not broken_gauge else 1000.0)
        for bus, _ in self.buses:
            bus.serve()

    def _handle(self, line: bytes) -> bool:
        """One command line; True for ``quit`` (answered once the log is on disk)."""
        try:
            cmd = json.loads(line)
            if cmd.get("cmd") == "quit":
                self.log.flush()
                print(json.dumps({"ok": True}), flush=True)
                return True
            reply = self.command(cmd)
            if cmd.get("cmd") == "power":
                self._rebooting = bool(cmd.get("on"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
        return False

    def _scale_now(self) -> float:
        """The time scale, or 1 while the controller boots after a power loss (module docstring)."""
        if self._rebooting and self.field.driven:
            self._rebooting = False             # the new core has written: the board is up
        return 1.0 if self._rebooting else self.scale

    # ---- main loop ----
    def run(self) -> int:
        self.regs.regs.plant_alive = 1
        analog, _, broken = self.sensors()
        self.row(analog, broken)
        print(json.dumps({"ready": True, "serial": self.serial_ports(), "pid": os.getpid()}), flush=True)
        last = time.monotonic()
        stdin = sys.stdin.fileno()
        pending = b""
        try:
            while True:
                ready, _, _ = select.select([stdin], [], [], STEP_WALL_S)
                if ready:
                    # raw reads: select() cannot see lines already sitting in a text stream's buffer
                    chunk = os.read(stdin, 65536)
                    if not chunk:
                        break
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    if any(self._handle(line) for line in lines if line.strip()):
                        break
                now = time.monotonic()
                # a starved loop slows the plant's clock instead of jumping it: the core's filters and
                # debounces count plant steps, and a 50 ms hiccup at 800x would be a 40 s step
                self.step(min(now - last, MAX_STEP_WALL_S) * self._scale_now())
                last = now
        finally:
            self.regs.regs.plant_alive = 0
            self.log.close()
            self.regs.close()
        return 0



def main(argv: list[str]) -> int:
    cfg = json.loads(pathlib.Path(argv[1]).read_text())
    return PlantProcess(cfg).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
