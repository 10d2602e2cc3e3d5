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


# nats-server's answers to a publish beyond `max_msgs_per_subject` (with
# `discard_new_per_subject`) and beyond `max_msgs` (with `discard: new`).
_STORE_FAILED = 10077
_LIMITS = ("maximum messages per subject exceeded", "maximum messages exceeded")


def is_queue_full(exc: BaseException | None) -> bool:
    """Whether JetStream refused a publish because a queue (a tenant's, or all) is full."""
    description = getattr(exc, "description", None) or ""
    return getattr(exc, "err_code", None) == _STORE_FAILED and any(
        limit in description for limit in _LIMITS
    )


class SupersededError(BusError):
    """Another attempt at the same job stored an event since this one's last: this attempt's
    view of the job is stale, and it must stop writing (its events would interleave)."""


_WRONG_LAST_SEQUENCE = 10071


def is_superseded(exc: BaseException | None) -> bool:
    """Whether JetStream refused a publish whose expected last subject sequence was stale."""
    return getattr(exc, "err_code", None) == _WRONG_LAST_SEQUENCE
