"""A worker's configuration, from `CRUCIBLE_WORKER_*` environment variables."""

from __future__ import annotations

import os
import socket

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(BaseSettings):
    """Everything an operator can set for one worker process."""

    model_config = SettingsConfigDict(env_prefix="CRUCIBLE_WORKER_")

    worker_id: str = Field(default_factory=_default_worker_id)
    concurrency: int = Field(1, ge=1, le=64)  # jobs run at once by this process
    sandbox: str = Field("bwrap", validation_alias="CRUCIBLE_SANDBOX")
    heartbeat_interval_s: float = Field(2.0, gt=0)
    # How long one fetch waits for a job; also bounds how late a SIGTERM is noticed.
    fetch_wait_s: float = Field(1.0, gt=0)
    # On SIGTERM running jobs get this long to finish before they are handed back.
    shutdown_grace_s: float = Field(30.0, ge=0)
    # Prometheus /metrics on this address and port; no port: not served.
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_host: str = "0.0.0.0"
