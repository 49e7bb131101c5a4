"""`EpisodeConfig`, the one list of episode settings `TokenEnv` and `TokenVecEnv` share, and the
observation space they both have."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces


@dataclass
class EpisodeConfig:
    """Everything about an episode that is not the task: budgets, widths and how turns end.

    :param max_new_tokens: the policy's token budget over the whole episode (all turns);
        reaching it truncates the episode.
    :param max_prompt_tokens: width of the prompt region. Longer prompts follow ``truncate_prompt``.
    :param vocab_size: size of the action space (a model's vocabulary may exceed the
        tokenizer's); defaults to ``len(tokenizer)``.
    :param eos_token_ids: token ids that end a turn; defaults to the tokenizer's EOS.
    :param stop_strings: strings that also end a turn once they appear in its decoded text.
    :param truncate_prompt: ``"error"`` (default) or ``"left"``: keep the last tokens of a
        too-long prompt (and warn once), never a silent misalignment.
    :param count_tokens: ``{info_key: token}``: count these tokens (ids or token strings) among
        the policy's tokens of each finished episode and report the count as
        ``info[info_key]``. Special tokens such as a pause token are stripped from the text,
        so this is how a reward wrapper can price them (``InfoTerm("pauses")``).
    :param max_turns: how many turns the policy gets when the task replies between turns
        (``Task.respond``); the episode ends after the last.
    :param max_turn_tokens: the policy's budget per turn (``None``: no limit but
        ``max_new_tokens``); reaching it ends the turn as EOS would.
    :param max_injected_tokens: room for env-injected tokens over the whole episode. Injected
        tokens count against the context width, never against ``max_new_tokens``.
    :param max_reply_tokens: an env message (a reply's or a tool's text, not a reply's
        ``suffix``) is cut to this many tokens before it is rendered as a turn.
    :param sync_turns: in a lockstep batch, a row that ends a turn waits (takes no action) until
        every row still in the episode has ended its turn; then the task replies to all of
        them in one batched ``respond`` call (one sandbox batch for code feedback) and the
        policy takes every reply in one step. ``False``: each row gets its reply at once.
        Per-row auto-reset envs never wait. Tools always answer at once.
    :param overlap_scoring: in a lockstep batch, score a row's completion on a background
        thread as soon as the row ends, while the other rows keep generating
        (`lm_envs.scoring.BackgroundScorer`); the row's terminal step, with its reward, is
        reported once the score is in, and when no row generates any more the batch waits for
        the rest (``info["reward_wait"]``). Off by default: it pays where generation and scoring
        use different resources (the policy on a GPU, the sandbox on idle cores); on a 2-core CPU
        both compete for the same cores and it measured slower (docs/benchmarks.md). Not for
        tasks that reply between turns (a reply's verdict is needed at once, and its reward is in
        use). Single envs and per-row auto-reset envs always score at once.
    """

    max_new_tokens: int = 64
    max_prompt_tokens: int = 256
    vocab_size: int | None = None
    eos_token_ids: Sequence[int] | None = None
    stop_strings: Sequence[str] = ()
    truncate_prompt: str = "error"
    count_tokens: dict[str, int | str] | None = None
    max_turns: int = 1
    max_turn_tokens: int | None = None
    max_injected_tokens: int = 0
    max_reply_tokens: int = 128
    sync_turns: bool = True
    overlap_scoring: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.max_prompt_tokens < 1:
            raise ValueError("max_prompt_tokens must be at least 1")
        if self.truncate_prompt not in ("error", "left"):
            raise ValueError("truncate_prompt must be 'error' or 'left'")
        if self.max_turns < 1:
            raise ValueError("max_turns must be at least 1")
        if self.max_turn_tokens is not None and self.max_turn_tokens < 1:
            raise ValueError("max_turn_tokens must be at least 1 (or None)")
        if self.max_injected_tokens < 0 or self.max_reply_tokens < 1:
            raise ValueError("max_injected_tokens must be >= 0 and max_reply_tokens >= 1")
        self.stop_strings = tuple(self.stop_strings)

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def build(cls, config: EpisodeConfig | None = None, **kwargs: Any) -> EpisodeConfig:
        """``config`` with ``kwargs`` replaced (``EpisodeConfig(**kwargs)`` without one)."""
        unknown = sorted(set(kwargs) - cls.names())
        if unknown:
            raise TypeError(f"unknown episode settings {unknown}; known: {sorted(cls.names())}")
        return dataclasses.replace(config, **kwargs) if config is not None else cls(**kwargs)

    @property
    def max_completion_tokens(self) -> int:
        """Columns after the prompt region: the policy's budget plus the injected budget."""
        return self.max_new_tokens + self.max_injected_tokens


def observation_space(
    vocab_size: int, max_prompt_tokens: int, max_new_tokens: int, max_injected_tokens: int = 0
) -> spaces.Dict:
    """The observation space shared by `TokenEnv` and `TokenVecEnv`."""
    after = max_new_tokens + max_injected_tokens
    length = max_prompt_tokens + after
    return spaces.Dict(
        {
            "input_ids": spaces.Box(0, vocab_size - 1, shape=(length,), dtype=np.int64),
            "attention_mask": spaces.Box(0, 1, shape=(length,), dtype=np.int8),
            "policy_mask": spaces.Box(0, 1, shape=(length,), dtype=np.int8),
            "prompt_length": spaces.Box(0, max_prompt_tokens, shape=(1,), dtype=np.int64),
            "num_generated": spaces.Box(0, max_new_tokens, shape=(1,), dtype=np.int64),
            "completion_length": spaces.Box(0, after, shape=(1,), dtype=np.int64),
        }
    )
