"""Settings shared by every test tier: how `make test` spreads the tests over parallel workers.

`make test` runs on pytest-xdist workers. A worker runs whole test modules, so a module's slow
fixtures (an e2e suite's own hosts, the integration tier's PostgreSQL server) are set up once, by
the one worker that needs them. Modules that share one session fixture run together as one unit
(SHARED_FIXTURE_UNITS): two workers setting up the same test bed hosts would replace each other's.
The run ends with a table of units and the seconds each worker spent (tests/suite_budget.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.suite_budget import SuiteBudget, scale_from_environment

# The main e2e bed (tests/e2e/conftest.py: the session `deployment`, hosts without a prefix).
SHARED_FIXTURE_UNITS = {
    "main-bed": ("tests/e2e/test_db_gateway.py", "tests/e2e/test_stateless_gateway.py", "tests/e2e/test_upgrade.py"),
}

# The e2e units, longest first, as the suite table measured them in a whole `make test` on 2 cores
# (2026-12-02, 48 min in all): load balancer (the whole multi-host topology) 1123 s, main bed 889 s,
# verify faults 596 s, backup 566 s, sudo user 563 s, rotation 501 s, TLS 281 s, demo 254 s, key guard
# 248 s, virtual keys 246 s, ollama nodes 179 s; the rest under 90 s. The fault tier, measured beside
# itself on the same 2 cores: faults 530 s, leak scan 379 s. Handing them out in this order lets the two
# workers finish close together: in test-count order one worker once ran three long ones back to back and
# finished 430 s after the other. On 2026-12-03 (53 min, provisioned hosts): main bed 1153 s, faults 874 s,
# load balancer 669 s, rotation 642 s, verify faults 471 s, leak scan 411 s, sudo user 387 s, backup 343 s;
# in this order the workers finished 31 s apart (longest-first by these figures would do no better).
LONGEST_FIRST = (
    "tests/e2e/test_load_balancer.py", "main-bed", "tests/e2e/test_verify_faults.py", "tests/faults/test_faults.py",
    "tests/e2e/test_backup.py", "tests/e2e/test_sudo_user.py", "tests/e2e/test_rotation.py",
    "tests/faults/test_leaks.py", "tests/e2e/test_tls.py", "tests/e2e/test_demo.py", "tests/e2e/test_key_guard.py",
    "tests/e2e/test_virtual_keys.py", "tests/e2e/test_ollama_nodes.py", "tests/e2e/test_external_database.py",
)


REPO_ROOT = Path(__file__).resolve().parent.parent
# The tiers that need no test bed, and those whose suites make bed hosts.
BEDLESS_TIERS = ("tests/unit/", "tests/integration/")
BED_TIERS = ("tests/e2e", "tests/faults", "tests/testbed")


# The checks a user runs against their own gateways (`pytest tests/testinfra --hosts=...`). In a run of
# the whole suite they run against the bed, from tests/e2e/test_verify_faults.py; collected here without
# --hosts they could only be skipped, so they are not collected unless named.
USER_CHECKS = REPO_ROOT / "tests" / "testinfra"


def pytest_ignore_collect(collection_path, config):
    if collection_path != USER_CHECKS or config.getoption("hosts", None):
        return None
    named = any((config.invocation_params.dir / arg.split("::", 1)[0]).resolve().is_relative_to(USER_CHECKS)
                for arg in config.args)
    return None if named else True


def work_unit(nodeid: str) -> str:
    """The unit a test is scheduled in: its shared-fixture unit, or else its module."""
    module = nodeid.split("::", 1)[0]
    for unit, modules in SHARED_FIXTURE_UNITS.items():
        if module in modules:
            return unit
    return module


@pytest.hookimpl(optionalhook=True)  # a plain `pytest` (no xdist, -p no:xdist) runs everything in one process
def pytest_xdist_make_scheduler(config, log):
    # xdist's own `--dist loadgroup` reads xdist_group marks by rewriting Node._nodeid, which
    # pytest 9.2 no longer uses (Node.nodeid comes from Node._id), so it silently groups nothing.
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # keep the order of pytest_collection_modifyitems below

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(items):
    """The tiers without a bed first, while the bed is prepared beside them (BedPreparation); then the
    longest units first (a stable sort: each unit's own tests keep their order)."""
    rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}

    def order(item) -> int:
        unit = work_unit(item.nodeid)
        return -1 if unit.startswith(BEDLESS_TIERS) else rank.get(unit, len(rank))

    items.sort(key=order)


class BedPreparation:
    """`python -m tests.testbed prepare` in the background from the start of a run that has bed suites.

    On a clean clone the bed's archives and seed take about 2 minutes of one core (tests/testbed/bed.py
    prepare), and the first two e2e suites used to wait for them, one making them and the other waiting
    on the lock with its core idle. Started here, they are made while the workers run the unit and
    integration tiers; a suite asking for them meanwhile waits on the same lock as before. A failure here
    is the suites' to report: they make what is missing themselves and show their own error."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def pytest_sessionstart(self, session):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.testbed", "prepare", "--images", os.environ.get("TESTBED_IMAGES", "local")],
                cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def pytest_sessionfinish(self, session, exitstatus):
        if self.process is None or self.process.poll() is not None:
            return
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            self.process.send_signal(signal.SIGINT)  # its half-made seed is removed on KeyboardInterrupt
        self.process.wait()

    def pytest_terminal_summary(self, terminalreporter):
        if self.process is not None and self.process.returncode not in (0, None, -signal.SIGINT):
            terminalreporter.write_line(f"bed preparation failed (exit {self.process.returncode}): {self.log_path}")


def runs_bed_suites(config) -> bool:
    """Whether the run's paths hold a bed suite (a directory above one counts: `pytest tests`)."""
    for arg in config.args or ["."]:
        path = (config.invocation_params.dir / arg.split("::", 1)[0]).resolve()
        for tier in BED_TIERS:
            bed_dir = REPO_ROOT / tier
            if bed_dir == path or bed_dir.is_relative_to(path) or path.is_relative_to(bed_dir):
                return True
    return False


class FaultSummary:
    """The fault tier's line per fault (tests/faults: record_property("fault", ...)), printed together at
    the end of the run: xdist workers' own output is not shown, their reports' properties are."""

    def __init__(self):
        self.lines = []

    def pytest_runtest_logreport(self, report):
        self.lines += [value for name, value in report.user_properties if name == "fault" and report.when == "call"]

    def pytest_terminal_summary(self, terminalreporter):
        if self.lines:
            terminalreporter.section("fault tier")
            for line in self.lines:
                terminalreporter.write_line(line)


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a single process), not an xdist worker
        config.pluginmanager.register(FaultSummary(), "fault-summary")
        config.pluginmanager.register(SuiteBudget(work_unit, scale_from_environment()), "suite-budget")
        if runs_bed_suites(config):
            from tests.testbed.bed import default_state_dir  # the Docker SDK, only for runs with a bed

            config.pluginmanager.register(BedPreparation(default_state_dir() / "prepare.log"), "bed-preparation")
