"""The fork server's event loop (`_Server`): reads jobs from the host (frames on its fd 0), queues
them, hands each monitor its header and body on two pipes (one job ahead when there is a
backlog), relays results (fd 1), and restarts a monitor that dies, failing the job it was
running and requeueing the rest. Also the server's start-up (`_serve_main`): a fresh session
keyring, oom_score_adj, not dumpable, a subreaper, and the protections it reports in its hello.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import signal
import sys
from collections import deque
from collections.abc import Sequence
from typing import Any

from . import _HERE
from .files import _fresh_dir, _rmtree
from .framing import _frame, _header, _unframe
from .syscalls import (
    _PR_SET_CHILD_SUBREAPER,
    _PR_SET_DUMPABLE,
    _child_prctl,
    _join_fresh_session_keyring,
    _prctl,
    _set_name,
)
from .watch import _children, _kill_descendants

_DEPTH = 2  # jobs handed to one monitor at a time when there is a backlog


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
