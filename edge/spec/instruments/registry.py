"""The instrument kinds a station file may name in ``[instruments.NAME] type``: each kind registers its reader.

A kind's module (``pfeiffer``, ``modbus``) calls ``register`` when it is imported; the package imports every
kind, so the station reader only looks a type up here and never names one (Klipper maps a config section to
the module that owns it the same way). A new kind is a new module and one line in ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from edge.spec.reader import Table

#: Reads one ``[instruments.NAME]`` table of its kind (reporting every problem to the table) and gives the
#: config, or None when the table is broken; it checks every key of the table (``Table.finish``).
InstrumentReader = Callable[[Table], object]

_KINDS: dict[str, InstrumentReader] = {}


def register(type_name: str, reader: InstrumentReader) -> None:
    """Make ``type = "type_name"`` mean ``reader``; a name is registered once."""
    if type_name in _KINDS:
        raise ValueError(f"instrument type {type_name!r} is registered twice")
    _KINDS[type_name] = reader


def instrument_kinds() -> Mapping[str, InstrumentReader]:
    """Type name -> reader, in registration order."""
    return dict(_KINDS)
