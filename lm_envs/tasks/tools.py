"""Tools and replies that tasks use to speak mid-episode (the mechanism is `lm_envs.tasks.turns`).

* `calculator`: GSM8K's own annotation format. When the model writes ``<<48/2=``, the env
  injects ``24>>``. The expression is evaluated by `safe_arithmetic` (an AST walk over numbers
  and ``+ - * / // % **``, never ``eval``); anything else injects nothing.
* `CodeFeedback`: the ``respond`` of the code-feedback tasks. It runs each attempt's tests in the
  sandbox through the task's code reward and answers with the compiler error or the first
  failing test, asking for a corrected version; a passing attempt ends the episode.

May import `rewards` and `lm_envs.tasks.turns`; never models or agents.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Sequence
from typing import Any

from lm_envs.tasks.turns import Reply, Tool

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPRESSION_CHARS = 100
MAX_MAGNITUDE = 1e15


def safe_arithmetic(expression: str) -> float | int | None:
    """The value of an arithmetic expression, or ``None`` when it is not one we evaluate.

    Numbers (``1_000`` and ``1,000`` style separators are not numbers here), parentheses, unary
    ``+``/``-`` and ``+ - * / // % **``; exponents up to 64 and magnitudes up to 1e15, so no
    input can make the host spend more than microseconds. Division by zero gives ``None``.
    """
    text = expression.strip()
    if not text or len(text) > MAX_EXPRESSION_CHARS or "_" in text:
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None

    def value(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > MAX_MAGNITUDE):
                raise ValueError("exponent too large")
            result = _BINARY[type(node.op)](left, right)
            if isinstance(result, complex) or abs(result) > MAX_MAGNITUDE:
                raise ValueError("out of range")
            return result
        raise ValueError(f"not arithmetic: {type(node).__name__}")

    try:
        result = value(tree)
    except (ValueError, ZeroDivisionError, OverflowError, TypeError, RecursionError):
        return None
    if isinstance(result, float) and not math.isfinite(result):
        return None
    return result


def format_number(x: float | int) -> str:
    """GSM8K-style: integers without a point, other values to at most 6 decimals (``0.5``)."""
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.6f}".rstrip("0").rstrip(".")


def _calculate(match: re.Match) -> str | None:
    result = safe_arithmetic(match.group(1))
    return None if result is None else format_number(result) + ">>"


#: ``<<expression=`` at the end of the model's text; the env answers ``result>>``.
calculator = Tool("calculator", r"<<([0-9+\-*/%(). ]+)=", _calculate)


class CodeFeedback:
    """``respond`` for code tasks: score each attempt, and show a failing one what went wrong.

    :param reward: a `rewards.code.CodeReward` (its ``evaluate`` runs the sandbox and its
        ``to_score`` is the attempt's score).
    :param comment: ``None`` for chat tasks: the failure report is a user turn asking for a
        corrected version. For raw-code tasks (the model continues a function), the comment
        marker of the language (``"//"``): the report is written as comments, then the
        function's header line again, so the model's next turn is a new body.
    """

    REQUEST = "Write a corrected version of the whole function."

    def __init__(self, reward: Any, comment: str | None = None) -> None:
        if not hasattr(reward, "evaluate") or not hasattr(reward, "to_score"):
            raise TypeError(f"CodeFeedback needs a code reward with evaluate/to_score, got {type(reward).__name__}")
        self.reward, self.comment = reward, comment

    def __call__(self, attempts: Sequence[str], references: Sequence[Any], turns: Sequence[int]) -> list[Reply]:
        replies = []
        for result, reference in zip(self.reward.evaluate(list(attempts), list(references)), references):
            score = float(self.reward.to_score(result))
            if result.all_passed:
                replies.append(Reply(None, score))
                continue
            what = result.feedback or "The program does not pass the tests."
            if self.comment is None:
                replies.append(Reply(what, score, suffix="\n" + self.REQUEST))
            else:
                c = self.comment
                header = reference["prompt"].rstrip().splitlines()[-1]
                replies.append(
                    Reply(
                        "\n\n" + "\n".join(f"{c} {line}" for line in what.splitlines()),
                        score,
                        suffix=f"\n{c} {self.REQUEST}\n{header}\n",
                        chat=False,
                    )
                )
        return replies
