"""``[accounting]`` of the station file as a checked type: which meter counters a batch record's energy
and gas come from, and the factors (the counting itself is ``edge.batch.accounting``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

__all__ = ["AccountingConfig"]


@dataclass(frozen=True)
class AccountingConfig:
    """``[accounting]`` of a station: which meter counters the batch figures come from, and the factors."""

    energy: str | None = None            # "instrument.measurement" of a counter (kWh)
    h2: str | None = None                # (NL)
    ar: str | None = None                # (NL)
    cooling_water: str | None = None     # (L)
    heater_rated_kw: Mapping[str, float] = field(default_factory=dict)   # duty output -> kW
    grid_kg_co2e_per_kwh: float | None = None
    max_rate_per_h: Mapping[str, float] = field(default_factory=dict)    # meter -> most it can count per hour
    gap_s: float = 60.0                  # readings further apart than this are a gap (wall seconds)
    close_wait_s: float = 30.0           # at the end, wait this long for every meter's end reading
    trend_every_s: float = 10.0          # process seconds between trend rows
    free_volume_l: float | None = None   # HD: the retort's free volume, for the H2 absorbed
    pressure_channel: str = "chamber_pressure"   # bar absolute
    temperature_channel: str = "chamber_temp"    # degC

    def source(self, meter: str) -> str | None:
        return {"energy": self.energy, "h2": self.h2, "ar": self.ar, "cooling_water": self.cooling_water}[meter]

    def scaled(self, time_scale: float) -> AccountingConfig:
        """On the HIL rig the clock runs ``time_scale`` times faster than the pollers: their wall-clock
        periods are process time ``time_scale`` times longer (like the channels' max ages)."""
        return replace(self, gap_s=self.gap_s * time_scale, close_wait_s=self.close_wait_s * time_scale)
