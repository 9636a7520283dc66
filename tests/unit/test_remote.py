"""The programs that run on hosts (tasks/remote/): each shipped as one source that needs nothing of this
package, its HTTP through the one shared helper."""

import http.server
import json
import re
import subprocess
import sys
import threading

import pytest

from tasks.remote import HELPER_IMPORT, program

PROGRAMS = ("probe", "key_agent", "poller", "proof")


@pytest.mark.parametrize("name", PROGRAMS)
def test_each_program_is_self_contained_source(name):
    source = program(name)
    compile(source, name, "exec")
    assert not re.search(r"^\s*(from|import) tasks\b", source, re.MULTILINE)
    assert "def http_request(" in source and HELPER_IMPORT not in source


@pytest.mark.parametrize("name", PROGRAMS)
def test_no_program_makes_its_own_requests(name):
    from tasks.remote import HERE

    own = (HERE / f"{name}.py").read_text()
    assert "urllib.request" not in own and "urlopen" not in own


class Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.headers.get("Authorization") == "Bearer right"
        body = json.dumps({"data": [{"id": "m"}]} if ok else {"error": {"message": "no"}}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_probe_runs_alone_in_an_isolated_python(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1/models"
        spec = {"seconds": 5, "checks": [
            {"name": "models", "kind": "models", "url": url, "key_env": "K", "expect": ["m"]},
            {"name": "refused", "kind": "refused", "url": url, "key_env": "WRONG"},
            {"name": "nothing", "kind": "reachable", "url": "http://127.0.0.1:9/", "timeout": 1}]}
        # -I: no site-packages of the user, no current directory on sys.path, no PYTHONPATH.
        done = subprocess.run([sys.executable, "-I", "-c", program("probe"), json.dumps(spec)], capture_output=True,
                              text=True, timeout=60, env={"K": "right", "WRONG": "wrong"})
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    results = {r["name"]: r for r in json.loads(done.stdout)}
    assert results["models"]["ok"] and results["refused"]["ok"]
    assert not results["nothing"]["ok"] and results["nothing"]["status"] == 0
    assert results["nothing"]["problem"].startswith("no answer: connection refused")
