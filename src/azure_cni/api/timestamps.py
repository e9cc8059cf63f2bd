"""RFC 3339 timestamps as Kubernetes writes them, read and written one way everywhere."""

from __future__ import annotations

import datetime as dt
import re


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: RFC 3339 date-time: fractions of any length (Kubernetes' MicroTime has 6, Go's RFC3339Nano
#: up to 9; Python keeps 6) and a "Z" or numeric offset
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?"
                      r"(Z|[+-]\d\d:\d\d)", re.IGNORECASE)


def parse_time(value: str | None) -> dt.datetime | None:
    """An RFC 3339 timestamp as an aware UTC datetime; None when absent or unreadable."""
    match = _RFC3339.fullmatch(value or "")
    if match is None:
        return None
    seconds, fraction, offset = match.groups()
    zone = "+00:00" if offset.upper() == "Z" else offset
    try:
        parsed = dt.datetime.fromisoformat(f"{seconds}.{(fraction or '0')[:6]:0<6}{zone}")
    except ValueError:
        return None
    return parsed.astimezone(dt.UTC)
