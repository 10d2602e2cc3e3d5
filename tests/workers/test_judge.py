"""Comparing output with the expected one, and deciding a multi-case job's verdict."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bus import Verdict
from sandbox import ExecResult
from sandbox import Verdict as RunVerdict
from workers.judge import judge_case, judge_cases, outputs_match


@pytest.mark.parametrize(
    ("actual", "expected", "exact", "whitespace"),
    [
        ("3\n", "3\n", True, True),
        ("3", "3\n", False, True),
        ("1  2\n3 \n", "1 2 3", False, True),
        ("1\t2\r\n", "1 2\n", False, True),
        ("12\n", "1 2\n", False, False),
        ("", "", True, True),
        ("\n", "", False, True),
        ("a b", "b a", False, False),
    ],
)
def test_outputs_match(actual: str, expected: str, exact: bool, whitespace: bool) -> None:
    assert outputs_match(actual, expected, "exact") is exact
    assert outputs_match(actual, expected, "whitespace") is whitespace


def run(stdout: str, verdict: RunVerdict = RunVerdict.ACCEPTED) -> ExecResult:
    return ExecResult(verdict=verdict, exit_code=0, stdout=stdout, wall_time_s=0.5)


def test_first_failing_case_decides() -> None:
    cases = [
        judge_case(0, run("1\n"), "1\n", "exact"),
        judge_case(1, run("2\n"), "3\n", "exact"),
        judge_case(2, run("", RunVerdict.TIME_LIMIT_EXCEEDED), "4\n", "exact"),
    ]
    assert [c.verdict for c in cases] == [
        Verdict.ACCEPTED,
        Verdict.WRONG_ANSWER,
        Verdict.TIME_LIMIT_EXCEEDED,
    ]
    result = judge_cases(cases, run("2\n"), datetime.now(UTC))
    assert result.verdict is Verdict.WRONG_ANSWER
    assert result.reason is not None and result.reason.startswith("case 1:")
    assert result.stdout == "2\n" and result.wall_time_s == 1.5 and len(result.tests) == 3


def test_all_cases_accepted() -> None:
    cases = [judge_case(i, run(f"{i}\n"), f"{i}", "whitespace") for i in range(3)]
    result = judge_cases(cases, run("2\n"), datetime.now(UTC))
    assert result.verdict is Verdict.ACCEPTED and result.reason is None
