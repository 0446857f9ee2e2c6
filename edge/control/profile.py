"""The expanded profile of a recipe: its nominal timeline (``edge.spec.recipe.timeline``) as rows a person
reads, each with what happens in it (``reedge recipe show`` prints them and draws them)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edge.spec.plumbing import GasPlumbing
from edge.spec.recipe import (
    AdmitH2,
    Backfill,
    End,
    Evacuate,
    GasOff,
    Phase,
    Recipe,
    Segment,
    Vent,
    Wait,
    figure,
    timeline,
)
from edge.spec.station import Station

__all__ = ["ProfileStep", "expand_profile"]


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
    """The recipe as a timeline with nominal durations (``timeline``), each row saying what happens in it;
    with a station, gas segments name its valves and channels."""
    plumbing = station.plumbing if station is not None else GasPlumbing()
    steps: list[ProfileStep] = []
    for span in timeline(recipe):
        if span.segment is None:
            kind, label, action = "phase", span.spec.meaning, _phase_action(span.phase)
        else:
            kind, label, action = span.segment.kind, span.segment.label, _segment_action(span.segment, plumbing)
        steps.append(ProfileStep(span.phase.name, span.index, kind, label, span.start_min, span.end_min,
                                 span.sp_start_c, span.sp_end_c, span.temp_start_c, span.temp_end_c, action,
                                 span.worst_case))
    return steps


def _phase_action(phase: Phase) -> str:
    p = phase.params

    def num(key: str) -> str:
        return figure(float(p[key]))

    texts: Mapping[str, Callable[[], str]] = {
        "load": lambda: f"charge {num('charge_kg')} kg" + (f": {p['feed']}" if p.get("feed") else ""),
        "leak_test": lambda: f"evacuate to {num('evacuate_to_mbar')} mbar, isolate, rise over "
                             f"{num('hold_min')} min <= {num('max_rise_mbar_per_min')} mbar/min",
        "purge": lambda: f"evacuate to {num('evacuate_to_mbar')} mbar / {p['gas']} to "
                         f"{num('backfill_to_bar')} bar until O2 <= {num('o2_max_pct')} % "
                         f"(max {p['max_cycles']} cycles), then evacuate",
        "h2_admission": lambda: f"H2 to {num('pressure_bar')} bar (charge below "
                                f"{num('max_start_temperature_c')} degC)",
        "absorption": lambda: f"H2 top-up below {num('top_up_below_bar')} bar until stable within "
                              f"{num('stable_within_bar')} bar for {num('stable_for_min')} min",
        "unload": lambda: f"unload below {num('max_temperature_c')} degC",
        "pump_down": lambda: f"pump down to {num('to_mbar')} mbar",
        "quench": lambda: f"heat off, {p['gas']} to {num('backfill_to_bar')} bar, fan on, until "
                          f"{num('cool_to_c')} degC",
    }
    text = texts.get(phase.name)
    return text() if text is not None else ""


def _segment_action(segment: Segment, plumbing: GasPlumbing) -> str:
    if isinstance(segment, Evacuate):
        return f"evacuate: {plumbing.vacuum_pump} on, {plumbing.vacuum_valve} open until " \
               f"{plumbing.vacuum_channel} <= {figure(segment.to_mbar)} mbar"
    if isinstance(segment, Backfill):
        return f"backfill {segment.gas} to {figure(segment.to_bar)} bar"
    if isinstance(segment, AdmitH2):
        return f"H2 to {figure(segment.to_bar)} bar, top-up below {figure(segment.top_up_below_bar)}"
    if isinstance(segment, Vent):
        return f"vent to {figure(segment.to_bar)} bar"
    if isinstance(segment, GasOff):
        return "all gas valves closed, pump off"
    if isinstance(segment, Wait):
        return f"wait: {segment.until.describe()} (on timeout: {segment.on_timeout})"
    if isinstance(segment, End):
        return f"end: {segment.action.replace('_', ' ')}"
    return ""
