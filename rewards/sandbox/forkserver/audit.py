"""The Python audit hook a Python program runs under: no writes outside its job dir, no sockets,
subprocesses, ctypes or signals to other processes. Defence in depth only (a determined program
gets around audit hooks); the OS layers are the boundary. It also works without the jail.
"""

from __future__ import annotations

import os
from typing import Any

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
