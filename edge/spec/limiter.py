"""The independent excess-temperature limiter a station declares ([limiter.NAME], read in
``edge.spec.station.limiters``): a type the station and the rig share."""

from __future__ import annotations

from dataclasses import dataclass

#: What a limiter's thermocouple may sense, by station kind (the rig reads the plant's true temperature there).
LIMITER_SENSES: dict[str, tuple[str, ...]] = {
    "hd_reactor": ("wall", "charge"),
    "sintering_furnace": ("elements", "charge"),
}


@dataclass(frozen=True)
class LimiterSpec:
    name: str
    senses: str             # where its own thermocouple sits (LIMITER_SENSES)
    setpoint_c: float       # it latches above this, degC
    opens: str              # the output whose coil its contact is in series with (the safety contactor)
    alarm_input: str        # the digital channel its alarm contact drives (1 = healthy, 0 = tripped)
