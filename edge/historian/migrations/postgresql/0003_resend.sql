-- The historian asks the stations to re-send its settled gaps (edge/historian/resend.py). One row per ask: a
-- command id of its own (a station answers a command id once), the range asked for, when, the how-manieth ask
-- of that range it is, and the station's answer (reply/resend: its code, how many it re-queued, the numbers it
-- no longer holds). Kept in the database so two workers never ask twice for one range and a restart continues.
-- A gap part the station no longer holds is unrecoverable: never asked again, shown as such.

CREATE TABLE resend_requests (
    command_id text PRIMARY KEY,
    site text NOT NULL, station text NOT NULL, boot_id text NOT NULL, stream text NOT NULL,
    first_seq bigint NOT NULL, last_seq bigint NOT NULL,
    asked_at timestamptz NOT NULL,
    attempts integer NOT NULL,        -- 1 for the first ask of these numbers, one more for each ask again
    answered timestamptz,             -- null: no answer (yet)
    code text,                        -- the reply's code (ok, busy, unauthorised, not_allowed, ...)
    requeued bigint,                  -- the reply's data: how many the station put in its outbox again
    missing jsonb);                   -- and the ranges it no longer holds, [[first, last], ...]
CREATE INDEX resend_requests_by_range ON resend_requests (site, station, boot_id, stream, first_seq);
CREATE INDEX resend_requests_by_time ON resend_requests (site, station, asked_at);

ALTER TABLE gaps ADD COLUMN unrecoverable timestamptz;   -- when the station said it no longer holds these
