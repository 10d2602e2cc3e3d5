"""Errors of the sandbox package. A job that fails is never one of these: it is a result."""


class SandboxError(Exception):
    """Base of every error raised by `sandbox`."""


class SandboxUnavailableError(SandboxError, RuntimeError):
    """The backend itself cannot run jobs here (missing tool, unusable cgroups); says the fix."""
