"""A redelivered job is numbered past every attempt already stored, whatever JetStream counts."""

from workers.history import History


def test_a_first_delivery_is_attempt_one() -> None:
    assert History().next_attempt(delivered=1) == 1


def test_jetstreams_count_is_used_when_it_is_ahead() -> None:
    assert History(last_attempt=1).next_attempt(delivered=3) == 3


def test_a_count_lost_in_a_server_crash_does_not_reuse_an_attempt() -> None:
    assert History(last_attempt=2).next_attempt(delivered=1) == 3
