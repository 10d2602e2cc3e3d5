"""A private CA with server and client certificates (nginx at the edge, mutual TLS to a Docker
engine and to NATS), made with `cryptography`."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=365)
DEFAULT_HOSTS = ("127.0.0.1", "localhost")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    # Created 0600: a private key is never readable by others, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def _write(path: Path, key: ec.EllipticCurvePrivateKey | None, cert: x509.Certificate) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        _write_private(path.with_name(path.name + "-key.pem"), key)


def _issue(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate | None,
    ca_key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier | None,
    alt_names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject if ca else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class CertificateAuthority:
    """A fresh CA that issues server and client certificates into one directory."""

    def __init__(self, directory: Path, name: str = "crucible-ca") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._key = _key()
        self._cert = _issue(name, self._key, None, self._key, None)
        _write(directory / "ca", None, self._cert)

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def server(self, stem: str, hosts: tuple[str, ...]) -> None:
        """`<stem>.pem` and `<stem>-key.pem`, valid for `hosts` (names or IP addresses)."""
        key = _key()
        alt_names = [_alt_name(host) for host in hosts]
        usage = ExtendedKeyUsageOID.SERVER_AUTH
        _write(
            self.directory / stem,
            key,
            _issue(hosts[0], key, self._cert, self._key, usage, alt_names),
        )

    def client(self, stem: str, name: str, email: str | None = None) -> None:
        """`<stem>.pem` and `<stem>-key.pem` for a client named `name` (and `email`, which
        nats-server's `verify_and_map` takes as the user)."""
        key = _key()
        alt_names: list[x509.GeneralName] = [x509.RFC822Name(email)] if email else []
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
        _write(
            self.directory / stem, key, _issue(name, key, self._cert, self._key, usage, alt_names)
        )


def make_certs(directory: Path, hosts: tuple[str, ...] = DEFAULT_HOSTS) -> None:
    """ca.pem, server.pem + server-key.pem, and the client's cert.pem + key.pem (Docker's names)."""
    ca = CertificateAuthority(directory)
    ca.server("server", hosts)
    ca.client("client", "worker")
    (directory / "client.pem").rename(directory / "cert.pem")
    (directory / "client-key.pem").rename(directory / "key.pem")
