"""The JSON Schemas of ``mqtt_schemas/``, loaded once and usable offline.

Each schema's ``$id`` is a URL (``https://reeproduce.eu/schemas/reedge/v1/telemetry.json``) and
the schemas ``$ref`` each other by relative name (``envelope.json``); a ``referencing``
registry built from the files resolves those, so nothing is ever fetched from the network.
The commands handler validates incoming commands with it, ``reedge tail`` every received
message, and the tests the example payloads.

The folder is the shipped one (``edge.spec.resources``: package data once installed, the
repository's folder in a checkout); ``REEDGE_SCHEMAS`` overrides it.

**One decision, with or without the fast path.** jsonschema decides what is valid. Where ``jsonschema_rs``
is installed (the ``historian`` extra: the historian checks every message of a plant), a compiled validator
of the same schemas answers first, and only its "valid" is taken; its "invalid" goes to jsonschema, which
decides and words the errors. It may be stricter than jsonschema (an ECMA ``$`` does not match before a
final newline as Python's does) but must never be looser: a station without it and a historian with it
decide the same (tests/test_historian_ingest.py checks every example and mutated messages of every stream).
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

from jsonschema import Draft7Validator  # type: ignore[import-untyped, unused-ignore]
from jsonschema.exceptions import best_match  # type: ignore[import-untyped, unused-ignore]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from edge.spec import resources
from edge.telemetry.topics import SCHEMA_BASE


class SchemaError(RuntimeError):
    """The schema folder is missing or holds a file that is not a schema (an installation problem)."""


def schema_dir() -> pathlib.Path:
    override = os.environ.get("REEDGE_SCHEMAS")
    if override:
        return pathlib.Path(override)
    return resources.schemas_dir()


@functools.cache
def _load() -> tuple[dict[str, dict[str, Any]], Registry[Any]]:
    folder = schema_dir()
    files = sorted(folder.glob("*.json"))
    if not files:
        raise SchemaError(f"no JSON schemas in {folder} (set REEDGE_SCHEMAS to the mqtt_schemas folder)")
    by_id: dict[str, dict[str, Any]] = {}
    for path in files:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SchemaError(f"{path}: cannot read the schema: {e}") from e
        if not isinstance(doc, dict) or doc.get("$id") != SCHEMA_BASE + path.name:
            raise SchemaError(f"{path}: $id must be {SCHEMA_BASE + path.name}")
        by_id[doc["$id"]] = doc
    registry: Registry[Any] = Registry().with_resources(
        (sid, Resource.from_contents(doc, default_specification=DRAFT7)) for sid, doc in by_id.items())
    return by_id, registry


def schema_ids() -> list[str]:
    return sorted(_load()[0])


def schema(name_or_id: str) -> dict[str, Any]:
    """A schema by file name (``telemetry.json``) or ``$id``."""
    by_id, _ = _load()
    sid = name_or_id if name_or_id.startswith("https://") else SCHEMA_BASE + name_or_id
    try:
        return by_id[sid]
    except KeyError:
        raise SchemaError(f"no schema {name_or_id!r} in {schema_dir()}") from None


@functools.cache
def validator(name_or_id: str) -> Draft7Validator:
    _, registry = _load()
    return Draft7Validator(schema(name_or_id), registry=registry)


@functools.cache
def _fast_is_valid(name_or_id: str) -> Callable[[Any], bool] | None:
    """A compiled yes/no for the same schema and registry (``jsonschema_rs``, in the ``historian`` extra: a
    10-channel telemetry window in 7 us instead of 2 ms, what lets the historian keep up with a plant), or
    None when it is not installed. Formats are not checked, as ``validator`` does not check them."""
    try:
        import jsonschema_rs  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    by_id, _ = _load()
    check: Callable[[Any], bool] = jsonschema_rs.Draft7Validator(
        schema(name_or_id), registry=jsonschema_rs.Registry(list(by_id.items())), validate_formats=False).is_valid
    return check


def errors(document: Any, name_or_id: str) -> list[str]:
    """Every way ``document`` breaks the schema, as ``/json/pointer: message`` lines; empty when valid.

    jsonschema decides and words every error; a compiled validator of the same schema, when installed, only
    answers the common case first (valid: nothing to word)."""
    fast = _fast_is_valid(name_or_id)
    try:
        if fast is not None and fast(document):
            return []
    except Exception:       # a document the compiled one cannot take (an integer beyond 64 bits): jsonschema's
        pass
    out = []
    for e in sorted(validator(name_or_id).iter_errors(document), key=lambda e: list(e.absolute_path)):
        # a oneOf/anyOf failure says little by itself: name the branch error that fits best
        inner = best_match(e.context) if e.context else None
        where = "/" + "/".join(str(p) for p in (inner or e).absolute_path)
        out.append(f"{where}: {_short((inner or e).message)}")
    return out or _not_finite(document)


def _not_finite(document: Any) -> list[str]:
    """Where ``document`` holds a float JSON cannot spell: ``1e400`` reads as infinity (``json.loads`` gives no
    hook short of one call per float, 40 % of a parse), NaN from a reader that allows it. jsonschema calls them
    numbers; the compiled validator and every database do not, so they are invalid here. Walked only when
    jsonschema found the document valid after the compiled validator did not: never on the common path."""
    out: list[str] = []
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            out.append(f"{where or '/'}: {value!r} is not a JSON number (a number beyond a double reads as inf)")
        elif isinstance(value, dict):
            stack.extend((f"{where}/{k}", v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}/{i}", v) for i, v in enumerate(value))
    return sorted(out)


def check(document: Mapping[str, Any], name_or_id: str) -> None:
    """Raise ValueError with every problem if ``document`` is not valid against the schema."""
    found = errors(document, name_or_id)
    if found:
        raise ValueError(f"not a valid {name_or_id.rsplit('/', 1)[-1]}: " + "; ".join(found))


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:197] + "..."
