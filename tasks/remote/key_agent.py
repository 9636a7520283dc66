"""Teams and virtual keys through the proxy's own API, stdlib only: run inside the proxy container.

Sent as `python3 -c` source (like tasks/remote/probe.py), so it talks to the proxy on its loopback with
the master key from the container's own environment: no key is ever on a command line. Key values
come on stdin, as JSON {alias: value} read from a root-only file on the host, and never leave this
process: what it prints holds aliases, settings and whether a value matches, never a value or hash.
A key is looked up by its hash (LiteLLM's /key/info takes either), so no value is ever in a URL; and
every error text is scrubbed of values, hashes and anything key-like before it is printed, whatever
failed (a request cut in transit, an answer echoing the request, the agent itself).

  read  SPEC={"teams": [alias...], "keys": [alias...], "team_keys": [alias...]}
        -> {"teams": {alias: row|None}, "keys": {...}}; a team named in team_keys (one a deletion
           would take) and held has row["keys"]: [{"key_alias", "token": TOKEN_PREFIX hex of the hash}]
  apply SPEC={"actions": [{"do": ..., ...}, ...]}        -> {"done": [text...], "error": text|None}
"""

import hashlib
import json
import os
import re
import sys
import urllib.parse

from tasks.remote.http import http_request, json_or_text

PROXY = "http://127.0.0.1:4000"
KEY_FIELDS = (
    "key_alias",
    "models",
    "team_id",
    "max_budget",
    "budget_duration",
    "tpm_limit",
    "rpm_limit",
    "metadata",
    "expires",
    "blocked",
    "spend",
    "budget_reset_at",
)
# Enough of a key's stored hash for a person to find it in the admin UI (its "Key ID"), not to use it.
TOKEN_PREFIX = 8
# Pages of /key/list read for one team at most (LiteLLM's page size is at most 100).
MAX_PAGES = 100
KEY_LIKE = re.compile(r"sk-[^\s'\",;)\]}]*")
HASH_LIKE = re.compile(r"[0-9a-fA-F]{64}")
# The key values read from stdin: cut out of every text this process prints (main fills it).
NEVER_SHOWN = []  # type: list[str]
TEAM_FIELDS = (
    "team_id",
    "team_alias",
    "models",
    "max_budget",
    "budget_duration",
    "tpm_limit",
    "rpm_limit",
    "metadata",
    "blocked",
    "spend",
)

# What tasks/key_converge.py may ask for, and the endpoint each one posts to.
ACTIONS = {
    "team_new": "/team/new",
    "team_update": "/team/update",
    "team_delete": "/team/delete",
    "member_add": "/team/member_add",
    "member_delete": "/team/member_delete",
    "key_generate": "/key/generate",
    "key_update": "/key/update",
    "key_delete": "/key/delete",
}


class ApiError(Exception):
    pass


def call(method, path, body=None, timeout=30):
    """(status, parsed JSON or text) of one request with the master key."""
    status, raw, error = http_request(
        PROXY + path, method=method, key=os.environ.get("LITELLM_MASTER_KEY", ""), body=body, timeout=timeout
    )
    if status == 0:
        raise ApiError("%s %s: no answer from the proxy (%s)" % (method, endpoint(path), error))
    return status, json_or_text(raw)


def expect_ok(method, path, body=None):
    status, payload = call(method, path, body)
    if status != 200:
        raise ApiError("%s %s: HTTP %s: %s" % (method, endpoint(path), status, describe(payload)))
    return payload


def endpoint(path):
    """The path without its query: what an error names (a query may hold a hash)."""
    return path.split("?", 1)[0]


def describe(payload):
    """The readable part of an error answer, with anything key-like cut out."""
    if isinstance(payload, dict):
        payload = payload.get("error", payload.get("detail", payload))
        if isinstance(payload, dict):
            payload = payload.get("message", payload.get("error", payload))
    # Each string is scrubbed before the whole is made text: an answer echoing a request body holds
    # the value as a string, which str() would render escaped, past the scrub of the whole.
    text = scrub(" ".join(str(_scrubbed(payload)).split()))
    return text if len(text) <= 300 else text[:300] + "..."


def _scrubbed(payload):
    if isinstance(payload, dict):
        return {_scrubbed(k): _scrubbed(v) for k, v in payload.items()}
    if isinstance(payload, list):
        return [_scrubbed(v) for v in payload]
    return scrub(payload) if isinstance(payload, str) else payload


def scrub(text, values=None):
    """`text` without any key value (NEVER_SHOWN unless given; as they are, escaped or URL-encoded),
    their hashes, or anything key-like."""
    for value in sorted(NEVER_SHOWN if values is None else values, key=len, reverse=True):
        forms = (
            value,
            json.dumps(value)[1:-1],
            repr(value)[1:-1],
            urllib.parse.quote(value),
            urllib.parse.quote_plus(value),
            digest(value),
        )
        for form in sorted(set(forms), key=len, reverse=True):
            text = text.replace(form, "<a key>")
    return HASH_LIKE.sub("<a hash>", KEY_LIKE.sub("sk-...", text))


def digest(value):
    return hashlib.sha256(value.encode()).hexdigest()  # LiteLLM's hash_token: the stored token


def read_key(alias, value):
    query = urllib.parse.urlencode({"key_alias": alias, "return_full_object": "true", "size": 10})
    rows = [
        r
        for r in expect_ok("GET", "/key/list?" + query).get("keys", [])
        if isinstance(r, dict) and r.get("key_alias") == alias
    ]
    if rows:
        found = {name: rows[0].get(name) for name in KEY_FIELDS}
        found.update(value_matches=None if value is None else digest(value) == rows[0].get("token"), count=len(rows))
        return found
    if value is None:
        return None
    # An imported key made by hand under another alias, or none: found by its value's hash (never
    # the value: a URL ends up in error texts and access logs), then adopted. A deleted key's row is
    # still answered from LiteLLM's archive: it is not a key to adopt.
    status, payload = call("GET", "/key/info?" + urllib.parse.urlencode({"key": digest(value)}))
    if (
        status != 200
        or not isinstance(payload, dict)
        or not isinstance(payload.get("info"), dict)
        or payload["info"].get("status") == "deleted"
    ):
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
    found["members"] = sorted(
        m["user_id"]
        for m in info.get("members_with_roles") or []
        if isinstance(m, dict) and m.get("user_id") and m.get("role") == "user"
    )
    return found


def team_keys(team_id):
    """Every key of the team (what /team/delete deletes with it): alias and a prefix of its hash."""
    found = []
    for page in range(1, MAX_PAGES + 1):
        query = urllib.parse.urlencode({"team_id": team_id, "return_full_object": "true", "size": 100, "page": page})
        payload = expect_ok("GET", "/key/list?" + query)
        rows = [r for r in payload.get("keys", []) if isinstance(r, dict)]
        found += [{"key_alias": r.get("key_alias"), "token": str(r.get("token") or "")[:TOKEN_PREFIX]} for r in rows]
        if not rows or page >= int(payload.get("total_pages") or 1):
            return found
    raise ApiError("GET /key/list: team %s has more than %s keys" % (team_id, 100 * MAX_PAGES))


def read(spec, values):
    teams = {alias: read_team(alias) for alias in spec.get("teams", [])}
    for alias in spec.get("team_keys", []):
        if teams.get(alias) is not None:
            teams[alias]["keys"] = team_keys(alias)
    return {"teams": teams, "keys": {alias: read_key(alias, values.get(alias)) for alias in spec.get("keys", [])}}


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
    done = []
    try:
        spec = json.loads(spec_text)
        raw = sys.stdin.read() if not sys.stdin.isatty() else ""
        values = json.loads(raw) if raw.strip() else {}
        NEVER_SHOWN.extend(v for v in values.values() if isinstance(v, str) and v)
        result = read(spec, values) if mode == "read" else apply(spec, values, done)
        print(json.dumps(result if mode == "read" else {"done": done, "error": None}))
    except Exception as error:  # whatever failed, its text leaves only scrubbed
        text = str(error) if isinstance(error, ApiError) else "%s: %s" % (error.__class__.__name__, error)
        print(json.dumps({"done": done, "error": scrub(text)}))
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
