-- PostgreSQL's 0004 merges the telemetry table's two indexes into one (its insert cost at plant scale). The
-- embedded SQLite store keeps both: its telemetry table is clustered on its key (WITHOUT ROWID), and the merge
-- would rebuild every row of it for a site small enough to run on SQLite. Numbered so that both engines name
-- the same schema version.
SELECT 1;
