"""Text in and out of a candidate's program: the code inside markdown fences, a completion cut at
its stop tokens, and the feedback a failed build or run gives (the end of its error output)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from rewards.sandbox import RunResult

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+#.-]*)[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL)


def strip_code_fences(text: str) -> str:
    """The code inside the first markdown fence (```python ... ```), a fence left open by a
    truncated generation included; text without fences is returned unchanged."""
    if "```" not in text:
        return text
    m = _FENCE.search(text)
    return m.group(2) if m else text.replace("```", "")


def truncate_at(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first of `stops` that occurs in it (all of it if none does)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def failure_text(result: RunResult, max_lines: int = 12) -> str:
    """Why a program did not build or run: the end of its error output (compiler or traceback)."""
    if result.timed_out:
        return "The program timed out."
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return (
        ("The program does not compile or run:\n" + "\n".join(lines[-max_lines:]))
        if lines
        else "The program does not compile or run."
    )
