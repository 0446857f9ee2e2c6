"""RFC 3339 times as the station writes and reads them: envelopes, commands, batch records, reports.

A bottom utility (it imports nothing from ``edge``), so every layer formats and parses times one way.
Written times are UTC with milliseconds, truncated (never in the future). Reading is strict where a
message is checked (``parse_rfc3339``: an error says what is wrong) and forgiving where a record is
shown (``parse_time``: None for null or garbage, the page says "unknown" instead).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

_TS_RE = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})")


class TimestampError(ValueError):
    """A text that is not an RFC 3339 date-time; says why."""


def rfc3339_ms(t_ns: int) -> str:
    """Unix nanoseconds as UTC RFC 3339 with milliseconds (truncated, so never in the future)."""
    seconds, rest = divmod(int(t_ns), 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{rest // 1_000_000:03d}Z"


def parse_rfc3339(text: object, what: str = "timestamp") -> int:
    """An RFC 3339 date-time (with ``Z`` or an offset) as Unix nanoseconds; TimestampError if not one."""
    found = _TS_RE.fullmatch(text) if isinstance(text, str) else None
    if found is None:
        raise TimestampError(f"{what} must be an RFC 3339 date-time such as 2025-03-14T09:26:53.589Z,"
                             f" got {text!r:.60}")
    main, fraction, zone = found.groups()
    try:
        stamp = dt.datetime.fromisoformat(main + ("+00:00" if zone == "Z" else zone))
        stamp.astimezone(dt.UTC)      # one UTC cannot write (9999-12-31T23:59-23:59 is in year 10000) is not one
    except (ValueError, OverflowError) as e:
        raise TimestampError(f"{what} {text!r}: {e}") from None
    return int(stamp.timestamp()) * 1_000_000_000 + int(((fraction or "") + "000000000")[:9])


def parse_time(value: Any) -> dt.datetime | None:
    """A time of a batch record as an aware UTC datetime; None for null or garbage."""
    if not isinstance(value, str) or not value:
        return None
    try:
        stamp = dt.datetime.fromisoformat(value.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
