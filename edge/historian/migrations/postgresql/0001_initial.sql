-- The historian's first schema (PostgreSQL). The same tables and columns as sqlite/0001_initial.sql:
-- times are timestamptz here (text 'YYYY-MM-DDTHH:MM:SS.mmmZ' there), JSON is jsonb (text there).

CREATE TABLE stations (
    site text NOT NULL, station text NOT NULL,
    first_seen timestamptz NOT NULL, last_seen timestamptz NOT NULL,
    status text,                      -- online | offline, from the newest status message
    status_ts timestamptz,            -- that message's ts (an older one, stored later, does not win)
    boot_id text, description_sha256 text, software text,
    PRIMARY KEY (site, station));

CREATE TABLE boots (
    site text NOT NULL, station text NOT NULL, boot_id text NOT NULL,
    first_seen timestamptz NOT NULL,
    boot_started timestamptz,
    previous_boot_id text,
    previous_last_seq jsonb,          -- the birth's previous_boot.last_seq
    tail_pending jsonb,               -- the part of it not yet settled (gaps.py: the lost tail)
    PRIMARY KEY (site, station, boot_id));

-- the exactly-once ledger: every stored message has one row; digest = SHA-256 of its payload bytes
CREATE TABLE received (
    site text NOT NULL, station text NOT NULL, boot_id text NOT NULL, stream text NOT NULL, seq bigint NOT NULL,
    ts timestamptz NOT NULL, stored timestamptz NOT NULL, digest text NOT NULL,
    PRIMARY KEY (site, station, boot_id, stream, seq));

-- what gaps.py knows of each (boot, stream): the lowest and highest number stored (holes are gap rows)
CREATE TABLE coverage (
    site text NOT NULL, station text NOT NULL, boot_id text NOT NULL, stream text NOT NULL,
    first_seq bigint NOT NULL, last_seq bigint NOT NULL,
    PRIMARY KEY (site, station, boot_id, stream));

CREATE TABLE telemetry (
    site text NOT NULL, station text NOT NULL, boot_id text NOT NULL, seq bigint NOT NULL, channel text NOT NULL,
    start_utc timestamptz, end_utc timestamptz, unit text,
    last double precision, min double precision, max double precision, mean double precision,
    count bigint, valid bigint, status text NOT NULL DEFAULT '',
    PRIMARY KEY (site, station, boot_id, seq, channel));
CREATE INDEX telemetry_by_channel_time ON telemetry (site, station, channel, end_utc);

CREATE TABLE events (
    site text NOT NULL, station text NOT NULL, boot_id text NOT NULL, seq bigint NOT NULL,
    ts timestamptz NOT NULL, kind text, name text, message text, body jsonb NOT NULL,
    PRIMARY KEY (site, station, boot_id, seq));
CREATE INDEX events_by_time ON events (site, station, ts);

CREATE TABLE states (
    site text NOT NULL, station text NOT NULL, boot_id text NOT NULL, seq bigint NOT NULL,
    ts timestamptz NOT NULL, run text, phase text, batch_id text, body jsonb NOT NULL,
    PRIMARY KEY (site, station, boot_id, seq));
CREATE INDEX states_by_time ON states (site, station, ts);

CREATE TABLE batches (
    site text NOT NULL, station text NOT NULL, batch_id text NOT NULL,
    process text, recipe text, started timestamptz, ended timestamptz, outcome text, revision integer,
    mass_in_kg double precision, mass_out_kg double precision, energy_kwh double precision,
    h2_nl double precision, ar_nl double precision, kg_co2e double precision, kwh_per_kg double precision,
    nl_h2_per_kg double precision, kg_co2e_per_kg double precision, trips integer, alarms_raised integer,
    complete boolean,
    start_record jsonb, end_record jsonb,
    PRIMARY KEY (site, station, batch_id));
CREATE INDEX batches_by_end ON batches (ended);

CREATE TABLE descriptions (
    site text NOT NULL, station text NOT NULL, sha256 text NOT NULL,
    first_seen timestamptz NOT NULL, body jsonb NOT NULL,
    PRIMARY KEY (site, station, sha256));

CREATE TABLE gaps (
    site text NOT NULL, station text NOT NULL, boot_id text NOT NULL, stream text NOT NULL,
    first_seq bigint NOT NULL, last_seq bigint NOT NULL,
    opened timestamptz NOT NULL, closed timestamptz,
    explained text,                   -- null: lost (so far) | thinned | refused
    detail text NOT NULL DEFAULT '',
    PRIMARY KEY (site, station, boot_id, stream, first_seq));
CREATE INDEX gaps_open ON gaps (site, station, stream) WHERE closed IS NULL;

-- the outbox's thinning reports (telemetry_thinned events) and refusals: numbers that are missing on purpose
CREATE TABLE explained (
    site text NOT NULL, station text NOT NULL, stream text NOT NULL,
    first_seq bigint NOT NULL, last_seq bigint NOT NULL, why text NOT NULL,
    PRIMARY KEY (site, station, stream, first_seq, last_seq, why));

CREATE TABLE quarantine (
    id bigserial PRIMARY KEY,
    received timestamptz NOT NULL, topic text NOT NULL, payload bytea NOT NULL, reason text NOT NULL);
