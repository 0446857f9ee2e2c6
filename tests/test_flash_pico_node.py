"""``reedge flash`` of the REAL sensor firmware (boards/firmware/pico_node) with the example node
definition boards/nodes/hd1_node_a.toml onto the virtual Pico: the firmware reads the node.json the
flash writes, and the registered hello check (edge.devices.node.hello) compares the node's HELLO frame with it.

The node definition is copied to a temporary nodes folder so a test can change it; its firmware is
the project's own folder. A node that runs something other than what was flashed is simulated
through the flash's copy seam: besides the real file it leaves a boot.py on the node, which runs at
every boot before main.py, as a bench script forgotten on a node would.
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import serial  # type: ignore[import-untyped]

import edge.devices.node.hello
from edge.devices.node import link
from edge.devices.node.flash import HELLO_CHECKS, FlashError, FlashResult, build, flash
from edge.devices.node.link import Frame, FrameType
from edge.devices.node.session import NodeSession
from edge.spec.node import load_node
from hil.virtual_node import VirtualNode
from tests.support_node import PERIPHERALS

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "boards" / "nodes" / "hd1_node_a.toml"
FIRMWARE_FILES = ["ads1115.mpy", "main.py", "max31856.mpy", "node.json", "node.mpy", "nodelink.mpy"]
TIMEOUT = 60.0  # safety net only

# a boot.py that changes the node's node.json at every boot, after the flash has verified it
TAMPER_BOOT = """\
import json
with open('node.json') as f:
    d = json.load(f)
d['period_ms'] = 500
with open('node.json', 'w') as f:
    json.dump(d, f)
"""
# a boot.py that never returns: main.py, and so the firmware, never runs
STUCK_BOOT = "import time\nprint('bench script running')\nwhile True:\n    time.sleep_ms(100)\n"


@pytest.fixture
def nodes(tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / "nodes"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder / EXAMPLE.name)
    return folder


@pytest.fixture
def vnode(tmp_path: pathlib.Path) -> Iterator[VirtualNode]:
    fs = tmp_path / "flash"
    fs.mkdir()
    with VirtualNode(fs, peripherals=PERIPHERALS) as node:
        yield node


def do_flash(nodes: pathlib.Path, vnode: VirtualNode, **kwargs: object) -> tuple[FlashResult, str]:
    """Flash with the registered check (no ``hello=`` override): the production path."""
    out = io.StringIO()
    result = flash(load_node("hd1_node_a", nodes), vnode.port, out=out, **kwargs)  # type: ignore[arg-type]
    return result, out.getvalue()


def file_hash(vnode: VirtualNode) -> str:
    """The config hash as the firmware defines it, over the node.json on the node's flash."""
    return hashlib.sha256((vnode.fs_dir / "node.json").read_bytes()).hexdigest()[:16]


def ask_hello(port: str) -> link.Hello:
    """Independently of the check: open the port after the flash and ask the running firmware."""
    with serial.Serial(port, 115200, timeout=0.05) as s:
        decoder = link.Decoder()
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            s.write(link.encode(Frame(FrameType.HELLO_REQ, 0, 1, 0)))
            for f in decoder.feed(s.read(max(1, s.in_waiting))):
                if f.type == FrameType.HELLO:
                    return link.parse_hello(f.payload)
    raise AssertionError("no HELLO from the node")


def edit_example(nodes: pathlib.Path, old: str, new: str) -> None:
    path = nodes / EXAMPLE.name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_example_node_definition_builds_the_node_json_the_firmware_reads() -> None:
    node = load_node("hd1_node_a")        # the real boards/nodes/ file
    assert HELLO_CHECKS.get(node.firmware.name) is not None and node.firmware.name == "pico_node"
    identity = json.loads(next(a for a in build(node) if a.path == "node.json").data)
    assert identity["node_id"] == "hd1_node_a" and identity["station"] == "hd-01"
    assert identity["firmware_version"] == edge.devices.node.hello.firmware_version(node.firmware)
    assert [t["name"] for t in identity["thermocouples"]] == ["retort_tc"]
    assert [a["name"] for a in identity["analog"]] == ["h2_line_pressure", "enclosure_h2"]
    assert [(o["name"], o["safe"]) for o in identity["outputs"]] == [("stack_light", 1)]


def test_first_flash_copies_everything_and_the_hello_matches(nodes: pathlib.Path, vnode: VirtualNode) -> None:
    result, text = do_flash(nodes, vnode)
    assert sorted(result.copied) == FIRMWARE_FILES and result.unchanged == []
    expected = f"node hd1_node_a firmware 2.0.0 config {file_hash(vnode)} (4 channels, 1 output)"   # not "1 outputs"
    assert result.hello == expected and f"hello: {expected}" in text
    # the node was left running its firmware: it answers a HELLO_REQ with the flashed identity
    hello = ask_hello(vnode.port)
    assert (hello.node_id, hello.config_hash, hello.error) == ("hd1_node_a", file_hash(vnode), "")
    assert hello.channels == ("retort_tc", "retort_tc_cj", "h2_line_pressure", "enclosure_h2")
    assert vnode.outputs()["GP15"] == 1     # the stack light at its safe level: on


def test_probe_names_the_node_by_its_number(nodes: pathlib.Path, vnode: VirtualNode) -> None:
    """pico_node's node.json keeps the name in "node_id" and the number in "node_number": `boards list --probe`
    shows the number (3 in hd1_node_a.toml), not the name twice."""
    do_flash(nodes, vnode)
    out = subprocess.run([sys.executable, "-m", "edge", "boards", "list", "--probe", "--json", "--port", vnode.port],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    (entry,) = [p for p in json.loads(out.stdout) if p["device"] == vnode.port]
    assert entry["meaning"] == "node 'hd1_node_a' (id 3, station hd-01)", entry["meaning"]


def test_second_flash_copies_nothing_and_the_hello_still_matches(nodes: pathlib.Path, vnode: VirtualNode) -> None:
    first, _ = do_flash(nodes, vnode)
    result, text = do_flash(nodes, vnode)
    assert result.copied == [] and sorted(result.unchanged) == FIRMWARE_FILES
    assert "nothing copied" in text and result.hello == first.hello


def test_changed_config_is_flashed_and_the_hello_shows_the_new_hash(nodes: pathlib.Path,
                                                                    vnode: VirtualNode) -> None:
    first, _ = do_flash(nodes, vnode)
    old_hash = file_hash(vnode)
    edit_example(nodes, "period_ms = 200", "period_ms = 250")
    result, _ = do_flash(nodes, vnode)
    assert result.copied == ["node.json"]
    assert file_hash(vnode) != old_hash and result.hello is not None
    assert f"config {file_hash(vnode)} " in result.hello and result.hello != first.hello
    assert ask_hello(vnode.port).period_ms == 250


def test_node_running_another_node_json_fails_the_hello_naming_the_hash(nodes: pathlib.Path,
                                                                        vnode: VirtualNode) -> None:
    def leaves_a_boot_py(session: NodeSession, path: str, data: bytes) -> None:
        session.write_file(path, data)            # the real file: it verifies and is committed
        if path == "node.json.new":
            session.write_file("boot.py", TAMPER_BOOT.encode())

    built = next(a for a in build(load_node("hd1_node_a", nodes)) if a.path == "node.json")
    flashed_hash = hashlib.sha256(built.data).hexdigest()[:16]
    with pytest.raises(FlashError) as caught:
        do_flash(nodes, vnode, copy=leaves_a_boot_py)
    running_hash = file_hash(vnode)                 # boot.py rewrote it at the restart
    assert running_hash != flashed_hash
    message = str(caught.value)
    assert f"config hash '{running_hash}', expected '{flashed_hash}'" in message
    assert "node id" not in message and "firmware '" not in message      # only what differs is named


def test_config_the_firmware_rejects_fails_the_hello_with_the_nodes_reason(nodes: pathlib.Path,
                                                                           vnode: VirtualNode) -> None:
    edit_example(nodes, "period_ms = 200", "period_ms = 5")
    with pytest.raises(FlashError, match=r"the node rejected its node\.json: period_ms must be 20\.\.10000"):
        do_flash(nodes, vnode)


def test_no_hello_is_a_flash_error_with_what_the_node_printed(nodes: pathlib.Path, vnode: VirtualNode,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def leaves_a_stuck_boot_py(session: NodeSession, path: str, data: bytes) -> None:
        session.write_file(path, data)
        if path == "main.py.new":
            session.write_file("boot.py", STUCK_BOOT.encode())

    monkeypatch.setattr(edge.devices.node.hello, "HELLO_TIMEOUT_S", 5.0)   # how long to wait for what never comes
    with pytest.raises(FlashError, match=r"no HELLO from the node within 5 s after the restart.*"
                                         r"bench script running"):
        do_flash(nodes, vnode, copy=leaves_a_stuck_boot_py)


def test_reserved_key_in_config_is_refused_before_the_node_is_touched(nodes: pathlib.Path) -> None:
    edit_example(nodes, "period_ms = 200", 'period_ms = 200\nnode_id = "other"')
    with pytest.raises(FlashError, match=r"config\.node_id: reserved in node\.json"):
        flash(load_node("hd1_node_a", nodes), "/dev/null/not-opened", out=io.StringIO())
