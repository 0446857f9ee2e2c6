"""The hardware between the controller's outputs and the plant: cabinet power, the watchdog relay, stuck valves.

What the plant feels is not what the core wrote, and the difference is the point of these models:

- **Cabinet power.** With the power off every output device takes its unpowered position, which the
  station files make the safe level (normally-closed gas valves, normally-open vent, heater off).
  After start and after power returns, the lines drive nothing until a core has written them: the
  levels a dead core left in the register file do not act.
- **The external watchdog relay** (a charge-pump relay on the watchdog line): energised while the
  line toggles, it drops the safety contactor when no edge came for ``timeout_s`` of *wall* time
  (it is hardware, it knows nothing of the plant's clock). The contactor feeds ``outputs`` (by
  default the heater and the H2 valve); dropped, those go to their unpowered level whatever the
  core writes. It re-energises by itself when the pulses return, as a charge pump does; the core's
  latched trips, not the relay, then decide what may come back. It reads the core's own record of
  when the line last changed (``do_changed_wall_ns``): sampling the level at the plant's rate could
  alias against a line that toggles every tick.
- **Stuck outputs** (a valve seized open, a welded contactor): the mechanical fault wins over everything.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WatchdogRelay:
    timeout_s: float = 0.5
    outputs: tuple[str, ...] = ("heater", "h2_inlet_valve")
    energised: bool = False            # no pulses seen yet: a real relay starts dropped
    dropped_wall_ns: int | None = None  # when it last dropped (None: never since energised)
    last_edge_wall_ns: int = 0

    def update(self, last_edge_wall_ns: int, now_wall_ns: int) -> str | None:
        """Feed the time of the line's last change; returns "energised"/"dropped" on a transition."""
        self.last_edge_wall_ns = last_edge_wall_ns
        alive = last_edge_wall_ns > 0 and now_wall_ns - last_edge_wall_ns <= self.timeout_s * 1e9
        if alive and not self.energised:
            self.energised = True
            return "energised"
        if not alive and self.energised:
            self.energised = False
            # the moment the relay's timeout ran out, not when this loop noticed it
            self.dropped_wall_ns = max(last_edge_wall_ns + round(self.timeout_s * 1e9), 0)
            return "dropped"
        return None


@dataclass
class FieldSide:
    """Register-file output levels -> what the plant's devices actually do."""

    unpowered: Mapping[str, float]                    # output -> level without power (the station's safe level)
    relay: WatchdogRelay = field(default_factory=WatchdogRelay)
    powered: bool = True
    driven: bool = False    # a core has written the lines since start / power-on (before: nothing drives them)
    stuck: dict[str, float] = field(default_factory=dict)

    def effective(self, written: Mapping[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, level in written.items():
            if (not self.powered or not self.driven
                    or (not self.relay.energised and name in self.relay.outputs)):
                level = self.unpowered.get(name, 0.0)
            out[name] = self.stuck.get(name, level)
        return out

    def contactor_outputs(self) -> Iterable[str]:
        return self.relay.outputs


@dataclass
class CabinetFeedback:
    """The minimum of the safety contactor K1 and the feedback signals the issue-13 interlocks read.

    A stand-in until the rig's fuller cabinet model replaces it: K1 is closed while the core writes
    it on and the watchdog relay is energised (its contact is in series with K1's coil); an open K1
    leaves every output it ``supplies`` unpowered. Published: ``contactor_closed`` (K1's auxiliary
    contact), ``watchdog_relay_ok`` (the relay's auxiliary contact) and ``heater_current`` (a current
    transformer reading the heater's mean level over ~``tau_s`` x its nameplate current)."""

    supplies: Mapping[str, tuple[str, ...]]   # contactor output -> the outputs it feeds
    unpowered: Mapping[str, float]
    heater_current_a: float                   # nameplate current at full power
    tau_s: float = 0.2
    current_a: float = 0.0
    closed: bool = False
    relay_ok: bool = False

    def apply(self, effective: Mapping[str, float], relay_ok: bool, dt_s: float) -> dict[str, float]:
        out = dict(effective)
        self.relay_ok = relay_ok
        self.closed = bool(self.supplies)
        for contactor, fed in self.supplies.items():
            closed = out.get(contactor, 0.0) >= 0.5 and relay_ok
            self.closed = self.closed and closed
            if not closed:
                for name in fed:
                    out[name] = self.unpowered.get(name, 0.0)
        alpha = 1.0 if dt_s >= 5 * self.tau_s else 1.0 - math.exp(-dt_s / self.tau_s)
        self.current_a += alpha * (out.get("heater", 0.0) * self.heater_current_a - self.current_a)
        return out

    def signals(self) -> tuple[dict[str, float], dict[str, bool]]:
        return {"heater_current": self.current_a}, {"contactor_closed": self.closed,
                                                    "watchdog_relay_ok": self.relay_ok}


def cabinet_for(outputs: Iterable[Any], plant: Any) -> CabinetFeedback:
    """From the station's outputs (their ``supplies``) and the plant's heater nameplate (3-phase 400 V)."""
    outputs = list(outputs)
    heater_w = float(getattr(getattr(plant, "p", None), "heater_w", 0.0))
    return CabinetFeedback({o.name: tuple(o.supplies) for o in outputs if getattr(o, "supplies", ())},
                           {o.name: float(o.safe_level) for o in outputs}, heater_w / (math.sqrt(3) * 400.0))
