"""Critic-free policy-gradient maths: group baselines (GRPO, RLOO), REINFORCE baselines, and
GRPO's token normalisations as TRL defines them.

Sequence quantities are ``(B,)`` with groups of ``k`` consecutive rows (one prompt's
completions); per-token quantities are ``(B, T)`` with a boolean ``mask``. Pure functions, no
model or env; imports only torch and `agents.ppo_math`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from agents.ppo_math import masked_mean

GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


def _groups(rewards: torch.Tensor, completions_per_prompt: int) -> torch.Tensor:
    if completions_per_prompt < 1 or rewards.shape[0] % completions_per_prompt:
        raise ValueError(f"{rewards.shape[0]} rows do not split into groups of {completions_per_prompt}")
    return rewards.view(-1, completions_per_prompt)


def batch_std(values: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Unbiased standard deviation of all values (of every process, with ``reduce``)."""
    if reduce is None:
        return values.std() if values.numel() > 1 else torch.zeros((), device=values.device)
    total = reduce(
        torch.stack([values.sum(), (values * values).sum(), torch.tensor(float(values.numel()), device=values.device)])
    )
    n = total[2]
    mean = total[0] / n
    return ((total[1] - n * mean * mean).clamp(min=0) / (n - 1).clamp(min=1)).sqrt()


def group_advantages(
    rewards: torch.Tensor,
    completions_per_prompt: int,
    scale_rewards: str = "group",
    eps: float = 1e-4,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """GRPO: (r − mean_group(r)) / (std + ε), std over the group (``group``), the whole batch
    (``batch``, across processes with ``reduce``) or none (``none``: Dr. GRPO). std is unbiased,
    ε = 1e-4, as TRL's."""
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    grouped = _groups(rewards, completions_per_prompt)
    advantages = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)
    if scale_rewards == "group":
        std = (
            grouped.std(1, keepdim=True).expand_as(grouped).reshape(-1)
            if completions_per_prompt > 1
            else torch.zeros_like(rewards)
        )
        advantages = advantages / (std + eps)
    elif scale_rewards == "batch":
        advantages = advantages / (batch_std(rewards, reduce) + eps)
    return advantages


def leave_one_out_advantages(rewards: torch.Tensor, completions_per_prompt: int) -> torch.Tensor:
    """RLOO: r_i − (Σ_{j≠i} r_j) / (k − 1) within each group of k ≥ 2."""
    if completions_per_prompt < 2:
        raise ValueError("the leave-one-out baseline needs at least 2 completions per prompt")
    grouped = _groups(rewards, completions_per_prompt)
    baseline = (grouped.sum(1, keepdim=True) - grouped) / (completions_per_prompt - 1)
    return (grouped - baseline).reshape(-1)


def broadcast_to_tokens(sequence_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Copy a per-sequence value onto each of the row's valid tokens."""
    return sequence_values[:, None].to(torch.float32) * mask


def grpo_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    max_completion_length: int,
    num_items_in_batch: torch.Tensor | float | None = None,
    gradient_accumulation_steps: int = 1,
) -> torch.Tensor:
    """Aggregate a micro-batch's per-token loss the way TRL's ``GRPOTrainer`` does:

    * ``grpo``: mean over sequences of each sequence's token mean, ÷ accumulation steps;
    * ``bnpo``: token mean over the micro-batch, ÷ accumulation steps;
    * ``dr_grpo``: token sum ÷ (rows · max_completion_length), ÷ accumulation steps;
    * ``dapo``: token sum ÷ the tokens of the whole accumulated batch (``num_items_in_batch``).
    """
    mask = mask.to(per_token_loss.dtype)
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.shape[0] * max_completion_length)
    elif loss_type == "dapo":
        if num_items_in_batch is None:
            raise ValueError("loss_type='dapo' needs num_items_in_batch")
        normalizer = torch.as_tensor(num_items_in_batch, dtype=per_token_loss.dtype).clamp(min=1.0)
        return (per_token_loss * mask).sum() / normalizer
    else:
        raise ValueError(f"loss_type must be one of {GRPO_LOSS_TYPES}, got {loss_type!r}")
    return loss / gradient_accumulation_steps


def batch_mean_baseline(
    returns: torch.Tensor, mask: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """REINFORCE with a batch baseline: G_t − mean(G) over the batch's valid tokens."""
    return (returns - masked_mean(returns, mask, reduce)) * mask


class RunningMeanBaseline:
    """b ← m·b + (1 − m)·mean(sequence rewards), starting at the first batch's mean; A = G − b."""

    def __init__(self, momentum: float = 0.9) -> None:
        if not 0 <= momentum < 1:
            raise ValueError("baseline_momentum must be in [0, 1)")
        self.momentum, self.value, self.initialised = float(momentum), 0.0, False

    def __call__(
        self,
        returns: torch.Tensor,
        sequence_rewards: torch.Tensor,
        mask: torch.Tensor,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Advantages against the baseline *before* this batch updates it, then update."""
        batch_mean = float(
            masked_mean(sequence_rewards.float(), torch.ones_like(sequence_rewards, dtype=torch.bool), reduce)
        )
        if not self.initialised:
            self.value, self.initialised = batch_mean, True
        advantages = (returns - self.value) * mask
        self.value = self.momentum * self.value + (1 - self.momentum) * batch_mean
        return advantages

    def state_dict(self) -> dict:
        return {"momentum": self.momentum, "value": self.value, "initialised": self.initialised}

    def load_state_dict(self, state: dict) -> None:
        self.momentum, self.value, self.initialised = state["momentum"], state["value"], state["initialised"]
