"""Recipes: a TOML file in, frozen dataclasses out, and the check of a recipe against a station.

A recipe says *what* a batch does: the numbers of each phase of the process sheet (leak test,
purge, H2 admission, ...) and the temperature programs (segments for the setpoint programmer,
``edge.control.programmer``). The sequencers (``edge.control.hd``, ``edge.control.sintering``)
say *how*. ``recipes/README.md`` is the reference for technicians.

Two stages, on purpose:

- ``parse_recipe`` / ``load_recipe`` check the file on its own: syntax, types, units in key
  names, unknown keys (with a "did you mean"), segment structure. Every problem of the file is
  reported at once (``SpecError.errors``), like a station file's.
- ``check_recipe`` checks a parsed recipe against one station: its equipment limits, channels,
  outputs and gas plumbing. The same recipe may suit one furnace and not another, so this gives
  a list of ``RecipeProblem`` rather than raising; a run starts only when it is empty.

The phase tables of each process are data (``PHASES``) so that the parser, the checker, the
expanded profile and the sequencers agree on them. tomllib gives no line numbers, so every
problem names its key path (``degassing.program[2].rate_c_per_min``) and, inside a program, the
segment's kind, index and label.
"""

from __future__ import annotations

import difflib
import math
import os
import pathlib
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias, TypeVar, cast

from edge.spec.plumbing import GasPlumbing
from edge.spec.reader import SpecError, parse_toml
from edge.spec.reader import describe as _describe
from edge.spec.reader import did_you_mean as _did_you_mean
from edge.spec.reader import join as _join
from edge.spec.reader import short as _short
from edge.spec.reader import unknown as _unknown
from edge.spec.station import GASES, NAME_RE, EquipmentLimits, Station

__all__ = [
    "PHASES",
    "PROCESSES",
    "SEGMENT_KINDS",
    "AdmitH2",
    "Backfill",
    "Condition",
    "Dwell",
    "End",
    "Evacuate",
    "GasOff",
    "Holdback",
    "Level",
    "Phase",
    "PhaseSpec",
    "PowerFail",
    "PressureStable",
    "ProfileStep",
    "Ramp",
    "Recipe",
    "RecipeProblem",
    "Segment",
    "SpecError",
    "Step",
    "Threshold",
    "Vent",
    "Wait",
    "check_recipe",
    "expand_profile",
    "load_recipe",
    "parse_recipe",
    "segment_minutes",
]

Process = Literal["hd", "sintering"]
PowerFailStrategy = Literal["continue", "ramp_back", "hold", "abort"]
HoldbackMode = Literal["off", "lo", "hi", "band"]
OnTimeout = Literal["abort", "hold", "continue"]
EndAction = Literal["heaters_off", "hold_setpoint"]

PROCESSES: tuple[Process, ...] = ("hd", "sintering")
STATION_KIND_OF: Mapping[str, str] = {"hd": "hd_reactor", "sintering": "sintering_furnace"}
STRATEGIES: tuple[PowerFailStrategy, ...] = ("continue", "ramp_back", "hold", "abort")
HOLDBACK_MODES: tuple[HoldbackMode, ...] = ("off", "lo", "hi", "band")
ON_TIMEOUT: tuple[OnTimeout, ...] = ("abort", "hold", "continue")
END_ACTIONS: tuple[EndAction, ...] = ("heaters_off", "hold_setpoint")

AMBIENT_C = 20.0        # the nominal charge temperature at the start of a batch (the programmer starts at the PV)
ATMOSPHERE_BAR = 1.013  # a vent to the stack cannot bring the vessel below this
MINUTES_MAX = 100_000.0  # ~69 days: any longer time is surely a unit mistake
TEMPERATURE_C = (-100.0, 3000.0)  # what a setpoint may be at all; the station's limits are checked later


# ============================================================================ segments


@dataclass(frozen=True)
class Holdback:
    """Eurotherm holdback: while the PV is outside the band around the setpoint the segment's
    clock stops (a ramp's setpoint waits, a dwell's time does not count). A NaN PV is outside."""

    mode: HoldbackMode = "off"
    band_c: float = 0.0

    def outside(self, pv: float, sp: float) -> bool:
        if self.mode == "off":
            return False
        if math.isnan(pv):
            return True
        low = self.mode in ("lo", "band") and pv < sp - self.band_c
        high = self.mode in ("hi", "band") and pv > sp + self.band_c
        return low or high

    def describe(self) -> str:
        return "off" if self.mode == "off" else f"{self.mode} {_fmt(self.band_c)} degC"


@dataclass(frozen=True)
class Threshold:
    """``{ channel = NAME, above = X }`` or ``{ channel = NAME, below = X }``, in the channel's unit."""

    channel: str
    value: float
    above: bool

    def describe(self) -> str:
        return f"{self.channel} {'above' if self.above else 'below'} {_fmt(self.value)}"


@dataclass(frozen=True)
class Level:
    """``{ channel = DIGITAL, level = 0 | 1 }``."""

    channel: str
    level: int

    def describe(self) -> str:
        return f"{self.channel} = {self.level}"


@dataclass(frozen=True)
class PressureStable:
    """``{ pressure_stable_within_bar = X, for_min = Y }``: the pressure channel of the plumbing stays
    within X of a reference for Y minutes (the reference is reset whenever it leaves the band)."""

    within_bar: float
    for_min: float

    def describe(self) -> str:
        return f"pressure stable within {_fmt(self.within_bar)} bar for {_fmt(self.for_min)} min"


Condition: TypeAlias = Threshold | Level | PressureStable


@dataclass(frozen=True)
class Ramp:
    """The setpoint moves to ``to_c`` at ``rate_c_per_min``, or in ``duration_min`` (exactly one)."""

    kind: ClassVar[str] = "ramp"
    to_c: float
    rate_c_per_min: float | None = None
    duration_min: float | None = None
    holdback: Holdback | None = None  # None: the recipe's [holdback]
    label: str = ""


@dataclass(frozen=True)
class Step:
    """The setpoint jumps to ``to_c``."""

    kind: ClassVar[str] = "step"
    to_c: float
    label: str = ""


@dataclass(frozen=True)
class Dwell:
    """The setpoint stays for ``duration_min`` (a guaranteed soak with holdback)."""

    kind: ClassVar[str] = "dwell"
    duration_min: float
    holdback: Holdback | None = None
    label: str = ""


@dataclass(frozen=True)
class Wait:
    """The setpoint stays until ``until`` holds; ``timeout_min`` is mandatory."""

    kind: ClassVar[str] = "wait"
    until: Condition
    timeout_min: float
    on_timeout: OnTimeout = "abort"
    label: str = ""


@dataclass(frozen=True)
class Evacuate:
    """Pump on, vacuum valve open, inlets and vent closed, until the vacuum gauge reads <= ``to_mbar``.
    Pumping then goes on through the later segments until a backfill, admit_h2, vent or gas_off."""

    kind: ClassVar[str] = "evacuate"
    to_mbar: float
    timeout_min: float
    on_timeout: OnTimeout = "abort"
    label: str = ""


@dataclass(frozen=True)
class Backfill:
    """The gas's inlet open (pump isolated) until the pressure reads >= ``to_bar``; then all closed."""

    kind: ClassVar[str] = "backfill"
    gas: str
    to_bar: float
    timeout_min: float
    on_timeout: OnTimeout = "abort"
    label: str = ""


@dataclass(frozen=True)
class AdmitH2:
    """H2 inlet open until >= ``to_bar``; then topped up (reopened below ``top_up_below_bar``, closed at
    ``to_bar``) through the later segments of the same program until a gas_off or the program ends."""

    kind: ClassVar[str] = "admit_h2"
    to_bar: float
    top_up_below_bar: float
    timeout_min: float
    on_timeout: OnTimeout = "abort"
    label: str = ""


@dataclass(frozen=True)
class Vent:
    """Vent open (inlets closed, pump isolated) until the pressure reads <= ``to_bar``; then closed."""

    kind: ClassVar[str] = "vent"
    to_bar: float
    timeout_min: float
    on_timeout: OnTimeout = "abort"
    label: str = ""


@dataclass(frozen=True)
class GasOff:
    """Every gas output to its closed/idle level (0); stops pumping and H2 top-up."""

    kind: ClassVar[str] = "gas_off"
    label: str = ""


@dataclass(frozen=True)
class End:
    """The program's end: ``heaters_off`` (setpoint None) or ``hold_setpoint``. Only as the last segment."""

    kind: ClassVar[str] = "end"
    action: EndAction
    label: str = ""


Segment: TypeAlias = Ramp | Step | Dwell | Wait | Evacuate | Backfill | AdmitH2 | Vent | GasOff | End
GasSegment: TypeAlias = Evacuate | Backfill | AdmitH2 | Vent
SEGMENT_KINDS: tuple[str, ...] = (
    "ramp", "step", "dwell", "wait", "evacuate", "backfill", "admit_h2", "vent", "gas_off", "end",
)


def describe_segment(segment: Segment, index: int) -> str:
    """How messages name a segment: ``ramp #2 "to 600"``."""
    label = f' "{segment.label}"' if segment.label else ""
    return f"{segment.kind} #{index}{label}"


def segment_minutes(segment: Segment, sp_from: float | None) -> tuple[float, bool]:
    """Nominal duration in minutes and whether it is known. Waits and gas segments give their timeout
    (the longest they may take before ``on_timeout`` acts) with known = False."""
    if isinstance(segment, Ramp):
        if segment.duration_min is not None:
            return segment.duration_min, True
        start = segment.to_c if sp_from is None else sp_from
        return abs(segment.to_c - start) / (segment.rate_c_per_min or math.inf), True
    if isinstance(segment, Dwell):
        return segment.duration_min, True
    if isinstance(segment, Wait | Evacuate | Backfill | AdmitH2 | Vent):
        return segment.timeout_min, False
    return 0.0, True


def setpoint_after(segment: Segment, sp: float | None) -> float | None:
    """The setpoint a segment leaves behind (None: heaters off)."""
    if isinstance(segment, Ramp | Step):
        return segment.to_c
    if isinstance(segment, End) and segment.action == "heaters_off":
        return None
    return sp


# ============================================================================ phases (data)


ParamKind = Literal["number", "count", "text", "gas"]
#: What a phase parameter is checked against in ``check_recipe``.
ParamRole = Literal["", "vacuum", "pressure", "h2_pressure", "inert_gas", "temperature", "h2_temperature", "charge"]


@dataclass(frozen=True)
class Param:
    key: str
    kind: ParamKind
    meaning: str
    required: bool = True
    role: ParamRole = ""


@dataclass(frozen=True)
class PhaseSpec:
    """One table of a recipe: its parameters, whether it has a ``[[NAME.program]]``, and what it leaves
    in the vessel (for the vacuum-before-heating rule): ``keeps`` (the program decides), ``vacuum``
    (evacuated to the parameter ``vacuum_key``), ``gas`` (not under vacuum: air, H2 or inert gas)."""

    name: str
    meaning: str
    params: tuple[Param, ...] = ()
    program: bool = False
    atmosphere: Literal["keeps", "vacuum", "gas"] = "gas"
    vacuum_key: str = ""
    leaves: str = ""  # what "gas" means here, for messages


_LOAD = PhaseSpec("load", "the charge", (
    Param("charge_kg", "number", "charge mass, kg", role="charge"),
    Param("feed", "text", "what was loaded (free text for the batch record)", required=False),
), leaves="air (the vessel was just loaded)")

_HD_PHASES: tuple[PhaseSpec, ...] = (
    _LOAD,
    PhaseSpec("leak_test", "evacuate, isolate the pump, watch the pressure rise", (
        Param("evacuate_to_mbar", "number", "vacuum to reach before isolating, mbar", role="vacuum"),
        Param("hold_min", "number", "how long the rise is watched, min"),
        Param("max_rise_mbar_per_min", "number", "the largest rise that passes, mbar/min"),
        Param("timeout_min", "number", "the evacuation must reach evacuate_to_mbar within this, min"),
    ), leaves="an isolated vacuum that is rising (leak test)"),
    PhaseSpec("purge", "evacuate / backfill inert gas until the O2 analyser reads low, then evacuate", (
        Param("gas", "gas", "the inert purge gas, e.g. \"Ar\"", role="inert_gas"),
        Param("evacuate_to_mbar", "number", "vacuum of each evacuation, mbar", role="vacuum"),
        Param("backfill_to_bar", "number", "pressure of each backfill, bar abs", role="pressure"),
        Param("o2_max_pct", "number", "O2 reading (at pressure) that ends the purge, %vol"),
        Param("max_cycles", "count", "evacuate/backfill cycles before the batch aborts"),
        Param("timeout_min", "number", "the whole purge, min"),
    ), atmosphere="vacuum", vacuum_key="evacuate_to_mbar"),
    PhaseSpec("h2_admission", "hydrogen into the evacuated vessel", (
        Param("pressure_bar", "number", "H2 pressure to admit to, bar abs", role="h2_pressure"),
        Param("max_start_temperature_c", "number", "H2 is admitted only with the charge below this, degC",
              role="h2_temperature"),
        Param("timeout_min", "number", "the pressure must be reached within this, min"),
    ), leaves="hydrogen"),
    PhaseSpec("absorption", "the charge absorbs H2 (exothermic) and decrepitates; topped up", (
        Param("top_up_below_bar", "number", "H2 is topped up to pressure_bar when the pressure falls below this, "
              "bar abs", role="h2_pressure"),
        Param("stable_within_bar", "number", "complete when the pressure stays within this band, bar"),
        Param("stable_for_min", "number", "... for this long without a top-up, min"),
        Param("max_duration_h", "number", "no complete absorption within this aborts, h"),
        Param("max_exotherm_c", "number", "top-ups pause while the charge is this much above its start, degC"),
    ), leaves="hydrogen"),
    PhaseSpec("degassing", "the program heats the hydride under vacuum to drive the hydrogen out", (
        Param("vacuum_recovered_mbar", "number", "after the program, done when the vacuum is at or below this, mbar",
              role="vacuum"),
    ), program=True, atmosphere="keeps"),
    PhaseSpec("cooling", "inert gas backfilled, the cooling program", (
        Param("gas", "gas", "the inert cooling gas, e.g. \"Ar\"", role="inert_gas"),
        Param("backfill_to_bar", "number", "backfill pressure, bar abs", role="pressure"),
    ), program=True, atmosphere="gas", leaves="the cooling gas"),
    PhaseSpec("unload", "ready to unload", (
        Param("max_temperature_c", "number", "the charge must be below this to unload, degC", role="temperature"),
    ), leaves="the cooling gas"),
)

_SINTERING_PHASES: tuple[PhaseSpec, ...] = (
    _LOAD,
    PhaseSpec("pump_down", "the pump runs until the vacuum is reached; no heat before", (
        Param("to_mbar", "number", "vacuum to reach, mbar", role="vacuum"),
        Param("timeout_min", "number", "must be reached within this, min (a leak otherwise)"),
    ), atmosphere="vacuum", vacuum_key="to_mbar"),
    PhaseSpec("heating", "the program: ramps with degassing holds that wait for the vacuum to recover",
              program=True, atmosphere="keeps"),
    PhaseSpec("sinter", "the program: to the sintering temperature and the soak, under vacuum",
              program=True, atmosphere="keeps"),
    PhaseSpec("quench", "heat off, inert gas backfilled, circulation fan on, until cool", (
        Param("gas", "gas", "the quench gas, e.g. \"Ar\"", role="inert_gas"),
        Param("backfill_to_bar", "number", "backfill pressure, bar abs", role="pressure"),
        Param("cool_to_c", "number", "the quench ends below this, degC", role="temperature"),
        Param("timeout_min", "number", "the quench must be done within this, min"),
    ), leaves="the quench gas"),
    PhaseSpec("anneal_1", "the program: first (high) anneal, under vacuum", program=True, atmosphere="keeps"),
    PhaseSpec("anneal_2", "the program: second (low) anneal, under vacuum", program=True, atmosphere="keeps"),
    PhaseSpec("cooling", "inert gas and fan, the cooling program", (
        Param("gas", "gas", "the inert cooling gas, e.g. \"Ar\"", role="inert_gas"),
        Param("backfill_to_bar", "number", "backfill pressure, bar abs", role="pressure"),
        Param("unload_below_c", "number", "done (ready to unload) below this, degC", role="temperature"),
    ), program=True, atmosphere="gas", leaves="the cooling gas"),
)

#: The tables of each process, in process order. Every one is required; a table of the other
#: process is an error.
PHASES: Mapping[str, tuple[PhaseSpec, ...]] = types.MappingProxyType(
    {"hd": _HD_PHASES, "sintering": _SINTERING_PHASES}
)
GENERAL_TABLES = ("recipe", "power_fail", "holdback")


# ============================================================================ the recipe


@dataclass(frozen=True)
class PowerFail:
    """What a power loss in the middle of a batch leads to (``edge.control.programmer.Programmer.restore``)."""

    strategy: PowerFailStrategy
    max_outage_min: float


@dataclass(frozen=True)
class Phase:
    name: str
    params: Mapping[str, float | int | str]
    program: tuple[Segment, ...] = ()


@dataclass(frozen=True)
class Recipe:
    name: str
    process: Process
    version: int
    control_channel: str
    description: str
    power_fail: PowerFail
    holdback: Holdback
    phases: tuple[Phase, ...]  # in process order, `load` first
    source: str
    text: str = field(repr=False, default="")

    def phase(self, name: str) -> Phase:
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise KeyError(f"recipe {self.name!r} ({self.process}) has no phase {name!r}")

    def params(self, name: str) -> Mapping[str, float | int | str]:
        """The numbers of a phase, e.g. ``recipe.params("purge")["o2_max_pct"]``."""
        return self.phase(name).params

    def program(self, name: str) -> tuple[Segment, ...]:
        """The programmer segments of a phase (empty for a phase without a program)."""
        return self.phase(name).program

    @property
    def charge_kg(self) -> float:
        return float(self.params("load")["charge_kg"])


# ============================================================================ errors


@dataclass(frozen=True)
class RecipeProblem:
    """A way in which a recipe does not fit a station (``check_recipe``)."""

    key_path: str
    message: str

    def __str__(self) -> str:
        return f"{self.key_path}: {self.message}"


# ============================================================================ entry points


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and parse a recipe file; any problem is a ``SpecError`` naming the file."""
    source = os.fspath(path)
    try:
        text = pathlib.Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(source, "", f"cannot read the recipe file: {exc}") from exc
    return parse_recipe(text, source)


def parse_recipe(text: str, source: str) -> Recipe:
    """Parse recipe text; ``source`` is the name errors carry (usually the path)."""
    document = parse_toml(text, source)
    sink: list[SpecError] = []
    top = _Reader(sink, source, document, "", noun="table")

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

    if sink:
        order = list(document)

        def place(error: SpecError) -> int:
            head_key = re.split(r"[.\[]", error.key_path, maxsplit=1)[0]
            return order.index(head_key) if head_key in order else len(order)

        ordered = sorted(sink, key=place)
        raise ordered[0] if len(ordered) == 1 else SpecError.several(ordered)
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


def _read_head(top: _Reader) -> dict[str, object]:
    r = top.table("recipe", required=True, expected="[recipe] with name, process, version and control_channel")
    if r is None:
        return {}
    head: dict[str, object] = {}
    for key, conv, expected in (
        ("name", _text(200, non_empty=True), "the recipe's name, e.g. \"HD of sintered NdFeB scrap, 25 kg\""),
        ("process", _choice(PROCESSES), "the process: \"hd\" or \"sintering\" (which sequencer runs it)"),
        ("version", _integer_in(1, 1_000_000), "the recipe's revision, an integer >= 1"),
        ("control_channel", _name, "the channel the temperature programs control, e.g. \"chamber_temp\""),
    ):
        value = r.need(key, conv, expected)
        if value is not None:
            head[key] = value
    description = r.get("description", _text(2000))
    if description is not None:
        head["description"] = description
    r.finish()
    return head


def _read_power_fail(top: _Reader) -> PowerFail | None:
    r = top.table("power_fail", required=True,
                  expected="[power_fail] with strategy (continue, ramp_back, hold or abort) and max_outage_min")
    if r is None:
        return None
    strategy = r.need("strategy", _choice(STRATEGIES), "what a power loss leads to: " + ", ".join(STRATEGIES))
    outage = r.need("max_outage_min", _number_in(0.0, MINUTES_MAX), "an outage longer than this aborts, min")
    r.finish()
    if strategy is None or outage is None:
        return None
    return PowerFail(cast(PowerFailStrategy, strategy), outage)


def _read_default_holdback(top: _Reader) -> Holdback:
    r = top.table("holdback")
    if r is None:
        return Holdback()
    return _read_holdback(r) or Holdback()


def _read_holdback(r: _Reader) -> Holdback | None:
    mode = r.need("mode", _choice(HOLDBACK_MODES), "off, lo, hi or band")
    band = r.get("band_c", _number_in(0.0, 1000.0, lo_open=True))
    r.finish()
    if mode is None:
        return None
    if mode != "off" and band is None and not r.has_error("band_c") and not r.mentions("band_c"):
        r.report("band_c", f"missing: holdback {mode} needs band_c, the band in degC around the setpoint")
        return None
    return Holdback(cast(HoldbackMode, mode), band or 0.0)


# ============================================================================ phases


def _read_phases(top: _Reader, process: Process | None) -> tuple[Phase, ...] | None:
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


def _read_program(r: _Reader, phase: str) -> tuple[Segment, ...] | None:
    r.accept("program")
    value = r.data.get("program")
    if value is None:
        if not r.mentions("program"):
            r.report("program", f"missing: expected [[{phase}.program]] segments (at least one)")
        return None
    if not isinstance(value, list) or not value:
        r.report("program", f"expected [[{phase}.program]] segments (an array of tables, at least one), "
                            f"got {_describe(value)}")
        return None
    segments: list[Segment] = []
    ok = True
    for index, item in enumerate(value):
        path = f"{r.path}.program[{index}]"
        if not isinstance(item, dict):
            r.sink.append(SpecError(r.source, path, f"segment #{index}: expected a table with kind = ..., "
                                                      f"got {_describe(item)}"))
            ok = False
            continue
        segment = _read_segment(_Reader(r.sink, r.source, item, path), index)
        if segment is None:
            ok = False
            continue
        if isinstance(segment, End) and index != len(value) - 1:
            r.sink.append(SpecError(r.source, path, f"{describe_segment(segment, index)}: an end segment must be "
                                                      f"the last of the program (it is #{index} of {len(value)})"))
            ok = False
        segments.append(segment)
    return tuple(segments) if ok else None


def _read_segment(r: _Reader, index: int) -> Segment | None:
    r.where = f"segment #{index}"
    kind = r.need("kind", _choice(SEGMENT_KINDS), "the segment kind: " + ", ".join(SEGMENT_KINDS))
    label = r.get("label", _text(80)) or ""
    if kind is None:
        return None
    r.where = f"{kind} #{index}" + (f' "{label}"' if label else "")
    segment = _SEGMENT_READERS[kind](r, label)
    r.finish(elsewhere=_ALL_SEGMENT_KEYS, context=f"to a {kind} segment")
    return segment if r.ok else None


def _timeout(r: _Reader) -> tuple[float | None, OnTimeout]:
    kind = r.where.split(" ")[0]
    timeout = r.need("timeout_min", _minutes,
                     f"a timeout: {_a(kind)} {kind} segment needs timeout_min, the longest it may take in "
                     "min (a condition that never comes would hold the furnace forever)")
    on_timeout = r.get("on_timeout", _choice(ON_TIMEOUT), "abort")
    return timeout, cast(OnTimeout, on_timeout)


def _seg_ramp(r: _Reader, label: str) -> Segment | None:
    to_c = r.need("to_c", _temperature, "the target setpoint, degC")
    rate = r.get("rate_c_per_min", _number_in(0.0, 1000.0, lo_open=True))
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


def _seg_step(r: _Reader, label: str) -> Segment | None:
    to_c = r.need("to_c", _temperature, "the new setpoint, degC")
    return None if to_c is None else Step(to_c, label)


def _seg_dwell(r: _Reader, label: str) -> Segment | None:
    duration = r.need("duration_min", _minutes, "how long the setpoint is held, min")
    holdback = _segment_holdback(r)
    return None if duration is None or not r.ok else Dwell(duration, holdback, label)


def _segment_holdback(r: _Reader) -> Holdback | None:
    sub = r.table("holdback", expected="a table { mode = \"band\", band_c = 5.0 }")
    return None if sub is None else _read_holdback(sub)


def _seg_wait(r: _Reader, label: str) -> Segment | None:
    sub = r.table("until", required=True, expected="a condition: { channel = NAME, above = X }, { channel = NAME, "
                                                   "below = X }, { channel = NAME, level = 0 or 1 } or "
                                                   "{ pressure_stable_within_bar = X, for_min = Y }")
    until = None if sub is None else _read_condition(sub)
    timeout, on_timeout = _timeout(r)
    if until is None or timeout is None:
        return None
    return Wait(until, timeout, on_timeout, label)


def _read_condition(r: _Reader) -> Condition | None:
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
        within = r.need(form, _number_in(0.0, 100.0, lo_open=True), "the band, bar")
        for_min = r.need("for_min", _minutes, "how long the pressure must stay within the band, min")
        r.finish(elsewhere=("channel",), context="to pressure_stable_within_bar (it reads the plumbing's "
                                                  "pressure channel)")
        return None if within is None or for_min is None else PressureStable(within, for_min)
    channel = r.need("channel", _name, "the channel to watch")
    if form == "level":
        level = r.get("level", _level)
        r.finish()
        return None if channel is None or level is None else Level(channel, level)
    value = r.get(form, _number)
    r.finish()
    return None if channel is None or value is None else Threshold(channel, value, form == "above")


def _seg_evacuate(r: _Reader, label: str) -> Segment | None:
    to_mbar = r.need("to_mbar", _number_in(0.0, 2000.0, lo_open=True), "the vacuum to reach, mbar abs")
    timeout, on_timeout = _timeout(r)
    return None if to_mbar is None or timeout is None else Evacuate(to_mbar, timeout, on_timeout, label)


def _seg_backfill(r: _Reader, label: str) -> Segment | None:
    gas = r.need("gas", _choice(GASES), "the gas: " + ", ".join(GASES))
    to_bar = r.need("to_bar", _bar, "the pressure to fill to, bar abs")
    timeout, on_timeout = _timeout(r)
    if gas is None or to_bar is None or timeout is None:
        return None
    return Backfill(gas, to_bar, timeout, on_timeout, label)


def _seg_admit_h2(r: _Reader, label: str) -> Segment | None:
    to_bar = r.need("to_bar", _bar, "the H2 pressure to fill to, bar abs")
    top_up = r.need("top_up_below_bar", _bar, "H2 is topped up when the pressure falls below this, bar abs")
    timeout, on_timeout = _timeout(r)
    if to_bar is not None and top_up is not None and top_up >= to_bar:
        r.report("top_up_below_bar", f"{_fmt(top_up)} must be below to_bar ({_fmt(to_bar)}): the top-up refills "
                                     "from below it to to_bar")
    if to_bar is None or top_up is None or timeout is None or not r.ok:
        return None
    return AdmitH2(to_bar, top_up, timeout, on_timeout, label)


def _seg_vent(r: _Reader, label: str) -> Segment | None:
    to_bar = r.need("to_bar", _bar, "vent until the pressure is at or below this, bar abs")
    timeout, on_timeout = _timeout(r)
    return None if to_bar is None or timeout is None else Vent(to_bar, timeout, on_timeout, label)


def _seg_gas_off(r: _Reader, label: str) -> Segment | None:
    return GasOff(label)


def _seg_end(r: _Reader, label: str) -> Segment | None:
    action = r.need("action", _choice(END_ACTIONS), "what the program leaves behind: heaters_off or hold_setpoint")
    return None if action is None else End(cast(EndAction, action), label)


_SEGMENT_READERS: Mapping[str, Callable[[_Reader, str], Segment | None]] = {
    "ramp": _seg_ramp, "step": _seg_step, "dwell": _seg_dwell, "wait": _seg_wait, "evacuate": _seg_evacuate,
    "backfill": _seg_backfill, "admit_h2": _seg_admit_h2, "vent": _seg_vent, "gas_off": _seg_gas_off,
    "end": _seg_end,
}
_ALL_SEGMENT_KEYS = ("to_c", "rate_c_per_min", "duration_min", "holdback", "until", "timeout_min", "on_timeout",
                     "to_mbar", "gas", "to_bar", "top_up_below_bar", "action")


# ============================================================================ check against a station


def check_recipe(recipe: Recipe, station: Station) -> list[RecipeProblem]:
    """Every way in which ``recipe`` does not fit ``station``: limits, channels, outputs, plumbing.

    Empty means the recipe may run there. See recipes/README.md ("What validate checks")."""
    return _Checker(recipe, station).run()


@dataclass
class _Vessel:
    """What the checker knows of the vessel while it walks the recipe: the nominal setpoint (the
    expected charge temperature where no setpoint is given) and whether a vacuum at or below
    ``limits.min_vacuum_before_heating_mbar`` has been established and not broken since."""

    temp_c: float = AMBIENT_C
    vacuum_ok: bool = False
    why: str = "air at the start of the batch"
    reported: str = ""  # the `why` a heating problem was last reported for


class _Checker:
    def __init__(self, recipe: Recipe, station: Station) -> None:
        self.recipe = recipe
        self.station = station
        self.limits: EquipmentLimits = station.limits
        self.plumbing: GasPlumbing = station.plumbing
        self.channels = {c.name: c for c in station.core.channels}
        self.outputs = {o.name for o in station.core.outputs}
        self.problems: list[RecipeProblem] = []
        self.max_temp = self.limits.max_temperature_for(recipe.control_channel)
        self.max_temp_name = ("zone_max_temperature_c." + recipe.control_channel
                              if recipe.control_channel in self.limits.zone_max_temperature_c else "max_temperature_c")

    def report(self, key_path: str, message: str) -> None:
        self.problems.append(RecipeProblem(key_path, message))

    def run(self) -> list[RecipeProblem]:
        self.check_head()
        vessel = _Vessel()
        for phase in self.recipe.phases:
            spec = _spec(self.recipe.process, phase.name)
            self.check_params(phase, spec)
            if spec.program:
                if spec.atmosphere == "gas":
                    vessel.vacuum_ok = False
                    vessel.why = f"{phase.params.get('gas', 'gas')} backfilled at the start of {phase.name}"
                for index, segment in enumerate(phase.program):
                    self.check_segment(phase.name, index, segment, vessel)
            elif spec.atmosphere == "vacuum":
                level = float(phase.params[spec.vacuum_key])
                vessel.vacuum_ok = level <= self.limits.min_vacuum_before_heating_mbar
                vessel.why = f"{phase.name} ends at {_fmt(level)} mbar ({phase.name}.{spec.vacuum_key})"
            elif spec.atmosphere == "gas":
                vessel.vacuum_ok = False
                vessel.why = f"{spec.leaves} after {phase.name}"
            if phase.name == "quench":
                vessel.temp_c = float(phase.params["cool_to_c"])
        self.check_duration()
        return self.problems

    # ---- the recipe as a whole ----

    def check_head(self) -> None:
        r = self.recipe
        want = STATION_KIND_OF[r.process]
        if self.station.identity.kind != want:
            self.report("recipe.process", f"{_a(r.process)} {r.process} recipe runs on {_a(want)} {want}; station "
                                          f"{self.station.identity.station_id} is {_a(self.station.identity.kind)} "
                                          f"{self.station.identity.kind}")
        channel = self.channels.get(r.control_channel)
        if channel is None:
            self.report("recipe.control_channel", _unknown("channel", r.control_channel, self.channels)
                        + " in this station")
        elif channel.kind != "thermocouple" and channel.unit != "degC":
            self.report("recipe.control_channel", f"channel '{r.control_channel}' reads '{channel.unit}', "
                                                  "not a temperature")
        elif self.station.loops and r.control_channel not in {loop.pv for loop in self.station.loops}:
            loops = ", ".join(f"{loop.name} (pv {loop.pv})" for loop in self.station.loops)
            self.report("recipe.control_channel", f"no PID loop of this station controls '{r.control_channel}' "
                                                  f"(loops: {loops}): the setpoint would drive nothing")

    def check_duration(self) -> None:
        limit_h = self.limits.max_batch_duration_h
        if limit_h is None:
            return
        steps = expand_profile(self.recipe, self.station)
        total_h = (steps[-1].end_min if steps else 0.0) / 60.0
        if total_h > limit_h:
            worst = " (waits and gas steps counted at their timeouts)" if any(s.worst_case for s in steps) else ""
            self.report("recipe", f"the batch may take {total_h:.1f} h{worst}, more than the station's "
                                  f"max_batch_duration_h ({_fmt(limit_h)} h): shorten the program or the timeouts")

    # ---- phase parameters ----

    def check_params(self, phase: Phase, spec: PhaseSpec) -> None:
        lim = self.limits
        for param in spec.params:
            if param.key not in phase.params or not param.role:
                continue
            value = phase.params[param.key]
            key = f"{phase.name}.{param.key}"
            if param.role == "inert_gas":
                self.check_gas(key, str(value), inert=True)
                continue
            number = float(value)
            if param.role == "vacuum":
                self.check_vacuum_level(key, number)
            elif param.role == "pressure":
                self.check_pressure(key, number)
            elif param.role == "h2_pressure":
                self.check_gas(key, "H2", inert=False)
                self.check_pressure(key, number, h2=True)
            elif param.role in ("temperature", "h2_temperature") and number > self.max_temp:
                self.report(key, f"{_fmt(number)} degC is above the station's {self.max_temp_name} "
                                 f"({_fmt(self.max_temp)} degC)")
            if param.role == "h2_temperature" and lim.max_h2_admission_temperature_c is not None \
                    and number > lim.max_h2_admission_temperature_c:
                self.report(key, f"{_fmt(number)} degC: H2 may be admitted only below the station's "
                                 f"max_h2_admission_temperature_c ({_fmt(lim.max_h2_admission_temperature_c)} degC)")
            if param.role == "charge" and lim.max_charge_kg is not None and number > lim.max_charge_kg:
                self.report(key, f"{_fmt(number)} kg is more than the station's max_charge_kg "
                                 f"({_fmt(lim.max_charge_kg)} kg)")
        if phase.name == "absorption" and "top_up_below_bar" in phase.params:
            target = self.recipe.params("h2_admission").get("pressure_bar")
            top_up = float(phase.params["top_up_below_bar"])
            if target is not None and top_up >= float(target):
                self.report(f"{phase.name}.top_up_below_bar",
                            f"{_fmt(top_up)} bar must be below h2_admission.pressure_bar ({_fmt(float(target))} bar): "
                            "the top-up refills from below it to that pressure")
        if phase.name == "purge" and self.plumbing.o2_channel is None:
            self.report("purge.o2_max_pct", "the purge ends on the O2 analyser's reading, and this station has none "
                                            "(plumbing.o2_channel)")
        if any(p.role == "vacuum" for p in spec.params):
            self.need_channel(f"{phase.name}", self.plumbing.vacuum_channel, "plumbing.vacuum_channel")

    # ---- program segments ----

    def check_segment(self, phase: str, index: int, segment: Segment, vessel: _Vessel) -> None:
        path = f"{phase}.program[{index}]"
        where = describe_segment(segment, index)
        lim = self.limits

        def report(key: str | None, message: str) -> None:
            self.report(f"{path}.{key}" if key else path, f"{where}: {message}")

        if isinstance(segment, Ramp | Step):
            if segment.to_c > self.max_temp:
                report("to_c", f"{_fmt(segment.to_c)} degC is above the station's {self.max_temp_name} "
                               f"({_fmt(self.max_temp)} degC)")
            heating = segment.to_c > vessel.temp_c
            if isinstance(segment, Ramp):
                minutes, _ = segment_minutes(segment, vessel.temp_c)
                rate = segment.rate_c_per_min
                if rate is None:
                    rate = abs(segment.to_c - vessel.temp_c) / minutes if minutes > 0 else 0.0
                key = "rate_c_per_min" if segment.rate_c_per_min is not None else "duration_min"
                how = "" if segment.rate_c_per_min is not None else \
                    f" ({_fmt(vessel.temp_c)} to {_fmt(segment.to_c)} degC in {_fmt(minutes)} min)"
                if heating and rate > lim.max_ramp_c_per_min:
                    report(key, f"heating at {_fmt(round(rate, 3))} degC/min{how} is faster than the station's "
                                f"max_ramp_c_per_min ({_fmt(lim.max_ramp_c_per_min)} degC/min)")
                cooling_limit = lim.max_cooling_c_per_min
                if not heating and cooling_limit is not None and rate > cooling_limit:
                    report(key, f"cooling at {_fmt(round(rate, 3))} degC/min{how} is faster than the station's "
                                f"max_cooling_c_per_min ({_fmt(cooling_limit)} degC/min)")
            elif heating and segment.to_c - vessel.temp_c > lim.max_ramp_c_per_min:
                report("to_c", f"a step up from {_fmt(vessel.temp_c)} to {_fmt(segment.to_c)} degC heats as fast as "
                               f"the heater can, beyond the station's max_ramp_c_per_min "
                               f"({_fmt(lim.max_ramp_c_per_min)} degC/min): use a ramp (a step may rise by at most "
                               "one minute's worth of the ramp limit)")
            if heating and not vessel.vacuum_ok and vessel.reported != vessel.why:  # once per cause
                vessel.reported = vessel.why
                report(None, f"heating to {_fmt(segment.to_c)} degC before the vacuum reached the station's "
                             f"min_vacuum_before_heating_mbar ({_fmt(lim.min_vacuum_before_heating_mbar)} mbar): "
                             f"before it, {vessel.why}. Start with an evacuate segment (to_mbar <= "
                             f"{_fmt(lim.min_vacuum_before_heating_mbar)}) or a wait for "
                             f"{self.plumbing.vacuum_channel} below it")
            vessel.temp_c = segment.to_c
        elif isinstance(segment, Wait):
            self.check_condition(path, where, segment.until, vessel)
        elif isinstance(segment, Evacuate):
            self.need_output(path, where, self.plumbing.vacuum_pump, "plumbing.vacuum_pump")
            self.need_output(path, where, self.plumbing.vacuum_valve, "plumbing.vacuum_valve")
            self.need_channel(path, self.plumbing.vacuum_channel, "plumbing.vacuum_channel", where)
            self.check_vacuum_level(f"{path}.to_mbar", segment.to_mbar, where)
            vessel.vacuum_ok = segment.to_mbar <= lim.min_vacuum_before_heating_mbar
            vessel.why = f"the vessel was evacuated to {_fmt(segment.to_mbar)} mbar only ({path})"
        elif isinstance(segment, Backfill | AdmitH2):
            gas = segment.gas if isinstance(segment, Backfill) else "H2"
            self.check_gas(f"{path}.gas" if isinstance(segment, Backfill) else path, gas, inert=False, where=where)
            self.need_channel(path, self.plumbing.pressure_channel, "plumbing.pressure_channel", where)
            self.check_pressure(f"{path}.to_bar", segment.to_bar, h2=gas == "H2", where=where)
            if gas == "H2" and lim.max_h2_admission_temperature_c is not None \
                    and vessel.temp_c > lim.max_h2_admission_temperature_c:
                report(None, f"admits H2 with the setpoint at {_fmt(vessel.temp_c)} degC, above the station's "
                             f"max_h2_admission_temperature_c ({_fmt(lim.max_h2_admission_temperature_c)} degC)")
            vessel.vacuum_ok = False
            vessel.why = f"{gas} was let in ({path})"
        elif isinstance(segment, Vent):
            self.need_output(path, where, self.plumbing.vent_valve, "plumbing.vent_valve")
            self.need_channel(path, self.plumbing.pressure_channel, "plumbing.pressure_channel", where)
            if segment.to_bar <= ATMOSPHERE_BAR:
                report("to_bar", f"{_fmt(segment.to_bar)} bar: a vent to the stack cannot bring the vessel below "
                                 f"atmospheric pressure (about {_fmt(ATMOSPHERE_BAR)} bar abs); vent to e.g. 1.05")
            self.check_pressure(f"{path}.to_bar", segment.to_bar, where=where)
            vessel.vacuum_ok = False
            vessel.why = f"the vessel was vented ({path})"
        elif isinstance(segment, GasOff):
            vessel.vacuum_ok = False
            vessel.why = f"gas_off stopped the pump ({path})"

    def check_condition(self, path: str, where: str, until: Condition, vessel: _Vessel) -> None:
        lim, pl = self.limits, self.plumbing
        if isinstance(until, PressureStable):
            self.need_channel(path, pl.pressure_channel, "plumbing.pressure_channel", where)
            return
        key = f"{path}.until.channel"
        channel = self.channels.get(until.channel)
        if channel is None:
            self.report(key, f"{where}: " + _unknown("channel", until.channel, self.channels) + " in this station")
            return
        if isinstance(until, Level):
            if channel.kind != "digital":
                self.report(f"{path}.until.level", f"{where}: channel '{channel.name}' is {channel.kind}; level "
                                                   "applies to digital channels (use above or below)")
            return
        form = "above" if until.above else "below"
        value_key = f"{path}.until.{form}"
        if channel.kind == "digital":
            self.report(value_key, f"{where}: channel '{channel.name}' is digital: use level = 0 or 1")
            return
        unit = channel.unit or ("degC" if channel.kind == "thermocouple" else "")
        if not channel.range_lo <= until.value <= channel.range_hi:
            self.report(value_key, f"{where}: {_fmt(until.value)} {unit} is outside channel '{channel.name}''s range "
                                   f"({_fmt(channel.range_lo)} to {_fmt(channel.range_hi)} {unit}): it could never "
                                   "read that")
            return
        mbar = until.value if channel.name == pl.vacuum_channel else \
            until.value * 1000.0 if channel.name == pl.pressure_channel else None
        if mbar is not None and not until.above:
            self.check_vacuum_level(value_key, mbar, where)
            if mbar <= lim.min_vacuum_before_heating_mbar:
                vessel.vacuum_ok = True
                vessel.why = f"the vacuum reached {_fmt(mbar)} mbar ({path})"
        if channel.name == pl.pressure_channel and until.above and until.value > lim.max_pressure_bar:
            self.report(value_key, f"{where}: waits for {_fmt(until.value)} bar, above the station's "
                                   f"max_pressure_bar ({_fmt(lim.max_pressure_bar)} bar abs)")
        temperature = channel.kind == "thermocouple" or channel.unit == "degC"
        if temperature and until.above and until.value > lim.max_temperature_for(channel.name):
            self.report(value_key, f"{where}: waits for {_fmt(until.value)} degC, above the station's limit "
                                   f"({_fmt(lim.max_temperature_for(channel.name))} degC)")

    # ---- shared checks ----

    def check_vacuum_level(self, key: str, mbar: float, where: str = "") -> None:
        best = self.limits.best_vacuum_mbar
        if best is not None and mbar < best:
            self.report(key, f"{where + ': ' if where else ''}{_fmt(mbar)} mbar is a better vacuum than the station's "
                             f"pumps reach (best_vacuum_mbar {_fmt(best)} mbar): it would never be reached")

    def check_pressure(self, key: str, bar: float, *, h2: bool = False, where: str = "") -> None:
        lim = self.limits
        prefix = f"{where}: " if where else ""
        if h2 and lim.max_h2_pressure_bar is not None and bar > lim.max_h2_pressure_bar:
            self.report(key, f"{prefix}H2 at {_fmt(bar)} bar is above the station's max_h2_pressure_bar "
                             f"({_fmt(lim.max_h2_pressure_bar)} bar abs)")
        elif bar > lim.max_pressure_bar:
            self.report(key, f"{prefix}{_fmt(bar)} bar is above the station's max_pressure_bar "
                             f"({_fmt(lim.max_pressure_bar)} bar abs)")

    def check_gas(self, key: str, gas: str, *, inert: bool, where: str = "") -> None:
        prefix = f"{where}: " if where else ""
        if inert and gas == "H2":
            self.report(key, f"{prefix}H2 is not inert: this step needs an inert gas such as Ar")
        if not self.limits.gas_allowed(gas):
            self.report(key, f"{prefix}{gas} is not in the station's allowed_gases "
                             f"({', '.join(self.limits.allowed_gases)})")
        elif gas not in self.plumbing.inlet_valves:
            self.report(key, f"{prefix}this station has no inlet valve for {gas} (plumbing.inlet_valves: "
                             f"{', '.join(sorted(self.plumbing.inlet_valves)) or 'none'})")
        elif self.plumbing.inlet_valves[gas] not in self.outputs:
            self.report(key, f"{prefix}the {gas} inlet '{self.plumbing.inlet_valves[gas]}' is not an output of "
                             "this station")

    def need_output(self, key: str, where: str, name: str | None, role: str) -> None:
        if name is None or name not in self.outputs:
            self.report(key, f"{where}: this station has no output '{name}' ({role})")

    def need_channel(self, key: str, name: str | None, role: str, where: str = "") -> None:
        if name is None or name not in self.channels:
            prefix = f"{where}: " if where else ""
            self.report(key, f"{prefix}this station has no channel '{name}' ({role})")


def _a(word: str) -> str:
    """The article a person would say before it: "an hd_reactor", "an evacuate", "a wait"."""
    return "an" if word[:1] in "aeiouh" else "a"


def _spec(process: Process, name: str) -> PhaseSpec:
    return next(spec for spec in PHASES[process] if spec.name == name)


# ============================================================================ expanded profile


@dataclass(frozen=True)
class ProfileStep:
    """One row of the expanded profile: a program segment, or a whole phase without program."""

    phase: str
    index: int | None        # the segment's index in the phase's program; None for a phase without program
    kind: str                # segment kind, or "phase"
    label: str
    start_min: float
    end_min: float
    sp_start_c: float | None  # None: no setpoint (heaters off)
    sp_end_c: float | None
    temp_start_c: float       # the nominal charge temperature (the setpoint where there is one)
    temp_end_c: float
    action: str               # gas action or what the phase does, for a person
    worst_case: bool          # the duration is a timeout: the longest it may take


def expand_profile(recipe: Recipe, station: Station | None = None) -> list[ProfileStep]:
    """The recipe as a timeline with nominal durations: ramps and dwells exactly, waits, gas segments
    and phases that end on a measurement at their timeouts (``worst_case``). The setpoint of a program
    starts at the nominal temperature the previous phase left (the programmer starts at the PV)."""
    plumbing = station.plumbing if station is not None else GasPlumbing()
    steps: list[ProfileStep] = []
    t = 0.0
    temp = AMBIENT_C
    sp: float | None = None
    for phase in recipe.phases:
        spec = _spec(recipe.process, phase.name)
        if not spec.program:
            minutes, worst = _phase_minutes(phase)
            end_temp = float(phase.params["cool_to_c"]) if phase.name == "quench" else temp
            steps.append(ProfileStep(phase.name, None, "phase", spec.meaning, t, t + minutes, None, None, temp,
                                     end_temp, _phase_action(phase), worst))
            t, temp, sp = t + minutes, end_temp, None
            continue
        sp = temp  # bumpless: the program starts at the PV
        for index, segment in enumerate(phase.program):
            minutes, known = segment_minutes(segment, sp)
            new_sp = setpoint_after(segment, sp)
            end_temp = new_sp if new_sp is not None else temp
            steps.append(ProfileStep(phase.name, index, segment.kind, segment.label, t, t + minutes, sp, new_sp,
                                     temp, end_temp, _segment_action(segment, plumbing), not known))
            t, temp, sp = t + minutes, end_temp, new_sp
    return steps


def _phase_minutes(phase: Phase) -> tuple[float, bool]:
    p = phase.params
    if phase.name == "leak_test":
        return float(p["timeout_min"]) + float(p["hold_min"]), True
    if phase.name == "absorption":
        return float(p["max_duration_h"]) * 60.0, True
    if "timeout_min" in p:
        return float(p["timeout_min"]), True
    return 0.0, False


def _phase_action(phase: Phase) -> str:
    p = phase.params
    texts: Mapping[str, Callable[[], str]] = {
        "load": lambda: f"charge {_fmt(float(p['charge_kg']))} kg" + (f": {p['feed']}" if p.get("feed") else ""),
        "leak_test": lambda: f"evacuate to {_fmt(float(p['evacuate_to_mbar']))} mbar, isolate, rise over "
                             f"{_fmt(float(p['hold_min']))} min <= {_fmt(float(p['max_rise_mbar_per_min']))} mbar/min",
        "purge": lambda: f"evacuate to {_fmt(float(p['evacuate_to_mbar']))} mbar / {p['gas']} to "
                         f"{_fmt(float(p['backfill_to_bar']))} bar until O2 <= {_fmt(float(p['o2_max_pct']))} % "
                         f"(max {p['max_cycles']} cycles), then evacuate",
        "h2_admission": lambda: f"H2 to {_fmt(float(p['pressure_bar']))} bar (charge below "
                                f"{_fmt(float(p['max_start_temperature_c']))} degC)",
        "absorption": lambda: f"H2 top-up below {_fmt(float(p['top_up_below_bar']))} bar until stable within "
                              f"{_fmt(float(p['stable_within_bar']))} bar for {_fmt(float(p['stable_for_min']))} min",
        "unload": lambda: f"unload below {_fmt(float(p['max_temperature_c']))} degC",
        "pump_down": lambda: f"pump down to {_fmt(float(p['to_mbar']))} mbar",
        "quench": lambda: f"heat off, {p['gas']} to {_fmt(float(p['backfill_to_bar']))} bar, fan on, until "
                          f"{_fmt(float(p['cool_to_c']))} degC",
    }
    text = texts.get(phase.name)
    return text() if text is not None else ""


def _segment_action(segment: Segment, plumbing: GasPlumbing) -> str:
    if isinstance(segment, Evacuate):
        return f"evacuate: {plumbing.vacuum_pump} on, {plumbing.vacuum_valve} open until " \
               f"{plumbing.vacuum_channel} <= {_fmt(segment.to_mbar)} mbar"
    if isinstance(segment, Backfill):
        return f"backfill {segment.gas} to {_fmt(segment.to_bar)} bar"
    if isinstance(segment, AdmitH2):
        return f"H2 to {_fmt(segment.to_bar)} bar, top-up below {_fmt(segment.top_up_below_bar)}"
    if isinstance(segment, Vent):
        return f"vent to {_fmt(segment.to_bar)} bar"
    if isinstance(segment, GasOff):
        return "all gas valves closed, pump off"
    if isinstance(segment, Wait):
        return f"wait: {segment.until.describe()} (on timeout: {segment.on_timeout})"
    if isinstance(segment, End):
        return f"end: {segment.action.replace('_', ' ')}"
    return ""


# ============================================================================ the reader


class _Bad(Exception):
    """A value of the wrong type or outside its range."""


_T = TypeVar("_T")
_Conv: TypeAlias = Callable[[object], _T]


class _Reader:
    """One TOML table being read: typed getters that report instead of raising, and remember which
    keys apply so that ``finish`` can flag every other key (with "missing unit" or "did you mean")."""

    def __init__(self, sink: list[SpecError], source: str, data: Mapping[str, object], path: str,
                 noun: str = "key") -> None:
        self.sink = sink
        self.source = source
        self.data = data
        self.path = path
        self.noun = noun
        self.where = ""  # the segment, for messages: 'ramp #2 "to 600"'
        self.accepted: list[str] = []
        self.ok = True
        self._bad: set[str] = set()

    def report(self, key: str | None, message: str) -> None:
        self.ok = False
        if key is not None:
            self._bad.add(key)
        path = self.path if key is None else _join(self.path, key)
        self.sink.append(SpecError(self.source, path, f"{self.where}: {message}" if self.where else message))

    def has_error(self, key: str) -> bool:
        return key in self._bad

    def accept(self, *keys: str) -> None:
        self.accepted.extend(key for key in keys if key not in self.accepted)

    def mentions(self, *keys: str) -> bool:
        """Whether the table has one of ``keys`` misspelt or with a wrong or missing unit: then that key's
        own error ("missing unit", "did you mean") says it all, and "missing" would only repeat it."""
        stems = {_stem(key) for key in keys}
        return any(k not in keys and (_stem(k) in stems or difflib.get_close_matches(k, keys, n=1, cutoff=0.85))
                   for k in self.data)

    def get(self, key: str, conv: _Conv[_T], default: _T | None = None) -> _T | None:
        self.accept(key)
        if key not in self.data:
            return default
        try:
            return conv(self.data[key])
        except _Bad as bad:
            self.report(key, str(bad))
            return default

    def need(self, key: str, conv: _Conv[_T], expected: str) -> _T | None:
        self.accept(key)
        if key not in self.data:
            if not self.mentions(key):
                self.report(key, f"missing: expected {expected}")
            else:
                self.ok = False
            return None
        return self.get(key, conv)

    def table(self, key: str, *, required: bool = False, expected: str = "a table") -> _Reader | None:
        self.accept(key)
        value = self.data.get(key)
        if value is None:
            if required and not self.mentions(key):
                self.report(key, f"missing: expected {expected}")
            elif required:
                self.ok = False
            return None
        if not isinstance(value, dict):
            self.report(key, f"expected {expected}, got {_describe(value)}")
            return None
        sub = _Reader(self.sink, self.source, value, _join(self.path, key))
        sub.where = self.where
        return sub

    def finish(self, elsewhere: Iterable[str] = (), context: str = "") -> None:
        """Every key not read is an error: typos must not pass silently."""
        other = set(elsewhere)
        for key in self.data:
            if key in self.accepted:
                continue
            if key in other and not any(_stem(a) == _stem(key) for a in self.accepted):
                self.report(key, f"does not apply {context}")
            else:
                self.report(key, _unknown_key(self.noun, key, self.accepted))


#: Unit words that end key names (``to_c``, ``rate_c_per_min``); also some that recipes must NOT use,
#: so that ``timeout_s`` is recognised as "timeout with the wrong unit".
_UNIT_WORDS = frozenset({
    "c", "k", "f", "degc", "min", "mins", "h", "hr", "hrs", "s", "sec", "ms", "mbar", "bar", "pa", "kpa", "hpa",
    "psi", "torr", "pct", "percent", "kg", "g", "lb", "per",
})


def _stem(key: str) -> str:
    """The key without its unit words: ``rate_c_per_min`` -> ``rate``, ``to`` -> ``to``."""
    parts = key.split("_")
    cut = len(parts)
    while cut > 1 and parts[cut - 1].lower() in _UNIT_WORDS:
        cut -= 1
    return "_".join(parts[:cut])


def _unknown_key(noun: str, key: str, accepted: Sequence[str]) -> str:
    same = [a for a in accepted if _stem(a) == _stem(key) and a != key]
    if same:
        if key == _stem(key):
            return f"missing unit: did you mean {same[0]}?"
        return f"wrong unit: did you mean {same[0]}? (units are part of the key name: {', '.join(same)})"
    return _unknown(noun, key, accepted)


def _fmt(number: float) -> str:
    """A number as a person writes it: 600 rather than 600.0."""
    return f"{number:.6g}"


# ---- converters: each returns the typed value or raises _Bad saying what was expected ----


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"expected a number, got {_describe(value)}")
    try:
        result = float(value)
    except OverflowError:
        raise _Bad("expected a number, got an integer too large to use") from None
    if not math.isfinite(result):
        raise _Bad(f"expected a finite number, got {_describe(value)}")
    return result


def _number_in(lo: float, hi: float, *, lo_open: bool = False) -> _Conv[float]:
    wanted = f"> {_fmt(lo)} and <= {_fmt(hi)}" if lo_open else f"from {_fmt(lo)} to {_fmt(hi)}"

    def convert(value: object) -> float:
        number = _number(value)
        if number < lo or (lo_open and number == lo) or number > hi:
            raise _Bad(f"expected a number {wanted}, got {_fmt(number)}")
        return number

    return convert


_temperature = _number_in(*TEMPERATURE_C)
_minutes = _number_in(0.0, MINUTES_MAX, lo_open=True)
_bar = _number_in(0.0, 100.0, lo_open=True)
_positive = _number_in(0.0, 1e6, lo_open=True)


def _integer_in(lo: int, hi: int) -> _Conv[int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"expected an integer from {lo} to {hi}, got {_describe(value)}")
        if not lo <= value <= hi:
            raise _Bad(f"expected an integer from {lo} to {hi}, got {_short(value)}")
        return value

    return convert


def _level(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in (0, 1):
        raise _Bad(f"expected 0 or 1, got {_describe(value)}")
    return value


def _text(max_len: int, *, non_empty: bool = False) -> _Conv[str]:
    def convert(value: object) -> str:
        if not isinstance(value, str):
            raise _Bad(f"expected a string, got {_describe(value)}")
        if len(value) > max_len:
            raise _Bad(f"expected at most {max_len} characters, got {len(value)}")
        if non_empty and not value.strip():
            raise _Bad("expected a non-empty string")
        return value

    return convert


def _name(value: object) -> str:
    text = _text(64)(value)
    if not NAME_RE.fullmatch(text):
        raise _Bad(f"expected a channel name (lowercase letters, digits and _), got \"{_short(text)}\"")
    return text


def _choice(options: Sequence[str]) -> _Conv[str]:
    def convert(value: object) -> str:
        if not isinstance(value, str):
            raise _Bad(f"expected one of: {', '.join(options)}; got {_describe(value)}")
        if value not in options:
            raise _Bad(f"expected one of: {', '.join(options)}; got \"{_short(value)}\""
                       f"{_did_you_mean(value, options)}")
        return value

    return convert


_PARAM_CONVERTERS: Mapping[ParamKind, _Conv[float | int | str]] = {
    "number": _positive,
    "count": _integer_in(1, 1000),
    "text": _text(500),
    "gas": _choice(GASES),
}
