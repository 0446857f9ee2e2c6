"""The pico_node firmware's side of ``reedge flash``: the node.json it reads, and its HELLO after the restart.

Why here and not in ``edge.devices.node.flash``: both belong to the firmware's link protocol
(boards/firmware/README.md), not to copying files. ``edge.devices.node.flash`` imports this module and
registers the two functions for the firmware folder ``pico_node`` (``NODE_JSON_LAYOUTS``, ``HELLO_CHECKS``),
turning a ``PicoNodeError`` into its ``FlashError``; this module does not import the flash.

* **node.json**: the firmware reads its config keys at the top level and ``node_id`` as a string;
  that string is the node's name (``boards/nodes/NAME.toml``). The flash bookkeeping (name,
  station, the definition's ``node_id`` as ``node_number``, firmware version, files) sits beside them;
  the firmware ignores keys it does not know.
* **hello**: after the soft reset the firmware sends HELLO (a link-protocol-2 frame). The check reads the
  node's frames from the flash session's own port, asks again (HELLO_REQ) while none has come, and
  compares node id, firmware version and config hash (first 16 hex digits of SHA-256 over node.json's
  bytes) with the node.json just written. It sends nothing else: the node stays in its firmware,
  outputs safe, waiting for the edge.
"""

from __future__ import annotations

import ast
import hashlib
import pathlib
import re
import time
from collections.abc import Mapping, Sequence

from edge.devices.node import link
from edge.devices.node.link import Frame, FrameType, Hello, LinkError
from edge.devices.node.session import NodeSession
from edge.spec.node import NodeDef, identity_bytes
from edge.spec.reader import counted

__all__ = ["HELLO_TIMEOUT_S", "PicoNodeError", "check_pico_node_hello", "compare_hello", "firmware_version",
           "pico_node_identity"]

#: How long after the restart a HELLO may take. A Pico answers within a second; the margin is for a
#: loaded machine running the virtual node. Not a measurement: only how long to wait before giving up.
HELLO_TIMEOUT_S = 30.0
HELLO_REQ_EVERY_S = 1.0
#: Keys node.json reserves for the flash's own bookkeeping; a [config] key of the same name would be lost.
RESERVED = ("node_id", "name", "station", "node_number", "firmware_version", "config_hash", "files")


class PicoNodeError(RuntimeError):
    """node.json cannot be made for pico_node, or the node's HELLO is not what was flashed; the message says why."""


def firmware_version(folder: pathlib.Path) -> str:
    """``VERSION`` of the firmware's node.py, read from the source (the HELLO's ``fw`` is this constant)."""
    source = folder / "node.py"
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"), str(source))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        raise PicoNodeError(f"{source}: cannot read the firmware version: {exc}") from None
    for stmt in tree.body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                and stmt.targets[0].id == "VERSION" and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)):
            return stmt.value.value
    raise PicoNodeError(f"{source}: no VERSION = \"x.y.z\" at the top level; "
                        "the hello check compares it with the node's")


def pico_node_identity(node: NodeDef, files: Sequence[str]) -> dict[str, object]:
    """node.json as pico_node reads it: the [config] keys at the top level, ``node_id`` = the node's name."""
    clash = sorted(set(node.config) & set(RESERVED))
    if clash:
        raise PicoNodeError(f"{node.source}: config.{clash[0]}: reserved in node.json (set by the flash from [node]); "
                         "remove it from [config]")
    if not 0 < len(node.name) <= 32:
        raise PicoNodeError(f"{node.source}: node.name: pico_node needs a node name of 1..32 characters")
    identity: dict[str, object] = dict(node.config)
    # no "config_hash" key: the firmware's config hash is over this file's bytes, so it cannot be inside
    identity.update({"node_id": node.name, "name": node.name, "station": node.station, "node_number": node.node_id,
                     "firmware_version": firmware_version(node.firmware), "files": sorted(files)})
    return identity


def expected_config_hash(identity: Mapping[str, object]) -> str:
    """What the firmware computes: the first 16 hex digits of SHA-256 over node.json's bytes."""
    return hashlib.sha256(identity_bytes(identity)).hexdigest()[:16]


def compare_hello(hello: Hello, identity: Mapping[str, object]) -> list[str]:
    """Every way the HELLO differs from the node.json just written; empty when it matches."""
    if hello.error:
        return [f"the node rejected its node.json: {hello.error}"]
    problems = []
    if hello.protocol != link.PROTOCOL:
        problems.append(f"link protocol {hello.protocol}, the edge speaks {link.PROTOCOL} (reflash the node)")
    wanted = (("node id", hello.node_id, identity.get("node_id")),
              ("firmware", hello.firmware, identity.get("firmware_version")),
              ("config hash", hello.config_hash, expected_config_hash(identity)))
    for what, got, expected in wanted:
        if got != expected:
            problems.append(f"{what} {got!r}, expected {expected!r}")
    return problems


def check_pico_node_hello(session: NodeSession, identity: Mapping[str, object]) -> str:
    """Wait for the restarted node's HELLO and compare it; PicoNodeError naming each difference, or no HELLO."""
    if "firmware_version" not in identity:
        raise PicoNodeError(f"{session.port}: node.json was not built with the pico_node layout "
                         "(edge.devices.node.hello.pico_node_identity): cannot check the hello")
    hello = _read_hello(session)
    problems = compare_hello(hello, identity)
    if problems:
        raise PicoNodeError(f"{session.port}: the node's HELLO does not match what was flashed: {'; '.join(problems)}. "
                         "Files were verified by hash, so the node runs something else: a boot.py or a "
                         "node.json changed on the node? Flash again, or look at it with `mpremote repl`")
    return (f"node {hello.node_id} firmware {hello.firmware} config {hello.config_hash} "
            f"({counted(len(hello.channels), 'channel')}, {counted(len(hello.outputs), 'output')})")


def _read_hello(session: NodeSession) -> Hello:
    """The first well-formed HELLO on the port within HELLO_TIMEOUT_S."""
    ser = session.transport.serial
    old_timeout = ser.timeout
    ser.timeout = 0.1
    decoder = link.Decoder()
    seen = bytearray()
    bad = ""
    try:
        start = last_req = time.monotonic()
        while time.monotonic() - start < HELLO_TIMEOUT_S:
            data = ser.read(max(1, ser.in_waiting))
            seen += data
            del seen[:-2000]
            for frame in decoder.feed(data):
                if frame.type != FrameType.HELLO:
                    continue
                try:
                    return link.parse_hello(frame.payload)
                except LinkError as exc:
                    bad = f" (a malformed HELLO came: {exc})"
            if time.monotonic() - last_req >= HELLO_REQ_EVERY_S:   # the first one lost in boot text?
                last_req = time.monotonic()
                ser.write(link.encode(Frame(FrameType.HELLO_REQ, 0, 0, 0)))
    finally:
        ser.timeout = old_timeout
    if decoder.old_protocol:
        raise PicoNodeError(f"{session.port}: the node answers in link protocol 1 ({decoder.old_protocol} frames), "
                            f"this edge speaks {link.PROTOCOL}: it still runs an older firmware although the "
                            "files were written. Reflash the node; if it persists, look for a boot.py or a stale "
                            "node.py on it with `mpremote ls`")
    raise PicoNodeError(f"{session.port}: no HELLO from the node within {HELLO_TIMEOUT_S:g} s after the restart{bad}; "
                     f"it printed: {_console_tail(bytes(seen))}. Is main.py running (a boot.py that never "
                     "returns, a crash at import)? Look with `mpremote repl`")


def _console_tail(raw: bytes) -> str:
    """The last readable lines of what the node printed (a traceback, boot text), for the message."""
    text = re.sub(r"[^\x20-\x7e\n]", "", raw.decode("ascii", "replace").replace("\r", ""))
    lines = [line for line in text.splitlines() if line.strip()]
    return repr("\n".join(lines[-4:])) if lines else "nothing"
