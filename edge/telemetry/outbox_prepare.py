"""What a message must be to go into the outbox, checked and encoded once, before its transaction.

``put_many`` prepares every draft before it takes the outbox's lock: a refusal names the argument and the
value and stores nothing, and the body is encoded once (a mapping as compact UTF-8 JSON; bytes as given).
Split out of ``edge.telemetry.outbox`` (which uses it for puts, its thinning reports and its event target).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from edge.telemetry.outbox_types import InvalidMessage, Priority, _size

MAX_PAYLOAD = 268_435_455    # MQTT's largest packet
MAX_TOPIC = 65_535
STREAM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")


@dataclass
class Prepared:
    stream: str
    topic: str
    payload: bytes
    priority: Priority
    qos: int
    retain: bool
    size: int
    checked: bool          # the payload is JSON this module encoded from a mapping (``Message.body_checked``)


#: ``json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)``, made once: dumps with
#: options builds a new encoder for every call (a tenth of a put's GIL time in the session bench)
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def prepare(stream: object, topic: object, payload: object, priority: object, qos: object,
             retain: object) -> Prepared:
    """Validate one message and encode its payload; every refusal names the argument and the value."""
    if not isinstance(stream, str) or not isinstance(topic, str):
        _route(stream, topic)      # raises, naming which is wrong
        raise AssertionError("unreachable")
    overhead = _checked_route(stream, topic)
    if not isinstance(priority, Priority):
        names = ", ".join(p.name for p in Priority)
        raise InvalidMessage(f"stream {stream!r}: priority must be a Priority ({names}), got {priority!r}")
    if isinstance(qos, bool) or qos not in (0, 1, 2):
        raise InvalidMessage(f"stream {stream!r}: qos must be 0, 1 or 2, got {qos!r}")
    if not isinstance(retain, bool):
        raise InvalidMessage(f"stream {stream!r}: retain must be True or False, got {retain!r}")
    body: bytes
    checked = False
    if isinstance(payload, bytes | bytearray | memoryview):
        body = bytes(payload)
    elif isinstance(payload, Mapping):
        checked = True
        try:
            body = _COMPACT.encode(payload).encode()
        except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as e:
            raise InvalidMessage(f"stream {stream!r}: payload is not JSON-serialisable: {e}") from e
    else:
        raise InvalidMessage(f"stream {stream!r}: payload must be bytes or a dict, got {type(payload).__name__}")
    if len(body) > MAX_PAYLOAD:
        raise InvalidMessage(f"stream {stream!r}: payload is {len(body)} bytes, MQTT allows {MAX_PAYLOAD}")
    return Prepared(stream, topic, body, priority, int(qos), retain, len(body) + overhead, checked)


@functools.lru_cache(maxsize=1024)
def _checked_route(stream: str, topic: str) -> int:
    """``_route`` for the few (stream, topic) pairs a station uses, checked once each (a refusal is not cached)."""
    return _route(stream, topic)


def _route(stream: object, topic: object) -> int:
    """Check a stream name and a topic; the bytes a message counts beyond its payload (``_size``)."""
    if not isinstance(stream, str) or not STREAM_RE.fullmatch(stream):
        raise InvalidMessage(f"stream must be a non-empty name of letters, digits and _.:/- (at most 128),"
                             f" got {stream!r}")
    where = f"stream {stream!r}"
    if not isinstance(topic, str) or not topic:
        raise InvalidMessage(f"{where}: topic must be a non-empty string, got {topic!r}")
    if "+" in topic or "#" in topic or "\0" in topic:
        raise InvalidMessage(f"{where}: topic {topic!r} contains a wildcard (+ #) or NUL: it cannot be published")
    try:
        topic_len = len(topic.encode())
    except UnicodeEncodeError as e:
        raise InvalidMessage(f"{where}: topic {topic!r} is not valid UTF-8: {e}") from e
    if topic_len > MAX_TOPIC:
        raise InvalidMessage(f"{where}: topic is {topic_len} bytes, MQTT allows {MAX_TOPIC}")
    return _size(stream, topic, b"")
