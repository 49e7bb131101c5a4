"""`CodeReward`, the machinery every code reward shares: clean the completion, plan the record
(cached), run the programs in a `rewards.sandbox.Sandbox`, retry host faults, judge, score, and
report metrics. A language adds its plan, its job and its judge (`rewards.code.python`,
`rewards.code.compiled`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rewards import pyplan
from rewards.base import Reward, as_text
from rewards.code.outcome import CodeResult, CodeWeights
from rewards.code.text import strip_code_fences
from rewards.degenerate import degenerate_rate
from rewards.errors import MalformedRecordError, SandboxError
from rewards.sandbox import Job, Limits, RunResult, Sandbox

# Of a program's result channel, what the host judges (`pyplan.parse_channel`,
# `multipl_e.parse_outputs`) and so what the sandbox keeps: honest MBPP/HumanEval output is at
# most 5.3 KB, and judging on the host stays cheap whatever a program writes.
JUDGED_CHANNEL_BYTES = pyplan.MAX_CHANNEL_CHARS
log = logging.getLogger("rewards.code")


def _infra_error(results: Sequence[RunResult]) -> str | None:
    if not results:
        return "the sandbox returned no result"
    for r in results:
        if r.error is not None:
            return r.error
    return None


def record_key(reference: Any) -> str:
    """A record's cache key: the SHA-256 of its canonical JSON (its repr where JSON fails)."""
    try:
        text = json.dumps(reference, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        text = repr(reference)
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


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
        key = record_key(reference)
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
                self._recent[(text, record_key(ref))] = (res, faults / max(1, len(texts)))
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
            self._plans.pop(record_key(record), None)
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
        recent = [self._recent.get((text, record_key(ref))) for text, ref in zip(texts, references)]
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
