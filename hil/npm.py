"""Node.js packages the rig and the tests run: one way to have them, for the virtual node and the AsyncAPI check.

A folder holds a ``package.json`` pinning the package and its ``package-lock.json``; :func:`ensure_installed`
runs ``npm ci`` there once per checkout (``node_modules/`` is not in git), so the network is used only when
the pinned version is not installed yet, never on every run. ``--ignore-scripts``: nothing the packages
ship runs at install (one of the AsyncAPI parser's dependencies has an analytics ``postinstall``).
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from pathlib import Path

NPM_CI_TIMEOUT_S = 600.0   # a safety net for a slow mirror, not a measurement


def node(min_version: tuple[int, int], needed_by: str, error: type[Exception]) -> str:
    """The path of Node.js >= ``min_version``; raises ``error`` naming ``needed_by`` when missing or too old."""
    path = shutil.which("node")
    if path is None:
        raise error(f"{needed_by} needs Node.js >= {min_version[0]}.{min_version[1]} on PATH "
                    "(apt-get install nodejs)")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    try:
        major, minor = (int(x) for x in out.lstrip("v").split(".")[:2])
    except ValueError:
        raise error(f"cannot read the Node.js version from {out!r}") from None
    if (major, minor) < min_version:
        raise error(f"Node.js {out} is too old for {needed_by} (needs >= {min_version[0]}.{min_version[1]})")
    return path


def installed_version(folder: Path, package: str) -> str | None:
    """The version of ``package`` in ``folder/node_modules``, None when it is not installed."""
    try:
        version = json.loads((folder / "node_modules" / package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return str(version)


def ensure_installed(folder: Path, package: str, version: str, error: type[Exception]) -> None:
    """``package@version`` installed in ``folder`` by ``npm ci`` from its lock file, unless it already is.

    Safe to call from parallel test processes: the install runs under a file lock in the folder.
    """
    if installed_version(folder, package) == version:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise error(f"{package}@{version} is not installed in {folder}/node_modules and npm is "
                    "missing: install npm (apt-get install npm) or run `npm ci` there")
    with open(folder / ".npm-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed_version(folder, package) != version:
            done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                                  cwd=folder, capture_output=True, text=True, check=False, timeout=NPM_CI_TIMEOUT_S)
            if done.returncode != 0 or installed_version(folder, package) != version:
                raise error(f"`npm ci` in {folder} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
