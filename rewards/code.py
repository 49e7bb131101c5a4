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

Also here: `strip_code_fences`, `build_cpp_pch`, and the record loaders of `rewards.data`.
Imports: standard library, numpy, `rewards.base`, `rewards.errors`, `rewards.data`, `rewards.degenerate`,
`rewards.pyplan`, `rewards.multipl_e`, `rewards.sandbox`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rewards import multipl_e, pyplan
from rewards.base import Reward, as_text
from rewards.data import DATA_DIR_ENV, load_humaneval, load_humaneval_x, load_mbpp, resolve_data_dir
from rewards.degenerate import degenerate_rate
from rewards.errors import MalformedRecordError, SandboxError
from rewards.sandbox import Job, Limits, RunResult, Sandbox, command_job, python_job

JAVATUPLES_JAR = "/usr/share/java/javatuples.jar"  # Debian's libjavatuples-java
# Of a program's result channel, what the host judges (`pyplan.parse_channel`,
# `multipl_e.parse_outputs`) and so what the sandbox keeps: honest MBPP/HumanEval output is at
# most 5.3 KB, and judging on the host stays cheap whatever a program writes.
JUDGED_CHANNEL_BYTES = pyplan.MAX_CHANNEL_CHARS
log = logging.getLogger(__name__)


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


def default_data_dir() -> Path:
    """$LM_ENVS_DATA_DIR, else ../shared/data next to the repository."""
    local = resolve_data_dir()
    return local if local is not None else Path(__file__).resolve().parents[2] / "shared" / "data"


# ----------------------------------------------------------------------------------- helpers

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+#.-]*)[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL)


def strip_code_fences(text: str) -> str:
    """The code inside the first markdown fence (```python ... ```), a fence left open by a
    truncated generation included; text without fences is returned unchanged."""
    if "```" not in text:
        return text
    m = _FENCE.search(text)
    return m.group(2) if m else text.replace("```", "")


def _truncate_at(text: str, stops: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def _infra_error(results: Sequence[RunResult]) -> str | None:
    if not results:
        return "the sandbox returned no result"
    for r in results:
        if r.error is not None:
            return r.error
    return None


def _failure_text(result: RunResult, max_lines: int = 12) -> str:
    """Why a program did not build or run: the end of its error output (compiler or traceback)."""
    if result.timed_out:
        return "The program timed out."
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return (
        ("The program does not compile or run:\n" + "\n".join(lines[-max_lines:]))
        if lines
        else "The program does not compile or run."
    )


def _record_key(reference: Any) -> str:
    try:
        text = json.dumps(reference, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        text = repr(reference)
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


# ----------------------------------------------------------------------------------- base class


class CodeReward(Reward):
    """Shared machinery: clean the completion, plan the record, run in a `Sandbox`, judge, retry.

    :param weights: `CodeWeights` (or a tuple / mapping of its fields).
    :param workers: programs run at once (default: 2 per CPU).
    :param sandbox: a `Sandbox` to share (default: one of its own, closed by `close`).
    :param limits: per-program `Limits` of the candidate's run.
    :param max_completion_chars: longer completions score as not compiling.
    :param retries: how often a host fault is retried before `SandboxError` is raised.
    :param canary: run the known-correct canary at construction (raise unless full marks).
    :param allow_unsandboxed: run without the bubblewrap jail where it cannot start (see
        `rewards.sandbox.Sandbox`); never implied.
    """

    name = "code"
    language = "python"  # the degenerate-body rule of `rewards.degenerate` that applies
    CANARY: tuple[str, Mapping[str, Any]] | None = None

    def __init__(
        self,
        weights: CodeWeights | Sequence[float] | Mapping[str, float] = CodeWeights(),
        workers: int | None = None,
        sandbox: Sandbox | None = None,
        limits: Limits | None = None,
        max_completion_chars: int = 100_000,
        *,
        retries: int = 2,
        canary: bool = True,
        allow_unsandboxed: bool = False,
    ) -> None:
        if isinstance(weights, Mapping):
            weights = CodeWeights(**weights)
        self.weights = CodeWeights(*weights)
        self.workers = workers
        limits = limits or self.default_limits()
        # The judge reads at most this much of a result channel: the sandbox need not send more.
        self.limits = dataclasses.replace(limits, channel_bytes=min(limits.channel_bytes, JUDGED_CHANNEL_BYTES))
        self.max_completion_chars = max_completion_chars
        self.retries = int(retries)
        self.allow_unsandboxed = allow_unsandboxed
        self._sandbox = sandbox
        self._owns_sandbox = sandbox is None
        self._plans: dict[str, Any] = {}
        self._last: tuple[list[str], list[CodeResult], int] | None = None
        # (completion, record key) -> (result, its call's faults per item): `metrics` finds what
        # was scored in several calls (an env scoring rows as they finish) without running it again.
        self._recent: OrderedDict[tuple[str, str], tuple[CodeResult, float]] = OrderedDict()
        self.faults = 0  # host faults seen over this reward's life (retried or raised)
        if canary:
            self.check_canary()

    # -- to override
    def default_limits(self) -> Limits:
        return Limits(wall_s=10.0, cpu_s=5.0, memory_mb=1024)

    def make_sandbox(self) -> Sandbox:
        return Sandbox(workers=self.workers, allow_unsandboxed=self.allow_unsandboxed)

    def make_plan(self, reference: Any) -> Any:
        """The record's tests, split for jail and host; raises MalformedRecordError."""
        raise NotImplementedError

    def job(self, code: str, plan: Any) -> Job:
        raise NotImplementedError

    def judge(self, results: list[RunResult], plan: Any) -> CodeResult:
        """Score fault-free results (no `RunResult.error`)."""
        raise NotImplementedError

    def n_tests(self, plan: Any) -> int:
        raise NotImplementedError

    def clean(self, completion: str, reference: Any) -> str:
        return strip_code_fences(completion)

    # -- shared
    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = self.make_sandbox()
        return self._sandbox

    def close(self) -> None:
        if self._owns_sandbox and self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    def prepare(self, references: Sequence[Any]) -> None:
        """Plan the batch's records ahead (a hook: compiled rewards plan them in parallel)."""

    def plan(self, reference: Any) -> Any:
        """`make_plan`, cached per record (malformed records too)."""
        key = _record_key(reference)
        cached = self._plans.get(key)
        if cached is None:
            try:
                cached = self.make_plan(reference)
            except MalformedRecordError as e:
                cached = e
            except (KeyError, TypeError, AttributeError) as e:
                cached = MalformedRecordError(f"{self.name}: not a usable record ({type(e).__name__}: {e})")
            if len(self._plans) > 10_000:
                self._plans.clear()
            self._plans[key] = cached
        if isinstance(cached, MalformedRecordError):
            raise cached
        return cached

    def run_jobs(self, jobs: Sequence[Job], what: str) -> tuple[list[list[RunResult] | None], int, str | None]:
        """Run jobs, retrying those that hit a host fault. Returns per job its results (None if
        every try failed), the number of faults and the last fault's cause."""
        out: list[list[RunResult] | None] = [None] * len(jobs)
        todo = list(range(len(jobs)))
        faults, cause = 0, None
        restarts = self.sandbox.restarts
        for _ in range(self.retries + 1):
            if not todo:
                break
            try:
                futures = self.sandbox.submit([jobs[i] for i in todo])
                results = [f.result() for f in futures]
            except SandboxError as e:
                results = [[RunResult(None, "", "", False, None, 0.0, error=str(e))] for _ in todo]
            again = []
            for i, res in zip(todo, results):
                err = _infra_error(res)
                if err is None:
                    out[i] = res
                else:
                    faults, cause = faults + 1, err
                    again.append(i)
            todo = again
        if restarts >= 0 and self.sandbox.restarts > restarts:  # server deaths, even when resending fixed them
            faults += self.sandbox.restarts - restarts
            cause = cause or "the sandbox server died and was restarted"
        if faults:
            self.faults += faults
            log.warning(
                "%s: %d sandbox fault(s) while %s (last: %s)%s",
                self.name,
                faults,
                what,
                cause,
                "; gave up" if todo else "; recovered by retrying",
            )
        return out, faults, cause

    def evaluate(
        self,
        completions: Sequence[str],
        references: Sequence[Any],
        prompts: Sequence[str] | None = None,
        *,
        raise_errors: bool = True,
    ) -> list[CodeResult]:
        """Per-completion outcomes (what `score` turns into numbers). Raises `SandboxError` when
        a host fault survives the retries and `MalformedRecordError` for an unusable record,
        unless `raise_errors=False` (they are then each item's `CodeResult.error`)."""
        texts = [as_text(c) for c in completions]
        self.prepare(references)
        out: list[CodeResult | None] = [None] * len(texts)
        todo: list[tuple[int, Any]] = []
        jobs: list[Job] = []
        malformed: list[tuple[int, MalformedRecordError]] = []
        faults = 0
        for i, (text, ref) in enumerate(zip(texts, references)):
            try:
                plan = self.plan(ref)
            except MalformedRecordError as e:
                out[i] = CodeResult(False, 0, 0, error=str(e))
                malformed.append((i, e))
                continue
            except SandboxError as e:  # planning needed the sandbox (the checker) and it failed
                faults += 1
                out[i] = CodeResult(False, 0, 0, error=str(e))
                continue
            code = self.clean(text, ref)
            if not code.strip() or len(code) > self.max_completion_chars:
                out[i] = CodeResult(False, 0, self.n_tests(plan))
                continue
            todo.append((i, plan))
            jobs.append(self.job(code, plan))
        results, run_faults, _ = self.run_jobs(jobs, f"scoring {len(jobs)} programs") if jobs else ([], 0, None)
        faults += run_faults
        for (i, plan), res in zip(todo, results):
            if res is None:
                out[i] = CodeResult(False, 0, self.n_tests(plan), error="sandbox fault (retries exhausted)")
            else:
                out[i] = self.judge(res, plan)
        self._last = (texts, out, faults)  # type: ignore[assignment]
        for text, ref, res in zip(texts, references, out):
            if res is not None and res.error is None:
                self._recent[(text, _record_key(ref))] = (res, faults / max(1, len(texts)))
        while len(self._recent) > 4096:
            self._recent.popitem(last=False)
        if raise_errors:
            failed = [
                (i, r.error)
                for i, r in enumerate(out)
                if r is not None and r.error and not any(i == j for j, _ in malformed)
            ]
            if failed:
                raise SandboxError(
                    f"{self.name}: {len(failed)} of {len(out)} completions could not be judged "
                    f"(host fault after {self.retries} retries): {failed[0][1]}"
                )
            if malformed:
                i, e = malformed[0]
                raise MalformedRecordError(
                    f"{self.name}: reference {i} is malformed: {e}"
                    + (f" (and {len(malformed) - 1} more)" if len(malformed) > 1 else "")
                )
        return out  # type: ignore[return-value]

    def check_canary(self) -> None:
        """Score the known-correct canary; raise SandboxError unless it gets full marks."""
        if self.CANARY is None:
            return
        completion, record = self.CANARY
        res = None
        for _ in range(self.retries + 1):
            res = self.evaluate([completion], [record], raise_errors=False)[0]
            if res.all_passed and res.error is None:
                return
            self.faults += 1
            self._plans.pop(_record_key(record), None)
        raise SandboxError(
            f"{self.name}: the canary (a known-correct program) did not score full marks "
            f"({res}); the sandbox or a toolchain does not work here"
        )

    def to_score(self, r: CodeResult) -> float:
        w = self.weights
        return w.compile_ok + w.pass_weight * r.pass_fraction if r.compiled else w.compile_fail

    def score(self, completions: list[str], references: list[Any], prompts: list[str] | None) -> Sequence[float]:
        return [self.to_score(r) for r in self.evaluate(completions, references, prompts)]

    def metrics(self, completions: Sequence[str], references: Sequence[Any], scores: np.ndarray) -> dict[str, float]:
        """compile_rate, degenerate_rate (bodies that are one constant ``return``, see
        `rewards.degenerate`), pass@1 (all tests passed), mean test pass fraction, timeout rate and
        sandbox_error_rate: host faults per completion in the batch (retried ones included)."""
        texts = [as_text(c) for c in completions]
        recent = [self._recent.get((text, _record_key(ref))) for text, ref in zip(texts, references)]
        if self._last is not None and self._last[0] == texts:  # the batch just scored
            results, faults = self._last[1], self._last[2]
        else:  # what was scored already, in one or more calls, is not run again
            missing = [i for i, r in enumerate(recent) if r is None]
            fresh = self.evaluate([texts[i] for i in missing], [references[i] for i in missing]) if missing else []
            found = dict(zip(missing, fresh))
            results = [found[i] if r is None else r[0] for i, r in enumerate(recent)]
            faults = sum(r[1] for r in recent if r is not None) + (self._last[2] if missing and self._last else 0)
        n = max(1, len(results))
        return {
            "compile_rate": sum(r.compiled for r in results) / n,
            "degenerate_rate": degenerate_rate(self.language, texts, references),
            "pass@1": sum(r.all_passed for r in results) / n,
            "test_pass_rate": sum(r.pass_fraction for r in results) / n,
            "timeout_rate": sum(r.timed_out for r in results) / n,
            "sandbox_error_rate": faults / n,
        }

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


# ----------------------------------------------------------------------------------- Python


class _PythonCodeReward(CodeReward):
    def n_tests(self, plan: pyplan.PyPlan) -> int:
        return len(plan.tests)

    def job(self, code: str, plan: pyplan.PyPlan) -> Job:
        source = "_lmsb_main(%r, %r, %r)\n" % (plan.source_prefix + code, plan.jail_calls, plan.jail_setup)
        return python_job(source, self.limits, prelude=pyplan.HARNESS)

    def judge(self, results: list[RunResult], plan: pyplan.PyPlan) -> CodeResult:
        res = results[-1]
        compiled, outputs = pyplan.parse_channel(res.channel, plan.channel_lines)
        if not compiled:
            return CodeResult(False, 0, len(plan.tests), res.timed_out, feedback=_failure_text(res))
        verdicts = pyplan.judge(plan, outputs, self.name)
        failed = [plan.units[plan.tests[i]].strip() for i, ok in enumerate(verdicts) if not ok]
        feedback = ("The program timed out.\n" if res.timed_out else "") + (
            f"This test failed:\n{failed[0]}" if failed else ""
        )
        return CodeResult(True, sum(verdicts), len(verdicts), res.timed_out, feedback=feedback.strip())


class MBPPReward(_PythonCodeReward):
    """MBPP: the completion is the whole function; each assert of `test_list` is one test (after
    `test_setup_code`). `challenge_tests=True` adds `challenge_test_list`."""

    name = "mbpp"
    CANARY = (
        "def add_lists(xs, ys):\n    return [x + y for x, y in zip(xs, ys)]\n",
        {
            "task_id": "canary",
            "text": "Add two lists elementwise.",
            "code": "def add_lists(xs, ys):\n    return [x + y for x, y in zip(xs, ys)]\n",
            "test_list": [
                "assert add_lists([1, 2], [3, 4]) == [4, 6]",
                "assert add_lists([], []) == []",
                "assert add_lists((1.5,), (2,)) == [3.5]",
            ],
            "test_setup_code": "",
            "challenge_test_list": [],
        },
    )

    def __init__(self, *args: Any, challenge_tests: bool = False, **kwargs: Any) -> None:
        self.challenge_tests = challenge_tests
        super().__init__(*args, **kwargs)

    def make_plan(self, reference: Any) -> pyplan.PyPlan:
        return pyplan.mbpp_plan(reference, self.challenge_tests)


class HumanEvalReward(_PythonCodeReward):
    """Python HumanEval: program = prompt + completion (the function body; a complete function,
    even fenced, also works since it redefines the stub). Each statement of `check` that
    asserts something about a candidate call is one test."""

    name = "humaneval"
    CANARY = (
        "    return [(a, b) for a, b in zip(xs, xs[1:])]\n",
        {
            "task_id": "canary/0",
            "entry_point": "pairs",
            "prompt": 'def pairs(xs: list):\n    """Adjacent pairs of xs."""\n',
            "test": "def check(candidate):\n    assert candidate([1, 2, 3]) == [(1, 2), (2, 3)]\n"
            "    assert candidate([]) == []\n",
        },
    )

    def make_plan(self, reference: Any) -> pyplan.PyPlan:
        return pyplan.humaneval_plan(reference)


# ----------------------------------------------------------------------------------- C++ / Java


class _CompiledCodeReward(CodeReward):
    """MultiPL-E programs: the candidate's own file (prompt + completion cut at the record's stop
    tokens + closing braces) compiled with the harness, then run; the checker gives the expected
    values once per record."""

    truncate_at_stop_tokens = True

    def clean(self, completion: str, reference: Any) -> str:
        code = strip_code_fences(completion)
        if self.truncate_at_stop_tokens and isinstance(reference, Mapping):
            code = _truncate_at(code, reference.get("stop_tokens") or [])
        return code

    def n_tests(self, plan: multipl_e.Plan) -> int:
        return len(plan.checks)

    def compile_limits(self) -> Limits:
        return Limits(wall_s=60.0, cpu_s=30.0, memory_mb=2048, max_procs=32, file_mb=256)

    def plan_job(self, plan: multipl_e.Plan) -> Job:
        raise NotImplementedError

    def prepare(self, references: Sequence[Any]) -> None:
        """Build the checkers of all new records of the batch at once."""
        todo: dict[str, multipl_e.Plan] = {}
        for ref in references:
            key = _record_key(ref)
            if key in self._plans or key in todo:
                continue
            try:
                todo[key] = self.parse_record(ref)
            except MalformedRecordError as e:
                self._plans[key] = e
            except (KeyError, TypeError, AttributeError):
                continue  # `plan` reports it
        if len(todo) < 2:
            return
        keys = list(todo)
        results, _, cause = self.run_jobs([self.plan_job(todo[k]) for k in keys], f"building {len(keys)} checkers")
        for key, steps in zip(keys, results):
            if steps is not None:
                try:
                    self._plans[key] = self._finish_plan(todo[key], steps)
                except MalformedRecordError as e:
                    self._plans[key] = e

    def make_plan(self, reference: Any) -> multipl_e.Plan:
        plan = self.parse_record(reference)
        results, _, cause = self.run_jobs([self.plan_job(plan)], f"building the checker of {plan.record}")
        if results[0] is None:
            raise SandboxError(f"{self.name}: could not build the checker of {plan.record}: {cause}")
        return self._finish_plan(plan, results[0])

    def _finish_plan(self, plan: multipl_e.Plan, steps: list[RunResult]) -> multipl_e.Plan:
        if not all(r.ok for r in steps) or len(steps) < 2:
            bad = next((r for r in steps if not r.ok), steps[-1])
            raise MalformedRecordError(
                f"{plan.record}: its harness or expected values do not build/run "
                f"(exit {bad.returncode}): {(bad.stderr or bad.stdout)[-800:]}"
            )
        expected = multipl_e.parse_outputs(steps[-1].channel, len(plan.checks))
        if any(e is multipl_e.MISSING for e in expected):
            raise MalformedRecordError(f"{plan.record}: an expected value could not be evaluated")
        plan.expected = expected
        return plan

    def judge(self, results: list[RunResult], plan: multipl_e.Plan) -> CodeResult:
        total = len(plan.checks)
        if not results[0].ok or len(results) < 2:
            return CodeResult(False, 0, total, results[0].timed_out, feedback=_failure_text(results[0]))
        run = results[1]
        actual = multipl_e.parse_outputs(run.channel, total)
        verdicts = [multipl_e.same(e, a) for e, a in zip(plan.expected or [], actual)]
        failed = [plan.checks[i] for i, ok in enumerate(verdicts) if not ok]
        feedback = ("The program timed out.\n" if run.timed_out else "") + (
            f"This test failed: {plan.name}({failed[0][0]}) should be {failed[0][1]}" if failed else ""
        )
        return CodeResult(True, sum(verdicts), total, run.timed_out, feedback=feedback.strip())


_JVM_FLAGS = (
    "-Xmx256m",
    "-Xss8m",
    "-XX:CompressedClassSpaceSize=64m",
    "-XX:MaxMetaspaceSize=192m",
    "-XX:ReservedCodeCacheSize=48m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:CICompilerCount=1",
    "-XX:-UsePerfData",
    "-Xshare:auto",
)


def _cache_dir() -> Path:
    # The same user cache as the embedded model's (policies.loading.cache_dir).
    env = os.environ.get("LM_SB_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lm_stable_baselines"


CPP_FLAGS = ("-std=c++17", "-O0")


def build_cpp_pch(cache_dir: str | os.PathLike | None = None, compiler: str = "g++") -> Path | None:
    """Build (once per machine) a precompiled <bits/stdc++.h> for CPP_FLAGS; returns the include
    dir to put first on the path, or None when g++ or a writable cache is missing. Cuts each
    MultiPL-E compile about 4x, since every prompt includes that header."""
    gxx = shutil.which(compiler)
    if gxx is None:
        return None
    try:
        probe = subprocess.run(
            [gxx, *CPP_FLAGS, "-x", "c++", "-E", "-H", "-o", os.devnull, "-"],
            input=b"#include <bits/stdc++.h>\n",
            capture_output=True,
            timeout=60,
        )
        header = next(
            line.split(" ", 1)[1]
            for line in probe.stderr.decode().splitlines()
            if line.startswith(". ") and line.endswith("bits/stdc++.h")
        )
        version = subprocess.run([gxx, "--version"], capture_output=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError, StopIteration, IndexError):
        return None
    key = hashlib.sha256(version + repr((CPP_FLAGS, header, os.stat(header).st_mtime)).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir else _cache_dir()
    final = root / f"cpp-pch-{key}"
    if (final / "bits" / "stdc++.h.gch").is_file():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="cpp-pch-tmp-", dir=root))
        (tmp / "bits").mkdir()
        os.symlink(header, tmp / "bits" / "stdc++.h")  # a PCH that gcc rejects falls back to this
        subprocess.run(
            [gxx, *CPP_FLAGS, "-x", "c++-header", header, "-o", str(tmp / "bits" / "stdc++.h.gch")],
            check=True,
            capture_output=True,
            timeout=600,
        )
        for p in (tmp, tmp / "bits", tmp / "bits" / "stdc++.h.gch"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        try:
            os.rename(tmp, final)  # atomic: a concurrent builder either wins or loses whole
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        return final if (final / "bits" / "stdc++.h.gch").is_file() else None
    except (OSError, subprocess.SubprocessError):
        return None


class HumanEvalCppReward(_CompiledCodeReward):
    """HumanEval-X C++ (MultiPL-E): `g++ -std=c++17 -O0` of the candidate's translation unit and
    the harness's, then run; each `assert` of the tests' `main` is one test. `pch=True` uses a
    cached precompiled <bits/stdc++.h> (built on first use, see `build_cpp_pch`)."""

    name = "humaneval-cpp"
    language = "cpp"
    CANARY = (
        "    for (auto& x : xs) x += y;\n    return xs;\n",
        {
            "name": "canary_add_all",
            "stop_tokens": ["\n}"],
            "prompt": "#include<assert.h>\n#include<bits/stdc++.h>\n// Add y to every element.\n"
            "std::vector<long> add_all(std::vector<long> xs, long y) {\n",
            "tests": "}\nint main() {\n    auto candidate = add_all;\n"
            "    assert(candidate((std::vector<long>({(long)1, (long)2})), (3)) == "
            "(std::vector<long>({(long)4, (long)5})));\n"
            "    assert(candidate((std::vector<long>()), (1)) == (std::vector<long>()));\n}\n",
        },
    )

    def __init__(self, *args: Any, pch: bool = True, compiler: str = "g++", **kwargs: Any) -> None:
        self.compiler = compiler
        self.pch = pch
        self.pch_dir: Path | None = None
        super().__init__(*args, **kwargs)

    def make_sandbox(self) -> Sandbox:
        # First use: build the PCH (seconds, once per machine) before the server starts, so the
        # server can share its directory read-only with every compile.
        if self.pch and self.pch_dir is None:
            self.pch_dir = build_cpp_pch(compiler=self.compiler)
        return Sandbox(
            workers=self.workers,
            shared_dirs=[str(self.pch_dir)] if self.pch_dir else (),
            allow_unsandboxed=self.allow_unsandboxed,
        )

    def parse_record(self, reference: Any) -> multipl_e.Plan:
        return multipl_e.cpp_plan(reference)

    def _gxx(self, *args: str) -> list[str]:
        cmd = [self.compiler, *CPP_FLAGS, "-w"]
        inside = self.sandbox.shared_path(str(self.pch_dir)) if self.pch_dir else None
        if inside:
            cmd += ["-I", inside, "-include", "bits/stdc++.h"]
        return cmd + list(args)

    def plan_job(self, plan: multipl_e.Plan) -> Job:
        files = {"harness.cpp": plan.harness, "stub.cpp": plan.stub, "checker.cpp": plan.checker}
        steps = [
            self._gxx("-fsyntax-only", "harness.cpp", "stub.cpp"),
            self._gxx("-o", "checker", "checker.cpp"),
            ["./checker"],
        ]
        return command_job(steps, files, [self.compile_limits(), self.compile_limits(), self.limits])

    def job(self, code: str, plan: multipl_e.Plan) -> Job:
        files = {"main.cpp": plan.candidate_prefix + code + plan.candidate_suffix, "harness.cpp": plan.harness}
        return command_job(
            [self._gxx("-o", "prog", "main.cpp", "harness.cpp"), ["./prog"]],
            files,
            [self.compile_limits(), self.limits],
        )


class HumanEvalJavaReward(_CompiledCodeReward):
    """HumanEval-X Java (MultiPL-E): javac of the candidate's class and the harness class, then
    `java` with javatuples on the classpath; each `assert` of `main` is one test."""

    name = "humaneval-java"
    language = "java"
    CANARY = (
        "        return Pair.with(Collections.min(xs), Collections.max(xs));\n",
        {
            "name": "canary_min_max",
            "stop_tokens": ["\n    }\n"],
            "prompt": "import java.util.*;\nimport org.javatuples.*;\nclass Problem {\n"
            "    // The smallest and the largest element.\n"
            "    public static Pair<Long, Long> minMax(ArrayList<Long> xs) {\n",
            "tests": "    }\n    public static void main(String[] args) {\n"
            "    assert(minMax((new ArrayList<Long>(Arrays.asList((long)3l, (long)1l, (long)2l))))"
            ".equals((Pair.with(1l, 3l))));\n"
            "    assert(minMax((new ArrayList<Long>(Arrays.asList((long)-5l))))"
            ".equals((Pair.with(-5l, -5l))));\n    }\n\n}\n",
        },
    )

    def __init__(self, *args: Any, classpath: Sequence[str] = (JAVATUPLES_JAR,), **kwargs: Any) -> None:
        self.classpath = list(classpath)
        super().__init__(*args, **kwargs)

    def default_limits(self) -> Limits:
        return Limits(wall_s=10.0, cpu_s=10.0, memory_mb=1536, max_procs=128)

    def compile_limits(self) -> Limits:
        return Limits(wall_s=60.0, cpu_s=60.0, memory_mb=2048, max_procs=128, file_mb=64)

    def make_sandbox(self) -> Sandbox:
        dirs = sorted(
            {
                os.path.dirname(os.path.realpath(p))
                for p in self.classpath
                if not os.path.realpath(p).startswith("/usr/") and os.path.isdir(os.path.dirname(p))
            }
        )
        return Sandbox(workers=self.workers, shared_dirs=dirs, allow_unsandboxed=self.allow_unsandboxed)

    def parse_record(self, reference: Any) -> multipl_e.Plan:
        return multipl_e.java_plan(reference)

    def _cp(self) -> str:
        parts = []
        for p in self.classpath:
            real = os.path.realpath(p)
            inside = (
                None
                if real.startswith("/usr/") or not os.path.isdir(os.path.dirname(real))
                else self.sandbox.shared_path(os.path.dirname(real))
            )
            parts.append(os.path.join(inside, os.path.basename(real)) if inside else real)
        return ":".join(["."] + parts)

    def _javac(self, *files: str) -> list[str]:
        return [
            "javac",
            *(f"-J{f}" for f in _JVM_FLAGS),
            "-encoding",
            "UTF-8",
            "-nowarn",
            "-d",
            ".",
            "-cp",
            self._cp(),
            *files,
        ]

    def _java(self, cls: str) -> list[str]:
        return ["java", *_JVM_FLAGS, "-cp", self._cp(), cls]

    def plan_job(self, plan: multipl_e.Plan) -> Job:
        files = {
            "LmsbHarness.java": plan.harness,
            f"{plan.class_name}.java": plan.stub,
            "LmsbExpected.java": plan.checker,
        }
        steps = [
            self._javac("LmsbHarness.java", f"{plan.class_name}.java", "LmsbExpected.java"),
            self._java("LmsbExpected"),
        ]
        return command_job(steps, files, [self.compile_limits(), self.limits])

    def job(self, code: str, plan: multipl_e.Plan) -> Job:
        files = {
            f"{plan.class_name}.java": plan.candidate_prefix + code + plan.candidate_suffix,
            "LmsbHarness.java": plan.harness,
        }
        steps = [self._javac(f"{plan.class_name}.java", "LmsbHarness.java"), self._java("LmsbHarness")]
        return command_job(steps, files, [self.compile_limits(), self.limits])


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
    "load_mbpp",
    "load_humaneval",
    "load_humaneval_x",
    "default_data_dir",
    "DATA_DIR_ENV",
    "SandboxError",
    "MalformedRecordError",
]
