"""The deployment CA and its leaves on the controller, and certificate files a user brings."""

import datetime
import stat

import pytest
from cryptography import x509

from tasks.config import certificates as C

NOW = datetime.datetime(2027, 1, 10, tzinfo=datetime.timezone.utc)


def cert_of(material):
    return C.load_chain(material.cert_pem)[0]


def test_ca_is_made_once_and_kept_0600(tmp_path):
    store = C.CertificateStore(tmp_path / "tls")
    first = store.leaf("gw1", ["gw1", "192.0.2.10"])
    assert not (tmp_path / "tls").exists(), "nothing is written before save()"
    written = store.save()
    assert any("new deployment CA" in line for line in written)
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "tls" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls" / "gw1.key").stat().st_mode) == 0o600
    ca = (tmp_path / "tls" / "ca.crt").read_bytes()
    # A later run (a new store) keeps the CA and the leaf, and writes nothing.
    again = C.CertificateStore(tmp_path / "tls")
    second = again.leaf("gw1", ["gw1", "192.0.2.10"])
    assert again.pending == {} and again.save() == []
    assert (second.cert_pem, second.key_pem, second.ca_pem) == (first.cert_pem, first.key_pem, ca)
    # A second host gets its own leaf from the same CA.
    other = again.leaf("gw2", ["gw2"])
    assert set(again.pending) == {"gw2.crt", "gw2.key"}
    assert other.ca_pem == ca and C.issued_by(cert_of(other), C.load_chain(ca)[0])


def test_leaf_holds_the_names_and_is_a_server_certificate(tmp_path):
    material = C.leaf_for(["gw.example.com", "192.0.2.10", "2001:db8::1"], "gw1", tmp_path)
    cert = cert_of(material)
    assert C.san_names(cert) == ("gw.example.com", "192.0.2.10", "2001:db8::1")
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert C.key_matches(cert, C.load_key(material.key_pem))
    assert "key_pem" not in repr(material) and "PRIVATE" not in repr(material)


@pytest.mark.parametrize("change, reason", [
    (lambda s: s.leaf("gw1", ["gw1", "192.0.2.99"]), "names changed"),
    (lambda s: s.leaf("gw1", ["gw1", "192.0.2.10"], now=NOW + datetime.timedelta(days=C.LEAF_DAYS - 29)), "expires"),
])
def test_leaf_is_issued_again_only_when_names_change_or_expiry_nears(tmp_path, change, reason):
    store = C.CertificateStore(tmp_path)
    store.leaf("gw1", ["gw1", "192.0.2.10"], now=NOW)
    store.save()
    kept = C.CertificateStore(tmp_path)
    # 31 days before expiry: kept; names in another order or case: kept.
    kept.leaf("gw1", ["192.0.2.10", "gw1"], now=NOW + datetime.timedelta(days=C.LEAF_DAYS - 31))
    assert kept.pending == {}
    renewed = C.CertificateStore(tmp_path)
    change(renewed)
    assert set(renewed.pending) == {"gw1.crt", "gw1.key"} and reason in renewed.reasons[0]


def test_leaf_of_another_ca_or_key_is_issued_again(tmp_path):
    C.leaf_for(["gw1"], "gw1", tmp_path / "a")
    C.leaf_for(["gw1"], "gw1", tmp_path / "b")
    (tmp_path / "a" / "gw1.crt").write_bytes((tmp_path / "b" / "gw1.crt").read_bytes())
    store = C.CertificateStore(tmp_path / "a")
    store.leaf("gw1", ["gw1"])
    assert "not the certificate's" in store.reasons[0]
    (tmp_path / "a" / "gw1.key").write_bytes((tmp_path / "b" / "gw1.key").read_bytes())
    store = C.CertificateStore(tmp_path / "a")
    store.leaf("gw1", ["gw1"])
    assert "another CA" in store.reasons[0]


def test_a_lost_ca_key_is_refused_not_replaced(tmp_path):
    C.leaf_for(["gw1"], "gw1", tmp_path)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(C.CertificateError, match="ca.key is missing"):
        C.CertificateStore(tmp_path).leaf("gw1", ["gw1"])


@pytest.mark.parametrize("name, ok", [
    ("gw1", True), ("gw.example.com", True), ("*.example.com", True), ("192.0.2.10", True), ("2001:db8::1", True),
    ("gw_1.example.com", False), ("-gw.example.com", False), ("gw example", False), ("", False), ("a" * 64, False),
    ("https://gw.example.com", False),
])
def test_names(name, ok):
    assert (C.name_problem(name) is None) == ok


def test_covers_wildcards_one_label():
    assert C.covers(["*.example.com"], "gw.example.com")
    assert not C.covers(["*.example.com"], "a.gw.example.com")
    assert not C.covers(["*.example.com"], "example.com")
    assert C.covers(["192.0.2.10"], "192.0.2.10") and not C.covers(["gw"], "192.0.2.10")


# --- files a user brings -------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    material = C.leaf_for(["gw.example.com"], "gw", tmp_path / "ca")
    cert, key = tmp_path / "gw.crt", tmp_path / "gw.key"
    cert.write_bytes(material.cert_pem + material.ca_pem)  # chain: server first, then its CA
    key.write_bytes(material.key_pem)
    return cert, key


def test_good_files_have_no_problem_and_read_back(files):
    cert, key = files
    assert C.files_problems(str(cert), str(key), ["gw.example.com"]) == []
    assert C.read_files(str(cert), str(key)).names == ("gw.example.com",)


def test_files_problems_name_the_field(files, tmp_path):
    cert, key = files
    other = C.leaf_for(["gw.example.com"], "x", tmp_path / "other")
    (tmp_path / "other.key").write_bytes(other.key_pem)
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    assert C.files_problems("", "") == [
        "tls_cert_file: tls is 'files' but no file is given — fix: the controller path of the certificate (PEM, "
        "the server's first, then its intermediates)",
        "tls_key_file: tls is 'files' but no file is given — fix: the controller path of the certificate's private "
        "key (PEM, unencrypted)"]
    [missing] = C.files_problems(str(tmp_path / "nope.crt"), str(key))
    assert missing.startswith(f"tls_cert_file: {tmp_path / 'nope.crt'} cannot be read")
    [junk] = C.files_problems(str(tmp_path / "junk.pem"), str(key))
    assert junk.startswith(f"tls_cert_file: {tmp_path / 'junk.pem'} not a PEM certificate")
    [mismatch] = C.files_problems(str(cert), str(tmp_path / "other.key"))
    assert mismatch.startswith(f"tls_key_file: {tmp_path / 'other.key'} is not the private key of {cert}")
    [name] = C.files_problems(str(cert), str(key), ["api.example.com"])
    assert name.startswith("tls_names: 'api.example.com' is not in") and "gw.example.com" in name
    [expired] = C.files_problems(str(cert), str(key), now=NOW + datetime.timedelta(days=800))
    assert expired.startswith(f"tls_cert_file: {cert} expired on") and "renew" in expired


def test_an_encrypted_key_is_refused_with_the_reason(files, tmp_path):
    from cryptography.hazmat.primitives import serialization

    cert, key = files
    encrypted = C.load_key(key.read_bytes()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"))
    (tmp_path / "enc.key").write_bytes(encrypted)
    [problem] = C.files_problems(str(cert), str(tmp_path / "enc.key"))
    assert problem.startswith("tls_key_file:") and "passphrase" in problem
