"""Suite-wide: the tests marked slow (HIL runs, the demo, MQTT end to end) are collected first.

With two workers (``./dev test`` runs pytest-xdist, ``--dist worksteal``) the long runs then start at once
and the short tests fill in around them, instead of one long run starting last and keeping a worker busy
alone at the end. In one process the order changes nothing but when each result appears.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)   # stable: file order kept otherwise
