"""Where the rig's own shipped files are: the HIL scenarios and the virtual node's JavaScript runner. The
product's files (stations, recipes, boards, schemas) are found through ``edge.spec.resources``.

They are package data of ``hil`` (pyproject.toml lists them), in the wheel and in a checkout alike.
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib

from edge.spec import resources as product

__all__ = ["scenario_reference", "scenarios_dir", "virtual_node_dir"]


def _package(name: str) -> pathlib.Path:
    folder = importlib.resources.files(name)   # a folder of data files alone is a namespace: ask its package
    if not isinstance(folder, pathlib.Path):   # node and the plant process need real files
        raise RuntimeError(f"{name} is installed as {folder!r}, not as a folder; install the wheel with pip")
    return folder


def scenarios_dir() -> pathlib.Path:
    """``hil/scenarios/*.toml``: the shipped scenarios (``reedge demo`` runs ``hd_normal_batch.toml``)."""
    return _package("hil") / "scenarios"


def virtual_node_dir() -> pathlib.Path:
    """``hil/virtual_node/``: ``runner.mjs``, ``worker.mjs``, ``package.json`` and the ``machine`` module."""
    return _package("hil") / "virtual_node"


def scenario_reference(scenario: pathlib.Path, name: str) -> pathlib.Path:
    """The file a scenario names (``station``, ``recipe``): relative to the scenario file.

    A shipped scenario names the example stations and recipes as ``../../stations/X``, their place in the
    repository; installed, they are the product's package data. So a shipped scenario's names are read as
    if it sat at ``hil/scenarios/`` under the product's data root (the repository's root in a checkout,
    where that is the same file).
    """
    if scenario.resolve().parent == scenarios_dir().resolve():
        return pathlib.Path(os.path.normpath(product.data_root() / "hil" / "scenarios" / name)).resolve()
    return (scenario.parent / name).resolve()
