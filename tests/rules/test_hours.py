"""Hours windows: parsing, edges, wrapping past midnight and across the week, bad input."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.rules.hours import DAYS, Hours

# 2026-11-23 is a Monday: MON + n days is the n-th day of that week.
MON = datetime(2026, 11, 23)
DAY_INDEX = {name: index for index, name in enumerate(DAYS)}


def at(day: str, hhmm: str) -> datetime:
    hours, minutes = (int(x) for x in hhmm.split(":"))
    return MON + timedelta(days=DAY_INDEX[day.lower()], hours=hours, minutes=minutes)


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        (
            "Mon-Fri 07:00-19:00",
            [("Mon", "07:00"), ("Wed", "12:00"), ("Fri", "18:59")],
            [("Mon", "06:59"), ("Fri", "19:00"), ("Sat", "10:00"), ("Sun", "12:00")],
        ),
        # No days: every day. Sunday's window runs into Monday, across the end of the week.
        (
            "22:00-06:00",
            [("Tue", "23:00"), ("Wed", "05:59"), ("Mon", "03:00"), ("Sun", "22:00")],
            [("Wed", "06:00"), ("Tue", "21:59"), ("Mon", "12:00")],
        ),
        (
            "Sun 22:00-02:00",
            [("Sun", "22:00"), ("Sun", "23:59"), ("Mon", "00:00"), ("Mon", "01:59")],
            [("Mon", "02:00"), ("Sat", "23:00"), ("Sun", "21:59"), ("Tue", "01:00")],
        ),
        (
            "Fri-Mon",
            [("Fri", "00:00"), ("Sat", "12:00"), ("Sun", "23:59"), ("Mon", "08:00")],
            [("Tue", "00:00"), ("Thu", "23:59")],
        ),
        (
            "Fri-Mon 08:00-17:00",
            [("Sun", "12:00"), ("Mon", "16:59"), ("Fri", "08:00")],
            [("Tue", "12:00"), ("Sat", "07:59"), ("Mon", "17:00")],
        ),
        ("Sat", [("Sat", "00:00"), ("Sat", "23:59")], [("Fri", "23:59"), ("Sun", "00:00")]),
        (
            "09:00-24:00",
            [("Tue", "09:00"), ("Tue", "23:59")],
            [("Tue", "08:59"), ("Wed", "00:00"), ("Wed", "08:59")],
        ),
        ("Mon 00:00-24:00", [("Mon", "00:00"), ("Mon", "23:59")], [("Tue", "00:00")]),
        (
            "Mon-Fri 07:00-19:00, Sat 08:00-12:00",
            [("Tue", "07:00"), ("Sat", "11:59")],
            [("Sat", "12:00"), ("Sun", "09:00")],
        ),
        ("mon-FRI 07:00-19:00", [("Thu", "10:00")], [("Sat", "10:00")]),
        ("  Mon - Fri   7:00 - 19:00 ", [("Mon", "07:00")], [("Mon", "06:59")]),
    ],
)
def test_contains(text: str, inside: list[tuple[str, str]], outside: list[tuple[str, str]]) -> None:
    hours = Hours.parse(text)
    for day, hhmm in inside:
        assert hours.contains(at(day, hhmm)), (day, hhmm)
    for day, hhmm in outside:
        assert not hours.contains(at(day, hhmm)), (day, hhmm)


def test_seconds_do_not_stretch_the_end() -> None:
    hours = Hours.parse("Mon 07:00-19:00")
    assert hours.contains(at("Mon", "18:59").replace(second=59, microsecond=999_999))
    assert not hours.contains(at("Mon", "19:00").replace(second=1))


def test_aware_time_is_read_on_its_own_clock() -> None:
    hours = Hours.parse("Mon 07:00-19:00")
    plus_ten = timezone(timedelta(hours=10))
    assert hours.contains(at("Mon", "08:00").replace(tzinfo=plus_ten))
    assert not hours.contains(at("Mon", "20:00").replace(tzinfo=plus_ten))


def test_window_from_midnight_to_midnight_is_refused() -> None:
    with pytest.raises(ValueError):
        Hours.parse("Mon 24:00-00:00")


def test_text_is_kept_stripped() -> None:
    hours = Hours.parse("  Mon-Fri 07:00-19:00 ")
    assert str(hours) == hours.text == "Mon-Fri 07:00-19:00"
    assert Hours.parse("Mon-Fri 07:00-19:00") == hours


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "bad hours ''"),
        ("   ", "bad hours ''"),
        ("Mon-Fri 07:00-19:00,", "bad hours ''"),
        ("Mon-Fri 7-19", "bad hours 'Mon-Fri 7-19'"),
        ("Mon 07:00", "bad hours 'Mon 07:00'"),
        ("Monday", "bad hours 'Monday'"),
        ("Xyz 07:00-19:00", "unknown day 'Xyz'"),
        ("Mon-Xyz", "unknown day 'Xyz'"),
        ("Mon 25:00-26:00", "bad time '25:00'"),
        ("Mon 07:60-08:00", "bad time '07:60'"),
        ("Mon 08:00-24:30", "bad time '24:30'"),
        ("Mon 08:00-08:00", "empty window 'Mon 08:00-08:00'"),
    ],
)
def test_bad_input_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Hours.parse(text)


# -- against a reference -------------------------------------------------------------------
MINUTES_PER_DAY = 24 * 60
MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY
starts = st.tuples(st.integers(0, 23), st.integers(0, 59))
ends = starts | st.just((24, 0))


def minute_of_day(hhmm: tuple[int, int]) -> int:
    return (hhmm[0] * 60 + hhmm[1]) % MINUTES_PER_DAY


def not_empty(span: tuple[tuple[int, int], tuple[int, int]]) -> bool:
    return minute_of_day(span[0]) != minute_of_day(span[1])


@settings(max_examples=300, deadline=None)
@given(
    first=st.none() | st.integers(0, 6),
    last=st.none() | st.integers(0, 6),
    span=st.none() | st.tuples(starts, ends).filter(not_empty),
    when=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1)),
)
def test_contains_matches_reference(
    first: int | None,
    last: int | None,
    span: tuple[tuple[int, int], tuple[int, int]] | None,
    when: datetime,
) -> None:
    """A window holds ``when`` if it falls within ``length`` minutes after a day's start."""
    days = "" if first is None else DAYS[first] + ("" if last is None else f"-{DAYS[last]}")
    times_text = "" if span is None else "{:02}:{:02}-{:02}:{:02}".format(*span[0], *span[1])
    text = f"{days} {times_text}".strip() or "00:00-24:00"
    if first is None:
        covered = list(range(7))
    else:
        stop = first if last is None else last
        covered = [(first + n) % 7 for n in range((stop - first) % 7 + 1)]
    start, end = (0, MINUTES_PER_DAY) if span is None else (h * 60 + m for h, m in span)
    length = (end - start) % MINUTES_PER_DAY or MINUTES_PER_DAY
    minute = when.weekday() * MINUTES_PER_DAY + when.hour * 60 + when.minute
    expected = any(
        (minute - (day * MINUTES_PER_DAY + start)) % MINUTES_PER_WEEK < length for day in covered
    )
    assert Hours.parse(text).contains(when) == expected
