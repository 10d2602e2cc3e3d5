"""`crucible stack-config`: everything the containerised stack reads, written once to a volume.

The compose `init` service runs it: nats-server's config with one identity per service, the
gateway's API keys file (hashes only), its signing key, and the edge's TLS certificate.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from crucible.api_keys import write_local_api_key
from crucible.natsconf import write_nats_config
from crucible.tls import make_certs

NATS_PORT = 4222
NATS_MONITOR_PORT = 8222
# nginx runs as nobody (compose.yml `user: 65534:65534`): its key is its own, readable by no
# other service (they run as root without CAP_DAC_OVERRIDE, so 0600 keeps them out).
EDGE_UID = 65534


def write_stack_config(
    out: Path, api_key: str | None, tls_hosts: tuple[str, ...], store_dir: Path
) -> str:
    """Write the stack's configuration under `out`; return the API key (to show once)."""
    out.mkdir(parents=True, exist_ok=True)
    write_nats_config(
        out, NATS_PORT, "0.0.0.0", store_dir=store_dir, monitor_port=NATS_MONITOR_PORT
    )
    key = api_key or secrets.token_urlsafe(24)
    write_local_api_key(out, key)
    signing = out / "signing.key"
    if not signing.exists():
        signing.write_text(secrets.token_urlsafe(32))
        os.chmod(signing, 0o600)
    tls = out / "tls"
    if not (tls / "server.pem").exists():
        tls.mkdir(exist_ok=True)
        make_certs(tls, tls_hosts)
        os.chown(tls / "server-key.pem", EDGE_UID, EDGE_UID)
    return key
