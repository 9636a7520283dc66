"""Who may use a gateway, declared as data: `teams` and `virtual_keys`, parsed and checked.

The declarations are converged through the proxy's own API (tasks/key_converge.py); here they are
only read and validated, with every problem reported at once, before any host is touched. A key's
value never appears in the declaration: it lives in the secrets file under the key's `key_env`
(generated there on the first run, or put there by the operator to import an existing key).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Literal, Mapping, overload

from tasks.config import reserved
from tasks.config.models import ENV_NAME

ALL_MODELS = "all"
STATES = ("present", "absent")
ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
USER_ID = re.compile(r"^[^\s\x00-\x1f]{1,128}$")
# LiteLLM's duration_in_seconds: a number and s, m, h, d, w or mo ("30d", "1mo").
DURATION = re.compile(r"^[1-9][0-9]*(s|m|h|d|w|mo)$")
DURATION_EXAMPLE = "'30d' (a number, then s, m, h, d, w or mo)"
VALUES_FILE = "virtual-keys.json"
KEY_PREFIX = "sk-"  # LiteLLM accepts a given key value only with this prefix
MIN_KEY_LENGTH = 20
TEAM_FIELDS = {
    "alias",
    "models",
    "max_budget",
    "budget_duration",
    "tpm_limit",
    "rpm_limit",
    "members",
    "metadata",
    "blocked",
    "state",
    "delete_keys",
}
KEY_FIELDS = {
    "alias",
    "models",
    "team",
    "max_budget",
    "budget_duration",
    "tpm_limit",
    "rpm_limit",
    "metadata",
    "duration",
    "expires",
    "blocked",
    "state",
    "key_env",
}
KEY_EXAMPLE = {"alias": "everything-30d", "models": ALL_MODELS, "max_budget": 50, "budget_duration": "30d"}
TEAM_EXAMPLE = {"alias": "research", "models": ["gpt-4o"], "members": ["alice"]}


@dataclass(frozen=True)
class Team:
    alias: str  # also the team's id in LiteLLM, so the declaration and the row match by name
    models: tuple[str, ...] | None  # None: every model
    max_budget: float | None = None
    budget_duration: str | None = None
    tpm_limit: int | None = None
    rpm_limit: int | None = None
    members: tuple[str, ...] = ()
    metadata: Mapping[str, object] | None = None
    blocked: bool = False
    state: str = "present"
    declared: frozenset[str] = frozenset()  # fields the entry sets: only these are kept in step
    # state "absent": LiteLLM's team deletion deletes every key of the team; without this, a team
    # holding keys the declarations do not delete is refused rather than deleted.
    delete_keys: bool = False


@dataclass(frozen=True)
class VirtualKey:
    alias: str
    key_env: str  # the secrets-file entry holding the key's value
    models: tuple[str, ...] | None  # None: every model (of its team, when it has one)
    team: str | None = None
    max_budget: float | None = None
    budget_duration: str | None = None
    tpm_limit: int | None = None
    rpm_limit: int | None = None
    metadata: Mapping[str, object] | None = None
    duration: str | None = None  # applied when the key is made: it expires that long after
    expires: dt.datetime | None = None  # a fixed end (UTC), kept in step on every run
    blocked: bool = False
    state: str = "present"
    declared: frozenset[str] = frozenset()  # fields the entry sets: only these are kept in step


def values_file(install_dir: str) -> str:
    """The gateway's root-only file of the declared keys' values ({alias: value}, JSON): what the key
    converge reads them from on the host, and what a controller without them recovers them from."""
    return f"{install_dir.rstrip('/')}/{VALUES_FILE}"


def default_key_env(alias: str) -> str:
    """VIRTUAL_KEY_<ALIAS>: the secrets-file entry of a key that names none."""
    return "VIRTUAL_KEY_" + re.sub(r"[^A-Z0-9]", "_", alias.upper())


def _entries(raw: object, name: str, example: dict, allowed: set[str], problems: list[str]) -> list[tuple[str, dict]]:
    """(field label, entry) of each dict with a valid alias not seen before; its unknown fields reported."""
    if not isinstance(raw, (list, tuple)):
        problems.append(f"{name}: must be a list of dicts — fix: {name} = [{example!r}]")
        return []
    entries: list[tuple[str, dict]] = []
    for index, entry in enumerate(raw):
        field = f"{name}[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{field}: must be a dict such as {example!r}")
            continue
        alias = entry.get("alias")
        if not isinstance(alias, str) or not ALIAS.match(alias):
            problems.append(
                f"{field}.alias: {alias!r} must be 1-63 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit — it identifies the entry on every run"
            )
            continue
        field = f"{name}[{alias!r}]"
        if problem := reserved.alias_problem(f"{field}.alias", alias):
            problems.append(problem)
            continue
        if any(entry["alias"] == alias for _, entry in entries):
            problems.append(f"{field}: declared twice — fix: one entry per alias")
            continue
        _unknown(field, entry, allowed, problems)
        entries.append((field, entry))
    return entries


def _unknown(field: str, entry: dict, allowed: set[str], problems: list[str]) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        problems.append(
            f"{field}: unknown field(s) {', '.join(map(str, unknown))} — fix: use only {', '.join(sorted(allowed))}"
        )


@overload
def _number(field: str, value: object, problems: list[str], whole: Literal[True]) -> int | None: ...
@overload
def _number(field: str, value: object, problems: list[str], whole: bool = False) -> float | int | None: ...
def _number(field: str, value: object, problems: list[str], whole: bool = False) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, str):
        problems.append(f"{field}: {value!r} is text — fix: write the number without quotes")
        return None
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < (1 if whole else 0):
        what = "a whole number, 1 or more" if whole else "a number, 0 or more (in USD)"
        problems.append(f"{field}: {value!r} must be {what}")
        return None
    return value


def _duration(field: str, value: object, problems: list[str]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not DURATION.match(value):
        problems.append(f"{field}: {value!r} is not a duration — fix: e.g. {DURATION_EXAMPLE}")
        return None
    return value


def _flag(field: str, value: object, problems: list[str]) -> bool:
    if not isinstance(value, bool):
        problems.append(f"{field}: {value!r} must be True or False")
        return False
    return value


def _state(field: str, value: object, problems: list[str]) -> str:
    if value not in STATES:
        problems.append(f"{field}: {value!r} — fix: use one of {', '.join(STATES)}")
        return "present"
    return value


def _metadata(field: str, value: object, problems: list[str]) -> Mapping[str, object] | None:
    if value is None:
        return None
    try:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise TypeError
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        problems.append(f"{field}: must be a dict with text keys and JSON values, e.g. {{'owner': 'ci'}}")
        return None
    return value


def _models(field: str, value: object, routed: set[str] | None, problems: list[str]) -> tuple[str, ...] | None:
    """ "all" (or left out) -> None; else the listed model names, each one the gateway routes
    (routed=None: models kept in the database may be added later, so any name goes)."""
    if value is None or value == ALL_MODELS:
        return None
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(m, str) and m for m in value):
        problems.append(f"{field}: {value!r} must be {ALL_MODELS!r} or a non-empty list of model names")
        return None
    unknown = [m for m in value if routed is not None and m not in routed]
    if unknown:
        problems.append(
            f"{field}: {', '.join(map(repr, unknown))} not routed by this gateway — fix: use model "
            f"names from `models` ({', '.join(sorted(routed or ()))}) or {ALL_MODELS!r}"
        )
    return tuple(dict.fromkeys(value))


def _expires(field: str, value: object, problems: list[str]) -> dt.datetime | None:
    if value is None:
        return None
    try:
        if not isinstance(value, (str, dt.date)):
            raise ValueError
        moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    except ValueError:
        problems.append(f"{field}: {value!r} is not a date — fix: e.g. '2027-06-30' or '2027-06-30T18:00' (UTC)")
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def parse_teams(raw: object, routed: set[str] | None, problems: list[str]) -> tuple[Team, ...]:
    teams: dict[str, Team] = {}
    for field, entry in _entries(raw, "teams", TEAM_EXAMPLE, TEAM_FIELDS, problems):
        alias = entry["alias"]
        members = entry.get("members", [])
        if not isinstance(members, (list, tuple)) or not all(isinstance(m, str) and USER_ID.match(m) for m in members):
            problems.append(f"{field}.members: must be a list of user ids (text without spaces), e.g. ['alice']")
            members = []
        teams[alias] = Team(
            alias=alias,
            models=_models(f"{field}.models", entry.get("models"), routed, problems),
            max_budget=_number(f"{field}.max_budget", entry.get("max_budget"), problems),
            budget_duration=_duration(f"{field}.budget_duration", entry.get("budget_duration"), problems),
            tpm_limit=_number(f"{field}.tpm_limit", entry.get("tpm_limit"), problems, whole=True),
            rpm_limit=_number(f"{field}.rpm_limit", entry.get("rpm_limit"), problems, whole=True),
            members=tuple(dict.fromkeys(members)),
            metadata=_metadata(f"{field}.metadata", entry.get("metadata"), problems),
            blocked=_flag(f"{field}.blocked", entry.get("blocked", False), problems),
            state=_state(f"{field}.state", entry.get("state", "present"), problems),
            declared=frozenset(entry) & TEAM_FIELDS,
            delete_keys=_flag(f"{field}.delete_keys", entry.get("delete_keys", False), problems),
        )
    return tuple(teams.values())


def parse_keys(
    raw: object, teams: tuple[Team, ...], routed: set[str] | None, problems: list[str]
) -> tuple[VirtualKey, ...]:
    by_alias = {t.alias: t for t in teams}
    keys: dict[str, VirtualKey] = {}
    envs: dict[str, str] = {}
    for field, entry in _entries(raw, "virtual_keys", KEY_EXAMPLE, KEY_FIELDS, problems):
        alias = entry["alias"]
        state = _state(f"{field}.state", entry.get("state", "present"), problems)
        key_env = entry.get("key_env", default_key_env(alias))
        if not isinstance(key_env, str) or not ENV_NAME.match(key_env):
            problems.append(
                f"{field}.key_env: {key_env!r} must be a secrets-file entry name such as "
                f"{default_key_env(alias)!r} (capitals, digits, _)"
            )
        elif problem := reserved.entry_problem(f"{field}.key_env", key_env, default_key_env(alias)):
            problems.append(problem)
        elif key_env in envs:
            problems.append(
                f"{field}.key_env: {key_env} is also the entry of key {envs[key_env]!r} — fix: give "
                "each key its own key_env (aliases differing only in case or '-' vs '_' share the default)"
            )
        else:
            envs[key_env] = alias
        team = entry.get("team")
        if team is not None and (team not in by_alias or (by_alias[team].state == "absent" and state == "present")):
            problems.append(
                f"{field}.team: {team!r} is not a declared, present team — fix: declare it in `teams` "
                f"(declared: {', '.join(sorted(by_alias)) or 'none'})"
            )
        models = _models(f"{field}.models", entry.get("models"), routed, problems)
        team_models = by_alias[team].models if team in by_alias else None
        if models and team_models is not None and not set(models) <= set(team_models):
            problems.append(
                f"{field}.models: {', '.join(sorted(set(models) - set(team_models)))} not among team "
                f"{team!r}'s models ({', '.join(team_models)}) — fix: add them to the team, or narrow the key"
            )
        if entry.get("duration") is not None and entry.get("expires") is not None:
            problems.append(
                f"{field}: both duration and expires — fix: keep one (duration counts from the key's "
                "creation; expires is a fixed date)"
            )
        keys[alias] = VirtualKey(
            alias=alias,
            key_env=key_env if isinstance(key_env, str) else default_key_env(alias),
            models=models,
            team=team,
            max_budget=_number(f"{field}.max_budget", entry.get("max_budget"), problems),
            budget_duration=_duration(f"{field}.budget_duration", entry.get("budget_duration"), problems),
            tpm_limit=_number(f"{field}.tpm_limit", entry.get("tpm_limit"), problems, whole=True),
            rpm_limit=_number(f"{field}.rpm_limit", entry.get("rpm_limit"), problems, whole=True),
            metadata=_metadata(f"{field}.metadata", entry.get("metadata"), problems),
            duration=_duration(f"{field}.duration", entry.get("duration"), problems),
            expires=_expires(f"{field}.expires", entry.get("expires"), problems),
            blocked=_flag(f"{field}.blocked", entry.get("blocked", False), problems),
            state=state,
            declared=frozenset(entry) & KEY_FIELDS,
        )
    return tuple(keys.values())


def key_value_problems(keys: tuple[VirtualKey, ...], values: Mapping[str, str]) -> list[str]:
    """A key value the operator put in the secrets file must be one LiteLLM accepts as given."""
    problems = []
    for key in keys:
        value = values.get(key.key_env)
        if value is not None and (not value.startswith(KEY_PREFIX) or len(value) < MIN_KEY_LENGTH):
            problems.append(
                f"{key.key_env}: the value of virtual key {key.alias!r} must start with {KEY_PREFIX!r} "
                f"and have {MIN_KEY_LENGTH} characters or more (LiteLLM's rule for a given key) — fix: "
                "delete the entry to have one generated"
            )
    return problems


def effective_models(key: VirtualKey, teams: tuple[Team, ...], routed: tuple[str, ...]) -> tuple[str, ...]:
    """The model names a key can use: its own list, else its team's, else everything routed."""
    team = next((t for t in teams if t.alias == key.team), None)
    chosen = key.models or (team.models if team else None)
    return tuple(sorted(chosen if chosen is not None else routed))
