"""The embedded nats-server's configuration: JetStream on disk, one identity per service, and
optionally a cluster of several nodes on one machine (routes between them)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from pydantic import BaseModel

from bus import MAX_PAYLOAD_BYTES
from crucible.creds import AuthMode, write_credentials
from crucible.tls import DEFAULT_HOSTS

_CLUSTER_NAME = "crucible"


class NatsLayout(BaseModel):
    """Where `write_nats_config` put things."""

    config_files: list[Path]  # one per node
    url: str  # every node's URL, comma-separated
    creds_files: dict[str, Path]  # service -> its credentials file

    @property
    def config_file(self) -> Path:
        return self.config_files[0]


def _write_private_json(path: Path, config: dict[str, object]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=2)


def write_nats_config(
    state_dir: Path,
    port: int,
    host: str = "127.0.0.1",
    store_dir: Path | None = None,
    monitor_port: int | None = None,
    auth: AuthMode = AuthMode.NKEY,
    tls_hosts: tuple[str, ...] = DEFAULT_HOSTS,
    route_ports: list[int] | None = None,
) -> NatsLayout:
    """Write each node's config (JSON, which nats-server reads) and per-service credentials.

    One node by default (`nats.conf`); with `route_ports`, one node per route port
    (`nats-<n>.conf`, client port `port + n - 1`) joined in a cluster. `store_dir` is where
    JetStream keeps its data as the server sees it (a container mounts it elsewhere than the
    state dir); `monitor_port` opens /healthz for health checks.
    """
    identities = write_credentials(state_dir / "creds", auth, tls_hosts)
    scheme = "tls" if identities.tls is not None else "nats"
    nodes = len(route_ports or [0])
    # Routes authenticate too: no process on the host joins the cluster uninvited.
    route_user, route_password = "route", secrets.token_urlsafe(24)
    config_files, urls = [], []
    for index in range(nodes):
        name = "crucible" if nodes == 1 else f"crucible-{index + 1}"
        store = store_dir or (state_dir / ("jetstream" if nodes == 1 else f"jetstream-{index + 1}"))
        config: dict[str, object] = {
            "host": host,
            "port": port + index,
            "server_name": name,
            "max_payload": MAX_PAYLOAD_BYTES,
            "jetstream": {"store_dir": str(store.resolve())},
            "authorization": {"users": identities.users},
        }
        if route_ports:
            config["cluster"] = {
                "name": _CLUSTER_NAME,
                "listen": f"{host}:{route_ports[index]}",
                "authorization": {"user": route_user, "password": route_password},
                "routes": [
                    f"nats-route://{route_user}:{route_password}@{host}:{other}"
                    for other in route_ports
                    if other != route_ports[index]
                ],
            }
        if identities.tls is not None:
            config["tls"] = identities.tls
        if monitor_port is not None:
            config["http_port"] = monitor_port + index
        config_file = state_dir / ("nats.conf" if nodes == 1 else f"nats-{index + 1}.conf")
        _write_private_json(config_file, config)
        config_files.append(config_file)
        urls.append(f"{scheme}://{host}:{port + index}")
    return NatsLayout(
        config_files=config_files, url=",".join(urls), creds_files=identities.creds_files
    )
