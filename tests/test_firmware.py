"""The sensor-node firmware itself: type-checked against the Pico stubs, compiled by mpy-cross, and run
in real MicroPython (the virtual node of hil/virtual_node) for its link, dead-man and REPL behaviour."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from typing import Any

import pytest
import serial  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.devices.node import link
from edge.devices.node.link import Frame, FrameType
from hil.virtual_node import MicroPythonError, MicroPythonWorker, VirtualNode
from tests import support_faults as faults
from tests.support_node import FIRMWARE, H2_VALVE_PIN, MODULES, NODE_JSON, PERIPHERALS, VENT_PIN, stage_firmware

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT = 60.0   # safety net only
MPREMOTE = [sys.executable, "-m", "mpremote"]


def stub_dir(tmp: pathlib.Path) -> pathlib.Path:
    """The single-file Pico stubs gathered into one folder for MYPYPATH (mypy skips loose .pyi in site-packages)."""
    out = tmp / "stubs"
    for dist in ("micropython-rp2-rpi_pico-stubs", "micropython-stdlib-stubs"):
        for f in importlib.metadata.files(dist) or []:
            if f.suffix == ".pyi" and f.parts[0] != "stdlib":
                dst = out / f
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(pathlib.Path(str(f.locate())), dst)
    return out


def test_firmware_type_checks_against_the_pico_stubs(tmp_path: pathlib.Path) -> None:
    site = sysconfig.get_paths()["purelib"]
    files = [str(FIRMWARE / f"{m}.py") for m in ("main", *MODULES)]
    env = {**os.environ, "MYPYPATH": str(stub_dir(tmp_path))}
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "boards/firmware/mypy.ini"),
                           "--custom-typeshed-dir", site, "--cache-dir", str(tmp_path / "cache"), *files],
                          capture_output=True, text=True, env=env, cwd=FIRMWARE, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_firmware_type_check_catches_a_wrong_call(tmp_path: pathlib.Path) -> None:
    """The check above can fail: a Pin call the rp2 port does not have is an error."""
    bad = tmp_path / "bad.py"
    bad.write_text("import machine\nmachine.Pin(15).frobnicate()\n")
    site = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "MYPYPATH": str(stub_dir(tmp_path))}
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "boards/firmware/mypy.ini"),
                           "--custom-typeshed-dir", site, "--cache-dir", str(tmp_path / "cache"), str(bad)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 1 and "frobnicate" in done.stdout


def test_firmware_compiles_with_mpy_cross(tmp_path: pathlib.Path) -> None:
    stage_firmware(tmp_path, compiled=True)
    for m in MODULES:
        mpy = (tmp_path / f"{m}.mpy").read_bytes()
        assert mpy[0:1] == b"M" and mpy[1] == 6       # .mpy format 6: MicroPython >= 1.22, as on the node


@pytest.fixture
def firmware_node(tmp_path: pathlib.Path) -> Iterator[VirtualNode]:
    stage_firmware(tmp_path, compiled=True)            # as flashed: compiled modules
    with VirtualNode(tmp_path, peripherals=PERIPHERALS) as node:
        yield node


_newest: dict[int, int] = {}      # id(decoder) -> newest node seq it decoded (tests never see the seq wrap)


def read_frames(port: serial.Serial, decoder: link.Decoder, want: FrameType, timeout: float = TIMEOUT) -> Frame:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for f in decoder.feed(port.read(max(1, port.in_waiting))):
            if f.type in link.SEQUENCED:
                _newest[id(decoder)] = max(f.seq, _newest.get(id(decoder), -1))
            if f.type == want:
                return f
    raise AssertionError(f"no {want.name} frame")


def ask_hello(port: serial.Serial, decoder: link.Decoder) -> link.Hello:
    """What an edge does first: ask for the node's HELLO and read it."""
    port.write(link.encode(Frame(FrameType.HELLO_REQ, 0, 1, 0)))
    return link.parse_hello(read_frames(port, decoder, FrameType.HELLO).payload)


def fresh_echo(port: serial.Serial, decoder: link.Decoder) -> int:
    """What an edge that reads echoes in its OUTPUTS: the newest node seq received, after one more READINGS
    (the newest, not the last: the node retransmits frames nobody acknowledged, old seqs among them)."""
    read_frames(port, decoder, FrameType.READINGS)
    return _newest[id(decoder)]


def test_compiled_firmware_says_hello_and_holds_outputs_under_its_dead_man(firmware_node: VirtualNode) -> None:
    node = firmware_node
    h2, vent = f"GP{H2_VALVE_PIN}", f"GP{VENT_PIN}"
    with serial.Serial(node.port, 115200, timeout=0.05) as s:
        dec = link.Decoder()
        hello = ask_hello(s, dec)
        assert (hello.node_id, hello.firmware) == ("hd1-node-a", "2.0.0")
        assert hello.outputs == ("h2_inlet_valve", "vent_valve")
        assert hello.safe_levels == (0, 1) and hello.deadman_ms == NODE_JSON["deadman_ms"]
        assert node.outputs()[h2] == 0 and node.outputs()[vent] == 1
        # keep the dead-man fed while commanding both away from safe
        seq = 1
        deadline = time.monotonic() + TIMEOUT
        while not (node.outputs()[h2] == 1 and node.outputs()[vent] == 0) and time.monotonic() < deadline:
            seq += 1
            s.write(link.encode(Frame(FrameType.OUTPUTS, hello.boot, seq, 0,
                                      link.outputs_payload(0b01, fresh_echo(s, dec)))))
        assert node.outputs()[h2] == 1 and node.outputs()[vent] == 0
        # then silence: the outputs go safe and the node reports the trip
        assert node.wait_for(lambda n: n.outputs()[h2] == 0 and n.outputs()[vent] == 1, timeout=TIMEOUT)
        status = None
        while status is None or not status.tripped:
            f = read_frames(s, dec, FrameType.STATUS)
            status = link.parse_status(f.payload) if f.boot == hello.boot else None
        assert status.deadman_trips == 1 and status.levels == 0b10


def test_ctrl_c_from_mpremote_stops_the_firmware_with_outputs_safe(firmware_node: VirtualNode) -> None:
    node = firmware_node
    h2 = f"GP{H2_VALVE_PIN}"
    with serial.Serial(node.port, 115200, timeout=0.05) as s:
        dec = link.Decoder()
        hello = ask_hello(s, dec)
        for seq in range(2, 6):
            s.write(link.encode(Frame(FrameType.OUTPUTS, hello.boot, seq, 0,
                                      link.outputs_payload(0b01, fresh_echo(s, dec)))))
        assert node.wait_for(lambda n: n.outputs()[h2] == 1, timeout=TIMEOUT)
    done = subprocess.run([*MPREMOTE, "connect", node.port, "exec", "import os; print(sorted(os.listdir()))"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "node.json" in done.stdout and "node.mpy" in done.stdout
    assert node.outputs()[h2] == 0


def test_the_node_counts_damaged_duplicated_and_missing_edge_frames(tmp_path: pathlib.Path) -> None:
    """A dead-man of 5 s: the frames are counted whenever the node gets to them (the echo they carry must be
    younger than the dead-man; with 600 ms a loaded machine made the node refuse them as stale: rx_refused 3)."""
    stage_firmware(tmp_path, {**NODE_JSON, "deadman_ms": 5000}, compiled=True)
    with VirtualNode(tmp_path, peripherals=PERIPHERALS) as node, serial.Serial(node.port, 115200, timeout=0.05) as s:
        dec = link.Decoder()
        hello = ask_hello(s, dec)

        echo = fresh_echo(s, dec)

        def outputs(seq: int) -> bytes:
            return link.encode(Frame(FrameType.OUTPUTS, hello.boot, seq, 0, link.outputs_payload(0b10, echo)))

        bad = bytearray(outputs(2))
        bad[3] ^= 0x40                                   # CRC error (or a framing error if it hits COBS)
        s.write(bytes(bad) + outputs(3) + outputs(3) + outputs(6))   # 2 damaged, 3 twice, 4 and 5 never sent
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            f = read_frames(s, dec, FrameType.STATUS)
            st_ = link.parse_status(f.payload)
            if st_.rx_frames >= 4:
                break
        assert st_.rx_crc_errors + st_.rx_framing_errors == 1
        assert (st_.rx_duplicates, st_.rx_gaps) == (1, 3)             # missing: 2 (damaged), 4, 5
        assert st_.commanded == 0b10


def test_the_node_refuses_and_counts_payloads_of_the_wrong_length(firmware_node: VirtualNode) -> None:
    """Whole, checked frames whose payload does not fit their type are refused and counted, never guessed at."""
    node = firmware_node
    h2 = f"GP{H2_VALVE_PIN}"
    with serial.Serial(node.port, 115200, timeout=0.05) as s:
        dec = link.Decoder()
        hello = ask_hello(s, dec)
        wrong = [(FrameType.OUTPUTS, b"\x00\x01\x00"), (FrameType.OUTPUTS, b"\x00\x01"),   # protocol 2 before echo
                 (FrameType.OUTPUTS, b"\x00\x01\x00\x00\x00"), (FrameType.OUTPUTS, b"\x01"), (FrameType.OUTPUTS, b""),
                 (FrameType.HELLO_REQ, b"\x00"), (FrameType.ENTER_REPL, b"REPL\x00"), (FrameType.RESET, b"RESE"),
                 (0x20, b"\x00\x01")]
        s.write(b"".join(link.encode(Frame(t, hello.boot, 2 + i, 0, p)) for i, (t, p) in enumerate(wrong)))
        deadline = time.monotonic() + TIMEOUT
        st_ = None
        while st_ is None or st_.rx_refused < len(wrong):
            assert time.monotonic() < deadline, st_
            f = read_frames(s, dec, FrameType.STATUS)
            st_ = link.parse_status(f.payload) if f.boot == hello.boot else None
        assert st_.rx_refused == len(wrong) and st_.commanded == 0 and st_.rx_crc_errors == st_.rx_framing_errors == 0
        assert node.outputs()[h2] == 0
        obey = link.outputs_payload(0b01, fresh_echo(s, dec))
        s.write(link.encode(Frame(FrameType.OUTPUTS, hello.boot, 20, 0, obey)))
        assert node.wait_for(lambda n: n.outputs()[h2] == 1, timeout=TIMEOUT)     # the right length is obeyed


def test_missing_npm_is_named_when_micropython_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import hil.virtual_node as vn
    from hil import npm

    monkeypatch.setattr(npm, "installed_version", lambda folder, package: None)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "npm" else real_which(name))
    with pytest.raises(vn.VirtualNodeError, match="npm is missing"):
        vn.ensure_runtime()


def test_a_missing_node_json_is_reported_in_hello_and_drives_nothing(tmp_path: pathlib.Path) -> None:
    stage_firmware(tmp_path)
    (tmp_path / "node.json").write_text('{"node_id": ""}')
    with VirtualNode(tmp_path) as node, serial.Serial(node.port, 115200, timeout=0.05) as s:
        hello = ask_hello(s, link.Decoder())
        assert "node_id" in hello.error and hello.outputs == ()
        assert set(node.outputs()) <= {"LED"}


def test_a_dead_man_shorter_than_two_frame_gaps_is_a_config_error(tmp_path: pathlib.Path) -> None:
    """An OUTPUTS frame can only echo a node frame one frame gap old at best: a dead-man under two gaps would
    trip on an edge doing everything right, so the node refuses it and drives nothing."""
    stage_firmware(tmp_path, {**NODE_JSON, "deadman_ms": 199, "period_ms": 100})
    with VirtualNode(tmp_path) as node, serial.Serial(node.port, 115200, timeout=0.05) as s:
        hello = ask_hello(s, link.Decoder())
        assert "deadman_ms 199 leaves no margin" in hello.error and "2 x 100 ms" in hello.error, hello.error
        assert hello.outputs == () and set(node.outputs()) <= {"LED"}


def test_virtual_node_files_survive_a_hard_reset_and_raw_paste_is_refused(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "hello.py"
    src.write_text("print('hi from flash')\n")
    flash = tmp_path / "flash"
    flash.mkdir()
    with VirtualNode(flash) as node:
        done = subprocess.run([*MPREMOTE, "connect", node.port, "fs", "cp", str(src), ":hello.py"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert (flash / "hello.py").read_text() == src.read_text()
        node.reset()
        done = subprocess.run([*MPREMOTE, "connect", node.port, "exec", "import hello"],
                              capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == "hi from flash", done.stderr
        with serial.Serial(node.port, 115200, timeout=0.1) as s:       # mpremote's raw-paste probe
            s.write(b"\r\x03\x03\x01")
            got = b""
            while not got.endswith(b"raw REPL; CTRL-B to exit\r\n>"):
                chunk = s.read(64)
                assert chunk, got
                got += chunk
            s.write(b"\x05A\x01")
            assert s.read(2) == b"R\x00"
            s.write(b"\x02")


# ---- the firmware's frame codec, in MicroPython ----

@pytest.fixture(scope="module")
def worker() -> Iterator[MicroPythonWorker]:
    with MicroPythonWorker(FIRMWARE) as w:
        w.run("import nodelink as L, binascii")
        yield w


def test_edge_and_firmware_codecs_agree_both_ways(worker: MicroPythonWorker) -> None:
    payload = bytes(range(256))[:300] + b"\x00\x03\x1b" * 20
    edge_wire = link.encode(Frame(FrameType.OUTPUTS, 0xBEEF, 0x1234, 0xFFFF, payload))
    got = worker.run(f"print(repr(L.Decoder().feed(binascii.unhexlify({edge_wire.hex()!r}))))")
    assert got.strip() == repr([(0x10, 0xBEEF, 0x1234, 0xFFFF, payload)])
    node_hex = worker.run("print(binascii.hexlify(L.encode(2, 7, 65535, 3, binascii.unhexlify("
                          f"{payload.hex()!r}))).decode())")
    assert link.Decoder().feed(bytes.fromhex(node_hex.strip())) == [Frame(2, 7, 65535, 3, payload)]
    assert bytes.fromhex(node_hex.strip()) == link.encode(Frame(2, 7, 65535, 3, payload))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=600), max_size=6))
def test_random_bytes_never_crash_the_firmware_decoder(worker: MicroPythonWorker, chunks: list[bytes]) -> None:
    code = ("d = L.Decoder()\nn = 0\n"
            + "".join(f"n += len(d.feed(binascii.unhexlify({c.hex()!r})))\n" for c in chunks)
            + "print(n, d.crc_errors, d.framing_errors, d.oversize)")
    try:
        out = worker.run(code)
    except MicroPythonError as e:          # any exception inside MicroPython is a failure
        pytest.fail(f"firmware decoder raised: {e}")
    frames, crc, framing, oversize = (int(x) for x in out.split())
    edge = link.Decoder()
    edge_frames = sum(len(edge.feed(c)) for c in chunks)
    assert (frames, crc, framing, oversize) == (edge_frames, edge.crc_errors, edge.framing_errors, edge.oversize)


# ---- damaged frames against the node's decoder (issue 14 defect 7) ----

FUZZ_PER_KIND = 20_000          # x 7 kinds under CPython: 140,000 damaged frames
MICROPYTHON_PER_KIND = 2_000    # x 7 kinds in real MicroPython: the same decoder, the same verdicts
SEED = 14


def edge_encode(t: faults.Tup) -> bytes:
    return link.encode(Frame(*t))


@pytest.fixture(scope="module")
def nodelink() -> Any:
    """The firmware's nodelink.py imported by CPython: pure Python, so it can take the volume."""
    spec = importlib.util.spec_from_file_location("nodelink_on_cpython", FIRMWARE / "nodelink.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", faults.KINDS)
def test_the_node_decoder_accepts_no_damaged_frame(nodelink: Any, kind: str) -> None:
    def decode(stream: bytes) -> list[faults.Tup]:
        return list(nodelink.Decoder().feed(stream))

    assert faults.false_accepts(kind, FUZZ_PER_KIND, edge_encode, decode, SEED) == 0


def test_the_node_decoder_in_micropython_judges_damaged_frames_as_the_edge_does(worker: MicroPythonWorker) -> None:
    for kind in faults.KINDS:
        streams = list(faults.samples(kind, MICROPYTHON_PER_KIND, edge_encode, SEED))
        got: list[str] = []
        for at in range(0, len(streams), 200):        # a few hundred at a time: the interpreter's stack is small
            code = ("out = []\n"
                    f"for h in {[s.hex() for s, _ in streams[at:at + 200]]!r}:\n"
                    "    d = L.Decoder()\n"
                    "    fs = d.feed(binascii.unhexlify(h))\n"
                    "    out.append(' '.join(['%d,%d,%d,%d,%s' % (f[0], f[1], f[2], f[3], "
                    "binascii.hexlify(f[4]).decode()) for f in fs] + "
                    "['%d/%d/%d' % (d.crc_errors, d.framing_errors, d.oversize)]))\n"
                    "print('\\n'.join(out))")
            got += worker.run(code).rstrip("\n").split("\n")
        expected = []
        for stream, follower in streams:
            d = link.Decoder()
            fs = d.feed(stream)
            assert all((f.type, f.boot, f.seq, f.ack, f.payload) == follower for f in fs)
            expected.append(" ".join([f"{f.type},{f.boot},{f.seq},{f.ack},{f.payload.hex()}" for f in fs]
                                     + [f"{d.crc_errors}/{d.framing_errors}/{d.oversize}"]))
        assert got == expected, kind


def test_node_json_in_the_fixture_is_what_the_node_reads(tmp_path: pathlib.Path) -> None:
    stage_firmware(tmp_path)
    assert json.loads((tmp_path / "node.json").read_text()) == NODE_JSON
