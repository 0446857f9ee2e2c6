"""``[mqtt.roles]`` and ``[mqtt.commands]`` of the station file: who may command the station, and the command
limits. What each role may do and where the identity comes from is explained in ``edge.telemetry.access``,
which writes the broker ACL from these settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from edge.spec.reader import describe, did_you_mean, join, short

__all__ = ["IDENTITY_RE", "MQTT_KEYS", "ROLE_VERBS", "CommandSettings", "read_settings"]

#: An MQTT identity (username or certificate CN) as a topic level: 1 to 128 characters, no control
#: characters, no wildcard, no level separator, no leading space (mosquitto's ``%u`` needs the same).
IDENTITY_RE = re.compile(r"[^\x00-\x1f\x7f+#/\s][^\x00-\x1f\x7f+#/]{0,127}")

ROLE_VERBS: dict[str, frozenset[str]] = {
    "viewer": frozenset(),
    "operator": frozenset({"start", "hold", "resume", "abort", "ack_alarm", "record_mass"}),
    "maintenance": frozenset({"start", "hold", "resume", "abort", "ack_alarm", "reset", "record_mass"}),
}
MAX_IDENTITIES = 100

#: keys of [mqtt] this module reads (the MQTT session reads the others)
MQTT_KEYS = ("roles", "commands")
# (key, default, low, high, what)
_LIMITS: tuple[tuple[str, int, int, int, str], ...] = (
    ("max_age_s", 60, 1, 3600, "seconds a command may be old when it arrives"),
    ("max_future_s", 5, 0, 300, "seconds a command's issued_at may be ahead of the station clock"),
    ("max_payload_bytes", 16384, 256, 1 << 20, "bytes a command payload may have"),
)


@dataclass(frozen=True)
class CommandSettings:
    """Roles by identity and the command limits (defaults: nobody may command the station)."""

    roles: Mapping[str, frozenset[str]] = field(default_factory=dict)   # identity -> role names
    max_age_s: int = 60
    max_future_s: int = 5
    max_payload_bytes: int = 16384

    @property
    def remember_s(self) -> int:
        """How long command ids are remembered. A replay older than this is stale anyway (older than
        max_age_s by the sender's clock, give or take the skew allowance), so it is never executed twice."""
        return self.max_age_s + 2 * self.max_future_s + 60

    def verbs_for(self, identity: str) -> frozenset[str]:
        verbs: frozenset[str] = frozenset()
        for role in self.roles.get(identity, ()):
            verbs |= ROLE_VERBS[role]
        return verbs


def read_settings(mqtt: Mapping[str, object], report: Callable[[str, str], None],
                  path: str = "mqtt") -> CommandSettings:
    """``[mqtt.roles]`` and ``[mqtt.commands]`` of the ``[mqtt]`` table; each problem goes to
    ``report(key_path, message)`` (the station loader collects them), and the defaults stand in."""
    roles: dict[str, set[str]] = {}
    raw_roles = mqtt.get("roles", {})
    rpath = join(path, "roles")
    if not isinstance(raw_roles, Mapping):
        report(rpath, f"expected a table [{rpath}] of role = [identities], got {describe(raw_roles)}")
        raw_roles = {}
    for role, identities in raw_roles.items():
        where = join(rpath, role)
        if role not in ROLE_VERBS:
            report(where, f"unknown role '{short(role)}' (expected one of: {', '.join(ROLE_VERBS)})"
                          f"{did_you_mean(role, list(ROLE_VERBS))}")
            continue
        if not isinstance(identities, list):
            report(where, f"expected an array of MQTT identities (usernames or certificate CNs), got "
                          f"{describe(identities)}")
            continue
        if len(identities) > MAX_IDENTITIES:
            report(where, f"expected at most {MAX_IDENTITIES} identities, got {len(identities)}")
            continue
        seen: set[str] = set()
        for i, identity in enumerate(identities):
            if not isinstance(identity, str) or not IDENTITY_RE.fullmatch(identity):
                report(f"{where}[{i}]", "expected an MQTT identity: 1 to 128 characters, no control characters,"
                                        f" no + # / and no leading space, got {describe(identity)}")
            elif identity in seen:
                report(f"{where}[{i}]", f"\"{short(identity)}\" is listed twice")
            else:
                seen.add(identity)
                roles.setdefault(identity, set()).add(role)
    limits: dict[str, int] = {key: default for key, default, *_ in _LIMITS}
    raw_cmd = mqtt.get("commands", {})
    cpath = join(path, "commands")
    if not isinstance(raw_cmd, Mapping):
        report(cpath, f"expected a table [{cpath}], got {describe(raw_cmd)}")
        raw_cmd = {}
    known = [key for key, *_ in _LIMITS]
    for key, value in raw_cmd.items():
        spec = next((s for s in _LIMITS if s[0] == key), None)
        if spec is None:
            report(join(cpath, key), f"unknown key '{short(key)}' (expected one of: {', '.join(known)})"
                                     f"{did_you_mean(key, known)}")
            continue
        _, _, lo, hi, what = spec
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            report(join(cpath, key), f"expected an integer from {lo} to {hi} ({what}), got {describe(value)}")
            continue
        limits[key] = value
    return CommandSettings(roles={k: frozenset(v) for k, v in roles.items()}, **limits)
