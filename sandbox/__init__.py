"""Isolation: run one job in one fresh sandbox, destroyed afterwards.

Errors::

    SandboxError
     └── SandboxUnavailableError (also RuntimeError): the backend cannot run jobs here

A job that fails (non-zero exit, limits exceeded) is an `ExecResult`, never an exception.
"""

from sandbox import bwrap as _bwrap  # noqa: F401 - registers the backend
from sandbox import docker as _docker  # noqa: F401 - registers the backend
from sandbox.base import Sandbox, create_sandbox
from sandbox.errors import SandboxError, SandboxUnavailableError
from sandbox.models import (
    ExecLimits,
    ExecResult,
    ExecSpec,
    OutputChunk,
    OutputSink,
    RuntimeInfo,
    Verdict,
)
from sandbox.runtimes import LANGUAGES, RUNTIMES

__all__ = [
    "LANGUAGES",
    "RUNTIMES",
    "ExecLimits",
    "ExecResult",
    "ExecSpec",
    "OutputChunk",
    "OutputSink",
    "RuntimeInfo",
    "Sandbox",
    "SandboxError",
    "SandboxUnavailableError",
    "Verdict",
    "create_sandbox",
]
