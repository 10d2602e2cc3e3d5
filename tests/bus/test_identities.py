"""Who may connect to NATS at all: nkeys, passwords and client certificates (real nats-server)."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
import sys
from asyncio.subprocess import DEVNULL, PIPE
from pathlib import Path

import nats
import nkeys
import pytest

from bus import BusUnavailableError, NatsSettings, ServiceCredentials, connect
from bus import subjects as s
from crucible.creds import AuthMode
from crucible.tls import CertificateAuthority
from crucible.up import nats_server_binary
from tests.bus.violations import Violations
from tests.stack import NatsServer, free_port, start_nats, wait_for_port

_FAST = 3.0  # a refused connection fails within this, instead of the 30 s default


def with_creds(server: NatsServer, tmp_path: Path, creds: ServiceCredentials) -> NatsSettings:
    path = tmp_path / "impostor.json"
    path.write_text(creds.model_dump_json(exclude_none=True))
    return NatsSettings(url=server.layout.url, creds_file=path, connect_deadline_s=_FAST)


async def refused(settings: NatsSettings, server: NatsServer) -> None:
    with pytest.raises(BusUnavailableError):
        await connect(settings, "worker", "impostor")
    assert "Authorization Violation" in server.log() or "authentication error" in server.log()


async def test_no_credentials_are_refused(nats_server: NatsServer) -> None:
    await refused(NatsSettings(url=nats_server.layout.url, connect_deadline_s=_FAST), nats_server)


async def test_an_unknown_nkey_is_refused(nats_server: NatsServer, tmp_path: Path) -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    await refused(
        with_creds(nats_server, tmp_path, ServiceCredentials(nkey_seed=seed)), nats_server
    )


async def test_a_user_name_without_its_nkey_is_refused(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    creds = ServiceCredentials(user="worker", password="worker")
    await refused(with_creds(nats_server, tmp_path, creds), nats_server)


async def test_credentials_files_are_private(nats_server: NatsServer) -> None:
    for path in [*nats_server.layout.creds_files.values(), nats_server.layout.config_file]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # The server's config holds public keys only: no seed leaves the creds directory.
    config = nats_server.layout.config_file.read_text()
    assert '"nkey": "U' in config
    for path in nats_server.layout.creds_files.values():
        seed = ServiceCredentials.model_validate_json(path.read_text()).nkey_seed
        assert seed is not None and seed not in config


async def test_wrong_password_is_refused(tmp_path: Path) -> None:
    server = start_nats(tmp_path, AuthMode.PASSWORD)
    try:
        real = server.settings("worker").credentials()
        assert real is not None and real.user == "worker"
        wrong = ServiceCredentials(user="worker", password=str(real.password) + "x")
        await refused(with_creds(server, tmp_path, wrong), server)
        # The right password still works, with the worker's permissions.
        violations = Violations()
        worker = await connect(server.settings("worker"), "worker", "w", violations.on_error)
        await worker.publish(s.job_subject("forged"), b"{}")
        await violations.wait_for(f'publish to "{s.job_subject("forged")}"')
        await worker.close()
    finally:
        server.stop()


@pytest.fixture
def tls_server(tmp_path: Path) -> NatsServer:
    server = start_nats(tmp_path, AuthMode.TLS)
    yield server
    server.stop()


async def test_each_certificate_is_its_services_identity(tls_server: NatsServer) -> None:
    assert tls_server.layout.url.startswith("tls://")
    gateway = await connect(tls_server.settings("gateway"), "gateway", "g")
    await gateway.publish(s.job_subject("t1"), b"{}")  # allowed for the gateway
    await gateway.flush()
    violations = Violations()
    worker = await connect(tls_server.settings("worker"), "worker", "w", violations.on_error)
    await worker.publish(s.job_subject("t1"), b"{}")  # the worker's certificate may not
    await violations.wait_for(f'publish to "{s.job_subject("t1")}"')
    debug_violations = Violations()
    debug = await connect(tls_server.settings("debug"), "debug", "d", debug_violations.on_error)
    await debug.publish(s.events_subject("r-1", "j-1"), b"{}")
    await debug_violations.wait_for(f'publish to "{s.events_subject("r-1", "j-1")}"')
    for client in (gateway, worker, debug):
        await client.close()


async def test_a_certificate_from_another_ca_is_refused(
    tls_server: NatsServer, tmp_path: Path
) -> None:
    rogue = CertificateAuthority(tmp_path / "rogue", name="crucible-nats-ca")
    # Same names as the real gateway certificate: only the signature tells them apart.
    rogue.client("gateway", "gateway", email="gateway@crucible")
    real_ca = tls_server.layout.creds_files["gateway"].parent / "tls" / "ca.pem"
    creds = ServiceCredentials(
        tls_cert=tmp_path / "rogue" / "gateway.pem",
        tls_key=tmp_path / "rogue" / "gateway-key.pem",
        tls_ca=real_ca,
    )
    with pytest.raises(BusUnavailableError):
        await connect(with_creds(tls_server, tmp_path, creds), "gateway", "rogue")
    assert "certificate signed by unknown authority" in tls_server.log()


async def test_tls_without_a_client_certificate_is_refused(tls_server: NatsServer) -> None:
    ca = tls_server.layout.creds_files["gateway"].parent / "tls" / "ca.pem"
    # It trusts the server, but has no certificate of its own; a password cannot stand in.
    context = ssl.create_default_context(cafile=ca)
    with pytest.raises(Exception):  # noqa: B017 - nats-py raises a TLS or a timeout error
        await nats.connect(
            tls_server.layout.url,
            tls=context,
            user="gateway@crucible",
            password="x",
            allow_reconnect=False,
            connect_timeout=_FAST,
        )
    assert "client didn't provide a certificate" in tls_server.log() or "TLS handshake error" in (
        tls_server.log()
    )


async def test_crucible_creds_output_is_what_a_server_includes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crucible", "creds", "--out", str(out), stdout=PIPE
    )
    stdout, _ = await cli.communicate()
    assert cli.returncode == 0 and b"debug.nk" in stdout
    port = free_port()
    (tmp_path / "main.conf").write_text(
        f"port: {port}\njetstream {{ store_dir: {str(tmp_path / 'js')!r} }}\n"
        f"include ./out/authorization.conf\n"
    )
    process = await asyncio.create_subprocess_exec(
        nats_server_binary(), "-c", str(tmp_path / "main.conf"), stdout=DEVNULL, stderr=DEVNULL
    )
    try:
        await asyncio.to_thread(wait_for_port, port)
        url = f"nats://127.0.0.1:{port}"
        for service in ("gateway", "worker", "debug"):
            creds_file = out / "creds" / f"{service}.json"
            client = await connect(NatsSettings(url=url, creds_file=creds_file), service, service)
            await client.close()
        seed = (out / "creds" / "debug.nk").read_text().strip()
        debug = ServiceCredentials.model_validate_json((out / "creds" / "debug.json").read_text())
        assert seed == debug.nkey_seed
        with pytest.raises(BusUnavailableError):
            await connect(NatsSettings(url=url, connect_deadline_s=_FAST), "worker", "anon")
    finally:
        process.terminate()
        await process.wait()
