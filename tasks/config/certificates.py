"""TLS certificates on the controller: the deployment's own CA, the leaves it issues, and
certificate files a user brings.

One CA per deployment ("self-signed" source), generated once with `cryptography` and kept beside
the secrets file (`<secrets dir>/tls/ca.crt`, `ca.key` 0600), so every gateway and load balancer of
the deployment is trusted by a client that trusts that one file. Each host gets a leaf with its
names as subject alternative names, kept there too (`<label>.crt`, `<label>.key` 0600) and issued
again only when its names change, its CA changed, or fewer than RENEW_BEFORE days are left: a re-run
changes nothing, so nothing is uploaded or restarted.

Nothing is written while a run is only planned: `CertificateStore.leaf` returns the material and
keeps what is new in `pending`; `save()` writes it (tasks/gateway/tls.py calls it when the run's operations
start, so `--dry` writes nothing, as for the secrets file).
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import ipaddress
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tasks.config.private_files import write_private

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_YEARS = 10
# A leaf lives a year (a private CA is not bound by the public 398-day rule, but short enough that a
# leaked key ages out) and is issued again on the first run with fewer than 30 days left.
LEAF_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=30)
# A label names a leaf's files: an inventory name, made safe for a file name, never the CA's own.
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_RESERVED_LABELS = {CA_CERT.rsplit(".", 1)[0], CA_KEY.rsplit(".", 1)[0]}
# A DNS name in a certificate: letters, digits, '-' per label, optionally one leading '*.' wildcard.
_DNS_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
DNS_NAME = re.compile(rf"(\*\.)?{_DNS_LABEL}(\.{_DNS_LABEL})*\.?")


class CertificateError(ValueError):
    """A certificate or key a user gave cannot serve; the message names the problem."""


@dataclass(frozen=True)
class TlsMaterial:
    """What a TLS front needs: its certificate chain and key, and the CA a client should trust (None
    when clients use their system trust). repr() never shows the key."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    ca_pem: bytes | None
    names: tuple[str, ...]


# --- names -------------------------------------------------------------------------------------


def name_problem(name: object) -> str | None:
    """Why `name` cannot be a certificate name (None when it can): a DNS name or an IP address."""
    if not isinstance(name, str) or not name:
        return f"{name!r} is not a DNS name or an IP address"
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass
    if len(name) > 253 or not DNS_NAME.fullmatch(name):
        return f"{name!r} is not a DNS name (letters, digits, '-' and '.') or an IP address"
    return None


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def unique_names(names: Iterable[str]) -> tuple[str, ...]:
    """Names in order, each once (DNS names compared without case)."""
    seen, out = set(), []
    for name in names:
        key = name if is_ip(name) else name.lower().rstrip(".")
        if name and key not in seen:
            seen.add(key)
            out.append(name)
    return tuple(out)


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    return [x509.IPAddress(ipaddress.ip_address(n)) if is_ip(n) else x509.DNSName(n.rstrip(".")) for n in names]


def san_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The certificate's DNS names and IP addresses, as strings, in the certificate's order."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(g.value) for g in san if isinstance(g, (x509.DNSName, x509.IPAddress)))


def covers(cert_names: Iterable[str], name: str) -> bool:
    """Whether a certificate with these SANs is valid for `name` (RFC 6125: a wildcard covers one label)."""
    if is_ip(name):
        return any(is_ip(c) and ipaddress.ip_address(c) == ipaddress.ip_address(name) for c in cert_names)
    wanted = name.lower().rstrip(".")
    for c in cert_names:
        c = c.lower().rstrip(".")
        if c == wanted or (c.startswith("*.") and "." in wanted and wanted.split(".", 1)[1] == c[2:]):
            return True
    return False


# --- reading ---------------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _not_after(cert: x509.Certificate) -> datetime.datetime:
    return cert.not_valid_after_utc


def load_chain(pem: bytes) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as error:
        raise CertificateError(f"not a PEM certificate ({error})") from None
    if not chain:
        raise CertificateError("holds no PEM certificate")
    return chain


def load_key(pem: bytes):
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise CertificateError("is encrypted with a passphrase (Caddy needs it without one)") from None
    except (ValueError, TypeError) as error:
        raise CertificateError(f"not a PEM private key ({str(error).splitlines()[0]})") from None


def _public_bytes(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(cert: x509.Certificate, key) -> bool:
    return _public_bytes(cert.public_key()) == _public_bytes(key.public_key())


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether `ca` signed `cert` (signature checked, not only the issuer's name)."""
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def files_problems(
    cert_file: object,
    key_file: object,
    names: Iterable[str] = (),
    cert_field: str = "tls_cert_file",
    key_field: str = "tls_key_file",
    now: datetime.datetime | None = None,
) -> list[str]:
    """Everything wrong with a certificate and key brought as files, each naming its field and the
    fix: missing or unreadable, not PEM, key encrypted or not the certificate's, expired or not yet
    valid, or not valid for one of `names`."""
    problems = []
    cert = key = None
    for field_name, path, loader in ((cert_field, cert_file, load_chain), (key_field, key_file, load_key)):
        wanted = (
            "certificate (PEM, the server's first, then its intermediates)"
            if loader is load_chain
            else "certificate's private key (PEM, unencrypted)"
        )
        if not isinstance(path, str) or not path:
            problems.append(
                f"{field_name}: tls is 'files' but no file is given — fix: the controller path of the " + wanted
            )
            continue
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            problems.append(
                f"{field_name}: {path} cannot be read on the controller ({error.strerror or error}) — "
                f"fix: the controller path of the {wanted}"
            )
            continue
        try:
            loaded = loader(data)
        except CertificateError as error:
            problems.append(f"{field_name}: {path} {error} — fix: give the {wanted}")
            continue
        if loader is load_chain:
            cert = loaded[0]
        else:
            key = loaded
    if cert is None:
        return problems
    moment = now or _now()
    if _not_after(cert) <= moment:
        problems.append(f"{cert_field}: {cert_file} expired on {_not_after(cert):%Y-%m-%d} — fix: renew it")
    elif cert.not_valid_before_utc > moment:
        problems.append(
            f"{cert_field}: {cert_file} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
            "— fix: check the clock of the machine that made it, or wait"
        )
    if key is not None and not key_matches(cert, key):
        problems.append(
            f"{key_field}: {key_file} is not the private key of {cert_file} — fix: give the key the "
            "certificate was made for"
        )
    cert_names = san_names(cert)
    for name in names:
        if not covers(cert_names, name):
            problems.append(
                f"tls_names: {name!r} is not in {cert_file} (it is valid for {', '.join(cert_names) or 'no name'}) "
                "— fix: list only names the certificate has, or bring one made for these names"
            )
    return problems


def read_files(cert_file: str, key_file: str, ca_file: str = "") -> TlsMaterial:
    """Certificate files a user brings (checked before by files_problems), as material."""
    cert_pem = Path(cert_file).read_bytes()
    return TlsMaterial(
        cert_pem=cert_pem,
        key_pem=Path(key_file).read_bytes(),
        ca_pem=Path(ca_file).read_bytes() if ca_file else None,
        names=san_names(load_chain(cert_pem)[0]),
    )


# --- issuing ---------------------------------------------------------------------------------


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def new_ca(now: datetime.datetime | None = None) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a new CA that may sign server certificates only."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    # A random serial in the name: two deployments' CAs never look alike in a trust store.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "litellm-deploy"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"litellm-deploy CA {x509.random_serial_number() % 10**8:08d}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem_cert(cert), _pem_key(key)


def new_leaf(
    names: tuple[str, ...],
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    now: datetime.datetime | None = None,
    days: int = LEAF_DAYS,
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a server certificate for `names`, signed by the CA."""
    if not names:
        raise ValueError("a certificate needs at least one name")
    now = now or _now()
    ca = load_chain(ca_cert_pem)[0]
    ca_key = load_key(ca_key_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _pem_cert(cert), _pem_key(key)


def reissue_reason(
    cert_pem: bytes | None,
    key_pem: bytes | None,
    names: tuple[str, ...],
    ca_pem: bytes,
    now: datetime.datetime | None = None,
) -> str | None:
    """Why a kept leaf must be issued again (None: keep it): missing, unreadable, another key, another
    CA, other names, or fewer than RENEW_BEFORE left."""
    if cert_pem is None or key_pem is None:
        return "none yet"
    try:
        cert, key, ca = load_chain(cert_pem)[0], load_key(key_pem), load_chain(ca_pem)[0]
    except CertificateError as error:
        return f"the kept one is unreadable ({error})"
    if not key_matches(cert, key):
        return "the kept key is not the certificate's"
    if not issued_by(cert, ca):
        return "the kept one was issued by another CA"
    if sorted(san_names(cert)) != sorted(_san_strings(names)):
        return f"its names changed ({', '.join(san_names(cert))} -> {', '.join(names)})"
    if _not_after(cert) - (now or _now()) < RENEW_BEFORE:
        return f"it expires on {_not_after(cert):%Y-%m-%d}"
    return None


def _san_strings(names: Iterable[str]) -> list[str]:
    """Names as they read back from a certificate (IP addresses normalised, no trailing dot)."""
    return [str(ipaddress.ip_address(n)) if is_ip(n) else n.rstrip(".") for n in names]


# --- the store beside the secrets file --------------------------------------------------------


def tls_dir(secrets_file: Path) -> Path:
    """Where a deployment's CA and leaves are kept: beside its secrets file."""
    return Path(secrets_file).resolve().parent / "tls"


def label_of(host_name: str) -> str:
    """The name of a host's leaf files in the store. A host name that is not already a safe, lowercase
    file name other than the CA's gets a digest of itself appended: "gw:1" and "gw_1", "GW1" and "gw1"
    (one file on a case-insensitive disk), or a host named "ca" never share files with another."""
    label = _LABEL_UNSAFE.sub("_", host_name)
    if label == host_name and label == label.lower() and label not in _RESERVED_LABELS and not label.startswith("."):
        return label
    return f"{label or '_'}-{hashlib.sha256(host_name.encode()).hexdigest()[:8]}"


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class CertificateStore:
    """The deployment's CA and leaves in one directory. Reads what is kept; new material waits in
    `pending` until save()."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.pending: dict[str, tuple[bytes, int]] = {}  # file name -> (content, mode)
        self.reasons: list[str] = []  # what save() will write, and why (for the log)

    def _kept(self, name: str) -> bytes | None:
        if name in self.pending:
            return self.pending[name][0]
        return _read(self.directory / name)

    def ca(self) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM): the kept CA, or a new one (kept from the next save() on)."""
        cert, key = self._kept(CA_CERT), self._kept(CA_KEY)
        if cert is not None and key is not None:
            return cert, key
        if cert is not None or key is not None:
            missing = CA_KEY if key is None else CA_CERT
            raise CertificateError(
                f"{self.directory}: {missing} is missing but its pair is there — restore it from "
                "a backup (every host's certificate was issued by it); only to start over, delete "
                "both and deploy again (clients must then trust the new ca.crt)"
            )
        cert, key = new_ca()
        self.pending[CA_CERT] = (cert, 0o644)
        self.pending[CA_KEY] = (key, 0o600)
        self.reasons.append(f"a new deployment CA ({self.directory / CA_CERT})")
        return cert, key

    def leaf(self, label: str, names: Iterable[str], now: datetime.datetime | None = None) -> TlsMaterial:
        """The leaf for `label` (a host) valid for `names`, issued by the deployment CA: the kept one,
        or a new one when reissue_reason says so."""
        names = unique_names(names)
        ca_cert, ca_key = self.ca()
        label = label_of(label)
        cert_name, key_name = f"{label}.crt", f"{label}.key"
        cert, key = self._kept(cert_name), self._kept(key_name)
        reason = reissue_reason(cert, key, names, ca_cert, now)
        if reason is not None:
            cert, key = new_leaf(names, ca_cert, ca_key, now)
            self.pending[cert_name] = (cert, 0o644)
            self.pending[key_name] = (key, 0o600)
            self.reasons.append(f"a certificate for {label} ({', '.join(names)}): {reason}")
        # reissue_reason keeps only a pair that is there.
        assert cert is not None and key is not None
        return TlsMaterial(cert_pem=cert, key_pem=key, ca_pem=ca_cert, names=names)

    def save(self) -> list[str]:
        """Write what is pending (keys 0600, the directory 0700); returns what was written and why."""
        if not self.pending:
            return []
        with self._locked():
            for name in (CA_CERT, CA_KEY):  # another run may have made the CA meanwhile: never replace it
                if name in self.pending and (self.directory / name).exists():
                    raise CertificateError(
                        f"{self.directory / name} appeared while this run was planned (another run?) — fix: run again"
                    )
            for name, (data, mode) in self.pending.items():
                write_private(self.directory / name, data, mode)
        written, self.pending, self.reasons = self.reasons, {}, []
        return written

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def served_problems(directory: Path, served: dict[str, tuple[str, bytes | None]]) -> list[str]:
    """Why this run must not issue from the store in `directory`, given what the hosts that take a leaf
    from it serve now (`served`: host -> (its certificate's path there, the PEM, or None for none)).

    A controller without the deployment's CA would make a new one and lock out every client that
    trusts the old one; a controller holding another deployment's CA would do the same. Both are
    refused while the plan is built: the CA's key is the one piece of state no host holds a copy of."""
    serving = {name: (path, pem) for name, (path, pem) in sorted(served.items()) if pem}
    if not serving:
        return []
    where = ", ".join(f"{name}:{path}" for name, (path, _) in serving.items())
    cert, key = _read(directory / CA_CERT), _read(directory / CA_KEY)
    if cert is None or key is None:
        return [
            f"tls: {where} serve(s) a certificate of the deployment CA, but this controller has no "
            f"{directory / CA_CERT} and {CA_KEY}: a new CA would lock out every client that trusts the "
            f"deployment's — fix: put the deployment's tls/ directory back at {directory} (it lives beside the "
            "secrets file: from a backup, or from the controller the deployment was made on), or point "
            "LITELLM_DEPLOY_SECRETS at the deployment's own secrets file; only to start over with a new CA on "
            "purpose, delete those certificates on the hosts first (every client must then trust the new ca.crt)"
        ]
    try:
        ca = load_chain(cert)[0]
    except CertificateError as error:
        return [f"tls: {directory / CA_CERT} {error} — fix: restore it from a backup"]
    problems = []
    for name, (path, pem) in serving.items():
        try:
            leaf = load_chain(pem)[0]
        except CertificateError:
            continue  # unreadable on the host: issuing a new leaf from this CA repairs it
        if not issued_by(leaf, ca):
            problems.append(
                f"tls: {name}:{path} was issued by {leaf.issuer.rfc4514_string()}, not by this controller's "
                f"{directory / CA_CERT} ({ca.subject.rfc4514_string()}): this tls/ directory is not the deployment's "
                "— fix: point LITELLM_DEPLOY_SECRETS at the deployment's secrets file (tls/ is read beside it); only "
                f"to move {name} to this CA on purpose, delete {path} on it first (its clients must then trust "
                f"{directory / CA_CERT})"
            )
    return problems


def leaf_for(names: Iterable[str], label: str, directory: Path) -> TlsMaterial:
    """One host's material from the deployment CA in `directory`, written at once: for callers
    outside a pyinfra run's planning (tests, a load balancer's own tooling). Inside a run, use
    tasks.gateway.tls.material, which writes only when the operations start."""
    store = CertificateStore(directory)
    material = store.leaf(label, names)
    store.save()
    return material


__all__ = [
    "TlsMaterial",
    "CertificateStore",
    "CertificateError",
    "leaf_for",
    "files_problems",
    "read_files",
    "name_problem",
    "covers",
    "tls_dir",
]
