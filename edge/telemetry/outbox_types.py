"""The outbox's types: its errors, priorities, messages, stats and resend answers (``edge.telemetry.outbox`` says
what they mean)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

ROW_OVERHEAD = 64            # bytes counted per message besides payload, topic and stream (row header, indexes)
RESEND_BYTES = 2 << 20       # bytes one resend requeues at most (the first message always): bounded scan time
MAX_RESEND = 5_000           # numbers one resend may cover at most (last_seq - first_seq < this): outbox_history


class OutboxError(RuntimeError):
    """The outbox cannot do what was asked (closed, not an outbox file, disk full...); nothing was changed."""


class OutboxLocked(OutboxError):
    """Another ``Outbox`` (in this process or another) already owns the file."""


class InvalidMessage(OutboxError, ValueError):
    """A put was refused because of its arguments; nothing was stored."""


class Priority(enum.IntEnum):
    """What the quota may do with a message. Only TELEMETRY may be thinned; the rest is never dropped."""

    TELEMETRY = 0
    STATE = 1
    EVENT = 2
    ALARM = 3
    BATCH = 4

    @property
    def thinnable(self) -> bool:
        return self is Priority.TELEMETRY


#: the send order: every class before the next; inside a class, insertion order (module docstring, "Order")
SEND_CLASSES = ((Priority.BATCH, Priority.ALARM, Priority.EVENT, Priority.STATE), (Priority.TELEMETRY,))


class Draft(NamedTuple):
    """One message to store, for ``put_many`` (the arguments of ``put``)."""

    stream: str
    topic: str
    payload: bytes | Mapping[str, Any]
    priority: Priority
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Message:
    """A stored message. ``(boot_id, stream, seq)`` identifies it end to end, also across re-sends."""

    id: int              # insertion id: global send order, the handle for mark_inflight/ack
    boot_id: str         # the boot it was created under (not necessarily the current one)
    stream: str
    seq: int             # per stream, from 1, never reused
    topic: str
    payload: bytes       # the body; a dict given to put is stored as compact UTF-8 JSON
    priority: Priority
    qos: int
    retain: bool
    created_ns: int      # wall clock (time.time_ns) at put
    #: the payload is known to be a JSON object: checked (or encoded) by this process's ``put``, so ``envelope``
    #: need not parse it again; False for a row read back from the file (written by an earlier process)
    body_checked: bool = field(default=False, compare=False)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.boot_id, self.stream, self.seq)

    @property
    def size(self) -> int:
        """The bytes this message counts against the quota."""
        return _size(self.stream, self.topic, self.payload)


@dataclass(frozen=True, slots=True)
class PriorityStats:
    count: int
    bytes: int


@dataclass(frozen=True)
class OutboxStats:
    """A snapshot for the status message and ``reedge doctor``."""

    count: int
    bytes: int
    quota_bytes: int
    over_quota: bool                     # total bytes above the quota (only non-thinnable messages can cause it)
    by_priority: dict[Priority, PriorityStats]
    inflight: int
    oldest_age_s: float | None           # wall-clock age of the oldest pending message, None when empty
    thinned: int                         # telemetry messages removed by thinning, over the file's life
    thinning_events: int                 # event messages that reported them
    file_bytes: int                      # database + WAL on disk
    dropped: int = 0                     # messages lost without a trace: none, by construction
    history_count: int = 0               # acknowledged messages kept for resend (not in count, bytes, the quota)
    history_bytes: int = 0               # their stored size (as ``bytes`` counts it)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, priorities by lower-case name."""
        return {"count": self.count, "bytes": self.bytes, "quota_bytes": self.quota_bytes,
                "over_quota": self.over_quota,
                "by_priority": {p.name.lower(): {"count": s.count, "bytes": s.bytes}
                                for p, s in self.by_priority.items()},
                "inflight": self.inflight, "oldest_age_s": self.oldest_age_s, "thinned": self.thinned,
                "thinning_events": self.thinning_events, "file_bytes": self.file_bytes, "dropped": self.dropped,
                "history_count": self.history_count, "history_bytes": self.history_bytes}


@dataclass(frozen=True, slots=True)
class Resent:
    """What ``Outbox.resend`` did with a range of one boot's stream: each number of the range up to the last the
    stream was given under that boot, or up to ``rest_from`` (excluded), is counted in exactly one of the three."""

    requeued: int                        # history messages made pending again: they go out as they first did
    pending: int                         # still pending or in flight: they will go out anyway
    missing: list[tuple[int, int]]       # inclusive ranges no longer held (pruned, thinned, never acked...)
    rest_from: int | None = None         # RESEND_BYTES were requeued: from this number on, nothing was looked at

    @property
    def missing_count(self) -> int:
        return sum(b - a + 1 for a, b in self.missing)


def _size(stream: str, topic: str, payload: bytes) -> int:
    return len(payload) + len(topic.encode()) + len(stream.encode()) + ROW_OVERHEAD
