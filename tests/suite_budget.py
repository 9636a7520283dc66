"""Every suite's cost in sight, and a budget each one must stay within (`make test`, CI).

A suite is a work unit of tests/conftest.py: a module, or the modules that share one test bed. At the end
of a run the controller prints one row per suite (seconds of setup, call and teardown on its worker, the
worker, the bed hosts it created, its tests) and fails the run when a suite took longer than its budget:
the next slow suite is caught the day it appears, not when CI passes its limit. A budget is raised only
with the reason beside it.

The budgets: DEFAULT_BUDGET_S for a suite not named; the named ones are about 1.3 times their slowest
whole-run figure on this 2-core machine (tests/conftest.py LONGEST_FIRST has the history).
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field

DEFAULT_BUDGET_S = 480.0
BUDGETS_S = {
    # The whole issue-17 topology: 3 gateways, a db host, a redis host, a load balancer, an outsider.
    "tests/e2e/test_load_balancer.py": 1500.0,
    # Two gateways (gw-db through the fresh install), converge, upgrade and rollback.
    "main-bed": 1500.0,
    # Every fault, each deployed and broken on its own bare host (the interrupted upgrade alone 322 s).
    "tests/faults/test_faults.py": 1150.0,
    "tests/e2e/test_rotation.py": 850.0,
    "tests/e2e/test_verify_faults.py": 780.0,
    "tests/e2e/test_backup.py": 740.0,
    "tests/e2e/test_sudo_user.py": 740.0,
    "tests/faults/test_leaks.py": 540.0,
}
# CI on a loaded machine, or a contributor's slower one: every budget times this (e.g. 1.5).
SCALE_VARIABLE = "SUITE_BUDGET_SCALE"
HOST_READY = re.compile(r"\[testbed\] host (\S+) \(\w+\) ready")
# The bed's images, seed and image archives, made once per machine (tests/conftest.py BedPreparation) and
# waited for by a suite that asks before they are: counted apart, so a clean machine puts no suite over budget.
BED_PREPARATION = re.compile(r"\[testbed\] (?:images and seed|images|archives) ready: ([0-9.]+)s")
PREPARATION = "bed images, seed and archives (once per machine)"
# Every pyinfra run a suite makes (tests/e2e/conftest.py Deployment.pyinfra): how much of a suite is the
# package's own runs, the part issue 35's single state read makes cheaper, and the rest is the bed's.
PYINFRA_RUN = re.compile(r"\[e2e\] pyinfra \S+ ran ([0-9.]+)s")


def budget_of(unit: str, scale: float = 1.0) -> float:
    if unit == PREPARATION:
        return math.inf
    return BUDGETS_S.get(unit, DEFAULT_BUDGET_S) * scale


@dataclass
class Suite:
    seconds: float = 0.0
    workers: set[str] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)
    tests: set[str] = field(default_factory=set)
    pyinfra_runs: int = 0
    pyinfra_seconds: float = 0.0


def worker_of(report) -> str:
    node = getattr(report, "node", None)  # set by xdist on the controller; absent in one process
    return node.gateway.id if node is not None else "main"


def suites(reports, unit_of) -> dict[str, Suite]:
    """{unit: Suite} from test reports (the controller's copies of the workers' reports under xdist)."""
    found: dict[str, Suite] = defaultdict(Suite)
    for report in reports:
        suite = found[unit_of(report.nodeid)]
        suite.seconds += report.duration
        suite.workers.add(worker_of(report))
        suite.tests.add(report.nodeid)
        for heading, text in getattr(report, "sections", ()):
            # A report carries the captured output of the phases before its own too ("Captured stderr
            # setup" in the call's report): each phase's own is counted once, in its own report.
            if not heading.endswith(f" {getattr(report, 'when', '')}"):
                continue
            suite.hosts.update(HOST_READY.findall(text))
            runs = [float(seconds) for seconds in PYINFRA_RUN.findall(text)]
            suite.pyinfra_runs += len(runs)
            suite.pyinfra_seconds += sum(runs)
            preparation = sum(float(seconds) for seconds in BED_PREPARATION.findall(text))
            if preparation:
                suite.seconds -= preparation
                found[PREPARATION].seconds += preparation
    return dict(found)


def worker_seconds(reports) -> dict[str, float]:
    """Seconds of setup, call and teardown per xdist worker: whether the workers finished near each other."""
    seconds: dict[str, float] = defaultdict(float)
    for report in reports:
        seconds[worker_of(report)] += report.duration
    return dict(seconds)


def over_budget(found: dict[str, Suite], scale: float = 1.0) -> list[str]:
    return [f"{unit}: {suite.seconds:.0f} s, over its budget of {budget_of(unit, scale):.0f} s (tests/suite_budget.py)"
            for unit, suite in sorted(found.items()) if suite.seconds > budget_of(unit, scale)]


def scale_from_environment() -> float:
    text = os.environ.get(SCALE_VARIABLE, "1")
    try:
        scale = float(text)
    except ValueError:
        raise SystemExit(f"{SCALE_VARIABLE}={text!r} is not a number — fix: e.g. {SCALE_VARIABLE}=1.5") from None
    if not scale > 0:
        raise SystemExit(f"{SCALE_VARIABLE}={text!r} is not above 0 — fix: e.g. {SCALE_VARIABLE}=1.5")
    return scale


class SuiteBudget:
    """The table and the check, registered on the controller by tests/conftest.py."""

    def __init__(self, unit_of, scale: float):
        self.unit_of = unit_of
        self.scale = scale
        self.reports = []
        self.found: dict[str, Suite] = {}
        self.problems: list[str] = []

    def pytest_runtest_logreport(self, report):
        self.reports.append(report)

    def pytest_sessionfinish(self, session, exitstatus):
        self.found = suites(self.reports, self.unit_of)
        self.problems = over_budget(self.found, self.scale)
        if self.problems and exitstatus == 0:
            session.exitstatus = 1

    def pytest_terminal_summary(self, terminalreporter):
        found = self.found  # pytest's terminal summary comes after every pytest_sessionfinish
        if not found:
            return
        terminalreporter.section("suites: seconds, budget, worker, bed hosts created, tests, pyinfra runs")
        for unit, suite in sorted(found.items(), key=lambda item: -item[1].seconds):
            runs = f"{suite.pyinfra_runs:4} runs {suite.pyinfra_seconds:6.0f} s" if suite.pyinfra_runs else " " * 18
            terminalreporter.write_line(
                f"{suite.seconds:7.0f} s  {budget_of(unit, self.scale):6.0f} s  {','.join(sorted(suite.workers)):8}"
                f"{len(suite.hosts):3} hosts {len(suite.tests):5} tests  {runs}  {unit}")
        terminalreporter.write_line("workers: " + ", ".join(
            f"{worker} {seconds:.0f} s" for worker, seconds in sorted(worker_seconds(self.reports).items())))
        for problem in self.problems:
            terminalreporter.write_line(f"SUITE OVER BUDGET: {problem}", red=True, bold=True)
