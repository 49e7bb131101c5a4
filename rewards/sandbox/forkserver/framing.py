"""Frames on the server's pipes (length-prefixed JSON, `protocol`): writing them whole, reading
exactly one (so the frames queued behind it stay in the pipe, out of the reader's memory), and
the header of a job, which is all of it a monitor ever reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import protocol  # the wire format (the server's directory is on sys.path)

_frame, _unframe = protocol.frame, protocol.unframe


def _write_all(fd: int, data: bytes) -> bool:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue
        except OSError:
            return False
    return True


def _read_exactly(fd: int, n: int) -> bytes | None:
    """Exactly `n` bytes from a blocking pipe (never more), or None at EOF."""
    parts, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _read_one_frame(fd: int) -> Any:
    """The next job frame, read exactly (the frames queued behind it stay in the pipe), or None
    at EOF. Called by a job runner after its fork, so no other job ever enters its memory."""
    head = _read_exactly(fd, 4)
    if head is None:
        return None
    n = int.from_bytes(head, "big")
    if n > protocol.MAX_FRAME:
        raise protocol.ProtocolError(f"frame of {n} bytes announced")
    body = _read_exactly(fd, n)
    return None if body is None else json.loads(body)  # from our own server


def _header(job: Mapping[str, Any]) -> dict[str, Any]:
    """What a monitor reads of a job: its id, limits, step kinds and (a one-step Python job) the
    shared prelude. Never its sources, argv, files or inputs: the process that runs the job reads
    those from the body pipe."""
    steps = job["steps"]
    head = {"id": job["id"], "limits": job["limits"], "kinds": [step["kind"] for step in steps]}
    if len(steps) == 1 and steps[0]["kind"] == "python" and steps[0].get("prelude"):
        head["prelude"] = steps[0]["prelude"]
    return head
