"""The host side of the sandbox: `Sandbox` (a handle on one jailed fork server), job builders,
and the result types.

Lives here: `Limits`, `RunResult`, `Job` (+ `python_job`, `command_job`), `Sandbox` (`run_python`,
`map_python`, `run_command`, `run_commands`, `map_commands`, `submit`) and module-level
`run_python`, `map_python`, `run_command` on a shared default `Sandbox`.

The server (`server.py`, running the `forkserver` package) runs inside the bubblewrap jail
described in `jail.py`, started as its own clean interpreter (never a fork of a host holding torch
or a model). Everything that comes back from it is JSON (see `protocol.py`), checked field by
field before it becomes a `RunResult`: the host never unpickles data a sandboxed process could
have written. Where the jail cannot run, `Sandbox()` raises `rewards.SandboxError` saying why, unless
`allow_unsandboxed=True` is passed; it never falls back silently.

Imports: standard library, `rewards.errors`, and this package's `protocol`, `jail`, `cgroup` and
`syscall_filter`.
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from rewards.errors import SandboxError
from rewards.sandbox import cgroup as cgroups
from rewards.sandbox import jail, protocol, syscall_filter
from rewards.sandbox.protocol import CHANNEL_BYTES, RESULT_FD  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class Limits:
    """Per-program resource limits (each step of a command chain gets its own)."""

    wall_s: float = 5.0  # wall clock, enforced by the monitor (kills the whole process group)
    cpu_s: float = 5.0  # RLIMIT_CPU per process (SIGXCPU, then SIGKILL one second later)
    memory_mb: int = 512  # RLIMIT_AS: address space per process (the pool's cgroup caps the sum)
    output_bytes: int = 64_000  # kept of stdout and of stderr each; the rest is read and dropped
    max_procs: int = 32  # RLIMIT_NPROC: tasks (processes + threads) of the program's uid
    file_mb: int = 16  # RLIMIT_FSIZE: largest file a program may write
    open_files: int = 256  # RLIMIT_NOFILE
    allow_subprocess: bool = False  # Python only: audit hook refuses fork/exec/spawn unless True
    disk_mb: int = 256  # jailed: size of the job's own tmpfs /tmp (all its files together)
    channel_bytes: int = CHANNEL_BYTES  # kept of the result channel (fd 3), at most CHANNEL_BYTES


@dataclass
class RunResult:
    """What one program did. `returncode` is negative for a signal, like `subprocess`."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool  # wall clock or CPU limit hit
    killed_by_signal: int | None
    duration_s: float
    channel: str = ""  # what the program wrote to fd 3 (RESULT_FD), capped at `Limits.channel_bytes`
    truncated: bool = False  # some stdout/stderr was dropped by the output cap
    error: str | None = None  # the sandbox itself failed (not the program)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.error is None


_FIELD_TYPES = {
    "returncode": (int, type(None)),
    "stdout": (str,),
    "stderr": (str,),
    "timed_out": (bool,),
    "killed_by_signal": (int, type(None)),
    "duration_s": (float, int),
    "channel": (str,),
    "truncated": (bool,),
    "error": (str, type(None)),
}


def _result_from_dict(d: Any) -> RunResult:
    """A RunResult from what the server sent, checked field by field (never trusted)."""
    if not isinstance(d, dict):
        return _error_result("sandbox protocol: a result is not an object")
    for name, kinds in _FIELD_TYPES.items():
        if name in d and (not isinstance(d[name], kinds) or (isinstance(d[name], bool) and bool not in kinds)):
            return _error_result(f"sandbox protocol: bad field {name!r}")
    return RunResult(**{f.name: d[f.name] for f in dataclasses.fields(RunResult) if f.name in d})


def _error_result(msg: str) -> RunResult:
    return RunResult(None, "", "", False, None, 0.0, error=msg)


def _limits_dict(limits: Limits) -> dict[str, Any]:
    return dict(limits.__dict__)  # flat dataclass: no need for asdict's deep copy


def _as_bytes(files: Mapping[str, str | bytes] | None) -> dict[str, bytes]:
    out = {}
    for k, v in (files or {}).items():
        if os.path.isabs(k) or ".." in k.split("/"):
            raise ValueError(f"sandbox file names must be relative and stay inside the job dir: {k!r}")
        out[k] = v if isinstance(v, bytes) else v.encode("utf-8", errors="surrogateescape")
    return out


def _spawner_loop(q: Any) -> None:
    while True:
        fn, fut = q.get()
        try:
            fut.set_result(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            fut.set_exception(e)


def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 2
    # Two per CPU: each program waits on a chain of hand-offs (host, server, monitor, fork), and
    # on a busy machine more chains in flight keep the CPUs fed (measured: 2x CPUs beat 1x).
    return max(2, 2 * n)


class Sandbox:
    """One jailed fork server and the pipes to it; thread-safe; restarts the server if it dies.

    :param workers: programs run at once (default: 2 per CPU this process may use).
    :param shared_dirs: host directories every program can read (read-only bind mounts);
        `shared_path(d)` says where a program finds `d`.
    :param python: the interpreter the server and Python programs run on (default
        `/usr/bin/python3`: the jail mounts only /usr). Programs get its standard library and
        nothing else.
    :param allow_unsandboxed: run the server without the jail when bubblewrap cannot run here.
        The explicit escape hatch: programs then run as this user, with rlimits and an audit
        hook only. Without it, a machine where the jail cannot start raises `SandboxError`.
    :param cgroup: where the whole server (all its programs together) gets a cgroup v2 memory
        cap, `memory_mb`: ``"auto"`` (our own cgroup, where the memory controller is delegated
        to it; else `RLIMIT_AS` per process only, see `protections`), ``None`` (off) or the path
        of a delegated cgroup v2 directory (`ValueError` if it is not one). See
        `rewards.sandbox.cgroup`.
    :param memory_mb: the cgroup's ``memory.max`` in MiB (default: 512 per worker, plus 256 for
        the server and its monitors).
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        shared_dirs: Sequence[str] = (),
        python: str | None = None,
        allow_unsandboxed: bool = False,
        cgroup: str | None = "auto",
        memory_mb: int | None = None,
    ) -> None:
        self.workers = int(workers) if workers else _default_workers()
        self.memory_mb = int(memory_mb) if memory_mb else 512 * self.workers + 256
        self._cgroup_parent, self.cgroup_reason = cgroups.find(cgroup)
        self._cgroups: dict[int, str] = {}  # server pid -> its cgroup
        self.shared_dirs = [os.path.realpath(d) for d in shared_dirs]
        self.python = python or jail.default_python()
        reason = jail.unavailable_reason(self.python)
        self.jailed = reason is None
        if reason is not None and not allow_unsandboxed:
            raise SandboxError(
                f"cannot start the sandbox jail: {reason}. Code rewards refuse to run "
                "model-written code without it; pass allow_unsandboxed=True to accept "
                "running it unjailed (rlimits and a Python audit hook only)."
            )
        if not self.jailed and not os.access(self.python, os.X_OK):
            self.python = sys.executable
        self.jail_reason = reason
        try:
            self._seccomp: str | None = protocol.b64(syscall_filter.compile_filter())
        except syscall_filter.FilterUnavailable as e:
            if not allow_unsandboxed:
                raise SandboxError(
                    f"cannot build the sandbox's seccomp filter: {e}. Code rewards refuse to run "
                    "model-written code without it; pass allow_unsandboxed=True to accept running "
                    "programs without the filter."
                ) from None
            self._seccomp = None
        self._stage: dict[str, str] = {}  # shared dir -> its world-readable staging copy
        self._spawner: tuple[int, Any, threading.Thread] | None = None
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
                    raise SandboxError("Sandbox is closed")
                self._spawn()

    def _spawn(self) -> None:
        """Start a server (caller holds _write_lock) and resend anything still pending.

        Always from one long-lived thread of ours: bubblewrap's --die-with-parent (a parent-death
        signal) fires when the *thread* that started it ends, and any thread may get here."""
        if self._spawner is None or self._spawner[0] != os.getpid():
            import queue

            q: queue.SimpleQueue = queue.SimpleQueue()
            thread = threading.Thread(target=_spawner_loop, args=(q,), daemon=True, name="sandbox-spawner")
            thread.start()
            self._spawner = (os.getpid(), q, thread)
        if threading.current_thread() is self._spawner[2]:
            return self._spawn_now()
        fut: Future = Future()
        self._spawner[1].put((self._spawn_now, fut))
        return fut.result()

    def _spawn_now(self) -> None:
        cfg = json.dumps(
            {
                "workers": self.workers,
                "jailed": self.jailed,
                "seccomp": self._seccomp,
                "seccomp_text": syscall_filter.describe() if self._seccomp else "",
            }
        )
        fds: list[int] = []
        kw: dict[str, Any] = {}
        try:
            if self.jailed:
                ids = jail.jail_uid()
                dirs = [jail.SERVER_DIR, *self.shared_dirs]
                if ids is not None:  # the jail's throwaway uid must be able to reach what it mounts
                    dirs = [d if jail.world_readable(d) else self._staged(d) for d in dirs]
                fds = [os.open(d, os.O_PATH | os.O_DIRECTORY) for d in dirs]
                cmd = jail.argv(self.python, fds[0], fds[1:]) + ["--serve", cfg]
                if ids is not None:  # root: the jail runs as a throwaway uid, like any other user's
                    kw = {"user": ids[0], "group": ids[1], "extra_groups": []}
            else:
                ids = None
                cmd = [self.python, "-I", "-S", "-B", os.path.join(jail.SERVER_DIR, "server.py"), "--serve", cfg]
            group = None
            if self._cgroup_parent is not None:
                try:
                    group = cgroups.create(self._cgroup_parent, self.memory_mb << 20)
                    cmd, kw = cgroups.wrap(cmd, group, ids), {}  # the wrapper drops to `ids` itself
                except OSError as e:
                    cgroups.remove(group)
                    group, self._cgroup_parent = None, None
                    self.cgroup_reason = f"could not create a cgroup in the delegated one: {e}"
                    import logging

                    logging.getLogger(__name__).warning(
                        "sandbox: %s; memory is capped by RLIMIT_AS per process only", self.cgroup_reason
                    )
            # env={} keeps host secrets out; cwd="/" keeps the repo out of the server's sys.path.
            try:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env={"PATH": "/usr/bin:/bin"},
                    close_fds=True,
                    pass_fds=fds,
                    start_new_session=True,
                    cwd="/",
                    **kw,
                )
            except BaseException:
                cgroups.remove(group)
                raise
            if group is not None:
                self._cgroups[proc.pid] = group
        finally:
            for fd in fds:
                os.close(fd)
        buf = bytearray()
        hello = None
        try:
            while hello is None:
                chunk = proc.stdout.read1(65536)  # type: ignore[union-attr]
                if not chunk:
                    proc.wait()
                    self._release_cgroup(proc)
                    raise SandboxError(f"sandbox server failed to start (exit {proc.returncode})")
                buf += chunk
                msgs = protocol.unframe(buf)
                if msgs:
                    hello = msgs[0]
            if not isinstance(hello, dict) or hello.get("op") != "hello":
                raise SandboxError("sandbox server sent no hello")
        except (protocol.ProtocolError, SandboxError):
            proc.kill()
            proc.wait()
            self._release_cgroup(proc)
            raise
        protections = hello.get("protections")
        if isinstance(protections, dict):
            group = self._cgroups.get(proc.pid)
            memory = (
                f"cgroup v2 memory.max {self.memory_mb} MiB for the whole server, swap 0 ({group}); "
                if group
                else f"no cgroup cap ({self.cgroup_reason}); "
            )
            protections["memory"] = memory + str(protections.get("memory", ""))
        self._hello = hello
        self._proc = proc
        self.restarts += 1
        threading.Thread(target=self._reader, args=(proc, buf), daemon=True, name="sandbox-reader").start()
        with self._pending_lock:
            pending = list(self._pending.values())
        if pending:
            self._send_frames(b"".join(protocol.frame(msg) for msg, _, _ in pending))

    def _staged(self, src: str) -> str:
        """A world-readable copy (hard links where possible) of `src`, removed by `close`."""
        if src not in self._stage:
            import shutil
            import tempfile

            def link_or_copy(a: str, b: str) -> None:
                try:
                    os.link(a, b)
                except OSError:
                    shutil.copy2(a, b)

            root = tempfile.mkdtemp(prefix="lmsb-shared-")
            os.chmod(root, 0o755)
            atexit.register(shutil.rmtree, root, True)  # also when close() is never called
            dst = os.path.join(root, "d")
            shutil.copytree(src, dst, copy_function=link_or_copy)
            for base, _subdirs, files in os.walk(dst):
                os.chmod(base, 0o755)
                for f in files:
                    os.chmod(os.path.join(base, f), 0o644)
            self._stage[src] = dst
        return self._stage[src]

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
                for msg in protocol.unframe(buf):
                    if not isinstance(msg, dict) or msg.get("op") != "result":
                        continue
                    results, error = msg.get("results"), msg.get("error")
                    with self._pending_lock:
                        item = self._pending.pop(msg.get("id"), None) if isinstance(msg.get("id"), int) else None
                    if item is not None:
                        res = (
                            [_result_from_dict(r) for r in results]
                            if isinstance(results, list)
                            else [_error_result("sandbox protocol: results is not a list")]
                        )
                        if error is not None:
                            res.append(_error_result(str(error)))
                        item[1].set_result(res)
                chunk = stream.read1(1 << 20)  # type: ignore[union-attr]
                if not chunk:
                    break
                buf += chunk
        except (OSError, ValueError):  # ProtocolError included: a server we cannot read is dead to us
            pass
        try:
            proc.kill()
        except OSError:
            pass
        proc.wait()
        self._release_cgroup(proc)
        self._server_died(proc)

    def _release_cgroup(self, proc: subprocess.Popen) -> None:
        cgroups.remove(self._cgroups.pop(proc.pid, None))

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
            self._release_cgroup(proc)
        for staged in self._stage.values():
            import shutil

            shutil.rmtree(os.path.dirname(staged), ignore_errors=True)
        self._stage = {}
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
        """Where programs see shared dir `host_dir`, or None if it is not one."""
        real = os.path.realpath(host_dir)
        if real not in self.shared_dirs:
            return None
        return f"{jail.INSIDE_SHARED}/{self.shared_dirs.index(real)}" if self.jailed else real

    # ------------------------------------------------------------------ jobs
    def submit(self, jobs: Sequence[Job]) -> list[Future]:
        """Start jobs (see `python_job`, `command_job`); each future resolves to the list of
        RunResult of the steps that ran. One write to the server for the whole batch."""
        self._ensure()
        msgs, futs = [], []
        for job in jobs:
            msg = {
                "op": "run",
                "id": next(self._ids),
                "steps": list(job.steps),
                "limits": [_limits_dict(lim) for lim in job.limits],
                "files": {k: protocol.b64(v) for k, v in job.files.items()},
            }
            msgs.append(msg)
            futs.append(Future())
        with self._write_lock:
            with self._pending_lock:
                for msg, fut in zip(msgs, futs):
                    self._pending[msg["id"]] = (msg, fut, 0)
            if self._proc is not None:
                self._send_frames(b"".join(protocol.frame(m) for m in msgs))
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

    def submit_python(
        self,
        source: str,
        limits: Limits | None = None,
        files: Mapping[str, str | bytes] | None = None,
        prelude: str | None = None,
    ) -> Future:
        """Start one Python program; the future resolves to a one-element list of RunResult."""
        return self.submit([python_job(source, limits, files, prelude)])[0]

    def submit_commands(
        self,
        commands: Sequence[Sequence[str]],
        files: Mapping[str, str | bytes] | None = None,
        limits: Limits | Sequence[Limits] | None = None,
    ) -> Future:
        """Start a command chain (same fresh dir; stops at the first failing step)."""
        return self.submit([command_job(commands, files, limits)])[0]

    @staticmethod
    def _one(fut: Future) -> RunResult:
        res = fut.result()
        return res[-1] if res else _error_result("sandbox returned no result")

    def run_python(
        self,
        source: str,
        limits: Limits | None = None,
        files: Mapping[str, str | bytes] | None = None,
        prelude: str | None = None,
    ) -> RunResult:
        """Run one Python program (exec'd in a fresh `__main__` of a forked, jailed child)."""
        return self._one(self.submit_python(source, limits, files, prelude))

    def map_python(
        self,
        sources: Sequence[str],
        limits: Limits | None = None,
        files: Mapping[str, str | bytes] | None = None,
        prelude: str | None = None,
    ) -> list[RunResult]:
        """Run many Python programs, up to `workers` at once; results in input order."""
        futs = self.submit([python_job(s, limits, files, prelude) for s in sources])
        return [self._one(f) for f in futs]

    def run_command(
        self, argv: Sequence[str], files: Mapping[str, str | bytes] | None = None, limits: Limits | None = None
    ) -> RunResult:
        """Run one command in a fresh dir holding `files` (relative path -> content)."""
        return self._one(self.submit_commands([argv], files, limits))

    def run_commands(
        self,
        commands: Sequence[Sequence[str]],
        files: Mapping[str, str | bytes] | None = None,
        limits: Limits | Sequence[Limits] | None = None,
    ) -> list[RunResult]:
        """Run commands one after another in one fresh dir, stopping after the first failure
        (e.g. compile, then run). Returns the results of the steps that ran."""
        return self.submit_commands(commands, files, limits).result()

    def map_commands(
        self,
        jobs: Sequence[tuple[Sequence[Sequence[str]], Mapping[str, str | bytes]]],
        limits: Limits | Sequence[Limits] | None = None,
    ) -> list[list[RunResult]]:
        """Many `run_commands` jobs in parallel: each job is (commands, files)."""
        futs = self.submit([command_job(cmds, files, limits) for cmds, files in jobs])
        return [f.result() for f in futs]


@dataclass(frozen=True)
class Job:
    """One unit of work: steps run one after another in one fresh directory holding `files`."""

    steps: tuple[dict[str, Any], ...]
    limits: tuple[Limits, ...]
    files: Mapping[str, bytes]


def python_job(
    source: str,
    limits: Limits | None = None,
    files: Mapping[str, str | bytes] | None = None,
    prelude: str | None = None,
) -> Job:
    """A Python program. `prelude`: trusted code run first in the same namespace (e.g. a test
    harness); each worker compiles a given prelude once and later programs reuse the code
    object, so a large shared harness costs nothing per program."""
    step = {"kind": "python", "source": source}
    if prelude:
        step["prelude"] = prelude
    return Job((step,), (limits or Limits(),), _as_bytes(files))


def command_job(
    commands: Sequence[Sequence[str]],
    files: Mapping[str, str | bytes] | None = None,
    limits: Limits | Sequence[Limits] | None = None,
) -> Job:
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


def run_command(
    argv: Sequence[str], files: Mapping[str, str | bytes] | None = None, limits: Limits | None = None
) -> RunResult:
    """Run one command in the shared default Sandbox."""
    return default_sandbox().run_command(argv, files, limits)
