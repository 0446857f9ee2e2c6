"""The MQTT contract: schemas are valid draft-07 (the JSON Schema dialect AsyncAPI tools parse), examples
pass (and negative examples fail where they should), the AsyncAPI document describes every stream of
edge.telemetry.topics with the same QoS/retain and references only schema files that exist.
tests/test_asyncapi_tools.py checks the document with the official AsyncAPI parser."""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from jsonschema import Draft7Validator  # type: ignore[import-untyped, unused-ignore]

from edge.spec import station as config
from edge.telemetry import schemas
from edge.telemetry.topics import LEVEL_RE, SCHEMA_BASE, STREAMS, VERBS, command_schema

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "mqtt_schemas"
EXAMPLES = SCHEMAS / "examples"
ASYNCAPI = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())


def schema_files() -> list[pathlib.Path]:
    return sorted(SCHEMAS.glob("*.json"))


@pytest.mark.parametrize("path", schema_files(), ids=lambda p: p.name)
def test_every_schema_is_valid_draft_07_with_its_own_id(path: pathlib.Path) -> None:
    doc = json.loads(path.read_text())
    Draft7Validator.check_schema(doc)
    assert doc["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert doc["$id"] == SCHEMA_BASE + path.name


def test_every_stream_and_verb_has_its_schema() -> None:
    names = {p.name for p in schema_files()}
    for spec in STREAMS.values():
        if spec.name != "cmd":
            assert spec.schema in names, spec.name
    for verb in VERBS:
        assert command_schema(verb) in names


def valid_examples() -> list[pathlib.Path]:
    return sorted(EXAMPLES.glob("*.json"))


@pytest.mark.parametrize("path", valid_examples(), ids=lambda p: p.name)
def test_example_validates_against_the_schema_it_names(path: pathlib.Path) -> None:
    doc = json.loads(path.read_text())
    assert schemas.errors(doc, doc["schema"]) == []


def test_every_schema_but_the_shared_parts_has_an_example() -> None:
    named = {json.loads(p.read_text())["schema"] for p in valid_examples()}
    shared = {SCHEMA_BASE + "envelope.json", SCHEMA_BASE + "command.json"}
    assert set(schemas.schema_ids()) - shared == named


def _paths(errors: Iterator[Any]) -> set[str]:
    """Every error's location, with the errors inside oneOf/anyOf/if branches too."""
    out = set()
    for e in errors:
        out.add("/" + "/".join(str(p) for p in e.absolute_path))
        out |= _paths(iter(e.context or ()))
    return out


@pytest.mark.parametrize("path", sorted((EXAMPLES / "invalid").glob("*.json")), ids=lambda p: p.name)
def test_negative_example_fails_where_it_says(path: pathlib.Path) -> None:
    case = json.loads(path.read_text())
    validator = schemas.validator(case["schema"])
    found = _paths(validator.iter_errors(case["payload"]))
    assert found, f"{path.name} should be invalid: {case['why']}"
    assert case["error_at"] in found, f"{path.name}: expected an error at {case['error_at']}, got {sorted(found)}"


def test_a_negative_example_is_a_valid_one_with_one_change() -> None:
    """Guards the negative examples: each differs from a valid example, so it fails for its stated reason."""
    valid = [json.loads(p.read_text()) for p in valid_examples()]
    for path in (EXAMPLES / "invalid").glob("*.json"):
        payload = json.loads(path.read_text())["payload"]
        assert payload not in valid
        assert any(payload.get("schema") == v["schema"] or payload.get("stream") == v.get("stream") for v in valid)


def test_site_and_station_rule_is_the_station_files_rule() -> None:
    assert LEVEL_RE.pattern == config.IDENT_RE.pattern
    level = schemas.schema("envelope.json")["definitions"]["level"]["pattern"]
    assert level == "^" + LEVEL_RE.pattern + "$"


# ---- AsyncAPI -----------------------------------------------------------------------------------

def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def _resolve(pointer: str) -> Any:
    node: Any = ASYNCAPI
    for part in pointer.lstrip("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_asyncapi_references_only_existing_schemas_and_components() -> None:
    refs = list(_refs(ASYNCAPI))
    files = [r for r in refs if not r.startswith("#")]
    assert files, "the messages reference the schema files"
    for ref in files:
        assert re.fullmatch(r"\./[a-z_-]+\.json", ref), ref
        assert (SCHEMAS / ref).is_file(), f"{ref} does not exist"
    for ref in refs:
        if ref.startswith("#"):
            _resolve(ref)   # KeyError if dangling
    assert {pathlib.Path(r).name for r in files} == {p.name for p in schema_files()} - {"envelope.json",
                                                                                         "command.json"}


def test_asyncapi_is_version_3_with_parameters_for_every_address() -> None:
    assert str(ASYNCAPI["asyncapi"]).startswith("3.")
    for name, channel in ASYNCAPI["channels"].items():
        placeholders = set(re.findall(r"\{(\w+)\}", channel["address"]))
        assert placeholders == set(channel.get("parameters", {})), name


def _address_for(spec_suffix: str) -> str:
    return "reedge/v1/{site}/{station}/" + spec_suffix


@pytest.mark.parametrize("stream", list(STREAMS))
def test_every_stream_is_in_asyncapi_with_the_same_qos_retain_and_schema(stream: str) -> None:
    spec = STREAMS[stream]
    channels = {k: c for k, c in ASYNCAPI["channels"].items() if c["address"] == _address_for(spec.suffix)}
    assert len(channels) == 1, f"one channel for {spec.suffix}"
    (cid, channel), = channels.items()
    ops = [op for op in ASYNCAPI["operations"].values() if op["channel"]["$ref"] == f"#/channels/{cid}"]
    assert len(ops) == 1
    op = ops[0]
    assert op["action"] == ("send" if spec.direction == "publish" else "receive")
    assert op["bindings"]["mqtt"]["qos"] == spec.qos
    assert op["bindings"]["mqtt"]["retain"] == spec.retain
    referenced = {pathlib.Path(m["payload"]["schema"]["$ref"]).name for m in channel["messages"].values()}
    expected = {command_schema(v) for v in VERBS} if stream == "cmd" else {spec.schema}
    assert referenced == expected


def test_asyncapi_has_no_channel_that_topics_does_not_know() -> None:
    known = {_address_for(s.suffix) for s in STREAMS.values()}
    assert {c["address"] for c in ASYNCAPI["channels"].values()} == known


def test_a_command_is_addressed_by_its_sender_and_needs_no_issuer() -> None:
    """The sender is the topic's {identity} level (the broker vouches for it); ``issuer`` is an optional echo."""
    cmd = next(c for c in ASYNCAPI["channels"].values() if "/cmd/" in c["address"])
    assert cmd["address"] == "reedge/v1/{site}/{station}/cmd/{identity}/{verb}"
    example = json.loads((EXAMPLES / "cmd-hold.json").read_text())
    del example["issuer"]
    assert schemas.errors(example, example["schema"]) == []
    assert schemas.errors({**example, "issuer": ""}, example["schema"])   # present, it must be a name


def test_the_verbs_of_replies_and_events_are_the_stations_verbs() -> None:
    envelope = json.loads((SCHEMAS / "envelope.json").read_text())
    assert envelope["definitions"]["verb"]["enum"] == list(VERBS)
    assert ASYNCAPI["components"]["parameters"]["verb"]["enum"] == list(VERBS)



def test_a_windows_heads_name_the_streams_the_station_names() -> None:
    from edge.telemetry.topics import HEAD_STREAMS

    heads = json.loads((SCHEMAS / "telemetry.json").read_text())["properties"]["body"]["properties"]["heads"]
    assert set(heads["propertyNames"]["enum"]) == HEAD_STREAMS
    assert "telemetry" not in HEAD_STREAMS and "status" not in HEAD_STREAMS
