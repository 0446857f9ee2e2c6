"""Suite-wide: the tests marked slow (HIL runs, the demo, MQTT end to end) start first, on every worker.

``./dev test`` runs pytest-xdist with ``--dist worksteal``, which hands worker *k* the *k*-th contiguous slice
of the collection and lets an idle worker steal the tail half of a busy one's queue. With every slow test
sorted to the front they all sat in the first worker's slice: the others stole its cheap tail and the suite
ended with one long HIL run going alone (a sintering cycle, over a minute, in a fresh-clone run). So each
worker's slice starts with its share of the slow tests (dealt round-robin in file order), filled up with
short tests to the slice size worksteal cuts, and the short tests fill in at the end of every worker.
In one process the order changes nothing but when each result appears: slow tests first.

A module marked ``one_worker`` (``pytestmark``) keeps its slow tests together on one worker: they share
a module-scoped fixture that is expensive to build (the wheel and its venv), which every worker running
one of them would otherwise build again, both at once on the same two cores.
"""

from __future__ import annotations

import os

import pytest

from tests.historian_db import db_url_fixture, pg_server_fixture, store_fixture  # noqa: F401  (one PostgreSQL a worker)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    short = [item for item in items if item.get_closest_marker("slow") is None]
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)   # set on each xdist worker
    if workers <= 1:
        items[:] = slow + short
        return
    units = _units(slow)
    ordered: list[pytest.Item] = []
    remaining = len(items)
    for k in range(workers):
        size = remaining // (workers - k)          # the slice worksteal sends worker k (it divides the same way)
        mine = [item for unit in units[k::workers] for item in unit]
        take = max(0, size - len(mine))
        ordered += mine + short[:take]
        del short[:take]
        remaining -= size
    ordered += short                               # nothing left unless the slow tests overfilled a slice
    assert len(ordered) == len(items)
    items[:] = ordered


def _units(slow: list[pytest.Item]) -> list[list[pytest.Item]]:
    """The slow tests as units to deal: one test each, or all of a ``one_worker`` module's, in file order."""
    units: list[list[pytest.Item]] = []
    together: dict[str, list[pytest.Item]] = {}
    for item in slow:
        if item.get_closest_marker("one_worker") is None:
            units.append([item])
            continue
        module = item.nodeid.partition("::")[0]
        if module not in together:
            together[module] = []
            units.append(together[module])
        together[module].append(item)
    return units
