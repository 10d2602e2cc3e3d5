"""compose.yml for real: images, `docker-compose up`, a job through nginx over HTTPS, `down`."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.backends import require_docker
from tests.sse_client import Event, stream
from tests.stack import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = str(Path(sys.executable).parent / "docker-compose")
IMAGES = ("crucible:latest", "crucible-nginx:latest", "crucible-runtime:latest")


def _docker(*argv: str) -> str:
    return subprocess.run(["docker", *argv], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    require_docker()
    missing = [
        i
        for i in IMAGES
        if subprocess.run(["docker", "image", "inspect", i], capture_output=True).returncode
    ]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must build the images first (make images): missing {missing}")
        pytest.skip(f"images missing (make images): {missing}")
    project = f"crucible-test-{os.getpid()}"
    port = free_port()
    env = {
        **os.environ,
        "CRUCIBLE_API_KEY": "compose-test-key",
        "CRUCIBLE_HTTPS_PORT": str(port),
        "COMPOSE_PROJECT_NAME": project,
    }
    compose = [COMPOSE, "-f", str(ROOT / "compose.yml"), "-p", project]
    try:
        subprocess.run(
            [*compose, "up", "-d", "--wait"], env=env, check=True, capture_output=True, timeout=300
        )
        ca = tmp_path_factory.mktemp("compose") / "ca.pem"
        ca.write_text(
            _docker(
                "run",
                "--rm",
                "-v",
                f"{project}_config:/config:ro",
                "crucible:latest",
                "cat",
                "/config/tls/ca.pem",
            )
        )
        yield project, f"https://localhost:{port}", ca
    finally:
        logs = subprocess.run(
            [*compose, "logs", "--no-color"], env=env, capture_output=True, text=True
        ).stdout
        down = subprocess.run([*compose, "down", "-v"], env=env, capture_output=True, timeout=120)
        assert down.returncode == 0, logs[-4000:]


def test_a_job_through_nginx_over_https_streams_and_finishes(
    deployment: tuple[str, str, Path],
) -> None:
    _, url, ca = deployment
    trusted = ssl.create_default_context(cafile=str(ca))  # the stack's own CA, nothing else
    headers = {"Authorization": "Bearer compose-test-key"}
    code = "import time\nfor i in range(3):\n    print('tick', i)\n    time.sleep(0.3)"
    with httpx.Client(verify=trusted, timeout=30) as client:
        assert client.get(f"{url}/readyz").status_code == 200
        accepted = client.post(
            f"{url}/v1/jobs", headers=headers, json={"language": "python", "code": code}
        )
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["events_url"].startswith(f"{url}/")
        assert (
            client.get(f"{url}/v1/jobs/x", headers={"Authorization": "Bearer no"}).status_code
            == 401
        )
    events: list[Event] = stream(accepted.json()["events_url"], verify=trusted)
    ticks = [e for e in events if e.event == "stdout"]
    assert len(ticks) >= 2  # streamed through nginx as produced, not buffered to the end
    assert events[-1].event == "finished"
    assert events[-1].data["verdict"] == "accepted"
    assert events[-1].data["stdout"] == "tick 0\ntick 1\ntick 2\n"


def test_only_nginx_publishes_a_port_and_the_queue_network_is_internal(
    deployment: tuple[str, str, Path],
) -> None:
    project, _, _ = deployment
    ids = _docker("ps", "-q", "--filter", f"label=com.docker.compose.project={project}").split()
    published = {
        _docker(
            "inspect", "-f", '{{index .Config.Labels "com.docker.compose.service"}}', i
        ).strip(): _docker("port", i).strip()
        for i in ids
    }
    assert {service for service, ports in published.items() if ports} == {"nginx"}
    assert (
        _docker("network", "inspect", "-f", "{{.Internal}}", f"{project}_queue").strip() == "true"
    )


def test_down_leaves_nothing_behind(deployment: tuple[str, str, Path]) -> None:
    project, _, _ = deployment
    compose = [COMPOSE, "-f", str(ROOT / "compose.yml"), "-p", project]
    env = {**os.environ, "COMPOSE_PROJECT_NAME": project}
    subprocess.run([*compose, "down", "-v"], env=env, check=True, capture_output=True, timeout=120)
    label = f"label=com.docker.compose.project={project}"
    assert _docker("ps", "-aq", "--filter", label).split() == []
    assert _docker("volume", "ls", "-q", "--filter", label).split() == []
    assert _docker("network", "ls", "-q", "--filter", label).split() == []
    # The workers' sandbox containers went with them.
    assert _docker("ps", "-aq", "--filter", "label=crucible.role=sandbox").split() == []
