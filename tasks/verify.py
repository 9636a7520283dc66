"""Verify a gateway along the paths requests take: the proxy, then every Ollama node and upstream
it routes to, checked from inside the proxy container and, for comparison, from the controller.

Checks change nothing: a healthy gateway reports no change. A failing check fails this host only,
with what was checked, from where, the URL, the error and the likely fix.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from pyinfra import host, logger, state
from pyinfra.api import FactBase, deploy, operation

from tasks import probe
from tasks.compose import compose_cmd
from tasks.models import Model
from tasks.settings import Settings

PROBE_SOURCE = Path(probe.__file__).read_text()
PROXY = "http://127.0.0.1:4000"
# Not a secret: a syntactically valid key that no deployment has.
WRONG_KEY_ENV = "LITELLM_DEPLOY_WRONG_KEY"


def _ollama_bases(models: tuple[Model, ...]) -> dict[str, list[str]]:
    bases: dict[str, list[str]] = {}
    for model in models:
        if model.is_ollama:
            bases.setdefault(model.api_base, []).append(model.upstream_model)
    return bases


def _upstreams(models: tuple[Model, ...]) -> list[Model]:
    return [m for m in models if not m.is_ollama and m.api_base]


def gateway_checks(settings: Settings) -> list[dict]:
    """Checks run inside the proxy container against the proxy itself."""
    names = [m.name for m in settings.models]
    checks = [
        {"name": "gateway liveliness", "kind": "status", "url": f"{PROXY}/health/liveliness",
         "fix": "see `docker compose logs litellm` in " + settings.install_dir},
        {"name": "gateway readiness", "kind": "readiness", "url": f"{PROXY}/health/readiness",
         "db": settings.has_database, "fix": "check DATABASE_URL and that Postgres is healthy"},
        {"name": "gateway models", "kind": "models", "url": f"{PROXY}/v1/models", "key_env": "LITELLM_MASTER_KEY",
         "expect": names, "exact": not settings.store_model_in_db, "fix": "compare litellm-config.yaml with group data"},
        {"name": "gateway refuses a wrong key", "kind": "refused", "url": f"{PROXY}/v1/models",
         "key_env": WRONG_KEY_ENV, "fix": "LITELLM_MASTER_KEY must be set in .env"},
    ]
    for model in settings.models:
        if model.smoke_test:
            checks.append({
                "name": f"chat through gateway: {model.name}", "kind": "chat", "timeout": 60,
                "url": f"{PROXY}/v1/chat/completions", "key_env": "LITELLM_MASTER_KEY",
                "body": {"model": model.name, "max_tokens": 8,
                         "messages": [{"role": "user", "content": "Reply with one word: ok"}]},
                "fix": f"the route of {model.name} ({model.model} at {model.api_base or 'provider default'})",
            })
    return checks


def route_checks(settings: Settings) -> list[dict]:
    """Checks of what the gateway routes to; run from the container and from the controller."""
    checks = []
    for base, models in _ollama_bases(settings.models).items():
        fix = f"is Ollama running and listening on a non-loopback address (OLLAMA_HOST=0.0.0.0) at {base}?"
        checks += [
            {"name": f"ollama {base}", "kind": "status", "url": f"{base}/", "fix": fix},
            {"name": f"ollama {base} version", "kind": "status", "url": f"{base}/api/version", "fix": fix},
            {"name": f"ollama {base} models", "kind": "ollama_tags", "url": f"{base}/api/tags", "expect": models,
             "fix": "run `ollama pull <model>` on that node"},
        ]
    for model in _upstreams(settings.models):
        checks.append({
            "name": f"upstream {model.api_base} for {model.name}", "kind": "models",
            "url": f"{model.api_base.rstrip('/')}/v1/models", "key_env": model.api_key_env,
            "expect": [model.upstream_model],
            "fix": f"check {model.api_key_env} in the secrets file and that the upstream serves {model.upstream_model}",
        })
    return checks


class ContainerChecks(FactBase):
    """Results of probe.py run inside the proxy container (keys come from its own environment)."""

    def command(self, project: str, install_dir: str, spec: str) -> str:
        exec_cmd = f"{compose_cmd(project, install_dir)} exec -T -e {WRONG_KEY_ENV}=sk-litellm-deploy-wrong-key litellm"
        failed = json.dumps([{"name": "proxy container", "url": "", "ok": False, "status": 0,
                              "problem": "cannot run checks inside the litellm container (is it running?)",
                              "fix": f"docker compose ps in {install_dir}"}])
        return (f"{exec_cmd} python3 -c {shlex.quote(PROBE_SOURCE)} {shlex.quote(spec)} 2>/dev/null "
                f"|| echo {shlex.quote(failed)}")

    def process(self, output: list[str]) -> list[dict]:
        return json.loads(output[-1])


def _describe(result: dict, where: str) -> str:
    return f"{result['name']}: {result['problem']} (checked from {where}, {result['url']}) — fix: {result['fix']}"


def _summary(results: list[tuple[str, dict]]) -> str:
    width = max(len(r["name"]) for _, r in results)
    lines = [f"  {'ok  ' if r['ok'] else 'FAIL'} {r['name'].ljust(width)}  from {where}" for where, r in results]
    return "verification summary:\n" + "\n".join(lines)


@operation(is_idempotent=True)
def gateway_verified(settings: Settings):
    if not state.is_executing:
        host.noop("checks run when the deploy executes")
        return
    route = route_checks(settings)
    spec = json.dumps({"checks": gateway_checks(settings) + route, "seconds": settings.verify_timeout})
    inside = host.get_fact(ContainerChecks, project=settings.compose_project,
                           install_dir=settings.install_dir, spec=spec)
    container = "the gateway's proxy container"
    results = [(container, r) for r in inside]
    failures = [_describe(r, container) for r in inside if not r["ok"]]
    # The same route checks from the controller tell "the node is down" from "the container
    # cannot reach it".
    failing_routes = {r["name"] for r in inside if not r["ok"]}
    keyless = [c for c in route if c["name"] in failing_routes and not c.get("key_env")]
    for result in probe.run_checks(keyless, seconds=10):
        results.append(("the controller", result))
        if result["ok"]:
            failures.append(f"{result['name']}: reachable from the controller but NOT from the gateway's container "
                            f"({result['url']}) — fix: use an address the container can route to, not localhost")
    host.log(_summary(results), logger.info)
    if not failures:
        host.noop(f"{len(inside)} checks passed")
        return
    yield f"echo {shlex.quote('verification failed on ' + host.name + ':' + ''.join(chr(10) + '  ' + f for f in failures))} >&2; exit 1"


@deploy("Verify")
def verify_gateway(settings: Settings) -> None:
    gateway_verified(name="Gateway, Ollama nodes and upstreams answer", settings=settings)
