"""Checks across sections, once every section has been read."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from edge.spec.core import (
    ChannelSpec,
    PermissiveSpec,
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
from edge.spec.station.values import _value_range


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
    event_ring: int | None = None,
) -> None:
    """The core's tables are fixed-size; say so here rather than at start-up."""
    # the event ring's reserve (rules + 8, at most half the ring) must hold a trip of every rule
    if event_ring is not None and event_ring < 2 * (len(rules) + 8):
        report.add("core.event_ring", f"{event_ring} is too small for {len(rules)} interlocks (counting the "
                                      "built-in dead-man): it must be at least 2 * (interlocks + 8) = "
                                      f"{2 * (len(rules) + 8)}, so that no latched trip can be dropped")
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


# ============================================================================ readings the rules leave possible


@dataclass(frozen=True)
class _Span:
    """An interval of readings, each end open or closed: what a condition lets through."""

    lo: float
    hi: float
    lo_closed: bool = True
    hi_closed: bool = True

    @property
    def empty(self) -> bool:
        return self.lo > self.hi or (self.lo == self.hi and not (self.lo_closed and self.hi_closed))

    def __and__(self, other: _Span) -> _Span:
        if self.lo != other.lo:
            lo, lo_closed = (self.lo, self.lo_closed) if self.lo > other.lo else (other.lo, other.lo_closed)
        else:
            lo, lo_closed = self.lo, self.lo_closed and other.lo_closed
        if self.hi != other.hi:
            hi, hi_closed = (self.hi, self.hi_closed) if self.hi < other.hi else (other.hi, other.hi_closed)
        else:
            hi, hi_closed = self.hi, self.hi_closed and other.hi_closed
        return _Span(lo, hi, lo_closed, hi_closed)


_EVERYTHING = _Span(-math.inf, math.inf)


def _readable(channel: ChannelSpec) -> _Span:
    """What the channel can read while healthy: outside its range it reads RANGE, a bad value, on
    which every permissive fails and every level rule trips (cext/core.c permissive_holds, rule_condition)."""
    lo, hi = _value_range(channel)
    return _Span(lo, hi)


def _term_span(term: PermissiveSpec) -> _Span:
    """Where a permissive term holds, as the core compares (lt/gt strict, between inclusive, eq a level)."""
    if term.cmp == "lt":
        return _Span(-math.inf, term.value, hi_closed=False)
    if term.cmp == "gt":
        return _Span(term.value, math.inf, lo_closed=False)
    if term.cmp == "eq":
        return _Span(term.value, term.value)
    return _Span(term.value, term.value2)


def _term_text(term: PermissiveSpec) -> str:
    if term.cmp == "in":
        return f"between [{_fmt(term.value)}, {_fmt(term.value2)}]"
    return f"{term.cmp} {_fmt(term.value)}"


def _untripped(rule: RuleSpec) -> _Span | None:
    """Readings on which a level rule does not trip (None: the rule does not judge the level)."""
    if rule.kind == "high":
        return _Span(-math.inf, rule.threshold)
    if rule.kind == "low":
        return _Span(rule.threshold, math.inf)
    if rule.kind == "digital":
        return _Span(rule.threshold, rule.threshold)
    return None


def check_permissive_terms(
    report: _Report,
    path: str,
    terms: Sequence[tuple[int, PermissiveSpec]],
    channels: Mapping[str, ChannelSpec | None],
    rules: Mapping[str, RuleSpec | None],
) -> None:
    """The terms of one output's [[permissives.OUTPUT]] must be able to hold together, and hold
    somewhere no interlock cutting that output trips; else the output could never be energised.

    ``terms`` are (index in the file, term) of the output's readable terms, in file order."""
    by_channel: dict[str, list[tuple[int, PermissiveSpec]]] = {}
    for index, term in terms:
        by_channel.setdefault(term.channel, []).append((index, term))
    for channel_name, listed in by_channel.items():
        channel = channels.get(channel_name)
        if channel is None:
            continue
        readable = _readable(channel)
        span = readable
        earlier: list[str] = []
        for index, term in listed:
            key = _join(f"{path}[{index}]", "between" if term.cmp == "in" else term.cmp)
            alone = readable & _term_span(term)
            narrowed = span & _term_span(term)
            if alone.empty:
                report.add(key, f"{_term_text(term)} can never hold: channel '{channel_name}' reads "
                                f"{_fmt(readable.lo)} to {_fmt(readable.hi)} {channel.unit} while healthy".rstrip()
                                + " (outside that it reads RANGE, and a permissive on a bad reading fails)")
                break
            if narrowed.empty:
                report.add(key, f"{_term_text(term)} can never hold together with "
                                f"{' and '.join(earlier)} on channel '{channel_name}': the output could never "
                                "be energised")
                break
            span = narrowed
            earlier.append(f"{path}[{index}] ({_term_text(term)})")
        else:
            _check_against_trips(report, path, listed, channel, span, rules)


def _check_against_trips(
    report: _Report,
    path: str,
    listed: Sequence[tuple[int, PermissiveSpec]],
    channel: ChannelSpec,
    span: _Span,
    rules: Mapping[str, RuleSpec | None],
) -> None:
    """A permissive that holds only where an interlock cutting the same output trips is a contradiction
    (typically an inverted level: eq = 0 on a switch whose digital rule wants 1)."""
    output = listed[0][1].output
    left = span
    cutting: list[tuple[str, _Span]] = []
    for name, rule in rules.items():
        if rule is None or rule.channel != channel.name or output not in rule.action:
            continue
        untripped = _untripped(rule)
        if untripped is None:
            continue
        cutting.append((name, untripped))
        left = left & untripped
        if left.empty:
            terms = " and ".join(f"{path}[{i}] ({_term_text(t)})" for i, t in listed)
            alone = [n for n, u in cutting if (span & u).empty]  # one rule that suffices is named alone
            rules_text = " and ".join(f"interlocks.{n}" for n in (alone[:1] or [n for n, _ in cutting]))
            report.add(f"{path}[{listed[-1][0]}]",
                       f"{terms} on channel '{channel.name}' holds only where {rules_text} trips, which cuts "
                       f"'{output}': the output could never be energised (is a level inverted?)")
            return


# ============================================================================ trip bands


def check_trip_bands(
    report: _Report,
    rules: Mapping[str, RuleSpec | None],
) -> None:
    """A low trip must lie below a high trip on the same channel (and a rate_low below a rate_high):
    else no reading is healthy and the channel trips whatever it reads. A trip's clear point must not
    lie where the other trips, or it could never clear without tripping the other."""
    for low_kind, high_kind, what in (("low", "high", "reading"), ("rate_low", "rate_high", "rate")):
        lows = [(n, r) for n, r in rules.items() if r is not None and r.kind == low_kind]
        highs = [(n, r) for n, r in rules.items() if r is not None and r.kind == high_kind]
        for low_name, low in lows:
            for high_name, high in highs:
                if low.channel != high.channel:
                    continue
                at_low = _join("interlocks", low_name)
                at_high = _join("interlocks", high_name)
                if low.threshold >= high.threshold:
                    report.add(_join(at_low, "threshold"),
                               f"{_fmt(low.threshold)} is not below {at_high}.threshold ({_fmt(high.threshold)}) "
                               f"on the same channel '{low.channel}': no {what} lies between them, so the "
                               "channel trips whatever it reads")
                    continue
                if low.threshold + low.hysteresis > high.threshold:
                    report.add(_join(at_low, "hysteresis"),
                               f"{_fmt(low.hysteresis)} puts the clear point {_fmt(low.threshold + low.hysteresis)}"
                               f" above {at_high}.threshold ({_fmt(high.threshold)}): once tripped, "
                               f"'{low_name}' could clear only where '{high_name}' trips")
                if high.threshold - high.hysteresis < low.threshold:
                    report.add(_join(at_high, "hysteresis"),
                               f"{_fmt(high.hysteresis)} puts the clear point "
                               f"{_fmt(high.threshold - high.hysteresis)} below {at_low}.threshold "
                               f"({_fmt(low.threshold)}): once tripped, '{high_name}' could clear only where "
                               f"'{low_name}' trips")
