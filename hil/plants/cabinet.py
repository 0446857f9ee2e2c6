"""The control cabinet as it is wired: safety contactor K1, the watchdog relay, the excess-temperature limiter.

What the plant feels is not what the core wrote. This model is the hardware between the two, and
the inputs that hardware gives back to the controller:

- **K1, the safety contactor** (the station's contactor output, the one that ``supplies`` others).
  Its coil is wired in series with the watchdog relay's contact and every limiter's contact: either
  opens K1 whatever the core writes. K1 feeds the outputs it supplies (the heater SSR, the HD H2
  solenoid): a supplied output acts only while K1 is closed. A stuck output (``valve_stuck``: a
  welded SSR, a welded solenoid driver) is DOWNSTREAM of K1: welded SSR + K1 open = no heat. A welded
  K1 (``valve_stuck`` on the contactor itself) stays closed whatever its coil does.
- **The watchdog relay** (``safety_hw.WatchdogRelay``, a charge pump on the watchdog line). With K1 it
  drops K1's coil; a station without K1 keeps the older wiring: the relay's contact feeds
  ``relay.outputs`` directly. ``relay_welded``: its contact stays closed and its auxiliary contact
  reads 1 whatever the line does (what the core's start-up proof test must catch).
- **Limiters** (``[limiter.NAME]``): a listed limit controller with its own thermocouple, reading the
  plant's TRUE temperature it ``senses``; above ``setpoint_c`` it latches, opens its contact (K1's coil,
  or the relay chain without K1) and its alarm contact reads 0. Only a reset at the limiter itself
  clears it, and only once the temperature is below its setpoint (as a real limiter refuses).
- **Cabinet power.** Off: every output device takes its unpowered position (the station's safe level).
  After start and after power returns the lines drive nothing until a core has written them.

Inputs it publishes (a name the station lacks is skipped by the wiring): ``contactor_closed`` (K1's
auxiliary contact), ``watchdog_relay_ok`` (the relay's auxiliary contact), each limiter's alarm input
(1 = healthy), ``heater_current`` (a current-transformer transducer: the mean effective heater level
over ~200 ms of plant time x the heater's nameplate current; a real CT transducer averages).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.spec.station import Station
from hil.plants import LIMITER_SENSES
from hil.plants.safety_hw import WatchdogRelay

CT_WINDOW_S = 0.2        # the current transducer's averaging time (plant seconds)
MAINS_LINE_V = 400.0     # three-phase line voltage of the heaters' nameplates


def nameplate_current_a(heater_w: float, line_v: float = MAINS_LINE_V) -> float:
    """Line current of a balanced three-phase heater at full power: P / (sqrt(3) U)."""
    return heater_w / (math.sqrt(3.0) * line_v)


@dataclass
class Limiter:
    """An independent excess-temperature limiter: its own thermocouple, its own latching contact."""

    name: str
    quantity: str             # the plant truth it reads (``true_values()`` key, e.g. "wall_temp")
    setpoint_c: float
    alarm_input: str          # the digital input its alarm contact drives (1 = healthy)
    tripped: bool = False
    tripped_t_s: float | None = None

    def update(self, truth: Mapping[str, float], t_s: float) -> bool:
        """Read the thermocouple; True when it trips now. A reading it cannot take trips it (fail safe)."""
        value = truth.get(self.quantity, math.nan)
        if not self.tripped and not (math.isfinite(value) and value <= self.setpoint_c):
            self.tripped, self.tripped_t_s = True, t_s
            return True
        return False

    def reset(self, truth: Mapping[str, float]) -> bool:
        """The reset button on the limiter's front: refused while the temperature is above the setpoint."""
        value = truth.get(self.quantity, math.nan)
        if self.tripped and math.isfinite(value) and value <= self.setpoint_c:
            self.tripped = False
            return True
        return not self.tripped


@dataclass
class Cabinet:
    """Register-file output levels -> what the plant's devices do; and the cabinet's own inputs.

    Keeps ``safety_hw.FieldSide``'s surface (``unpowered``, ``relay``, ``powered``, ``driven``, ``stuck``,
    ``effective()``, ``contactor_outputs()``) so the plant process uses either."""

    unpowered: Mapping[str, float]                    # output -> level without power (the station's safe level)
    relay: WatchdogRelay = field(default_factory=WatchdogRelay)
    contactor: str | None = None                      # K1's output; None: no contactor (the relay feeds directly)
    supplies: tuple[str, ...] = ()                    # what K1 feeds
    limiters: tuple[Limiter, ...] = ()
    heater: str = "heater"
    nameplate_a: float = 0.0                          # the heater's full-power line current
    powered: bool = True
    driven: bool = False    # a core has written the lines since start / power-on (before: nothing drives them)
    stuck: dict[str, float] = field(default_factory=dict)
    relay_welded: bool = False
    heater_current_a: float = 0.0
    k1_closed: bool = False                           # as of the last ``effective()``

    # ---- the safety chain ----
    def relay_contact(self) -> bool:
        return self.relay_welded or (self.powered and self.relay.energised)

    def chain_closed(self) -> bool:
        """Power, the watchdog relay's contact and every limiter's contact, in series."""
        return self.powered and self.relay_contact() and not any(lim.tripped for lim in self.limiters)

    def contactor_closed(self, written: Mapping[str, float]) -> bool:
        """K1: welded shut, or its coil energised through the chain by the core's line."""
        if self.contactor is None:
            return False
        if self.contactor in self.stuck:
            return bool(self.stuck[self.contactor])
        return self.chain_closed() and self.driven and bool(written.get(self.contactor, 0.0))

    def effective(self, written: Mapping[str, float]) -> dict[str, float]:
        self.k1_closed = self.contactor_closed(written)
        out: dict[str, float] = {}
        for name, level in written.items():
            safe = self.unpowered.get(name, 0.0)
            relay_cut = self.contactor is None and name in self.relay.outputs and not self.chain_closed()
            if not self.powered or not self.driven or relay_cut:
                level = safe
            level = self.stuck.get(name, level)          # the mechanical fault wins over the line...
            if name == self.contactor:
                level = float(self.k1_closed)
            elif self.contactor is not None and name in self.supplies and not self.k1_closed:
                level = safe                             # ...but not over K1: a welded SSR without supply is off
            out[name] = level
        return out

    def contactor_outputs(self) -> Iterable[str]:
        return self.supplies if self.contactor is not None else self.relay.outputs

    # ---- what the cabinet feels and reports ----
    def step(self, effective: Mapping[str, float], dt_s: float, truth: Mapping[str, float],
             t_s: float) -> list[Limiter]:
        """Advance the current transducer and the limiters; returns the limiters that tripped now."""
        if dt_s > 0:
            a = 1.0 - math.exp(-dt_s / CT_WINDOW_S)
            target = effective.get(self.heater, 0.0) * self.nameplate_a
            self.heater_current_a += (target - self.heater_current_a) * a
        return [lim for lim in self.limiters if self.powered and lim.update(truth, t_s)]

    def reset_limiter(self, name: str | None, truth: Mapping[str, float]) -> bool:
        """The local reset at the limiter(s); False if one refused (still above its setpoint)."""
        return all([lim.reset(truth) for lim in self.limiters if name is None or lim.name == name])

    def inputs(self) -> tuple[dict[str, float], dict[str, bool]]:
        """(analog, digital) inputs the cabinet's contacts and transducers give the controller."""
        digital = {"contactor_closed": self.k1_closed, "watchdog_relay_ok": self.relay_contact()}
        for lim in self.limiters:
            digital[lim.alarm_input] = self.powered and not lim.tripped
        return {"heater_current": self.heater_current_a}, digital


def build_cabinet(station: Station, plant_kind: str, plant: Any, relay: WatchdogRelay) -> Cabinet:
    """The cabinet the station file describes: its contactor (the output that ``supplies`` others; none: the
    older wiring, the relay feeding ``relay.outputs``), its limiters reading the plant's true temperatures,
    and the current transducer scaled to the plant's heater nameplate."""
    contactor = next((o for o in station.core.outputs if getattr(o, "supplies", ())), None)
    senses = LIMITER_SENSES.get(plant_kind, {})
    limiters = tuple(Limiter(spec.name, senses.get(spec.senses, spec.senses), spec.setpoint_c, spec.alarm_input)
                     for spec in station.limiters)
    heater = next((loop.output for loop in station.loops), "heater")
    heater_w = float(getattr(getattr(plant, "p", None), "heater_w", 0.0))
    return Cabinet({o.name: float(o.safe_level) for o in station.core.outputs}, relay,
                   contactor=contactor.name if contactor is not None else None,
                   supplies=tuple(getattr(contactor, "supplies", ())), limiters=limiters, heater=heater,
                   nameplate_a=nameplate_current_a(heater_w))
