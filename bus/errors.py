"""Errors of the bus package."""


class BusError(Exception):
    """Base of every error raised by `bus`."""


class BusUnavailableError(BusError, ConnectionError):
    """NATS (or one of its JetStream streams) cannot be reached or used right now."""
