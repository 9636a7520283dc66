"""proxy_workers: "auto" sizes the proxy to the host; the rendered command carries it, as LiteLLM reads it."""

from dataclasses import replace

import pytest
import yaml
from pyinfra.facts.hardware import Cpus, Memory

from tasks.config import sizing
from tasks.config.settings import ConfigError
from tasks.lib.render import COMPOSE_FILE, render_files


@pytest.mark.parametrize("cpus, memory_mb, workers", [
    (2, 24000, 2),      # the test bed: one per CPU
    (4, 2048, 1),       # a small VM: memory decides
    (4, 4096, 3),
    (16, 65536, 8),     # a big host: at most 8 (the bundled Postgres's connections)
    (None, None, 1),    # facts unknown: LiteLLM's own default
    (1, 512, 1),
])
def test_auto_is_one_worker_per_cpu_within_memory_and_the_cap(cpus, memory_mb, workers):
    assert sizing.workers_for(cpus, memory_mb) == workers


class FakeHost:
    def __init__(self, facts):
        self.facts = facts

    def get_fact(self, fact, *args, **kwargs):
        return self.facts[fact]


def proxy_command(settings) -> list[str]:
    return yaml.safe_load(render_files(settings)[COMPOSE_FILE])["services"]["litellm"]["command"]


def test_the_rendered_command_carries_the_hosts_worker_count_and_litellm_reads_it(build, monkeypatch):
    from litellm.proxy.proxy_cli import run_server

    monkeypatch.setattr(sizing, "host", FakeHost({Cpus: 4, Memory: 16000}))
    settings = build()
    assert settings.proxy_workers == "auto"  # the shipped default
    command = proxy_command(sizing.sized(settings))
    assert command[4:] == ["--num_workers", "4", "--run_gunicorn"]
    # LiteLLM's own command line (click) takes them as the worker count, forked by Gunicorn from a
    # process that imported LiteLLM once (tasks/render.proxy_command).
    params = run_server.make_context("litellm", list(command)).params
    assert (params["num_workers"], params["run_gunicorn"]) == (4, True)
    # A number in the group data is used as it is, whatever the host; one worker has no supervisor.
    assert proxy_command(sizing.sized(replace(settings, proxy_workers=3)))[4:6] == ["--num_workers", "3"]
    assert proxy_command(sizing.sized(replace(settings, proxy_workers=1)))[4:] == ["--num_workers", "1"]


def test_the_deploy_writes_the_compose_file_of_the_sized_settings(build, monkeypatch):
    """stack.write_files, the one writer of docker-compose.yml (deploy and upgrade rollback), sizes
    from the host's facts: the whole deploy planned on a host with 2 CPUs and 8 GB."""
    from tasks.gateway import stack
    from tasks.lib import docker
    from tests.unit.test_deploy_plan import plan

    rendered = []
    real = stack.render_files
    monkeypatch.setattr(stack, "render_files", lambda settings, **kw: rendered.append(real(settings, **kw)) or rendered[-1])
    plan(build(), monkeypatch, previous=None,
         facts={Cpus: lambda **_: 2, Memory: lambda **_: 8000, docker.EngineVersion: lambda **_: (24, 0)})
    (files,) = rendered
    proxy = yaml.safe_load(files[COMPOSE_FILE])["services"]["litellm"]
    assert proxy["command"][4:6] == ["--num_workers", "2"]
    # The host's engine read too: 24 takes no start_interval (tasks/lib/docker.py)
    assert "start_interval" not in proxy["healthcheck"]


@pytest.mark.parametrize("value, message", [
    ("2", "proxy_workers: '2' is text — fix: write 2 without quotes"),
    (0, "proxy_workers: 0 is not a number of workers (1-64)"),
    (True, "proxy_workers: True is not a number of workers (1-64)"),
    ("all", "proxy_workers: 'all' is not a number of workers (1-64)"),
])
def test_bad_worker_counts_are_refused_naming_the_field_and_the_fix(build, value, message):
    with pytest.raises(ConfigError) as e:
        build(proxy_workers=value)
    (problem,) = e.value.problems
    assert problem.startswith(f"host gw1: {message}") and "fix:" in problem, problem
