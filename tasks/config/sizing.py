"""How many worker processes a gateway's proxy runs (proxy_workers; "auto" sizes it to the host).

LiteLLM runs one Uvicorn worker by default, and one worker keeps one CPU busy: on the test bed
(2 CPUs) the deployed proxy answered 91 requests/s at concurrency 32 with two workers where the bare
one-worker proxy answered 57 (bench/results.json, the full run of 4 December 2026). So "auto" gives one
worker per CPU, bounded by memory (a worker holds about 800 MB resident) and by the bundled Postgres's connections
(LiteLLM pools 10 per worker; Postgres allows 100).
"""

from __future__ import annotations

from dataclasses import replace

from pyinfra import host
from pyinfra.facts.hardware import Cpus, Memory

from tasks.config.settings import AUTO_WORKERS, Settings

MAX_AUTO_WORKERS = 8
WORKER_MEMORY_MB = 1024
RESERVED_MEMORY_MB = 1024  # Postgres, Docker and the system


def workers_for(cpus: int | None, memory_mb: int | None) -> int:
    """The "auto" worker count of a host with `cpus` CPUs and `memory_mb` MB (None: unknown)."""
    if not cpus:
        return 1
    by_memory = (memory_mb - RESERVED_MEMORY_MB) // WORKER_MEMORY_MB if memory_mb else cpus
    return max(1, min(cpus, by_memory, MAX_AUTO_WORKERS))


def sized(settings: Settings) -> Settings:
    """settings with proxy_workers a number for the host being deployed ("auto" read from its facts)."""
    if settings.proxy_workers != AUTO_WORKERS:
        return settings
    return replace(settings, proxy_workers=workers_for(host.get_fact(Cpus), host.get_fact(Memory)))
