"""The durable outbox against an in-memory ``collections.deque`` queue: the price of durability.

(a) Sustained put + pend + ack: the same stream of messages (a furnace's mix: mostly telemetry,
    some state, events, alarms) goes through each queue the way the MQTT session will drive it:
    one ``put`` per message, and every 50 puts ``pending(50)``, ``mark_inflight`` and one ``ack``
    per message (a PUBACK each). The outbox is measured with its default group commit (puts
    without fsync, one fsync covering them at each ``pending``), with ``synchronous=FULL`` (an fsync
    per put) and, for the record, with ``NORMAL`` (none). The deque does the same work minus
    the disk: JSON encoding, sequence numbers, an in-flight table. It is much faster; the figure
    says by how much, which is what "never lose a message" costs on this disk.
(b) Replay: a backlog of 100,000 messages (left by an outage, the outbox reopened as after a
    restart) drained the same way, pending pages and one ack per message.
(c) Memory: the resident set (VmRSS) of a fresh process that opens an outbox holding a backlog
    of 1,000,000 messages (100,000 with --quick), reads its stats, and sends and acks 20,000 of
    them, against the same process on an empty outbox. It must stay bounded: nothing loads the
    backlog.

The files go to ``$REEDGE_BENCH_DIR`` or /var/tmp, which is on disk (/tmp may be tmpfs, where
an fsync costs nothing and the durable figure would flatter the outbox).
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, Literal

from bench.figures import Figure
from edge.telemetry.outbox import Draft, Outbox, Priority

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOPIC = "reedge/v1/pilot-line/hd-01/"
BASELINE = "collections.deque in memory (same messages, same work, no disk)"
MIX = [("telemetry", Priority.TELEMETRY)] * 90 + [("state", Priority.STATE)] * 5 + [("event", Priority.EVENT)] * 4 \
    + [("alarm", Priority.ALARM)]
SEND_EVERY = 50

Item = tuple[str, str, dict[str, Any], Priority]


def messages(n: int, seed: int = 1) -> list[Item]:
    rng = random.Random(seed)
    out: list[Item] = []
    for i in range(n):
        stream, priority = rng.choice(MIX)
        body = {"t": 1_717_000_000.0 + i * 0.1, "chamber_temp": round(600 + rng.gauss(0, 2), 2),
                "jacket_temp": round(80 + rng.gauss(0, 1), 2), "pressure_mbar": round(1013 + rng.gauss(0, 5), 1),
                "h2_flow_slm": 0.0, "status": "ok"}
        out.append((stream, TOPIC + stream, body, priority))
    return out


class DequeQueue:
    """The baseline: what a queue in memory does for the same calls (encode, number, hold in flight, forget)."""

    def __init__(self) -> None:
        self.queue: collections.deque[tuple[int, str, int, str, bytes, Priority]] = collections.deque()
        self.inflight: dict[int, tuple[int, str, int, str, bytes, Priority]] = {}
        self.seqs: dict[str, int] = {}
        self.next_id = 1

    def put(self, stream: str, topic: str, payload: dict[str, Any], *, priority: Priority) -> None:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        seq = self.seqs[stream] = self.seqs.get(stream, 0) + 1
        self.queue.append((self.next_id, stream, seq, topic, body, priority))
        self.next_id += 1

    def pending(self, limit: int) -> list[tuple[int, str, int, str, bytes, Priority]]:
        return [self.queue[i] for i in range(min(limit, len(self.queue)))]

    def mark_inflight(self, batch: list[tuple[int, str, int, str, bytes, Priority]]) -> None:
        for m in batch:
            self.inflight[m[0]] = self.queue.popleft()

    def ack(self, msg_id: int) -> None:
        del self.inflight[msg_id]


def bench_dir() -> str:
    on_disk = "/var/tmp" if os.access("/var/tmp", os.W_OK) else tempfile.gettempdir()
    return os.environ.get("REEDGE_BENCH_DIR") or on_disk


def cycle_outbox(path: pathlib.Path, items: list[Item], synchronous: str) -> float:
    mode: Literal["GROUP", "FULL", "NORMAL"] = "NORMAL" if synchronous == "NORMAL" else \
        "FULL" if synchronous == "FULL" else "GROUP"
    ob = Outbox(path, quota_bytes=1 << 30, synchronous=mode)
    try:
        t0 = time.perf_counter()
        for i, (stream, topic, body, priority) in enumerate(items):
            ob.put(stream, topic, body, priority=priority)
            if i % SEND_EVERY == SEND_EVERY - 1 or i == len(items) - 1:
                while batch := ob.pending(SEND_EVERY):
                    ob.mark_inflight(m.id for m in batch)
                    for m in batch:
                        ob.ack(m.id)
        elapsed = time.perf_counter() - t0
        assert ob.stats().count == 0
        return elapsed
    finally:
        ob.close()


def cycle_deque(items: list[Item]) -> float:
    q = DequeQueue()
    t0 = time.perf_counter()
    for i, (stream, topic, body, priority) in enumerate(items):
        q.put(stream, topic, body, priority=priority)
        if i % SEND_EVERY == SEND_EVERY - 1 or i == len(items) - 1:
            while batch := q.pending(SEND_EVERY):
                q.mark_inflight(batch)
                for m in batch:
                    q.ack(m[0])
    elapsed = time.perf_counter() - t0
    assert not q.queue and not q.inflight
    return elapsed


def throughput(tmp: pathlib.Path, quick: bool) -> list[Figure]:
    n = 2_000 if quick else 10_000
    items = messages(n)
    best: dict[str, float] = collections.defaultdict(lambda: float("inf"))
    runs: list[tuple[str, Callable[[int], float]]] = [
        ("GROUP", lambda r: cycle_outbox(tmp / f"cycle-group-{r}.db", items, "GROUP")),
        ("FULL", lambda r: cycle_outbox(tmp / f"cycle-full-{r}.db", items, "FULL")),
        ("deque", lambda r: cycle_deque(items)),
        ("NORMAL", lambda r: cycle_outbox(tmp / f"cycle-normal-{r}.db", items, "NORMAL")),
    ]
    for r in range(2 if quick else 3):            # alternate, keep each one's best round
        for name, fn in runs:
            best[name] = min(best[name], fn(r))
    base = n / best["deque"]
    return [
        Figure(name="outbox put+pend+ack, durable (group commit: one fsync before each pending)",
               value=n / best["GROUP"], unit="msgs/s", baseline_name=BASELINE, baseline_value=base),
        Figure(name="outbox put+pend+ack, synchronous=FULL (an fsync per put)", value=n / best["FULL"],
               unit="msgs/s", baseline_name=BASELINE, baseline_value=base),
        Figure(name="outbox put+pend+ack, synchronous=NORMAL (not chosen)", value=n / best["NORMAL"],
               unit="msgs/s", baseline_name=BASELINE, baseline_value=base),
    ]


def fill(path: pathlib.Path, items: list[Item], total: int) -> None:
    """Store ``total`` messages (the items, cycled) in batches: the backlog an outage leaves."""
    with Outbox(path, quota_bytes=1 << 34) as ob:
        for start in range(0, total, 2_000):
            ob.put_many([Draft(s, t, b, p) for s, t, b, p in
                         (items[i % len(items)] for i in range(start, min(total, start + 2_000)))])


def replay(tmp: pathlib.Path, quick: bool) -> Figure:
    n = 20_000 if quick else 100_000
    items = messages(n, seed=2)
    path = tmp / "replay.db"
    fill(path, items, n)
    q = DequeQueue()
    for stream, topic, body, priority in items:
        q.put(stream, topic, body, priority=priority)
    t0 = time.perf_counter()
    while batch := q.pending(100):
        q.mark_inflight(batch)
        for m in batch:
            q.ack(m[0])
    base = n / (time.perf_counter() - t0)
    with Outbox(path, quota_bytes=1 << 34) as ob:       # reopened, as after the restart that ends an outage
        t0 = time.perf_counter()
        drained = 0
        while page := ob.pending(100):
            ob.mark_inflight(m.id for m in page)
            for msg in page:
                ob.ack(msg.id)
            drained += len(page)
        value = drained / (time.perf_counter() - t0)
    assert drained == n
    return Figure(name=f"outbox replay of a {n:,}-message backlog (pending pages, one ack each)", value=value,
                  unit="msgs/s", baseline_name="the same backlog from a collections.deque", baseline_value=base)


def memory(tmp: pathlib.Path, quick: bool) -> Figure:
    n = 100_000 if quick else 1_000_000
    full, empty = tmp / "backlog.db", tmp / "empty.db"
    fill(full, messages(10_000, seed=3), n)
    Outbox(empty).close()
    rss = {}
    for name, path in (("full", full), ("empty", empty)):
        out = subprocess.run([sys.executable, "-m", "bench.bench_outbox", "rss", str(path)], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"rss probe failed: {out.stderr}")
        rss[name] = json.loads(out.stdout)
    return Figure(name=f"outbox resident memory holding a {n:,}-message backlog (VmRSS)",
                  value=rss["full"]["rss_kb"] / 1024, unit="MiB", baseline_name="the same process, empty outbox",
                  baseline_value=rss["empty"]["rss_kb"] / 1024, higher_is_better=False, limit=0.7)


def pending_cost(tmp: pathlib.Path, quick: bool) -> Figure:
    """``pending(20)`` (a send window) on the 1,000,000-message backlog ``memory`` left: every other
    message first, then telemetry, one index range per priority; against the one global-order query
    it replaced (``ORDER BY id``), on the same connection. Measured with the others still pending and
    with a window of 20 of them in flight (what the session leaves in flight), the worse of the two counts."""
    path = tmp / "backlog.db"
    n = 100_000 if quick else 1_000_000
    with Outbox(path, quota_bytes=1 << 34) as ob:
        old_sql = ("SELECT m.id, b.boot_id, m.stream, m.seq, m.topic, m.payload, m.priority, m.qos, m.retain,"
                   " m.created_ns FROM messages m JOIN boots b ON b.n = m.boot ORDER BY m.id LIMIT 20")

        def per_call(f: Callable[[], object], calls: int = 2_000) -> float:
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            return (time.perf_counter() - t0) / calls * 1e6

        base = per_call(lambda: ob._conn.execute(old_sql).fetchall())
        value = per_call(lambda: ob.pending(20))
        ob.mark_inflight(m.id for m in ob.pending(20))
        value = max(value, per_call(lambda: ob.pending(20)))
    return Figure(name=f"outbox pending(20) on a {n:,}-message backlog, others before telemetry (per call)",
                  value=value, unit="us", baseline_name="the global-order query it replaced (ORDER BY id)",
                  baseline_value=base, higher_is_better=False, value_limit=1000)


def rss_probe(path: str) -> None:
    """Child process: open, look, send and ack 20,000 messages; print VmRSS/VmHWM in kB as JSON."""
    with Outbox(path, quota_bytes=1 << 34) as ob:
        ob.stats()
        ob.last_sequences()
        for _ in range(40):
            msgs = ob.pending(500)
            ob.mark_inflight(m.id for m in msgs)
            ob.ack_many(m.id for m in msgs)
        status = dict(line.split(":", 1) for line in pathlib.Path("/proc/self/status").read_text().splitlines())
        print(json.dumps({"rss_kb": int(status["VmRSS"].split()[0]), "hwm_kb": int(status["VmHWM"].split()[0]),
                          "count": ob.stats().count}))


def run(quick: bool = False) -> list[Figure]:
    """Throughput against a deque, replay rate, and memory with a large backlog (module docstring)."""
    with tempfile.TemporaryDirectory(prefix="reedge-bench-outbox-", dir=bench_dir()) as tmp_name:
        tmp = pathlib.Path(tmp_name)
        return [*throughput(tmp, quick), replay(tmp, quick), memory(tmp, quick), pending_cost(tmp, quick)]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "rss":
        rss_probe(sys.argv[2])
    else:
        for f in run(quick="--quick" in sys.argv):
            print(f.line())
