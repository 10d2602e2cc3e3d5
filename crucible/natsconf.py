"""The embedded nats-server's configuration: JetStream on disk and one identity per service."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel

from bus import MAX_PAYLOAD_BYTES
from crucible.creds import AuthMode, write_credentials
from crucible.tls import DEFAULT_HOSTS


class NatsLayout(BaseModel):
    """Where `write_nats_config` put things."""

    config_file: Path
    url: str
    creds_files: dict[str, Path]  # service -> its credentials file


def write_nats_config(
    state_dir: Path,
    port: int,
    host: str = "127.0.0.1",
    store_dir: Path | None = None,
    monitor_port: int | None = None,
    auth: AuthMode = AuthMode.NKEY,
    tls_hosts: tuple[str, ...] = DEFAULT_HOSTS,
) -> NatsLayout:
    """Write `nats.conf` (JSON, which nats-server reads) and per-service credentials.

    `store_dir` is where JetStream keeps its data as the server sees it (a container mounts
    it elsewhere than the state dir); `monitor_port` opens /healthz for health checks.
    """
    identities = write_credentials(state_dir / "creds", auth, tls_hosts)
    config: dict[str, object] = {
        "host": host,
        "port": port,
        "server_name": "crucible",
        "max_payload": MAX_PAYLOAD_BYTES,
        "jetstream": {"store_dir": str(store_dir or (state_dir / "jetstream").resolve())},
        "authorization": {"users": identities.users},
    }
    if identities.tls is not None:
        config["tls"] = identities.tls
    if monitor_port is not None:
        config["http_port"] = monitor_port
    config_file = state_dir / "nats.conf"
    fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=2)
    scheme = "tls" if identities.tls is not None else "nats"
    return NatsLayout(
        config_file=config_file,
        url=f"{scheme}://{host}:{port}",
        creds_files=identities.creds_files,
    )
