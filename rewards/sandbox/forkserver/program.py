"""One program: the process that runs one step of a job, and the monitor's side of it (`_Step`).
The monitor plans the program before the fork (rlimits, Python's fresh `__main__`, the compiled
prelude, the audit hook), clones it into its own namespaces, and the child then turns itself
into the sandboxed program (`_enter_jail`: fds, rlimits, capabilities, seccomp) and execs or runs
the Python source (`_exec_python`). Everything the child does is written to touch little memory:
after a fork every page first written costs a fault and a copy.
"""

from __future__ import annotations

import _signal
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import protocol  # the wire format (the server's directory is on sys.path)

from . import _HERE
from .audit import _audit_hook
from .files import _write_files
from .framing import _read_exactly, _read_one_frame
from .limits import _resource, _rlimits
from .seccomp import _install_filter
from .syscalls import (
    _EXEC_JOB_NS,
    _PR_SET_DUMPABLE,
    _PR_SET_NO_NEW_PRIVS,
    _PR_SET_PDEATHSIG,
    _PYTHON_JOB_NS,
    _SIG_DFL,
    _SIGKILL,
    _SIGPIPE,
    _SIGTERM,
    _child_prctl,
    _clone_into_job_namespaces,
    _drop_privileges,
    _exec_namespace_setup,
)
from .watch import _watch

RESULT_FD = protocol.RESULT_FD
_JAIL_TMP = "/tmp"  # where a jailed program sees its job dir
_MAX_FD = 1 << 20
# Set by the monitor (`monitor._prepare_monitor`), once; every program inherits them.
_DEVNULL: list[int] = []  # the monitor's /dev/null fd, dup'ed to each program's stdin
_STREAMS: list[Any] = []  # stdin, stdout, stderr text streams for Python programs (fds 0-2)
_RUNNING: list[int | None] = [None]  # the monitor's current program, for its SIGTERM handler
_BODY_TAKEN = [False]  # a Python job's program process was started (and so read the job's body)


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
            res = _watch(pid, [r for r, _ in pipes[:3]], t0, self.limits, self.cpu_limit)
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


def _which(name: str, path: str) -> str | None:
    for d in path.split(os.pathsep):
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None
