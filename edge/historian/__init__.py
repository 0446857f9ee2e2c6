"""The plant historian (``reedge historian``): every station's stream into a database, exactly once.

**The promise**: "nothing lost" holds from the furnace to the database. A station's outbox keeps each
message until the broker has it; the historian's persistent MQTT session keeps it at the broker until the
database transaction that stored it (or quarantined it, or recognised it as a duplicate) has committed,
and only then acknowledges it. What is missing anyway is known and said: gaps are rows, closed when the
late messages come, explained when the outbox thinned them, asked for again from the station's history
(``resend``), and a lost tail is told from a quiet stream by the boot's birth.

The layers, each its own module:

* ``store``: one small interface over SQLite (the embedded default) and PostgreSQL (the plant's), and the
  versioned migrations (``migrations/{dialect}/NNNN_*.sql``);
* ``ingest``: a batch of received messages checked with ``reedge tail``'s checks and stored in one
  transaction: the ``received`` ledger makes it exactly once;
* ``gaps``: coverage and gaps per (site, station, boot, stream), kept in the database so that it survives a
  restart and N workers share it;
* ``resend``: the stations asked to re-send the settled gaps (what a broker lost after acknowledging it),
  their answers matched, what they no longer hold marked unrecoverable;
* ``consumer``: the MQTT 5 shared-subscription consumer that batches, ingests and acknowledges after commit;
* ``figures`` and ``web``: the plant's figures per station and month, and the read-only fleet page;
* ``cli``: ``reedge historian run | migrate | report | gaps | retire``.

It sits beside the station's code (``edge.telemetry``, whose topics, envelope and checks it reuses), never
under it: a station never imports it, and psycopg is loaded only when a PostgreSQL URL is opened.
"""
