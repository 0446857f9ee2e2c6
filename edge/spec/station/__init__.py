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

This package imports nothing from ``edge`` outside ``edge.spec`` and never the C core: its result
is a plain ``CoreSpec`` (``edge.spec.core``) and it is tested without a compiler. The core's table
sizes are mirrored in ``model`` and a test checks them against ``cext/edge_core.h``.

Reading order: ``load_station``/``parse_station`` below call one reader per section, in file
order; the sections are read in

- ``model``: the public types (``Station``, ``StationIdentity``, ``EquipmentLimits``) and constants;
- ``hardware``: [station], [core], [drivers.*], [channels.*], [outputs.*];
- ``rules``: [interlocks.*], [[permissives.*]];
- ``process``: [limits], [loops.*], [alarms.*], [plumbing];
- ``peripherals``: [instruments.*] (by kind, ``edge.spec.instruments``), [sensor_nodes.*], [mqtt], [accounting];
- ``limiters``: [limiter.*], the independent excess-temperature limiters;
- ``checks``: the checks across sections, once everything is read;
- ``values``: the small typed-value converters they all share.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

from edge.spec.core import CoreSpec
from edge.spec.reader import Problems, SpecError, Table, parse_toml, read_text, valid
from edge.spec.station.checks import (
    check_limits_against_trips,
    check_shared_namespace,
    check_table_sizes,
    check_trip_bands,
)
from edge.spec.station.hardware import (
    check_board,
    read_channels,
    read_core,
    read_drivers,
    read_outputs,
    read_station,
    resolve_core_names,
    with_initial_levels,
)
from edge.spec.station.limiters import read_limiters
from edge.spec.station.model import (
    ALL_OUTPUTS,
    CHANNEL_KINDS,
    DEADMAN_RULE,
    DRIVER_TYPES,
    EC_DRV_MAX_IO,
    EC_MAX_CHANNELS,
    EC_MAX_DRIVERS,
    EC_MAX_OUTPUTS,
    EC_MAX_PERMISSIVES,
    EC_MAX_RULES,
    EC_MEDIAN_MAX,
    EC_NAME_LEN,
    GASES,
    IDENT_RE,
    NAME_RE,
    RULE_KINDS,
    SECTIONS,
    STATION_KINDS,
    TC_RANGE_C,
    EquipmentLimits,
    Gas,
    Station,
    StationIdentity,
    StationKind,
)
from edge.spec.station.peripherals import (
    instrument_feeds,
    read_accounting,
    read_instruments,
    read_mqtt,
    read_sensor_nodes,
)
from edge.spec.station.process import (
    read_alarms,
    read_annunciator,
    read_annunciator_severity,
    read_limits,
    read_loops,
    read_plumbing,
    read_safe_sequences,
)
from edge.spec.station.rules import read_interlocks, read_permissives

__all__ = [
    "ALL_OUTPUTS",
    "CHANNEL_KINDS",
    "DEADMAN_RULE",
    "DRIVER_TYPES",
    "EC_DRV_MAX_IO",
    "EC_MAX_CHANNELS",
    "EC_MAX_DRIVERS",
    "EC_MAX_OUTPUTS",
    "EC_MAX_PERMISSIVES",
    "EC_MAX_RULES",
    "EC_MEDIAN_MAX",
    "EC_NAME_LEN",
    "GASES",
    "IDENT_RE",
    "NAME_RE",
    "RULE_KINDS",
    "SECTIONS",
    "STATION_KINDS",
    "TC_RANGE_C",
    "EquipmentLimits",
    "Gas",
    "Station",
    "StationIdentity",
    "StationKind",
    "load_station",
    "parse_station",
]


# ============================================================================ entry points


def load_station(path: str | os.PathLike[str], *, boards_dir: pathlib.Path | None = None) -> Station:
    """Read and validate a station file; any problem is a ``SpecError`` naming the file.
    ``boards_dir``: where ``[station] board`` is looked up (default ``boards/``)."""
    return parse_station(read_text(path, "station file"), os.fspath(path), boards_dir=boards_dir)


def parse_station(text: str, source: str, *, boards_dir: pathlib.Path | None = None) -> Station:
    """Validate station-file text; ``source`` is the name errors carry (usually the path)."""
    document = parse_toml(text, source)
    report = Problems(source)
    top = Table(report, document, "", noun="section")

    identity, allow_remote_reset, board = read_station(top)
    settings = read_core(top)
    drivers = read_drivers(top)
    check_board(report, board, drivers, boards_dir)
    channels = read_channels(top, drivers)
    outputs = read_outputs(top, drivers, settings)
    drivers = with_initial_levels(drivers, outputs)
    resolve_core_names(settings, channels, outputs)
    rules = read_interlocks(top, settings, channels, outputs)
    permissives = read_permissives(top, settings, channels, outputs, rules)
    limits = read_limits(top, identity, channels)
    loops = read_loops(top, settings, channels, outputs, limits)
    alarms = read_alarms(top, channels, loops, outputs, rules)
    beacon = read_annunciator(top, settings, outputs)
    safe_sequences = read_safe_sequences(top, rules)
    plumbing = read_plumbing(top, settings, channels, outputs, loops, limits)
    commands, mqtt = read_mqtt(top)
    instruments = read_instruments(top, channels)
    sensor_nodes = read_sensor_nodes(top, channels, outputs, instrument_feeds(instruments))
    # a loop that failed its own checks is reported there: then the heater model is not judged (no cascade)
    loops_ok = isinstance(document.get("loops", {}), dict) and all(lp is not None for lp in loops.values())
    loop_outputs = {lp.output for lp in valid(loops)} if loops_ok else None
    accounting = read_accounting(top, instruments, outputs, channels, loop_outputs)
    limiters = read_limiters(top, identity, channels, outputs, limits)

    check_shared_namespace(report, channels, outputs, rules, loops, alarms)
    check_table_sizes(report, drivers, channels, outputs, rules, permissives, settings.event_ring)
    check_limits_against_trips(report, limits, channels, rules)
    check_trip_bands(report, rules)
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
        watchdog_feedback=settings.watchdog_feedback,
        max_tick_gap_ms=settings.max_tick_gap_ms,
        allow_remote_reset=allow_remote_reset,
        latch_file=settings.latch_file,
        drivers=tuple(d.spec for d in valid(drivers)),
        channels=valid(channels),
        outputs=valid(outputs),
        rules=valid(rules),
        permissives=tuple(p for p in permissives if p is not None),
    )
    return Station(
        identity=identity,
        core=core,
        limits=limits,
        channel_units={c.name: c.unit for c in core.channels},
        allow_remote_reset=allow_remote_reset,
        source=pathlib.Path(source),
        loops=valid(loops),
        alarms=valid(alarms),
        plumbing=plumbing,
        board=board,
        commands=commands,
        mqtt=mqtt,
        instruments=instruments,
        sensor_nodes=sensor_nodes,
        accounting=accounting,
        limiters=limiters,
        beacon=beacon,
        beacon_sounds_from=read_annunciator_severity(top),
        safe_sequences=safe_sequences,
        content_sha256=hashlib.sha256(text.encode()).hexdigest(),
    )
