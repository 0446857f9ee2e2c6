-- Telemetry keeps one index instead of two. Its primary key (site, station, boot_id, seq, channel) was never
-- read by a query (the page and the reports look a channel up by time: telemetry_by_channel_time), and each
-- index costs every row on insert: with ten rows a window, the two were a fifth of the server's work of an
-- ingest (bench/bench_historian.py). Exactly once is the ledger's (received): a window's rows are written only
-- by the transaction that inserted its ledger row. The one index is that lookup's, made unique by the window's
-- key (boot_id, seq): a superset of the old key, so no stored data can break it (a window without UTC times,
-- before schema 1.2, has a NULL end_utc, which the index does not compare: the ledger alone keeps it once).
-- Without a primary key, logical replication of the table needs REPLICA IDENTITY FULL (edge/historian/README.md).
-- On a large database this builds one index over every telemetry row (minutes for hundreds of millions, the
-- table refusing writes meanwhile): run `reedge historian migrate` in a quiet hour, the workers stopped.
ALTER TABLE telemetry DROP CONSTRAINT telemetry_pkey;
DROP INDEX telemetry_by_channel_time;
CREATE UNIQUE INDEX telemetry_by_channel_time ON telemetry (site, station, channel, end_utc, boot_id, seq);
