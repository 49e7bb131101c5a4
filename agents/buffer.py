"""`TokenRolloutBuffer`: one batch of episodes and what the agent computed from it, as data.

As in SB3, the buffer holds arrays and never runs a model: the agent (`agents.core`) fills in
the reference log-probs, the KL, the per-token rewards and the advantages. Sequences are kept
once, as ``(B, L)`` token rows with explicit masks; per-action quantities are ``(B, T)`` with a
boolean ``mask`` (``T = max_new_tokens``). No sentinel padding: every reduction is masked.
Minibatches trim the columns that are padding in all of their rows, and keep each prompt's
group of completions together.

Names, one per quantity (see the agents docs):

* ``env_rewards`` ``(B,)``: what the env returned at the end of the episode, after reward
  wrappers. The task's own verdict (``task_score``) is in each episode's ``info["score"]``.
* ``sequence_rewards`` ``(B,)``: ``env_rewards`` after the agent's scale, missing-EOS penalty and clip.
* ``token_rewards`` ``(B, T)``: the per-token reward the estimator sees (the sequence reward on
  the last token, −β·KL on every token when the KL is in the reward).
* ``advantages``, ``returns`` ``(B, T)``: the estimator's output (times the rollout correction
  weights ``is_weights`` when the old log-probs were recomputed).
* ``log_probs`` ``(B, T)``: the old log-probs the update's ratio divides by: the rollout's, or
  the learner's recomputed ones, with the rollout's kept as ``rollout_log_probs``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from agents.rollout import Episodes


@dataclass
class TokenBatch:
    """A slice of rows of the buffer, with the sequence columns trimmed to what those rows use."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    policy_mask: torch.Tensor
    mask: torch.Tensor
    old_log_probs: torch.Tensor
    ref_log_probs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def split(self, size: int) -> Iterator[TokenBatch]:
        for start in range(0, self.mask.shape[0], size):
            yield TokenBatch(*(getattr(self, f)[start : start + size] for f in self.__dataclass_fields__))

    def unflatten(self, flat: torch.Tensor | None) -> torch.Tensor | None:
        """Scatter per-action values (row-major over ``policy_mask``) into ``(B, T)``."""
        if flat is None:
            return None
        dense = torch.zeros(self.mask.shape, dtype=flat.dtype, device=flat.device)
        return dense.masked_scatter(self.mask, flat)


@dataclass
class TokenRolloutBuffer:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    policy_mask: torch.Tensor
    mask: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    env_rewards: torch.Tensor
    terminated: torch.Tensor
    infos: list[dict[str, Any]] = field(default_factory=list)
    completions_per_prompt: int = 1
    # Filled in by the agent:
    ref_log_probs: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    kl_coef: float = 0.0
    sequence_rewards: torch.Tensor | None = None
    token_rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    # With recomputed log-probs (``recompute_log_probs``): the sampler's own, and the correction weights.
    rollout_log_probs: torch.Tensor | None = None
    is_weights: torch.Tensor | None = None

    @classmethod
    def from_episodes(cls, episodes: Episodes, completions_per_prompt: int = 1) -> TokenRolloutBuffer:
        mask = episodes.action_mask
        return cls(
            episodes.input_ids,
            episodes.attention_mask,
            episodes.policy_mask,
            mask,
            episodes.log_probs * mask,
            episodes.values * mask,
            episodes.env_rewards.float(),
            episodes.terminated,
            episodes.infos,
            completions_per_prompt,
        )

    @property
    def num_rows(self) -> int:
        return self.mask.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)

    @property
    def has_reference(self) -> bool:
        return self.ref_log_probs is not None

    @property
    def sequence_kl(self) -> torch.Tensor:
        """Σ_t KL_t per row (zeros when no reference pass ran)."""
        return self.kl.sum(-1) if self.kl is not None else torch.zeros(self.num_rows, device=self.mask.device)

    @property
    def sequence_neg_log_prob(self) -> torch.Tensor:
        """−Σ log π of the sampled tokens: a per-sequence entropy estimate (TRL's objective/entropy)."""
        return -(self.log_probs * self.mask).sum(-1)

    def trimmed_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask, policy_mask)`` of ``rows``, without all-padding columns."""
        return trim(self.input_ids[rows], self.attention_mask[rows], self.policy_mask[rows])

    def reward_components(self) -> dict[str, float]:
        """Means of named reward parts that reward wrappers put in the episode infos."""
        totals: dict[str, list[float]] = {}
        for info in self.infos:
            for name, value in info.get("reward_components", {}).items():
                totals.setdefault(name, []).append(float(value))
        totals.setdefault("score", [float(s) for s in self.env_rewards])
        return {name: sum(v) / len(v) for name, v in totals.items()}

    def minibatches(self, batch_size: int, generator: torch.Generator) -> Iterator[TokenBatch]:
        """Shuffled minibatches of ``batch_size`` rows; a prompt's group of ``completions_per_prompt``
        completions stays in one minibatch when ``batch_size`` is a multiple of it."""
        group = self.completions_per_prompt if batch_size % self.completions_per_prompt == 0 else 1
        order = torch.randperm(self.num_rows // group, generator=generator)
        order = (order[:, None] * group + torch.arange(group)).reshape(-1).to(self.mask.device)
        ref = self.ref_log_probs if self.ref_log_probs is not None else self.log_probs
        for rows in order.split(batch_size):
            ids, attn, pol = self.trimmed_rows(rows)
            yield TokenBatch(
                ids,
                attn,
                pol,
                self.mask[rows],
                self.log_probs[rows],
                ref[rows],
                self.values[rows],
                self.advantages[rows],
                self.returns[rows],
            )


def trim(input_ids: torch.Tensor, attention_mask: torch.Tensor, policy_mask: torch.Tensor):
    """Drop columns that are padding in every row (left of the longest prompt, right of the longest completion)."""
    used = attention_mask.bool().any(0).nonzero()
    start, end = int(used[0]), int(used[-1]) + 1
    return input_ids[:, start:end], attention_mask[:, start:end], policy_mask[:, start:end]
