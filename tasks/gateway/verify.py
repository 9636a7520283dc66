"""Verify a gateway along the paths requests take: the proxy, then every Ollama node and upstream
it routes to, checked from inside the proxy container and, for comparison, from the controller.

Checks change nothing: a healthy gateway reports no change. A failing check fails this host only,
with what was checked, from where, the URL, the error and the likely fix.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Sequence
from urllib.parse import quote

from pyinfra import host, logger, state
from pyinfra.api import FactBase, deploy, operation

from tasks.config.models import Model
from tasks.config.settings import Settings
from tasks.gateway import tls
from tasks.gateway.backup import local_dir, unit_name
from tasks.gateway.database import MASTER_KEY_ALIAS
from tasks.lib.compose import PROXY_SERVICE, compose_cmd
from tasks.lib.outcome import failing_command
from tasks.remote import probe, program

PROBE_SOURCE = program("probe")
PROXY = "http://127.0.0.1:4000"
# Not a secret: a syntactically valid key that no deployment has.
WRONG_KEY_ENV = "LITELLM_DEPLOY_WRONG_KEY"
CONTAINER = "the gateway's proxy container"
CONTROLLER = "the controller"
HOST = "the gateway host"
# Budget of the controller's re-check of a route the container could not use.
CONTROLLER_SECONDS = 10
STALE_AFTER = {"hourly": 3 * 3600, "daily": 2 * 86400 + 3600, "weekly": 15 * 86400}  # backup_schedule -> s


def _node_label(base: str, models: tuple[Model, ...], nodes: dict[str, str]) -> str:
    """'ollama node NAME at URL' when ollama_nodes names the node, else 'ollama at URL'."""
    named = {m.ollama_node for m in models if m.is_ollama and m.api_base == base and m.ollama_node}
    named |= {name for name, url in nodes.items() if url.rstrip("/") == base.rstrip("/")}
    return f"ollama node {', '.join(sorted(named))} at {base}" if named else f"ollama at {base}"


def _ollama_bases(models: tuple[Model, ...]) -> dict[str, list[str]]:
    bases: dict[str, list[str]] = {}
    for model in models:
        if model.is_ollama:
            assert model.api_base is not None  # always set for an Ollama model (tasks/config/models.py _ollama_base)
            bases.setdefault(model.api_base, []).append(model.upstream_model)
    return bases


def _upstreams(models: tuple[Model, ...]) -> list[Model]:
    return [m for m in models if not m.is_ollama and m.api_base]


def _route_names(settings: Settings) -> dict[str, list[str]]:
    """model name -> the route checks its chat smoke test depends on."""
    needs: dict[str, list[str]] = {}
    for check in route_checks(settings):
        for model in check["models"]:
            needs.setdefault(model, []).append(check["name"])
    return needs


def proxy_logs(settings: Settings) -> str:
    """The command that shows the proxy's log, as a fix hint."""
    return f"`{compose_cmd(settings.compose_project, settings.install_dir)} logs {PROXY_SERVICE}`"


def gateway_checks(settings: Settings) -> list[dict]:
    """Checks run inside the proxy container against the proxy itself (no chat: see chat_checks)."""
    names = [m.name for m in settings.models]
    checks: list[dict] = [
        {
            "name": "gateway liveliness",
            "kind": "status",
            "url": f"{PROXY}/health/liveliness",
            "fix": f"see {proxy_logs(settings)}",
        },
        {
            "name": "gateway readiness",
            "kind": "readiness",
            "url": f"{PROXY}/health/readiness",
            "db": settings.has_database,
            "fix": "check DATABASE_URL and that Postgres is healthy",
        },
        {
            "name": "gateway models",
            "kind": "models",
            "url": f"{PROXY}/v1/models",
            "key_env": "LITELLM_MASTER_KEY",
            "expect": names,
            "exact": not settings.store_model_in_db,
            "fix": "compare litellm-config.yaml with group data",
        },
        {
            "name": "gateway refuses a wrong key",
            "kind": "refused",
            "url": f"{PROXY}/v1/models",
            "key_env": WRONG_KEY_ENV,
            "fix": "LITELLM_MASTER_KEY must be set in .env",
        },
    ]
    return checks + (
        [
            {
                "name": f"gateway database: admin user {settings.admin_user_id} and its master-key link",
                "kind": "admin_user",
                "url": f"{PROXY}/user/info?user_id={quote(settings.admin_user_id)}",
                "key_env": "LITELLM_MASTER_KEY",
                "expect": settings.admin_user_id,
                "alias": MASTER_KEY_ALIAS,
                "fix": f"the bootstrap stage makes them: re-run deploy.py; {proxy_logs(settings)} for database errors",
            }
        ]
        if settings.has_database
        else []
    )


def chat_checks(settings: Settings) -> list[dict]:
    """One chat completion through the gateway per smoke-tested model; skipped when its route failed,
    so a dead node is reported once, as the node."""
    needs = _route_names(settings)
    return [
        {
            "name": f"chat through gateway: {model.name}",
            "kind": "chat",
            "timeout": 60,
            "url": f"{PROXY}/v1/chat/completions",
            "key_env": "LITELLM_MASTER_KEY",
            "body": {
                "model": model.name,
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "Reply with one word: ok"}],
            },
            "requires": needs.get(model.name, []),
            "fix": f"the route of {model.name} ({model.model} at {model.api_base or 'provider default'}): "
            f"see {proxy_logs(settings)}",
        }
        for model in settings.models
        if model.smoke_test
    ]


def route_checks(settings: Settings) -> list[dict]:
    """Checks of what the gateway routes to; run from the container and, when failing, from the controller.
    `models` (the gateway's model names on that route) is for this module, not for the probe."""
    checks: list[dict] = []
    for base, served in _ollama_bases(settings.models).items():
        label = _node_label(base, settings.models, dict(settings.ollama_nodes))
        routed = [m.name for m in settings.models if m.is_ollama and m.api_base == base]
        unreachable = (
            f"is Ollama running on that node (systemctl status ollama), listening on a non-loopback "
            f"address (OLLAMA_HOST=0.0.0.0) and reachable from the gateway at {base}?"
        )
        checks += [
            {"name": label, "kind": "status", "url": f"{base}/", "fix": unreachable, "models": routed},
            {
                "name": f"{label}: /api/version",
                "kind": "status",
                "url": f"{base}/api/version",
                "requires": [label],
                "fix": unreachable,
                "models": routed,
            },
            {
                "name": f"{label}: models",
                "kind": "ollama_tags",
                "url": f"{base}/api/tags",
                "expect": served,
                "requires": [label],
                "fix": f"run `ollama pull <model>` on that node for {', '.join(served)}",
                "fix_no_answer": unreachable,
                "models": routed,
            },
        ]
    for model in _upstreams(settings.models):
        assert model.api_base is not None  # _upstreams keeps those that have one
        checks.append(
            {
                "name": f"upstream {model.api_base} for {model.name}",
                "kind": "models",
                "url": f"{model.api_base.rstrip('/')}/v1/models",
                "key_env": model.api_key_env,
                "expect": [model.upstream_model],
                "models": [model.name],
                "fix": f"check {model.api_key_env} in the secrets file and that the upstream serves {model.upstream_model}",
                "fix_no_answer": f"is the upstream running and reachable from the gateway at {model.api_base}?",
            }
        )
    return checks


def container_spec(settings: Settings, seconds: int | None = None) -> str:
    """What probe.py runs inside the proxy container: the proxy, its routes, then chats through it."""
    checks = gateway_checks(settings) + route_checks(settings) + chat_checks(settings)
    return json.dumps({"checks": checks, "seconds": settings.verify_timeout if seconds is None else seconds})


def or_unavailable(install_dir: str) -> str:
    """Appended to a probe run in the proxy container: its one failed result when it cannot run there."""
    failed = json.dumps(
        [
            {
                "name": "proxy container",
                "url": "",
                "ok": False,
                "status": 0,
                "problem": f"cannot run checks inside the {PROXY_SERVICE} container (is it running?)",
                "fix": f"docker compose ps in {install_dir}",
            }
        ]
    )
    return f"2>/dev/null || echo {shlex.quote(failed)}"


class ContainerChecks(FactBase):
    """Results of probe.py run inside the proxy container (keys come from its own environment)."""

    def command(self, project: str, install_dir: str, spec: str) -> str:
        exec_cmd = (
            f"{compose_cmd(project, install_dir)} exec -T -e {WRONG_KEY_ENV}=sk-litellm-deploy-wrong-key "
            f"{PROXY_SERVICE}"
        )
        return f"{exec_cmd} python3 -c {shlex.quote(PROBE_SOURCE)} {shlex.quote(spec)} {or_unavailable(install_dir)}"

    def process(self, output: list[str]) -> list[dict]:
        return json.loads(output[-1])


def _describe(result: dict, where: str) -> str:
    return f"{result['name']}: {result['problem']} (checked from {where}, {result['url']}) — fix: {result['fix']}"


def assess(
    route: list[dict], inside: list[dict], controller_seconds: float = CONTROLLER_SECONDS
) -> tuple[list[tuple[str, dict]], list[str]]:
    """(every result with where it was checked from, one readable line per failure).

    A route check that failed inside the container is run again from the controller: a node that
    answers the controller but not the container is the classic misroute (LiteLLM issue #4494),
    not a dead node, and the fix differs. Keys stay in the container: a keyed check is re-run from
    the controller only when the container got no answer at all, as a plain reachability check.
    """
    results = [(CONTAINER, r) for r in inside]
    by_name = {c["name"]: c for c in route}
    again = []
    for r in inside:
        check = by_name.get(r["name"])
        if r["ok"] or r.get("skipped") or check is None:
            continue
        if check.get("key_env"):
            if r["status"] != 0:
                continue
            check = {"name": check["name"], "kind": "reachable", "url": check["url"]}
        again.append(check)
    controller = {r["name"]: r for r in probe.run_checks(again, controller_seconds)}
    results += [(CONTROLLER, r) for r in controller.values()]
    failures = []
    for r in inside:
        if r["ok"] or r.get("skipped"):
            continue
        seen = controller.get(r["name"])
        if seen is None:
            failures.append(_describe(r, CONTAINER))
        elif seen["ok"]:
            failures.append(
                f"{r['name']}: reachable from the controller but NOT from the gateway's container "
                f"({r['url']}: {r['problem']} from the container) — fix: route the gateway to an address its "
                "container can reach (not localhost/127.0.0.1, which is the container itself; check "
                "firewalls and OLLAMA_HOST=0.0.0.0 on the node)"
            )
        else:
            failures.append(_describe(r, f"{CONTAINER} and from {CONTROLLER}"))
    return results, failures


def summary(results: list[tuple[str, dict]], notes: Sequence[str] = ()) -> str:
    width = max(len(r["name"]) for _, r in results)
    state_of = lambda r: "ok  " if r["ok"] else "SKIP" if r.get("skipped") else "FAIL"  # noqa: E731
    lines = [f"  {state_of(r)} {r['name'].ljust(width)}  from {where}" for where, r in results]
    return "verification summary:\n" + "\n".join(lines + [f"  {note}" for note in notes])


class NewestBackup(FactBase):
    """(file name, age in seconds) of the newest *.dump in a backup directory, or None.
    Uploaded copies for a restore (restore-*.dump) are not backups and are left out."""

    def command(self, directory: str) -> str:
        return (
            f"find {shlex.quote(directory)} -maxdepth 1 -type f -name '*.dump' ! -name 'restore-*' "
            "-printf '%T@ %f\\n' 2>/dev/null | sort -n | tail -n 1; echo \"now $(date +%s)\""
        )

    def process(self, output: list[str]) -> tuple[str, float] | None:
        now = float(output[-1].split()[1])
        if len(output) < 2:
            return None
        mtime, name = output[0].split(" ", 1)
        return name, max(0.0, now - float(mtime))


def age(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"


def backup_note(
    where: str, newest: tuple[str, float] | None, stale_after: float, timer: str = "the backup timer"
) -> str:
    """One summary line on the newest backup; "STALE" once older than stale_after seconds."""
    if newest is None:
        return f"newest backup {where}: none yet"
    name, seconds = newest
    flag = f"  STALE: check the backup timer (systemctl status {timer})" if seconds > stale_after else ""
    return f"newest backup {where}: {name}, {age(seconds)} old{flag}"


def host_backup_note(settings: Settings, newest: tuple[str, float] | None) -> str:
    """The host's line: stale after two missed runs of the timer (a custom OnCalendar= is not
    second-guessed), naming this project's timer unit."""
    stale = STALE_AFTER.get(settings.backup_schedule, float("inf")) if settings.backup_enabled else float("inf")
    return backup_note(f"on the host ({settings.backup_dir})", newest, stale, timer=f"{unit_name(settings)}.timer")


def backup_notes(settings: Settings) -> list[str]:
    """The age of the newest backup, on the host and on the controller (bundled database only)."""
    if settings.database_mode != "bundled":
        return []

    notes = [host_backup_note(settings, host.get_fact(NewestBackup, directory=settings.backup_dir))]
    controller = local_dir(settings)
    dumps = sorted(controller.glob("*.dump"), key=lambda p: p.stat().st_mtime) if controller.is_dir() else []
    newest = (dumps[-1].name, max(0.0, time.time() - dumps[-1].stat().st_mtime)) if dumps else None
    notes.append(backup_note(f"on the controller ({controller})", newest, float("inf")))
    return notes


def container_read(settings: Settings) -> tuple[type[FactBase], dict]:
    """The verification inside the proxy container, as (fact, arguments) (tasks/lib/fact_cache.py checks)."""
    return ContainerChecks, {
        "project": settings.compose_project,
        "install_dir": settings.install_dir,
        "spec": container_spec(settings),
    }


@operation(is_idempotent=True)
def gateway_verified(settings: Settings):
    if not state.is_executing:
        host.noop("checks run when the deploy executes")
        return
    fact, arguments = container_read(settings)
    inside = host.get_fact(fact, **arguments)
    results, failures = assess(route_checks(settings), inside)
    # The TLS front as clients see it, from the host: HTTPS with its certificate checked, HTTP redirected.
    on_host = tls.host_results(settings)
    results += [(HOST, r) for r in on_host]
    failures += [_describe(r, HOST) for r in on_host if not r["ok"] and not r.get("skipped")]
    inside = inside + on_host
    host.log(summary(results, backup_notes(settings)), logger.info)
    if not failures:
        host.noop(f"{len(inside)} checks passed")
        return
    message = f"verification failed on {host.name} ({len(failures)} problem(s)):" + "".join(
        "\n  " + f for f in failures
    )
    yield failing_command(message)


@deploy("Verify")
def verify_gateway(settings: Settings):
    return gateway_verified(name="Gateway, Ollama nodes and upstreams answer", settings=settings)
