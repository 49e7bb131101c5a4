"""The fork server: runs model-written programs, one fresh process per program, many at once.

Started by `rewards.sandbox.client.Sandbox` as its own script (`python3 -I -S -B server.py
--serve CONFIG`), normally inside the bubblewrap jail that `rewards.sandbox.jail` describes.
It never imports the `rewards` package: only the standard library and `protocol` (the wire
format, loaded from this file's directory).

Process tree inside the jail (the jail itself: new user/pid/ipc/net/uts namespaces, no
capabilities, no_new_privs, a read-only minimal filesystem, a private tmpfs /tmp):

    server      reads jobs (JSON frames on fd 0), hands them to monitors, relays results (fd 1);
     │          joins a fresh, empty session keyring first (the trainer's is out of reach)
     └─ monitor   one per worker slot: a fresh interpreter (posix_spawn of this script, never a fork
        │         of the server, which holds the queue), started again if it dies; its own nested
        │         user namespace (mapped to nobody; it holds the capabilities the jail lacks) and
        │         mount namespace, no further user namespaces below it, /proc covered. It reads
        │         only each job's header (id, limits, step kinds, the shared prelude) from one
        │         pipe; the job itself (sources, argv, files, inputs) waits in a second pipe for the
        │         process that runs it. Per job: a fresh size-capped tmpfs over /tmp (unmounting
        │         it is the clean-up), the wall clock, output caps; it kills and reaps the rest
        ├─ runner   (command chains only) a fork of the monitor that reads its job, one frame
        │  │        exactly, and runs the steps below as the monitor would
        └──┴─ program  one raw clone(2) per step into new pid + ipc namespaces (commands: + mount,
                    with a /proc of their own pid namespace, /proc/keys masked; Python: no /proc at
                    all; a Python program reads its own job from the pipe after the clone); pid 1
                    there, so its end kills all it started; rlimits (CPU, address space,
                    processes, file size, fds, RLIMIT_CORE 1), every capability dropped,
                    no_new_privs, scrubbed environment, fds 0-3 only; last, the host-compiled
                    seccomp filter (`rewards.sandbox.syscall_filter`); then Python (exec of the
                    source in a fresh __main__, compiled harness prelude first) or execve

So no process that runs a program ever held another job: the monitor it is forked from never
read one, and it read only its own, exactly, after the fork.
When the program (pid 1) ends, the kernel kills everything else in its pid namespace, and
its IPC namespace (SysV IPC, message queues) goes with it: no IPC object survives a job.
Besides stdout/stderr every program gets a result channel on fd 3 (`RESULT_FD`).

Without a jail (`allow_unsandboxed=True` on the host) the same server runs as a plain process:
no namespaces, only rlimits, the output caps and a Python audit hook (not a boundary).
"""

from __future__ import annotations

import _signal
import ctypes
import errno
import gc
import itertools
import json
import os
import resource
import selectors
import signal
import stat
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
import protocol  # noqa: E402  (this directory: the wire format, standard library only)

RESULT_FD = protocol.RESULT_FD
CHANNEL_BYTES = protocol.CHANNEL_BYTES
_frame, _unframe = protocol.frame, protocol.unframe
_FLOOD_FACTOR = 256  # reading more than this times output_bytes kills the program
_DEPTH = 2  # jobs handed to one monitor at a time when there is a backlog
_HARNESS_MODULES = ("builtins", "io", "linecache", "resource", "traceback", "types")
_PRELOAD = (  # stdlib the server imports once so each program's imports are dictionary hits
    "array bisect cmath collections copy functools heapq itertools json math operator re string"
).split()
_JAIL_TMP = "/tmp"  # where a jailed program sees its job dir


# ----------------------------------------------------------------------------------- server side

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


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_SECCOMP: list[Any] = []  # [buffer, struct sock_fprog, its address]: made once per monitor


def _load_filter(program: bytes) -> None:
    """Keep the host-compiled BPF program (`rewards.sandbox.syscall_filter`) ready to install:
    in a program process it is then one prctl() call that touches no new memory."""
    if not program or len(program) % 8 or len(program) // 8 > 4096:
        raise ValueError(f"the seccomp filter from the host is not a BPF program ({len(program)} bytes)")
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    _SECCOMP[:] = [buf, prog, ctypes.addressof(prog)]


def _install_filter(prctl: Any) -> None:
    """In a program process, as its last step before exec or the candidate's code (no_new_privs
    is already set): the seccomp filter, which it keeps across fork and exec and cannot remove."""
    if _SECCOMP and prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, _SECCOMP[2], 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "seccomp filter")


def _check_filter() -> str | None:
    """Install the filter in a throwaway child and see a keyring call refused (once per
    monitor). None if it works, else why not."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            prctl = _child_prctl()
            prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            _install_filter(prctl)
            libc = _c()
            ok = (
                libc.syscall(
                    ctypes.c_long(_SYS_KEYCTL),
                    ctypes.c_long(_KEYCTL_GET_KEYRING_ID),
                    ctypes.c_long(_KEY_SPEC_SESSION_KEYRING),
                    ctypes.c_long(0),
                )
                == -1
            )
            code = 0 if ok and ctypes.get_errno() == errno.ENOSYS else 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return (
        None
        if code == 0
        else (
            f"the seccomp filter could not be installed in a program (exit {code}: "
            "3 = prctl(PR_SET_SECCOMP) failed, 4 = keyctl was not refused)"
        )
    )


def _join_fresh_session_keyring() -> str:
    """The server (and so every process below it) leaves the trainer's session keyring for a new,
    empty one. Programs cannot use keyrings at all (the seccomp filter); this is the second layer."""
    serial = _c().syscall(ctypes.c_long(_SYS_KEYCTL), ctypes.c_long(_KEYCTL_JOIN_SESSION_KEYRING), None)
    if serial == -1:
        return f"session keyring unchanged ({os.strerror(ctypes.get_errno())})"
    return "a fresh, empty session keyring (the trainer's is out of reach)"


def _protections(jailed: bool, memory: str) -> dict[str, Any]:
    if not jailed:
        return {
            "jail": "none (allow_unsandboxed=True)",
            "network": "none",
            "filesystem": "none",
            "per_job": "none",
            "capabilities": "unchanged",
            "memory": memory,
            "python_guard": "audit hook (not a security boundary)",
        }
    return {
        "jail": "bubblewrap: user, pid, ipc, net, uts namespaces; --cap-drop ALL; die-with-parent",
        "network": "none (empty network namespace)",
        "filesystem": "read-only minimal root; each job its own size-capped tmpfs /tmp",
        "per_job": (
            "own size-capped tmpfs /tmp; per program pid and ipc namespaces (pid 1: the program); "
            "per worker a nested user and mount namespace, no further user namespaces; Python: "
            "no /proc; commands: own mount namespace and a /proc of their own pid namespace"
        ),
        "capabilities": "none (bounding set emptied); no_new_privs",
        "memory": memory,
        "process_limit": "RLIMIT_NPROC per job (one job at a time per worker user namespace)",
        "python_guard": "audit hook (defence in depth, not a boundary)",
    }


def _list_fds() -> list[int]:
    try:
        return [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(0, 1024))


def _close_fds_except(keep: set[int]) -> None:
    for fd in _list_fds():
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _children(pid: int) -> list[int]:
    try:
        if _PROC_FD:
            fd = os.open(f"{pid}/task/{pid}/children", os.O_RDONLY, dir_fd=_PROC_FD[0])
            with open(fd) as f:
                return [int(x) for x in f.read().split()]
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        pass
    if _PROC_FD:
        return []
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
                if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
                    kids.append(int(name))
            except (OSError, ValueError):
                pass
    return kids


def _kill_descendants(timeout: float = 5.0) -> None:
    """SIGKILL and reap every descendant. We are a subreaper, so orphans (even ones that called
    setsid or double-forked) are re-parented to us and show up as our children."""
    me = os.getpid()
    deadline = time.monotonic() + timeout
    while True:
        kids = _children(me)
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] != 0:
                pass
        except ChildProcessError:
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.0005 if kids else 0.002)


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


_DEV_WRITABLE = ("/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty")
_SPAWN_EVENTS = frozenset(
    {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen", "pty.spawn"}
)
_PATH_EVENTS = {
    "os.remove": (0,),
    "os.rename": (0, 1),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "shutil.rmtree": (0,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
    "os.chflags": (0,),
    "os.lchflags": (0,),
    "os.lchmod": (0,),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _audit_hook(root: str, allow_subprocess: bool):
    """Python-level guard rails for the program. A determined program can get around audit hooks
    (they are not a security boundary); the OS layers are. This layer also works without root."""
    realpath, fsdecode, getpid, getpgid = os.path.realpath, os.fsdecode, os.getpid, os.getpgid
    root = realpath(root)
    prefix = root.rstrip("/") + "/"

    def outside(path: Any) -> bool:
        if isinstance(path, int):
            return False  # an fd the program already holds
        p = fsdecode(path)
        if p in _DEV_WRITABLE or p.startswith(("/dev/fd/", "/proc/self/fd/")):
            return False
        rp = realpath(p)
        return not (rp == root or rp.startswith(prefix))

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if (
                (isinstance(mode, str) and any(c in mode for c in "wax+"))
                or (isinstance(flags, int) and flags & _WRITE_FLAGS)
            ) and outside(path):
                raise PermissionError(f"sandbox: writing outside the working directory: {path!r}")
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if i < len(args) and outside(args[i]):
                    raise PermissionError(f"sandbox: {event} outside the working directory")
        elif event.startswith("socket."):
            raise PermissionError("sandbox: network access is disabled")
        elif event.startswith("ctypes."):
            raise PermissionError("sandbox: ctypes is disabled")
        elif event in _SPAWN_EVENTS and not allow_subprocess:
            raise PermissionError(f"sandbox: {event} is disabled")
        elif event == "os.kill" and args[0] not in (0, getpid()):
            raise PermissionError("sandbox: signalling other processes is disabled")
        elif event == "os.killpg" and args[0] != getpgid(0):
            raise PermissionError("sandbox: signalling other process groups is disabled")

    return hook


def _exit_code(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        sys.stderr.write(f"{code}\n")
    except Exception:
        pass
    return 1


def _exec_python(py: dict[str, Any]) -> None:
    """Runs inside the program process (a fork of the monitor); never returns. `py` was built by
    the monitor before the fork (`_Step._python_plan`): the child does as little as possible,
    since every page it touches after the fork costs a copy."""
    sys.path = py["path"]
    sys.modules["__main__"] = main = py["main"]
    sys.addaudithook(py["hook"])
    code = 0
    try:
        if py["prelude"] is not None:
            exec(py["prelude"], main.__dict__)
        exec(compile(py["source"], "<sandbox>", "exec"), main.__dict__)
    except SystemExit as e:
        code = _exit_code(e.code)
    except BaseException:
        try:
            import traceback

            traceback.print_exc()
        except BaseException:
            pass
        code = 1
    for stream in (sys.stdout, sys.stderr, *_STREAMS[1:]):  # the program may have swapped them
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(code)


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
_SIGKILL, _SIGTERM, _SIGPIPE, _SIG_DFL = (
    int(x) for x in (signal.SIGKILL, signal.SIGTERM, signal.SIGPIPE, signal.SIG_DFL)
)


def _enter_jail(plan: dict[str, Any], monitor: int) -> None:
    """Turn the freshly forked child into the sandboxed program (order matters). The plan is
    precomputed by the monitor; what is left here has to happen in the child, written to touch
    little memory: after a fork every page first written costs a fault and a copy, and that,
    more than the work itself, is what a program's start costs."""
    os.setsid()  # own process group: the monitor kills it as one
    os.dup2(_DEVNULL[0], 0)
    for target, fd in zip((1, 2, RESULT_FD), plan["fds"]):
        os.dup2(fd, target)
    os.closerange(RESULT_FD + 1, _MAX_FD)  # one close_range() syscall on current kernels
    setrlimit = _resource().setrlimit
    for res, pair in plan["rlimits"]:
        setrlimit(res, pair)
    prctl = _child_prctl()
    if plan["jailed"]:
        _drop_privileges()  # the last privileged step: from here on, nothing is regained
    else:
        prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)  # die with the monitor
        if os.getppid() != monitor:  # the monitor died before we got here
            os._exit(125)
    os.chdir(plan["cwd"])
    # _signal, not signal, and plain ints: the enum-converting wrapper touches far more memory.
    _signal.signal(_SIGTERM, _SIG_DFL)  # the monitor's own handler
    if plan["exec"] is not None:
        _signal.signal(_SIGPIPE, _SIG_DFL)  # Python ignores it; exec'd programs expect the default
    elif not plan["jailed"]:
        prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)  # the server is not dumpable; keeps /proc/self usable
    if not plan["jailed"]:
        prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # (jailed: set with the capabilities) needed for seccomp
    _install_filter(prctl)  # last: from here on the program's own code runs


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


_PRELUDES: dict[str, Any] = {}


def _compiled_prelude(text: str) -> Any:
    """Compile a prelude once per monitor; every later fork inherits the code object."""
    code = _PRELUDES.get(text)
    if code is None:
        if len(_PRELUDES) >= 64:
            _PRELUDES.pop(next(iter(_PRELUDES)))
        code = _PRELUDES[text] = compile(text, "<prelude>", "exec")
    return code


class _Step:
    """Runs one program of a job and collects what it did (in the monitor, or a job's runner).

    With `body` (a Python job's (pipe fd, job id)), the program process itself reads the job
    (its source and files) from that pipe after the fork: the caller only ever saw the header."""

    def __init__(
        self,
        step: Mapping[str, Any],
        limits: Mapping[str, Any],
        jobdir: str,
        jailed: bool,
        nproc: int,
        env: Mapping[str, str],
        body: tuple[int, int] | None = None,
    ) -> None:
        self.step, self.limits, self.jobdir, self.jailed, self.nproc, self.env = (
            step,
            limits,
            jobdir,
            jailed,
            nproc,
            env,
        )
        self.cwd = _JAIL_TMP if jailed else jobdir  # where the program sees its dir
        self.cpu_limit = max(1, int(-(-float(limits["cpu_s"]) // 1)))
        self.body = body

    def run(self) -> dict[str, Any]:
        step, limits = self.step, self.limits
        exe = None
        if step["kind"] == "exec":
            argv = list(step["argv"])
            exe = argv[0] if "/" in argv[0] else _which(argv[0], self.env.get("PATH", ""))
            if exe is None:  # a missing toolchain is a host fault, never the program's score
                return dict(
                    returncode=127,
                    stdout="",
                    stderr=f"sandbox: command not found: {argv[0]}\n",
                    timed_out=False,
                    killed_by_signal=None,
                    duration_s=0.0,
                    error=f"command not found in the sandbox: {argv[0]}",
                )
        prelude = None
        if exe is None and step.get("prelude"):
            try:
                prelude = _compiled_prelude(step["prelude"])
            except Exception as e:  # noqa: BLE001 - a broken prelude is the caller's bug: report it
                return dict(
                    returncode=1,
                    stdout="",
                    stderr=f"sandbox: prelude does not compile: {e!r}\n",
                    timed_out=False,
                    killed_by_signal=None,
                    duration_s=0.0,
                )
        plan = {
            "rlimits": _rlimits(limits, self.nproc),
            "jailed": self.jailed,
            "jobdir": self.jobdir,
            "cwd": self.cwd,
            "exec": None if exe is None else (exe, argv, dict(self.env)),
            "python": self._python_plan(step, prelude) if exe is None else None,
        }
        pipes: list[tuple[int, int]] = []
        try:
            for _ in range(3 if self.body is None else 4):  # stdout, stderr, result channel (, set-up done)
                pipes.append(os.pipe())
            plan["fds"] = tuple(w for _, w in pipes[:3])
            t0 = time.monotonic()
            monitor = os.getpid()
            if not plan["jailed"]:
                pid = os.fork()
            elif exe is None:  # Python: the monitor's mount namespace (its /tmp is this job's)
                pid = _clone_into_job_namespaces(_PYTHON_JOB_NS)
            else:
                pid = _clone_into_job_namespaces(_EXEC_JOB_NS)
        except BaseException:  # no fd survives a failed pipe() or fork()
            for pair in pipes:
                for fd in pair:
                    os.close(fd)
            raise
        if pid == 0:
            try:
                for r, _ in pipes:
                    os.close(r)
                if plan["jailed"]:
                    _child_prctl()(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)  # die with the monitor
                    if exe is not None:
                        _exec_namespace_setup()
                if self.body is not None:
                    self._read_body(plan["python"], pipes[3][1])
                _enter_jail(plan, monitor)
                if exe is None:
                    _exec_python(plan["python"])
                else:
                    os.execve(*plan["exec"])
            except BaseException as e:  # noqa: BLE001 - report and die, whatever it was
                try:
                    os.write(2, f"sandbox: could not start program: {type(e).__name__}: {e}\n".encode())
                except BaseException:
                    pass
            os._exit(127)
        _RUNNING[0] = pid
        _BODY_TAKEN[0] = self.body is not None
        for _, w in pipes:
            os.close(w)
        try:
            res = self._watch(pid, [r for r, _ in pipes[:3]], t0)
            if self.body is not None and not _read_exactly(pipes[3][0], 1):  # it died before the program started
                res["error"] = "sandbox: the program process could not read or set up its job"
            return res
        finally:
            _RUNNING[0] = None
            for r, _ in pipes:
                try:
                    os.close(r)
                except OSError:
                    pass

    def _read_body(self, py: dict[str, Any], done_fd: int) -> None:
        """In the program process, still privileged: read this job (one frame, exactly), write its
        files, put its source into the Python plan the monitor made; then say so on `done_fd` (the
        monitor reports a fault otherwise)."""
        import linecache

        fd, job_id = self.body  # type: ignore[misc]
        job = _read_one_frame(fd)
        if not isinstance(job, dict) or job.get("id") != job_id:
            raise ValueError("the job body does not match its header")
        _write_files(self.jobdir, job.get("files") or {})
        py["source"] = source = job["steps"][0]["source"]
        linecache.cache["<sandbox>"] = (len(source), None, source.splitlines(True), "<sandbox>")  # tracebacks
        os.write(done_fd, b"1")

    def _python_plan(self, step: Mapping[str, Any], prelude: Any) -> dict[str, Any]:
        """What a Python program needs, made here so the child only has to switch to it."""
        import builtins
        import linecache
        import types

        source = step.get("source")  # None: the program process reads it (`_read_body`)
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = builtins
        if source is not None:
            linecache.cache["<sandbox>"] = (len(source), None, source.splitlines(True), "<sandbox>")  # tracebacks
        os.environ["HOME"] = os.environ["TMPDIR"] = self.cwd  # the child inherits it
        return {
            "path": [self.cwd] + [p for p in sys.path if p and p != _HERE],
            "main": main,
            "source": source,
            "prelude": prelude,
            "hook": _audit_hook(self.cwd, bool(self.limits.get("allow_subprocess"))),
        }

    def _watch(self, pid: int, fds: list[int], t0: float) -> dict[str, Any]:
        limits = self.limits
        cap = int(limits["output_bytes"])
        caps = {fds[0]: cap, fds[1]: cap, fds[2]: min(CHANNEL_BYTES, int(limits.get("channel_bytes", CHANNEL_BYTES)))}
        bufs = {fd: bytearray() for fd in fds}
        flood = max(16 << 20, _FLOOD_FACTOR * cap)
        state = {"total": 0, "truncated": False, "flooded": False}
        sel = selectors.DefaultSelector()
        for fd in fds:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        try:
            pidfd = os.pidfd_open(pid)
            sel.register(pidfd, selectors.EVENT_READ)
        except (AttributeError, OSError):
            pidfd = None

        def read(fd: int) -> bool:
            """Read what is there now; False once the pipe is at EOF."""
            while True:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    return True
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(fd)
                    return False
                room = caps[fd] - len(bufs[fd])
                if room > 0:
                    bufs[fd] += data[:room]
                if len(data) > room:
                    state["truncated"] = True
                if fd != fds[2]:
                    state["total"] += len(data)
                    if state["total"] > flood and not state["flooded"]:
                        state["flooded"] = True
                        _killpg(pid)
                if len(data) < 65536:
                    return True

        deadline = t0 + float(limits["wall_s"])
        timed_out = exited = False
        while not exited:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            # Without a pidfd, poll the exit status every few milliseconds.
            for key, _ in sel.select(min(left, 0.005) if pidfd is None else left):
                if key.fd == pidfd:
                    exited = True
                else:
                    read(key.fd)
            if pidfd is None:
                try:
                    exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
                except ChildProcessError:
                    exited = True
        duration = time.monotonic() - t0
        for fd in fds:  # what the program wrote before exiting is still in the pipes
            if fd in sel.get_map():
                read(fd)
        _killpg(pid)  # the child is unreaped (alive or zombie), so its pid/pgid cannot be reused
        _, status, usage = os.wait4(pid, 0)
        if (
            os.WIFSIGNALED(status)
            and os.WTERMSIG(status) == _SIGKILL
            and usage.ru_utime + usage.ru_stime >= self.cpu_limit - 0.05
        ):
            # pid 1 of a namespace ignores SIGXCPU: the CPU limit ends it with the hard limit's SIGKILL.
            timed_out = True
        _kill_descendants()
        end = time.monotonic() + 1.0
        while sel.get_map() and time.monotonic() < end:  # writers are gone: drain to EOF
            for key, _ in sel.select(0.05):
                if key.fd != pidfd:
                    read(key.fd)
            if pidfd is not None and list(sel.get_map()) == [pidfd]:
                break
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
        rc = os.waitstatus_to_exitcode(status)
        sig = -rc if rc < 0 else None
        timed_out = timed_out or sig == signal.SIGXCPU
        dec = lambda b: bytes(b).decode("utf-8", errors="replace")  # noqa: E731
        return dict(
            returncode=rc,
            stdout=dec(bufs[fds[0]]),
            stderr=dec(bufs[fds[1]]),
            timed_out=timed_out,
            killed_by_signal=sig,
            duration_s=duration,
            channel=dec(bufs[fds[2]]),
            truncated=state["truncated"] or state["flooded"],
            error=None,
            flooded=state["flooded"],
        )


_RUNNING: list[int | None] = [None]  # the monitor's current program, for its SIGTERM handler
_BODY_TAKEN = [False]  # a Python job's program process was started (and so read the job's body)


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _write_files(jobdir: str, files: Mapping[str, str]) -> None:
    """Write the job's files (relative path -> base64 text, as the protocol carries them)."""
    for rel, text in files.items():
        data = protocol.unb64(text)
        path = os.path.normpath(os.path.join(jobdir, rel))
        if not path.startswith(jobdir + "/"):
            raise ValueError(f"file path escapes the job directory: {rel!r}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def _which(name: str, path: str) -> str | None:
    for d in path.split(os.pathsep):
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def _rmtree(path: str) -> None:
    """Remove a job dir whatever the program left in it. fd-relative and never following
    symlinks (a program may plant links to elsewhere); chmods back what it made unreadable."""
    try:
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    except OSError:
        os.chmod(path, 0o700)
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _rmtree_fd(top)
    finally:
        os.close(top)
    os.rmdir(path)


def _rmtree_fd(dfd: int) -> None:
    for entry in os.scandir(dfd):
        name = entry.name
        try:
            is_dir = stat.S_ISDIR(os.lstat(name, dir_fd=dfd).st_mode)
        except FileNotFoundError:
            continue
        if is_dir:
            try:
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
            except PermissionError:
                os.chmod(name, 0o700, dir_fd=dfd, follow_symlinks=False)
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
            try:
                _rmtree_fd(sub)
            finally:
                os.close(sub)
            os.rmdir(name, dir_fd=dfd)
        else:
            os.unlink(name, dir_fd=dfd)


def _write_all(fd: int, data: bytes) -> bool:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue
        except OSError:
            return False
    return True


def _read_exactly(fd: int, n: int) -> bytes | None:
    """Exactly `n` bytes from a blocking pipe (never more), or None at EOF."""
    parts, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _read_one_frame(fd: int) -> Any:
    """The next job frame, read exactly (the frames queued behind it stay in the pipe), or None
    at EOF. Called by a job runner after its fork, so no other job ever enters its memory."""
    head = _read_exactly(fd, 4)
    if head is None:
        return None
    n = int.from_bytes(head, "big")
    if n > protocol.MAX_FRAME:
        raise protocol.ProtocolError(f"frame of {n} bytes announced")
    body = _read_exactly(fd, n)
    return None if body is None else json.loads(body)  # from our own server


_MAX_FD = 1 << 20
_DEVNULL: list[int] = []  # the monitor's /dev/null fd, dup'ed to each program's stdin
_JOB_SEQ = itertools.count()
_JOBDIR: list[str | None] = [None]  # the monitor's current job dir, for its SIGTERM handler


def _run_job(
    job: Mapping[str, Any], base: str, jailed: bool, nproc: int, body: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Run a job's steps in one fresh dir, then leave nothing behind. With `body`, `job` is a
    header: its one program reads the job's content itself (`_Step`)."""
    results: list[dict[str, Any]] = []
    error = None
    jobdir = None
    mounted = False
    try:
        if jailed:  # a tmpfs of its own over /tmp, in the monitor's mount namespace: the job's
            # disk is capped (it cannot fill anyone else's), other jobs' files are out of sight,
            # and unmounting it afterwards is the whole clean-up
            disk = max(int(lim.get("disk_mb", 256)) for lim in job["limits"])
            _mount("tmpfs", _JAIL_TMP, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={disk}m,mode=0700")
            mounted = True
            jobdir = _JAIL_TMP
        else:
            jobdir = _JOBDIR[0] = os.path.join(base, f"job-{os.getpid()}-{next(_JOB_SEQ)}")
            os.mkdir(jobdir, 0o700)
        _write_files(jobdir, job.get("files") or {})
        inside = _JAIL_TMP if jailed else jobdir
        env = {**_BASE_ENV, "HOME": inside, "TMPDIR": inside}
        for step, limits in zip(job["steps"], job["limits"]):
            res = _Step(step, limits, jobdir, jailed, nproc, env, body).run()
            results.append(res)
            if res["returncode"] != 0 or res["timed_out"] or res.get("error"):
                break
    except BaseException as e:  # noqa: BLE001 - a sandbox failure becomes an error result
        error = f"sandbox monitor: {type(e).__name__}: {e}"
    finally:
        _kill_descendants(2.0)
        if mounted:
            if _c().umount2(_JAIL_TMP.encode(), _MNT_DETACH) != 0 and error is None:
                error = f"sandbox monitor: umount of the job's /tmp failed: {os.strerror(ctypes.get_errno())}"
        elif jobdir:
            _remove_job_dir(jobdir)
        _JOBDIR[0] = None
    return {"id": job["id"], "results": results, "error": error}


def _remove_job_dir(path: str) -> None:
    try:
        _rmtree(path)
    except Exception:  # noqa: BLE001 - e.g. a tree nested deeper than Python recursion goes
        try:  # GNU rm walks any depth and never follows symlinks out of the tree
            pid = os.posix_spawn("/bin/rm", ["rm", "-rf", "--one-file-system", "--", path], {})
            os.waitpid(pid, 0)
        except OSError:
            pass


def _nproc(jailed: bool, max_procs: int, ours: int = 1) -> int:
    """RLIMIT_NPROC for a program; `ours`: our processes in its user namespace (the monitor, and
    the job's runner if it has one)."""
    if jailed:  # own user namespace per monitor, one job at a time: the count is this job's tasks (+ ours)
        return max_procs + ours
    return _user_tasks(os.getuid()) + max_procs  # non-root: the limit counts all tasks of our uid


_MONITOR: dict[str, Any] = {}  # the monitor's settings (from the server's config), inherited by its runners


def _monitor(head_fd: int, body_fd: int, out_fd: int, base: str, jailed: bool) -> None:
    """Body of a long-lived monitor (one per worker slot). It reads only each job's header (id,
    limits, step kinds, the shared prelude) and never a job's content (sources, argv, files,
    inputs): the process that runs the job reads that from the body pipe after its fork. A Python
    job is one program process, forked from this monitor; a command chain gets a runner, forked
    from this monitor, that reads the job and runs its steps. So a program's memory holds its own
    job and nothing other jobs brought: no queued frame, no read buffer, no freed remains."""
    runner = [0]

    def on_term(signum, frame):  # the server is going away: leave nothing behind
        if _RUNNING[0] is not None:
            _killpg(_RUNNING[0])
        if runner[0]:
            try:
                os.kill(runner[0], signal.SIGTERM)  # it kills its program and removes its dir
                deadline = time.monotonic() + 2.0
                while os.waitpid(runner[0], os.WNOHANG)[0] == 0 and time.monotonic() < deadline:
                    time.sleep(0.005)
            except OSError:
                pass
        _kill_descendants(2.0)
        if _JOBDIR[0]:
            _remove_job_dir(_JOBDIR[0])
        os._exit(1)

    signal.signal(signal.SIGTERM, on_term)
    _set_name(b"lmsb-monitor")
    os.chdir("/")
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    setup_error = None
    if jailed:
        try:
            _monitor_namespaces()
        except Exception as e:  # noqa: BLE001 - every job then reports it as a sandbox fault
            setup_error = f"sandbox monitor could not set up its namespaces: {type(e).__name__}: {e}"
    if setup_error is None and _SECCOMP:
        setup_error = _check_filter()
    while True:
        head = _read_one_frame(head_fd)
        if head is None:
            return
        if setup_error is None and head["kinds"] == ["python"]:
            _BODY_TAKEN[0] = False
            result = _run_python_job(head, body_fd, base, jailed)
            # Its body may be left in the pipe: then this monitor retires (the server requeues
            # what it sent after this job and starts a fresh monitor).
            retire = not _BODY_TAKEN[0] or result["error"] or any(r.get("error") for r in result["results"])
            if not _write_all(out_fd, _frame({**result, "retire": True} if retire else result)) or retire:
                os._exit(2)
            continue
        pid = _clone_into_job_namespaces(0)  # a plain fork, minus Python's at-fork work (we are single-threaded)
        if pid == 0:
            code = 1
            try:
                code = _runner(head, body_fd, out_fd, base, jailed, setup_error)
            finally:
                os._exit(code)
        runner[0] = pid
        _, status = os.waitpid(pid, 0)
        runner[0] = 0
        _kill_descendants(0.5)
        if status != 0:  # it could not finish its job: the server fails that job and starts a fresh monitor
            os._exit(2)


def _run_python_job(head: Mapping[str, Any], body_fd: int, base: str, jailed: bool) -> dict[str, Any]:
    """A one-step Python job, from its header: the program process reads the rest."""
    limits = head["limits"][0]
    step = {"kind": "python", "prelude": head.get("prelude")}
    return _run_job(
        {"id": head["id"], "steps": [step], "limits": [limits]},
        base,
        jailed,
        _nproc(jailed, int(limits["max_procs"])),
        body=(body_fd, head["id"]),
    )


def _runner(
    head: Mapping[str, Any], body_fd: int, out_fd: int, base: str, jailed: bool, setup_error: str | None
) -> int:
    """One job, in a fresh fork of the monitor: read the job from the body pipe (exactly one
    frame), run its steps, write the result. Returns the exit status (0: the result was written)."""

    def on_term(signum, frame):
        if _RUNNING[0] is not None:
            _killpg(_RUNNING[0])
        _kill_descendants(2.0)
        if _JOBDIR[0]:
            _remove_job_dir(_JOBDIR[0])
        os._exit(1)

    signal.signal(signal.SIGTERM, on_term)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # die with the monitor
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    job = _read_one_frame(body_fd)
    if not isinstance(job, dict) or job.get("id") != head["id"]:
        return 3
    os.close(body_fd)  # nothing more of the queue is reachable from here
    if setup_error is not None:
        return 0 if _write_all(out_fd, _frame({"id": job["id"], "results": [], "error": setup_error})) else 1
    nproc = _nproc(jailed, max(int(lim["max_procs"]) for lim in job["limits"]), ours=2)
    return 0 if _write_all(out_fd, _frame(_run_job(job, base, jailed, nproc))) else 1


_BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
_STREAMS: list[Any] = []  # stdin, stdout, stderr text streams for Python programs (fds 0-2)


def _warm_up() -> None:
    """Prepare, once, what every Python program's start would otherwise build: its std streams
    and environment; and walk its start-up path so the lazy caches it fills (codecs, interned
    names) are already in the memory every fork inherits. Faults on copied pages are what a
    forked program pays for most (more than the work itself), so less touched memory wins."""
    import io
    import resource
    import types

    os.environ.clear()
    os.environ.update(_BASE_ENV)
    os.environ.update({"HOME": "/", "TMPDIR": "/"})

    def stream(fd: int, mode: str) -> io.TextIOWrapper:  # like open(fd), minus fstat/ioctl calls
        raw = io.FileIO(fd, mode, closefd=False)
        buf = io.BufferedWriter(raw) if mode == "w" else io.BufferedReader(raw)
        return io.TextIOWrapper(buf, encoding="utf-8", errors="backslashreplace")

    _STREAMS[:] = [stream(0, "r"), stream(1, "w"), stream(2, "w")]
    for res in (
        resource.RLIMIT_CPU,
        resource.RLIMIT_AS,
        resource.RLIMIT_FSIZE,
        resource.RLIMIT_NOFILE,
        resource.RLIMIT_CORE,
        resource.RLIMIT_NPROC,
    ):
        resource.getrlimit(res)
    main = types.ModuleType("__main__")
    exec(compile("x = [i * 2 for i in range(3)]\n", "<sandbox>", "exec"), main.__dict__)
    _audit_hook("/", False)("open", ("/x", "r", 0))
    _audit_hook("/", False)("open", ("/x", "w", os.O_WRONLY))


def _header(job: Mapping[str, Any]) -> dict[str, Any]:
    """What a monitor reads of a job: its id, limits, step kinds and (a one-step Python job) the
    shared prelude. Never its sources, argv, files or inputs: the process that runs the job reads
    those from the body pipe."""
    steps = job["steps"]
    head = {"id": job["id"], "limits": job["limits"], "kinds": [step["kind"] for step in steps]}
    if len(steps) == 1 and steps[0]["kind"] == "python" and steps[0].get("prelude"):
        head["prelude"] = steps[0]["prelude"]
    return head


def _fresh_dir(parent: str) -> str:
    while True:
        path = os.path.join(parent, f"lmsb-{os.urandom(6).hex()}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue


class _Server:
    """The fork server: reads jobs from the host and hands them to its monitors (one per worker
    slot, forked once at start), relaying results back; restarts a monitor that dies."""

    def __init__(
        self, workers: int, jailed: bool, seccomp: str | None = None, seccomp_text: str = "", path: Sequence[str] = ()
    ) -> None:
        # fds 0/1 carry the protocol; move them so programs can never see them.
        self.proto_in, self.proto_out = os.dup(0), os.dup(1)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        self.workers = workers
        self.jailed = jailed
        # The trainer is not the OOM killer's first choice: everything in here is.
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
            oom = "oom_score_adj 1000"
        except OSError:
            oom = "oom_score_adj unchanged"
        _prctl(_PR_SET_DUMPABLE, 0)  # no one may open our /proc/<pid>/fd (the protocol pipes)
        self.protections = _protections(jailed, "RLIMIT_AS per process; " + oom)
        self.base = os.path.realpath(_fresh_dir("/tmp" if jailed else os.environ.get("TMPDIR", "/tmp")))
        os.chmod(self.base, 0o700)
        self.queue: deque[dict[str, Any]] = deque()
        self.monitors: dict[int, dict[str, Any]] = {}  # result fd -> {pid, req, slot, jobs, buf, out}
        self.writers: dict[int, int] = {}  # request fd -> result fd
        self.outbuf = bytearray()
        self.inbuf = bytearray()
        self.sel = selectors.DefaultSelector()
        _child_prctl()(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.protections["keyring"] = _join_fresh_session_keyring()
        if seccomp is not None:
            self.protections["syscalls"] = seccomp_text or "seccomp filter per program"
        self.protections["memory_between_jobs"] = (
            "each job is read by its own runner, forked from a monitor that never reads a job; monitors are fresh "
            "interpreters (exec), never forks of this server, which holds the queue"
        )
        self.protections["core_dumps"] = (
            "Python programs are not dumpable; RLIMIT_CORE 1 (a piped core_pattern refuses the dump), "
            "pinned by the seccomp filter"
            if resource.getrlimit(resource.RLIMIT_CORE)[1] in (resource.RLIM_INFINITY, 1)
            or resource.getrlimit(resource.RLIMIT_CORE)[1] > 1
            else "RLIMIT_CORE 0 (the host's hard limit is 0: a piped core_pattern still gets dumps of exec'd programs)"
        )
        self.monitor_cfg = {"jailed": jailed, "base": self.base, "seccomp": seccomp, "path": list(path)}

    def send(self, obj: Any) -> None:
        self.outbuf += _frame(obj)
        self._flush()

    def _flush(self) -> None:
        while self.outbuf:
            try:
                n = os.write(self.proto_out, self.outbuf)
            except BlockingIOError:
                break
            except OSError:  # the host is gone: nobody to tell
                self.outbuf.clear()
                break
            del self.outbuf[:n]
        events = selectors.EVENT_WRITE if self.outbuf else 0
        key = self.sel.get_map().get(self.proto_out)
        if events and key is None:
            self.sel.register(self.proto_out, events)
        elif not events and key is not None:
            self.sel.unregister(self.proto_out)

    def _spawn_monitor(self, slot: int) -> None:
        """A monitor is a fresh interpreter (posix_spawn of this script): nothing this server
        read (queued jobs, buffers) is in its memory, at start or after a restart."""
        fds: list[int] = []
        try:  # no fd survives a failed pipe() or spawn
            for _ in range(3):
                fds += os.pipe()
            head_r, head_w, body_r, body_w, res_r, res_w = fds
            cfg = json.dumps({**self.monitor_cfg, "head": head_r, "body": body_r, "res": res_w})
            for fd in (head_r, body_r, res_w):
                os.set_inheritable(fd, True)
            pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-I", "-S", "-B", os.path.join(_HERE, "server.py"), "--monitor", cfg],
                dict(os.environ),
            )
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        for fd in (head_r, body_r, res_w):
            os.close(fd)
        for fd in (res_r, head_w, body_w):
            os.set_blocking(fd, False)
        self.monitors[res_r] = {
            "pid": pid,
            "req": head_w,
            "body": body_w,
            "slot": slot,
            "jobs": deque(),
            "buf": bytearray(),
            "out": {head_w: bytearray(), body_w: bytearray()},
        }
        self.writers[head_w] = self.writers[body_w] = res_r
        self.sel.register(res_r, selectors.EVENT_READ)

    def _dispatch(self) -> None:
        """Idle monitors first; when jobs are waiting, also queue one more behind a running job,
        so a monitor starts its next program without a round trip through this process (which
        matters when the machine is busy and we are slow to be scheduled)."""
        while self.queue:
            mon = min(self.monitors.values(), key=lambda m: len(m["jobs"]), default=None)
            depth = 1 if len(self.queue) <= sum(not m["jobs"] for m in self.monitors.values()) else _DEPTH
            if mon is None or len(mon["jobs"]) >= depth:
                return
            job = self.queue.popleft()
            mon["jobs"].append(job)
            head = _header(job)
            if "prelude" in head:  # the program gets it compiled from its monitor
                job = {**job, "steps": [{"kind": "python", "source": job["steps"][0]["source"]}]}
            mon["out"][mon["req"]] += _frame(head)
            mon["out"][mon["body"]] += _frame(job)
            self._write_monitor(mon)

    def _write_monitor(self, mon: dict[str, Any]) -> None:
        for fd, out in mon["out"].items():
            while out:
                try:
                    n = os.write(fd, out)
                except BlockingIOError:
                    break
                except OSError:  # it died: its EOF on the result pipe is handled in _monitor_died
                    out.clear()
                    break
                del out[:n]
            key = self.sel.get_map().get(fd)
            if out and key is None:
                self.sel.register(fd, selectors.EVENT_WRITE)
            elif not out and key is not None:
                self.sel.unregister(fd)

    def _monitor_output(self, fd: int) -> None:
        mon = self.monitors[fd]
        eof = False
        while True:
            try:
                data = os.read(fd, 1 << 20)
            except BlockingIOError:
                break
            if not data:
                eof = True
                break
            mon["buf"] += data
        for msg in _unframe(mon["buf"]):  # results it wrote just before exiting count too
            if mon["jobs"]:
                mon["jobs"].popleft()
            if msg.pop("retire", False):  # it exits next: what it holds was not started
                mon["retiring"] = True
            self.send({"op": "result", **msg})
        if eof:
            self._monitor_died(fd)

    def _monitor_died(self, fd: int) -> None:
        mon = self.monitors.pop(fd)
        self.sel.unregister(fd)
        os.close(fd)
        for w in (mon["req"], mon["body"]):
            self.writers.pop(w, None)
            if w in self.sel.get_map():
                self.sel.unregister(w)
            os.close(w)
        _, status = os.waitpid(mon["pid"], 0)
        self._kill_strays()
        if mon["jobs"] and not mon.get("retiring"):  # the one it was running fails
            job = mon["jobs"].popleft()
            self.send(
                {
                    "op": "result",
                    "id": job["id"],
                    "results": [],
                    "error": f"sandbox monitor died (wait status {status})",
                }
            )
        self.queue.extendleft(reversed(mon["jobs"]))  # those queued behind it go elsewhere
        if self.running:
            self._spawn_monitor(mon["slot"])

    def _kill_strays(self) -> None:
        """Orphans of a monitor that died abnormally were re-parented to us: kill them."""
        known = {m["pid"] for m in self.monitors.values()}
        for pid in _children(os.getpid()):
            if pid not in known:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except OSError:
                    pass

    def serve(self) -> None:
        self.running = True
        for slot in range(self.workers):
            self._spawn_monitor(slot)
        self.send(
            {
                "op": "hello",
                "pid": os.getpid(),
                "protections": self.protections,
                "monitors": [m["pid"] for m in self.monitors.values()],
            }
        )
        os.set_blocking(self.proto_in, False)
        os.set_blocking(self.proto_out, False)
        self.sel.register(self.proto_in, selectors.EVENT_READ)
        while self.running:
            for key, _events in self.sel.select(1.0):
                fd = key.fd
                if fd == self.proto_in:
                    try:
                        data = os.read(fd, 1 << 20)
                    except BlockingIOError:
                        continue
                    if not data:  # the host is gone or closed us
                        self.running = False
                        break
                    self.inbuf += data
                    for msg in _unframe(self.inbuf):
                        if msg.get("op") == "run":
                            self.queue.append(msg)
                elif fd == self.proto_out:
                    self._flush()
                elif fd in self.monitors:
                    self._monitor_output(fd)
                elif fd in self.writers:
                    self._write_monitor(self.monitors[self.writers[fd]])
            self._dispatch()
        # Shutdown: monitors kill their programs and remove their dirs on SIGTERM.
        for mon in self.monitors.values():
            try:
                os.kill(mon["pid"], signal.SIGTERM)
            except OSError:
                pass
        for mon in self.monitors.values():
            os.waitpid(mon["pid"], 0)
        _kill_descendants(2.0)
        if os.path.isdir(self.base):
            _rmtree(self.base)


def _serve_main(argv: Sequence[str]) -> None:
    cfg = json.loads(argv[0]) if argv else {}
    sys.path[:0] = [p for p in cfg.get("path", []) if p not in sys.path]
    # Ctrl-C is for the host; we stop when its pipe closes. (No PR_SET_PDEATHSIG: it fires when
    # the host *thread* that started us ends, and any thread may start a server.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(1))  # monitors get SIGTERM from PDEATHSIG
    _set_name(b"lmsb-server")
    server = _Server(
        int(cfg.get("workers", 2)),
        bool(cfg.get("jailed")),
        cfg.get("seccomp"),
        str(cfg.get("seccomp_text", "")),
        cfg.get("path", []),
    )
    try:
        server.serve()
    finally:
        _kill_descendants(2.0)
        os._exit(0)


def _prepare_monitor(cfg: Mapping[str, Any]) -> None:
    """Once per monitor, before any job: what every program inherits, and the start-up work
    (imports, caches) each program would otherwise repeat."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _prctl(_PR_SET_DUMPABLE, 0)  # exec made us dumpable again: no one may open our /proc/<pid>/fd
    for mod in _PRELOAD:
        try:
            __import__(mod)
        except Exception:
            pass
    for mod in _HARNESS_MODULES:  # what the jail and _exec_python need, whatever the uid
        __import__(mod)
    _child_prctl()
    _warm_up()
    for sig in (signal.SIGINT, signal.SIGCHLD, signal.SIGXFSZ, signal.SIGXCPU):
        signal.signal(sig, signal.SIG_DFL)
    os.umask(0o077)
    sys.dont_write_bytecode = True
    sys.argv = ["<sandbox>"]
    sys.stdin, sys.stdout, sys.stderr = _STREAMS  # empty buffers on fds 0-2; the monitor never prints
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = _STREAMS
    _DEVNULL.append(os.open(os.devnull, os.O_RDWR))
    if cfg.get("seccomp"):
        _load_filter(protocol.unb64(cfg["seccomp"]))
    # Move everything allocated so far out of the collector's reach: a collection in a forked
    # child would otherwise write to every object and copy the whole heap.
    gc.collect()
    gc.freeze()


def _monitor_main(argv: Sequence[str]) -> None:
    cfg = json.loads(argv[0])
    sys.path[:0] = [p for p in cfg.get("path", []) if p not in sys.path]
    head, body, res = int(cfg["head"]), int(cfg["body"]), int(cfg["res"])
    for fd in (head, body, res):
        os.set_inheritable(fd, False)
    try:
        _prepare_monitor(cfg)
        _monitor(head, body, res, str(cfg["base"]), bool(cfg["jailed"]))
    finally:
        os._exit(0)


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    _serve_main(sys.argv[2:])
elif __name__ == "__main__" and sys.argv[1:2] == ["--monitor"]:
    _monitor_main(sys.argv[2:])
