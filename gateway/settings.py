"""The gateway's configuration, from `CRUCIBLE_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus import Limits, StreamSettings
from gateway.event_feed import FEED_LINGER_S
from gateway.rate_limit import RateLimitSettings


class LimitCeilings(BaseModel):
    """The highest limits a job may ask for; above them a submission gets 422."""

    wall_time_s: float = 60.0
    cpu_time_s: float = 60.0
    memory_mb: int = 2048
    processes: int = 256
    output_bytes: int = 4 * 1024 * 1024
    disk_mb: int = 512


class GatewaySettings(BaseSettings):
    """Everything an operator can set for the gateway."""

    model_config = SettingsConfigDict(env_prefix="CRUCIBLE_", env_nested_delimiter="__")

    api_keys_file: Path = Path(".crucible/api-keys.json")
    # Signs the short-lived tokens in `events_url`; every gateway behind one load balancer
    # must share it. Unset means a random key per process (fine for one local gateway).
    signing_key: SecretStr | None = None
    event_token_ttl_s: int = Field(3600, gt=0)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    # A run's body holds up to 10,000 jobs; their total bytes are bounded here instead.
    max_run_body_bytes: int = Field(64 * 1024 * 1024, gt=0)
    max_code_bytes: int = Field(1024 * 1024, gt=0)
    max_stdin_bytes: int = Field(1024 * 1024, gt=0)
    max_files: int = Field(64, ge=0)
    # A job's or run's metadata, as JSON: records live in the gateway's caches and in NATS.
    max_metadata_bytes: int = Field(16 * 1024, gt=0)
    max_cases: int = Field(1000, ge=1)  # test cases per job
    ceilings: LimitCeilings = Field(default_factory=LimitCeilings)
    default_limits: Limits = Field(default_factory=Limits)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    # A worker not heard from for this long no longer counts towards readiness.
    worker_stale_after_s: float = Field(10.0, gt=0)
    sse_ping_s: float = Field(15.0, gt=0)
    # How long the event feed (one JetStream consumer over every new event, which the jobs'
    # live tails read) outlives its last watcher: a new one costs a consumer's creation.
    event_feed_linger_s: float = Field(FEED_LINGER_S, ge=0)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    # Failed authentications per client address (each is an audit record): then 429s, unaudited.
    auth_failures: RateLimitSettings = Field(
        default_factory=lambda: RateLimitSettings(requests_per_s=1.0, burst=30)
    )
    # The console links a job to its trace here (e.g. http://jaeger:16686) when set.
    jaeger_url: str | None = None
