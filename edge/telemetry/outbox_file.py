"""The outbox's SQLite file: its tables, its identity and version, and the pragmas it is used with.

A file is an outbox when its ``application_id`` is :data:`APPLICATION_ID`; its ``user_version``
is the version of the tables below. An empty file becomes an outbox of this version; any other
SQLite database is refused untouched, and so is an outbox of a version this code does not know.
Version 2 keeps acknowledged messages as history for resend (``edge.telemetry.outbox``, "History
and resend"); a version 1 file is upgraded in place when it is opened, in one transaction
(:data:`UPGRADE_1_TO_2`: two indexes built over the rows it holds, seconds for a million). The
file is in WAL mode, with the WAL truncated to :data:`JOURNAL_LIMIT` after a checkpoint and a
bounded page cache (:data:`CACHE_KIB`), so a backlog costs disk, not RAM. How each transaction is
synced is the outbox's choice (``edge.telemetry.outbox``).
"""

from __future__ import annotations

import sqlite3

APPLICATION_ID = 0x52454F42  # "REOB": this file is a reedge outbox, not some other SQLite database
SCHEMA_VERSION = 2
JOURNAL_LIMIT = 4 * 1024 * 1024     # the WAL is truncated to this after a checkpoint (~1000 pages)
CACHE_KIB = 2 * 1024           # SQLite page cache per connection: the bound on what a backlog can cost in RAM

VERSION_1 = """
CREATE TABLE boots (
    n INTEGER PRIMARY KEY,
    boot_id TEXT NOT NULL UNIQUE,
    opened_ns INTEGER NOT NULL
);
CREATE TABLE streams (
    stream TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    boot INTEGER NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    priority INTEGER NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX messages_by_priority ON messages (priority, id);
"""

#: what version 2 added (history for resend): ``acked`` marks a message the broker acknowledged, kept as history
#: (``edge.telemetry.outbox``); the pending queries' index leaves it out, so an ack only takes an entry out of it;
#: ``messages_by_seq`` finds a stream's numbers (unique per stream, across boots); ``boot_seqs`` holds each stream's
#: last number when the boot after ``boot`` opened: the bound of what ``boot`` gave, for a resend naming it
VERSION_2 = """
ALTER TABLE messages ADD COLUMN acked INTEGER NOT NULL DEFAULT 0;
DROP INDEX messages_by_priority;
CREATE INDEX messages_by_priority ON messages (priority, id) WHERE acked = 0;
CREATE INDEX messages_by_seq ON messages (stream, seq);
CREATE TABLE boot_seqs (
    boot INTEGER NOT NULL,
    stream TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (boot, stream)
) WITHOUT ROWID;
"""
#: a new file is made as an old one is upgraded: one way to reach version 2
SCHEMA = VERSION_1 + VERSION_2
#: a version 1 file knows only today's last numbers: a bound for every boot it holds
UPGRADE_1_TO_2 = VERSION_2 + """
INSERT INTO boot_seqs (boot, stream, last_seq) SELECT b.n, s.stream, s.last_seq FROM boots b, streams s;
"""


def prepare_file(c: sqlite3.Connection) -> str | None:
    """Make the file of ``c`` an outbox (if it is empty) or check that it is one of this version (a version 1
    file is upgraded), then set WAL and the pragmas. Returns what is wrong (the file is then left as it was),
    None when it is ready; sqlite3.Error if SQLite fails."""
    app_id = c.execute("PRAGMA application_id").fetchone()[0]
    version = c.execute("PRAGMA user_version").fetchone()[0]
    tables = c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    script = None
    if app_id == 0 and version == 0 and tables == 0:
        script = SCHEMA
    elif app_id != APPLICATION_ID:
        return f"not an outbox (a different SQLite database: application_id {app_id:#x}); refusing to touch it"
    elif version == 1:
        script = UPGRADE_1_TO_2
    elif version != SCHEMA_VERSION:
        return f"outbox schema version {version}, this code reads {SCHEMA_VERSION} (and upgrades version 1)"
    if script is not None and (problem := _write(c, script)) is not None:
        return problem
    mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        return f"cannot use WAL mode here (got {mode!r})"
    c.execute(f"PRAGMA journal_size_limit={JOURNAL_LIMIT}")
    c.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    c.execute("PRAGMA temp_store=FILE")
    return None


def _write(c: sqlite3.Connection, script: str) -> str | None:
    """Run ``script`` and stamp the file as an outbox of this version, in one synced transaction."""
    mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        return f"cannot use WAL mode here (got {mode!r})"
    c.execute("PRAGMA synchronous=FULL")
    c.execute("BEGIN IMMEDIATE")
    try:
        for statement in script.split(";"):
            if statement.strip():
                c.execute(statement)
        c.execute(f"PRAGMA application_id={APPLICATION_ID}")
        c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise
    return None
