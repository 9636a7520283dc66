"""`make bench` (or `python -m bench [--quick]`): what the package costs its users, measured on the test bed.

Figures (each the median of its runs, with the spread), printed as a table and written to
bench/results.json, with bench/results.png (throughput and latency against concurrency):
  converge   a fresh converge of N gateways at once, total and per stage; the cost of each added host
  noop       a re-run with nothing changed, beside pyinfra's own floor on the same hosts
             (bench/floor.py: a 2-operation deploy that changes nothing)
  throughput chat requests with a virtual key (DB-backed auth) at concurrency 1, 8, 32 against the
             gateway as deployed, the same image run bare (`litellm --config`, no tuning) on the same
             host, and the upstream alone (the Ollama stand-in: the limit)
  change     a model added to every gateway at once: time until all are verified
  roll       the same change behind a load balancer (lb_hosts, 3 gateways on a db host): rolled one
             gateway at a time, time until all are verified
  rotation   rotate.py on one gateway: total, and the refusal window (the longest run of refused
             requests of a virtual key polled every 50 ms while it runs)
  upgrade    an image upgrade that fails verification and rolls back by itself: the longest refusal of
             a polled virtual key, and the whole attempt
  backup     backup.py and restore.py at 10 k, 100 k (and 1 M) spend-log rows: time and dump size
  proxy start the deployed proxy's command started beside it until ready: its workers forked by Gunicorn
             (as deployed) and, before that change, started by Uvicorn to import LiteLLM each again
Load goes only to the bed's own addresses, bounded in count and time (bench/load.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from bench import report
from bench.load import median_and_spread, run_load
from bench.runs import TimedRun, timed
from tasks.config.settings import DEFAULTS
from tests.e2e import database, upgrade_probe
from tests.e2e import gateway_http as api
from tests.e2e.conftest import OLLAMA_MODEL, Deployment, Run
from tests.e2e.lb_topology import DEPLOYED as LB_DEPLOYED
from tests.e2e.lb_topology import LbDeployment
from tests.testbed import Testbed
from tests.testbed.bed import wait_until

HERE = Path(__file__).resolve().parent
PREFIX = "bench-"
CONCURRENCY = (1, 8, 32)
BARE_PORT = 4001
INSTALL_DIR = str(DEFAULTS["install_dir"])  # the shipped install_dir, which the bench's inventory keeps


class Plan:
    def __init__(self, quick: bool, gateways: list[int] | None, runs: int | None):
        self.quick = quick
        self.gateways = gateways or ([1, 2] if quick else [1, 4, 8])
        self.runs = runs or (1 if quick else 3)  # fresh converges, changes, rotations, upgrades, backups
        self.repeats = 3  # no-op runs, floor runs, load runs
        self.noop_repeats = 3 if quick else 5  # the demo no-op beside Ansible, alternated
        self.load_seconds = 4 if quick else 15
        self.load_max_requests = 4000 if quick else 20000
        self.spend_rows = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]


def machine() -> dict:
    mem_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    docker_version = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker_engine": docker_version,
    }


def versions(bed: Testbed) -> dict:
    from importlib.metadata import version

    return {"pyinfra": version("pyinfra"), "litellm_image": bed.litellm_image(), "postgres_image": bed.postgres_image()}


def deployment_of(bed: Testbed, workdir: Path, gateways: int) -> Deployment:
    hosts = tuple(f"gw{i}" for i in range(1, gateways + 1)) + ("ollama1",)
    d = Deployment(bed, workdir, f"{PREFIX}{gateways}-", hosts)  # each size its own hosts
    d.proxy_workers = None  # the shipped default: what a user gets
    return with_shared_cpu_bounds(d)


def with_shared_cpu_bounds(d: Deployment) -> Deployment:
    """The bed's gateways share its CPUs, so N proxies starting at once take about N/CPUs times as long as
    one on a host of its own, which the shipped bounds are sized for. The bounds decide only whether a
    start fails, never a figure: they grow with the hosts per CPU so the larger sizes can be measured.

    Where gateways share the CPUs, each runs one proxy worker: "auto" sizes a host by the CPUs it sees,
    all of the bed's, so 4 gateways would start 8 workers on 2 CPUs, each also starting its own query
    engine (the bed's Node stand-in). Prisma gives an engine a fixed 10 s to answer, and one did not
    (4 gateways, a full run on 3 December 2026): the worker failed to boot, Gunicorn stopped the proxy,
    and the run failed. A real fleet's hosts each have their own CPUs."""
    share = max(1, math.ceil(len(gateways_of(d)) / (os.cpu_count() or 1)))
    start_timeout, verify_timeout = DEFAULTS["start_timeout"], DEFAULTS["verify_timeout"]
    assert isinstance(start_timeout, int) and isinstance(verify_timeout, int)  # seconds (tasks/config/fields.py)
    for gw in gateways_of(d):
        d.overrides.setdefault(gw, {}).update(
            start_timeout=share * start_timeout, verify_timeout=share * verify_timeout
        )
        if share > 1:
            d.overrides[gw]["proxy_workers"] = 1
    return d


def run_failed(what: str, output: str) -> SystemExit:
    """A run the bench cannot go on from: its whole output kept in a file, and the lines that say why
    (a host's error, a failed verification) with the output's end in the message."""
    kept = Path(tempfile.gettempdir()) / "litellm-deploy-bench.failed-run.log"
    kept.write_text(output)
    why = [
        line
        for line in output.splitlines()
        if re.search(r"\b(Error|error|failed|FAIL)", line) and not re.match(r"\s*(Operation|Grand total|-->)", line)
    ]
    return SystemExit(
        f"{what}; whole output in {kept}. Lines that say why:\n"
        + "\n".join(why[-40:])
        + f"\n... the output's end:\n{output[-3000:]}"
    )


def gateways_of(d: Deployment) -> list[str]:
    return [h for h in d.standard_hosts if h.startswith("gw")]


def measure(bed: Testbed, plan: Plan, workdir: Path, results: dict) -> None:
    """Each size's converge, no-op and change figures; on one gateway, also the figures of one host."""
    for n in plan.gateways:
        d = deployment_of(bed, workdir / f"gw{n}", n)
        d.workdir.mkdir(parents=True, exist_ok=True)
        try:
            converge(d, n, plan, results)
            noop(d, n, plan, results)
            results["change"][str(n)] = median_and_spread([model_change(d, run) for run in range(plan.runs)])
            print(f"[bench] model change, {n} gateway(s): {results['change'][str(n)]['median']:.1f} s", flush=True)
            if n == 1:
                proxy_start(bed, d, plan, results)
                throughput(bed, d, plan, results)
                changing_figures(bed, d, plan, results)
        finally:
            bed.down(d.hosts)
    rolled_change(bed, workdir, plan, results)
    noop_beside_ansible(bed, workdir, plan, results)
    one = results["converge"].get("1", {}).get("total_s", {}).get("median")
    for n in plan.gateways:
        if n > 1 and one:
            results["converge"][str(n)]["per_added_host_s"] = round(
                (results["converge"][str(n)]["total_s"]["median"] - one) / (n - 1), 1
            )


def fresh_converge(d: Deployment, what: str) -> TimedRun:
    """New hosts for the deployment, converged once and timed; a converge that fails stops the bench."""
    d.up()
    d.write_inventory()
    r = timed(d)
    if r.returncode != 0:
        raise run_failed(f"fresh converge of {what} failed", r.output)
    return r


def converge(d: Deployment, n: int, plan: Plan, results: dict) -> None:
    stages: dict[str, list[float]]
    totals, stages = [], {}
    for run in range(plan.runs):
        r = fresh_converge(d, f"{n} gateway(s)")
        totals.append(r.seconds)
        for stage, seconds in r.stages().items():
            stages.setdefault(stage, []).append(seconds)
        print(f"[bench] fresh converge, {n} gateway(s), run {run + 1}: {r.seconds:.1f} s", flush=True)
    results["converge"][str(n)] = {
        "total_s": median_and_spread(totals),
        "stages_s": {s: median_and_spread(v) for s, v in stages.items()},
    }


def noop(d: Deployment, n: int, plan: Plan, results: dict) -> None:
    noops, floors = [], []
    for _ in range(plan.repeats):
        r = timed(d)
        changed = {h: Run(r.returncode, r.output).changed(d.name(h)) for h in gateways_of(d)}
        if r.returncode != 0 or any(changed.values()):
            raise run_failed(f"no-op re-run of {n} gateway(s) failed or changed something", r.output)
        noops.append(r.seconds)
        f = timed(d, str(HERE / "floor.py"))
        if f.returncode != 0:
            raise run_failed("pyinfra floor run failed", f.output)
        floors.append(f.seconds)
    results["noop"][str(n)] = {
        "deploy_s": median_and_spread(noops),
        "pyinfra_floor_s": median_and_spread(floors),
        "ratio": round(statistics.median(noops) / statistics.median(floors), 2),
    }
    print(
        f"[bench] no-op, {n} gateway(s): {statistics.median(noops):.1f} s "
        f"(pyinfra floor {statistics.median(floors):.1f} s)",
        flush=True,
    )


def model_change(d: Deployment, run: int) -> float:
    """A model added on every gateway (another name for the deployment's first model): deploy until verified."""
    extra = {**d.models()[0], "name": f"chat-bench-{run}"}
    for gw in gateways_of(d):
        d.overrides.setdefault(gw, {})["models"] = d.models() + [extra]
    d.write_inventory()
    r = timed(d)
    if r.returncode != 0 or not all(Run(r.returncode, r.output).changed(d.name(gw)) for gw in gateways_of(d)):
        raise run_failed("model change failed or changed nothing", r.output)
    return r.seconds


def rolled_change(bed: Testbed, workdir: Path, plan: Plan, results: dict) -> None:
    """The load-balanced topology (tests/e2e/lb_topology.py: 3 gateways on a db host and a redis host,
    Caddy in front), converged, then a model change rolled across it one gateway at a time (the shipped
    roll_width): drained, recreated, verified, re-admitted, until all are verified."""
    d = LbDeployment(bed, workdir / "roll", f"{PREFIX}roll-", (*LB_DEPLOYED, "up1"))
    d.proxy_workers = None  # the shipped default, unless the gateways share the CPUs (with_shared_cpu_bounds)
    with_shared_cpu_bounds(d)
    d.workdir.mkdir(parents=True, exist_ok=True)
    try:
        r = fresh_converge(d, "the load-balanced topology")
        print(
            f"[bench] load-balanced topology ({len(gateways_of(d))} gateways) converged: {r.seconds:.1f} s", flush=True
        )
        changes = [model_change(d, run) for run in range(plan.runs)]
    finally:
        bed.down(d.hosts)
    results["roll"] = {
        "gateways": len(gateways_of(d)),
        "converge_s": round(r.seconds, 1),
        "change_s": median_and_spread(changes),
    }
    print(
        f"[bench] model change rolled across {len(gateways_of(d))} gateways: {results['roll']['change_s']['median']:.1f} s",
        flush=True,
    )


def virtual_key(d: Deployment, gw: str, alias: str) -> str:
    """A virtual key for the bench's model, made with the master key in the host's .env (current after a
    rotation)."""
    status, made = d.call(gw, "/key/generate", body={"models": ["chat-ollama"], "key_alias": alias})
    assert status == 200, made
    return made["key"]


def rotation(d: Deployment, plan: Plan, results: dict) -> None:
    """rotate.py while a virtual key is polled, plan.runs times: total time and the longest refusal."""
    results["rotation"] = polled_runs(
        d, plan, "rotation", lambda: timed(d, "rotate.py"), lambda r: r.returncode == 0, "rotate.py failed", "total_s"
    )


def polled_runs(d: Deployment, plan: Plan, what: str, run_once, succeeded, failure: str, seconds_as: str) -> dict:
    """run_once() plan.runs times, each while a virtual key of its own is polled: its seconds (as
    `seconds_as`) and the longest refusal, each the median of the runs with the spread."""
    gw = gateways_of(d)[0]
    seconds, windows, polls, refused = [], [], 0, 0
    for run in range(plan.runs):
        poller = Poller(f"{d.base_url(gw)}/v1/models", virtual_key(d, gw, f"bench-{what.replace(' ', '-')}-{run}"))
        with poller:
            r = run_once()
        if not succeeded(r):
            raise run_failed(failure, r.output)
        seconds.append(r.seconds)
        windows.append(poller.longest_refusal)
        polls, refused = polls + poller.polls, refused + poller.refused
        print(
            f"[bench] {what}, run {run + 1}: {r.seconds:.1f} s, longest refusal {poller.longest_refusal:.2f} s "
            f"({poller.refused} of {poller.polls} polls refused)",
            flush=True,
        )
    return {
        seconds_as: median_and_spread(seconds),
        "refusal_window_s": median_and_spread(windows),
        "polls": polls,
        "refused": refused,
    }


class Poller:
    """GET url with a bearer key every 50 ms from a thread, until the block ends (at most 15 min)."""

    def __init__(self, url: str, key: str, interval: float = 0.05, limit: float = 900):
        self.url, self.key, self.interval, self.limit = url, key, interval, limit
        self.polls = self.refused = 0
        self.longest_refusal = 0.0
        self._stop = threading.Event()

    def _ok(self) -> bool:
        request = urllib.request.Request(self.url, headers={"Authorization": f"Bearer {self.key}"})
        try:
            return urllib.request.urlopen(request, timeout=5).status == 200
        except Exception:  # noqa: BLE001 - refused, reset, timed out, 401: all refusals
            return False

    def _run(self) -> None:
        refused_since = None
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            ok, now = self._ok(), time.monotonic()
            self.polls += 1
            if ok and refused_since is not None:
                self.longest_refusal = max(self.longest_refusal, now - refused_since)
                refused_since = None
            elif not ok:
                self.refused += 1
                refused_since = refused_since or now
            self._stop.wait(self.interval)
        if refused_since is not None:  # still refused at the end: the window is open-ended
            self.longest_refusal = max(self.longest_refusal, time.monotonic() - refused_since)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        # The window closes only when the key works again: keep polling a little after the run, as often
        # as the thread does, so the window it measures ends within one interval of the key working.
        wait_until("the virtual key works again", self._ok, timeout=120, interval=self.interval)
        self._stop.set()
        self._thread.join()


def upgrade_rollback(bed: Testbed, d: Deployment, plan: Plan, results: dict) -> None:
    """An image upgrade that fails verification (tests/e2e/upgrade_probe.py) and rolls back by itself,
    while a virtual key is polled, plan.runs times: the longest the gateway refused it, and the whole attempt."""
    gw = gateways_of(d)[0]
    newer = bed.litellm_image() + "-bench-probe"
    upgrade_probe.build(d, gw, bed.litellm_image(), newer)

    def attempt() -> TimedRun:
        d.overrides.setdefault(gw, {})["litellm_image"] = newer
        d.write_inventory()
        try:
            return timed(d)
        finally:
            del d.overrides[gw]["litellm_image"]
            d.write_inventory()

    results["upgrade"] = polled_runs(
        d,
        plan,
        "failed upgrade rolled back",
        attempt,
        lambda r: r.returncode != 0 and "Rollback to the previous image" in r.output,
        "the failing upgrade did not fail and roll back",
        "attempt_s",
    )


SPEND_ROWS = """INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend, total_tokens, prompt_tokens,
       completion_tokens, "startTime", "endTime", model, "user", metadata, messages, response)
SELECT 'bench-' || g, 'acompletion', md5(g::text), g * 0.000001, 30, 20, 10,
       timestamp '2026-11-01' + g * interval '1 second', timestamp '2026-11-01' + g * interval '1 second' + interval '400 ms',
       'chat-ollama', 'user-' || (g % 100), jsonb_build_object('user_api_key_alias', 'key-' || (g % 50)),
       jsonb_build_array(jsonb_build_object('role', 'user', 'content', 'hello ' || g)),
       jsonb_build_object('content', 'reply ' || g)
FROM generate_series({start}, {end}) g;
"""


def backup_and_restore(d: Deployment, plan: Plan, results: dict) -> None:
    """backup.py and restore.py of the bundled database as its spend logs grow."""
    gw = gateways_of(d)[0]
    local = d.workdir / "backups"
    d.overrides.setdefault(gw, {})["backup_local_dir"] = str(local)
    d.write_inventory()
    have = 0
    for rows in plan.spend_rows:
        database.psql(d, gw, SPEND_ROWS.format(start=have + 1, end=rows))
        have = rows
        backups, restores = [], []
        for _ in range(plan.runs):
            b = timed(d, "backup.py")
            if b.returncode != 0:
                raise run_failed("backup.py failed", b.output)
            dump = max((local / d.name(gw)).glob("*.dump"), key=lambda p: p.stat().st_mtime)
            r = timed(d, "restore.py", "--data", "restore_from=latest")
            if r.returncode != 0:
                raise run_failed("restore.py failed", r.output)
            count = database.psql(d, gw, "SELECT count(*) FROM \"LiteLLM_SpendLogs\" WHERE request_id LIKE 'bench-%';")
            assert int(count) == rows, (count, rows)
            backups.append(b.seconds)
            restores.append(r.seconds)
        results["backup"][str(rows)] = {
            "backup_s": median_and_spread(backups),
            "restore_s": median_and_spread(restores),
            "dump_mb": round(dump.stat().st_size / 1e6, 1),
        }
        print(
            f"[bench] {rows} spend-log rows: backup {statistics.median(backups):.1f} s, "
            f"restore {statistics.median(restores):.1f} s, dump {dump.stat().st_size / 1e6:.1f} MB",
            flush=True,
        )


def throughput(bed: Testbed, d: Deployment, plan: Plan, results: dict) -> None:
    gw = gateways_of(d)[0]
    host = bed.host(d.name(gw))
    node = bed.host(d.name("ollama1"))
    allowed = {h["address"] for h in bed.hosts() if h["address"]}
    chat = {"model": "chat-ollama", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"Authorization": f"Bearer {virtual_key(d, gw, 'bench-load')}"}
    targets: dict[str, tuple[str, dict, dict[str, str]]] = {
        "deployed": (f"http://{host['address']}:4000/v1/chat/completions", chat, auth),
        "bare": (f"http://{host['address']}:{BARE_PORT}/v1/chat/completions", chat, auth),
        "upstream": (
            f"{node['api_base']}/api/chat",
            {"model": OLLAMA_MODEL, "messages": chat["messages"], "stream": False},
            {},
        ),
    }
    bare_up(d, gw, host["address"])
    try:
        for target, (url, body, headers) in targets.items():
            run_load(url, body, headers, 4, 2, 50, allowed)  # warm-up: connections, caches, the key
            points = []
            for c in CONCURRENCY:
                runs = [
                    run_load(url, body, headers, c, plan.load_seconds, plan.load_max_requests, allowed)
                    for _ in range(plan.repeats)
                ]
                failed = sum(r.failed for r in runs)
                point: dict[str, Any] = {
                    "concurrency": c,
                    "rps": median_and_spread([r.rps for r in runs]),
                    "p50_ms": median_and_spread([r.percentile(50) for r in runs]),
                    "p99_ms": median_and_spread([r.percentile(99) for r in runs]),
                    "requests_ok": sum(r.ok for r in runs),
                    "requests_failed": failed,
                }
                if failed:
                    point["first_error"] = next(r.first_error for r in runs if r.first_error)
                points.append(point)
                print(
                    f"[bench] {target:9} c={c:<3} {point['rps']['median']:8.1f} req/s  "
                    f"p50 {point['p50_ms']['median']:7.1f} ms  p99 {point['p99_ms']['median']:7.1f} ms"
                    + (f"  {failed} failed" if failed else ""),
                    flush=True,
                )
            results["throughput"][target] = points
    finally:
        d.ssh(gw, "docker rm -f bench-bare >/dev/null 2>&1 || true")


def proxy_start(bed: Testbed, d: Deployment, plan: Plan, results: dict) -> None:
    """The deployed proxy's command run beside it (its files, network and database) until ready: as
    deployed, and without --run_gunicorn, LiteLLM's default of Uvicorn starting each worker to import
    LiteLLM again (tasks/render.proxy_command): the before and after of that change on this host."""
    gw = gateways_of(d)[0]
    address = bed.host(d.name(gw))["address"]
    command = yaml.safe_load(d.ssh(gw, f"cat {INSTALL_DIR}/docker-compose.yml"))["services"]["litellm"]["command"]
    if "--run_gunicorn" not in command:
        print("[bench] proxy start: the deployed proxy runs one worker here, nothing to compare", flush=True)
        return
    variants = {"uvicorn": [a for a in command if a != "--run_gunicorn"], "gunicorn": command}  # the second as deployed
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(plan.runs):
        for name, args in variants.items():
            try:
                t0 = time.monotonic()
                started_beside(d, gw, address, args)
                seconds[name].append(time.monotonic() - t0)
            finally:
                d.ssh(gw, "docker rm -f bench-bare >/dev/null 2>&1 || true")
    workers = command[command.index("--num_workers") + 1]
    results["proxy_start"] = {"workers": int(workers), **{n: median_and_spread(v) for n, v in seconds.items()}}
    print(
        f"[bench] proxy start, {workers} workers: "
        + ", ".join(f"{n} {statistics.median(v):.1f} s" for n, v in seconds.items()),
        flush=True,
    )


def started_beside(d: Deployment, gw: str, address: str, args: list[str]) -> None:
    """The litellm service's image, files and network, run as another container with these arguments
    on BARE_PORT, until it is ready."""
    d.ssh(
        gw,
        f"cd {INSTALL_DIR} && docker rm -f bench-bare >/dev/null 2>&1; "
        f"docker compose run -d --name bench-bare --no-deps -p {BARE_PORT}:4000 litellm "
        + " ".join(shlex.quote(a) for a in args),
    )
    api.wait_ready(f"http://{address}:{BARE_PORT}", timeout=240)


def bare_up(d: Deployment, gw: str, address: str) -> None:
    """The same image, files and network as the deployed proxy, started as `litellm --config` with
    LiteLLM's defaults: Compose's run of the litellm service with its command replaced."""
    started_beside(d, gw, address, ["--config", "/app/config.yaml", "--port", "4000"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="fewer hosts and runs (~25 min on 2 cores); said in the results"
    )
    p.add_argument("--gateways", type=lambda s: [int(x) for x in s.split(",")], help="sizes, e.g. 1,4,8")
    p.add_argument(
        "--runs",
        type=int,
        help="runs of each fresh converge, model change, rotation, failed upgrade "
        "and backup/restore (default 3, quick 1)",
    )
    p.add_argument("--out", type=Path, default=HERE / "results.json")
    p.add_argument(
        "--only",
        choices=sorted(ONLY),
        help="measure only some figures and write them into the results already in --out: "
        "roll, the rolled change; one-gateway, rotation, the failed upgrade, backup and restore",
    )
    args = p.parse_args(argv)
    plan = Plan(args.quick, args.gateways, args.runs)
    bed = Testbed()
    bed.build_images()
    if args.only:
        return only(args.only, bed, plan, args.out)
    started = time.monotonic()
    results: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": plan.quick,
        "plan": {
            "gateways": plan.gateways,
            "fresh_runs": plan.runs,
            "repeats": plan.repeats,
            "load_seconds": plan.load_seconds,
            "load_max_requests": plan.load_max_requests,
        },
        "machine": machine(),
        "versions": versions(bed),
        "converge": {},
        "noop": {},
        "change": {},
        "throughput": {},
        "rotation": {},
        "upgrade": {},
        "backup": {},
        "proxy_start": {},
        "roll": {},
    }
    try:
        with tempfile.TemporaryDirectory(prefix="litellm-deploy-bench-") as tmp:
            measure(bed, plan, Path(tmp), results)
    except BaseException:  # a full run is an hour and more: what it measured before it stopped is kept
        partial = Path(tempfile.gettempdir()) / "litellm-deploy-bench.partial.json"
        partial.write_text(json.dumps(results, indent=2) + "\n")
        print(f"[bench] stopped; the figures measured so far are in {partial}", file=sys.stderr)
        raise
    results["seconds"] = round(time.monotonic() - started)
    written(results, args.out)
    png = report.plot(results, args.out.with_suffix(".png"))
    print(f"[bench] wrote {args.out}" + (f" and {png}" if png else ""))
    return 0


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat): the bed's hosts included."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def cpu_measured(run):
    """run() with what it cost: (its result, controller CPU s of its processes, machine busy fraction)."""
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, total0 = machine_cpu_seconds()
    result = run()
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1, total1 = machine_cpu_seconds()
    controller = (after_children.ru_utime - before_children.ru_utime) + (
        after_children.ru_stime - before_children.ru_stime
    )
    return result, controller, (busy1 - busy0) / max(total1 - total0, 1e-9)


def demo_like(bed: Testbed, workdir: Path, gateways: int) -> Deployment:
    """N gateways of the demo's configuration (tests/demo.py): the TLS front with a certificate of the
    deployment's CA, a declared key, the shipped verification with a chat; booted provisioned (their
    install is not what this measures)."""
    from tests.demo import DECLARED_KEY

    hosts = tuple(f"gw{i}" for i in range(1, gateways + 1)) + ("ollama1",)
    d = Deployment(bed, workdir, f"{PREFIX}noop{gateways}-", hosts)
    d.proxy_workers = None
    d.provisioned = tuple(h for h in hosts if h.startswith("gw"))
    archives = bed.archives(("litellm", "postgres", "caddy"))
    for gw in d.provisioned:
        d.overrides[gw] = {
            "tls": "self-signed",
            "tls_image": bed.caddy_image(),
            "virtual_keys": [DECLARED_KEY],
            "image_archives": [str(archives[k]) for k in ("litellm", "postgres", "caddy")],
        }
    return with_shared_cpu_bounds(d)


def noop_beside_ansible(bed: Testbed, workdir: Path, plan: Plan, results: dict) -> None:
    """The demo configuration's no-op on 1, 4 and 8 gateways, beside pyinfra's floor and the Ansible
    playbook (bench/ansible.py) on the same hosts, the three alternated run by run; with the CPU each
    took on the controller and the machine's busy share while it ran (the bed's hosts share its CPUs)."""
    from bench.ansible import Playbook, ansible_playbook

    program = ansible_playbook(bed.state_dir)  # before any host: a failed install wastes no converge
    figures = results.setdefault("noop_demo", {})
    for n in plan.gateways:
        d = demo_like(bed, workdir / f"noop{n}", n)
        d.workdir.mkdir(parents=True, exist_ok=True)
        playbook = None
        try:
            fresh_converge(d, f"{n} demo gateway(s)")
            playbook = Playbook(bed, [bed.host(d.name(gw)) for gw in gateways_of(d)], program)
            playbook.run()  # first contact (host keys, ControlPersist): not measured, as our first run is not
            timed(d)
            runs: dict[str, list[float]] = {
                "deploy": [],
                "floor": [],
                "ansible": [],
                "deploy_cpu": [],
                "deploy_busy": [],
                "ansible_cpu": [],
            }
            for _ in range(plan.noop_repeats):
                r, cpu, busy = cpu_measured(lambda: timed(d))
                changed = {gw: Run(r.returncode, r.output).changed(d.name(gw)) for gw in gateways_of(d)}
                if r.returncode != 0 or any(changed.values()):
                    raise run_failed(f"no-op of {n} demo gateway(s) failed or changed something", r.output)
                runs["deploy"].append(r.seconds)
                runs["deploy_cpu"].append(cpu)
                runs["deploy_busy"].append(busy)
                runs["floor"].append(timed(d, str(HERE / "floor.py")).seconds)
                (seconds, output, changed_tasks), cpu, _ = cpu_measured(playbook.run)
                if any(changed_tasks.values()):
                    raise SystemExit(
                        f"[bench] the Ansible playbook changed something: {changed_tasks}\n{output[-3000:]}"
                    )
                runs["ansible"].append(seconds)
                runs["ansible_cpu"].append(cpu)
            figure: dict[str, Any] = {name: median_and_spread(values) for name, values in runs.items()}
            figure["ansible_vs_deploy"] = round(
                statistics.median(runs["ansible"]) / statistics.median(runs["deploy"]), 2
            )
            figures[str(n)] = figure
            print(
                f"[bench] demo no-op, {n} gateway(s): {figure['deploy']['median']:.1f} s "
                f"(controller CPU {figure['deploy_cpu']['median']:.1f} s, machine busy "
                f"{100 * figure['deploy_busy']['median']:.0f}%); pyinfra floor {figure['floor']['median']:.1f} s; "
                f"Ansible {figure['ansible']['median']:.1f} s ({figure['ansible_vs_deploy']:.1f}x)",
                flush=True,
            )
        finally:
            if playbook is not None:
                playbook.close()
            bed.down(d.hosts)


def one_gateway(bed: Testbed, workdir: Path, plan: Plan, results: dict) -> None:
    """changing_figures on a gateway of its own, converged first."""
    d = deployment_of(bed, workdir / "gw1", 1)
    d.workdir.mkdir(parents=True, exist_ok=True)
    try:
        fresh_converge(d, "one gateway")
        changing_figures(bed, d, plan, results)
    finally:
        bed.down(d.hosts)


def changing_figures(bed: Testbed, d: Deployment, plan: Plan, results: dict) -> None:
    """On one converged gateway, what changes it: a rotation, a failed upgrade, backups and restores."""
    rotation(d, plan, results)
    upgrade_rollback(bed, d, plan, results)
    backup_and_restore(d, plan, results)


ONLY = {"roll": rolled_change, "one-gateway": one_gateway, "noop": noop_beside_ansible}


def only(part: str, bed: Testbed, plan: Plan, out: Path) -> int:
    """Re-measure one part's figures (ONLY) into earlier results; when, under "measured_later"."""
    results = json.loads(out.read_text())
    with tempfile.TemporaryDirectory(prefix="litellm-deploy-bench-") as tmp:
        ONLY[part](bed, Path(tmp), plan, results)
    results.setdefault("measured_later", {})[part] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    written(results, out)
    print(f"[bench] wrote {part} into {out}")
    return 0


def written(results: dict, out: Path) -> None:
    """The results with their targets checked, into `out`, and printed as the table."""
    results["targets"] = report.targets(results)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(report.table(results))


if __name__ == "__main__":
    sys.exit(main())
