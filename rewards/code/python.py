"""The Python code rewards, MBPP and HumanEval: a record is split by `rewards.pyplan` into the
calls the jail makes (with the `rewards.pyplan.HARNESS` prelude) and the tests the host judges."""

from __future__ import annotations

from typing import Any

from rewards import pyplan
from rewards.code.outcome import CodeResult
from rewards.code.reward import CodeReward
from rewards.code.text import failure_text
from rewards.sandbox import Job, RunResult, python_job


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
            return CodeResult(False, 0, len(plan.tests), res.timed_out, feedback=failure_text(res))
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
