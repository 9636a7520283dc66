"""The verification's TLS front checks (tasks/remote/probe.py kinds "https" and "redirect") against real
servers on loopback: a TLS server with a leaf of a deployment CA, and a plain one that redirects."""

import http.server
import ssl
import threading

import pytest

from tasks.config import certificates
from tasks.remote import probe


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.server.redirect_to:
            self.send_response(308)
            self.send_header("Location", self.server.redirect_to + self.path)
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def servers(tmp_path):
    """(https port, http port, CA file of the issuing CA, CA file of another CA)."""
    material = certificates.leaf_for(["gw.example.com", "127.0.0.1"], "gw", tmp_path / "ca")
    # Another CA, made only for its ca.crt: a client trusting it must refuse the server.
    certificates.leaf_for(["gw.example.com"], "gw", tmp_path / "other")
    (tmp_path / "cert.pem").write_bytes(material.cert_pem)
    (tmp_path / "key.pem").write_bytes(material.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    secure = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    secure.redirect_to = None
    secure.socket = context.wrap_socket(secure.socket, server_side=True)
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    plain.redirect_to = f"https://gw.example.com:{secure.server_address[1]}"
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (secure, plain)]
    for thread in threads:
        thread.start()
    yield secure.server_address[1], plain.server_address[1], str(tmp_path / "ca" / "ca.crt"), \
        str(tmp_path / "other" / "ca.crt")
    for server in (secure, plain):
        server.shutdown()
        server.server_close()


def run(check):
    return probe.run_checks([check], 1)[0]


def test_https_under_the_certificates_name_checked_against_its_ca(servers):
    https_port, _, ca, _ = servers
    check = {"name": "front", "kind": "https", "url": f"https://gw.example.com:{https_port}/health/liveliness",
             "cafile": ca, "connect_to": "127.0.0.1"}
    assert run(check)["ok"], run(check)
    by_address = {**check, "url": f"https://127.0.0.1:{https_port}/health/liveliness", "connect_to": ""}
    assert run(by_address)["ok"]


def test_https_refused_for_another_ca_or_name(servers):
    https_port, _, ca, other_ca = servers
    check = {"name": "front", "kind": "https", "url": f"https://gw.example.com:{https_port}/", "cafile": other_ca,
             "connect_to": "127.0.0.1"}
    result = run(check)
    assert not result["ok"] and result["problem"].startswith("no answer: certificate refused"), result
    wrong_name = run({**check, "cafile": ca, "url": f"https://other.example.com:{https_port}/"})
    assert not wrong_name["ok"] and "certificate refused" in wrong_name["problem"], wrong_name


def test_redirect_must_lead_to_the_https_url(servers):
    https_port, http_port, _, _ = servers
    check = {"name": "redirect", "kind": "redirect", "url": f"http://gw.example.com:{http_port}/health/liveliness",
             "connect_to": "127.0.0.1", "expect": f"https://gw.example.com:{https_port}/health/liveliness"}
    assert run(check)["ok"], run(check)
    elsewhere = run({**check, "expect": "https://gw.example.com/health/liveliness"})
    assert not elsewhere["ok"] and "expected a redirect to https://gw.example.com/health/liveliness" in elsewhere["problem"]
    # The HTTPS port does not redirect (it answers 200): a redirect check there fails.
    served = run({**check, "url": f"https://gw.example.com:{https_port}/health/liveliness"})
    assert not served["ok"]
