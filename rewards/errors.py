"""Exceptions a reward raises when it cannot produce an honest score.

`SandboxError`: the machinery that runs model-written code failed (no jail, a missing
toolchain, a failed canary, a server that keeps dying). It is never the model's fault, so it is
never turned into a score: the reward call raises and the run stops loudly.
`MalformedRecordError`: a reference record (test code) cannot be used; it names the record.
Imports: nothing.
"""

from __future__ import annotations


class SandboxError(RuntimeError):
    """The sandbox could not run or judge a program; the message names the cause."""


class MalformedRecordError(SandboxError, ValueError):
    """A reference record cannot be turned into tests (e.g. a syntax error in its test code)."""


__all__ = ["SandboxError", "MalformedRecordError"]
