"""`crucible creds`: one NATS identity per service, and the server's authorization for them.

Each service (gateway, worker, and `debug` for operators) gets `creds/<service>.json`, which
`CRUCIBLE_NATS_CREDS_FILE` points at, and may publish and subscribe only what
`bus.permissions` allows it. Identities are nkeys by default (the server keeps only public
keys), user/password as a fallback, or client certificates that nats-server maps to users with
`verify_and_map` (the certificate is the identity).
"""

from __future__ import annotations

import os
import secrets
from enum import StrEnum
from pathlib import Path
from typing import Any

import nkeys
from pydantic import BaseModel, ValidationError

from bus import SERVICE_PERMISSIONS, ServiceCredentials
from crucible.tls import DEFAULT_HOSTS, CertificateAuthority

_PASSWORD_BYTES = 24
_TLS_DIR = "tls"
# verify_and_map takes a certificate's e-mail address as the user name.
_CERT_DOMAIN = "crucible"


class AuthMode(StrEnum):
    NKEY = "nkey"
    PASSWORD = "password"
    TLS = "tls"


class NatsAuth(BaseModel):
    """What nats-server's config needs for these identities, and where their files are."""

    users: list[dict[str, Any]]
    tls: dict[str, Any] | None = None  # the server's `tls` block, for mutual TLS
    creds_files: dict[str, Path]  # service -> its credentials file


def _write_secret(path: Path, text: str) -> None:
    # Created 0600 from the start: never readable by anyone else, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _existing(path: Path, mode: AuthMode) -> ServiceCredentials | None:
    """A service's identity from an earlier run, if it is of the mode asked for."""
    try:
        creds = ServiceCredentials.model_validate_json(path.read_text())
    except (OSError, ValidationError):
        return None
    same_mode = {
        AuthMode.NKEY: creds.nkey_seed is not None,
        AuthMode.PASSWORD: creds.password is not None,
        AuthMode.TLS: creds.tls_cert is not None,
    }
    return creds if same_mode[mode] else None


def _new_nkey() -> str:
    return nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER).decode()


def _user_entry(service: str, creds: ServiceCredentials) -> dict[str, Any]:
    """One entry of the server's `authorization.users`: who, and what they may do."""
    allowed = SERVICE_PERMISSIONS[service]()
    entry: dict[str, Any] = {
        "permissions": {
            "publish": {"allow": allowed.publish},
            "subscribe": {"allow": allowed.subscribe},
        }
    }
    if creds.nkey_seed is not None:
        entry["nkey"] = nkeys.from_seed(creds.nkey_seed.encode()).public_key.decode()
    elif creds.tls_cert is not None:
        entry["user"] = f"{service}@{_CERT_DOMAIN}"
    else:
        entry |= {"user": creds.user, "password": creds.password}
    return entry


def _issue_certificates(creds_dir: Path, hosts: tuple[str, ...]) -> None:
    """A fresh CA, the server's certificate, and one client certificate per service."""
    ca = CertificateAuthority(creds_dir / _TLS_DIR, name="crucible-nats-ca")
    ca.server("nats-server", hosts)
    for service in SERVICE_PERMISSIONS:
        ca.client(service, service, email=f"{service}@{_CERT_DOMAIN}")


def write_credentials(
    creds_dir: Path,
    mode: AuthMode = AuthMode.NKEY,
    tls_hosts: tuple[str, ...] = DEFAULT_HOSTS,
) -> NatsAuth:
    """Write (or keep, when already there in this mode) every service's identity.

    `tls_hosts` are the names and addresses the server's certificate covers (mode `tls`).
    """
    creds_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = {service: creds_dir / f"{service}.json" for service in SERVICE_PERMISSIONS}
    found = {service: _existing(path, mode) for service, path in paths.items()}
    missing = [service for service, creds in found.items() if creds is None]
    if mode is AuthMode.TLS and missing:
        # A new CA invalidates every earlier certificate: issue all of them again.
        _issue_certificates(creds_dir, tls_hosts)
        missing = list(paths)
    identities: dict[str, ServiceCredentials] = {}
    for service, path in paths.items():
        creds = found[service]
        if service in missing or creds is None:
            creds = _new_identity(service, mode)
            _write_secret(path, creds.model_dump_json(exclude_none=True, indent=2))
        identities[service] = creds
    if (seed := identities["debug"].nkey_seed) is not None:
        # The `nats` CLI reads a bare seed: `nats --nkey creds/debug.nk ...`.
        _write_secret(creds_dir / "debug.nk", seed + "\n")
    users = [_user_entry(service, creds) for service, creds in identities.items()]
    tls = None
    if mode is AuthMode.TLS:
        server_dir = creds_dir.resolve() / _TLS_DIR
        tls = {
            "cert_file": str(server_dir / "nats-server.pem"),
            "key_file": str(server_dir / "nats-server-key.pem"),
            "ca_file": str(server_dir / "ca.pem"),
            "verify_and_map": True,
        }
    return NatsAuth(users=users, tls=tls, creds_files=paths)


def _new_identity(service: str, mode: AuthMode) -> ServiceCredentials:
    if mode is AuthMode.NKEY:
        return ServiceCredentials(nkey_seed=_new_nkey())
    if mode is AuthMode.PASSWORD:
        return ServiceCredentials(user=service, password=secrets.token_urlsafe(_PASSWORD_BYTES))
    tls = Path(_TLS_DIR)
    return ServiceCredentials(
        tls_cert=tls / f"{service}.pem",
        tls_key=tls / f"{service}-key.pem",
        tls_ca=tls / "ca.pem",
    )
