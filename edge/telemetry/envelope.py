"""The envelope every payload travels in, built at send time from the outbox's stored fields.

An envelope is one JSON object, keys always in this order::

    {"schema": "https://reeproduce.eu/schemas/reedge/v1/telemetry.json", "schema_version": "1.0",
     "site": "pilot-line", "station": "hd-01", "boot_id": "9f0c...", "stream": "telemetry",
     "seq": 42, "ts": "2025-03-14T09:26:53.589Z", "body": {...}}

* ``schema`` is the ``$id`` of the schema of this stream's envelope-with-body
  (``mqtt_schemas/<stream>.json``); ``schema_version`` is ``MAJOR.MINOR`` of that contract: the
  major is the ``v1`` of topics and ids (a breaking change gets a new topic tree), the minor
  counts compatible additions, so a consumer may accept any ``1.x``.
* ``(boot_id, stream, seq)`` identifies the message end to end. Sequence numbers come from the
  outbox: per stream, from 1, never reused, and they **continue across boots** (the outbox keeps
  each stream's counter on disk), so a gap is a gap even across a reboot.
* ``ts`` is the wall-clock time the message was put (``created_ns``), UTC, RFC 3339 with
  milliseconds: the time of the data, not of the (possibly much later) sending.
* ``body`` is the stored payload, spliced in byte for byte. Everything in the envelope comes from
  fields the outbox stores, and the header is serialised the same way every time, so a message
  re-sent after a reconnect or a crash is byte-identical to its first copy.

**The birth and the Will** (stream ``status``, retained) are not outbox messages: they describe
the connection, so the session builds them at connect with ``birth`` and ``will`` (the Will is
handed to the broker, which publishes it if the station vanishes; ``offline`` is the same
message sent on a clean shutdown). Their ``seq`` is ``2n - 1`` for the birth of the n-th
connection of this boot and ``2n`` for its offline message, so each status message is unique.

The birth carries, for the **previous boot**, the last sequence number given on each stream
(``PreviousBoot``). A consumer whose last message of a stream has a lower number knows that
the rest is still in the station's backlog or lost: the outbox sends telemetry after everything
else and each of the two classes in insertion order, so once the first message of the new boot
arrives in a stream's class, anything of the old boot still missing on that stream is lost (or
thinned, if a ``telemetry_thinned`` event names it) even on a stream that stays quiet. Where
the numbers come from: ``Outbox.last_sequences()`` read right after opening the outbox, before
this boot puts anything (the counters are per stream and shared by all boots, so at that
moment they are exactly where the previous boot left them). The previous boot's *id* is not
reliably in the outbox (its ``boots`` table forgets a boot once its last message is acked), so
``PreviousBoot.boot_id`` may be None; see ``previous_boot``. From 1.2 the birth also names the
station description current at that connect (``description_sha256``, ``with_description``).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from edge.telemetry.outbox import Message
from edge.telemetry.topics import STREAMS, TopicError, check_level
from edge.timestamps import TimestampError, parse_rfc3339, rfc3339_ms

# 1.4: a resend's reply data says where a cut resend stopped (rest_from); 1.3: the resend command, reply data;
# 1.2: the description stream, description_sha256, window UTC times; 1.1: batch records
SCHEMA_VERSION = "1.4"
_VERSION_RE = re.compile(r"1\.(0|[1-9][0-9]{0,3})")
BOOT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
MAX_ENVELOPE = 1 << 20   # what parse accepts; a station's messages are far smaller
KEYS = ("schema", "schema_version", "site", "station", "boot_id", "stream", "seq", "ts", "body")


class EnvelopeError(ValueError):
    """A message that is not a valid envelope, or an envelope that cannot be built; says why."""


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope. ``key`` = (boot_id, stream, seq) identifies the message end to end."""

    schema: str
    schema_version: str
    site: str
    station: str
    boot_id: str
    stream: str
    seq: int
    ts: str
    t_ns: int                       # ``ts`` as Unix nanoseconds
    body: dict[str, Any] = field(repr=False)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.boot_id, self.stream, self.seq)

    def document(self) -> dict[str, Any]:
        """The envelope as the JSON object it was parsed from (what its schema is checked against): ``parse``
        takes exactly ``KEYS`` and keeps each value as it came, so this is that object without a second parse."""
        return {"schema": self.schema, "schema_version": self.schema_version, "site": self.site,
                "station": self.station, "boot_id": self.boot_id, "stream": self.stream, "seq": self.seq,
                "ts": self.ts, "body": self.body}


# ---- building ---------------------------------------------------------------------------------

def build(*, site: str, station: str, boot_id: str, stream: str, seq: int, created_ns: int,
          body: bytes | Mapping[str, Any]) -> bytes:
    """One envelope as bytes. ``body``: the stored JSON object (bytes, spliced as they are) or a dict."""
    try:
        check_level(site, "site")
        check_level(station, "station")
    except TopicError as e:
        raise EnvelopeError(str(e)) from None
    spec = STREAMS.get(stream)
    if spec is None or spec.direction != "publish":
        known = ", ".join(n for n, s in STREAMS.items() if s.direction == "publish")
        raise EnvelopeError(f"stream {stream!r} is not a published stream (expected one of: {known})")
    if not isinstance(boot_id, str) or not BOOT_ID_RE.fullmatch(boot_id):
        raise EnvelopeError(f"boot id must be 1 to 128 letters, digits and _.:- , got {boot_id!r:.60}")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise EnvelopeError(f"seq must be an integer from 1, got {seq!r}")
    if isinstance(body, bytes | bytearray | memoryview):
        raw = _stored_body(bytes(body), stream, seq)
    else:
        try:
            raw = json.dumps(dict(body), separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        except (TypeError, ValueError) as e:
            raise EnvelopeError(f"{stream} #{seq}: the body is not JSON-serialisable: {e}") from None
    header = json.dumps({"schema": spec.schema_id, "schema_version": SCHEMA_VERSION, "site": site,
                         "station": station, "boot_id": boot_id, "stream": stream, "seq": seq,
                         "ts": rfc3339_ms(created_ns)}, separators=(",", ":"), ensure_ascii=False)
    return header[:-1].encode() + b',"body":' + raw + b"}"


def _stored_body(raw: bytes, stream: str, seq: int) -> bytes:
    """``raw`` if it is a JSON object (a stored body is sent as it is, never re-encoded)."""
    try:
        decoded = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise EnvelopeError(f"{stream} #{seq}: the stored body is not JSON: {e}") from None
    if not isinstance(decoded, dict):
        raise EnvelopeError(f"{stream} #{seq}: the body must be a JSON object, got {type(decoded).__name__}")
    return raw


def envelope(msg: Message, *, site: str, station: str) -> bytes:
    """The bytes to publish for an outbox message: the same bytes every time it is sent, and the same as
    ``build``'s (the header up to ``"seq":`` is built and checked by ``build`` once per boot and stream,
    and the second of ``ts`` once per second: the session calls this for every message it sends). The body
    is checked to be a JSON object unless ``msg.body_checked`` says the outbox encoded it itself."""
    if isinstance(msg.seq, bool) or not isinstance(msg.seq, int) or msg.seq < 1:
        raise EnvelopeError(f"seq must be an integer from 1, got {msg.seq!r}")
    raw = msg.payload if msg.body_checked else _stored_body(bytes(msg.payload), msg.stream, msg.seq)
    seconds, rest = divmod(int(msg.created_ns), 1_000_000_000)
    ts = _second(seconds)[:-5] + f".{rest // 1_000_000:03d}Z"
    return b"".join((_head(site, station, msg.boot_id, msg.stream), str(msg.seq).encode(), b',"ts":"', ts.encode(),
                     b'","body":', raw, b"}"))


@functools.lru_cache(maxsize=64)
def _head(site: str, station: str, boot_id: str, stream: str) -> bytes:
    full = build(site=site, station=station, boot_id=boot_id, stream=stream, seq=1, created_ns=0, body=b"{}")
    return full[:full.index(b',"seq":1,') + len(b',"seq":')]


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    return rfc3339_ms(seconds * 1_000_000_000)


# ---- status: birth and Will -------------------------------------------------------------------

@dataclass(frozen=True)
class PreviousBoot:
    """Where the previous boot left each stream; ``boot_id`` None when the outbox no longer knows it."""

    boot_id: str | None
    last_seq: Mapping[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"boot_id": self.boot_id, "last_seq": {k: int(v) for k, v in sorted(self.last_seq.items())}}


class _HasLastSequences(Protocol):
    def last_sequences(self) -> dict[str, int]: ...


def previous_boot(outbox: _HasLastSequences, boot_id: str | None = None) -> PreviousBoot:
    """Read right after opening the outbox and before this boot puts anything (see the module docstring).

    Only streams of ``STREAMS`` are kept (the birth's schema lists them).
    """
    last = {k: v for k, v in outbox.last_sequences().items() if k in STREAMS}
    if boot_id is None:      # the outbox remembers the boot before the one that opened it
        boot_id = getattr(outbox, "previous_boot_id", None)
    return PreviousBoot(boot_id, last)


def status_seq(connection: int, online: bool) -> int:
    """The status stream's number: 2n-1 for the n-th birth of this boot, 2n for its offline message."""
    if isinstance(connection, bool) or not isinstance(connection, int) or connection < 1:
        raise EnvelopeError(f"connection must be an integer from 1, got {connection!r}")
    return 2 * connection - 1 if online else 2 * connection


def birth(*, site: str, station: str, boot_id: str, connection: int, now_ns: int, boot_started_ns: int,
          software: str, previous: PreviousBoot | None) -> bytes:
    """The retained ``online`` status published right after each connect, before the backlog."""
    body = {"state": "online", "connection": connection, "boot_started": rfc3339_ms(boot_started_ns),
            "software": software, "previous_boot": None if previous is None else previous.as_dict()}
    return build(site=site, station=station, boot_id=boot_id, stream="status",
                 seq=status_seq(connection, True), created_ns=now_ns, body=body)


def with_description(raw_birth: bytes, description_sha256: str | None) -> bytes:
    """The birth ``raw_birth`` naming the station description it belongs to (``description_sha256``, see
    ``edge.telemetry.description``); unchanged when there is none."""
    if description_sha256 is None:
        return raw_birth
    env = parse(raw_birth)
    return build(site=env.site, station=env.station, boot_id=env.boot_id, stream=env.stream, seq=env.seq,
                 created_ns=env.t_ns, body={**env.body, "description_sha256": description_sha256})


def will(*, site: str, station: str, boot_id: str, connection: int, now_ns: int,
         reason: Literal["connection_lost", "shutdown"] = "connection_lost") -> bytes:
    """The retained ``offline`` status: as the Will (``connection_lost``) or sent on a clean ``shutdown``."""
    body = {"state": "offline", "connection": connection, "reason": reason}
    return build(site=site, station=station, boot_id=boot_id, stream="status",
                 seq=status_seq(connection, False), created_ns=now_ns, body=body)


# ---- parsing ----------------------------------------------------------------------------------

def parse(data: bytes | bytearray | memoryview | str) -> Envelope:
    """A received payload as an Envelope; EnvelopeError saying what is wrong (the body is not checked here:
    its schema is, see ``edge.telemetry.schemas``). JSON as RFC 8259 has it: Python's ``NaN``, ``Infinity``
    and ``-Infinity`` are refused (no database, JSON column or JSON reader takes them; a station never
    sends them: ``build`` refuses them)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_ENVELOPE:
        raise EnvelopeError(f"payload is {len(raw)} bytes, more than the {MAX_ENVELOPE} an envelope may have")
    doc = _fast_loads(raw)
    if doc is None:
        doc = _loads(raw)
    if not isinstance(doc, dict):
        raise EnvelopeError(f"payload must be a JSON object (an envelope), got {type(doc).__name__}")
    missing = [k for k in KEYS if k not in doc]
    if missing:
        raise EnvelopeError(f"envelope lacks {', '.join(missing)}")
    extra = sorted(set(doc) - set(KEYS))
    if extra:
        raise EnvelopeError(f"envelope has unknown field(s) {', '.join(extra)} (expected: {', '.join(KEYS)})")
    stream = doc["stream"]
    spec = STREAMS.get(stream) if isinstance(stream, str) else None
    if spec is None or spec.direction != "publish":
        raise EnvelopeError(f"unknown stream {stream!r}")
    if doc["schema"] != spec.schema_id:
        raise EnvelopeError(f"schema {doc['schema']!r:.80} does not belong to stream {stream!r}"
                            f" (expected {spec.schema_id})")
    version = doc["schema_version"]
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise EnvelopeError(f"schema_version {version!r:.20} is not a 1.x version this code reads")
    try:
        site = check_level(doc["site"], "site")
        station = check_level(doc["station"], "station")
    except TopicError as e:
        raise EnvelopeError(str(e)) from None
    boot_id, seq, body = doc["boot_id"], doc["seq"], doc["body"]
    if not isinstance(boot_id, str) or not BOOT_ID_RE.fullmatch(boot_id):
        raise EnvelopeError(f"boot_id must be 1 to 128 letters, digits and _.:- , got {boot_id!r:.60}")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise EnvelopeError(f"seq must be an integer from 1, got {seq!r:.30}")
    if not isinstance(body, dict):
        raise EnvelopeError(f"body must be a JSON object, got {type(body).__name__}")
    try:
        t_ns = parse_rfc3339(doc["ts"], "ts")
    except TimestampError as e:
        raise EnvelopeError(str(e)) from None
    return Envelope(doc["schema"], version, site, station, boot_id, stream, seq, doc["ts"], t_ns, body)


def _loads(raw: bytes) -> Any:
    """``raw`` as JSON (RFC 8259, UTF-8); EnvelopeError saying why not. The reference: ``_fast_loads`` takes
    only what it reads the same."""
    try:   # not json.loads(bytes): that would guess UTF-16/32 too
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EnvelopeError(f"payload is not UTF-8: {e}") from None
    if text.startswith("\ufeff"):     # json.loads says so itself; a decoder's decode does not
        raise EnvelopeError("payload is not JSON: it begins with a byte order mark (U+FEFF)")
    try:
        return _DECODER.decode(text)
    except (ValueError, RecursionError) as e:
        raise EnvelopeError(f"payload is not JSON: {e}") from None


_orjson: Any
try:    # the historian's extra: a compiled parser, a third of json's time a window
    import orjson as _orjson
except ImportError:     # a station's install: json alone
    _orjson = None

#: a payload's digits as "0" (``bytes.translate``): 19 of them in a row can be an integer that orjson reads as a
#: double past 64 bits (json: an exact int). A translate and a substring search take 2 us a window; a regular
#: expression (``[0-9]{19}``) took 23, as long as the parse it lets us skip.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def _fast_loads(raw: bytes) -> Any:
    """``raw`` parsed by orjson where it is installed and reads it as ``_loads`` does, else None (then
    ``_loads`` decides and words any error). The two differ only where orjson refuses what json takes (a
    lone surrogate escape, a number past a double, a byte order mark: None) and on integers past 64 bits,
    which orjson turns into doubles: a payload with 19 digits in a row anywhere goes to ``_loads``. Doubles
    are read alike (both round correctly: 300,000 random ones compared); duplicate keys keep the last value
    in both. One more: orjson reads arrays and objects nested up to 1,024 deep, json until its recursion
    limit, which depends on the caller's stack (about 1,000); whoever parses untrusted input checks
    ``commands.json_too_deep`` (32 levels) first, as ``tail.check_message`` does. tests/test_envelope.py
    compares the two on generated documents."""
    if _orjson is None or _LONG_NUMBER in raw.translate(_DIGITS_AS_ZERO):
        return None
    try:
        return _orjson.loads(raw)
    except _orjson.JSONDecodeError:
        return None


def _not_json_number(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


#: made once: ``json.loads`` given an option makes a new decoder and scanner at every call (a tenth of ``parse``
#: for a telemetry window)
_DECODER = json.JSONDecoder(parse_constant=_not_json_number)
