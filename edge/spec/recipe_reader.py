"""Recipes, the reader: a recipe file in, a ``Recipe`` (``edge.spec.recipe``) out, through the one reader kernel.

The file is checked on its own: syntax (with line and column), types, units in key names ("missing
unit: did you mean rate_c_per_min?"), unknown keys (with a "did you mean"), segment structure. Every
problem is reported at once (``SpecError.errors``), in file order, like a station file's; inside a
program each names the segment's kind, index and label. Whether the recipe suits a station is
``edge.spec.recipe_check``'s question.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Mapping
from typing import cast

from edge.spec.reader import (
    Conv,
    Problems,
    SpecError,
    Table,
    choice,
    describe,
    fmt,
    integer_in,
    level,
    matching,
    number,
    number_in,
    parse_toml,
    read_text,
    text,
)
from edge.spec.recipe import (
    END_ACTIONS,
    HOLDBACK_MODES,
    MINUTES_MAX,
    ON_TIMEOUT,
    PHASES,
    PROCESSES,
    SEGMENT_KINDS,
    STRATEGIES,
    TEMPERATURE_C,
    AdmitH2,
    Backfill,
    Condition,
    Dwell,
    End,
    EndAction,
    Evacuate,
    GasOff,
    Holdback,
    HoldbackMode,
    Level,
    OnTimeout,
    ParamKind,
    Phase,
    PowerFail,
    PowerFailStrategy,
    PressureStable,
    Process,
    Ramp,
    Recipe,
    Segment,
    Step,
    Threshold,
    Vent,
    Wait,
    a_or_an,
    describe_segment,
)
from edge.spec.station import GASES, NAME_RE

__all__ = ["load_recipe", "parse_recipe"]

_temperature = number_in(*TEMPERATURE_C)
_minutes = number_in(0.0, MINUTES_MAX, lo_open=True)
_bar = number_in(0.0, 100.0, lo_open=True)
_positive = number_in(0.0, 1e6, lo_open=True)
_channel = matching(NAME_RE, "expected a channel name (lowercase letters, digits and _)")

_PARAM_CONVERTERS: Mapping[ParamKind, Conv[float | int | str]] = {
    "number": _positive,
    "count": integer_in(1, 1000),
    "text": text(500),
    "gas": choice(GASES),
}


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and parse a recipe file; any problem is a ``SpecError`` naming the file."""
    source = os.fspath(path)
    return parse_recipe(read_text(source, "recipe file"), source)


def parse_recipe(text: str, source: str) -> Recipe:
    """Parse recipe text; ``source`` is the name errors carry (usually the path)."""
    document = parse_toml(text, source)
    problems = Problems(source)
    top = Table(problems, document, "", noun="table", units=True)

    head = _read_head(top)
    process = head.get("process")
    power_fail = _read_power_fail(top)
    holdback = _read_default_holdback(top)
    phases = _read_phases(top, process if process in PROCESSES else None)
    if process in PROCESSES:
        top.finish(elsewhere=_other_phases(process), context=_other_context(process))
    else:
        top.accept(*(spec.name for specs in PHASES.values() for spec in specs))  # cannot tell which apply
        top.finish()

    problems.raise_if_any(section_order=list(document))
    if power_fail is None or phases is None:  # pragma: no cover - every None path reports an error
        raise SpecError(source, "", "internal error: a table was not read")
    return Recipe(
        name=str(head["name"]),
        process=cast(Process, process),
        version=cast(int, head["version"]),
        control_channel=str(head["control_channel"]),
        description=str(head.get("description", "")),
        power_fail=power_fail,
        holdback=holdback,
        phases=phases,
        source=source,
        text=text,
    )


def _other_phases(process: Process) -> list[str]:
    mine = {spec.name for spec in PHASES[process]}
    return [spec.name for other, specs in PHASES.items() if other != process for spec in specs if spec.name not in mine]


def _other_context(process: Process) -> str:
    other = next(p for p in PROCESSES if p != process)
    return f"to {process} recipes: it is a phase of {other} recipes (process = \"{other}\")"


# ============================================================================ [recipe], [power_fail], [holdback]


def _read_head(top: Table) -> dict[str, object]:
    r = top.table("recipe", required=True, expected="[recipe] with name, process, version and control_channel")
    if r is None:
        return {}
    head: dict[str, object] = {}
    for key, conv, expected in (
        ("name", text(200, non_empty=True), "the recipe's name, e.g. \"HD of sintered NdFeB scrap, 25 kg\""),
        ("process", choice(PROCESSES), "the process: \"hd\" or \"sintering\" (which sequencer runs it)"),
        ("version", integer_in(1, 1_000_000), "the recipe's revision, an integer >= 1"),
        ("control_channel", _channel, "the channel the temperature programs control, e.g. \"chamber_temp\""),
    ):
        value = r.need(key, conv, expected)
        if value is not None:
            head[key] = value
    description = r.get("description", text(2000))
    if description is not None:
        head["description"] = description
    r.finish()
    return head


def _read_power_fail(top: Table) -> PowerFail | None:
    r = top.table("power_fail", required=True,
                  expected="[power_fail] with strategy (continue, ramp_back, hold or abort) and max_outage_min")
    if r is None:
        return None
    strategy = r.need("strategy", choice(STRATEGIES), "what a power loss leads to: " + ", ".join(STRATEGIES))
    outage = r.need("max_outage_min", number_in(0.0, MINUTES_MAX), "an outage longer than this aborts, min")
    r.finish()
    if strategy is None or outage is None:
        return None
    return PowerFail(cast(PowerFailStrategy, strategy), outage)


def _read_default_holdback(top: Table) -> Holdback:
    r = top.table("holdback")
    if r is None:
        return Holdback()
    return _read_holdback(r) or Holdback()


def _read_holdback(r: Table) -> Holdback | None:
    mode = r.need("mode", choice(HOLDBACK_MODES), "off, lo, hi or band")
    band = r.get("band_c", number_in(0.0, 1000.0, lo_open=True))
    r.finish()
    if mode is None:
        return None
    if mode != "off" and band is None and not r.has_error("band_c") and not r.mentions("band_c"):
        r.report("band_c", f"missing: holdback {mode} needs band_c, the band in degC around the setpoint")
        return None
    return Holdback(cast(HoldbackMode, mode), band or 0.0)


# ============================================================================ phases


def _read_phases(top: Table, process: Process | None) -> tuple[Phase, ...] | None:
    if process is None:
        return None
    phases: list[Phase] = []
    complete = True
    for spec in PHASES[process]:
        r = top.table(spec.name, required=True, expected=f"[{spec.name}] ({spec.meaning})"
                      if spec.params else f"[[{spec.name}.program]] segments ({spec.meaning})")
        if r is None:
            complete = False
            continue
        params: dict[str, float | int | str] = {}
        for param in spec.params:
            conv = _PARAM_CONVERTERS[param.kind]
            value = r.need(param.key, conv, param.meaning) if param.required else r.get(param.key, conv)
            if value is not None:
                params[param.key] = value
            elif param.required:
                complete = False
        program: tuple[Segment, ...] = ()
        if spec.program:
            segments = _read_program(r, spec.name)
            if segments is None:
                complete = False
            else:
                program = segments
        if spec.program:
            r.finish()
        else:
            r.finish(elsewhere=("program",), context=f"to {spec.name}: it has no program")
        phases.append(Phase(spec.name, types.MappingProxyType(params), program))
    return tuple(phases) if complete else None


def _read_program(r: Table, phase: str) -> tuple[Segment, ...] | None:
    r.accept("program")
    value = r.data.get("program")
    if value is None:
        if not r.mentions("program"):
            r.report("program", f"missing: expected [[{phase}.program]] segments (at least one)")
        return None
    if not isinstance(value, list) or not value:
        r.report("program", f"expected [[{phase}.program]] segments (an array of tables, at least one), "
                            f"got {describe(value)}")
        return None
    segments: list[Segment] = []
    ok = True
    for index, item in enumerate(value):
        path = f"{r.path}.program[{index}]"
        if not isinstance(item, dict):
            r.problems.add(path, f"segment #{index}: expected a table with kind = ..., got {describe(item)}")
            ok = False
            continue
        segment = _read_segment(r.sub(item, f".program[{index}]"), index)
        if segment is None:
            ok = False
            continue
        if isinstance(segment, End) and index != len(value) - 1:
            r.problems.add(path, f"{describe_segment(segment, index)}: an end segment must be the last of the "
                                 f"program (it is #{index} of {len(value)})")
            ok = False
        segments.append(segment)
    return tuple(segments) if ok else None


def _read_segment(r: Table, index: int) -> Segment | None:
    r.where = f"segment #{index}"
    kind = r.need("kind", choice(SEGMENT_KINDS), "the segment kind: " + ", ".join(SEGMENT_KINDS))
    label = r.get("label", text(80)) or ""
    if kind is None:
        return None
    r.where = f"{kind} #{index}" + (f' "{label}"' if label else "")
    segment = _SEGMENT_READERS[kind](r, label)
    r.finish(elsewhere=_ALL_SEGMENT_KEYS, context=f"to a {kind} segment")
    return segment if r.ok else None


def _timeout(r: Table) -> tuple[float | None, OnTimeout]:
    kind = r.where.split(" ")[0]
    timeout = r.need("timeout_min", _minutes,
                     f"a timeout: {a_or_an(kind)} {kind} segment needs timeout_min, the longest it may take in "
                     "min (a condition that never comes would hold the furnace forever)")
    on_timeout = r.get("on_timeout", choice(ON_TIMEOUT), "abort")
    return timeout, cast(OnTimeout, on_timeout)


def _seg_ramp(r: Table, label: str) -> Segment | None:
    to_c = r.need("to_c", _temperature, "the target setpoint, degC")
    rate = r.get("rate_c_per_min", number_in(0.0, 1000.0, lo_open=True))
    duration = r.get("duration_min", _minutes)
    holdback = _segment_holdback(r)
    rate_given = "rate_c_per_min" in r.data
    duration_given = "duration_min" in r.data
    if rate_given and duration_given:
        r.report("duration_min", "a ramp takes rate_c_per_min or duration_min, not both")
    elif not rate_given and not duration_given and not r.mentions("rate_c_per_min", "duration_min"):
        r.report(None, "missing: a ramp needs rate_c_per_min (degC/min) or duration_min (min)")
    if to_c is None or (rate is None and duration is None) or not r.ok:
        return None
    return Ramp(to_c, rate, duration if rate is None else None, holdback, label)


def _seg_step(r: Table, label: str) -> Segment | None:
    to_c = r.need("to_c", _temperature, "the new setpoint, degC")
    return None if to_c is None else Step(to_c, label)


def _seg_dwell(r: Table, label: str) -> Segment | None:
    duration = r.need("duration_min", _minutes, "how long the setpoint is held, min")
    holdback = _segment_holdback(r)
    return None if duration is None or not r.ok else Dwell(duration, holdback, label)


def _segment_holdback(r: Table) -> Holdback | None:
    sub = r.table("holdback", expected="a table { mode = \"band\", band_c = 5.0 }")
    return None if sub is None else _read_holdback(sub)


def _seg_wait(r: Table, label: str) -> Segment | None:
    sub = r.table("until", required=True, expected="a condition: { channel = NAME, above = X }, { channel = NAME, "
                                                   "below = X }, { channel = NAME, level = 0 or 1 } or "
                                                   "{ pressure_stable_within_bar = X, for_min = Y }")
    until = None if sub is None else _read_condition(sub)
    timeout, on_timeout = _timeout(r)
    if until is None or timeout is None:
        return None
    return Wait(until, timeout, on_timeout, label)


def _read_condition(r: Table) -> Condition | None:
    forms = [key for key in ("above", "below", "level", "pressure_stable_within_bar") if key in r.data]
    if len(forms) > 1:
        r.report(None, f"give one condition, not {' and '.join(forms)}")
        r.accept(*r.data)
        return None
    if not forms:
        if not r.mentions("pressure_stable_within_bar"):
            r.report(None, "missing: expected above, below, level (with channel) or pressure_stable_within_bar "
                           "(with for_min)")
        r.accept("channel", "above", "below", "level", "pressure_stable_within_bar", "for_min")
        r.finish()
        return None
    form = forms[0]
    if form == "pressure_stable_within_bar":
        within = r.need(form, number_in(0.0, 100.0, lo_open=True), "the band, bar")
        for_min = r.need("for_min", _minutes, "how long the pressure must stay within the band, min")
        r.finish(elsewhere=("channel",), context="to pressure_stable_within_bar (it reads the plumbing's "
                                                  "pressure channel)")
        return None if within is None or for_min is None else PressureStable(within, for_min)
    channel = r.need("channel", _channel, "the channel to watch")
    if form == "level":
        wanted = r.get("level", level)
        r.finish()
        return None if channel is None or wanted is None else Level(channel, wanted)
    value = r.get(form, number)
    r.finish()
    return None if channel is None or value is None else Threshold(channel, value, form == "above")


def _seg_evacuate(r: Table, label: str) -> Segment | None:
    to_mbar = r.need("to_mbar", number_in(0.0, 2000.0, lo_open=True), "the vacuum to reach, mbar abs")
    timeout, on_timeout = _timeout(r)
    return None if to_mbar is None or timeout is None else Evacuate(to_mbar, timeout, on_timeout, label)


def _seg_backfill(r: Table, label: str) -> Segment | None:
    gas = r.need("gas", choice(GASES), "the gas: " + ", ".join(GASES))
    to_bar = r.need("to_bar", _bar, "the pressure to fill to, bar abs")
    timeout, on_timeout = _timeout(r)
    if gas is None or to_bar is None or timeout is None:
        return None
    return Backfill(gas, to_bar, timeout, on_timeout, label)


def _seg_admit_h2(r: Table, label: str) -> Segment | None:
    to_bar = r.need("to_bar", _bar, "the H2 pressure to fill to, bar abs")
    top_up = r.need("top_up_below_bar", _bar, "H2 is topped up when the pressure falls below this, bar abs")
    timeout, on_timeout = _timeout(r)
    if to_bar is not None and top_up is not None and top_up >= to_bar:
        r.report("top_up_below_bar", f"{fmt(top_up)} must be below to_bar ({fmt(to_bar)}): the top-up refills "
                                     "from below it to to_bar")
    if to_bar is None or top_up is None or timeout is None or not r.ok:
        return None
    return AdmitH2(to_bar, top_up, timeout, on_timeout, label)


def _seg_vent(r: Table, label: str) -> Segment | None:
    to_bar = r.need("to_bar", _bar, "vent until the pressure is at or below this, bar abs")
    timeout, on_timeout = _timeout(r)
    return None if to_bar is None or timeout is None else Vent(to_bar, timeout, on_timeout, label)


def _seg_gas_off(r: Table, label: str) -> Segment | None:
    return GasOff(label)


def _seg_end(r: Table, label: str) -> Segment | None:
    action = r.need("action", choice(END_ACTIONS), "what the program leaves behind: heaters_off or hold_setpoint")
    return None if action is None else End(cast(EndAction, action), label)


_SEGMENT_READERS: Mapping[str, Callable[[Table, str], Segment | None]] = {
    "ramp": _seg_ramp, "step": _seg_step, "dwell": _seg_dwell, "wait": _seg_wait, "evacuate": _seg_evacuate,
    "backfill": _seg_backfill, "admit_h2": _seg_admit_h2, "vent": _seg_vent, "gas_off": _seg_gas_off,
    "end": _seg_end,
}
_ALL_SEGMENT_KEYS = ("to_c", "rate_c_per_min", "duration_min", "holdback", "until", "timeout_min", "on_timeout",
                     "to_mbar", "gas", "to_bar", "top_up_below_bar", "action")
