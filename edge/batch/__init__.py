"""Batch records: what went in, what was done, what it consumed, what came out (issue 7).

``accounting``: meter counters -> consumed quantities with roll-over, gaps and completeness;
``record``: the record of one batch, kept in ``STATE_DIR/batches/ID/`` and continued across a power loss;
``report`` and ``export``: the one-page report and the CSV table for LCA tools.
"""
