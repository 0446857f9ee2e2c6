"""Modbus RTU instruments: the config, the register decoding, the bus poller against the emulated meters.

The end-to-end tests run ``ModbusBus`` (minimalmodbus over real pyserial on a pty slave, its
own thread) against ``hil.devices.modbus_meters`` on the pty master, which has its own CRC and
framing, stepped by the test as the plant process would step it, and a real C core on a
register file whose clock the test advances: staleness is judged on that clock, so nothing here
depends on how fast the machine is (wall-clock limits are only safety nets).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import pathlib
import random
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import minimalmodbus  # type: ignore[import-untyped]
import pytest
import serial  # type: ignore[import-untyped]

from edge.core import ChannelStatus, Core
from edge.devices.modbus import CounterSample, InstrumentCounters, ModbusBus, crc16
from edge.spec.core import ChannelSpec, CoreSpec, DriverSpec, OutputSpec
from edge.spec.instruments.modbus import PROFILES, ModbusConfig, Register, decode_words, plan_blocks, read_modbus
from edge.spec.reader import Problems, SpecError, Table
from edge.spec.station import parse_station
from hil.devices.modbus_meters import MassFlowMeter, MeterBus, Sdm630Meter, crc16_modbus
from hil.devices.pty_line import open_pty
from hil.regfile import RegisterFile

ROOT = pathlib.Path(__file__).resolve().parent.parent
BASE = (ROOT / "stations" / "hd_reactor_sim.toml").read_text()

# ---------------------------------------------------------------- the station file

METER_CHANNELS = """
[channels.aux_power]
kind = "injected"
unit = "W"
range = [-1000.0, 60000.0]
max_age_ms = 2000

[channels.aux_h2_flow]
kind = "injected"
unit = "NL/min"
range = [-1.0, 100.0]
max_age_ms = 2000

[channels.aux_ar_flow]
kind = "injected"
unit = "NL/min"
range = [-1.0, 100.0]
max_age_ms = 2000
"""

METERS = """
[instruments.aux_meter]
type = "modbus"
port = "/dev/serial/by-id/usb-FTDI_USB-RS485_Cable-if00-port1"
address = 1
profile = "sdm630"
baud = 9600
poll_ms = 500
channels = { power_w = "aux_power" }
rollover = { energy_kwh = 1000000.0 }

[instruments.aux_h2_mfc]
type = "modbus"
port = "/dev/serial/by-id/usb-FTDI_USB-RS485_Cable-if00-port1"
address = 2
profile = "reedge_mfc"
baud = 9600
poll_ms = 250
channels = { flow_nl_min = "aux_h2_flow" }

[instruments.aux_ar_mfc]
type = "modbus"
port = "/dev/serial/by-id/usb-FTDI_USB-RS485_Cable-if00-port1"
address = 3
profile = "reedge_mfc"
baud = 9600
poll_ms = 1000
channels = { flow_nl_min = "aux_ar_flow" }
"""


def parse_modbus_instrument(data: dict[str, object], key_path: str) -> ModbusConfig:
    """One [instruments.NAME] table through the kind's reader; every problem at once as a SpecError."""
    problems = Problems("st.toml")
    cfg = read_modbus(Table(problems, data, key_path))
    problems.raise_if_any()
    assert cfg is not None
    return cfg


def station_with(meters: str = METERS) -> str:
    return BASE.replace("\n[channels.lid_closed]", METER_CHANNELS + "\n[channels.lid_closed]", 1) + meters


def station_errors(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_station(text, "st.toml")
    return str(info.value)


def test_a_power_meter_and_two_flow_meters_on_one_bus() -> None:
    station = parse_station(station_with(), "st.toml")
    meter, h2, ar = (station.instruments[n] for n in ("aux_meter", "aux_h2_mfc", "aux_ar_mfc"))
    assert isinstance(meter, ModbusConfig) and isinstance(h2, ModbusConfig) and isinstance(ar, ModbusConfig)
    assert (meter.address, meter.profile, meter.poll_ms, meter.baud, meter.parity) == (1, "sdm630", 500.0, 9600, "N")
    assert meter.channels == {"power_w": "aux_power"}
    assert meter.registers["energy_kwh"].rollover == 1e6 and meter.registers["energy_kwh"].kind == "counter"
    assert h2.registers == PROFILES["reedge_mfc"] and h2.registers["total_nl"].rollover == 2**32 * 0.001
    assert (h2.poll_ms, ar.poll_ms, ar.channels) == (250.0, 1000.0, {"flow_nl_min": "aux_ar_flow"})
    assert station.instruments["vacuum_gauge"].port != meter.port      # the Pfeiffer gauge is still read


GOOD = {"type": "modbus", "port": "/dev/ttyUSB1", "address": 5, "profile": "reedge_mfc"}
FLOW_REG = {"function": 4, "address": 0, "type": "float32"}


@pytest.mark.parametrize(("change", "key", "words"), [
    ({"address": 0}, "address", "expected an integer from 1 to 247, got 0"),
    ({"address": 248}, "address", "expected an integer from 1 to 247, got 248"),
    ({"address": True}, "address", "got boolean true"),
    ({"baud": 9601}, "baud", "9600"),
    ({"parity": "X"}, "parity", 'expected one of: N, E, O; got "X"'),
    ({"bytesize": 9}, "bytesize", "7, 8"),
    ({"stopbits": 3}, "stopbits", "1, 2"),
    ({"poll_ms": 5}, "poll_ms", "from 20 to 60000"),
    ({"timeout_ms": "fast"}, "timeout_ms", 'got string "fast"'),
    ({"timeout_ms": 2000, "poll_ms": 1000}, "timeout_ms", "longer than poll_ms"),
    ({"timeout_ms": 20, "baud": 1200}, "timeout_ms", "too short"),
    ({"reconnect_max_ms": 1}, "reconnect_max_ms", "100"),
    ({"profile": "reedge_mcf"}, "profile", "did you mean 'reedge_mfc'"),
    ({"profile": 630}, "profile", "got integer 630"),
    ({"port": ""}, "port", "serial device path"),
    ({"type": "modbus-rtu"}, "type", 'expected "modbus"'),
    ({"adress": 5}, "adress", "did you mean 'address'"),
    ({"channels": {"flow_nl_mn": "h2_flow"}}, "channels.flow_nl_mn", "did you mean 'flow_nl_min'"),
    ({"channels": {"status": "h2_status"}}, "channels.status", "not a value"),
    ({"channels": {"flow_nl_min": "H2 flow"}}, "channels.flow_nl_min", "core channel name"),
    ({"channels": {"flow_nl_min": "h2_flow", "total_nl": "h2_flow"}}, "channels.total_nl", "already fed"),
    ({"channels": "h2_flow"}, "channels", "expected a table"),
    ({"registers": {"flow": FLOW_REG}}, "registers", 'only with profile = "custom"'),
    ({"rollover": {"flow_nl_min": 10.0}}, "rollover.flow_nl_min", "unknown counter"),
    ({"rollover": {"total_nl": 0}}, "rollover.total_nl", "expected a number > 0"),
    ({"profile": "custom"}, "registers", "missing"),
    ({"profile": "custom", "registers": {}}, "registers", "empty"),
    ({"profile": "custom", "registers": {"flow": {**FLOW_REG, "function": 6}}}, "registers.flow.function", "3, 4"),
    ({"profile": "custom", "registers": {"flow": {**FLOW_REG, "address": 65536}}}, "registers.flow.address",
     "0 to 65535"),
    ({"profile": "custom", "registers": {"flow": {**FLOW_REG, "address": 65535}}}, "registers.flow.address",
     "runs past"),
    ({"profile": "custom", "registers": {"flow": {**FLOW_REG, "type": "float"}}}, "registers.flow.type",
     "did you mean 'float32'"),
    ({"profile": "custom", "registers": {"flow": {"function": 4, "address": 0}}}, "registers.flow.type", "missing"),
    ({"profile": "custom", "registers": {"flow": {**FLOW_REG, "word_order": "middle"}}},
     "registers.flow.word_order", 'expected one of: big, little; got "middle"'),
    ({"profile": "custom", "registers": {"flow": {**FLOW_REG, "kind": "meter"}}}, "registers.flow.kind",
     'expected one of: gauge, counter, status; got "meter"'),
    ({"profile": "custom", "registers": {"flow": {**FLOW_REG, "rollover": 100.0}}}, "registers.flow.rollover",
     "only counters wrap"),
    ({"profile": "custom", "registers": {"flow": {**FLOW_REG, "kind": "status"}}}, "registers.flow.type",
     "status word is an integer"),
    ({"profile": "custom", "registers": {"flow": {**FLOW_REG, "scale": 0}}}, "registers.flow.scale", "0"),
    ({"profile": "custom", "registers": {"flow": {**FLOW_REG, "unit": "N L"}}}, "registers.flow.unit",
     "without spaces"),
    ({"profile": "custom", "registers": {"flow": {**FLOW_REG, "scael": 2.0}}}, "registers.flow.scael",
     "did you mean 'scale'"),
    ({"profile": "custom", "registers": {"Flow": FLOW_REG}}, "registers.Flow", "bad name: expected a lowercase letter"),
    ({"profile": "custom", "registers": {"flow": FLOW_REG, "total": {**FLOW_REG, "address": 1}}},
     "registers.total.address", "overlaps flow"),
    ({"profile": "custom", "registers": {"flow": FLOW_REG}, "rollover": {"flow": 1.0}}, "rollover",
     "registers.NAME.rollover"),
])
def test_every_bad_key_is_named_with_its_path(change: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_modbus_instrument({**GOOD, **change}, "instruments.h2_mfc")
    message = str(info.value)
    assert f"instruments.h2_mfc.{key}: " in message and words in message, message


def test_all_problems_come_at_once_and_a_custom_map_is_read() -> None:
    with pytest.raises(SpecError) as info:
        parse_modbus_instrument({"type": "modbus", "address": 300, "parity": "X", "colour": "red"}, "instruments.m")
    keys = {error.key_path for error in info.value.errors}
    assert keys == {"instruments.m.port", "instruments.m.address", "instruments.m.parity", "instruments.m.colour",
                    "instruments.m.profile"}
    cfg = parse_modbus_instrument({**GOOD, "profile": "custom", "channels": {"flow": "ar_flow"}, "registers": {
        "flow": {**FLOW_REG, "word_order": "little", "unit": "NL/min"},
        "total": {"function": 4, "address": 2, "type": "uint32", "scale": 0.01, "kind": "counter"},
        "count16": {"function": 3, "address": 9, "type": "uint16", "kind": "counter", "rollover": 500.0},
        "energy": {"function": 3, "address": 10, "type": "float32", "kind": "counter"},
        "alarm": {"function": 3, "address": 40, "type": "uint16", "kind": "status"},
    }}, "instruments.m")
    assert cfg.registers["flow"] == Register(4, 0, "float32", "little", 1.0, "NL/min", "gauge", None)
    assert cfg.registers["total"].rollover == 2**32 * 0.01     # an integer counter wraps with its register
    assert cfg.registers["count16"].rollover == 500.0           # unless told otherwise
    assert cfg.registers["energy"].rollover is None             # a float counter does not, unless told
    assert cfg.channels == {"flow": "ar_flow"}


def _retarget(text: str, instrument: str, old: str, new: str) -> str:
    head = f"[instruments.{instrument}]"
    start = text.index(head)
    end = text.find("\n[", start + 1)
    end = len(text) if end < 0 else end
    assert old in text[start:end], (old, instrument)
    return text[:start] + text[start:end].replace(old, new, 1) + text[end:]


@pytest.mark.parametrize(("instrument", "old", "new", "key", "words"), [
    ("aux_ar_mfc", "baud = 9600", "baud = 19200", "instruments.aux_ar_mfc.baud",
     "19200 but instruments.aux_meter on the same port"),
    ("aux_ar_mfc", "poll_ms = 1000", "poll_ms = 1000\nparity = \"E\"", "instruments.aux_ar_mfc.parity",
     "share baud, parity"),
    ("aux_ar_mfc", "address = 3", "address = 2", "instruments.aux_ar_mfc.address", "already instruments.aux_h2_mfc"),
    ("aux_ar_mfc", '"aux_ar_flow"', '"aux_h2_flow"', "instruments.aux_ar_mfc.channels.flow_nl_min",
     "already fed by instruments.aux_h2_mfc"),
    ("aux_ar_mfc", '"aux_ar_flow"', '"chamber_vacuum"', "instruments.aux_ar_mfc.channels.flow_nl_min",
     "already fed by instruments.vacuum_gauge"),
    ("aux_ar_mfc", '"aux_ar_flow"', '"chamber_temp"', "instruments.aux_ar_mfc.channels.flow_nl_min",
     "must be an injected channel with max_age_ms"),
    ("aux_ar_mfc", '"aux_ar_flow"', '"aux_ar_flwo"', "instruments.aux_ar_mfc.channels.flow_nl_min",
     "did you mean 'aux_ar_flow'"),
    ("aux_ar_mfc", 'profile = "reedge_mfc"', 'profile = "sdm360"', "instruments.aux_ar_mfc.profile",
     "did you mean 'sdm630'"),
    ("aux_ar_mfc", 'type = "modbus"', 'type = "modbu"', "instruments.aux_ar_mfc.type",
     "unknown instrument type 'modbu' (expected one of: pfeiffer, modbus)"),
    ("vacuum_gauge", 'port = "/dev/serial/by-id/usb-FTDI_USB-RS485_Cable-if00-port0"',
     'port = "/dev/serial/by-id/usb-FTDI_USB-RS485_Cable-if00-port1"', "instruments.vacuum_gauge.port",
     "a port carries one protocol"),
])
def test_a_wrong_bus_is_refused_with_its_key(instrument: str, old: str, new: str, key: str, words: str) -> None:
    message = station_errors(_retarget(station_with(), instrument, old, new))
    assert f"st.toml: {key}: " in message and words in message, message


def test_a_mistyped_profile_is_the_one_problem_named() -> None:
    """Its custom registers are not also called unknown keys: the technician fixes one word, not three."""
    message = station_errors(_retarget(station_with(), "aux_ar_mfc", 'profile = "reedge_mfc"',
                                       'profile = "custon"\nregisters.flow = { function = 4, address = 0, '
                                       'type = "float32" }\nrollover = { total = 4294967.296 }'))
    assert "st.toml: instruments.aux_ar_mfc.profile: " in message and "did you mean 'custom'" in message, message
    assert "unknown key" not in message, message


def test_a_sensor_node_cannot_feed_a_meter_channel() -> None:
    node = """
[sensor_nodes.retort_node]
port = "/dev/ttyACM0"
[sensor_nodes.retort_node.channels]
tc0 = { core = "aux_ar_flow" }
"""
    message = station_errors(station_with(METERS + node))
    assert ("st.toml: sensor_nodes.retort_node.channels.tc0.core: 'aux_ar_flow' is already fed by "
            "instruments.aux_ar_mfc") in message


# ---------------------------------------------------------------- registers


def test_register_decoding() -> None:
    one_and_half = (0x3FC0, 0x0000)                   # 1.5 as float32, high word first
    assert decode_words(one_and_half, "float32", "big") == 1.5
    assert decode_words(one_and_half[::-1], "float32", "little") == 1.5
    high, low = struct.unpack(">HH", struct.pack(">f", -12345.5))
    assert decode_words((high, low), "float32") == -12345.5
    assert decode_words((0x0001, 0x0002), "uint32", "big") == 0x0001_0002
    assert decode_words((0x0001, 0x0002), "uint32", "little") == 0x0002_0001
    assert decode_words((0xFFFF, 0xFFFE), "int32") == -2
    assert decode_words((0xFFFE, 0xFFFF), "int32", "little") == -2
    assert decode_words((0xFFFF,), "uint16") == 65535
    assert decode_words((0xFFFF,), "int16") == -1
    assert decode_words((0x8000,), "int16") == -32768
    assert Register(4, 2, "uint32", scale=0.001).decode((0xFFFF, 0xFFFF)) == pytest.approx(4294967.295)
    assert Register(3, 0, "int16", scale=-0.5).decode((0xFFFC,)) == 2.0
    with pytest.raises(ValueError, match="float32 takes 2"):
        decode_words((1,), "float32")
    with pytest.raises(ValueError):
        decode_words((70000, 0), "uint32")


def test_requests_cover_contiguous_blocks_only() -> None:
    sdm = plan_blocks(PROFILES["sdm630"])
    assert [(b.function, b.start, b.count) for b in sdm] == [(4, 0x0000, 12), (4, 0x0034, 2), (4, 0x0048, 2)]
    assert [n for n, _ in sdm[0].measurements][:2] == ["voltage_l1_v", "voltage_l2_v"]
    (mfc,) = plan_blocks(PROFILES["reedge_mfc"])
    assert (mfc.function, mfc.start, mfc.count, mfc.has_status) == (4, 0, 5, True)
    words = [*struct.unpack(">HH", struct.pack(">f", 2.5)), 0x0001, 0x0002, 0]
    assert mfc.values(words) == {"flow_nl_min": 2.5, "total_nl": pytest.approx(65.538), "status": 0.0}
    scattered = {
        "a": Register(3, 0, "float32"), "b": Register(3, 2, "uint16"), "c": Register(3, 4, "uint16"),
        "d": Register(4, 0, "uint16"), "s": Register(3, 200, "uint16", kind="status"),
        "far": Register(3, 124, "float32"),
    }
    blocks = plan_blocks(scattered)
    assert [(b.function, b.start, b.count) for b in blocks] == [(3, 200, 1), (3, 0, 3), (3, 4, 1), (3, 124, 2),
                                                                (4, 0, 1)]
    many = {f"r{i}": Register(4, i, "uint16") for i in range(130)}
    assert [(b.start, b.count) for b in plan_blocks(many)] == [(0, 125), (125, 5)]


def test_three_crc_implementations_agree() -> None:
    request = bytes.fromhex("01030000000A")           # read 10 holding registers of slave 1: CRC C5 CD
    assert crc16_modbus(request) == bytes.fromhex("C5CD")
    assert crc16(request).to_bytes(2, "little") == bytes.fromhex("C5CD")
    rng = random.Random(7)
    for n in range(1, 64):
        data = rng.randbytes(n)
        assert crc16(data).to_bytes(2, "little") == crc16_modbus(data) == minimalmodbus._calculate_crc(data)


# ---------------------------------------------------------------- the emulator on its own


def _frame(body: bytes) -> bytes:
    return body + crc16_modbus(body)


def _ask(bus: MeterBus, port: serial.Serial, request: bytes, want: int) -> bytes:
    port.write(request)
    got = b""
    deadline = time.monotonic() + 5.0
    while len(got) < want and time.monotonic() < deadline:
        bus.serve()
        got += port.read(port.in_waiting or 1)
    return got


def test_the_emulated_bus_answers_reads_exceptions_and_stays_silent_otherwise() -> None:
    master, slave = open_pty()
    mfc = MassFlowMeter(2, total_nl=12.345)
    mfc.update(2.5, 12.345)
    with MeterBus(master, [Sdm630Meter(1, energy_kwh=42.0), mfc]) as bus, \
            serial.Serial(slave, 115200, timeout=0.01) as port:
        answer = _ask(bus, port, _frame(bytes.fromhex("020400000005")), 15)
        assert answer[:3] == bytes((2, 4, 10)) and answer[-2:] == crc16_modbus(answer[:-2])
        assert struct.unpack(">fIH", answer[3:13]) == (2.5, 12345, 0)
        energy = _ask(bus, port, _frame(bytes.fromhex("010400480002")), 9)
        assert struct.unpack(">f", energy[3:7]) == (42.0,)
        assert _ask(bus, port, _frame(bytes.fromhex("020600040001")), 5) == _frame(bytes((2, 0x86, 1)))
        assert _ask(bus, port, _frame(bytes.fromhex("020400100002")), 5) == _frame(bytes((2, 0x84, 2)))
        assert _ask(bus, port, _frame(bytes.fromhex("020300000002")), 5) == _frame(bytes((2, 0x83, 2)))
        assert _ask(bus, port, _frame(bytes.fromhex("020400000000")), 5) == _frame(bytes((2, 0x84, 3)))
        assert bus.exceptions_sent == 4
        # another address, broadcast, a bad CRC: silence
        port.write(_frame(bytes.fromhex("090400000002")) + _frame(bytes.fromhex("000400000002")))
        port.write(bytes.fromhex("020400000005") + b"\x00\x00")
        for _ in range(5):
            bus.serve()
            time.sleep(0.002)
        assert port.read(100) == b""
        assert (bus.ignored, bus.rx_errors) == (2, 1)
        # noise in front of a request: skipped, the request answered
        answer = _ask(bus, port, b"\x55\xaa\x13" + _frame(bytes.fromhex("020400040001")), 7)
        assert answer == _frame(bytes((2, 4, 2, 0, 0)))
        bus.device_fault(2, True)
        assert _ask(bus, port, _frame(bytes.fromhex("020400040001")), 7) == _frame(bytes((2, 4, 2, 0, 1)))
        bus.crc_burst(1)
        bad = _ask(bus, port, _frame(bytes.fromhex("020400040001")), 7)
        assert bad[:5] == bytes((2, 4, 2, 0, 1)) and bad[5:] != crc16_modbus(bad[:5])
        with pytest.raises(ValueError, match="no status word"):
            bus.device_fault(1, True)
    near_wrap = MassFlowMeter(3, total_nl=4294967.295)
    near_wrap.update(0.0, 4294967.296 + 0.004)
    assert (near_wrap.input[2], near_wrap.input[3]) == (0, 4)


# ---------------------------------------------------------------- poller + emulator + the real core

MAX_AGE_MS = 1000.0
STEP_NS = 10_000_000      # one plant step = 10 ms of plant time


class RecordingCore:
    """The real core, with every value the bus injects written down (channel, value, status, core ns)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.injected: list[tuple[str, float, ChannelStatus, int]] = []
        self._lock = threading.Lock()

    @property
    def channel_names(self) -> tuple[str, ...]:
        return self.core.channel_names

    def now_ns(self) -> int:
        return self.core.now_ns()

    def inject(self, name: str, value: float, status: ChannelStatus = ChannelStatus.OK,
               t_ns: int | None = None) -> None:
        self.core.inject(name, value, status, t_ns)
        with self._lock:
            self.injected.append((name, value, status, self.core.now_ns() if t_ns is None else t_ns))

    def of(self, channel: str) -> list[tuple[float, ChannelStatus, int]]:
        with self._lock:
            return [(v, s, t) for c, v, s, t in self.injected if c == channel]


@dataclass
class Plant:
    """What the meters measure; totals grow with the flows every step."""

    power_w: float = 12345.5
    energy_kwh: float = 100.0
    h2_flow: float = 2.5
    ar_flow: float = 7.25
    h2_total: float = 1000.0
    ar_total: float = 50.0
    h2_per_step: float = 0.01
    ar_per_step: float = 0.02


@dataclass
class Rig:
    regs: RegisterFile
    core: Core
    rec: RecordingCore
    bus: MeterBus
    link: pathlib.Path            # the configured port: a symlink, as udev makes /dev/rs485_meters
    sdm: Sdm630Meter
    h2: MassFlowMeter
    ar: MassFlowMeter
    plant: Plant = field(default_factory=Plant)
    samples: list[CounterSample] = field(default_factory=list)

    def step(self, n: int = 1) -> None:
        """n plant steps: plant time moves on, the core ticks once, the meters serve their line."""
        p = self.plant
        for _ in range(n):
            self.regs.advance(STEP_NS)
            self.core.run_ticks(1)
            p.h2_total += p.h2_per_step
            p.ar_total += p.ar_per_step
            self.sdm.update(p.power_w, p.energy_kwh)
            self.h2.update(p.h2_flow, p.h2_total)
            self.ar.update(p.ar_flow, p.ar_total)
            self.bus.serve()
            time.sleep(0.0005)

    def until(self, cond: Callable[[], bool], wall_s: float = 20.0) -> bool:
        """Step the plant until cond holds; the wall limit is only a safety net."""
        deadline = time.monotonic() + wall_s
        while time.monotonic() < deadline:
            if cond():
                return True
            self.step()
        return cond()

    def collect(self, modbus: ModbusBus) -> list[CounterSample]:
        self.samples += modbus.drain_samples()
        return self.samples


def meters_spec(regs_path: pathlib.Path) -> CoreSpec:
    def injected(name: str, unit: str) -> ChannelSpec:
        return ChannelSpec(name, "injected", unit=unit, range_lo=-1000.0, range_hi=60000.0, max_age_ms=MAX_AGE_MS)

    return CoreSpec(
        drivers=(DriverSpec("plant", "sim", {"path": str(regs_path)}),),
        channels=(injected("heater_power", "W"), injected("h2_flow", "NL/min"), injected("ar_flow", "NL/min")),
        outputs=(OutputSpec("heater", "plant", 0, 0),),
    )


@pytest.fixture
def rig(tmp_path: pathlib.Path) -> Iterator[Rig]:
    regs = RegisterFile.create(tmp_path / "plant.regs")
    regs.use_plant_clock(start_ns=1_000_000_000)
    core = Core(meters_spec(tmp_path / "plant.regs"))
    master, slave = open_pty()
    link = tmp_path / "ttyMETERS"
    link.symlink_to(slave)
    p = Plant()
    sdm, h2, ar = Sdm630Meter(1, p.energy_kwh), MassFlowMeter(2, p.h2_total), MassFlowMeter(3, p.ar_total)
    r = Rig(regs, core, RecordingCore(core), MeterBus(master, [sdm, h2, ar], rng=random.Random(1)), link, sdm, h2, ar)
    yield r
    r.bus.close()
    core.close()
    regs.close()


def meter(rig: Rig, profile: str, address: int, channels: dict[str, str], *, poll_ms: float = 20.0,
          timeout_ms: float = 500.0, **extra: object) -> ModbusConfig:
    """A parsed config, then made faster than the parser allows (a timeout longer than the period:
    generous for a loaded CI machine, while the test steps the plant in between)."""
    cfg = parse_modbus_instrument({"type": "modbus", "port": str(rig.link), "address": address, "profile": profile,
                                   "baud": 115200, "poll_ms": 1000, "timeout_ms": 500, "channels": channels,
                                   **extra}, "instruments.m")
    return dataclasses.replace(cfg, poll_ms=poll_ms, timeout_ms=timeout_ms)


def all_three(rig: Rig, **kw: float) -> list[tuple[str, ModbusConfig]]:
    return [("heater_meter", meter(rig, "sdm630", 1, {"power_w": "heater_power"}, **kw)),
            ("h2_mfc", meter(rig, "reedge_mfc", 2, {"flow_nl_min": "h2_flow"}, **kw)),
            ("ar_mfc", meter(rig, "reedge_mfc", 3, {"flow_nl_min": "ar_flow"}, **kw))]


def quiet(c: InstrumentCounters) -> bool:
    return c.timeouts == c.crc_errors == c.malformed == c.exceptions == c.port_lost == c.inject_refused == 0


def test_power_and_flows_are_injected_ok_with_core_timestamps(rig: Rig) -> None:
    before = rig.core.now_ns()
    with ModbusBus(rig.rec, all_three(rig)) as modbus:
        assert rig.until(lambda: all(len(rig.rec.of(c)) >= 3 for c in ("heater_power", "h2_flow", "ar_flow")))
        rig.plant.power_w, rig.plant.h2_flow = 20000.25, 0.0
        assert rig.until(lambda: rig.rec.of("heater_power")[-1][0] == 20000.25 and rig.rec.of("h2_flow")[-1][0] == 0)
        rig.step()
        values = rig.core.latest()
        counters = modbus.counters()
    assert not modbus.alive
    for channel, want in (("heater_power", 20000.25), ("h2_flow", 0.0), ("ar_flow", 7.25)):
        assert values[channel].status == ChannelStatus.OK and values[channel].value == want
        stamps = [t for _, _, t in rig.rec.of(channel)]
        assert stamps == sorted(stamps) and before <= stamps[0] and stamps[-1] <= rig.core.now_ns()
    assert {(v, s) for v, s, _ in rig.rec.of("ar_flow")} == {(7.25, ChannelStatus.OK)}
    sdm = counters["heater_meter"]
    assert sdm.polls >= sdm.good >= 3 * sdm.injected > 0      # three requests per round, one mapped gauge
    power_stamps = [t for _, _, t in rig.rec.of("heater_power")]
    assert power_stamps[-1] <= sdm.last_good_t_ns <= rig.core.now_ns() and sdm.connected
    assert not any(c.connected for c in modbus.counters().values())
    assert all(quiet(c) for c in counters.values()), counters


def test_counter_samples_are_drained_in_order_with_the_answer_s_core_time(rig: Rig) -> None:
    with ModbusBus(rig.rec, all_three(rig)) as modbus:
        assert rig.until(lambda: sum(s.instrument == "h2_mfc" for s in rig.collect(modbus)) >= 10)
        rig.plant.energy_kwh = 100.5
        assert rig.until(lambda: rig.collect(modbus)[-1].value == 100.5 or any(
            s.measurement == "energy_kwh" and s.value == 100.5 for s in rig.samples[-5:]))
    rig.collect(modbus)
    assert rig.samples == sorted(rig.samples, key=lambda s: s.t_ns)
    h2 = [s for s in rig.samples if s.instrument == "h2_mfc"]
    assert all((s.measurement, s.rollover) == ("total_nl", 2**32 * 0.001) for s in h2)
    totals = [s.value for s in h2]
    assert totals == sorted(totals) and totals[0] >= 1000.0 and totals[-1] <= rig.plant.h2_total
    assert all(math.isclose(v * 1000, round(v * 1000), abs_tol=1e-6) for v in totals)   # 0.001 NL counts
    flow_times = {t for _, _, t in rig.rec.of("h2_flow")}
    assert {s.t_ns for s in h2} <= flow_times     # stamped as the flow of the same answer
    energy = [s for s in rig.samples if s.instrument == "heater_meter"]
    assert {(s.measurement, s.rollover) for s in energy} == {("energy_kwh", None)}
    assert {s.value for s in energy} == {100.0, 100.5}
    assert modbus.drain_samples() == []


def test_a_totaliser_near_its_modulus_rolls_over(rig: Rig) -> None:
    rig.plant.h2_total = 4294967.2                     # 0.096 NL before the uint32 of 0.001 NL wraps
    rig.plant.h2_per_step = 0.004
    with ModbusBus(rig.rec, [("h2_mfc", meter(rig, "reedge_mfc", 2, {}))]) as modbus:
        assert rig.until(lambda: any(s.value < 10.0 for s in rig.collect(modbus)))
        assert rig.until(lambda: len(rig.collect(modbus)) >= 3 + next(
            i for i, s in enumerate(rig.samples) if s.value < 10.0))
    values = [s.value for s in rig.samples]
    drops = [(a, b) for a, b in itertools.pairwise(values) if b < a]
    assert len(drops) == 1
    a, b = drops[0]
    assert 0 <= b - a + 2**32 * 0.001 < 1.0             # down by about the rollover, then counting on
    assert {s.rollover for s in rig.samples} == {4294967.296}
    assert values[0] > 4294967.0 and values[-1] < 1.0


def test_a_crc_burst_is_counted_exactly_and_never_injected(rig: Rig) -> None:
    cfg = [("h2_mfc", meter(rig, "reedge_mfc", 2, {"flow_nl_min": "h2_flow"}))]
    with ModbusBus(rig.rec, cfg) as modbus:
        assert rig.until(lambda: modbus.counters()["h2_mfc"].good >= 3)
        rig.bus.crc_burst(4)
        assert rig.until(lambda: modbus.counters()["h2_mfc"].crc_errors >= 4 and rig.bus.corrupted == 4)
        good_after = modbus.counters()["h2_mfc"].good
        assert rig.until(lambda: modbus.counters()["h2_mfc"].good >= good_after + 3)   # readings go on
        for _ in range(5):                             # noise between and inside transactions
            rig.bus.garbage(30)
            rig.step(3)
        assert rig.until(lambda: modbus.counters()["h2_mfc"].good >= good_after + 8)
        c = modbus.counters()["h2_mfc"]
        n_samples = len(rig.collect(modbus))
    c = modbus.counters()["h2_mfc"]
    noise = c.crc_errors - 4 + c.malformed
    assert c.crc_errors >= 4 and c.timeouts == c.exceptions == 0
    assert rig.bus.corrupted == 4 and noise <= 5
    flows = rig.rec.of("h2_flow")
    assert len(flows) == c.good == c.injected and n_samples <= c.good   # one value per good answer, none else
    assert {(v, s) for v, s, _ in flows} == {(2.5, ChannelStatus.OK)}


def test_exactly_n_crc_errors_for_a_burst_of_n(rig: Rig) -> None:
    with ModbusBus(rig.rec, [("ar_mfc", meter(rig, "reedge_mfc", 3, {"flow_nl_min": "ar_flow"}))]) as modbus:
        assert rig.until(lambda: modbus.counters()["ar_mfc"].good >= 2)
        rig.bus.crc_burst(3)
        assert rig.until(lambda: rig.bus.corrupted == 3)
        good = modbus.counters()["ar_mfc"].good
        assert rig.until(lambda: modbus.counters()["ar_mfc"].good >= good + 2)
    c = modbus.counters()["ar_mfc"]
    assert c.crc_errors == 3 and c.malformed == c.timeouts == 0
    assert len(rig.rec.of("ar_flow")) == c.good and c.polls == c.good + 3


def test_a_silent_meter_goes_stale_and_comes_back(rig: Rig) -> None:
    configs = [("h2_mfc", meter(rig, "reedge_mfc", 2, {"flow_nl_min": "h2_flow"}, timeout_ms=150.0)),
               ("ar_mfc", meter(rig, "reedge_mfc", 3, {"flow_nl_min": "ar_flow"}, timeout_ms=150.0))]
    with ModbusBus(rig.rec, configs) as modbus:
        assert rig.until(lambda: len(rig.rec.of("h2_flow")) >= 3)
        rig.bus.silent(2, True)
        assert rig.until(lambda: modbus.counters()["h2_mfc"].timeouts >= 2)
        rig.collect(modbus)
        n_flow, n_samples, n_ar = len(rig.rec.of("h2_flow")), len(rig.samples), len(rig.rec.of("ar_flow"))
        last_t = rig.rec.of("h2_flow")[-1][2]
        while not rig.core.value("h2_flow").status & ChannelStatus.STALE:
            assert rig.core.now_ns() - last_t <= MAX_AGE_MS * 1e6 + 2 * STEP_NS, "never went STALE"
            rig.step()
        assert rig.core.now_ns() - last_t > MAX_AGE_MS * 1e6        # not before its max age
        assert rig.until(lambda: modbus.counters()["h2_mfc"].timeouts >= 4)
        assert len(rig.rec.of("h2_flow")) == n_flow                 # nothing injected while silent
        assert not any(s.instrument == "h2_mfc" for s in rig.collect(modbus)[n_samples:])   # no samples either
        assert len(rig.rec.of("ar_flow")) > n_ar                    # the other meter on the bus goes on
        rig.bus.silent(2, False)
        assert rig.until(lambda: any(s.instrument == "h2_mfc" for s in rig.collect(modbus)[n_samples:]))
        assert rig.until(lambda: rig.core.value("h2_flow").status == ChannelStatus.OK)
    c = modbus.counters()["h2_mfc"]
    assert c.port_lost == c.crc_errors == c.malformed == 0 and "no answer" in c.last_error


def test_exception_responses_are_counted_with_their_code(rig: Rig) -> None:
    registers = {"flow": {"function": 4, "address": 0, "type": "float32"},
                 "missing": {"function": 4, "address": 0x10, "type": "uint16"}}
    cfg = meter(rig, "custom", 2, {"flow": "h2_flow"}, registers=registers, timeout_ms=100.0)
    with ModbusBus(rig.rec, [("h2_mfc", cfg)]) as modbus:
        assert rig.until(lambda: modbus.counters()["h2_mfc"].exceptions >= 2)
    c = modbus.counters()["h2_mfc"]
    assert c.last_exception_code == 2 and c.good >= 2 and c.timeouts == c.crc_errors == c.malformed == 0
    assert {(v, s) for v, s, _ in rig.rec.of("h2_flow")} == {(2.5, ChannelStatus.OK)}   # the rest is used


def test_two_meters_on_one_bus_each_at_its_own_rate(rig: Rig) -> None:
    configs = [("h2_mfc", meter(rig, "reedge_mfc", 2, {"flow_nl_min": "h2_flow"}, poll_ms=25.0)),
               ("ar_mfc", meter(rig, "reedge_mfc", 3, {"flow_nl_min": "ar_flow"}, poll_ms=100.0))]
    with ModbusBus(rig.rec, configs) as modbus:
        assert rig.until(lambda: modbus.counters()["ar_mfc"].polls >= 10)
        c = modbus.counters()
    ratio = c["h2_mfc"].polls / c["ar_mfc"].polls
    assert 2.5 <= ratio <= 6.0, c                      # about 100 / 25
    assert rig.bus.requests[2] >= c["h2_mfc"].good and rig.bus.requests[1] == 0


def test_an_unplugged_bus_reconnects_when_it_is_back(rig: Rig) -> None:
    configs = all_three(rig)[1:]
    with ModbusBus(rig.rec, configs) as modbus:
        assert rig.until(lambda: len(rig.rec.of("ar_flow")) >= 3)
        rig.bus.close()                                               # pull the cable:
        rig.link.unlink()                                             # udev removes its link too
        assert rig.until(lambda: all(c.port_lost == 1 and not c.connected for c in modbus.counters().values()))
        assert rig.until(lambda: modbus.counters()["ar_mfc"].open_failures >= 1)   # nothing there yet: back-off
        master, slave = open_pty()
        tmp_link = rig.link.with_name("ttyMETERS.new")
        tmp_link.symlink_to(slave)
        os.replace(tmp_link, rig.link)                                # atomic re-point, as udev does
        rig.bus = MeterBus(master, [rig.sdm, rig.h2, rig.ar])
        rig.plant.ar_flow = 3.5
        assert rig.until(lambda: rig.rec.of("ar_flow")[-1][:2] == (3.5, ChannelStatus.OK)
                         and rig.rec.of("h2_flow")[-1][1] == ChannelStatus.OK)
        c = modbus.counters()
    assert all((x.reconnects, x.port_lost, x.connected) == (1, 1, True) for x in c.values()), c
    assert all(x.crc_errors == x.malformed == x.inject_refused == 0 for x in c.values())


def test_a_device_fault_or_a_nan_is_a_fault_not_a_number(rig: Rig) -> None:
    with ModbusBus(rig.rec, [("h2_mfc", meter(rig, "reedge_mfc", 2, {"flow_nl_min": "h2_flow"}))]) as modbus:
        assert rig.until(lambda: len(rig.rec.of("h2_flow")) >= 2)
        rig.bus.device_fault(2, True)
        assert rig.until(lambda: modbus.counters()["h2_mfc"].device_fault)
        rig.collect(modbus)
        n = len(rig.samples)
        start = len(rig.rec.of("h2_flow"))
        assert rig.until(lambda: len(rig.rec.of("h2_flow")) >= start + 3)
        rig.step()
        v = rig.core.value("h2_flow")
        assert math.isnan(v.value) and v.status & ChannelStatus.FAULT
        during = rig.collect(modbus)[n + 1:]             # a faulted meter's totaliser: "not trusted now" (NaN)
        assert during and all(math.isnan(x.value) for x in during)
        n = len(rig.samples)
        rig.bus.device_fault(2, False)
        rig.plant.h2_flow = math.nan
        assert rig.until(lambda: modbus.counters()["h2_mfc"].bad_values >= 2)
        rig.plant.h2_flow = 1.75
        assert rig.until(lambda: rig.rec.of("h2_flow")[-1][:2] == (1.75, ChannelStatus.OK))
        assert any(math.isfinite(x.value) for x in rig.collect(modbus)[n:])   # trusted samples resume
    faults = [(v, s) for v, s, _ in rig.rec.of("h2_flow") if s != ChannelStatus.OK]
    assert faults and all(math.isnan(v) and s == ChannelStatus.FAULT for v, s in faults)
    assert not modbus.counters()["h2_mfc"].device_fault


def test_stop_is_prompt_while_a_request_waits_for_a_long_timeout(rig: Rig) -> None:
    rig.bus.silent(2, True)
    cfg = meter(rig, "reedge_mfc", 2, {"flow_nl_min": "h2_flow"}, poll_ms=5000.0, timeout_ms=5000.0)
    modbus = ModbusBus(rig.rec, [("h2_mfc", cfg)])
    modbus.start()
    try:
        assert rig.until(lambda: rig.bus.requests[2] >= 1)   # the request is on the line, its answer never comes
        rig.step(20)
    finally:
        started = time.monotonic()
        modbus.stop()
        took = time.monotonic() - started
    assert took < 0.5 and not modbus.alive
    c = modbus.counters()["h2_mfc"]
    assert c.polls == 1 and c.timeouts == 0 and not c.connected     # a cancelled read is not a timeout


def test_undrained_samples_are_capped_and_the_drops_counted(rig: Rig) -> None:
    modbus = ModbusBus(rig.rec, [("h2_mfc", meter(rig, "reedge_mfc", 2, {}))], max_samples=5)
    with modbus:
        assert rig.until(lambda: modbus.counters()["h2_mfc"].samples >= 12)
    c = modbus.counters()["h2_mfc"]
    kept = modbus.drain_samples()
    assert len(kept) == 5 and c.samples_dropped == c.samples - 5
    assert [s.value for s in kept] == sorted(s.value for s in kept)


def test_the_bus_refuses_what_it_cannot_poll(rig: Rig) -> None:
    h2 = meter(rig, "reedge_mfc", 2, {"flow_nl_min": "h2_flow"})
    with pytest.raises(ValueError, match="chamber_flow are not channels of the core"):
        ModbusBus(rig.rec, [("h2_mfc", dataclasses.replace(h2, channels={"flow_nl_min": "chamber_flow"}))])
    with pytest.raises(ValueError, match=r"instruments\.ar_mfc\.baud: 9600 but instruments\.h2_mfc"):
        ModbusBus(rig.rec, [("h2_mfc", h2), ("ar_mfc", dataclasses.replace(h2, address=3, baud=9600,
                                                                            channels={}))])
    with pytest.raises(ValueError, match=r"instruments\.ar_mfc\.address: 2 is already instruments\.h2_mfc"):
        ModbusBus(rig.rec, [("h2_mfc", h2), ("ar_mfc", dataclasses.replace(h2, channels={}))])


def test_a_missing_port_is_retried_with_back_off(rig: Rig, tmp_path: pathlib.Path) -> None:
    cfg = dataclasses.replace(meter(rig, "reedge_mfc", 2, {}), port=str(tmp_path / "nothing"), reconnect_max_ms=100.0)
    with ModbusBus(rig.rec, [("h2_mfc", cfg)]) as modbus:
        deadline = time.monotonic() + 20.0
        while modbus.counters()["h2_mfc"].open_failures < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    c = modbus.counters()["h2_mfc"]
    assert c.open_failures >= 3 and c.polls == c.reconnects == 0 and "nothing" in c.last_error


class SurprisingCore(RecordingCore):
    """The real core, refusing ``h2_flow`` with an error that is no OSError nor CoreError while ``surprises`` > 0."""

    surprises = 0

    def inject(self, name: str, value: float, status: ChannelStatus = ChannelStatus.OK,
               t_ns: int | None = None) -> None:
        if name == "h2_flow" and self.surprises > 0:
            self.surprises -= 1
            raise RuntimeError("a surprise inside the round")
        super().inject(name, value, status, t_ns)


def test_an_unexpected_error_is_counted_against_its_instrument_and_the_bus_goes_on(rig: Rig) -> None:
    core = SurprisingCore(rig.core)
    rig.rec = core
    with ModbusBus(core, all_three(rig)[1:]) as modbus:
        assert rig.until(lambda: len(core.of("h2_flow")) >= 3 and len(core.of("ar_flow")) >= 3)
        core.surprises = 2
        assert rig.until(lambda: core.surprises == 0)
        h2, ar = len(core.of("h2_flow")), len(core.of("ar_flow"))
        assert rig.until(lambda: len(core.of("h2_flow")) >= h2 + 3 and len(core.of("ar_flow")) >= ar + 3)
        assert modbus.alive
        c = modbus.counters()
    assert (c["h2_mfc"].internal_errors, c["ar_mfc"].internal_errors) == (2, 0)
    assert all(x.reconnects == 2 and x.port_lost == 0 and x.connected for x in c.values()), c
