"""Which channels and outputs of a station carry the gas handling, by role.

The programmer's gas segments (evacuate, backfill, admit H2, vent) and the sequencers
speak of roles ("the H2 inlet", "the vacuum gauge"); the station file says which named
output or channel plays each role. Defaults match the example stations.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GasPlumbing:
    pressure_channel: str = "chamber_pressure"     # bar absolute
    vacuum_channel: str = "chamber_vacuum"         # mbar absolute
    o2_channel: str | None = "o2_pct"              # %vol, None when the station has no analyser
    inlet_valves: dict[str, str] = field(default_factory=lambda: {"H2": "h2_inlet_valve", "Ar": "ar_inlet_valve"})
    vacuum_pump: str = "vacuum_pump"
    vacuum_valve: str = "vacuum_valve"
    vent_valve: str = "vent_valve"
    quench_fan: str | None = None                  # gas circulation fan of a sintering furnace

    def inlet(self, gas: str) -> str:
        try:
            return self.inlet_valves[gas]
        except KeyError:
            raise ValueError(f"no inlet valve for gas {gas!r} (this station has: "
                             f"{', '.join(sorted(self.inlet_valves))})") from None

    @property
    def outputs(self) -> tuple[str, ...]:
        """Every output the gas handling may drive."""
        fan = (self.quench_fan,) if self.quench_fan else ()
        return (*self.inlet_valves.values(), self.vacuum_pump, self.vacuum_valve, self.vent_valve, *fan)
