"""The only module that touches the C core ``edge._core``."""
from __future__ import annotations

from typing import Any


def native() -> tuple[Any, Any]:
    """(ffi, lib) of the compiled core; built by ``pip install``, never at import."""
    from edge import _core

    return _core.ffi, _core.lib
