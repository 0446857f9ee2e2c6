"""The station file's public types, and the C core's table sizes they are checked against."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from edge.spec.access import CommandSettings
from edge.spec.accounting import AccountingConfig
from edge.spec.alarms import (
    AlarmSpec,
    Severity,
)
from edge.spec.broker import BrokerSettings
from edge.spec.core import (
    ChannelKind,
    CoreSpec,
    RuleKind,
)
from edge.spec.instruments import InstrumentConfig
from edge.spec.limiter import LimiterSpec
from edge.spec.loops import LoopSpec
from edge.spec.plumbing import GasPlumbing
from edge.spec.sensor_node import SensorNodeConfig

# ---- the C core's tables (cext/edge_core.h; tests/test_config.py checks they agree) ----
EC_MAX_DRIVERS = 8
EC_MAX_CHANNELS = 64
EC_MAX_OUTPUTS = 64
EC_MAX_RULES = 64
EC_MAX_PERMISSIVES = 128
EC_NAME_LEN = 32  # including the terminating NUL
EC_MEDIAN_MAX = 9
EC_DRV_MAX_IO = 64  # inputs / outputs one driver instance offers (cext/driver.h)

StationKind = Literal["hd_reactor", "sintering_furnace"]
Gas = Literal["H2", "Ar", "N2", "He"]

STATION_KINDS: tuple[StationKind, ...] = ("hd_reactor", "sintering_furnace")
GASES: tuple[Gas, ...] = ("H2", "Ar", "N2", "He")
CHANNEL_KINDS: tuple[ChannelKind, ...] = ("analog", "thermocouple", "digital", "injected")
RULE_KINDS: tuple[RuleKind, ...] = (
    "high", "low", "rate_high", "rate_low", "digital", "fault", "stale", "deadman", "discrepancy", "agree",
)
DRIVER_TYPES = ("sim", "gpiochip", "spidev")
SECTIONS = ("station", "core", "drivers", "channels", "outputs", "interlocks", "permissives", "limits", "loops",
            "alarms", "annunciator", "safe_sequences", "plumbing", "instruments", "sensor_nodes", "accounting",
            "limiter")

#: The safe sequences a trip (or a process cause) can lead to (``edge.control.sequencer`` runs them):
#: ``evacuate_backfill`` heat off, H2 shut, evacuate then backfill argon (the default, as before);
#: ``backfill`` heat off, H2 shut, no pumping: argon straight in and kept above atmosphere (air in-leak);
#: ``isolate`` heat off, every gas valve closed, pump off: the charge keeps its atmosphere (cooling water lost:
#: no pumping against a hot wall).
SAFE_SEQUENCES = ("evacuate_backfill", "backfill", "isolate")
#: Causes of an abort found by process control rather than by an interlock rule; a [safe_sequences] key too.
PROCESS_CAUSES = ("air_inleak",)
#: What a cause maps to when the station does not say: in-leaking air is never pumped against.
DEFAULT_SAFE_SEQUENCES = {"air_inleak": "backfill"}

#: Valid range of each thermocouple type (NIST ITS-90 reference functions), degC.
TC_RANGE_C: dict[str, tuple[float, float]] = {
    "B": (0.0, 1820.0), "E": (-270.0, 1000.0), "J": (-210.0, 1200.0), "K": (-270.0, 1372.0),
    "N": (-270.0, 1300.0), "R": (-50.0, 1768.0), "S": (-50.0, 1768.0), "T": (-270.0, 400.0),
}
DEADMAN_RULE = "controller_deadman"
ALL_OUTPUTS = "all"  # `action = "all"`: every output except the watchdog line
RESERVED_NAMES = (DEADMAN_RULE, ALL_OUTPUTS)

NAME_RE = re.compile(rf"[a-z][a-z0-9_]{{0,{EC_NAME_LEN - 2}}}")
IDENT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # site and station id: MQTT topic levels
UNIT_RE = re.compile(r"[^\s\x00-\x1f\x7f]{1,16}")
PARAM_RE = re.compile(r"[^\s;=\x00-\x1f\x7f]{1,200}")  # a driver parameter: no ';' or '=' (C parser)

RING_MIN, RING_MAX = 16, 65536
PERIOD_MIN_MS, PERIOD_MAX_MS = 0.1, 1000.0
GPIO_LINES_MAX = 64  # GPIO_V2_LINES_MAX: lines in one request, inputs and outputs together
MS_MAX = 3_600_000.0  # upper bound for every time in ms (one hour): larger is surely a unit mistake


# ============================================================================ public types


@dataclass(frozen=True)
class StationIdentity:
    """Who the station is; ``site`` and ``station_id`` are levels of its MQTT topics."""

    site: str
    station_id: str
    kind: StationKind
    description: str = ""


@dataclass(frozen=True)
class EquipmentLimits:
    """What the equipment may be asked to do; every recipe is checked against this before a run.

    Temperatures in degC, rates in degC/min, process pressures in bar absolute, vacuum levels in
    mbar absolute (as vacuum gauges read), durations in hours, masses in kg.
    """

    max_temperature_c: float
    max_ramp_c_per_min: float
    max_pressure_bar: float
    min_vacuum_before_heating_mbar: float
    allowed_gases: tuple[Gas, ...]
    max_h2_pressure_bar: float | None = None
    zone_max_temperature_c: Mapping[str, float] = field(default_factory=dict)
    max_cooling_c_per_min: float | None = None
    max_h2_admission_temperature_c: float | None = None
    best_vacuum_mbar: float | None = None
    max_heater_duty_pct: float = 100.0
    max_batch_duration_h: float | None = None
    max_charge_kg: float | None = None

    def max_temperature_for(self, channel: str) -> float:
        """The highest setpoint a recipe may ask of the zone that ``channel`` measures."""
        return self.zone_max_temperature_c.get(channel, self.max_temperature_c)

    def gas_allowed(self, gas: str) -> bool:
        return gas in self.allowed_gases


@dataclass(frozen=True)
class Station:
    """One station file, validated: identity, what the C core is told, the limits, and what process
    control needs: PID loops, alarms and the gas-handling roles (defaults when a file has none)."""

    identity: StationIdentity
    core: CoreSpec
    limits: EquipmentLimits
    channel_units: Mapping[str, str]
    allow_remote_reset: bool
    source: pathlib.Path
    loops: tuple[LoopSpec, ...] = ()
    alarms: tuple[AlarmSpec, ...] = ()
    plumbing: GasPlumbing = field(default_factory=GasPlumbing)
    board: str | None = None  # [station] board: the boards/NAME.toml the wiring was checked against
    commands: CommandSettings = field(default_factory=CommandSettings)  # [mqtt.roles], [mqtt.commands]
    mqtt: BrokerSettings = field(default_factory=BrokerSettings)  # [mqtt] brokers, TLS, credentials, timings
    instruments: Mapping[str, InstrumentConfig] = field(default_factory=dict)  # [instruments.NAME]
    sensor_nodes: Mapping[str, SensorNodeConfig] = field(default_factory=dict)  # [sensor_nodes.NAME]: Pico nodes
    accounting: AccountingConfig = field(default_factory=AccountingConfig)  # [accounting]: batch-record meters
    limiters: tuple[LimiterSpec, ...] = ()  # [limiter.NAME]: independent excess-temperature limiters (hardware)
    beacon: str | None = None  # [annunciator] beacon: the output process control lights for trips and alarms
    beacon_sounds_from: Severity = "warning"  # [annunciator] sounds_from: the least severe alarm that lights it
    safe_sequences: Mapping[str, str] = field(default_factory=dict)  # [safe_sequences]: cause -> safe sequence
    content_sha256: str = ""  # of the station file's text: recovery refuses a batch saved under another file

    @property
    def broker(self) -> BrokerSettings | None:
        """The [mqtt] broker settings when the file names a broker; None: no broker configured."""
        return self.mqtt if self.mqtt.brokers else None
