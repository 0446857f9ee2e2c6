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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


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
