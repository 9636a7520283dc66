"""backup_schedule is checked like systemd checks OnCalendar= (tasks/config/calendar.py, issue 15 defect 7).

SYSTEMD_VERDICTS was recorded from the real parser, not written by hand: each expression was given to
`systemd-analyze calendar EXPR` (systemd 257.13-1~deb13u1, Debian 13) inside the test bed's host image,
    docker run --rm -i --entrypoint sh litellm-deploy-testbed/host:<tag> -c \
      'while IFS= read -r e; do systemd-analyze calendar "$e"; echo "rc=$?"; done' < expressions
and its exit status (0: accepted) and "Normalized form:" line kept. None = systemd refused it.
The parser must agree on every verdict and print the same normalized form.
"""

import pytest

from tasks.config import calendar
from tasks.config.calendar import CalendarError, parse

SYSTEMD_VERDICTS = [
    ('daily', '*-*-* 00:00:00'),
    ('Daily', '*-*-* 00:00:00'),
    ('DAILY UTC', '*-*-* 00:00:00 UTC'),
    ('hourly', '*-*-* *:00:00'),
    ('weekly', 'Mon *-*-* 00:00:00'),
    ('monthly', '*-*-01 00:00:00'),
    ('yearly', '*-01-01 00:00:00'),
    ('annually', '*-01-01 00:00:00'),
    ('anually', '*-01-01 00:00:00'),
    ('quarterly', '*-01,04,07,10-01 00:00:00'),
    ('semiannually', '*-01,07-01 00:00:00'),
    ('semi-annually', '*-01,07-01 00:00:00'),
    ('biannually', '*-01,07-01 00:00:00'),
    ('bi-annually', '*-01,07-01 00:00:00'),
    ('minutely', '*-*-* *:*:00'),
    ('daily utc', '*-*-* 00:00:00 UTC'),
    ('fortnightly', None),
    ('daily 03:00', None),
    ('Mon', 'Mon *-*-* 00:00:00'),
    ('Mon..Fri 9:00', 'Mon..Fri *-*-* 09:00:00'),
    ('Mon-Fri 09:00', 'Mon..Fri *-*-* 09:00:00'),
    ('Mon,Wed,Fri 02:30', 'Mon,Wed,Fri *-*-* 02:30:00'),
    ('Sat,Sun *-*-1..7 04:00 UTC', 'Sat,Sun *-*-01..07 04:00:00 UTC'),
    ('Monday 12:00', 'Mon *-*-* 12:00:00'),
    ('monday,TUESDAY 12:00', 'Mon,Tue *-*-* 12:00:00'),
    ('Mon,Tue,Wed 00:00', 'Mon..Wed *-*-* 00:00:00'),
    ('Mon..Wed,Fri..Sun 00:00', 'Mon..Wed,Fri..Sun *-*-* 00:00:00'),
    ('Mon, 12:00', 'Mon *-*-* 12:00:00'),
    ('Fri..Mon 12:00', None),
    ('Mon.Fri 12:00', None),
    ('Mond 12:00', None),
    ('Mon.. 12:00', None),
    ('Mon..Tue..Wed 12:00', None),
    ('Mon- 12:00', None),
    ('Mon,,Tue', None),
    ('Moon 12:00', None),
    ('*-*-* 03:15:00', '*-*-* 03:15:00'),
    ('*-*-* 03:15', '*-*-* 03:15:00'),
    ('*-*-*', '*-*-* 00:00:00'),
    ('*-*-* *:*:*', '*-*-* *:*:*'),
    ('*-*-* *:*', '*-*-* *:*:00'),
    ('*:*', '*-*-* *:*:00'),
    ('*:0/15', '*-*-* *:00/15:00'),
    ('*:00/15', '*-*-* *:00/15:00'),
    ('*:*/15', None),
    ('*:15', '*-*-* *:15:00'),
    ('03:15', '*-*-* 03:15:00'),
    ('3:5', '*-*-* 03:05:00'),
    ('3', None),
    ('03:15:00 UTC', '*-*-* 03:15:00 UTC'),
    ('*-*-* 24:00', None),
    ('*-*-* 23:60', None),
    ('*-*-* 23:59:60', None),
    ('*-*-* 23:59:59', '*-*-* 23:59:59'),
    ('*-*-* 00:00:59.999999', '*-*-* 00:00:59.999999'),
    ('*-*-* 00:00:59.9999995', None),
    ('*-*-* 00:00:00.5', '*-*-* 00:00:00.500000'),
    ('*-*-* 00:00:00.', None),
    ('*-*-* 00:00:0/0.5', '*-*-* 00:00:00/0.500000'),
    ('*-*-* 00:00:1..1.5', None),
    ('*-*-* 00:00:1..2', '*-*-* 00:00:01..02'),
    ('*-*-* 00:00:1..3/0.5', '*-*-* 00:00:01..03/0.500000'),
    ('*-*-* 00:00:*/10', None),
    ('*-*-* 5..5:00', '*-*-* 05:00:00'),
    ('*-*-* 5..7:00', '*-*-* 05..07:00:00'),
    ('*-*-* 7..5:00', None),
    ('*-*-* 20/5:00', None),
    ('*-*-* 20/3:00', '*-*-* 20/3:00:00'),
    ('*-*-* 0/24:00', None),
    ('*-*-* 0/23:00', '*-*-* 00/23:00:00'),
    ('*-*-* 0..23/6:00', '*-*-* 00..18/6:00:00'),
    ('*-*-* 0..22/5:00', '*-*-* 00..20/5:00:00'),
    ('*-*-1,15 00:00', '*-*-01,15 00:00:00'),
    ('*-*-1..7,15..21 00:00', '*-*-01..07,15..21 00:00:00'),
    ('*-1..12/2-1', '*-01..11/2-01 00:00:00'),
    ('*-01-01', '*-01-01 00:00:00'),
    ('*-1-1', '*-01-01 00:00:00'),
    ('01-01', '*-01-01 00:00:00'),
    ('12-31 23:59', '*-12-31 23:59:00'),
    ('13-01', None),
    ('*-*-0', None),
    ('*-*-32', None),
    ('*-02-30', '*-02-30 00:00:00'),
    ('*-02~03', '*-02~03 00:00:00'),
    ('*-*~01', '*-*~01 00:00:00'),
    ('*-*~1..3', '*-*~01..03 00:00:00'),
    ('*-*~03/2', '*-*~03/2 00:00:00'),
    ('*-*~28', '*-*~28 00:00:00'),
    ('*-*~29', None),
    ('*-*~1/5', None),
    ('*~01-01', None),
    ('2024-01-01', '2024-01-01 00:00:00'),
    ('2199-12-31', '2199-12-31 00:00:00'),
    ('2200-01-01', None),
    ('1969-12-31', None),
    ('69-01-01', '2069-01-01 00:00:00'),
    ('70-01-01', '1970-01-01 00:00:00'),
    ('99-06-01', '1999-06-01 00:00:00'),
    ('100-06-01', None),
    ('2025..2030-*-01', '2025..2030-*-01 00:00:00'),
    ('2030..2025-*-01', None),
    ('2025/2-*-*', '2025/2-*-* 00:00:00'),
    ('daily CET', None),
    ('@1700000000', '2023-11-14 22:13:20 UTC'),
    ('@0', '1970-01-01 00:00:00 UTC'),
    ('@ 5', '1970-01-01 00:00:05 UTC'),
    ('@+5', '1970-01-01 00:00:05 UTC'),
    ('@-0', '1970-01-01 00:00:00 UTC'),
    ('@-5', None),
    ('@7258118400', None),
    ('@7258118399', '2199-12-31 23:59:59 UTC'),
    ('@1700000000 UTC', '2023-11-14 22:13:20 UTC'),
    ('@abc', None),
    ('@', None),
    ('UTC', None),
    (' daily', None),
    ('daily ', None),
    ('12:00 ', None),
    ('Mon  12:00', 'Mon *-*-* 12:00:00'),
    ('Mon *-*-*  12:00', 'Mon *-*-* 12:00:00'),
    ('*-*-*/2 00:00', None),
    ('*-*-* 00:00:00:00', None),
    ('*-*-* 00:00-', None),
    ('0,0,0,0:00', '*-*-* 00:00:00'),
    ('1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23:00', '*-*-* 01,02,03,04,05,06,07,08,09,10,11,12,13,14,15,16,17,18,19,20,21,22,23:00:00'),
    ('*-*-* 00:00:00.1234567', '*-*-* 00:00:00.123457'),
    ('*-*-* 4294967296:00', None),
    ('*-*-* 2147483648:00', None),
    ('Sun *-*-1..7 04:00 UTC', 'Sun *-*-01..07 04:00:00 UTC'),
    ('Mon..Fri *-*-* 08..18:00/30', 'Mon..Fri *-*-* 08..18:00/30:00'),
    ('Mon..Fri *-*-* 08..18:0/30', 'Mon..Fri *-*-* 08..18:00/30:00'),
    ('Tue 2025-*-* 1,13:30:15', 'Tue 2025-*-* 01,13:30:15'),
    ('*-*-* 1,13:30:15.250', '*-*-* 01,13:30:15.250000'),

]

# systemd accepts these, with the zone looked up in the HOST's tz database; the controller cannot
# know that database or the host's own zone abbreviation, so they are refused with the fix instead.
ZONES_SYSTEMD_ACCEPTS = ["*-*-* 00:00 Europe/Berlin", "daily Europe/Berlin", "daily GMT"]


@pytest.mark.parametrize("expression,normalized", SYSTEMD_VERDICTS, ids=[e for e, _ in SYSTEMD_VERDICTS])
def test_accepts_and_normalizes_what_systemd_does(expression, normalized):
    if normalized is None:
        assert calendar.problem(expression) is not None
        with pytest.raises(CalendarError):
            parse(expression)
    else:
        assert calendar.problem(expression) is None
        assert parse(expression).normalized() == normalized


def test_the_table_covers_both_verdicts_and_every_part_of_the_grammar():
    accepted = [e for e, n in SYSTEMD_VERDICTS if n is not None]
    refused = [e for e, n in SYSTEMD_VERDICTS if n is None]
    assert len(accepted) >= 60 and len(refused) >= 40
    assert set(calendar.SHORTHANDS) <= {e.lower() for e in accepted}
    for part in ("..", "/", "~", ",", "UTC", "@", "Mon"):
        assert any(part in e for e in accepted) and any(part in e for e in refused), part


@pytest.mark.parametrize("expression", ZONES_SYSTEMD_ACCEPTS)
def test_a_time_zone_other_than_utc_is_refused_with_the_fix(expression):
    reason = calendar.problem(expression)
    assert reason is not None and "UTC" in reason and "local time" in reason


@pytest.mark.parametrize("expression", ["daily\nExecStart=/bin/sh", "daily\t", "Mon\r12:00"])
def test_control_characters_never_reach_the_unit_file(expression):
    assert "control character" in calendar.problem(expression)


def test_reasons_name_the_part_that_is_wrong():
    assert "hour" in calendar.problem("*-*-* 25:00") and "0..23" in calendar.problem("*-*-* 25:00")
    assert "weekday" in calendar.problem("Fri..Mon 12:00")
    assert calendar.problem(4) == "4 is not text"


def test_more_than_241_values_in_one_list_are_refused_like_systemd():
    # Both verdicts checked with systemd-analyze as above (exit status 0, then 1).
    assert calendar.problem(",".join(["0"] * 241) + ":00") is None
    assert "241" in calendar.problem(",".join(["0"] * 242) + ":00")
