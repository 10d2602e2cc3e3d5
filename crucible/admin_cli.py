"""Operator commands: NATS identities (`creds`), tenants' API keys (`keys`), the audit log."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from bus import BusUnavailableError, NatsSettings
from crucible.api_keys import KEYS_FILE, add_key, read_keys, revoke_key
from crucible.creds import AuthMode, write_credentials
from gateway.auth import TENANT_PATTERN

_AUTH_FILE = "authorization.conf"
_CONNECT_DEADLINE_S = 5.0


def creds(
    out: Annotated[Path, typer.Option(help="directory to write into")] = Path(".crucible"),
    mode: Annotated[
        AuthMode, typer.Option(help="nkey (default), password (fallback), or tls (mutual TLS)")
    ] = AuthMode.NKEY,
    tls_hosts: Annotated[
        str, typer.Option(help="tls: comma-separated names and addresses of the NATS server")
    ] = "127.0.0.1,localhost",
) -> None:
    """Write one NATS identity per service (gateway, worker, debug) and nats-server's
    authorization for them (`include` it from the server's config)."""
    auth = write_credentials(out / "creds", mode, tuple(tls_hosts.split(",")))
    config: dict[str, object] = {"authorization": {"users": auth.users}}
    if auth.tls is not None:
        config["tls"] = auth.tls
    auth_file = out / _AUTH_FILE
    auth_file.write_text(json.dumps(config, indent=2))
    auth_file.chmod(0o600)
    for service, path in auth.creds_files.items():
        print(f"{service:8} CRUCIBLE_NATS_CREDS_FILE={path}")
    print(f"nats-server: add `include {auth_file.resolve()}` to its config")
    if mode is AuthMode.NKEY:
        print(f"nats CLI (read-only): nats --nkey {out / 'creds' / 'debug.nk'} stream ls")
    elif mode is AuthMode.TLS:
        tls = out / "creds" / "tls"
        print(
            f"nats CLI (read-only): nats --tlscert {tls / 'debug.pem'} "
            f"--tlskey {tls / 'debug-key.pem'} --tlsca {tls / 'ca.pem'} stream ls"
        )


KeysFile = Annotated[
    Path,
    typer.Option(
        "--file", envvar="CRUCIBLE_API_KEYS_FILE", help="the gateway's keys file (watched live)"
    ),
]
keys_app = typer.Typer(
    no_args_is_help=True,
    help="Tenants' API keys. The gateway notices changes at once: no restart. To rotate a "
    "key: add a new one, move the clients over, revoke the old one.",
)


@keys_app.command("add")
def keys_add(
    tenant: Annotated[str, typer.Option(help="letters, digits, '-' and '_'")],
    key_id: Annotated[str | None, typer.Option(help="a name for the key (default: random)")] = None,
    file: KeysFile = Path(".crucible") / KEYS_FILE,
) -> None:
    """Create a key for a tenant and print it (once: only its hash is stored)."""
    if not re.fullmatch(TENANT_PATTERN, tenant):
        raise typer.BadParameter(
            f"{tenant!r}: a tenant is 1 to 64 letters, digits, '-' and '_', starting with a "
            "letter or digit (it appears in NATS subjects)",
            param_hint="--tenant",
        )
    try:
        key = add_key(file, tenant, key_id)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise typer.BadParameter(f"{error['loc'][0]}: {error['msg']}") from None
    print(key)


@keys_app.command("revoke")
def keys_revoke(key_id: str, file: KeysFile = Path(".crucible") / KEYS_FILE) -> None:
    """Revoke a key: requests with it get 401 from the next one on."""
    removed = revoke_key(file, key_id)
    if removed is None:
        print(f"no key {key_id!r} in {file}", file=sys.stderr)
        raise typer.Exit(1)
    print(f"revoked {key_id} (tenant {removed.tenant})")


@keys_app.command("list")
def keys_list(file: KeysFile = Path(".crucible") / KEYS_FILE) -> None:
    """Key ids and their tenants (the keys themselves are not stored)."""
    for entry in read_keys(file).keys:
        print(f"{entry.key_id}\t{entry.tenant}")


NatsUrl = Annotated[str, typer.Option(envvar="CRUCIBLE_NATS_URL")]
ReadOnlyCreds = Annotated[
    Path, typer.Option(envvar="CRUCIBLE_NATS_CREDS_FILE", help="a read-only identity")
]


def _read_only_nats(url: str, creds_file: Path) -> NatsSettings:
    if not creds_file.is_file():
        print(
            f"no credentials at {creds_file}: run from where `crucible up` keeps its state "
            "(.crucible/), or point --creds-file / CRUCIBLE_NATS_CREDS_FILE at a debug.json "
            "from `crucible creds`",
            file=sys.stderr,
        )
        raise typer.Exit(1)
    # An operator's command: fail in seconds with one line, not a warning per reconnect.
    logging.getLogger("bus.connection").setLevel(logging.ERROR)
    return NatsSettings(url=url, creds_file=creds_file, connect_deadline_s=_CONNECT_DEADLINE_S)


@contextmanager
def _bus_errors() -> Iterator[None]:
    """NATS unreachable or refusing us: one line saying so, not a traceback."""
    try:
        yield
    except BusUnavailableError as exc:
        print(str(exc), file=sys.stderr)
        raise typer.Exit(1) from None


audit_app = typer.Typer(no_args_is_help=True, help="The gateway's audit log (AUDIT stream).")


@audit_app.command("tail")
def audit_tail(
    tenant: Annotated[
        str | None, typer.Option(help="only this tenant's (_anonymous: failed logins)")
    ] = None,
    last: Annotated[int, typer.Option(help="start this many records back")] = 20,
    since: Annotated[datetime | None, typer.Option(help="start at this time instead (UTC)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new ones")] = False,
    json_lines: Annotated[bool, typer.Option("--json", help="JSON lines, for jq")] = False,
    url: NatsUrl = "nats://127.0.0.1:4222",
    creds_file: ReadOnlyCreds = Path(".crucible/creds/debug.json"),
) -> None:
    """Print the audit log: submissions, cancels, failed logins, rate-limit refusals."""
    from crucible.audit_tail import run_tail

    nats = _read_only_nats(url, creds_file)
    start = since.replace(tzinfo=since.tzinfo or UTC) if since else None
    with _bus_errors():
        raise typer.Exit(run_tail(nats, tenant, last, start, follow, json_lines))


def top(
    once: Annotated[
        float | None, typer.Option(help="watch this many seconds, print one view, exit")
    ] = None,
    refresh: Annotated[float, typer.Option(help="seconds between updates")] = 1.0,
    url: NatsUrl = "nats://127.0.0.1:4222",
    creds_file: ReadOnlyCreds = Path(".crucible/creds/debug.json"),
) -> None:
    """Live view of the queue, the workers, throughput and verdicts (Ctrl-C to leave)."""
    from rich.console import Console

    from crucible.top import watch

    nats = _read_only_nats(url, creds_file)
    with suppress(KeyboardInterrupt), _bus_errors():
        asyncio.run(watch(nats, once, refresh, Console()))


def register(app: typer.Typer) -> None:
    """Add the operator commands to the `crucible` command."""
    app.command("creds")(creds)
    app.add_typer(keys_app, name="keys")
    app.add_typer(audit_app, name="audit")
    app.command("top")(top)
