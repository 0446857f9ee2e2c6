-- Where a station stopped a resend: the same column as postgresql/0005_resend_rest.sql (read its comment).
ALTER TABLE resend_requests ADD COLUMN rest_from INTEGER;
