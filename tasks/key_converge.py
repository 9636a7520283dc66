"""The declared teams and virtual keys made true in the gateway's database, through LiteLLM's API.

What the proxy holds is read (tasks/remote/key_agent.py, inside the proxy container), compared here with
the declarations, and only what differs is sent back: missing entries made, drifted fields (only
those the declaration sets) updated, `absent` ones deleted. Spend is never sent, so never reset;
keys the declarations do not name are never touched, and read only to list those a team's deletion
would take with it (LiteLLM's /team/delete deletes every key of the team): that deletion is refused,
naming them, unless the team entry says `delete_keys`. A second run with nothing changed finds
nothing to do and reports no change. Under --dry the plan is printed against what the proxy holds.

A key's value travels from the secrets file to a root-only file on the host (KEYS_FILE) and from
there on the agent's stdin: never in a command, a fact's output or pyinfra's log.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import sys
from typing import Any

from pyinfra import host, logger, state
from pyinfra.api import FactBase, deploy, operation

from tasks.config.settings import GATEWAYS, Settings, read_host_data
from tasks.config.topology import PROVISIONED_MODES
from tasks.config.virtual_keys import VALUES_FILE, Team, VirtualKey, effective_models
from tasks.gateway.stack import staging_dir
from tasks.gateway.verify import PROBE_SOURCE, ContainerChecks, or_unavailable
from tasks.lib.compose import PROXY_SERVICE, ComposeServices, compose_cmd
from tasks.lib.outcome import failing_command
from tasks.lib.uploads import private_file
from tasks.remote import key_agent, program

AGENT_SOURCE = program("key_agent")
KEYS_FILE = VALUES_FILE
PROXY = key_agent.PROXY
# A fixed expiry is sent as seconds from now; this much drift is the request's own latency, not a change.
EXPIRY_SLACK_SECONDS = 300
KEY_SETTINGS = (
    "models",
    "team",
    "max_budget",
    "budget_duration",
    "tpm_limit",
    "rpm_limit",
    "metadata",
    "expires",
    "blocked",
)
# Keys named in a refused team deletion; the rest are counted.
KEYS_NAMED = 20
TEAM_SETTINGS = ("models", "max_budget", "budget_duration", "tpm_limit", "rpm_limit", "metadata", "blocked")


def keys_file(settings: Settings) -> str:
    return f"{settings.install_dir}/{KEYS_FILE}"


def key_values(settings: Settings) -> dict[str, str]:
    """{alias: value} of every declared key whose value the secrets file holds."""
    values = {key.alias: settings.secrets.get(key.key_env) for key in settings.virtual_keys}
    return {alias: value for alias, value in values.items() if value}


def scrubbed(settings: Settings, text: str) -> str:
    """A failure's text as printed: without any declared key's value or hash, or anything key-like
    (the proxy's own refusals quote a key's hash and the start of its value)."""
    return key_agent.scrub(text, key_values(settings).values())


def _in_container(settings: Settings, script: str, *args: str) -> str:
    """A stdlib script run in the proxy container, the key values on its stdin (no file: none)."""
    source = shlex.quote(keys_file(settings))
    exec_cmd = f"{compose_cmd(settings.compose_project, settings.install_dir)} exec -T {PROXY_SERVICE}"
    quoted = " ".join(shlex.quote(a) for a in args)
    return f"(cat {source} 2>/dev/null || echo '{{}}') | {exec_cmd} python3 -c {shlex.quote(script)} {quoted}"


def owner(settings: Settings) -> str:
    """The gateway of this run that converges the keys of settings' database: itself, unless an
    earlier gateway of the run shares its (external: the secrets file's one DATABASE_URL) database."""
    if settings.database_mode != "external":
        return settings.host_name
    for gateway in state.inventory.get_group(GATEWAYS, default=[]):
        if state.is_host_in_limit(gateway) and _shares_database(gateway, settings):
            return gateway.name
    return settings.host_name


def _shares_database(gateway, settings: Settings) -> bool:
    """External: the secrets file's one DATABASE_URL; a db host's gateways (tasks/config/topology.py): its one database."""
    mode = read_host_data(gateway.data.get)["database_mode"]
    if settings.db_host:
        return mode in PROVISIONED_MODES
    return mode == "external"


class DeclaredAccess(FactBase):
    """The declared teams and keys as the proxy holds them (key_agent.read), or {"error": ...}."""

    def command(self, project: str, install_dir: str, agent_command: str, moment: str = "") -> str:
        # `moment` only tells two reads of one run apart (pyinfra keeps a fact per argument set).
        return f"{agent_command} 2>&1 || true"

    def process(self, output: list[str]) -> dict:
        try:
            return json.loads(output[-1])
        except (IndexError, ValueError):
            # Not the agent's JSON (which it scrubs itself): quoted, anything key-like cut out.
            return {
                "error": f"cannot ask the proxy (is the {PROXY_SERVICE} container running?): "
                + key_agent.scrub(" ".join(output), values=())[-300:]
            }


def read_spec(settings: Settings) -> dict:
    """What key_agent.read is asked: the declared teams and keys, and the keys of each team to delete."""
    return {
        "teams": [t.alias for t in settings.teams],
        "keys": [k.alias for k in settings.virtual_keys],
        "team_keys": [t.alias for t in settings.teams if t.state == "absent"],
    }


def read_access(settings: Settings, moment: str = "before") -> dict:
    fact, arguments = access_read(settings, moment)
    return host.get_fact(fact, **arguments)


def access_read(settings: Settings, moment: str = "before") -> tuple[type[FactBase], dict]:
    return DeclaredAccess, {
        "project": settings.compose_project,
        "install_dir": settings.install_dir,
        "agent_command": _in_container(settings, AGENT_SOURCE, "read", json.dumps(read_spec(settings))),
        "moment": moment,
    }


def checks_read(settings: Settings) -> list[tuple[type[FactBase], dict]]:
    """What access_converged asks the proxy on a gateway that converges keys, as [(fact, arguments)]
    (tasks/lib/fact_cache.py checks). Not keys_verified's checks: read before the keys converge, a key
    about to change fails them, and each failing check retries until verify_timeout (tasks/remote/probe.py)."""
    if not (settings.teams or settings.virtual_keys) or dry_run() or owner(settings) != settings.host_name:
        return []
    return [access_read(settings)]


def key_checks_read(settings: Settings, checks: list[dict]) -> tuple[type[FactBase], dict]:
    return KeyChecks, {
        "project": settings.compose_project,
        "install_dir": settings.install_dir,
        "probe_command": checks_command(settings, checks, settings.verify_timeout),
    }


# --- comparing -----------------------------------------------------------------------------------


def _parse_time(value: object) -> dt.datetime | None:
    if not value:
        return None
    moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _seconds_until(moment: dt.datetime, now: dt.datetime) -> str:
    return f"{max(1, int((moment - now).total_seconds()))}s"


def _wanted(entry: Team | VirtualKey, name: str) -> object:
    if name == "models":
        return sorted(entry.models or [])
    if name == "team" and isinstance(entry, VirtualKey):  # a key's setting only (KEY_SETTINGS)
        return entry.team
    if name == "metadata":
        return dict(entry.metadata or {})
    return getattr(entry, name)


def _stored(row: dict, name: str) -> object:
    if name == "models":
        return sorted(row.get("models") or [])
    if name == "team":
        return row.get("team_id")
    if name == "blocked":
        return bool(row.get("blocked"))
    return row.get(name)


# wanted, stored: values of the setting `name`, their type the setting's (a dict for metadata, ...).
def _same(name: str, wanted: Any, stored: Any, now: dt.datetime) -> bool:
    if name == "metadata":  # LiteLLM adds entries of its own: the declared ones must match
        return all((stored or {}).get(k) == v for k, v in wanted.items())
    if name == "expires":
        held = _parse_time(stored)
        return (
            wanted is None
            and held is None
            or (
                wanted is not None and held is not None and abs((held - wanted).total_seconds()) <= EXPIRY_SLACK_SECONDS
            )
        )
    if name == "max_budget" and wanted is not None and stored is not None:
        return abs(float(wanted) - float(stored)) < 1e-9
    return wanted == stored


def _body_value(name: str, wanted: Any, row: dict | None, now: dt.datetime) -> tuple[str, object]:
    """(API field, value) for one setting; a fixed expiry goes as LiteLLM's duration from now."""
    if name == "team":
        return "team_id", wanted
    if name == "expires":
        return "duration", None if wanted is None else _seconds_until(wanted, now)
    if name == "metadata":
        return "metadata", {**((row or {}).get("metadata") or {}), **wanted}
    return name, wanted


def _drift(entry: Team | VirtualKey, row: dict, settings_names: tuple[str, ...], now: dt.datetime) -> dict:
    body = {}
    for name in (n for n in settings_names if n in entry.declared):
        wanted = _wanted(entry, name)
        if not _same(name, wanted, _stored(row, name), now):
            field, value = _body_value(name, wanted, row, now)
            body[field] = value
    return body


def _new_body(entry: Team | VirtualKey, settings_names: tuple[str, ...], now: dt.datetime) -> dict:
    body = {}
    for name in settings_names:
        wanted = _wanted(entry, name)
        if wanted is None or (name == "metadata" and not wanted) or (name == "blocked" and not wanted):
            continue
        field, value = _body_value(name, wanted, None, now)
        body[field] = value
    if isinstance(entry, VirtualKey) and entry.duration:
        body["duration"] = entry.duration
    return body


def _members(user_ids) -> list[dict]:
    return [{"role": "user", "user_id": user_id} for user_id in user_ids]


def plan(
    teams: tuple[Team, ...], keys: tuple[VirtualKey, ...], current: dict, now: dt.datetime
) -> tuple[list[dict], list[str]]:
    """(actions for key_agent.apply, problems that stop the host before any action)."""
    actions: list[dict] = []
    problems: list[str] = []
    held_teams, held_keys = current.get("teams", {}), current.get("keys", {})
    for team in (t for t in teams if t.state == "present"):
        row = held_teams.get(team.alias)
        if row is None:
            body = {"team_id": team.alias, "team_alias": team.alias, **_new_body(team, TEAM_SETTINGS, now)}
            if team.members:
                body["members_with_roles"] = _members(team.members)
            actions.append({"do": "team_new", "body": body, "describe": f"team {team.alias}: created"})
            continue
        if drift := _drift(team, row, TEAM_SETTINGS, now):
            actions.append(
                {
                    "do": "team_update",
                    "body": {"team_id": team.alias, **drift},
                    "describe": f"team {team.alias}: {', '.join(sorted(drift))} updated",
                }
            )
        if "members" in team.declared:
            held = set(row.get("members") or [])
            if added := [u for u in team.members if u not in held]:
                actions.append(
                    {
                        "do": "member_add",
                        "body": {"team_id": team.alias, "member": _members(added)},
                        "describe": f"team {team.alias}: member(s) {', '.join(added)} added",
                    }
                )
            for user_id in sorted(held - set(team.members)):
                actions.append(
                    {
                        "do": "member_delete",
                        "body": {"team_id": team.alias, "user_id": user_id},
                        "describe": f"team {team.alias}: member {user_id} removed",
                    }
                )
    for key in keys:
        row = held_keys.get(key.alias)
        if key.state == "absent":
            if row is not None:
                actions.append(
                    {"do": "key_delete", "body": {"key_aliases": [key.alias]}, "describe": f"key {key.alias}: deleted"}
                )
            continue
        if row is None:
            if key.expires is not None and key.expires <= now:
                problems.append(
                    f"virtual_keys[{key.alias!r}].expires: {key.expires:%Y-%m-%d %H:%M} UTC has passed, so the "
                    "key would be made expired — fix: a later date, or state 'absent'"
                )
                continue
            body = {"key_alias": key.alias, **_new_body(key, KEY_SETTINGS, now)}
            actions.append(
                {"do": "key_generate", "alias": key.alias, "body": body, "describe": f"key {key.alias}: created"}
            )
            continue
        if row.get("count", 1) > 1:
            problems.append(
                f"virtual key {key.alias!r}: {row['count']} keys in the database have this alias — fix: "
                "delete the extra ones in the admin UI (LiteLLM > Virtual Keys) so one is left"
            )
        elif row.get("value_matches") is False:
            problems.append(
                f"virtual key {key.alias!r}: the database holds a key with this alias whose value is not the "
                f"secrets file's {key.key_env} — fix: put that key's value back into the secrets file as "
                f"{key.key_env}=..., or, to replace the key (its spend history stays with the old one), first "
                f"declare it state 'absent', deploy, then declare it present again"
            )
        elif row.get("key_alias") != key.alias:  # an imported key, found by its value
            actions.append(
                {
                    "do": "key_update",
                    "alias": key.alias,
                    "body": {"key_alias": key.alias, **_drift(key, row, KEY_SETTINGS, now)},
                    "describe": f"key {key.alias}: adopted (was {row.get('key_alias') or 'without alias'})",
                }
            )
        elif drift := _drift(key, row, KEY_SETTINGS, now):
            actions.append(
                {
                    "do": "key_update",
                    "alias": key.alias,
                    "body": {"key_alias": key.alias, **drift},
                    "describe": f"key {key.alias}: {', '.join(sorted(drift))} updated",
                }
            )
    for team in (t for t in teams if t.state == "absent"):
        row = held_teams.get(team.alias)
        if row is None:
            continue
        if row.get("keys") is None:
            problems.append(
                f"teams[{team.alias!r}]: state 'absent', but the team's keys could not be listed, and "
                "LiteLLM deletes them with the team — fix: run again once the proxy answers /key/list"
            )
            continue
        taken = _keys_taken(team, keys, row["keys"])
        if taken and not team.delete_keys:
            problems.append(_refused_deletion(team, taken))
            continue
        with_keys = f", with its {len(taken)} key(s)" if taken else ""
        actions.append(
            {
                "do": "team_delete",
                "body": {"team_ids": [team.alias]},
                "describe": f"team {team.alias}: deleted{with_keys}",
            }
        )
    return actions, problems


def _keys_taken(team: Team, keys: tuple[VirtualKey, ...], held: list[dict]) -> list[dict]:
    """The team's keys its deletion would delete that the plan does not already delete (declared
    absent) or move to another team (declared present, naming its team: never this absent one)."""
    leaving = {k.alias for k in keys if k.state == "absent" or "team" in k.declared}
    return [row for row in held if row.get("key_alias") not in leaving]


def _refused_deletion(team: Team, taken: list[dict]) -> str:
    names = [row.get("key_alias") or f"key {row.get('token') or '?'}... (no alias)" for row in taken]
    shown = ", ".join(names[:KEYS_NAMED]) + (f" and {len(names) - KEYS_NAMED} more" if len(names) > KEYS_NAMED else "")
    return (
        f"teams[{team.alias!r}]: state 'absent' would delete {len(taken)} key(s) with the team that the "
        f"declarations do not delete or move: {shown} (LiteLLM deletes every key of a deleted team) — fix: "
        "move or delete them in the admin UI (LiteLLM > Virtual Keys), or declare them, or set "
        f"'delete_keys': True on team {team.alias!r} to delete them with it"
    )


# --- checking ------------------------------------------------------------------------------------


def key_checks(settings: Settings, now: dt.datetime | None = None) -> list[dict]:
    """For probe.py: every present, unblocked, unexpired key sees exactly its models; a blocked,
    expired or absent one is refused (when its value is known)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    values = key_values(settings)
    routed = tuple(m.name for m in settings.models)
    checks = []
    for key in settings.virtual_keys:
        if key.alias not in values:
            continue
        url = f"{PROXY}/v1/models"
        live = key.state == "present" and not key.blocked and not (key.expires and key.expires <= now)
        if live:
            models = effective_models(key, settings.teams, routed)
            checks.append(
                {
                    "name": f"virtual key {key.alias}: sees its models",
                    "kind": "models",
                    "url": url,
                    "key_alias": key.alias,
                    "expect": list(models),
                    "exact": not settings.store_model_in_db,
                    "fix": "run `pyinfra inventory keys.py` to converge the declared keys",
                }
            )
        else:
            why = "absent" if key.state == "absent" else "blocked" if key.blocked else "expired"
            checks.append(
                {
                    "name": f"virtual key {key.alias} ({why}): refused",
                    "kind": "refused",
                    "url": url,
                    "key_alias": key.alias,
                    "fix": "run `pyinfra inventory keys.py` to converge the declared keys",
                }
            )
    return checks


def checks_command(settings: Settings, checks: list[dict], seconds: int) -> str:
    spec = json.dumps({"checks": checks, "seconds": seconds, "keys_on_stdin": True})
    return f"{_in_container(settings, PROBE_SOURCE, spec)} {or_unavailable(settings.install_dir)}"


class KeyChecks(ContainerChecks):
    """probe.py's results for the virtual-key checks (verify's fact, with the keys on stdin)."""

    def command(self, project: str, install_dir: str, probe_command: str) -> str:
        return probe_command


# --- operations ----------------------------------------------------------------------------------


@operation(is_idempotent=True)
def access_converged(settings: Settings):
    if not state.is_executing:
        host.noop("compared with the gateway's database when the deploy executes")
        return
    converging = owner(settings)
    if converging != host.name:
        host.noop(f"converged by {converging}, which shares this gateway's database")
        return
    current = read_access(settings)
    if current.get("error"):
        yield failing_command(scrubbed(settings, f"virtual keys on {host.name}: {current['error']}"))
        return
    actions, problems = plan(settings.teams, settings.virtual_keys, current, dt.datetime.now(dt.timezone.utc))
    if problems:
        yield failing_command(f"virtual keys on {host.name}, nothing changed:" + "".join(f"\n  {p}" for p in problems))
        return
    if not actions:
        host.log(listing(settings, current), logger.info)
        host.noop(f"{len(settings.teams)} team(s) and {len(settings.virtual_keys)} key(s) as declared")
        return
    for action in actions:
        host.log(f"will do: {action['describe']}", logger.info)
    yield _in_container(settings, AGENT_SOURCE, "apply", json.dumps({"actions": actions}))


@operation(is_idempotent=True)
def keys_verified(settings: Settings):
    checks = key_checks(settings)
    if not state.is_executing or not checks:
        host.noop("checked when the deploy executes" if checks else "no key value to check with")
        return
    fact, arguments = key_checks_read(settings, checks)
    results = host.get_fact(fact, **arguments)
    failures = [f"{r['name']}: {r['problem']} — fix: {r['fix']}" for r in results if not r["ok"]]
    if not failures:
        host.noop(f"{len(results)} virtual key check(s) passed")
        return
    yield failing_command(scrubbed(settings, f"virtual keys on {host.name}: " + "".join(f"\n  {f}" for f in failures)))


def table(settings: Settings, current: dict) -> str:
    """alias, team, models, budget, spend, expires, state — never a value."""
    header = ("alias", "team", "models", "budget", "spend", "expires", "state")
    rows = [header]
    for key in settings.virtual_keys:
        row = current.get("keys", {}).get(key.alias)
        if row is None:
            rows.append(
                (key.alias, key.team or "-", "-", "-", "-", "-", "absent" if key.state == "absent" else "MISSING")
            )
            continue
        budget = "-" if row.get("max_budget") is None else f"{float(row['max_budget']):.2f}"
        if row.get("budget_duration"):
            budget += f" / {row['budget_duration']}"
        expires = _parse_time(row.get("expires"))
        state_text = (
            "blocked"
            if row.get("blocked")
            else "expired"
            if expires and expires <= dt.datetime.now(dt.timezone.utc)
            else "active"
        )
        if key.state == "absent":
            state_text = "DELETE PENDING"
        rows.append(
            (
                key.alias,
                row.get("team_id") or "-",
                ", ".join(row.get("models") or []) or "all",
                budget,
                f"{float(row.get('spend') or 0):.4f}",
                f"{expires:%Y-%m-%d %H:%M}" if expires else "never",
                state_text,
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    return "\n".join("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def listing(settings: Settings, current: dict) -> str:
    return f"virtual keys on {settings.host_name}:\n{table(settings, current)}"


@operation(is_idempotent=True)
def access_reported(settings: Settings):
    """The keys as the proxy holds them after the converge changed them (a converge with nothing to do
    lists them from what it read; a gateway sharing another's database reads them here)."""
    if not state.is_executing:
        host.noop("read when the deploy executes")
        return
    current = read_access(settings, moment="after")
    if current.get("error"):
        host.noop(f"cannot read the keys: {current['error']}")
        return
    host.log(listing(settings, current), logger.info)
    host.noop(f"{len(settings.virtual_keys)} declared key(s) listed")
    yield from ()  # an operation is a generator, even one that only reports


def dry_run() -> bool:
    """pyinfra's --dry, which the CLI keeps to itself (with -y, no operation body runs to ask)."""
    return "--dry" in sys.argv[1:]


def preview_lines(
    host_name: str, proxy_running: bool, current: dict | None, settings: Settings, now: dt.datetime
) -> list[str]:
    """What a --dry run prints for the key converge: the plan against what the proxy holds now."""
    if not proxy_running:
        return [
            f"virtual keys on {host_name}: the plan is made when the deploy executes (the {PROXY_SERVICE} "
            "container is not running yet)"
        ]
    assert current is not None  # preview reads it whenever the proxy runs
    if current.get("error"):
        return [
            scrubbed(
                settings,
                f"virtual keys on {host_name}: cannot read what the proxy holds "
                f"({current['error']}); the plan is made when the deploy executes",
            )
        ]
    actions, problems = plan(settings.teams, settings.virtual_keys, current, now)
    if problems:
        return [
            f"virtual keys on {host_name}: the deploy would refuse, changing nothing:"
            + "".join(f"\n  {p}" for p in problems)
        ]
    if not actions:
        return [
            f"virtual keys on {host_name}: {len(settings.teams)} team(s) and {len(settings.virtual_keys)} "
            "key(s) as declared, nothing to do"
        ]
    return [f"will do: {action['describe']}" for action in actions]


def preview(settings: Settings) -> None:
    """Under --dry: the plan printed, nothing applied. The read is a fact (read-only); it compares
    with the key values the host holds, since --dry writes none there."""
    converging = owner(settings)
    if converging != host.name:
        host.log(f"virtual keys: converged by {converging}, which shares this gateway's database", logger.info)
        return
    services = host.get_fact(ComposeServices, project=settings.compose_project, install_dir=settings.install_dir)
    running = (services.get(PROXY_SERVICE) or {}).get("state") == "running"
    current = read_access(settings, moment="dry") if running else None
    for line in preview_lines(host.name, running, current, settings, dt.datetime.now(dt.timezone.utc)):
        host.log(line, logger.info)


@deploy("Virtual keys and teams")
def converge_access(settings: Settings) -> None:
    if not (settings.teams or settings.virtual_keys):
        return
    if dry_run():
        preview(settings)
    # The values of the declared keys, root-only: the agent and the checks read them on stdin.
    private_file(
        name=f"Write {KEYS_FILE} (virtual key values, mode 0600)",
        content=json.dumps(key_values(settings), sort_keys=True, indent=1) + "\n",
        dest=keys_file(settings),
        staging_dir=staging_dir(settings),
    )
    converged = access_converged(name="Teams and virtual keys as declared", settings=settings)
    keys_verified(name="Virtual keys authenticate as declared", settings=settings)
    access_reported(
        name="Virtual keys listed",
        settings=settings,
        _if=lambda: converged.did_change() or owner(settings) != settings.host_name,
    )
