"""Time windows for rules: ``"Mon-Fri 07:00-19:00"``, several joined by commas.

A window is ``[DAYS] [HH:MM-HH:MM]`` with DAYS a day (``Sat``) or a range (``Mon-Fri``,
``Fri-Mon`` wraps the week). Without DAYS it holds every day; without times, all day.
An end earlier than the start runs past midnight into the next day (``22:00-06:00``);
``24:00`` is the end of the day. Times are the daemon's local time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MINUTES_PER_DAY = 24 * 60
_MINUTES_PER_WEEK = 7 * _MINUTES_PER_DAY
# Matched against a stripped window: no two "\s*" may meet, or a long run of spaces would
# take quadratic time to refuse.
_WINDOW = re.compile(
    r"(?:(?P<d1>[A-Za-z]{3})(?:\s*-\s*(?P<d2>[A-Za-z]{3}))?)?"
    r"\s*(?:(?P<t1>[0-9]{1,2}:[0-9]{2})\s*-\s*(?P<t2>[0-9]{1,2}:[0-9]{2}))?"
)


def _shown(text: str) -> str:
    """``text`` quoted for a message, cut to 64 characters (a window may be a megabyte)."""
    text = text.strip()
    return repr(text) if len(text) <= 64 else repr(text[:64]) + "…"


def _day(name: str) -> int:
    try:
        return DAYS.index(name.lower())
    except ValueError:
        raise ValueError(f"unknown day {name!r} (use Mon, Tue, Wed, Thu, Fri, Sat, Sun)") from None


def _minute(text: str, *, end: bool = False) -> int:
    hh, mm = (int(x) for x in text.split(":"))
    if mm > 59 or hh > 24 or (hh == 24 and (mm or not end)):
        raise ValueError(f"bad time {text!r} (use HH:MM from 00:00 to 24:00, 24:00 as an end only)")
    return hh * 60 + mm


@dataclass(frozen=True, slots=True)
class Hours:
    """A set of weekly windows, as half-open ranges of minutes since Monday 00:00."""

    text: str
    spans: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, text: str) -> Hours:
        """Parse a window list; raises ValueError with a message fit for an administrator."""
        spans: list[tuple[int, int]] = []
        for part in text.split(","):
            m = _WINDOW.fullmatch(part.strip())
            if not m or not part.strip():
                raise ValueError(f"bad hours {_shown(part)} (write e.g. 'Mon-Fri 07:00-19:00')")
            first = _day(m["d1"]) if m["d1"] else 0
            last = _day(m["d2"]) if m["d2"] else (first if m["d1"] else 6)
            start = _minute(m["t1"]) if m["t1"] else 0
            end = _minute(m["t2"], end=True) if m["t2"] else _MINUTES_PER_DAY
            if end == start:
                raise ValueError(f"empty window {_shown(part)}: start and end are equal")
            length = end - start if end > start else end + _MINUTES_PER_DAY - start
            day = first
            while True:
                begin = day * _MINUTES_PER_DAY + start
                spans.append((begin, begin + length))
                if day == last:
                    break
                day = (day + 1) % 7
        return cls(text.strip(), tuple(sorted(spans)))

    def contains(self, when: datetime) -> bool:
        """Is ``when`` (a local, naive or aware, datetime) inside one of the windows?"""
        minute = when.weekday() * _MINUTES_PER_DAY + when.hour * 60 + when.minute
        for begin, end in self.spans:
            # A span may run past Sunday midnight; test the minute and the minute a week on.
            if begin <= minute < end or begin <= minute + _MINUTES_PER_WEEK < end:
                return True
        return False

    def __str__(self) -> str:
        return self.text
