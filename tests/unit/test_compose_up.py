"""compose.up_command, run for real by bash against a stand-in `docker` that answers as Compose does.

A container the engine created but could not start (runc's "OCI runtime create failed", seen on loaded
hosts) is started once more; a container that started and then failed is not, and its logs are quoted.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from tasks.lib.compose import up_command

FAKE_DOCKER = textwrap.dedent(r"""
    #!/usr/bin/env bash
    # Stand-in for `docker compose` driven by files in $FAKE_DIR: up-results holds one exit status per
    # `up` call (consumed in order); state is what `ps --format {{.State}}` prints.
    echo "$*" >> "$FAKE_DIR/calls"
    case "$*" in
      *" up "*)
        status=$(head -n1 "$FAKE_DIR/up-results"); sed -i 1d "$FAKE_DIR/up-results"
        [ "$status" = 0 ] && echo running > "$FAKE_DIR/state"
        [ "$status" = 0 ] || echo "Error response from daemon: OCI runtime create failed" >&2
        exit "$status" ;;
      *"{{.State}}"*) cat "$FAKE_DIR/state" ;;
      *"{{.Name}}"*) echo litellm-litellm-1 ;;
      *" logs "*) echo "proxy log line: boom" ;;
    esac
""").lstrip()


def run(tmp_path: Path, up_results: list[int], state_after_failure: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    (tmp_path / "up-results").write_text("".join(f"{r}\n" for r in up_results))
    (tmp_path / "state").write_text(state_after_failure + "\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path)}
    command = up_command("litellm", "/opt/litellm", "litellm", force=True, timeout=30)
    result = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=30)
    calls = (tmp_path / "calls").read_text().splitlines()
    return result, calls


def ups(calls: list[str]) -> list[str]:
    return [c for c in calls if " up " in c]


def test_healthy_start_runs_up_once(tmp_path):
    result, calls = run(tmp_path, [0], "running")
    assert result.returncode == 0, result.stderr
    assert len(ups(calls)) == 1 and "--force-recreate" in ups(calls)[0]


def test_container_the_engine_could_not_start_is_started_once_more(tmp_path):
    result, calls = run(tmp_path, [1, 0], "created")
    assert result.returncode == 0, result.stderr
    assert "trying once more" in result.stderr
    first, second = ups(calls)
    # The retry starts the container compose just made; recreating it again would be a new one to fail.
    assert "--force-recreate" in first and "--force-recreate" not in second


def test_engine_failing_twice_fails_with_the_logs(tmp_path):
    result, calls = run(tmp_path, [1, 1], "created")
    assert result.returncode == 1
    assert len(ups(calls)) == 2
    assert "did not become healthy" in result.stderr and "proxy log line: boom" in result.stderr


@pytest.mark.parametrize("state", ["running", "exited", "restarting"])
def test_container_that_started_and_failed_is_not_retried(tmp_path, state):
    result, calls = run(tmp_path, [1, 0], state)
    assert result.returncode == 1
    assert len(ups(calls)) == 1
    assert "litellm-litellm-1" in result.stderr and "proxy log line: boom" in result.stderr
