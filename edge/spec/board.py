"""Board files: what a single-board computer offers the controller, as data (``boards/*.toml``).

A board file names the SBC's GPIO chips and the lines a station may use on each (header pin or
terminal, BCM name, direction), its SPI, I2C and serial buses with the GPIO lines each one takes,
and which driver serves each resource: the C core's ``gpiochip`` and ``spidev`` drivers, the
``sim`` register file of the virtual rig, or the Python side (named ``edge.io`` in board files:
``edge.devices``, sensor nodes and Modbus RTU on serial ports). ``boards/README.md`` is the technician's reference.

Why a separate file: the station file says *what* is wired (channel ``lid_closed`` is input 0 of
driver ``cabinet``, which reads line 5 of ``/dev/gpiochip0``); the board file says *what exists*
on the hardware. ``check_station_wiring`` holds one against the other so that a line the board
lacks, a line used twice (also by two drivers, or by a GPIO driver and an SPI bus), the wrong chip
or an SPI device that is not there is refused when the station is loaded, with the key path of
the offending value, instead of at start-up on the plant. Resources (this module) stay apart from
the drivers that use them (``cext/``), as in labgrid.

Board files are read through the one reader kernel (``edge.spec.reader``): a syntax error names its line
and column, every other problem its key path, all of them at once. This module never touches the hardware
(see ``edge.devices.node.usb`` for what is plugged in).
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from edge.spec import resources
from edge.spec.reader import (
    Bad,
    Problems,
    SpecError,
    Table,
    choice,
    did_you_mean,
    integer_in,
    join,
    list_of,
    matching,
    parse_toml,
    read_text,
    short,
    text,
    unknown,
)

__all__ = [
    "BOARDS_DIR",
    "Board",
    "Bus",
    "DriverUse",
    "GpioChip",
    "Line",
    "SimRegisterFile",
    "Watchdog",
    "board_names",
    "check_station_wiring",
    "load_board",
    "parse_board",
]

#: Where ``[station] board = "NAME"`` is looked up: ``boards/NAME.toml`` of the shipped data.
BOARDS_DIR = resources.boards_dir()

Direction = Literal["any", "input", "output"]
BusKind = Literal["spi", "i2c", "serial"]

#: Which driver may serve each kind of resource. The C core has no I2C driver yet: I2C buses are
#: declared so that their lines are known, served by nothing ("none") or by the Python side.
SERVED_BY: dict[str, tuple[str, ...]] = {
    "gpiochips": ("gpiochip",),
    "spi": ("spidev",),
    "i2c": ("none", "edge.io"),
    "serial": ("edge.io", "none"),
    "sim": ("sim",),
}
SECTIONS = ("board", "gpiochips", "spi", "i2c", "serial", "sim", "watchdog")
WATCHDOG_MAX_S = 3600       # no SoC watchdog counts longer; systemd's RuntimeWatchdogSec is set within it
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
LINE_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
CHIP_PATH_RE = re.compile(r"/dev/gpiochip[0-9]{1,3}")
DEV_RE = re.compile(r"/dev/[A-Za-z0-9_./*:+-]{1,200}")
PIN_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,16}")
SIM_IO_MAX = 64  # EC_DRV_MAX_IO: inputs / outputs one driver instance offers


# ============================================================================ types


@dataclass(frozen=True)
class Line:
    """One GPIO line a station may use: its offset on the chip and where a technician finds it."""

    name: str            # BCM name ("GPIO17") or the terminal's label ("DI3")
    offset: int          # line offset on the chip (what the gpiochip driver's inputs/outputs list)
    pin: str             # header pin ("11") or terminal ("X2.4")
    direction: Direction = "any"
    function: str = ""   # what the board wires to it ("isolated input 24 V", "SPI0 MOSI")

    def where(self) -> str:
        """``GPIO17, header pin 11`` / ``DI3, terminal X2.4``: how errors and tables name a line."""
        return f"{self.name}, {'header pin' if self.pin.isdigit() else 'terminal'} {self.pin}"


@dataclass(frozen=True)
class GpioChip:
    """A GPIO character device. ``older_path``: its node on older kernels (Pi 5: /dev/gpiochip4)."""

    key: str
    path: str
    label: str
    lines: tuple[Line, ...]
    older_path: str | None = None
    note: str = ""

    def paths(self) -> tuple[str, ...]:
        return (self.path,) if self.older_path is None else (self.path, self.older_path)

    def line_at(self, offset: int) -> Line | None:
        return next((line for line in self.lines if line.offset == offset), None)


@dataclass(frozen=True)
class Bus:
    """An SPI, I2C or serial bus: its device nodes and the GPIO lines it takes when enabled."""

    kind: BusKind
    key: str
    devices: tuple[str, ...]
    driver: str
    chip: str | None = None          # the GpioChip.key its lines are on; None = no GPIO lines (USB)
    lines: tuple[int, ...] = ()
    enable: str = ""                 # how it is switched on (config.txt line, overlay)
    note: str = ""


@dataclass(frozen=True)
class SimRegisterFile:
    """The virtual rig's register file (cext/sim_regs.h) as seen by one sim driver."""

    analog_inputs: int
    digital_inputs: int
    outputs: int


@dataclass(frozen=True)
class Watchdog:
    """The SoC's hardware watchdog: the kernel driver that serves it and the longest timeout it counts
    (the kernel refuses a longer one, so systemd's RuntimeWatchdogSec/RebootWatchdogSec must stay within)."""

    driver: str          # kernel module, e.g. "bcm2835_wdt"
    max_s: int
    enable: str = ""     # how it is switched on (config.txt line)


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    source: pathlib.Path
    chips: tuple[GpioChip, ...] = ()
    buses: tuple[Bus, ...] = ()
    sim: SimRegisterFile | None = None
    note: str = ""
    watchdog: Watchdog | None = None
    config_txt_filters: tuple[str, ...] = ()   # the config.txt model filters ([pi4], [cm4]...) it matches

    def drivers(self) -> tuple[str, ...]:
        """The core driver types this board can serve, in a stable order."""
        found = ["sim"] if self.sim is not None else []
        if self.chips:
            found.append("gpiochip")
        if any(b.kind == "spi" for b in self.buses):
            found.append("spidev")
        return tuple(found)

    def chip_for(self, path: str) -> GpioChip | None:
        return next((c for c in self.chips if path in c.paths()), None)

    def spi_bus_for(self, device: str) -> Bus | None:
        return next((b for b in self.buses if b.kind == "spi" and device in b.devices), None)

    def buses_of(self, kind: BusKind) -> tuple[Bus, ...]:
        return tuple(b for b in self.buses if b.kind == kind)


# ============================================================================ loading


def board_names(boards_dir: pathlib.Path | None = None) -> list[str]:
    """The boards a station may name: the stems of ``boards/*.toml``, sorted."""
    folder = BOARDS_DIR if boards_dir is None else boards_dir
    return sorted(p.stem for p in folder.glob("*.toml"))


def load_board(name: str, boards_dir: pathlib.Path | None = None) -> Board:
    """``boards/NAME.toml``, validated. An unknown name lists the boards there, with a did-you-mean."""
    folder = BOARDS_DIR if boards_dir is None else boards_dir
    path = folder / f"{name}.toml"
    if not NAME_RE.fullmatch(name) or not path.is_file():
        raise SpecError(os.fspath(folder), "", unknown("board", name, board_names(folder)))
    return parse_board(read_text(path, "board file"), os.fspath(path))


def parse_board(text: str, source: str) -> Board:
    """Validate board-file text; every problem is reported at once with its key path."""
    problems = Problems(source)
    top = Table(problems, parse_toml(text, source), "", noun="section")
    top.accept(*SECTIONS)
    board = top.table("board", required=True, expected="a [board] table")
    name = description = None
    note = ""
    filters: tuple[str, ...] = ()
    if board is not None:
        name = board.need("name", _ident, "the board's name, the same as the file's name")
        description = board.need("description", _text, "one line saying what the board is")
        note = board.get("note", _text, "")
        filters = tuple(board.get("config_txt_filters", _filters) or ())
        board.finish()
    stem = pathlib.Path(source).stem
    if name is not None and name != stem:
        problems.add("board.name", f"\"{name}\" differs from the file's name \"{stem}\": a station names the file")

    chips = tuple(_chip(key, chip_t) for key, chip_t in _named(top, "gpiochips"))
    buses: list[Bus] = []
    kinds: tuple[BusKind, ...] = ("spi", "i2c", "serial")
    for kind in kinds:
        buses.extend(_bus(kind, key, bus_t, chips) for key, bus_t in _named(top, kind))
    sim_t = top.table("sim", expected="a [sim] table")
    sim = _sim(sim_t) if sim_t is not None else None
    watchdog_t = top.table("watchdog", expected="a [watchdog] table")
    watchdog = _watchdog(watchdog_t) if watchdog_t is not None else None
    top.finish()
    _check_board(problems, chips)
    if not chips and sim is None and not buses:
        problems.add("", "the board declares nothing: expected [gpiochips.*], [spi.*], [serial.*] or [sim]")
    problems.raise_if_any(SECTIONS)
    return Board(name or stem, description or "", pathlib.Path(source), chips, tuple(buses), sim, note, watchdog,
                 filters)


# ---- values: the kernel's converters with the board file's patterns

_ident = matching(NAME_RE, "expected lowercase letters, digits, - and _ (32 at most)")
_text = text(500)
_chip_path = matching(CHIP_PATH_RE, "expected a GPIO character device such as \"/dev/gpiochip0\"")
_line_name = matching(LINE_NAME_RE, "expected a letter, then letters, digits or _ (e.g. GPIO17, DI3)")
_pin = matching(PIN_RE, "expected a header pin number or terminal label such as \"11\" or \"X2.4\"")
_direction = choice(("any", "input", "output"))
_offsets = list_of(integer_in(0, 65535), "line offsets", max_len=65536, unique=False)
_devices = list_of(matching(DEV_RE, "expected a device path such as \"/dev/spidev0.0\""), "device paths",
                   max_len=64, unique=False)
_sim_count = integer_in(0, SIM_IO_MAX)
_filters = list_of(matching(re.compile(r"(pi|cm)[0-9a-z+]{1,4}"), "expected a config.txt model filter such as "
                                                                 "\"pi4\" or \"cm4\""), "model filters", max_len=8)
_module = matching(re.compile(r"[a-z0-9_]{1,64}"), "expected a kernel module name such as \"bcm2835_wdt\"")


def _some_devices(value: object) -> list[str]:
    devices = _devices(value)
    if not devices:
        raise Bad("expected a non-empty array of device paths, got an empty array")
    return devices


# ---- sections


def _named(top: Table, section: str) -> list[tuple[str, Table]]:
    """The well-named NAME tables of [section.NAME]; a bad name or a non-table is reported and skipped."""
    found = top.table(section, expected=f"a [{section}] table")
    if found is None:
        return []
    return [(key, t) for key, t in found.named_tables(_ident)
            if t is not None and not found.has_error(key)]


def _chip(key: str, t: Table) -> GpioChip:
    t.accept("path", "older_path", "label", "driver", "note", "lines")
    _driver(t, "gpiochips")
    where = t.need("path", _chip_path, "the chip's device node, e.g. \"/dev/gpiochip0\"") or ""
    older = t.get("older_path", _chip_path)
    label = t.need("label", _text, "the chip's label as gpiodetect shows it") or ""
    note = t.get("note", _text, "")
    lines: list[Line] = []
    lines_t = t.table("lines", expected="a table NAME = { line = N, pin = \"P\" }")
    if lines_t is not None:
        by_offset: dict[int, str] = {}
        for name, spec in lines_t.named_tables(_line_name):
            if spec is None or lines_t.has_error(name):
                continue
            line = _line(name, spec)
            if line is None:
                continue
            if line.offset in by_offset:
                lines_t.report(name, f"line {line.offset} is already declared as {by_offset[line.offset]}: "
                                     "a line has one name")
                continue
            by_offset[line.offset] = name
            lines.append(line)
    t.finish()
    return GpioChip(key, where, label, tuple(lines), older, note)


def _line(name: str, t: Table) -> Line | None:
    offset = t.need("line", integer_in(0, 65535), "the line offset on the chip (0..65535)")
    pin = t.need("pin", _pin, "the header pin or terminal the line comes out on")
    direction = t.get("direction", _direction, "any")
    function = t.get("function", _text, "")
    t.finish()
    if offset is None:
        return None
    return Line(name, offset, pin or "?", cast(Direction, direction), function)


def _bus(kind: BusKind, key: str, t: Table, chips: Sequence[GpioChip]) -> Bus:
    t.accept("devices", "driver", "chip", "lines", "enable", "note")
    driver = _driver(t, kind)
    devices = tuple(t.need("devices", _some_devices, "a non-empty array of device paths") or ())
    chip = t.get("chip", _ident)
    lines = tuple(t.get("lines", _offsets) or ())
    if lines and chip is None and not t.has_error("chip"):
        t.report("chip", "missing: expected the [gpiochips.NAME] its lines are on")
    if chip is not None:
        found = next((c for c in chips if c.key == chip), None)
        if found is None:
            t.report("chip", unknown("chip", chip, [c.key for c in chips]))
        else:
            for index, offset in enumerate(lines):
                if found.line_at(offset) is None:
                    t.problems.add(f"{join(t.path, 'lines')}[{index}]",
                                   f"line {offset} is not declared on chip '{chip}' (declare it under "
                                   f"[gpiochips.{chip}.lines]: a technician must find every pin a bus takes)")
    enable = t.get("enable", _text, "")
    note = t.get("note", _text, "")
    t.finish()
    return Bus(kind, key, devices, driver, chip, lines, enable, note)


def _sim(t: Table) -> SimRegisterFile:
    t.accept("driver", "analog_inputs", "digital_inputs", "outputs", "note")
    _driver(t, "sim")
    counts = [t.need(key, _sim_count, f"an integer from 0 to {SIM_IO_MAX}") or 0
              for key in ("analog_inputs", "digital_inputs", "outputs")]
    t.get("note", _text, "")
    t.finish()
    return SimRegisterFile(*counts)


def _watchdog(t: Table) -> Watchdog:
    t.accept("driver", "max_s", "enable", "note")
    driver = t.need("driver", _module, "the kernel module of the watchdog, e.g. \"bcm2835_wdt\"") or ""
    max_s = t.need("max_s", integer_in(1, WATCHDOG_MAX_S),
                   f"the longest timeout the watchdog counts, in whole seconds (1..{WATCHDOG_MAX_S})") or 1
    enable = t.get("enable", _text, "")
    t.get("note", _text, "")
    t.finish()
    return Watchdog(driver, max_s, enable)


def _driver(t: Table, section: str) -> str:
    allowed = SERVED_BY[section]
    return t.need("driver", choice(allowed), f"which driver serves it: {', '.join(allowed)}") or allowed[0]


def _check_board(problems: Problems, chips: Sequence[GpioChip]) -> None:
    """Line names are unique on the board; no two chips share a device node."""
    names: dict[str, str] = {}
    nodes: dict[str, str] = {}
    for chip in chips:
        for line in chip.lines:
            if line.name in names:
                problems.add(join(join(join("gpiochips", chip.key), "lines"), line.name),
                             f"the name is already used on chip '{names[line.name]}'")
            names.setdefault(line.name, chip.key)
        for node in chip.paths():
            if node and node in nodes:
                problems.add(join("gpiochips", chip.key), f"{node} is already the node of chip '{nodes[node]}'")
            nodes.setdefault(node, chip.key)


# ============================================================================ station against board


@dataclass(frozen=True)
class DriverUse:
    """What one station driver asks of the board (from its parameters), and where it says so."""

    name: str                      # [drivers.NAME]
    type: str                      # sim, gpiochip, spidev
    chip: str = ""                 # gpiochip: the chip parameter as written
    inputs: tuple[int, ...] = ()
    outputs: tuple[int, ...] = ()
    dev: str = ""                  # spidev: the device node


def _chip_node(chip: str) -> str:
    """The C driver's rule: a bare name ("gpiochip0") means /dev/<name>."""
    return chip if chip.startswith("/") else f"/dev/{chip}"


def check_station_wiring(board: Board, uses: Iterable[DriverUse]) -> list[tuple[str, str]]:
    """Every problem as (key path in the station file, message); empty when the station fits the board.

    Checks: the board serves each driver type; each gpiochip driver names one of the board's chips
    and only lines declared on it, in their direction; each spidev driver names one of the board's
    SPI devices, one converter per device; no line is requested twice, whether by two GPIO drivers
    or by a GPIO driver and an SPI bus a spidev driver enables.
    """
    problems: list[tuple[str, str]] = []
    uses = list(uses)
    served = board.drivers()
    # (chip key, offset) -> who took it, for the "used twice" checks
    taken: dict[tuple[str, int], str] = {}
    spi_devices: dict[str, str] = {}

    # buses first: an SPI bus takes its lines whoever comes first in the file
    for use in uses:
        if use.type != "spidev" or "spidev" not in served:
            continue
        at = join(join("drivers", use.name), "dev")
        bus = board.spi_bus_for(use.dev)
        if bus is None:
            devices = [d for b in board.buses_of("spi") for d in b.devices]
            problems.append((at, f"board '{board.name}' has no SPI device '{short(use.dev)}' "
                                 f"(expected one of: {', '.join(devices)}){did_you_mean(use.dev, devices)}"))
            continue
        if use.dev in spi_devices:
            problems.append((at, f"{use.dev} is already used by driver '{spi_devices[use.dev]}': one converter "
                                 "per chip select"))
            continue
        spi_devices[use.dev] = use.name
        if bus.chip is not None:
            for offset in bus.lines:
                taken.setdefault((bus.chip, offset), f"SPI bus {bus.key} (driver '{use.name}', {use.dev})")

    for use in uses:
        base = join("drivers", use.name)
        if use.type not in served:
            offered = ", ".join(served) or "none"
            hint = (" (sim drivers belong to board = \"sim\": the virtual rig)" if use.type == "sim" else "")
            problems.append((join(base, "type"), f"board '{board.name}' has no {use.type} resources (its drivers: "
                                                 f"{offered}){hint}"))
            continue
        if use.type == "gpiochip":
            problems.extend(_check_gpio_use(board, use, base, taken))
    return problems


def _check_gpio_use(board: Board, use: DriverUse, base: str, taken: dict[tuple[str, int], str]) -> list[
        tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    node = _chip_node(use.chip)
    chip = board.chip_for(node)
    if chip is None:
        nodes = [p for c in board.chips for p in c.paths()]
        problems.append((join(base, "chip"), f"board '{board.name}' has no GPIO chip {short(node)} (expected one of: "
                                             f"{', '.join(nodes)}){did_you_mean(node, nodes)}"))
        return problems
    for key, offsets, direction in (("inputs", use.inputs, "input"), ("outputs", use.outputs, "output")):
        for index, offset in enumerate(offsets):
            at = f"{join(base, key)}[{index}]"
            line = chip.line_at(offset)
            if line is None:
                problems.append((at, _missing_line(board, chip, offset)))
                continue
            if line.direction not in ("any", direction):
                problems.append((at, f"line {offset} ({line.where()}) is {line.direction}-only on board "
                                     f"'{board.name}' ({line.function or 'fixed by the hardware'}): it cannot be an "
                                     f"{direction}"))
                continue
            owner = taken.get((chip.key, offset))
            if owner is not None:
                problems.append((at, f"line {offset} ({line.where()}) is already taken by {owner}"))
                continue
            taken[(chip.key, offset)] = f"driver '{use.name}' ({key})"
    return problems


def _missing_line(board: Board, chip: GpioChip, offset: int) -> str:
    """A line this chip lacks; if another chip of the board has it, say which (the wrong chip)."""
    elsewhere = [c for c in board.chips if c is not chip and c.line_at(offset) is not None]
    usable = ", ".join(str(line.offset) for line in sorted(chip.lines, key=lambda x: x.offset)) or "none"
    message = (f"line {offset} is not a usable line of chip {chip.path} ({chip.label}) on board '{board.name}' "
               f"(its lines: {usable})")
    if elsewhere:
        other = elsewhere[0]
        line = other.line_at(offset)
        assert line is not None
        message += f"; {line.where()} is line {offset} of {other.path} ({other.label}): wrong chip?"
    return message
