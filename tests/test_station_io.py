"""The station file's serial devices: [instruments.NAME] (gauges) and [sensor_nodes.NAME] (Pico nodes).

Each feeds injected channels of the core; a channel fed twice, a channel that would never go stale,
or an unknown name is refused with its key path."""

from __future__ import annotations

import pathlib

import pytest

from edge.spec.instruments.pfeiffer import PfeifferConfig
from edge.spec.reader import SpecError
from edge.spec.station import parse_station

ROOT = pathlib.Path(__file__).resolve().parent.parent
BASE = (ROOT / "stations" / "hd_reactor_sim.toml").read_text()

# a node with its own injected channel: the retort's second thermocouple, read by the node's MAX31856
NODE_CHANNEL = """
[channels.retort_tc_node]
kind = "injected"
unit = "degC"
range = [-50.0, 1100.0]
max_age_ms = 2000
"""
NODE = """
[sensor_nodes.retort_node]
port = "/dev/serial/by-id/usb-MicroPython_Board_in_FS_mode_e66038b7130f2e2d-if00"
node_id = "hd1-node-a"
firmware = "1.0.0"
keepalive_ms = 200
[sensor_nodes.retort_node.channels]
tc0 = { core = "retort_tc_node" }
[sensor_nodes.retort_node.outputs]
beacon = "alarm_beacon"
"""


def station_with(extra: str, channels: str = NODE_CHANNEL) -> str:
    return BASE.replace("\n[channels.lid_closed]", channels + "\n[channels.lid_closed]", 1) + extra


def errors(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_station(text, "st.toml")
    return str(info.value)


def test_the_example_station_polls_its_vacuum_gauge() -> None:
    station = parse_station(BASE, "st.toml")
    gauge = station.instruments["vacuum_gauge"]
    assert isinstance(gauge, PfeifferConfig)
    assert gauge.channel == "chamber_vacuum" and gauge.address == 1 and gauge.poll_ms == 200.0
    assert station.sensor_nodes == {}


def test_a_sensor_node_feeds_an_injected_channel_and_follows_an_output() -> None:
    node = parse_station(station_with(NODE), "st.toml").sensor_nodes["retort_node"]
    assert node.expect_node_id == "hd1-node-a" and node.expect_firmware == "1.0.0"
    assert [(c.node, c.core, c.scale) for c in node.channels] == [("tc0", "retort_tc_node", 1.0)]
    assert [(o.node, o.core) for o in node.outputs] == [("beacon", "alarm_beacon")]


@pytest.mark.parametrize(("change", "key", "words"), [
    (('core = "retort_tc_node"', 'core = "chamber_temp"'), "sensor_nodes.retort_node.channels.tc0.core",
     "must be an injected channel"),
    (('core = "retort_tc_node"', 'core = "chamber_vacuum"'), "sensor_nodes.retort_node.channels.tc0.core",
     "already fed by instruments.vacuum_gauge"),
    (('core = "retort_tc_node"', 'core = "retort_tc_nod"'), "sensor_nodes.retort_node.channels.tc0.core",
     "did you mean 'retort_tc_node'"),
    (('beacon = "alarm_beacon"', 'beacon = "alarm_becon"'), "sensor_nodes.retort_node.outputs.beacon",
     "did you mean 'alarm_beacon'"),
    (('keepalive_ms = 200', 'keepalive_ms = 5'), "sensor_nodes.retort_node.keepalive_ms", "20"),
    (('node_id = "hd1-node-a"', 'nodeid = "hd1-node-a"'), "sensor_nodes.retort_node.nodeid", "did you mean"),
    (('port = "/dev/serial', 'prt = "/dev/serial'), "sensor_nodes.retort_node.port", "missing"),
])
def test_a_wrong_sensor_node_is_refused_with_its_key(change: tuple[str, str], key: str, words: str) -> None:
    assert change[0] in NODE
    message = errors(station_with(NODE.replace(*change, 1)))
    assert f"st.toml: {key}: " in message and words in message, message


def test_an_injected_channel_without_max_age_is_refused_so_a_quiet_node_always_goes_stale() -> None:
    message = errors(station_with(NODE, NODE_CHANNEL.replace("max_age_ms = 2000\n", "")))
    assert "st.toml: channels.retort_tc_node.max_age_ms: missing" in message


def test_a_wrong_instrument_is_refused_with_its_key() -> None:
    message = errors(BASE.replace('type = "pfeiffer"', 'type = "pfeifer"', 1))
    assert "st.toml: instruments.vacuum_gauge.type: unknown instrument type 'pfeifer'" in message
    message = errors(BASE.replace('channel = "chamber_vacuum"   # the injected', 'channel = "chamber_temp"   #', 1))
    assert "instruments.vacuum_gauge.channel" in message and "injected" in message
