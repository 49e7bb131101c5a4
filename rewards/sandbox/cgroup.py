"""A cgroup v2 memory cap for the whole jail, where the machine delegates one to us.

`RLIMIT_AS` caps each process, but a program may start `max_procs` of them. Where our own
cgroup (v2) has the memory controller enabled for its children (`cgroup.subtree_control`
lists ``memory``) and we may write to it, as in a systemd unit with ``Delegate=yes`` or a
container that owns its cgroup, each `Sandbox` runs its jail in a child cgroup of its own,
``lmsb-<hex>``:

- ``memory.max``: all programs of the pool together (the server and its monitors included);
- ``memory.swap.max`` 0: the cap is not a slow path to swap;
- ``memory.oom.group`` 0: the kernel kills the program that overflows, not the whole pool.

The jail's first process moves itself into that cgroup before it execs bubblewrap (a shell
that writes its own pid to ``cgroup.procs``), so nothing the jail forks starts outside it. The
cgroup is removed when the server exits. Elsewhere (cgroup v1, no delegation) `find` returns
None and `RLIMIT_AS` per process is the only memory cap; `Sandbox.protections` says which.

Imports: standard library only.
"""

from __future__ import annotations

import os
import shutil

PREFIX = "lmsb-"
_MOVE_SELF = 'echo $$ > "$1/cgroup.procs" || exit 126; shift; exec "$@"'


def own_cgroup(mountinfo: str = "/proc/self/mountinfo", cgroup_file: str = "/proc/self/cgroup") -> str | None:
    """The directory of this process's cgroup v2, or None (no cgroup2 mount, or v1 only)."""
    try:
        with open(cgroup_file) as f:
            rel = next((line.strip()[3:] for line in f if line.startswith("0::")), None)
        with open(mountinfo) as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    if rel is None:
        return None
    for fields in mounts:
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        if fields[sep + 1] == "cgroup2" and fields[3] == "/":  # the hierarchy's root is mounted here
            path = os.path.join(fields[4], rel.lstrip("/"))
            if os.path.isdir(path):
                return path
    return None


def unusable_reason(path: str) -> str | None:
    """None if `path` is a cgroup v2 dir whose children we may create with a memory cap."""
    try:
        with open(os.path.join(path, "cgroup.subtree_control")) as f:
            enabled = f.read().split()
    except OSError:
        return f"{path} is not a cgroup v2 directory"
    if "memory" not in enabled:
        return (
            f"the memory controller is not delegated to {path} (cgroup.subtree_control: {' '.join(enabled) or 'empty'})"
        )
    if not os.access(path, os.W_OK):
        return f"{path} is not writable by this user"
    return None


def find(setting: str | None = "auto") -> tuple[str | None, str]:
    """(parent cgroup dir or None, why) for a `Sandbox(cgroup=setting)`.

    ``"auto"``: our own cgroup where it is usable, else None; ``None``/``"off"``: None; a path:
    that cgroup, and `ValueError` if it is not usable (an explicit choice never degrades)."""
    if setting in (None, "off"):
        return None, "cgroup memory cap off (cgroup=None)"
    if setting == "auto":
        path = own_cgroup()
        if path is None:
            return None, "no cgroup v2 memory controller here"
        reason = unusable_reason(path)
        return (None, reason) if reason else (path, "")
    reason = unusable_reason(str(setting))
    if reason:
        raise ValueError(f"cgroup={setting!r} cannot cap the jail's memory: {reason}")
    return str(setting), ""


def sweep(parent: str) -> None:
    """Remove empty ``lmsb-*`` children that runs which died left behind."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(PREFIX)]
    except OSError:
        return
    for name in names:
        try:
            os.rmdir(os.path.join(parent, name))  # fails (EBUSY) while a live jail is inside
        except OSError:
            pass


def create(parent: str, memory_bytes: int) -> str:
    """A fresh child cgroup of `parent` capped at `memory_bytes`."""
    sweep(parent)
    path = os.path.join(parent, PREFIX + os.urandom(6).hex())
    os.mkdir(path, 0o755)
    try:
        _write(path, "memory.max", str(int(memory_bytes)))
        for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "0")):
            if os.path.exists(os.path.join(path, name)):
                _write(path, name, value)
    except BaseException:
        remove(path)
        raise
    return path


def wrap(argv: list[str], path: str, ids: tuple[int, int] | None = None) -> list[str]:
    """`argv` run by a shell that first moves itself into cgroup `path`, then execs (the same
    pid). With `ids` (uid, gid), the move happens as us and `setpriv` then drops to that user:
    moving a process needs write access where the cgroups meet, which a throwaway uid lacks."""
    drop = []
    if ids is not None:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise FileNotFoundError("setpriv (util-linux) is needed to start the jail as another user in a cgroup")
        drop = [setpriv, f"--reuid={ids[0]}", f"--regid={ids[1]}", "--clear-groups"]
    return [shutil.which("sh") or "/bin/sh", "-c", _MOVE_SELF, "lmsb-cgroup", path, *drop, *argv]


def remove(path: str | None) -> None:
    """Best effort: a cgroup can go once its last process has exited."""
    if path:
        try:
            os.rmdir(path)
        except OSError:
            pass


def _write(path: str, name: str, value: str) -> None:
    with open(os.path.join(path, name), "w") as f:
        f.write(value)
