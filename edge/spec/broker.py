"""Where the MQTT brokers are and how to reach them: ``--broker`` URLs and the ``[mqtt]`` broker keys.

One parser for both places, so a technician reads the same error whether the URL came from the
command line or the station file. What is accepted:

* ``mqtt://host[:port]`` (plain TCP, default port 1883) and ``mqtts://host[:port]`` (TLS, default
  8883); IPv6 hosts in brackets (``mqtt://[::1]:1883``). Several URLs separated by commas are a
  failover list, tried in order.
* No credentials, path, query or fragment in a URL: a password in a URL ends up in process lists,
  shell history and logs. Credentials live in the station file (``username``, ``password_file``).

The ``[mqtt]`` section is shared with the command settings (``edge.telemetry.access``);
``read_broker_settings`` reads only the keys in ``BROKER_KEYS`` and returns its problems as
``(key, message)`` pairs for ``edge.spec.station`` to report with the file name and key path, so that every
other key of the section stays the other reader's business.

TLS verification is always on for ``mqtts://``: the server certificate must chain to ``ca_file`` (or
the system's CAs when none is given) and name the host. There is deliberately no switch to turn it
off; a plant network with its own CA sets ``ca_file``.
"""

from __future__ import annotations

import ipaddress
import os
import pathlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BROKER_KEYS",
    "BrokerSettings",
    "BrokerSettingsError",
    "BrokerUrl",
    "BrokerUrlError",
    "Protocol",
    "parse_broker_list",
    "parse_broker_url",
    "read_broker_settings",
]

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?")
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
MAX_BROKERS = 16

Protocol = Literal["auto", "5", "3.1.1"]
PROTOCOLS: tuple[Protocol, ...] = ("auto", "5", "3.1.1")

#: The [mqtt] keys this module reads; the rest of the section belongs to the command settings.
BROKER_KEYS = ("brokers", "client_id", "keepalive_s", "connect_timeout_s", "session_expiry_s", "protocol",
               "ca_file", "cert_file", "key_file", "username", "password_file", "backoff_min_s", "backoff_max_s",
               "max_inflight")


class BrokerUrlError(ValueError):
    """A broker URL (or list) that cannot be used; the message says which one and why."""


class BrokerSettingsError(BrokerUrlError):
    """Broker settings that do not fit together; ``problems`` holds ``(key, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{key}: {message}" for key, message in problems))
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """One broker: ``tls`` is True for ``mqtts://``."""

    host: str
    port: int
    tls: bool

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_broker_url(text: str) -> BrokerUrl:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` -> ``BrokerUrl``; anything else is a ``BrokerUrlError``."""
    if not isinstance(text, str):
        raise BrokerUrlError(f"a broker URL must be a string like mqtt://host:1883, got {type(text).__name__}")
    raw = text.strip()
    scheme, sep, rest = raw.partition("://")
    if not sep:
        raise BrokerUrlError(f"{raw!r}: expected mqtt://host[:port] or mqtts://host[:port]")
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        hint = " (use mqtts:// for TLS)" if scheme in ("ssl", "tls", "tcp+tls") else ""
        raise BrokerUrlError(f"{raw!r}: unknown scheme {scheme!r}, expected mqtt or mqtts{hint}")
    if "@" in rest:
        raise BrokerUrlError(f"{_redact(raw)}: no credentials in a broker URL (they would show in process lists"
                             " and logs); set username and password_file in the station file's [mqtt] section")
    if any(c in rest for c in "/?#"):
        if rest.endswith("/") and not any(c in rest[:-1] for c in "/?#"):
            rest = rest[:-1]
        else:
            raise BrokerUrlError(f"{raw!r}: a broker URL has no path, query or fragment")
    host, port_text = _split_host_port(raw, rest)
    port = DEFAULT_PORTS[scheme]
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise BrokerUrlError(f"{raw!r}: port must be a number from 1 to 65535, got {port_text!r}")
        port = int(port_text)
    return BrokerUrl(host, port, scheme == "mqtts")


def parse_broker_list(text: str | list[str] | tuple[str, ...]) -> tuple[BrokerUrl, ...]:
    """Comma-separated URLs (or a list of them) -> the failover list, in order, without repeats."""
    items = text.split(",") if isinstance(text, str) else list(text)
    if not items or all(isinstance(i, str) and not i.strip() for i in items):
        raise BrokerUrlError("no broker given: expected mqtt://host[:port] or mqtts://host[:port], comma-separated")
    if len(items) > MAX_BROKERS:
        raise BrokerUrlError(f"at most {MAX_BROKERS} brokers, got {len(items)}")
    out: list[BrokerUrl] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            raise BrokerUrlError(f"empty entry in the broker list {text!r}")
        url = parse_broker_url(item)
        if url in out:
            raise BrokerUrlError(f"{url} is listed twice")
        out.append(url)
    return tuple(out)


def _split_host_port(raw: str, rest: str) -> tuple[str, str | None]:
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise BrokerUrlError(f"{raw!r}: unclosed '[' in an IPv6 address")
        host, tail = rest[1:end], rest[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BrokerUrlError(f"{raw!r}: {host!r} is not an IPv6 address") from None
        if tail and not tail.startswith(":"):
            raise BrokerUrlError(f"{raw!r}: expected ':port' after the IPv6 address")
        return host, tail[1:] if tail else None
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, ""
    if ":" in host:
        raise BrokerUrlError(f"{raw!r}: put an IPv6 address in brackets, e.g. mqtt://[::1]:1883")
    if not host:
        raise BrokerUrlError(f"{raw!r}: no host")
    if not HOST_RE.fullmatch(host) or len(host) > 253:
        raise BrokerUrlError(f"{raw!r}: {host!r} is not a host name or address")
    return host, (port if sep else None)


def _redact(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


@dataclass(frozen=True)
class BrokerSettings:
    """How the session reaches its brokers. Times in seconds.

    ``session_expiry_s`` is how long the broker keeps our session (the command subscriptions)
    while we are away; the outbox, not the broker, keeps what we publish.
    """

    brokers: tuple[BrokerUrl, ...]
    client_id: str | None = None              # default: reedge-{site}-{station}
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0           # TCP + TLS + CONNACK
    session_expiry_s: int = 86_400
    protocol: Protocol = "auto"               # auto: MQTT 5, 3.1.1 when a broker refuses 5
    ca_file: pathlib.Path | None = None
    cert_file: pathlib.Path | None = None
    key_file: pathlib.Path | None = None
    username: str | None = None
    password_file: pathlib.Path | None = None
    backoff_min_s: float = 0.5
    backoff_max_s: float = 60.0
    max_inflight: int = 100                   # our own cap on the window, below the broker's Receive Maximum

    def __post_init__(self) -> None:
        problems = _check_settings(self)
        if problems:
            raise BrokerSettingsError(problems)

    @property
    def uses_tls(self) -> bool:
        return any(b.tls for b in self.brokers)

    def password(self) -> str | None:
        """Read at connect time, so a rotated password needs no restart; never kept in the settings."""
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise BrokerUrlError(f"password_file {self.password_file}: cannot read it: {e.strerror}") from e


def _check_settings(s: BrokerSettings) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if not s.brokers:
        problems.append(("brokers", "at least one broker is needed"))
    if s.client_id is not None and not CLIENT_ID_RE.fullmatch(s.client_id):
        problems.append(("client_id", f"expected 1 to 128 letters, digits or _.:-, got {s.client_id!r}"))
    if not 1 <= s.keepalive_s <= 65535:
        problems.append(("keepalive_s", f"expected 1 to 65535, got {s.keepalive_s}"))
    if not 0.1 <= s.connect_timeout_s <= 300:
        problems.append(("connect_timeout_s", f"expected 0.1 to 300, got {s.connect_timeout_s}"))
    if not 0 <= s.session_expiry_s <= 0xFFFFFFFF:
        problems.append(("session_expiry_s", f"expected 0 to 4294967295, got {s.session_expiry_s}"))
    if s.protocol not in PROTOCOLS:
        problems.append(("protocol", f"expected one of {', '.join(PROTOCOLS)}, got {s.protocol!r}"))
    if not 0.01 <= s.backoff_min_s <= s.backoff_max_s <= 3600:
        problems.append(("backoff_min_s", f"expected 0.01 <= backoff_min_s <= backoff_max_s <= 3600, got"
                                          f" {s.backoff_min_s} and {s.backoff_max_s}"))
    if not 1 <= s.max_inflight <= 65535:
        problems.append(("max_inflight", f"expected 1 to 65535, got {s.max_inflight}"))
    if (s.cert_file is None) != (s.key_file is None):
        problems.append(("cert_file" if s.cert_file is None else "key_file",
                         "a client certificate needs both cert_file and key_file"))
    tls_keys = [k for k in ("ca_file", "cert_file", "key_file") if getattr(s, k) is not None]
    if tls_keys and s.brokers and not s.uses_tls:
        problems.append((tls_keys[0], "TLS files given but no broker is mqtts://: credentials would go in clear"))
    if s.password_file is not None and s.username is None:
        problems.append(("password_file", "a password needs a username"))
    return problems


def read_broker_settings(data: Mapping[str, object], base_dir: pathlib.Path | None = None,
                         brokers_override: str | None = None) -> tuple[BrokerSettings | None, list[tuple[str, str]]]:
    """Read the broker keys of an ``[mqtt]`` table; problems come back as ``(key, message)``, never raised.

    Relative file paths are taken from ``base_dir`` (the station file's folder). ``brokers_override``
    is ``--broker`` from the command line, which replaces ``brokers``. No ``brokers`` at all gives
    ``(None, [])``: the station has no broker configured (``reedge demo`` may then start its own).
    """
    problems: list[tuple[str, str]] = []
    values: dict[str, object] = {}

    def get(key: str, kind: type | tuple[type, ...], expected: str) -> object:
        if key not in data:
            return None
        value = data[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            problems.append((key, f"expected {expected}, got a boolean"))
            return None
        if not isinstance(value, kind):
            problems.append((key, f"expected {expected}, got {type(value).__name__} {value!r:.60}"))
            return None
        return value

    raw_brokers = brokers_override if brokers_override is not None else data.get("brokers")
    if raw_brokers is None:
        return None, []
    try:
        if isinstance(raw_brokers, str) or (isinstance(raw_brokers, list)
                                            and all(isinstance(b, str) for b in raw_brokers)):
            values["brokers"] = parse_broker_list(raw_brokers)
        else:
            raise BrokerUrlError(f"expected a list of URLs like [\"mqtts://broker:8883\"], got {raw_brokers!r:.60}")
    except BrokerUrlError as e:
        problems.append(("brokers", str(e)))
    for key, kind, expected in (("client_id", str, "a string"), ("keepalive_s", int, "an integer"),
                                ("connect_timeout_s", (int, float), "a number"),
                                ("session_expiry_s", int, "an integer"), ("protocol", str, '"auto", "5" or "3.1.1"'),
                                ("username", str, "a string"), ("backoff_min_s", (int, float), "a number"),
                                ("backoff_max_s", (int, float), "a number"), ("max_inflight", int, "an integer")):
        value = get(key, kind, expected)
        if value is not None:
            values[key] = float(value) if kind == (int, float) else value  # type: ignore[arg-type]
    for key in ("ca_file", "cert_file", "key_file", "password_file"):
        value = get(key, str, "a file path")
        if value is None:
            continue
        path = pathlib.Path(os.path.expanduser(str(value)))
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            problems.append((key, f"no such file: {path}"))
            continue
        values[key] = path
    if problems:
        return None, problems
    try:
        return BrokerSettings(**values), []  # type: ignore[arg-type]
    except BrokerSettingsError as e:
        return None, list(e.problems)
