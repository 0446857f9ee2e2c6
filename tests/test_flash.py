"""``reedge flash`` against a real MicroPython (the virtual node of hil/virtual_node): the first flash
copies everything, a second copies nothing, a changed module or config copies only that file, a copy
corrupted on the way is caught before it replaces anything, a dry run writes nothing, and a port that
is missing, busy or not MicroPython is named as such.

The firmware here is a small one of the tests' own (a main.py that reads node.json and prints a hello
line, two modules): flashing is tested, not the sensor firmware. The node's flash is a host folder,
so what landed on the node is read back directly.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping

import pytest
import serial  # type: ignore[import-untyped]

from edge.devices.node.flash import FlashError, FlashResult, Progress, build, flash
from edge.devices.node.session import NodeError, NodeSession
from edge.spec.node import NodeDef, load_node
from edge.spec.reader import SpecError
from hil.virtual_node import VirtualNode

ROOT = pathlib.Path(__file__).resolve().parent.parent

MAIN = """\
import json
import sensors
from lib import framing
with open('node.json') as f:
    ident = json.load(f)
print('HELLO', json.dumps({'name': ident['name'], 'config_hash': ident['config_hash'],
                           'sensors': sensors.VERSION, 'framing': framing.VERSION}))
"""
SENSORS = "VERSION = 1\n\ndef read():\n    return 42\n"
FRAMING = "VERSION = 'cobs-1'\n"
NODE_TOML = """\
[node]
name = "test-node"
node_id = 7
station = "hd-01"
firmware = "fw"
description = "the tests' node"

[config]
thermocouples = [{ cs = 17, type = "K", channel = "chamber_temp" }]
period_ms = 500
"""


@pytest.fixture
def nodes(tmp_path: pathlib.Path) -> pathlib.Path:
    """A nodes folder with test-node.toml and its firmware folder fw/ next to it."""
    folder = tmp_path / "nodes"
    (folder / "fw" / "lib").mkdir(parents=True)
    (folder / "fw" / "main.py").write_text(MAIN)
    (folder / "fw" / "sensors.py").write_text(SENSORS)
    (folder / "fw" / "lib" / "framing.py").write_text(FRAMING)
    (folder / "fw" / "lib" / "__init__.py").write_text("")
    (folder / "fw" / "tests").mkdir()
    (folder / "fw" / "tests" / "test_sensors.py").write_text("raise SystemExit('never copied')\n")
    (folder / "test-node.toml").write_text(NODE_TOML)
    return folder


@pytest.fixture
def vnode(tmp_path: pathlib.Path) -> Iterator[VirtualNode]:
    fs = tmp_path / "flash"
    fs.mkdir()
    with VirtualNode(fs) as node:
        yield node


def node_files(vnode: VirtualNode) -> dict[str, bytes]:
    return {p.relative_to(vnode.fs_dir).as_posix(): p.read_bytes() for p in vnode.fs_dir.rglob("*") if p.is_file()}


def hello_check(session: NodeSession, identity: Mapping[str, object]) -> str:
    """The tests' firmware prints one HELLO line after the restart: it must carry the identity just written."""
    ser = session.transport.serial
    buffer = b""
    deadline = time.monotonic() + 60.0  # a safety net: the node prints within a second
    while time.monotonic() < deadline:
        buffer += ser.read(ser.in_waiting or 1)
        for line in buffer.split(b"\n")[:-1]:  # complete lines only
            if line.startswith(b"HELLO "):
                hello = json.loads(line[6:])
                if hello["config_hash"] != identity["config_hash"] or hello["name"] != identity["name"]:
                    raise FlashError(f"node says {hello}, expected {identity['name']}/{identity['config_hash']}")
                return (f"{hello['name']} config {hello['config_hash'][:12]} framing {hello['framing']} "
                        f"sensors v{hello['sensors']}")
    raise FlashError(f"no hello within the safety net; the node printed: {buffer[-500:]!r}")


def do_flash(node: NodeDef, vnode: VirtualNode, **kwargs: object) -> tuple[FlashResult, str]:
    out = io.StringIO()
    result = flash(node, vnode.port, out=out, hello=hello_check, **kwargs)  # type: ignore[arg-type]
    return result, out.getvalue()


# ---------------------------------------------------------------- building


def test_build_keeps_main_as_source_compiles_modules_and_skips_tests(nodes: pathlib.Path) -> None:
    node = load_node("test-node", nodes)
    artifacts = {a.path: a for a in build(node)}
    assert sorted(artifacts) == ["lib/__init__.mpy", "lib/framing.mpy", "main.py", "node.json", "sensors.mpy"]
    assert artifacts["main.py"].data == MAIN.encode()
    assert artifacts["sensors.mpy"].data[:2] == b"M\x06"       # .mpy header, version 6
    identity = json.loads(artifacts["node.json"].data)
    assert identity["node_id"] == 7 and identity["station"] == "hd-01"
    assert identity["config"]["thermocouples"][0]["cs"] == 17
    assert identity["files"] == ["lib/__init__.mpy", "lib/framing.mpy", "main.py", "sensors.mpy"]
    # deterministic: the same sources build to the same bytes (this is what makes a re-flash a no-op)
    assert [(a.path, a.sha256) for a in build(node)] == [(a.path, a.sha256) for a in artifacts.values()]


def test_node_file_errors_name_the_key(nodes: pathlib.Path) -> None:
    text = NODE_TOML.replace("node_id = 7", "node_id = 0").replace('firmware = "fw"', 'firmwre = "fw"')
    (nodes / "test-node.toml").write_text(text)
    with pytest.raises(SpecError) as caught:
        load_node("test-node", nodes)
    shown = str(caught.value)
    assert "node.node_id: expected an integer from 1 to 247, got 0" in shown
    assert "node.firmwre: unknown key 'firmwre'" in shown and "did you mean 'firmware'?" in shown
    with pytest.raises(SpecError, match=r"unknown node 'test-nod'.*did you mean 'test-node'"):
        load_node("test-nod", nodes)


def test_node_file_refuses_a_dead_man_shorter_than_two_frame_gaps(nodes: pathlib.Path) -> None:
    """The node obeys an OUTPUTS frame only while the node frame it echoes is deadman_ms old at most, and that
    frame is up to one frame gap old when the edge gets it: caught when the file is read, not on the plant."""
    (nodes / "test-node.toml").write_text(NODE_TOML + "deadman_ms = 999\n")
    with pytest.raises(SpecError) as caught:
        load_node("test-node", nodes)
    assert [(e.key_path, e.message) for e in caught.value.errors] == [
        ("config.deadman_ms", "deadman_ms 999 leaves no margin: at least 2 x the node's frame gap "
                              "(min(period_ms, 1000) = 500 ms) = 1000 ms")]
    (nodes / "test-node.toml").write_text(NODE_TOML + "deadman_ms = 1000\n")
    assert load_node("test-node", nodes).config["deadman_ms"] == 1000


def test_node_file_syntax_error_has_line_and_column(nodes: pathlib.Path) -> None:
    (nodes / "test-node.toml").write_text(NODE_TOML.replace("node_id = 7", "node_id = = 7"))
    with pytest.raises(SpecError) as caught:
        load_node("test-node", nodes)
    assert (caught.value.source, caught.value.line, caught.value.column) == (str(nodes / "test-node.toml"), 3, 11)
    assert str(caught.value).startswith(f"{nodes / 'test-node.toml'}: TOML syntax error at line 3, column 11: ")


def test_node_file_reports_every_problem_at_once(nodes: pathlib.Path) -> None:
    text = "[nodes]\nname = 1\n[config]\nwhen = 2024-01-01\n"
    (nodes / "test-node.toml").write_text(text)
    with pytest.raises(SpecError) as caught:
        load_node("test-node", nodes)
    assert [(e.key_path, e.message) for e in caught.value.errors] == [
        ("node", "missing: expected a [node] table with name, node_id, station, firmware"),
        ("config.when", "expected strings, numbers, booleans, arrays or tables (it goes into node.json), "
                        "got date/time 2024-01-01"),
        ("nodes", "unknown section 'nodes' (expected one of: node, config); did you mean 'node'?"),
    ]


def test_syntax_error_in_a_module_stops_before_the_node_is_touched(nodes: pathlib.Path) -> None:
    (nodes / "fw" / "sensors.py").write_text("VERSION = 1\n\ndef read(:\n    return 42\n")
    with pytest.raises(FlashError) as caught:
        flash(load_node("test-node", nodes), "/dev/null/not-opened", out=io.StringIO())
    # the line mpy-cross names is kept: path:line, as compilers and editors write it
    assert str(caught.value) == f"{nodes / 'fw' / 'sensors.py'}:3: mpy-cross refused it: SyntaxError: invalid syntax"


# ---------------------------------------------------------------- flashing a real MicroPython


def test_first_flash_copies_everything_verifies_and_the_node_says_hello(nodes: pathlib.Path,
                                                                        vnode: VirtualNode) -> None:
    node = load_node("test-node", nodes)
    result, text = do_flash(node, vnode)
    built = {a.path: a.data for a in build(node)}
    assert sorted(result.copied) == sorted(built) and result.unchanged == []
    assert node_files(vnode) == built, "the node's flash holds exactly the build, no .new left over"
    assert result.hello is not None and result.hello.startswith("test-node config ")
    assert "every file verified by sha256" in text


def test_second_flash_copies_nothing(nodes: pathlib.Path, vnode: VirtualNode) -> None:
    node = load_node("test-node", nodes)
    do_flash(node, vnode)
    stamps = {p: p.stat().st_mtime_ns for p in vnode.fs_dir.rglob("*")}
    result, text = do_flash(node, vnode)
    assert result.copied == [] and result.removed == [] and len(result.unchanged) == 5
    assert "already match; nothing copied" in text
    assert {p: p.stat().st_mtime_ns for p in vnode.fs_dir.rglob("*")} == stamps
    assert result.hello is not None


def test_changed_module_copies_only_that_file(nodes: pathlib.Path, vnode: VirtualNode) -> None:
    do_flash(load_node("test-node", nodes), vnode)
    (nodes / "fw" / "sensors.py").write_text(SENSORS.replace("VERSION = 1", "VERSION = 2"))
    result, _ = do_flash(load_node("test-node", nodes), vnode)
    assert result.copied == ["sensors.mpy"]
    assert result.hello is not None and result.hello.endswith("sensors v2")   # the new module was imported


def test_changed_config_copies_only_node_json(nodes: pathlib.Path, vnode: VirtualNode) -> None:
    first, _ = do_flash(load_node("test-node", nodes), vnode)
    (nodes / "test-node.toml").write_text(NODE_TOML.replace("period_ms = 500", "period_ms = 250"))
    node = load_node("test-node", nodes)
    result, _ = do_flash(node, vnode)
    assert result.copied == ["node.json"]
    on_node = json.loads((vnode.fs_dir / "node.json").read_text())
    assert on_node["config"]["period_ms"] == 250 and result.hello != first.hello


def test_removed_module_is_removed_from_the_node(nodes: pathlib.Path, vnode: VirtualNode) -> None:
    do_flash(load_node("test-node", nodes), vnode)
    (nodes / "fw" / "main.py").write_text(MAIN.replace("import sensors\n", "").replace("sensors.VERSION", "0"))
    (nodes / "fw" / "sensors.py").unlink()
    result, text = do_flash(load_node("test-node", nodes), vnode)
    assert result.removed == ["sensors.mpy"] and "removed 1 stale" in text
    assert "sensors.mpy" not in node_files(vnode)


def test_a_source_module_that_would_shadow_a_flashed_one_is_removed(nodes: pathlib.Path, vnode: VirtualNode) -> None:
    """A sensors.py left on the node (copied by hand, an older tool) is imported instead of the flashed
    sensors.mpy: flash removes it, though no earlier flash recorded it, and the node then runs the build."""
    node = load_node("test-node", nodes)
    do_flash(node, vnode)
    (vnode.fs_dir / "sensors.py").write_text(SENSORS.replace("VERSION = 1", "VERSION = 99"))   # stale source
    vnode.reset()
    result, text = do_flash(node, vnode, dry_run=True)
    assert "would remove sensors.py (it would be imported instead of the flashed sensors.mpy)" in text
    result, text = do_flash(node, vnode)
    assert result.removed == ["sensors.py"] and result.copied == [] and "removed 1 stale" in text, text
    assert "sensors.py" not in node_files(vnode)
    assert result.hello is not None and result.hello.endswith("sensors v1")   # the flashed module, not v99


def test_a_package_folder_that_would_shadow_a_flashed_module_is_refused(nodes: pathlib.Path,
                                                                      vnode: VirtualNode) -> None:
    """A sensors/ package on the node is imported before sensors.py and sensors.mpy (MicroPython tries the folder
    first): the node runs it, whatever was flashed. Flash refuses before writing anything, naming the folder and
    the command that removes it; once it is gone, the flash goes through."""
    node = load_node("test-node", nodes)
    do_flash(node, vnode)
    (vnode.fs_dir / "sensors").mkdir()
    (vnode.fs_dir / "sensors" / "__init__.py").write_text("VERSION = 99\n")
    (nodes / "fw" / "sensors.py").write_text(SENSORS.replace("VERSION = 1", "VERSION = 2"))   # a real change
    vnode.reset()
    before = node_files(vnode)
    with pytest.raises(FlashError) as caught:
        do_flash(load_node("test-node", nodes), vnode)
    message = str(caught.value)
    assert "the folder sensors/ on the node would be imported instead of the flashed sensors.mpy" in message
    assert "nothing was written" in message and f"mpremote connect {vnode.port} rm -r :sensors" in message
    assert node_files(vnode) == before
    (vnode.fs_dir / "sensors" / "__init__.py").unlink()
    (vnode.fs_dir / "sensors").rmdir()
    result, _ = do_flash(load_node("test-node", nodes), vnode)
    assert result.copied == ["sensors.mpy"] and result.hello is not None and result.hello.endswith("sensors v2")


def test_a_root_module_that_would_shadow_a_flashed_lib_module_is_removed(nodes: pathlib.Path,
                                                                         vnode: VirtualNode) -> None:
    """Without lib/__init__, lib/framing.mpy is imported as `framing` through /lib on sys.path, after the root:
    a framing.py or framing.mpy left at the root runs instead. Both go, and the report says why."""
    (nodes / "fw" / "lib" / "__init__.py").unlink()
    (nodes / "fw" / "main.py").write_text(MAIN.replace("from lib import framing", "import framing"))
    node = load_node("test-node", nodes)
    do_flash(node, vnode)
    (vnode.fs_dir / "framing.py").write_text("VERSION = 'stale'\n")
    (vnode.fs_dir / "framing.mpy").write_bytes((vnode.fs_dir / "lib" / "framing.mpy").read_bytes())
    vnode.reset()
    result, text = do_flash(node, vnode)
    assert result.hello is not None and " framing cobs-1 " in result.hello, result.hello   # the flashed one
    assert result.removed == ["framing.mpy", "framing.py"] == result.shadows and result.copied == [], text
    assert "removed framing.py: it would have been imported instead of the flashed lib/framing.mpy" in text
    assert {"framing.py", "framing.mpy"}.isdisjoint(node_files(vnode))


def test_corrupted_copy_is_caught_and_nothing_is_replaced(nodes: pathlib.Path, vnode: VirtualNode) -> None:
    do_flash(load_node("test-node", nodes), vnode)
    before = node_files(vnode)
    (nodes / "fw" / "sensors.py").write_text(SENSORS.replace("VERSION = 1", "VERSION = 3"))
    (nodes / "fw" / "lib" / "framing.py").write_text(FRAMING.replace("cobs-1", "cobs-2"))

    def flaky_cable(session: NodeSession, path: str, data: bytes) -> None:
        if path == "sensors.mpy.new":
            data = data[:-1] + bytes([data[-1] ^ 0x20])    # one bit flipped on the way
        session.write_file(path, data)

    resets = len(vnode.resets)
    with pytest.raises(FlashError) as caught:
        do_flash(load_node("test-node", nodes), vnode, copy=flaky_cable)
    # the firmware stopped for the flash was restarted (a soft reset), not left sitting in the raw REPL
    assert vnode.wait_for(lambda v: "soft" in v.resets[resets:]), vnode.resets
    message = str(caught.value)
    assert "verification failed: sensors.mpy arrived with sha256" in message
    assert "Nothing was replaced" in message
    assert node_files(vnode) == before, "the good framing.mpy was not committed either, and no .new is left"
    # the node still runs its previous firmware, and the next flash (good cable) completes it
    result, _ = do_flash(load_node("test-node", nodes), vnode)
    assert sorted(result.copied) == ["lib/framing.mpy", "sensors.mpy"]
    assert result.hello is not None and result.hello.endswith("sensors v3")


def test_dry_run_changes_nothing_and_says_what_would(nodes: pathlib.Path, vnode: VirtualNode) -> None:
    node = load_node("test-node", nodes)
    result, text = do_flash(node, vnode, dry_run=True)
    assert node_files(vnode) == {}
    assert sorted(result.copied) == sorted(a.path for a in build(node))
    assert "would copy   main.py (new" in text and "nothing is written" in text
    do_flash(node, vnode)
    (nodes / "fw" / "sensors.py").write_text(SENSORS.replace("VERSION = 1", "VERSION = 4"))
    before = node_files(vnode)
    result, text = do_flash(load_node("test-node", nodes), vnode, dry_run=True)
    assert result.copied == ["sensors.mpy"] and "would copy   sensors.mpy (changed" in text
    assert node_files(vnode) == before


def test_another_nodes_board_is_refused_unless_retargeted(nodes: pathlib.Path, vnode: VirtualNode) -> None:
    do_flash(load_node("test-node", nodes), vnode)
    (nodes / "other-node.toml").write_text(NODE_TOML.replace('name = "test-node"', 'name = "other-node"'))
    before = node_files(vnode)
    with pytest.raises(FlashError, match="this board is node 'test-node' \\(station hd-01\\), not 'other-node'"):
        do_flash(load_node("other-node", nodes), vnode)
    assert node_files(vnode) == before
    result, _ = do_flash(load_node("other-node", nodes), vnode, retarget=True)
    assert result.copied == ["node.json"]


def test_probe_names_the_flashed_node(nodes: pathlib.Path, vnode: VirtualNode) -> None:
    do_flash(load_node("test-node", nodes), vnode)
    out = subprocess.run([sys.executable, "-m", "edge", "boards", "list", "--probe", "--json", "--port",
                          vnode.port], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    (entry,) = [p for p in json.loads(out.stdout) if p["device"] == vnode.port]
    assert entry["probe"]["node"]["name"] == "test-node" and entry["probe"]["implementation"] == "micropython"
    assert "node 'test-node' (id 7, station hd-01)" in entry["meaning"]


def test_cli_flash_end_to_end_via_the_real_command(nodes: pathlib.Path, vnode: VirtualNode,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # the command reads boards/nodes/; point a copy of the tests' node at it through the module seam
    import edge.spec.node

    monkeypatch.setattr(edge.spec.node, "NODES_DIR", nodes)
    from edge.app.cli import main

    assert main(["flash", "--node", "test-node", "--port", vnode.port]) == 0
    assert "node.json" in node_files(vnode)
    assert main(["flash", "--node", "test-node", "--port", vnode.port, "--dry-run"]) == 0


# ---------------------------------------------------------------- ports that are not a node


def test_missing_port_is_named(nodes: pathlib.Path) -> None:
    with pytest.raises(NodeError, match="/dev/ttyACM97: no such port"):
        flash(load_node("test-node", nodes), "/dev/ttyACM97", out=io.StringIO())


def test_busy_port_is_named(vnode: VirtualNode, nodes: pathlib.Path) -> None:
    holder = serial.Serial(vnode.port, exclusive=True)
    try:
        with pytest.raises(NodeError, match="the port is busy"):
            flash(load_node("test-node", nodes), vnode.port, out=io.StringIO())
    finally:
        holder.close()
    assert not (vnode.fs_dir / "node.json").exists()


def test_a_port_that_is_not_micropython_is_named() -> None:
    master, slave = os.openpty()           # a serial device that never answers the raw REPL
    try:
        with pytest.raises(NodeError, match="no MicroPython raw REPL answered"):
            NodeSession(os.ttyname(slave), timeout=2.0)
    finally:
        os.close(master)
        os.close(slave)


def test_identity_hash_matches_the_config(nodes: pathlib.Path) -> None:
    node = load_node("test-node", nodes)
    identity = json.loads(next(a for a in build(node) if a.path == "node.json").data)
    canonical = json.dumps(identity["config"], sort_keys=True, separators=(",", ":")).encode()
    assert identity["config_hash"] == hashlib.sha256(canonical).hexdigest()


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = Terminal()
    progress = Progress(bar)
    progress.step(0, 3, "copy 1/2 main.py")
    progress.step(3, 3, "verified")
    assert bar.getvalue().startswith("\r[" + "." * 30 + "] 0/3 copy 1/2 main.py")
    assert ("\r[" + "#" * 30 + "] 3/3 verified") in bar.getvalue() and bar.getvalue().endswith("\n")
    log = io.StringIO()
    progress = Progress(log)
    progress.step(0, 3, "copy 1/2 main.py")
    progress.step(3, 3, "verified")
    assert log.getvalue() == "  copy 1/2 main.py\n" and "\r" not in log.getvalue()
