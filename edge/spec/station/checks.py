"""Checks across sections, once every section has been read."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from edge.spec.core import (
    ChannelSpec,
    RuleSpec,
)
from edge.spec.reader import Problems as _Report
from edge.spec.reader import fmt as _fmt
from edge.spec.reader import join as _join
from edge.spec.station.model import (
    DEADMAN_RULE,
    EC_MAX_CHANNELS,
    EC_MAX_DRIVERS,
    EC_MAX_OUTPUTS,
    EC_MAX_PERMISSIVES,
    EC_MAX_RULES,
    RESERVED_NAMES,
    EquipmentLimits,
)


def check_shared_namespace(
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
                continue  # the built-in; a user rule of that name was reported by read_interlocks
            if name in seen:
                report.add(_join(section, name), f"the name '{name}' is already used by {seen[name]}; channels, "
                                                 "outputs, interlocks, loops and alarms share one namespace "
                                                 "(events name them)")
            elif name in RESERVED_NAMES:
                report.add(_join(section, name), f"the name '{name}' is reserved ({', '.join(RESERVED_NAMES)})")
            seen.setdefault(name, _join(section, name))


def check_table_sizes(
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


def check_limits_against_trips(
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
