"""Where the files the product ships are: board and node files, the node firmware, the MQTT schemas, the
example stations and recipes. The one place that knows; everything else asks here.

Installed from the wheel they are package data under ``edge/data/`` (pyproject.toml maps the repository's
top-level folders there); in a checkout (editable install, ``PYTHONPATH``) they are those top-level folders
themselves. Either way the folder names are the same: ``boards/``, ``mqtt_schemas/``, ``stations/``,
``recipes/``. It lives in the bottom layer so that every layer (and the rig) may ask.
"""

from __future__ import annotations

import functools
import importlib.resources
import pathlib

__all__ = ["boards_dir", "data_root", "example_recipes_dir", "example_stations_dir", "firmware_dir",
           "nodes_dir", "schemas_dir"]


@functools.cache
def data_root() -> pathlib.Path:
    """The folder holding ``boards/``, ``mqtt_schemas/``, ``stations/``, ``recipes/``."""
    package = importlib.resources.files("edge")
    if not isinstance(package, pathlib.Path):   # a zipped install: the C core could not load from it either
        raise RuntimeError(f"edge is installed as {package!r}, not as a folder; install the wheel with pip")
    installed = package / "data"
    return installed if installed.is_dir() else package.parent


def boards_dir() -> pathlib.Path:
    """``boards/NAME.toml``: the controller boards a station may name."""
    return data_root() / "boards"


def nodes_dir() -> pathlib.Path:
    """``boards/nodes/NAME.toml``: the sensor nodes ``reedge flash`` knows."""
    return boards_dir() / "nodes"


def firmware_dir() -> pathlib.Path:
    """``boards/firmware/NAME/``: the sensor-node firmware folders."""
    return boards_dir() / "firmware"


def schemas_dir() -> pathlib.Path:
    """``mqtt_schemas/*.json``: every MQTT message and command is checked against them."""
    return data_root() / "mqtt_schemas"


def example_stations_dir() -> pathlib.Path:
    """``stations/*.toml``: the example stations (the shipped HIL scenarios run them)."""
    return data_root() / "stations"


def example_recipes_dir() -> pathlib.Path:
    """``recipes/*.toml``: the example recipes."""
    return data_root() / "recipes"
