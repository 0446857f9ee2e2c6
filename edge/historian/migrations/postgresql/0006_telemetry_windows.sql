-- Telemetry is stored a row per window, its channels in one JSON column, and read a row per channel through
-- the view `telemetry` (the same columns, types and rows as the table it replaces). Why: a window's ten rows
-- were most of the server's work of an ingest at plant scale (a heap tuple and an index entry each, the
-- window's keys written ten times): a row per window takes about a quarter of the server's CPU and half the
-- disk (bench/bench_historian.py). A window is written whole by the one transaction that inserted its ledger
-- row (received), so it never needed to be split to be written; readers still see channels.
--
-- `channels`: a JSON array of [channel, unit, last, min, max, mean, count, valid, status] a channel, numbers
-- as JSON numbers (Python's shortest text that reads back as the same double), `status` the flags
-- space-separated. `json` rather than `jsonb`: kept as written, cheaper to insert, read only through the view.
-- A window without channels is a row with `[]` (no rows in the view, as before).
--
-- The rows stored before stay where they are, renamed `telemetry_channels` (with their index), and the view
-- reads them too: nothing is rewritten, so this migration takes no time on a large database and no value
-- passes through a text form.
CREATE TABLE telemetry_windows (
    site text NOT NULL, station text NOT NULL, boot_id text NOT NULL, seq bigint NOT NULL,
    start_utc timestamptz, end_utc timestamptz, channels json NOT NULL);

-- a channel looked up by time (the page, the reports) reads the station's windows of that time; unique by the
-- window's key, as telemetry_by_channel_time is (a window without UTC times, before schema 1.2, has a NULL
-- end_utc, which the index does not compare: the ledger alone keeps it once)
CREATE UNIQUE INDEX telemetry_windows_by_time ON telemetry_windows (site, station, end_utc, boot_id, seq);

ALTER TABLE telemetry RENAME TO telemetry_channels;

CREATE VIEW telemetry AS
SELECT site, station, boot_id, seq, channel, start_utc, end_utc, unit, last, min, max, mean, count, valid, status
FROM telemetry_channels
UNION ALL
SELECT w.site, w.station, w.boot_id, w.seq, c.value->>0, w.start_utc, w.end_utc, c.value->>1,
       (c.value->>2)::double precision, (c.value->>3)::double precision,
       (c.value->>4)::double precision, (c.value->>5)::double precision,
       (c.value->>6)::bigint, (c.value->>7)::bigint, c.value->>8
FROM telemetry_windows AS w CROSS JOIN LATERAL json_array_elements(w.channels) AS c(value);

-- `DELETE FROM telemetry` (a retention job, a test emptying the database) deletes what it names: a row
-- stored before this migration, or the window of a row stored since (a window is stored whole, so deleting
-- any of its channels deletes the window). Each row is found by its table's index (end_utc included: without
-- it each row's delete read every window of the station, hours for a day of a plant's telemetry).
CREATE FUNCTION telemetry_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.end_utc IS NULL THEN
        DELETE FROM telemetry_channels
        WHERE site = OLD.site AND station = OLD.station AND channel = OLD.channel AND end_utc IS NULL
          AND boot_id = OLD.boot_id AND seq = OLD.seq;
        DELETE FROM telemetry_windows
        WHERE site = OLD.site AND station = OLD.station AND end_utc IS NULL AND boot_id = OLD.boot_id
          AND seq = OLD.seq;
    ELSE
        DELETE FROM telemetry_channels
        WHERE site = OLD.site AND station = OLD.station AND channel = OLD.channel AND end_utc = OLD.end_utc
          AND boot_id = OLD.boot_id AND seq = OLD.seq;
        DELETE FROM telemetry_windows
        WHERE site = OLD.site AND station = OLD.station AND end_utc = OLD.end_utc AND boot_id = OLD.boot_id
          AND seq = OLD.seq;
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER telemetry_delete INSTEAD OF DELETE ON telemetry FOR EACH ROW EXECUTE FUNCTION telemetry_delete();
