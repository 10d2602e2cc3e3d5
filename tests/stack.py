"""Starting real things for tests: a nats-server, and the whole stack through `crucible up`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bus import NatsSettings
from crucible.creds import AuthMode
from crucible.natsconf import NatsLayout, write_nats_config
from crucible.up import nats_server_binary

_START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


@dataclass
class NatsServer:
    layout: NatsLayout
    process: subprocess.Popen[bytes]
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text()

    def settings(self, service: str) -> NatsSettings:
        """How `service` (gateway, worker, debug) connects here, with its own identity."""
        return NatsSettings(url=self.layout.url, creds_file=self.layout.creds_files[service])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def restart(self) -> None:
        """Stop, then start again with the same port, identities and JetStream store."""
        self.stop()
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.layout.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(int(self.layout.url.rsplit(":", 1)[1]))


def start_nats(state_dir: Path, auth: AuthMode = AuthMode.NKEY) -> NatsServer:
    """A real nats-server with Crucible's config: JetStream and per-service identities."""
    layout = write_nats_config(state_dir, free_port(), auth=auth)
    log_file = state_dir / "nats.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [nats_server_binary(), "-c", str(layout.config_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_for_port(int(layout.url.rsplit(":", 1)[1]))
    return NatsServer(layout, process, log_file)


@dataclass
class Stack:
    """A running `crucible up`."""

    url: str
    api_key: str
    state_dir: Path
    process: subprocess.Popen[bytes]
    log_file: Path

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.api_key}"}

    def processes(self, needle: str) -> list[int]:
        """Pids of this stack's processes whose command line contains `needle`."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if needle in cmdline and f"CRUCIBLE_PARENT_PID={self.process.pid}".encode() in environ:
                found.append(int(entry.name))
        return found

    def nats(self, service: str = "debug") -> NatsSettings:
        """How to reach this stack's NATS as `service` (default: the read-only identity)."""
        configs = sorted(self.state_dir.glob("nats*.conf"))  # nats.conf, or nats-<n>.conf
        ports = [json.loads(config.read_text())["port"] for config in configs]
        return NatsSettings(
            url=",".join(f"nats://127.0.0.1:{port}" for port in ports),
            creds_file=self.state_dir / "creds" / f"{service}.json",
        )

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports."""
    for _ in range(100):
        first = free_port()
        try:
            for offset in range(count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", first + offset))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports")


def start_stack(
    state_dir: Path,
    workers: int = 2,
    env: dict[str, str] | None = None,
    nats_nodes: int = 1,
    worker_concurrency: int = 1,
) -> Stack:
    """`crucible up` on free ports, waiting until `/readyz` says ready."""
    port, nats_port = free_port(), free_ports(nats_nodes)
    api_key = "test-key-" + os.urandom(8).hex()
    log_file = state_dir / "up.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "crucible",
                "up",
                "--port",
                str(port),
                "--nats-port",
                str(nats_port),
                "--workers",
                str(workers),
                "--state-dir",
                str(state_dir),
                "--cluster",
                str(nats_nodes),
                "--worker-concurrency",
                str(worker_concurrency),
            ],
            env={**os.environ, "CRUCIBLE_API_KEY": api_key, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    stack = Stack(f"http://127.0.0.1:{port}", api_key, state_dir, process, log_file)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"crucible up exited {process.returncode}:\n{stack.log()}")
        try:
            if httpx.get(f"{stack.url}/readyz", timeout=1).status_code == 200:
                return stack
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stack.stop()
    raise TimeoutError(f"crucible up not ready in {_START_TIMEOUT_S} s:\n{stack.log()}")


@contextmanager
def running_stack(
    state_dir: Path,
    workers: int = 2,
    env: dict[str, str] | None = None,
    nats_nodes: int = 1,
) -> Iterator[Stack]:
    """`start_stack`, stopped again when the block ends, however it ends (for fixtures)."""
    stack = start_stack(state_dir, workers, env, nats_nodes)
    try:
        yield stack
    finally:
        stack.stop()
