"""The edge's sensor-node link against the real firmware in real MicroPython over a real pty.

Each test boots the virtual Pico (hil/virtual_node) with the firmware and node.json in its flash,
starts a real C core with injected channels, and runs ``edge.devices.node.client.SensorNode`` between
them over pyserial. Waits are polls with generous safety nets, never timing assertions.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import pty
import select
import threading
import time
import tty
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
import serial  # type: ignore[import-untyped]

from edge.core import ChannelStatus
from edge.devices.node import link
from edge.devices.node.client import AcceptedReading, SensorNode
from edge.devices.node.link import FrameType
from edge.spec.sensor_node import ChannelMap, OutputMap, SensorNodeConfig
from hil.virtual_node import VirtualNode
from tests.support_faults import protocol_1_decode, protocol_1_encode
from tests.support_node import (
    H2_VALVE_PIN,
    NODE_JSON,
    PERIPHERALS,
    TC_CS,
    VENT_PIN,
    DamagingPort,
    RigCore,
    damaging_opener,
    stage_firmware,
)

TIMEOUT = 60.0   # safety net only


def wait_until(predicate: Callable[[], object], timeout: float = TIMEOUT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    assert predicate(), f"gave up waiting for {what or predicate}"


def config(port: str, **kw: object) -> SensorNodeConfig:
    base: dict[str, object] = dict(
        name="retort_node", port=port, keepalive_ms=100, reconnect_s=0.2, hello_retry_s=0.3,
        expect_node_id="hd1-node-a", expect_firmware="2.0.0",
        channels=(ChannelMap("retort_tc", "retort_temp"),
                  ChannelMap("chamber_pressure", "chamber_pressure", scale=2.5, offset=-2.5)),  # 1..5 V -> 0..10 bar
        outputs=(OutputMap("h2_inlet_valve", "h2_inlet_valve"), OutputMap("vent_valve", "vent_valve")))
    base.update(kw)
    return SensorNodeConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def rig(tmp_path: pathlib.Path) -> Iterator[tuple[VirtualNode, RigCore]]:
    fs = tmp_path / "flash"
    fs.mkdir()
    stage_firmware(fs)
    core = RigCore(tmp_path)
    try:
        with VirtualNode(fs, peripherals=PERIPHERALS) as node:
            yield node, core
    finally:
        core.close()


def linked(sn: SensorNode) -> Callable[[], bool]:
    return lambda: sn.hello is not None and sn.stats().samples >= 3


def test_readings_arrive_as_injected_channels_with_status(rig: tuple[VirtualNode, RigCore]) -> None:
    node, rc = rig
    seen: list[AcceptedReading] = []
    with SensorNode(config(node.port), rc.core, on_reading=seen.append) as sn:
        wait_until(linked(sn), what="link")
        hello = sn.hello
        assert hello is not None
        raw = (node.fs_dir / "node.json").read_bytes()
        assert hello.config_hash == hashlib.sha256(raw).hexdigest()[:16]
        assert (hello.node_id, hello.firmware) == ("hd1-node-a", "2.0.0")
        assert hello.channels == ("retort_tc", "retort_tc_cj", "chamber_pressure")
        wait_until(lambda: rc.core.value("retort_temp").ok)
        temp, press = rc.core.value("retort_temp"), rc.core.value("chamber_pressure")
        assert temp.value == pytest.approx(851.25)
        assert press.value == pytest.approx(5.0, abs=1e-3)        # 16000 counts = 3.0 V = 5 bar
        assert temp.t_ns <= rc.core.now_ns()

        node.set_max31856(TC_CS, fault=0x01)                      # thermocouple open circuit
        wait_until(lambda: rc.core.value("retort_temp").status & ChannelStatus.FAULT, what="FAULT")
        node.set_max31856(TC_CS, temp_c=900.5, fault=0)
        wait_until(lambda: rc.core.value("retort_temp").ok and rc.core.value("retort_temp").value == 900.5)
        node.set_ads1115(0x48, 0, 32767)                          # pegged at full scale: out of range
        wait_until(lambda: rc.core.value("chamber_pressure").status & ChannelStatus.RANGE, what="RANGE")
    stats = sn.stats()
    assert stats.crc_errors == stats.framing_errors == stats.missed_samples == stats.lost == 0
    samples = [r.node_sample for r in seen if r.channel == "retort_temp"]
    assert samples == list(range(samples[0], samples[0] + len(samples)))   # in order, none twice, none missing


def test_outputs_follow_the_core_and_drop_safe_when_the_edge_stops(rig: tuple[VirtualNode, RigCore]) -> None:
    node, rc = rig
    h2, vent = f"GP{H2_VALVE_PIN}", f"GP{VENT_PIN}"
    sn = SensorNode(config(node.port), rc.core)
    sn.start()
    try:
        wait_until(linked(sn), what="link")
        wait_until(lambda: rc.core.value("retort_temp").ok)
        assert node.outputs()[h2] == 0 and node.outputs()[vent] == 1          # safe levels
        rc.core.request_output("h2_inlet_valve", 1)
        rc.core.request_output("vent_valve", 0)
        wait_until(lambda: node.outputs()[h2] == 1 and node.outputs()[vent] == 0, what="outputs energised")
        wait_until(lambda: (s := sn.stats().node_status) is not None and s.linked and s.levels == 0b01)
    finally:
        sn.stop()
    # the edge went quiet: the node's dead-man (600 ms) drops both to their safe level
    wait_until(lambda: node.outputs()[h2] == 0 and node.outputs()[vent] == 1, what="dead-man")


def test_unplugged_node_goes_stale_trips_and_relinks_after_replug(rig: tuple[VirtualNode, RigCore]) -> None:
    node, rc = rig
    with SensorNode(config(node.port), rc.core) as sn:
        wait_until(linked(sn), what="link")
        wait_until(lambda: rc.core.value("retort_temp").ok)
        boot = sn.hello.boot if sn.hello else None
        node.unplug()
        wait_until(lambda: rc.core.value("retort_temp").status & ChannelStatus.STALE, what="STALE")
        wait_until(lambda: rc.core.rules()["retort_node_lost"].tripped, what="stale interlock")
        wait_until(lambda: sn.stats().disconnects >= 1)
        assert sn.stats().open_failures >= 1 or sn.stats().disconnects >= 1
        node.replug()
        wait_until(lambda: sn.hello is not None and sn.hello.boot != boot, what="relink")
        wait_until(lambda: rc.core.value("retort_temp").ok, what="fresh values")
        stats = sn.stats()
        assert stats.connects >= 2
        assert stats.node_resets == 1          # a new boot of the same node, seen through its HELLO


def test_node_reset_is_detected_and_readings_continue(rig: tuple[VirtualNode, RigCore]) -> None:
    node, rc = rig
    seen: list[AcceptedReading] = []
    with SensorNode(config(node.port), rc.core, on_reading=seen.append) as sn:
        wait_until(linked(sn), what="link")
        first_boot = sn.hello.boot if sn.hello else None
        node.reset()
        wait_until(lambda: sn.stats().node_resets == 1, what="reset detected")
        assert sn.hello is not None and sn.hello.boot != first_boot
        n = sn.stats().samples
        wait_until(lambda: sn.stats().samples >= n + 3)
        assert sn.stats().missed_samples == 0
    after = [r.node_sample for r in seen if r.channel == "retort_temp" and r.node_boot != first_boot]
    assert after and after == list(range(after[0], after[0] + len(after)))


@pytest.mark.parametrize("kind", ["flip", "drop", "dupframe"])
def test_damaged_bytes_are_counted_and_no_reading_is_lost(rig: tuple[VirtualNode, RigCore], kind: str) -> None:
    node, rc = rig
    ports: list[DamagingPort] = []
    seen: list[AcceptedReading] = []
    with SensorNode(config(node.port), rc.core, on_reading=seen.append, opener=damaging_opener(ports)) as sn:
        wait_until(linked(sn), what="link")
        ports[-1].arm(kind, at=25, n=3)
        wait_until(ports[-1].done.is_set, what="damage applied")
        if kind == "dupframe":
            wait_until(lambda: sn.stats().duplicates >= 1, what=f"duplicate counted: {sn.stats()}")
        else:
            wait_until(lambda: sn.stats().crc_errors + sn.stats().framing_errors >= 1, what="damage counted")
            wait_until(lambda: sn.stats().gaps >= 1, what="hole seen")
        n = sn.stats().samples
        wait_until(lambda: sn.stats().samples >= n + 5, what="recovery")       # retransmission filled the hole
        if kind != "dupframe":     # the node says it resent (its STATUS comes once a second)
            wait_until(lambda: (st := sn.stats().node_status) is not None and st.tx_retransmits >= 1)
        stats = sn.stats()
    assert stats.lost == 0 and stats.missed_samples == 0
    samples = [r.node_sample for r in seen if r.channel == "retort_temp"]
    assert samples == list(range(samples[0], samples[0] + len(samples)))


class Protocol1Node:
    """A node still running protocol-1 firmware, on a real pty: HELLO once, then READINGS every 50 ms,
    every frame in the old format (no length, CRC-16); it records what the edge writes to it."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.heard = bytearray()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        hello = json.dumps({"proto": 1, "fw": "1.0.0", "node": "hd1-node-a", "cfg": "00", "uid": "e6", "boot": 9,
                            "channels": ["retort_tc"], "outputs": ["h2_inlet_valve"], "safe": [0],
                            "deadman_ms": 600, "period_ms": 50, "error": ""}).encode()
        os.write(self.master, b"\x00" + protocol_1_encode((FrameType.HELLO, 9, 0, 0, hello)))
        seq = 0
        while not self.stop.wait(0.05):
            seq += 1
            readings = link.readings_payload(seq, seq, seq * 50, [(0, 0, 0, 850.0)])
            os.write(self.master, protocol_1_encode((FrameType.READINGS, 9, seq, 0, readings)))
            while select.select([self.master], [], [], 0)[0]:
                self.heard += os.read(self.master, 4096)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=TIMEOUT)
        os.close(self.master)
        os.close(self.slave)


def test_a_node_speaking_link_protocol_1_is_named_and_never_commanded(tmp_path: pathlib.Path) -> None:
    old = Protocol1Node()
    rc = RigCore(tmp_path)
    try:
        with SensorNode(config(old.port), rc.core) as sn:
            wait_until(lambda: "reflash the node" in sn.stats().last_error, what="old protocol named")
            stats = sn.stats()
            assert "speaks link protocol 1, this edge speaks 2" in stats.last_error
            assert stats.old_protocol >= 3 and stats.frames == 0 and stats.readings == 0 and sn.hello is None
            assert rc.core.value("retort_temp").status & ChannelStatus.NODATA
    finally:
        old.close()
        rc.close()
    sent = link.Decoder().feed(bytes(old.heard) + b"\x00")
    assert sent and {f.type for f in sent} == {FrameType.HELLO_REQ}       # asked for HELLO; never an OUTPUTS
    assert protocol_1_decode(bytes(old.heard)) == []   # nothing it could take: no HELLO_REQ below seq 46101 passes


def test_the_flash_hello_check_names_a_node_answering_in_link_protocol_1(monkeypatch: pytest.MonkeyPatch) -> None:

    from edge.devices.node import hello as hello_check

    monkeypatch.setattr(hello_check, "HELLO_TIMEOUT_S", 2.0)     # how long to wait for a protocol-2 HELLO
    old = Protocol1Node()
    try:
        with serial.Serial(old.port, 115200, timeout=0.05) as ser:
            session = SimpleNamespace(port=old.port, transport=SimpleNamespace(serial=ser))
            with pytest.raises(hello_check.PicoNodeError, match=r"answers in link protocol 1 .*Reflash the node"):
                hello_check.check_pico_node_hello(session, {"firmware_version": "1.0.0"})  # type: ignore[arg-type]
    finally:
        old.close()


def test_a_node_with_the_wrong_config_is_refused(rig: tuple[VirtualNode, RigCore]) -> None:
    node, rc = rig
    with SensorNode(config(node.port, expect_config_hash="0123456789abcdef"), rc.core) as sn:
        wait_until(lambda: sn.stats().hello_mismatches >= 1, what="mismatch")
        time.sleep(0.5)
        assert sn.hello is None
        assert "config hash" in sn.stats().last_error
        assert rc.core.value("retort_temp").status & ChannelStatus.NODATA
        assert node.outputs()[f"GP{VENT_PIN}"] == 1       # never commanded: still safe


def test_a_node_whose_dead_man_the_keepalive_cannot_feed_is_refused(rig: tuple[VirtualNode, RigCore]) -> None:
    """deadman_ms 600 < 2 x period 100 + keepalive 450: the echoed frame would age past the dead-man between two
    keep-alives, so the edge refuses the node, naming both, and never commands it."""
    node, rc = rig
    with SensorNode(config(node.port, keepalive_ms=450), rc.core) as sn:
        wait_until(lambda: sn.stats().hello_mismatches >= 1, what="mismatch")
        assert sn.hello is None
        assert "deadman_ms 600 is shorter than" in sn.stats().last_error and "keepalive_ms (450)" in \
            sn.stats().last_error, sn.stats().last_error
        assert node.outputs()[f"GP{VENT_PIN}"] == 1       # never commanded: still safe
        assert [e for e in node.pin_log() if e.pin == f"GP{VENT_PIN}" and e.level == 0] == []


def test_enter_repl_leaves_outputs_safe_and_the_node_at_its_repl(rig: tuple[VirtualNode, RigCore]) -> None:
    node, rc = rig
    with SensorNode(config(node.port, revive_after_s=0), rc.core) as sn:
        wait_until(linked(sn), what="link")
        rc.core.request_output("h2_inlet_valve", 1)
        wait_until(lambda: node.outputs()[f"GP{H2_VALVE_PIN}"] == 1)
        sn.enter_repl()
        wait_until(lambda: node.outputs()[f"GP{H2_VALVE_PIN}"] == 0, what="safe at REPL")
        wait_until(lambda: sn.parked, what="parked")
        sent = sn.stats().bytes_tx
        time.sleep(1.0)     # keep-alives are due every 100 ms, a HELLO request after 2 s of silence
        assert sn.stats().bytes_tx == sent, "a parked link sent bytes to the node's REPL"
    with serial.Serial(node.port, 115200, timeout=0.2) as s:
        s.write(b"\r")
        got = b""
        deadline = time.monotonic() + TIMEOUT
        while b">>> " not in got and time.monotonic() < deadline:
            got += s.read(256)
        assert b">>> " in got


def test_a_parked_node_is_left_alone_until_resumed(rig: tuple[VirtualNode, RigCore]) -> None:
    """enter_repl parks the link: no revive restarts the node behind the back of whoever wanted it at its
    REPL (revive_after_s is 1 s here); resume() restarts its firmware and the edge links to the new boot."""
    node, rc = rig
    with SensorNode(config(node.port, revive_after_s=1.0), rc.core) as sn:
        wait_until(linked(sn), what="link")
        first_boot = sn.hello.boot if sn.hello else None
        sn.enter_repl()
        wait_until(lambda: sn.parked, what="parked")
        resets = len(node.resets)
        time.sleep(3.0)     # three revive periods
        assert sn.parked and sn.hello is None and len(node.resets) == resets and sn.stats().revives == 0
        sn.resume()
        wait_until(lambda: sn.hello is not None and sn.hello.boot != first_boot, what="relinked after resume")
        assert not sn.parked and sn.stats().revives >= 1    # more if the node booted slower than a revive period


def test_bad_config_values_are_refused_with_a_clear_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="mapped twice"):
        SensorNodeConfig("n", "/dev/null", channels=(ChannelMap("a", "x"), ChannelMap("a", "y")))
    with pytest.raises(ValueError, match="keepalive_ms"):
        SensorNodeConfig("n", "/dev/null", keepalive_ms=0)
    rc = RigCore(tmp_path)
    try:
        with pytest.raises(ValueError, match="no channel 'nope'"):
            SensorNode(SensorNodeConfig("n", "/dev/null", channels=(ChannelMap("a", "nope"),)), rc.core)
        with pytest.raises(ValueError, match="no output"):
            SensorNode(SensorNodeConfig("n", "/dev/null", outputs=(OutputMap("a", "nope"),)), rc.core)
    finally:
        rc.close()


def test_node_json_fixture_is_valid_json() -> None:
    assert json.loads(json.dumps(NODE_JSON))["node_id"] == "hd1-node-a"


def test_a_node_left_at_its_repl_comes_back(rig: tuple[VirtualNode, RigCore]) -> None:
    """Stopped at its REPL by a stray Ctrl-C (another program on its port), the node is soft-reset by the
    edge's revive bytes, or sooner by a Ctrl-D inside the frames the REPL receives; either way it relinks."""
    node, rc = rig
    with SensorNode(config(node.port, revive_after_s=1.0), rc.core) as sn:
        wait_until(linked(sn), what="link")
        first_boot = sn.hello.boot if sn.hello else None
        with serial.Serial(node.port, 115200) as stray:     # not exclusive: a terminal left open on the port
            stray.write(b"\x03")
        wait_until(lambda: sn.hello is not None and sn.hello.boot != first_boot, what="relinked to a new boot")
        assert sn.stats().node_resets >= 1
        n = sn.stats().samples
        wait_until(lambda: sn.stats().samples >= n + 3)
    assert "soft" in node.resets
