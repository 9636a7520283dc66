"""HTTP checks, stdlib only: run on the controller and, as a script, inside the proxy container.

Inside the container this file is sent as `python3 -c` source, so requests leave from where the
gateway's real traffic leaves (LiteLLM issue #4494: an Ollama URL that works from the operator's
laptop but not from the container). Keys are read from the environment by name, never passed in;
a virtual key's check names its alias, and the values come on stdin ({alias: value}, from a
root-only file on the host) when the spec says "keys_on_stdin".
Each check retries until its deadline, then reports what was checked, the URL, and the error.

A check is a dict: name, kind, url, and optionally key_env, body, timeout, expect, fix,
fix_no_answer (the fix when nothing answers at all) and requires (names of checks that must pass
first; when one failed, this check is skipped rather than reported as a second symptom).
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

VIRTUAL_KEYS = {}  # alias -> value, from stdin (see the module's docstring)


def key_of(check):
    """The key a check sends: a virtual key by alias, else an environment variable by name."""
    if check.get("key_alias"):
        return VIRTUAL_KEYS.get(check["key_alias"], "")
    return os.environ.get(check["key_env"], "") if check.get("key_env") else None


def request(url, key=None, body=None, timeout=10):
    """(status, parsed JSON or text) — status 0 means no HTTP answer (the error text instead)."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = "Bearer " + key
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, OSError) and reason.strerror:
            return 0, "%s (errno %s)" % (reason.strerror.lower(), reason.errno)
        return 0, str(reason)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")[:300]


def error_text(payload, limit=300):
    """The readable part of an error answer: LiteLLM/OpenAI {"error": {"message"}}, Ollama {"error"}."""
    if isinstance(payload, dict) and "error" in payload:
        error = payload["error"]
        payload = error.get("message", error) if isinstance(error, dict) else error
    text = " ".join(str(payload).split())
    return text if len(text) <= limit else text[:limit] + "..."


def evaluate(check, status, payload):
    """None when the check passes, else a short description of what is wrong."""
    kind = check["kind"]
    if status == 0:
        return "no answer: " + str(payload)
    if kind == "reachable":
        return None
    if kind == "refused":
        return None if status in (400, 401, 403) else "HTTP %s: a wrong key was accepted" % status
    key_env = check.get("key_env")
    if (key_env or check.get("key_alias")) and status in (400, 401, 403) and kind != "chat":
        empty = "" if key_of(check) else ", which is empty here"
        said = error_text(payload)
        if status == 400 and "no connected db" in said.lower():
            said += "; a LiteLLM without a database answers 400, not 401, to any key but its master key"
        holder = "virtual key %s" % check["key_alias"] if check.get("key_alias") else "the key in %s" % key_env
        return "HTTP %s: %s was refused%s (%s)" % (status, holder, empty, said)
    if status != 200:
        return "HTTP %s: %s" % (status, error_text(payload))
    if kind == "models":
        ids = sorted(m.get("id") for m in payload.get("data", [])) if isinstance(payload, dict) else []
        missing = sorted(set(check["expect"]) - set(ids))
        if check.get("exact") and ids != sorted(check["expect"]):
            return "models are %s, expected %s" % (ids, sorted(check["expect"]))
        return "model(s) %s not served (serves %s)" % (missing, ids) if missing else None
    if kind == "ollama_tags":
        names = {m.get("name") for m in payload.get("models", [])} if isinstance(payload, dict) else set()
        names |= {n.split(":")[0] for n in names if n and n.endswith(":latest")}
        missing = sorted(set(check["expect"]) - names)
        return "model(s) %s not pulled on this node (has %s)" % (missing, sorted(names)) if missing else None
    if kind == "readiness":
        db = payload.get("db") if isinstance(payload, dict) else None
        if check.get("db") and db != "connected":
            return "database is %r, expected connected" % db
        return None
    if kind == "admin_user":
        # /user/info read through the proxy: the database path itself (Prisma, Postgres, the bootstrap).
        info = payload.get("user_info") if isinstance(payload, dict) else None
        if not isinstance(info, dict) or info.get("user_role") != "proxy_admin":
            return "user %s is not a proxy_admin in the database (%s)" % (check["expect"], error_text(payload, 200))
        aliases = sorted(str(k.get("key_alias")) for k in payload.get("keys") or [] if isinstance(k, dict))
        if check["alias"] not in aliases:
            return "the master key is not linked to %s (its keys: %s)" % (check["expect"], aliases)
        return None
    if kind == "chat":
        try:
            return None if payload["choices"][0]["message"]["content"] is not None else "empty reply"
        except (KeyError, IndexError, TypeError):
            return "unexpected reply %s" % error_text(payload, 200)
    return None


def run_check(check, deadline):
    """Retry one check until it passes or its deadline passes; the last failure is returned."""
    delay = 1.0
    while True:
        status, payload = request(check["url"], key_of(check), check.get("body"), check.get("timeout", 10))
        problem = evaluate(check, status, payload)
        if problem is None or time.monotonic() + delay > deadline:
            fix = check.get("fix_no_answer", check.get("fix", "")) if status == 0 else check.get("fix", "")
            return {"name": check["name"], "url": check["url"], "ok": problem is None, "status": status,
                    "problem": problem, "fix": fix}
        time.sleep(delay)  # back-off between attempts of a check that has a deadline
        delay = min(delay * 2, 10)


def run_checks(checks, seconds):
    """Every check, in order, all against one deadline (each gets at least one attempt)."""
    deadline = time.monotonic() + seconds
    results, failed = [], set()
    for check in checks:
        blocked = [name for name in check.get("requires", ()) if name in failed]
        if blocked:
            result = {"name": check["name"], "url": check["url"], "ok": False, "skipped": True, "status": 0,
                      "problem": "not checked: %s failed" % ", ".join(blocked), "fix": ""}
        else:
            result = run_check(check, deadline)
        if not result["ok"]:
            failed.add(check["name"])
        results.append(result)
    return results


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    if spec.get("keys_on_stdin"):
        VIRTUAL_KEYS.update(json.loads(sys.stdin.read() or "{}"))
    print(json.dumps(run_checks(spec["checks"], spec["seconds"])))
