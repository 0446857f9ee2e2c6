"""``reedge historian``: run the consumer, migrate the database, list the gaps, retire a worker (``report``:
figures.py).

    reedge historian run --broker mqtt://broker:1883 --db postgresql://historian@db/plant --client-id historian-1 \
        --identity historian
    reedge historian migrate --db postgresql://historian@db/plant
    reedge historian gaps --db sqlite:///var/lib/reedge/plant.db --open

Every argument is checked before anything is opened or connected (a bad one changes nothing); a database or
a broker that cannot be reached is one line and exit 2 (``edge.app.cli.main``). ``run`` stops cleanly on
SIGTERM, SIGINT or SIGHUP: the open batch committed and acknowledged, a clean disconnect, exit 0 (the
consumer first, then the fleet page); if its worker failed, it stops with exit 1 and the reason. ``run`` asks the
stations to re-send its gaps as ``--identity`` (default ``--username``; with neither it says at start that
it does not). Each worker
needs ``--client-id`` of its own (no default: two workers with one id take each other's connection over
and over). ``retire`` exits 2 and keeps the session when acknowledgements are still owed (the database
down): nothing is lost, retire it again later.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from edge.historian import figures
from edge.historian.store import open_store

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GC_YOUNG = 10_000        # a worker's young generation is collected every this many new containers (default 700)


def register(subparsers: Any) -> None:
    """Add ``historian`` and its subcommands to ``reedge``."""
    p = subparsers.add_parser("historian", help="the plant historian: every station's stream into a database",
                              description="Consume every station's MQTT stream into SQLite or PostgreSQL, exactly"
                              " once; report the plant's figures and the gaps.")
    sub = p.add_subparsers(dest="historian_command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="consume the stations' MQTT streams into the database until stopped")
    run.add_argument("--broker", required=True, help="mqtt://host[:port] or mqtts://host[:port]")
    run.add_argument("--db", required=True, help="sqlite:///PATH, a file path, or postgresql://USER@HOST:PORT/DB")
    run.add_argument("--group", default="plant", help="shared-subscription group of the workers (default plant)")
    run.add_argument("--no-share", action="store_true",
                     help="one worker on a plain subscription, kept by mosquitto 2.0.11 across its restarts (a"
                          " shared one is not: what stations publish until the workers subscribe again is lost)")
    run.add_argument("--client-id", required=True,
                     help="this worker's fixed MQTT client id, its own (not another worker's): its session and"
                          " unacknowledged messages")
    run.add_argument("--http", metavar="HOST:PORT", help="serve the read-only fleet page there")
    run.add_argument("--mqtt-protocol", choices=("5", "3.1.1"), default="5",
                     help="5 (default: shared subscription) or 3.1.1 (one worker, e.g. the demo's broker)")
    run.add_argument("--username", help="MQTT username (password from the REEDGE_MQTT_PASSWORD environment variable)")
    run.add_argument("--identity", help="this historian's MQTT identity as the broker sees it (username or certificate"
                     " CN; default: --username): it asks the stations to re-send its gaps as it (cmd/IDENTITY/resend);"
                     " with neither, gaps are reported, not recovered")
    run.add_argument("--ca-file", help="CA certificate for mqtts:// (default: the system's)")
    run.add_argument("--batch-max", type=int, default=200, help="messages per transaction at most (default 200)")
    run.add_argument("--batch-ms", type=float, default=200.0,
                     help="wait at most this long after a batch's first message (default 200)")
    run.set_defaults(func=cmd_run)

    retire = sub.add_parser("retire", help="take a worker out of its share group for good (ends its session)",
                            description="Connect as --client-id, store what its session still holds, and end the"
                            " session: mosquitto otherwise keeps giving a stopped worker its share of the messages.")
    retire.add_argument("--broker", required=True, help="mqtt://host[:port] or mqtts://host[:port]")
    retire.add_argument("--db", required=True, help="sqlite:///PATH, a file path, or postgresql://USER@HOST:PORT/DB")
    retire.add_argument("--group", default="plant", help="its shared-subscription group (default plant)")
    retire.add_argument("--client-id", required=True, help="the worker to retire")
    retire.add_argument("--username", help="MQTT username (password from REEDGE_MQTT_PASSWORD)")
    retire.add_argument("--ca-file", help="CA certificate for mqtts:// (default: the system's)")
    retire.set_defaults(func=cmd_retire)

    migrate = sub.add_parser("migrate", help="create or upgrade the historian's tables")
    migrate.add_argument("--db", required=True, help="sqlite:///PATH, a file path, or postgresql://USER@HOST:PORT/DB")
    migrate.set_defaults(func=cmd_migrate)

    gaps = sub.add_parser("gaps", help="what the sequence numbers say is missing")
    gaps.add_argument("--db", required=True, help="sqlite:///PATH, a file path, or postgresql://USER@HOST:PORT/DB")
    gaps.add_argument("--open", action="store_true", help="only the gaps still open and unexplained (lost so far, and"
                      " perhaps re-sent yet) and the unrecoverable ones (the stations no longer hold them)")
    gaps.set_defaults(func=cmd_gaps)

    figures.register(sub)   # fleet: report (edge/historian/figures.py)


@contextlib.contextmanager
def collected_for_batches() -> Iterator[None]:
    """Python's cyclic collector tuned for a worker process. A worker parses each message into some thirty
    containers and holds a batch of them until it commits, so with the defaults (a young collection every 700
    new containers) a batch of 200 windows set off eight collections, each moving the batch's objects on to
    the older generations, whose collections walk everything the process holds. What is loaded at start (the
    modules, paho, psycopg, the schemas: never garbage) is frozen out of every collection, and the young
    generation is collected every ``GC_YOUNG`` containers: 12 % less CPU a message (an in-process ingest of
    20,000 windows into PostgreSQL, 3 runs each, alternating). Cycles are still collected; only ``run``'s own
    process does this (``reedge demo`` runs a consumer beside the controller and keeps the defaults), and
    puts the defaults back when it ends (a test calls it in pytest's own process)."""
    before, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    gc.collect()            # what is garbage already is collected, not frozen for the whole run
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        if not frozen_before:       # a caller's own freeze is left as it was
            gc.unfreeze()


def cmd_run(args: argparse.Namespace) -> int:
    from edge.historian.consumer import HistorianConsumer
    from edge.spec.broker import parse_broker_url
    from edge.telemetry.topics import check_identity

    broker = parse_broker_url(args.broker)
    if args.batch_max < 1 or not args.batch_ms > 0:
        raise ValueError("--batch-max must be at least 1 and --batch-ms above 0")
    if not args.client_id.strip():
        raise ValueError("--client-id must not be empty: each worker needs a fixed client id of its own")
    identity = args.identity if args.identity is not None else args.username
    if identity is not None:
        check_identity(identity)           # a TopicError (a ValueError): one line, before anything is opened
    if args.http:
        from edge.historian.web import parse_address

        parse_address(args.http)            # a bad HOST:PORT: one line, before anything is opened
    consumer = HistorianConsumer(broker, args.db, group=None if args.no_share else args.group,
                                 client_id=args.client_id,
                                 protocol=args.mqtt_protocol, batch_max=args.batch_max, batch_s=args.batch_ms / 1000,
                                 username=args.username, password=os.environ.get("REEDGE_MQTT_PASSWORD"),
                                 ca_file=args.ca_file, identity=identity)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    page = None
    try:
        with collected_for_batches():
            consumer.start()              # the database and the broker: one line each when they cannot be used
            if identity is None:
                print(f"historian {args.client_id}: gaps are reported, not recovered: give --identity (this historian's"
                      " MQTT identity, as the broker and the stations' roles know it) to ask the stations to re-send"
                      " them", file=sys.stderr, flush=True)
            try:
                if args.http:
                    from edge.historian.web import start_page

                    page = start_page(args.db, args.http)
                    print(f"historian: fleet page at {page.url}", file=sys.stderr, flush=True)
                while not stop.wait(0.5) and consumer.alive:
                    pass
            finally:
                try:
                    consumer.stop()        # first: a page that is slow to close never holds up the commit and acks
                finally:
                    if page is not None:
                        page.close()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if consumer.failure is not None:
        print(f"historian {args.client_id}: stopped because its worker failed: {consumer.failure}", file=sys.stderr,
              flush=True)
        return 1
    return 0


def cmd_retire(args: argparse.Namespace) -> int:
    from edge.historian.consumer import HistorianConsumer
    from edge.spec.broker import parse_broker_url

    consumer = HistorianConsumer(parse_broker_url(args.broker), args.db, group=args.group, client_id=args.client_id,
                                 username=args.username, password=os.environ.get("REEDGE_MQTT_PASSWORD"),
                                 ca_file=args.ca_file)
    consumer.start()
    consumer.retire()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from edge.historian.store import apply_migrations, connect

    with connect(args.db) as store:
        done = apply_migrations(store)
        version = int(store.query("SELECT max(version) FROM schema_migrations")[0][0])
    if done:
        print(f"{store.url}: applied {', '.join(f'{m.version:04d}_{m.name}' for m in done)}; now at version {version}")
    else:
        print(f"{store.url}: at version {version}, nothing to apply")
    return 0


def cmd_gaps(args: argparse.Namespace) -> int:
    from edge.historian.gaps import MAX_LISTED, gap_rows, open_gap_count, unrecoverable_count

    with open_store(args.db, migrate=False) as store:
        rows = gap_rows(store, open_only=args.open, unrecoverable=args.open)
        open_gaps, lost = open_gap_count(store)      # all of them: the listing without --open is bounded
        gone, gone_messages = unrecoverable_count(store)
    for g in rows:
        span = f"#{g.first_seq}" if g.count == 1 else f"#{g.first_seq}-{g.last_seq} ({g.count})"
        state = ("closed " + g.closed if g.closed else "explained: " + g.explained if g.explained else
                 "UNRECOVERABLE (the station no longer holds it) since " + g.unrecoverable if g.unrecoverable
                 else "OPEN")
        print(f"{g.site}/{g.station} {g.stream} {span} boot {g.boot_id}: {state}; opened {g.opened}"
              + (f"; {g.detail}" if g.detail else ""))
    listed = f" (the {MAX_LISTED} listed first: open, then the newest explained)" if len(rows) >= MAX_LISTED else ""
    print(f"{len(rows)} gap(s){listed}; {open_gaps} open: {lost} message(s) missing and unexplained; {gone}"
          f" unrecoverable: {gone_messages} message(s) the stations no longer hold", file=sys.stderr)
    return 1 if lost or gone_messages else 0
