"""Recipes, the check against a station: does this recipe suit this furnace?

The same recipe may suit one furnace and not another, so ``check_recipe`` gives a list of
``RecipeProblem`` rather than raising; a run starts only when it is empty. It checks the station's
equipment limits, channels, outputs and gas plumbing, walking the recipe as the vessel would go
through it (see recipes/README.md, "What validate checks"). The recipe file on its own is
``edge.spec.recipe_reader``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.spec.plumbing import GasPlumbing
from edge.spec.reader import unknown
from edge.spec.recipe import (
    AMBIENT_C,
    ATMOSPHERE_BAR,
    INERT_HIGH_BAR,
    INERT_LOW_BAR,
    STATION_KIND_OF,
    AdmitH2,
    Backfill,
    Condition,
    Evacuate,
    GasOff,
    Level,
    Phase,
    PhaseSpec,
    PressureStable,
    Ramp,
    Recipe,
    Segment,
    Step,
    Vent,
    Wait,
    a_or_an,
    describe_segment,
    figure,
    phase_spec,
    segment_minutes,
    timeline,
)
from edge.spec.station import EquipmentLimits, Station

__all__ = ["RecipeProblem", "check_recipe"]


@dataclass(frozen=True)
class RecipeProblem:
    """A way in which a recipe does not fit a station (``check_recipe``)."""

    key_path: str
    message: str

    def __str__(self) -> str:
        return f"{self.key_path}: {self.message}"


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
            spec = phase_spec(self.recipe.process, phase.name)
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
                vessel.why = f"{phase.name} ends at {figure(level)} mbar ({phase.name}.{spec.vacuum_key})"
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
            kind = self.station.identity.kind
            self.report("recipe.process", f"{a_or_an(r.process)} {r.process} recipe runs on {a_or_an(want)} {want}; "
                                          f"station {self.station.identity.station_id} is {a_or_an(kind)} {kind}")
        channel = self.channels.get(r.control_channel)
        if channel is None:
            self.report("recipe.control_channel", unknown("channel", r.control_channel, self.channels)
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
        steps = timeline(self.recipe)
        total_h = (steps[-1].end_min if steps else 0.0) / 60.0
        if total_h > limit_h:
            worst = " (waits and gas steps counted at their timeouts)" if any(s.worst_case for s in steps) else ""
            self.report("recipe", f"the batch may take {total_h:.1f} h{worst}, more than the station's "
                                  f"max_batch_duration_h ({figure(limit_h)} h): shorten the program or the timeouts")

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
            elif param.role == "inert_pressure":
                self.check_pressure(key, number)
                if number < INERT_HIGH_BAR:
                    self.report(key, f"{figure(number)} bar is below {figure(INERT_HIGH_BAR)} bar abs: after the "
                                     f"backfill the gas is kept at {figure(INERT_LOW_BAR)}-{figure(INERT_HIGH_BAR)} "
                                     f"bar abs (above atmosphere, so that no air is drawn in as the charge cools): "
                                     f"backfill to at least {figure(INERT_HIGH_BAR)}")
            elif param.role == "h2_pressure":
                self.check_gas(key, "H2", inert=False)
                self.check_pressure(key, number, h2=True)
            elif param.role in ("temperature", "h2_temperature") and number > self.max_temp:
                self.report(key, f"{figure(number)} degC is above the station's {self.max_temp_name} "
                                 f"({figure(self.max_temp)} degC)")
            if param.role == "h2_temperature" and lim.max_h2_admission_temperature_c is not None \
                    and number > lim.max_h2_admission_temperature_c:
                self.report(key, f"{figure(number)} degC: H2 may be admitted only below the station's "
                                 f"max_h2_admission_temperature_c ({figure(lim.max_h2_admission_temperature_c)} degC)")
            if param.role == "charge" and lim.max_charge_kg is not None and number > lim.max_charge_kg:
                self.report(key, f"{figure(number)} kg is more than the station's max_charge_kg "
                                 f"({figure(lim.max_charge_kg)} kg)")
        if phase.name == "absorption" and "top_up_below_bar" in phase.params:
            target = self.recipe.params("h2_admission").get("pressure_bar")
            top_up = float(phase.params["top_up_below_bar"])
            if target is not None and top_up >= float(target):
                self.report(f"{phase.name}.top_up_below_bar",
                            f"{figure(top_up)} bar must be below h2_admission.pressure_bar "
                            f"({figure(float(target))} bar): the top-up refills from below it to that pressure")
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
                report("to_c", f"{figure(segment.to_c)} degC is above the station's {self.max_temp_name} "
                               f"({figure(self.max_temp)} degC)")
            heating = segment.to_c > vessel.temp_c
            if isinstance(segment, Ramp):
                minutes, _ = segment_minutes(segment, vessel.temp_c)
                rate = segment.rate_c_per_min
                if rate is None:
                    rate = abs(segment.to_c - vessel.temp_c) / minutes if minutes > 0 else 0.0
                key = "rate_c_per_min" if segment.rate_c_per_min is not None else "duration_min"
                how = "" if segment.rate_c_per_min is not None else \
                    f" ({figure(vessel.temp_c)} to {figure(segment.to_c)} degC in {figure(minutes)} min)"
                if heating and rate > lim.max_ramp_c_per_min:
                    report(key, f"heating at {figure(round(rate, 3))} degC/min{how} is faster than the station's "
                                f"max_ramp_c_per_min ({figure(lim.max_ramp_c_per_min)} degC/min)")
                cooling_limit = lim.max_cooling_c_per_min
                if not heating and cooling_limit is not None and rate > cooling_limit:
                    report(key, f"cooling at {figure(round(rate, 3))} degC/min{how} is faster than the station's "
                                f"max_cooling_c_per_min ({figure(cooling_limit)} degC/min)")
            elif heating and segment.to_c - vessel.temp_c > lim.max_ramp_c_per_min:
                report("to_c", f"a step up from {figure(vessel.temp_c)} to {figure(segment.to_c)} degC heats as fast "
                               f"as the heater can, beyond the station's max_ramp_c_per_min "
                               f"({figure(lim.max_ramp_c_per_min)} degC/min): use a ramp (a step may rise by at most "
                               "one minute's worth of the ramp limit)")
            if heating and not vessel.vacuum_ok and vessel.reported != vessel.why:  # once per cause
                vessel.reported = vessel.why
                report(None, f"heating to {figure(segment.to_c)} degC before the vacuum reached the station's "
                             f"min_vacuum_before_heating_mbar ({figure(lim.min_vacuum_before_heating_mbar)} mbar): "
                             f"before it, {vessel.why}. Start with an evacuate segment (to_mbar <= "
                             f"{figure(lim.min_vacuum_before_heating_mbar)}) or a wait for "
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
            vessel.why = f"the vessel was evacuated to {figure(segment.to_mbar)} mbar only ({path})"
        elif isinstance(segment, Backfill | AdmitH2):
            gas = segment.gas if isinstance(segment, Backfill) else "H2"
            self.check_gas(f"{path}.gas" if isinstance(segment, Backfill) else path, gas, inert=False, where=where)
            self.need_channel(path, self.plumbing.pressure_channel, "plumbing.pressure_channel", where)
            self.check_pressure(f"{path}.to_bar", segment.to_bar, h2=gas == "H2", where=where)
            if gas == "H2" and lim.max_h2_admission_temperature_c is not None \
                    and vessel.temp_c > lim.max_h2_admission_temperature_c:
                report(None, f"admits H2 with the setpoint at {figure(vessel.temp_c)} degC, above the station's "
                             f"max_h2_admission_temperature_c ({figure(lim.max_h2_admission_temperature_c)} degC)")
            vessel.vacuum_ok = False
            vessel.why = f"{gas} was let in ({path})"
        elif isinstance(segment, Vent):
            self.need_output(path, where, self.plumbing.vent_valve, "plumbing.vent_valve")
            self.need_channel(path, self.plumbing.pressure_channel, "plumbing.pressure_channel", where)
            if segment.to_bar <= ATMOSPHERE_BAR:
                report("to_bar", f"{figure(segment.to_bar)} bar: a vent to the stack cannot bring the vessel below "
                                 f"atmospheric pressure (about {figure(ATMOSPHERE_BAR)} bar abs); vent to e.g. 1.05")
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
            self.report(key, f"{where}: " + unknown("channel", until.channel, self.channels) + " in this station")
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
            self.report(value_key, f"{where}: {figure(until.value)} {unit} is outside channel '{channel.name}''s range "
                                   f"({figure(channel.range_lo)} to {figure(channel.range_hi)} {unit}): it could never "
                                   "read that")
            return
        mbar = until.value if channel.name == pl.vacuum_channel else \
            until.value * 1000.0 if channel.name == pl.pressure_channel else None
        if mbar is not None and not until.above:
            self.check_vacuum_level(value_key, mbar, where)
            if mbar <= lim.min_vacuum_before_heating_mbar:
                vessel.vacuum_ok = True
                vessel.why = f"the vacuum reached {figure(mbar)} mbar ({path})"
        if channel.name == pl.pressure_channel and until.above and until.value > lim.max_pressure_bar:
            self.report(value_key, f"{where}: waits for {figure(until.value)} bar, above the station's "
                                   f"max_pressure_bar ({figure(lim.max_pressure_bar)} bar abs)")
        temperature = channel.kind == "thermocouple" or channel.unit == "degC"
        if temperature and until.above and until.value > lim.max_temperature_for(channel.name):
            self.report(value_key, f"{where}: waits for {figure(until.value)} degC, above the station's limit "
                                   f"({figure(lim.max_temperature_for(channel.name))} degC)")

    # ---- shared checks ----

    def check_vacuum_level(self, key: str, mbar: float, where: str = "") -> None:
        best = self.limits.best_vacuum_mbar
        if best is not None and mbar < best:
            self.report(key, f"{where + ': ' if where else ''}{figure(mbar)} mbar is a better vacuum than the "
                             f"station's pumps reach (best_vacuum_mbar {figure(best)} mbar): it would never be reached")

    def check_pressure(self, key: str, bar: float, *, h2: bool = False, where: str = "") -> None:
        lim = self.limits
        prefix = f"{where}: " if where else ""
        if h2 and lim.max_h2_pressure_bar is not None and bar > lim.max_h2_pressure_bar:
            self.report(key, f"{prefix}H2 at {figure(bar)} bar is above the station's max_h2_pressure_bar "
                             f"({figure(lim.max_h2_pressure_bar)} bar abs)")
        elif bar > lim.max_pressure_bar:
            self.report(key, f"{prefix}{figure(bar)} bar is above the station's max_pressure_bar "
                             f"({figure(lim.max_pressure_bar)} bar abs)")

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
