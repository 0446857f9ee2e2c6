"""The plant side of the virtual rig, without its process: physics, the cabinet, faults, log rows, meters.

``PlantSim`` is what both rigs share. The real-time rig's plant process (``hil.plant_process``) wraps it
in a wall-clock loop with serial lines on pseudo-terminals; the lockstep scenario rig
(``hil.lockstep_rig``) steps it on the plant's clock in the controller's own process. Each gives it the
levels the core wrote and judges the watchdog relay on its own clock (``PlantSim.relay`` is the
cabinet's); ``advance`` then does the rest of a step: the cabinet, the physics, the field-side trip
onsets, the emulated meters' counters and the log rows. ``clock_ns`` stamps notes, onsets and rows:
CLOCK_MONOTONIC on the real-time rig (shared with the core's stamps), a logical clock in lockstep.

Commands (``command``): ``fault``, ``clear``, ``power``, ``board_dead``, ``digital``, ``limiter_reset``,
``snapshot``; the process reads them as JSON lines, the lockstep rig calls them directly.
"""

from __future__ import annotations

import json
import math
import pathlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.spec.core import RuleSpec
from edge.spec.station import Station
from hil.plants import PLANTS, PlantModel
from hil.plants.cabinet import build_cabinet
from hil.plants.safety_hw import WatchdogRelay
from hil.regfile import RegisterFile

MAX_SUBSTEP_S = 1.0       # plant seconds per integration step at most
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


class PlantSim:
    """One plant, its cabinet and its instruments' counters, stepped by a rig (module docstring)."""

    def __init__(self, station: Station, plant: str, params: Mapping[str, float], regs: RegisterFile,
                 relay: WatchdogRelay, log_path: str | pathlib.Path, log_every_s: float,
                 clock_ns: Callable[[], int], seed: int = 1) -> None:
        self.kind = PLANTS[plant]
        self.plant: PlantModel = self.kind.build(params)
        self.regs = regs
        self.clock_ns = clock_ns
        self.outputs = {o.name: o.line for o in station.core.outputs}
        self.safe = {o.name: o.safe_level for o in station.core.outputs}
        self.duty_outputs = {loop.output for loop in station.loops}
        self.watchdog = station.core.watchdog_output
        self.field = build_cabinet(station, plant, self.plant, relay)
        self._ticks_at_power_on = self.regs.core_ticks
        self.watch = TripWatch(station.core.rules)
        self.log = open(log_path, "w", buffering=1 << 16)  # noqa: SIM115 - closed by the rig
        self.log_every_s = log_every_s
        self.t_s = 0.0
        self.started_wall = clock_ns()
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
        self._row_on: dict[str, float] = dict.fromkeys(self.outputs, 0.0)
        self._row_written_on: dict[str, float] = dict.fromkeys(self.outputs, 0.0)   # the core's level, for on_s
        self._row_span = 0.0
        self._next_row = 0.0
        self.gauges: dict[str, Any] = {}             # serial gauges (the process's ptys; none in lockstep)
        self.meters: dict[str, Meter] = {}           # instrument -> its emulated counter
        self.buses: list[tuple[Any, str]] = []        # (MeterBus, slave pty path): the process's only
        self.rng = random.Random(seed)

    def add_meters(self, instruments: Mapping[str, Mapping[str, Any]]) -> list[Any]:
        """The meters of one RS-485 bus, each counting a metric of the plant's truth; their Modbus devices
        (the process puts them on a pty, the lockstep rig reads their registers directly)."""
        from hil.devices.modbus_meters import MassFlowMeter, Sdm630Meter

        devices: list[Any] = []
        for name, spec in instruments.items():
            start, address = float(spec.get("start", 0.0)), int(spec["address"])
            device = Sdm630Meter(address, start) if spec["device"] == "sdm630" else MassFlowMeter(address, start)
            metric = spec.get("metric")
            self.meters[name] = Meter(device, None if metric is None else str(metric), start,
                                      gain=float(spec.get("gain", 1.0)))
            devices.append(device)
        return devices

    @property
    def relay(self) -> WatchdogRelay:
        return self.field.relay

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


    def advance(self, written: Mapping[str, float], dt_s: float) -> tuple[dict[str, float], dict[str, bool], set[str]]:
        """One step of ``dt_s`` plant seconds with the levels the core wrote (the rig judged the relay first);
        returns the sensors to publish."""
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
        analog, digital, broken = self.sensors()
        self.last_analog = {k: (math.nan if k in broken else v) for k, v in analog.items()}
        for k, v in self.last_analog.items():       # every step's extremes, not only the rows' samples
            if math.isfinite(v):
                lo, hi = self._row_min.get(k, v), self._row_max.get(k, v)
                self._row_min[k], self._row_max[k] = min(lo, v), max(hi, v)
        self.watch.update(analog, digital, broken, self.clock_ns(), self.t_s)
        metrics = self.plant.metrics()     # the meters count what the plant used
        for meter in self.meters.values():
            meter.update(metrics, dt_s)
        if self.t_s >= self._next_row:
            self.row(analog, broken)
            self._next_row = self.t_s + self.log_every_s
        return analog, digital, broken

    def row(self, analog: Mapping[str, float], broken: set[str]) -> None:
        if self._row_span > 0.0:      # mean level over the row: a burst-fired heater shows its duty
            out = {k: round(v / self._row_span, 4) for k, v in self._row_on.items() if k != self.watchdog}
        else:
            levels = {n: float(self.regs.do(line)) for n, line in self.outputs.items()}
            out = {k: v for k, v in self.field.effective(levels).items() if k != self.watchdog}
        ch = {k: (None if k in broken or not math.isfinite(v) else round(v, 6)) for k, v in analog.items()}
        row = {"t_s": round(self.t_s, 3), "wall_s": round((self.clock_ns() - self.started_wall) / 1e9, 4),
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
                            "wall_ns": wall_ns if wall_ns is not None else self.clock_ns(), **data})

    # ---- commands ----
    def command(self, cmd: Mapping[str, Any]) -> dict[str, Any]:
        what = cmd.get("cmd")
        now = self.clock_ns()
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
