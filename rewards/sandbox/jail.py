"""The bubblewrap jail the fork server runs in: the command line, and whether it can run here.

One long-lived jail per `Sandbox` (per worker pool). What it gives every process inside:

- namespaces: new user, pid, ipc, net (empty: no network at all, no host or abstract unix
  sockets) and uts, plus cgroup where possible;
- privileges: `--cap-drop ALL`, no_new_privs (bubblewrap always sets it), `--die-with-parent`,
  `--new-session`; started as a throwaway uid when the host is root, so root and an
  unprivileged user get the same unprivileged jail;
- filesystem: a read-only root holding only /usr (and the /bin, /lib... links into it), the
  few /etc entries the toolchains read (ld.so.cache, alternatives, the JDK's config), a fresh
  /proc and a read-only minimal /dev; the server's own directory at /lmsb (server.py,
  protocol.py, the forkserver package: the whole of rewards/sandbox); each shared dir
  read-only at /lmsb-shared/<i>; a private tmpfs /tmp. Python's dist/site-packages dirs under
  /usr are masked with empty read-only dirs. Not there: /home, /root, /run, /var, /etc's
  other files, the repository, the data dirs, host sockets.

Where the jail cannot run, `unavailable_reason()` says why; `rewards.sandbox.Sandbox` then
refuses to start unless `allow_unsandboxed=True`. Imports: standard library only.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
from collections.abc import Sequence

SERVER_DIR = os.path.dirname(os.path.abspath(__file__))  # server.py, protocol.py, forkserver/
INSIDE_SERVER_DIR = "/lmsb"
INSIDE_SHARED = "/lmsb-shared"
TMP_SIZE = 1 << 30  # the jail's /tmp (all job dirs of the pool)
_ETC = ("/etc/ld.so.cache", "/etc/alternatives", *sorted(glob.glob("/etc/java-*")))
_MASKED = (
    "/usr/lib/python3/dist-packages",
    *sorted(glob.glob("/usr/local/lib/python3*")),
    *sorted(glob.glob("/usr/lib/python3*/site-packages")),
)


def bwrap() -> str | None:
    return shutil.which("bwrap")


def default_python() -> str:
    """The interpreter the jail runs: the system's /usr/bin/python3 (only /usr is mounted)."""
    return "/usr/bin/python3"


def jail_uid() -> tuple[int, int] | None:
    """(uid, gid) to start bubblewrap as: a throwaway id when we are root, else None (as we are)."""
    if os.geteuid() != 0:
        return None
    uid = (1 << 20) + int.from_bytes(os.urandom(3), "little")
    return uid, uid


def argv(python: str, server_fd: int, shared_fds: Sequence[int] = ()) -> list[str]:
    """bwrap command line that runs the fork server; `server_fd` and `shared_fds` are open
    O_PATH directory fds (passed with pass_fds) bind-mounted read-only inside."""
    args = [
        bwrap() or "bwrap",
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "lmsb",
        "--cap-drop",
        "ALL",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/local/bin:/usr/bin:/bin",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in _ETC:
        args += ["--ro-bind-try", path, path]
    for path in _MASKED:
        if os.path.isdir(path):
            args += ["--tmpfs", path, "--remount-ro", path]
    args += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--remount-ro",
        "/dev",
        "--size",
        str(TMP_SIZE),
        "--tmpfs",
        "/tmp",
        "--ro-bind-fd",
        str(server_fd),
        INSIDE_SERVER_DIR,
    ]
    for i, fd in enumerate(shared_fds):
        args += ["--ro-bind-fd", str(fd), f"{INSIDE_SHARED}/{i}"]
    args += ["--remount-ro", "/", "--chdir", "/tmp", "--", python, "-I", "-S", "-B", f"{INSIDE_SERVER_DIR}/server.py"]
    return args


def world_readable(path: str) -> bool:
    """Can any user list `path` and traverse every directory above it?"""
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


@functools.cache
def unavailable_reason(python: str | None = None) -> str | None:
    """None if the jail starts here (probed once per process), else why it does not."""
    exe = bwrap()
    if exe is None:
        return "bubblewrap (bwrap) is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    python = python or default_python()
    if not os.path.realpath(python).startswith("/usr/"):
        return f"the jail mounts only /usr, and the interpreter {python} lives elsewhere"
    if not os.access(python, os.X_OK):
        return f"no interpreter at {python} for the jail (Debian/Ubuntu: apt-get install python3)"
    fd = os.open(SERVER_DIR, os.O_PATH | os.O_DIRECTORY)
    try:
        cmd = argv(python, fd)
        cmd = cmd[: cmd.index("--") + 1] + [python, "-I", "-S", "-c", "print('ok')"]
        ids = jail_uid()
        kw = {"user": ids[0], "group": ids[1], "extra_groups": []} if ids else {}
        try:
            out = subprocess.run(
                cmd,
                pass_fds=[fd],
                capture_output=True,
                text=True,
                timeout=30,
                cwd="/",
                env={"PATH": "/usr/bin:/bin"},
                **kw,
            )
        except (OSError, subprocess.SubprocessError) as e:
            return f"bubblewrap could not be started: {e}"
        if out.returncode != 0 or out.stdout.strip() != "ok":
            return (
                f"bubblewrap failed (exit {out.returncode}): {out.stderr.strip()[-500:]} "
                "(user namespaces may be disabled: see sysctl kernel.unprivileged_userns_clone / "
                "user.max_user_namespaces, or an AppArmor userns restriction)"
            )
    finally:
        os.close(fd)
    return None
