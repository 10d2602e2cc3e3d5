"""Known job programs compiled once by the fork server: such a job must run as if compiled
for it (same output, traceback and exit), and only a file that holds exactly such a
program may run the code compiled before it came."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sandbox import ExecResult, ExecSpec, OutputChunk, zygote
from sandbox.bwrap import BwrapSandbox

# Prints its argv, then fails three lines down: the traceback must name /work/main.py.
KNOWN = 'import sys\nprint("known", sys.argv)\n\n\nraise ValueError("from line 5")\n'


async def run(sandbox: BwrapSandbox, code: str) -> ExecResult:
    async def ignore(chunk: OutputChunk) -> None:
        pass

    spec = ExecSpec(job_id="j-entries", language="python", code=code, args=["a"])
    return await sandbox.run(spec, ignore)


async def test_a_known_program_runs_as_a_fresh_interpreter_runs_it() -> None:
    warm = BwrapSandbox(python_entries=[KNOWN])
    fresh = BwrapSandbox(fork_server=False)
    try:
        await warm.check()
        await fresh.check()
        assert warm.fast_path
        for code in (KNOWN, KNOWN + "# not the known one\n"):
            ours, theirs = await run(warm, code), await run(fresh, code)
            assert (ours.stdout, ours.stderr, ours.exit_code) == (
                theirs.stdout,
                theirs.stderr,
                theirs.exit_code,
            ), (ours, theirs)
        assert 'File "/work/main.py", line 5, in <module>' in ours.stderr
    finally:
        await warm.close()
        await fresh.close()


# run_as_main given compiled code for one source: a file that holds exactly it runs that
# code (here, on purpose, not what the source says), any other file its own.
_RUNS = """
import os, sys
sys.path.insert(0, sys.argv[1])
import python_main
os.chdir(sys.argv[2])
source = sys.argv[3].encode()
compiled = {source: compile("print('the code compiled before')", "/tmp/x/main.py", "exec")}
python_main.run_as_main(os.path.join(sys.argv[2], "main.py"), [], compiled)
"""


def _run_as_main(folder: Path, file_text: str, known: str, path: str) -> str:
    (folder / "main.py").write_text(file_text)
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", _RUNS.replace("/tmp/x/main.py", path),
         str(zygote.PYTHON_MAIN_SOURCE.parent), str(folder), known],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout


def test_only_the_exact_program_at_its_path_runs_the_code_compiled_before(
    tmp_path: Path,
) -> None:
    main = str(tmp_path / "main.py")
    known = "print('the file')\n"
    assert _run_as_main(tmp_path, known, known, main) == "the code compiled before\n"
    assert _run_as_main(tmp_path, known + "\n", known, main) == "the file\n"
    # Compiled for another path: its tracebacks would name the wrong file.
    assert _run_as_main(tmp_path, known, known, "/elsewhere/main.py") == "the file\n"
