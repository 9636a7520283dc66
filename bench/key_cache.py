"""`python -m bench.key_cache` (after `make demo`): what `key_cache_ttl` costs the database.

On the demo gateway (tests/demo.py) a virtual key is made, the database's transaction count read over an
idle spell and then over a spell of /v1/models requests with that key sent back to back by one client to
the proxy's port (every worker answers in turn), and the key deleted. Printed: requests a second, and the
database transactions a second above idle, which key_cache_ttl bounds (each worker reads a key it serves
at most once per key_cache_ttl). The program runs on the gateway host (standard library, on stdin); the
master key is read there from the host's .env and never leaves it. Load goes only to that host's
loopback, bounded in time.
"""

from __future__ import annotations

import argparse
import json

# Run on the gateway host after revocation.py's helpers (the master key read there, the proxy's loopback port).
PROBE = r"""
SECONDS = __SECONDS__
BASE = "http://127.0.0.1:4000"
def transactions():
    query = "select xact_commit + xact_rollback from pg_stat_database where datname = current_database()"
    return int(subprocess.run(["docker", "compose", "exec", "-T", "db", "psql", "-U", "litellm", "-d", "litellm",
                               "-tAc", query], cwd="/opt/litellm", capture_output=True, text=True, check=True).stdout)
master_key = _master_key("/opt/litellm/.env")
status, made = _call(BASE, "POST", "/key/generate", master_key, {"key_alias": "bench-key-cache"})
assert status == 200, status
key = made["key"]
try:
    start, began = transactions(), time.monotonic()
    time.sleep(SECONDS)
    idle = (transactions() - start) / (time.monotonic() - began)
    requests, start, began = 0, transactions(), time.monotonic()
    while time.monotonic() - began < SECONDS:
        _call(BASE, "GET", "/v1/models", key)
        requests += 1
    busy_s = time.monotonic() - began
    busy = (transactions() - start) / busy_s
finally:
    _call(BASE, "POST", "/key/delete", master_key, {"keys": [key]})
config = open("/opt/litellm/litellm-config.yaml").read()
ttl = next(line.split(":", 1)[1].strip() for line in config.splitlines() if "user_api_key_cache_ttl:" in line)
print(json.dumps({"key_cache_ttl": ttl, "requests_per_s": round(requests / busy_s, 1),
                  "db_transactions_per_s_above_idle": round(busy - idle, 1),
                  "per_request": round((busy - idle) / (requests / busy_s), 3)}))
"""


def main(argv: list[str] | None = None) -> int:
    from tests import demo
    from tests.e2e import revocation
    from tests.testbed import Testbed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="each spell, idle and busy (at most 120)")
    args = parser.parse_args(argv)
    seconds = min(max(args.seconds, 1.0), 120.0)
    program = (
        "import json, subprocess, time, urllib.error, urllib.request\n\n"
        + revocation.host_helpers()
        + PROBE.replace("__SECONDS__", repr(seconds))
    ).encode()
    result = Testbed().ssh(demo.GATEWAY, "python3 -", input=program, timeout=2 * seconds + 120)
    if not result.ok:
        print(result.output[-3000:])
        return 1
    print(json.dumps(json.loads(result.output.strip().splitlines()[-1]), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
