"""A job's files: writing them into its dir (paths that escape it refused), and removing a dir
whatever a program left in it (fd-relative, never following symlinks). Jailed jobs need no
removal (each has its own tmpfs, unmounted afterwards); the unjailed server's do.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

import protocol  # the wire format (the server's directory is on sys.path)


def _write_files(jobdir: str, files: Mapping[str, str]) -> None:
    """Write the job's files (relative path -> base64 text, as the protocol carries them)."""
    for rel, text in files.items():
        data = protocol.unb64(text)
        path = os.path.normpath(os.path.join(jobdir, rel))
        if not path.startswith(jobdir + "/"):
            raise ValueError(f"file path escapes the job directory: {rel!r}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


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


def _remove_job_dir(path: str) -> None:
    try:
        _rmtree(path)
    except Exception:  # noqa: BLE001 - e.g. a tree nested deeper than Python recursion goes
        try:  # GNU rm walks any depth and never follows symlinks out of the tree
            pid = os.posix_spawn("/bin/rm", ["rm", "-rf", "--one-file-system", "--", path], {})
            os.waitpid(pid, 0)
        except OSError:
            pass


def _fresh_dir(parent: str) -> str:
    while True:
        path = os.path.join(parent, f"lmsb-{os.urandom(6).hex()}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
