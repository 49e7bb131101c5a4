"""A monitor: the long-lived process per worker slot that runs jobs one at a time. It is a fresh
interpreter (spawned as `server.py --monitor`), prepares once what every program inherits
(`_prepare_monitor`: preloaded modules, std streams, the seccomp filter, a frozen heap), sets up
its own namespaces, then reads job headers only: a one-step Python job is one program forked
from it (`_run_python_job`), a command chain gets a runner forked from it that reads the job and
runs its steps (`_runner`). `_run_job` gives each job a fresh dir (jailed: its own size-capped
tmpfs over /tmp) and leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import protocol  # the wire format (the server's directory is on sys.path)

from .audit import _audit_hook
from .files import _remove_job_dir, _write_files
from .framing import _frame, _read_one_frame, _write_all
from .limits import _nproc
from .program import _BODY_TAKEN, _DEVNULL, _JAIL_TMP, _RUNNING, _STREAMS, _Step
from .seccomp import _SECCOMP, _check_filter, _load_filter
from .syscalls import (
    _MNT_DETACH,
    _MS_NODEV,
    _MS_NOSUID,
    _PR_SET_CHILD_SUBREAPER,
    _PR_SET_DUMPABLE,
    _PR_SET_PDEATHSIG,
    _c,
    _child_prctl,
    _clone_into_job_namespaces,
    _monitor_namespaces,
    _mount,
    _prctl,
    _set_name,
)
from .watch import _kill_descendants, _killpg

_HARNESS_MODULES = ("builtins", "io", "linecache", "resource", "traceback", "types")
_PRELOAD = (  # stdlib the server imports once so each program's imports are dictionary hits
    "array bisect cmath collections copy functools heapq itertools json math operator re string"
).split()
_JOB_SEQ = itertools.count()
_JOBDIR: list[str | None] = [None]  # the monitor's current job dir, for its SIGTERM handler
_BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


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
