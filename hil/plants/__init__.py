"""The plant models the rig can run, and the physical faults each one can be given.

A fault here changes the plant itself (a leak, a lost water supply, an opened lid); faults
of the wiring and the controller (an open thermocouple, a drifting sensor, a stuck valve,
power, hang, freeze) are the same for every plant and live in ``hil.plant_process`` and
``hil.rig``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from hil.plants.hd_reactor import HDParams, HDReactor
from hil.plants.sintering_furnace import SinteringFurnace, SinterParams


class PlantModel(Protocol):
    s: Any
    p: Any       # its parameters (``heater_w``: the nameplate the cabinet's current transducer scales by)

    def step(self, out: Mapping[str, float], dt: float) -> None: ...
    def sensors(self) -> tuple[dict[str, float], dict[str, bool], set[str]]: ...
    def metrics(self) -> dict[str, float]: ...
    def true_values(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class PhysicalFault:
    """Sets ``attribute`` of the plant state: to the fault's ``param`` value, or True when it has none."""

    attribute: str
    param: str | None = None      # the scenario key carrying the magnitude
    unit: str = ""
    cleared: float | bool = False

    def value(self, params: Mapping[str, Any]) -> float | bool:
        return True if self.param is None else float(params[self.param])


@dataclass(frozen=True)
class PlantKind:
    params_type: type
    make: Callable[[Any], PlantModel]
    faults: Mapping[str, PhysicalFault]
    true_quantities: tuple[str, ...] = ()    # the keys of its ``true_values()``

    def build(self, overrides: Mapping[str, float]) -> PlantModel:
        """A plant with some parameters changed; unknown names raise KeyError naming them."""
        names = {f.name for f in dataclasses.fields(self.params_type)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise KeyError(", ".join(unknown))
        return self.make(self.params_type(**overrides))


PLANTS: dict[str, PlantKind] = {
    "hd_reactor": PlantKind(HDParams, HDReactor, {
        "h2_leak": PhysicalFault("room_leak_mol_s_bar", "rate_mol_s_bar", "mol/(s bar)", 0.0),
        "air_leak": PhysicalFault("extra_air_leak_mbar_l_s", "rate_mbar_l_s", "mbar l/s", 0.0),
        "cooling_water_loss": PhysicalFault("cooling_water_lost"),
        "lid_open": PhysicalFault("lid_open"),
        "estop": PhysicalFault("estop_pressed"),
    }, ("charge_temp", "wall_temp", "pressure_bar", "vacuum_mbar", "o2_pct", "room_lel", "room_h2_mol",
        "h2_gas_mol", "h2_absorbed_mol", "cooling_flow", "heater_j")),
    "sintering_furnace": PlantKind(SinterParams, SinteringFurnace, {
        "cooling_water_loss": PhysicalFault("cooling_water_lost"),
        "door_open": PhysicalFault("door_open"),
        "estop": PhysicalFault("estop_pressed"),
    }, ("charge_temp", "elements_temp", "pressure_mbar", "heater_j")),
}

#: What a limiter's ``senses`` (station file) reads, by plant: the quantity of ``true_values()``.
LIMITER_SENSES: dict[str, dict[str, str]] = {
    "hd_reactor": {"wall": "wall_temp", "charge": "charge_temp"},
    "sintering_furnace": {"elements": "elements_temp", "charge": "charge_temp"},
}
