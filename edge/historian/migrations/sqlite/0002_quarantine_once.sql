-- Quarantine exactly once: a message kept aside is kept once however often it is delivered (redelivered
-- after a reconnect, re-sent by the station). digest = SHA-256 of the topic, a NUL, the payload
-- (store.quarantine_digest; SQLite has no SHA-256: the historian gives this connection that function).
-- The copies kept before this migration are folded into the first one.

ALTER TABLE quarantine ADD COLUMN digest TEXT;
UPDATE quarantine SET digest = reedge_quarantine_digest(topic, payload);
DELETE FROM quarantine WHERE id NOT IN (SELECT min(id) FROM quarantine GROUP BY digest);
CREATE UNIQUE INDEX quarantine_digest ON quarantine (digest);
