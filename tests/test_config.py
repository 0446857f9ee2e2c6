"""The station file loader: the example loads as intended, every bad station is refused with
the key path and a clear message, all problems are reported at once, and no input at all,
however mangled, makes it raise anything but SpecError.

Bad stations are made by editing the parsed example (a dict) and writing it back as TOML, so
each case states only what is wrong with it.
"""

from __future__ import annotations

import ast
import copy
import datetime
import math
import pathlib
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.control.pid import Pid
from edge.spec import station as config
from edge.spec.accounting import AccountingConfig
from edge.spec.plumbing import GasPlumbing
from edge.spec.reader import SpecError
from edge.spec.station import Station, load_station, parse_station

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "stations" / "hd_reactor_sim.toml"
EXAMPLE_TEXT = EXAMPLE.read_text(encoding="utf-8")
EXAMPLE_DOC: dict[str, Any] = tomllib.loads(EXAMPLE_TEXT)
SOURCE = "stations/hd.toml"

Doc = dict[str, Any]
Edit = Callable[[Doc], None]


# ---------------------------------------------------------------- a minimal TOML writer for the tests


def dump_toml(doc: Doc) -> str:
    """Top-level scalars, then one [section] per table with inline values (arrays of tables inline)."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for key, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{_key(key)}]")
            lines.extend(f"{_key(k)} = {_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return _string(key)


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    raise TypeError(type(value))


def test_writer_round_trips_the_example() -> None:
    assert tomllib.loads(dump_toml(EXAMPLE_DOC)) == EXAMPLE_DOC


# ---------------------------------------------------------------- helpers to make bad stations


def edited(*edits: Edit) -> str:
    """The example with edits. A case that wires real drivers (gpiochip, spidev) drops the example's
    board = "sim", which refuses them: these cases test the drivers' own checks; the checks against a
    board's lines are tests/test_boards.py's."""
    doc = copy.deepcopy(EXAMPLE_DOC)
    for edit in edits:
        edit(doc)
    if any(isinstance(d, dict) and d.get("type") != "sim" for d in doc.get("drivers", {}).values()):
        doc["station"].pop("board", None)
    return dump_toml(doc)


def _parent(doc: Doc, path: str) -> tuple[Any, str]:
    *head, last = path.split(".")
    node: Any = doc
    for part in head:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, last


def put(path: str, value: Any) -> Edit:
    def edit(doc: Doc) -> None:
        node, last = _parent(doc, path)
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return edit


def drop(path: str) -> Edit:
    def edit(doc: Doc) -> None:
        node, last = _parent(doc, path)
        del node[int(last) if isinstance(node, list) else last]
    return edit


def move_to_end(section: str, name: str) -> Edit:
    def edit(doc: Doc) -> None:
        doc[section][name] = doc[section].pop(name)
    return edit


def problems(*edits: Edit) -> list[SpecError]:
    with pytest.raises(SpecError) as caught:
        parse_station(edited(*edits), SOURCE)
    return list(caught.value.errors)


def loads(*edits: Edit) -> Station:
    return parse_station(edited(*edits), SOURCE)


# ---------------------------------------------------------------- the example


@pytest.fixture(scope="module")
def station() -> Station:
    return load_station(EXAMPLE)


def test_example_identity_and_switches(station: Station) -> None:
    assert station.identity == config.StationIdentity(
        "pilot-line", "hd-01", "hd_reactor", station.identity.description)
    assert station.allow_remote_reset is False
    assert station.source == EXAMPLE


def test_example_core_settings(station: Station) -> None:
    core = station.core
    assert (core.period_ms, core.rt_priority, core.lock_memory) == (1.0, 50, True)
    assert (core.sample_ring, core.event_ring) == (4096, 1024)
    assert core.reset_channel == "reset_button"
    assert core.watchdog_output == "watchdog_line"
    assert [d.name for d in core.drivers] == ["plant"]
    assert core.drivers[0].type == "sim"
    assert core.drivers[0].param_string() == "path=/dev/shm/reedge-hd-01.regs"


def test_example_channels_in_file_order_with_sim_inputs_in_order(station: Station) -> None:
    channels = {c.name: c for c in station.core.channels}
    assert list(channels)[:3] == ["cj_temp", "chamber_temp", "chamber_temp_safety"]
    analog = [c.input for c in station.core.channels if c.kind in ("analog", "thermocouple")]
    digital = [c.input for c in station.core.channels if c.kind == "digital"]
    assert analog == list(range(len(analog)))
    assert digital == sorted(digital) and channels["limiter_ok"].input == 6   # di 4, 5: contract (issue 13)
    tc = channels["chamber_temp"]
    assert (tc.kind, tc.tc_type, tc.cold_junction, tc.median_n, tc.unit) == ("thermocouple", "K", "cj_temp", 5, "degC")
    assert channels["chamber_temp_safety"].input != tc.input
    pressure = channels["chamber_pressure"]
    assert pressure.unit == "bar"
    assert pressure.scale * 4 + pressure.offset == pytest.approx(0.0)    # 4 mA = 0 bar abs
    assert pressure.scale * 20 + pressure.offset == pytest.approx(10.0)  # 20 mA = 10 bar abs
    assert channels["chamber_vacuum"].kind == "injected"
    assert channels["chamber_vacuum"].driver is None
    assert channels["chamber_vacuum"].max_age_ms > 0
    assert station.channel_units["h2_room"] == "%LEL"
    assert station.channel_units["cooling_water_flow"] == "l/min"


def test_example_outputs_and_safe_levels(station: Station) -> None:
    outputs = {o.name: o for o in station.core.outputs}
    assert [o.line for o in station.core.outputs] == list(range(len(outputs)))
    assert outputs["heater"].safe_level == 0
    assert outputs["h2_inlet_valve"].safe_level == 0
    assert outputs["vent_valve"].safe_level == 1
    assert outputs["cooling_water_valve"].safe_level == 1
    assert outputs["alarm_beacon"].safe_level == 1
    assert outputs["heater"].duty_cycle_ms == 20.0


def test_example_interlocks(station: Station) -> None:
    rules = {r.name: r for r in station.core.rules}
    leak = rules["h2_leak"]
    assert (leak.kind, leak.channel, leak.threshold, leak.latch) == ("high", "h2_room", 25.0, True)
    # the safety contactor is added by the loader: it supplies the heater and the H2 valve
    assert set(leak.action) == {"h2_inlet_valve", "heater", "vent_valve", "alarm_beacon", "safety_contactor"}
    assert rules["chamber_overtemp"].channel == "chamber_temp_safety"
    assert {rules["chamber_tc_break"].kind, rules["safety_tc_break"].kind} == {"fault"}
    assert rules["lid_open"].kind == "digital" and rules["lid_open"].threshold == 1.0
    assert rules["cooling_water_low"].debounce_ms > 0
    for rule in station.core.rules:
        assert "watchdog_line" not in rule.action, rule.name


def test_example_builtin_deadman_covers_every_output_but_the_watchdog(station: Station) -> None:
    deadman = station.core.rules[-1]
    assert (deadman.name, deadman.kind, deadman.channel) == ("controller_deadman", "deadman", None)
    assert deadman.threshold == 2000.0 and deadman.latch
    assert set(deadman.action) == {o.name for o in station.core.outputs} - {"watchdog_line"}


def test_example_permissives(station: Station) -> None:
    by_output: dict[str, list[tuple[str, str, float, float]]] = {}
    for p in station.core.permissives:
        by_output.setdefault(p.output, []).append((p.channel, p.cmp, p.value, p.value2))
    assert ("o2_pct", "lt", 1.0, 0.0) in by_output["h2_inlet_valve"]
    assert ("chamber_pressure", "in", -0.1, 2.0) in by_output["h2_inlet_valve"]
    assert ("lid_closed", "eq", 1.0, 0.0) in by_output["h2_inlet_valve"]
    assert ("cooling_water_ok", "eq", 1.0, 0.0) in by_output["heater"]
    assert set(by_output) == {"h2_inlet_valve", "heater"}


def test_example_limits(station: Station) -> None:
    limits = station.limits
    assert limits.max_temperature_c == 900.0
    assert limits.max_ramp_c_per_min == 10.0
    assert limits.max_h2_pressure_bar == 2.0
    assert limits.allowed_gases == ("H2", "Ar")
    assert limits.gas_allowed("H2") and not limits.gas_allowed("N2")
    assert limits.max_temperature_for("chamber_temp") == 900.0


def test_station_is_frozen(station: Station) -> None:
    with pytest.raises(AttributeError):
        station.allow_remote_reset = True  # type: ignore[misc]


def test_core_limits_mirror_the_c_header() -> None:
    header = (ROOT / "cext" / "edge_core.h").read_text() + (ROOT / "cext" / "driver.h").read_text()
    defines = dict(re.findall(r"^#define (EC_\w+) (-?\d+)", header, re.M))
    for name in ("EC_MAX_DRIVERS", "EC_MAX_CHANNELS", "EC_MAX_OUTPUTS", "EC_MAX_RULES", "EC_MAX_PERMISSIVES",
                 "EC_NAME_LEN", "EC_MEDIAN_MAX", "EC_DRV_MAX_IO"):
        assert getattr(config, name) == int(defines[name]), name


def test_minimal_sintering_furnace_without_hydrogen() -> None:
    text = """
    [station]
    id = "sf-01"
    site = "pilot-line"
    kind = "sintering_furnace"
    [core]
    deadman_ms = 1000
    [drivers.plant]
    type = "sim"
    path = "/dev/shm/sf.regs"
    [channels.zone_temp]
    kind = "thermocouple"
    driver = "plant"
    input = 0
    tc_type = "S"
    cold_junction_c = 25.0
    [outputs.heater]
    driver = "plant"
    line = 0
    safe_level = 0
    [interlocks.zone_overtemp]
    kind = "high"
    channel = "zone_temp"
    threshold = 1150.0
    action = ["heater"]
    [limits]
    max_temperature_c = 1100.0
    zone_max_temperature_c = { zone_temp = 1080.0 }
    max_ramp_c_per_min = 5.0
    max_pressure_bar = 1.5
    min_vacuum_before_heating_mbar = 0.01
    allowed_gases = ["Ar"]
    """
    station = parse_station(text, "sf.toml")
    assert station.limits.max_h2_pressure_bar is None
    assert station.limits.max_temperature_for("zone_temp") == 1080.0
    assert station.core.channels[0].cold_junction is None
    assert station.core.channels[0].cj_fixed_c == 25.0
    assert [r.name for r in station.core.rules] == ["zone_overtemp", "controller_deadman"]
    assert station.core.rules[-1].action == ("heater",)


# ---------------------------------------------------------------- valid variations


def test_action_all_means_every_output_but_the_watchdog() -> None:
    station = loads(put("interlocks.h2_leak.action", "all"))
    rule = next(r for r in station.core.rules if r.name == "h2_leak")
    assert set(rule.action) == {o.name for o in station.core.outputs} - {"watchdog_line"}


def test_explicit_deadman_action() -> None:
    station = loads(put("core.deadman_action", ["heater", "h2_inlet_valve"]))
    # the contactor that supplies them is added by the loader
    assert station.core.rules[-1].action == ("heater", "h2_inlet_valve", "safety_contactor")


def test_shared_input_allowed_when_both_say_so() -> None:
    station = loads(
        put("channels.chamber_temp_safety.input", 1),
        put("channels.chamber_temp_safety.shared_input", True),
        put("channels.chamber_temp.shared_input", True),
    )
    assert [c.input for c in station.core.channels[1:3]] == [1, 1]


def test_integer_accepted_where_a_number_is_expected() -> None:
    station = loads(put("core.period_ms", 2))
    assert station.core.period_ms == 2.0 and isinstance(station.core.period_ms, float)


def test_gpiochip_params_and_initial_high_from_safe_levels() -> None:
    station = loads(
        put("drivers.cabinet", {"type": "gpiochip", "chip": "gpiochip0", "inputs": [5, 6], "outputs": [17, 27],
                                "bias": "pull-up", "active_low_outputs": [27]}),
        put("channels.lid_closed.driver", "cabinet"),
        put("outputs.heater.driver", "cabinet"),
        put("outputs.heater.line", 0),
        put("outputs.alarm_beacon.driver", "cabinet"),
        put("outputs.alarm_beacon.line", 1),
    )
    cabinet = station.core.drivers[1]
    # the beacon (safe level 1) is on offset 27: it must come up high, the heater (safe 0) low
    assert cabinet.param_string() == (
        "chip=gpiochip0;inputs=5,6;outputs=17,27;bias=pull-up;active_low_outputs=27;initial_high=27")


def test_spidev_params() -> None:
    station = loads(
        put("drivers.tc1", {"type": "spidev", "dev": "/dev/spidev0.0", "chip": "max31856", "tc": "K",
                            "mains": 50, "avg": 4}),
        put("channels.spare_temp", {"kind": "analog", "driver": "tc1", "input": 0, "unit": "degC"}),
    )
    tc1 = station.core.drivers[1]
    assert tc1.param_string() == "dev=/dev/spidev0.0;chip=max31856;tc=K;avg=4;mains=50"


# ---------------------------------------------------------------- one bad station per case


@dataclass(frozen=True)
class Bad:
    id: str
    edits: tuple[Edit, ...]
    key_path: str
    fragment: str
    count: int | None  # how many problems the case must give; None: several, on purpose


def bad(id: str, key_path: str, fragment: str, *edits: Edit, count: int | None = 1) -> Bad:
    """One mistake, where it must be reported, and what the message must say."""
    return Bad(id, edits, key_path, fragment, count)


def _many_channels(n: int) -> Edit:
    def edit(doc: Doc) -> None:
        for i in range(n):
            doc["channels"][f"node_{i}"] = {"kind": "injected", "unit": "V", "max_age_ms": 1000}
    return edit


def _many_drivers(n: int) -> Edit:
    def edit(doc: Doc) -> None:
        for i in range(n):
            doc["drivers"][f"rig_{i}"] = {"type": "sim", "path": f"/dev/shm/r{i}"}
    return edit


BAD_STATIONS = [
    # references
    bad("unknown channel in a rule", "interlocks.chamber_overtemp.channel",
        "unknown channel 'chamber_tmp' (expected one of: cj_temp, chamber_temp,",
        put("interlocks.chamber_overtemp.channel", "chamber_tmp")),
    bad("unknown output in an action", "interlocks.h2_leak.action",
        "[1]: unknown output 'heeter'", put("interlocks.h2_leak.action", ["h2_inlet_valve", "heeter"])),
    bad("unknown driver", "channels.lid_closed.driver", "unknown driver 'plnt'",
        put("channels.lid_closed.driver", "plnt")),
    bad("unknown output in deadman_action", "core.deadman_action", "unknown output 'pump'",
        put("core.deadman_action", ["pump"])),
    bad("unknown reset input", "core.reset_input", "unknown channel 'reset'", put("core.reset_input", "reset")),
    bad("unknown watchdog output", "core.watchdog_output", "unknown output 'watchdog'",
        put("core.watchdog_output", "watchdog")),
    # names
    bad("channel and output with the same name", "outputs.heater",
        "the name 'heater' is already used by channels.heater",
        put("channels.heater", {"kind": "digital", "driver": "plant", "input": 9})),
    bad("interlock named like a channel", "interlocks.h2_room", "already used by channels.h2_room",
        put("interlocks.h2_room", {"kind": "fault", "channel": "h2_room", "action": ["heater"]})),
    bad("bad channel name", "channels.Chamber", "expected a lowercase letter",
        put("channels.Chamber", {"kind": "injected", "unit": "V", "max_age_ms": 10})),
    bad("name too long for the core", "outputs." + "x" * 32, "31 characters at most",
        put("outputs." + "x" * 32, {"driver": "plant", "line": 20, "safe_level": 0})),
    bad("reserved interlock name", "interlocks.controller_deadman", "reserved for the built-in dead-man",
        put("interlocks.controller_deadman", {"kind": "fault", "channel": "h2_room", "action": ["heater"]})),
    bad("reserved output name 'all'", "outputs.all", "reserved",
        put("outputs.all", {"driver": "plant", "line": 20, "safe_level": 0})),
    # types and unknown keys
    bad("typo in a key", "channels.chamber_temp.medain", "did you mean 'median'?",
        move_to_end("channels", "chamber_temp"), drop("channels.chamber_temp.median"),
        put("channels.chamber_temp.medain", 5)),
    bad("unknown section", "interlock", "unknown section 'interlock'",
        put("interlock", {"x": {"kind": "fault"}})),
    bad("key that does not apply to the kind", "channels.lid_closed.scale", "does not apply to digital channels",
        put("channels.lid_closed.scale", 2.0)),
    bad("boolean is not a number", "interlocks.chamber_overpressure.threshold", "expected a number, got boolean true",
        put("interlocks.chamber_overpressure.threshold", True)),
    bad("float is not an integer", "outputs.heater.line", "expected an integer from 0 to 63, got number 5.0",
        put("outputs.heater.line", 5.0)),
    bad("string is not a number", "core.deadman_ms", "expected a number, got string \"2s\"",
        put("core.deadman_ms", "2s")),
    bad("integer too large for a number", "interlocks.h2_leak.threshold", "integer too large",
        put("interlocks.h2_leak.threshold", 10**400)),
    bad("date is not a number", "interlocks.h2_leak.threshold", "expected a number, got date/time 1979-05-27",
        put("interlocks.h2_leak.threshold", datetime.date(1979, 5, 27))),
    bad("infinite threshold", "interlocks.h2_leak.threshold", "expected a finite number",
        put("interlocks.h2_leak.threshold", math.inf)),
    bad("missing required key", "channels.h2_room.unit", "missing: expected the engineering unit",
        drop("channels.h2_room.unit")),
    bad("missing section", "limits", "missing: expected [limits]", drop("limits")),
    bad("section of the wrong type", "core", "expected [core] with at least deadman_ms, got integer 5",
        put("core", 5)),
    bad("item of the wrong type", "outputs.heater", "expected a table [outputs.heater], got integer 3",
        put("outputs.heater", 3)),
    # core
    bad("period 0", "core.period_ms", "expected a number from 0.1 to 1000, got 0", put("core.period_ms", 0)),
    bad("period too long", "core.period_ms", "got 5000", put("core.period_ms", 5000)),
    bad("ring size not a power of two", "core.sample_ring", "expected a power of two", put("core.sample_ring", 1000)),
    bad("ring size too small", "core.event_ring", "from 16 to 65536", put("core.event_ring", 8)),
    bad("deadman missing", "core.deadman_ms", "missing: expected the controller dead-man", drop("core.deadman_ms")),
    bad("deadman shorter than two periods", "core.deadman_ms", "expected a number from 20 to 600000",
        put("core.period_ms", 10.0), put("core.deadman_ms", 15)),
    bad("reset input not digital", "core.reset_input", "must be a digital channel",
        put("core.reset_input", "h2_room")),
    # drivers
    bad("unknown driver type", "drivers.plant.type", "expected one of: sim, gpiochip, spidev",
        put("drivers.plant.type", "simulator")),
    bad("sim driver without path", "drivers.plant.path", "missing: expected the register file",
        drop("drivers.plant.path")),
    bad("relative sim path", "drivers.plant.path", "expected an absolute path", put("drivers.plant.path", "hd.regs")),
    bad("param a driver of that type does not take", "drivers.plant.chip", "does not apply to sim drivers",
        put("drivers.plant.chip", "/dev/gpiochip0")),
    bad("gpiochip without inputs or outputs", "drivers.cabinet.inputs", "inputs = [line offsets] and/or outputs",
        put("drivers.cabinet", {"type": "gpiochip", "chip": "/dev/gpiochip0"})),
    bad("gpiochip input beyond its list", "channels.lid_closed.input", "has digital inputs 0..1",
        put("drivers.cabinet", {"type": "gpiochip", "chip": "/dev/gpiochip0", "inputs": [5, 6]}),
        put("channels.lid_closed.driver", "cabinet"), put("channels.lid_closed.input", 2)),
    bad("analog channel on a gpiochip", "channels.h2_room.input", "has no analog inputs",
        put("drivers.cabinet", {"type": "gpiochip", "chip": "/dev/gpiochip0", "inputs": [5]}),
        put("channels.h2_room.driver", "cabinet"), put("channels.h2_room.input", 0)),
    bad("thermocouple on a spidev converter", "channels.chamber_temp.kind", "delivers analog inputs",
        put("drivers.tc1", {"type": "spidev", "dev": "/dev/spidev0.0", "chip": "max31856", "tc": "K"}),
        put("channels.chamber_temp.driver", "tc1"), put("channels.chamber_temp.input", 0)),
    bad("max31856-only setting on a max31855", "drivers.tc1.mains", "applies to the max31856 only",
        put("drivers.tc1", {"type": "spidev", "dev": "/dev/spidev0.0", "chip": "max31855", "tc": "K", "mains": 50})),
    bad("max31855 polled too fast", "drivers.tc1.poll_ms", "expected an integer from 100 to 60000, got 50",
        put("drivers.tc1", {"type": "spidev", "dev": "/dev/spidev0.0", "chip": "max31855", "tc": "K", "poll_ms": 50})),
    bad("type B on a max31855", "drivers.tc1.tc", "there is no type-B MAX31855",
        put("drivers.tc1", {"type": "spidev", "dev": "/dev/spidev0.0", "chip": "max31855", "tc": "B"})),
    bad("max31856 averaging not a power of two", "drivers.tc1.avg", "expected one of 1, 2, 4, 8, 16, got integer 3",
        put("drivers.tc1", {"type": "spidev", "dev": "/dev/spidev0.0", "chip": "max31856", "tc": "K", "avg": 3})),
    bad("initial_high written by hand", "drivers.cabinet.initial_high", "set automatically from the outputs'",
        put("drivers.cabinet", {"type": "gpiochip", "chip": "/dev/gpiochip0", "outputs": [17], "initial_high": [17]})),
    bad("active-low line that is not an input", "drivers.cabinet.active_low_inputs", "[7] are not in inputs",
        put("drivers.cabinet", {"type": "gpiochip", "chip": "/dev/gpiochip0", "inputs": [5],
                                "active_low_inputs": [7]})),
    bad("input inverted twice", "channels.lid_closed.invert", "would cancel it out",
        put("drivers.cabinet", {"type": "gpiochip", "chip": "/dev/gpiochip0", "inputs": [5, 6],
                                "active_low_inputs": [6]}),
        put("channels.lid_closed.driver", "cabinet"), put("channels.lid_closed.input", 1),
        put("channels.lid_closed.invert", True)),
    bad("gpiochip request over 64 lines", "drivers.cabinet.outputs", "at most 64 lines",
        put("drivers.cabinet", {"type": "gpiochip", "chip": "/dev/gpiochip0", "inputs": list(range(40)),
                                "outputs": list(range(40, 80))})),
    bad("sim driver not first", "drivers.plant", "declare the sim driver first",
        lambda d: d.__setitem__("drivers", {"cabinet": {"type": "gpiochip", "chip": "/dev/gpiochip0", "inputs": [5]},
                                            **d["drivers"]})),
    bad("spidev without chip", "drivers.tc1.chip", "max31855 or max31856",
        put("drivers.tc1", {"type": "spidev", "dev": "/dev/spidev0.0", "tc": "K"})),
    bad("no driver at all", "drivers", "at least one driver is required", put("drivers", {}), count=None),
    bad("gpiochip line both input and output", "drivers.cabinet.outputs", "also listed in inputs",
        put("drivers.cabinet", {"type": "gpiochip", "chip": "/dev/gpiochip0", "inputs": [5, 6], "outputs": [6]})),
    bad("output line beyond a gpiochip's outputs", "outputs.alarm_beacon.line", "has output lines 0..0",
        put("drivers.cabinet", {"type": "gpiochip", "chip": "/dev/gpiochip0", "outputs": [17]}),
        put("outputs.alarm_beacon.driver", "cabinet"), put("outputs.alarm_beacon.line", 1)),
    bad("too many drivers", "drivers", "9 declared, but the core holds at most 8 (EC_MAX_DRIVERS)",
        _many_drivers(8)),
    # channels
    bad("channel without kind", "channels.h2_room.kind", "missing: expected the channel kind",
        drop("channels.h2_room.kind")),
    bad("thermocouple its own cold junction", "channels.chamber_temp.cold_junction", "its own cold junction",
        put("channels.chamber_temp.cold_junction", "chamber_temp")),
    bad("unit with a space", "channels.h2_room.unit", "expected a unit without spaces",
        put("channels.h2_room.unit", "% LEL")),
    bad("unknown thermocouple type", "channels.chamber_temp.tc_type", "expected one of: B, E, J, K, N, R, S, T",
        put("channels.chamber_temp.tc_type", "Q")),
    bad("lowercase thermocouple type", "channels.chamber_temp.tc_type", "did you mean 'K'?",
        put("channels.chamber_temp.tc_type", "k")),
    bad("cold junction declared after the thermocouple", "channels.chamber_temp.cold_junction",
        "move [channels.cj_temp] above [channels.chamber_temp]", move_to_end("channels", "cj_temp"), count=2),
    bad("cold junction not in degC", "channels.chamber_temp.cold_junction",
        "must be an analog or thermocouple channel in degC", put("channels.cj_temp.unit", "mV"), count=2),
    bad("cold junction that is digital", "channels.chamber_temp.cold_junction", "channel 'cj_switch' is digital",
        lambda d: d.__setitem__("channels", {"cj_switch": {"kind": "digital", "driver": "plant", "input": 9},
                                             **d["channels"]}),
        put("channels.chamber_temp.cold_junction", "cj_switch")),
    bad("cold junction channel and fixed value", "channels.chamber_temp.cold_junction_c", "not both",
        put("channels.chamber_temp.cold_junction_c", 25.0)),
    bad("no cold junction", "channels.chamber_temp.cold_junction", "missing: expected the cold-junction channel",
        drop("channels.chamber_temp.cold_junction")),
    bad("thermocouple in another unit", "channels.chamber_temp.unit", "a thermocouple channel reads degC",
        put("channels.chamber_temp.unit", "degF")),
    bad("range beyond the thermocouple type", "channels.chamber_temp.range", "type K thermocouple measures",
        put("channels.chamber_temp.range", [-20.0, 1500.0])),
    bad("range upside down", "channels.h2_room.range", "low < high", put("channels.h2_room.range", [100.0, 0.0])),
    bad("range of one number", "channels.h2_room.range", "expected [low, high]", put("channels.h2_room.range", [1.0])),
    bad("median even", "channels.chamber_temp.median", "expected an odd window",
        put("channels.chamber_temp.median", 4)),
    bad("median above 9", "channels.chamber_temp.median", "expected an integer from 1 to 9, got 11",
        put("channels.chamber_temp.median", 11)),
    bad("scale zero", "channels.h2_room.scale", "must not be 0", put("channels.h2_room.scale", 0)),
    bad("input index out of 0..63", "channels.h2_room.input", "expected an integer from 0 to 63, got 64",
        put("channels.h2_room.input", 64)),
    bad("two channels on one input", "channels.chamber_temp_safety.input",
        "analog input 1 of driver 'plant' is already read by channel 'chamber_temp' (set shared_input = true",
        put("channels.chamber_temp_safety.input", 1)),
    bad("shared input declared on one side only", "channels.chamber_temp_safety.input", "already read by",
        put("channels.chamber_temp_safety.input", 1), put("channels.chamber_temp_safety.shared_input", True)),
    bad("injected channel without max age", "channels.chamber_vacuum.max_age_ms", "missing: expected max_age_ms > 0",
        drop("channels.chamber_vacuum.max_age_ms")),
    bad("injected channel with max age 0", "channels.chamber_vacuum.max_age_ms", "expected a number > 0",
        put("channels.chamber_vacuum.max_age_ms", 0)),
    bad("injected channel with a driver", "channels.chamber_vacuum.driver", "does not apply to injected channels",
        put("channels.chamber_vacuum.driver", "plant")),
    bad("too many channels", "channels", "declared, but the core holds at most 64 (EC_MAX_CHANNELS)",
        _many_channels(53)),
    # outputs
    bad("output without a safe level", "outputs.heater.safe_level", "missing: expected 0 or 1",
        drop("outputs.heater.safe_level")),
    bad("safe level 2", "outputs.heater.safe_level", "expected 0 or 1, got integer 2",
        put("outputs.heater.safe_level", 2)),
    bad("safe level as boolean", "outputs.vent_valve.safe_level", "expected 0 or 1, got boolean true",
        put("outputs.vent_valve.safe_level", True)),
    bad("two outputs on one line", "outputs.vent_valve.line",
        "output line 1 of driver 'plant' is already driven by output 'ar_inlet_valve'",
        put("outputs.vent_valve.line", 1)),
    bad("output line out of 0..63", "outputs.heater.line", "got 64", put("outputs.heater.line", 64)),
    bad("burst-fire cycle under 1 ms", "outputs.heater.duty_cycle_ms", "expected a number from 1 to 60000",
        put("outputs.heater.duty_cycle_ms", 0.5)),
    bad("burst-fire cycle shorter than a tick", "outputs.heater.duty_cycle_ms", "shorter than one sampler period",
        put("core.period_ms", 50.0), put("outputs.heater.duty_cycle_ms", 20)),
    # interlocks
    bad("threshold above the sensor's range", "interlocks.chamber_overtemp.threshold",
        "1500 is outside channel 'chamber_temp_safety''s range -20 to 1100 degC",
        put("interlocks.chamber_overtemp.threshold", 1500.0)),
    bad("low threshold below the sensor's range", "interlocks.cooling_water_low.threshold", "is outside",
        put("interlocks.cooling_water_low.threshold", -1.0)),
    bad("hysteresis puts the clear point out of range", "interlocks.h2_leak.hysteresis", "could never clear",
        put("interlocks.h2_leak.hysteresis", 40.0)),
    bad("digital rule on an analog channel", "interlocks.lid_open.channel",
        "channel 'h2_room' is analog; a digital rule needs a digital channel",
        put("interlocks.lid_open.channel", "h2_room")),
    bad("digital rule threshold not 0/1", "interlocks.lid_open.threshold", "expected 0 or 1, got integer 2",
        put("interlocks.lid_open.threshold", 2)),
    bad("high rule on a digital channel", "interlocks.h2_leak.channel", "is digital; use kind = \"digital\"",
        put("interlocks.h2_leak.channel", "lid_closed")),
    bad("rate rule without rate window", "interlocks.absorption_runaway.channel", "rate_window_ms = 0",
        put("channels.chamber_temp_safety.rate_window_ms", 0)),
    bad("stale rule on a channel without max age", "interlocks.vacuum_gauge_silent.channel",
        "channel 'cj_temp' has no max_age_ms, so it can never be stale",
        put("interlocks.vacuum_gauge_silent.channel", "cj_temp")),
    bad("threshold on a fault rule", "interlocks.chamber_tc_break.threshold", "does not apply to fault rules",
        put("interlocks.chamber_tc_break.threshold", 1.0)),
    bad("rule without threshold", "interlocks.h2_leak.threshold", "missing: expected the trip value",
        drop("interlocks.h2_leak.threshold")),
    bad("unknown rule kind", "interlocks.h2_leak.kind", "did you mean 'high'?", put("interlocks.h2_leak.kind", "hihg")),
    bad("empty action", "interlocks.h2_leak.action", "the action is empty", put("interlocks.h2_leak.action", [])),
    bad("output twice in an action", "interlocks.h2_leak.action[1]", "listed twice",
        put("interlocks.h2_leak.action", ["heater", "heater"])),
    bad("watchdog output in an interlock action", "interlocks.h2_leak.action", "'watchdog_line' is the watchdog line",
        put("interlocks.h2_leak.action", ["heater", "watchdog_line"])),
    bad("watchdog output in the deadman action", "core.deadman_action", "'watchdog_line' is the watchdog line",
        put("core.deadman_action", ["heater", "watchdog_line"])),
    bad("user deadman shorter than the floor", "interlocks.fast_deadman.threshold", "expected a number from 10",
        put("interlocks.fast_deadman", {"kind": "deadman", "threshold": 5, "action": ["heater"]})),
    bad("deadman rule with a channel", "interlocks.fast_deadman.channel", "does not apply to deadman rules",
        put("interlocks.fast_deadman", {"kind": "deadman", "threshold": 500, "channel": "h2_room",
                                        "action": ["heater"]})),
    bad("temperature trip inside the recipe envelope", "interlocks.chamber_overtemp.threshold",
        "930 is not above limits.max_temperature_c (950): a recipe within the equipment limits would trip it",
        put("limits.max_temperature_c", 950.0)),
    bad("rate trip inside the ramp limit", "interlocks.absorption_runaway.threshold",
        "is not above limits.max_ramp_c_per_min", put("limits.max_ramp_c_per_min", 60.0)),
    bad("pressure trip inside the pressure limit", "interlocks.chamber_overpressure.threshold",
        "is not above limits.max_pressure_bar", put("interlocks.chamber_overpressure.threshold", 2.0)),
    # permissives
    bad("permissive for an unknown output", "permissives.h2_valve", "unknown output 'h2_valve'",
        lambda d: d["permissives"].__setitem__("h2_valve", d["permissives"].pop("heater"))),
    bad("permissive on an unknown channel", "permissives.heater[0].channel", "unknown channel 'lid'",
        put("permissives.heater.0.channel", "lid")),
    bad("permissive on the watchdog output", "permissives.watchdog_line", "takes no permissives",
        put("permissives.watchdog_line", [{"channel": "lid_closed", "eq": 1}])),
    bad("permissive with two comparisons", "permissives.h2_inlet_valve[0]", "exactly one of lt, gt, eq or between",
        put("permissives.h2_inlet_valve.0.gt", 0.0)),
    bad("permissive with no comparison", "permissives.heater[1]", "got none", drop("permissives.heater.1.eq")),
    bad("eq on an analog channel", "permissives.h2_inlet_valve[0].eq", "eq compares a digital level",
        drop("permissives.h2_inlet_valve.0.lt"), put("permissives.h2_inlet_valve.0.eq", 1)),
    bad("lt on a digital channel", "permissives.heater[0].lt", "is digital: use eq",
        drop("permissives.heater.0.eq"), put("permissives.heater.0.lt", 1.0)),
    bad("permissive value outside the range", "permissives.h2_inlet_valve[0].lt",
        "150 is outside channel 'o2_pct''s range -0.3125 to 25.78125 %vol",
        put("permissives.h2_inlet_valve.0.lt", 150.0)),
    bad("between that cannot hold", "permissives.h2_inlet_valve[1].between", "does not overlap",
        put("permissives.h2_inlet_valve.1.between", [20.0, 30.0])),
    bad("permissives not a table", "permissives", "expected [[permissives.OUTPUT]] blocks, got an array",
        put("permissives", [1])),
    bad("permissive written as a single table", "permissives.heater", "[[permissives.heater]] blocks (double brackets)",
        put("permissives.heater", {"channel": "lid_closed", "eq": 1})),
    bad("typo in a permissive", "permissives.heater[0].chanel", "did you mean 'channel'?",
        put("permissives.heater.0.chanel", "x")),
    # limits
    bad("negative limit", "limits.max_ramp_c_per_min", "expected a number > 0, got -10",
        put("limits.max_ramp_c_per_min", -10.0)),
    bad("zero limit", "limits.max_pressure_bar", "expected a number > 0", put("limits.max_pressure_bar", 0)),
    bad("H2 allowed without its pressure limit", "limits.max_h2_pressure_bar", "H2 is in allowed_gases",
        drop("limits.max_h2_pressure_bar")),
    bad("H2 limit above the pressure limit", "limits.max_h2_pressure_bar", "is above max_pressure_bar",
        put("limits.max_h2_pressure_bar", 3.0)),
    bad("unknown gas", "limits.allowed_gases[1]", "expected one of: H2, Ar, N2, He",
        put("limits.allowed_gases", ["H2", "argon"])),
    bad("hd reactor without hydrogen", "limits.allowed_gases", "H2 must be allowed",
        put("limits.allowed_gases", ["Ar"]), drop("limits.max_h2_pressure_bar"),
        drop("limits.max_h2_admission_temperature_c")),
    bad("H2 limit while H2 not allowed", "limits.max_h2_pressure_bar", "H2 is not in allowed_gases",
        put("station.kind", "sintering_furnace"), put("limits.allowed_gases", ["Ar"]),
        put("limiter.excess_temp.senses", "charge"),
        drop("limits.max_h2_admission_temperature_c")),
    bad("H2 admission above the temperature limit", "limits.max_h2_admission_temperature_c",
        "1000.5 is above max_temperature_c (900)", put("limits.max_h2_admission_temperature_c", 1000.5)),
    bad("best vacuum not below the heating vacuum", "limits.best_vacuum_mbar", "must be below",
        put("limits.best_vacuum_mbar", 1.0)),
    bad("zone limit above the overall limit", "limits.zone_max_temperature_c", "is above max_temperature_c",
        put("limits.zone_max_temperature_c", {"chamber_temp": 950.0})),
    bad("zone limit on a channel that is no temperature", "limits.zone_max_temperature_c",
        "channel 'h2_room' reads '%LEL'", put("limits.zone_max_temperature_c", {"h2_room": 500.0})),
    bad("heater duty above 100 %", "limits.max_heater_duty_pct", "got 120", put("limits.max_heater_duty_pct", 120)),
    # station
    bad("unknown station kind", "station.kind", "did you mean 'hd_reactor'?", put("station.kind", "hd-reactor")),
    bad("station id not topic-safe", "station.id", "expected lowercase letters", put("station.id", "hd/01")),
    bad("description too long", "station.description", "at most 500 characters", put("station.description", "x" * 501)),
    bad("remote reset as string", "station.allow_remote_reset", "expected true or false, got string \"no\"",
        put("station.allow_remote_reset", "no")),
]


@pytest.mark.parametrize("case", BAD_STATIONS, ids=[c.id for c in BAD_STATIONS])
def test_bad_station_is_refused_with_key_path_and_message(case: Bad) -> None:
    found = problems(*case.edits)
    listing = "\n".join(map(str, found))
    matching = [e for e in found if e.key_path == case.key_path]
    assert matching, f"nothing at {case.key_path}; got:\n{listing}"
    assert any(case.fragment in e.message for e in matching), listing
    assert all(e.source == SOURCE for e in found)
    if case.count is not None:  # one mistake must not cascade into a page of errors
        assert len(found) == case.count, listing


def test_str_names_file_key_and_expectation() -> None:
    (error,) = problems(put("interlocks.chamber_overtemp.channel", "chamber_tmp"))
    text = str(error)
    assert text.startswith(
        "stations/hd.toml: interlocks.chamber_overtemp.channel: unknown channel 'chamber_tmp' (expected one of: ")
    assert text.endswith("; did you mean 'chamber_temp'?")
    assert (error.source, error.key_path) == (SOURCE, "interlocks.chamber_overtemp.channel")
    assert isinstance(error, SpecError) and error.errors == (error,)   # one problem: not an aggregate


def test_a_broken_channel_does_not_cascade_into_unknown_channel_errors() -> None:
    (error,) = problems(put("channels.chamber_temp_safety.median", 2))
    assert error.key_path == "channels.chamber_temp_safety.median"


def test_all_errors_are_reported_at_once_in_file_order() -> None:
    text = edited(
        put("limits.max_ramp_c_per_min", 0),
        put("interlocks.chamber_overtemp.channel", "chamber_tmp"),
        put("core.period_ms", 0),
        put("channels.chamber_temp.tc_type", "Q"),
        drop("outputs.heater.safe_level"),
    )
    with pytest.raises(SpecError) as caught:
        parse_station(text, SOURCE)
    errors = caught.value.errors
    assert [e.key_path for e in errors] == [
        "core.period_ms",
        "channels.chamber_temp.tc_type",
        "outputs.heater.safe_level",
        "interlocks.chamber_overtemp.channel",
        "limits.max_ramp_c_per_min",
    ]
    lines = str(caught.value).splitlines()
    assert lines == [str(e) for e in errors]
    assert all(line.startswith("stations/hd.toml: ") for line in lines)
    assert caught.value.key_path == "core.period_ms"  # the first, for callers that read only one


def test_toml_syntax_error_gives_line_and_column() -> None:
    text = EXAMPLE_TEXT.replace("[limits]", "[limits", 1)
    line = EXAMPLE_TEXT[: EXAMPLE_TEXT.index("[limits]")].count("\n") + 1
    with pytest.raises(SpecError) as caught:
        parse_station(text, SOURCE)
    error = caught.value
    assert error.line == line and error.column is not None
    assert str(error).startswith(f"stations/hd.toml: TOML syntax error at line {line}, column ")


def test_toml_duplicate_key_is_a_syntax_error() -> None:
    with pytest.raises(SpecError, match=r"TOML syntax error at line 3"):
        parse_station('[station]\nid = "a"\nid = "b"\n', SOURCE)


def test_absurdly_long_integer_is_a_config_error() -> None:
    with pytest.raises(SpecError, match="TOML syntax error"):
        parse_station("[core]\nperiod_ms = " + "9" * 5000 + "\n", SOURCE)


def test_empty_file_lists_every_missing_section() -> None:
    with pytest.raises(SpecError) as caught:
        parse_station("", SOURCE)
    assert [e.key_path for e in caught.value.errors] == [
        "station", "core", "drivers", "channels", "outputs", "limits"]


def test_load_station_missing_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(SpecError, match="cannot read the station file") as caught:
        load_station(path)
    assert caught.value.source == str(path)


def test_load_station_not_utf8(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[station]\ndescription = \"\xe9\"\n")
    with pytest.raises(SpecError, match="cannot read the station file"):
        load_station(path)


def _edge_imports(source: str, module: str) -> list[str]:
    """Every ``edge`` module imported by ``source`` (the text of module ``module``), lazy ones too, in order."""
    found: list[tuple[int, str]] = []
    package = module if module.endswith(".__init__") else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            found.append((node.lineno, target))
            if target == "edge":  # from edge import x: x is a module of edge
                found.extend((node.lineno, f"edge.{alias.name}") for alias in node.names)
    return [name for _, name in sorted(found, key=lambda item: item[0]) if name == "edge" or name.startswith("edge.")]


def _outside_spec(names: list[str]) -> list[str]:
    return [name for name in names if name != "edge.spec" and not name.startswith("edge.spec.")]


def test_the_spec_layer_imports_nothing_of_edge_but_itself() -> None:
    """edge.spec is the bottom layer (and never touches the C core): every import in it stays inside it."""
    files = sorted((ROOT / "edge" / "spec").rglob("*.py"))
    assert len(files) > 10, files
    outside = [f"{path.relative_to(ROOT)}: {name}" for path in files
               for name in _outside_spec(_edge_imports(path.read_text(), ".".join(path.relative_to(ROOT)
                                                                                  .with_suffix("").parts)))]
    assert not outside, "edge.spec imports from above it:\n" + "\n".join(outside)


def test_the_spec_layer_check_sees_an_upward_import() -> None:
    """The check above catches an upward import, plain, lazy, relative or ``from edge import``."""
    source = ("import edge.spec.reader\nfrom edge.spec import core\nfrom . import values\n"
              "def f():\n    from edge.control.pid import Pid\n    from ...devices import pfeiffer\n"
              "from edge import thermo\n")
    names = _edge_imports(source, "edge.spec.station.hardware")
    assert names == ["edge.spec.reader", "edge.spec", "edge.spec.station", "edge.control.pid", "edge.devices",
                     "edge", "edge.thermo"]
    assert _outside_spec(names) == ["edge.control.pid", "edge.devices", "edge", "edge.thermo"]


# ---------------------------------------------------------------- fuzzing: nothing but SpecError


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


NAMES_IN_EXAMPLE = sorted({k for p in _paths(EXAMPLE_DOC) for k in p if isinstance(k, str)}
                          | {v for v in str(EXAMPLE_DOC).split("'") if re.fullmatch(r"[a-z][a-z0-9_]*", v)})
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-2, max_value=70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.dates(),
    st.datetimes(),
    st.sampled_from(NAMES_IN_EXAMPLE),
    st.sampled_from(["all", "K", "sim", "gpiochip", "spidev", "/dev/x", "H2", "degC", "bar", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(NAMES_IN_EXAMPLE) | st.text(max_size=8),
                                                                 inner, max_size=4),
    max_leaves=8,
)


def _mutate(doc: Doc, data: st.DataObject) -> None:
    paths = _paths(doc)
    if not paths:
        doc["station"] = data.draw(values)
        return
    path = data.draw(st.sampled_from(paths))
    parent: Any = doc
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    operation = data.draw(st.sampled_from(["drop", "replace", "rename", "add", "swap_type"]))
    if operation == "drop":
        del parent[last]
    elif operation == "replace":
        parent[last] = data.draw(values)
    elif operation == "rename" and isinstance(parent, dict):
        new_key = data.draw(st.sampled_from(NAMES_IN_EXAMPLE) | st.text(max_size=12))
        value = parent.pop(last)
        parent[new_key] = value
    elif operation == "add" and isinstance(parent, dict):
        parent[data.draw(st.sampled_from(NAMES_IN_EXAMPLE) | st.text(max_size=12))] = data.draw(values)
    elif operation == "swap_type":
        old = parent[last]
        parent[last] = str(old) if not isinstance(old, str) else (1 if old else [old])


def _must_load_or_refuse(text: str) -> None:
    try:
        result = parse_station(text, SOURCE)
    except SpecError as error:
        assert error.errors and all(isinstance(e, SpecError) for e in error.errors)
        assert all(str(e).startswith(SOURCE + ": ") for e in error.errors)
        return
    assert isinstance(result, Station)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_example_only_ever_raises_config_error(data: st.DataObject) -> None:
    doc = copy.deepcopy(EXAMPLE_DOC)
    for _ in range(data.draw(st.integers(min_value=1, max_value=6))):
        _mutate(doc, data)
    _must_load_or_refuse(dump_toml(doc))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_fuzz_random_text_only_ever_raises_config_error(text: str) -> None:
    _must_load_or_refuse(text)


EXAMPLE_LINES = EXAMPLE_TEXT.splitlines()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(EXAMPLE_LINES) | st.text(max_size=30), max_size=120))
def test_fuzz_shuffled_example_lines_only_ever_raise_config_error(lines: list[str]) -> None:
    _must_load_or_refuse("\n".join(lines))


# ---------------------------------------------------------------- process control: [loops.*], [alarms.*], [plumbing]


def test_example_loop(station: Station) -> None:
    (loop,) = station.loops
    assert (loop.name, loop.pv, loop.output) == ("chamber", "chamber_temp", "heater")
    assert (loop.gains.kp, loop.gains.ti_s, loop.gains.td_s) == (0.08, 800.0, 100.0)
    assert (loop.out_min, loop.out_max, loop.sensor_break_output) == (0.0, 1.0, 0.0)
    assert (loop.derivative_filter, loop.setpoint_weight_b) == (0.1, 1.0)
    pid = Pid.for_loop(loop)
    assert pid.gains == loop.gains and pid.sensor_break_output == 0.0


def test_example_alarms(station: Station) -> None:
    alarms = {a.name: a for a in station.alarms}
    assert list(alarms) == ["h2_room_warning", "chamber_temp_deviation", "chamber_pressure_rise",
                            "heater_loop_break", "cooling_water_flow_low"]
    h2 = alarms["h2_room_warning"]
    assert (h2.kind, h2.channel, h2.threshold, h2.latch, h2.severity, h2.unit) == (
        "abs_high", "h2_room", 10.0, True, "alarm", "%LEL")
    rules = {r.name: r for r in station.core.rules}
    assert h2.threshold < rules["h2_leak"].threshold  # it warns before the trip
    dev = alarms["chamber_temp_deviation"]
    assert (dev.kind, dev.channel, dev.setpoint_of, dev.inhibit_until_normal) == (
        "dev_band", "chamber_temp", "chamber", True)
    rate = alarms["chamber_pressure_rise"]
    assert (rate.kind, rate.channel, rate.direction, rate.window_s) == ("rate", "chamber_pressure", "rising", 10.0)
    loop_break = alarms["heater_loop_break"]
    assert (loop_break.channel, loop_break.output, loop_break.band, loop_break.delay_s, loop_break.limit) == (
        "chamber_temp", "heater", 2.0, 600.0, "high")
    assert loop_break.output_limits == (0.0, 1.0)
    flow = alarms["cooling_water_flow_low"]
    assert flow.kind == "abs_low" and rules["cooling_water_low"].threshold < flow.threshold and flow.delay_s > 0


def test_example_plumbing(station: Station) -> None:
    plumbing = station.plumbing
    assert plumbing == GasPlumbing()  # explicit in the file, and the same as the defaults
    assert plumbing.inlet("H2") == "h2_inlet_valve" and plumbing.inlet_valves == {
        "H2": "h2_inlet_valve", "Ar": "ar_inlet_valve"}
    assert set(station.limits.allowed_gases) == set(plumbing.inlet_valves)


def test_station_without_process_control_sections_still_loads() -> None:
    station = loads(drop("loops"), drop("alarms"), drop("plumbing"), drop("accounting"))
    assert station.loops == () and station.alarms == ()
    assert station.plumbing == GasPlumbing()
    assert station.accounting == AccountingConfig()


def test_a_heater_model_needs_the_heaters_loop() -> None:
    with pytest.raises(SpecError, match=r"heater_rated_kw\.heater: heater is not driven by a control loop"):
        loads(drop("loops"), drop("alarms"), drop("plumbing"))


def test_plumbing_without_an_o2_analyser_and_other_valid_variations() -> None:
    station = loads(
        put("plumbing.o2_channel", ""),
        put("alarms.wall_deviation", {"kind": "dev_high", "channel": "chamber_temp_safety", "setpoint_of": "chamber",
                                      "threshold": 80}),
        put("alarms.slow_cooling", {"kind": "rate", "channel": "chamber_temp", "threshold": 30,
                                    "direction": "falling"}),
    )
    assert station.plumbing.o2_channel is None
    alarms = {a.name: a for a in station.alarms}
    assert alarms["wall_deviation"].channel == "chamber_temp_safety"
    assert alarms["wall_deviation"].threshold == 30.0 + 50.0 and isinstance(alarms["wall_deviation"].threshold, float)
    assert (alarms["slow_cooling"].window_s, alarms["slow_cooling"].direction) == (60.0, "falling")


def test_plumbing_may_name_other_outputs_and_an_optional_fan() -> None:
    station = loads(
        put("outputs.ar_valve_2", {"driver": "plant", "line": 10, "safe_level": 0}),
        put("plumbing.inlet_valves", {"H2": "h2_inlet_valve", "Ar": "ar_valve_2"}),
        put("outputs.fan", {"driver": "plant", "line": 11, "safe_level": 0}),
        put("plumbing.quench_fan", "fan"),
    )
    assert station.plumbing.inlet("Ar") == "ar_valve_2"
    assert station.plumbing.quench_fan == "fan"


def _second_loop(doc: Doc) -> None:
    doc["loops"]["wall"] = {**doc["loops"]["chamber"], "pv": "chamber_temp_safety"}


def _pump_renamed(doc: Doc) -> None:
    doc["outputs"]["pump"] = doc["outputs"].pop("vacuum_pump")
    del doc["plumbing"]["vacuum_pump"]


PROCESS_CONTROL_BAD = [
    # loops
    bad("loop on an unknown channel", "loops.chamber.pv", "unknown channel 'chamber_tmp'",
        put("loops.chamber.pv", "chamber_tmp")),
    bad("loop on a digital channel", "loops.chamber.pv", "is digital; a loop controls an analog or thermocouple",
        put("loops.chamber.pv", "lid_closed")),
    bad("loop on an injected channel", "loops.chamber.pv", "is injected", put("loops.chamber.pv", "chamber_vacuum")),
    bad("loop driving an unknown output", "loops.chamber.output", "unknown output 'heeter'",
        put("loops.chamber.output", "heeter")),
    bad("loop driving the watchdog line", "loops.chamber.output", "watchdog line",
        put("loops.chamber.output", "watchdog_line")),
    bad("two loops on one output", "loops.wall.output", "already driven by loop 'chamber'", _second_loop),
    bad("kp zero", "loops.chamber.kp", "expected a number > 0", put("loops.chamber.kp", 0)),
    bad("kp missing", "loops.chamber.kp", "missing: expected the proportional gain", drop("loops.chamber.kp")),
    bad("ti_s negative", "loops.chamber.ti_s", "expected a number from 0", put("loops.chamber.ti_s", -1.0)),
    bad("td_s missing", "loops.chamber.td_s", "0 = no derivative action", drop("loops.chamber.td_s")),
    bad("out_max above 1", "loops.chamber.out_max", "from 0 to 1, got 1.5", put("loops.chamber.out_max", 1.5)),
    bad("out_min not below out_max", "loops.chamber.out_max", "must be above out_min",
        put("loops.chamber.out_min", 0.6), put("loops.chamber.out_max", 0.5)),
    bad("sensor-break output outside the limits", "loops.chamber.sensor_break_output",
        "0 is outside out_min..out_max (0.2 to 1)", put("loops.chamber.out_min", 0.2)),
    bad("derivative filter zero", "loops.chamber.derivative_filter", "> 0 and <= 1",
        put("loops.chamber.derivative_filter", 0.0)),
    bad("out_max above the heater duty limit", "loops.chamber.out_max", "above limits.max_heater_duty_pct (80 %)",
        put("limits.max_heater_duty_pct", 80.0)),
    bad("unknown loop key", "loops.chamber.kd", "unknown key 'kd'", put("loops.chamber.kd", 5.0)),
    bad("loop named like an output", "loops.heater", "the name 'heater' is already used by outputs.heater",
        put("loops.heater", {"pv": "chamber_temp_safety", "output": "alarm_beacon", "kp": 0.1, "ti_s": 0, "td_s": 0})),
    bad("loops not a table", "loops", "expected [loops.NAME] tables, got integer 3", put("loops", 3)),
    # alarms
    bad("unknown alarm kind", "alarms.h2_room_warning.kind", "did you mean 'abs_high'?",
        put("alarms.h2_room_warning.kind", "abs_hi")),
    bad("alarm on an unknown channel", "alarms.h2_room_warning.channel", "unknown channel 'h2_rom'",
        put("alarms.h2_room_warning.channel", "h2_rom")),
    bad("alarm on a digital channel", "alarms.h2_room_warning.channel", "is digital; alarms compare values",
        put("alarms.h2_room_warning.channel", "lid_closed")),
    bad("alarm threshold outside the channel's range", "alarms.h2_room_warning.threshold",
        "200 is outside channel 'h2_room''s range", put("alarms.h2_room_warning.threshold", 200.0)),
    bad("high alarm at or above its trip", "alarms.h2_room_warning.threshold",
        "interlock 'h2_leak' already trips at 25 %LEL; an alarm must warn before the trip",
        put("alarms.h2_room_warning.threshold", 25.0)),
    bad("low alarm at or below its trip", "alarms.cooling_water_flow_low.threshold",
        "interlock 'cooling_water_low' already trips at 4 l/min",
        put("alarms.cooling_water_flow_low.threshold", 3.5)),
    bad("alarm clear point outside the range", "alarms.cooling_water_flow_low.hysteresis",
        "puts the clear point 21 outside", put("alarms.cooling_water_flow_low.hysteresis", 15.0)),
    bad("deviation alarm without its loop", "alarms.chamber_temp_deviation.setpoint_of",
        "missing: expected the loop whose setpoint it compares against",
        drop("alarms.chamber_temp_deviation.setpoint_of")),
    bad("deviation against an output", "alarms.chamber_temp_deviation.setpoint_of",
        "'heater' is an output; name the loop instead: 'chamber'",
        put("alarms.chamber_temp_deviation.setpoint_of", "heater")),
    bad("deviation against a channel", "alarms.chamber_temp_deviation.setpoint_of",
        "'chamber_temp' is a channel; name the loop instead: 'chamber'",
        put("alarms.chamber_temp_deviation.setpoint_of", "chamber_temp")),
    bad("deviation against an unknown loop", "alarms.chamber_temp_deviation.setpoint_of",
        "unknown loop 'chambr' (expected one of: chamber); did you mean 'chamber'?",
        put("alarms.chamber_temp_deviation.setpoint_of", "chambr")),
    bad("band on a dev_band alarm", "alarms.chamber_temp_deviation.band", "the band's half-width is threshold",
        put("alarms.chamber_temp_deviation.band", 25.0)),
    bad("deviation threshold zero", "alarms.chamber_temp_deviation.threshold", "expected a number > 0",
        put("alarms.chamber_temp_deviation.threshold", 0)),
    bad("deviation hysteresis not below threshold", "alarms.chamber_temp_deviation.hysteresis",
        "30 is not below the threshold (25): the alarm could never clear",
        put("alarms.chamber_temp_deviation.hysteresis", 30.0)),
    bad("threshold on a loop break", "alarms.heater_loop_break.threshold", "it has band and delay_s instead",
        put("alarms.heater_loop_break.threshold", 1.0)),
    bad("loop break without band", "alarms.heater_loop_break.band", "missing: expected how far",
        drop("alarms.heater_loop_break.band")),
    bad("loop break without delay", "alarms.heater_loop_break.delay_s", "expected a number > 0",
        put("alarms.heater_loop_break.delay_s", 0)),
    bad("loop break on another channel than its loop's", "alarms.heater_loop_break.channel",
        "loop 'chamber' controls 'chamber_temp', not 'chamber_temp_safety'",
        put("alarms.heater_loop_break.channel", "chamber_temp_safety")),
    bad("loop break naming the loop", "alarms.heater_loop_break.output",
        "'chamber' is a loop; name the output it drives: 'heater'", put("alarms.heater_loop_break.output", "chamber")),
    bad("loop break on an output no loop drives", "alarms.heater_loop_break.output",
        "no loop drives output 'vent_valve' (loops drive: heater)",
        put("alarms.heater_loop_break.output", "vent_valve")),
    bad("loop break on an unknown output", "alarms.heater_loop_break.output", "unknown output 'heeter'",
        put("alarms.heater_loop_break.output", "heeter")),
    bad("bad loop break limit", "alarms.heater_loop_break.limit", "expected one of: both, high, low",
        put("alarms.heater_loop_break.limit", "top")),
    bad("rate key on a level alarm", "alarms.h2_room_warning.window_s", "does not apply to abs_high alarms",
        put("alarms.h2_room_warning.window_s", 10.0)),
    bad("bad rate direction", "alarms.chamber_pressure_rise.direction", "expected one of: both, rising, falling",
        put("alarms.chamber_pressure_rise.direction", "up")),
    bad("rate window too long", "alarms.chamber_pressure_rise.window_s", "> 0 and <= 3600",
        put("alarms.chamber_pressure_rise.window_s", 7200)),
    bad("bad severity", "alarms.h2_room_warning.severity", "expected one of: warning, alarm, critical",
        put("alarms.h2_room_warning.severity", "severe")),
    bad("message too long", "alarms.h2_room_warning.message", "at most 200 characters",
        put("alarms.h2_room_warning.message", "x" * 201)),
    bad("latch as a string", "alarms.h2_room_warning.latch", "expected true or false",
        put("alarms.h2_room_warning.latch", "yes")),
    bad("alarm named like an interlock", "alarms.h2_leak", "already used by interlocks.h2_leak",
        put("alarms.h2_leak", {"kind": "abs_high", "channel": "h2_room", "threshold": 5.0})),
    bad("typo in an alarm key", "alarms.h2_room_warning.dealy_s", "did you mean 'delay_s'?",
        put("alarms.h2_room_warning.dealy_s", 1.0)),
    # plumbing
    bad("plumbing: unknown channel", "plumbing.pressure_channel", "unknown channel 'chamber_press'",
        put("plumbing.pressure_channel", "chamber_press")),
    bad("plumbing: channel in the wrong unit", "plumbing.vacuum_channel",
        "channel 'chamber_pressure' reads 'bar'; vacuum_channel must read 'mbar'",
        put("plumbing.vacuum_channel", "chamber_pressure")),
    bad("plumbing: digital channel", "plumbing.o2_channel", "is digital", put("plumbing.o2_channel", "lid_closed")),
    bad("plumbing: unknown output", "plumbing.vent_valve", "unknown output 'vent'", put("plumbing.vent_valve", "vent")),
    bad("plumbing: the loop's heater", "plumbing.vent_valve", "output 'heater' is driven by loop 'chamber'",
        put("plumbing.vent_valve", "heater")),
    bad("plumbing: one output in two roles", "plumbing.vent_valve", "already plays the role vacuum_valve",
        put("plumbing.vacuum_valve", "vent_valve")),
    bad("plumbing: the watchdog line", "plumbing.vacuum_pump", "watchdog line",
        put("plumbing.vacuum_pump", "watchdog_line")),
    bad("plumbing: an omitted role's default must exist", "plumbing.vacuum_pump",
        "the default 'vacuum_pump': unknown output 'vacuum_pump'", _pump_renamed),
    bad("plumbing: empty name for a required role", "plumbing.vent_valve", "expected a lowercase letter",
        put("plumbing.vent_valve", "")),
    bad("plumbing: allowed gas without an inlet", "plumbing.inlet_valves", "no inlet valve for Ar",
        put("plumbing.inlet_valves", {"H2": "h2_inlet_valve"})),
    bad("plumbing: inlet for a gas not allowed", "plumbing.inlet_valves.N2", "N2 is not in limits.allowed_gases",
        put("plumbing.inlet_valves", {"H2": "h2_inlet_valve", "Ar": "ar_inlet_valve", "N2": "cooling_water_valve"})),
    bad("plumbing: unknown gas", "plumbing.inlet_valves.Xe", "unknown gas 'Xe'",
        put("plumbing.inlet_valves", {"H2": "h2_inlet_valve", "Ar": "ar_inlet_valve", "Xe": "cooling_water_valve"})),
    bad("plumbing: inlet valve is an unknown output", "plumbing.inlet_valves.Ar", "unknown output 'ar_valve'",
        put("plumbing.inlet_valves", {"H2": "h2_inlet_valve", "Ar": "ar_valve"})),
    bad("plumbing: one valve for two gases", "plumbing.inlet_valves.Ar", "already plays the role inlet_valves.H2",
        put("plumbing.inlet_valves", {"H2": "h2_inlet_valve", "Ar": "h2_inlet_valve"})),
    bad("plumbing: inlet valves not a table", "plumbing.inlet_valves", "expected a table",
        put("plumbing.inlet_valves", ["h2_inlet_valve"])),
    bad("plumbing: unknown key", "plumbing.vent_vlave", "did you mean 'vent_valve'?",
        put("plumbing.vent_vlave", "vent_valve")),
]


@pytest.mark.parametrize("case", PROCESS_CONTROL_BAD, ids=[c.id for c in PROCESS_CONTROL_BAD])
def test_bad_process_control_section_is_refused_with_key_path_and_message(case: Bad) -> None:
    test_bad_station_is_refused_with_key_path_and_message(case)


def test_a_broken_loop_does_not_cascade_into_its_alarms() -> None:
    (error,) = problems(put("loops.chamber.kp", -1))  # two alarms name the loop: no "unknown loop" for them
    assert error.key_path == "loops.chamber.kp"


def test_process_control_errors_come_in_file_order_with_the_rest() -> None:
    with pytest.raises(SpecError) as caught:
        parse_station(edited(put("plumbing.vent_valve", "vent"), put("alarms.h2_room_warning.severity", "x"),
                             put("loops.chamber.kp", 0), put("core.period_ms", 0)), SOURCE)
    assert [e.key_path for e in caught.value.errors] == [
        "core.period_ms", "loops.chamber.kp", "alarms.h2_room_warning.severity", "plumbing.vent_valve"]
