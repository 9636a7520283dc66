"""Settings shared by every test tier: how `make test` spreads the tests over parallel workers.

`make test` runs on pytest-xdist workers. A worker runs whole test modules, so a module's slow
fixtures (an e2e suite's own hosts, the integration tier's PostgreSQL server) are set up once, by
the one worker that needs them. Modules that share one session fixture run together as one unit
(SHARED_FIXTURE_UNITS): two workers setting up the same test bed hosts would replace each other's.
The run ends with a table of units and the seconds each worker spent (tests/suite_budget.py).
"""

from __future__ import annotations

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
    """The longest units first (a stable sort: each unit's own tests keep their order)."""
    rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(work_unit(item.nodeid), len(rank)))


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
