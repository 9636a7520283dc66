"""systemd calendar expressions (OnCalendar=), checked on the controller the way systemd parses them.

backup_schedule becomes the OnCalendar= line of the backup timer. systemd refuses a line it cannot
parse only when the unit is loaded, on the host, after the deploy has changed things (and then the
timer silently never runs). So the schedule is parsed here first, with the grammar of systemd's
src/shared/calendarspec.c (calendar_spec_from_string and what it calls), step by step:

    [WEEKDAYS] [DATE] [TIME] [UTC]      or one of the shorthands (minutely, hourly, daily, ...)
    WEEKDAYS  Mon,Wed..Fri  (names or 3-letter abbreviations, any case; ".." or "-" ranges)
    DATE      [YEAR-]MONTH-DAY, "~" instead of the last "-" counts days from the end of the month
    TIME      HOUR:MINUTE[:SECOND[.FRACTION]]
    each part "*" or a comma list of  N | N..M | N/STEP | N..M/STEP ; or the whole "@UNIX-SECONDS"

followed by the same normalisation and range checks (calendar_spec_normalize, calendar_spec_valid).
normalized() prints what `systemd-analyze calendar` prints as "Normalized form", which is how
tests/unit/test_calendar.py compares this parser with the real one.

One deliberate difference: systemd also accepts a time zone name at the end (the host's own
abbreviation, or any zone in the host's tz database). The controller cannot know the host's zone
or its tz database, so only UTC is accepted here; without a zone the host's local time applies.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any

USEC_PER_SEC = 1_000_000
INT_MAX = 2**31 - 1
MIN_YEAR, MAX_YEAR = 1970, 2199
ALL_WEEKDAYS = 127  # seven bits, Monday = bit 0
MAX_NESTING = 240  # calendarspec.c's CALENDARSPEC_COMPONENTS_MAX: at most 241 items in one list

# Longer names first: "Monday" must win over "Mon" (same order as calendarspec.c's day_nr table).
WEEKDAY_NAMES = [
    ("Monday", 0),
    ("Mon", 0),
    ("Tuesday", 1),
    ("Tue", 1),
    ("Wednesday", 2),
    ("Wed", 2),
    ("Thursday", 3),
    ("Thu", 3),
    ("Friday", 4),
    ("Fri", 4),
    ("Saturday", 5),
    ("Sat", 5),
    ("Sunday", 6),
    ("Sun", 6),
]
SHORT_WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

# Shorthand -> the fields it fixes (every other field is "*"); values as calendarspec.c sets them.
_MIDNIGHT = {"hour": [0], "minute": [0], "usec": [0]}
SHORTHANDS: dict[str, dict[str, Any]] = {
    "minutely": {"usec": [0]},
    "hourly": {"minute": [0], "usec": [0]},
    "daily": _MIDNIGHT,
    "monthly": {"day": [1], **_MIDNIGHT},
    "weekly": {"weekdays": 1, **_MIDNIGHT},
    "yearly": {"month": [1], "day": [1], **_MIDNIGHT},
    "annually": {"month": [1], "day": [1], **_MIDNIGHT},
    "anually": {"month": [1], "day": [1], **_MIDNIGHT},  # systemd keeps this misspelling working
    "quarterly": {"month": [1, 4, 7, 10], "day": [1], **_MIDNIGHT},
    "semiannually": {"month": [1, 7], "day": [1], **_MIDNIGHT},
    "semi-annually": {"month": [1, 7], "day": [1], **_MIDNIGHT},
    "biannually": {"month": [1, 7], "day": [1], **_MIDNIGHT},
    "bi-annually": {"month": [1, 7], "day": [1], **_MIDNIGHT},
}
EXAMPLES = "daily, hourly, weekly, Mon..Fri 02:30, *-*-* 03:15:00 or Sun *-*-1..7 04:00 UTC"


class CalendarError(ValueError):
    """The expression is not one systemd would accept; the message says which part and why."""


@dataclass(frozen=True, order=True)
class Item:
    """One item of a field's comma list: start, stop (-1: none) and repeat (0: none)."""

    start: int
    stop: int = -1
    repeat: int = 0


@dataclass
class Spec:
    """A parsed expression. A field of None means "*" (every value)."""

    weekdays: int = 0
    year: list[Item] | None = None
    month: list[Item] | None = None
    day: list[Item] | None = None
    hour: list[Item] | None = None
    minute: list[Item] | None = None
    usec: list[Item] | None = None  # seconds, in microseconds
    end_of_month: bool = False
    utc: bool = False

    def normalized(self) -> str:
        """systemd-analyze's "Normalized form" of the expression."""
        text = ""
        if 0 < self.weekdays < ALL_WEEKDAYS:
            text = _format_weekdays(self.weekdays) + " "
        text += (
            f"{_format_items(self.year, 4)}-{_format_items(self.month, 2)}"
            f"{'~' if self.end_of_month else '-'}{_format_items(self.day, 2)} "
            f"{_format_items(self.hour, 2)}:{_format_items(self.minute, 2)}:{_format_items(self.usec, 2, True)}"
        )
        return text + (" UTC" if self.utc else "")


def problem(expression: object) -> str | None:
    """Why systemd would refuse `expression` as OnCalendar=, or None when it is accepted."""
    if not isinstance(expression, str):
        return f"{expression!r} is not text"
    try:
        parse(expression)
    except CalendarError as error:
        return str(error)
    return None


def parse(expression: str) -> Spec:
    """Parse and check like calendar_spec_from_string(); raises CalendarError."""
    if any(not character.isprintable() for character in expression):
        # systemd would read past some of these (strtoul skips a newline); in a unit file they end the line.
        raise CalendarError("contains a line break or another control character")
    spec = Spec()
    text = expression
    if text[-4:].upper() == " UTC":
        spec.utc = True
        text = text[:-4]
    elif " " in text and _looks_like_zone(text.rsplit(" ", 1)[1]):
        raise CalendarError(
            f"time zone {text.rsplit(' ', 1)[1]!r}: only UTC can be checked here — "
            "write the time in UTC (ending in ' UTC') or in the host's local time (no zone)"
        )
    if not text:
        raise CalendarError("empty expression")
    shorthand = SHORTHANDS.get(text.lower())
    if shorthand is not None:
        spec.weekdays = shorthand.get("weekdays", 0)
        for name in ("month", "day", "hour", "minute", "usec"):
            if name in shorthand:
                setattr(spec, name, [Item(v) for v in shorthand[name]])
    else:
        parser = _Parser(text, spec)
        parser.weekdays()
        if not parser.date():
            parser.time()
        if parser.rest:
            raise CalendarError(f"unexpected {parser.rest!r} at the end")
    _normalize(spec)
    _check(spec)
    return spec


def _looks_like_zone(word: str) -> bool:
    """A last word systemd may take for a time zone (Europe/Berlin, CET, GMT+1): refused with its own
    message rather than a confusing parse error."""
    return re.fullmatch(r"[A-Za-z][A-Za-z_-]*(/[A-Za-z0-9_+-]+)+|[A-Z]{3,5}|GMT[+-]?[0-9]*", word) is not None


class _Parser:
    """A cursor over the text, one method per part (parse_weekdays, parse_date, parse_calendar_time)."""

    def __init__(self, text: str, spec: Spec):
        self.text, self.pos, self.spec = text, 0, spec

    @property
    def rest(self) -> str:
        return self.text[self.pos :]

    def _char(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def _skip_spaces(self) -> None:
        while self._char() == " ":
            self.pos += 1

    def weekdays(self) -> None:
        first, range_from = True, -1
        while True:
            for name, number in WEEKDAY_NAMES:
                if self.rest[: len(name)].lower() == name.lower():
                    if self._char(len(name)) not in ("", "-", ".", ",", " "):
                        raise CalendarError(f"weekday {self.rest.split(' ')[0]!r}: use Mon..Sun or the full name")
                    self.spec.weekdays |= 1 << number
                    if range_from >= 0:
                        if range_from > number:
                            raise CalendarError(
                                f"weekday range ends before it starts ({self.text!r}): ranges run Mon..Sun"
                            )
                        for between in range(range_from + 1, number):
                            self.spec.weekdays |= 1 << between
                    self.pos += len(name)
                    break
            else:
                if first:
                    return  # no weekday part: the date follows
                raise CalendarError(f"{self.rest!r} is not a weekday")
            if self._char() == "":
                return
            if self._char() == " ":
                self._skip_spaces()
                return
            if self._char() == ".":
                if range_from >= 0 or self._char(1) != ".":
                    raise CalendarError("weekday ranges are written Mon..Fri")
                range_from = number
                self.pos += 2
            elif self._char() == "-":  # systemd still reads Mon-Fri as a range
                if range_from >= 0:
                    raise CalendarError("weekday ranges are written Mon..Fri")
                range_from = number
                self.pos += 1
            elif self._char() == ",":
                range_from = -1
                self.pos += 1
            if self._char() in ("", " "):  # a trailing comma is fine, an open range is not
                self._skip_spaces()
                if range_from >= 0:
                    raise CalendarError("weekday range without an end")
                return
            first = False

    def date(self) -> bool:
        """True when the expression was "@seconds" (then nothing else follows)."""
        if self._char() == "":
            return False
        if self._char() == "@":
            self._timestamp()
            return True
        start = self.pos
        first = self._chain(False, "date")
        if self._char() in ("", ":"):
            self.pos = start  # it was the time, not a date
            return False
        second = self._date_separator_then_chain()
        if self._char() in ("", " "):
            self._skip_spaces()
            self.spec.month, self.spec.day = first, second
            return False
        if self.spec.end_of_month:
            raise CalendarError("'~' may only stand before the day")
        third = self._date_separator_then_chain()
        if self._char() not in ("", " "):
            raise CalendarError(f"unexpected {self.rest!r} after the date")
        self._skip_spaces()
        self.spec.year, self.spec.month, self.spec.day = first, second, third
        return False

    def _date_separator_then_chain(self) -> list[Item] | None:
        if self._char() == "~":
            self.spec.end_of_month = True
        elif self._char() != "-":
            raise CalendarError(f"unexpected {self.rest!r}: a date is YEAR-MONTH-DAY or MONTH-DAY")
        self.pos += 1
        return self._chain(False, "date")

    def _timestamp(self) -> None:
        # As strtoul() reads it: spaces, then an optional sign, then digits. "-0" is 0; any other
        # negative number is a moment before 1970.
        match = re.fullmatch(r" *([+-]?)([0-9]+)", self.rest[1:])
        if match is None:
            raise CalendarError("'@' must be followed by seconds since 1970 and nothing else")
        sign, digits = match.groups()
        seconds = int(digits)
        if sign == "-" and seconds:
            raise CalendarError(f"@{sign}{digits} is before 1970")
        if seconds >= int(datetime.datetime(MAX_YEAR + 1, 1, 1, tzinfo=datetime.timezone.utc).timestamp()):
            raise CalendarError(f"@{digits} is after the year {MAX_YEAR}")
        moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
        spec = self.spec
        spec.year, spec.month, spec.day = [Item(moment.year)], [Item(moment.month)], [Item(moment.day)]
        spec.hour, spec.minute = [Item(moment.hour)], [Item(moment.minute)]
        spec.usec = [Item(moment.second * USEC_PER_SEC)]
        spec.utc = True
        self.pos = len(self.text)

    def time(self) -> None:
        spec = self.spec
        if self._char() == "":
            spec.hour, spec.minute, spec.usec = [Item(0)], [Item(0)], [Item(0)]  # no time: midnight
            return
        hour = self._chain(False, "hour")
        if self._char() != ":":
            raise CalendarError(f"unexpected {self.rest!r}: a time is HOUR:MINUTE[:SECOND]")
        self.pos += 1
        minute = self._chain(False, "minute")
        if self._char() == "":
            spec.hour, spec.minute, spec.usec = hour, minute, [Item(0)]
            return
        if self._char() != ":":
            raise CalendarError(f"unexpected {self.rest!r}: a time is HOUR:MINUTE[:SECOND]")
        self.pos += 1
        usec = self._chain(True, "second")
        if self._char() != "":
            raise CalendarError(f"unexpected {self.rest!r} after the time")
        spec.hour, spec.minute, spec.usec = hour, minute, usec

    def _chain(self, usec: bool, what: str) -> list[Item] | None:
        """'*' or a comma list of items (parse_chain / prepend_component)."""
        if self._char() == "*":
            self.pos += 1
            return [Item(0, -1, USEC_PER_SEC)] if usec else None
        items: list[Item] = []
        while True:
            if len(items) > MAX_NESTING:
                raise CalendarError(f"{what}: more than {MAX_NESTING + 1} values in one list")
            items.append(self._item(usec, what))
            if self._char() != ",":
                return items
            self.pos += 1

    def _item(self, usec: bool, what: str) -> Item:
        start = self._decimal(usec, what)
        stop, repeat = -1, 0
        if self.rest.startswith(".."):
            self.pos += 2
            stop = self._decimal(usec, what)
            repeat = USEC_PER_SEC if usec else 1
        if self._char() == "/":
            self.pos += 1
            repeat = self._decimal(usec, what)
            if repeat == 0:
                raise CalendarError(f"{what}: a repetition of /0 never advances")
        elif usec and stop >= 0 and start + repeat > stop:
            raise CalendarError(f"{what}: a range of seconds shorter than one second needs a /step")
        if self._char() not in ("", " ", ",", "-", "~", ":"):
            raise CalendarError(f"{what}: unexpected {self.rest!r}")
        return Item(start, stop, repeat)

    def _decimal(self, usec: bool, what: str) -> int:
        """Digits (and, for seconds, an optional fraction) -> int; seconds in microseconds."""
        digits = self._digits()
        if not digits:
            raise CalendarError(f"{what}: {self.rest or 'nothing'!r} where a number or * belongs")
        value = int(digits)
        if usec:
            value *= USEC_PER_SEC
            if self._char() == "." and self._char(1) != ".":  # one dot: a fraction; two: a range
                self.pos += 1
                value += self._fraction(what)
        if value > INT_MAX:
            raise CalendarError(f"{what}: {digits} is far too large")
        return value

    def _digits(self) -> str:
        start = self.pos
        while self._char().isascii() and self._char().isdigit():
            self.pos += 1
        return self.text[start : self.pos]

    def _fraction(self, what: str) -> int:
        """Microseconds of a fraction: six digits, the seventh rounds (parse_fractional_part_u)."""
        digits = self._digits()
        if not digits:
            raise CalendarError(f"{what}: a '.' must be followed by digits")
        value = int(digits[:6].ljust(6, "0"))
        return value + 1 if digits[6:7] >= "5" else value


def _normalize(spec: Spec) -> None:
    """calendar_spec_normalize: two-digit years, ranges cut to whole steps, lists sorted and unique."""
    if spec.end_of_month and spec.day is None:
        spec.end_of_month = False
    if spec.year:
        spec.year = [Item(_full_year(i.start), _full_year(i.stop), i.repeat) for i in spec.year]
    for name in ("year", "month", "day", "hour", "minute", "usec"):
        items = getattr(spec, name)
        if items is not None:
            setattr(spec, name, sorted(set(_normalize_item(i) for i in items)))


def _full_year(year: int) -> int:
    """12 -> 2012, 89 -> 1989 (calendarspec.c's fix_year)."""
    if 0 <= year < 70:
        return year + 2000
    if 70 <= year < 100:
        return year + 1900
    return year


def _normalize_item(item: Item) -> Item:
    start, stop, repeat = item.start, item.stop, item.repeat
    if stop > start and repeat > 0:
        stop -= (stop - start) % repeat
    # A step that cannot fire even once, or a range of one value: just the value.
    if (stop > start and repeat > 0 and start + repeat > stop) or start == stop:
        stop, repeat = -1, 0
    return Item(start, stop, repeat)


FIELD_RANGES = {
    "year": (MIN_YEAR, MAX_YEAR),
    "month": (1, 12),
    "day": (1, 31),
    "hour": (0, 23),
    "minute": (0, 59),
    "usec": (0, 60 * USEC_PER_SEC - 1),
}


def _check(spec: Spec) -> None:
    """calendar_spec_valid: every value within its field's range, every step able to fire."""
    for name, (low, high) in FIELD_RANGES.items():
        end_of_month = spec.end_of_month and name == "day"
        if end_of_month:
            high -= 3  # at most 28 days back from the end of the month
        label = "second" if name == "usec" else name
        scale = USEC_PER_SEC if name == "usec" else 1
        for item in getattr(spec, name) or []:
            shown = _format_items([item], 0, name == "usec")
            bounds = f"{label} {shown}: outside {low // scale}..{high // scale}"
            if not low <= item.start <= high or item.repeat > high - low:
                raise CalendarError(bounds)
            if item.stop >= 0:
                if not low <= item.stop <= high:
                    raise CalendarError(bounds)
                if item.start + item.repeat > item.stop:
                    raise CalendarError(f"{label} {shown}: the range ends before it starts")
            elif end_of_month and item.start - item.repeat < low:
                raise CalendarError(f"{label} {shown}: the step reaches past the start of the month")
            elif not end_of_month and item.start + item.repeat > high:
                raise CalendarError(f"{label} {shown}: the step never fires within {low // scale}..{high // scale}")


def _format_weekdays(bits: int) -> str:
    parts, run_start = [], -1
    for day in range(8):
        if day < 7 and bits & (1 << day):
            if run_start < 0:
                run_start = day
            continue
        if run_start >= 0:
            last = day - 1
            if last == run_start:
                parts.append(SHORT_WEEKDAYS[run_start])
            elif last == run_start + 1:
                parts.append(f"{SHORT_WEEKDAYS[run_start]},{SHORT_WEEKDAYS[last]}")
            else:
                parts.append(f"{SHORT_WEEKDAYS[run_start]}..{SHORT_WEEKDAYS[last]}")
            run_start = -1
    return ",".join(parts)


def _format_items(items: list[Item] | None, width: int, usec: bool = False) -> str:
    unit = USEC_PER_SEC if usec else 1
    if items is None or (usec and items == [Item(0, -1, USEC_PER_SEC)]):
        return "*"

    def number(value: int) -> str:
        text = f"{value // unit:0{width}d}"
        return text + (f".{value % unit:06d}" if value % unit else "")

    out = []
    for item in items:
        text = number(item.start)
        if item.stop > 0:
            text += ".." + number(item.stop)
        if item.repeat > 0 and not (item.stop > 0 and item.repeat == unit):
            text += f"/{item.repeat // unit}" + (f".{item.repeat % unit:06d}" if item.repeat % unit else "")
        out.append(text)
    return ",".join(out)
