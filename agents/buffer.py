"""`TokenRolloutBuffer`: one batch of episodes, ready for PPO updates.

Sequences are kept once, as ``(B, L)`` token rows with explicit masks; per-action quantities
(old log-probs, reference log-probs, values, rewards, advantages, returns) are ``(B, T)`` with a
boolean ``mask`` (``T = max_new_tokens``). No sentinel padding: every reduction is masked.
Minibatches trim the columns that are padding in all of their rows, so the update does not pay
for padding it does not need.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from agents import ppo_math
from agents.rollout import Episodes


@dataclass
class TokenBatch:
    """A slice of rows of the buffer, with the sequence columns trimmed to what those rows use."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    policy_mask: torch.Tensor
    mask: torch.Tensor
    old_log_probs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def split(self, size: int) -> Iterator["TokenBatch"]:
        for start in range(0, self.mask.shape[0], size):
            yield TokenBatch(*(getattr(self, f)[start:start + size] for f in self.__dataclass_fields__))

    def unflatten(self, flat: torch.Tensor) -> torch.Tensor:
        """Scatter per-action values (row-major over ``policy_mask``) into ``(B, T)``."""
        dense = torch.zeros(self.mask.shape, dtype=flat.dtype, device=flat.device)
        return dense.masked_scatter(self.mask, flat)


@dataclass
class TokenRolloutBuffer:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    policy_mask: torch.Tensor
    mask: torch.Tensor
    log_probs: torch.Tensor
    ref_log_probs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    scores: torch.Tensor
    raw_scores: torch.Tensor
    terminated: torch.Tensor
    kl: torch.Tensor
    kl_coef: float
    infos: list[dict[str, Any]] = field(default_factory=list)
    value_shift: float = 0.0

    @classmethod
    @torch.no_grad()
    def from_episodes(cls, episodes: Episodes, policy: Any, kl_coef: float, kl_estimator: str = "k1",
                      gamma: float = 1.0, gae_lambda: float = 0.95, missing_eos_penalty: float | None = None,
                      reward_scale: float = 1.0, reward_clip: float | None = None,
                      whiten_advantages: bool = True, reference_batch_size: int = 16,
                      calibrate_values: bool = False) -> "TokenRolloutBuffer":
        """Score the reference, shape rewards, and compute GAE for a batch of episodes.

        :param calibrate_values: add the batch's mean Monte-Carlo return to every value before
            GAE, and report it as ``value_shift`` so the caller can move the value head by as
            much (see ``PPO(calibrate_value_head=...)``).
        """
        mask = episodes.action_mask
        log_probs = episodes.log_probs * mask
        ref_log_probs = log_probs.clone()
        if kl_coef != 0:  # one no-grad teacher-forced pass of the reference; skipped without KL
            flat = []
            for rows in torch.arange(mask.shape[0]).split(reference_batch_size):
                ids, attn, pol = _trim(episodes.input_ids[rows], episodes.attention_mask[rows], episodes.policy_mask[rows])
                flat.append(policy.evaluate_actions(ids, attn, pol, reference=True).log_prob)
            ref_log_probs = torch.zeros_like(log_probs).masked_scatter(mask, torch.cat(flat))
        kl = ppo_math.kl_estimate(log_probs, ref_log_probs, kl_estimator) * mask
        scores = episodes.scores.float() * reward_scale
        if missing_eos_penalty:
            scores = scores - missing_eos_penalty * (~episodes.terminated).float()
        if reward_clip is not None:
            scores = scores.clamp(-reward_clip, reward_clip)
        rewards = ppo_math.token_rewards(scores, kl, kl_coef, mask)
        values = episodes.values * mask
        value_shift = 0.0
        if calibrate_values:
            _, monte_carlo_returns = ppo_math.gae(rewards, torch.zeros_like(values), mask, gamma, 1.0)
            value_shift = float(ppo_math.masked_mean(monte_carlo_returns, mask))
            values = (values + value_shift) * mask
        advantages, returns = ppo_math.gae(rewards, values, mask, gamma, gae_lambda)
        if whiten_advantages:
            advantages = ppo_math.masked_whiten(advantages, mask)
        return cls(episodes.input_ids, episodes.attention_mask, episodes.policy_mask, mask, log_probs, ref_log_probs,
                   values, rewards, advantages, returns, scores, episodes.scores.float(), episodes.terminated, kl,
                   float(kl_coef), episodes.infos, value_shift)

    @property
    def num_rows(self) -> int:
        return self.mask.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)

    @property
    def sequence_kl(self) -> torch.Tensor:
        return self.kl.sum(-1)

    @property
    def sequence_neg_log_prob(self) -> torch.Tensor:
        """−Σ log π of the sampled tokens: a per-sequence entropy estimate (TRL's objective/entropy)."""
        return -(self.log_probs * self.mask).sum(-1)

    def reward_components(self) -> dict[str, float]:
        """Means of named reward parts that reward wrappers put in the episode infos."""
        totals: dict[str, list[float]] = {}
        for info in self.infos:
            for name, value in info.get("reward_components", {}).items():
                totals.setdefault(name, []).append(float(value))
        totals.setdefault("score", [float(s) for s in self.raw_scores])
        return {name: sum(v) / len(v) for name, v in totals.items()}

    def minibatches(self, batch_size: int, generator: torch.Generator) -> Iterator[TokenBatch]:
        order = torch.randperm(self.num_rows, generator=generator).to(self.mask.device)
        for rows in order.split(batch_size):
            ids, attn, pol = _trim(self.input_ids[rows], self.attention_mask[rows], self.policy_mask[rows])
            yield TokenBatch(ids, attn, pol, self.mask[rows], self.log_probs[rows], self.values[rows],
                             self.advantages[rows], self.returns[rows])


def _trim(input_ids: torch.Tensor, attention_mask: torch.Tensor, policy_mask: torch.Tensor):
    """Drop columns that are padding in every row (left of the longest prompt, right of the longest completion)."""
    used = attention_mask.bool().any(0).nonzero()
    start, end = int(used[0]), int(used[-1]) + 1
    return input_ids[:, start:end], attention_mask[:, start:end], policy_mask[:, start:end]
