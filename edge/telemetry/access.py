"""Who may command a station, and how commands are checked: the ``[mqtt.roles]`` and ``[mqtt.commands]``
parts of the station file.

Roles and what each may do (a role includes the ones above it)::

    viewer       resend: reads telemetry, state, events (the broker ACL grants the reading) and may ask
                 for messages it lost again (re-published from the station's history, nothing else)
    operator     start, hold, resume, abort, ack_alarm, record_mass, resend: runs batches and answers alarms
    maintenance  everything an operator may, autotune, and reset: only where [station] allow_remote_reset
                 = true, and the core still refuses to reset a trip whose condition persists

An identity is what the broker authenticated: the MQTT username, or the CN of the client
certificate (mosquitto ``use_identity_as_username``). One identity may be listed under several
roles; it gets the union. An identity not listed may do nothing.

**Where the identity comes from.** MQTT does not tell a subscriber who published a message, so
the broker says it in the topic: a command goes to ``reedge/v1/{site}/{station}/cmd/{identity}/{verb}``
and the broker's ACL lets each identity write only its own level
(``topic write reedge/v1/<site>/<station>/cmd/<identity>/<verb>``, ``deploy/mosquitto/acl``). The station takes the
identity from that level and looks it up in this table; the payload's ``issuer`` is only a
cross-check (a command whose ``issuer`` names someone else is rejected). So ``scada`` cannot send
a reset as ``service-laptop``, whatever it writes in the payload. ``site_acl`` (``reedge station acl
STATION...``) writes the broker's ACL from this same table, per station: each identity may write only
the verbs of its roles, so a viewer's ``hold`` never reaches the station at all (a flood of them costs
the station nothing; its ``resend`` does reach it, under the per-identity rate limit), and each listed
identity reads only the stations that list it.
``deploy/mosquitto/acl`` is its output for the shipped stations (a test keeps them equal).

Example::

    [mqtt.roles]
    operator = ["scada-hd"]
    maintenance = ["service-laptop"]
    viewer = ["historian"]

    [mqtt.commands]
    max_age_s = 60            # a command issued longer ago is rejected (stale)
    max_future_s = 5          # ... or issued this far in the future (clock skew allowance)
    max_payload_bytes = 16384 # a larger payload is rejected before it is parsed
    burst = 20                # commands one identity may send at once (more: busy, the rate limit)
    rate_per_minute = 120     # ... and per minute, sustained (edge.telemetry.intake)
"""

from __future__ import annotations

from collections.abc import Sequence

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


class AclError(ValueError):
    """The stations cannot share one ACL (another site, a station id twice)."""


def site_acl(stations: Sequence[tuple[CommandSettings, StationTopics, str | None]]) -> str:
    """One mosquitto ACL file for the stations of one site (``(settings, topics, station_identity)`` each, as
    ``broker_acl`` takes them): each user's lines from every station gathered under one ``user`` line.
    AclError if the stations are of several sites or one station id comes twice; TopicError for a name that
    cannot be an ACL line."""
    if not stations:
        raise AclError("no station: the ACL is written from the station files")
    sites = sorted({topics.site for _, topics, _ in stations})
    if len(sites) > 1:
        raise AclError(f"the stations are of several sites ({', '.join(sites)}): one broker, and one ACL, per site")
    ids = [topics.station for _, topics, _ in stations]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise AclError(f"station id {', '.join(twice)} given twice")
    users: dict[str, list[str]] = {}
    for settings, topics, identity in sorted(stations, key=lambda s: s[1].station):
        user: str | None = None
        for line in broker_acl(settings, topics, identity).splitlines():
            if line.startswith("user "):
                user = line.removeprefix("user ")
                users.setdefault(user, [])
            elif line.startswith("topic ") and user is not None:
                users[user].append(line)
    head = [f"# reedge broker ACL of site {sites[0]} (mosquitto acl_file), written by `reedge station acl` from the",
            f"# [mqtt.roles] of stations {', '.join(sorted(ids))}. Do not edit: write it again when roles or",
            "# stations change (deploy/mosquitto/README.md). A station may publish only its own streams and",
            "# replies and read its commands; each identity may read the stations that list it and write only",
            "# cmd/<itself>/<verb> for the verbs its roles allow there. Clients not listed may do nothing.",
            ""]
    body: list[str] = []
    for user in sorted(users):
        body.extend([f"user {user}", *users[user], ""])
    return "\n".join(head + body)
