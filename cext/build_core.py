"""cffi build script for ``edge._core`` (API, out-of-line mode).

The cdef is not written by hand: it is the region between ``/* CDEF-BEGIN */`` and
``/* CDEF-END */`` of the public headers, so the header stays the one contract and the
Python binding cannot drift from it. ``pip install .`` runs this through setuptools'
``cffi_modules``; nothing compiles at import time.
"""

from __future__ import annotations

import pathlib
import re

from cffi import FFI

CEXT = pathlib.Path(__file__).resolve().parent
HEADERS = ("sim_regs.h", "edge_core.h")
SOURCES = sorted(p.name for p in CEXT.glob("*.c"))
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-D_GNU_SOURCE"]

_REGION = re.compile(r"/\* CDEF-BEGIN \*/(.*?)/\* CDEF-END \*/", re.S)


def cdef_text() -> str:
    """The cdef: the marked regions of the headers, in include order."""
    parts = []
    for name in HEADERS:
        text = (CEXT / name).read_text()
        found = _REGION.findall(text)
        if len(found) != 1:
            raise RuntimeError(f"{name}: expected one CDEF-BEGIN/CDEF-END region, found {len(found)}")
        parts.append(found[0])
    return "\n".join(parts)


def make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef(cdef_text())
    ffi.set_source(
        "edge._core",
        '#include "sim_regs.h"\n#include "edge_core.h"\n',
        sources=[f"cext/{s}" for s in SOURCES],  # relative: setuptools wants them so
        include_dirs=["cext"],
        extra_compile_args=CFLAGS,
        libraries=["m", "pthread"],
    )
    return ffi


ffibuilder = make_ffi()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
