"""Benchmark results as data, shared by every benchmark and by `python -m bench`.

Each benchmark measures Crucible and a baseline side by side, `--rounds` times, and writes one
`BenchResult` as JSON (`--json PATH`): every round's figure is kept, the medians are what the
tables show, and a row's ratio is Crucible's median over the baseline's median. A goal is the
issue's bound on that ratio (or, where there is no baseline, on Crucible's own figure).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, JsonValue

Relation = Literal["<", "<=", ">="]


class Figure(BaseModel):
    """One side of a comparison: what ran, in which unit, and its figure in every round."""

    label: str
    unit: str  # "s", "ms", "jobs/s", "MiB"
    rounds: list[float] = Field(min_length=1)

    @property
    def median(self) -> float:
        return statistics.median(self.rounds)

    def text(self) -> str:
        return format_value(self.median, self.unit)


class Goal(BaseModel):
    """A bound the issue sets: on the ratio (Crucible / baseline) or on Crucible's figure."""

    on: Literal["ratio", "crucible"]
    relation: Relation
    limit: float
    wording: str | None = None  # the words where the bound alone says less
    unit: str = ""  # of the limit, when the goal is on Crucible's own figure

    def met(self, figure: float) -> bool:
        if self.relation == "<":
            return figure < self.limit
        if self.relation == "<=":
            return figure <= self.limit
        return figure >= self.limit

    def text(self) -> str:
        bound = f"{self.limit:.2f}x" if self.on == "ratio" else format_value(self.limit, self.unit)
        return f"{self.relation} {bound}" + (f" ({self.wording})" if self.wording else "")


class Row(BaseModel):
    """One line of the summary: a benchmark, its two figures, and its goal.

    `skipped` says why nothing was measured (no Docker engine); `problem` says why the figures
    do not count (a sample that failed, a client that missed output), which fails the goal.
    """

    benchmark: str
    crucible: Figure | None = None
    baseline: Figure | None = None
    goal: Goal | None = None
    skipped: str | None = None
    problem: str | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.crucible is None or self.baseline is None or self.baseline.median == 0:
            return None
        return self.crucible.median / self.baseline.median

    @property
    def met(self) -> bool | None:
        """Whether the goal is reached; None when there is no goal or nothing was measured."""
        if self.goal is None or self.skipped is not None:
            return None
        if self.problem is not None:
            return False
        figure = self.ratio if self.goal.on == "ratio" else self.crucible_median
        return figure is not None and self.goal.met(figure)

    @property
    def crucible_median(self) -> float | None:
        return None if self.crucible is None else self.crucible.median


class Machine(BaseModel):
    """Where and when the figures were taken: the same machine for both sides of every row."""

    cpus: int
    load_average_1m: float  # at the start: other work on the machine shares the cores
    python: str
    platform: str
    commit: str | None

    @classmethod
    def here(cls) -> Machine:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = None
        return cls(
            cpus=os.cpu_count() or 1,
            load_average_1m=os.getloadavg()[0],
            python=platform.python_version(),
            platform=platform.platform(),
            commit=commit,
        )


class BenchResult(BaseModel):
    """What one benchmark writes with `--json`."""

    name: str
    command: list[str]
    started_at: datetime
    seconds: float
    machine: Machine
    parameters: dict[str, JsonValue]
    rows: list[Row]
    details: dict[str, Any] = {}  # further figures worth keeping (every variant, ...), JSON

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> BenchResult:
        return cls.model_validate_json(path.read_text())


class Recorder:
    """Progress lines while a benchmark runs, and its `BenchResult` at the end."""

    def __init__(self, name: str, parameters: dict[str, JsonValue]) -> None:
        self.name = name
        self.parameters = parameters
        self.started_at = datetime.now(UTC)
        self.machine = Machine.here()
        self._started = time.perf_counter()

    def step(self, message: str) -> None:
        elapsed_s = time.perf_counter() - self._started
        print(f"[{self.name} {elapsed_s:5.0f} s] {message}", flush=True)

    def finish(
        self, rows: list[Row], json_path: Path | None, details: dict[str, Any] | None = None
    ) -> BenchResult:
        """Print the rows as a table, write the JSON when asked, and return the result."""
        result = BenchResult(
            name=self.name,
            command=[Path(sys.executable).name, *sys.orig_argv[1:]],
            started_at=self.started_at,
            seconds=time.perf_counter() - self._started,
            machine=self.machine,
            parameters=self.parameters,
            rows=rows,
            details=details or {},
        )
        print("\n" + markdown_table(rows) + "\n", flush=True)
        if json_path is not None:
            result.write(json_path)
        return result


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (no median is taken over nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser, rounds: int) -> None:
    """`--rounds` and `--json`, the same for every benchmark."""
    parser.add_argument(
        "--rounds", type=positive, default=rounds, help=f"medians over this many (default {rounds})"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")


def format_value(value: float, unit: str) -> str:
    # Three significant figures or so: the noise on this machine is larger than that.
    digits = 0 if value >= 100 else 1 if value >= 10 or unit == "ms" else 2
    return f"{value:,.{digits}f} {unit}"


def _cells(row: Row) -> list[str]:
    if row.skipped is not None:
        crucible = baseline = ratio = "-"
        met = f"skipped: {row.skipped}"
    else:
        crucible = row.crucible.text() if row.crucible else "-"
        baseline = f"{row.baseline.text()} ({row.baseline.label})" if row.baseline else "-"
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        met = {None: "-", True: "yes", False: "no"}[row.met]
        if row.problem is not None:
            met = f"no: {row.problem}"
    goal = row.goal.text() if row.goal else "-"
    benchmark = row.benchmark + (f" ({row.note})" if row.note else "")
    return [benchmark, crucible, baseline, ratio, goal, met]


def markdown_table(rows: list[Row]) -> str:
    """The summary as a markdown table, its columns padded so that a terminal shows it too."""
    header = ["benchmark", "Crucible", "baseline (same run)", "ratio", "goal (issue 10)", "met"]
    body = [[cell.replace("|", "\\|") for cell in _cells(row)] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])
