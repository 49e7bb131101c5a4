"""What one completion scored: `CodeResult` (compiled, tests passed, timed out, feedback) and the
`CodeWeights` that turn it into a number."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class CodeWeights(NamedTuple):
    """Score = compile_fail if the program does not compile, else compile_ok + pass_weight * pass fraction."""

    compile_fail: float = 0.0
    compile_ok: float = 0.2
    pass_weight: float = 0.8


@dataclass
class CodeResult:
    """How one completion did."""

    compiled: bool
    passed: int
    total: int
    timed_out: bool = False
    error: str | None = None  # a host fault or a malformed record (never the program's doing)
    feedback: str = ""  # what went wrong, for a multi-turn env to show the model (never used to score)

    @property
    def pass_fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.compiled and self.total > 0 and self.passed == self.total
