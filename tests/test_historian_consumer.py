"""The historian's consumer against a real mosquitto: acknowledged only after commit (a worker whose commits
fail leaves every message with the broker, and the next one with its client id stores them), two workers of
one share group split the load and store every message exactly once on a real PostgreSQL, a database that
fails is said once and the batch stored when it is back; and ``reedge historian run`` as a process: stored,
SIGTERM, exit 0; clear one-line errors for a bad --db, an unreachable broker, an empty or missing --client-id,
a missing --ca-file; retire with acknowledgements owed keeps the session; the link to the broker is said after
the start (lost, with the reason; not got back; back); a worker that fails is said and ``run`` exits 1."""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.historian.consumer import ConsumerError, HistorianConsumer
from edge.historian.ingest import Received
from edge.historian.store import DatabaseUnavailable, Store, Tx, open_store
from edge.spec.broker import parse_broker_url
from tests.historian_db import empty_pg
from tests.historian_messages import Station
from tests.mqtt_broker import SAFETY_S, Mosquitto, free_port, wait_until

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    m = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    try:
        yield m
    finally:
        m.close()


def publish(broker: Mosquitto, messages: Sequence[Received]) -> None:
    """QoS 1, as a station publishes (retained where the stream is); returns once the broker has them all."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        infos = [client.publish(m.topic, m.payload, qos=1, retain=m.retained) for m in messages]
        for info in infos:
            info.wait_for_publish(SAFETY_S)
    finally:
        client.disconnect()
        client.loop_stop()


def station_messages(station: str, telemetry: int, events: int) -> list[Received]:
    st = Station(station=station)
    return [st.birth(), *(st.telemetry(n) for n in range(1, telemetry + 1)),
            *(st.event(n) for n in range(1, events + 1))]


def count(store: Store) -> int:
    return int(store.query("SELECT count(*) FROM received")[0][0])


class DownStore(Store):
    """A database that fails its first ``failures`` transactions (then is ``real``): the commit never happens."""

    def __init__(self, real: Store, failures: int) -> None:
        super().__init__("test://down")
        self.dialect = real.dialect
        self.real = real
        self.failures = failures
        self.attempts = 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise DatabaseUnavailable("the test's database is down")
        with self.real.transaction() as tx:
            yield tx

    def close(self) -> None:
        self.real.close()


def consumer(broker: Mosquitto, db: str | Store, client_id: str, **kw: Any) -> HistorianConsumer:
    """A worker in a group of its test's own: mosquitto gives a group's messages to its offline members too
    (their persistent sessions hold them until they come back), and every test leaves its workers' sessions."""
    lines: list[str] = []
    group = client_id.rsplit("-", 1)[0]
    c = HistorianConsumer(parse_broker_url(broker.url), db, group=group, client_id=client_id, batch_s=0.05,
                          retry_s=(0.05,), log=lines.append, **kw)
    c.lines = lines         # type: ignore[attr-defined]
    return c


def test_a_worker_that_cannot_commit_acknowledges_nothing_and_its_successor_stores_everything(
        broker: Mosquitto, tmp_path: pathlib.Path) -> None:
    url = f"sqlite://{tmp_path / 'h.db'}"
    down = DownStore(open_store(url), failures=10**9)
    first = consumer(broker, down, "ack-1").start()
    messages = station_messages("ack-01", 40, 5)
    try:
        publish(broker, messages)
        wait_until(lambda: first.received >= len(messages), "all delivered to the first worker")
        wait_until(lambda: down.attempts >= 2, "the first worker tried to store them, and again")
    finally:
        first.stop()
    assert sum("the database failed" in line for line in first.lines) == 1     # type: ignore[attr-defined]
    with open_store(url) as store:
        assert count(store) == 0
        second = consumer(broker, store, "ack-1").start()      # the same client id: the same session
        try:
            wait_until(lambda: count(store) >= len(messages), "every message stored by the successor", timeout=15)
            assert second.totals.quarantined == 0
        finally:
            second.stop()
        assert count(store) == len(messages)


def test_the_database_failing_is_said_once_and_the_batch_is_stored_when_it_is_back(
        broker: Mosquitto, tmp_path: pathlib.Path) -> None:
    down = DownStore(open_store(f"sqlite://{tmp_path / 'h.db'}"), failures=4)
    c = consumer(broker, down, "retry-1").start()
    messages = station_messages("retry-01", 20, 0)
    try:
        publish(broker, messages)
        wait_until(lambda: count(down.real) == len(messages), "stored after the database came back")
    finally:
        c.stop()
    said = [line for line in c.lines if "database" in line]        # type: ignore[attr-defined]
    assert len(said) == 2 and "failed" in said[0] and "unacknowledged" in said[0] and "back" in said[1]


def test_two_workers_of_one_group_split_the_load_and_store_every_message_once_on_postgresql(
        broker: Mosquitto, pg_server: Any) -> None:
    db_url = pg_server.url
    empty_pg(db_url)
    workers = [consumer(broker, db_url, f"share-{i}").start() for i in (1, 2)]
    messages = [m for s in ("share-01", "share-02", "share-03") for m in station_messages(s, 120, 20)]
    try:
        publish(broker, messages)
        with open_store(db_url) as store:
            wait_until(lambda: count(store) >= len(messages), "every message stored")
            assert count(store) == len(messages)
            assert store.query("SELECT count(*) FROM telemetry") == [(3 * 120 * 3,)]
            assert store.query("SELECT count(*) FROM gaps WHERE closed IS NULL") == [(0,)]
    finally:
        for w in workers:
            w.stop()
    stored = [w.totals.stored for w in workers]
    assert sum(stored) == len(messages) and min(stored) > len(messages) / 5, stored
    # a birth comes to one worker on the share, and to each worker on its snapshot subscription until the first
    # live one ends that (the test above): the first birth at least twice, none more than once per worker more
    births = 3
    assert len(workers) <= sum(w.totals.duplicate for w in workers) <= births * len(workers)
    assert all(w.totals.quarantined == 0 for w in workers)


def test_after_the_retained_snapshot_each_live_state_reaches_one_worker(broker: Mosquitto,
                                                                       tmp_path: pathlib.Path) -> None:
    """Each worker takes the retained states at start (a shared subscription gets none); the first live one
    that comes through that subscription ends it, so the next live states come once, through the share, not
    once per worker more (two workers inserting the same keys wait on each other)."""
    stations = [Station(station=f"snap-0{i}") for i in (1, 2, 3)]
    publish(broker, [st.state(1, retained=True) for st in stations])
    db = f"sqlite://{tmp_path / 'h.db'}"
    workers = [consumer(broker, db, f"snap-{i}").start() for i in (1, 2)]
    try:
        wait_until(lambda: all(w.received >= 3 for w in workers), "the snapshot at each worker")
        assert all(w.snapshot_open for w in workers)
        publish(broker, [st.state(2, retained=True) for st in stations])      # live: ends both snapshots
        wait_until(lambda: not any(w.snapshot_open for w in workers), "both snapshot subscriptions ended")
        settled = [quiet(w) for w in workers]
        wait_until(lambda: all([c() for c in settled]), "the first live states processed")
        before = sum(w.received for w in workers)
        publish(broker, [st.state(n, retained=True) for st in stations for n in range(3, 23)])
        wait_until(lambda: sum(w.totals.stored for w in workers) == 3 * 22, "every state stored")
        settled = [quiet(w) for w in workers]
        wait_until(lambda: all([c() for c in settled]), "nothing more comes")
        assert sum(w.received for w in workers) - before == 3 * 20      # before: 3 copies of each (2 + the share)
    finally:
        for w in workers:
            w.stop(end_session=True)
        # the module's broker is shared: leave no retained state for the next test's historian to find
        publish(broker, [Received(st.state(1).topic, b"", True) for st in stations])


def reedge(*args: str, **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "edge", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_historian_run_stores_and_a_sigterm_stops_it_cleanly(broker: Mosquitto, tmp_path: pathlib.Path) -> None:
    db = tmp_path / "plant.db"
    proc = reedge("historian", "run", "--broker", broker.url, "--db", str(db), "--client-id", "cli-1", "--group", "cli")
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)      # type: ignore[arg-type]
    reader.start()
    try:
        wait_until(lambda: any("consuming" in line for line in lines) or proc.poll() is not None, "subscribed")
        messages = station_messages("cli-01", 10, 2)
        publish(broker, messages)
        wait_until(lambda: _received(db) == len(messages), "stored by the process")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=SAFETY_S)
        reader.join(SAFETY_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert f"stopped: stored {len(messages)}" in err, err
    assert err.count("gaps are reported, not recovered: give --identity") == 1, err     # no identity: said once


def _received(db: pathlib.Path) -> int:
    try:
        with open_store(str(db), migrate=False) as s:
            return count(s)
    except Exception:
        return -1


@pytest.mark.parametrize(("args", "expected"), [
    (["--db", "mysql://x/y"], "unknown scheme 'mysql'"),
    (["--db", "/no/such/dir/h.db"], "does not exist"),
    (["--broker", "mqtt://127.0.0.1:{free}"], "cannot connect to the broker mqtt://127.0.0.1:"),
    (["--broker", "http://x"], "unknown scheme 'http'"),
    (["--client-id", ""], "--client-id must not be empty"),
    (["--client-id", "  "], "--client-id must not be empty"),
    (["--broker", "mqtts://127.0.0.1:1", "--ca-file", "/nope/ca.pem"], "'/nope/ca.pem' does not exist"),
])
def test_historian_run_refuses_bad_arguments_in_one_line(tmp_path: pathlib.Path, args: list[str],
                                                         expected: str) -> None:
    from edge.app.cli import main

    base = {"--broker": "mqtt://127.0.0.1:1", "--db": str(tmp_path / "h.db"), "--client-id": "bad-1"}
    for k, v in zip(args[::2], args[1::2], strict=True):
        base[k] = v.format(free=free_port())
    argv = ["historian", "run", *[x for kv in base.items() for x in kv]]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    text = err.getvalue()
    assert code == 2 and expected in text and len(text.strip().splitlines()) == 1, text


def test_a_gap_is_said_once_settled_and_again_when_it_closes_and_the_counts_regularly(
        broker: Mosquitto, tmp_path: pathlib.Path) -> None:
    c = consumer(broker, f"sqlite://{tmp_path / 'h.db'}", "said-1", settle_s=0.3, report_s=0.2).start()
    st = Station(station="said-01")
    try:
        publish(broker, [st.telemetry(1), st.telemetry(2), st.telemetry(5)])
        wait_until(lambda: any("GAP open" in x for x in c.lines), "the gap said")      # type: ignore
        wait_until(lambda: any("stored 3, duplicates 0" in x and "open gaps 1" in x for x in c.lines),  # type: ignore
                   "the counts said with the open gap")
        assert not any("closed" in x for x in c.lines)       # type: ignore[attr-defined]
        publish(broker, [st.telemetry(4), st.telemetry(3)])
        wait_until(lambda: any("gap closed" in x for x in c.lines), "its closing said")   # type: ignore
    finally:
        c.stop()
    lines: list[str] = c.lines       # type: ignore[attr-defined]
    opened = [x for x in lines if "GAP open" in x]
    assert len(opened) == 1 and "pilot-line/said-01 telemetry #3-4 (2)" in opened[0], lines
    assert "stopped: stored 5" in lines[-1] and "open gaps 0" in lines[-1], lines


def quiet(c: HistorianConsumer, quiet_s: float = 0.3) -> Any:
    """A condition: everything ``c`` received is processed, and nothing has come for ``quiet_s``."""
    seen = [-1, time.monotonic()]

    def condition() -> bool:
        t = c.totals
        if c.received != seen[0]:
            seen[:] = [c.received, time.monotonic()]
        return (c.received == t.stored + t.duplicate + t.quarantined + t.ignored
                and time.monotonic() - seen[1] >= quiet_s)
    return condition


def test_a_stopped_worker_keeps_its_share_until_retired_then_the_group_gets_everything(
        broker: Mosquitto, tmp_path: pathlib.Path) -> None:
    url = f"sqlite://{tmp_path / 'h.db'}"
    consumer(broker, url, "retire-1").start().stop()          # a worker that left: its session stays
    other = consumer(broker, url, "retire-2").start()
    first = station_messages("ret-01", 40, 0)
    try:
        publish(broker, first)
        with open_store(url) as store:
            wait_until(quiet(other), "the remaining worker's share stored, and nothing more coming")
            assert 0 < count(store) < len(first)           # the rest waits in the stopped worker's session
            leaving = consumer(broker, url, "retire-1").start()
            leaving.retire(quiet_s=0.3)
            wait_until(lambda: count(store) == len(first), "the stopped worker's share stored at its retirement")
            st = Station(station="ret-01", t0_ns=10**18)
            second = [st.telemetry(n) for n in range(41, 61)]
            publish(broker, second)
            wait_until(lambda: count(store) == len(first) + len(second), "all of it stored by the one left", 10)
    finally:
        other.stop()
    assert any("retired" in line for line in leaving.lines)      # type: ignore[attr-defined]


def test_historian_run_requires_a_client_id(tmp_path: pathlib.Path) -> None:
    """No default: two workers started without one would share it and take each other's connection over."""
    from edge.app.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(["historian", "run", "--broker", "mqtt://127.0.0.1:1", "--db", str(tmp_path / "h.db")])
    assert exit_.value.code == 2 and "the following arguments are required: --client-id" in err.getvalue()
    assert not (tmp_path / "h.db").exists()
    with pytest.raises(ValueError, match="client id must not be empty"):
        HistorianConsumer(parse_broker_url("mqtt://127.0.0.1:1"), str(tmp_path / "h.db"), client_id="")


def test_retire_with_the_database_down_keeps_the_session_and_says_so(broker: Mosquitto,
                                                                      tmp_path: pathlib.Path) -> None:
    url = f"sqlite://{tmp_path / 'h.db'}"
    down = DownStore(open_store(url), failures=10**9)
    leaving = consumer(broker, down, "retdown-1").start()
    messages = station_messages("retdown-01", 3, 0)
    publish(broker, messages)
    wait_until(lambda: leaving.received >= len(messages) and down.attempts >= 1, "delivered, and not stored")
    with pytest.raises(ConsumerError, match=r"not retired: .* delivered but not stored; its session is kept"):
        leaving.retire(quiet_s=0.1, timeout_s=0.5)
    assert not any("retired:" in line for line in leaving.lines)      # type: ignore[attr-defined]
    with open_store(url) as store:
        again = consumer(broker, store, "retdown-1").start()   # the session kept its messages for this client id
        try:
            wait_until(lambda: count(store) == len(messages), "the messages stored from the kept session")
        finally:
            again.stop()


def test_a_lost_connection_is_said_with_its_reason_once_and_so_is_its_return(broker: Mosquitto,
                                                                              tmp_path: pathlib.Path) -> None:
    c = consumer(broker, f"sqlite://{tmp_path / 'h.db'}", "link-1").start()
    lines: list[str] = c.lines         # type: ignore[attr-defined]
    connected = threading.Event()
    intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="link-1", protocol=mqtt.MQTTv5)
    intruder.on_connect = lambda *_: connected.set()
    try:
        intruder.connect("127.0.0.1", broker.port, clean_start=False)     # the same client id: a takeover
        intruder.loop_start()
        assert connected.wait(SAFETY_S)
        intruder.disconnect()
        intruder.loop_stop()
        wait_until(lambda: any("reconnected to" in x for x in lines), "the reconnection said")
    finally:
        c.stop()
    lost = [x for x in lines if "disconnected" in x]
    assert len(lost) == 1 and "another process with this client id took it over" in lost[0], lines
    assert not any("cannot reconnect" in x for x in lines), lines


def test_a_broker_that_cannot_be_reached_again_is_said_once(tmp_path: pathlib.Path) -> None:
    own = Mosquitto(tmp_path / "mosquitto").start()
    lines: list[str] = []
    c = HistorianConsumer(parse_broker_url(own.url), f"sqlite://{tmp_path / 'h.db'}", group="unreach",
                          client_id="unreach-1", log=lines.append).start()
    attempts: list[int] = []
    said = c.client.on_connect_fail
    assert said is not None

    def counted(*a: Any) -> None:
        attempts.append(1)
        said(*a)
    c.client.on_connect_fail = counted
    c.client.reconnect_delay_set(0.05, 0.1)      # type: ignore[arg-type]   # (1 to 5 s in service)
    try:
        own.kill()                 # the connection dropped and the port refusing
        wait_until(lambda: len(attempts) >= 3, "three failed attempts to reconnect")
    finally:
        c.stop()
        own.close()
    assert [x for x in lines if "disconnected" in x], lines
    failed = [x for x in lines if "cannot reconnect" in x]
    assert len(failed) == 1 and "cannot be reached" in failed[0], lines


def test_historian_run_exits_1_naming_why_when_its_worker_fails(broker: Mosquitto, tmp_path: pathlib.Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.app.cli import main

    def broken(self: HistorianConsumer) -> list[Any]:
        raise RuntimeError("the worker's own bug")

    monkeypatch.setattr(HistorianConsumer, "_collect", broken)
    safety = threading.Timer(SAFETY_S, lambda: os.kill(os.getpid(), signal.SIGTERM))    # only if it never ends
    err = io.StringIO()
    safety.start()
    try:
        with contextlib.redirect_stderr(err):
            code = main(["historian", "run", "--broker", broker.url, "--db", str(tmp_path / "h.db"),
                         "--client-id", "dead-1", "--group", "dead"])
    finally:
        safety.cancel()
    text = err.getvalue()
    assert code == 1, text
    assert "the worker failed and stopped (RuntimeError: the worker's own bug)" in text
    assert text.strip().splitlines()[-1] == ("historian dead-1: stopped because its worker failed: RuntimeError:"
                                             " the worker's own bug"), text


def test_a_settled_gap_is_asked_for_as_the_identity_and_the_answer_said(broker: Mosquitto,
                                                                         tmp_path: pathlib.Path) -> None:
    """With an identity the worker publishes the ask (it receives its own command: ignored) and says the
    station's answer, and what the station no longer holds as unrecoverable, not as closed; without one it
    asks nothing."""
    db = f"sqlite://{tmp_path / 'h.db'}"
    silent = consumer(broker, f"sqlite://{tmp_path / 'silent.db'}", "silent-1", settle_s=0.1).start()
    c = consumer(broker, db, "asks-1", settle_s=0.1, identity="historian").start()
    st = Station(station="asks-01")
    try:
        publish(broker, [st.telemetry(1), st.telemetry(5)])
        wait_until(lambda: c.totals.ignored >= 1, "the worker's own command received")
        with open_store(db, migrate=False) as s:
            [(command_id, topic_first, topic_last)] = s.query("SELECT command_id, first_seq, last_seq"
                                                              " FROM resend_requests")
        assert (topic_first, topic_last) == (2, 4)
        wait_until(lambda: any("GAP open pilot-line/asks-01 telemetry #2-4" in x
                               for x in silent.lines), "the gap said by the worker without an identity")  # type: ignore
        asked = [x for x in c.lines if "asked pilot-line/asks-01 telemetry #2-4" in x]  # type: ignore[attr-defined]
        assert asked and command_id in asked[0]
        body = {"command_id": command_id, "verb": "resend", "result": "accepted", "code": "ok",
                "message": "re-sent 2; missing 2-2", "replayed": False,
                "data": {"requeued": 2, "pending": 0, "missing": [[2, 2]], "missing_count": 1}}
        publish(broker, [st.message("reply", 1, body, topic=st.topics.reply("resend")), st.telemetry(3),
                         st.telemetry(4)])
        wait_until(lambda: any("GAP unrecoverable pilot-line/asks-01 telemetry #2 " in x
                               for x in c.lines), "the unrecoverable part said")  # type: ignore[attr-defined]
        wait_until(lambda: c.totals.stored >= 5, "the re-sent copies stored")
        assert any("resend pilot-line/asks-01 telemetry #2-4 boot boot-a: ok" in x
                   for x in c.lines)  # type: ignore[attr-defined]
    finally:
        c.stop()
        silent.stop()
    silent_lines: list[str] = silent.lines   # type: ignore[attr-defined]
    assert not any("historian: asked " in x for x in silent_lines), silent_lines


def test_an_ask_the_brokers_acl_refuses_is_said_with_what_to_fix(tmp_path: pathlib.Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic read reedge/v1/#\ntopic write reedge/v1/+/+/telemetry\n")     # anonymous: no cmd/
    own = Mosquitto(tmp_path / "broker", extra=f"acl_file {acl}").start()
    lines: list[str] = []
    c = HistorianConsumer(parse_broker_url(own.url), f"sqlite://{tmp_path / 'h.db'}", group=None, client_id="acl-1",
                          batch_s=0.05, settle_s=0.1, identity="historian", log=lines.append).start()
    st = Station(station="acl-01")
    try:
        publish(own, [st.telemetry(1), st.telemetry(3)])
        wait_until(lambda: any("the broker refused the resend ask for pilot-line/acl-01 telemetry #2" in x
                               for x in lines), "the refusal said")
    finally:
        c.stop()
        own.close()
    refused = [x for x in lines if "refused the resend ask" in x]
    assert "Not authorized" in refused[0] and "must let historian write cmd/historian/resend" in refused[0], refused
