"""Load balancers: their settings, where a gateway's proxy is published behind them, the rendered
Caddyfile and compose file. (`caddy validate` of the rendered file runs in tests/e2e/test_load_balancer.py,
in the bed's Caddy image.)"""

from __future__ import annotations

import pytest
import yaml

from tasks import balancer
from tasks.render import COMPOSE_FILE, render_files
from tasks.settings import ConfigError, HostInput
from tests.unit.conftest import group_data, lookup

GATEWAYS = {"gw1": {"ssh_hostname": "10.9.0.11"}, "gw2": {"ssh_hostname": "10.9.0.12"},
            "gw3": {"ssh_hostname": "10.9.0.13", "proxy_bind": "10.8.0.13", "roll_width": 2}}


@pytest.fixture
def certs(tmp_path):
    cert, key = tmp_path / "lb.crt", tmp_path / "lb.key"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")
    return cert, key


def lb_input(name: str, **data) -> HostInput:
    return HostInput(name, lookup({**group_data("all"), **data}))


@pytest.fixture
def setup(build, certs):
    """(gateways placed behind, load balancers) for GATEWAYS and one lb host 'lb1'."""

    def _setup(lb_data=None, gateways=GATEWAYS):
        built = build(hosts=gateways)
        addresses = {name: data["ssh_hostname"] for name, data in gateways.items()}
        placed = balancer.placed_behind(built, addresses)
        data = {"ssh_hostname": "10.9.0.2", "tls": "files", "tls_cert_file": str(certs[0]),
                "tls_key_file": str(certs[1]), **(lb_data or {})}
        lbs = balancer.build_load_balancers([lb_input("lb1", **data)], placed, {"lb1": "10.9.0.2"})
        return placed, lbs

    return _setup


def test_behind_load_balancers_the_proxy_is_published_on_the_gateway_address_and_localhost_only(setup):
    placed, _ = setup()
    assert placed["gw1"].proxy_bind == "10.9.0.11" and placed["gw1"].behind_load_balancer
    assert placed["gw3"].proxy_bind == "10.8.0.13"  # an explicit proxy_bind is the address used
    ports = yaml.safe_load(render_files(placed["gw1"])[COMPOSE_FILE])["services"]["litellm"]["ports"]
    assert ports == ["10.9.0.11:4000:4000", "127.0.0.1:4000:4000"]


def test_without_load_balancers_the_compose_file_is_unchanged(build):
    ports = yaml.safe_load(render_files(build())[COMPOSE_FILE])["services"]["litellm"]["ports"]
    assert ports == ["0.0.0.0:4000:4000"]


def test_a_gateway_known_by_name_needs_proxy_bind_behind_load_balancers(build):
    built = build(hosts={"gw1": {}})
    with pytest.raises(ConfigError) as raised:
        balancer.placed_behind(built, {"gw1": "gw1.internal"})
    assert "host gw1: proxy_bind" in str(raised.value) and "private IP address" in str(raised.value)
    with pytest.raises(ConfigError, match="could not reach"):
        balancer.placed_behind(build(hosts={"gw1": {"proxy_bind": "127.0.0.1"}}), {"gw1": "10.0.0.1"})


def test_the_caddyfile_lists_every_gateway_with_health_checks_and_redirects_http(setup):
    _, lbs = setup()
    lb = lbs["lb1"]
    text = balancer.render_caddyfile(lb)
    assert "reverse_proxy 10.9.0.11:4000 10.9.0.12:4000 10.8.0.13:4000 {" in text
    for line in ("health_uri /health/readiness", "health_interval 2s", "lb_try_duration 15s", "max_fails 1",
                 "tls /certs/cert.pem /certs/key.pem", "redir https://{host}{uri} permanent",
                 "default_sni 10.9.0.2", "auto_https disable_redirects", "grace_period 60s"):
        assert line in text, line
    assert lb.roll_width == 2 - 1  # the smallest of the gateways' roll_width (gw1, gw2: the default 1)


def test_a_drained_gateway_leaves_the_rotation_and_the_tls_port_shows_in_the_redirect(setup):
    _, lbs = setup({"tls_port": 8443, "tls_names": ["llm.example.com"]})
    text = balancer.render_caddyfile(lbs["lb1"], {"gw2"})
    assert "reverse_proxy 10.9.0.11:4000 10.8.0.13:4000 {" in text and "drained while a change rolls: gw2" in text
    assert "redir https://{host}:8443{uri} permanent" in text and "default_sni llm.example.com" in text
    everyone_out = balancer.render_caddyfile(lbs["lb1"], {"gw1", "gw2", "gw3"})
    assert "reverse_proxy" not in everyone_out and "respond" in everyone_out


def test_the_load_balancer_compose_project_publishes_tls_and_http(setup):
    _, lbs = setup({"tls_port": 8443, "http_port": 8080})
    compose = yaml.safe_load(balancer.render_compose(lbs["lb1"]))
    assert compose["name"] == "litellm-lb"
    service = compose["services"]["caddy"]
    assert service["ports"] == ["8443:443", "8080:80"]
    assert "./caddy:/etc/caddy:ro" in service["volumes"] and "./certs:/certs:ro" in service["volumes"]
    assert lbs["lb1"].install_dir == "/opt/litellm-lb"


def test_load_balancer_problems_name_the_field_and_the_fix(build, tmp_path):
    built = balancer.placed_behind(build(hosts={"gw1": {}}), {"gw1": "10.0.0.1"})
    bad = lb_input("lb1", tls="off", tls_port=80, http_port=80, tls_image="caddy:latest")
    missing = lb_input("lb2", tls="files", tls_cert_file=str(tmp_path / "none.crt"), tls_key_file="")
    with pytest.raises(ConfigError) as raised:
        balancer.build_load_balancers([bad, missing, lb_input("gw1", tls="files")], built, {})
    text = str(raised.value)
    for expected in ("load balancer lb1: tls: 'off' on a load balancer", "load balancer lb1: tls_port/http_port",
                     "load balancer lb1: tls_image: 'caddy:latest' uses a floating tag",
                     "load balancer lb2: tls_cert_file", "load balancer lb2: tls_key_file",
                     "gw1 in both litellm_hosts and lb_hosts"):
        assert expected in text, expected


def test_certificate_material_comes_from_the_controller_files(setup, certs):
    _, lbs = setup()
    assert balancer.certificate_material(lbs["lb1"]) == (certs[0].read_text(), certs[1].read_text())


def test_the_reload_is_graceful_and_a_no_op_without_a_running_container(setup):
    _, lbs = setup()
    command = balancer.reload_command(lbs["lb1"], balancer.ROLL_CADDYFILE)
    assert "caddy reload --config /etc/caddy/Caddyfile.roll --adapter caddyfile" in command
    assert "ps --status running --quiet caddy" in command
