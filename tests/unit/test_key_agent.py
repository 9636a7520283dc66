"""tasks/remote/key_agent.py run as it runs in the proxy container (`python3 -c SOURCE mode SPEC`, the key
values on stdin), against a real HTTP server on 127.0.0.1 that fails some requests the way a network
does (connection reset, closed without an answer) or answers with an error that echoes the request.
Whatever fails, no key value, no fragment of one and no hash of one may leave the agent: not in a
URL it requests, not in what it prints, not in what the controller makes of that."""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import subprocess
import sys
import threading
from urllib.parse import quote, quote_plus

import pytest

from tasks.remote import key_agent
from tasks.key_converge import AGENT_SOURCE, DeclaredAccess

MASTER = "sk-master-" + "m" * 30
# Breaks URLs, quoting and word splitting in every way a value LiteLLM accepts can (sk-, 20+ chars).
HOSTILE = "sk-Zq7 Wx/9k'Lm\"p$Tz+Rr%2Fv&j=u?Yb#N:Qe@Hc,Ds;Gf"
FRAGMENT = 8


class FlakyProxy:
    """A socket server answering each request by `answer(method, path, body)`: ("json", status, obj),
    ("echo", status) (an error quoting the request line and body, as some proxies and validators do),
    ("reset",) (RST) or ("close",) (closed without a word). Every request line is kept."""

    def __init__(self, answer):
        self.answer, self.lines = answer, []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() below, which close() alone does not
        self.thread.join(timeout=10)
        self.server.close()
        assert not self.thread.is_alive()

    def _serve(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection:
                self._one(connection)

    def _one(self, connection):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length:")), 0)
        while len(body) < length:
            body += connection.recv(65536)
        self.lines.append(lines[0])
        method, path, _ = lines[0].split(" ", 2)
        kind, *rest = self.answer(method, path, body.decode("utf-8", "replace"))
        if kind == "reset":
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        if kind == "close":
            return
        status = rest[0]
        payload = rest[1] if kind == "json" else {"detail": [{"msg": "bad request", "request": lines[0],
                                                              "input": json.loads(body or b"null")}]}
        raw = json.dumps(payload).encode()
        connection.sendall(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                           b"Connection: close\r\n\r\n" % (status, len(raw)) + raw)


def run_agent(port: int, mode: str, spec: dict, values: dict) -> str:
    source = AGENT_SOURCE.replace(f'PROXY = "{key_agent.PROXY}"', f'PROXY = "http://127.0.0.1:{port}"')
    assert source != AGENT_SOURCE
    result = subprocess.run([sys.executable, "-c", source, mode, json.dumps(spec)], input=json.dumps(values),
                            capture_output=True, text=True, timeout=60, env={"LITELLM_MASTER_KEY": MASTER})
    return result.stdout + result.stderr


def leaked(text: str, value: str = HOSTILE, hashed: bool = True) -> list[str]:
    """The forms of `value` found in `text`: itself, URL-encoded, its sha256 (unless not `hashed`), or
    any FRAGMENT-long piece of those."""
    forms = {value, quote(value), quote_plus(value)} | ({hashlib.sha256(value.encode()).hexdigest()} if hashed else set())
    pieces = {form[i:i + FRAGMENT] for form in forms for i in range(len(form) - FRAGMENT + 1)}
    return sorted(p for p in pieces if p in text)


def nothing_listed(method, path, body):
    if path.startswith("/key/list"):
        return "json", 200, {"keys": [], "total_pages": 1}
    return "json", 404, {"detail": "not found"}


def failing(kind: str, where: str):
    def answer(method, path, body):
        if path.startswith(where):
            return (kind, 500) if kind == "echo" else (kind,)
        return nothing_listed(method, path, body)
    return answer


@pytest.mark.parametrize("kind", ["reset", "close", "echo"])
def test_a_failed_lookup_of_an_imported_key_shows_no_value(kind):
    """The imported key is looked up by its value's hash; the lookup fails in transit or is echoed."""
    with FlakyProxy(failing(kind, "/key/info")) as proxy:
        output = run_agent(proxy.port, "read", {"teams": [], "keys": ["imported"]}, {"imported": HOSTILE})
    assert any(line.startswith("GET /key/info") for line in proxy.lines), proxy.lines
    # The URL holds the hash (what LiteLLM stores and /key/info takes), never the value.
    assert leaked(" ".join(proxy.lines), hashed=False) == [] and leaked(output) == []
    if kind != "echo":
        error = DeclaredAccess().process(output.splitlines())["error"]
        assert "/key/info" in error and leaked(error) == []


@pytest.mark.parametrize("kind", ["reset", "close", "echo"])
def test_a_failed_key_generate_shows_no_value(kind):
    action = {"do": "key_generate", "alias": "imported", "body": {"key_alias": "imported"},
              "describe": "key imported: created"}
    with FlakyProxy(failing(kind, "/key/generate")) as proxy:
        output = run_agent(proxy.port, "apply", {"actions": [action]}, {"imported": HOSTILE})
    assert proxy.lines == ["POST /key/generate HTTP/1.1"]
    assert json.loads(output.splitlines()[-1])["error"].startswith("POST /key/generate")
    assert leaked(output) == []


def test_an_agent_that_crashed_is_quoted_without_a_key():
    """Output that is not the agent's JSON (a traceback, a shell's complaint) is quoted, keys cut out."""
    generated = "sk-" + "Ab3_x-9" * 6
    error = DeclaredAccess().process(["Traceback (most recent call last):", f"ValueError: bad {generated}!"])["error"]
    assert "ValueError" in error and leaked(error, generated) == []


def test_scrub_cuts_a_value_in_every_form_it_may_take(monkeypatch):
    digest = hashlib.sha256(HOSTILE.encode()).hexdigest()
    text = f"a {HOSTILE} b {quote(HOSTILE)} c {quote_plus(HOSTILE)} d {digest} e {json.dumps(HOSTILE)} f {HOSTILE!r}"
    assert leaked(key_agent.scrub(text, [HOSTILE])) == []
    monkeypatch.setattr(key_agent, "NEVER_SHOWN", [HOSTILE])
    assert leaked(key_agent.describe({"detail": [{"input": {"key": HOSTILE}}]})) == []


def test_the_keys_of_a_team_are_listed_page_by_page_as_aliases_and_token_prefixes():
    tokens = [hashlib.sha256(f"sk-team-key-{i}".encode()).hexdigest() for i in range(3)]

    def answer(method, path, body):
        if path.startswith("/team/info"):
            return "json", 200, {"team_info": {"team_id": "ops", "members_with_roles": []}}
        if path.startswith("/key/list") and "team_id=ops" in path:
            page = 2 if "page=2" in path else 1
            rows = [{"token": tokens[0], "key_alias": "hand-made", "team_id": "ops"},
                    {"token": tokens[1], "key_alias": None, "team_id": "ops"}] if page == 1 else \
                   [{"token": tokens[2], "key_alias": "third", "team_id": "ops"}]
            return "json", 200, {"keys": rows, "total_pages": 2, "current_page": page}
        return nothing_listed(method, path, body)

    with FlakyProxy(answer) as proxy:
        output = run_agent(proxy.port, "read", {"teams": ["ops"], "keys": [], "team_keys": ["ops"]}, {})
    keys = json.loads(output)["teams"]["ops"]["keys"]
    assert keys == [{"key_alias": "hand-made", "token": tokens[0][:key_agent.TOKEN_PREFIX]},
                    {"key_alias": None, "token": tokens[1][:key_agent.TOKEN_PREFIX]},
                    {"key_alias": "third", "token": tokens[2][:key_agent.TOKEN_PREFIX]}]
    assert not [t for t in tokens if t in output]
