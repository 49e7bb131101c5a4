"""The `Reward` interface every reward in this package implements, plus `FunctionReward`.

A reward maps a batch of completions (and their references, optionally their prompts) to one
float32 score per completion. Subclasses implement `score`; `Reward.__call__` does the shared
work: length checks, turning odd inputs (bytes, None, lone surrogates) into clean text and
shaping the result. Imports: standard library and numpy only.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def as_text(x: Any) -> str:
    """Best-effort clean `str` for any completion: rewards score it rather than crash."""
    if x is None:
        return ""
    if isinstance(x, (bytes, bytearray)):
        return bytes(x).decode("utf-8", errors="replace")
    s = x if isinstance(x, str) else str(x)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: fine for `re`, fatal for Rust tokenizers
        s = s.encode("utf-8", errors="replace").decode("utf-8")
    return s


class Reward(abc.ABC):
    """Abstract batched reward. Subclasses set `name` and implement `score`."""

    name: str = "reward"

    def __call__(
        self,
        completions: Sequence[str],
        references: Sequence[Any] | None,
        prompts: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Score a batch; returns float32 of shape (len(completions),).

        `references=None` is allowed for rewards that ignore references (e.g. toxicity).
        """
        if isinstance(completions, (str, bytes)):
            raise TypeError("completions must be a sequence of strings, not a single string")
        texts = [as_text(c) for c in completions]
        refs = [None] * len(texts) if references is None else list(references)
        if len(refs) != len(texts):
            raise ValueError(
                f"{self.name}: got {len(texts)} completions but {len(refs)} references; they must have equal lengths"
            )
        if prompts is not None:
            prompts = [as_text(p) for p in prompts]
            if len(prompts) != len(texts):
                raise ValueError(
                    f"{self.name}: got {len(texts)} completions but {len(prompts)} prompts; "
                    "they must have equal lengths"
                )
        scores = np.asarray(self.score(texts, refs, prompts), dtype=np.float32).reshape(-1)
        if scores.shape != (len(texts),):
            raise ValueError(f"{self.name}: score() returned {scores.shape[0]} values for {len(texts)} completions")
        return scores

    @abc.abstractmethod
    def score(self, completions: list[str], references: list[Any], prompts: list[str] | None) -> Sequence[float]:
        """Per-completion scores for already-validated, already-cleaned inputs."""

    def metrics(self, completions: Sequence[str], references: Sequence[Any], scores: np.ndarray) -> dict[str, float]:
        """Per-batch task metrics (e.g. accuracy) for logging; default: none."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class FunctionReward(Reward):
    """Adapt a plain Python function into a `Reward`.

    * `batched=False` (default): `fn(completion: str, reference) -> float`, called once per item.
    * `batched=True`: `fn(completions: list[str], references: list) -> Sequence[float]`, called once.
    """

    def __init__(self, fn: Callable[..., Any], name: str | None = None, batched: bool = False):
        if not callable(fn):
            raise TypeError(f"FunctionReward needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.batched = batched
        self.name = name or getattr(fn, "__name__", "function")

    def score(self, completions: list[str], references: list[Any], prompts: list[str] | None) -> Sequence[float]:
        if self.batched:
            return self.fn(completions, references)
        return [float(self.fn(c, r)) for c, r in zip(completions, references)]
