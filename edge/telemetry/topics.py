"""The MQTT topics of a station, and what each stream is: QoS, retain, schema, outbox priority.

Every topic of a station lives under one root::

    reedge/v1/{site}/{station}/status       retained; the birth says online, the Will offline
    reedge/v1/{site}/{station}/description  retained; channels, units, outputs, interlocks, versions
    reedge/v1/{site}/{station}/telemetry    aggregated channel values, one message per window
    reedge/v1/{site}/{station}/state        retained; the process state, on every change
    reedge/v1/{site}/{station}/event        trips, alarms, sequence transitions, operator actions
    reedge/v1/{site}/{station}/batch        batch start and end records
    reedge/v1/{site}/{station}/cmd/{identity}/{verb}
                                            commands in (start, hold, resume, abort, ack_alarm,
                                            reset, record_mass, autotune; resend: a consumer asks
                                            for messages it lost again), sent by ``identity``
    reedge/v1/{site}/{station}/reply/{verb} the answer to each command (unless an authorised
                                            command named its own reply topic under
                                            ``reply/{identity}/...``: the MQTT 5 response topic,
                                            or ``reply_to`` in the payload under MQTT 3.1.1)

**Who sent a command is a topic level.** MQTT does not tell a subscriber who published a message,
but the broker's ACL can: each identity (the username, or the client certificate's CN with
mosquitto's ``use_identity_as_username``) may write only ``.../cmd/{its own name}/+``
(``deploy/mosquitto/acl``, written by ``reedge station acl``). So the ``{identity}``
level of a command that arrived is vouched for by the broker, and the station authorises by it,
never by what the payload says (``edge.telemetry.commands``).

``STREAMS`` is the one table of what each stream is. The MQTT session publishes with its QoS
and retain flag, the outbox stores with its priority, ``mqtt_schemas/asyncapi.yaml`` must say the
same (``tests/test_schemas.py`` checks it), and ``reedge tail`` picks the schema by it. Every
published stream is QoS 1: the outbox lets a message go (into its bounded history, for ``resend``)
only once the broker acknowledged it, which needs a PUBACK (QoS 0 has none; QoS 2 costs a second
round trip and brings nothing that sequence numbers do not already give: duplicates are recognised
by (boot, stream, seq)).

Site and station are topic levels: lowercase letters, digits, ``-`` and ``_``, 1 to 32
characters, starting with a letter or digit (the same rule as the station file's
``[station] site`` and ``id``). That excludes the MQTT wildcards ``+`` and ``#``, the level
separator ``/``, a leading ``$`` (broker-internal topics) and anything a shell or a URL would
have to quote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from edge.spec.access import IDENTITY_RE
from edge.telemetry.outbox import Priority

PREFIX = "reedge/v1"
SCHEMA_BASE = "https://reeproduce.eu/schemas/reedge/v1/"
LEVEL_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # = edge.spec.station.IDENT_RE (a test checks they agree)
MAX_REPLY_TOPIC = 512
#: Command verbs, in the order the documentation lists them.
VERBS: tuple[str, ...] = ("start", "hold", "resume", "abort", "ack_alarm", "reset", "record_mass", "autotune",
                          "resend")


class TopicError(ValueError):
    """A site, station, verb or topic that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class StreamSpec:
    """One kind of message the station publishes (or, for ``cmd``, receives)."""

    name: str                 # the outbox stream and the envelope's ``stream``
    suffix: str               # the topic after the station root ("cmd/{identity}/{verb}" for commands)
    qos: Literal[0, 1, 2]
    retain: bool
    schema: str               # file in mqtt_schemas/ that describes the payload
    priority: Priority | None  # the outbox priority (None: not sent through the outbox)
    direction: Literal["publish", "subscribe"]  # seen from the station
    tracked: bool             # consumers check its sequence numbers for gaps and duplicates

    @property
    def schema_id(self) -> str:
        """The ``$id`` of the payload schema, carried in every envelope of this stream."""
        return SCHEMA_BASE + self.schema


STREAMS: dict[str, StreamSpec] = {s.name: s for s in (
    # status is published by the session itself at connect (birth) and by the broker (Will), not from
    # the outbox: it describes the connection. Retained, so a consumer that subscribes later learns
    # at once whether the station is online and what its previous boot had sent.
    StreamSpec("status", "status", 1, True, "status.json", None, "publish", False),
    # retained: what every other stream's names and numbers mean (edge.telemetry.description); put at every
    # start and on a change, named by its SHA-256 in the birth and in every telemetry window
    StreamSpec("description", "description", 1, True, "description.json", Priority.STATE, "publish", True),
    StreamSpec("telemetry", "telemetry", 1, False, "telemetry.json", Priority.TELEMETRY, "publish", True),
    # retained: a dashboard that connects mid-batch sees the current state without waiting for a change
    StreamSpec("state", "state", 1, True, "state.json", Priority.STATE, "publish", True),
    # alarms and trips are put with Priority.ALARM (edge.telemetry.events decides per event)
    StreamSpec("event", "event", 1, False, "event.json", Priority.EVENT, "publish", True),
    StreamSpec("batch", "batch", 1, False, "batch.json", Priority.BATCH, "publish", True),
    StreamSpec("reply", "reply/{verb}", 1, False, "reply.json", Priority.EVENT, "publish", True),
    StreamSpec("cmd", "cmd/{identity}/{verb}", 1, False, "cmd-{verb}.json", None, "subscribe", False),
)}


# the streams a telemetry window names the last number of (its ``heads``, schema 1.4): the other tracked ones
HEAD_STREAMS = frozenset(name for name, spec in STREAMS.items() if spec.tracked and name != "telemetry")


def window_heads(numbers: object) -> dict[str, int]:
    """A window's ``heads`` from stream -> last number: the outbox's ``last_sequences()`` as the station writes
    them, or a received window's field as a consumer reads it (anything not a mapping: none). Only the head
    streams, and only numbers (1 or more) given."""
    if not isinstance(numbers, dict):
        return {}
    return {s: n for s, n in numbers.items()
            if s in HEAD_STREAMS and isinstance(n, int) and not isinstance(n, bool) and n > 0}


def check_level(value: object, what: str) -> str:
    """``value`` if it is a valid site or station topic level, else TopicError naming ``what``."""
    if not isinstance(value, str):
        raise TopicError(f"{what} must be a string, got {type(value).__name__}")
    if not LEVEL_RE.fullmatch(value):
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise TopicError(f"{what} {shown!r} cannot be an MQTT topic level: expected 1 to 32 lowercase letters,"
                         " digits, - and _, starting with a letter or digit (no + # / or spaces)")
    return value


def check_identity(value: object) -> str:
    """``value`` if it can be the identity level of a command topic (``IDENTITY_RE``), else TopicError."""
    if not isinstance(value, str) or not IDENTITY_RE.fullmatch(value):
        shown = repr(value) if not isinstance(value, str) or len(value) <= 40 else repr(value[:37] + "...")
        raise TopicError(f"identity {shown} cannot be a command topic level: expected an MQTT username or"
                         " certificate CN of 1 to 128 characters, no control characters, no + # / and no"
                         " space at either end")
    return value


def check_verb(verb: object) -> str:
    if not isinstance(verb, str) or verb not in VERBS:
        raise TopicError(f"unknown command verb {verb!r} (expected one of: {', '.join(VERBS)})")
    return verb


def command_schema(verb: str) -> str:
    """The schema file of a command verb, e.g. ``cmd-start.json``."""
    return STREAMS["cmd"].schema.format(verb=check_verb(verb))


@dataclass(frozen=True)
class StationTopics:
    """The topics of one station. Built with checked names, so every topic here can be published."""

    site: str
    station: str

    def __post_init__(self) -> None:
        check_level(self.site, "site")
        check_level(self.station, "station")

    @property
    def root(self) -> str:
        """``reedge/v1/{site}/{station}`` (no trailing slash)."""
        return f"{PREFIX}/{self.site}/{self.station}"

    def topic(self, stream: str, verb: str | None = None, identity: str | None = None) -> str:
        """The topic of a stream; ``reply`` needs the verb, ``cmd`` the verb and the sender's identity."""
        spec = STREAMS.get(stream)
        if spec is None:
            raise TopicError(f"unknown stream {stream!r} (expected one of: {', '.join(STREAMS)})")
        fields: dict[str, str] = {}
        if "{verb}" in spec.suffix:
            if verb is None:
                raise TopicError(f"the {stream} topic needs a command verb")
            fields["verb"] = check_verb(verb)
        if "{identity}" in spec.suffix:
            if identity is None:
                raise TopicError(f"the {stream} topic needs the sender's identity")
            fields["identity"] = check_identity(identity)
        return f"{self.root}/{spec.suffix.format(**fields)}"

    @property
    def status(self) -> str:
        return self.topic("status")

    @property
    def description(self) -> str:
        return self.topic("description")

    @property
    def telemetry(self) -> str:
        return self.topic("telemetry")

    @property
    def state(self) -> str:
        return self.topic("state")

    @property
    def event(self) -> str:
        return self.topic("event")

    @property
    def batch(self) -> str:
        return self.topic("batch")

    def cmd(self, verb: str, identity: str) -> str:
        """Where ``identity`` sends ``verb`` to this station: ``.../cmd/{identity}/{verb}``."""
        return self.topic("cmd", verb, identity)

    def reply(self, verb: str) -> str:
        return self.topic("reply", verb)

    @property
    def cmd_filter(self) -> str:
        """What the session subscribes to for commands: ``.../cmd/+/+`` (every sender, every verb)."""
        return f"{self.root}/cmd/+/+"

    def check_reply_topic(self, topic: object, *, identity: str) -> str:
        """A reply topic the command of ``identity`` asked for, if the station may publish there; else TopicError.

        Only this station's own reply topics: ``reply/{verb}``, or the sender's own inbox
        ``reply/{identity}/...`` (one or more further levels, e.g. a request id). Those are the topics the
        broker lets the station write (``reply/#``), so a reply can never be refused by the ACL and
        stay in the outbox for ever, nor land in a data stream or in another sender's inbox.
        """
        if not isinstance(topic, str) or not topic:
            raise TopicError(f"reply topic must be a non-empty string, got {topic!r}")
        if len(topic.encode()) > MAX_REPLY_TOPIC:
            raise TopicError(f"reply topic is longer than {MAX_REPLY_TOPIC} bytes")
        if any(c in topic for c in "+#\0") or topic.startswith("$"):
            raise TopicError(f"reply topic {topic!r} contains a wildcard (+ #), NUL or starts with $")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in topic):
            raise TopicError(f"reply topic {topic!r} contains control characters")
        if topic in {self.reply(v) for v in VERBS}:
            return topic
        inbox = f"{self.root}/reply/{check_identity(identity)}/"
        rest = topic[len(inbox):].split("/") if topic.startswith(inbox) else []
        if not rest or not all(rest):
            raise TopicError(f"reply topic {topic!r} is not one of this station's reply topics: expected"
                             f" {self.root}/reply/VERB or {inbox}... (the sender's own inbox, non-empty levels)")
        return topic


@dataclass(frozen=True)
class TopicParts:
    """A received topic, taken apart (``verb`` for cmd/ and reply/VERB topics; ``identity`` for cmd/
    topics, the sender, and for reply/{identity}/... inboxes)."""

    site: str
    station: str
    stream: str
    verb: str | None = None
    identity: str | None = None


def parse_topic(topic: str) -> TopicParts:
    """Split ``reedge/v1/{site}/{station}/{stream}[/...]``; TopicError for anything else."""
    levels = topic.split("/")
    if len(levels) < 5 or "/".join(levels[:2]) != PREFIX:
        raise TopicError(f"{topic!r} is not a reedge v1 topic ({PREFIX}/SITE/STATION/STREAM)")
    site = check_level(levels[2], "site")
    station = check_level(levels[3], "station")
    rest = levels[4:]
    if len(rest) == 1 and rest[0] in STREAMS and "{verb}" not in STREAMS[rest[0]].suffix:
        return TopicParts(site, station, rest[0])
    if len(rest) == 3 and rest[0] == "cmd":
        return TopicParts(site, station, "cmd", check_verb(rest[2]), check_identity(rest[1]))
    if len(rest) == 2 and rest[0] == "reply":
        return TopicParts(site, station, "reply", check_verb(rest[1]))
    if len(rest) > 2 and rest[0] == "reply" and all(rest[2:]):
        return TopicParts(site, station, "reply", identity=check_identity(rest[1]))
    raise TopicError(f"{topic!r}: unknown stream {'/'.join(rest)!r} (expected one of: status, description, telemetry,"
                     " state, event, batch, cmd/IDENTITY/VERB, reply/VERB, reply/IDENTITY/...)")


def subscription(site: str = "+", station: str = "+") -> str:
    """The filter for everything a station (or, with ``+``, several) publishes and receives."""
    for value, what in ((site, "site"), (station, "station")):
        if value != "+":
            check_level(value, what)
    return f"{PREFIX}/{site}/{station}/#"
