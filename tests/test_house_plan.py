"""The house plan (README "Architecture") as checks that fail when someone leaves it.

The import arrows themselves are import-linter's contracts (pyproject.toml, run by ./dev test); these are the
rules it cannot express: one TOML reader, small modules, and every README layout row naming what exists.
"""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
EDGE = ROOT / "edge"
MAX_LINES = 800


def _modules(top: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in top.rglob("*.py") if "__pycache__" not in p.parts)


def _imported(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_reader_kernel_parses_toml() -> None:
    """Every file a technician writes goes through edge.spec.reader: one wording, line and column for syntax."""
    readers = [p.relative_to(ROOT).as_posix() for p in _modules(EDGE) + _modules(ROOT / "hil")
               if "tomllib" in _imported(p)]
    assert readers == ["edge/spec/reader.py"], readers


def test_no_module_of_the_product_is_over_800_lines() -> None:
    long = {p.relative_to(ROOT).as_posix(): n for p in _modules(EDGE)
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these by concern: {long}"


def test_the_readme_layout_names_only_what_exists() -> None:
    """Each `edge/...` path the README's layout table names is in the tree (the table follows moves)."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Layout"):readme.index("## Architecture")]
    named = set(re.findall(r"`((?:edge|hil|cext|boards|mqtt_schemas|tests|bench)/[\w/.]*)`", table))
    assert len(named) > 10, named
    missing = sorted(n for n in named if not (ROOT / n.rstrip("/")).exists())
    assert missing == [], missing
    packages = {p.parent.relative_to(ROOT).as_posix() + "/" for p in EDGE.rglob("__init__.py")
                if "__pycache__" not in p.parts and p.parent != EDGE}
    unnamed = sorted(p for p in packages if p not in named and p.count("/") == 2)
    assert unnamed == [], f"packages the README's layout does not describe: {unnamed}"
