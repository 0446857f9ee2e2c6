"""What a Raspberry Pi's ``config.txt`` really switches on, read as the boot firmware reads it, so that
``reedge provision`` prints a to-do for each setting a station needs that the board will not get.

The firmware's rules (Raspberry Pi documentation, "The config.txt file" and "Device Trees"), and what
is done with each here:

- one ``key=value`` per line; only a line *starting* with ``#`` is a comment (``dtparam=spi=on # SPI``
  has the value ``on # SPI``); spaces around ``=`` make the firmware ignore the line; characters past
  the 98th are ignored;
- ``[filter]`` lines make what follows conditional: model filters (``[pi4]``, ``[pi5]``, ``[cm4]``...)
  replace each other, ``[all]`` ends every filter, ``[none]`` turns everything off. The board file
  names the model filters its board matches (``config_txt_filters``); any other condition (``[gpio4=1]``,
  ``[HDMI:0]``, ``[0x12345678]``, ``[tryboot]``) cannot be known here, so settings under it do not count;
- the last value of a key wins (``dtparam=spi=on`` then ``dtparam=spi=off`` is off);
- ``dtparam=a=on,b=off`` sets several parameters; a bare ``dtparam=spi`` means on; after ``dtoverlay=NAME``
  a parameter that overlay exports is the overlay's, not the base tree's, until the next ``dtoverlay=``
  (a bare ``dtoverlay=`` returns to the base). Whether it exports one is read from ``overlays/NAME.dtbo``
  beside ``config.txt`` (its parameter names are strings in the blob); no such file, no export;
- ``include FILE`` reads another file of the boot folder in place.

A setting that does not count for one of these reasons is named with its line, so the technician sees
why ``dtparam=spi=on`` in the file is still a to-do. Fail safe: unsure means not enabled.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

LINE_LIMIT = 98
ON = ("on", "true", "yes", "okay", "1")
#: model filters the firmware knows; a board matches some (boards/*.toml [board] config_txt_filters)
MODEL_FILTERS = frozenset({"pi0", "pi0w", "pi02", "pi1", "pi2", "pi3", "pi3+", "pi4", "pi400", "pi5", "pi500",
                           "cm1", "cm3", "cm3+", "cm4", "cm4s", "cm5"})
MAX_INCLUDE_DEPTH = 4


@dataclass
class FirmwareConfig:
    """The settings that apply to one board: base device-tree parameters, overlays, other properties,
    and for each name the reason a line that looked like it did not count (for the to-do)."""

    params: dict[str, str] = field(default_factory=dict)        # base dtparams, last value
    overlays: dict[str, str] = field(default_factory=dict)      # dtoverlay name -> where it is loaded
    properties: dict[str, str] = field(default_factory=dict)    # enable_uart=1 and the like
    why_not: dict[str, str] = field(default_factory=dict)       # setting name -> why a line did not count

    def has(self, setting: str) -> bool:
        """``dtparam=spi=on``, ``dtoverlay=spi1-3cs`` or ``key=value``: does the board get it?"""
        key, _, value = setting.partition("=")
        if key == "dtparam":
            name, _, wanted = value.partition("=")
            got = self.params.get(name)
            if got is None:
                return False
            return (got in ON) == ((wanted or "on") in ON)
        if key == "dtoverlay":
            return _overlay_name(value) in self.overlays
        return self.properties.get(key) == value

    def reason(self, setting: str) -> str:
        key, _, value = setting.partition("=")
        name = (value.split("=")[0] if key == "dtparam" else _overlay_name(value) if key == "dtoverlay" else key)
        return self.why_not.get(name, "")


def read_config_txt(path: pathlib.Path, filters: Sequence[str]) -> FirmwareConfig:
    """``path`` (and what it includes) as the firmware of a board matching ``filters`` applies it."""
    config = FirmwareConfig()
    _Reader(config, frozenset(filters)).read(path, path.name, 0)
    return config


class _Reader:
    def __init__(self, config: FirmwareConfig, filters: frozenset[str]) -> None:
        self.config = config
        self.filters = filters
        self.model_ok = True          # the model filter in force matches this board
        self.unknown: str | None = None   # a condition that cannot be judged here, until [all]
        self.none = False
        self.overlay: tuple[str, str] | None = None   # the overlay whose parameters are in scope, and where
        self.boot: pathlib.Path | None = None          # the folder of config.txt: overlays/ is there

    def read(self, path: pathlib.Path, name: str, depth: int) -> None:
        if self.boot is None:
            self.boot = path.parent
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return
        for number, raw in enumerate(text.splitlines(), start=1):
            self.line(raw[:LINE_LIMIT], f"{name} line {number}", path, depth)

    def line(self, line: str, where: str, path: pathlib.Path, depth: int) -> None:
        s = line.strip()
        if not s or s.startswith("#"):
            return
        if s.startswith("["):
            self.section(s[1:].split("]", 1)[0].strip())
            return
        key, eq, value = s.partition("=")
        if not eq:
            word, _, rest = s.partition(" ")
            if word == "include" and rest.strip() and depth < MAX_INCLUDE_DEPTH and self.applies() is None:
                self.read(path.parent / rest.strip(), rest.strip(), depth + 1)
            return
        names = self.names(key, value)
        skipped = self.applies()
        if skipped is not None:
            self.note(names, f"{where} is under {skipped}")
            return
        if key != key.rstrip() or value != value.lstrip():
            self.note(names, f"{where} has spaces around '=': the firmware ignores such a line")
            return
        if "#" in value:
            self.note(names, f"{where} has a comment after the value: only a line starting with # is a comment")
            return
        if key == "dtoverlay":
            overlay = _overlay_name(value)
            self.overlay = (overlay, where) if overlay else None
            if overlay:
                self.config.overlays[overlay] = where
        elif key == "dtparam":
            for item in value.split(","):
                param, _, setting = item.partition("=")
                if self.overlay is not None and self.exports(self.overlay[0], param):
                    self.note([param], f"{where} follows dtoverlay={self.overlay[0]} of {self.overlay[1]}, which has "
                                       f"its own '{param}' parameter: put the line before the first dtoverlay, or "
                                       "after a bare 'dtoverlay='")
                    continue
                self.config.params[param] = setting or "on"
                if (setting or "on") in ON:
                    self.config.why_not.pop(param, None)
                else:
                    self.config.why_not[param] = f"{where} sets {param}={setting}"
        else:
            self.config.properties[key] = value

    def exports(self, overlay: str, param: str) -> bool:
        """Does ``overlays/OVERLAY.dtbo`` name a parameter ``param``? Its names are NUL-ended strings in the blob."""
        assert self.boot is not None
        try:
            blob = (self.boot / "overlays" / f"{overlay}.dtbo").read_bytes()
        except OSError:
            return False
        return re.search(b"(?:^|\\0)" + re.escape(param.encode()) + b"\\0", blob) is not None

    def section(self, name: str) -> None:
        if name == "all":
            self.model_ok, self.unknown, self.none = True, None, False
        elif name == "none":
            self.none = True
        elif name in MODEL_FILTERS:
            self.model_ok = name in self.filters
        else:
            self.unknown = name

    def applies(self) -> str | None:
        """None when what follows applies to this board; else the section that stops it."""
        if self.none:
            return "[none]"
        if not self.model_ok:
            return "a model filter this board does not match"
        if self.unknown is not None:
            return f"[{self.unknown}], a condition reedge cannot check"
        return None

    def names(self, key: str, value: str) -> list[str]:
        if key.strip() == "dtparam":
            return [item.partition("=")[0].strip() for item in value.split(",")]
        if key.strip() == "dtoverlay":
            return [_overlay_name(value.strip())]
        return [key.strip()]

    def note(self, names: Sequence[str], why: str) -> None:
        for name in names:
            self.config.why_not[name] = why


def _overlay_name(value: str) -> str:
    """``spi1-3cs,cs0_pin=18`` and ``lirc-rpi:gpio_out_pin=16`` name the overlays ``spi1-3cs`` and ``lirc-rpi``."""
    return re.split(r"[,:]", value, maxsplit=1)[0]
