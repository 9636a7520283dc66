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

PROBE = r'''
import json, subprocess, time, urllib.error, urllib.request
SECONDS = __SECONDS__
def master():
    for line in open("/opt/litellm/.env"):
        if line.startswith("LITELLM_MASTER_KEY="):
            return line.split("=", 1)[1].strip().strip('"')
def call(method, path, key, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request("http://127.0.0.1:4000" + path, data=data, method=method,
                                     headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, None
def transactions():
    query = "select xact_commit + xact_rollback from pg_stat_database where datname = current_database()"
    return int(subprocess.run(["docker", "compose", "exec", "-T", "db", "psql", "-U", "litellm", "-d", "litellm",
                               "-tAc", query], cwd="/opt/litellm", capture_output=True, text=True, check=True).stdout)
master_key = master()
status, made = call("POST", "/key/generate", master_key, {"key_alias": "bench-key-cache"})
assert status == 200, status
key = made["key"]
try:
    start, began = transactions(), time.monotonic()
    time.sleep(SECONDS)
    idle = (transactions() - start) / (time.monotonic() - began)
    requests, start, began = 0, transactions(), time.monotonic()
    while time.monotonic() - began < SECONDS:
        call("GET", "/v1/models", key)
        requests += 1
    busy_s = time.monotonic() - began
    busy = (transactions() - start) / busy_s
finally:
    call("POST", "/key/delete", master_key, {"keys": [key]})
config = open("/opt/litellm/litellm-config.yaml").read()
ttl = next(line.split(":", 1)[1].strip() for line in config.splitlines() if "user_api_key_cache_ttl:" in line)
print(json.dumps({"key_cache_ttl": ttl, "requests_per_s": round(requests / busy_s, 1),
                  "db_transactions_per_s_above_idle": round(busy - idle, 1),
                  "per_request": round((busy - idle) / (requests / busy_s), 3)}))
'''


def main(argv: list[str] | None = None) -> int:
    from tests import demo
    from tests.testbed import Testbed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="each spell, idle and busy (at most 120)")
    args = parser.parse_args(argv)
    seconds = min(max(args.seconds, 1.0), 120.0)
    program = PROBE.replace("__SECONDS__", repr(seconds)).encode()
    result = Testbed().ssh(demo.GATEWAY, "python3 -", input=program, timeout=2 * seconds + 120)
    if not result.ok:
        print(result.output[-3000:])
        return 1
    print(json.dumps(json.loads(result.output.strip().splitlines()[-1]), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
