"""Build and run the C unit tests under AddressSanitizer and UndefinedBehaviorSanitizer.

Each ``cext/tests/test_*.c`` is linked with every core source into its own program. The core
sources (and the tests' support sources) are compiled once per session into objects with the
same flags, not once per test: that compile is most of the time (31 s for one test's whole build
on the loaded 2-core machine, 6.6 s for the test file and the link once the objects exist). A
sanitizer report aborts the program (``-fno-sanitize-recover``), so any memory or
undefined-behaviour error fails the test, as does any failed CHECK.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CEXT = ROOT / "cext"
C_TESTS = sorted((CEXT / "tests").glob("test_*.c"))
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
CFLAGS = ["-std=c11", "-g", "-O1", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-D_GNU_SOURCE"]


INCLUDE = ["-I", str(CEXT), "-I", str(CEXT / "tests")]


@pytest.fixture(scope="session")
def c_build_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is required to build the C tests")
    return tmp_path_factory.mktemp("ctests")


@pytest.fixture(scope="session")
def c_objects(c_build_dir: pathlib.Path) -> list[str]:
    """Every core source and test support source compiled once (all at a time), with the tests' flags."""
    sources = sorted(CEXT.glob("*.c")) + sorted((CEXT / "tests").glob("support_*.c"))
    objects = [c_build_dir / f"{p.parent.name}_{p.stem}.o" for p in sources]
    builds = [subprocess.Popen(["gcc", *CFLAGS, *SANITIZE, *INCLUDE, "-c", str(src), "-o", str(obj)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for src, obj in zip(sources, objects, strict=True)]
    failed = [f"{src.name}:\n{out}" for src, b in zip(sources, builds, strict=True)
              if (out := b.communicate()[0]) is not None and b.returncode != 0]
    assert not failed, "build failed:\n" + "\n".join(failed)
    return [str(o) for o in objects]


@pytest.mark.parametrize("source", C_TESTS, ids=[p.stem for p in C_TESTS])
def test_c_unit(source: pathlib.Path, c_build_dir: pathlib.Path, c_objects: list[str]) -> None:
    exe = c_build_dir / source.stem
    cmd = ["gcc", *CFLAGS, *SANITIZE, *INCLUDE, str(source), *c_objects, "-o", str(exe), "-lm", "-lpthread"]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, f"build failed:\n{build.stderr}"
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300, env=env, cwd=c_build_dir)
    summary = re.search(r"^(\d+) passed, (\d+) failed$", run.stdout, re.M)
    assert run.returncode == 0, f"{source.name} failed (exit {run.returncode}):\n{run.stdout}\n{run.stderr}"
    assert summary is not None, f"{source.name} printed no summary:\n{run.stdout}"
    assert int(summary.group(1)) > 0 and int(summary.group(2)) == 0, run.stdout
