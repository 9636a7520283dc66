"""Settings shared by every test tier: how `make test` spreads the tests over parallel workers.

`make test` runs on pytest-xdist workers. A worker runs whole test modules, so a module's slow
fixtures (an e2e suite's own hosts, the integration tier's PostgreSQL server) are set up once, by
the one worker that needs them. Modules that share one session fixture run together as one unit
(SHARED_FIXTURE_UNITS): two workers setting up the same test bed hosts would replace each other's.
"""

from __future__ import annotations

import pytest

# The main e2e bed (tests/e2e/conftest.py: the session `deployment`, hosts without a prefix).
SHARED_FIXTURE_UNITS = {
    "main-bed": ("tests/e2e/test_db_gateway.py", "tests/e2e/test_stateless_gateway.py", "tests/e2e/test_upgrade.py"),
}


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

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ModuleScheduling(config, log)
