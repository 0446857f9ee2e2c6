-- The historian asks the stations to re-send its settled gaps (edge/historian/resend.py). The same table and
-- columns as postgresql/0003_resend.sql (read its comments): times are RFC 3339 UTC text, JSON is text.

CREATE TABLE resend_requests (
    command_id TEXT PRIMARY KEY,
    site TEXT NOT NULL, station TEXT NOT NULL, boot_id TEXT NOT NULL, stream TEXT NOT NULL,
    first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    asked_at TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    answered TEXT,
    code TEXT,
    requeued INTEGER,
    missing TEXT);
CREATE INDEX resend_requests_by_range ON resend_requests (site, station, boot_id, stream, first_seq);
CREATE INDEX resend_requests_by_time ON resend_requests (site, station, asked_at);

ALTER TABLE gaps ADD COLUMN unrecoverable TEXT;
