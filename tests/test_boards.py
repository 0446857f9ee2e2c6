"""Board files and the station check against them: every board in boards/ validates, a station
wired to a real board loads, and each way of wiring a station wrongly (a line the board lacks, a
line used twice, the wrong chip, a missing bus, an input-only line driven) is refused with the key
path in the station file and a message that says what the board has instead.

Stations are edited as parsed TOML (a dict) and written back, so each case states only what is wrong.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from edge.devices.node.usb import format_table, list_serial
from edge.spec.board import BOARDS_DIR, board_names, load_board, parse_board
from edge.spec.reader import SpecError
from edge.spec.station import load_station, parse_station
from tests.test_config import dump_toml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = "stations/hd-02.toml"

# An HD reactor on the CM4 controller: digital I/O on its isolated terminals, the two thermocouples
# on MAX31856 converters (SPI0 CE0/CE1), the 4-20 mA transmitters and the vacuum gauge injected by
# a sensor node and the RS-485 reader.
HARDWARE_STATION = """
[station]
id = "hd-02"
site = "pilot-line"
kind = "hd_reactor"
board = "cm4_industrial"

[core]
deadman_ms = 2000
reset_input = "reset_button"
watchdog_output = "watchdog_line"

[drivers.cabinet]
type = "gpiochip"
chip = "/dev/gpiochip0"
inputs = [4, 5, 6, 12]                           # DI0..DI3
outputs = [19, 20, 21, 22, 23, 24, 25, 26, 27]   # DO0..DO7, WDOG

[drivers.tc_charge]
type = "spidev"
dev = "/dev/spidev0.0"
chip = "max31856"
tc = "K"

[drivers.tc_wall]
type = "spidev"
dev = "/dev/spidev0.1"
chip = "max31856"
tc = "K"

[channels.chamber_temp]
kind = "analog"
driver = "tc_charge"
input = 0
unit = "degC"
range = [-20.0, 1100.0]

[channels.chamber_temp_safety]
kind = "analog"
driver = "tc_wall"
input = 0
unit = "degC"
range = [-20.0, 1100.0]

[channels.chamber_pressure]
kind = "injected"
unit = "bar"
range = [-0.125, 10.3125]
max_age_ms = 3000

[channels.h2_room]
kind = "injected"
unit = "%LEL"
range = [-1.25, 103.125]
max_age_ms = 3000

[channels.lid_closed]
kind = "digital"
driver = "cabinet"
input = 0

[channels.estop_ok]
kind = "digital"
driver = "cabinet"
input = 1

[channels.cooling_water_ok]
kind = "digital"
driver = "cabinet"
input = 2

[channels.reset_button]
kind = "digital"
driver = "cabinet"
input = 3

[outputs.h2_inlet_valve]
driver = "cabinet"
line = 0
safe_level = 0

[outputs.ar_inlet_valve]
driver = "cabinet"
line = 1
safe_level = 0

[outputs.vent_valve]
driver = "cabinet"
line = 2
safe_level = 1

[outputs.vacuum_pump]
driver = "cabinet"
line = 3
safe_level = 0

[outputs.vacuum_valve]
driver = "cabinet"
line = 4
safe_level = 0

[outputs.heater]
driver = "cabinet"
line = 5
safe_level = 0

[outputs.cooling_water_valve]
driver = "cabinet"
line = 6
safe_level = 1

[outputs.alarm_beacon]
driver = "cabinet"
line = 7
safe_level = 1

[outputs.watchdog_line]
driver = "cabinet"
line = 8
safe_level = 0

[interlocks.chamber_overtemp]
kind = "high"
channel = "chamber_temp_safety"
threshold = 930.0
hysteresis = 20.0
action = ["heater", "h2_inlet_valve", "alarm_beacon"]

[limits]
max_temperature_c = 900.0
max_ramp_c_per_min = 10.0
max_pressure_bar = 2.2
max_h2_pressure_bar = 2.0
max_h2_admission_temperature_c = 150.0
min_vacuum_before_heating_mbar = 0.1
allowed_gases = ["H2", "Ar"]
"""
HARDWARE_DOC: dict[str, Any] = tomllib.loads(HARDWARE_STATION)

Doc = dict[str, Any]
Edit = Callable[[Doc], None]


def put(path: str, value: Any) -> Edit:
    def edit(doc: Doc) -> None:
        *head, last = path.split(".")
        node = doc
        for part in head:
            node = node[part]
        node[last] = value
    return edit


def edited(*edits: Edit) -> str:
    doc = copy.deepcopy(HARDWARE_DOC)
    for edit in edits:
        edit(doc)
    return dump_toml(doc)


def problems(*edits: Edit, boards_dir: pathlib.Path | None = None) -> list[SpecError]:
    with pytest.raises(SpecError) as caught:
        parse_station(edited(*edits), SOURCE, boards_dir=boards_dir)
    return list(caught.value.errors)


def only_problem(*edits: Edit, boards_dir: pathlib.Path | None = None) -> SpecError:
    found = problems(*edits, boards_dir=boards_dir)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


# ---------------------------------------------------------------- the board files themselves


def test_every_board_file_validates_and_is_named_after_its_file() -> None:
    names = board_names()
    assert {"rpi4", "rpi5", "cm4_industrial", "sim"} <= set(names)
    for name in names:
        board = load_board(name)
        assert board.name == name and board.description
        for chip in board.chips:
            offsets = [line.offset for line in chip.lines]
            assert len(offsets) == len(set(offsets)), f"{name}: {chip.key} declares a line twice"
        for bus in board.buses:
            assert bus.devices, f"{name}: {bus.kind}.{bus.key} has no device"


def test_pi_boards_offer_the_header_gpios_by_bcm_number_with_their_pins() -> None:
    for name in ("rpi4", "rpi5"):
        board = load_board(name)
        chip = board.chip_for("/dev/gpiochip0")
        assert chip is not None
        assert sorted(line.offset for line in chip.lines) == list(range(2, 28))
        gpio17 = chip.line_at(17)
        assert gpio17 is not None and (gpio17.name, gpio17.pin) == ("GPIO17", "11")
        assert board.drivers() == ("gpiochip", "spidev")


def test_pi5_rp1_chip_is_found_under_both_kernel_numberings() -> None:
    board = load_board("rpi5")
    new, old = board.chip_for("/dev/gpiochip0"), board.chip_for("/dev/gpiochip4")
    assert new is not None and new is old and new.label == "pinctrl-rp1"


def test_pi_boards_declare_their_hardware_watchdog_and_config_txt_filters() -> None:
    """provision sets systemd's RuntimeWatchdogSec/RebootWatchdogSec within max_s (the kernel refuses a longer
    timeout: bcm2835_wdt counts 15 s at most) and reads config.txt's [pi4]/[pi5]/[cm4] sections by the filters."""
    for name, filters in (("rpi4", ("pi4",)), ("rpi5", ("pi5",)), ("cm4_industrial", ("pi4", "cm4"))):
        board = load_board(name)
        assert board.watchdog is not None and (board.watchdog.driver, board.watchdog.max_s) == ("bcm2835_wdt", 15)
        assert board.watchdog.enable.startswith("dtparam=watchdog=on") and board.config_txt_filters == filters
    assert load_board("sim").watchdog is None


def test_watchdog_section_mistakes_are_reported_with_key_paths() -> None:
    text = (BOARDS_DIR / "rpi5.toml").read_text().replace("max_s = 15", "max_s = 0").replace(
        'driver = "bcm2835_wdt"', 'driver = "bcm2835-wdt!"').replace('["pi5"]', '["pi 5"]')
    with pytest.raises(SpecError) as caught:
        parse_board(text, "boards/rpi5.toml")
    found = {e.key_path: e.message for e in caught.value.errors}
    assert set(found) == {"watchdog.max_s", "watchdog.driver", "board.config_txt_filters[0]"}, found


def test_sim_board_serves_only_the_sim_driver() -> None:
    board = load_board("sim")
    assert board.drivers() == ("sim",) and board.sim is not None and not board.chips


def test_unknown_key_in_a_board_file_says_where_and_suggests(tmp_path: pathlib.Path) -> None:
    text = (BOARDS_DIR / "rpi5.toml").read_text().replace("older_path =", "olderpath =", 1)
    with pytest.raises(SpecError) as caught:
        parse_board(text, str(tmp_path / "rpi5.toml"))
    (error,) = caught.value.errors
    assert error.key_path == "gpiochips.rp1.olderpath"
    assert "did you mean 'older_path'?" in error.message


def test_board_file_syntax_error_has_line_and_column() -> None:
    with pytest.raises(SpecError) as caught:
        parse_board("[board]\nname = \"sim\"\ndescription = = 1\n", "boards/sim.toml")
    assert (caught.value.source, caught.value.key_path, caught.value.line, caught.value.column) == (
        "boards/sim.toml", "", 3, 15)
    assert str(caught.value) == "boards/sim.toml: TOML syntax error at line 3, column 15: Invalid value"


def test_board_file_mistakes_are_all_reported_with_key_paths() -> None:
    text = """
[board]
name = "other"
description = "x"
[gpiochips.main]
path = "/dev/gpiochip0"
label = "pinctrl-test"
driver = "gpiochip"
lines = { A = { line = 1, pin = "1" }, B = { line = 1, pin = "2" }, C = { line = 2, pin = "3", direction = "inptu" } }
[spi.spi0]
devices = ["/dev/spidev0.0"]
driver = "spidevv"
chip = "main"
lines = [1, 9]
[serial.rs485]
devices = ["/dev/ttyAMA0"]
driver = "edge.io"
chip = "mian"
"""
    with pytest.raises(SpecError) as caught:
        parse_board(text, "boards/board.toml")
    found = {e.key_path: e.message for e in caught.value.errors}
    assert "differs from the file's name" in found["board.name"]
    assert "line 1 is already declared as A" in found["gpiochips.main.lines.B"]
    assert "did you mean 'input'?" in found["gpiochips.main.lines.C.direction"]
    assert "did you mean 'spidev'?" in found["spi.spi0.driver"]
    assert "line 9 is not declared on chip 'main'" in found["spi.spi0.lines[1]"]
    assert "did you mean 'main'?" in found["serial.rs485.chip"]
    assert all(e.source == "boards/board.toml" for e in caught.value.errors)


# ---------------------------------------------------------------- a station naming its board


def test_hardware_station_fits_its_board() -> None:
    station = parse_station(HARDWARE_STATION, SOURCE)
    assert station.board == "cm4_industrial"
    cabinet = station.core.drivers[0]
    # the vent, cooling water and beacon (safe level 1) come up high: DO2, DO6, DO7 = lines 21, 25, 26
    assert cabinet.params["initial_high"] == "21,25,26"


def test_the_same_wiring_fits_a_pi5_under_either_chip_node() -> None:
    for node in ("/dev/gpiochip0", "/dev/gpiochip4", "gpiochip0"):
        station = parse_station(edited(put("station.board", "rpi5"), put("drivers.cabinet.chip", node)), SOURCE)
        assert station.board == "rpi5"


def test_sim_station_names_the_sim_board() -> None:
    station = load_station(ROOT / "stations" / "sintering_furnace_sim.toml")
    assert station.board == "sim"


def test_unknown_board_lists_the_boards_and_suggests() -> None:
    error = only_problem(put("station.board", "rpi6"))
    assert error.key_path == "station.board"
    assert "unknown board 'rpi6' (expected one of: cm4_industrial, rpi4, rpi5, sim); did you mean 'rpi" in error.message


def test_broken_board_file_is_reported_at_station_board(tmp_path: pathlib.Path) -> None:
    shutil.copy(BOARDS_DIR / "cm4_industrial.toml", tmp_path)
    board = tmp_path / "cm4_industrial.toml"
    board.write_text(board.read_text().replace('label = "pinctrl-bcm2711"', 'lable = "pinctrl-bcm2711"'))
    found = problems(boards_dir=tmp_path)
    assert {e.key_path for e in found} == {"station.board"}
    assert any("the board file is broken" in e.message and "gpiochips.bcm2711.lable" in e.message
               and "did you mean 'label'?" in e.message for e in found)


# ---------------------------------------------------------------- wrong wiring, one case each


def test_line_the_board_lacks() -> None:
    error = only_problem(put("drivers.cabinet.outputs", [19, 20, 21, 22, 23, 24, 25, 26, 40]))
    assert error.key_path == "drivers.cabinet.outputs[8]"
    assert "line 40 is not a usable line of chip /dev/gpiochip0 (pinctrl-bcm2711)" in error.message


def test_line_used_twice_by_two_gpio_drivers() -> None:
    error = only_problem(put("drivers.spare", {"type": "gpiochip", "chip": "gpiochip0", "inputs": [5]}))
    assert error.key_path == "drivers.spare.inputs[0]"
    assert "line 5 (DI1, terminal X2.2) is already taken by driver 'cabinet' (inputs)" in error.message


def test_line_used_by_gpio_and_by_an_enabled_spi_bus() -> None:
    error = only_problem(put("station.board", "rpi5"), put("drivers.cabinet.inputs", [4, 5, 6, 10]))
    assert error.key_path == "drivers.cabinet.inputs[3]"
    assert "line 10 (GPIO10, header pin 19) is already taken by SPI bus spi0" in error.message


def test_wrong_chip_names_the_chip_that_has_the_line() -> None:
    error = only_problem(put("station.board", "rpi4"),
                         put("drivers.spare", {"type": "gpiochip", "chip": "/dev/gpiochip1", "outputs": [17]}))
    assert error.key_path == "drivers.spare.outputs[0]"
    assert "chip /dev/gpiochip1 (raspberrypi-exp-gpio)" in error.message
    assert "GPIO17, header pin 11 is line 17 of /dev/gpiochip0 (pinctrl-bcm2711): wrong chip?" in error.message


def test_chip_the_board_does_not_have() -> None:
    error = only_problem(put("drivers.cabinet.chip", "/dev/gpiochip4"))
    assert error.key_path == "drivers.cabinet.chip"
    assert "board 'cm4_industrial' has no GPIO chip /dev/gpiochip4" in error.message
    assert "did you mean '/dev/gpiochip" in error.message


def test_input_only_terminal_driven_as_output() -> None:
    found = problems(put("drivers.cabinet.outputs", [4, 20, 21, 22, 23, 24, 25, 26, 27]),
                     put("drivers.cabinet.inputs", [19, 5, 6, 12]))
    messages = {e.key_path: e.message for e in found}
    assert set(messages) == {"drivers.cabinet.inputs[0]", "drivers.cabinet.outputs[0]"}
    assert "DI0, terminal X2.1) is input-only" in messages["drivers.cabinet.outputs[0]"]
    assert "DO0, terminal X3.1) is output-only" in messages["drivers.cabinet.inputs[0]"]


def test_spi_device_the_board_lacks() -> None:
    error = only_problem(put("drivers.tc_wall.dev", "/dev/spidev1.0"))
    assert error.key_path == "drivers.tc_wall.dev"
    assert "board 'cm4_industrial' has no SPI device '/dev/spidev1.0'" in error.message
    assert "/dev/spidev0.0, /dev/spidev0.1" in error.message


def test_two_converters_on_one_chip_select() -> None:
    error = only_problem(put("drivers.tc_wall.dev", "/dev/spidev0.0"))
    assert error.key_path == "drivers.tc_wall.dev"
    assert "already used by driver 'tc_charge'" in error.message


def test_sim_driver_on_a_real_board() -> None:
    found = problems(put("drivers.plant", {"type": "sim", "path": "/dev/shm/x.regs"}))
    (error,) = [e for e in found if e.key_path == "drivers.plant.type"]
    assert "board 'cm4_industrial' has no sim resources" in error.message
    assert "board = \"sim\"" in error.message


def test_gpio_driver_on_the_sim_board() -> None:
    found = problems(put("station.board", "sim"))
    assert {e.key_path for e in found} == {"drivers.cabinet.type", "drivers.tc_charge.type", "drivers.tc_wall.type"}
    assert all("board 'sim' has no" in e.message for e in found)


def test_board_mistakes_leave_every_other_check_in_place() -> None:
    # a wiring mistake and an unrelated one are both reported, in file order
    found = problems(put("drivers.cabinet.chip", "/dev/gpiochip9"), put("limits.max_ramp_c_per_min", 0))
    assert [e.key_path for e in found] == ["drivers.cabinet.chip", "limits.max_ramp_c_per_min"]


# ---------------------------------------------------------------- what is plugged in (reedge boards list)


@dataclass
class FakePort:
    """The fields of pyserial's ListPortInfo that edge.devices.node.usb reads."""

    device: str
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    description: str = "n/a"


PLUGGED_IN = [
    FakePort("/dev/ttyACM1", 0x2E8A, 0x0005, "e66038b7130f2e2d", "MicroPython", "Board in FS mode"),
    FakePort("/dev/ttyUSB0", 0x0403, 0x6001, "A10KZ3", "FTDI", "USB-RS485 Cable"),
    FakePort("/dev/ttyACM0", 0x2E8A, 0x000A, "E6614C311B7C5A29", "Raspberry Pi", "Pico"),
    FakePort("/dev/ttyAMA0"),   # the SoC's own UART: a board resource, not a USB device
]


def test_list_sorts_ports_and_tells_nodes_from_other_devices() -> None:
    ports = list_serial(lambda: PLUGGED_IN)
    assert [(p.device, p.usb_id, p.kind) for p in ports] == [
        ("/dev/ttyACM0", "2E8A:000A", "raspberry-pi"),
        ("/dev/ttyACM1", "2E8A:0005", "micropython"),
        ("/dev/ttyUSB0", "0403:6001", "other"),
    ]
    assert "without MicroPython's id" in ports[0].meaning()


def test_a_port_given_with_port_and_not_probed_is_not_called_not_a_node() -> None:
    """A pty or a by-path port has no USB ids: nothing says it is not a node (it may be the virtual node or a
    Pico behind a hub): the listing says it was not probed and how to ask it, through the real command."""
    master, slave = os.openpty()
    try:
        port = os.ttyname(slave)
        out = subprocess.run([sys.executable, "-m", "edge", "boards", "list", "--port", port], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    finally:
        os.close(master)
        os.close(slave)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith(port))
    assert row.endswith("not probed: no USB ids to tell what it is (add --probe to ask it)"), row
    assert "not a node" not in row


def test_list_table_and_json_carry_ids_serials_and_meaning() -> None:
    ports = list_serial(lambda: PLUGGED_IN, extra=["/tmp/vnode/ttyACM0"])
    table = format_table(ports).splitlines()
    assert table[0].split() == ["PORT", "VID:PID", "SERIAL", "MANUFACTURER", "/", "PRODUCT", "WHAT"]
    row = next(line for line in table if line.startswith("/dev/ttyACM1"))
    assert "2E8A:0005" in row and "e66038b7130f2e2d" in row and "MicroPython / Board in FS mode" in row
    assert row.endswith("MicroPython node (not probed)")
    assert any(line.startswith("/tmp/vnode/ttyACM0") and "given with --port" in line for line in table)
    data = json.loads(json.dumps([p.as_json() for p in ports]))
    node = next(p for p in data if p["device"] == "/dev/ttyACM1")
    assert (node["vid"], node["pid"], node["kind"], node["serial_number"]) == (0x2E8A, 5, "micropython",
                                                                              "e66038b7130f2e2d")


def test_list_with_nothing_plugged_in_says_what_to_check() -> None:
    assert "no USB serial ports found" in format_table(list_serial(lambda: []))


def test_boards_show_prints_the_wiring_table() -> None:
    out = subprocess.run([sys.executable, "-m", "edge", "boards", "show", "cm4_industrial"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^\s+4\s+DI0\s+X2\.1\s+input\s+isolated input 24 V$", out.stdout, re.M)
    assert "spi spi0: /dev/spidev0.0, /dev/spidev0.1 (driver spidev, lines 7, 8, 9, 10, 11)" in out.stdout
    assert "hardware watchdog: bcm2835_wdt, at most 15 s (enable: dtparam=watchdog=on in " in out.stdout
    bad = subprocess.run([sys.executable, "-m", "edge", "boards", "show", "rpi6"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "did you mean 'rpi" in bad.stderr


def test_the_readme_pi_wiring_fits_both_pi_boards() -> None:
    readme = (ROOT / "boards" / "README.md").read_text()
    snippet = readme.split("The matching `[drivers]` of the station:", 1)[1].split("```toml", 1)[1].split("```")[0]
    drivers = tomllib.loads(snippet)["drivers"]
    for board in ("rpi4", "rpi5"):
        station = parse_station(edited(put("station.board", board), put("drivers", drivers)), SOURCE)
        cabinet = station.core.drivers[0]
        assert cabinet.params["inputs"] == "5,6,13,26,19,20,21" and station.board == board
        # vent (GPIO22), cooling water (GPIO12) and beacon (GPIO16) have safe level 1: requested high
        assert cabinet.params["initial_high"] == "12,16,22"
    # and they are the drivers of the example station on real hardware, stations/hd-02.toml
    hd02 = tomllib.loads((ROOT / "stations" / "hd-02.toml").read_text())["drivers"]
    assert sorted(drivers) == sorted(hd02)
    for name, params in drivers.items():
        assert params == {k: v for k, v in hd02[name].items() if k in params}, name
