"""HTTP checks, stdlib only: run on the controller and, as a script, inside the proxy container.

Inside the container this file is sent as `python3 -c` source (tasks/remote/__init__.py program), so requests leave from where the
gateway's real traffic leaves (LiteLLM issue #4494: an Ollama URL that works from the operator's
laptop but not from the container). Keys are read from the environment by name, never passed in;
a virtual key's check names its alias, and the values come on stdin ({alias: value}, from a
root-only file on the host) when the spec says "keys_on_stdin".
Each check retries until its deadline, then reports what was checked, the URL, and the error.

A check is a dict: name, kind, url, and optionally key_env, body, timeout, expect, fix,
fix_no_answer (the fix when nothing answers at all) and requires (names of checks that must pass
first; when one failed, this check is skipped rather than reported as a second symptom).
The TLS front's kinds (tasks/gateway/tls.py, run from the gateway host): "https" (200 with the certificate
checked against cafile for the URL's host name) and "redirect" (expect: the Location), both able to
connect to another address than the URL's host (connect_to) while keeping its name.
"""

import http.client
import json
import os
import socket
import ssl
import sys
import time
import urllib.parse

from tasks.remote.http import http_request, json_or_text

VIRTUAL_KEYS = {}  # alias -> value, from stdin (see the module's docstring)


def key_of(check):
    """The key a check sends: a virtual key by alias, else an environment variable by name."""
    if check.get("key_alias"):
        return VIRTUAL_KEYS.get(check["key_alias"], "")
    return os.environ.get(check["key_env"], "") if check.get("key_env") else None


def request(url, key=None, body=None, timeout=10):
    """(status, parsed JSON or text) — status 0 means no HTTP answer (the error text instead)."""
    status, raw, error = http_request(url, key=key, body=body, timeout=timeout)
    return (0, error) if status == 0 else (status, json_or_text(raw))


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to `connect_to` while the certificate is checked against the URL's host (and SNI names
    it): a gateway checked from its own host, under the name its clients use."""

    def __init__(self, host, port, connect_to, context, timeout):
        super().__init__(host, port, context=context, timeout=timeout)
        self.connect_to = connect_to
        self.tls_context = context

    def connect(self):
        sock = socket.create_connection((self.connect_to, self.port), self.timeout)
        self.sock = self.tls_context.wrap_socket(sock, server_hostname=self.host)


def tls_request(check, timeout=10):
    """(status, {"location": ...}) of one GET without following redirects, for the TLS front's checks:
    kind "https" checks the certificate against check["cafile"] (the system trust when empty) and the
    URL's host name; kind "redirect" is plain HTTP. Both connect to check["connect_to"] when given."""
    url = urllib.parse.urlsplit(check["url"])
    target = check.get("connect_to") or url.hostname
    path = (url.path or "/") + ("?" + url.query if url.query else "")
    try:
        if url.scheme == "https":
            context = ssl.create_default_context(cafile=check.get("cafile") or None)
            conn = _PinnedHTTPS(url.hostname, url.port or 443, target, context, timeout)
        else:
            conn = http.client.HTTPConnection(target, url.port or 80, timeout=timeout)
        host_header = url.netloc.rsplit("@", 1)[-1]
        conn.request("GET", path, headers={"Host": host_header})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response.status, {"location": response.getheader("Location") or ""}
    except ssl.SSLCertVerificationError as error:
        return 0, "certificate refused: %s" % (error.verify_message or error)
    except (OSError, http.client.HTTPException) as error:
        return 0, "%s" % (getattr(error, "strerror", None) or error)


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
    if kind == "redirect":
        location = payload.get("location", "") if isinstance(payload, dict) else ""
        if status not in (301, 302, 307, 308) or location != check["expect"]:
            return "HTTP %s to %s, expected a redirect to %s" % (status, location or "nowhere", check["expect"])
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
        if check["kind"] in ("https", "redirect"):
            status, payload = tls_request(check, check.get("timeout", 10))
        else:
            status, payload = request(check["url"], key_of(check), check.get("body"), check.get("timeout", 10))
        problem = evaluate(check, status, payload)
        if problem is None or time.monotonic() + delay > deadline:
            fix = check.get("fix_no_answer", check.get("fix", "")) if status == 0 else check.get("fix", "")
            return {
                "name": check["name"],
                "url": check["url"],
                "ok": problem is None,
                "status": status,
                "problem": problem,
                "fix": fix,
            }
        time.sleep(delay)  # back-off between attempts of a check that has a deadline
        delay = min(delay * 2, 10)


def run_checks(checks, seconds):
    """Every check, in order, all against one deadline (each gets at least one attempt)."""
    deadline = time.monotonic() + seconds
    results, failed = [], set()
    for check in checks:
        blocked = [name for name in check.get("requires", ()) if name in failed]
        if blocked:
            result = {
                "name": check["name"],
                "url": check["url"],
                "ok": False,
                "skipped": True,
                "status": 0,
                "problem": "not checked: %s failed" % ", ".join(blocked),
                "fix": "",
            }
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
