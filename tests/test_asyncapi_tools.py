"""mqtt_schemas/asyncapi.yaml as the official AsyncAPI tooling sees it.

The official parser (@asyncapi/parser, what `asyncapi validate` runs; pinned in tests/asyncapi/package.json
and its lock file, installed by ``npm ci`` on first use like the virtual node's MicroPython) must parse the
document with no error or warning, every message payload in a schema format it has a parser for (an unknown
format, such as the draft 2020-12 the document used to declare, is passed through unchecked and unseen by
code generators, without a word), and every example must be valid, every negative example invalid, against
its message's payload schema as the parser's model holds it. The canaries run in the same node process: a
copy with one payload schema broken must make the parser fail, and a copy declaring a format the parser
does not know must be caught by this file's own check, so neither check can silently become a no-op.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from edge.telemetry.topics import SCHEMA_BASE
from hil import npm

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "mqtt_schemas"
TOOL = pathlib.Path(__file__).resolve().parent / "asyncapi"
PARSER = "@asyncapi/parser"
MIN_NODE = (20, 16)   # the engines of the parser's dependencies (jsep)
RUN_TIMEOUT_S = 300.0   # a safety net for a loaded machine, not a measurement
UNKNOWN_FORMAT = "application/schema+json;version=draft-2020-12"


class AsyncAPIToolError(RuntimeError):
    """The AsyncAPI parser cannot be installed or run; the message says what to do."""


def _edit_schema(name: str, change: Callable[[dict[str, Any]], None]) -> Callable[[pathlib.Path], None]:
    def apply(folder: pathlib.Path) -> None:
        path = folder / name
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc, indent=2) + "\n")
    return apply


def _unknown_format_for_hold(folder: pathlib.Path) -> None:
    path = folder / "asyncapi.yaml"
    text, count = re.subn(r"schemaFormat: [^,]+(, schema: \{\$ref: '\./cmd-hold\.json'\})",
                          rf"schemaFormat: {UNKNOWN_FORMAT}\1", path.read_text())
    assert count == 1, "the canary's edit must apply"
    path.write_text(text)


#: Copies of the shipped folder, each with one deliberate defect, and the message whose payload it hits.
CANARIES: dict[str, tuple[Callable[[pathlib.Path], None], str]] = {
    "type-12": (_edit_schema("cmd-hold.json", lambda d: d.update(type=12)), "hold"),
    "required-string": (_edit_schema("telemetry.json", lambda d: d.update(required="x")), "telemetry"),
    "unknown-format": (_unknown_format_for_hold, "hold"),
}


def _message_channels() -> dict[str, str]:
    """Every message of the document by id, with its channel."""
    document = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())
    return {m: c for c, channel in document["channels"].items() for m in channel["messages"]}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The parser's report on the shipped document and on every canary, from one node process."""
    node = npm.node(MIN_NODE, "the AsyncAPI parser", AsyncAPIToolError)
    pinned = json.loads((TOOL / "package.json").read_text())["dependencies"][PARSER]
    npm.ensure_installed(TOOL, PARSER, pinned, AsyncAPIToolError)
    documents = {"shipped": SCHEMAS / "asyncapi.yaml"}
    base = tmp_path_factory.mktemp("asyncapi")
    for name, (damage, _) in CANARIES.items():
        shutil.copytree(SCHEMAS, base / name)
        damage(base / name)
        documents[name] = base / name / "asyncapi.yaml"
    done = subprocess.run([node, str(TOOL / "check.mjs"), *map(str, documents.values())], cwd=TOOL,
                          capture_output=True, text=True, check=False, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, f"check.mjs failed (exit {done.returncode}):\n{done.stderr}"
    return dict(zip(documents, json.loads(done.stdout), strict=True))


def problems(report: dict[str, Any]) -> list[str]:
    """What keeps the tools from checking the document: errors, warnings, payloads they pass through unseen."""
    found = [f"{d['severity']} {d['code']} at /{d['path']}: {d['message']}" for d in report["diagnostics"]
             if d["severity"] in ("error", "warning")]
    if not report["parsed"]:
        found.append("the parser returned no document")
    for m in report["messages"]:
        if not m["registered"]:
            found.append(f"message {m['id']}: no schema parser for {m['schemaFormat']!r}: its payload is not checked")
    return found


def test_the_official_parser_checks_the_document_and_every_payload_schema(reports: dict[str, dict[str, Any]]) -> None:
    report = reports["shipped"]
    assert problems(report) == []
    document = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())
    expected = {m: SCHEMA_BASE + pathlib.Path(msg["payload"]["schema"]["$ref"]).name
                for channel in document["channels"].values() for m, msg in channel["messages"].items()}
    assert {m["id"]: m["schemaId"] for m in report["messages"]} == expected   # resolved: the real schema files


def test_every_example_is_valid_and_every_negative_one_invalid_in_the_parsers_model(
        reports: dict[str, dict[str, Any]]) -> None:
    results = {e["file"]: e for e in reports["shipped"]["examples"]}
    files = {p.relative_to(SCHEMAS / "examples").as_posix() for p in (SCHEMAS / "examples").rglob("*.json")}
    assert set(results) == files
    for name, result in results.items():
        if not name.startswith("invalid/"):
            assert result["valid"] is True, f"{name}: {result}"
            continue
        case = json.loads((SCHEMAS / "examples" / name).read_text())
        assert result["valid"] is False, f"{name} should be invalid: {case['why']}"
        assert case["error_at"] in result["errorsAt"], f"{name}: expected an error at {case['error_at']}: {result}"


@pytest.mark.parametrize("canary", ["type-12", "required-string"])
def test_canary_a_broken_payload_schema_makes_the_parser_fail(reports: dict[str, dict[str, Any]], canary: str) -> None:
    report = reports[canary]
    message = CANARIES[canary][1]
    where = f"channels/{_message_channels()[message]}/messages/{message}/payload"
    errors = [d for d in report["diagnostics"] if d["severity"] == "error"]
    assert not report["parsed"], "a document with a broken payload schema must not parse"
    assert any(d["path"].startswith(where) for d in errors), f"no error at {where}: {errors}"


def test_canary_a_payload_format_the_parser_does_not_know_is_caught(reports: dict[str, dict[str, Any]]) -> None:
    """The parser itself accepts it (AsyncAPI 3.0 lets a document name any format): this test's check must not."""
    report = reports["unknown-format"]
    assert report["parsed"] and [d for d in report["diagnostics"] if d["severity"] == "error"] == []
    assert problems(report) == [f"message hold: no schema parser for {UNKNOWN_FORMAT!r}: its payload is not checked"]

