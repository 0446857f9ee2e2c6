"""Who may command a station, and how commands are checked: the ``[mqtt.roles]`` and ``[mqtt.commands]``
parts of the station file.

Roles and what each may do (a role includes the ones above it)::

    viewer       nothing: reads telemetry, state, events (the broker ACL grants the reading)
    operator     start, hold, resume, abort, ack_alarm: runs batches and answers alarms
    maintenance  everything an operator may, and reset: only where [station] allow_remote_reset = true,
                 and the core still refuses to reset a trip whose condition persists

An identity is what the broker authenticated: the MQTT username, or the CN of the client
certificate (mosquitto ``use_identity_as_username``). One identity may be listed under several
roles; it gets the union. An identity not listed may do nothing.

**Where the identity comes from.** MQTT does not tell a subscriber who published a message, so
the broker says it in the topic: a command goes to ``reedge/v1/{site}/{station}/cmd/{identity}/{verb}``
and the broker's ACL lets each identity write only its own level
(``pattern write reedge/v1/<site>/+/cmd/%u/+``, ``deploy/mosquitto/acl``). The station takes the
identity from that level and looks it up in this table; the payload's ``issuer`` is only a
cross-check (a command whose ``issuer`` names someone else is rejected). So ``scada`` cannot send
a reset as ``service-laptop``, whatever it writes in the payload. ``broker_acl`` writes stricter
per-station lines from this same table (each identity only the verbs of its roles), for a broker
that should enforce the verbs as well.

Example::

    [mqtt.roles]
    operator = ["scada-hd"]
    maintenance = ["service-laptop"]
    viewer = ["historian"]

    [mqtt.commands]
    max_age_s = 60            # a command issued longer ago is rejected (stale)
    max_future_s = 5          # ... or issued this far in the future (clock skew allowance)
    max_payload_bytes = 16384 # a larger payload is rejected before it is parsed
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from edge.spec.reader import describe, did_you_mean, join, short
from edge.telemetry.topics import IDENTITY_RE, STREAMS, VERBS, StationTopics, check_identity

ROLE_VERBS: dict[str, frozenset[str]] = {
    "viewer": frozenset(),
    "operator": frozenset({"start", "hold", "resume", "abort", "ack_alarm", "record_mass"}),
    "maintenance": frozenset({"start", "hold", "resume", "abort", "ack_alarm", "reset", "record_mass"}),
}
assert all(v <= set(VERBS) for v in ROLE_VERBS.values())
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


def broker_acl(settings: CommandSettings, topics: StationTopics, station_identity: str | None = None) -> str:
    """mosquitto ACL lines that make the broker enforce this table (see the module docstring).

    The station (``station_identity``: its certificate CN or username, by default its station id)
    may publish its streams and its replies (``reply/#``: every reply topic a command may ask for,
    ``StationTopics.check_reply_topic``) and read the commands of every sender. Every listed identity
    may read the station's topics and write only ``cmd/{itself}/{verb}`` for the verbs of its roles.
    TopicError if a name cannot be used in an ACL line (``IDENTITY_RE``).
    """
    station = check_identity(topics.station if station_identity is None else station_identity)
    lines = [f"# generated from the [mqtt.roles] of station {topics.site}/{topics.station}",
             f"user {station}"]
    lines.extend(f"topic write {topics.topic(spec.name)}" for spec in STREAMS.values()
                 if spec.direction == "publish" and "{" not in spec.suffix)
    lines.append(f"topic write {topics.root}/reply/#")
    lines.append(f"topic read {topics.cmd_filter}")
    lines.append("")
    for identity in sorted(settings.roles):
        lines.append(f"user {check_identity(identity)}")
        lines.append(f"topic read {topics.root}/#")
        lines.extend(f"topic write {topics.cmd(verb, identity)}" for verb in VERBS
                     if verb in settings.verbs_for(identity))
        lines.append("")
    return "\n".join(lines)
