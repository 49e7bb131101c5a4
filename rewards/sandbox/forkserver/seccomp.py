"""The per-program seccomp filter, on the server's side: the host compiles the BPF program
(`rewards.sandbox.syscall_filter`) and sends its bytes in the start-up config; each monitor
keeps it ready (`_load_filter`), checks once that it works (`_check_filter`), and every program
process installs it as its last step before exec or the candidate's code (`_install_filter`).
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

from .syscalls import (
    _KEY_SPEC_SESSION_KEYRING,
    _KEYCTL_GET_KEYRING_ID,
    _PR_SET_NO_NEW_PRIVS,
    _PR_SET_SECCOMP,
    _SECCOMP_MODE_FILTER,
    _SYS_KEYCTL,
    _c,
    _child_prctl,
)


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
