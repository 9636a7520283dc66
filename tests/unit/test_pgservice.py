"""tasks.config.pgservice: DATABASE_URL -> libpq service and password files, parsed once on the controller."""

from __future__ import annotations

import pytest

from tasks.config import pgservice
from tasks.config.filters import url_component


def service(url: str) -> dict[str, str]:
    lines = pgservice.service_file(url).splitlines()
    assert lines[0] == f"[{pgservice.SERVICE}]"
    return dict(line.split("=", 1) for line in lines[1:])


def test_plain_url():
    assert service("postgresql://litellm:pw@db.internal:6543/gateway") == {
        "host": "db.internal", "port": "6543", "dbname": "gateway", "user": "litellm"}
    assert pgservice.password_file("postgresql://litellm:pw@db.internal:6543/gateway") == "*:*:*:litellm:pw\n"


def test_default_port_ipv6_and_several_hosts():
    assert service("postgres://u:p@[fd00::5]/d")["host"] == "fd00::5"
    assert service("postgres://u:p@[fd00::5]/d")["port"] == "5432"
    several = service("postgresql://u:p@primary:5432,standby:5433/d?target_session_attrs=read-write")
    assert several["host"] == "primary,standby" and several["port"] == "5432,5433"
    assert several["target_session_attrs"] == "read-write"


def test_libpq_parameters_kept_and_prisma_ones_dropped():
    values = service("postgresql://u:p@h/d?sslmode=require&connection_limit=5&connect_timeout=7"
                     "&schema=my%20schema&pool_timeout=3")
    assert values["sslmode"] == "require" and values["connect_timeout"] == "7"
    assert values["options"] == "-c search_path=my\\ schema"
    assert "connection_limit" not in values and "pool_timeout" not in values


def test_hostile_user_and_password_are_decoded_and_escaped_for_pgpass():
    user, password = "li'te llm@x:y", "p'a\"s$s\\w%o@r:d/?#&=+ ;$$ ünï `id` $(id) "
    url = f"postgresql://{url_component(user)}:{url_component(password)}@h:5432/d"
    assert pgservice.problems(url) == []
    assert service(url)["user"] == user
    line = pgservice.password_file(url)
    assert line == "*:*:*:li'te llm@x\\:y:p'a\"s$s\\\\w%o@r\\:d/?#&=+ ;$$ ünï `id` $(id) \n"


def test_no_password_gives_an_empty_password_file():
    assert pgservice.password_file("postgresql://u@h/d") == ""
    assert pgservice.password_file("postgresql://u:@h/d") == "*:*:*:u:\n"


@pytest.mark.parametrize("url,expected", [
    ("mysql://u:p@h/d", "must start with postgresql://"),
    ("postgresql://u:p@/d", "names no host"),
    ("postgresql://u:p@h:54x/d", "port that is not a number"),
    ("postgresql://u:p@h:5432/", "names no database"),
    ("postgresql://:p@h:5432/d", "names no user"),
    ("postgresql://u:a%0Ab@h/d", "password holds a line break"),
    ("postgresql://u%20:p@h/d", "the user holds a line break or ends in a blank"),
])
def test_urls_libpq_cannot_take_exactly_are_problems(url, expected):
    found = pgservice.problems(url)
    assert len(found) == 1 and expected in found[0] and "fix:" in found[0]


# A password written into the URL without percent-encoding, breaking the parse in each way it can:
# '/' and '?' end the host part early (the rest of the password is read as a port, host or database),
# '[' starts an IPv6 host, ',' and ':' split hosts and ports, '@' moves the user/host boundary.
HOSTILE_PASSWORDS = ["Xy7/Qw3Lp9Zr", "Xy7?Qw3Lp9Zr", "Xy7/Qw3:Lp9Zr", "Xy7Q[w3Lp9]Zr", "Xy7,Qw3:Lp9Zr",
                     "Xy7:Qw3/Lp9Zr", "Xy7Qw3Lp9Zr:", "Xy7Qw3@Lp9/Zr", "Xy7@Qw3?Lp9Zr", "Xy7\nQw3Lp9Zr",
                     ":Xy7Qw3Lp9Zr/"]


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
@pytest.mark.parametrize("template", ["postgresql://litellm:{}@db.internal:5432/gateway",
                                      "postgresql://litellm:{}@[fd00::5]:5432/gateway",
                                      "postgresql://litellm:{}@primary:5432,standby:5433/gateway"])
def test_no_problem_quotes_any_part_of_the_password(template, password):
    url = template.format(password)
    texts = pgservice.problems(url)
    for build in (pgservice.service_file, pgservice.password_file):
        try:
            build(url)
        except pgservice.UrlError as error:
            texts.append(str(error))
    pieces = {piece for part in password.replace("\n", "/").split("/") for piece in (part, *part.split(":"),
              *part.split("?"), *part.split("@"), *part.split(","), *part.replace("[", "]").split("]"))}
    assert [(t, p) for t in texts for p in pieces if len(p) >= 3 and p in t] == []
