"""The per-suite budget check (tests/suite_budget.py): a suite made slower than its budget fails the run,
and the table names every suite's seconds, worker, bed hosts and tests. Run as a real pytest in a child
process, with the same plugin the project's conftest registers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import suite_budget
from tests.conftest import work_unit

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = """
    from tests import suite_budget
    suite_budget.BUDGETS_S["test_slow.py"] = {budget}

    def pytest_configure(config):
        config.pluginmanager.register(suite_budget.SuiteBudget(lambda nodeid: nodeid.split("::")[0],
                                                               suite_budget.scale_from_environment()))
"""
# The slow suite's work takes 0.4 s of wall time (the sleep is the work being measured, not a wait for
# anything); its stderr names a bed host as the test bed does, so the table counts one.
SLOW = """
    import sys, time

    import pytest

    @pytest.fixture
    def converged():
        print("[e2e] pyinfra deploy.py ran 1.5s", file=sys.stderr)

    def test_slow(converged):
        print("[testbed] host sb-gw (host) ready: 0.1s", file=sys.stderr)
        print("[e2e] pyinfra verify.py ran 0.5s", file=sys.stderr)
        time.sleep(0.4)
        assert True
"""


# A hang's deadline, not a speed target: one subprocess took over 120 s under a whole run's load (7 on 2 CPUs).
SUBPROCESS_DEADLINE = 600


def run_suite(tmp_path: Path, budget: float, scale: str = "1") -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST.format(budget=budget)))
    (tmp_path / "test_slow.py").write_text(textwrap.dedent(SLOW))
    env = {**os.environ, "PYTHONPATH": str(ROOT), suite_budget.SCALE_VARIABLE: scale}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=SUBPROCESS_DEADLINE)


def test_a_suite_over_its_budget_fails_the_run_with_its_name(tmp_path):
    run = run_suite(tmp_path, budget=0.1)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 passed" in run.stdout
    assert "SUITE OVER BUDGET: test_slow.py:" in run.stdout and "over its budget of 0 s" in run.stdout, run.stdout


def test_a_suite_within_its_budget_passes_and_is_listed_with_its_hosts(tmp_path):
    run = run_suite(tmp_path, budget=60)
    assert run.returncode == 0, run.stdout + run.stderr
    [row] = [line for line in run.stdout.splitlines() if line.endswith("test_slow.py")]
    assert row.split()[2:4] == ["60", "s"] and "  1 hosts     1 tests" in row, row
    # The setup's run is in the setup's report and again in the call's: counted once.
    assert "   2 runs      2 s" in row, row


def test_the_scale_stretches_every_budget_and_is_checked(tmp_path):
    assert run_suite(tmp_path, budget=0.1, scale="100").returncode == 0
    bad = run_suite(tmp_path, budget=60, scale="fast")
    assert bad.returncode != 0 and "SUITE_BUDGET_SCALE='fast' is not a number" in bad.stdout + bad.stderr


@pytest.mark.parametrize("unit", [*suite_budget.BUDGETS_S, "tests/e2e/test_demo.py"])
def test_every_budget_is_under_the_ci_limit_with_room_for_the_rest(unit):
    from tests.conftest import LONGEST_FIRST

    assert unit in LONGEST_FIRST or unit not in suite_budget.BUDGETS_S
    assert suite_budget.budget_of(unit) <= 25 * 60


def test_the_beds_one_time_preparation_is_counted_apart_from_the_suite():
    """A clean machine builds the images in whichever suite asks first: not that suite's cost."""

    class Report:
        def __init__(self, nodeid, duration, text):
            self.nodeid, self.duration, self.sections = nodeid, duration, [("Captured stderr setup", text)]
            self.when = "setup"

    text = ("[testbed] images ready: 200.0s\n[testbed] archives ready: 100.0s\n[testbed] images and seed ready: 300.5s\n"
            "[testbed] host b-gw (host) ready: 2.0s\n[testbed] host b-db (host) ready: 2.0s\n"
            "[e2e] pyinfra deploy.py ran 30.5s\n[e2e] pyinfra backup.py ran 4.0s\n")
    found = suite_budget.suites([Report("tests/e2e/test_b.py::t", 650.5, text), Report("tests/e2e/test_b.py::u", 10, "")],
                                lambda nodeid: nodeid.split("::")[0])
    assert found["tests/e2e/test_b.py"].seconds == pytest.approx(60)
    assert found["tests/e2e/test_b.py"].hosts == {"b-gw", "b-db"}
    assert (found["tests/e2e/test_b.py"].pyinfra_runs, found["tests/e2e/test_b.py"].pyinfra_seconds) == (2, 34.5)
    assert found[suite_budget.PREPARATION].seconds == pytest.approx(600.5)
    assert suite_budget.over_budget(found) == []


def test_time_is_summed_per_suite_and_per_worker():
    def report(nodeid, duration, worker=None):
        node = SimpleNamespace(gateway=SimpleNamespace(id=worker)) if worker else None
        return SimpleNamespace(nodeid=nodeid, duration=duration, node=node, sections=[], when="call")

    reports = [
        report("tests/e2e/test_db_gateway.py::test_1", 10.0, "gw0"),
        report("tests/e2e/test_upgrade.py::test_5", 5.0, "gw0"),
        report("tests/e2e/test_rotation.py::test_1", 7.0, "gw1"),
        report("tests/unit/test_settings.py::test_a", 0.5),
    ]
    found = suite_budget.suites(reports, work_unit)
    assert {unit: (suite.seconds, suite.workers) for unit, suite in found.items()} == {
        "main-bed": (15.0, {"gw0"}), "tests/e2e/test_rotation.py": (7.0, {"gw1"}),
        "tests/unit/test_settings.py": (0.5, {"main"})}
    assert suite_budget.worker_seconds(reports) == {"gw0": 15.0, "gw1": 7.0, "main": 0.5}


def collected(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=SUBPROCESS_DEADLINE).stdout


def test_the_user_checks_are_collected_when_named_never_to_be_skipped_in_a_whole_run():
    """tests/testinfra checks a user's gateways (--hosts); `make test` runs them against the bed from
    tests/e2e/test_verify_faults.py. Collected in a run of `tests`, they could only be skipped."""
    others = [f"--ignore=tests/{tier}" for tier in ("unit", "integration", "e2e", "faults", "testbed")]
    assert "tests/testinfra/" not in collected("tests", *others)
    assert "tests/testinfra/test_gateway.py::" in collected("tests/testinfra")
