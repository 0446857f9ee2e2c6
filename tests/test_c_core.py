"""Build and run the C unit tests under AddressSanitizer and UndefinedBehaviorSanitizer.

Each ``cext/tests/test_*.c`` is compiled together with every core source into its own
program. A sanitizer report aborts the program (``-fno-sanitize-recover``), so any
memory or undefined-behaviour error fails the test, as does any failed CHECK.
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


@pytest.fixture(scope="session")
def c_build_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is required to build the C tests")
    return tmp_path_factory.mktemp("ctests")


@pytest.mark.parametrize("source", C_TESTS, ids=[p.stem for p in C_TESTS])
def test_c_unit(source: pathlib.Path, c_build_dir: pathlib.Path) -> None:
    exe = c_build_dir / source.stem
    core_sources = [str(p) for p in sorted(CEXT.glob("*.c"))]
    extra = [str(p) for p in sorted((CEXT / "tests").glob("support_*.c"))]
    cmd = ["gcc", *CFLAGS, *SANITIZE, "-I", str(CEXT), "-I", str(CEXT / "tests"),
           str(source), *core_sources, *extra, "-o", str(exe), "-lm", "-lpthread"]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, f"build failed:\n{build.stderr}"
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300, env=env, cwd=c_build_dir)
    summary = re.search(r"^(\d+) passed, (\d+) failed$", run.stdout, re.M)
    assert run.returncode == 0, f"{source.name} failed (exit {run.returncode}):\n{run.stdout}\n{run.stderr}"
    assert summary is not None, f"{source.name} printed no summary:\n{run.stdout}"
    assert int(summary.group(1)) > 0 and int(summary.group(2)) == 0, run.stdout
