"""The heaters' energy from their applied duty and rated power, kept by the controller in its run state.

It is the cross-check of the metered energy in a batch record: a meter wired to the wrong feeder,
a failed heater zone or a wrong CT ratio shows as a ratio far from 1.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HeaterModel:
    """Energy from the heaters' applied duty and rated power (kWh since the batch started)."""

    rated_kw: dict[str, float]       # duty output -> rated power
    kwh: float = 0.0
    _last_t: float | None = None

    def update(self, t_s: float, duties: dict[str, float]) -> None:
        """Called once per scan with the core time and the duties applied since the previous call."""
        if self._last_t is not None and t_s > self._last_t:
            dt = t_s - self._last_t
            self.kwh += sum(self.rated_kw.get(out, 0.0) * max(0.0, min(1.0, d)) for out, d in duties.items()) \
                * dt / 3600.0
        self._last_t = t_s

    def restart(self) -> None:
        """A new boot: the core clock starts again (the outage itself heated nothing: no power)."""
        self._last_t = None
