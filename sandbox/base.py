"""The one interface every sandbox backend implements, and the registry that picks one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sandbox.errors import SandboxError
from sandbox.models import ExecResult, ExecSpec, OutputSink, RuntimeInfo


class Sandbox(Protocol):
    """Runs one job in one fresh sandbox, destroyed afterwards."""

    name: str

    async def check(self) -> None:
        """Prove the backend works with a real probe job; raise SandboxUnavailableError if not."""

    async def run(self, spec: ExecSpec, on_output: OutputSink) -> ExecResult:
        """Run `spec`, streaming output to `on_output`. Cancelling the call kills the job."""

    def runtimes(self) -> list[RuntimeInfo]:
        """The languages this backend can run, with versions."""

    async def close(self) -> None:
        """Release what the backend holds (warm containers); it runs no job afterwards."""


_BACKENDS: dict[str, Callable[[], Sandbox]] = {}


def register(name: str) -> Callable[[Callable[[], Sandbox]], Callable[[], Sandbox]]:
    """Class decorator: make a backend available to `create_sandbox(name)`."""

    def add(factory: Callable[[], Sandbox]) -> Callable[[], Sandbox]:
        _BACKENDS[name] = factory
        return factory

    return add


def create_sandbox(name: str = "bwrap") -> Sandbox:
    """The backend called `name` (`CRUCIBLE_SANDBOX`)."""
    try:
        factory = _BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(_BACKENDS))
        raise SandboxError(f"unknown sandbox backend {name!r}; known: {known}") from None
    return factory()
