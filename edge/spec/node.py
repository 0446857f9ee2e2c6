"""Node files: one sensor node as the technician declares it (``boards/nodes/NAME.toml``).

A node file says which firmware folder runs on the node, the node's number on the link, the station
it serves and its ``[config]`` (channels, pins, periods), which the flash writes to the node as
``node.json``. Read through the one reader kernel (``edge.spec.reader``): syntax errors carry line and
column, and every problem of the file is reported at once with its key path.

The node.json bytes are defined here too (``NodeDef.identity``, ``identity_bytes``): the flash writes
them and the HELLO check recomputes the node's config hash over them, so both take them from the spec.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edge.spec import resources
from edge.spec.reader import (
    Problems,
    SpecError,
    Table,
    describe,
    exact,
    integer_in,
    join,
    matching,
    parse_toml,
    read_text,
    string,
    unknown,
)

__all__ = ["FIRMWARE_DIR", "NODES_DIR", "NODE_STATUS_MS", "NodeDef", "deadman_margin_problem", "frame_gap_ms",
           "identity_bytes", "load_node", "node_names", "parse_node"]

NODES_DIR = resources.nodes_dir()
FIRMWARE_DIR = resources.firmware_dir()
SECTIONS = ("node", "config")
NODE_KEYS = ("name", "node_id", "station", "firmware", "description")
_NOT_EMPTY = re.compile(r".+", re.S)
NODE_STATUS_MS = 1000     # the node sends STATUS at least this often (STATUS_MS of boards/firmware/pico_node/node.py)


def frame_gap_ms(period_ms: float) -> float:
    """Longest gap between two sequenced frames of a node: READINGS every period_ms, STATUS every NODE_STATUS_MS.

    The edge's OUTPUTS echo the newest node frame it received, and the node obeys one only while that frame's
    first send is at most deadman_ms old: the echo is at best this old when the edge writes (boards/firmware/
    README.md, "Dead-man"); the firmware's own copy of the rule is its load_config."""
    return min(period_ms, NODE_STATUS_MS)


def deadman_margin_problem(deadman_ms: float, period_ms: float, keepalive_ms: float | None = None) -> str:
    """Why a node's dead-man is too short to be kept fed, or "".

    The echo is up to one frame gap old when the edge receives it and ages by up to keepalive_ms before the next
    OUTPUTS (plus the link's latency): one more gap of margin covers the latency and a late loop pass on either
    side. Without keepalive_ms (a node file, which no edge is known to yet) only the node's part: 2 gaps."""
    gap = frame_gap_ms(period_ms)
    need = 2 * gap + (keepalive_ms or 0)
    if deadman_ms >= need:
        return ""
    if keepalive_ms is None:
        return (f"deadman_ms {deadman_ms:g} leaves no margin: at least 2 x the node's frame gap (min(period_ms, "
                f"{NODE_STATUS_MS}) = {gap:g} ms) = {need:g} ms")
    return (f"node deadman_ms {deadman_ms:g} is shorter than 2 x its frame gap ({gap:g} ms) + keepalive_ms "
            f"({keepalive_ms:g}) = {need:g} ms: the edge cannot keep it fed; raise deadman_ms in the node's "
            f"[config] or lower keepalive_ms")


@dataclass(frozen=True)
class NodeDef:
    """One node file, checked: ``firmware`` is the resolved firmware folder (it has a main.py)."""

    name: str
    node_id: int
    station: str
    firmware: pathlib.Path
    config: Mapping[str, object]
    source: pathlib.Path
    description: str = ""

    def identity(self, files: Sequence[str]) -> dict[str, object]:
        """What node.json holds: who the node is, what it reads, and a hash of that config."""
        return {
            "name": self.name, "node_id": self.node_id, "station": self.station,
            "config": dict(self.config), "config_hash": _canonical_hash(self.config), "files": sorted(files),
        }


def identity_bytes(identity: Mapping[str, object]) -> bytes:
    """node.json's exact bytes: one serialisation, so a hello check can recompute a hash over the file."""
    return json.dumps(identity, sort_keys=True, indent=1).encode() + b"\n"


def node_names(nodes_dir: pathlib.Path | None = None) -> list[str]:
    """The nodes that can be flashed: the stems of ``boards/nodes/*.toml``, sorted."""
    return sorted(p.stem for p in (nodes_dir or NODES_DIR).glob("*.toml"))


def load_node(name: str, nodes_dir: pathlib.Path | None = None) -> NodeDef:
    """``boards/nodes/NAME.toml``, validated. An unknown name lists the nodes there, with a did-you-mean."""
    folder = nodes_dir or NODES_DIR
    path = folder / f"{name}.toml"
    if not path.is_file():
        raise SpecError(os.fspath(folder), "", unknown("node", name, node_names(folder)))
    return parse_node(read_text(path, "node file"), os.fspath(path))


def parse_node(text: str, source: str) -> NodeDef:
    """Validate node-file text; every problem is reported at once with its key path."""
    path = pathlib.Path(source)
    problems = Problems(source)
    top = Table(problems, parse_toml(text, source), "", noun="section")
    node = top.table("node", required=True, expected=f"a [node] table with {', '.join(NODE_KEYS[:4])}")
    name = node_id = station = firmware_name = None
    description = ""
    if node is not None:
        name = node.need("name", exact(path.stem, "the file's name"), "the node's name, the same as the file's name")
        node_id = node.need("node_id", integer_in(1, 247), "the node's link address, an integer from 1 to 247")
        station = node.need("station", matching(_NOT_EMPTY, "expected the id of the station it serves, "
                                                           "e.g. \"hd-01\""), "the id of the station it serves")
        firmware_name = node.need("firmware", matching(_NOT_EMPTY, "expected the firmware folder, e.g. "
                                                                   "\"pico_node\" (boards/firmware/) or a path "
                                                                   "relative to this file"),
                                  "the firmware folder, e.g. \"pico_node\" (boards/firmware/)")
        description = node.get("description", string, "")
        node.finish()
    firmware = None
    if node is not None and firmware_name is not None:
        candidates = [FIRMWARE_DIR / firmware_name, path.parent / firmware_name]
        found = next((c for c in candidates if (c / "main.py").is_file()), None)
        if found is None:
            node.report("firmware", f"no firmware folder with a main.py at {firmware_name!r} "
                                    f"(looked in {FIRMWARE_DIR} and {path.parent})")
        else:
            firmware = found.resolve()
    config = top.table("config", expected="a [config] table")
    if config is not None:
        bad = _not_json(config.data, "config")
        if bad:
            problems.add(*bad)
        deadman, period = config.data.get("deadman_ms", 1000), config.data.get("period_ms", 200)
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (deadman, period)):
            margin = deadman_margin_problem(deadman, period)  # type: ignore[arg-type]
            if margin:
                problems.add("config.deadman_ms", margin)
    top.finish()
    problems.raise_if_any(SECTIONS)
    # each of these, when missing or invalid, was reported: raise_if_any raised
    assert name is not None and node_id is not None and station is not None and firmware is not None
    return NodeDef(name, node_id, station, firmware, dict(config.data) if config is not None else {}, path,
                   description)


def _not_json(value: object, path: str) -> tuple[str, str] | None:
    """node.json is JSON: TOML dates and times have no place in it."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _not_json(item, join(path, key))
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _not_json(item, f"{path}[{index}]")
            if found:
                return found
    elif not isinstance(value, str | int | float | bool):
        return path, f"expected strings, numbers, booleans, arrays or tables (it goes into node.json), got " \
                     f"{describe(value)}"
    return None


def _canonical_hash(value: object) -> str:
    """SHA-256 over the canonical JSON of ``value`` (sorted keys, no spaces): the same config, the same hash."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(canonical).hexdigest()
