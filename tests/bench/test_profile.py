"""py-spy's collapsed stacks, aggregated as `python -m bench.profile` prints them."""

from __future__ import annotations

import pytest

from bench.profile import Profile

ROOT = "main (app.py);run (asyncio/runners.py);BaseEventLoop._run_once (asyncio/base_events.py)"
DISPATCH = "Handle._run (asyncio/events.py)"


def test_inclusive_and_own_shares_below_the_loop() -> None:
    profile = Profile()
    profile.add_raw(
        f"{ROOT};{DISPATCH};handle (app.py);parse (app.py) 6\n"
        f"{ROOT};{DISPATCH};handle (app.py) 2\n"
        f"{ROOT};select (selectors.py) 2\n"
    )
    table = {name: (inclusive, own) for name, inclusive, own in profile.table(top=10)}
    assert table == {
        "handle (app.py)": (0.8, 0.2),
        "parse (app.py)": (0.6, 0.6),
        "select (selectors.py)": (0.2, 0.2),
    }


def test_a_recursive_function_counts_once_per_sample_and_threads_keep_their_own_root() -> None:
    profile = Profile()
    profile.add_raw(
        f"{ROOT};{DISPATCH};walk (app.py);walk (app.py);walk (app.py) 3\n"
        f"{ROOT} 1\n"
        "Thread._bootstrap (threading.py);Thread.run (threading.py);work (pool.py) 4\n"
        "Thread._bootstrap (threading.py);Thread.run (threading.py);wait (pool.py) 2\n"
    )
    table = {name: inclusive for name, inclusive, _ in profile.table(top=10)}
    assert table["walk (app.py)"] == pytest.approx(0.3)
    assert table["work (pool.py)"] == pytest.approx(0.4)
    assert "Thread.run (threading.py)" not in table  # shared by every sample of its thread
    assert table["(own time of BaseEventLoop._run_once (asyncio/base_events.py))"] == 0.1


def test_frames_always_on_the_same_samples_are_one_row() -> None:
    chain = "outer (mw.py);middle (mw.py);inner (mw.py)"
    profile = Profile()
    profile.add_raw(
        f"{ROOT};{DISPATCH};{chain};handle (app.py) 3\n"
        f"{ROOT};{DISPATCH};{chain} 1\n"
        f"{ROOT};{DISPATCH};flush (nats.py) 4\n"
    )
    assert profile.table(top=10) == [
        ("outer (mw.py) ... inner (mw.py) (3 frames)", 0.5, 0.125),
        ("flush (nats.py)", 0.5, 0.5),
        ("handle (app.py)", 0.375, 0.375),
    ]
