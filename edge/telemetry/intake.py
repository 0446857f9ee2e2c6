"""The command intake: what paho's network thread does with each command, in constant time and bounded memory.

A broker does not hold commands back for a slow subscriber: mosquitto 2.0 pushed 2,644
unacknowledged commands at a station in about a second, whatever ``max_inflight_messages`` or the
Receive Maximum said. So the station must take any inbound rate without leaving a command
unanswered (never acknowledged, it would wait for a redelivery that only a reconnect brings), without
letting one sender starve another, and without disturbing the scan. ``Intake.offer`` (network thread)
only sorts each command into one of three places:

- **served first** by the scan: commands whose verb the sender's roles allow (operator, maintenance);
- **served after them**: everything else (viewers, unknown identities, unknown verbs): they are
  rejected anyway, cheaply, but still one by one with their own answer and audit event; and the
  verbs that serve a consumer rather than the process (``DEFERRED_VERBS``: ``resend``), allowed or
  not: a resend queues thousands of rows again, and a burst of them must not hold a hold back;
- **turned away**: a command over its sender's rate limit, or one that finds its queue full
  (``MAX_WAITING`` commands or ``MAX_WAITING_BYTES`` of payload and properties). Only its topic, its
  command id (``peek_command_id``) and its correlation data (if short enough to be echoed) are kept
  (never its payload), and it is answered ``busy`` ("send it again") without being read further.
  Past ``MAX_TURNED_WAITING`` of those, the network thread answers them itself (``Intake.offer``
  returns False), in one outbox transaction.

The turned-away commands are answered by the publisher's answering thread (``wait_work``), not by the
scan: the broker sends a station only so many unacknowledged commands (mosquitto's
``max_inflight_messages``, when it honours it), so a flood drains only as fast as its commands are
acknowledged, and a command queued in the broker behind the flood (the operator's) waits for that. One
outbox transaction (one fsync) answers every command turned away since the last one: a flood drains at
the disk's speed, in groups, not at the scan's period.

The rate limit is a token bucket per identity listed in ``[mqtt.roles]`` (``burst`` commands at once,
``rate_per_minute`` sustained, ``[mqtt.commands]``); identities not listed share one bucket (the
broker authenticates them, but their number is not ours to bound).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edge.spec.access import DEFERRED_VERBS, CommandSettings
from edge.telemetry.commands import MAX_CORRELATION, peek_command_id
from edge.telemetry.topics import TopicError, parse_topic

Ack = Callable[[], None]
Reason = Literal["rate", "full"]

MAX_WAITING = 1000                  # commands per queue
MAX_WAITING_BYTES = 4 << 20         # payload bytes per queue: a flood of 1 MB payloads holds at most 4 of them
MAX_TURNED_WAITING = 10_000         # turned-away commands waiting for their busy answer (a few hundred bytes each)


@dataclass(frozen=True)
class Waiting:
    """A command queued for the scan, whole."""

    topic: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None
    ack: Ack          # to the broker, once the answer is stored


@dataclass(frozen=True)
class Turned:
    """A command turned away at intake: what its ``busy`` answer needs, not its payload."""

    topic: str
    identity: str | None      # from the topic (None: not a command topic of the form cmd/IDENTITY/VERB)
    command_id: str | None
    correlation_data: bytes | None
    reason: Reason
    ack: Ack


class _Bucket:
    """A token bucket: ``burst`` at once, refilled at ``rate_per_s``."""

    def __init__(self, burst: int, rate_per_s: float, now: float) -> None:
        self.burst, self.rate = burst, rate_per_s
        self.tokens, self.last = float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Queue:
    """A FIFO bounded by count and by payload bytes."""

    def __init__(self) -> None:
        self.items: deque[Waiting] = deque()
        self.bytes = 0

    def put(self, cmd: Waiting) -> bool:
        if len(self.items) >= MAX_WAITING or self.bytes + _held(cmd) > MAX_WAITING_BYTES:
            return False
        self.items.append(cmd)
        self.bytes += _held(cmd)
        return True

    def get(self) -> Waiting:
        cmd = self.items.popleft()
        self.bytes -= _held(cmd)
        return cmd


def _held(cmd: Waiting) -> int:
    """What a queued command holds: its payload and its MQTT 5 properties (up to 64 KiB each, any sender)."""
    return len(cmd.payload) + len(cmd.correlation_data or b"") + len(cmd.response_topic or "")


class Intake:
    """The three places of the module docstring; thread-safe (``offer`` on the network thread, the rest on
    the scan's)."""

    def __init__(self, settings: CommandSettings, *, timer: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.timer = timer
        self._lock = threading.Lock()
        self._turned_ready = threading.Condition(self._lock)
        self._closed = False
        self._stopping = False      # queued commands are answered by the answering thread too (the scan is over)
        self._first = _Queue()
        self._after = _Queue()
        self._turned: deque[Turned] = deque()
        self._buckets: dict[str | None, _Bucket] = {}

    def offer(self, cmd: Waiting) -> bool:
        """Queue ``cmd`` or turn it away; False if even the turned-away backlog is full (then the caller answers
        the backlog, ``take_turned``, and offers again)."""
        try:
            parts = parse_topic(cmd.topic)
            identity, verb = parts.identity, parts.verb
        except TopicError:
            identity = verb = None
        listed = identity if identity in self.settings.roles else None
        first = (verb is not None and identity is not None and verb not in DEFERRED_VERBS
                 and verb in self.settings.verbs_for(identity))
        with self._lock:
            now = self.timer()
            bucket = self._buckets.get(listed)
            if bucket is None:
                bucket = self._buckets[listed] = _Bucket(self.settings.burst, self.settings.rate_per_minute / 60.0,
                                                         now)
            reason: Reason | None = None
            if not bucket.take(now):
                reason = "rate"
            elif not (self._first if first else self._after).put(cmd):
                reason = "full"
            if reason is None:
                if self._stopping:
                    self._turned_ready.notify()
                return True
            if len(self._turned) >= MAX_TURNED_WAITING:
                if reason == "full":
                    bucket.tokens += 1.0      # not taken after all: the caller offers it again
                return False
        # outside the lock: reading the id parses the (small) payload
        # correlation data past MAX_CORRELATION is not echoed (``CommandHandler.busy``): not kept either, or
        # MAX_TURNED_WAITING entries of 64 KiB each would hold 660 MB
        correlation = cmd.correlation_data if len(cmd.correlation_data or b"") <= MAX_CORRELATION else None
        turned = Turned(cmd.topic, identity, peek_command_id(cmd.payload, self.settings.max_payload_bytes),
                        correlation, reason, cmd.ack)
        with self._lock:
            self._turned.append(turned)
            self._turned_ready.notify()
        return True

    def take(self, limit: int) -> list[Waiting]:
        """Up to ``limit`` queued commands, those whose verb the sender may send first, each queue in order."""
        out: list[Waiting] = []
        with self._lock:
            for q in (self._first, self._after):
                while q.items and len(out) < limit:
                    out.append(q.get())
        return out

    def wait_work(self) -> bool:
        """Until a command is turned away, or (after ``stopping``) queued (True), or ``close`` (False)."""
        with self._lock:
            while not self._closed and not (self._turned or (self._stopping and (self._first.items
                                                                                  or self._after.items))):
                self._turned_ready.wait()
            return not self._closed

    def stopping(self) -> None:
        """The station stops: no scan takes queued commands any more, ``wait_work`` wakes for them too."""
        with self._lock:
            self._stopping = True
            self._turned_ready.notify_all()

    def close(self) -> None:
        """Wake ``wait_work`` for good (what is left stays unacknowledged: the broker sends it again)."""
        with self._lock:
            self._closed = True
            self._turned_ready.notify_all()

    def take_turned(self, limit: int) -> list[Turned]:
        with self._lock:
            return [self._turned.popleft() for _ in range(min(limit, len(self._turned)))]

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._first.items) + len(self._after.items) + len(self._turned)
