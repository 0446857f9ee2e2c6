"""[limiter.NAME]: the independent excess-temperature limiter, as the hardware it is.

A listed limit controller with its own thermocouple, wired into the safety chain: above its setpoint it
latches and opens a contact in series with the safety contactor's coil, by itself, whatever the controller
does. The controller only watches its alarm contact (a digital input) and can never reset it: the reset is
at the limiter. The station file says what the limiter's thermocouple measures (``senses``), where it trips,
which output's coil it opens and which input reads its alarm contact; the rig models it from this section.
"""

from __future__ import annotations

from collections.abc import Mapping

from edge.spec.core import ChannelSpec, OutputSpec
from edge.spec.limiter import LIMITER_SENSES, LimiterSpec
from edge.spec.reader import Table as _Table
from edge.spec.reader import choice as _choice
from edge.spec.reader import lookup as _lookup
from edge.spec.reader import number_in as _number_in
from edge.spec.station.model import EquipmentLimits, StationIdentity
from edge.spec.station.values import _name, _named_tables


def read_limiters(top: _Table, identity: StationIdentity | None, channels: Mapping[str, ChannelSpec | None],
                  outputs: Mapping[str, OutputSpec | None],
                  limits: EquipmentLimits | None) -> tuple[LimiterSpec, ...]:
    """Every [limiter.NAME]; a broken one is reported and left out. A setpoint a recipe may reach is an error:
    the limiter would trip in normal running."""
    section = top.table("limiter", expected="[limiter.NAME] tables, one per excess-temperature limiter")
    if section is None:
        return ()
    found: list[LimiterSpec] = []
    inputs: dict[str, str] = {}
    for name, t in _named_tables(section):
        if t is None:
            continue
        senses_known = LIMITER_SENSES.get(identity.kind, ()) if identity is not None else ()
        senses = t.need("senses", _choice(senses_known or sorted({s for v in LIMITER_SENSES.values() for s in v})),
                        "where the limiter's own thermocouple sits: " + ", ".join(senses_known or ("wall",
                                                                                                   "elements")))
        setpoint = t.need("setpoint_c", _number_in(0.0, 2500.0, lo_open=True), "the limiter's trip point, degC")
        if setpoint is not None and limits is not None and setpoint <= limits.max_temperature_c:
            t.report("setpoint_c", f"{setpoint:g} degC is not above limits.max_temperature_c "
                     f"({limits.max_temperature_c:g}): the limiter would trip in a normal recipe")
        opens = t.need("opens", _name, "the output whose coil the limiter's contact opens (the safety contactor)")
        if opens is not None and not t.has_error("opens"):
            output = _lookup(t, "opens", opens, outputs, "output")
            supplies = getattr(output, "supplies", None)
            if output is not None and supplies is not None and not supplies:
                t.report("opens", f"'{opens}' supplies nothing: the limiter must open the contactor that feeds the "
                         "heater (an output with `supplies`)")
            if output is not None and output.safe_level != 0:
                t.report("opens", f"'{opens}' has safe_level {output.safe_level}: the contactor the limiter opens "
                         "must be off (0) when safe")
        alarm = t.need("alarm_input", _name, "the digital channel that reads the limiter's alarm contact")
        if alarm is not None and not t.has_error("alarm_input"):
            channel = _lookup(t, "alarm_input", alarm, channels, "channel")
            if channel is not None and channel.kind != "digital":
                t.report("alarm_input", f"'{alarm}' is a {channel.kind} channel: the alarm contact is a digital input")
            elif alarm in inputs:
                t.report("alarm_input", f"'{alarm}' is already the alarm input of limiter '{inputs[alarm]}'")
            inputs.setdefault(alarm, name)
        t.finish()
        if t.ok and None not in (senses, setpoint, opens, alarm):
            assert senses is not None and setpoint is not None and opens is not None and alarm is not None
            found.append(LimiterSpec(name, senses, setpoint, opens, alarm))
    return tuple(found)
