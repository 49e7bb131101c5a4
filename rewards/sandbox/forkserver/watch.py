"""Watching a running program and ending it: its output pipes (stdout and stderr capped at
`output_bytes`, the result channel at `channel_bytes`, a flood killed), its wall clock, its exit
and CPU-limit kill; then killing and reaping everything it left (the monitor is a subreaper).
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections.abc import Mapping
from typing import Any

import protocol  # the wire format (the server's directory is on sys.path)

from .syscalls import _PROC_FD, _SIGKILL

CHANNEL_BYTES = protocol.CHANNEL_BYTES
_FLOOD_FACTOR = 256  # reading more than this times output_bytes kills the program


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


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _watch(pid: int, fds: list[int], t0: float, limits: Mapping[str, Any], cpu_limit: int) -> dict[str, Any]:
    """Watch a started program (in the monitor, or a job's runner) until it exits or its wall clock
    runs out: read its stdout, stderr and result channel (`fds`, each capped; a flood kills it), then
    kill and reap it and all it left. What it did, as the result dict of one step."""
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
        and usage.ru_utime + usage.ru_stime >= cpu_limit - 0.05
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
