"""What every backend must do alike: languages, verdicts, limits, streaming (`sandbox` fixture)."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox import ExecLimits, ExecResult, ExecSpec, OutputChunk, Sandbox, Verdict

C_DOUBLE = '#include <stdio.h>\nint main(void) { int x; scanf("%d", &x); printf("%d\\n", 2 * x); }'
CPP_DOUBLE = (
    "#include <iostream>\nint main() { int x; std::cin >> x; std::cout << 2 * x << '\\n'; }"
)


async def run(sandbox: Sandbox, code: str, language: str = "python", **fields: Any) -> ExecResult:
    chunks: list[OutputChunk] = []

    async def collect(chunk: OutputChunk) -> None:
        chunks.append(chunk)

    limits = ExecLimits(**fields.pop("limits", {}))
    spec = ExecSpec(job_id="j-conf", language=language, code=code, limits=limits, **fields)
    result = await sandbox.run(spec, collect)
    # What streamed is what the result keeps, in order.
    for stream in ("stdout", "stderr"):
        assert "".join(c.data for c in chunks if c.stream == stream) == getattr(result, stream)
    return result


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "print(2 * int(input()))"),
        ("javascript", "const fs = require('fs');\nconsole.log(2 * Number(fs.readFileSync(0)))"),
        ("bash", "read -r x; echo $((2 * x))"),
        ("c", C_DOUBLE),
        ("cpp", CPP_DOUBLE),
    ],
)
async def test_every_language_reads_stdin_and_writes_stdout(
    sandbox: Sandbox, language: str, code: str
) -> None:
    result = await run(sandbox, code, language, stdin="21\n")
    assert (result.verdict, result.stdout) == (Verdict.ACCEPTED, "42\n"), result


@pytest.mark.parametrize(
    ("code", "language", "limits", "verdict"),
    [
        ("raise SystemExit(3)", "python", {}, Verdict.RUNTIME_ERROR),
        (
            "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)",
            "python",
            {},
            Verdict.RUNTIME_ERROR,
        ),
        ("import time\ntime.sleep(30)", "python", {"wall_time_s": 1}, Verdict.TIME_LIMIT_EXCEEDED),
        ("while True: pass", "python", {"cpu_time_s": 1}, Verdict.TIME_LIMIT_EXCEEDED),
        (
            "b = bytearray(300 * 2**20)\nb[::4096] = b'x' * len(b[::4096])",
            "python",
            {"memory_mb": 64},
            Verdict.MEMORY_LIMIT_EXCEEDED,
        ),
        (
            "while True: print('y' * 99)",
            "python",
            {"output_bytes": 5000},
            Verdict.OUTPUT_LIMIT_EXCEEDED,
        ),
        ("int main(void) { return nope; }", "c", {}, Verdict.COMPILATION_ERROR),
        ("int main() { for (;;) {} }", "cpp", {"cpu_time_s": 1}, Verdict.TIME_LIMIT_EXCEEDED),
    ],
    ids=["exit", "signal", "wall", "cpu", "memory", "output", "compile", "compiled-cpu"],
)
async def test_verdicts(
    sandbox: Sandbox, code: str, language: str, limits: dict[str, float], verdict: Verdict
) -> None:
    result = await run(sandbox, code, language, limits=limits)
    assert result.verdict is verdict, result


async def test_exit_code_and_signal_are_reported(sandbox: Sandbox) -> None:
    exited = await run(sandbox, "raise SystemExit(3)")
    assert (exited.exit_code, exited.signal) == (3, None), exited
    killed = await run(sandbox, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert (killed.exit_code, killed.signal) == (None, "SIGSEGV"), killed
    # An uncaught KeyboardInterrupt ends python3 by SIGINT, started interpreters included.
    interrupted = await run(sandbox, "import os, signal\nos.kill(os.getpid(), signal.SIGINT)")
    assert (interrupted.exit_code, interrupted.signal) == (None, "SIGINT"), interrupted
    assert "KeyboardInterrupt" in interrupted.stderr


async def test_python_jobs_take_none_of_the_platforms_future_imports(sandbox: Sandbox) -> None:
    # The fork server and the Docker keeper compile a job in an interpreter running our code,
    # which has `from __future__ import annotations`: the job's annotations must still be
    # evaluated, as under `python3 main.py` (they were strings there).
    code = "def f(x: int) -> None: pass\nprint(f.__annotations__)"
    result = await run(sandbox, code)
    assert result.stdout == "{'x': <class 'int'>, 'return': None}\n", result.stdout


async def test_python_jobs_start_in_the_main_module_python3_gives(sandbox: Sandbox) -> None:
    # What `python3 main.py` puts in __main__ before the first line runs (the forked
    # interpreters had no __annotations__ nor __cached__: a NameError for either).
    code = "print(sorted(k for k in globals()), __annotations__, __cached__, __spec__)"
    names = ["__annotations__", "__builtins__", "__cached__", "__doc__", "__file__",
             "__loader__", "__name__", "__package__", "__spec__"]  # fmt: skip
    result = await run(sandbox, code)
    assert result.stdout == f"{names} {{}} None None\n", result.stdout + result.stderr


async def test_files_and_args(sandbox: Sandbox) -> None:
    result = await run(
        sandbox,
        "import sys, lib.helper as h\nprint(h.f(sys.argv[1]))",
        files={"lib/__init__.py": "", "lib/helper.py": "def f(x):\n    return x * 2\n"},
        args=["ab"],
    )
    assert result.stdout == "abab\n", result
