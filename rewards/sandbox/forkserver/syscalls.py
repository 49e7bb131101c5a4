"""Linux system calls the fork server makes through ctypes (libc): prctl, mount, a raw clone(2)
into a job's namespaces, dropping capabilities, the monitor's own user and mount namespaces, a
job's /proc, and leaving the trainer's session keyring.

Everything here is the thin layer over the kernel; what runs when is decided by `program`,
`monitor` and `event_loop`. The seccomp filter has a module of its own (`seccomp`). Constants are
x86_64 where they differ by architecture.
"""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Any

_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x08000000, 0x10000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_CHILD_SUBREAPER = 1, 4, 36
_SYS_MOUNT_SETATTR, _AT_FDCWD, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_SYS_KEYCTL, _KEYCTL_GET_KEYRING_ID, _KEYCTL_JOIN_SESSION_KEYRING = 250, 0, 1  # x86_64
_KEY_SPEC_SESSION_KEYRING = -3


_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _prctl(option: int, arg: int) -> bool:
    try:
        return _c().prctl(option, ctypes.c_ulong(arg), 0, 0, 0) == 0
    except Exception:
        return False


def _set_name(name: bytes) -> None:
    """Name the process (ps, top, perf show it) so sandbox processes are easy to find."""
    try:
        _c().prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME
    except Exception:
        pass


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if _c().mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


_CLONE_NEWPID = 0x20000000
_PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
_SYS_CAPSET = 126  # x86_64
_PYTHON_JOB_NS = _CLONE_NEWPID | _CLONE_NEWIPC  # + the monitor's own user and mount namespaces
_EXEC_JOB_NS = _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWNS
_MNT_DETACH = 2
_PROC_FD: list[int] = []  # a monitor's handle on the jail's /proc, which its programs do not see


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_privileges() -> None:
    """Drop every capability (bounding set, ambient, effective/permitted/inheritable) and set
    no_new_privs. Raises if the capability sets could not be cleared."""
    libc = _c()
    for cap in range(64):
        libc.prctl(_PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0)  # EINVAL past the last cap
    libc.prctl(_PR_CAP_AMBIENT, ctypes.c_ulong(_PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    hdr = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if libc.syscall(ctypes.c_long(_SYS_CAPSET), ctypes.byref(hdr), ctypes.byref(data)) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "no_new_privs")


_SYS_CLONE = 56  # x86_64


def _monitor_namespaces() -> None:
    """Once per monitor (jailed mode): its own user namespace (so it holds the capabilities to
    make per-job namespaces, which the jail itself has none of) and mount namespace; no user
    namespace can be made below it; /proc covered by an empty read-only tmpfs (kept as an fd
    for the monitor's own use)."""
    libc = _c()
    _PROC_FD.append(os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(user, mount)")
    # Map ourselves (as `nobody` inside), so the tmpfs we mount per job can own files. Our
    # /proc/self files are writable only while we are dumpable.
    _prctl(_PR_SET_DUMPABLE, 1)
    try:
        for name, text in (
            ("self/setgroups", "deny"),
            ("self/uid_map", f"65534 {uid} 1"),
            ("self/gid_map", f"65534 {gid} 1"),
        ):
            fd = os.open(name, os.O_WRONLY, dir_fd=_PROC_FD[0])
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
    finally:
        _prctl(_PR_SET_DUMPABLE, 0)
    fd = os.open("sys/user/max_user_namespaces", os.O_WRONLY, dir_fd=_PROC_FD[0])
    try:  # per user namespace: nothing below ours can make itself a fresh set of capabilities
        os.write(fd, b"0")
    finally:
        os.close(fd)
    _mount("tmpfs", "/proc", "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | 8, "size=4k,mode=555")


def _clone_into_job_namespaces(flags: int) -> int:
    """fork(), but the child starts in new namespaces (`flags`): pid 1 of its own pid
    namespace, with the monitor's capabilities until it drops them. A raw clone(2): the monitor
    is single-threaded, and the child either execs or runs Python that needs nothing fork()
    would have reset."""
    libc = _c()
    pid = libc.syscall(
        ctypes.c_long(_SYS_CLONE),
        ctypes.c_ulong(flags | int(signal.SIGCHLD)),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"clone(pid, ipc[, mount]): {os.strerror(err)}")
    return pid


def _exec_namespace_setup() -> None:
    """In an exec'd program's process (pid 1 of its own pid and mount namespaces), before it
    drops its capabilities: a fresh /proc that shows only its own processes (compilers and the
    JVM read /proc/self)."""
    if _c().umount2(b"/proc", _MNT_DETACH) != 0:
        raise OSError(ctypes.get_errno(), "umount /proc")
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | 8)  # MS_NOEXEC
    for name in ("keys", "key-users"):  # keyrings are not namespaced: these list the trainer's keys
        if os.path.exists(f"/proc/{name}"):
            _mount("/dev/null", f"/proc/{name}", None, _MS_BIND)


def _join_fresh_session_keyring() -> str:
    """The server (and so every process below it) leaves the trainer's session keyring for a new,
    empty one. Programs cannot use keyrings at all (the seccomp filter); this is the second layer."""
    serial = _c().syscall(ctypes.c_long(_SYS_KEYCTL), ctypes.c_long(_KEYCTL_JOIN_SESSION_KEYRING), None)
    if serial == -1:
        return f"session keyring unchanged ({os.strerror(ctypes.get_errno())})"
    return "a fresh, empty session keyring (the trainer's is out of reach)"


def _child_prctl() -> Any:
    """prctl bound once in the server, without ctypes' errno swapping: its first call in a fresh
    fork then touches a handful of pages instead of dozens (each one a page copy)."""
    global _PRCTL
    if _PRCTL is None:
        fn = ctypes.CDLL(None).prctl
        fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        fn.restype = ctypes.c_int
        _PRCTL = fn
    return _PRCTL


_PRCTL: Any = None
# Plain ints, for a program process's `_signal.signal` calls: the enum wrapper touches more memory.
_SIGKILL, _SIGTERM, _SIGPIPE, _SIG_DFL = (
    int(x) for x in (signal.SIGKILL, signal.SIGTERM, signal.SIGPIPE, signal.SIG_DFL)
)
