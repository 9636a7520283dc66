"""Teams and virtual keys through the proxy's own API, stdlib only: run inside the proxy container.

Sent as `python3 -c` source (like tasks/probe.py), so it talks to the proxy on its loopback with
the master key from the container's own environment: no key is ever on a command line. Key values
come on stdin, as JSON {alias: value} read from a root-only file on the host, and never leave this
process: what it prints holds aliases, settings and whether a value matches, never a value or hash.

  read  SPEC={"teams": [alias...], "keys": [alias...]}  -> {"teams": {alias: row|None}, "keys": {...}}
  apply SPEC={"actions": [{"do": ..., ...}, ...]}        -> {"done": [text...], "error": text|None}
"""

import hashlib
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

PROXY = "http://127.0.0.1:4000"
KEY_FIELDS = ("key_alias", "models", "team_id", "max_budget", "budget_duration", "tpm_limit", "rpm_limit",
              "metadata", "expires", "blocked", "spend", "budget_reset_at")
TEAM_FIELDS = ("team_id", "team_alias", "models", "max_budget", "budget_duration", "tpm_limit", "rpm_limit",
               "metadata", "blocked", "spend")

# What tasks/key_converge.py may ask for, and the endpoint each one posts to.
ACTIONS = {"team_new": "/team/new", "team_update": "/team/update", "team_delete": "/team/delete",
           "member_add": "/team/member_add", "member_delete": "/team/member_delete",
           "key_generate": "/key/generate", "key_update": "/key/update", "key_delete": "/key/delete"}


class ApiError(Exception):
    pass


def call(method, path, body=None, timeout=30):
    """(status, parsed JSON or text) of one request with the master key."""
    headers = {"Content-Type": "application/json",
               "Authorization": "Bearer " + os.environ.get("LITELLM_MASTER_KEY", "")}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(PROXY + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (urllib.error.URLError, OSError) as error:
        raise ApiError("%s %s: no answer from the proxy (%s)" % (method, path, getattr(error, "reason", error)))
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")[:300]


def expect_ok(method, path, body=None):
    status, payload = call(method, path, body)
    if status != 200:
        raise ApiError("%s %s: HTTP %s: %s" % (method, path, status, describe(payload)))
    return payload


def describe(payload):
    """The readable part of an error answer, with anything key-like cut out."""
    if isinstance(payload, dict):
        payload = payload.get("error", payload.get("detail", payload))
        if isinstance(payload, dict):
            payload = payload.get("message", payload.get("error", payload))
    words = ["sk-..." if w.strip("'\",.:;()[]{}").startswith("sk-") else w for w in str(payload).split()]
    text = " ".join(words)
    return text if len(text) <= 300 else text[:300] + "..."


def digest(value):
    return hashlib.sha256(value.encode()).hexdigest()  # LiteLLM's hash_token: the stored token


def read_key(alias, value):
    query = urllib.parse.urlencode({"key_alias": alias, "return_full_object": "true", "size": 10})
    rows = [r for r in expect_ok("GET", "/key/list?" + query).get("keys", [])
            if isinstance(r, dict) and r.get("key_alias") == alias]
    if rows:
        found = {name: rows[0].get(name) for name in KEY_FIELDS}
        found.update(value_matches=None if value is None else digest(value) == rows[0].get("token"), count=len(rows))
        return found
    if value is None:
        return None
    # An imported key made by hand under another alias, or none: found by its value, then adopted.
    status, payload = call("GET", "/key/info?" + urllib.parse.urlencode({"key": value}))
    if status != 200 or not isinstance(payload, dict) or not isinstance(payload.get("info"), dict):
        return None
    found = {name: payload["info"].get(name) for name in KEY_FIELDS}
    found.update(value_matches=True, count=1)
    return found


def read_team(alias):
    status, payload = call("GET", "/team/info?" + urllib.parse.urlencode({"team_id": alias}))
    if status == 404:
        return None
    if status != 200:
        raise ApiError("GET /team/info %s: HTTP %s: %s" % (alias, status, describe(payload)))
    info = payload.get("team_info") or {}
    found = {name: info.get(name) for name in TEAM_FIELDS}
    # Declared members are plain users; a team admin set in the UI is left alone.
    found["members"] = sorted(m["user_id"] for m in info.get("members_with_roles") or []
                              if isinstance(m, dict) and m.get("user_id") and m.get("role") == "user")
    return found


def read(spec, values):
    return {"teams": {alias: read_team(alias) for alias in spec.get("teams", [])},
            "keys": {alias: read_key(alias, values.get(alias)) for alias in spec.get("keys", [])}}


def apply(spec, values, done):
    """Each action in order, appending what it did to `done`; the first refusal stops the rest."""
    for action in spec["actions"]:
        do, body = action["do"], dict(action.get("body") or {})
        if do == "key_generate" or do == "key_update":
            if not values.get(action["alias"]):
                raise ApiError("key %s: its value did not reach the gateway" % action["alias"])
            body["key"] = values[action["alias"]]
        expect_ok("POST", ACTIONS[do], body)
        done.append(action["describe"])


def main(mode, spec_text):
    spec = json.loads(spec_text)
    raw = sys.stdin.read() if not sys.stdin.isatty() else ""
    values = json.loads(raw) if raw.strip() else {}
    done = []
    try:
        result = read(spec, values) if mode == "read" else apply(spec, values, done)
        print(json.dumps(result if mode == "read" else {"done": done, "error": None}))
    except ApiError as error:
        print(json.dumps({"done": done, "error": str(error)}))
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
