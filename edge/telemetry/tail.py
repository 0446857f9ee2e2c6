"""``reedge tail``: watch what stations publish, check every message, and say what is missing.

    reedge tail --broker mqtt://broker:1883 --site pilot-line            # every station of a site
    reedge tail --broker mqtt://broker:1883 --station hd-01 --json       # one JSON object per line

Every message is checked: its topic, its envelope, its body against the stream's schema (commands
against their verb's schema). ``StreamTracker`` follows ``(boot, stream, seq)`` per station and
reports what the numbers say:

* **gap**: numbers skipped on a stream (lost, unless a later ``telemetry_thinned`` event says
  the outbox quota removed them: then **thinned**, and not counted as lost);
* **duplicate**: a number seen before (a re-send after a reconnect; harmless, and expected);
* **late**: a number reported missing arrives after all (the gap shrinks);
* **lost_tail**: the birth of a new boot said the previous boot reached seq N on a stream; once
  the first message of the new boot arrives in the stream's send class (the outbox sends everything
  that is not telemetry first, then telemetry, each class in order, so the old backlog of that
  class has been sent by then), every number up to N not seen is lost, even on a stream that stays
  quiet; within a boot, a telemetry window's ``heads`` (schema 1.4: the last number given on each
  other stream, all sent before the window) say the same of a stream this tail has seen;
* **restart**: numbers went back under a boot id never seen: the station's outbox was replaced.

Retained messages delivered at subscription (``state``, ``status``) are shown and checked but do
not start the numbering: they are the last of their stream, and the ones before them were
published before this tail was there. Exit status: 0, or 1 if any message was invalid or lost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from edge.spec.broker import parse_broker_url
from edge.telemetry.commands import MAX_JSON_DEPTH, json_too_deep
from edge.telemetry.envelope import Envelope, EnvelopeError, parse
from edge.telemetry.outbox import Priority
from edge.telemetry.schemas import errors as schema_errors
from edge.telemetry.topics import STREAMS, TopicError, command_schema, parse_topic, subscription, window_heads

MAX_RANGES = 1000     # missing ranges remembered per stream; older ones are dropped (and counted)
MAX_BOOTS = 32


@dataclass(frozen=True)
class Finding:
    """Something the sequence numbers say; ``first``..``last`` is the range of numbers concerned."""

    kind: str              # gap | duplicate | late | lost_tail | thinned | restart | tail_pending
    site: str
    station: str
    stream: str
    first: int
    last: int
    boot_id: str
    detail: str = ""

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def as_dict(self) -> dict[str, Any]:
        return {"type": "finding", "kind": self.kind, "site": self.site, "station": self.station,
                "stream": self.stream, "first": self.first, "last": self.last, "count": self.count,
                "boot_id": self.boot_id, "detail": self.detail}


@dataclass
class _Stream:
    last: int
    boot: str
    missing: list[list[int]] = field(default_factory=list)     # [lo, hi] ranges, ascending
    thinned: list[tuple[int, int]] = field(default_factory=list)
    received: int = 0
    duplicates: int = 0
    lost: int = 0            # currently missing (gaps minus late arrivals and thinning)
    thinned_count: int = 0
    forgotten: int = 0       # missing numbers dropped from memory (MAX_RANGES)


@dataclass
class _Station:
    boots: list[str] = field(default_factory=list)
    expect_boot: str | None = None                 # the boot of the last birth, until its first message
    expect: dict[str, int] = field(default_factory=dict)


class StreamTracker:
    """Gap, duplicate and lost-tail detection over parsed envelopes (see the module docstring). Pure: no I/O."""

    def __init__(self) -> None:
        self.streams: dict[tuple[str, str, str], _Stream] = {}
        self.stations: dict[tuple[str, str], _Station] = {}

    def observe(self, env: Envelope, *, retained: bool = False) -> list[Finding]:
        """One received message; returns what its numbers reveal."""
        sk = (env.site, env.station)
        station = self.stations.setdefault(sk, _Station())
        if env.stream == "status":
            return self._status(env, station)
        out: list[Finding] = []
        if station.expect_boot == env.boot_id and not retained:
            out.extend(self._settle_tail(env, station))
        if env.stream == "event" and env.body.get("kind") == "telemetry_thinned":
            out.extend(self._thinned(env))
        if env.stream == "telemetry" and not retained:
            out.extend(self._heads(env))
        key = (env.site, env.station, env.stream)
        st = self.streams.get(key)
        known_boot = env.boot_id in station.boots
        if not known_boot and not retained:
            station.boots.append(env.boot_id)
            del station.boots[:-MAX_BOOTS]
        if retained and (st is None or env.seq <= st.last):
            return out        # the retained last value: not part of what this tail saw being published
        if st is None:
            self.streams[key] = _Stream(env.seq, env.boot_id, received=1)
            return out
        st.received += 1
        if env.seq == st.last + 1:
            st.last, st.boot = env.seq, env.boot_id
        elif env.seq > st.last + 1:
            out.append(self._gap(env, st, st.last + 1, env.seq - 1, "gap"))
            st.last, st.boot = env.seq, env.boot_id
        elif self._take(st, env.seq):
            out.append(Finding("late", *key, env.seq, env.seq, env.boot_id, "arrived after it was reported missing"))
        elif not known_boot and env.boot_id != st.boot:
            out.append(Finding("restart", *key, env.seq, env.seq, env.boot_id,
                               f"numbers went back from {st.last} under a new boot id: the outbox was replaced"))
            self.streams[key] = _Stream(env.seq, env.boot_id, received=1)
        else:
            st.duplicates += 1
            out.append(Finding("duplicate", *key, env.seq, env.seq, env.boot_id, "seen before (a re-send)"))
        return out

    # ---- the pieces ----

    def _status(self, env: Envelope, station: _Station) -> list[Finding]:
        body = env.body
        if body.get("state") != "online":
            return []
        prev = body.get("previous_boot") or {}
        station.expect_boot = env.boot_id
        station.expect = {k: v for k, v in (prev.get("last_seq") or {}).items() if isinstance(v, int)}
        out = []
        for stream, last in sorted(station.expect.items()):
            st = self.streams.get((env.site, env.station, stream))
            if st is not None and st.last < last:
                out.append(Finding("tail_pending", env.site, env.station, stream, st.last + 1, last, env.boot_id,
                                   "the previous boot sent more: in the backlog, or lost"))
        return out

    def _settle_tail(self, env: Envelope, station: _Station) -> list[Finding]:
        """The first message of the birth's boot in a send class (telemetry, or everything else: the outbox
        sends the second first): what the previous boot sent in that class and we did not see is lost."""
        out = []
        telemetry = _is_telemetry(env.stream)
        for stream, last in sorted(station.expect.items()):
            if _is_telemetry(stream) != telemetry:
                continue
            del station.expect[stream]
            st = self.streams.get((env.site, env.station, stream))
            if st is not None and st.last < last:
                out.append(self._gap(env, st, st.last + 1, last, "lost_tail", stream=stream))
                st.last = last
        if not station.expect:
            station.expect_boot = None
        return out

    def _heads(self, env: Envelope) -> list[Finding]:
        """A window's ``heads``: each other stream's last number, sent before the window. What this tail saw
        of a stream ends below it: the rest is lost (a stream it never saw: nothing to judge)."""
        out = []
        for stream, n in sorted(window_heads(env.body.get("heads")).items()):
            st = self.streams.get((env.site, env.station, stream))
            if st is None or st.last >= n:
                continue
            out.append(self._gap(env, st, st.last + 1, n, "lost_tail", stream=stream))
            st.last = n
        return out

    def _gap(self, env: Envelope, st: _Stream, lo: int, hi: int, kind: str, *, stream: str | None = None) -> Finding:
        st.missing.append([lo, hi])
        if len(st.missing) > MAX_RANGES:
            old = st.missing.pop(0)
            st.forgotten += old[1] - old[0] + 1
            st.lost -= old[1] - old[0] + 1
        st.lost += hi - lo + 1
        thinned = sum(max(0, min(hi, b) - max(lo, a) + 1) for a, b in st.thinned)
        detail = f"{hi - lo + 1} missing" + (f", {thinned} of them thinned by the outbox quota" if thinned else "")
        if thinned:
            self._explain(st, lo, hi)
        return Finding(kind, env.site, env.station, stream or env.stream, lo, hi, env.boot_id, detail)

    def _take(self, st: _Stream, seq: int) -> bool:
        """Remove ``seq`` from the missing ranges; True if it was missing."""
        for i, (lo, hi) in enumerate(st.missing):
            if lo <= seq <= hi:
                parts = [r for r in ([lo, seq - 1], [seq + 1, hi]) if r[0] <= r[1]]
                st.missing[i:i + 1] = parts
                st.lost -= 1
                return True
        return False

    def _explain(self, st: _Stream, lo: int, hi: int) -> int:
        """Missing numbers in lo..hi are thinning, not loss; returns how many were."""
        n = 0
        kept: list[list[int]] = []
        for a, b in st.missing:
            x, y = max(a, lo), min(b, hi)
            if x > y:
                kept.append([a, b])
                continue
            n += y - x + 1
            kept.extend(r for r in ([a, x - 1], [y + 1, b]) if r[0] <= r[1])
        st.missing = kept
        st.lost -= n
        st.thinned_count += n
        return n

    def _thinned(self, env: Envelope) -> list[Finding]:
        out = []
        for entry in env.body.get("streams", []):
            stream, lo, hi = entry.get("stream"), entry.get("first_seq"), entry.get("last_seq")
            if not isinstance(stream, str) or not isinstance(lo, int) or not isinstance(hi, int):
                continue
            st = self.streams.get((env.site, env.station, stream))
            if st is None:
                continue
            st.thinned.append((lo, hi))
            del st.thinned[:-MAX_RANGES]
            n = self._explain(st, lo, hi)
            if n:
                out.append(Finding("thinned", env.site, env.station, stream, lo, hi, env.boot_id,
                                   f"{n} reported missing were thinned by the outbox quota, not lost"))
        return out

    def summary(self) -> list[dict[str, Any]]:
        return [{"type": "summary", "site": k[0], "station": k[1], "stream": k[2], "last_seq": s.last,
                 "received": s.received, "duplicates": s.duplicates, "lost": s.lost, "thinned": s.thinned_count}
                for k, s in sorted(self.streams.items())]

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.streams.values())


# ---- one received message ----------------------------------------------------------------------

@dataclass
class Checked:
    """A received message after the checks: what it is, and what is wrong with it."""

    topic: str
    retained: bool
    envelope: Envelope | None = None
    command: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


def check_message(topic: str, payload: bytes, retained: bool = False) -> Checked:
    """Topic, envelope and schema checks for one message (commands: the verb's schema, and that the
    payload's issuer is the sender the topic names). Never raises: the messages are untrusted, and an
    exception would end paho's network loop (the tail would hang, deaf)."""
    c = Checked(topic, retained)
    try:
        _check(c, bytes(payload))
    except Exception as e:   # a bug in a check must cost one message, not the tail
        c.envelope = None
        c.problems.append(f"could not be checked: {type(e).__name__}: {e}")
    return c


def _check(c: Checked, payload: bytes) -> None:
    try:
        parts = parse_topic(c.topic)
    except TopicError as e:
        c.problems.append(str(e))
        return
    if json_too_deep(payload):   # before any parsing: the schema validator would exhaust the stack
        c.problems.append(f"payload nests deeper than {MAX_JSON_DEPTH} levels: not checked")
        return
    if parts.stream == "cmd":
        assert parts.verb is not None
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (ValueError, RecursionError) as e:   # UnicodeDecodeError is a ValueError
            c.problems.append(f"not UTF-8 JSON: {e}")
            return
        c.command = doc if isinstance(doc, dict) else None
        c.problems.extend(schema_errors(doc, command_schema(parts.verb)))
        issuer = c.command.get("issuer") if c.command is not None else None
        if isinstance(issuer, str) and issuer != parts.identity:
            c.problems.append(f"issuer {issuer[:128]!r} is not the sender {parts.identity!r} of the topic:"
                              " the station rejects it")
        return
    try:
        env = parse(payload)
    except EnvelopeError as e:
        c.problems.append(str(e))
        return
    c.envelope = env
    if (env.site, env.station, env.stream) != (parts.site, parts.station, parts.stream):
        c.problems.append(f"envelope says {env.site}/{env.station}/{env.stream}, the topic"
                          f" {parts.site}/{parts.station}/{parts.stream}")
    c.problems.extend(schema_errors(env.document(), STREAMS[env.stream].schema))


def _summary_of(env: Envelope) -> str:
    b = env.body
    if env.stream == "telemetry":
        chans = b.get("channels", {})
        shown = ", ".join(f"{k}={v.get('last')}" + ("!" + "|".join(v["status"]) if v.get("status") else "")
                          for k, v in list(chans.items())[:4])
        return f"{b.get('window', {}).get('samples', '?')} samples: {shown}" + (" ..." if len(chans) > 4 else "")
    if env.stream == "status":
        return f"{b.get('state')} (connection {b.get('connection')})"
    if env.stream == "state":
        return f"{b.get('run')} phase={b.get('phase')} tripped={b.get('interlocks', {}).get('tripped')}"
    if env.stream in ("event", "reply"):
        return f"{b.get('kind') or b.get('result')} {b.get('code', '')} {b.get('message', '')}".strip()
    if env.stream == "batch":
        return f"{b.get('record')} {b.get('batch_id')}"
    return ""


class Printer:
    """Human lines or JSON lines, for messages and findings."""

    def __init__(self, out: TextIO, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json

    def message(self, c: Checked) -> None:
        env = c.envelope
        if self.as_json:
            record: dict[str, Any] = {"type": "message", "topic": c.topic, "retained": c.retained,
                                      "valid": not c.problems, "problems": c.problems}
            if env is not None:
                record.update(site=env.site, station=env.station, stream=env.stream, boot_id=env.boot_id,
                              seq=env.seq, ts=env.ts, body=env.body)
            elif c.command is not None:
                record["command"] = c.command
            print(json.dumps(record, ensure_ascii=False), file=self.out, flush=True)
            return
        flag = " (retained)" if c.retained else ""
        if env is not None:
            line = f"{env.ts} {env.site}/{env.station} {env.stream} #{env.seq}{flag} {_summary_of(env)}"
        else:
            line = f"{c.topic}{flag}"
        if c.problems:
            line += "\n  INVALID: " + "\n  INVALID: ".join(c.problems)
        print(line, file=self.out, flush=True)

    def finding(self, f: Finding) -> None:
        if self.as_json:
            print(json.dumps(f.as_dict()), file=self.out, flush=True)
            return
        span = f"#{f.first}" if f.first == f.last else f"#{f.first}..#{f.last}"
        print(f"  {f.kind.upper()} {f.site}/{f.station} {f.stream} {span}: {f.detail}", file=self.out, flush=True)

    def summary(self, tracker: StreamTracker, invalid: int) -> None:
        rows = tracker.summary()
        if self.as_json:
            for row in rows:
                print(json.dumps(row), file=self.out)
            print(json.dumps({"type": "total", "invalid": invalid, "lost": tracker.lost}), file=self.out, flush=True)
            return
        for r in rows:
            print(f"{r['site']}/{r['station']} {r['stream']}: {r['received']} received up to #{r['last_seq']},"
                  f" {r['lost']} lost, {r['duplicates']} duplicate(s), {r['thinned']} thinned", file=self.out)
        print(f"{invalid} invalid message(s), {tracker.lost} lost", file=self.out, flush=True)


# ---- the command line --------------------------------------------------------------------------

def register(subparsers: Any) -> None:
    """Add ``tail`` to ``reedge``'s subcommands."""
    p = subparsers.add_parser("tail", help="watch stations' MQTT messages, validate them, report gaps and duplicates")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host[:port] or mqtts://host[:port]")
    p.add_argument("--site", default="+", help="site id (default: every site)")
    p.add_argument("--station", default="+", help="station id (default: every station)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--count", type=int, default=0, help="stop after this many messages (default: run until ^C)")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this many seconds (default: never)")
    p.add_argument("--username", help="MQTT username (password from the REEDGE_MQTT_PASSWORD environment variable)")
    p.add_argument("--ca-file", help="CA certificate for mqtts:// (default: the system's)")
    p.set_defaults(func=cmd_tail)


def cmd_tail(args: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    url = parse_broker_url(args.broker)
    topic_filter = subscription(args.site, args.station)
    if args.count < 0 or args.seconds < 0:
        raise ValueError("--count and --seconds must not be negative")
    printer = Printer(sys.stdout, args.json)
    tracker = StreamTracker()
    done = threading.Event()
    seen = 0
    invalid = 0
    failure: list[str] = []

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            failure.append(f"the broker refused the connection: {reason}")
            done.set()
            return
        client.subscribe(topic_filter, qos=1)

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        nonlocal seen, invalid
        c = check_message(msg.topic, msg.payload, bool(msg.retain))
        invalid += bool(c.problems)
        printer.message(c)
        if c.envelope is not None and not c.problems:
            for f in tracker.observe(c.envelope, retained=c.retained):
                printer.finding(f)
        seen += 1
        if args.count and seen >= args.count:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"reedge-tail-{os.getpid()}",
                         protocol=mqtt.MQTTv311)
    if args.username:
        client.username_pw_set(args.username, os.environ.get("REEDGE_MQTT_PASSWORD"))
    if url.tls:
        client.tls_set(ca_certs=args.ca_file)
    def on_subscribe(client: Any, userdata: Any, mid: Any, reasons: Any, properties: Any) -> None:
        if any(r.is_failure for r in reasons):
            failure.append(f"the broker refused the subscription to {topic_filter}: {reasons[0]}")
            done.set()
            return
        print(f"# subscribed to {topic_filter}", file=sys.stderr, flush=True)   # scripts wait for this line

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    print(f"# tail {topic_filter} on {url}", file=sys.stderr, flush=True)   # before the SUBACK line, always
    client.connect(url.host, url.port, keepalive=30)
    client.loop_start()
    try:
        _wait(done, args.seconds)
    finally:
        client.disconnect()
        client.loop_stop()
    if failure:
        print(f"reedge tail: {failure[0]}", file=sys.stderr)
        return 2
    printer.summary(tracker, invalid)
    return 1 if invalid or tracker.lost else 0


def _wait(done: threading.Event, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
    deadline = clock() + seconds if seconds else None
    while not done.is_set():
        left = None if deadline is None else deadline - clock()
        if left is not None and left <= 0:
            return
        done.wait(0.5 if left is None else min(left, 0.5))


def _is_telemetry(stream: str) -> bool:
    """The outbox's send class of a stream (``Outbox.pending``: telemetry goes after everything else)."""
    spec = STREAMS.get(stream)
    return spec is not None and spec.priority is Priority.TELEMETRY
