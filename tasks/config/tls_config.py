"""The TLS front's settings: which names each gateway's certificate is for, and every problem with
the tls fields, found with the rest of the settings (all at once, each naming the field and the
fix) before any host is touched.

Kept apart from tasks/config/settings.py so the load balancer can ask the same questions of its hosts.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Callable

from tasks.config import certificates
from tasks.config.filters import url_host

# An e-mail address as ACME servers take it (one @, a dotted domain, no spaces or quotes: it is
# written into the Caddyfile as a bare token).
EMAIL = re.compile(r"[A-Za-z0-9.!#%&*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")

# Docker's default address pools: the compose network the front reaches the proxy over is one of
# them. Nothing else reaches the proxy: with tls on it is published on 127.0.0.1 only.
FRONT_RANGES = ("172.16.0.0/12", "192.168.0.0/16")


def port_suffix(port: int, default: int) -> str:
    return "" if port == default else f":{port}"


def base_url(settings) -> str:
    """The gateway's public URL behind its TLS front (PROXY_BASE_URL unless proxy_base_url is set)."""
    return f"https://{url_host(settings.tls_names[0])}{port_suffix(settings.tls_port, 443)}"


def host_address(host_name: str, data: Callable[[str, object], object]) -> str:
    """The address pyinfra reaches the host at: ssh_hostname, else its inventory name."""
    address = data("ssh_hostname", None)
    return address if isinstance(address, str) and address else host_name


def effective_names(host_name: str, address: str, raw: dict[str, object]) -> tuple[str, ...]:
    """The names a gateway's certificate is for, the first being the one PROXY_BASE_URL and the
    verification use. tls_names when given; otherwise, by source: "self-signed" the inventory name
    and address, "files" the certificate's own names, "acme" the inventory name (ACME issues for
    public DNS names; data_problems insists on one)."""
    given = raw.get("tls_names")
    if isinstance(given, (list, tuple)) and given:
        return certificates.unique_names(str(n) for n in given)
    source = raw.get("tls")
    if source == "files":
        try:
            chain = certificates.load_chain(Path(str(raw["tls_cert_file"])).read_bytes())
        except (OSError, certificates.CertificateError):
            return ()  # files_problems reports it
        return certificates.unique_names(certificates.san_names(chain[0]))
    if source == "acme":
        return (host_name,)
    return certificates.unique_names((host_name, address))


def _is_loopback(address: object) -> bool:
    try:
        return ipaddress.ip_address(str(address)).is_loopback
    except ValueError:
        return False


def problems(host_name: str, address: str, raw: dict[str, object]) -> list[str]:
    """Every problem with the tls fields of one gateway (their shapes are checked by settings.py)."""
    source = raw.get("tls")
    if source in (None, "off") or source not in ("self-signed", "files", "acme"):
        return []
    found = []
    for name in raw["tls_names"] if isinstance(raw["tls_names"], (list, tuple)) else []:
        if isinstance(name, str) and name.strip() and (reason := certificates.name_problem(name)):
            found.append(f"tls_names: {reason} — fix: e.g. ['gateway.example.com', '192.0.2.10']")
    names = effective_names(host_name, address, raw)
    ports = {raw.get("tls_port"), raw.get("http_port")}
    if raw.get("postgres_publish_port") and raw.get("postgres_publish_port") in ports:
        found.append(
            f"postgres_publish_port: {raw['postgres_publish_port']} collides with tls_port/http_port — "
            "fix: pick another port"
        )
    # With TLS on, the proxy's own port is published on loopback only (host-local tools and checks keep
    # it); any other address would let clients bypass the TLS front in clear.
    bind = raw.get("proxy_bind")
    if bind not in ("0.0.0.0", "::") and not _is_loopback(bind):
        found.append(
            f"proxy_bind: {bind!r} would publish the proxy in plain HTTP beside the TLS front — fix: "
            "remove proxy_bind (with tls on the proxy is published on 127.0.0.1 only) or set 127.0.0.1"
        )
    if source == "files":
        found += certificates.files_problems(
            str(raw.get("tls_cert_file") or ""),
            str(raw.get("tls_key_file") or ""),
            names if raw.get("tls_names") else (),
        )
        ca_file = raw.get("tls_ca_file", "")
        if ca_file and not Path(str(ca_file)).is_file():
            found.append(
                f"tls_ca_file: {ca_file} does not exist on the controller — fix: the CA certificate (PEM) "
                "that issued tls_cert_file, or '' when it chains to a public CA"
            )
    elif raw.get("tls_cert_file") or raw.get("tls_key_file"):
        found.append(
            f"tls_cert_file/tls_key_file: given, but tls is {source!r}, which does not use them — fix: "
            "tls = 'files', or remove them"
        )
    if source == "acme":
        found += acme_problems(names, raw)
    elif raw.get("acme_email") and source != "acme":
        found.append(f"acme_email: given, but tls is {source!r} — fix: tls = 'acme', or remove acme_email")
    if not names and not found:
        found.append("tls_names: no name for the certificate — fix: tls_names = ['gateway.example.com']")
    return found


def acme_problems(names, raw: dict[str, object]) -> list[str]:
    """What an ACME server needs to issue a certificate for `names`: a contact, public DNS names and
    a port to validate on. For a gateway's front and a load balancer alike."""
    found = []
    email = raw.get("acme_email")
    if not isinstance(email, str) or not EMAIL.fullmatch(email):
        found.append(
            f"acme_email: {email!r} — fix: the e-mail address the ACME server (Let's Encrypt) sends "
            "expiry notices to, e.g. ops@example.com"
        )
    for name in names:
        if certificates.is_ip(name) or "." not in name.strip(".") or name.startswith("*."):
            found.append(
                f"tls_names: {name!r} cannot be issued by ACME's HTTP challenge (it needs public DNS "
                "names that resolve to this host, no IP address or wildcard) — fix: tls_names = "
                "['gateway.example.com'], or tls = 'files' / 'self-signed'"
            )
    if raw.get("http_port") != 80 and raw.get("tls_port") != 443:
        found.append(
            "http_port/tls_port: ACME servers validate on port 80 (HTTP) or 443 (TLS-ALPN) — fix: "
            "http_port = 80 or tls_port = 443"
        )
    return found
