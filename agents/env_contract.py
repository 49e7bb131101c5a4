"""The token VecEnv contract: what an agent may ask of an env beyond SB3's `VecEnv` API.

Agents meet envs through SB3's `VecEnv` API plus the typed attributes of `TokenVecEnvLike`,
read as plain attributes (``env.completions_per_prompt``), never by name through ``get_attr``.
`lm_envs.TokenVecEnv` satisfies the protocol structurally (it imports nothing of ours), and an
SB3 `VecEnvWrapper` passes every attribute it does not define through to the env it wraps, so a
wrapper satisfies it too. A wrapper that keeps state of its own (`lm_envs.VecRewardWrapper`)
defines ``get_state``/``set_state``/``sync_statistics`` and calls the wrapped env's in turn.
Imports only numpy and the standard library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class TokenVecEnvLike(Protocol):
    """A lockstep or auto-reset token VecEnv, as the agents use it.

    * ``num_envs``: rows per batch; ``completions_per_prompt``: ``k`` consecutive rows share a prompt;
    * ``autoreset``: per-row SB3 auto-reset (the agents need lockstep, ``False``);
    * ``max_turns``: the policy's turns per episode (bounds a batch's steps);
    * ``task``: the env's `lm_envs.Task` (its questions, references, reward and metrics);
    * ``tokenizer``: the tokenizer prompts are encoded with;
    * ``waiting_rows`` / ``scoring_rows``: boolean ``(num_envs,)`` masks, read every step, of rows
      that take no action now (a turn's reply or a score pending) and of rows being scored in the
      background (which never act again);
    * ``get_state()`` / ``set_state(state)``: the samplers and the batch in flight, for checkpoints;
    * ``sync_statistics(all_gather)``: make running reward statistics equal on every rank (a
      collective; a no-op for an env without any).
    """

    num_envs: int
    completions_per_prompt: int
    autoreset: bool
    max_turns: int

    @property
    def task(self) -> Any: ...

    @property
    def tokenizer(self) -> Any: ...

    @property
    def waiting_rows(self) -> np.ndarray: ...

    @property
    def scoring_rows(self) -> np.ndarray: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...

    def sync_statistics(self, all_gather: Callable[[Any], list[Any]]) -> None: ...


def token_env(env: Any) -> TokenVecEnvLike:
    """``env`` itself, checked against the contract, or an error naming what it lacks."""
    if isinstance(env, TokenVecEnvLike):
        return env
    missing = [name for name in _MEMBERS if not hasattr(env, name)]
    raise TypeError(
        f"the agents need a token VecEnv (lm_envs.TokenVecEnv, lm_envs.make_vec(...), or an SB3 "
        f"VecEnvWrapper around one); {type(env).__name__} lacks {missing} "
        "(see agents.env_contract.TokenVecEnvLike)"
    )


_MEMBERS = (
    "num_envs",
    "completions_per_prompt",
    "autoreset",
    "max_turns",
    "task",
    "tokenizer",
    "waiting_rows",
    "scoring_rows",
    "get_state",
    "set_state",
    "sync_statistics",
)
