"""The per-program seccomp filter: the system calls a sandboxed program is refused, compiled to BPF on the host.

The filter is built with libseccomp (through its ctypes bindings, `pyseccomp`, API-compatible
with libseccomp's own Python module), never written by hand. `compile_filter()` returns the BPF
program as bytes; `Sandbox` passes them in the server's start-up config, and the server installs
them in every program process after the fork, as the last step before `execve` or the
candidate's Python code (`prctl(PR_SET_SECCOMP)` through ctypes: the server imports nothing of
ours). The jail's own processes (server, monitors, job runners) are not filtered: they need
`unshare`, `mount` and `clone` with new namespaces to build each program's namespaces.

Default action: allow. Refused calls fail with an errno and never kill the program, so a
toolchain that probes a feature (glibc's `clone3`, the JVM's `setrlimit`) falls back as it would
on an older kernel:

- ``ENOSYS`` ("the kernel has no such call") for whole subsystems a program does not need:
  keyrings (`add_key`, `request_key`, `keyctl`), `io_uring` (its requests would bypass every
  rule here), `bpf`, `userfaultfd`, `perf_event_open`, and `clone3` (whose flags live in memory
  that seccomp cannot read; glibc then falls back to `clone`, whose flags are checked).
- ``EAFNOSUPPORT`` for `socket()` of any family but ``AF_UNIX``.
- ``EPERM`` for everything that would name or reach another endpoint or process, or change the
  system: `bind`, `connect`, `listen`, `accept(4)` (so the only sockets a program can use are
  `socketpair`s it made itself: nothing passes between programs running at the same time),
  `setsockopt` of ``SO_PASSCRED``/``SO_PASSPIDFD`` (either makes the kernel bind a datagram socket
  to an abstract name when it sends, a name other programs could then reach),
  `ptrace`, `process_vm_*`, `pidfd_getfd`, `kcmp`, mounts and new namespaces (`mount`, `umount2`,
  `pivot_root`, the new mount API, `unshare`, `setns`, `clone` with a namespace flag), modules,
  `kexec_*`, `reboot`, swap, clocks, `syslog`, `acct`, `quotactl`, `open_by_handle_at`,
  `fanotify_init`, and lowering `RLIMIT_CORE` (`setrlimit`/`prlimit64` on it: the server sets it
  to 1, which makes the kernel refuse a piped ``core_pattern`` dump).

Other architectures' system call tables (32-bit ``int 0x80``, x32) kill the program: libseccomp's
filter checks the architecture first.

Imports: standard library; `pyseccomp` (PyPI) and `libseccomp.so.2` (Debian's libseccomp2) in
`compile_filter` only.
"""

from __future__ import annotations

import errno
import functools
import socket
import tempfile

# (errno, system calls, why a program is refused them)
REFUSED: tuple[tuple[int, tuple[str, ...], str], ...] = (
    (
        errno.ENOSYS,
        ("add_key", "request_key", "keyctl"),
        "kernel keyrings are not namespaced: they would reach the trainer's keys and outlive the job",
    ),
    (
        errno.ENOSYS,
        ("io_uring_setup", "io_uring_enter", "io_uring_register"),
        "io_uring requests are not seen by seccomp",
    ),
    (errno.ENOSYS, ("bpf", "userfaultfd", "perf_event_open"), "kernel attack surface no program needs"),
    (errno.ENOSYS, ("clone3",), "its flags cannot be checked; glibc falls back to clone"),
    (
        errno.EPERM,
        ("bind", "connect", "listen", "accept", "accept4"),
        "no socket may name or reach another endpoint: socketpair only",
    ),
    (
        errno.EPERM,
        ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp"),
        "no access to other processes' memory or files",
    ),
    (
        errno.EPERM,
        (
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "mount_setattr",
            "unshare",
            "setns",
        ),
        "no new mounts or namespaces",
    ),
    (
        errno.EPERM,
        (
            "init_module",
            "finit_module",
            "delete_module",
            "kexec_load",
            "kexec_file_load",
            "reboot",
            "swapon",
            "swapoff",
            "settimeofday",
            "clock_settime",
            "clock_adjtime",
            "syslog",
            "acct",
            "quotactl",
            "quotactl_fd",
            "open_by_handle_at",
            "name_to_handle_at",
            "fanotify_init",
            "lookup_dcookie",
            "iopl",
            "ioperm",
            "vhangup",
            "uselib",
            "modify_ldt",
        ),
        "system administration",
    ),
)
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
RLIMIT_CORE = 4  # <sys/resource.h>, every Linux architecture but alpha/mips/sparc
PASSCRED_OPTIONS = (16, 76)  # SO_PASSCRED, SO_PASSPIDFD (<asm-generic/socket.h>)


class FilterUnavailable(RuntimeError):
    """libseccomp or its Python bindings are missing; the message says what to install."""


@functools.lru_cache(maxsize=1)
def compile_filter() -> bytes:
    """The BPF program (an array of `struct sock_filter`, 8 bytes each) for this machine's
    architecture. Raises `FilterUnavailable` saying what to install when libseccomp is missing."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError, AttributeError, TypeError) as e:  # the module loads libseccomp on import
        raise FilterUnavailable(
            f"the seccomp filter for sandboxed programs needs libseccomp and its Python bindings ({e}); "
            "install them with `apt-get install libseccomp2` and `pip install pyseccomp`"
        ) from None
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for err, names, _why in REFUSED:
        for name in names:
            try:
                f.add_rule(seccomp.ERRNO(err), name)
            except (ValueError, RuntimeError, OSError):  # not a system call of this architecture
                continue
    f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.NE, socket.AF_UNIX))
    for option in PASSCRED_OPTIONS:  # with these, sending a datagram binds the socket to an abstract name
        f.add_rule(
            seccomp.ERRNO(errno.EPERM),
            "setsockopt",
            seccomp.Arg(1, seccomp.EQ, socket.SOL_SOCKET),
            seccomp.Arg(2, seccomp.EQ, option),
        )
    for flag in NAMESPACE_FLAGS:  # clone(2) with any namespace flag (one rule per flag: rules are OR-ed)
        f.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    f.add_rule(seccomp.ERRNO(errno.EPERM), "setrlimit", seccomp.Arg(0, seccomp.EQ, RLIMIT_CORE))
    f.add_rule(
        seccomp.ERRNO(errno.EPERM), "prlimit64", seccomp.Arg(1, seccomp.EQ, RLIMIT_CORE), seccomp.Arg(2, seccomp.NE, 0)
    )
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        program = out.read()
    if not program or len(program) % 8:
        raise FilterUnavailable(f"libseccomp exported a malformed BPF program ({len(program)} bytes)")
    return program


def describe() -> str:
    """The filter in words, for `Sandbox.protections`."""
    parts = [f"{', '.join(names)}: {errno.errorcode[err]}" for err, names, _ in REFUSED]
    return (
        "seccomp filter per program (libseccomp; default allow): "
        + "; ".join(parts)
        + "; socket() but AF_UNIX: EAFNOSUPPORT; SO_PASSCRED/SO_PASSPIDFD: EPERM; clone with a namespace flag: EPERM; "
        "setting RLIMIT_CORE: EPERM; other syscall ABIs (i386, x32): killed"
    )


__all__ = ["REFUSED", "compile_filter", "describe", "FilterUnavailable"]
