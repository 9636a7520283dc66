"""A bounded HTTP load generator: N client threads, each on its own keep-alive connection, sending the
same POST until a request count or a deadline is reached, whichever comes first. It stops by itself.

Targets are the test bed's own addresses only (bench/__main__.py passes them from the bed's inventory);
`guard_target` refuses anything else before a request is sent."""

from __future__ import annotations

import http.client
import ipaddress
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    ok: int
    failed: int
    latencies_ms: list[float] = field(repr=False)
    first_error: str = ""

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def guard_target(url: str, allowed: set[str]) -> None:
    """Only loopback and the bed's own hosts are load targets."""
    host = urlsplit(url).hostname or ""
    if host in allowed:
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"load target {url!r} is not loopback or a test bed host ({sorted(allowed)})")


def run_load(
    url: str,
    body: dict,
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
    max_requests: int,
    allowed: set[str],
    timeout: float = 30,
) -> LoadResult:
    guard_target(url, allowed)
    parts = urlsplit(url)
    hostname = parts.hostname
    assert hostname is not None  # guard_target refused a URL without one (allowed never holds "")
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **headers}
    lock = threading.Lock()
    sent = 0
    latencies: list[float] = []
    failures: list[str] = []
    deadline = time.monotonic() + seconds

    def take() -> bool:
        nonlocal sent
        with lock:
            if sent >= max_requests or time.monotonic() >= deadline:
                return False
            sent += 1
            return True

    def client() -> None:
        conn = http.client.HTTPConnection(hostname, parts.port or 80, timeout=timeout)
        while take():
            t0 = time.perf_counter()
            try:
                conn.request("POST", parts.path, payload, headers)
                response = conn.getresponse()
                data = response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
            except Exception as e:  # noqa: BLE001 - counted and reported, the run goes on
                conn.close()
                conn = http.client.HTTPConnection(hostname, parts.port or 80, timeout=timeout)
                with lock:
                    failures.append(f"{type(e).__name__}: {e}")
                continue
            elapsed = (time.perf_counter() - t0) * 1000
            with lock:
                latencies.append(elapsed)
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + timeout + 5)
    took = time.monotonic() - start
    return LoadResult(concurrency, took, len(latencies), len(failures), latencies, failures[0] if failures else "")


def median_and_spread(values: list[float]) -> dict:
    """A figure as the benchmark reports it: the median of its runs and their spread (max - min)."""
    return {
        "median": round(statistics.median(values), 2),
        "spread": round(max(values) - min(values), 2),
        "runs": [round(v, 2) for v in values],
    }
