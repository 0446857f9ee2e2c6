-- Telemetry is stored a row per window, its channels in one JSON column, and read a row per channel through
-- the view `telemetry`: as postgresql/0006_telemetry_windows.sql (read its comment), so both engines keep the
-- same tables and the historian one way of writing a window. The rows stored before stay in
-- `telemetry_channels`: SQLite's own number-to-text conversion is not exact for the largest doubles, so
-- moving them into JSON could change their last bits.
CREATE TABLE telemetry_windows (
    site TEXT NOT NULL, station TEXT NOT NULL, boot_id TEXT NOT NULL, seq INTEGER NOT NULL,
    start_utc TEXT, end_utc TEXT, channels TEXT NOT NULL,
    PRIMARY KEY (site, station, boot_id, seq)) WITHOUT ROWID;
CREATE INDEX telemetry_windows_by_time ON telemetry_windows (site, station, end_utc);

ALTER TABLE telemetry RENAME TO telemetry_channels;

CREATE VIEW telemetry AS
SELECT site, station, boot_id, seq, channel, start_utc, end_utc, unit, last, min, max, mean, count, valid, status
FROM telemetry_channels
UNION ALL
SELECT w.site, w.station, w.boot_id, w.seq, json_extract(c.value, '$[0]'), w.start_utc, w.end_utc,
       json_extract(c.value, '$[1]'), json_extract(c.value, '$[2]'), json_extract(c.value, '$[3]'),
       json_extract(c.value, '$[4]'), json_extract(c.value, '$[5]'), json_extract(c.value, '$[6]'),
       json_extract(c.value, '$[7]'), json_extract(c.value, '$[8]')
FROM telemetry_windows AS w, json_each(w.channels) AS c;

-- as postgresql/0006: deleting a row deletes it, or the window it belongs to
CREATE TRIGGER telemetry_delete INSTEAD OF DELETE ON telemetry
BEGIN
    DELETE FROM telemetry_channels
    WHERE site = OLD.site AND station = OLD.station AND boot_id = OLD.boot_id AND seq = OLD.seq
      AND channel = OLD.channel;
    DELETE FROM telemetry_windows
    WHERE site = OLD.site AND station = OLD.station AND boot_id = OLD.boot_id AND seq = OLD.seq;
END;
