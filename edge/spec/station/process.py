"""[limits], [loops.*], [alarms.*], [annunciator], [safe_sequences] and [plumbing]: what recipes are checked
against, what process control runs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import cast

from edge.spec.alarms import (
    ALARM_ACTIONS,
    ALARM_KINDS,
    DEVIATION_KINDS,
    SEVERITIES,
    AlarmAction,
    AlarmKind,
    AlarmSpec,
    LoopLimit,
    RateDirection,
    Severity,
)
from edge.spec.core import (
    ChannelSpec,
    OutputSpec,
    RuleSpec,
)
from edge.spec.loops import LoopSpec, PidGains
from edge.spec.plumbing import GasPlumbing
from edge.spec.reader import Table as _Table
from edge.spec.reader import boolean as _boolean
from edge.spec.reader import choice as _choice
from edge.spec.reader import fmt as _fmt
from edge.spec.reader import join as _join
from edge.spec.reader import list_of as _list_of
from edge.spec.reader import lookup as _lookup
from edge.spec.reader import number as _number
from edge.spec.reader import number_in as _number_in
from edge.spec.reader import text as _text
from edge.spec.reader import unknown as _unknown
from edge.spec.station.hardware import (
    _CoreSettings,
)
from edge.spec.station.model import (
    DEFAULT_SAFE_SEQUENCES,
    PROCESS_CAUSES,
    SAFE_SEQUENCES,
    EquipmentLimits,
    StationIdentity,
)
from edge.spec.station.values import (
    _gas_list,
    _gas_table,
    _name,
    _name_or_empty,
    _named_tables,
    _number_table,
    _value_range,
)

# ============================================================================ [limits]

_LIMIT_KEYS = (
    "max_temperature_c", "zone_max_temperature_c", "max_ramp_c_per_min", "max_cooling_c_per_min",
    "max_pressure_bar", "max_h2_pressure_bar", "max_h2_admission_temperature_c",
    "min_vacuum_before_heating_mbar", "best_vacuum_mbar", "allowed_gases", "max_heater_duty_pct",
    "max_batch_duration_h", "max_charge_kg",
)


def read_limits(
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


def read_loops(
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
    "message", "setpoint_of", "window_s", "direction", "output", "band", "limit", "on_active",
    "follows_rise_per_min", "follows_fall_per_min",
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


def read_alarms(
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
    follows = {key: t.get(key, _number_in(0.0, lo_open=True), math.inf) if deviation else math.inf
               for key in ("follows_rise_per_min", "follows_fall_per_min")}
    latch = t.get("latch", _boolean, False)
    inhibit = t.get("inhibit_until_normal", _boolean, False)
    severity = t.get("severity", _choice(SEVERITIES), "warning")
    message = t.get("message", _text(200), "")
    no_actions: list[str] = []
    on_active = t.get("on_active", _list_of(_choice(ALARM_ACTIONS), "actions", max_len=len(ALARM_ACTIONS)), no_actions)
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
        on_active=tuple(cast(AlarmAction, a) for a in on_active),
        follows_rise_per_min=follows["follows_rise_per_min"], follows_fall_per_min=follows["follows_fall_per_min"],
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


# ============================================================================ [annunciator], [safe_sequences]


def read_annunciator(top: _Table, settings: _CoreSettings, outputs: Mapping[str, OutputSpec | None]) -> str | None:
    """[annunciator] beacon = "OUTPUT": the beacon/horn process control drives (on while a trip or an
    unacknowledged alarm exists). Its safe level must be 1 (on): a trip forces it on, and so does a dead
    controller; left out, nothing drives it and it stays at its safe level."""
    t = top.table("annunciator", expected="[annunciator] with beacon = \"OUTPUT\"")
    if t is None:
        return None
    name = t.need("beacon", _name, "the output that lights the beacon and sounds the horn, e.g. \"alarm_beacon\"")
    t.get("sounds_from", _choice(SEVERITIES))   # read again by read_annunciator_severity
    t.finish()
    if name is None:
        return None
    output = _lookup(t, "beacon", name, outputs, "output")
    if output is None:
        return None
    if name == settings.watchdog_output:
        t.report("beacon", f"'{name}' is the watchdog line (core.watchdog_output)")
    elif output.safe_level != 1:
        t.report("beacon", f"output '{name}' has safe_level {output.safe_level}: a beacon's safe level must be 1 "
                           "(on), so that a trip and a dead controller light it")
    return name if t.ok else None


def read_annunciator_severity(top: _Table) -> Severity:
    """[annunciator] sounds_from = "warning" | "alarm" | "critical": the least severe alarm that lights the
    beacon while unacknowledged (default "warning": every alarm). Less severe ones are shown, not sounded."""
    section = top.data.get("annunciator")
    value = section.get("sounds_from", "warning") if isinstance(section, dict) else "warning"
    return cast(Severity, value) if value in SEVERITIES else "warning"


def read_safe_sequences(top: _Table, rules: Mapping[str, RuleSpec | None]) -> dict[str, str]:
    """[safe_sequences] CAUSE = "SEQUENCE": the safe sequence an abort for that cause runs. A cause is an
    interlock rule's name, or a process cause (``air_inleak``); a sequence one of SAFE_SEQUENCES. A cause
    left out runs ``evacuate_backfill``, except ``air_inleak``, which defaults to ``backfill``."""
    result = dict(DEFAULT_SAFE_SEQUENCES)
    t = top.table("safe_sequences", expected="[safe_sequences] with CAUSE = \"SEQUENCE\" lines")
    if t is None:
        return result
    for cause in list(t.data):
        sequence = t.get(cause, _choice(SAFE_SEQUENCES))
        if cause not in rules and cause not in PROCESS_CAUSES:
            t.report(cause, _unknown("interlock or process cause", cause, [*rules, *PROCESS_CAUSES]))
        elif sequence is not None:
            result[cause] = sequence
    t.finish()
    return result


# ============================================================================ [plumbing]

#: The unit each channel role of GasPlumbing is read in (the programmer's gas segments rely on it).
_PLUMBING_UNITS = {"pressure_channel": "bar", "vacuum_channel": "mbar", "o2_channel": "%vol"}


def read_plumbing(
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
