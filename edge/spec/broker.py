"""Where the MQTT brokers are and how to reach them: ``--broker`` URLs and the ``[mqtt]`` broker keys.

One parser for both places, so a technician reads the same error whether the URL came from the
command line or the station file. What is accepted:

* ``mqtt://host[:port]`` (plain TCP, default port 1883) and ``mqtts://host[:port]`` (TLS, default
  8883); IPv6 hosts in brackets (``mqtt://[::1]:1883``). Several URLs separated by commas are a
  failover list, tried in order.
* No credentials, path, query or fragment in a URL: a password in a URL ends up in process lists,
  shell history and logs. Credentials live in the station file (``username``, ``password_file``).

The ``[mqtt]`` section is shared with the command settings (``edge.telemetry.access``);
``read_broker_settings`` reads only its own keys through the reader kernel
(``edge.spec.reader``), so that every other key of the section stays the other reader's business.

TLS verification is always on for ``mqtts://``: the server certificate must chain to ``ca_file`` (or
the system's CAs when none is given) and name the host. There is deliberately no switch to turn it
off; a plant network with its own CA sets ``ca_file``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pathlib
import re
from dataclasses import dataclass
from typing import Literal

from edge.spec.reader import Bad, Table, choice, describe, integer_in, number_in, string

__all__ = [
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
MAX_HISTORY_MB = 16384     # [mqtt] history_mb: 16 GiB of history is more than any station's disk should give it

Protocol = Literal["auto", "5", "3.1.1"]
PROTOCOLS: tuple[Protocol, ...] = ("auto", "5", "3.1.1")


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
    while we are away; the outbox, not the broker, keeps what we publish, and ``history_mb`` of what
    the broker acknowledged, because a broker can still lose that (a restart that forgets shared
    subscriptions, a kill before its autosave): a consumer asks for it again (``resend``).
    """

    brokers: tuple[BrokerUrl, ...] = ()       # empty: none configured (the session needs at least one)
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
    history_mb: int = 64                      # MiB of acknowledged messages the outbox keeps for resend; 0: none

    def __post_init__(self) -> None:
        problems = _check_settings(self)
        if problems:
            raise BrokerSettingsError(problems)

    def with_brokers(self, brokers: tuple[BrokerUrl, ...]) -> BrokerSettings:
        """These settings for other brokers (``--broker``), checked again: TLS files with plain URLs are refused."""
        return dataclasses.replace(self, brokers=brokers)

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
    if not 0 <= s.history_mb <= MAX_HISTORY_MB:
        problems.append(("history_mb", f"expected 0 to {MAX_HISTORY_MB}, got {s.history_mb}"))
    if (s.cert_file is None) != (s.key_file is None):
        problems.append(("cert_file" if s.cert_file is None else "key_file",
                         "a client certificate needs both cert_file and key_file"))
    tls_keys = [k for k in ("ca_file", "cert_file", "key_file") if getattr(s, k) is not None]
    if tls_keys and s.brokers and not s.uses_tls:
        problems.append((tls_keys[0], "TLS files given but no broker is mqtts://: credentials would go in clear"))
    if s.password_file is not None and s.username is None:
        problems.append(("password_file", "a password needs a username"))
    return problems


def read_broker_settings(t: Table) -> BrokerSettings:
    """The broker keys of the ``[mqtt]`` table ``t``; every problem is reported into ``t``.

    Relative file paths are taken from the station file's folder. Without ``brokers`` the connection keys
    (TLS files, login, timings) are still read and checked: ``reedge run --broker URL`` then connects with
    them (``BrokerSettings.with_brokers``). A problem gives the defaults, already reported.
    """
    base_dir = pathlib.Path(t.problems.source).parent
    values: dict[str, object] = {}
    raw_brokers = t.get("brokers", _broker_list)
    if raw_brokers is not None:
        values["brokers"] = raw_brokers
    for key, conv in (("client_id", string), ("keepalive_s", integer_in(1, 65535)),
                      ("connect_timeout_s", number_in(0.1, 300.0)), ("session_expiry_s", integer_in(0, 0xFFFFFFFF)),
                      ("protocol", choice(PROTOCOLS)), ("username", string),
                      ("backoff_min_s", number_in(0.01, 3600.0)), ("backoff_max_s", number_in(0.01, 3600.0)),
                      ("max_inflight", integer_in(1, 65535)), ("history_mb", integer_in(0, MAX_HISTORY_MB))):
        value = t.get(key, conv)
        if value is not None:
            values[key] = value
    for key in ("ca_file", "cert_file", "key_file", "password_file"):
        name = t.get(key, string)
        if name is None:
            continue
        path = pathlib.Path(os.path.expanduser(name))
        if not path.is_absolute():
            path = base_dir / path
        if not path.is_file():
            t.report(key, f"no such file: {path}")
            continue
        values[key] = path
    if not t.ok:
        return BrokerSettings()
    try:
        return BrokerSettings(**values)  # type: ignore[arg-type]
    except BrokerSettingsError as e:
        for key, message in e.problems:
            t.report(key, message)
        return BrokerSettings()


def _broker_list(value: object) -> tuple[BrokerUrl, ...]:
    if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(b, str) for b in value))):
        raise Bad(f"expected a list of URLs like [\"mqtts://broker:8883\"], got {describe(value)}")
    try:
        return parse_broker_list(value)
    except BrokerUrlError as e:
        raise Bad(str(e)) from None
