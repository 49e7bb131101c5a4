"""Code-execution rewards: MBPP and HumanEval (Python), HumanEval-X C++ and Java (MultiPL-E).

Verdicts come from plain data, decided outside the candidate's reach. The sandbox
(`rewards.sandbox`, a bubblewrap jail) runs the candidate's code and calls it on the test
inputs; its return values come back as serialised plain data; the host applies each test's
comparison. Expected values and assertion logic never enter the jail. How each record is split:
`rewards.pyplan` (Python) and `rewards.multipl_e` (C++, Java), which also list the supported
assertion forms. A forged output line, an early exit, a macro, an object whose `__eq__` always
says yes: the worst any of them can achieve for a test is "failed".

Score, with configurable `CodeWeights`:

    does not compile (or is empty / too long)      -> compile_fail           (default 0.0)
    compiles, passes k of n tests                  -> compile_ok + pass_weight * k/n
                                                      (defaults 0.2 + 0.8 * k/n)

Whatever happens after the candidate starts (crash, kill, flood, timeout, out of memory) is a
failed test with a finite score. A host fault is never a score: a missing toolchain, a jail or
server that cannot start, a broken harness are retried (`retries`), then raised as
`rewards.SandboxError` naming the cause; they are counted in `sandbox_error_rate`. A record
that cannot be turned into tests raises `rewards.MalformedRecordError` naming it (`evaluate(...,
raise_errors=False)` returns it as that item's `CodeResult.error` and scores the rest). Each
reward runs a known-correct canary when built and raises unless it scores full marks.

By concern: `reward` (`CodeReward`: plan, run, retry, judge, score, metrics), `outcome`
(`CodeResult`, `CodeWeights`), `text` (`strip_code_fences`, stop tokens, feedback), `python`
(`MBPPReward`, `HumanEvalReward`), `compiled` (what C++ and Java share), `cpp`
(`HumanEvalCppReward`, `build_cpp_pch`) and `java` (`HumanEvalJavaReward`). The record loaders of
`rewards.data` are re-exported here.
Imports: standard library, numpy, `rewards.base`, `rewards.errors`, `rewards.data`, `rewards.degenerate`,
`rewards.pyplan`, `rewards.multipl_e`, `rewards.sandbox`.
"""

from __future__ import annotations

from pathlib import Path

from rewards.code.cpp import CPP_FLAGS, HumanEvalCppReward, build_cpp_pch
from rewards.code.java import JAVATUPLES_JAR, HumanEvalJavaReward
from rewards.code.outcome import CodeResult, CodeWeights
from rewards.code.python import HumanEvalReward, MBPPReward
from rewards.code.reward import JUDGED_CHANNEL_BYTES, CodeReward
from rewards.code.text import strip_code_fences
from rewards.data import DATA_DIR_ENV, load_humaneval, load_humaneval_x, load_mbpp, resolve_data_dir
from rewards.errors import MalformedRecordError, SandboxError


def default_data_dir() -> Path:
    """$LM_ENVS_DATA_DIR, else ../shared/data next to the repository."""
    local = resolve_data_dir()
    return local if local is not None else Path(__file__).resolve().parents[3] / "shared" / "data"


__all__ = [
    "CodeWeights",
    "CodeResult",
    "CodeReward",
    "MBPPReward",
    "HumanEvalReward",
    "HumanEvalCppReward",
    "HumanEvalJavaReward",
    "strip_code_fences",
    "build_cpp_pch",
    "CPP_FLAGS",
    "JAVATUPLES_JAR",
    "JUDGED_CHANNEL_BYTES",
    "load_mbpp",
    "load_humaneval",
    "load_humaneval_x",
    "default_data_dir",
    "DATA_DIR_ENV",
    "SandboxError",
    "MalformedRecordError",
]
