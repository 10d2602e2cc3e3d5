"""A job's attempts are numbered from what is stored, not from JetStream's delivery count."""

from workers.history import History


def test_a_first_delivery_is_attempt_one() -> None:
    assert History().next_attempt() == 1


def test_a_delivery_after_a_started_attempt_is_the_next_attempt() -> None:
    assert History(last_attempt=2).next_attempt() == 3
