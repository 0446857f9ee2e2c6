-- Quarantine exactly once: a message kept aside is kept once however often it is delivered (redelivered
-- after a reconnect, re-sent by the station). digest = SHA-256 of the topic, a NUL, the payload
-- (store.quarantine_digest computes the same). The copies kept before this migration are folded into the
-- first one.

ALTER TABLE quarantine ADD COLUMN digest text;
UPDATE quarantine SET digest = encode(sha256(convert_to(topic, 'UTF8') || '\x00'::bytea || payload), 'hex');
DELETE FROM quarantine q USING quarantine o WHERE q.digest = o.digest AND q.id > o.id;
CREATE UNIQUE INDEX quarantine_digest ON quarantine (digest);
