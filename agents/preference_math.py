"""Learning from scored samples: the SFT, DPO and KTO losses, and how scored samples become targets.

Losses take per-token log-probs ``(B, T)`` with a boolean ``mask`` of completion tokens, or
per-sequence sums ``(B,)`` made from them by `sequence_log_probs`. Target construction (STaR's
filter, DPO's pairs, KTO's labels) takes per-sample rewards ``(N,)`` and a group id per sample
(the prompt it answers) and returns indices. Pure functions, no model or env; imports only
torch, numpy and `agents.ppo_math`.

Names follow TRL 1.16 (``DPOTrainer``, ``KTOTrainer``) so that their logs read the same:
the implicit reward of a completion is ``β·(log π − log π_ref)`` summed over its tokens.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from agents.ppo_math import masked_mean

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
PAIR_STRATEGIES = ("best_vs_worst", "all")


# -- sequence log-probs and SFT ------------------------------------------------------------------
def sequence_log_probs(log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log π(y|x) = Σ_t log π(y_t | x, y_<t) over the completion tokens of each row."""
    return (log_probs * mask).sum(-1)


def nll_loss(log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−mean over completion tokens of log π(y_t | x, y_<t) (completion-only SFT loss, a token mean)."""
    return -masked_mean(log_probs, mask)


# -- DPO -----------------------------------------------------------------------------------------
def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair DPO losses (not reduced) with h = (log π_c − log π_ref,c) − (log π_r − log π_ref,r)
    and label smoothing ε (the chance a pair's label is flipped):

    * ``sigmoid`` (Rafailov et al., 2023): −(1 − ε)·log σ(β·h) − ε·log σ(−β·h) (ε > 0: conservative
      DPO, Mitchell 2023, as OpenRLHF and TRL before 1.x apply it);
    * ``robust`` (Chowdhury et al., 2024): (−(1 − ε)·log σ(β·h) + ε·log σ(−β·h)) / (1 − 2ε), TRL's;
    * ``hinge`` (SLiC): max(0, 1 − β·h);
    * ``ipo`` (Azar et al., 2023): (h̄ − 1/(2β))², with h̄ the same difference of per-token means
      (each log-ratio divided by its completion's length, as TRL 1.16 does).

    Also returns TRL's statistics per pair: ``chosen_rewards`` = β·(log π_c − log π_ref,c),
    ``rejected_rewards``, and ``accuracies`` = [chosen reward > rejected reward].
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    h = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * h) + label_smoothing * F.logsigmoid(-beta * h)) / (
            1 - 2 * label_smoothing
        )
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * (chosen_logratios - rejected_logratios))
    else:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss_type='ipo' needs the completion lengths (it averages log-ratios per token)")
        delta = chosen_logratios / chosen_lengths.clamp(min=1).to(
            chosen_logratios.dtype
        ) - rejected_logratios / rejected_lengths.clamp(min=1).to(rejected_logratios.dtype)
        losses = (delta - 1 / (2 * beta)) ** 2
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, {
        "chosen_rewards": chosen_rewards,
        "rejected_rewards": rejected_rewards,
        "accuracies": (chosen_rewards > rejected_rewards).float(),
    }


# -- KTO -----------------------------------------------------------------------------------------
def kto_reference_point(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """z_ref = max(0, mean(log π(y'|x) − log π_ref(y'|x))) over mismatched pairs (x, y'), detached
    (the KTO paper's estimate of KL(π ‖ π_ref); TRL's ``kl``)."""
    return (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    reference_point: torch.Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample KTO losses (Ethayarajh et al., 2024, Eq. 7; not reduced), r = log π − log π_ref:
    desirable: λ_D·(1 − σ(β·(r − z_ref))); undesirable: λ_U·(1 − σ(β·(z_ref − r))).

    Also returns ``rewards`` = β·r per sample (detached).
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    logratios = logps - ref_logps
    desirable = desirable.bool()
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (logratios - reference_point))),
        undesirable_weight * (1 - torch.sigmoid(beta * (reference_point - logratios))),
    )
    return losses, {"rewards": beta * logratios.detach()}


# -- targets from scored samples -----------------------------------------------------------------
def _group_members(groups: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    members: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    return members


def keep_above_threshold(
    rewards: Sequence[float],
    groups: Sequence[Hashable],
    threshold: float,
    max_per_group: int | None = None,
    keys: Sequence[Hashable] | None = None,
) -> list[int]:
    """STaR's filter: the samples with reward ≥ ``threshold``, at most ``max_per_group`` per group
    (the first ones, in sample order), skipping a sample whose ``key`` (e.g. its completion text)
    already appears among the kept samples of its group. Returns sorted sample indices."""
    rewards = np.asarray(rewards, dtype=np.float64)
    kept: list[int] = []
    for members in _group_members(groups).values():
        seen: set[Hashable] = set()
        for index in members:
            if rewards[index] < threshold:
                continue
            if max_per_group is not None and len(seen) >= max_per_group:
                break
            key = keys[index] if keys is not None else index
            if key in seen:
                continue
            seen.add(key)
            kept.append(index)
    return sorted(kept)


def groups_without(kept: Sequence[int], groups: Sequence[Hashable]) -> list[Hashable]:
    """The groups (in first-seen order) none of whose samples is in ``kept`` (rationalization's candidates)."""
    have = {groups[i] for i in kept}
    return [g for g in _group_members(groups) if g not in have]


def preference_pairs(
    rewards: Sequence[float],
    groups: Sequence[Hashable],
    strategy: str = "best_vs_worst",
    margin: float = 0.0,
    keys: Sequence[Hashable] | None = None,
) -> list[tuple[int, int]]:
    """``(chosen, rejected)`` sample indices within each group, where r_chosen − r_rejected > ``margin``:

    * ``best_vs_worst``: one pair per group, its highest- against its lowest-reward sample (the
      first of equals);
    * ``all``: every ordered pair of the group whose rewards differ by more than ``margin``.

    Pairs whose two samples have the same ``key`` (identical completions) are skipped.
    """
    if strategy not in PAIR_STRATEGIES:
        raise ValueError(f"strategy must be one of {PAIR_STRATEGIES}, got {strategy!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    rewards = np.asarray(rewards, dtype=np.float64)

    def distinct(i: int, j: int) -> bool:
        return keys is None or keys[i] != keys[j]

    pairs: list[tuple[int, int]] = []
    for members in _group_members(groups).values():
        if strategy == "best_vs_worst":
            best = max(members, key=lambda i: (rewards[i], -i))
            worst = min(members, key=lambda i: (rewards[i], i))
            if rewards[best] - rewards[worst] > margin and distinct(best, worst):
                pairs.append((best, worst))
        else:
            pairs.extend(
                (i, j) for i in members for j in members if rewards[i] - rewards[j] > margin and distinct(i, j)
            )
    return pairs


def kto_labels(rewards: Sequence[float], threshold: float) -> np.ndarray:
    """KTO's unpaired labels: desirable where reward ≥ ``threshold``."""
    return np.asarray(rewards, dtype=np.float64) >= threshold


def mismatched_partners(groups: Sequence[Hashable]) -> list[int]:
    """For each sample, the partner whose completion pairs with its prompt in KTO's reference point:
    the next sample (cyclically) of another group, so prompt ``x_i`` meets a completion written for
    another prompt (TRL shifts completions by one in the batch); with one group, the next sample."""
    n = len(groups)
    partners = []
    for i in range(n):
        partner = next((j % n for j in range(i + 1, i + n) if groups[j % n] != groups[i]), (i + 1) % n)
        partners.append(partner)
    return partners


def summarize(values: Any) -> float | None:
    """Mean of a tensor or sequence, ``None`` when empty (left out of the logs, never NaN)."""
    values = torch.as_tensor(values, dtype=torch.float64)
    return float(values.mean()) if values.numel() else None
