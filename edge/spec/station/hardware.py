"""[station], [core], [drivers.*], [channels.*] and [outputs.*]: what the C core samples and drives."""

from __future__ import annotations

import math
import pathlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import cast

from edge.spec.board import DriverUse, check_station_wiring, load_board
from edge.spec.core import (
    ChannelKind,
    ChannelSpec,
    DriverSpec,
    OutputSpec,
)
from edge.spec.reader import Conv as _Conv
from edge.spec.reader import Problems as _Report
from edge.spec.reader import SpecError
from edge.spec.reader import Table as _Table
from edge.spec.reader import boolean as _boolean
from edge.spec.reader import choice as _choice
from edge.spec.reader import exact as _exact
from edge.spec.reader import fmt as _fmt
from edge.spec.reader import integer_in as _integer_in
from edge.spec.reader import level as _level
from edge.spec.reader import list_of as _list_of
from edge.spec.reader import lookup as _lookup
from edge.spec.reader import matching as _matching
from edge.spec.reader import number as _number
from edge.spec.reader import number_in as _number_in
from edge.spec.reader import one_of_ints as _one_of_ints
from edge.spec.reader import range_pair as _range_pair
from edge.spec.reader import text as _text
from edge.spec.reader import unknown as _unknown
from edge.spec.station.model import (
    ALL_OUTPUTS,
    CHANNEL_KINDS,
    DRIVER_TYPES,
    EC_DRV_MAX_IO,
    EC_MAX_OUTPUTS,
    GPIO_LINES_MAX,
    MS_MAX,
    PERIOD_MAX_MS,
    PERIOD_MIN_MS,
    STATION_KINDS,
    TC_RANGE_C,
    StationIdentity,
    StationKind,
)
from edge.spec.station.values import (
    _absolute_path,
    _action,
    _deadman_ms,
    _ident,
    _join_ints,
    _line_offsets,
    _median,
    _name,
    _named_tables,
    _param_text,
    _ring_size,
    _unit,
)

# ============================================================================ [station]


def read_station(top: _Table) -> tuple[StationIdentity | None, bool, str | None]:
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


def check_board(
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
    watchdog_feedback: str | None = None
    max_tick_gap_ms: float = 0.0
    latch_file: str | None = None


def read_core(top: _Table) -> _CoreSettings:
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
    settings.watchdog_feedback = t.get("watchdog_feedback", _name)
    settings.max_tick_gap_ms = t.get("max_tick_gap_ms", _number_in(0.0, MS_MAX), 0.0)
    if 0 < settings.max_tick_gap_ms < settings.period_ms:
        t.report("max_tick_gap_ms", f"{_fmt(settings.max_tick_gap_ms)} ms is shorter than one sampler period "
                                    f"({_fmt(settings.period_ms)} ms): every tick would be a gap (0 = off)")
    settings.latch_file = t.get("latch_file", _text(4096))
    t.finish()
    return settings


def resolve_core_names(
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
    if settings.watchdog_feedback is not None:
        channel = _lookup(t, "watchdog_feedback", settings.watchdog_feedback, channels, "channel")
        if channel is not None and channel.kind != "digital":
            t.report("watchdog_feedback", f"channel '{channel.name}' is {channel.kind}; the watchdog relay's "
                                          "feedback must be a digital channel (its auxiliary contact)")
        if settings.watchdog_output is None:
            t.report("watchdog_feedback", "a watchdog feedback without core.watchdog_output: there is no line "
                                          "to prove the relay with")


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


def read_drivers(top: _Table) -> dict[str, _Driver | None]:
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
    (``with_initial_levels``) so that every output comes up at its safe level."""
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


def with_initial_levels(
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
    "resolution",
)


def read_channels(top: _Table, drivers: Mapping[str, _Driver | None]) -> dict[str, ChannelSpec | None]:
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
    # what MQTT telemetry rounds to (edge.telemetry.description); the core and the controller keep every digit
    resolution = t.get("resolution", _number_in(0.0, 1e6, lo_open=True)) if measured else None

    t.finish(elsewhere=_CHANNEL_KEYS, context=f"to {kind} channels")
    if not t.ok or max_age_ms is None or (kind != "injected" and driver_name is None):
        return None
    return ChannelSpec(
        name=name, kind=kind, driver=driver_name, input=input_index, scale=scale, offset=offset,
        range_lo=range_lo, range_hi=range_hi, unit=unit, tc_type=tc_type, cold_junction=cold_junction,
        cj_fixed_c=cj_fixed_c, invert=invert, median_n=median_n, ema_tau_ms=ema_tau_ms,
        max_age_ms=max_age_ms, rate_window_ms=rate_window_ms, resolution=resolution,
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

_OUTPUT_KEYS = ("driver", "line", "safe_level", "max_on_ms", "duty_cycle_ms", "supplies")


def read_outputs(
    top: _Table, drivers: Mapping[str, _Driver | None], settings: _CoreSettings
) -> dict[str, OutputSpec | None]:
    """Outputs in file order (the core's output index). Every one must say its safe level."""
    outputs: dict[str, OutputSpec | None] = {}
    section = top.table("outputs", required=True, expected="[outputs.NAME] tables")
    if section is None:
        return outputs
    lines: dict[tuple[str, int], str] = {}
    tables: dict[str, _Table] = {}
    for name, t in _named_tables(section):
        outputs[name] = _read_output(t, name, drivers, settings, lines) if t is not None else None
        if t is not None:
            tables[name] = t
    for name, spec in outputs.items():
        for index, supplied in enumerate(spec.supplies if spec is not None else ()):
            if supplied not in outputs:
                tables[name].report("supplies", f"[{index}]: " + _unknown("output", supplied, outputs))
            elif supplied == name or supplied == settings.watchdog_output:
                tables[name].report("supplies", f"[{index}]: '{supplied}' is "
                                    + ("this output itself" if supplied == name else "the watchdog line"))
            elif (fed := outputs[supplied]) is not None and fed.safe_level != 0:
                # opening the contactor de-energises the output: its trip would end at level 0, the unsafe one
                tables[name].report("supplies", f"[{index}]: '{supplied}' has safe_level = 1: opening this "
                                    "contactor would de-energise it, the opposite of its safe level (supply it "
                                    "from elsewhere)")
    for name, spec in outputs.items():
        if spec is not None and name in _supplied_by(name, outputs):
            tables[name].report("supplies", f"the contactors' supplies form a cycle through '{name}'")
    return outputs


def _supplied_by(name: str, outputs: Mapping[str, OutputSpec | None]) -> set[str]:
    """Every output downstream of ``name`` through chained contactors (K0 supplies K1 supplies the heater)."""
    seen: set[str] = set()
    first = outputs.get(name)
    todo = list(first.supplies) if first is not None else []
    while todo:
        out = todo.pop()
        if out not in seen:
            seen.add(out)
            spec = outputs.get(out)
            todo.extend(spec.supplies if spec is not None else ())
    return seen


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
    no_supplies: list[str] = []
    supplies: tuple[str, ...] = tuple(t.get("supplies", _list_of(_name, "output names", max_len=EC_MAX_OUTPUTS),
                                            no_supplies))
    if supplies and safe_level not in (None, 0):
        t.report("supplies", "a contactor that supplies other outputs must be safe when de-energised "
                             "(safe_level = 0): a trip opens it")
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
    return OutputSpec(name, driver_name, line, safe_level, max_on_ms, duty_cycle_ms, supplies)
