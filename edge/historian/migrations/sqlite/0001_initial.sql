-- The historian's first schema (SQLite). The same tables and columns as postgresql/0001_initial.sql:
-- times are RFC 3339 UTC text 'YYYY-MM-DDTHH:MM:SS.mmmZ' here (timestamptz there, so the text sorts as
-- the time does), JSON is text (jsonb there), booleans 0/1.

CREATE TABLE stations (
    site TEXT NOT NULL, station TEXT NOT NULL,
    first_seen TEXT NOT NULL, last_seen TEXT NOT NULL,
    status TEXT,
    status_ts TEXT,
    boot_id TEXT, description_sha256 TEXT, software TEXT,
    PRIMARY KEY (site, station));

CREATE TABLE boots (
    site TEXT NOT NULL, station TEXT NOT NULL, boot_id TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    boot_started TEXT,
    previous_boot_id TEXT,
    previous_last_seq TEXT,
    tail_pending TEXT,
    PRIMARY KEY (site, station, boot_id));

CREATE TABLE received (
    site TEXT NOT NULL, station TEXT NOT NULL, boot_id TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
    ts TEXT NOT NULL, stored TEXT NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (site, station, boot_id, stream, seq)) WITHOUT ROWID;

CREATE TABLE coverage (
    site TEXT NOT NULL, station TEXT NOT NULL, boot_id TEXT NOT NULL, stream TEXT NOT NULL,
    first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    PRIMARY KEY (site, station, boot_id, stream));

CREATE TABLE telemetry (
    site TEXT NOT NULL, station TEXT NOT NULL, boot_id TEXT NOT NULL, seq INTEGER NOT NULL, channel TEXT NOT NULL,
    start_utc TEXT, end_utc TEXT, unit TEXT,
    last REAL, min REAL, max REAL, mean REAL,
    count INTEGER, valid INTEGER, status TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (site, station, boot_id, seq, channel)) WITHOUT ROWID;
CREATE INDEX telemetry_by_channel_time ON telemetry (site, station, channel, end_utc);

CREATE TABLE events (
    site TEXT NOT NULL, station TEXT NOT NULL, boot_id TEXT NOT NULL, seq INTEGER NOT NULL,
    ts TEXT NOT NULL, kind TEXT, name TEXT, message TEXT, body TEXT NOT NULL,
    PRIMARY KEY (site, station, boot_id, seq));
CREATE INDEX events_by_time ON events (site, station, ts);

CREATE TABLE states (
    site TEXT NOT NULL, station TEXT NOT NULL, boot_id TEXT NOT NULL, seq INTEGER NOT NULL,
    ts TEXT NOT NULL, run TEXT, phase TEXT, batch_id TEXT, body TEXT NOT NULL,
    PRIMARY KEY (site, station, boot_id, seq));
CREATE INDEX states_by_time ON states (site, station, ts);

CREATE TABLE batches (
    site TEXT NOT NULL, station TEXT NOT NULL, batch_id TEXT NOT NULL,
    process TEXT, recipe TEXT, started TEXT, ended TEXT, outcome TEXT, revision INTEGER,
    mass_in_kg REAL, mass_out_kg REAL, energy_kwh REAL,
    h2_nl REAL, ar_nl REAL, kg_co2e REAL, kwh_per_kg REAL,
    nl_h2_per_kg REAL, kg_co2e_per_kg REAL, trips INTEGER, alarms_raised INTEGER,
    complete INTEGER,
    start_record TEXT, end_record TEXT,
    PRIMARY KEY (site, station, batch_id));
CREATE INDEX batches_by_end ON batches (ended);

CREATE TABLE descriptions (
    site TEXT NOT NULL, station TEXT NOT NULL, sha256 TEXT NOT NULL,
    first_seen TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (site, station, sha256));

CREATE TABLE gaps (
    site TEXT NOT NULL, station TEXT NOT NULL, boot_id TEXT NOT NULL, stream TEXT NOT NULL,
    first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    opened TEXT NOT NULL, closed TEXT,
    explained TEXT,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (site, station, boot_id, stream, first_seq));
CREATE INDEX gaps_open ON gaps (site, station, stream) WHERE closed IS NULL;

CREATE TABLE explained (
    site TEXT NOT NULL, station TEXT NOT NULL, stream TEXT NOT NULL,
    first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, why TEXT NOT NULL,
    PRIMARY KEY (site, station, stream, first_seq, last_seq, why));

CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, reason TEXT NOT NULL);
