"""What the compiled code rewards (C++, Java) share: the MultiPL-E record is parsed by
`rewards.multipl_e`, a checker built in the sandbox gives its expected values once per record
(a batch's new records at once), and the candidate's program, compiled with the harness, is
judged against them on the host."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rewards import multipl_e
from rewards.code.outcome import CodeResult
from rewards.code.reward import CodeReward, record_key
from rewards.code.text import failure_text, strip_code_fences, truncate_at
from rewards.errors import MalformedRecordError, SandboxError
from rewards.sandbox import Job, Limits, RunResult


class _CompiledCodeReward(CodeReward):
    """MultiPL-E programs: the candidate's own file (prompt + completion cut at the record's stop
    tokens + closing braces) compiled with the harness, then run; the checker gives the expected
    values once per record."""

    truncate_at_stop_tokens = True

    def clean(self, completion: str, reference: Any) -> str:
        code = strip_code_fences(completion)
        if self.truncate_at_stop_tokens and isinstance(reference, Mapping):
            code = truncate_at(code, reference.get("stop_tokens") or [])
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
            key = record_key(ref)
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
            return CodeResult(False, 0, total, results[0].timed_out, feedback=failure_text(results[0]))
        run = results[1]
        actual = multipl_e.parse_outputs(run.channel, total)
        verdicts = [multipl_e.same(e, a) for e, a in zip(plan.expected or [], actual)]
        failed = [plan.checks[i] for i, ok in enumerate(verdicts) if not ok]
        feedback = ("The program timed out.\n" if run.timed_out else "") + (
            f"This test failed: {plan.name}({failed[0][0]}) should be {failed[0][1]}" if failed else ""
        )
        return CodeResult(True, sum(verdicts), total, run.timed_out, feedback=feedback.strip())
