"""``[mqtt.roles]`` and ``[mqtt.commands]`` of the station file: who may command the station, and the command
limits. What each role may do and where the identity comes from is explained in ``edge.telemetry.access``,
which writes the broker ACL from these settings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from edge.spec.reader import Bad, Conv, Table, describe, integer_in, join, list_of

__all__ = ["DEFERRED_VERBS", "IDENTITY_RE", "ROLE_VERBS", "CommandSettings", "read_settings"]

#: An MQTT identity (username or certificate CN) as a topic level: 1 to 128 characters, no control
#: characters, no wildcard, no level separator, no space at either end (mosquitto trims an ACL line's ends:
#: ``user lead `` would give its block, and the right to write ``cmd/lead /...``, to the identity "lead").
IDENTITY_RE = re.compile(r"[^\x00-\x1f\x7f+#/\s](?:[^\x00-\x1f\x7f+#/]{0,126}[^\x00-\x1f\x7f+#/\s])?")

ROLE_VERBS: dict[str, frozenset[str]] = {
    # resend only re-publishes what the identity may read already (its ACL reads the whole station); the rate
    # limit and the bounded span keep it cheap: every role has it, so a historian needs no more than viewer
    "viewer": frozenset({"resend"}),
    "operator": frozenset({"start", "hold", "resume", "abort", "ack_alarm", "record_mass", "resend"}),
    # autotune drives a heater between batches (under the core's interlocks): the people who tune loops only
    "maintenance": frozenset({"start", "hold", "resume", "abort", "ack_alarm", "reset", "record_mass", "autotune",
                              "resend"}),
}
#: Verbs that serve a consumer, not the process, and may wait: the intake serves them after every process verb
#: whoever sends them (``edge.telemetry.intake``), so a burst of resends (tens of ms of outbox work each) never
#: holds an operator's hold back by a scan. Process verbs keep "operator and maintenance before viewers".
DEFERRED_VERBS: frozenset[str] = frozenset({"resend"})
MAX_IDENTITIES = 100

# (key, default, low, high, what)
_LIMITS: tuple[tuple[str, int, int, int, str], ...] = (
    ("max_age_s", 60, 1, 3600, "seconds a command may be old when it arrives"),
    ("max_future_s", 5, 0, 300, "seconds a command's issued_at may be ahead of the station clock"),
    ("max_payload_bytes", 16384, 256, 1 << 20, "bytes a command payload may have"),
    ("burst", 20, 1, 1000, "commands one identity may send at once"),
    ("rate_per_minute", 120, 1, 60_000, "commands one identity may send per minute, sustained"),
)


@dataclass(frozen=True)
class CommandSettings:
    """Roles by identity and the command limits (defaults: nobody may command the station)."""

    roles: Mapping[str, frozenset[str]] = field(default_factory=dict)   # identity -> role names
    max_age_s: int = 60
    max_future_s: int = 5
    max_payload_bytes: int = 16384
    # the rate limit per identity (a token bucket; edge.telemetry.intake): a SCADA sends a few commands a
    # minute, a handful at once when an operator acknowledges alarms; beyond that is a script gone wrong
    burst: int = 20
    rate_per_minute: int = 120

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


def read_settings(mqtt: Table) -> CommandSettings:
    """``[mqtt.roles]`` and ``[mqtt.commands]`` of the ``[mqtt]`` table; problems are reported into it and the
    defaults stand in."""
    roles: dict[str, set[str]] = {}
    rt = mqtt.table("roles", expected=f"a table [{join(mqtt.path, 'roles')}] of role = [identities]")
    if rt is not None:
        rt.noun = "role"
        for role in ROLE_VERBS:
            identities = rt.get(role, list_of(_identity, "MQTT identities (usernames or certificate CNs)",
                                              max_len=MAX_IDENTITIES))
            for identity in identities or ():
                roles.setdefault(identity, set()).add(role)
        rt.finish()
    limits: dict[str, int] = {key: default for key, default, *_ in _LIMITS}
    ct = mqtt.table("commands", expected=f"a table [{join(mqtt.path, 'commands')}]")
    if ct is not None:
        for key, _, lo, hi, what in _LIMITS:
            value = ct.get(key, _limit(lo, hi, what))
            if value is not None:
                limits[key] = value
        ct.finish()
    return CommandSettings(roles={k: frozenset(v) for k, v in roles.items()}, **limits)


def _identity(value: object) -> str:
    if not isinstance(value, str) or not IDENTITY_RE.fullmatch(value):
        raise Bad("expected an MQTT identity: 1 to 128 characters, no control characters, no + # / and no space"
                  f" at either end, got {describe(value)}")
    return value


def _limit(lo: int, hi: int, what: str) -> Conv[int]:
    within = integer_in(lo, hi)

    def convert(value: object) -> int:
        try:
            return within(value)
        except Bad:
            raise Bad(f"expected an integer from {lo} to {hi} ({what}), got {describe(value)}") from None

    return convert
