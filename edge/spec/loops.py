"""A ``[loops.NAME]`` of the station file as a checked type: a PID's gains, what it reads and drives.

The PID itself (``edge.control.pid.Pid``, built with ``Pid.for_loop``) is runtime; this is its description.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LoopSpec", "PidGains"]


@dataclass(frozen=True)
class PidGains:
    """ISA standard form: ``kp`` in output fraction per unit of PV; ``ti_s = 0`` means no integral,
    ``td_s = 0`` no derivative."""

    kp: float
    ti_s: float
    td_s: float

    def __post_init__(self) -> None:
        if not all(math.isfinite(x) for x in (self.kp, self.ti_s, self.td_s)):
            raise ValueError(f"PID gains must be finite numbers, got {self}")
        if self.kp <= 0.0:
            raise ValueError(f"kp must be > 0 (a reverse-acting heating loop), got {self.kp}")
        if self.ti_s < 0.0 or self.td_s < 0.0:
            raise ValueError(f"ti_s and td_s must be >= 0, got ti_s={self.ti_s}, td_s={self.td_s}")


@dataclass(frozen=True)
class LoopSpec:
    """A ``[loops.NAME]`` table of the station file: a PID reading ``pv`` and driving ``output`` by duty."""

    name: str
    pv: str
    output: str
    gains: PidGains
    out_min: float = 0.0
    out_max: float = 1.0
    sensor_break_output: float = 0.0
    derivative_filter: float = 0.1
    setpoint_weight_b: float = 1.0
