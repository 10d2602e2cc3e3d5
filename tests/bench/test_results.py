"""The summary's arithmetic: ratios of medians, goals met or not, and rows that cannot count."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.results import (
    BenchResult,
    Figure,
    Goal,
    Machine,
    Row,
    add_arguments,
    markdown_table,
    positive,
)

FASTER_3X = Goal(on="ratio", relation="<=", limit=1 / 3, wording="at least 3x faster")


def figure(*rounds: float, unit: str = "s") -> Figure:
    return Figure(label="x", unit=unit, rounds=list(rounds))


def test_ratio_is_of_the_medians_and_decides_the_goal() -> None:
    row = Row(benchmark="b", crucible=figure(1.0, 9.0, 2.0), baseline=figure(6.0, 5.0, 7.0))
    assert row.ratio == 2.0 / 6.0
    assert row.model_copy(update={"goal": FASTER_3X}).met is True
    slower = Row(benchmark="b", crucible=figure(2.1), baseline=figure(6.0), goal=FASTER_3X)
    assert slower.met is False


def test_goal_on_crucibles_own_figure_is_strict_when_the_issue_says_under() -> None:
    under_250 = Goal(on="crucible", relation="<", limit=250, unit="ms")
    assert Row(benchmark="p99", crucible=figure(249.0, unit="ms"), goal=under_250).met is True
    at_limit = Row(benchmark="p99", crucible=figure(250.0, unit="ms"), goal=under_250)
    assert at_limit.met is False
    assert "| < 250 ms " in markdown_table([at_limit])
    at_least = Goal(on="ratio", relation=">=", limit=0.5)
    half = Row(benchmark="rate", crucible=figure(50.0), baseline=figure(100.0), goal=at_least)
    assert half.met is True


def test_a_problem_fails_the_goal_and_a_skip_is_neither() -> None:
    good = Row(benchmark="b", crucible=figure(1.0), baseline=figure(6.0), goal=FASTER_3X)
    assert good.model_copy(update={"problem": "163/164 passed"}).met is False
    skipped = Row(benchmark="docker", goal=FASTER_3X, skipped="no engine")
    assert skipped.met is None
    table = markdown_table([good.model_copy(update={"problem": "163/164 passed"}), skipped])
    assert "no: 163/164 passed" in table
    assert "skipped: no engine" in table


def test_table_columns_line_up_for_a_terminal() -> None:
    rows = [
        Row(benchmark="short", crucible=figure(1.0), baseline=figure(2.0), goal=FASTER_3X),
        Row(benchmark="a much longer name", crucible=figure(123.4, unit="ms")),
    ]
    lines = markdown_table(rows).splitlines()
    assert len({len(line) for line in lines}) == 1
    assert "| 0.50x |" in lines[2] and "| 123 ms " in lines[3]


def test_result_round_trips_through_json(tmp_path: Path) -> None:
    machine = Machine(cpus=2, load_average_1m=1.0, python="3.11", platform="linux", commit=None)
    result = BenchResult(
        name="b",
        command=["python", "-m", "bench.b"],
        started_at="2026-12-01T00:00:00Z",
        seconds=1.0,
        machine=machine,
        parameters={"rounds": 3},
        rows=[Row(benchmark="b", crucible=figure(1.0, 2.0), baseline=figure(4.0), goal=FASTER_3X)],
    )
    result.write(tmp_path / "b.json")
    again = BenchResult.read(tmp_path / "b.json")
    assert again == result
    assert again.rows[0].ratio == 1.5 / 4.0


def test_counts_below_one_are_refused_with_what_to_fix() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, rounds=3)
    assert parser.parse_args(["--rounds", "2"]).rounds == 2
    for wrong, said in (("0", "must be at least 1, not 0"), ("two", "'two' is not a whole")):
        with pytest.raises(argparse.ArgumentTypeError, match=said):
            positive(wrong)
