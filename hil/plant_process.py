"""The plant of the virtual rig, in its own process: physics, field wiring, safety hardware, serial devices.

Started by ``hil.rig`` as ``python -m hil.plant_process CONFIG.json``. Every ~2 ms of wall time it
reads the outputs the core wrote, passes them through the cabinet (power, watchdog relay, stuck
valves: ``hil.plants.safety_hw``), integrates the plant over the elapsed wall time times the time
scale, publishes the sensors as raw field signals (``hil.wiring``), advances the plant clock the
core reads, answers its serial devices, and logs one row of every channel and output at a fixed
plant-time rate (JSON lines).

Burst-fired outputs (the heater) enter the physics as their mean level over the step, from the
core's on-time counters: the plant's samples would alias against a level that changes every tick.

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
import random
import select
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.spec.core import RuleSpec
from edge.spec.station import load_station
from hil.devices.modbus_meters import MeterBus
from hil.plants import PLANTS, PlantModel
from hil.plants.cabinet import build_cabinet
from hil.plants.safety_hw import WatchdogRelay
from hil.regfile import RegisterFile
from hil.wiring import Wiring

STEP_WALL_S = 0.002       # the loop's wall-clock period
MAX_SUBSTEP_S = 1.0       # plant seconds per integration step at most
MAX_STEP_WALL_S = 0.01    # a loop that fell behind advances the plant by at most this much wall time
PLANT_START_NS = 0   # plant time == core time: events and rows share one time axis
NL_PER_MOL = 22.414  # normal litres (0 degC, 1.01325 bar) per mole
METER_AVERAGING_S = 60.0   # plant seconds over which an emulated meter's live power or flow is averaged


@dataclass
class Onset:
    """One period in which a published signal met a rule's trip condition (wall ns: CLOCK_MONOTONIC)."""

    rule: str
    onset_wall_ns: int
    onset_t_s: float
    cleared_wall_ns: int | None = None


@dataclass
class TripWatch:
    """Field-side onsets of every threshold rule: when the value the plant published first met the trip
    condition. The runner pairs an onset with the core's own trip event and output-change stamps; the
    outputs alone cannot tell a trip (a burst-fired heater is off most ticks anyway)."""

    rules: tuple[RuleSpec, ...]
    active: dict[str, Onset] = field(default_factory=dict)
    history: list[Onset] = field(default_factory=list)

    def condition(self, rule: RuleSpec, analog: Mapping[str, float], digital: Mapping[str, bool],
                  broken: set[str]) -> bool | None:
        """True when the published signal meets the rule's trip condition; None: not judged here."""
        ch = rule.channel
        if ch is None:
            return None
        if rule.kind == "fault":
            return ch in broken
        if rule.kind == "digital":
            return None if ch not in digital else int(digital[ch]) != int(rule.threshold)
        if rule.kind in ("high", "low"):
            v = analog.get(ch)
            if v is None:
                return None
            if ch in broken or not math.isfinite(v):
                return True           # a threshold rule trips on a value it cannot trust
            return v > rule.threshold if rule.kind == "high" else v < rule.threshold
        return None                   # rates, staleness, dead-man: judged in the core only

    def update(self, analog: Mapping[str, float], digital: Mapping[str, bool], broken: set[str],
               now_wall_ns: int, t_s: float) -> None:
        for rule in self.rules:
            met = self.condition(rule, analog, digital, broken)
            current = self.active.get(rule.name)
            if met and current is None:
                onset = Onset(rule.name, now_wall_ns, t_s)
                self.active[rule.name] = onset
                self.history.append(onset)
            elif not met and current is not None:
                current.cleared_wall_ns = now_wall_ns
                del self.active[rule.name]


@dataclass
class Meter:
    """A plant meter: a Modbus device whose counter is ``start`` plus a metric of the plant (joules or moles),
    times its ``gain`` (a real meter is only as right as its accuracy class)."""

    device: Any                    # hil.devices.modbus_meters.Sdm630Meter or MassFlowMeter
    metric: str | None             # heater_j (kWh) or <gas>_fed_mol (NL); None: a meter that counts nothing
    start: float
    gain: float = 1.0              # 1.005: the meter reads 0.5 % high (within its accuracy class)
    bus: Any = None
    port: str = ""
    _last: float | None = None
    _rate: float = 0.0

    def update(self, metrics: Mapping[str, float], dt_s: float) -> None:
        raw = (metrics.get(self.metric, 0.0) if self.metric is not None else 0.0) * self.gain
        if self._last is not None and dt_s > 0:
            # the live value averages over about a minute of plant time, as a meter's display does over its
            # update period: on the fast rig one core burst period of the heater spans several plant seconds
            self._rate += ((raw - self._last) / dt_s - self._rate) * min(1.0, dt_s / METER_AVERAGING_S)
        self._last = raw
        if self.metric == "heater_j":
            self.device.update(power_w=self._rate, energy_kwh=self.start + raw / 3.6e6)
        else:
            self.device.update(flow_nl_min=self._rate * NL_PER_MOL * 60.0, total_nl=self.start + raw * NL_PER_MOL)


@dataclass
class Drift:
    rate_per_min: float
    offset: float
    since_t_s: float

    def at(self, t_s: float) -> float:
        return self.offset + self.rate_per_min * (t_s - self.since_t_s) / 60.0


class PlantProcess:
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        station = load_station(cfg["station"])
        self.kind = PLANTS[cfg["plant"]]
        self.plant: PlantModel = self.kind.build(cfg.get("params", {}))
        self.wiring = Wiring(station.core)
        self.regs = RegisterFile(cfg["register_file"])
        self.scale = float(cfg["time_scale"])
        self.regs.use_plant_clock(start_ns=PLANT_START_NS, time_scale=self.scale)
        self.outputs = {o.name: o.line for o in station.core.outputs}
        self.safe = {o.name: o.safe_level for o in station.core.outputs}
        self.duty_outputs = {loop.output for loop in station.loops}
        self.watchdog = station.core.watchdog_output
        relay = WatchdogRelay(timeout_s=float(cfg.get("relay_timeout_s", 0.5)),
                              outputs=tuple(cfg.get("relay_outputs", ("heater", "h2_inlet_valve"))))
        self.field = build_cabinet(station, cfg["plant"], self.plant, relay)
        self._ticks_at_power_on = self.regs.core_ticks
        self.watch = TripWatch(station.core.rules)
        self.log = open(cfg["log"], "w", buffering=1 << 16)  # noqa: SIM115 - closed in run()
        self.log_every_s = float(cfg.get("log_every_s", 10.0))
        self.t_s = 0.0
        self.started_wall = time.monotonic_ns()
        self.broken: set[str] = set()
        self.drift: dict[tuple[str, str], Drift] = {}   # (fault kind, channel) -> its offset of the published value
        self.extra_digital: dict[str, bool] = {}
        self._held_inputs: tuple[dict[str, float], dict[str, bool]] | None = None   # see the "power" command
        self.events: list[dict[str, Any]] = []
        self.last_analog: dict[str, float] = {}
        self._row_min: dict[str, float] = {}
        self._true_min: dict[str, float] = {}
        self._true_max: dict[str, float] = {}
        self._row_max: dict[str, float] = {}
        self._gauge_broken: dict[str, bool] = {}
        self._on_prev = {name: self.regs.do_on_ns(line) for name, line in self.outputs.items()}
        self._on_owed = dict.fromkeys(self.outputs, 0.0)
        self._ticks_prev = self.regs.core_ticks
        self._row_on: dict[str, float] = dict.fromkeys(self.outputs, 0.0)
        self._row_written_on: dict[str, float] = dict.fromkeys(self.outputs, 0.0)   # the core's level, for on_s
        self._row_span = 0.0
        self._next_row = 0.0
        self.gauges: dict[str, Any] = {}
        self.meters: dict[str, Meter] = {}           # instrument -> its emulation on a Modbus bus
        self.buses: list[tuple[MeterBus, str]] = []   # (bus, slave pty path)
        self.rng = random.Random(cfg.get("seed", 1))
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
        from hil.devices.modbus_meters import MassFlowMeter, Sdm630Meter
        from hil.devices.pty_line import open_pty

        devices = []
        for name, spec in instruments.items():
            start, address = float(spec.get("start", 0.0)), int(spec["address"])
            device = Sdm630Meter(address, start) if spec["device"] == "sdm630" else MassFlowMeter(address, start)
            metric = spec.get("metric")
            self.meters[name] = Meter(device, None if metric is None else str(metric), start,
                                      gain=float(spec.get("gain", 1.0)))
            devices.append(device)
        master, slave = open_pty()
        bus = MeterBus(master, devices, rng=self.rng)
        self.buses.append((bus, slave))
        for name in instruments:
            self.meters[name].bus = bus
            self.meters[name].port = slave

    def serial_ports(self) -> dict[str, str]:
        return {**{name: g[2] for name, g in self.gauges.items()}, **{n: m.port for n, m in self.meters.items()}}

    def serve_meters(self, dt_s: float) -> None:
        """The meters count what the plant used: energy from the heater's joules, gas from the moles fed."""
        metrics = self.plant.metrics()
        for meter in self.meters.values():
            meter.update(metrics, dt_s)
        for bus, _ in self.buses:
            bus.serve()

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

    def sensors(self) -> tuple[dict[str, float], dict[str, bool], set[str]]:
        analog, digital, broken = self.plant.sensors()
        cab_analog, cab_digital = self._held_inputs or self.field.inputs()
        analog.update(cab_analog)
        digital.update(cab_digital)
        for (_, name), d in self.drift.items():
            if name in analog:
                analog[name] += d.at(self.t_s)
        digital.update(self.extra_digital)
        return analog, digital, broken | self.broken

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
        if not self.field.driven and self.regs.core_ticks != self._ticks_at_power_on:
            self.field.driven = True              # a core has written since start or power-on
        effective = self.field.effective(written)
        left = dt_s
        while left > 1e-12:
            h = min(left, MAX_SUBSTEP_S)
            self.plant.step(effective, h)
            left -= h
        for lim in self.field.step(effective, dt_s, self.plant.true_values(), self.t_s + dt_s):
            self.note("limiter", f"limiter {lim.name} tripped at {lim.setpoint_c:g} degC: its contact opened")
        for name, level in effective.items():
            self._row_on[name] += level * dt_s
        for name, level in written.items():
            self._row_written_on[name] += level * dt_s
        self._row_span += dt_s
        self.t_s += dt_s
        for k, v in self.plant.true_values().items():   # the truth's extremes of every step, as for channels
            self._true_min[k] = min(self._true_min.get(k, v), v)
            self._true_max[k] = max(self._true_max.get(k, v), v)
        self.regs.regs.plant_ns = PLANT_START_NS + round(self.t_s * 1e9)
        analog, digital, broken = self.sensors()
        self.last_analog = {k: (math.nan if k in broken else v) for k, v in analog.items()}
        for k, v in self.last_analog.items():       # every step's extremes, not only the rows' samples
            if math.isfinite(v):
                lo, hi = self._row_min.get(k, v), self._row_max.get(k, v)
                self._row_min[k], self._row_max[k] = min(lo, v), max(hi, v)
        self.wiring.publish(self.regs, analog, digital, broken)
        self.watch.update(analog, digital, broken, now_wall, self.t_s)
        for gauge, channel, _ in self.gauges.values():
            value = analog.get(channel, math.nan)
            broken_gauge = channel in broken or not math.isfinite(value)
            if broken_gauge != self._gauge_broken.get(channel, False):
                gauge.sensor_error(broken_gauge)    # a broken sensor is a gauge reporting its own error
                self._gauge_broken[channel] = broken_gauge
            gauge.serve(value if not broken_gauge else 1000.0)
        self.serve_meters(dt_s)
        if self.t_s >= self._next_row:
            self.row(analog, broken)
            self._next_row = self.t_s + self.log_every_s

    def row(self, analog: Mapping[str, float], broken: set[str]) -> None:
        if self._row_span > 0.0:      # mean level over the row: a burst-fired heater shows its duty
            out = {k: round(v / self._row_span, 4) for k, v in self._row_on.items() if k != self.watchdog}
        else:
            levels = {n: float(self.regs.do(line)) for n, line in self.outputs.items()}
            out = {k: v for k, v in self.field.effective(levels).items() if k != self.watchdog}
        ch = {k: (None if k in broken or not math.isfinite(v) else round(v, 6)) for k, v in analog.items()}
        row = {"t_s": round(self.t_s, 3), "wall_s": round((time.monotonic_ns() - self.started_wall) / 1e9, 4),
               "ch": ch, "min": {k: round(v, 6) for k, v in self._row_min.items()},
               "max": {k: round(v, 6) for k, v in self._row_max.items()},
               "out": out, "relay": int(self.field.relay.energised),
               # plant seconds each output was on in this row: as the plant felt it / as the core wrote it
               "on_s": {k: round(v, 6) for k, v in self._row_on.items() if k != self.watchdog},
               "written_on_s": {k: round(v, 6) for k, v in self._row_written_on.items() if k != self.watchdog},
               "power": int(self.field.powered),
               "k1": int(self.field.k1_closed), "limiters": {lim.name: int(lim.tripped) for lim in self.field.limiters},
               "plant": {k: round(v, 6) for k, v in self.plant.metrics().items()},
               "true": {k: round(v, 6) for k, v in self.plant.true_values().items()},
               "true_min": {k: round(v, 6) for k, v in self._true_min.items()},
               "true_max": {k: round(v, 6) for k, v in self._true_max.items()}}
        self.log.write(json.dumps(row) + "\n")
        self._row_on = dict.fromkeys(self.outputs, 0.0)
        self._row_written_on = dict.fromkeys(self.outputs, 0.0)
        self._row_span = 0.0
        self._row_min, self._row_max = {}, {}
        self._true_min, self._true_max = {}, {}

    def note(self, kind: str, message: str, wall_ns: int | None = None, **data: Any) -> None:
        self.events.append({"kind": kind, "message": message, "t_s": self.t_s,
                            "wall_ns": wall_ns if wall_ns is not None else time.monotonic_ns(), **data})

    # ---- commands ----
    def command(self, cmd: Mapping[str, Any]) -> dict[str, Any]:
        what = cmd.get("cmd")
        now = time.monotonic_ns()
        if what == "fault":
            self.fault(str(cmd["kind"]), cmd.get("params", {}), on=True)
        elif what == "clear":
            self.fault(str(cmd["kind"]), cmd.get("params", {}), on=False)
        elif what == "power":
            # a power loss of the board and the cabinet together: `hold_inputs` keeps the cabinet's inputs as
            # they were until `board_dead` (the runner kills the controller between the two), so the dying core
            # never reads the dark cabinet (an open limiter contact would latch a trip a real board never saw)
            self._held_inputs = self.field.inputs() if not cmd["on"] and cmd.get("hold_inputs") else None
            self.field.powered = bool(cmd["on"])
            self.field.driven = False               # until a core writes again, the lines hold nothing
            self._ticks_at_power_on = self.regs.core_ticks
            self.note("power", f"cabinet power {'on' if self.field.powered else 'off'}")
        elif what == "board_dead":
            self._held_inputs = None
        elif what == "digital":
            self.extra_digital[str(cmd["channel"])] = bool(cmd["level"])
        elif what == "limiter_reset":       # the reset button on the limiter's front, in the cabinet
            name = cmd.get("limiter")
            done = self.field.reset_limiter(None if name is None else str(name), self.plant.true_values())
            self.note("limiter", "limiter reset at the cabinet" + ("" if done else ": refused, still above setpoint"))
            return {"ok": True, "t_s": self.t_s, "wall_ns": now, "reset": done}
        elif what == "snapshot":
            return {"ok": True, "t_s": self.t_s, "wall_ns": now, "snapshot": self.snapshot()}
        else:
            return {"ok": False, "error": f"unknown command {what!r}"}
        return {"ok": True, "t_s": self.t_s, "wall_ns": now}

    def fault(self, kind: str, params: Mapping[str, Any], *, on: bool) -> None:
        physical = self.kind.faults.get(kind)
        if physical is not None:
            setattr(self.plant.s, physical.attribute, physical.value(params) if on else physical.cleared)
        elif kind == "tc_open":
            (self.broken.add if on else self.broken.discard)(str(params["channel"]))
        elif kind in ("sensor_drift", "tc_offset", "tc_drift"):
            key = (kind, str(params["channel"]))
            if not on:
                self.drift.pop(key, None)
            elif kind == "sensor_drift":
                self.drift[key] = Drift(float(params.get("rate_per_min", 0.0)), float(params.get("offset", 0.0)),
                                        self.t_s)
            elif kind == "tc_offset":        # a thermocouple reading low (or high) by a fixed amount
                self.drift[key] = Drift(0.0, float(params["offset_c"]), self.t_s)
            else:                            # a thermocouple drifting from the moment the fault fires
                self.drift[key] = Drift(float(params["c_per_min"]), 0.0, self.t_s)
        elif kind == "relay_welded":
            self.field.relay_welded = on
        elif kind == "valve_stuck":
            if on:
                self.field.stuck[str(params["output"])] = float(params.get("level", 1))
            else:
                self.field.stuck.pop(str(params["output"]), None)
        elif kind in ("meter_silent", "meter_crc_burst"):
            meter = self.meters[str(params["device"])]
            if kind == "meter_silent":
                meter.bus.silent(meter.device.address, on)
            elif on:                         # a burst: clearing it sends nothing more
                meter.bus.crc_burst(int(params.get("answers", 5)), meter.device.address)
        elif kind == "serial_garbage" and str(params.get("device", "")) in self.meters:
            if on:
                self.meters[str(params["device"])].bus.garbage(int(params.get("bytes", 64)))
        elif kind in ("serial_garbage", "gauge_silent"):
            gauge = self.gauges[str(params.get("device", next(iter(self.gauges), "")))][0]
            if kind == "serial_garbage":
                if on:                       # a burst: clearing it sends nothing more
                    gauge.garbage(int(params.get("bytes", 64)))
            else:
                gauge.silent(on)
        else:
            raise ValueError(f"unknown fault {kind!r}")
        self.note("fault", f"{kind} {'on' if on else 'off'}", params=dict(params))

    def snapshot(self) -> dict[str, Any]:
        channels = {k: (v if math.isfinite(v) else None) for k, v in self.last_analog.items()}
        return {"t_s": self.t_s, "metrics": self.plant.metrics(), "relay": self.field.relay.energised,
                "truth": self.plant.true_values(), "k1": self.field.k1_closed,
                "limiters": {lim.name: lim.tripped for lim in self.field.limiters},
                "channels": channels,
                "powered": self.field.powered,
                "written": {n: self.regs.do(line) for n, line in self.outputs.items()},
                "effective": self.field.effective({n: float(self.regs.do(line)) for n, line in self.outputs.items()}),
                "onsets": [vars(o) for o in self.watch.history],
                "meter_buses": [{"port": port, "requests": dict(bus.requests), "answered": bus.answered,
                                 "corrupted": bus.corrupted, "ignored": bus.ignored, "rx_errors": bus.rx_errors}
                                for bus, port in self.buses],
                "events": self.events}

    def _handle(self, line: bytes) -> bool:
        """One command line; True for ``quit`` (answered once the log is on disk)."""
        try:
            cmd = json.loads(line)
            if cmd.get("cmd") == "quit":
                self.log.flush()
                print(json.dumps({"ok": True}), flush=True)
                return True
            reply = self.command(cmd)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
        return False

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
                self.step(min(now - last, MAX_STEP_WALL_S) * self.scale)
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
