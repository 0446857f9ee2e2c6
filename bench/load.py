"""Background CPU load: busy processes that compete with the sampler for the cores."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

BUSY = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    sum(range(1000))\n"


@contextmanager
def cpu_load(processes: int | None = None, limit_s: float = 600.0) -> Iterator[int]:
    """Run ``processes`` busy loops (default: one per core) for the duration of the block.

    Each loop also ends by itself after ``limit_s``, so nothing outlives a crashed benchmark.
    """
    n = processes if processes is not None else (os.cpu_count() or 1)
    procs = [subprocess.Popen([sys.executable, "-c", BUSY.format(limit=limit_s)]) for _ in range(n)]
    try:
        yield n
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
