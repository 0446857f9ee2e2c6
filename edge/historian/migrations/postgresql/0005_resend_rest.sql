-- Where a station stopped a resend (schema 1.4's reply data rest_from: one resend moves at most 2 MiB): the
-- numbers from there on were not looked at, so asking for them is a first ask, made at once, not a repeat of
-- this one (edge/historian/resend.py). NULL: the station looked at the whole range (or answered before 1.4).
ALTER TABLE resend_requests ADD COLUMN rest_from bigint;
