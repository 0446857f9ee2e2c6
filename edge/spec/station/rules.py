"""[interlocks.*] and [[permissives.*]]: what the C core enforces."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from edge.spec.core import (
    ChannelSpec,
    Comparison,
    OutputSpec,
    PermissiveSpec,
    RuleKind,
    RuleSpec,
)
from edge.spec.reader import Table as _Table
from edge.spec.reader import boolean as _boolean
from edge.spec.reader import choice as _choice
from edge.spec.reader import describe as _describe
from edge.spec.reader import fmt as _fmt
from edge.spec.reader import join as _join
from edge.spec.reader import level_number as _level_number
from edge.spec.reader import lookup as _lookup
from edge.spec.reader import number as _number
from edge.spec.reader import number_in as _number_in
from edge.spec.reader import range_pair as _range_pair
from edge.spec.reader import unknown as _unknown
from edge.spec.station.checks import check_permissive_terms
from edge.spec.station.hardware import (
    _CoreSettings,
)
from edge.spec.station.model import (
    ALL_OUTPUTS,
    DEADMAN_RULE,
    MS_MAX,
    RULE_KINDS,
)
from edge.spec.station.values import (
    _action,
    _deadman_ms,
    _name,
    _named_tables,
    _value_range,
)

# ============================================================================ [interlocks.*]

_RULE_KEYS = ("kind", "channel", "threshold", "hysteresis", "debounce_ms", "latch", "action", "output", "channel2",
              "local_reset_only", "soak_band")
_RULE_HELP: dict[str, str] = {
    "high": "the trip value in the channel's unit (trips above it)",
    "low": "the trip value in the channel's unit (trips below it)",
    "rate_high": "the trip rate in the channel's unit per minute (trips when rising faster)",
    "rate_low": "the trip rate in the channel's unit per minute (trips when the rate drops below it)",
    "digital": "0 or 1: the level the switch reads when all is well (trips on the other)",
    "deadman": "the timeout in ms",
    "agree": "the band in the channels' unit: trips when they differ by more",
}


def read_interlocks(
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
    kind_text = t.need("kind", _choice(RULE_KINDS), "the rule kind: high, low, rate_high, rate_low, digital, "
                                                    "fault, stale, deadman, discrepancy or agree")
    if kind_text is None:
        t.accept(*_RULE_KEYS)
        t.finish()
        return None
    kind = cast(RuleKind, kind_text)

    channel_name: str | None = None
    if kind == "discrepancy":
        channel_name = t.need("channel", _name, "the feedback channel (auxiliary contact, current transformer)")
    elif kind != "deadman":
        channel_name = t.need("channel", _name, "the name of the channel this rule watches")
    output_name = t.need("output", _name, "the output whose written level its feedback must follow") \
        if kind == "discrepancy" else None
    channel2_name = t.need("channel2", _name, "the second channel, which must agree with `channel`") \
        if kind == "agree" else None
    threshold: float | None = 0.0
    if kind == "deadman":
        threshold = t.need("threshold", _deadman_ms(settings.period_ms), _RULE_HELP[kind])
    elif kind == "digital":
        threshold = t.need("threshold", _level_number, _RULE_HELP[kind])
    elif kind in _RULE_HELP:
        threshold = t.need("threshold", _number, _RULE_HELP[kind])
    if kind == "discrepancy":
        threshold = _discrepancy_threshold(t, channels.get(channel_name or ""))
    hysteresis = t.get("hysteresis", _number_in(0.0), 0.0) \
        if kind in ("high", "low", "rate_high", "rate_low", "agree", "discrepancy") else 0.0
    debounce_ms = t.get("debounce_ms", _number_in(0.0, MS_MAX), 0.0) if kind != "deadman" else 0.0
    soak_band = t.get("soak_band", _number) if kind == "agree" else None
    latch = t.get("latch", _boolean, True)
    local_reset_only = t.get("local_reset_only", _boolean, False)
    action_value = t.need("action", _action, "the outputs this rule forces to their safe level, e.g. "
                                             "[\"heater\", \"h2_inlet_valve\"], or \"all\"")
    t.finish(elsewhere=_RULE_KEYS, context=f"to {kind} rules")

    action = _resolve_action(t, "action", action_value, outputs, settings) if action_value is not None else None
    channel = _lookup(t, "channel", channel_name, channels, "channel") if channel_name is not None else None
    if channel is not None and threshold is not None:
        _check_rule_channel(t, kind, channel, threshold, hysteresis)
    if output_name is not None:
        _check_feedback_output(t, output_name, outputs, settings)
    if channel2_name is not None and channel is not None and threshold is not None:
        _check_agree(t, channel, _lookup(t, "channel2", channel2_name, channels, "channel"), threshold, hysteresis)
    if soak_band is not None and threshold is not None:
        _check_soak_band(t, soak_band, threshold, hysteresis)
    if not t.ok or threshold is None or action is None or (kind != "deadman" and channel is None):
        return None
    return RuleSpec(name, kind, channel_name, threshold, action, hysteresis, debounce_ms, latch, output_name,
                    channel2_name, local_reset_only, soak_band)


def _discrepancy_threshold(t: _Table, channel: ChannelSpec | None) -> float | None:
    """Digital feedback reads "on" at level 1 and takes no threshold; analog feedback needs one."""
    if channel is not None and channel.kind == "digital":
        if "threshold" in t.data:
            t.report("threshold", f"channel '{channel.name}' is digital: its feedback is on at level 1; "
                                  "a threshold is for analog feedback (e.g. a heater current in A)")
        t.accept("threshold")
        return 0.0
    return t.need("threshold", _number, "the feedback value above which the output reads on (e.g. 5 A)")


def _check_feedback_output(
    t: _Table, output: str, outputs: Mapping[str, OutputSpec | None], settings: _CoreSettings
) -> None:
    if output not in outputs:
        t.report("output", _unknown("output", output, outputs))
    elif output == settings.watchdog_output:
        t.report("output", f"'{output}' is the watchdog line: its relay is checked by the proof test "
                           "(core.watchdog_feedback), not by a discrepancy rule")


def _check_agree(t: _Table, channel: ChannelSpec, other: ChannelSpec | None, band: float, hysteresis: float) -> None:
    """Two values in the same unit; a band above zero and above its hysteresis."""
    if other is None:
        return
    if other.name == channel.name:
        t.report("channel2", "is the same channel as `channel`: it would always agree")
    for key, ch in (("channel", channel), ("channel2", other)):
        if ch.kind == "digital":
            t.report(key, f"channel '{ch.name}' is digital: an agree rule compares two values")
    if channel.unit != other.unit:
        t.report("channel2", f"channel '{other.name}' reads in '{other.unit}', '{channel.name}' in "
                             f"'{channel.unit}': an agree rule compares values of one unit")
    if not band > 0:
        t.report("threshold", f"{_fmt(band)}: the band must be above 0")
    elif hysteresis >= band:
        t.report("hysteresis", f"{_fmt(hysteresis)} is not below the band {_fmt(band)}: the rule could never clear")


def _check_soak_band(t: _Table, soak_band: float, band: float, hysteresis: float) -> None:
    """The soak band narrows the rule at a settled soak: below its band, above its hysteresis (the core
    refuses anything looser, and a band at or below the hysteresis could never clear)."""
    if not soak_band < band:
        t.report("soak_band", f"{_fmt(soak_band)} is not below the band (threshold) {_fmt(band)}: the soak band "
                              "may only narrow the rule")
    elif not soak_band > hysteresis:
        t.report("soak_band", f"{_fmt(soak_band)} is not above the hysteresis {_fmt(hysteresis)}: the rule "
                              "could never clear at the soak")


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
    if kind == "agree" or (kind == "discrepancy" and channel.kind == "digital"):
        return
    if kind in ("high", "low", "discrepancy"):
        lo, hi = _value_range(channel)
        where = f"{ch}'s range {_fmt(lo)} to {_fmt(hi)} {channel.unit}".rstrip()
        if not lo <= threshold <= hi:
            end = f"above its top end {_fmt(hi)}" if threshold > hi else f"below its bottom end {_fmt(lo)}"
            t.report("threshold", f"{_fmt(threshold)} is outside {where} ({end}): the rule could never act as meant")
        elif threshold == (hi if kind == "high" else lo):
            # a reading beyond the end is RANGE (a bad value): the rule would trip only as a sensor fault
            end = "top" if kind == "high" else "bottom"
            t.report("threshold", f"{_fmt(threshold)} is the {end} end of {where}: no healthy reading passes it, "
                                  "so the rule would trip only on a sensor fault (set it inside the range, or "
                                  "use kind = \"fault\")")
        else:
            clear = threshold + hysteresis if kind == "low" else threshold - hysteresis
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
    resolved = _resolve_names(t, key, value, outputs, settings)
    if resolved is None:
        return None
    # a contactor upstream of an output is dropped by every rule that cuts that output (stations/README.md),
    # and so is a contactor upstream of that contactor: the closure, so a welded K1 is still cut by K0
    action = list(resolved)
    grew = True
    while grew:
        feeders = [name for name, o in outputs.items()
                   if o is not None and name not in action and set(o.supplies) & set(action)]
        action.extend(feeders)
        grew = bool(feeders)
    return tuple(action)


def _resolve_names(
    t: _Table,
    key: str,
    value: tuple[str, ...] | str,
    outputs: Mapping[str, OutputSpec | None],
    settings: _CoreSettings,
) -> tuple[str, ...] | None:
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


def read_permissives(
    top: _Table,
    settings: _CoreSettings,
    channels: Mapping[str, ChannelSpec | None],
    outputs: Mapping[str, OutputSpec | None],
    rules: Mapping[str, RuleSpec | None],
) -> list[PermissiveSpec | None]:
    """[[permissives.OUTPUT]] blocks: every condition listed for an output must hold to energise it.

    The conditions of one output are then checked together (``check_permissive_terms``): a set that can
    never hold, or holds only where an interlock cutting the output trips, is an error."""
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
        terms: list[tuple[int, PermissiveSpec]] = []
        for index, item in enumerate(value):
            t = _Table(section.problems, cast(dict[str, object], item), f"{path}[{index}]")
            spec = _read_permissive(t, output_name, channels)
            permissives.append(spec if output_ok else None)
            if spec is not None:
                terms.append((index, spec))
        if output_ok:
            check_permissive_terms(section.problems, path, terms, channels, rules)
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
