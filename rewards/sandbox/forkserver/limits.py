"""A program's resource limits: the rlimits it runs under (CPU, address space, file size, fds,
RLIMIT_CORE 1, processes), never above the server's own hard limits, and the RLIMIT_NPROC that
makes `Limits.max_procs` a per-job count.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def _resource() -> Any:
    import resource  # preloaded by the server

    return resource


# RLIMIT_CORE 1, not 0: the kernel ignores RLIMIT_CORE for a piped core_pattern (apport,
# systemd-coredump run as root on the host) except the value 1, which it reserves to stop
# recursive dumps and so refuses the dump; a file dump needs at least a page. The seccomp filter
# keeps a program from lowering it to 0.
_CORE_LIMIT = 1


def _rlimits(limits: Mapping[str, Any], nproc: int) -> list[tuple[int, tuple[int, int]]]:
    """(resource, (soft, hard)) for a program, never above our own hard limits."""
    resource = _resource()
    cpu = max(1, int(-(-float(limits["cpu_s"]) // 1)))
    wanted = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, int(limits["memory_mb"]) << 20, None),
        (resource.RLIMIT_FSIZE, int(limits["file_mb"]) << 20, None),
        (resource.RLIMIT_NOFILE, int(limits["open_files"]), None),
        (resource.RLIMIT_CORE, _CORE_LIMIT, None),
        (resource.RLIMIT_NPROC, nproc, None),
    ]
    out = []
    for res, soft, hard in wanted:
        hard = soft if hard is None else hard
        cur_hard = resource.getrlimit(res)[1]
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        out.append((res, (soft, hard)))
    return out


def _user_tasks(uid: int) -> int:
    """Tasks (threads count) of `uid`: a non-root RLIMIT_NPROC counts all of them."""
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status") as f:
                    txt = f.read()
                fields = dict(line.split(":", 1) for line in txt.splitlines() if ":" in line)
                if int(fields["Uid"].split()[0]) == uid:
                    n += int(fields.get("Threads", "1"))
            except (OSError, KeyError, ValueError):
                pass
    return n


def _nproc(jailed: bool, max_procs: int, ours: int = 1) -> int:
    """RLIMIT_NPROC for a program; `ours`: our processes in its user namespace (the monitor, and
    the job's runner if it has one)."""
    if jailed:  # own user namespace per monitor, one job at a time: the count is this job's tasks (+ ours)
        return max_procs + ours
    return _user_tasks(os.getuid()) + max_procs  # non-root: the limit counts all tasks of our uid
