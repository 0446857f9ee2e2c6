"""The historian's MQTT consumer: a shared subscription, batches into one transaction, acknowledged after commit.

    consumer = HistorianConsumer(parse_broker_url("mqtt://broker:1883"), "postgresql://historian@db/plant",
                                 group="plant", client_id="historian-1").start()
    ...
    consumer.stop()          # the open batch committed and acknowledged, then a clean disconnect

**Nothing is acknowledged before it is in the database.** The client runs with paho's ``manual_ack``:
a message stays unacknowledged at the broker until the transaction that stored it (or quarantined it,
or found it a duplicate) committed; then its PUBACK goes out. A worker that dies in between leaves its
messages with the broker, which sends them again when that client id reconnects (MQTT 5 says a broker
should hand them to another member of the group once the dead one's session has expired, and not
before): every worker therefore has a fixed client id and a **persistent session** (clean start off,
``SESSION_EXPIRY_S``), and its messages wait for it, as the station's wait for it.

**N workers share the load** through ``$share/{group}/reedge/v1/+/+/#`` (QoS 1): the broker gives each
message to one member of the group (mosquitto also to members that are offline: their sessions keep them).
The worker subscribes on every connect, session present or not (mosquitto 2.0.11 restores a session after a
restart without its shared subscription); between a broker restart and that SUBSCRIBE, what stations
publish goes to nobody and shows as gaps, which the worker asks the stations to re-send (below).

A shared subscription gets no retained messages (MQTT 5), so each worker also subscribes, unshared, to the
retained streams (status, description, state): a historian that starts after a station learns its description
and state at once. That **snapshot subscription** is only for the retained copies: it carries a subscription
identifier, and the first message that comes through it not retained (a live one, queued after every retained
one the SUBSCRIBE brought) ends it (UNSUBSCRIBE): from then on the share brings each live state once. Kept,
every worker would take every state and description of the plant, and two workers inserting the same ledger
keys wait on each other's transactions (the top wait in ``bench/bench_historian.py``'s two-worker runs). Each
connect takes a new snapshot. MQTT 3.1.1 (``protocol="3.1.1"``, e.g. the demo's embedded broker) has no shared
subscriptions: one worker, the plain filter. So has ``group=None`` (``reedge historian run --no-share``) under
MQTT 5: **one worker whose subscription outlives a broker restart**. mosquitto 2.0.11 (Debian 12) keeps a
persistent session's plain subscriptions in its persistence file but not its shared ones; a plain subscriber's
messages queue for it from the broker's first second, a share group's go to nobody until a worker has
subscribed again (the paragraph above). A plant whose one worker keeps up (``bench/bench_historian.py``:
300-400 stations on this 2-core VM) loses nothing to a broker restart that way; a plant that needs several
workers on such a broker has that window, and gets it back by asking the stations (resend, below).

**Batches for throughput**: up to ``batch_max`` messages or ``batch_s`` after the first, one transaction,
then all their acknowledgements. The MQTT 5 Receive Maximum (``2 * batch_max``) lets the broker keep the
next batch in flight while one commits. A pause of ``IDLE_S`` in the flow also ends a batch: under MQTT
3.1.1 the broker's own in-flight cap (mosquitto's ``max_inflight_messages``, 20) stops the flow until we
acknowledge, and waiting out ``batch_s`` then would only idle.

**A message the database refuses** (a number beyond its integer types: the schemas set no upper bound) is
found by halving the batch and quarantined alone with the error (``ingest.ingest_isolating``); the rest
is stored. **The database down** (any other failure of a transaction): nothing is acknowledged,
the batch is kept and tried again with a growing pause (``RETRY_S``); it is said once, and once again
when the database is back. The broker holds what comes meanwhile (at most the Receive Maximum is in
flight to us).

**Asking for the gaps** (``edge.historian.resend``): with an ``identity`` (``--identity``, else the
username), each gap check also asks the stations for the settled gaps due (one transaction per station
under its lock, then the commands published QoS 1 on ``cmd/{identity}/resend``); their answers come back as
stored replies (``ingest``). Without one it asks nothing (``reedge historian run`` says so at start).

**Reports**: a line per ``report_s`` (60 s) with the counts (stored, duplicates, quarantined, ignored,
open gaps), a line when a gap opens or closes, is asked for, answered or unrecoverable: opens once it is
*settled* (``edge.historian.gaps``: older than ``SETTLE_S``, so not a message another worker holds), closes
when the messages came. After
``start``, the link to the broker is said too: each loss with its reason (the broker's, or "closed without
a reason": the network, or another process with this client id), the first failed attempt of each kind to get it back (a
refusal, the broker unreachable), and the reconnection. **The worker never dies silently**: anything
that escapes its loop is logged with its reason and kept in ``failure`` (``alive`` turns False), and
``reedge historian run`` then exits 1 naming it.

**Retiring never drops a message**: ``retire`` ends the session only when every message delivered has
been stored and acknowledged on the connection it came on; otherwise (the database down, the link lost
meanwhile) it disconnects keeping the session, whose messages wait for this client id, and raises
``ConsumerError``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.historian.gaps import SETTLE_S, GapRow, gap_rows, settled
from edge.historian.ingest import IngestResult, Received, ingest_isolating
from edge.historian.resend import RESEND_AFTER_S, ask_due
from edge.historian.store import Store, StoreError, open_store
from edge.spec.broker import BrokerUrl
from edge.telemetry.topics import PREFIX, check_identity

SESSION_EXPIRY_S = 86_400          # a worker's messages wait a day for it (the station's session waits as long)
RETRY_S = (0.5, 1.0, 2.0, 5.0, 10.0)
RETAINED_STREAMS = ("status", "description", "state")
SNAPSHOT_SUB_ID = 7       # the snapshot subscription's MQTT 5 subscription identifier (module docstring)
GAP_CHECK_S = 5.0
IDLE_S = 0.02              # no message for this long: the batch is complete (module docstring)


class ConsumerError(RuntimeError):
    """The consumer could not start (the broker unreachable or refusing, the database unusable), or could not
    retire without leaving messages unacknowledged."""


@dataclass
class _Msg:
    topic: str
    payload: bytes
    retained: bool
    mid: int
    qos: int
    generation: int      # the connection it came on: an ack on a later connection would name another message


class HistorianConsumer:
    """One historian worker (module docstring). ``db`` is a database URL, or an open ``Store`` (tests)."""

    def __init__(self, broker: BrokerUrl, db: str | Store, *, group: str | None = "plant",
                 client_id: str, protocol: Literal["5", "3.1.1"] = "5", batch_max: int = 200,
                 batch_s: float = 0.2, username: str | None = None, password: str | None = None,
                 ca_file: str | None = None, report_s: float = 60.0, settle_s: float = SETTLE_S,
                 retry_s: Sequence[float] = RETRY_S, log: Callable[[str], None] | None = None,
                 identity: str | None = None, resend_after_s: float = RESEND_AFTER_S) -> None:
        if batch_max < 1 or not batch_s > 0:
            raise ValueError("batch_max must be at least 1 and batch_s above 0")
        if not client_id.strip():
            raise ValueError("the client id must not be empty: each worker needs a fixed one of its own (its"
                             " session and unacknowledged messages)")
        if group is not None and (not group or any(c in group for c in "+#/")):
            raise ValueError(f"share group {group!r} must be a non-empty name without + # /")
        self.broker = broker
        self.db = db
        self.identity = None if identity is None else check_identity(identity)   # who asks the stations (resend)
        self.resend_after_s = resend_after_s
        self.group = group
        self.client_id = client_id
        self.protocol = protocol
        self.batch_max = batch_max
        self.batch_s = batch_s
        self.report_s = report_s
        self.settle_s = settle_s
        self.retry_s = tuple(retry_s) or RETRY_S
        self.received = 0          # messages the broker delivered (also those delivered again)
        self.log = log or _stderr
        self.totals = IngestResult()
        self.batches = 0
        self.store: Store | None = None
        self._queue: queue.Queue[_Msg] = queue.Queue()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._failure: list[str] = []
        self._generation = 0
        self._gen_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._retiring = False
        self._retire_generation = 0
        self._last_message = time.monotonic()
        self._down_since: float | None = None     # the database failing since (monotonic)
        self._started = False
        self._link_down: float | None = None      # the broker connection lost since (monotonic), after start
        self._link_said = ""                      # the last reconnection failure said (each kind once)
        self.failure: str | None = None           # why the worker thread ended, if not by stop()
        self._announced: dict[tuple[str, str, str, str, int], GapRow] = {}
        self._asking: dict[int, str] = {}         # resend asks published, by MQTT message id, until acknowledged
        self._snapshot_gen: int | None = None     # the connection whose snapshot subscription is still open
        self._puback: dict[int, str] = {}         # paho's thread: each ask's PUBACK ("" or the broker's refusal)
        if protocol == "5":
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                                      manual_ack=True)
        else:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                      clean_session=False, manual_ack=True)
        self.client.reconnect_delay_set(1, 5)
        if username:
            self.client.username_pw_set(username, password)
        if broker.tls:
            if ca_file is not None and not os.path.isfile(ca_file):
                raise ValueError(f"CA certificate file {ca_file!r} does not exist or is not a file")
            self.client.tls_set(ca_certs=ca_file)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_publish = self._on_publish

    # ---- the filters ----

    @property
    def filters(self) -> list[str]:
        everything = f"{PREFIX}/+/+/#"
        if self.protocol != "5" or self.group is None:
            return [everything]
        return [f"$share/{self.group}/{everything}", *(f"{PREFIX}/+/+/{s}" for s in RETAINED_STREAMS)]

    # ---- starting and stopping ----

    def start(self, timeout_s: float = 30.0) -> HistorianConsumer:
        """Open the database, connect, subscribe (unless the session already has the subscriptions), and start
        the worker; ``ConsumerError`` or ``StoreError`` with one line when any of it fails."""
        if self.store is None:
            self.store = open_store(self.db) if isinstance(self.db, str) else self.db
        try:
            if self.protocol == "5":
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = SESSION_EXPIRY_S
                props.ReceiveMaximum = min(65535, 2 * self.batch_max)
                self.client.connect(self.broker.host, self.broker.port, keepalive=15, clean_start=False,
                                    properties=props)
            else:
                self.client.connect(self.broker.host, self.broker.port, keepalive=15)
        except OSError as e:
            self._close_store()
            raise ConsumerError(f"cannot connect to the broker {self.broker}: {e}") from None
        self.client.loop_start()
        deadline = time.monotonic() + timeout_s
        while not self._subscribed.wait(0.05):
            if self._failure or time.monotonic() > deadline:
                self.client.disconnect()
                self.client.loop_stop()
                self._close_store()
                raise ConsumerError(self._failure[0] if self._failure else
                                    f"{self.broker}: no subscription within {timeout_s:g} s")
        self._worker = threading.Thread(target=self._run_logged, name=f"historian-{self.client_id}", daemon=True)
        self._started = True
        self._worker.start()
        self.log(f"historian {self.client_id}: consuming {', '.join(self.filters)} from {self.broker} into"
                 f" {self.store.url}")
        return self

    @property
    def alive(self) -> bool:
        """The worker thread is running (False before ``start``, after ``stop``, and when it failed)."""
        return self._worker is not None and self._worker.is_alive()

    def stop(self, timeout_s: float = 60.0, *, end_session: bool = False) -> bool:
        """Finish the open batch (commit, acknowledge), then disconnect cleanly; the session stays with the
        broker (its messages wait for this client id) unless ``end_session`` (``retire``) and no acknowledgement
        is owed. True when the session was ended."""
        self._started = False           # our own disconnect is not news
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout_s)
        end_session = end_session and not self._owed()
        if end_session and self.protocol == "5":
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
            self.client.disconnect(properties=props)
        else:
            self.client.disconnect()
        self.client.loop_stop()
        self._report(final=True)
        self._close_store()
        return end_session

    def _owed(self) -> str:
        """Why an acknowledgement may be owed (a reason), or "" when every delivered message was acknowledged."""
        t = self.totals
        unstored = self.received - (t.stored + t.duplicate + t.quarantined + t.ignored)
        if unstored or (self._worker is not None and self._worker.is_alive()):
            return f"{max(unstored, 1)} message(s) delivered but not stored"
        with self._gen_lock:
            lost = self._generation != self._retire_generation
        if lost or not self.client.is_connected():
            return "the connection was lost meanwhile (what it carried waits for its redelivery)"
        return ""

    def retire(self, quiet_s: float = 1.0, timeout_s: float = 600.0) -> None:
        """Leave the share group for good. mosquitto gives a group's messages to members that are offline too,
        so a worker that is simply stopped keeps receiving its share in its session until it expires. This one
        unsubscribes (no new share comes), stores and acknowledges what its session still holds (until nothing
        has come for ``quiet_s``), then ends its session: only when nothing is owed. Else (the database down,
        the connection lost meanwhile) it disconnects keeping the session, so no message is lost, and raises
        ``ConsumerError``."""
        self._retiring = True
        with self._gen_lock:
            self._retire_generation = self._generation
        done = threading.Event()
        self.client.on_unsubscribe = lambda *_: done.set()
        self.client.unsubscribe(self.filters)
        if not done.wait(timeout_s):
            raise ConsumerError(f"{self.broker}: no answer to the unsubscription within {timeout_s:g} s")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            t = self.totals
            if (self.received == t.stored + t.duplicate + t.quarantined + t.ignored
                    and time.monotonic() - self._last_message >= quiet_s):
                break
            time.sleep(0.05)
        if not self.stop(end_session=True):
            why = self._owed() or "acknowledgements owed"
            raise ConsumerError(f"historian {self.client_id}: not retired: {why}; its session is kept (its messages"
                                " wait for this client id): retire it again when the database is back")
        self.log(f"historian {self.client_id}: retired: its session is ended")

    def _close_store(self) -> None:
        if isinstance(self.db, str) and self.store is not None:
            self.store.close()
            self.store = None

    # ---- paho's thread ----

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: mqtt.ConnectFlags, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._failure.append(f"the broker {self.broker} refused the connection: {reason}")
            self._say_link_failure(f"the broker refused the connection: {reason}")
            return
        with self._gen_lock:
            self._generation += 1
        if self._link_down is not None and self._started:
            self.log(f"historian {self.client_id}: reconnected to {self.broker} after"
                     f" {time.monotonic() - self._link_down:.1f} s")
        self._link_down = None
        self._link_said = ""
        if self._retiring:
            self._subscribed.set()
            return
        # Subscribe on every connect, also when the broker says the session is there: mosquitto 2.0.11 restores
        # a session from its file without its shared subscription (and says "session present"). Subscribing
        # again to a filter the session has only replaces it; the retained streams' filter asks for the retained
        # messages only when its subscription is new (retain handling 1), not on every reconnect.
        if self.protocol == "5" and self.group is None:
            client.subscribe([(f, SubscribeOptions(qos=1, retainHandling=1)) for f in self.filters])
        elif self.protocol == "5":
            shared, *retained = self.filters
            client.subscribe([(shared, SubscribeOptions(qos=1))])
            snapshot = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
            snapshot.SubscriptionIdentifier = SNAPSHOT_SUB_ID
            client.subscribe([(f, SubscribeOptions(qos=1, retainHandling=1)) for f in retained], properties=snapshot)
            with self._gen_lock:
                self._snapshot_gen = self._generation
        else:
            client.subscribe([(f, 1) for f in self.filters])

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self._failure.append(f"the broker {self.broker} refused the subscription to {self.filters}: {failed[0]}")
            return
        self._subscribed.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        with self._gen_lock:
            self._generation += 1      # what came before is sent again by the broker: never ack it now
        if self._started and self._link_down is None:
            self._link_down = time.monotonic()
            # mosquitto closes a connection another client took over without a DISCONNECT: paho calls it 128
            why = str(reason) if getattr(reason, "value", 128) != 128 else (
                "the connection closed without a reason from the broker (the network, or another process with"
                " this client id took it over)")
            self.log(f"historian {self.client_id}: disconnected from {self.broker}: {why}; its messages wait in"
                     " its session, reconnecting")

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        """A resend ask acknowledged (or refused: MQTT 5 says why; mosquitto refuses what its ACL does not allow)."""
        self._puback[mid] = str(reason) if getattr(reason, "is_failure", False) else ""

    def _on_connect_fail(self, *_: Any) -> None:
        self._say_link_failure("the broker cannot be reached")

    def _say_link_failure(self, why: str) -> None:
        """A failed reconnection, said once per kind until connected again (paho retries every few seconds)."""
        if self._started and why != self._link_said:
            self._link_said = why
            self.log(f"historian {self.client_id}: cannot reconnect to {self.broker}: {why}; retrying")

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._gen_lock:
            generation = self._generation
            self.received += 1
            self._last_message = time.monotonic()
            snapshot_over = (self._snapshot_gen == generation and not msg.retain
                             and SNAPSHOT_SUB_ID in (getattr(msg.properties, "SubscriptionIdentifier", None) or ()))
            if snapshot_over:
                self._snapshot_gen = None
        self._queue.put(_Msg(msg.topic, bytes(msg.payload), bool(msg.retain), msg.mid, msg.qos, generation))
        if snapshot_over:      # every retained copy came before this live one: the share brings the rest
            client.unsubscribe(self.filters[1:])

    @property
    def snapshot_open(self) -> bool:
        """The snapshot subscription of this connection is still there (module docstring)."""
        with self._gen_lock:
            return self._snapshot_gen is not None

    # ---- the worker ----

    def _run_logged(self) -> None:
        """``_run``, and anything that escapes it said and kept in ``failure`` (``cmd_run`` exits 1 on it)."""
        try:
            self._run()
        except BaseException as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(BaseException):   # the log itself broken (a closed stderr): ``failure`` says it
                self.log(f"historian {self.client_id}: the worker failed and stopped ({self.failure}); nothing"
                         " more is stored, what was delivered stays unacknowledged with the broker")

    def _run(self) -> None:
        next_report = time.monotonic() + self.report_s
        gap_check_s = min(GAP_CHECK_S, max(self.settle_s / 3, 0.05))
        next_gaps = time.monotonic() + gap_check_s
        pending: list[_Msg] = []
        while not self._stop.is_set():
            if not pending:
                pending = self._collect()
            if pending and self._store_batch(pending):
                pending = []
            now = time.monotonic()
            if now >= next_gaps:
                next_gaps = now + gap_check_s
                self._check_gaps()
            if now >= next_report:
                next_report = now + self.report_s
                self._report()
        # stopping: the open batch and what has arrived, once; what fails stays unacknowledged with the broker
        while True:
            try:
                pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for i in range(0, len(pending), self.batch_max):
            if not self._store_batch(pending[i:i + self.batch_max]):
                break

    def _collect(self) -> list[_Msg]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.batch_s
        idle_s = min(IDLE_S, self.batch_s)
        while len(batch) < self.batch_max:
            try:     # a pause in the flow ends the batch: the broker may be waiting for our acks (its in-flight cap)
                batch.append(self._queue.get(timeout=max(0.0, min(idle_s, deadline - time.monotonic()))))
            except queue.Empty:
                break
        return batch

    def _store_batch(self, batch: list[_Msg]) -> bool:
        """Ingest and acknowledge ``batch``; False (nothing acknowledged) if the database failed until stopped.
        An outage is said once when it starts and once when it ends, not per batch or attempt."""
        assert self.store is not None
        failures = 0
        while True:
            try:
                result = ingest_isolating(self.store, [Received(m.topic, m.payload, m.retained) for m in batch])
                break
            except Exception as exc:     # the database unreachable: never ack what was not stored
                failures += 1
                error = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
            if self._down_since is None:
                self._down_since = time.monotonic()
                self.log(f"historian {self.client_id}: the database failed ({error}); messages kept"
                         " unacknowledged with the broker, retrying")
            if self._stop.wait(self.retry_s[min(failures - 1, len(self.retry_s) - 1)]):
                return False
        if self._down_since is not None:
            self.log(f"historian {self.client_id}: the database is back after"
                     f" {time.monotonic() - self._down_since:.1f} s")
            self._down_since = None
        with self._gen_lock:
            generation = self._generation
        for m in batch:
            if m.qos > 0 and m.generation == generation:
                self.client.ack(m.mid, m.qos)
        self.totals.add(result)
        self.batches += 1
        for a in result.answers:
            r = a.request
            self.log(f"historian: resend {r.describe()}: {a.code}: {a.message}")
        for g in result.unrecoverable:
            span = f"#{g.first_seq}" if g.count == 1 else f"#{g.first_seq}-{g.last_seq} ({g.count})"
            self.log(f"historian: GAP unrecoverable {g.site}/{g.station} {g.stream} {span} boot {g.boot_id}: the"
                     " station no longer holds it")
        return True

    # ---- reporting ----

    def _check_gaps(self) -> None:
        """Say each gap that settled open, and each said one that is no longer open (closed, or explained); ask
        the stations to re-send what is due (``edge.historian.resend``), with an identity to ask as."""
        if self.store is None:
            return
        now_ns = time.time_ns()
        try:
            rows = gap_rows(self.store, open_only=True, settled_before=settled(now_ns, self.settle_s),
                            unrecoverable=True)
        except (StoreError, OSError):
            return
        now = {(r.site, r.station, r.boot_id, r.stream, r.first_seq): r for r in rows if r.unrecoverable is None}
        for key, r in now.items():
            if key not in self._announced:
                span = f"#{r.first_seq}" if r.count == 1 else f"#{r.first_seq}-{r.last_seq} ({r.count})"
                self.log(f"historian: GAP open {r.site}/{r.station} {r.stream} {span} boot {r.boot_id}: {r.detail}")
        lost = {(r.site, r.station, r.boot_id, r.stream, r.first_seq) for r in rows if r.unrecoverable is not None}
        for key, r in self._announced.items():
            if key not in now and not any(k[:4] == key[:4] and r.first_seq <= k[4] <= r.last_seq for k in lost):
                self.log(f"historian: gap closed {r.site}/{r.station} {r.stream} from #{r.first_seq}"
                         f" boot {r.boot_id}")
        self._announced = now
        if self.identity is not None:
            self._say_refused_asks()
            if now:
                self._ask(now_ns)

    def _ask(self, now_ns: int) -> None:
        """Record and publish the resend asks due now (QoS 1: paho sends them again after a reconnect; one that
        never reaches the station is asked again, ``RESEND_AFTER_S``)."""
        assert self.store is not None and self.identity is not None
        try:
            requests = ask_due(self.store, now_ns, settle_s=self.settle_s, resend_after_s=self.resend_after_s)
        except (StoreError, OSError):
            return
        for r in requests:
            info = self.client.publish(r.topic(self.identity), r.payload(self.identity), qos=1)
            if len(self._asking) >= 4096:      # acknowledgements lost with a connection: nothing more to say of those
                self._asking.clear()
            self._asking[info.mid] = r.describe()
            self.log(f"historian: asked {r.describe()} to be re-sent (command {r.command_id})")

    def _say_refused_asks(self) -> None:
        """Say each ask the broker refused (its ACL: this identity may not write the command), and forget the
        acknowledged ones."""
        for mid in list(self._puback):
            why = self._puback.pop(mid)
            what = self._asking.pop(mid, None)
            if why and what is not None:
                self.log(f"historian: the broker refused the resend ask for {what}: {why}; its ACL must let"
                         f" {self.identity} write cmd/{self.identity}/resend of the station (reedge station acl)")

    def _report(self, *, final: bool = False) -> None:
        t = self.totals
        self.log(f"historian {self.client_id}: {'stopped: ' if final else ''}stored {t.stored}, duplicates"
                 f" {t.duplicate}, quarantined {t.quarantined}, ignored {t.ignored}, open gaps {len(self._announced)}")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
