"""The seccomp filter every job runs under: the kernel's riskiest interfaces answer EPERM.

Allow by default (a language runtime needs hundreds of ordinary syscalls) and refuse the ones
that widen the attack surface or escape namespaces. bwrap loads the compiled BPF program
with `--seccomp FD` after it has built the sandbox, so only the job is filtered.
"""

from __future__ import annotations

import errno
import json
import os
from functools import cache

import pyseccomp as seccomp

DENIED_SYSCALLS = (
    # Filesystems and namespaces: the sandbox's mounts and namespaces are final.
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    # Reaching into other processes.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    # Kernel keyrings, eBPF, perf: large, often-exploited kernel surfaces.
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    # io_uring bypasses seccomp for the operations it performs (isolate 2.6 disables it too).
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    # userfaultfd makes kernel races easy to win.
    "userfaultfd",
    # The machine itself.
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "syslog",
    "quotactl",
    "vhangup",
    "iopl",
    "ioperm",
    # File handles sidestep path permissions (the "shocker" container escape).
    "open_by_handle_at",
    "name_to_handle_at",
    "lookup_dcookie",
    "nfsservctl",
    "uselib",
    "personality",
    # Watching files the jobs share with the host and each other (the read-only system dirs)
    # tells a job what other jobs and the host open; inotify's instances are also counted
    # per uid, which every job shares.
    "inotify_init",
    "inotify_init1",
    "inotify_add_watch",
    "fanotify_init",
    "fanotify_mark",
    # POSIX message queues: their bytes are counted per uid too, so one job could use up
    # every other job's.
    "mq_open",
    # Rarely used, and only kernel attack surface to a job.
    "modify_ldt",
    "memfd_secret",
)
# Socket families refused: vsock reaches the virtual machine's host whatever the network
# namespace (it is not one of the families a namespace confines).
DENIED_SOCKET_FAMILIES = (40,)  # AF_VSOCK
# prlimit64 on another process (its first argument a pid, not 0 for itself): the kernel lets
# a process of the same uid change another's limits, dumpable or not, so a job could lower
# those of the Docker keeper or of its namespace's init and have the kernel kill it.
# Namespace flags that clone() must not carry; unshare() is refused outright above.
_CLONE_NAMESPACES = (
    0x10000000  # CLONE_NEWUSER
    | 0x00020000  # CLONE_NEWNS
    | 0x40000000  # CLONE_NEWNET
    | 0x20000000  # CLONE_NEWPID
    | 0x08000000  # CLONE_NEWIPC
    | 0x04000000  # CLONE_NEWUTS
    | 0x02000000  # CLONE_NEWCGROUP
)


# The fork server (`zygote_server.py`) builds each job's namespaces and mounts itself, so its
# own filter lets these through; each job's init installs the whole filter before the job.
_ZYGOTE_NEEDS = ("mount", "unshare", "setns")


@cache
def _program(zygote: bool = False) -> bytes:
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        if zygote and name in _ZYGOTE_NEEDS:
            continue
        try:
            rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (ValueError, RuntimeError):
            # A syscall this architecture does not have cannot be called either.
            continue
    for flag in (1 << bit for bit in range(32) if _CLONE_NAMESPACES & (1 << bit)):
        rules.add_rule(
            seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag)
        )
    for family in DENIED_SOCKET_FAMILIES:
        rules.add_rule(seccomp.ERRNO(errno.EPERM), "socket", seccomp.Arg(0, seccomp.EQ, family))
    rules.add_rule(seccomp.ERRNO(errno.EPERM), "prlimit64", seccomp.Arg(0, seccomp.NE, 0))
    # clone3 passes its flags in memory, out of a filter's sight: ENOSYS makes libc fall
    # back to clone(), whose flags the rules above can see.
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    fd = os.memfd_create("crucible-seccomp", 0)
    with open(fd, "w+b") as program:
        rules.export_bpf(program)
        program.seek(0)
        return program.read()


def job_program() -> bytes:
    """The compiled BPF program every job runs under."""
    return _program()


def zygote_program() -> bytes:
    """The compiled BPF program of the fork server: the job's, less what it needs to build one."""
    return _program(zygote=True)


def seccomp_fd() -> int:
    """A fresh fd holding the compiled filter, positioned for bwrap to read; caller closes."""
    fd = os.memfd_create("crucible-seccomp", 0)
    os.write(fd, _program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@cache
def docker_profile() -> str:
    """The same filter as a Docker seccomp profile (JSON), for `security_opt=["seccomp=..."]`."""
    namespace_flags = [1 << bit for bit in range(32) if _CLONE_NAMESPACES & (1 << bit)]
    rules: list[dict[str, object]] = [
        {"names": list(DENIED_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
    ]
    rules += [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.EPERM,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        }
        for flag in namespace_flags
    ]
    rules += [
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.EPERM,
            "args": [{"index": 0, "value": family, "op": "SCMP_CMP_EQ"}],
        }
        for family in DENIED_SOCKET_FAMILIES
    ]
    rules.append(
        {
            "names": ["prlimit64"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.EPERM,
            "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_NE"}],
        }
    )
    return json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules})
