"""A worker never runs code unsandboxed: without bubblewrap it refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_worker_without_bwrap_exits_with_the_fix(tmp_path: Path) -> None:
    # A PATH with python's own dir but not the one holding bwrap.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "setpriv").symlink_to("/usr/bin/setpriv")
    result = subprocess.run(
        [sys.executable, "-m", "crucible", "worker"],
        env={**os.environ, "PATH": str(bin_dir), "CRUCIBLE_NATS_URL": "nats://127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to start without a sandbox" in result.stderr
    assert "apt-get install bubblewrap" in result.stderr
