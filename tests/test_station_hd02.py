"""stations/hd-02.toml, the example station on real hardware (a Pi 5): it loads, `reedge station check --strict`
passes (every safety layer of the simulated HD reactor is there), and its WIRING TABLE (the comment block at
the top, the technician's terminal plan) agrees with its drivers, boards/rpi5.toml and its sensor node's file.

The wiring table is read from the station file's comments, row by row: terminal | pin | line | signal | station key.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
from collections import Counter

import pytest

from edge.devices.node.flash import build
from edge.spec.board import load_board
from edge.spec.node import load_node
from edge.spec.station import Station, load_station, parse_station

ROOT = pathlib.Path(__file__).resolve().parent.parent
HD02 = ROOT / "stations" / "hd-02.toml"
ROW = re.compile(r"^#\s+(X\d+\.\d+)\s*\|([^|]*)\|([^|]*)\|([^|]*)\|([^|]*)$")


def safety_shape(station: Station) -> dict[str, object]:
    """What protects the reactor, without the wiring: each rule's kind, channel(s), threshold and outputs forced
    safe; the permissives; each output's safe level and supplies; the core's watchdog and reset settings."""
    core = station.core
    return {
        "rules": {r.name: (r.kind, r.channel, r.channel2, r.output, r.threshold, r.hysteresis, frozenset(r.action),
                           r.latch, r.local_reset_only, r.soak_band) for r in core.rules},
        "debounce_ms": {r.name: r.debounce_ms for r in core.rules},
        "permissives": sorted((p.output, p.channel, p.cmp, p.value, p.value2) for p in core.permissives),
        "outputs": [(o.name, o.safe_level, o.max_on_ms, o.supplies) for o in core.outputs],
        "core": (core.watchdog_output, core.watchdog_feedback, core.reset_channel, core.allow_remote_reset),
    }


def wiring_rows(text: str) -> list[tuple[str, str, str, str, str]]:
    return [tuple(part.strip() for part in m.groups())  # type: ignore[misc]
            for m in map(ROW.match, text.splitlines()) if m]


@pytest.fixture(scope="module")
def station() -> Station:
    return load_station(HD02)


@pytest.fixture(scope="module")
def rows() -> list[tuple[str, str, str, str, str]]:
    found = wiring_rows(HD02.read_text())
    assert len(found) > 20, "the wiring table at the top of stations/hd-02.toml was not found"
    return found


def test_station_check_strict_passes() -> None:
    """`--strict` exits 1 when any safety layer is missing or weak: the real station has them all."""
    done = subprocess.run([sys.executable, "-m", "edge", "station", "check", "--strict", str(HD02)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "board: rpi5" in done.stdout
    assert "WARNING" not in done.stderr


def test_same_safety_as_the_simulated_reactor(station: Station) -> None:
    """Every interlock of hd_reactor_sim.toml is on hd-02 with the same kind, channel, threshold, outputs forced
    safe and latching, debounced no slower (the sim's feedback rules wait for the rig's plant steps); the same
    permissives, safe levels, contactor and watchdog proof. The cold-junction rule watches a converter's own
    junction here (the sim has one shared terminal-block sensor), and the wall converter's has a rule of its own."""
    sim = load_station(ROOT / "stations" / "hd_reactor_sim.toml")
    real, simulated = safety_shape(station), safety_shape(sim)
    real_rules: dict[str, tuple[object, ...]] = real["rules"]  # type: ignore[assignment]
    sim_rules: dict[str, tuple[object, ...]] = simulated["rules"]  # type: ignore[assignment]
    cj = sim_rules.pop("cold_junction_fault")
    for name, channel in (("cold_junction_fault", "charge_cj"), ("wall_cold_junction_fault", "wall_cj")):
        assert real_rules[name] == (cj[0], channel, *cj[2:]), name       # all but the channel as the sim's
    missing = {name: shape for name, shape in sim_rules.items() if real_rules.get(name) != shape}
    assert not missing, f"hd-02 lacks or weakens: {missing}"
    slower = {n: d for n, d in real["debounce_ms"].items()  # type: ignore[attr-defined]
              if n in sim_rules and d > simulated["debounce_ms"][n]}  # type: ignore[index]
    assert not slower, f"hd-02 waits longer than the simulated reactor before tripping: {slower}"
    for key in ("permissives", "outputs", "core"):
        assert real[key] == simulated[key], key
    assert [(lim.senses, lim.setpoint_c, lim.opens, lim.alarm_input) for lim in station.limiters] == \
        [(lim.senses, lim.setpoint_c, lim.opens, lim.alarm_input) for lim in sim.limiters]


def test_no_pin_line_or_terminal_used_twice(rows: list[tuple[str, str, str, str, str]]) -> None:
    for column, what in ((0, "terminal"), (2, "line")):
        twice = [v for v, n in Counter(r[column] for r in rows).items() if n > 1]
        assert not twice, f"{what} used twice in the wiring table: {twice}"
    header = [r[1] for r in rows if r[1].isdigit()]
    assert len(header) == len(set(header)), f"header pin used twice: {Counter(header).most_common(2)}"


def test_header_rows_match_the_board_file(rows: list[tuple[str, str, str, str, str]]) -> None:
    """Each header row's pin is the pin boards/rpi5.toml gives its GPIO line (a row with the wrong pin would
    send the technician to the wrong screw)."""
    chip = load_board("rpi5").chips[0]
    for terminal, pin, line, _signal, _key in rows:
        if not pin.isdigit():
            continue
        m = re.fullmatch(r"GPIO(\d+)", line)
        assert m, f"{terminal}: {line!r} is not a GPIO line"
        declared = chip.line_at(int(m.group(1)))
        assert declared is not None, f"{terminal}: {line} is not a usable line of rpi5"
        assert declared.pin == pin, f"{terminal}: {line} is header pin {declared.pin} on rpi5, the table says {pin}"


def test_every_gpio_line_of_the_drivers_is_in_the_table_as_wired(
        station: Station, rows: list[tuple[str, str, str, str, str]]) -> None:
    """Both ways: every line the gpiochip driver requests has its row, naming the channel or output that
    the station puts on that position; and every row that names a driver position is that line."""
    by_key = {key: (line, signal) for _t, _p, line, signal, key in rows}
    drivers = {d.name: d for d in station.core.drivers}
    gpio = [d for d in drivers.values() if d.type == "gpiochip"]
    assert [d.name for d in gpio] == ["cabinet"]
    cabinet = gpio[0]
    channel_at = {(c.driver, c.input): c.name for c in station.core.channels if c.kind == "digital"}
    output_at = {(o.driver, o.line): o.name for o in station.core.outputs}
    expected = {}
    for key, named in (("inputs", channel_at), ("outputs", output_at)):
        for index, offset in enumerate(int(x) for x in cabinet.params[key].split(",")):
            expected[f"drivers.cabinet.{key}[{index}]"] = (f"GPIO{offset}", named[("cabinet", index)])
    table = {k: v for k, v in by_key.items() if k.startswith("drivers.cabinet.")}
    assert table == expected


def test_spi_rows_are_the_converters_chip_selects_and_bus(
        station: Station, rows: list[tuple[str, str, str, str, str]]) -> None:
    """Each converter's chip select is the CE line of its spidev device on rpi5 (spidev0.N = SPI0 CEN), its row
    names the channel on the converter's input 0; the bus's shared lines (MISO, MOSI, SCLK) name both."""
    board = load_board("rpi5")
    chip = board.chips[0]
    converters = {d.name: d for d in station.core.drivers if d.type == "spidev"}
    tc_of = {c.driver: c.name for c in station.core.channels if c.driver in converters and c.input == 0}
    for name, driver in converters.items():
        dev = driver.params["dev"]
        bus = board.spi_bus_for(dev)
        assert bus is not None and bus.key == "spi0"
        ce = f"SPI0 CE{dev.rsplit('.', 1)[1]}"
        ce_line = next(x for x in chip.lines if x.function == ce)
        row = [r for r in rows if r[4] == f"drivers.{name}"]
        assert row == [(row[0][0], ce_line.pin, f"GPIO{ce_line.offset}", tc_of[name], f"drivers.{name}")], row
    shared = {r[2] for r in rows if r[4] == " ".join(f"drivers.{n}" for n in converters)}
    bus_lines = set(board.buses_of("spi")[0].lines)
    ce_lines = {x.offset for x in chip.lines if x.function.startswith("SPI0 CE")}
    assert shared == {f"GPIO{n}" for n in bus_lines - ce_lines}


def test_node_rows_match_the_node_file_and_the_station(
        station: Station, rows: list[tuple[str, str, str, str, str]]) -> None:
    """Every node row is an ADS1115 input or a Pico pin of boards/nodes/hd2_node_a.toml under the name the
    station maps, and every channel and output the node file declares is wired."""
    config = load_node("hd2_node_a").config
    (name, node), = station.sensor_nodes.items()
    assert node.expect_node_id == "hd2_node_a"
    analog = {a["name"]: f"ADS1115 0x{a['address']:02x} A{a['input']}" for a in config["analog"]}  # type: ignore
    pins = {o["name"]: f"GP{o['pin']}" for o in config["outputs"]}  # type: ignore[attr-defined]
    node_rows = {r[4]: r[2] for r in rows if r[1] == "node"}
    expected = {f"sensor_nodes.{name}.channels.{m.node}": analog[m.node] for m in node.channels}
    expected |= {f"sensor_nodes.{name}.outputs.{m.node}": pins[m.node] for m in node.outputs}
    assert node_rows == expected
    assert set(analog) == {m.node for m in node.channels} and set(pins) == {m.node for m in node.outputs}


def test_every_channel_and_output_is_wired(station: Station, rows: list[tuple[str, str, str, str, str]]) -> None:
    """Each channel and output of the station is the signal of a row (cold junctions: the second input of a
    converter that has its row); an injected channel's row names the node or instrument that feeds it."""
    key_of = {word: r[4] for r in rows for word in r[3].split()}
    converters = {r[4].removeprefix("drivers.") for r in rows if r[4].startswith("drivers.tc_")}
    feeders = {m.core: f"sensor_nodes.{n}.channels.{m.node}" for n, cfg in station.sensor_nodes.items()
               for m in cfg.channels}
    for iname, inst in station.instruments.items():
        for core in [getattr(inst, "channel", None), *getattr(inst, "channels", {}).values()]:
            if core:
                feeders[core] = f"instruments.{iname}"
    unwired = []
    for c in station.core.channels:
        if c.kind == "injected":
            ok = key_of.get(c.name) == feeders.get(c.name, "?")
        elif c.input == 1 and c.driver in converters:
            ok = True
        else:
            ok = c.name in key_of
        if not ok:
            unwired.append(c.name)
    unwired += [o.name for o in station.core.outputs if o.name not in key_of]
    assert not unwired, f"not in the wiring table, or fed by another node or instrument than its row says: {unwired}"
    assert {f"sensor_nodes.{n}.port" for n in station.sensor_nodes} <= set(key_of.values())


def test_rs485_rows_are_the_instruments_addresses_and_buses(
        station: Station, rows: list[tuple[str, str, str, str, str]]) -> None:
    """Each instrument has one row whose address is its own; the rows of one bus share one port, two buses
    never do (the Pfeiffer protocol and Modbus RTU cannot share a bus)."""
    buses: dict[str, set[str]] = {}
    listed = set()
    for terminal, pin, line, _signal, key in rows:
        if pin != "bus":
            continue
        m = re.fullmatch(r"bus (\d+) address (\d+)", line)
        assert m, f"{terminal}: {line!r}"
        inst = station.instruments[key.removeprefix("instruments.")]
        assert inst.address == int(m.group(2)), f"{terminal}: {key} is at address {inst.address}"
        buses.setdefault(m.group(1), set()).add(inst.port)
        listed.add(key)
    assert listed == {f"instruments.{n}" for n in station.instruments}
    assert all(len(ports) == 1 for ports in buses.values()), buses
    assert len({p for ports in buses.values() for p in ports}) == len(buses), buses


def test_node_scaling_maps_the_ne43_limits_onto_the_channel_ranges(station: Station) -> None:
    """150 ohm shunt: 3.8 mA = 0.57 V and 20.5 mA = 3.075 V must land on the channel's range ends, so a broken
    loop reads out of range (FAULT) exactly where hd_reactor_sim.toml's 4-20 mA channels do."""
    channels = {c.name: c for c in station.core.channels}
    for node in station.sensor_nodes.values():
        for m in node.channels:
            c = channels[m.core]
            assert 0.57 * m.scale + m.offset == pytest.approx(c.range_lo, abs=1e-4), m
            assert 3.075 * m.scale + m.offset == pytest.approx(c.range_hi, abs=1e-4), m


def test_expected_node_identity_is_what_the_flash_writes(station: Station) -> None:
    """node_id, firmware and config_hash of [sensor_nodes.node_a] are what `reedge flash --node hd2_node_a`
    builds; a firmware version bump changes the hash (boards/README.md §4), and this says what to write."""
    (node,) = station.sensor_nodes.values()
    import hashlib

    built = {a.path: a.data for a in build(load_node("hd2_node_a"))}
    got = hashlib.sha256(built["node.json"]).hexdigest()[:16]
    assert node.expect_config_hash == got, f"write config_hash = \"{got}\" in stations/hd-02.toml"


def test_the_same_wiring_fits_a_pi_4() -> None:
    """boards/README.md §2 gives one table for the Pi 4 and the Pi 5: the header's BCM lines are the same, so only
    `board` changes (both chips are /dev/gpiochip0 on a current kernel)."""
    text = HD02.read_text()
    assert text.count('board = "rpi5"') == 1
    station = parse_station(text.replace('board = "rpi5"', 'board = "rpi4"'), str(HD02))
    assert station.board == "rpi4"
