"""Errors of the bus package."""


class BusError(Exception):
    """Base of every error raised by `bus`."""


class BusUnavailableError(BusError, ConnectionError):
    """NATS (or one of its JetStream streams) cannot be reached or used right now."""


class QueueFullError(BusUnavailableError):
    """The tenant already has as many unfinished jobs as the JOBS stream allows it.

    A kind of unavailability: whatever was stored for the refused submission must be taken
    back exactly as when NATS is down, so the same handlers undo it.
    """


# nats-server's answer to a publish beyond `max_msgs_per_subject` with `discard_new_per_subject`.
_STORE_FAILED = 10077
_PER_SUBJECT_LIMIT = "maximum messages per subject exceeded"


def is_queue_full(exc: BaseException | None) -> bool:
    """Whether JetStream refused a publish because the subject's queue is at its cap."""
    description = getattr(exc, "description", None) or ""
    return getattr(exc, "err_code", None) == _STORE_FAILED and _PER_SUBJECT_LIMIT in description
