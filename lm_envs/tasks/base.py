"""The task type and what every task builder shares: `Task`, `RewardFn`, `validate_rows`, `make_reward`.

A `Task` is everything an env needs to know about a data set and nothing about models or
agents. `Task.prompt(i, tokenizer)` renders row ``i`` as text, through the tokenizer's chat
template when it has one (override with ``chat_template=False`` or a ``prompt_template``).
The builders (in the sibling modules of `lm_envs.tasks`) read data through `rewards.data`, drop
malformed rows through `validate_rows`, pick their reward with `make_reward` and assemble the
`Task` with the small helpers here (`_check_split`, `_limit`, `_build`). May import `rewards`;
never `policies` or `agents`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["RewardFn", "Task", "make_reward", "validate_rows"]

logger = logging.getLogger(__name__)

RewardFn = Callable[..., np.ndarray]  # reward(completions, references, prompts=None) -> float32 (n,)


@dataclass
class Task:
    """Prompts, references and the reward that scores completions against them.

    :param questions: the user-facing text of each row (the part a chat template wraps).
    :param references: what the reward compares against, one per row (a record or a field).
    :param reward: ``reward(completions, references, prompts=None) -> np.ndarray`` (float32).
    :param prompt_template: ``str.format`` template applied to a question, ``{question}`` by default.
    :param system_prompt: optional system message when the chat template is used.
    :param chat_template: ``None`` uses the tokenizer's chat template when it has one,
        ``True`` requires it, ``False`` uses the raw templated text.
    :param tools: `lm_envs.tasks.turns.Tool` s the model can call inline (the env injects their answers).
    :param respond: ``respond(attempts, references, turns) -> [Reply]``: what the env says when
        the model ends a turn (see `lm_envs.tasks.turns`); ``None``: the first turn ends the episode.
    """

    questions: Sequence[str]
    references: Sequence[Any]
    reward: RewardFn
    name: str = "task"
    prompt_template: str = "{question}"
    system_prompt: str | None = None
    chat_template: bool | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    tools: Sequence[Any] = ()
    respond: Callable[..., Sequence[Any]] | None = None

    def __post_init__(self) -> None:
        if len(self.questions) == 0:
            raise ValueError(f"task {self.name!r} has an empty data set")
        if len(self.questions) != len(self.references):
            raise ValueError(
                f"task {self.name!r}: {len(self.questions)} questions but {len(self.references)} references"
            )
        if not callable(self.reward):
            raise TypeError(f"task {self.name!r}: reward must be callable, got {type(self.reward).__name__}")
        if self.respond is not None and not callable(self.respond):
            raise TypeError(f"task {self.name!r}: respond must be callable, got {type(self.respond).__name__}")
        self.tools = tuple(self.tools)

    def __len__(self) -> int:
        return len(self.questions)

    def uses_chat_template(self, tokenizer: Any) -> bool:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.chat_template and not has_template:
            raise ValueError(f"task {self.name!r} asks for a chat template but the tokenizer has none")
        return has_template if self.chat_template is None else self.chat_template

    def prompt(self, index: int, tokenizer: Any) -> str:
        text = self.prompt_template.format(question=self.questions[index])
        if not self.uses_chat_template(tokenizer):
            return text
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": text})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def validate_rows(
    rows: Sequence[Any],
    required: Sequence[str],
    name: str,
    on_bad_row: str = "skip",
    check: Callable[[dict[str, Any]], bool] | None = None,
) -> list[dict[str, Any]]:
    """Drop (with one counted warning) or reject malformed rows.

    A row is malformed when it is not a dict (e.g. an unparsable JSON line, read as ``None``),
    lacks a required non-empty field, or fails the task's ``check`` (returns False or raises,
    e.g. a non-numeric gold answer). ``on_bad_row="error"`` raises instead of skipping.
    """
    if on_bad_row not in ("skip", "error"):
        raise ValueError(f"on_bad_row must be 'skip' or 'error', got {on_bad_row!r}")

    def ok(row: Any) -> bool:
        if not isinstance(row, dict) or any(row.get(key) in (None, "", []) for key in required):
            return False
        if check is None:
            return True
        try:
            return bool(check(row))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            return False

    good = [row for row in rows if ok(row)]
    dropped = len(rows) - len(good)
    if dropped:
        what = f"missing one of {list(required)}" + (" or failing the task's validity check" if check else "")
        if on_bad_row == "error":
            raise ValueError(f"{name}: {dropped} malformed rows ({what})")
        logger.warning("%s: skipped %d malformed rows (%s)", name, dropped, what)
    return good


def make_reward(reward: RewardFn | str | None, default: str, reward_kwargs: dict[str, Any] | None = None) -> RewardFn:
    """A reward object: ``reward`` itself when callable, else ``rewards.make(reward or default, **reward_kwargs)``."""
    import rewards

    if reward is not None and not isinstance(reward, str):
        if reward_kwargs:
            raise ValueError("reward_kwargs only apply when the reward is given by name")
        return reward
    return rewards.make(reward or default, **(reward_kwargs or {}))


def _check_split(name: str, split: str, allowed: Sequence[str], note: str = "") -> None:
    # No silent substitution: asking for a split a data set lacks is always an error.
    if split not in allowed:
        raise ValueError(f"{name} has split(s) {list(allowed)}, not {split!r}{note}")


def seeded_split(name: str, n: int, held_out: bool, size: int, seed: int) -> list[int]:
    """Row indices of one side of a fixed split: a ``seed`` permutation's first ``size`` rows are
    the held-out side, the rest the training side. Sorted, disjoint, and together all ``n`` rows."""
    if not 0 < size < n:
        raise ValueError(f"{name}: the held-out size must be in 1..{n - 1} for {n} rows, got {size}")
    import numpy as np

    order = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in (order[:size] if held_out else order[size:]))


def _limit(rows: list, limit: int | None) -> list:
    return rows if limit is None else rows[:limit]


def _build(
    rows: list[dict[str, Any]],
    question: Callable[[dict], str],
    reference: Callable[[dict], Any],
    reward: RewardFn,
    name: str,
    metadata: dict[str, Any],
    task_kwargs: dict[str, Any],
    **defaults: Any,
) -> Task:
    """A `Task` over validated rows; ``task_kwargs`` (prompt_template, chat_template...) win over defaults."""
    kwargs = {**defaults, **task_kwargs}
    kwargs["metadata"] = {**metadata, **kwargs.get("metadata", {})}
    return Task(
        questions=[question(r) for r in rows],
        references=[reference(r) for r in rows],
        reward=reward,
        name=name,
        **kwargs,
    )
