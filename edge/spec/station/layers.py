"""Which layers of defence a station has, read off its validated ``Station`` (``reedge station check``).

A safety engineer signs a station by its layers, not by its keys: is there a contactor a trip can open
when an SSR welds, does each output's feedback get compared with its command, is there a limiter that
needs no software, is the watchdog relay proved. This module only reads the model; what the machine
gives (SCHED_FIFO, mlock) is judged by the command that prints the table (``edge.app.station_cli``).

Some keys are being added by other parts of issue 13 (``supplies``, ``discrepancy``/``agree`` rules,
``watchdog_feedback``, ``max_tick_gap_ms``, ``[limiter.NAME]``, ``local_reset_only``): they are read with
``getattr`` and a fallback, so that a model without them reads as "layer absent", never as a crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from edge.spec.core import RuleSpec
from edge.spec.reader import fmt as _fmt
from edge.spec.station.model import DEADMAN_RULE, Station

Severity = Literal["ok", "warn", "loud"]


@dataclass(frozen=True)
class Layer:
    """One line of the table: the layer, whether the station has it, and what it is (or what its lack means)."""

    key: str                      # stable id for --json
    title: str                    # what a safety engineer calls it
    present: bool
    detail: str                   # what the station has, or plainly what is missing and what that means
    severity: Severity = "ok"     # loud: a hazard nothing else covers; warn: a layer a furnace should have
    items: tuple[str, ...] = field(default_factory=tuple)  # the names involved (outputs, rules, limiters)


def _rules(station: Station, kind: str) -> list[RuleSpec]:
    return [r for r in station.core.rules if r.kind == kind]


def _contactor(station: Station) -> Layer:
    suppliers = [(o.name, tuple(getattr(o, "supplies", ()) or ())) for o in station.core.outputs]
    suppliers = [(name, supplies) for name, supplies in suppliers if supplies]
    if not suppliers:
        return Layer("safety_contactor", "safety contactor", False,
                     "none (no output with `supplies`): a welded heater SSR or H2 valve keeps heating or "
                     "feeding gas through every trip", "loud")
    text = "; ".join(f"{name} supplies {', '.join(supplies)}" for name, supplies in suppliers)
    return Layer("safety_contactor", "safety contactor", True, text, items=tuple(n for n, _ in suppliers))


def _feedback(station: Station) -> Layer:
    rules = _rules(station, "discrepancy")
    if not rules:
        return Layer("output_feedback", "output feedback", False,
                     "no discrepancy rule: a welded contact or a stuck valve is not seen (command and feedback "
                     "are never compared)", "warn")
    watched = [f"{getattr(r, 'output', None) or '?'} <- {r.channel} ({r.name})" for r in rules]
    outputs = tuple(dict.fromkeys(str(getattr(r, "output", None)) for r in rules))
    suppliers = {o.name for o in station.core.outputs if getattr(o, "supplies", ())}
    unchecked = sorted(suppliers - set(outputs))
    detail = ", ".join(watched)
    if unchecked:
        detail += f"; no feedback on the contactor {', '.join(unchecked)} (a welded contactor is not seen)"
    return Layer("output_feedback", "output feedback", True, detail, "warn" if unchecked else "ok", outputs)


def _agreement(station: Station) -> Layer:
    rules = _rules(station, "agree")
    if not rules:
        return Layer("sensor_agreement", "sensor agreement", False,
                     "no agree rule: a drifting control thermocouple is not seen until the safety trip", "warn")
    pairs = [f"{r.channel} ~ {getattr(r, 'channel2', None) or '?'} within {_fmt(r.threshold)}"
             + (f", {_fmt(r.soak_band)} at a settled soak" if r.soak_band is not None else "") + f" ({r.name})"
             for r in rules]
    return Layer("sensor_agreement", "sensor agreement", True, ", ".join(pairs), items=tuple(r.name for r in rules))


def _limiter(station: Station) -> Layer:
    limiters: Sequence[object] = tuple(getattr(station, "limiters", ()) or ())
    if not limiters:
        return Layer("limiter", "independent limiter", False,
                     "none ([limiter.NAME]): a wrong controller (both thermocouples reading low) can overheat "
                     "the furnace; nothing outside the software cuts the heat", "loud")
    parts: list[str] = []
    severity: Severity = "ok"
    for lim in limiters:
        name = getattr(lim, "name", "?")
        alarm = getattr(lim, "alarm_input", None)
        monitored = [r.name for r in station.core.rules if r.kind == "digital" and alarm and r.channel == alarm]
        text = (f"{name}: own TC at {getattr(lim, 'senses', '?')}, {_fmt(getattr(lim, 'setpoint_c', float('nan')))} "
                f"degC, opens {getattr(lim, 'opens', '?')}")
        if monitored:
            text += f", watched by interlocks.{monitored[0]}"
        else:
            text += f", its alarm contact {alarm or '(none)'} is watched by no digital interlock (a trip goes " \
                    "unreported)"
            severity = "warn"
        parts.append(text)
    return Layer("limiter", "independent limiter", True, "; ".join(parts), severity,
                 tuple(getattr(lim, "name", "?") for lim in limiters))


def _watchdog(station: Station) -> Layer:
    core = station.core
    line = core.watchdog_output
    proof = getattr(core, "watchdog_feedback", None)
    if line is None:
        return Layer("watchdog", "watchdog line", False,
                     "no watchdog output: a hung core keeps its outputs (nothing drops the contactor when the "
                     "sampler stops)", "loud")
    if not proof:
        return Layer("watchdog", "watchdog line", True,
                     f"{line} toggled every tick; no proof test (no core.watchdog_feedback): a welded watchdog "
                     "relay is not seen", "warn", (line,))
    return Layer("watchdog", "watchdog line", True,
                 f"{line} toggled every tick; proof test at start-up on {proof} (relay must drop, then pull in, "
                 "before any output leaves its safe level)", items=(line, str(proof)))


def _tick_gap(station: Station) -> Layer:
    gap = float(getattr(station.core, "max_tick_gap_ms", 0.0) or 0.0)
    if gap <= 0:
        return Layer("tick_gap", "tick-gap supervision", False,
                     "off (no core.max_tick_gap_ms): a sampler that stalls between ticks is not a core fault", "warn")
    periods = gap / station.core.period_ms
    return Layer("tick_gap", "tick-gap supervision", True,
                 f"a gap above {_fmt(gap)} ms ({_fmt(round(periods, 1))} periods) between ticks is a core fault")


def _deadman(station: Station) -> Layer:
    rule = next((r for r in station.core.rules if r.name == DEADMAN_RULE), None)
    if rule is None:
        return Layer("deadman", "controller dead-man", False,
                     "none: a hung controller keeps its requests", "loud")
    return Layer("deadman", "controller dead-man", True,
                 f"{_fmt(rule.threshold)} ms without a heartbeat from the scan forces {', '.join(rule.action)} safe",
                 items=(rule.name,))


def _realtime(station: Station) -> Layer:
    core = station.core
    asked = []
    if core.rt_priority > 0:
        asked.append(f"SCHED_FIFO priority {core.rt_priority}")
    if core.lock_memory:
        asked.append("mlockall")
    if not asked:
        return Layer("realtime", "real-time scheduling", False,
                     "not asked (core.rt_priority = 0, lock_memory = false): the sampler shares the normal "
                     "scheduler, ticks can be late under load", "warn")
    missing = [] if core.rt_priority > 0 else ["no rt_priority"]
    if not core.lock_memory:
        missing.append("no lock_memory (page faults can delay a tick)")
    detail = "asked: " + ", ".join(asked) + (f"; {', '.join(missing)}" if missing else "")
    return Layer("realtime", "real-time scheduling", True, detail, "warn" if missing else "ok")


def _remote_reset(station: Station) -> Layer:
    """Present = remote reset refused: a trip is reset by someone standing at the furnace."""
    local_only = tuple(r.name for r in station.core.rules if getattr(r, "local_reset_only", False))
    only = f"; never remotely: {', '.join(local_only)}" if local_only else ""
    if station.allow_remote_reset:
        return Layer("local_reset", "local reset only", False,
                     f"no: [station] allow_remote_reset = true, latched trips may be reset over MQTT by someone "
                     f"who cannot see the furnace{only}", "warn", local_only)
    return Layer("local_reset", "local reset only", True,
                 f"remote resets refused by the core: latched trips are reset at the cabinet (reset input){only}",
                 items=local_only)


def _latch_file(station: Station) -> Layer:
    path = station.core.latch_file or "STATE_DIR/latched-trips (reedge run's default)"
    return Layer("latch_file", "latched trips survive a restart", True, f"kept in {path}")


def safety_layers(station: Station) -> tuple[Layer, ...]:
    """Every layer, in the order of the table: from the hardware that cuts power to the reset policy."""
    return (
        _contactor(station),
        _feedback(station),
        _agreement(station),
        _limiter(station),
        _watchdog(station),
        _tick_gap(station),
        _deadman(station),
        _realtime(station),
        _latch_file(station),
        _remote_reset(station),
    )
