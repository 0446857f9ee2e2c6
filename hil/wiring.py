"""From a plant's sensor values to the raw signals a field device puts on the wire, and back.

The station file says which register each named channel reads and how it scales; the
wiring inverts that, so a plant writes thermocouple EMF in mV (with the cold junction the
station compensates with) and 4-20 mA loops in mA, exactly as real transmitters would.
"""

from __future__ import annotations

from collections.abc import Mapping

from edge.spec.core import ChannelSpec, CoreSpec
from edge.thermo import celsius_to_emf
from hil.regfile import RegisterFile


class Wiring:
    def __init__(self, core: CoreSpec) -> None:
        self.channels: dict[str, ChannelSpec] = {c.name: c for c in core.channels if c.driver is not None}
        self.injected = tuple(c.name for c in core.channels if c.kind == "injected")
        self.lines = {o.name: o.line for o in core.outputs}

    def raw(self, ch: ChannelSpec, value: float, cj_c: float) -> float:
        if ch.kind == "thermocouple":
            assert ch.tc_type is not None
            value = float(celsius_to_emf(ch.tc_type, value)) - float(celsius_to_emf(ch.tc_type, cj_c))
        return (value - ch.offset) / ch.scale

    def publish(self, regs: RegisterFile, analog: Mapping[str, float], digital: Mapping[str, bool],
                broken: set[str] | frozenset[str] = frozenset(), cj_c: float = 21.0) -> None:
        """Write every wired channel the plant knows; names the station lacks are skipped."""
        for name, value in analog.items():
            ch = self.channels.get(name)
            if ch is None or ch.kind == "digital":
                continue
            cj = analog.get(ch.cold_junction, cj_c) if ch.cold_junction else ch.cj_fixed_c
            regs.set_ai(ch.input, self.raw(ch, value, cj), fault=name in broken)
        for name, level in digital.items():
            ch = self.channels.get(name)
            if ch is not None and ch.kind == "digital":
                regs.set_di(ch.input, level != ch.invert)

    def set_digital(self, regs: RegisterFile, name: str, level: bool) -> None:
        ch = self.channels.get(name)
        if ch is not None:
            regs.set_di(ch.input, level != ch.invert)

    def outputs(self, regs: RegisterFile) -> dict[str, int]:
        return {name: regs.do(line) for name, line in self.lines.items()}
