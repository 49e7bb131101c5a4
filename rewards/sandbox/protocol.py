"""The wire format between the host (`rewards.sandbox.client`) and the fork server
(`server.py` and its `forkserver` package): length-prefixed JSON frames, in both directions.

JSON, never pickle: the server runs inside the jail next to model-written programs, so
everything that comes back from it is treated as data a hostile program may have shaped.
`unframe` only ever builds dicts, lists, strings, numbers, booleans and None.

This module is loaded by the server as a plain top-level module (`import protocol`, from the
directory the jail mounts), so it imports the standard library only, nothing of ours.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

RESULT_FD = 3  # the result channel every program gets, next to stdout/stderr
CHANNEL_BYTES = 1 << 20  # cap of what the result channel keeps
MAX_FRAME = 256 << 20  # a frame announcing more than this is a protocol violation

# Limits as plain data (the host's `Limits` dataclass has the same fields and defaults).
LIMIT_DEFAULTS = {
    "wall_s": 5.0,
    "cpu_s": 5.0,
    "memory_mb": 512,
    "output_bytes": 64_000,
    "max_procs": 32,
    "file_mb": 16,
    "open_files": 256,
    "allow_subprocess": False,
    "disk_mb": 256,
    "channel_bytes": CHANNEL_BYTES,
}


class ProtocolError(ValueError):
    """A frame that is not what the protocol allows."""


def frame(obj: Any) -> bytes:
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return struct.pack(">I", len(data)) + data


def unframe(buf: bytearray) -> list[Any]:
    """Pop every complete frame off the front of `buf` (JSON only; raises ProtocolError)."""
    out = []
    while len(buf) >= 4:
        (n,) = struct.unpack_from(">I", buf)
        if n > MAX_FRAME:
            raise ProtocolError(f"frame of {n} bytes announced")
        if len(buf) < 4 + n:
            break
        try:
            out.append(json.loads(bytes(buf[4 : 4 + n]).decode("utf-8")))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ProtocolError(f"undecodable frame: {e}") from None
        del buf[: 4 + n]
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
