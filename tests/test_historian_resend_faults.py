"""What a broker loses after it acknowledged it, the historian gets back (``edge.historian.resend``): in
PostgreSQL, every message of every station exactly once, no gap left open.

A real mosquitto with persistence, the module's real PostgreSQL, two historian workers in one share group
asking as ``historian`` (settling after 1 s, asking again after 3 s: the plant's time is short), and a
small plant (``bench.plant_load``: three stations on the station's own outbox, history and MQTT session,
serving ``resend`` with the viewer role for ``historian``). The broker fails while the stations keep
publishing, not held off:

1. restarted (SIGTERM, start): mosquitto 2.0.11 restores the workers' sessions without their shared
   subscription, so what the stations publish until the workers subscribe again goes to nobody;
2. SIGKILLed and started: what it queued for the workers since its last save (none: ``autosave_interval``
   is long) is gone too.

The stations had that acknowledged; their outboxes keep it as history. Afterwards the plant's clock stops,
the stations stay up (serving commands) until the ledger holds every number their outboxes gave, then
flush and stop; ``bench.plant_check`` finds each once and no gap open, and the ``resend_requests`` rows
show the loss was real and asked for: at least one answered ``ok`` with messages re-queued.
"""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Callable, Iterator

import pytest

from bench.plant_check import check_stored, open_gaps
from bench.plant_load import HISTORIAN, Plan, Plant
from edge.historian.consumer import HistorianConsumer
from edge.spec.broker import BrokerSettings, parse_broker_url
from tests.historian_db import empty_pg
from tests.mqtt_broker import Mosquitto, wait_until
from tests.pg_server import PgServer

STATIONS = 3
PLAN = Plan(speed=10.0, batch_s=40)     # every stream has a message every few real seconds: a loss shows soon
STEP = 60                                # rows stored between the steps (about 2 s of the plant)
WAIT_S = 30.0                            # a safety net, never a measurement
CLOCK_STREAMS = ("telemetry", "state", "event", "batch")


def _query(url: str) -> Callable[[str], list[tuple[object, ...]]]:
    import psycopg

    def query(sql: str) -> list[tuple[object, ...]]:
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                return conn.execute(sql).fetchall()
        except psycopg.Error:
            return [(0,)]
    return query


@pytest.fixture(name="pg")
def pg_fixture(pg_server: PgServer) -> Iterator[str]:
    empty_pg(pg_server.url)
    yield pg_server.url


def numbered(plant: Plant) -> int:
    """How many numbers the plant's outboxes gave so far (its stations still running)."""
    return sum(n for s in plant.stations for k, n in s.outbox.last_sequences().items() if k != "status")


def _run(tmp_path: pathlib.Path, pg: str, fault: Callable[[Mosquitto], None]) -> None:
    query = _query(pg)
    broker = Mosquitto(tmp_path / "broker").start()
    lines: list[str] = []
    workers = [HistorianConsumer(parse_broker_url(broker.url), pg, group="plant", client_id=f"historian-{i}",
                                 settle_s=1.0, resend_after_s=3.0, identity=HISTORIAN, log=lines.append)
               for i in (1, 2)]
    settings = BrokerSettings((parse_broker_url(broker.url),), protocol="5", backoff_min_s=0.05,
                              backoff_max_s=0.2, keepalive_s=5)
    plant = Plant(settings, tmp_path / "plant", count=STATIONS, plan=PLAN)
    clock = threading.Thread(target=plant.run, args=(3600.0,), daemon=True)

    def stored() -> int:
        return int(str(query("SELECT count(*) FROM received WHERE stream <> 'status'")[0][0]))

    def progressed(what: str) -> None:
        base = stored()
        wait_until(lambda: stored() >= base + STEP, f"{STEP} more rows stored {what}", WAIT_S)

    started = []
    try:
        for w in workers:
            started.append(w.start())
        plant.start()
        clock.start()
        progressed("at first")
        fault(broker)                  # the stations publish on: they reconnect within 0.2 s, the workers in 1 s
        progressed("after the fault")
        # a loss shows as a gap once a later number of its stream is stored: each stream of the clock goes on
        # until it has put one after the workers were storing again (a batch record every 4 s)
        before = [s.outbox.last_sequences() for s in plant.stations]
        wait_until(lambda: all(s.outbox.last_sequences().get(k, 0) > b.get(k, 0) for s, b in zip(
            plant.stations, before, strict=True) for k in CLOCK_STREAMS), "every stream put after the fault", WAIT_S)
        plant.stop_clock()
        clock.join(WAIT_S)
        # the stations stay up, serving resend, until the historian holds every number they gave (their answers
        # to resend add numbers: counted as they come)
        wait_until(lambda: stored() >= numbered(plant) and not open_gaps(query), "every number the outboxes gave"
                   " stored", WAIT_S)
        sent, results, _ = plant.stop(flush_timeout_s=WAIT_S)
        assert all(r.flushed for r in results), results
        for w in workers:
            w.stop()
        check = check_stored(query, sent)
        assert check.exact, (f"stored {check.stored} of {check.expected}, lost {check.lost}, duplicate"
                             f" {check.duplicate}:\n" + "\n".join(check.problems))
        assert open_gaps(query) == []
        asked = query("SELECT code, requeued FROM resend_requests")
        assert any(code == "ok" and int(str(requeued or 0)) > 0 for code, requeued in asked), asked   # a real loss
    except BaseException:
        print("\n".join(lines[-80:]))
        print(f"--- stored {stored()} of {numbered(plant)} numbered; open gaps {open_gaps(query)}")
        print(f"--- per stream: {query('SELECT station, stream, count(*), max(seq) FROM received GROUP BY 1, 2')}")
        print(f"--- outboxes: {[s.outbox.last_sequences() for s in plant.stations]}")
        print(f"--- outbox stats: {[s.outbox.stats() for s in plant.stations]}")
        print(f"--- quarantine: {query('SELECT topic, reason FROM quarantine')}")
        print(f"--- asked: {query('SELECT station, stream, first_seq, last_seq, attempts, code FROM resend_requests')}")
        print(f"--- broker\n{broker.log_text()}")
        raise
    finally:
        plant.stop_clock()
        for w in started:
            if w.alive:
                w.stop()
        plant.stop(flush_timeout_s=0.0)
        broker.close()


def test_a_broker_restarted_under_a_publishing_plant_loses_nothing_the_historian_asks_for_it_again(
        tmp_path: pathlib.Path, pg: str) -> None:
    def restart(broker: Mosquitto) -> None:
        broker.stop()
        broker.start()
    _run(tmp_path, pg, restart)


def test_a_killed_broker_loses_nothing_the_historian_asks_for_it_again(tmp_path: pathlib.Path, pg: str) -> None:
    def kill(broker: Mosquitto) -> None:
        broker.kill()
        broker.start()
    _run(tmp_path, pg, kill)
