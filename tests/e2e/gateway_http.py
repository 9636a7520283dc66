"""The gateway's HTTP API as a client on the controller sees it: status and parsed body, no redirects.

Used by the e2e suites to prove what a user of a DB-backed gateway relies on: virtual keys made with
the master key are accepted (and keep being accepted across rotation, restore and upgrade), deleted
or bogus keys are refused.
"""

from __future__ import annotations

import http.client
import json
import ssl
from urllib.parse import urlencode, urlsplit

from tests.testbed import wait_until

REFUSED = (400, 401, 403)  # LiteLLM answers a refused key with 401 (DB-backed) or 400 (stateless)
TIMEOUT = 60

# Run by python3 on a bed host, a client from outside the gateway or load balancer: one HTTP(S)
# request, status and body (or the error) as JSON.
CLIENT_SCRIPT = r"""
import http.client, json, socket, ssl, sys
spec = json.loads(sys.argv[1])
try:
    if spec["scheme"] == "https":
        ctx = ssl.create_default_context(cadata=spec["ca"]) if spec.get("ca") else ssl.create_default_context()
        class Conn(http.client.HTTPSConnection):
            def connect(self):
                sock = socket.create_connection((spec["address"], spec["port"]), 20)
                self.sock = ctx.wrap_socket(sock, server_hostname=spec["name"])
        conn = Conn(spec["name"], spec["port"], context=ctx, timeout=60)
    else:
        conn = http.client.HTTPConnection(spec["address"], spec["port"], timeout=20)
    headers = {"Host": spec["name"], "Content-Type": "application/json"}
    if spec.get("key"):
        headers["Authorization"] = "Bearer " + spec["key"]
    body = json.dumps(spec["body"]) if spec.get("body") is not None else None
    conn.request(spec.get("method", "GET"), spec["path"], body=body, headers=headers)
    r = conn.getresponse()
    text = r.read().decode("utf-8", "replace")
    try:
        payload = json.loads(text)
    except ValueError:
        payload = text
    print(json.dumps({"status": r.status, "location": r.getheader("Location"), "body": payload}))
except ssl.SSLCertVerificationError as e:
    print(json.dumps({"status": 0, "error": "certificate: " + str(e.verify_message)}))
except OSError as e:
    print(json.dumps({"status": 0, "error": "%s: %s" % (type(e).__name__, e)}))
"""


def request(base_url: str, method: str, path: str, key: str | None = None, body: dict | None = None,
            form: dict | None = None, cafile: str | None = None):
    """(status, body): JSON decoded when it is JSON, else text. Redirects are returned, not followed.
    An https:// base URL checks the certificate against `cafile` (a TLS front's CA)."""
    parts = urlsplit(base_url)
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=cafile)
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=TIMEOUT, context=context)
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
    headers = {}
    data = None
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    elif form is not None:
        data, headers["Content-Type"] = urlencode(form).encode(), "application/x-www-form-urlencoded"
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
    finally:
        connection.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


def generate_key(base_url: str, master_key: str, **fields) -> str:
    """A new virtual key from /key/generate (fields: models, key_alias, metadata, max_budget, ...)."""
    status, made = request(base_url, "POST", "/key/generate", key=master_key, body=fields)
    assert status == 200, made
    return made["key"]


def models_seen(base_url: str, key: str, cafile: str | None = None):
    """(status, sorted model ids) that `key` sees on /v1/models."""
    status, body = request(base_url, "GET", "/v1/models", key=key, cafile=cafile)
    return status, sorted(m["id"] for m in body["data"]) if status == 200 else body


def chat(base_url: str, key: str, model: str):
    return request(base_url, "POST", "/chat/completions", key=key,
                   body={"model": model, "messages": [{"role": "user", "content": "hello"}]})


def wait_ready(base_url: str, timeout: float = 120) -> dict:
    """/health/readiness once it answers 200 with the database connected."""
    def ready():
        status, body = request(base_url, "GET", "/health/readiness")
        return body if status == 200 and body.get("db") == "connected" else None

    return wait_until(f"{base_url} ready with db connected", ready, timeout=timeout, interval=1)
