"""`reedge run` with a [sensor_nodes] section: the station's controller process links to the real node
firmware in a real MicroPython over a pty and the node's readings reach the core as injected values
(its status lines count them). The link itself is tested in depth by tests/test_sensornode.py."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

from edge.devices.node.hello import firmware_version
from edge.spec.broker import parse_broker_url
from edge.spec.resources import firmware_dir
from edge.telemetry.watch import Watch
from hil.regfile import RegisterFile
from hil.virtual_node import VirtualNode
from tests.mqtt_broker import Mosquitto
from tests.support_node import PERIPHERALS, stage_firmware

ROOT = pathlib.Path(__file__).resolve().parent.parent
STATION = (ROOT / "stations" / "hd_reactor_sim.toml").read_text()

NODE_CHANNEL = """
[channels.retort_tc_node]    # a second retort thermocouple, on the sensor node's MAX31856
kind = "injected"
unit = "degC"
range = [-50.0, 1100.0]
max_age_ms = 2000
"""


def node_section(port: str) -> str:
    return f"""
[sensor_nodes.retort_node]
port = "{port}"
node_id = "hd1-node-a"
keepalive_ms = 100
[sensor_nodes.retort_node.channels]
retort_tc = {{ core = "retort_tc_node" }}
[sensor_nodes.retort_node.outputs]
vent_valve = "vent_valve"
"""


def status_lines(path: pathlib.Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text().splitlines():
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        if data.get("type") == "status":
            lines.append(data)
    return lines


def test_reedge_run_feeds_the_core_from_a_sensor_node(tmp_path: pathlib.Path) -> None:
    fs = tmp_path / "node-fs"
    fs.mkdir()
    stage_firmware(fs)
    regs_path = tmp_path / "plant.regs"
    broker = Mosquitto(tmp_path / "broker").start()
    with contextlib.closing(broker), Watch(parse_broker_url(broker.url), site="pilot-line", station="hd-01",
                                           client_id="test-node-fw", protocol="5", keep=True).start() as watch, \
            RegisterFile.create(regs_path) as regs, VirtualNode(fs, peripherals=PERIPHERALS) as node:
        regs.regs.plant_alive = 1       # wall clock: no plant process needed to read a node
        station = tmp_path / "station.toml"
        text = STATION.replace('path = "/dev/shm/reedge-hd-01.regs"', f'path = "{regs_path}"', 1)
        assert str(regs_path) in text
        text = text.replace("\n[channels.lid_closed]", NODE_CHANNEL + "\n[channels.lid_closed]", 1)
        station.write_text(text + node_section(node.port))
        out_path = tmp_path / "controller.out"
        with open(out_path, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--station", str(station),
                                     "--state-dir", str(tmp_path / "state"), "--json", "--broker", broker.url],
                                    stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            try:
                deadline = time.monotonic() + 60
                readings = 0
                while time.monotonic() < deadline and readings < 20:
                    assert proc.poll() is None, out_path.read_text()[-3000:]
                    stats = [s.get("sensor_nodes", {}).get("retort_node", {}) for s in status_lines(out_path)]
                    readings = max((s.get("readings", 0) for s in stats), default=0)
                    time.sleep(0.2)
                assert readings >= 20, out_path.read_text()[-3000:]
                last = stats[-1]
                assert last["hellos"] >= 1 and last["hello_mismatches"] == 0 and last["crc_errors"] == 0
                assert last["injected"] >= 20, "the readings went into the core as injected values"
                # the MQTT station description names the firmware the node's HELLO reported (issue 16 item 11)
                version = firmware_version(firmware_dir() / "pico_node")
                assert watch.wait(lambda w: any(
                    c.envelope is not None and c.envelope.stream == "description"
                    and c.envelope.body["firmware"]["retort_node"]["reported"] == version for c in w.messages),
                    60), [c.envelope.body["firmware"] for c in watch.snapshot()
                          if c.envelope is not None and c.envelope.stream == "description"]
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
        assert proc.returncode == 0, out_path.read_text()[-3000:]
        assert '"type": "exit"' in out_path.read_text(), "stopped cleanly on SIGTERM"
