"""An ``[alarms.NAME]`` of the station file as a checked type: what raises it and how it clears.

The engine that evaluates alarms every scan is ``edge.control.alarms``; its docstring explains each
kind. This is only the description, so that the station reader (the bottom layer) can build it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["ALARM_ACTIONS", "ALARM_KINDS", "DEVIATION_KINDS", "SEVERITIES", "AlarmAction", "AlarmKind", "AlarmSpec",
           "LoopLimit", "RateDirection", "Severity"]

AlarmKind = Literal["abs_high", "abs_low", "dev_high", "dev_low", "dev_band", "rate", "loop_break"]
Severity = Literal["warning", "alarm", "critical"]
LoopLimit = Literal["both", "high", "low"]
RateDirection = Literal["both", "rising", "falling"]
#: What process control does while an alarm is on the operator's list (active or unacknowledged):
#: ``hold`` holds the recipe (resume is refused until it is off the list), ``stop_h2`` closes the H2 inlet
#: at once and keeps it closed. Declared per alarm in the station file (``on_active``), not coded per name.
AlarmAction = Literal["hold", "stop_h2"]
ALARM_ACTIONS: tuple[AlarmAction, ...] = get_args(AlarmAction)

ALARM_KINDS: tuple[AlarmKind, ...] = get_args(AlarmKind)
SEVERITIES: tuple[Severity, ...] = get_args(Severity)
DEVIATION_KINDS: tuple[AlarmKind, ...] = ("dev_high", "dev_low", "dev_band")


@dataclass(frozen=True)
class AlarmSpec:
    """One alarm. ``threshold`` is in the channel's unit (``rate``: unit per minute; unused by
    ``loop_break``, which uses ``band``). ``setpoint_of`` and ``output`` are keys of the
    ``setpoints`` and ``outputs`` mappings given to ``update``: a loop name and an output name."""

    name: str
    kind: AlarmKind
    channel: str
    threshold: float = 0.0
    hysteresis: float = 0.0
    delay_s: float = 0.0
    latch: bool = False
    inhibit_until_normal: bool = False
    severity: Severity = "warning"
    output: str | None = None               # loop_break: the output (a loop drives) whose duty is watched
    band: float = 0.0                       # loop_break: the PV movement that proves the loop works
    message: str = ""
    setpoint_of: str | None = None          # deviation kinds: the loop whose setpoint is compared
    window_s: float = 60.0                  # rate: the window the rate is measured over
    direction: RateDirection = "both"       # rate: which way of change raises it
    output_limits: tuple[float, float] = (0.0, 1.0)  # loop_break: the output's limits
    limit: LoopLimit = "both"               # loop_break: which limit is watched
    unit: str = ""                          # the channel's unit, for messages
    on_active: tuple[AlarmAction, ...] = ()  # what process control does while the alarm is active or unacked
    #: deviation kinds: the fastest the plant can follow its setpoint up / down (unit per minute). Under a
    #: faster program the PV is judged against the setpoint the plant can have reached (an alarm that always
    #: fires is a nuisance, ISA-18.2; edge.control.alarms). inf: the plant follows any program.
    follows_rise_per_min: float = math.inf
    follows_fall_per_min: float = math.inf

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.kind not in ALARM_KINDS:
            problems.append(f"kind {self.kind!r} is not one of {', '.join(ALARM_KINDS)}")
        if self.severity not in SEVERITIES:
            problems.append(f"severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")
        for key in ("threshold", "hysteresis", "delay_s", "band", "window_s"):
            if not math.isfinite(getattr(self, key)):
                problems.append(f"{key} must be a finite number")
        if not (self.follows_rise_per_min > 0.0 and self.follows_fall_per_min > 0.0):
            problems.append("follows_rise_per_min and follows_fall_per_min must be > 0")
        if self.hysteresis < 0.0 or self.delay_s < 0.0:
            problems.append("hysteresis and delay_s must be >= 0")
        if self.kind in DEVIATION_KINDS and self.setpoint_of is None:
            problems.append("a deviation alarm needs setpoint_of (the loop whose setpoint it compares)")
        if self.kind in ("dev_band", "rate") and not 0.0 <= self.hysteresis < self.threshold:
            problems.append("needs threshold > hysteresis >= 0 (it could never clear)")
        if self.kind == "rate" and self.window_s <= 0.0:
            problems.append("a rate alarm needs window_s > 0")
        for action in self.on_active:
            if action not in ALARM_ACTIONS:
                problems.append(f"on_active {action!r} is not one of {', '.join(ALARM_ACTIONS)}")
        if self.direction not in get_args(RateDirection):
            problems.append(f"direction {self.direction!r} is not one of both, rising, falling")
        if self.kind == "loop_break":
            lo, hi = self.output_limits
            if self.output is None or self.band <= 0.0 or self.delay_s <= 0.0 or not lo < hi:
                problems.append("a loop_break alarm needs output, band > 0, delay_s > 0 and output_limits lo < hi")
            if self.limit not in get_args(LoopLimit):
                problems.append(f"limit {self.limit!r} is not one of both, high, low")
        if problems:
            raise ValueError(f"alarm {self.name!r}: " + "; ".join(problems))
