"""What the C core is told at start-up, as plain typed data.

``edge.spec.station`` builds a ``CoreSpec`` from the station file (names resolved, every
value checked); ``edge.core.Core`` hands it to the C core field by field. Keeping it
apart from both lets the config be tested without the core and the core be driven by
tests without a station file. Field meanings mirror ``cext/edge_core.h``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ChannelKind = Literal["analog", "thermocouple", "digital", "injected"]
RuleKind = Literal["high", "low", "rate_high", "rate_low", "digital", "fault", "stale", "deadman", "discrepancy",
                   "agree"]
Comparison = Literal["lt", "gt", "eq", "in"]


@dataclass(frozen=True)
class DriverSpec:
    name: str
    type: Literal["sim", "gpiochip", "spidev"]
    params: dict[str, str] = field(default_factory=dict)

    def param_string(self) -> str:
        """The "key=value;key=value" string the C drivers parse."""
        return ";".join(f"{k}={v}" for k, v in self.params.items())


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    kind: ChannelKind
    driver: str | None = None          # None for injected channels
    input: int = 0
    scale: float = 1.0
    offset: float = 0.0
    range_lo: float = float("-inf")
    range_hi: float = float("inf")
    unit: str = ""
    tc_type: str | None = None
    cold_junction: str | None = None   # channel name; None = cj_fixed_c
    cj_fixed_c: float = 0.0
    invert: bool = False
    median_n: int = 1
    ema_tau_ms: float = 0.0
    max_age_ms: float = 0.0
    rate_window_ms: float = 1000.0
    resolution: float | None = None    # published step (unit); None: the instrument's or the default (telemetry)


@dataclass(frozen=True)
class OutputSpec:
    name: str
    driver: str
    line: int
    safe_level: int
    max_on_ms: float = 0.0
    duty_cycle_ms: float = 20.0
    supplies: tuple[str, ...] = ()     # a contactor: the outputs it feeds; dropped by every rule cutting one


@dataclass(frozen=True)
class RuleSpec:
    name: str
    kind: RuleKind
    channel: str | None                # None only for deadman
    threshold: float
    action: tuple[str, ...]            # outputs forced to their safe level
    hysteresis: float = 0.0
    debounce_ms: float = 0.0
    latch: bool = True
    output: str | None = None          # discrepancy: the output whose written level is compared
    channel2: str | None = None        # agree: the second channel
    local_reset_only: bool = False     # never reset from afar (MQTT), only at the station
    soak_band: float | None = None     # agree: the narrower band the controller applies at a settled soak


@dataclass(frozen=True)
class PermissiveSpec:
    output: str
    channel: str
    cmp: Comparison
    value: float
    value2: float = 0.0


@dataclass(frozen=True)
class CoreSpec:
    period_ms: float = 1.0
    rt_priority: int = 0
    lock_memory: bool = False
    sample_ring: int = 4096
    event_ring: int = 1024
    reset_channel: str | None = None
    watchdog_output: str | None = None
    watchdog_feedback: str | None = None  # digital channel: the watchdog relay's auxiliary contact (proof test)
    max_tick_gap_ms: float = 0.0       # wall gap between sampler ticks above this = core fault; 0 = off
    allow_remote_reset: bool = False   # the core refuses a remote reset unless this is set
    latch_file: str | None = None      # where latched trips outlive the process (None: in memory only)
    drivers: tuple[DriverSpec, ...] = ()
    channels: tuple[ChannelSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    rules: tuple[RuleSpec, ...] = ()
    permissives: tuple[PermissiveSpec, ...] = ()
