"""Test hook: LITELLM_DEPLOY_TEST_STOP_AFTER=<stage> (one of STAGES) ends the process right after
that stage, like a kill, so tests can interrupt a rotation at a known point."""

from __future__ import annotations

import os
import sys

from pyinfra.operations import python

STOP_ENV = "LITELLM_DEPLOY_TEST_STOP_AFTER"
STAGES = ("pending", "backup", "env", "database", "restart")
STOP_EXIT_CODE = 75


def _stop_here(stage: str) -> None:
    """The test hook: end the whole process now, as a kill would (no clean-up, no summary)."""
    print(f"{STOP_ENV}={stage}: stopping the run here", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(STOP_EXIT_CODE)


def stop_after(stage: str) -> None:
    if os.environ.get(STOP_ENV) == stage:
        python.call(name=f"Test hook {STOP_ENV}={stage}: stop the run", function=_stop_here, stage=stage)
