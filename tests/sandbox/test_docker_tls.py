"""The Docker backend against a remote engine over mutual TLS: a second dockerd on loopback."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from crucible.tls import make_certs
from sandbox import ExecSpec, OutputChunk, Verdict
from sandbox.docker import DockerSandbox
from sandbox.docker_pool import DockerSettings
from tests.backends import require_docker
from tests.stack import free_port

pytestmark = [
    pytest.mark.slow,
    # The docker SDK's hijacked exec stream over TLS leaves an already-closed SSLSocket object
    # for the garbage collector to warn about; collected here, not in an unrelated test.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning"),
]


@pytest.fixture(autouse=True)
def collect_garbage() -> Iterator[None]:
    yield
    gc.collect()


@pytest.fixture(scope="module")
def tls_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """dockerd with --tlsverify on a loopback port, holding the runtime image."""
    require_docker()
    root = tmp_path_factory.mktemp("tls-dockerd")
    certs = root / "certs"
    certs.mkdir()
    make_certs(certs)
    host = f"tcp://127.0.0.1:{free_port()}"
    # A bridge of its own: a second dockerd told `--bridge=none` deletes the host's docker0.
    bridge = f"crt{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    with (root / "dockerd.log").open("wb") as log:
        daemon = subprocess.Popen(
            [
                "dockerd",
                "--tlsverify",
                f"--tlscacert={certs / 'ca.pem'}",
                f"--tlscert={certs / 'server.pem'}",
                f"--tlskey={certs / 'server-key.pem'}",
                "-H",
                host,
                f"--data-root={root / 'data'}",
                f"--exec-root={root / 'exec'}",
                f"--pidfile={root / 'docker.pid'}",
                f"--bridge={bridge}",
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    env = {"DOCKER_HOST": host, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs)}
    cli = [
        "docker",
        "-H",
        host,
        "--tlsverify",
        f"--tlscacert={certs / 'ca.pem'}",
        f"--tlscert={certs / 'cert.pem'}",
        f"--tlskey={certs / 'key.pem'}",
    ]
    try:
        for _ in range(100):
            if subprocess.run([*cli, "info"], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        image = DockerSettings().image
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        subprocess.run([*cli, "load"], stdin=save.stdout, check=True, capture_output=True)
        assert save.stdout is not None
        save.stdout.close()
        assert save.wait() == 0
        yield env
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        subprocess.run(["ip", "link", "delete", bridge], check=False)


async def test_jobs_run_on_a_remote_engine_over_mutual_tls(
    tls_engine: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in tls_engine.items():
        monkeypatch.setenv(key, value)
    # Hosts often set this; it must not replace the engine's own CA.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    sandbox = DockerSandbox(DockerSettings(pool_size=1, owner="t-tls"))
    await sandbox.check()
    chunks: list[OutputChunk] = []

    async def collect(chunk: OutputChunk) -> None:
        chunks.append(chunk)

    try:
        spec = ExecSpec(
            job_id="j-tls", language="python", code="print(input()[::-1])", stdin="slt\n"
        )
        result = await sandbox.run(spec, collect)
    finally:
        await sandbox.close()
    assert (result.verdict, result.stdout) == (Verdict.ACCEPTED, "tls\n")
    assert "".join(c.data for c in chunks) == "tls\n"


def test_the_remote_engine_refuses_clients_without_a_certificate(
    tls_engine: dict[str, str],
) -> None:
    certs = Path(tls_engine["DOCKER_CERT_PATH"])
    tls = docker.tls.TLSConfig(ca_cert=str(certs / "ca.pem"), verify=True)
    client = docker.DockerClient(base_url=tls_engine["DOCKER_HOST"], tls=tls, version="1.41")
    client.api.trust_env = False
    # The handshake itself fails: the engine demands a client certificate signed by its CA.
    with pytest.raises(requests.exceptions.SSLError):
        client.ping()
    client.close()
