"""The embedded nats-server's configuration: JetStream on disk and one identity per service."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from pydantic import BaseModel

from bus import MAX_PAYLOAD_BYTES, SERVICE_PERMISSIONS, ServiceCredentials

_PASSWORD_BYTES = 24


class NatsLayout(BaseModel):
    """Where `write_nats_config` put things."""

    config_file: Path
    url: str
    creds_files: dict[str, Path]  # service -> its credentials file


def _credentials(creds_dir: Path, service: str) -> tuple[Path, ServiceCredentials]:
    """Reuse a service's password across restarts; make one the first time."""
    path = creds_dir / f"{service}.json"
    if path.exists():
        return path, ServiceCredentials.model_validate_json(path.read_text())
    creds = ServiceCredentials(user=service, password=secrets.token_urlsafe(_PASSWORD_BYTES))
    # Created 0600 from the start: the file must never be readable by anyone else, not even
    # for the instant between create and chmod.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(creds.model_dump_json())
    return path, creds


def write_nats_config(
    state_dir: Path,
    port: int,
    host: str = "127.0.0.1",
    store_dir: Path | None = None,
    monitor_port: int | None = None,
) -> NatsLayout:
    """Write `nats.conf` (JSON, which nats-server reads) and per-service credentials.

    `store_dir` is where JetStream keeps its data as the server sees it (a container mounts
    it elsewhere than the state dir); `monitor_port` opens /healthz for health checks.
    """
    creds_dir = state_dir / "creds"
    creds_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    users = []
    creds_files = {}
    for service, permissions in SERVICE_PERMISSIONS.items():
        path, creds = _credentials(creds_dir, service)
        creds_files[service] = path
        allowed = permissions()
        users.append(
            {
                "user": creds.user,
                "password": creds.password,
                "permissions": {
                    "publish": {"allow": allowed.publish},
                    "subscribe": {"allow": allowed.subscribe},
                },
            }
        )
    config: dict[str, object] = {
        "host": host,
        "port": port,
        "server_name": "crucible",
        "max_payload": MAX_PAYLOAD_BYTES,
        "jetstream": {"store_dir": str(store_dir or (state_dir / "jetstream").resolve())},
        "authorization": {"users": users},
    }
    if monitor_port is not None:
        config["http_port"] = monitor_port
    config_file = state_dir / "nats.conf"
    fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=2)
    return NatsLayout(config_file=config_file, url=f"nats://{host}:{port}", creds_files=creds_files)
