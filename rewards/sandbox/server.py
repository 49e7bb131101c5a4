"""Run untrusted, model-written programs: Python through a warm fork server, commands (g++,
javac, java, ...) through the same server's exec path.

Lives here: `Limits`, `RunResult`, `Job` (+ `python_job`, `command_job`), `Sandbox` (a handle on
one fork-server process: `run_python`, `map_python`, `run_command`, `run_commands`,
`map_commands`, `submit`) and module-level `run_python`, `map_python`, `run_command` backed by a
shared default `Sandbox`. The server half of this file runs as its own script
(`python -I -S sandbox.py --serve`), so it starts from a clean interpreter, never as a fork of
a host that holds torch or a model. Imports: standard library only.

Process tree, and what each layer does (`Sandbox.protections` says what is active here):

    host (your trainer)   jobs in / results out: length-prefixed pickles over the server's pipes
      └─ server    once: new net + mount + IPC namespaces (unprivileged: inside a user
         │         namespace), read-only root filesystem, private tmpfs /tmp; stdlib preloaded
         └─ monitor  one per worker slot, forked once; child subreaper; per job: fresh dir,
              │      wall clock, output caps, kills and reaps everything the program left
              └─ program  forked per job: setsid, rlimits (CPU, address space, processes, file
                          size, fds), its own throwaway uid when the server runs as root,
                          scrubbed environment, fds 0-3 only; Python: audit hook, then
                          exec(compile(source)) in a fresh __main__; commands: execve

Besides stdout/stderr every program gets a *result channel* on fd 3 (`RESULT_FD`), captured
separately, so a test harness can report results that program output cannot bury.
"""
from __future__ import annotations

import _signal
import ctypes
import gc
import itertools
import os
import pickle
import selectors
import signal
import stat
import struct
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

# The server is the parent of every fork: each module it holds makes every fork and exit of a
# program slower (page tables to copy and tear down), so it skips what only the host needs.
_SERVING = __name__ == "__main__" and sys.argv[1:2] == ["--serve"]
if _SERVING:
    def dataclass(*args: Any, **kwargs: Any) -> Any:  # the server never builds these types
        return args[0] if args else (lambda cls: cls)
else:
    import atexit
    import dataclasses
    import subprocess
    import threading
    from concurrent.futures import Future
    from dataclasses import dataclass

RESULT_FD = 3  # the result channel every program gets, next to stdout/stderr
CHANNEL_BYTES = 1 << 20  # cap of the result channel
_FLOOD_FACTOR = 256  # reading more than this times output_bytes kills the program
_SHARED_ROOT = "/tmp/.lmsb-shared"  # where shared read-only dirs appear inside the namespace
_DEPTH = 2  # jobs handed to one monitor at a time when there is a backlog
_HARNESS_MODULES = ("builtins", "io", "linecache", "resource", "traceback", "types")
_PRELOAD = (  # stdlib the server imports once so each program's imports are dictionary hits
    "array bisect cmath collections copy functools heapq itertools math operator re string"
).split()


# ----------------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Limits:
    """Per-program resource limits (each step of a command chain gets its own)."""

    wall_s: float = 5.0  # wall clock, enforced by the monitor (kills the whole process group)
    cpu_s: float = 5.0  # RLIMIT_CPU per process (SIGXCPU, then SIGKILL one second later)
    memory_mb: int = 512  # RLIMIT_AS: address space per process
    output_bytes: int = 64_000  # kept of stdout and of stderr each; the rest is read and dropped
    max_procs: int = 32  # RLIMIT_NPROC: tasks (processes + threads) of the program's uid
    file_mb: int = 16  # RLIMIT_FSIZE: largest file a program may write
    open_files: int = 256  # RLIMIT_NOFILE
    allow_subprocess: bool = False  # Python only: audit hook refuses fork/exec/spawn unless True


@dataclass
class RunResult:
    """What one program did. `returncode` is negative for a signal, like `subprocess`."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool  # wall clock or CPU limit hit
    killed_by_signal: int | None
    duration_s: float
    channel: str = ""  # what the program wrote to fd 3 (RESULT_FD), capped at CHANNEL_BYTES
    truncated: bool = False  # some stdout/stderr was dropped by the output cap
    error: str | None = None  # the sandbox itself failed (not the program)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.error is None


def _result_from_dict(d: Mapping[str, Any]) -> RunResult:
    return RunResult(**{f.name: d[f.name] for f in dataclasses.fields(RunResult) if f.name in d})


def _error_result(msg: str) -> RunResult:
    return RunResult(None, "", "", False, None, 0.0, error=msg)


# ----------------------------------------------------------------------------------- framing


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return struct.pack(">I", len(data)) + data


def _unframe(buf: bytearray) -> list[Any]:
    """Pop every complete frame off the front of `buf`."""
    out = []
    while len(buf) >= 4:
        (n,) = struct.unpack_from(">I", buf)
        if len(buf) < 4 + n:
            break
        out.append(pickle.loads(bytes(buf[4 : 4 + n])))
        del buf[: 4 + n]
    return out


# ----------------------------------------------------------------------------------- server side
# Everything below down to the client section runs inside the server process.

_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x08000000, 0x10000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_CHILD_SUBREAPER = 1, 4, 36
_SYS_MOUNT_SETATTR, _AT_FDCWD, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1

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


def _make_root_readonly() -> None:
    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    attr = MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0)
    rc = _c().syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(_AT_FDCWD), b"/",
                      ctypes.c_uint(_AT_RECURSIVE), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount_setattr /: {os.strerror(err)}")


_PY_PATH_MAP: dict[str, str] = {}  # import path dir -> where a program under another uid sees it


def _remap_import_paths() -> None:
    """Point sys.path and every imported package's __path__ at the mirrors, here in the server,
    so programs (its forks) import from paths their uid can read."""
    def remap(p: str) -> str:
        for src, dst in _PY_PATH_MAP.items():
            if p == src or p.startswith(src + os.sep):
                return dst + p[len(src):]
        return p

    if not _PY_PATH_MAP:
        return
    sys.path[:] = [remap(p) for p in sys.path]
    for mod in list(sys.modules.values()):
        path = getattr(mod, "__path__", None)
        if isinstance(path, list):
            path[:] = [remap(p) for p in path]
    sys.path_importer_cache.clear()


def _world_readable(path: str) -> bool:
    """Can any user list `path` (and traverse every directory above it)?"""
    try:
        p = os.path.realpath(path)
        if os.stat(p).st_mode & 0o005 != 0o005:
            return False
        while p != "/":
            p = os.path.dirname(p)
            if not os.stat(p).st_mode & 0o001:
                return False
        return True
    except OSError:
        return False


def _bind_readonly(src: str, dst: str) -> str | None:
    """Bind-mount `src` read-only at `dst` (inside our private /tmp); None if that fails."""
    try:
        os.makedirs(dst, exist_ok=True)
        for d in (_SHARED_ROOT, dst):
            os.chmod(d, 0o755)
        _mount(src, dst, None, _MS_BIND | _MS_REC)
        _mount(None, dst, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)
        return dst
    except OSError:
        return None


def _can_setuid(uid: int) -> bool:
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os._exit(0)
        except BaseException:
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def _isolate(shared_dirs: Sequence[str], probe_uid: int) -> tuple[dict[str, Any], dict[str, str | None], bool]:
    """Move the server into fresh namespaces, best effort.

    Returns (protections, shared dir map, whether /tmp is our private tmpfs)."""
    prot: dict[str, Any] = {"network": "none", "filesystem": "none", "uid": "same"}
    libc = _c()
    uid, gid = os.getuid(), os.getgid()
    ns = private_tmp = False
    if os.geteuid() == 0:  # root: plain namespaces (a user namespace would lose the uid switch)
        if libc.unshare(_CLONE_NEWNET | _CLONE_NEWNS | _CLONE_NEWIPC) == 0:
            ns, prot["network"] = True, "netns"
        elif libc.unshare(_CLONE_NEWNET) == 0:
            prot["network"] = "netns"
    elif libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWNS | _CLONE_NEWIPC) == 0:
        try:  # map ourselves onto ourselves so files keep their owner
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{uid} {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{gid} {gid} 1")
        except OSError:
            pass
        ns, prot["network"] = True, "userns+netns"
    shared: dict[str, str | None] = {}
    if ns:
        try:
            _mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # never propagate back to the host
            try:
                _make_root_readonly()
                prot["filesystem"] = "read-only root, private /tmp"
            except OSError:
                prot["filesystem"] = "private /tmp"
            _mount("tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1g,mode=0711")
            private_tmp = True
            if os.path.isdir("/dev/shm"):
                try:
                    _mount("tmpfs", "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, "size=64m,mode=0711")
                except OSError:
                    pass
            for i, src in enumerate(shared_dirs):
                shared[src] = _bind_readonly(src, f"{_SHARED_ROOT}/{i}")
            # A program running under another uid must still import the stdlib: mirror the
            # import path dirs other users cannot read (e.g. a Python under /root/.pyenv).
            for i, src in enumerate(p for p in sys.path if os.path.isdir(p)):
                if not _world_readable(src):
                    dst = _bind_readonly(os.path.realpath(src), f"{_SHARED_ROOT}/py{i}")
                    if dst:
                        _PY_PATH_MAP[src] = dst
            _remap_import_paths()
        except OSError as e:
            prot["filesystem"] = f"none ({e})"
    # Root: every in-flight program gets its own throwaway uid, so RLIMIT_NPROC is a real
    # per-program cap (root ignores it) and root-owned files are out of reach.
    hidden = [p for p in sys.path if os.path.isdir(p) and p not in _PY_PATH_MAP and not _world_readable(p)]
    if os.geteuid() == 0 and _can_setuid(probe_uid):
        if hidden:  # no way to show it the interpreter's files: stay root rather than break imports
            prot["uid"] = f"same (cannot expose {hidden[0]} to another uid)"
        else:
            prot["uid"] = "per-program uid"
    for src in shared_dirs:
        if src not in shared:  # no mount namespace: usable only if we stay the same user
            shared[src] = src if prot["uid"] == "same" else None
    if prot["uid"] == "per-program uid":
        prot["process_limit"] = "RLIMIT_NPROC per program (own uid)"
    elif os.geteuid() == 0:
        prot["process_limit"] = "none (root ignores RLIMIT_NPROC)"
    else:
        prot["process_limit"] = "RLIMIT_NPROC over all tasks of this user"
    prot["pid_cleanup"] = "subreaper" if _prctl(_PR_SET_CHILD_SUBREAPER, 1) else "process group"
    prot["python_guard"] = "audit hook: network, writes outside the job dir, subprocesses, ctypes, kill"
    return prot, shared, private_tmp


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
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        pass
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
_SPAWN_EVENTS = frozenset({"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                           "subprocess.Popen", "pty.spawn"})
_PATH_EVENTS = {"os.remove": (0,), "os.rename": (0, 1), "os.rmdir": (0,), "os.mkdir": (0,),
                "os.chmod": (0,), "os.chown": (0,), "os.link": (0, 1), "os.symlink": (1,),
                "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,), "os.setxattr": (0,),
                "os.removexattr": (0,), "os.chflags": (0,), "os.lchflags": (0,), "os.lchmod": (0,)}
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
            if ((isinstance(mode, str) and any(c in mode for c in "wax+"))
                    or (isinstance(flags, int) and flags & _WRITE_FLAGS)) and outside(path):
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
_SIGKILL, _SIGTERM, _SIGPIPE, _SIG_DFL = (int(x) for x in (signal.SIGKILL, signal.SIGTERM, signal.SIGPIPE,
                                                          signal.SIG_DFL))


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
    uid = plan["uid"]
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    # Set after setuid (a credential change clears it): die with the monitor.
    prctl = _child_prctl()
    prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
    if os.getppid() != monitor:  # the monitor died before we got here
        os._exit(125)
    os.chdir(plan["jobdir"])
    # _signal, not signal, and plain ints: the enum-converting wrapper touches far more memory.
    _signal.signal(_SIGTERM, _SIG_DFL)  # the monitor's own handler
    if plan["exec"] is not None:
        _signal.signal(_SIGPIPE, _SIG_DFL)  # Python ignores it; exec'd programs expect the default
    else:
        prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)  # setuid cleared it; keeps /proc/self usable for the program


def _resource() -> Any:
    import resource  # preloaded by the server

    return resource


def _rlimits(limits: Mapping[str, Any], nproc: int) -> list[tuple[int, tuple[int, int]]]:
    """(resource, (soft, hard)) for a program, never above our own hard limits."""
    resource = _resource()
    cpu = max(1, int(-(-float(limits["cpu_s"]) // 1)))
    wanted = [(resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, int(limits["memory_mb"]) << 20, None),
              (resource.RLIMIT_FSIZE, int(limits["file_mb"]) << 20, None),
              (resource.RLIMIT_NOFILE, int(limits["open_files"]), None), (resource.RLIMIT_CORE, 0, None),
              (resource.RLIMIT_NPROC, nproc, None)]
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
    """Runs one program of a job and collects what it did (inside the monitor)."""

    def __init__(self, step: Mapping[str, Any], limits: Mapping[str, Any], jobdir: str,
                 uid: int | None, nproc: int, env: Mapping[str, str]) -> None:
        self.step, self.limits, self.jobdir, self.uid, self.nproc, self.env = step, limits, jobdir, uid, nproc, env

    def run(self) -> dict[str, Any]:
        step, limits = self.step, self.limits
        exe = None
        if step["kind"] == "exec":
            argv = list(step["argv"])
            exe = argv[0] if "/" in argv[0] else _which(argv[0], self.env.get("PATH", ""))
            if exe is None:
                return dict(returncode=127, stdout="", stderr=f"sandbox: command not found: {argv[0]}\n",
                            timed_out=False, killed_by_signal=None, duration_s=0.0)
        prelude = None
        if exe is None and step.get("prelude"):
            try:
                prelude = _compiled_prelude(step["prelude"])
            except Exception as e:  # noqa: BLE001 - a broken prelude is the caller's bug: report it
                return dict(returncode=1, stdout="", stderr=f"sandbox: prelude does not compile: {e!r}\n",
                            timed_out=False, killed_by_signal=None, duration_s=0.0)
        plan = {"rlimits": _rlimits(limits, self.nproc), "uid": self.uid, "jobdir": self.jobdir,
                "exec": None if exe is None else (exe, argv, dict(self.env)),
                "python": self._python_plan(step, prelude) if exe is None else None}
        pipes = [os.pipe() for _ in range(3)]  # stdout, stderr, result channel
        plan["fds"] = tuple(w for _, w in pipes)
        if self.uid is not None:
            for _, w in pipes:  # pipes are mode 0600 root: let the program reopen /dev/fd/N
                os.fchown(w, self.uid, self.uid)
        t0 = time.monotonic()
        monitor = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                for r, _ in pipes:
                    os.close(r)
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
        for _, w in pipes:
            os.close(w)
        try:
            return self._watch(pid, [r for r, _ in pipes], t0)
        finally:
            _RUNNING[0] = None
            for r, _ in pipes:
                try:
                    os.close(r)
                except OSError:
                    pass

    def _python_plan(self, step: Mapping[str, Any], prelude: Any) -> dict[str, Any]:
        """What a Python program needs, made here so the child only has to switch to it."""
        import builtins
        import linecache
        import types

        source = step["source"]
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = builtins
        linecache.cache["<sandbox>"] = (len(source), None, source.splitlines(True), "<sandbox>")  # tracebacks
        os.environ["HOME"] = os.environ["TMPDIR"] = self.jobdir  # the child inherits it
        return {"path": [self.jobdir] + [p for p in sys.path if p], "main": main, "source": source,
                "prelude": prelude, "hook": _audit_hook(self.jobdir, bool(self.limits.get("allow_subprocess")))}

    def _watch(self, pid: int, fds: list[int], t0: float) -> dict[str, Any]:
        limits = self.limits
        cap = int(limits["output_bytes"])
        caps = {fds[0]: cap, fds[1]: cap, fds[2]: CHANNEL_BYTES}
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
        _, status = os.waitpid(pid, 0)
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
        return dict(returncode=rc, stdout=dec(bufs[fds[0]]), stderr=dec(bufs[fds[1]]), timed_out=timed_out,
                    killed_by_signal=sig, duration_s=duration, channel=dec(bufs[fds[2]]),
                    truncated=state["truncated"] or state["flooded"],
                    error=None)


_RUNNING: list[int | None] = [None]  # the monitor's current program, for its SIGTERM handler


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _write_files(jobdir: str, files: Mapping[str, bytes], uid: int | None) -> None:
    for rel, data in files.items():
        path = os.path.normpath(os.path.join(jobdir, rel))
        if not path.startswith(jobdir + "/"):
            raise ValueError(f"file path escapes the job directory: {rel!r}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        if uid is not None:
            d = path
            while d != jobdir:
                os.chown(d, uid, uid)
                d = os.path.dirname(d)


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


class _FrameReader:
    """Blocking frame reads from a pipe; keeps what it read past the current frame."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf, self.ready = fd, bytearray(), deque()

    def next(self) -> Any:
        """The next frame, or None at EOF."""
        while not self.ready:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except InterruptedError:
                continue
            if not chunk:
                return None
            self.buf += chunk
            self.ready.extend(_unframe(self.buf))
        return self.ready.popleft()


_MAX_FD = 1 << 20
_DEVNULL: list[int] = []  # the monitor's /dev/null fd, dup'ed to each program's stdin
_JOB_SEQ = itertools.count()
_JOBDIR: list[str | None] = [None]  # the monitor's current job dir, for its SIGTERM handler


def _run_job(job: Mapping[str, Any], base: str, uid: int | None, nproc: int) -> dict[str, Any]:
    """Run a job's steps in one fresh dir, then leave nothing behind."""
    results: list[dict[str, Any]] = []
    error = None
    jobdir = None
    try:
        jobdir = _JOBDIR[0] = os.path.join(base, f"job-{os.getpid()}-{next(_JOB_SEQ)}")
        os.mkdir(jobdir, 0o700)
        if uid is not None:
            os.chown(jobdir, uid, uid)
        _write_files(jobdir, job.get("files") or {}, uid)
        env = {**_BASE_ENV, "HOME": jobdir, "TMPDIR": jobdir}
        for step, limits in zip(job["steps"], job["limits"]):
            res = _Step(step, limits, jobdir, uid, nproc, env).run()
            results.append(res)
            if res["returncode"] != 0 or res["timed_out"]:
                break
    except BaseException as e:  # noqa: BLE001 - a sandbox failure becomes an error result
        error = f"sandbox monitor: {type(e).__name__}: {e}"
    finally:
        _kill_descendants(2.0)
        if jobdir:
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


def _monitor(req_fd: int, out_fd: int, base: str, uid: int | None, nprocs: Any) -> None:
    """Body of a long-lived monitor (one per worker slot): jobs in, results out, one at a time.
    Each program is a fresh fork of this clean process; we are the subreaper of its subtree."""

    def on_term(signum, frame):  # the server is going away: leave nothing behind
        if _RUNNING[0] is not None:
            _killpg(_RUNNING[0])
        _kill_descendants(2.0)
        if _JOBDIR[0]:
            _remove_job_dir(_JOBDIR[0])
        os._exit(1)

    signal.signal(signal.SIGTERM, on_term)
    # Settings every program inherits, made once here rather than in each program.
    for sig in (signal.SIGINT, signal.SIGCHLD, signal.SIGXFSZ, signal.SIGXCPU):
        signal.signal(sig, signal.SIG_DFL)
    os.umask(0o077)
    sys.dont_write_bytecode = True
    sys.argv = ["<sandbox>"]
    sys.stdin, sys.stdout, sys.stderr = _STREAMS  # empty buffers on fds 0-2; the monitor never prints
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = _STREAMS
    _DEVNULL.append(os.open(os.devnull, os.O_RDWR))
    _set_name(b"lmsb-monitor")
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    reader = _FrameReader(req_fd)
    while True:
        job = reader.next()
        if job is None:
            return
        nproc = nprocs(max(int(lim["max_procs"]) for lim in job["limits"]))
        if not _write_all(out_fd, _frame(_run_job(job, base, uid, nproc))):
            return


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
    for res in (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_FSIZE, resource.RLIMIT_NOFILE,
                resource.RLIMIT_CORE, resource.RLIMIT_NPROC):
        resource.getrlimit(res)
    main = types.ModuleType("__main__")
    exec(compile("x = [i * 2 for i in range(3)]\n", "<sandbox>", "exec"), main.__dict__)
    _audit_hook("/", False)("open", ("/x", "r", 0))
    _audit_hook("/", False)("open", ("/x", "w", os.O_WRONLY))


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

    def __init__(self, workers: int, shared_dirs: Sequence[str]) -> None:
        # fds 0/1 carry the protocol; move them so programs can never see them.
        self.proto_in, self.proto_out = os.dup(0), os.dup(1)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        self.workers = workers
        # Throwaway uids far from real users; random so two servers on one machine do not share.
        uid_base = (1 << 20) + int.from_bytes(os.urandom(4), "little") % ((1 << 31) - (1 << 21))
        self.protections, self.shared, private_tmp = _isolate(shared_dirs, uid_base)
        self.root = self.protections["uid"] != "same"
        self.uid_base = uid_base if self.root else None
        self.base = os.path.realpath(_fresh_dir("/tmp" if private_tmp else os.environ.get("TMPDIR", "/tmp")))
        os.chmod(self.base, 0o711)
        self.queue: deque[dict[str, Any]] = deque()
        self.monitors: dict[int, dict[str, Any]] = {}  # result fd -> {pid, req, slot, jobs, buf, out}
        self.writers: dict[int, int] = {}  # request fd -> result fd
        self.outbuf = bytearray()
        self.inbuf = bytearray()
        self.sel = selectors.DefaultSelector()
        self.user_tasks = (0, 0.0)
        for mod in _PRELOAD:
            try:
                __import__(mod)
            except Exception:
                pass
        for mod in _HARNESS_MODULES:  # what the jail and _exec_python need, whatever the uid
            __import__(mod)
        _child_prctl()(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        _warm_up()

        # Move everything allocated so far out of the collector's reach: a collection in a
        # forked child would otherwise write to every object and copy the whole heap.
        gc.collect()
        gc.freeze()

    def _nproc(self, max_procs: int) -> int:
        """RLIMIT_NPROC for a program (called inside a monitor)."""
        if self.root:  # own uid per monitor: the count is just this program's tasks
            return max_procs
        n, at = self.user_tasks  # non-root: the limit counts all tasks of our uid
        if time.monotonic() - at > 1.0:
            n = _user_tasks(os.getuid())
            self.user_tasks = (n, time.monotonic())
        return n + max_procs

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
        uid = None if self.uid_base is None else self.uid_base + slot
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                _close_fds_except({0, 1, 2, req_r, res_w})
                _monitor(req_r, res_w, self.base, uid, self._nproc)
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(res_w)
        os.set_blocking(res_r, False)
        os.set_blocking(req_w, False)
        self.monitors[res_r] = {"pid": pid, "req": req_w, "slot": slot, "jobs": deque(), "buf": bytearray(),
                                "out": bytearray()}
        self.writers[req_w] = res_r
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
            mon["out"] += _frame(job)
            self._write_monitor(mon)

    def _write_monitor(self, mon: dict[str, Any]) -> None:
        fd = mon["req"]
        while mon["out"]:
            try:
                n = os.write(fd, mon["out"])
            except BlockingIOError:
                break
            except OSError:  # it died: its EOF on the result pipe is handled in _monitor_died
                mon["out"].clear()
                break
            del mon["out"][:n]
        key = self.sel.get_map().get(fd)
        if mon["out"] and key is None:
            self.sel.register(fd, selectors.EVENT_WRITE)
        elif not mon["out"] and key is not None:
            self.sel.unregister(fd)

    def _monitor_output(self, fd: int) -> None:
        mon = self.monitors[fd]
        while True:
            try:
                data = os.read(fd, 1 << 20)
            except BlockingIOError:
                break
            if not data:
                self._monitor_died(fd)
                return
            mon["buf"] += data
        for msg in _unframe(mon["buf"]):
            if mon["jobs"]:
                mon["jobs"].popleft()
            self.send({"op": "result", **msg})

    def _monitor_died(self, fd: int) -> None:
        mon = self.monitors.pop(fd)
        self.sel.unregister(fd)
        os.close(fd)
        self.writers.pop(mon["req"], None)
        if mon["req"] in self.sel.get_map():
            self.sel.unregister(mon["req"])
        os.close(mon["req"])
        _, status = os.waitpid(mon["pid"], 0)
        self._kill_strays()
        if mon["jobs"]:  # the one it was running fails; those queued behind it go elsewhere
            job = mon["jobs"].popleft()
            self.send({"op": "result", "id": job["id"], "results": [],
                       "error": f"sandbox monitor died (wait status {status})"})
            self.queue.extendleft(reversed(mon["jobs"]))
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
        self.send({"op": "hello", "pid": os.getpid(), "protections": self.protections, "shared": self.shared,
                   "monitors": [m["pid"] for m in self.monitors.values()]})
        os.set_blocking(self.proto_in, False)
        os.set_blocking(self.proto_out, False)
        self.sel.register(self.proto_in, selectors.EVENT_READ)
        while self.running:
            for key, events in self.sel.select(1.0):
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
    cfg = pickle.loads(bytes.fromhex(argv[0])) if argv else {}
    sys.path[:0] = [p for p in cfg.get("path", []) if p not in sys.path]
    # Ctrl-C is for the host; we stop when its pipe closes. (No PR_SET_PDEATHSIG: it fires when
    # the host *thread* that started us ends, and any thread may start a server.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(1))  # monitors get SIGTERM from PDEATHSIG
    _set_name(b"lmsb-server")
    server = _Server(int(cfg.get("workers", 2)), cfg.get("shared_dirs", []))
    try:
        server.serve()
    finally:
        _kill_descendants(2.0)
        os._exit(0)


if _SERVING:  # run as the server: serve, then exit; the client half below is never defined
    _serve_main(sys.argv[2:])

# ----------------------------------------------------------------------------------- client side


def _limits_dict(limits: Limits) -> dict[str, Any]:
    return dict(limits.__dict__)  # flat dataclass: no need for asdict's deep copy


def _as_bytes(files: Mapping[str, str | bytes] | None) -> dict[str, bytes]:
    out = {}
    for k, v in (files or {}).items():
        if os.path.isabs(k) or ".." in k.split("/"):
            raise ValueError(f"sandbox file names must be relative and stay inside the job dir: {k!r}")
        out[k] = v if isinstance(v, bytes) else v.encode("utf-8", errors="surrogateescape")
    return out


def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 2
    # Two per CPU: each program waits on a chain of hand-offs (host, server, monitor, fork), and
    # on a busy machine more chains in flight keep the CPUs fed (measured: 2x CPUs beat 1x).
    return max(2, 2 * n)


class Sandbox:
    """One fork server and the pipes to it; thread-safe; restarts the server if it dies.

    `workers` is how many programs run at once (default: 2 per CPU this process may use). `shared_dirs` are host directories every program can read (read-only bind mounts
    where namespaces are available); `shared_path(d)` says where a program finds `d`.
    """

    def __init__(self, workers: int | None = None, *, shared_dirs: Sequence[str] = (),
                 python: str | None = None) -> None:
        self.workers = int(workers) if workers else _default_workers()
        self.shared_dirs = [os.path.realpath(d) for d in shared_dirs]
        self.python = python or sys.executable
        self._write_lock = threading.Lock()  # also guards (re)starting the server
        self._pending_lock = threading.Lock()
        self._pending: dict[int, tuple[dict[str, Any], Future, int]] = {}
        self._ids = itertools.count()
        self._proc: subprocess.Popen | None = None
        self._hello: dict[str, Any] = {}
        self._owner = os.getpid()
        self._closed = False
        self.restarts = -1

    # ------------------------------------------------------------------ server lifecycle
    def _ensure(self) -> None:
        if self._proc is not None and self._owner == os.getpid():
            return
        with self._write_lock:
            if self._owner != os.getpid():  # we are a fork of the process that started it
                self._proc, self._pending, self._owner = None, {}, os.getpid()
                self._pending_lock = threading.Lock()
            if self._proc is None:
                if self._closed:
                    raise RuntimeError("Sandbox is closed")
                self._spawn()

    def _spawn(self) -> None:
        """Start a server (caller holds _write_lock) and resend anything still pending."""
        # Programs may import the host's third-party packages: hand over its site-packages, since
        # -S skips the site module (and the .pth imports that would bloat every fork).
        path = [p for p in sys.path if "-packages" in p] if self.python == sys.executable else []
        cfg = pickle.dumps({"workers": self.workers, "shared_dirs": self.shared_dirs, "path": path}).hex()
        # -I: no env vars, no user site, no cwd on sys.path; env={} keeps host secrets out of it.
        proc = subprocess.Popen([self.python, "-I", "-S", os.path.abspath(__file__), "--serve", cfg],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"},
                                close_fds=True, start_new_session=True, cwd="/")
        buf = bytearray()
        hello = None
        while hello is None:
            chunk = proc.stdout.read1(65536)  # type: ignore[union-attr]
            if not chunk:
                proc.wait()
                raise RuntimeError(f"sandbox server failed to start (exit {proc.returncode})")
            buf += chunk
            msgs = _unframe(buf)
            if msgs:
                hello = msgs[0]
        self._hello = hello
        self._proc = proc
        self.restarts += 1
        threading.Thread(target=self._reader, args=(proc, buf), daemon=True, name="sandbox-reader").start()
        with self._pending_lock:
            pending = list(self._pending.values())
        if pending:
            self._send_frames(b"".join(_frame(msg) for msg, _, _ in pending))

    def _send_frames(self, data: bytes) -> None:
        try:
            self._proc.stdin.write(data)  # type: ignore[union-attr]
            self._proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError, ValueError):
            pass  # the reader sees the server die and resends

    def _reader(self, proc: subprocess.Popen, buf: bytearray) -> None:
        stream = proc.stdout
        try:
            while True:
                for msg in _unframe(buf):
                    if msg.get("op") == "result":
                        with self._pending_lock:
                            item = self._pending.pop(msg["id"], None)
                        if item is not None:
                            res = [_result_from_dict(r) for r in msg["results"]]
                            if msg.get("error"):
                                res.append(_error_result(msg["error"]))
                            item[1].set_result(res)
                chunk = stream.read1(1 << 20)  # type: ignore[union-attr]
                if not chunk:
                    break
                buf += chunk
        except (OSError, ValueError):
            pass
        proc.wait()
        self._server_died(proc)

    def _server_died(self, proc: subprocess.Popen) -> None:
        with self._write_lock:
            if self._proc is not proc:
                return
            self._proc = None
            with self._pending_lock:
                for jid, (msg, fut, tries) in list(self._pending.items()):
                    if self._closed or tries >= 2:
                        del self._pending[jid]
                        fut.set_result([_error_result(f"sandbox server died (exit {proc.returncode})")])
                    else:
                        self._pending[jid] = (msg, fut, tries + 1)
                again = bool(self._pending)
            if again and not self._closed:
                try:
                    self._spawn()
                except Exception as e:  # noqa: BLE001 - fail the jobs rather than hang
                    with self._pending_lock:
                        items, self._pending = list(self._pending.values()), {}
                    for _, fut, _ in items:
                        fut.set_result([_error_result(f"sandbox server could not restart: {e}")])

    def close(self) -> None:
        """Stop the server; in-flight programs are killed and their dirs removed."""
        self._closed = True
        with self._write_lock:
            proc, self._proc = self._proc, None
        if proc is not None and self._owner == os.getpid():
            try:
                proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with self._pending_lock:  # jobs still running were killed with the server
            items, self._pending = list(self._pending.values()), {}
        for _, fut, _ in items:
            if not fut.done():
                fut.set_result([_error_result("sandbox closed while the job ran")])

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    @property
    def protections(self) -> dict[str, Any]:
        """Which isolation layers the server managed to set up on this machine."""
        self._ensure()
        return dict(self._hello.get("protections", {}))

    @property
    def server_pid(self) -> int | None:
        self._ensure()
        return self._proc.pid if self._proc is not None else None

    def shared_path(self, host_dir: str) -> str | None:
        """Where programs see shared dir `host_dir`, or None if they cannot read it."""
        self._ensure()
        return self._hello.get("shared", {}).get(os.path.realpath(host_dir))

    # ------------------------------------------------------------------ jobs
    def submit(self, jobs: Sequence[Job]) -> list[Future]:
        """Start jobs (see `python_job`, `command_job`); each future resolves to the list of
        RunResult of the steps that ran. One write to the server for the whole batch."""
        self._ensure()
        msgs, futs = [], []
        for job in jobs:
            msg = {"op": "run", "id": next(self._ids), "steps": list(job.steps),
                   "limits": [_limits_dict(lim) for lim in job.limits], "files": dict(job.files)}
            msgs.append(msg)
            futs.append(Future())
        with self._write_lock:
            with self._pending_lock:
                for msg, fut in zip(msgs, futs):
                    self._pending[msg["id"]] = (msg, fut, 0)
            if self._proc is not None:
                self._send_frames(b"".join(_frame(m) for m in msgs))
            else:  # it died and could not restart a moment ago: try once more (resends ours)
                try:
                    self._spawn()
                except Exception as e:  # noqa: BLE001
                    with self._pending_lock:
                        for msg in msgs:
                            self._pending.pop(msg["id"], None)
                    for fut in futs:
                        fut.set_result([_error_result(f"sandbox server could not start: {e}")])
        return futs

    def submit_python(self, source: str, limits: Limits | None = None,
                      files: Mapping[str, str | bytes] | None = None, prelude: str | None = None) -> Future:
        """Start one Python program; the future resolves to a one-element list of RunResult."""
        return self.submit([python_job(source, limits, files, prelude)])[0]

    def submit_commands(self, commands: Sequence[Sequence[str]], files: Mapping[str, str | bytes] | None = None,
                        limits: Limits | Sequence[Limits] | None = None) -> Future:
        """Start a command chain (same fresh dir; stops at the first failing step)."""
        return self.submit([command_job(commands, files, limits)])[0]

    @staticmethod
    def _one(fut: Future) -> RunResult:
        res = fut.result()
        return res[-1] if res else _error_result("sandbox returned no result")

    def run_python(self, source: str, limits: Limits | None = None,
                   files: Mapping[str, str | bytes] | None = None, prelude: str | None = None) -> RunResult:
        """Run one Python program (exec'd in a fresh `__main__` of a forked, jailed child)."""
        return self._one(self.submit_python(source, limits, files, prelude))

    def map_python(self, sources: Sequence[str], limits: Limits | None = None,
                   files: Mapping[str, str | bytes] | None = None, prelude: str | None = None) -> list[RunResult]:
        """Run many Python programs, up to `workers` at once; results in input order."""
        futs = self.submit([python_job(s, limits, files, prelude) for s in sources])
        return [self._one(f) for f in futs]

    def run_command(self, argv: Sequence[str], files: Mapping[str, str | bytes] | None = None,
                    limits: Limits | None = None) -> RunResult:
        """Run one command in a fresh dir holding `files` (relative path -> content)."""
        return self._one(self.submit_commands([argv], files, limits))

    def run_commands(self, commands: Sequence[Sequence[str]], files: Mapping[str, str | bytes] | None = None,
                     limits: Limits | Sequence[Limits] | None = None) -> list[RunResult]:
        """Run commands one after another in one fresh dir, stopping after the first failure
        (e.g. compile, then run). Returns the results of the steps that ran."""
        return self.submit_commands(commands, files, limits).result()

    def map_commands(self, jobs: Sequence[tuple[Sequence[Sequence[str]], Mapping[str, str | bytes]]],
                     limits: Limits | Sequence[Limits] | None = None) -> list[list[RunResult]]:
        """Many `run_commands` jobs in parallel: each job is (commands, files)."""
        futs = self.submit([command_job(cmds, files, limits) for cmds, files in jobs])
        return [f.result() for f in futs]


@dataclass(frozen=True)
class Job:
    """One unit of work: steps run one after another in one fresh directory holding `files`."""

    steps: tuple[dict[str, Any], ...]
    limits: tuple[Limits, ...]
    files: Mapping[str, bytes]


def python_job(source: str, limits: Limits | None = None, files: Mapping[str, str | bytes] | None = None,
               prelude: str | None = None) -> Job:
    """A Python program. `prelude`: trusted code run first in the same namespace (e.g. a test
    harness); each worker compiles a given prelude once and later programs reuse the code
    object, so a large shared harness costs nothing per program."""
    step = {"kind": "python", "source": source}
    if prelude:
        step["prelude"] = prelude
    return Job((step,), (limits or Limits(),), _as_bytes(files))


def command_job(commands: Sequence[Sequence[str]], files: Mapping[str, str | bytes] | None = None,
                limits: Limits | Sequence[Limits] | None = None) -> Job:
    """A chain of commands (e.g. compile, then run), stopping after the first that fails;
    `limits` is one Limits for all steps or one per step."""
    steps = tuple({"kind": "exec", "argv": [str(a) for a in argv]} for argv in commands)
    if not steps:
        raise ValueError("no commands given")
    if limits is None or isinstance(limits, Limits):
        lims = (limits or Limits(),) * len(steps)
    else:
        lims = tuple(limits)
        if len(lims) != len(steps):
            raise ValueError(f"got {len(lims)} Limits for {len(steps)} commands")
    return Job(steps, lims, _as_bytes(files))


_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Sandbox:
    """The process-wide shared Sandbox (started on first use, stopped at exit)."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = Sandbox()
            atexit.register(_default.close)
        return _default


def run_python(source: str, limits: Limits | None = None) -> RunResult:
    """Run one Python program in the shared default Sandbox."""
    return default_sandbox().run_python(source, limits)


def map_python(sources: Sequence[str], limits: Limits | None = None) -> list[RunResult]:
    """Run Python programs in parallel in the shared default Sandbox."""
    return default_sandbox().map_python(sources, limits)


def run_command(argv: Sequence[str], files: Mapping[str, str | bytes] | None = None,
                limits: Limits | None = None) -> RunResult:
    """Run one command in the shared default Sandbox."""
    return default_sandbox().run_command(argv, files, limits)

