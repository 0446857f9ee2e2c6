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

from edge.spec.access import ROLE_VERBS, CommandSettings
from edge.telemetry.topics import STREAMS, VERBS, StationTopics, check_identity

assert all(v <= set(VERBS) for v in ROLE_VERBS.values()), "a role grants a verb the command topics do not have"


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
