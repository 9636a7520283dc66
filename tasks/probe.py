"""HTTP checks, stdlib only: run on the controller and, as a script, inside the proxy container.

Inside the container this file is sent as `python3 -c` source, so requests leave from where the
gateway's real traffic leaves (LiteLLM issue #4494: an Ollama URL that works from the operator's
laptop but not from the container). Keys are read from the environment by name, never passed in.
Each check retries until its deadline, then reports what was checked, the URL, and the error.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request


def request(url, key_env=None, body=None, timeout=10):
    """(status, parsed JSON or text) — status 0 means no HTTP answer (the error text instead)."""
    headers = {"Content-Type": "application/json"}
    if key_env:
        headers["Authorization"] = "Bearer " + os.environ.get(key_env, "")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return 0, str(reason)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")[:300]


def evaluate(check, status, payload):
    """None when the check passes, else a short description of what is wrong."""
    kind = check["kind"]
    if status == 0:
        return "no answer: " + str(payload)
    if kind == "refused":
        return None if status in (400, 401, 403) else "HTTP %s: a wrong key was accepted" % status
    if status != 200:
        return "HTTP %s: %s" % (status, str(payload)[:200])
    if kind == "models":
        ids = sorted(m.get("id") for m in payload.get("data", [])) if isinstance(payload, dict) else []
        missing = sorted(set(check["expect"]) - set(ids))
        if check.get("exact") and ids != sorted(check["expect"]):
            return "models are %s, expected %s" % (ids, sorted(check["expect"]))
        return "missing model(s) %s (has %s)" % (missing, ids) if missing else None
    if kind == "ollama_tags":
        names = {m.get("name") for m in payload.get("models", [])} if isinstance(payload, dict) else set()
        names |= {n.split(":")[0] for n in names if n.endswith(":latest")}
        missing = sorted(set(check["expect"]) - names)
        return "model(s) %s not pulled on this node (has %s)" % (missing, sorted(names)) if missing else None
    if kind == "readiness":
        db = payload.get("db") if isinstance(payload, dict) else None
        if check.get("db") and db != "connected":
            return "database is %r, expected connected" % db
        return None
    if kind == "chat":
        try:
            return None if payload["choices"][0]["message"]["content"] is not None else "empty reply"
        except (KeyError, IndexError, TypeError):
            return "unexpected reply %s" % str(payload)[:200]
    return None


def run_check(check, deadline):
    """Retry one check until it passes or its deadline passes; the last failure is returned."""
    delay = 1.0
    while True:
        status, payload = request(check["url"], check.get("key_env"), check.get("body"), check.get("timeout", 10))
        problem = evaluate(check, status, payload)
        if problem is None or time.monotonic() + delay > deadline:
            return {"name": check["name"], "url": check["url"], "ok": problem is None, "status": status,
                    "problem": problem, "fix": check.get("fix", "")}
        time.sleep(delay)  # back-off between attempts of a check that has a deadline
        delay = min(delay * 2, 10)


def run_checks(checks, seconds):
    deadline = time.monotonic() + seconds
    return [run_check(check, deadline) for check in checks]


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(json.dumps(run_checks(spec["checks"], spec["seconds"])))
