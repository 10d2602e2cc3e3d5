"""What a container's cgroup says of its job, when the engine is local (cgroupfs driver, v1)."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_MIB = 2**20


def _memory_dir(container_id: str) -> Path:
    return _CGROUP_ROOT / "memory" / "docker" / container_id


@dataclass(frozen=True)
class Usage:
    """CPU time, memory peak and OOM kills; `local` is False where the cgroup is out of sight."""

    local: bool
    cpu_time_s: float = 0.0
    memory_peak_mb: float = 0.0
    oom_killed: bool = False

    @classmethod
    def of(cls, container_id: str) -> Usage:
        memory = _memory_dir(container_id)
        cpu = _CGROUP_ROOT / "cpuacct" / "docker" / container_id
        try:
            return cls(
                local=True,
                cpu_time_s=round(int((cpu / "cpuacct.usage").read_text()) / 1e9, 4),
                memory_peak_mb=round(
                    int((memory / "memory.max_usage_in_bytes").read_text()) / _MIB, 2
                ),
                oom_killed="oom_kill 0" not in (memory / "memory.oom_control").read_text(),
            )
        except (OSError, ValueError):
            return cls(local=False)  # a remote engine's cgroups are not ours to read

    def since(self, before: Usage, keeper_mb: float) -> Usage:
        """The CPU time spent after `before`; the memory peak less the keeper's own."""
        return replace(
            self,
            cpu_time_s=round(self.cpu_time_s - before.cpu_time_s, 4),
            memory_peak_mb=round(max(self.memory_peak_mb - keeper_mb, 0.0), 2),
        )


def memory_now_mb(container_id: str) -> float:
    """The container's memory in use now; 0.0 where its cgroup cannot be read."""
    try:
        return int((_memory_dir(container_id) / "memory.usage_in_bytes").read_text()) / _MIB
    except (OSError, ValueError):
        return 0.0


def reset_peak(container_id: str) -> None:
    """Count the memory peak from now (a compiler's is not the program's); no-op if remote."""
    with suppress(OSError):  # a remote engine's cgroups are not ours to write
        (_memory_dir(container_id) / "memory.max_usage_in_bytes").write_text("0")
