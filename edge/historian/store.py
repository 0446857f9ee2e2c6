"""The historian's database: one small interface over SQLite and PostgreSQL, and its versioned migrations.

    store = open_store("postgresql://historian@db:5432/plant")   # or "sqlite:///var/lib/reedge/plant.db",
    rows = store.query("SELECT site, station FROM stations WHERE status = ?", ("online",))   # or a plain path
    with store.transaction() as tx:                                # one transaction: all or nothing
        tx.execute("INSERT INTO ...", (...))

**The same SQL in both.** Placeholders are ``?`` in both dialects (translated to psycopg's ``%s``); the
statements the historian runs are the SQL both engines take (``INSERT ... ON CONFLICT``, ``RETURNING``,
partial indexes). **The same values out of both**: a time comes back as RFC 3339 UTC text with
milliseconds (``2025-03-14T09:26:53.589Z``: SQLite stores that text, PostgreSQL's ``timestamptz`` is
loaded as it) and JSON as its text, so a reader (the fleet page, the report) never asks which engine it
has. Times go in as that same text.

**SQLite** is the embedded default for a small site and the demo: WAL (the page reads while the
consumer writes), one writer (``BEGIN IMMEDIATE``; a second process waits up to ``busy_timeout``),
``synchronous=FULL`` because a message is acknowledged to the broker once its transaction committed, so
the commit must survive a power loss. A reader (``open_store(migrate=False)``: the page, gaps, report)
never takes the write lock, and never creates a file: a mistyped path is an error, not an empty database.
**PostgreSQL** (psycopg 3, loaded only here, lazily: a station never needs it) is the plant's: several
historian workers write at once (see ``edge.historian.gaps`` for how they share a station). A server that
stops answering never blocks a worker for long nor keeps its locks (``PG_*`` below: the server's lock,
statement and idle-transaction timeouts, TCP keepalives, and the client's own deadline per call, past
which the connection is cut); ``close`` never waits for a call in progress.

**Migrations** are the files ``migrations/{dialect}/NNNN_name.sql``, applied in order, each in its own
transaction with its row in ``schema_migrations``; a second run applies nothing. A database that a newer
historian migrated (a version this code does not know) is refused rather than written with an older idea
of its tables. Concurrent starters (two workers at once) take a lock first: PostgreSQL an advisory
transaction lock, SQLite the write lock.

Every failure to reach or use the database is a ``StoreError`` with one line that says what and where.
``DatabaseUnavailable`` (a subclass) means "try again later": the server is down, restarting, not
answering, a lock not had in time, the disk full, an I/O error (SQLite's own errors are these too);
``RejectedData`` means the data itself was refused (a constraint, a number out of range). The consumer
keeps its messages unacknowledged and retries on any ``StoreError`` but ``RejectedData``, which alone
marks a message to keep aside (``ingest.ingest_isolating``): a database failing for a reason of its own
must never put valid messages in quarantine.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.resources
import json
import math
import os
import re
import socket
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from edge.timestamps import rfc3339_ms

if TYPE_CHECKING:
    import psycopg

Dialect = Literal["sqlite", "postgresql"]
MIGRATION_RE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
MIGRATION_LOCK = 0x72656564   # the PostgreSQL advisory lock key of migrations ("reed")
SQLITE_BUSY_MS = 30_000


class StoreError(RuntimeError):
    """The database cannot be opened or used; the message is one line that says why."""


class DatabaseUnavailable(StoreError):
    """The database cannot be reached just now (down, restarting, connection lost): try again later."""


class RejectedData(StoreError):
    """The database refused what it was given (a number beyond its integer type, a broken constraint): trying
    again changes nothing; the message that carries it must be kept aside (``ingest.ingest_isolating``)."""


def is_driver_error(e: BaseException) -> bool:
    """An error of the database driver itself (sqlite3's, psycopg's): the database failed, not the data."""
    if isinstance(e, sqlite3.Error):
        return True
    psycopg = sys.modules.get("psycopg")      # loaded only with PostgreSQL
    return psycopg is not None and isinstance(e, psycopg.Error)


def quarantine_digest(topic: str, payload: bytes) -> str:
    """A quarantined message's identity (``quarantine.digest``, unique: kept once however often delivered):
    the SHA-256 of its topic, a NUL (never in a topic), its payload."""
    return hashlib.sha256(topic.encode("utf-8", "surrogateescape") + b"\0" + bytes(payload)).hexdigest()


def now_utc() -> str:
    """The current time as the store keeps times (RFC 3339 UTC, milliseconds)."""
    return rfc3339_ms(time.time_ns())


#: the most parameters one SQLite statement takes (its default limit before 3.32; later ones take 32,766)
SQLITE_MAX_PARAMS = 999


def rows_relations(dialect: Dialect, rows: Sequence[Sequence[Any]],
                   types: Sequence[str]) -> Iterator[tuple[str, list[Any]]]:
    """``rows`` as relations of ``len(types)`` columns named ``column1``, ``column2``... (as SQLite names those of a
    ``VALUES``), in their order, for ``INSERT INTO t (...) <relation>`` and ``(a, b) IN (<relation>)``: the SQL and
    parameters of each; nothing for no rows. ``types``: each column's PostgreSQL type.

    On PostgreSQL one relation, its rows one JSON array (one parameter, one statement text whatever the count of
    rows): psycopg splits a statement's text into parts in Python and keeps the result only for texts of at most
    50 parameters and 4 KiB, and the server plans each new text; a ``VALUES`` list of N rows is a new text for each
    N, so five of them a batch cost the historian a tenth of its time in psycopg's ``_split_query`` alone, and the
    server a plan each. A JSON array's text is dumped by the C encoder and taken apart by the server. On SQLite
    ``VALUES`` lists (the C module binds them; SQLite plans them in microseconds), as many as its limit of
    parameters needs."""
    if not rows:
        return
    if dialect == "postgresql":
        columns = ", ".join(f"(r->>{i})::{t} AS column{i + 1}" for i, t in enumerate(types))   # SQLite's names
        yield (f"SELECT {columns} FROM json_array_elements(?::json) WITH ORDINALITY AS x(r, n) ORDER BY n",
               [json.dumps(rows, ensure_ascii=False)])
        return
    row = f"({', '.join('?' * len(types))})"
    size = SQLITE_MAX_PARAMS // len(types)
    for i in range(0, len(rows), size):
        chunk = rows[i:i + size]
        yield f"VALUES {', '.join([row] * len(chunk))}", [x for r in chunk for x in r]


class Tx(Protocol):
    """The open transaction of ``Store.transaction``."""

    dialect: Dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def lock_station(self, site: str, station: str) -> None: ...
    def lock_stations(self, stations: Sequence[tuple[str, str]]) -> None: ...
    def copy_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...


class Store:
    """A database connection with the historian's tables. Not shared between threads at once (a lock
    serialises callers); each historian worker and the fleet page hold their own."""

    dialect: Dialect

    def __init__(self, url: str) -> None:
        self.url = url            # without a password: safe to print

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read (its own short transaction)."""
        with self.transaction() as tx:
            return tx.query(sql, params)

    def transaction(self) -> contextlib.AbstractContextManager[Tx]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- SQLite ----------------------------------------------------------------------------------------

class _SqliteTx:
    dialect: Dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.conn.execute(sql, tuple(params)).fetchall()]

    def lock_station(self, site: str, station: str) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already made this the only writer."""

    def lock_stations(self, stations: Sequence[tuple[str, str]]) -> None:
        """Nothing to do (``lock_station``)."""

    def copy_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert many rows (no conflicts expected)."""
        if rows:
            marks = ", ".join("?" * len(columns))
            self.conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


class SqliteStore(Store):
    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, *, create: bool = True) -> None:
        """``create``: make the file if there is none (``migrate``); else a missing file is an error (a reader
        given a mistyped path must not leave an empty database behind)."""
        super().__init__(f"sqlite://{path}")
        self.path = path
        self._lock = threading.RLock()
        if not path.parent.is_dir():
            raise StoreError(f"cannot open the SQLite database {path}: its folder {path.parent} does not exist")
        if not create and not path.is_file():
            raise StoreError(f"there is no SQLite database {path}: check the path, or create it with"
                             " reedge historian migrate --db PATH")
        try:
            self.conn = sqlite3.connect(path.absolute().as_uri() + ("" if create else "?mode=rw"), uri=True,
                                        isolation_level=None, check_same_thread=False, timeout=SQLITE_BUSY_MS / 1000)
            self.conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = FULL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.create_function("reedge_quarantine_digest", 2, quarantine_digest, deterministic=True)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the SQLite database {path}: {e}") from None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One read, its own implicit transaction: WAL lets it run beside the writer, never takes the write lock."""
        with self._lock:
            try:
                return [tuple(r) for r in self.conn.execute(sql, tuple(params)).fetchall()]
            except sqlite3.OperationalError as e:
                raise DatabaseUnavailable(f"SQLite database {self.path}: {e}") from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise DatabaseUnavailable(f"SQLite database {self.path}: {e}") from None
            try:
                yield _SqliteTx(self.conn)
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.IntegrityError | sqlite3.DataError | OverflowError):
                    raise RejectedData(f"SQLite database {self.path}: {e}") from e
                if isinstance(e, sqlite3.ProgrammingError | sqlite3.InterfaceError | sqlite3.NotSupportedError):
                    raise StoreError(f"SQLite database {self.path}: {e}") from e       # this code's fault
                if isinstance(e, sqlite3.Error):    # full disk, I/O error, locked, corrupt: SQLite's, not the data's
                    raise DatabaseUnavailable(f"SQLite database {self.path}: {e}") from None
                raise
            try:
                self.conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                raise DatabaseUnavailable(f"SQLite database {self.path}: commit failed: {e}") from None

    def run_script(self, tx: Tx, script: str) -> None:
        for statement in _sqlite_statements(script):
            tx.execute(statement)

    def close(self) -> None:
        with self._lock:
            self.conn.close()


def _sqlite_statements(script: str) -> Iterator[str]:
    """The statements of a migration file, one by one (``executescript`` would commit the open transaction)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf.strip()
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        raise StoreError(f"unterminated SQL statement in a migration: {buf.strip()[:80]!r}")


# ---- PostgreSQL ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PgTx:
    dialect: Dialect = "postgresql"

    def __init__(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(_pg_sql(sql) if params else sql, tuple(params) or None)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(_pg_sql(sql), rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(_pg_sql(sql) if params else sql, tuple(params) or None).fetchall()

    def lock_station(self, site: str, station: str) -> None:
        """Serialise the writers of one station until this transaction ends (``edge.historian.gaps``)."""
        self.lock_stations([(site, station)])

    def lock_stations(self, stations: Sequence[tuple[str, str]]) -> None:
        """``lock_station`` for several, in one round trip, always in the same order (by the lock's key), so two
        transactions never each hold a lock the other waits for."""
        if stations:
            self.conn.execute("SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT hashtextextended(s, 0) AS k"
                              " FROM unnest(%s::text[]) AS s ORDER BY 1) AS keys",
                              ([f"{a}/{b}" for a, b in stations],))

    def copy_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert many rows with COPY (no conflicts expected): ten times an INSERT's speed for telemetry."""
        if rows:
            with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)


# PostgreSQL's limits (read at each connect and call: a test shortens them). A server that stops answering
# (a hung host, a silent partition) must neither block a worker for hours nor keep its locks: the server
# ends a statement, a lock wait or a transaction left idle by a vanished client; TCP keepalives and
# tcp_user_timeout end a connection whose peer is gone; and since a stopped server's kernel still answers
# TCP (so none of those fire), each call has the client's own deadline too: past it the connection is cut.
PG_CONNECT_TIMEOUT_S = 5
PG_KEEPALIVES_IDLE_S, PG_KEEPALIVES_INTERVAL_S, PG_KEEPALIVES_COUNT = 10, 5, 3
PG_TCP_USER_TIMEOUT_MS = 30_000
PG_LOCK_TIMEOUT_MS = 10_000
PG_STATEMENT_TIMEOUT_MS = 30_000
PG_IDLE_IN_TRANSACTION_MS = 30_000
PG_ANSWER_S = 40.0          # the client's deadline of one read or transaction: beyond the server's own


class _Watchdog:
    """The client's deadline of a store's calls: one thread (started at the first call, ended by ``close``)
    that cuts the connection of a call still running at its deadline, so the call fails at once. Arming
    and disarming cost a lock, not a thread (a worker makes thousands of calls a minute). It holds its store
    weakly: a store dropped without ``close`` still closes its connection when collected, and stops this."""

    def __init__(self, cut: weakref.WeakMethod[Callable[[Any], None]]) -> None:
        self._cut = cut
        self._cond = threading.Condition()
        self._armed: tuple[float, int, Any] | None = None      # (deadline, call number, connection)
        self._calls = 0
        self._fired = 0                                         # the number of the last call cut
        self._wakes = math.inf                                  # when the thread looks again
        self._stopped = False
        self._thread: threading.Thread | None = None

    def arm(self, conn: Any, seconds: float) -> int:
        with self._cond:
            self._calls += 1
            deadline = time.monotonic() + seconds
            self._armed = (deadline, self._calls, conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pg-deadline", daemon=True)
                self._thread.start()
            elif deadline < self._wakes:      # only then: mostly it wakes for an earlier call's, and looks again
                self._cond.notify()
            return self._calls

    def disarm(self, call: int) -> bool:
        """Whether call ``call`` was cut."""
        with self._cond:
            if self._armed is not None and self._armed[1] == call:
                self._armed = None
            return self._fired == call

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._armed is None:
                    self._wakes = math.inf
                    self._cond.wait()
                    continue
                deadline, call, conn = self._armed
                left = deadline - time.monotonic()
                if left > 0:
                    self._wakes = deadline
                    self._cond.wait(left)
                    continue
                self._fired, self._armed = call, None
                cut = self._cut()
                if cut is not None:
                    cut(conn)


class PgStore(Store):
    dialect: Dialect = "postgresql"

    def __init__(self, url: str) -> None:
        super().__init__(redact(url))
        self._dsn = url
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._cut_conn: psycopg.Connection[tuple[Any, ...]] | None = None    # cut by a deadline or close
        self._closed = False
        self._watchdog = _Watchdog(weakref.WeakMethod(self._cut))
        weakref.finalize(self, self._watchdog.stop)
        self._connect()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One read on the autocommit connection (no transaction block: one round trip less)."""
        import psycopg

        with self._lock:
            conn = self._connect()
            call = self._watchdog.arm(conn, PG_ANSWER_S)
            try:
                return conn.execute(_pg_sql(sql) if params else sql, tuple(params) or None).fetchall()
            except psycopg.Error as e:
                raise self._error(e, conn, self._watchdog.disarm(call)) from e
            finally:
                self._watchdog.disarm(call)
                self._after_call(conn)

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        import psycopg

        if (self._conn is not None and not self._conn.closed and not self._conn.broken
                and self._conn is not self._cut_conn):
            return self._conn
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        options = (f"-c TimeZone=UTC -c DateStyle=ISO -c lock_timeout={PG_LOCK_TIMEOUT_MS}"
                   f" -c statement_timeout={PG_STATEMENT_TIMEOUT_MS}"
                   f" -c idle_in_transaction_session_timeout={PG_IDLE_IN_TRANSACTION_MS}")
        try:
            conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=PG_CONNECT_TIMEOUT_S,
                                   keepalives=1, keepalives_idle=PG_KEEPALIVES_IDLE_S,
                                   keepalives_interval=PG_KEEPALIVES_INTERVAL_S,
                                   keepalives_count=PG_KEEPALIVES_COUNT, tcp_user_timeout=PG_TCP_USER_TIMEOUT_MS,
                                   options=options)
        except psycopg.OperationalError as e:
            raise DatabaseUnavailable(f"cannot reach PostgreSQL at {self.url}: {_one_line(e)}") from None
        except psycopg.Error as e:
            raise StoreError(f"cannot use PostgreSQL at {self.url}: {_one_line(e)}") from None
        _register_loaders(conn)
        self._conn = conn
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        import psycopg

        with self._lock:
            conn = self._connect()
            call = self._watchdog.arm(conn, PG_ANSWER_S)
            try:
                with conn.transaction():
                    yield _PgTx(conn)
            except psycopg.Error as e:
                raise self._error(e, conn, self._watchdog.disarm(call)) from e
            finally:
                self._watchdog.disarm(call)
                self._after_call(conn)

    def _error(self, e: Exception, conn: psycopg.Connection[tuple[Any, ...]], cut: bool) -> StoreError:
        """What a psycopg error means: the data refused (``RejectedData``), the server unreachable, stopped,
        out of disk, a timeout, a lock not had (``DatabaseUnavailable``: later), else this code or this
        database's set-up (read-only, no privilege): ``StoreError``."""
        import psycopg

        where = f"PostgreSQL at {self.url}"
        if cut or conn is self._cut_conn:
            why = "the store was closed" if self._closed else f"no answer in {PG_ANSWER_S:g} s"
            return DatabaseUnavailable(f"{where}: {why}; the connection was cut")
        if isinstance(e, psycopg.DataError | psycopg.IntegrityError):
            return RejectedData(f"{where}: {_one_line(e)}")
        if isinstance(e, psycopg.OperationalError) or conn.closed or conn.broken:
            return DatabaseUnavailable(f"{where}: {_one_line(e)}")
        return StoreError(f"{where}: {_one_line(e)}")

    def _cut(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        """Shut the connection's socket down from another thread (its file stays open: the thread using it
        fails at once, nothing is freed under it); the next call connects again."""
        self._cut_conn = conn
        with contextlib.suppress(Exception), socket.socket(fileno=os.dup(conn.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)

    def _after_call(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        if self._closed:
            with contextlib.suppress(Exception):
                conn.close()
            self._conn = None

    def run_script(self, tx: Tx, script: str) -> None:
        tx.execute(script)       # no parameters: psycopg sends the whole file as one simple query

    def close(self) -> None:
        """Close, never waiting for a call in progress (the server may not answer it): that call is cancelled
        and its connection cut; it fails with ``DatabaseUnavailable`` and closes the connection itself."""
        self._closed = True
        self._watchdog.stop()
        if self._lock.acquire(blocking=False):
            try:
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                    self._conn = None
            finally:
                self._lock.release()
            return
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=2)
            self._cut(conn)


def _register_loaders(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    """timestamptz as RFC 3339 UTC text with milliseconds, json/jsonb as their text: what SQLite gives."""
    from psycopg.adapt import Loader
    from psycopg.types.string import TextLoader

    class UtcTextLoader(Loader):
        def load(self, data: Any) -> str:
            return _pg_time_text(bytes(data).decode())

    conn.adapters.register_loader("timestamptz", UtcTextLoader)
    conn.adapters.register_loader("jsonb", TextLoader)
    conn.adapters.register_loader("json", TextLoader)


def _pg_time_text(text: str) -> str:
    """``2025-03-14 09:26:53.589+00`` (ISO DateStyle, TimeZone UTC) as ``2025-03-14T09:26:53.589Z``."""
    date, _, clock = text.partition(" ")
    clock = clock.split("+", 1)[0]
    whole, _, frac = clock.partition(".")
    return f"{date}T{whole}.{(frac + '000')[:3]}Z"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def redact(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# ---- opening and migrating -------------------------------------------------------------------------

def open_store(url: str, *, migrate: bool = True) -> Store:
    """The store at ``url``: ``sqlite:///ABS/PATH.db``, a plain file path (SQLite), or ``postgresql://...``.

    ``migrate``: apply the migrations this code has and the database lacks; else only check the database
    is at this code's version (``StoreError`` if not: ``reedge historian migrate`` first)."""
    store = connect(url, create=migrate)
    try:
        if migrate:
            apply_migrations(store)
        else:
            check_version(store)
    except BaseException:
        store.close()
        raise
    return store


def connect(url: str, *, create: bool = True) -> Store:
    """The store at ``url`` as it is: no migration, no version check (``open_store`` does those). ``create``
    False: a SQLite file that is not there is an error, not made."""
    if not isinstance(url, str) or not url.strip():
        raise StoreError("no database given: expected sqlite:///PATH, a file path, or postgresql://USER@HOST:PORT/DB")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit(url)
        if not parts.hostname and "host=" not in parts.query:
            raise StoreError(f"database URL {redact(url)!r} names no host: expected postgresql://USER@HOST:PORT/DB")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StoreError("PostgreSQL needs psycopg 3: pip install 'reeproduce-edge[historian]'") from None
        return PgStore(url)
    if scheme == "sqlite":
        path = url[len("sqlite://"):]
        if not path.startswith("/"):
            raise StoreError(f"database URL {url!r}: expected sqlite:///ABSOLUTE/PATH.db (three slashes)"
                             " or a plain file path")
        return SqliteStore(Path("/" + path.lstrip("/")), create=create)     # sqlite:////abs (SQLAlchemy's form) as well
    if scheme:
        raise StoreError(f"database URL {redact(url)!r}: unknown scheme {scheme!r} (expected sqlite:///PATH,"
                         " a file path, or postgresql://USER@HOST:PORT/DB)")
    return SqliteStore(Path(url).absolute(), create=create)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: Dialect) -> list[Migration]:
    """This code's migrations for ``dialect``, in order."""
    folder = importlib.resources.files("edge.historian").joinpath("migrations", dialect)
    out = []
    for entry in folder.iterdir():
        m = MIGRATION_RE.fullmatch(entry.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    out.sort(key=lambda mig: mig.version)
    if [mig.version for mig in out] != list(range(1, len(out) + 1)):
        raise StoreError(f"the {dialect} migrations are not numbered 1, 2, 3...: {[mig.version for mig in out]}")
    return out


_LEDGER = "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied {})"


def apply_migrations(store: Store) -> list[Migration]:
    """Apply what the database lacks, in order, each in its own transaction; returns what was applied."""
    known = migrations(store.dialect)
    done: list[Migration] = []
    for mig in known:
        with store.transaction() as tx:
            if store.dialect == "postgresql":
                tx.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            tx.execute(_LEDGER.format("TIMESTAMPTZ NOT NULL" if store.dialect == "postgresql" else "TEXT NOT NULL"))
            have = _versions(tx)
            _refuse_newer(store, have, known)
            if mig.version in have:
                continue
            _run_script(store, tx, mig.sql)
            tx.execute("INSERT INTO schema_migrations (version, name, applied) VALUES (?, ?, ?)",
                       (mig.version, mig.name, now_utc()))
            done.append(mig)
    return done


def check_version(store: Store) -> int:
    """The database's version if it is this code's; StoreError otherwise. Plain reads (``store.query``): a
    reader (the page, gaps, report) never waits for the write lock a worker holds."""
    known = migrations(store.dialect)
    exists = store.query("SELECT 1 FROM pg_tables WHERE tablename = 'schema_migrations'"
                         if store.dialect == "postgresql" else
                         "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
    have = {int(r[0]) for r in store.query("SELECT version FROM schema_migrations")} if exists else set()
    _refuse_newer(store, have, known)
    latest = max(have, default=0)
    if latest < len(known):
        raise StoreError(f"the database {store.url} is at schema version {latest}, this historian needs"
                         f" {len(known)}: run reedge historian migrate --db URL first")
    return latest


def _versions(tx: Tx) -> set[int]:
    return {int(r[0]) for r in tx.query("SELECT version FROM schema_migrations")}


def _refuse_newer(store: Store, have: set[int], known: list[Migration]) -> None:
    newer = sorted(v for v in have if v > len(known))
    if newer:
        raise StoreError(f"the database {store.url} is at schema version {max(newer)}, newer than this historian"
                         f" knows ({len(known)}): it was migrated by a newer reedge; upgrade this one")


def _run_script(store: Store, tx: Tx, script: str) -> None:
    if isinstance(store, SqliteStore | PgStore):
        store.run_script(tx, script)
    else:
        raise StoreError(f"no migrations for a {type(store).__name__}")
