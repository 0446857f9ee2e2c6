"""The station file: TOML in, a typed and validated ``Station`` out.

A station file describes one furnace and its controller: who it is (``[station]``), how the C
core samples and protects it (``[core]``, ``[drivers.*]``, ``[channels.*]``, ``[outputs.*]``,
``[interlocks.*]``, ``[[permissives.*]]``), the equipment limits that recipes are checked
against before a run starts (``[limits]``), and what process control runs: PID heating loops
(``[loops.*]``), alarms that inform the operator (``[alarms.*]``) and which channels and
outputs handle the gas (``[plumbing]``). ``stations/README.md`` is the reference for
technicians; ``stations/hd_reactor_sim.toml`` is a worked example.

Why so strict: this file is the safety case of the station. A typo must never pass silently
(an unknown key is an error, with a "did you mean"), a boolean is never taken for a number,
every name is resolved here, and every error names the file, the key path and what was
expected. All problems are collected and reported together (``SpecError``) so that a
technician fixes the file in one pass. An item that is itself broken still counts as declared,
so one mistake does not cascade into a page of "unknown channel" errors.

This module never imports the C core: its result is a plain ``CoreSpec`` (``edge.spec.core``)
and it is tested without a compiler. The core's table sizes are mirrored below and a test
checks them against ``cext/edge_core.h``.

Reading order: public types, errors, ``load_station``/``parse_station`` (one reader per
section, called in file order), the section readers, the cross-section checks, and at the
bottom the small typed-value helpers they all share.
"""

from __future__ import annotations

import math
import os
import pathlib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Literal, cast

from edge.batch.accounting import AccountingConfig
from edge.control.alarms import (
    ALARM_KINDS,
    DEVIATION_KINDS,
    SEVERITIES,
    AlarmKind,
    AlarmSpec,
    LoopLimit,
    RateDirection,
    Severity,
)
from edge.control.pid import LoopSpec, PidGains
from edge.devices.modbus import ModbusConfig, parse_modbus_instrument, shared_port_problems
from edge.devices.node.client import ChannelMap, OutputMap, SensorNodeConfig
from edge.devices.pfeiffer import PfeifferConfig, parse_instrument
from edge.spec.board import DriverUse, check_station_wiring, load_board
from edge.spec.core import (
    ChannelKind,
    ChannelSpec,
    Comparison,
    CoreSpec,
    DriverSpec,
    OutputSpec,
    PermissiveSpec,
    RuleKind,
    RuleSpec,
)
from edge.spec.plumbing import GasPlumbing
from edge.spec.reader import Bad as _Bad
from edge.spec.reader import Conv as _Conv
from edge.spec.reader import Problems as _Report
from edge.spec.reader import SpecError, parse_toml, read_text
from edge.spec.reader import Table as _Table
from edge.spec.reader import boolean as _boolean
from edge.spec.reader import choice as _choice
from edge.spec.reader import describe as _describe
from edge.spec.reader import did_you_mean as _did_you_mean
from edge.spec.reader import exact as _exact
from edge.spec.reader import fmt as _fmt
from edge.spec.reader import integer_in as _integer_in
from edge.spec.reader import join as _join
from edge.spec.reader import level as _level
from edge.spec.reader import level_number as _level_number
from edge.spec.reader import list_of as _list_of
from edge.spec.reader import lookup as _lookup
from edge.spec.reader import matching as _matching
from edge.spec.reader import number as _number
from edge.spec.reader import number_in as _number_in
from edge.spec.reader import one_of_ints as _one_of_ints
from edge.spec.reader import range_pair as _range_pair
from edge.spec.reader import short as _short
from edge.spec.reader import string as _string
from edge.spec.reader import text as _text
from edge.spec.reader import unknown as _unknown
from edge.spec.reader import valid as _valid
from edge.telemetry.access import MQTT_KEYS as _MQTT_KEYS
from edge.telemetry.access import CommandSettings
from edge.telemetry.access import read_settings as _read_command_settings
from edge.telemetry.broker_url import BROKER_KEYS as _BROKER_KEYS
from edge.telemetry.broker_url import BrokerSettings
from edge.telemetry.broker_url import read_broker_settings as _read_broker_settings

__all__ = [
    "AlarmSpec",
    "EquipmentLimits",
    "Gas",
    "GasPlumbing",
    "LoopSpec",
    "Station",
    "StationIdentity",
    "StationKind",
    "load_station",
    "parse_station",
]

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
    "high", "low", "rate_high", "rate_low", "digital", "fault", "stale", "deadman",
)
DRIVER_TYPES = ("sim", "gpiochip", "spidev")
SECTIONS = ("station", "core", "drivers", "channels", "outputs", "interlocks", "permissives", "limits", "loops",
            "alarms", "plumbing", "instruments", "sensor_nodes", "accounting")

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
    broker: BrokerSettings | None = None  # [mqtt] brokers, TLS, credentials (None: no broker configured)
    instruments: Mapping[str, PfeifferConfig | ModbusConfig] = field(default_factory=dict)  # [instruments.NAME]
    sensor_nodes: Mapping[str, SensorNodeConfig] = field(default_factory=dict)  # [sensor_nodes.NAME]: Pico nodes
    accounting: AccountingConfig = field(default_factory=AccountingConfig)  # [accounting]: batch-record meters


# ============================================================================ errors


# ============================================================================ entry points


def load_station(path: str | os.PathLike[str], *, boards_dir: pathlib.Path | None = None) -> Station:
    """Read and validate a station file; any problem is a ``SpecError`` naming the file.
    ``boards_dir``: where ``[station] board`` is looked up (default ``boards/``)."""
    return parse_station(read_text(path, "station file"), os.fspath(path), boards_dir=boards_dir)


def parse_station(text: str, source: str, *, boards_dir: pathlib.Path | None = None) -> Station:
    """Validate station-file text; ``source`` is the name errors carry (usually the path)."""
    document = parse_toml(text, source)
    report = _Report(source)
    top = _Table(report, document, "", noun="section")

    identity, allow_remote_reset, board = _read_station(top)
    settings = _read_core(top)
    drivers = _read_drivers(top)
    _check_board(report, board, drivers, boards_dir)
    channels = _read_channels(top, drivers)
    outputs = _read_outputs(top, drivers, settings)
    drivers = _with_initial_levels(drivers, outputs)
    _resolve_core_names(settings, channels, outputs)
    rules = _read_interlocks(top, settings, channels, outputs)
    permissives = _read_permissives(top, settings, channels, outputs)
    limits = _read_limits(top, identity, channels)
    loops = _read_loops(top, settings, channels, outputs, limits)
    alarms = _read_alarms(top, channels, loops, outputs, rules)
    plumbing = _read_plumbing(top, settings, channels, outputs, loops, limits)
    commands, broker = _read_mqtt(top)
    instruments = _read_instruments(top, channels)
    sensor_nodes = _read_sensor_nodes(top, channels, outputs, _instrument_feeds(instruments))
    # a loop that failed its own checks is reported there: then the heater model is not judged (no cascade)
    loops_ok = isinstance(document.get("loops", {}), dict) and all(lp is not None for lp in loops.values())
    loop_outputs = {lp.output for lp in _valid(loops)} if loops_ok else None
    accounting = _read_accounting(top, instruments, outputs, channels, loop_outputs)

    _check_shared_namespace(report, channels, outputs, rules, loops, alarms)
    _check_table_sizes(report, drivers, channels, outputs, rules, permissives)
    _check_limits_against_trips(report, limits, channels, rules)
    top.finish()
    report.raise_if_any(section_order=list(document))

    if identity is None or limits is None:  # pragma: no cover - every None path reports an error
        raise SpecError(source, "", "internal error: a section was not read")
    core = CoreSpec(
        period_ms=settings.period_ms,
        rt_priority=settings.rt_priority,
        lock_memory=settings.lock_memory,
        sample_ring=settings.sample_ring,
        event_ring=settings.event_ring,
        reset_channel=settings.reset_input,
        watchdog_output=settings.watchdog_output,
        latch_file=settings.latch_file,
        drivers=tuple(d.spec for d in _valid(drivers)),
        channels=_valid(channels),
        outputs=_valid(outputs),
        rules=_valid(rules),
        permissives=tuple(p for p in permissives if p is not None),
    )
    return Station(
        identity=identity,
        core=core,
        limits=limits,
        channel_units={c.name: c.unit for c in core.channels},
        allow_remote_reset=allow_remote_reset,
        source=pathlib.Path(source),
        loops=_valid(loops),
        alarms=_valid(alarms),
        plumbing=plumbing,
        board=board,
        commands=commands,
        broker=broker,
        instruments=instruments,
        sensor_nodes=sensor_nodes,
        accounting=accounting,
    )


# ============================================================================ [station]


def _read_station(top: _Table) -> tuple[StationIdentity | None, bool, str | None]:
    """Identity, the board it runs on, and the one remote-control switch: remote reset of latched trips."""
    t = top.table("station", required=True, expected="[station] with id, site and kind")
    if t is None:
        return None, False, None
    station_id = t.need("id", _ident, "the station id, e.g. \"hd-01\" (lowercase letters, digits, - and _)")
    site = t.need("site", _ident, "the site name, e.g. \"pilot-line\"")
    kind = t.need("kind", _choice(STATION_KINDS), "\"hd_reactor\" or \"sintering_furnace\"")
    description = t.get("description", _text(500), "")
    allow_remote_reset = t.get("allow_remote_reset", _boolean, False)
    board = t.get("board", _ident)
    t.finish()
    if station_id is None or site is None or kind is None:
        return None, allow_remote_reset, board
    return StationIdentity(site, station_id, cast(StationKind, kind), description), allow_remote_reset, board


def _check_board(
    report: _Report, board_name: str | None, drivers: Mapping[str, _Driver | None], boards_dir: pathlib.Path | None
) -> None:
    """The drivers' chips, lines and SPI devices must exist on the named board (``edge.spec.board``).

    No ``board`` key: the wiring is not checked against a board (older files, and the loader's own
    tests); ``reedge provision`` refuses such a station, so nothing unchecked reaches an SBC."""
    if board_name is None:
        return
    try:
        board = load_board(board_name, boards_dir)
    except SpecError as exc:
        for error in exc.errors:
            broken = error.key_path or error.source.endswith(".toml")
            report.add("station.board", f"the board file is broken: {error}" if broken else error.message)
        return
    uses = []
    for driver in drivers.values():
        if driver is None:
            continue
        params = driver.spec.params
        uses.append(DriverUse(driver.spec.name, driver.spec.type, chip=params.get("chip", ""),
                              inputs=_offsets(params.get("inputs", "")), outputs=_offsets(params.get("outputs", "")),
                              dev=params.get("dev", "")))
    for key_path, message in check_station_wiring(board, uses):
        report.add(key_path, message)


def _offsets(joined: str) -> tuple[int, ...]:
    """"5,6,13" (as ``_join_ints`` wrote it for the C driver) back to line offsets."""
    return tuple(int(part) for part in joined.split(",") if part)


# ============================================================================ [core]


@dataclass
class _CoreSettings:
    """The [core] section as read, names not yet resolved (channels and outputs come later)."""

    table: _Table | None = None
    period_ms: float = 1.0
    rt_priority: int = 0
    lock_memory: bool = False
    sample_ring: int = 4096
    event_ring: int = 1024
    deadman_ms: float | None = None
    deadman_action: tuple[str, ...] | str = ALL_OUTPUTS
    reset_input: str | None = None
    watchdog_output: str | None = None
    latch_file: str | None = None


def _read_core(top: _Table) -> _CoreSettings:
    """Sampler timing and scheduling, ring sizes, the dead-man, the reset input, the watchdog line."""
    settings = _CoreSettings()
    t = top.table("core", required=True, expected="[core] with at least deadman_ms")
    if t is None:
        return settings
    settings.table = t
    settings.period_ms = t.get("period_ms", _number_in(PERIOD_MIN_MS, PERIOD_MAX_MS), 1.0)
    settings.rt_priority = t.get("rt_priority", _integer_in(0, 99), 0)
    settings.lock_memory = t.get("lock_memory", _boolean, False)
    settings.sample_ring = t.get("sample_ring", _ring_size, 4096)
    settings.event_ring = t.get("event_ring", _ring_size, 1024)
    settings.deadman_ms = t.need(
        "deadman_ms", _deadman_ms(settings.period_ms),
        "the controller dead-man timeout in ms (e.g. 2000): the plant goes safe when the "
        "controller stops calling heartbeat() for that long",
    )
    settings.deadman_action = t.get("deadman_action", _action) or ALL_OUTPUTS
    settings.reset_input = t.get("reset_input", _name)
    settings.watchdog_output = t.get("watchdog_output", _name)
    settings.latch_file = t.get("latch_file", _text(4096))
    t.finish()
    return settings


def _resolve_core_names(
    settings: _CoreSettings, channels: Mapping[str, ChannelSpec | None], outputs: Mapping[str, OutputSpec | None]
) -> None:
    """The reset input must be a digital channel; the watchdog line must be a declared output."""
    t = settings.table
    if t is None:
        return
    if settings.reset_input is not None:
        channel = _lookup(t, "reset_input", settings.reset_input, channels, "channel")
        if channel is not None and channel.kind != "digital":
            t.report("reset_input", f"channel '{channel.name}' is {channel.kind}; the reset input must be a "
                                    "digital channel (a push button)")
    if settings.watchdog_output is not None:
        _lookup(t, "watchdog_output", settings.watchdog_output, outputs, "output")


# ============================================================================ [drivers.*]


@dataclass(frozen=True)
class _Driver:
    """A driver's spec and what it offers to the channels and outputs wired to it."""

    spec: DriverSpec
    analog_inputs: int
    digital_inputs: int
    outputs: int
    analog_kinds: tuple[ChannelKind, ...] = ("analog", "thermocouple")
    output_offsets: tuple[int, ...] = ()  # gpiochip: the chip's line offset of each output index
    inverted_inputs: frozenset[int] = frozenset()  # gpiochip: input indexes the kernel already inverts


# Every parameter the C drivers accept (cext/drv_*.c). The C side refuses unknown keys too, but
# only at start-up and one at a time; here they are all reported with the file and key path.
_DRIVER_KEYS = (
    "type", "path", "chip", "inputs", "outputs", "consumer", "bias", "active_low_inputs",
    "active_low_outputs", "drive", "initial_high", "dev", "tc", "poll_ms", "speed_hz", "mode", "avg",
    "mains", "oc", "settle_ms",
)
GPIO_LINES_MAX = 64  # GPIO_V2_LINES_MAX: lines in one request, inputs and outputs together


def _read_drivers(top: _Table) -> dict[str, _Driver | None]:
    """Each [drivers.NAME] is one device. The first one declared is driver 0: its clock is the core's."""
    drivers: dict[str, _Driver | None] = {}
    section = top.table("drivers", required=True, expected="at least one [drivers.NAME] table")
    if section is None:
        return drivers
    for name, t in _named_tables(section):
        drivers[name] = _read_driver(t, name) if t is not None else None
    if not drivers:
        section.report(None, "at least one driver is required (the core's clock is driver 0's clock)")
    first = next(iter(drivers.values()), None)
    sims = [d.spec.name for d in drivers.values() if d is not None and d.spec.type == "sim"]
    if sims and first is not None and first.spec.type != "sim":
        section.report(sims[0], "declare the sim driver first: driver 0's clock is the core's clock, and on "
                                "the virtual rig that must be the plant's clock")
    return drivers


def _read_driver(t: _Table, name: str) -> _Driver | None:
    """The type, then the parameters the C driver of that type parses (all strings in DriverSpec.params)."""
    kind = t.need("type", _choice(DRIVER_TYPES), "the driver type: sim, gpiochip or spidev")
    params: dict[str, str] = {}
    driver: _Driver | None = None
    if kind == "sim":
        path = t.need("path", _absolute_path, "the register file, e.g. \"/dev/shm/reedge-hd-01.regs\"")
        params["path"] = path or ""
        driver = _Driver(DriverSpec(name, "sim"), EC_DRV_MAX_IO, EC_DRV_MAX_IO, EC_DRV_MAX_IO)
    elif kind == "gpiochip":
        driver = _read_gpiochip(t, name, params)
    elif kind == "spidev":
        driver = _read_spidev(t, name, params)
    else:
        t.accept(*_DRIVER_KEYS)
    t.finish(elsewhere=_DRIVER_KEYS, context=f"to {kind} drivers")
    if driver is None or not t.ok:
        return None
    return replace(driver, spec=DriverSpec(name, driver.spec.type, params))


def _read_gpiochip(t: _Table, name: str, params: dict[str, str]) -> _Driver:
    """Digital inputs and outputs on one GPIO chip: input i is inputs[i], output line i is outputs[i].

    ``initial_high`` is not written by hand: it is derived from the outputs' safe levels
    (``_with_initial_levels``) so that every output comes up at its safe level."""
    chip = t.need("chip", _param_text, "the GPIO chip, e.g. \"/dev/gpiochip0\" or \"gpiochip0\"")
    inputs: list[int] = t.get("inputs", _line_offsets) or []
    outputs: list[int] = t.get("outputs", _line_offsets) or []
    if not inputs and not outputs and not t.has_error("inputs") and not t.has_error("outputs"):
        t.report("inputs", "missing: expected inputs = [line offsets] and/or outputs = [line offsets]")
    both = sorted(set(inputs) & set(outputs))
    if both:
        t.report("outputs", f"line offsets {both} are also listed in inputs; a line is one or the other")
    if len(inputs) + len(outputs) > GPIO_LINES_MAX:
        t.report("outputs", f"{len(inputs)} inputs + {len(outputs)} outputs: one chip request holds at most "
                            f"{GPIO_LINES_MAX} lines")
    consumer = t.get("consumer", _matching(re.compile(r"[^\s;=\x00-\x1f\x7f]{1,31}"),
                                           "expected a label of 1 to 31 characters without spaces"))
    bias = t.get("bias", _choice(("pull-up", "pull-down", "disabled", "as-is")))
    drive = t.get("drive", _choice(("push-pull", "open-drain", "open-source")))
    active_low_inputs = t.get("active_low_inputs", _line_offsets) or []
    active_low_outputs = t.get("active_low_outputs", _line_offsets) or []
    for key, subset, whole in (("active_low_inputs", active_low_inputs, inputs),
                               ("active_low_outputs", active_low_outputs, outputs)):
        stray = sorted(set(subset) - set(whole))
        if stray:
            t.report(key, f"line offsets {stray} are not in {key.rsplit('_', 1)[1]}")
    if t.has("initial_high"):
        t.report("initial_high", "set automatically from the outputs' safe_level (so that every output comes "
                                 "up at its safe level): remove it")
    for key, value in (("chip", chip), ("inputs", _join_ints(inputs)), ("outputs", _join_ints(outputs)),
                       ("consumer", consumer), ("bias", bias), ("active_low_inputs", _join_ints(active_low_inputs)),
                       ("active_low_outputs", _join_ints(active_low_outputs)), ("drive", drive)):
        if value:
            params[key] = value
    inverted = frozenset(i for i, offset in enumerate(inputs) if offset in active_low_inputs)
    return _Driver(DriverSpec(name, "gpiochip"), 0, len(inputs), len(outputs), output_offsets=tuple(outputs),
                   inverted_inputs=inverted)


def _read_spidev(t: _Table, name: str, params: dict[str, str]) -> _Driver:
    """One MAX31855/MAX31856 thermocouple converter.

    The converter linearises and compensates itself: analog input 0 is the hot junction in
    degC, input 1 its own cold junction in degC. Declaring them "thermocouple" channels would
    convert twice, so only "analog" channels may be wired to it."""
    dev = t.need("dev", _absolute_path, "the SPI device, e.g. \"/dev/spidev0.0\"")
    chip = t.need("chip", _choice(("max31855", "max31856")), "the converter: max31855 or max31856")
    tc = t.need("tc", _choice(tuple(TC_RANGE_C)), "the thermocouple type: B, E, J, K, N, R, S or T")
    is_55 = chip == "max31855"
    if is_55 and tc == "B":
        t.report("tc", "there is no type-B MAX31855: use a MAX31856")
    numbers: list[tuple[str, _Conv[int]]] = [
        ("poll_ms", _integer_in(100 if is_55 else 10, 60_000)),
        ("speed_hz", _integer_in(1, 5_000_000)),
        ("mode", _integer_in(0, 3)),
        ("avg", _one_of_ints((1, 2, 4, 8, 16))),
        ("mains", _one_of_ints((50, 60))),
        ("oc", _integer_in(1, 3)),
        ("settle_ms", _integer_in(0, 10_000)),
    ]
    for key, value in (("dev", dev), ("chip", chip), ("tc", tc)):
        if value is not None:
            params[key] = value
    for key, conv in numbers:
        if is_55 and key in ("avg", "mains", "oc", "settle_ms"):
            if key in t.data:
                t.accept(key)
                t.report(key, "applies to the max31856 only (the max31855 has no such setting)")
            continue
        number = t.get(key, conv)
        if number is not None:
            params[key] = str(number)
    return _Driver(DriverSpec(name, "spidev"), 2, 0, 0, analog_kinds=("analog",))


def _with_initial_levels(
    drivers: Mapping[str, _Driver | None], outputs: Mapping[str, OutputSpec | None]
) -> dict[str, _Driver | None]:
    """gpiochip outputs whose safe level is 1 are requested high (initial_high), so that no output
    passes through its unsafe level between open() and the core's first tick."""
    result = dict(drivers)
    for name, driver in drivers.items():
        if driver is None or driver.spec.type != "gpiochip":
            continue
        high = [driver.output_offsets[o.line] for o in outputs.values()
                if o is not None and o.driver == name and o.safe_level == 1 and o.line < len(driver.output_offsets)]
        if high:
            params = {**driver.spec.params, "initial_high": _join_ints(sorted(high))}
            result[name] = replace(driver, spec=replace(driver.spec, params=params))
    return result


# ============================================================================ [channels.*]

_CHANNEL_KEYS = (
    "kind", "driver", "input", "shared_input", "unit", "scale", "offset", "range", "tc_type",
    "cold_junction", "cold_junction_c", "invert", "median", "ema_tau_ms", "max_age_ms", "rate_window_ms",
)


def _read_channels(top: _Table, drivers: Mapping[str, _Driver | None]) -> dict[str, ChannelSpec | None]:
    """Channels in file order (the core's channel index). A cold junction must come before its TC."""
    channels: dict[str, ChannelSpec | None] = {}
    section = top.table("channels", required=True, expected="[channels.NAME] tables")
    if section is None:
        return channels
    wired: dict[tuple[str, str, int], tuple[str, bool]] = {}  # (driver, space, input) -> (channel, shared)
    names_in_file = list(section.data)
    for name, t in _named_tables(section):
        channels[name] = _read_channel(t, name, drivers, channels, names_in_file, wired) if t is not None else None
    return channels


def _read_channel(
    t: _Table,
    name: str,
    drivers: Mapping[str, _Driver | None],
    earlier: Mapping[str, ChannelSpec | None],
    names_in_file: Sequence[str],
    wired: dict[tuple[str, str, int], tuple[str, bool]],
) -> ChannelSpec | None:
    """One channel: its wiring, its conversion, its filters. Keys that do not apply to its kind are errors."""
    kind_text = t.need("kind", _choice(CHANNEL_KINDS), "the channel kind: analog, thermocouple, digital or injected")
    if kind_text is None:
        t.accept(*_CHANNEL_KEYS)
        t.finish()
        return None
    kind = cast(ChannelKind, kind_text)
    measured = kind != "digital"  # has a numeric value: range, EMA and rate make sense

    driver: _Driver | None = None
    driver_name: str | None = None
    input_index = 0
    if kind != "injected":
        driver, driver_name, input_index = _read_wiring(t, name, kind, drivers, wired)

    if kind == "thermocouple":
        unit = t.get("unit", _exact("degC", "a thermocouple channel reads degC"), "degC")
    elif kind == "digital":
        unit = t.get("unit", _unit, "")
    else:
        unit = t.need("unit", _unit, "the engineering unit, e.g. \"bar\", \"%LEL\", \"l/min\", \"degC\"") or ""

    scale, offset = 1.0, 0.0
    if kind in ("analog", "thermocouple"):
        scale = t.get("scale", _number, 1.0)
        offset = t.get("offset", _number, 0.0)
        if scale == 0.0:
            t.report("scale", "must not be 0 (every reading would be the offset)")

    range_lo, range_hi = -math.inf, math.inf
    if measured:
        bounds = t.get("range", _range_pair)
        if bounds is not None:
            range_lo, range_hi = bounds

    tc_type: str | None = None
    cold_junction: str | None = None
    cj_fixed_c = 0.0
    if kind == "thermocouple":
        tc_type, cold_junction, cj_fixed_c = _read_thermocouple(t, name, earlier, names_in_file)
        if tc_type is not None and t.has("range"):
            type_lo, type_hi = TC_RANGE_C[tc_type]
            if range_lo < type_lo or range_hi > type_hi:
                t.report("range", f"[{_fmt(range_lo)}, {_fmt(range_hi)}] goes beyond what a type {tc_type} "
                                  f"thermocouple measures ({_fmt(type_lo)} to {_fmt(type_hi)} degC)")

    invert = t.get("invert", _boolean, False) if kind == "digital" else False
    if invert and driver is not None and input_index in driver.inverted_inputs:
        t.report("invert", f"digital input {input_index} of driver '{driver.spec.name}' is already in its "
                           "active_low_inputs: inverting here as well would cancel it out")
    median_n = t.get("median", _median, 1)
    ema_tau_ms = t.get("ema_tau_ms", _number_in(0.0, MS_MAX), 0.0) if measured else 0.0
    if kind == "injected":
        max_age_ms = t.need("max_age_ms", _number_in(0.0, MS_MAX, lo_open=True),
                            "max_age_ms > 0: an injected value older than this is STALE (a node went quiet)")
    else:
        max_age_ms = t.get("max_age_ms", _number_in(0.0, MS_MAX), 0.0)
    rate_window_ms = t.get("rate_window_ms", _number_in(0.0, 60_000.0), 1000.0) if measured else 0.0

    t.finish(elsewhere=_CHANNEL_KEYS, context=f"to {kind} channels")
    if not t.ok or max_age_ms is None or (kind != "injected" and driver_name is None):
        return None
    return ChannelSpec(
        name=name, kind=kind, driver=driver_name, input=input_index, scale=scale, offset=offset,
        range_lo=range_lo, range_hi=range_hi, unit=unit, tc_type=tc_type, cold_junction=cold_junction,
        cj_fixed_c=cj_fixed_c, invert=invert, median_n=median_n, ema_tau_ms=ema_tau_ms,
        max_age_ms=max_age_ms, rate_window_ms=rate_window_ms,
    )


def _read_wiring(
    t: _Table,
    name: str,
    kind: ChannelKind,
    drivers: Mapping[str, _Driver | None],
    wired: dict[tuple[str, str, int], tuple[str, bool]],
) -> tuple[_Driver | None, str | None, int]:
    """Driver and input index; the input must exist on that driver and not be read twice unintended."""
    driver_name = t.need("driver", _name, "the name of a [drivers.NAME] table")
    index = t.need("input", _integer_in(0, EC_DRV_MAX_IO - 1), "the driver's input index (0..63)")
    shared = t.get("shared_input", _boolean, False)
    driver = _lookup(t, "driver", driver_name, drivers, "driver") if driver_name is not None else None
    if driver is None or index is None:
        return driver, driver_name, index or 0
    space = "digital" if kind == "digital" else "analog"
    available = driver.digital_inputs if space == "digital" else driver.analog_inputs
    if space == "analog" and kind not in driver.analog_kinds:
        allowed = " or ".join(driver.analog_kinds)
        t.report("kind", f"a {driver.spec.type} driver delivers {allowed} inputs (its converter already "
                         f"reports degC), not {kind}")
    elif index >= available:
        offered = f"{space} inputs 0..{available - 1}" if available else f"no {space} inputs"
        t.report("input", f"{space} input {index} does not exist: driver '{driver.spec.name}' "
                          f"({driver.spec.type}) has {offered}")
    else:
        key = (driver.spec.name, space, index)
        if key in wired:
            other, other_shared = wired[key]
            if not (shared and other_shared):
                t.report("input", f"{space} input {index} of driver '{driver.spec.name}' is already read by "
                                  f"channel '{other}' (set shared_input = true on both if that is intended)")
        else:
            wired[key] = (name, shared)
    return driver, driver_name, index


def _read_thermocouple(
    t: _Table, name: str, earlier: Mapping[str, ChannelSpec | None], names_in_file: Sequence[str]
) -> tuple[str | None, str | None, float]:
    """Type, and the cold junction: a channel declared earlier (analog or TC, in degC) or a fixed degC."""
    tc_type = t.need("tc_type", _choice(tuple(TC_RANGE_C)), "the thermocouple type: B, E, J, K, N, R, S or T")
    has_channel, has_fixed = t.has("cold_junction"), t.has("cold_junction_c")
    cj_name = t.get("cold_junction", _name)
    cj_fixed = t.get("cold_junction_c", _number_in(-50.0, 150.0), 0.0)
    if has_channel and has_fixed:
        t.report("cold_junction_c", "give either cold_junction (a channel) or cold_junction_c "
                                    "(a fixed temperature), not both")
    elif not has_channel and not has_fixed:
        t.report("cold_junction", "missing: expected the cold-junction channel's name, or "
                                  "cold_junction_c = the fixed cold-junction temperature in degC")
    if cj_name is not None:
        if cj_name == name:
            t.report("cold_junction", "a thermocouple cannot be its own cold junction")
        elif cj_name not in earlier and cj_name in names_in_file:
            t.report("cold_junction", f"channel '{cj_name}' is declared after this thermocouple; the core needs "
                                      f"the cold junction first: move [channels.{cj_name}] above [channels.{name}]")
        else:
            cj = _lookup(t, "cold_junction", cj_name, earlier, "channel")
            if cj is not None and (cj.kind not in ("analog", "thermocouple") or cj.unit != "degC"):
                t.report("cold_junction", f"channel '{cj_name}' is {cj.kind} in '{cj.unit}'; a cold junction "
                                          "must be an analog or thermocouple channel in degC")
    return tc_type, cj_name, cj_fixed


# ============================================================================ [outputs.*]

_OUTPUT_KEYS = ("driver", "line", "safe_level", "max_on_ms", "duty_cycle_ms")


def _read_outputs(
    top: _Table, drivers: Mapping[str, _Driver | None], settings: _CoreSettings
) -> dict[str, OutputSpec | None]:
    """Outputs in file order (the core's output index). Every one must say its safe level."""
    outputs: dict[str, OutputSpec | None] = {}
    section = top.table("outputs", required=True, expected="[outputs.NAME] tables")
    if section is None:
        return outputs
    lines: dict[tuple[str, int], str] = {}
    for name, t in _named_tables(section):
        outputs[name] = _read_output(t, name, drivers, settings, lines) if t is not None else None
    return outputs


def _read_output(
    t: _Table,
    name: str,
    drivers: Mapping[str, _Driver | None],
    settings: _CoreSettings,
    lines: dict[tuple[str, int], str],
) -> OutputSpec | None:
    """One output line: where it is, its safe level, its keep-alive and burst-fire cycle."""
    driver_name = t.need("driver", _name, "the name of a [drivers.NAME] table")
    line = t.need("line", _integer_in(0, EC_DRV_MAX_IO - 1), "the driver's output line index (0..63)")
    safe_level = t.need("safe_level", _level, "0 or 1: the level a trip forces this output to; every output "
                                              "must declare it")
    max_on_ms = t.get("max_on_ms", _number_in(0.0, MS_MAX), 0.0)
    duty_cycle_ms = t.get("duty_cycle_ms", _number_in(1.0, 60_000.0), 20.0)
    if "duty_cycle_ms" in t.data and duty_cycle_ms < settings.period_ms:  # the default bothers no one
        t.report("duty_cycle_ms", f"{_fmt(duty_cycle_ms)} ms is shorter than one sampler period "
                                  f"({_fmt(settings.period_ms)} ms): no burst-fire cycle can be generated")
    t.finish()
    driver = _lookup(t, "driver", driver_name, drivers, "driver") if driver_name is not None else None
    if driver is not None and line is not None:
        if line >= driver.outputs:
            offered = f"output lines 0..{driver.outputs - 1}" if driver.outputs else "no output lines"
            t.report("line", f"output line {line} does not exist: driver '{driver.spec.name}' "
                             f"({driver.spec.type}) has {offered}")
        elif (driver.spec.name, line) in lines:
            t.report("line", f"output line {line} of driver '{driver.spec.name}' is already driven by output "
                             f"'{lines[(driver.spec.name, line)]}'")
        else:
            lines[(driver.spec.name, line)] = name
    if not t.ok or driver_name is None or line is None or safe_level is None:
        return None
    return OutputSpec(name, driver_name, line, safe_level, max_on_ms, duty_cycle_ms)


# ============================================================================ [interlocks.*]

_RULE_KEYS = ("kind", "channel", "threshold", "hysteresis", "debounce_ms", "latch", "action")
_RULE_HELP: dict[str, str] = {
    "high": "the trip value in the channel's unit (trips above it)",
    "low": "the trip value in the channel's unit (trips below it)",
    "rate_high": "the trip rate in the channel's unit per minute (trips when rising faster)",
    "rate_low": "the trip rate in the channel's unit per minute (trips when the rate drops below it)",
    "digital": "0 or 1: the level the switch reads when all is well (trips on the other)",
    "deadman": "the timeout in ms",
}


def _read_interlocks(
    top: _Table,
    settings: _CoreSettings,
    channels: Mapping[str, ChannelSpec | None],
    outputs: Mapping[str, OutputSpec | None],
) -> dict[str, RuleSpec | None]:
    """Interlocks in file order, then the built-in controller dead-man from core.deadman_ms."""
    rules: dict[str, RuleSpec | None] = {}
    section = top.table("interlocks", expected="[interlocks.NAME] tables")
    if section is not None:
        for name, t in _named_tables(section):
            if name == DEADMAN_RULE:
                section.report(name, f"the name '{DEADMAN_RULE}' is reserved for the built-in dead-man "
                                     "(core.deadman_ms); choose another name")
            rules[name] = _read_interlock(t, name, settings, channels, outputs) if t is not None else None
    if settings.table is not None and settings.deadman_ms is not None:
        action = _resolve_action(settings.table, "deadman_action", settings.deadman_action, outputs, settings)
        rules[DEADMAN_RULE] = (
            RuleSpec(DEADMAN_RULE, "deadman", None, settings.deadman_ms, action) if action is not None else None
        )
    return rules


def _read_interlock(
    t: _Table,
    name: str,
    settings: _CoreSettings,
    channels: Mapping[str, ChannelSpec | None],
    outputs: Mapping[str, OutputSpec | None],
) -> RuleSpec | None:
    """One rule; what its threshold means, and which channel it accepts, depend on its kind."""
    kind_text = t.need("kind", _choice(RULE_KINDS),
                       "the rule kind: high, low, rate_high, rate_low, digital, fault, stale or deadman")
    if kind_text is None:
        t.accept(*_RULE_KEYS)
        t.finish()
        return None
    kind = cast(RuleKind, kind_text)

    channel_name: str | None = None
    if kind != "deadman":
        channel_name = t.need("channel", _name, "the name of the channel this rule watches")
    threshold: float | None = 0.0
    if kind == "deadman":
        threshold = t.need("threshold", _deadman_ms(settings.period_ms), _RULE_HELP[kind])
    elif kind == "digital":
        threshold = t.need("threshold", _level_number, _RULE_HELP[kind])
    elif kind in _RULE_HELP:
        threshold = t.need("threshold", _number, _RULE_HELP[kind])
    hysteresis = t.get("hysteresis", _number_in(0.0), 0.0) if kind in ("high", "low", "rate_high", "rate_low") \
        else 0.0
    debounce_ms = t.get("debounce_ms", _number_in(0.0, MS_MAX), 0.0) if kind != "deadman" else 0.0
    latch = t.get("latch", _boolean, True)
    action_value = t.need("action", _action, "the outputs this rule forces to their safe level, e.g. "
                                             "[\"heater\", \"h2_inlet_valve\"], or \"all\"")
    t.finish(elsewhere=_RULE_KEYS, context=f"to {kind} rules")

    action = _resolve_action(t, "action", action_value, outputs, settings) if action_value is not None else None
    channel = _lookup(t, "channel", channel_name, channels, "channel") if channel_name is not None else None
    if channel is not None and threshold is not None:
        _check_rule_channel(t, kind, channel, threshold, hysteresis)
    if not t.ok or threshold is None or action is None or (kind != "deadman" and channel is None):
        return None
    return RuleSpec(name, kind, channel_name, threshold, action, hysteresis, debounce_ms, latch)


def _check_rule_channel(t: _Table, kind: RuleKind, channel: ChannelSpec, threshold: float, hysteresis: float) -> None:
    """The rule kind must suit the channel, and a level threshold must lie inside what it can read."""
    ch = f"channel '{channel.name}'"
    if kind == "digital":
        if channel.kind != "digital":
            t.report("channel", f"{ch} is {channel.kind}; a digital rule needs a digital channel "
                                "(for a value use kind = \"high\" or \"low\")")
        return
    if kind in ("high", "low", "rate_high", "rate_low") and channel.kind == "digital":
        t.report("channel", f"{ch} is digital; use kind = \"digital\" with threshold = the healthy level")
        return
    if kind in ("rate_high", "rate_low") and channel.rate_window_ms <= 0:
        t.report("channel", f"{ch} has rate_window_ms = 0, so its rate is not measured; set "
                            f"channels.{channel.name}.rate_window_ms > 0")
    if kind == "stale" and channel.max_age_ms <= 0:
        t.report("channel", f"{ch} has no max_age_ms, so it can never be stale; set "
                            f"channels.{channel.name}.max_age_ms > 0")
    if kind in ("high", "low"):
        lo, hi = _value_range(channel)
        where = f"{ch}'s range {_fmt(lo)} to {_fmt(hi)} {channel.unit}".rstrip()
        if not lo <= threshold <= hi:
            t.report("threshold", f"{_fmt(threshold)} is outside {where}: the rule could never act as meant")
        else:
            clear = threshold - hysteresis if kind == "high" else threshold + hysteresis
            if not lo <= clear <= hi:
                t.report("hysteresis", f"{_fmt(hysteresis)} puts the clear point {_fmt(clear)} outside {where}: "
                                       "the rule could never clear")


def _resolve_action(
    t: _Table,
    key: str,
    value: tuple[str, ...] | str,
    outputs: Mapping[str, OutputSpec | None],
    settings: _CoreSettings,
) -> tuple[str, ...] | None:
    """Output names of an action; "all" means every output but the watchdog line, which is never forced."""
    watchdog = settings.watchdog_output
    if value == ALL_OUTPUTS:
        names = tuple(name for name in outputs if name != watchdog)
        if not names:
            t.report(key, "\"all\" names no output (the only output is the watchdog line)")
            return None
        return names
    resolved: list[str] = []
    for index, name in enumerate(value):
        if name not in outputs:
            t.report(key, f"[{index}]: " + _unknown("output", name, outputs))
        elif name == watchdog:
            t.report(key, f"'{name}' is the watchdog line (core.watchdog_output): the sampler toggles it "
                          "every tick and no rule may force it")
        else:
            resolved.append(name)
    return tuple(resolved) if len(resolved) == len(value) else None


# ============================================================================ [[permissives.*]]

_PERMISSIVE_KEYS = ("channel", "lt", "gt", "eq", "between")


def _read_permissives(
    top: _Table,
    settings: _CoreSettings,
    channels: Mapping[str, ChannelSpec | None],
    outputs: Mapping[str, OutputSpec | None],
) -> list[PermissiveSpec | None]:
    """[[permissives.OUTPUT]] blocks: every condition listed for an output must hold to energise it."""
    permissives: list[PermissiveSpec | None] = []
    section = top.table("permissives", expected="[[permissives.OUTPUT]] blocks")
    if section is None:
        return permissives
    for output_name, value in section.data.items():
        section.accept(output_name)
        path = _join(section.path, output_name)
        output_ok = output_name in outputs
        if not output_ok:
            section.report(output_name, _unknown("output", output_name, outputs))
        elif output_name == settings.watchdog_output:
            section.report(output_name, f"'{output_name}' is the watchdog line (core.watchdog_output): "
                                        "it takes no permissives")
            output_ok = False
        if not isinstance(value, list) or not value or not all(isinstance(item, dict) for item in value):
            section.report(output_name, f"expected one or more [[{path}]] blocks (double brackets), "
                                        f"got {_describe(value)}")
            continue
        for index, item in enumerate(value):
            t = _Table(section.problems, cast(dict[str, object], item), f"{path}[{index}]")
            spec = _read_permissive(t, output_name, channels)
            permissives.append(spec if output_ok else None)
    return permissives


def _read_permissive(t: _Table, output: str, channels: Mapping[str, ChannelSpec | None]) -> PermissiveSpec | None:
    """One condition: a channel and exactly one of lt, gt, eq (digital) or between = [lo, hi]."""
    channel_name = t.need("channel", _name, "the name of the channel this condition reads")
    lt = t.get("lt", _number)
    gt = t.get("gt", _number)
    eq = t.get("eq", _level_number)
    between = t.get("between", _range_pair)
    given = [key for key in ("lt", "gt", "eq", "between") if key in t.data]
    if len(given) != 1:
        t.report(None, f"give exactly one of lt, gt, eq or between = [low, high]; got "
                       f"{', '.join(given) if given else 'none'}")
    t.finish()
    channel = _lookup(t, "channel", channel_name, channels, "channel") if channel_name is not None else None
    if not t.ok or channel is None or len(given) != 1:
        return None
    key = given[0]
    if key == "between":
        if between is None:
            return None
        value, value2 = between
    else:
        single = {"lt": lt, "gt": gt, "eq": eq}[key]
        if single is None:
            return None
        value, value2 = single, 0.0
    lo, hi = _value_range(channel)
    where = f"channel '{channel.name}''s range {_fmt(lo)} to {_fmt(hi)} {channel.unit}".rstrip()
    if key == "eq" and channel.kind != "digital":
        t.report("eq", f"channel '{channel.name}' is {channel.kind}: eq compares a digital level; "
                       "use lt, gt or between for a value")
    elif key != "eq" and channel.kind == "digital":
        t.report(key, f"channel '{channel.name}' is digital: use eq = 0 or eq = 1")
    elif key in ("lt", "gt") and not lo <= value <= hi:
        t.report(key, f"{_fmt(value)} is outside {where}: the condition would always or never hold")
    elif key == "between" and (value2 < lo or value > hi):
        t.report(key, f"[{_fmt(value)}, {_fmt(value2)}] does not overlap {where}: the condition could never hold")
    if not t.ok:
        return None
    cmp = cast(Comparison, "in" if key == "between" else key)
    return PermissiveSpec(output, channel.name, cmp, value, value2)


# ============================================================================ [limits]

_LIMIT_KEYS = (
    "max_temperature_c", "zone_max_temperature_c", "max_ramp_c_per_min", "max_cooling_c_per_min",
    "max_pressure_bar", "max_h2_pressure_bar", "max_h2_admission_temperature_c",
    "min_vacuum_before_heating_mbar", "best_vacuum_mbar", "allowed_gases", "max_heater_duty_pct",
    "max_batch_duration_h", "max_charge_kg",
)


def _read_limits(
    top: _Table, identity: StationIdentity | None, channels: Mapping[str, ChannelSpec | None]
) -> EquipmentLimits | None:
    """Equipment limits (units in the key names); the recipe check before a run reads these."""
    t = top.table("limits", required=True, expected="[limits] with the equipment limits")
    if t is None:
        return None
    positive = _number_in(0.0, lo_open=True)
    max_t = t.need("max_temperature_c", _number_in(0.0, 2500.0, lo_open=True),
                   "the highest temperature any recipe may ask for, degC")
    zones: dict[str, float] = t.get("zone_max_temperature_c", _number_table) or {}
    max_ramp = t.need("max_ramp_c_per_min", positive, "the fastest heating ramp a recipe may ask for, degC/min")
    max_cooling = t.get("max_cooling_c_per_min", positive)
    max_p = t.need("max_pressure_bar", positive, "the highest chamber pressure for any gas, bar absolute")
    max_h2 = t.get("max_h2_pressure_bar", positive)
    max_h2_temp = t.get("max_h2_admission_temperature_c", positive)
    min_vacuum = t.need("min_vacuum_before_heating_mbar", positive,
                        "the chamber pressure heating may start at or below, mbar absolute")
    best_vacuum = t.get("best_vacuum_mbar", positive)
    gases = t.need("allowed_gases", _gas_list, "the process gases this equipment is built for, e.g. [\"H2\", \"Ar\"]")
    duty = t.get("max_heater_duty_pct", _number_in(0.0, 100.0, lo_open=True), 100.0)
    duration = t.get("max_batch_duration_h", positive)
    charge = t.get("max_charge_kg", positive)
    t.finish()

    for zone, limit in zones.items():
        channel = _lookup(t, "zone_max_temperature_c", zone, channels, "channel")
        if channel is not None and channel.kind != "thermocouple" and channel.unit != "degC":
            t.report("zone_max_temperature_c", f"channel '{zone}' reads '{channel.unit}', not a temperature")
        if max_t is not None and limit > max_t:
            t.report("zone_max_temperature_c", f"{zone} = {_fmt(limit)} is above max_temperature_c ({_fmt(max_t)})")
    if gases is not None:
        if "H2" in gases and max_h2 is None and not t.has_error("max_h2_pressure_bar"):
            t.report("max_h2_pressure_bar", "missing: H2 is in allowed_gases, so its pressure limit is required "
                                            "(bar absolute)")
        if "H2" not in gases:
            for key in ("max_h2_pressure_bar", "max_h2_admission_temperature_c"):
                if key in t.data:
                    t.report(key, "H2 is not in allowed_gases: remove this limit or allow H2")
        if identity is not None and identity.kind == "hd_reactor" and "H2" not in gases:
            t.report("allowed_gases", "an hd_reactor decrepitates with hydrogen: H2 must be allowed")
    if max_h2 is not None and max_p is not None and max_h2 > max_p:
        t.report("max_h2_pressure_bar", f"{_fmt(max_h2)} is above max_pressure_bar ({_fmt(max_p)})")
    if max_h2_temp is not None and max_t is not None and max_h2_temp > max_t:
        t.report("max_h2_admission_temperature_c", f"{_fmt(max_h2_temp)} is above max_temperature_c ({_fmt(max_t)})")
    if best_vacuum is not None and min_vacuum is not None and best_vacuum >= min_vacuum:
        t.report("best_vacuum_mbar", f"{_fmt(best_vacuum)} must be below min_vacuum_before_heating_mbar "
                                     f"({_fmt(min_vacuum)}), or heating could never start")

    if not t.ok or max_t is None or max_ramp is None or max_p is None or min_vacuum is None or gases is None:
        return None
    return EquipmentLimits(
        max_temperature_c=max_t, max_ramp_c_per_min=max_ramp, max_pressure_bar=max_p,
        min_vacuum_before_heating_mbar=min_vacuum, allowed_gases=gases, max_h2_pressure_bar=max_h2,
        zone_max_temperature_c=zones, max_cooling_c_per_min=max_cooling,
        max_h2_admission_temperature_c=max_h2_temp, best_vacuum_mbar=best_vacuum, max_heater_duty_pct=duty,
        max_batch_duration_h=duration, max_charge_kg=charge,
    )


# ============================================================================ [loops.*]

LOOP_TIME_MAX_S = 86_400.0  # ti_s and td_s: more than a day is surely a unit mistake


def _read_loops(
    top: _Table,
    settings: _CoreSettings,
    channels: Mapping[str, ChannelSpec | None],
    outputs: Mapping[str, OutputSpec | None],
    limits: EquipmentLimits | None,
) -> dict[str, LoopSpec | None]:
    """[loops.NAME]: PID heating loops, each reading one channel and driving one output by duty."""
    loops: dict[str, LoopSpec | None] = {}
    section = top.table("loops", expected="[loops.NAME] tables")
    if section is None:
        return loops
    driven: dict[str, str] = {}  # output -> the loop driving it
    for name, t in _named_tables(section):
        loops[name] = _read_loop(t, name, settings, channels, outputs, limits, driven) if t is not None else None
    return loops


def _read_loop(
    t: _Table,
    name: str,
    settings: _CoreSettings,
    channels: Mapping[str, ChannelSpec | None],
    outputs: Mapping[str, OutputSpec | None],
    limits: EquipmentLimits | None,
    driven: dict[str, str],
) -> LoopSpec | None:
    """One loop: what it reads and drives, its gains (ISA form, all three required) and limits."""
    pv_name = t.need("pv", _name, "the channel the loop controls (analog or thermocouple), e.g. \"chamber_temp\"")
    output_name = t.need("output", _name, "the output the loop drives by duty, e.g. \"heater\"")
    kp = t.need("kp", _number_in(0.0, 1e6, lo_open=True),
                "the proportional gain > 0, in output fraction (0..1) per unit of the PV, e.g. 0.05 per degC")
    ti_s = t.need("ti_s", _number_in(0.0, LOOP_TIME_MAX_S), "the integral time in s (0 = no integral action)")
    td_s = t.need("td_s", _number_in(0.0, LOOP_TIME_MAX_S), "the derivative time in s (0 = no derivative action)")
    out_min = t.get("out_min", _number_in(0.0, 1.0), 0.0)
    out_max = t.get("out_max", _number_in(0.0, 1.0), 1.0)
    sensor_break = t.get("sensor_break_output", _number_in(0.0, 1.0), 0.0)
    derivative_filter = t.get("derivative_filter", _number_in(0.0, 1.0, lo_open=True), 0.1)
    weight = t.get("setpoint_weight_b", _number_in(0.0, 1.0), 1.0)
    t.finish()

    if out_min >= out_max and not t.has_error("out_min") and not t.has_error("out_max"):
        t.report("out_max", f"{_fmt(out_max)} must be above out_min ({_fmt(out_min)})")
    elif not out_min <= sensor_break <= out_max and not t.has_error("sensor_break_output"):
        t.report("sensor_break_output", f"{_fmt(sensor_break)} is outside out_min..out_max "
                                        f"({_fmt(out_min)} to {_fmt(out_max)})")
    if limits is not None and out_max * 100.0 > limits.max_heater_duty_pct and not t.has_error("out_max"):
        t.report("out_max", f"{_fmt(out_max)} is above limits.max_heater_duty_pct "
                            f"({_fmt(limits.max_heater_duty_pct)} %): set out_max <= "
                            f"{_fmt(limits.max_heater_duty_pct / 100.0)}")
    if pv_name is not None:
        channel = _lookup(t, "pv", pv_name, channels, "channel")
        if channel is not None and channel.kind not in ("analog", "thermocouple"):
            t.report("pv", f"channel '{pv_name}' is {channel.kind}; a loop controls an analog or thermocouple "
                           "channel")
    if output_name is not None and _lookup(t, "output", output_name, outputs, "output") is not None:
        if output_name == settings.watchdog_output:
            t.report("output", f"'{output_name}' is the watchdog line (core.watchdog_output)")
        elif output_name in driven:
            t.report("output", f"output '{output_name}' is already driven by loop '{driven[output_name]}'")
        else:
            driven[output_name] = name
    if not t.ok or pv_name is None or output_name is None or kp is None or ti_s is None or td_s is None:
        return None
    return LoopSpec(name, pv_name, output_name, PidGains(kp, ti_s, td_s), out_min=out_min, out_max=out_max,
                    sensor_break_output=sensor_break, derivative_filter=derivative_filter,
                    setpoint_weight_b=weight)


# ============================================================================ [alarms.*]

_ALARM_KEYS = (
    "kind", "channel", "threshold", "hysteresis", "delay_s", "latch", "inhibit_until_normal", "severity",
    "message", "setpoint_of", "window_s", "direction", "output", "band", "limit",
)
_ALARM_KEY_HINTS = {
    ("dev_band", "band"): "the band's half-width is threshold",
    ("loop_break", "threshold"): "it has band and delay_s instead",
    ("loop_break", "hysteresis"): "band is its dead band",
}
_ALARM_HELP: dict[str, str] = {
    "abs_high": "the alarm value in the channel's unit (raises above it)",
    "abs_low": "the alarm value in the channel's unit (raises below it)",
    "dev_high": "how far above the loop's setpoint the PV may go, > 0, in the channel's unit",
    "dev_low": "how far below the loop's setpoint the PV may go, > 0, in the channel's unit",
    "dev_band": "the half-width of the band around the loop's setpoint, > 0, in the channel's unit",
    "rate": "the rate of change that raises it, > 0, in the channel's unit per minute",
}
DELAY_MAX_S = 86_400.0


def _read_alarms(
    top: _Table,
    channels: Mapping[str, ChannelSpec | None],
    loops: Mapping[str, LoopSpec | None],
    outputs: Mapping[str, OutputSpec | None],
    rules: Mapping[str, RuleSpec | None],
) -> dict[str, AlarmSpec | None]:
    """[alarms.NAME]: what the operator is told. Interlocks protect; these only inform."""
    alarms: dict[str, AlarmSpec | None] = {}
    section = top.table("alarms", expected="[alarms.NAME] tables")
    if section is None:
        return alarms
    loops_broken = top.has_error("loops")  # then every loop name resolves to "broken", not "unknown"
    for name, t in _named_tables(section):
        alarms[name] = _read_alarm(t, name, channels, loops, outputs, rules, loops_broken) if t is not None else None
    return alarms


def _read_alarm(
    t: _Table,
    name: str,
    channels: Mapping[str, ChannelSpec | None],
    loops: Mapping[str, LoopSpec | None],
    outputs: Mapping[str, OutputSpec | None],
    rules: Mapping[str, RuleSpec | None],
    loops_broken: bool,
) -> AlarmSpec | None:
    """One alarm; which keys apply and what ``threshold`` means depend on its kind."""
    kind_text = t.need("kind", _choice(ALARM_KINDS), "the alarm kind: " + ", ".join(ALARM_KINDS))
    if kind_text is None:
        t.accept(*_ALARM_KEYS)
        t.finish()
        return None
    kind = cast(AlarmKind, kind_text)
    deviation = kind in DEVIATION_KINDS

    follows_loop = deviation or kind == "loop_break"  # then the channel defaults to the loop's PV
    loop: LoopSpec | None = None
    if deviation:
        loop_name = t.need("setpoint_of", _name, "the loop whose setpoint it compares against (a [loops.NAME])")
        if loop_name is not None and not loops_broken:
            loop = _lookup_loop(t, loop_name, loops, outputs)
    elif kind == "loop_break":
        output_name = t.need("output", _name, "the output a loop drives, whose duty it watches, e.g. \"heater\"")
        if output_name is not None and not loops_broken:
            loop = _loop_driving(t, output_name, loops, outputs)
    channel_name = t.get("channel", _name) if follows_loop else \
        t.need("channel", _name, "the name of the channel this alarm watches")
    if channel_name is None and loop is not None:
        channel_name = loop.pv

    threshold = 0.0
    if kind in ("abs_high", "abs_low"):
        threshold = t.need("threshold", _number, _ALARM_HELP[kind]) or 0.0
    elif kind != "loop_break":
        threshold = t.need("threshold", _number_in(0.0, lo_open=True), _ALARM_HELP[kind]) or 0.0
    hysteresis = t.get("hysteresis", _number_in(0.0), 0.0) if kind != "loop_break" else 0.0
    if kind == "loop_break":
        delay_s = t.need("delay_s", _number_in(0.0, DELAY_MAX_S, lo_open=True),
                         "how long (s) the output may sit on its limit without the PV moving by band") or 0.0
        band = t.need("band", _number_in(0.0, lo_open=True),
                      "how far (> 0, in the PV's unit) the PV must move towards the setpoint within delay_s") or 0.0
    else:
        delay_s = t.get("delay_s", _number_in(0.0, DELAY_MAX_S), 0.0)
        band = 0.0
    limit = t.get("limit", _choice(("both", "high", "low")), "both") if kind == "loop_break" else "both"
    window_s = t.get("window_s", _number_in(0.0, 3600.0, lo_open=True), 60.0) if kind == "rate" else 60.0
    direction = t.get("direction", _choice(("both", "rising", "falling")), "both") if kind == "rate" else "both"
    latch = t.get("latch", _boolean, False)
    inhibit = t.get("inhibit_until_normal", _boolean, False)
    severity = t.get("severity", _choice(SEVERITIES), "warning")
    message = t.get("message", _text(200), "")
    for (hint_kind, key), hint in _ALARM_KEY_HINTS.items():
        if hint_kind == kind and key in t.data:
            t.accept(key)
            t.report(key, f"does not apply to {kind} alarms ({hint})")
    t.finish(elsewhere=_ALARM_KEYS, context=f"to {kind} alarms")

    relative = deviation or kind == "rate"  # a magnitude >= 0 compared with threshold > 0
    if relative and not t.has_error("hysteresis") and not t.has_error("threshold") and hysteresis >= threshold > 0.0:
        t.report("hysteresis", f"{_fmt(hysteresis)} is not below the threshold ({_fmt(threshold)}): "
                               "the alarm could never clear")
    channel = _lookup(t, "channel", channel_name, channels, "channel") if channel_name is not None else None
    if channel is not None:
        if channel.kind == "digital":
            t.report("channel", f"channel '{channel.name}' is digital; alarms compare values")
        elif kind == "loop_break" and loop is not None and channel.name != loop.pv:
            t.report("channel", f"loop '{loop.name}' controls '{loop.pv}', not '{channel.name}': a loop break "
                                "watches the loop's own PV (leave channel out)")
        elif kind in ("abs_high", "abs_low") and not t.has_error("threshold"):
            _check_alarm_level(t, kind, channel, threshold, hysteresis, rules)
    if not t.ok or channel is None or (follows_loop and loop is None):
        return None
    return AlarmSpec(
        name=name, kind=kind, channel=channel.name, threshold=threshold, hysteresis=hysteresis, delay_s=delay_s,
        latch=latch, inhibit_until_normal=inhibit, severity=cast(Severity, severity),
        output=loop.output if kind == "loop_break" and loop is not None else None, band=band, message=message,
        setpoint_of=loop.name if deviation and loop is not None else None, window_s=window_s,
        output_limits=(loop.out_min, loop.out_max) if loop is not None else (0.0, 1.0),
        direction=cast(RateDirection, direction), limit=cast(LoopLimit, limit), unit=channel.unit,
    )


def _lookup_loop(
    t: _Table, name: str, loops: Mapping[str, LoopSpec | None], outputs: Mapping[str, OutputSpec | None]
) -> LoopSpec | None:
    """setpoint_of: a loop by name; naming a loop's output or channel instead gets a pointer to it."""
    if name in loops:
        return loops[name]
    owner = next((loop.name for loop in loops.values() if loop is not None and name in (loop.output, loop.pv)),
                 None)
    if owner is not None:
        what = "an output" if name in outputs else "a channel"
        t.report("setpoint_of", f"'{name}' is {what}; name the loop instead: '{owner}'")
    else:
        t.report("setpoint_of", _unknown("loop", name, loops))
    return None


def _loop_driving(
    t: _Table, output: str, loops: Mapping[str, LoopSpec | None], outputs: Mapping[str, OutputSpec | None]
) -> LoopSpec | None:
    """loop_break: the loop that drives ``output`` (at most one does). Naming the loop gets a pointer."""
    driver = next((loop for loop in loops.values() if loop is not None and loop.output == output), None)
    if driver is not None:
        return driver
    loop = loops.get(output)
    if loop is not None:
        t.report("output", f"'{output}' is a loop; name the output it drives: '{loop.output}'")
    elif output in loops or (output in outputs and None in loops.values()):
        pass  # a broken loop: already reported
    elif output in outputs:
        driven = sorted(loop.output for loop in loops.values() if loop is not None)
        t.report("output", f"no loop drives output '{output}' (loops drive: {', '.join(driven) or 'nothing'}); "
                           "a loop break watches a loop's output")
    else:
        t.report("output", _unknown("output", output, outputs))
    return None


def _check_alarm_level(
    t: _Table, kind: str, channel: ChannelSpec, threshold: float, hysteresis: float,
    rules: Mapping[str, RuleSpec | None],
) -> None:
    """A level alarm must be readable on its channel, and come before any trip on that channel."""
    lo, hi = _value_range(channel)
    where = f"channel '{channel.name}''s range {_fmt(lo)} to {_fmt(hi)} {channel.unit}".rstrip()
    if not lo <= threshold <= hi:
        t.report("threshold", f"{_fmt(threshold)} is outside {where}: the alarm could never act as meant")
        return
    clear = threshold - hysteresis if kind == "abs_high" else threshold + hysteresis
    if not lo <= clear <= hi:
        t.report("hysteresis", f"{_fmt(hysteresis)} puts the clear point {_fmt(clear)} outside {where}: "
                               "the alarm could never clear")
    rule_kind = "high" if kind == "abs_high" else "low"
    for rule in rules.values():
        if rule is None or rule.channel != channel.name or rule.kind != rule_kind:
            continue
        late = threshold >= rule.threshold if kind == "abs_high" else threshold <= rule.threshold
        if late:
            t.report("threshold", f"{_fmt(threshold)}: interlock '{rule.name}' already trips at "
                                  f"{_fmt(rule.threshold)} {channel.unit}; an alarm must warn before the trip")


# ============================================================================ [plumbing]

#: The unit each channel role of GasPlumbing is read in (the programmer's gas segments rely on it).
_PLUMBING_UNITS = {"pressure_channel": "bar", "vacuum_channel": "mbar", "o2_channel": "%vol"}


def _read_plumbing(
    top: _Table,
    settings: _CoreSettings,
    channels: Mapping[str, ChannelSpec | None],
    outputs: Mapping[str, OutputSpec | None],
    loops: Mapping[str, LoopSpec | None],
    limits: EquipmentLimits | None,
) -> GasPlumbing:
    """[plumbing]: which channel and output plays each gas-handling role (``edge.spec.plumbing``).

    The roles are GasPlumbing's fields: ``*_channel`` are channels, ``inlet_valves`` a table gas ->
    output, every other field an output. A key left out takes GasPlumbing's default, which must then
    exist too; "" switches off a role that may be absent (default None, e.g. no O2 analyser). Without
    the section the defaults apply unchecked, so that older station files still load."""
    defaults = GasPlumbing()
    t = top.table("plumbing", expected="[plumbing] with the gas-handling roles")
    if t is None:
        return defaults
    values: dict[str, object] = {}
    used: dict[str, str] = {}  # output -> role
    loop_outputs = {loop.output: loop.name for loop in loops.values() if loop is not None}
    for role in fields(GasPlumbing):
        key = role.name
        if key == "inlet_valves":
            values[key] = _read_inlet_valves(t, settings, outputs, limits, loop_outputs, used)
            continue
        default = getattr(defaults, key)
        optional = "None" in str(role.type)
        given = t.get(key, _name_or_empty if optional else _name)
        name = (given or None) if key in t.data else default
        values[key] = name
        if name is None or t.has_error(key):
            continue
        how = f"the default '{name}'" if key not in t.data else f"'{name}'"
        if key.endswith("_channel"):
            _check_plumbing_channel(t, key, name, how, channels, optional)
        else:
            _check_plumbing_output(t, key, name, how, settings, outputs, loop_outputs, used)
    t.finish()
    if not t.ok:
        return defaults
    return GasPlumbing(**values)  # type: ignore[arg-type]


def _check_plumbing_channel(
    t: _Table, key: str, name: str, how: str, channels: Mapping[str, ChannelSpec | None], optional: bool
) -> None:
    """A role's channel exists, is measured (not digital) and reads the unit the programmer assumes."""
    if name not in channels:
        none = " or \"\" if there is none" if optional else ""
        t.report(key, f"{how}: " + _unknown("channel", name, channels) + f" (name the channel{none})")
        return
    channel = channels[name]
    unit = _PLUMBING_UNITS.get(key)
    if channel is None:
        return
    if channel.kind == "digital":
        t.report(key, f"channel '{name}' is digital; {key} needs a measured value")
    elif unit is not None and channel.unit != unit:
        t.report(key, f"channel '{name}' reads '{channel.unit}'; {key} must read '{unit}'")


def _check_plumbing_output(
    t: _Table, key: str, name: str, how: str, settings: _CoreSettings, outputs: Mapping[str, OutputSpec | None],
    loop_outputs: Mapping[str, str], used: dict[str, str], role: str | None = None,
) -> None:
    """A role's output exists, is not the watchdog line or a loop's, and plays no other role."""
    if name not in outputs:
        t.report(key, f"{how}: " + _unknown("output", name, outputs))
    elif name == settings.watchdog_output:
        t.report(key, f"'{name}' is the watchdog line (core.watchdog_output)")
    elif name in loop_outputs:
        t.report(key, f"output '{name}' is driven by loop '{loop_outputs[name]}'")
    elif name in used:
        t.report(key, f"output '{name}' already plays the role {used[name]}")
    else:
        used[name] = role or key


def _read_inlet_valves(
    t: _Table, settings: _CoreSettings, outputs: Mapping[str, OutputSpec | None], limits: EquipmentLimits | None,
    loop_outputs: Mapping[str, str], used: dict[str, str],
) -> dict[str, str]:
    """inlet_valves = { H2 = "h2_inlet_valve", Ar = "ar_inlet_valve" }: one per allowed gas, no more."""
    key = "inlet_valves"
    given = key in t.data
    valves: dict[str, str] = (t.get(key, _gas_table) or {}) if given else dict(GasPlumbing().inlet_valves)
    if t.has_error(key):
        return valves
    vt = _Table(t.problems, valves, _join(t.path, key))
    allowed = limits.allowed_gases if limits is not None else None
    for gas, name in valves.items():
        if allowed is not None and gas not in allowed:
            vt.report(gas, f"{gas} is not in limits.allowed_gases ({', '.join(allowed)}): remove it or allow it")
        else:
            how = f"'{name}'" if given else f"the default '{name}'"
            _check_plumbing_output(vt, gas, name, how, settings, outputs, loop_outputs, used, role=f"{key}.{gas}")
    for gas in allowed or ():
        if gas not in valves:
            t.report(key, f"no inlet valve for {gas}, which limits.allowed_gases allows: add {gas} = \"OUTPUT\"")
    if not vt.ok:
        t.ok = False
    return valves
# ============================================================================ cross-section checks


# ============================================================================ [mqtt]


INSTRUMENT_TYPES = ("pfeiffer", "modbus")


def _read_instruments(top: _Table, channels: Mapping[str, ChannelSpec | None]
                      ) -> dict[str, PfeifferConfig | ModbusConfig]:
    """[instruments.NAME]: serial instruments the Python side polls and injects (``edge.io``), by ``type``:
    a Pfeiffer gauge feeds one injected channel, a Modbus instrument any of its measurements. No channel is
    fed twice (two sources would interleave silently); Modbus instruments on one port are one bus."""
    section = top.table("instruments", expected="[instruments.NAME] tables")
    if section is None:
        return {}
    found: dict[str, PfeifferConfig | ModbusConfig] = {}
    fed: dict[str, str] = {}
    for name, t in _named_tables(section):
        if t is None:
            continue
        kind = t.data.get("type")
        if kind not in INSTRUMENT_TYPES:
            t.report("type", _unknown("instrument type", str(kind), INSTRUMENT_TYPES))
            t.accept(*t.data)
            continue
        t.accept(*t.data)        # the type's parser checks every key of its type
        try:
            cfg = parse_instrument(t.data, t.path) if kind == "pfeiffer" else parse_modbus_instrument(t.data, t.path)
        except ValueError as exc:
            for line in str(exc).splitlines():
                key_path, _, message = line.partition(": ")
                top.problems.add(key_path, message or line)
            continue
        if isinstance(cfg, ModbusConfig):
            if _check_modbus_channels(t, name, cfg, channels, fed):
                found[name] = cfg
            continue
        channel = channels.get(cfg.channel)
        if cfg.channel not in channels:
            t.report("channel", _unknown("channel", cfg.channel, channels))
        elif channel is not None and channel.kind != "injected":
            t.report("channel", f"{cfg.channel!r} is a {channel.kind} channel: an instrument feeds an injected one")
        elif cfg.channel in fed:
            t.report("channel", f"{cfg.channel!r} is already fed by instruments.{fed[cfg.channel]}")
        else:
            fed[cfg.channel] = name
            found[name] = cfg
    _check_instrument_ports(section, found)
    return found


def _check_modbus_channels(t: _Table, name: str, cfg: ModbusConfig, channels: Mapping[str, ChannelSpec | None],
                           fed: dict[str, str]) -> bool:
    """Each ``channels`` target is an injected channel with a max age (a silent meter must go STALE) that
    nothing else feeds."""
    ok = True
    ct = _Table(t.problems, cfg.channels, _join(t.path, "channels"))
    for meas, target in cfg.channels.items():
        spec = channels.get(target)
        if target not in channels:
            ct.report(meas, _unknown("channel", target, channels))
        elif spec is not None and (spec.kind != "injected" or spec.max_age_ms <= 0):
            ct.report(meas, f"{target!r} must be an injected channel with max_age_ms (it is {spec.kind})")
        elif spec is not None and spec.max_age_ms < 2 * cfg.poll_ms:
            ct.report(meas, f"{target!r} has max_age_ms {spec.max_age_ms:g}, less than two polls ({cfg.poll_ms:g} ms"
                            " each): it would go STALE between answers")
        elif target in fed:
            ct.report(meas, f"{target!r} is already fed by instruments.{fed[target]}")
        else:
            fed[target] = name
            continue
        ok = False
    return ok


def _check_instrument_ports(section: _Table, found: Mapping[str, PfeifferConfig | ModbusConfig]) -> None:
    """One port is one bus with one protocol: its Modbus instruments share the serial settings and
    each has its own address; a Pfeiffer gauge cannot share a port with Modbus instruments."""
    modbus = [(n, c) for n, c in found.items() if isinstance(c, ModbusConfig)]
    for name, key, message in shared_port_problems(modbus):
        section.problems.add(_join(_join(section.path, name), key), message)
    modbus_ports = {c.port: n for n, c in reversed(modbus)}
    for name, cfg in found.items():
        if isinstance(cfg, PfeifferConfig) and cfg.port in modbus_ports:
            section.problems.add(_join(_join(section.path, name), "port"),
                                  f"{cfg.port} is the Modbus bus of instruments.{modbus_ports[cfg.port]}: "
                                  "a port carries one protocol")


def _instrument_feeds(instruments: Mapping[str, PfeifferConfig | ModbusConfig]) -> dict[str, str]:
    """Injected channel -> the instrument feeding it."""
    feeds: dict[str, str] = {}
    for name, cfg in instruments.items():
        targets = cfg.channels.values() if isinstance(cfg, ModbusConfig) else (cfg.channel,)
        feeds.update((target, f"instruments.{name}") for target in targets)
    return feeds


_NODE_KEYS = ("port", "node_id", "firmware", "config_hash", "baudrate", "keepalive_ms", "channels", "outputs")


def _read_sensor_nodes(top: _Table, channels: Mapping[str, ChannelSpec | None],
                       outputs: Mapping[str, OutputSpec | None], fed: Mapping[str, str]) -> dict[str, SensorNodeConfig]:
    """[sensor_nodes.NAME]: MicroPython nodes on a serial link (``edge.devices.node.client``). Their channels feed
    injected channels with a max age (a quiet node must make them STALE); their outputs follow core outputs."""
    section = top.table("sensor_nodes", expected="[sensor_nodes.NAME] tables")
    if section is None:
        return {}
    found: dict[str, SensorNodeConfig] = {}
    feeders = dict(fed)
    for name, t in _named_tables(section):
        if t is None:
            continue
        t.accept(*_NODE_KEYS)
        port = t.need("port", _text(4096), "the node's serial port (a /dev/serial/by-id name)")
        maps: list[ChannelMap] = []
        table = t.table("channels", expected="a table: node channel = { core = \"channel\", scale, offset }")
        for node_ch, entry in (_named_tables(table) if table is not None else []):
            if entry is None:
                continue
            entry.accept("core", "scale", "offset")
            core = entry.need("core", _text(64), "the injected core channel it feeds")
            scale = entry.get("scale", _number, 1.0)
            offset = entry.get("offset", _number, 0.0)
            entry.finish()
            if core is None:
                continue
            spec = channels.get(core)
            if core not in channels:
                entry.report("core", _unknown("channel", core, channels))
            elif spec is not None and (spec.kind != "injected" or spec.max_age_ms <= 0):
                entry.report("core", f"{core!r} must be an injected channel with max_age_ms (it is {spec.kind})")
            elif core in feeders:
                entry.report("core", f"{core!r} is already fed by {feeders[core]}")
            else:
                feeders[core] = f"sensor_nodes.{name}"
                maps.append(ChannelMap(node_ch, core, scale, offset))
        outs: list[OutputMap] = []
        table = t.table("outputs", expected="a table: node output = \"core output\"")
        for node_out in list(table.data) if table is not None else []:
            assert table is not None
            core_out = table.get(node_out, _text(64))
            if core_out is not None and core_out not in outputs:
                table.report(node_out, _unknown("output", core_out, outputs))
            elif core_out is not None:
                outs.append(OutputMap(node_out, core_out))
        baudrate = t.get("baudrate", _integer_in(300, 4_000_000), 115200)
        keepalive = t.get("keepalive_ms", _number_in(20.0, 10_000.0), 200.0)
        node_id, firmware, config_hash = (t.get(k, _text(64)) for k in ("node_id", "firmware", "config_hash"))
        t.finish()
        if port is None:
            continue
        try:
            found[name] = SensorNodeConfig(name=name, port=port, channels=tuple(maps), outputs=tuple(outs),
                                           baudrate=baudrate, keepalive_ms=keepalive, expect_node_id=node_id,
                                           expect_firmware=firmware, expect_config_hash=config_hash)
        except ValueError as exc:
            t.report(None, str(exc))
    return found


def _read_mqtt(top: _Table) -> tuple[CommandSettings, BrokerSettings | None]:
    """[mqtt]: who may command the station ([mqtt.roles]) and how commands are checked ([mqtt.commands]),
    read by ``edge.telemetry.access``; which brokers and how to reach them (``brokers``, TLS files,
    credentials), read by ``edge.telemetry.broker_url``. Each documents its keys."""
    t = top.table("mqtt", expected="a table [mqtt]")
    if t is None:
        return CommandSettings(), None
    t.accept(*_MQTT_KEYS, *_BROKER_KEYS)
    commands = _read_command_settings(t.data, t.problems.add, t.path)
    broker, problems = _read_broker_settings(t.data, base_dir=pathlib.Path(t.problems.source).parent)
    for key, message in problems:
        t.report(key, message)
    t.finish()
    return commands, broker


def _check_shared_namespace(
    report: _Report,
    channels: Mapping[str, object],
    outputs: Mapping[str, object],
    rules: Mapping[str, object],
    loops: Mapping[str, object],
    alarms: Mapping[str, object],
) -> None:
    """Channels, outputs, interlocks, loops and alarms share one namespace: events and MQTT name them
    without a section."""
    seen: dict[str, str] = {}
    for section, names in (("channels", channels), ("outputs", outputs), ("interlocks", rules), ("loops", loops),
                           ("alarms", alarms)):
        for name in names:
            if section == "interlocks" and name == DEADMAN_RULE:
                continue  # the built-in; a user rule of that name was reported by _read_interlocks
            if name in seen:
                report.add(_join(section, name), f"the name '{name}' is already used by {seen[name]}; channels, "
                                                 "outputs, interlocks, loops and alarms share one namespace "
                                                 "(events name them)")
            elif name in RESERVED_NAMES:
                report.add(_join(section, name), f"the name '{name}' is reserved ({', '.join(RESERVED_NAMES)})")
            seen.setdefault(name, _join(section, name))


def _check_table_sizes(
    report: _Report,
    drivers: Collection[object],
    channels: Collection[object],
    outputs: Collection[object],
    rules: Collection[object],
    permissives: Collection[object],
) -> None:
    """The core's tables are fixed-size; say so here rather than at start-up."""
    for section, count, limit, macro in (
        ("drivers", len(drivers), EC_MAX_DRIVERS, "EC_MAX_DRIVERS"),
        ("channels", len(channels), EC_MAX_CHANNELS, "EC_MAX_CHANNELS"),
        ("outputs", len(outputs), EC_MAX_OUTPUTS, "EC_MAX_OUTPUTS"),
        ("interlocks", len(rules), EC_MAX_RULES, "EC_MAX_RULES"),
        ("permissives", len(permissives), EC_MAX_PERMISSIVES, "EC_MAX_PERMISSIVES"),
    ):
        if count > limit:
            extra = " (counting the built-in dead-man)" if section == "interlocks" else ""
            report.add(section, f"{count} declared{extra}, but the core holds at most {limit} ({macro})")


def _check_limits_against_trips(
    report: _Report,
    limits: EquipmentLimits | None,
    channels: Mapping[str, ChannelSpec | None],
    rules: Mapping[str, RuleSpec | None],
) -> None:
    """A trip set inside the allowed envelope would stop every recipe that uses the envelope.

    Temperature: high trips on thermocouples (and zone channels) must lie above the temperature
    limit, rate_high trips above the ramp limit. Pressure: high trips on channels in bar must lie
    above max_pressure_bar.
    """
    if limits is None:
        return
    for name, rule in rules.items():
        if rule is None or rule.channel is None:
            continue
        channel = channels.get(rule.channel)
        if channel is None:
            continue
        is_temperature = channel.kind == "thermocouple" or channel.name in limits.zone_max_temperature_c
        limit: tuple[float, str] | None = None
        if rule.kind == "high" and is_temperature:
            key = "zone_max_temperature_c" if channel.name in limits.zone_max_temperature_c else "max_temperature_c"
            limit = (limits.max_temperature_for(channel.name), f"limits.{key}")
        elif rule.kind == "rate_high" and is_temperature:
            limit = (limits.max_ramp_c_per_min, "limits.max_ramp_c_per_min")
        elif rule.kind == "high" and channel.unit == "bar":
            limit = (limits.max_pressure_bar, "limits.max_pressure_bar")
        if limit is not None and rule.threshold <= limit[0]:
            report.add(_join(_join("interlocks", name), "threshold"),
                       f"{_fmt(rule.threshold)} is not above {limit[1]} ({_fmt(limit[0])}): a recipe within the "
                       "equipment limits would trip it")


def _value_range(channel: ChannelSpec) -> tuple[float, float]:
    """What the channel can read: its declared range, narrowed to its thermocouple type; 0..1 if digital."""
    if channel.kind == "digital":
        return 0.0, 1.0
    lo, hi = channel.range_lo, channel.range_hi
    if channel.tc_type is not None:
        type_lo, type_hi = TC_RANGE_C[channel.tc_type]
        lo, hi = max(lo, type_lo), min(hi, type_hi)
    return lo, hi


# ============================================================================ station-specific converters


_NAME_HELP = (f"expected a lowercase letter, then lowercase letters, digits or _ ({EC_NAME_LEN - 1} characters "
              "at most)")





def _median(value: object) -> int:
    number = _integer_in(1, EC_MEDIAN_MAX)(value)
    if number % 2 == 0:
        raise _Bad(f"expected an odd window (1 = off, 3, 5, 7 or {EC_MEDIAN_MAX}), got {number}")
    return number


def _ring_size(value: object) -> int:
    number = _integer_in(RING_MIN, RING_MAX)(value)
    if number & (number - 1):
        raise _Bad(f"expected a power of two from {RING_MIN} to {RING_MAX}, got {number}")
    return number


def _deadman_ms(period_ms: float) -> _Conv[float]:
    """A dead-man must span several sampler ticks and at most ten minutes."""
    floor = max(10.0, 2.0 * period_ms)
    return _number_in(floor, 600_000.0)








_name = _matching(NAME_RE, _NAME_HELP)


def _named_tables(section: _Table) -> list[tuple[str, _Table | None]]:
    """[section.NAME] tables whose NAME is a station name (the dead-man rule's reserved name allowed)."""
    return section.named_tables(_name, allowed=(DEADMAN_RULE,) if section.path == "interlocks" else ())
_ident = _matching(IDENT_RE, "expected lowercase letters, digits, - and _ (32 characters at most)")
_unit = _matching(UNIT_RE, "expected a unit without spaces, 16 characters at most, e.g. \"bar\" or \"%LEL\"")
_param_text = _matching(PARAM_RE, "expected text without spaces, ';' or '='")
_absolute_path = _matching(re.compile(r"/" + PARAM_RE.pattern), "expected an absolute path without spaces, ';' "
                                                                "or '='")





def _action(value: object) -> tuple[str, ...] | str:
    """ "all", or a non-empty array of output names."""
    if value == ALL_OUTPUTS:
        return ALL_OUTPUTS
    if isinstance(value, str):
        raise _Bad(f"expected an array of output names or \"all\", got {_describe(value)}")
    names = _list_of(_name, "output names", max_len=EC_MAX_OUTPUTS)(value)
    if not names:
        raise _Bad("an interlock must force at least one output: the action is empty")
    return tuple(names)


def _line_offsets(value: object) -> list[int]:
    return _list_of(_integer_in(0, 65535), "GPIO line offsets", max_len=GPIO_LINES_MAX)(value)


def _join_ints(numbers: Iterable[int]) -> str:
    """A list as the C drivers parse it: "5,6,13"."""
    return ",".join(map(str, numbers))



def _gas_list(value: object) -> tuple[Gas, ...]:
    gases = _list_of(_choice(GASES), "gases", max_len=len(GASES))(value)
    if not gases:
        raise _Bad("expected at least one gas")
    return tuple(cast(Gas, gas) for gas in gases)


def _name_or_empty(value: object) -> str:
    """A name, or "" for a role the station does not have."""
    return "" if value == "" else _name(value)


def _gas_table(value: object) -> dict[str, str]:
    """{ H2 = "h2_inlet_valve", Ar = "ar_inlet_valve" }: known gases to output names."""
    if not isinstance(value, dict):
        raise _Bad(f"expected a table {{ H2 = \"OUTPUT\", ... }}, got {_describe(value)}")
    result: dict[str, str] = {}
    for gas, name in value.items():
        at = "." + _join("", gas)
        if gas not in GASES:
            raise _Bad(f"unknown gas '{_short(gas)}' (expected one of: {', '.join(GASES)})"
                       f"{_did_you_mean(gas, GASES)}", at=at)
        try:
            result[gas] = _name(name)
        except _Bad as bad:
            raise _Bad(str(bad), at=at) from None
    return result



def _number_table(value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        raise _Bad(f"expected a table {{ channel = degC, ... }}, got {_describe(value)}")
    result: dict[str, float] = {}
    for key, element in value.items():
        try:
            result[key] = _number_in(0.0, 2500.0, lo_open=True)(element)
        except _Bad as bad:
            raise _Bad(str(bad), at=f".{key}") from None
    return result


# ============================================================================ [accounting]


_ACCOUNTING_METERS = {"energy": "kWh", "h2": "NL", "ar": "NL", "cooling_water": "L"}


def _read_accounting(top: _Table, instruments: Mapping[str, object], outputs: Mapping[str, OutputSpec | None],
                     channels: Mapping[str, ChannelSpec | None],
                     loop_outputs: Collection[str] | None) -> AccountingConfig:
    """[accounting]: the meter counters a batch record's energy and gas come from (``edge.batch``), the
    heaters' rated power for the duty model, the grid's emission factor. Absent: a record without meters."""
    t = top.table("accounting", expected="an [accounting] table")
    if t is None:
        return AccountingConfig()
    sources: dict[str, str | None] = {}
    meters_checked: list[tuple[str, float, bool]] = []      # meter, its poll period + timeout, does it wrap
    for meter, unit in _ACCOUNTING_METERS.items():
        src = t.get(meter, _string)
        sources[meter] = None
        if src is None:
            continue
        inst_name, _, measurement = src.partition(".")
        registers = getattr(instruments.get(inst_name), "registers", None)
        if inst_name not in instruments:
            t.report(meter, _unknown("instrument", inst_name, instruments)
                     + f" (expected \"instrument.measurement\", a counter in {unit})")
        elif registers is None:
            t.report(meter, f"instruments.{inst_name} has no counters (a Modbus meter has)")
        elif measurement not in registers:
            t.report(meter, _unknown(f"measurement of instruments.{inst_name}", measurement, registers))
        elif registers[measurement].kind != "counter":
            t.report(meter, f"{src} is a {registers[measurement].kind}, not a counter: the batch figure is the "
                            "difference of a totaliser")
        elif registers[measurement].unit != unit:
            t.report(meter, f"{src} counts {registers[measurement].unit or 'no unit'}, the record counts {unit}"
                            f" (give the register scale and unit = \"{unit}\")")
        elif src in sources.values():
            t.report(meter, f"{src} is already the {next(m for m, v in sources.items() if v == src)} meter")
        else:
            sources[meter] = src
            poll_s = float(getattr(instruments[inst_name], "poll_ms", 0.0)) / 1000.0
            timeout_s = float(getattr(instruments[inst_name], "timeout_ms", 0.0)) / 1000.0
            wraps = registers[measurement].rollover is not None
            if registers[measurement].type in ("int16", "int32"):
                t.report(meter, f"{src} is a signed register: a totaliser counts up (use uint16 / uint32)")
            meters_checked.append((meter, poll_s + timeout_s, wraps))
    rated: dict[str, float] = {}
    rated_t = t.table("heater_rated_kw", expected="a table: duty output = rated kW")
    if rated_t is not None:
        for name in list(rated_t.data):
            kw = rated_t.get(name, _number_in(0.0, 10_000.0, lo_open=True))
            if name not in outputs:
                rated_t.report(name, _unknown("output", name, outputs))
            elif loop_outputs is not None and name not in loop_outputs:
                rated_t.report(name, f"{name} is not driven by a control loop: the model needs a heater's duty")
            elif kw is not None:
                rated[name] = kw
    rates: dict[str, float] = {}
    rates_t = t.table("max_rate_per_h", expected="a table: meter = the most it can count per hour")
    if rates_t is not None:
        for name in list(rates_t.data):
            rate = rates_t.get(name, _number_in(0.0, 1e9, lo_open=True))
            if name not in _ACCOUNTING_METERS:
                rates_t.report(name, _unknown("meter", name, _ACCOUNTING_METERS))
            elif rate is not None:
                rates[name] = rate
    pressure = t.get("pressure_channel", _string, "chamber_pressure")
    temperature = t.get("temperature_channel", _string, "chamber_temp")
    volume = t.get("free_volume_l", _number_in(0.0, 1e6, lo_open=True))
    for key, name in (("pressure_channel", pressure), ("temperature_channel", temperature)):
        if volume is not None and name not in channels:
            t.report(key, _unknown("channel", name, channels))
    gap_s = t.get("gap_s", _number_in(1.0, 86_400.0), 60.0)
    close_wait_s = t.get("close_wait_s", _number_in(0.0, 3600.0), 30.0)
    for meter, poll_s, wraps in meters_checked:
        rate_given = meter in rates or (rates_t is not None and rates_t.has_error(meter))
        if wraps and not rate_given:
            t.report("max_rate_per_h", f"{meter}: {sources[meter]} wraps: give the most it can count per hour"
                                       f" (max_rate_per_h.{meter}), or a reset cannot be told from a roll-over")
        if gap_s < 3 * poll_s:
            t.report("gap_s", f"{gap_s:g} s is less than three polls of {sources[meter]} ({poll_s:g} s each):"
                              " every late answer would be a gap")
        if close_wait_s < poll_s:
            t.report("close_wait_s", f"{close_wait_s:g} s is less than one poll of {sources[meter]} ({poll_s:g} s"
                                     " with its timeout): its end reading could never come in time")
    cfg = AccountingConfig(
        energy=sources["energy"], h2=sources["h2"], ar=sources["ar"], cooling_water=sources["cooling_water"],
        heater_rated_kw=rated, max_rate_per_h=rates,
        grid_kg_co2e_per_kwh=t.get("grid_kg_co2e_per_kwh", _number_in(0.0, 10.0)),
        gap_s=gap_s,
        close_wait_s=close_wait_s,
        trend_every_s=t.get("trend_every_s", _number_in(0.1, 3600.0), 10.0),
        free_volume_l=volume, pressure_channel=pressure, temperature_channel=temperature)
    for sub in (rated_t, rates_t, t):
        if sub is not None:
            sub.finish()
    return cfg
