"""Recipes, the model: what a batch does, as frozen types (``recipes/README.md`` is the reference for technicians).

A recipe says *what* a batch does: the numbers of each phase of the process sheet (leak test,
purge, H2 admission, ...) and the temperature programs (segments for the setpoint programmer,
``edge.control.programmer``). The sequencers (``edge.control.hd``, ``edge.control.sintering``)
say *how*.

The file is read by ``edge.spec.recipe_reader`` (the file on its own: every problem at once, as a
``SpecError``) and checked against one station by ``edge.spec.recipe_check`` (the same recipe may
suit one furnace and not another); ``edge.control.profile`` draws its expanded profile. The phase
tables of each process are data (``PHASES``) so that the reader, the check, the profile and the
sequencers agree on them; ``timeline`` is the one walk of a recipe's nominal durations.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias

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
    "Ramp",
    "Recipe",
    "Segment",
    "Span",
    "Step",
    "Threshold",
    "Vent",
    "Wait",
    "describe_segment",
    "phase_spec",
    "segment_minutes",
    "setpoint_after",
    "timeline",
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
#: After an inert backfill (cooling, quench, the safe state) the gas is kept between these (bar abs), a little
#: above atmosphere: a cooling charge draws its pressure down, and seals then draw air onto pyrophoric powder.
INERT_LOW_BAR, INERT_HIGH_BAR = 1.02, 1.05
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
        return "off" if self.mode == "off" else f"{self.mode} {figure(self.band_c)} degC"


@dataclass(frozen=True)
class Threshold:
    """``{ channel = NAME, above = X }`` or ``{ channel = NAME, below = X }``, in the channel's unit."""

    channel: str
    value: float
    above: bool

    def describe(self) -> str:
        return f"{self.channel} {'above' if self.above else 'below'} {figure(self.value)}"


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
        return f"pressure stable within {figure(self.within_bar)} bar for {figure(self.for_min)} min"


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
ParamRole = Literal["", "vacuum", "pressure", "inert_pressure", "h2_pressure", "inert_gas", "temperature",
                    "h2_temperature", "charge"]


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
        Param("backfill_to_bar", "number", "backfill pressure, bar abs", role="inert_pressure"),
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
        Param("backfill_to_bar", "number", "backfill pressure, bar abs", role="inert_pressure"),
        Param("cool_to_c", "number", "the quench ends below this, degC", role="temperature"),
        Param("timeout_min", "number", "the quench must be done within this, min"),
    ), leaves="the quench gas"),
    PhaseSpec("anneal_1", "the program: first (high) anneal, under vacuum", program=True, atmosphere="keeps"),
    PhaseSpec("anneal_2", "the program: second (low) anneal, under vacuum", program=True, atmosphere="keeps"),
    PhaseSpec("cooling", "inert gas and fan, the cooling program", (
        Param("gas", "gas", "the inert cooling gas, e.g. \"Ar\"", role="inert_gas"),
        Param("backfill_to_bar", "number", "backfill pressure, bar abs", role="inert_pressure"),
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


def phase_spec(process: Process, name: str) -> PhaseSpec:
    """The table ``name`` of ``process`` (``PHASES``)."""
    return next(spec for spec in PHASES[process] if spec.name == name)


# ============================================================================ the nominal timeline


@dataclass(frozen=True)
class Span:
    """One stretch of a recipe's nominal timeline: a program segment, or a whole phase without program."""

    phase: Phase
    spec: PhaseSpec
    index: int | None          # the segment's index in the phase's program; None for a phase without program
    segment: Segment | None    # None for a phase without program
    start_min: float
    end_min: float
    sp_start_c: float | None   # None: no setpoint (heaters off)
    sp_end_c: float | None
    temp_start_c: float        # the nominal charge temperature (the setpoint where there is one)
    temp_end_c: float
    worst_case: bool           # the duration is a timeout: the longest it may take


def timeline(recipe: Recipe) -> list[Span]:
    """The recipe with nominal durations: ramps and dwells exactly, waits, gas segments and phases that
    end on a measurement at their timeouts (``worst_case``). The setpoint of a program starts at the
    nominal temperature the previous phase left (the programmer starts at the PV)."""
    spans: list[Span] = []
    t = 0.0
    temp = AMBIENT_C
    sp: float | None = None
    for phase in recipe.phases:
        spec = phase_spec(recipe.process, phase.name)
        if not spec.program:
            minutes, worst = phase_minutes(phase)
            end_temp = float(phase.params["cool_to_c"]) if phase.name == "quench" else temp
            spans.append(Span(phase, spec, None, None, t, t + minutes, None, None, temp, end_temp, worst))
            t, temp, sp = t + minutes, end_temp, None
            continue
        sp = temp  # bumpless: the program starts at the PV
        for index, segment in enumerate(phase.program):
            minutes, known = segment_minutes(segment, sp)
            new_sp = setpoint_after(segment, sp)
            end_temp = new_sp if new_sp is not None else temp
            spans.append(Span(phase, spec, index, segment, t, t + minutes, sp, new_sp, temp, end_temp, not known))
            t, temp, sp = t + minutes, end_temp, new_sp
    return spans


def phase_minutes(phase: Phase) -> tuple[float, bool]:
    """Nominal duration of a phase without program, and whether it is a worst case (a timeout)."""
    p = phase.params
    if phase.name == "leak_test":
        return float(p["timeout_min"]) + float(p["hold_min"]), True
    if phase.name == "absorption":
        return float(p["max_duration_h"]) * 60.0, True
    if "timeout_min" in p:
        return float(p["timeout_min"]), True
    return 0.0, False


# ============================================================================ wording


def figure(number: float) -> str:
    """A number as a person writes it: 600 rather than 600.0, at most six significant digits."""
    return f"{number:.6g}"


def a_or_an(word: str) -> str:
    """The article a person would say before it: "an hd_reactor", "an evacuate", "a wait"."""
    return "an" if word[:1] in "aeiouh" else "a"
