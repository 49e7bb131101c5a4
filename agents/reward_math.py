"""Learning a reward from comparisons: the Bradley–Terry loss of reward models and the logistic
loss of discriminators, with their statistics.

Pure functions over per-sequence scalar rewards ``(B,)`` (one logit per sequence from a
sequence-classification head); no model, no data. Imports only torch.

Names follow TRL 1.16's ``RewardTrainer`` so its logs read the same: ``accuracy`` is the share of
pairs whose chosen reward is higher, ``margin`` the mean of r_chosen − r_rejected, and
``center_rewards_coefficient`` (Eisenstein et al., 2023) the weight of the term that keeps the
rewards centred on zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """−mean log σ(r_c − r_r − m) + η·mean (r_c + r_r)², the mean over pairs (TRL's ``RewardTrainer``).

    :param chosen_rewards: ``(B,)`` rewards of the preferred completions.
    :param rejected_rewards: ``(B,)`` rewards of the other completions of the same prompts.
    :param margin: ``(B,)`` or a number: how much higher the chosen reward must be (``None``: 0).
    :param center_rewards_coefficient: η; ``None`` or 0 switches the centring term off.
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen and rejected rewards must have the same shape (one per pair), got "
            f"{tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}"
        )
    difference = chosen_rewards - rejected_rewards
    if margin is not None:
        difference = difference - torch.as_tensor(margin, dtype=difference.dtype, device=difference.device)
    loss = -F.logsigmoid(difference).mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * torch.mean((chosen_rewards + rejected_rewards) ** 2)
    return loss


def pair_statistics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """TRL's logged statistics of a batch of pairs: ``accuracy`` = mean [r_c > r_r], ``margin`` =
    mean (r_c − r_r), and ``mean_reward``, ``min_reward``, ``max_reward`` over both sides."""
    chosen, rejected = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    both = torch.cat([chosen, rejected])
    return {
        "accuracy": float((chosen > rejected).float().mean()),
        "margin": float((chosen - rejected).mean()),
        "mean_reward": float(both.mean()),
        "min_reward": float(both.min()),
        "max_reward": float(both.max()),
    }


def discriminator_loss(logits: torch.Tensor, is_reference: torch.Tensor) -> torch.Tensor:
    """−mean [y·log σ(z) + (1 − y)·log σ(−z)]: binary cross-entropy of D = σ(z), y = 1 for references."""
    return F.binary_cross_entropy_with_logits(logits, is_reference.to(logits.dtype))


def log_d(logits: torch.Tensor) -> torch.Tensor:
    """log D = log σ(z) (≤ 0): the discriminator's reward term, GAIL's −log(1 − D) counterpart."""
    return F.logsigmoid(logits)
