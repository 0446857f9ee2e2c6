"""A second process that drives a register file, one command per line on stdin.

``python -m tests.regfile_puppet PATH`` then lines such as ``ai 0 700.5``,
``fault 2 1``, ``di 1 0``; each is applied and acknowledged with ``ok <wall_ns>``
(CLOCK_MONOTONIC just after the write), so the test can measure from the change to
the core's reaction. It stands where the plant will stand: outside the controller.
"""

from __future__ import annotations

import sys
import time

from hil.regfile import RegisterFile


def main(path: str) -> int:
    regs = RegisterFile(path)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        kind, index, value = words[0], int(words[1]), float(words[2])
        if kind == "ai":
            regs.regs.ai[index] = value
        elif kind == "fault":
            regs.regs.ai_fault[index] = int(value)
        elif kind == "di":
            regs.set_di(index, int(value))
        else:
            print(f"error unknown command {kind}", flush=True)
            continue
        print(f"ok {time.monotonic_ns()}", flush=True)
    regs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
