"""Modbus register maps: how a measurement is laid out in registers, the built-in profiles, the read plan.

Why a module of its own: the map is data about instruments (what the station file's ``profile`` names and a
``custom`` map describes), while ``edge.devices.modbus`` is the bus that reads it.

Register maps (addresses are 0-based, as on the wire; a manual's "30001" is input register 0):

``sdm630``: Eastron SDM630 Modbus V2, input registers (function 4), IEEE 754 float32, high word first::

    0x0000  voltage_l1_v   V    gauge    phase 1 line to neutral
    0x0002  voltage_l2_v   V    gauge
    0x0004  voltage_l3_v   V    gauge
    0x0006  current_l1_a   A    gauge    phase 1 current
    0x0008  current_l2_a   A    gauge
    0x000A  current_l3_a   A    gauge
    0x0034  power_w        W    gauge    total system power
    0x0048  energy_kwh     kWh  counter  total import active energy (float: no rollover unless configured)

  read as three requests, one per contiguous block (0x0000 x 12, 0x0034 x 2, 0x0048 x 2): the
  gaps between them are not read, since a meter may refuse registers it does not document.

``reedge_mfc``: OUR OWN reference map for a generic mass-flow meter or controller. It is *not* a
vendor's map: it is what the HIL emulator speaks and what a gateway or a configurable device can be
set to. A real vendor map (Bronkhorst, Alicat, ...) goes in as ``profile = "custom"``. Input
registers (function 4), read in one request of 5 registers::

    0x0000  flow_nl_min  float32 (high word first)  NL/min  gauge
    0x0002  total_nl     uint32 (high word first) in 0.001 NL  counter, wraps at 2**32 * 0.001 = 4294967.296 NL
    0x0004  status       uint16  0 = ok, anything else = device fault
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

RegisterType = Literal["float32", "uint32", "int32", "uint16", "int16"]
WordOrder = Literal["big", "little"]
MeasurementKind = Literal["gauge", "counter", "status"]

# words and the struct format of the big-endian bytes (Modbus sends each word high byte first)
_FORMATS: dict[str, tuple[int, str]] = {
    "float32": (2, ">f"), "uint32": (2, ">I"), "int32": (2, ">i"), "uint16": (1, ">H"), "int16": (1, ">h"),
}
REGISTER_TYPES: tuple[RegisterType, ...] = ("float32", "uint32", "int32", "uint16", "int16")
WORD_ORDERS: tuple[WordOrder, ...] = ("big", "little")
KINDS: tuple[MeasurementKind, ...] = ("gauge", "counter", "status")
FUNCTIONS = (3, 4)                 # read holding registers, read input registers
MAX_BLOCK_REGISTERS = 125          # the most one read request may ask for (Modbus application protocol)
REQUEST_BYTES = 8                  # address, function, start (2), count (2), CRC (2)
ANSWER_OVERHEAD_BYTES = 5          # address, function, byte count, CRC (2)


# ---------------------------------------------------------------- registers


@dataclass(frozen=True)
class Register:
    """One measurement of an instrument's map: where it is, how it is encoded, what it means."""

    function: int                 # 3 = holding registers, 4 = input registers
    address: int                  # 0-based, as on the wire
    type: RegisterType
    word_order: WordOrder = "big"  # "big": high word first; bytes within a word are always high first
    scale: float = 1.0            # value = raw * scale
    unit: str = ""
    kind: MeasurementKind = "gauge"
    rollover: float | None = None  # counters: the modulus at which the reading wraps, in the scaled unit

    @property
    def words(self) -> int:
        return _FORMATS[self.type][0]

    def decode(self, words: Sequence[int]) -> float:
        return float(decode_words(words, self.type, self.word_order)) * self.scale


def decode_words(words: Sequence[int], type_: RegisterType, word_order: WordOrder = "big") -> float | int:
    """The raw value of 16-bit register contents; ValueError if the word count does not fit the type."""
    n, fmt = _FORMATS[type_]
    if len(words) != n or any(not 0 <= w <= 0xFFFF for w in words):
        raise ValueError(f"{type_} takes {n} register(s) of 0..65535, got {list(words)}")
    ordered = list(words) if word_order == "big" else list(reversed(words))
    value: float | int = struct.unpack(fmt, struct.pack(f">{n}H", *ordered))[0]
    return value


def default_rollover(type_: RegisterType, scale: float) -> float | None:
    """An integer counter wraps at 2**bits raw counts; a float one has no modulus of its own."""
    if type_ == "float32":
        return None
    return float(2 ** (16 * _FORMATS[type_][0])) * abs(scale)


def _f32(address: int, unit: str, kind: MeasurementKind = "gauge") -> Register:
    return Register(4, address, "float32", unit=unit, kind=kind)


PROFILES: Mapping[str, Mapping[str, Register]] = {
    "sdm630": {
        "voltage_l1_v": _f32(0x0000, "V"),
        "voltage_l2_v": _f32(0x0002, "V"),
        "voltage_l3_v": _f32(0x0004, "V"),
        "current_l1_a": _f32(0x0006, "A"),
        "current_l2_a": _f32(0x0008, "A"),
        "current_l3_a": _f32(0x000A, "A"),
        "power_w": _f32(0x0034, "W"),
        "energy_kwh": _f32(0x0048, "kWh", "counter"),
    },
    "reedge_mfc": {
        "flow_nl_min": _f32(0x0000, "NL/min"),
        "total_nl": Register(4, 0x0002, "uint32", scale=0.001, unit="NL", kind="counter",
                             rollover=default_rollover("uint32", 0.001)),
        "status": Register(4, 0x0004, "uint16", kind="status"),
    },
}
CUSTOM = "custom"
PROFILE_NAMES = (*PROFILES, CUSTOM)


@dataclass(frozen=True)
class Block:
    """One read request: contiguous registers of one function code, and the measurements in them."""

    function: int
    start: int
    count: int
    measurements: tuple[tuple[str, Register], ...]

    @property
    def has_status(self) -> bool:
        return any(r.kind == "status" for _, r in self.measurements)

    def values(self, words: Sequence[int]) -> dict[str, float]:
        """Each measurement's scaled value from this block's answer."""
        if len(words) != self.count:
            raise ValueError(f"a block of {self.count} registers, got {len(words)}")
        return {name: r.decode(words[r.address - self.start:r.address - self.start + r.words])
                for name, r in self.measurements}


def plan_blocks(registers: Mapping[str, Register]) -> tuple[Block, ...]:
    """Fewest requests for a map: touching registers of one function share one (up to 125 registers).

    Gaps are never bridged (a device may answer exception 02 for a register it does not have).
    Blocks holding a status word come first: they decide whether the rest of the round is used.
    """
    blocks: list[Block] = []
    ordered = sorted(registers.items(), key=lambda item: (item[1].function, item[1].address))
    members: list[tuple[str, Register]] = []
    for name, reg in ordered:
        if members:
            first = members[0][1]
            end = max(r.address + r.words for _, r in members)
            if (reg.function == first.function and reg.address <= end
                    and max(end, reg.address + reg.words) - first.address <= MAX_BLOCK_REGISTERS):
                members.append((name, reg))
                continue
            blocks.append(_block(members))
        members = [(name, reg)]
    if members:
        blocks.append(_block(members))
    return tuple(sorted(blocks, key=lambda b: not b.has_status))


def _block(members: list[tuple[str, Register]]) -> Block:
    start = members[0][1].address
    end = max(r.address + r.words for _, r in members)
    return Block(members[0][1].function, start, end - start, tuple(members))
