"""The bench's results as a table, the issue's targets checked against them, and the PNG."""

from __future__ import annotations

from pathlib import Path
from typing import overload


# A figure is a median_and_spread dict (bench/load.py), which always holds its median; None: not measured.
@overload
def _median(figure: None) -> None: ...
@overload
def _median(figure: dict) -> float: ...
@overload
def _median(figure: dict | None) -> float | None: ...
def _median(figure: dict | None) -> float | None:
    return figure["median"] if figure else None


def _point(results: dict, target: str, concurrency: int) -> dict | None:
    return next((p for p in results["throughput"].get(target, []) if p["concurrency"] == concurrency), None)


def targets(results: dict) -> list[dict]:
    """Each target of the benchmark issue: the figure, the limit, met or not (None: not measured)."""
    out = []

    def target(name: str, value: float | None, limit: float, unit: str, higher_is_better: bool = False):
        met = None if value is None else (value >= limit if higher_is_better else value <= limit)
        out.append(
            {
                "target": name,
                "value": None if value is None else round(value, 2),
                "limit": round(limit, 2),
                "unit": unit,
                "met": met,
            }
        )

    sizes = sorted(int(n) for n in results["converge"])
    largest = str(sizes[-1]) if sizes else None
    one_noop = _median(results["noop"].get("1", {}).get("deploy_s"))
    target("no-op re-run, 1 gateway", one_noop, 2.5, "s")
    if largest and largest != "1" and one_noop and largest in results["noop"]:
        target(
            f"no-op re-run, {largest} gateways vs 1", _median(results["noop"][largest]["deploy_s"]) / one_noop, 1.5, "x"
        )
    demo = results.get("noop_demo") or {}
    demo_sizes = sorted(int(n) for n in demo)
    if demo_sizes:
        one = _median(demo.get("1", {}).get("deploy"))
        target("no-op, demo configuration, 1 gateway", one, 2.5, "s")
        if "1" in demo:
            target(
                "Ansible playbook vs the no-op, 1 gateway",
                demo["1"]["ansible_vs_deploy"],
                2.5,
                "x",
                higher_is_better=True,
            )
        most = str(demo_sizes[-1])
        if most != "1" and one:
            target(f"no-op, demo configuration, {most} gateways vs 1", _median(demo[most]["deploy"]) / one, 1.5, "x")
    one_fresh = _median(results["converge"].get("1", {}).get("total_s"))
    target("fresh converge, 1 gateway", one_fresh, 120, "s")
    if largest and largest != "1" and one_fresh:
        target(
            f"fresh converge, {largest} gateways vs 1",
            _median(results["converge"][largest]["total_s"]) / one_fresh,
            2.0,
            "x",
        )
    deployed, bare = _point(results, "deployed", 32), _point(results, "bare", 32)
    if deployed and bare:
        target(
            "throughput at concurrency 32, deployed vs bare",
            _median(deployed["rps"]) / _median(bare["rps"]),
            1.5,
            "x",
            higher_is_better=True,
        )
        target(
            "p99 at concurrency 32, deployed vs bare", _median(deployed["p99_ms"]) / _median(bare["p99_ms"]), 1.0, "x"
        )
    target("rotation refusal window per host", _median(results["rotation"].get("refusal_window_s")), 5, "s")
    target(
        "upgrade rollback, longest refusal", _median((results.get("upgrade") or {}).get("refusal_window_s")), 60, "s"
    )
    return out


def table(results: dict) -> str:
    lines = [
        f"litellm-deploy bench, {results['date']}" + (" (QUICK: fewer hosts and runs)" if results["quick"] else ""),
        f"machine: {results['machine']}",
        f"versions: {results['versions']}",
        "",
    ]
    lines.append(f"{'figure':58} {'median':>9} {'spread':>8}")

    def row(name, figure, unit="s", digits=1):
        if figure:
            lines.append(f"{name:58} {figure['median']:>8.{digits}f}{unit} {figure['spread']:>7.{digits}f}{unit}")

    for n, c in sorted(results["converge"].items(), key=lambda kv: int(kv[0])):
        row(f"fresh converge, {n} gateway(s)", c["total_s"])
        for stage, figure in sorted(c["stages_s"].items(), key=lambda kv: -kv[1]["median"]):
            row(f"  {stage}", figure)
        if "per_added_host_s" in c:
            lines.append(f"{'  cost per added host':58} {c['per_added_host_s']:>8.1f}s")
    for n, c in sorted(results["noop"].items(), key=lambda kv: int(kv[0])):
        row(f"no-op re-run, {n} gateway(s)", c["deploy_s"])
        row(f"  pyinfra floor (2 no-op operations), {n} gateway(s)", c["pyinfra_floor_s"])
        lines.append(f"{'  ratio':58} {c['ratio']:>8.2f}x")
    for n, c in sorted((results.get("noop_demo") or {}).items(), key=lambda kv: int(kv[0])):
        row(f"no-op, demo configuration (TLS, a key, a chat), {n} gateway(s)", c["deploy"])
        row("  controller CPU of it", c["deploy_cpu"])
        lines.append(f"{'  the machine busy while it ran':58} {100 * c['deploy_busy']['median']:>8.0f}%")
        row("  pyinfra floor (2 no-op operations)", c["floor"])
        row("  Ansible playbook, same hosts and stack (bench/ansible.py)", c["ansible"])
        lines.append(f"{'  Ansible / no-op':58} {c['ansible_vs_deploy']:>8.2f}x")
    for n, figure in sorted(results["change"].items(), key=lambda kv: int(kv[0])):
        row(f"model change until verified, {n} gateway(s)", figure)
    if results.get("roll"):
        roll = results["roll"]
        row(f"model change rolled behind a load balancer, {roll['gateways']} gateways", roll["change_s"])
        lines.append(
            f"{'  converge of that topology (hosts with Docker and the images)':58} {roll['converge_s']:>8.1f}s"
        )
    if results["rotation"]:
        r = results["rotation"]
        row("rotation (rotate.py), 1 gateway", r["total_s"])
        row("  refusal window (virtual key polled every 50 ms)", r["refusal_window_s"], digits=2)
    if results.get("upgrade"):
        u = results["upgrade"]
        row("failed upgrade rolled back by itself, 1 gateway", u["attempt_s"])
        row("  longest refusal (virtual key polled every 50 ms)", u["refusal_window_s"], digits=2)
    if results.get("proxy_start"):
        p = results["proxy_start"]
        row(f"proxy start, {p['workers']} workers, as deployed (Gunicorn forks them)", p["gunicorn"])
        row("  before: Uvicorn, each worker importing LiteLLM", p["uvicorn"])
    for rows, b in sorted(results["backup"].items(), key=lambda kv: int(kv[0])):
        row(f"backup at {int(rows):,} spend-log rows (dump {b['dump_mb']} MB)", b["backup_s"])
        row("  restore of it", b["restore_s"])
    if results["throughput"]:
        lines += [
            "",
            f"{'throughput (chat, virtual key)':32} {'conc':>5} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'failed':>7}",
        ]
        for target, points in results["throughput"].items():
            for p in points:
                lines.append(
                    f"{target:32} {p['concurrency']:>5} {p['rps']['median']:>9.1f} "
                    f"{p['p50_ms']['median']:>9.1f} {p['p99_ms']['median']:>9.1f} {p['requests_failed']:>7}"
                )
    lines += ["", "targets:"]
    for t in results.get("targets", []):
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']}{t['unit']}"
        lines.append(f"  {t['target']:52} {value:>10} (limit {t['limit']}{t['unit']}): {verdict}")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> Path | None:
    """Throughput and p99 latency against concurrency, one line per target; None without matplotlib."""
    if not results["throughput"]:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[bench] matplotlib is not installed (pip install -e '.[bench]'): no PNG")
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for target, points in results["throughput"].items():
        xs = [p["concurrency"] for p in points]
        left.plot(xs, [p["rps"]["median"] for p in points], marker="o", label=target)
        right.plot(xs, [p["p99_ms"]["median"] for p in points], marker="o", label=target)
    left.set(title="throughput", xlabel="concurrency", ylabel="requests/s", xscale="log", yscale="log")
    right.set(title="p99 latency", xlabel="concurrency", ylabel="ms", xscale="log", yscale="log")
    for ax in (left, right):
        ax.set_xticks([p["concurrency"] for p in next(iter(results["throughput"].values()))])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.legend()
        ax.grid(True, alpha=0.3)
    fig.suptitle(
        f"litellm-deploy bench {results['date'][:10]}, {results['machine']['cpus']} CPUs"
        + (" (quick)" if results["quick"] else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def markdown(results: dict) -> str:
    """The headline figures as bench/README.md's table."""
    rows = []
    for n, c in sorted(results["converge"].items(), key=lambda kv: int(kv[0])):
        slowest = max(c["stages_s"].items(), key=lambda kv: kv[1]["median"])
        rows.append(
            (
                f"fresh converge, {n} gateway(s)",
                f"{c['total_s']['median']:.0f} s",
                f"slowest stage: {slowest[0]} {slowest[1]['median']:.0f} s",
            )
        )
    for n, c in sorted(results["noop"].items(), key=lambda kv: int(kv[0])):
        rows.append(
            (
                f"no-op re-run, {n} gateway(s)",
                f"{c['deploy_s']['median']:.1f} s",
                f"pyinfra's floor {c['pyinfra_floor_s']['median']:.1f} s ({c['ratio']}x)",
            )
        )
    for n, figure in sorted(results["change"].items(), key=lambda kv: int(kv[0])):
        rows.append((f"model change until verified, {n} gateway(s)", f"{figure['median']:.0f} s", ""))
    if results.get("roll"):
        roll = results["roll"]
        rows.append(
            (
                f"model change rolled behind a load balancer, {roll['gateways']} gateways",
                f"{roll['change_s']['median']:.0f} s",
                "one gateway at a time: drained, recreated, verified, re-admitted",
            )
        )
    if results.get("proxy_start"):
        p = results["proxy_start"]
        rows.append(
            (
                f"proxy start, {p['workers']} workers",
                f"{p['gunicorn']['median']:.0f} s",
                f"Gunicorn forking the workers; {p['uvicorn']['median']:.0f} s before, with Uvicorn (LiteLLM's default)",
            )
        )
    for target in ("deployed", "bare", "upstream"):
        point = _point(results, target, 32)
        if point:
            rows.append(
                (
                    f"throughput at concurrency 32, {target}",
                    f"{point['rps']['median']:.0f} req/s",
                    f"p50 {point['p50_ms']['median']:.0f} ms, p99 {point['p99_ms']['median']:.0f} ms",
                )
            )
    if results.get("rotation"):
        rows.append(
            (
                "rotation, refusal window",
                f"{_median(results['rotation']['refusal_window_s']):.0f} s",
                f"rotate.py {_median(results['rotation']['total_s']):.0f} s",
            )
        )
    if results.get("upgrade"):
        rows.append(
            (
                "failed upgrade, longest refusal",
                f"{_median(results['upgrade']['refusal_window_s']):.0f} s",
                f"attempt and rollback {_median(results['upgrade']['attempt_s']):.0f} s",
            )
        )
    for count, b in sorted(results["backup"].items(), key=lambda kv: int(kv[0])):
        rows.append(
            (
                f"backup / restore, {int(count):,} spend-log rows",
                f"{_median(b['backup_s']):.0f} s / {_median(b['restore_s']):.0f} s",
                f"dump {b['dump_mb']} MB",
            )
        )
    lines = ["| figure | median | |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)
