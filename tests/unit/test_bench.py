"""The benchmark's own parts (bench/): the load generator's bounds and target guard, the stage
grouping of a timed run, the targets read from results, and the bounds of the sizes sharing the bed's CPUs."""

import json
import os
import re
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench import report
from bench.__main__ import deployment_of
from bench.load import guard_target, median_and_spread, run_load
from bench.runs import TimedRun
from tasks.config.settings import DEFAULTS


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen = 0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        Echo.seen += 1
        body = json.dumps({"ok": True}).encode()
        self.send_response(200 if self.headers.get("Authorization") == "Bearer k" else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1/chat/completions"
    httpd.shutdown()


def test_load_stops_at_its_request_count_and_counts_failures(server):
    Echo.seen = 0
    ok = run_load(server, {"m": 1}, {"Authorization": "Bearer k"}, concurrency=4, seconds=60, max_requests=40,
                  allowed=set())
    assert (ok.ok, ok.failed, Echo.seen) == (40, 0, 40) and ok.rps > 0
    assert ok.percentile(50) <= ok.percentile(99)
    refused = run_load(server, {"m": 1}, {"Authorization": "Bearer wrong"}, 2, 60, 10, set())
    assert (refused.ok, refused.failed) == (0, 10) and refused.first_error.startswith("RuntimeError: HTTP 401")


def test_load_goes_only_to_loopback_or_the_beds_hosts():
    guard_target("http://127.0.0.1:4000/x", set())
    guard_target("http://172.23.0.5:4000/x", {"172.23.0.5"})
    for url in ("http://172.23.0.6:4000/x", "http://gateway.example.com/x", "http://10.0.0.1/x"):
        with pytest.raises(ValueError, match="not loopback or a test bed host"):
            run_load(url, {}, {}, 1, 1, 1, {"172.23.0.5"})


def test_a_figure_is_the_median_of_its_runs_with_the_spread():
    assert median_and_spread([3.0, 1.0, 2.0]) == {"median": 2.0, "spread": 2.0, "runs": [3.0, 1.0, 2.0]}


def test_a_runs_operations_are_grouped_into_the_deploys_stages():
    run = TimedRun(0, 10.0, "", [("connect", 1.0), ("Docker running and enabled at boot", 2.0),
                                  ("Upload image archive litellm.tar.gz", 3.0), ("Load images from the archives", 1.5),
                                  ("LiteLLM proxy up and healthy", 2.0), ("Something new", 0.5)])
    assert run.stages() == {"connect and first facts": 1.0, "docker install": 2.0, "image transfer": 4.5,
                            "start (proxy)": 2.0, "other": 0.5}


def test_targets_are_checked_against_the_results_and_unmeasured_ones_said():
    point = lambda c, rps, p99: {"concurrency": c, "rps": {"median": rps}, "p99_ms": {"median": p99}}  # noqa: E731
    results = {"converge": {"1": {"total_s": {"median": 100.0}}, "2": {"total_s": {"median": 150.0}}},
               "noop": {"1": {"deploy_s": {"median": 6.0}}, "2": {"deploy_s": {"median": 7.2}}},
               "throughput": {"deployed": [point(32, 51.0, 800.0)], "bare": [point(32, 24.0, 2200.0)]},
               "rotation": {"refusal_window_s": {"median": 20.0}}}
    verdicts = {t["target"]: (t["value"], t["met"]) for t in report.targets(results)}
    assert verdicts == {
        "no-op re-run, 1 gateway": (6.0, False),
        "no-op re-run, 2 gateways vs 1": (1.2, True),
        "fresh converge, 1 gateway": (100.0, True),
        "fresh converge, 2 gateways vs 1": (1.5, True),
        "throughput at concurrency 32, deployed vs bare": (2.12, True),
        "p99 at concurrency 32, deployed vs bare": (0.36, True),
        "rotation refusal window per host": (20.0, False),
        "upgrade rollback, longest refusal": (None, None),
    }


def test_sizes_sharing_the_beds_cpus_get_start_bounds_that_grow_with_them(tmp_path, monkeypatch):
    """8 proxies starting at once on 2 CPUs take about 4 times one proxy's start: the shipped bound
    (sized for a host of its own) would fail the 8-gateway size instead of measuring it."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    bounds = {n: deployment_of(None, tmp_path, n).overrides for n in (1, 2, 8)}
    assert bounds[1] == {"gw1": {"start_timeout": DEFAULTS["start_timeout"], "verify_timeout": DEFAULTS["verify_timeout"]}}
    assert bounds[2]["gw2"]["start_timeout"] == DEFAULTS["start_timeout"]
    assert sorted(bounds[8]) == [f"gw{i}" for i in range(1, 9)]
    assert {b["start_timeout"] for b in bounds[8].values()} == {4 * DEFAULTS["start_timeout"]}
    # Sharing the CPUs, one worker each; alone on its CPUs, the shipped "auto"
    assert {b["proxy_workers"] for b in bounds[8].values()} == {1}
    assert "proxy_workers" not in bounds[2]["gw1"]


def test_the_proxy_start_before_and_after_is_in_the_table_and_the_readme_rows():
    figure = lambda v: {"median": v, "spread": 0.0, "runs": [v]}  # noqa: E731
    results = {"date": "d", "quick": False, "machine": {}, "versions": {}, "converge": {}, "noop": {}, "change": {},
               "throughput": {}, "rotation": {}, "backup": {},
               "proxy_start": {"workers": 2, "uvicorn": figure(34.0), "gunicorn": figure(21.0)}}
    table = report.table(results)
    assert "proxy start, 2 workers, as deployed (Gunicorn forks them)" in table and "21.0s" in table
    assert "before: Uvicorn, each worker importing LiteLLM" in table and "34.0s" in table
    assert report.markdown(results).splitlines()[2] == (
        "| proxy start, 2 workers | 21 s | Gunicorn forking the workers; 34 s before, with Uvicorn (LiteLLM's default) |")


def test_the_rolled_change_is_in_the_table_and_the_readme_rows():
    figure = lambda v: {"median": v, "spread": 1.5, "runs": [v]}  # noqa: E731
    results = {"date": "d", "quick": False, "machine": {}, "versions": {}, "converge": {}, "noop": {},
               "change": {"1": figure(45.0)}, "throughput": {}, "rotation": {}, "backup": {},
               "roll": {"gateways": 3, "converge_s": 210.0, "change_s": figure(150.0), "date": "d"}}
    table = report.table(results)
    assert "model change rolled behind a load balancer, 3 gateways" in table and "150.0s" in table
    assert "converge of that topology" in table and "210.0s" in table
    assert report.markdown(results).splitlines()[3] == ("| model change rolled behind a load balancer, 3 gateways | 150 s | "
                                                       "one gateway at a time: drained, recreated, verified, re-admitted |")


def test_rotation_upgrade_and_backup_figures_are_medians_with_their_spread():
    figure = lambda v, spread=2.0: {"median": v, "spread": spread, "runs": [v]}  # noqa: E731
    results = {"date": "d", "quick": False, "machine": {}, "versions": {}, "converge": {}, "noop": {},
               "change": {}, "throughput": {},
               "rotation": {"total_s": figure(31.5), "refusal_window_s": figure(24.25, 1.5)},
               "upgrade": {"attempt_s": figure(240.0), "refusal_window_s": figure(29.5)},
               "backup": {"10000": {"backup_s": figure(3.5), "restore_s": figure(32.0, 4.0), "dump_mb": 4.4}}}
    table = report.table(results)
    assert re.search(r"refusal window \(virtual key polled every 50 ms\)\s+24\.25s\s+1\.50s", table)
    assert re.search(r"backup at 10,000 spend-log rows \(dump 4\.4 MB\)\s+3\.5s\s+2\.0s", table)
    assert re.search(r"restore of it\s+32\.0s\s+4\.0s", table)
    rows = report.markdown(results).splitlines()
    assert "| rotation, refusal window | 24 s | rotate.py 32 s |" in rows
    assert "| backup / restore, 10,000 spend-log rows | 4 s / 32 s | dump 4.4 MB |" in rows
    verdicts = {t["target"]: (t["value"], t["met"]) for t in report.targets(results)}
    assert verdicts["rotation refusal window per host"] == (24.25, False)
    assert verdicts["upgrade rollback, longest refusal"] == (29.5, True)


class Models(BaseHTTPRequestHandler):
    """/v1/models that refuses every key while `refusing` is set, as a restarting proxy does."""
    refusing = threading.Event()

    def do_GET(self):
        self.send_response(503 if Models.refusing.is_set() else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_polled_figure_is_the_median_of_its_runs_with_the_longest_refusal_of_each():
    from bench.__main__ import Plan, polled_runs

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    class Gateway:  # what polled_runs uses of a Deployment
        standard_hosts = ("gw1", "ollama1")
        aliases: list[str] = []

        def base_url(self, gw):
            return f"http://127.0.0.1:{httpd.server_address[1]}"

        def call(self, gw, path, body):
            Gateway.aliases.append(body["key_alias"])
            return 200, {"key": "k"}

    # How long each stand-in restart refuses, far enough apart that a loaded machine's late polls
    # (within the tolerance below) cannot reorder them.
    refusals = iter([0.2, 1.2, 0.6])

    def run_once():
        Models.refusing.set()
        threading.Event().wait(next(refusals))  # the stand-in proxy's restart, not a synchronisation
        Models.refusing.clear()
        return TimedRun(0, 1.0, "")

    try:
        figure = polled_runs(Gateway(), Plan(False, [1], 3), "rotation", run_once, lambda r: r.returncode == 0,
                             "rotate.py failed", "total_s")
        assert Gateway.aliases == ["bench-rotation-0", "bench-rotation-1", "bench-rotation-2"]
        assert figure["total_s"] == {"median": 1.0, "spread": 0.0, "runs": [1.0, 1.0, 1.0]}
        windows = figure["refusal_window_s"]["runs"]
        assert windows == pytest.approx([0.2, 1.2, 0.6], abs=0.35)
        assert figure["refusal_window_s"]["median"] == sorted(windows)[1]
        assert 0 < figure["refused"] <= figure["polls"]
        with pytest.raises(SystemExit, match="rotate.py failed"):
            polled_runs(Gateway(), Plan(False, [1], 1), "rotation", lambda: TimedRun(2, 1.0, "boom"),
                        lambda r: r.returncode == 0, "rotate.py failed", "total_s")
    finally:
        httpd.shutdown()


def test_the_rolled_topology_gets_bounds_for_its_gateways_sharing_the_cpus(tmp_path, monkeypatch):
    from bench.__main__ import with_shared_cpu_bounds
    from tests.e2e.lb_topology import DEPLOYED, LbDeployment

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    d = with_shared_cpu_bounds(LbDeployment(None, tmp_path, "bench-roll-", (*DEPLOYED, "up1")))
    assert sorted(d.overrides) == ["gw1", "gw2", "gw3"]
    assert {b["start_timeout"] for b in d.overrides.values()} == {2 * DEFAULTS["start_timeout"]}
    assert {b["proxy_workers"] for b in d.overrides.values()} == {1}


def test_a_failed_run_says_why_and_keeps_its_whole_output(tmp_path, monkeypatch):
    from bench.__main__ import run_failed

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    output = ("--> Starting operation: Verify\n[bench-4-gw2] Error: verification failed on bench-4-gw2 (1 problem(s)):\n"
              + "    Grand total   124  -  6  118\n" + "x" * 5000)
    stop = run_failed("no-op re-run of 4 gateway(s) failed or changed something", output)
    assert "[bench-4-gw2] Error: verification failed on bench-4-gw2" in str(stop)
    assert "Grand total" not in str(stop).split("the output's end")[0]
    assert (tmp_path / "litellm-deploy-bench.failed-run.log").read_text() == output


def test_a_run_stopped_part_way_reads_as_a_table_with_the_targets_it_measured():
    """A full run stopped at the 4-gateway no-op (as one did on 3 December 2026; the bench then keeps what
    it measured) still reads: no figure of a size it did not reach is invented, and the targets it did
    measure are checked. Made from the committed full run by taking away what came after that point."""
    results = json.loads((Path(__file__).resolve().parents[2] / "bench" / "results.json").read_text())
    for figure in ("noop", "change"):
        results[figure] = {size: v for size, v in results[figure].items() if size == "1"}
    results["converge"].pop("8", None)
    results["roll"] = {}
    results.pop("noop_demo", None)  # measured after the roll, so never reached
    checked = {t["target"]: t["met"] for t in report.targets(results)}
    assert checked["no-op re-run, 1 gateway"] in (True, False)  # measured, so checked
    assert not any("gateways vs 1" in name and "no-op" in name for name in checked)
    assert "fresh converge, 4 gateway(s)" in report.table(results)
    assert "fresh converge, 8 gateway(s)" not in report.table(results)
