"""The plant's side of the shared register file (``cext/sim_regs.h``).

The layout comes from the same header the C ``sim`` driver uses, through the core's
cffi module, so the two sides cannot disagree about an offset. The plant owns the
inputs (``ai``, ``ai_fault``, ``di``) and the clock; it only reads the outputs.
"""

from __future__ import annotations

import mmap
import os
import pathlib
import tempfile
import time
from types import TracebackType
from typing import Any

from edge.core import CoreError, native

CLOCK_WALL = 0
CLOCK_PLANT = 1


def default_dir() -> pathlib.Path:
    """/dev/shm when there is one (RAM, as fast as the real thing), else the temp dir."""
    shm = pathlib.Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else pathlib.Path(tempfile.gettempdir())


class RegisterFile:
    """A mapped register file. ``RegisterFile.create(path)`` makes a fresh one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._ffi, lib = native()
        self.path = pathlib.Path(path)
        size = self._ffi.sizeof("sim_regs")
        with open(self.path, "r+b") as f:
            if os.fstat(f.fileno()).st_size < size:
                raise CoreError(-1, f"{self.path}: too small for a register file ({size} bytes expected)")
            self._mm: mmap.mmap | None = mmap.mmap(f.fileno(), size)
        self.regs: Any = self._ffi.from_buffer("sim_regs *", self._mm)
        if self.regs.magic != lib.SIM_REGS_MAGIC or self.regs.version != lib.SIM_REGS_VERSION:
            self.close()
            raise CoreError(-1, f"{self.path}: not a version {lib.SIM_REGS_VERSION} register file")

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> RegisterFile:
        ffi, lib = native()
        err = ffi.new("char[]", 256)
        if lib.ec_sim_create(os.fsencode(path), err, 256) != 0:
            raise CoreError(-4, ffi.string(err).decode())
        return cls(path)

    def close(self) -> None:
        if self._mm is not None:
            if self.regs is not None:
                self._ffi.release(self.regs)  # drop the buffer export so the map can close
                self.regs = None
            self._mm.close()
            self._mm = None

    def __enter__(self) -> RegisterFile:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # the plant's clock: used by the core when clock_mode is CLOCK_PLANT
    def use_plant_clock(self, start_ns: int = 0, time_scale: float = 1.0) -> None:
        self.regs.plant_ns = start_ns
        self.regs.time_scale = time_scale
        self.regs.clock_mode = CLOCK_PLANT

    def advance(self, dt_ns: int) -> None:
        self.regs.plant_ns += dt_ns

    def set_ai(self, index: int, value: float, fault: bool = False) -> None:
        self.regs.ai[index] = value
        self.regs.ai_fault[index] = 1 if fault else 0

    def set_di(self, index: int, level: int | bool) -> None:
        self.regs.di[index] = 1 if level else 0

    def do(self, index: int) -> int:
        return int(self.regs.do_level[index])

    def do_on_ns(self, index: int) -> int:
        """Core-clock ns output ``index`` has spent at level 1 (summed by the core at every write)."""
        return int(self.regs.do_on_ns[index])

    def do_changed_wall_ns(self, index: int) -> int:
        return int(self.regs.do_changed_wall_ns[index])

    @property
    def core_ticks(self) -> int:
        return int(self.regs.core_ticks)

    def wait_for_output(self, index: int, level: int, timeout_s: float) -> bool:
        """Poll until output ``index`` reads ``level``; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.do(index) == level:
                return True
            time.sleep(0.0002)
        return self.do(index) == level
