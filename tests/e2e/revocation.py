"""A revoked key is refused everywhere within a second (issue 30): the poll the e2e suites measure it with.

Standard library only, because it runs in two places. The load balancer suite imports it and asks
through the load balancer from the controller (Caddy's round robin: every gateway in turn). The demo
suite sends this file's source, its spec appended, as a program on stdin to the gateway host (`main`),
which asks the proxy's port straight, a new connection per request, so any of its workers answers each
one; through the TLS front, Caddy's pooled connection could keep every request on one worker. The key
value travels inside that program text, on stdin, never on a command line.

The key is first used WARM times, so every worker and every gateway holds a copy of its own (before the
delete, or before the run that blocks it starts). After the
revocation, requests go one after another until the first refusal, then until WATCH_S past both that
refusal and the revocation's WITHIN_S. An accepted request sent more than WITHIN_S after the revocation
fails the test. When the revocation happens inside a pyinfra run (a declared key turned blocked), its
moment is the first refusal seen by a poll running since before the run: the worker or gateway that
served the change refuses at once, so that refusal comes within a request or two of the change.
"""

from __future__ import annotations

import inspect
import json
import time
import urllib.error
import urllib.request

WITHIN_S = 1.0
WARM = 40  # the issue's own count: every worker and every gateway has answered the key by then
WATCH_S = 2.0
BOUND_S = 180.0  # the poll stops by itself: no refusal by then means the revocation never took
ACCEPTED = 200
REFUSED = (400, 401, 403)  # as tests/e2e/gateway_http.py: LiteLLM's answers to a refused key


def first_refusal(answers: list, since: float) -> float | None:
    return next((sent for sent, status in answers if sent >= since and status != ACCEPTED), None)


def poll(ask, answers: list, since: float, revoked_at: float | None = None, bound_s: float = BOUND_S,
         stop=lambda: False) -> None:
    """Append (time.monotonic() sent, status of ask()) until WATCH_S past the first refusal at or after
    `since` and past revoked_at + WITHIN_S (revoked_at None: the first refusal is the revocation)."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline and not stop():
        refused = first_refusal(answers, since)
        if refused is not None:
            revoked = refused if revoked_at is None else revoked_at
            if answers[-1][0] >= max(refused, revoked + WITHIN_S) + WATCH_S:
                return
        sent = time.monotonic()
        answers.append((sent, ask()))


def verdict(answers: list, since: float, revoked_at: float | None = None) -> dict:
    """What the answers say, in seconds after the revocation: `late` counts accepted requests sent more
    than WITHIN_S after it (must be 0), `warm` the acceptances before it (at least WARM)."""
    refused = first_refusal(answers, since)
    revoked = refused if revoked_at is None else revoked_at
    if revoked is None:
        return {"revoked": False, "answers": len(answers), "statuses": sorted({s for _, s in answers})}
    after = [(round(sent - revoked, 3), status) for sent, status in answers if sent >= revoked]
    accepted = [t for t, status in after if status == ACCEPTED]
    return {
        "revoked": True,
        "warm": sum(1 for sent, status in answers if sent < revoked and status == ACCEPTED),
        "first_refusal_s": round(refused - revoked, 3),
        "answers": len(after),
        "accepted": len(accepted),
        "last_accepted_s": max(accepted, default=None),
        "watched_s": after[-1][0] if after else 0.0,
        "late": sum(1 for t in accepted if t > WITHIN_S),
        "other": sorted({status for _, status in after if status != ACCEPTED and status not in REFUSED}),
    }


def problems(seen: dict) -> list[str]:
    """Why `seen` (a verdict) fails "refused everywhere within a second", or says nothing; [] when it holds."""
    if not seen["revoked"]:
        return [f"never refused in {seen['answers']} requests (statuses {seen['statuses']})"]
    found = []
    if seen["late"]:
        found.append(f"{seen['late']} requests sent more than {WITHIN_S} s after the revocation were accepted, "
                     f"the last {seen['last_accepted_s']} s after it")
    if seen["warm"] < WARM:
        found.append(f"only {seen['warm']} acceptances before the revocation: not every worker may hold the key")
    if seen["watched_s"] < WITHIN_S + WATCH_S:
        found.append(f"watched only {seen['watched_s']} s after the revocation")
    if seen["other"]:
        found.append(f"answers that are neither an acceptance nor a refusal: {seen['other']}")
    return found


# --- on a gateway host: the proxy's own port, the master key from the host's .env ---------------------------


def _master_key(env_file: str) -> str:
    for line in open(env_file).read().splitlines():
        if line.startswith("LITELLM_MASTER_KEY="):
            return line.split("=", 1)[1].strip('"')
    raise SystemExit(f"no LITELLM_MASTER_KEY in {env_file}")


def _call(base: str, method: str, path: str, key: str, body: dict | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")[:300]


def host_helpers() -> str:
    """_master_key and _call as source, for other programs run on a gateway host (bench/key_cache.py)."""
    return "\n\n".join(inspect.getsource(f) for f in (_master_key, _call))


def main(spec: dict) -> None:
    """spec: base (the proxy's URL on the host), env_file, and either revoke "delete" (a key made here with
    /key/generate, used WARM times, deleted) or revoke "watch" with key (poll from now: a run elsewhere
    revokes it). Prints the verdict as JSON; no key value."""
    master = _master_key(spec["env_file"])
    base = spec["base"]
    key = spec.get("key")
    if spec["revoke"] == "delete":
        status, made = _call(base, "POST", "/key/generate", master, {"key_alias": spec.get("alias")})
        if status != ACCEPTED:
            raise SystemExit(f"/key/generate: HTTP {status}: {made}")
        key = made["key"]

    def ask() -> int:
        return _call(base, "GET", "/v1/models", key)[0]

    answers = [(time.monotonic(), ask()) for _ in range(WARM)]
    since = time.monotonic()
    revoked_at = None
    if spec["revoke"] == "delete":
        status, deleted = _call(base, "POST", "/key/delete", master, {"keys": [key]})
        if status != ACCEPTED:
            raise SystemExit(f"/key/delete: HTTP {status}: {deleted}")
        since = revoked_at = time.monotonic()
    poll(ask, answers, since, revoked_at, bound_s=spec.get("bound_s", BOUND_S))
    print(json.dumps(verdict(answers, since if revoked_at is None else revoked_at, revoked_at)))


def host_program(spec: dict) -> bytes:
    """This module's source and a call of main(spec), for `python3 -` on a gateway host's stdin."""
    with open(__file__) as source:
        return (source.read() + f"\n\nmain(json.loads({json.dumps(spec)!r}))\n").encode()
