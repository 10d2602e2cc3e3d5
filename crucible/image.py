"""`crucible sandbox build-image`: the Docker backend's runtime image, from Debian packages.

Where no registry can be reached, no base image can be pulled: debootstrap builds a minimal
Debian root from the package mirror and `docker import` turns it into an image. Where a
registry is reachable, `--dockerfile` builds the same from `sandbox/runtime.Dockerfile`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import IO

DEFAULT_TAG = "crucible-runtime:latest"
SUITE = "bookworm"
# Interpreters and compilers of the runtimes in sandbox/runtimes.py (python3 with its whole
# standard library: python3-minimal lacks json, ctypes, resource...); bash comes with minbase.
PACKAGES = ("python3", "nodejs", "gcc", "g++", "libc6-dev")
DOCKERFILE = Path(__file__).resolve().parent.parent / "sandbox" / "runtime.Dockerfile"


class ImageBuildError(RuntimeError):
    """The image could not be built; the message says which step failed and why."""


def _run(argv: list[str], stdin: IO[bytes] | None = None) -> None:
    result = subprocess.run(argv, stdin=stdin, capture_output=True)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).decode(errors="replace")
        tail = "\n".join(output.splitlines()[-15:])
        raise ImageBuildError(f"{argv[0]} failed ({result.returncode}):\n{tail}")


def image_exists(tag: str = DEFAULT_TAG) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def build_with_debootstrap(
    tag: str = DEFAULT_TAG, mirror: str | None = None, packages: tuple[str, ...] = PACKAGES
) -> None:
    """debootstrap a minimal root with `packages`, then `docker import` it as `tag`."""
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap not found: apt-get install debootstrap")
    with tempfile.TemporaryDirectory(prefix="crucible-rootfs-") as root:
        argv = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, root]
        _run(argv + ([mirror] if mirror else []))
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        try:
            _run(["docker", "import", "-", tag], stdin=tar.stdout)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait()


def build_with_dockerfile(tag: str = DEFAULT_TAG) -> None:
    """`docker build` from the Dockerfile, for machines that can pull `debian:bookworm-slim`."""
    _run(["docker", "build", "-t", tag, "-f", str(DOCKERFILE), str(DOCKERFILE.parent)])
