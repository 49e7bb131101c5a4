"""The RLHF-PPO maths on per-token tensors: KL estimators, rewards, GAE, whitening, losses.

Every function takes ``(B, T)`` tensors and a boolean ``mask`` of valid actions (row ``b``'s
actions are ``t < length[b]``). Pure functions, no model or env; imports only torch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Reduce = Callable[[torch.Tensor], torch.Tensor]


def masked_mean(values: torch.Tensor, mask: torch.Tensor, reduce: Reduce | None = None) -> torch.Tensor:
    """Σ v·m / Σ m; with ``reduce`` (a sum across processes, no gradient) both sums are global."""
    mask = mask.to(values.dtype)
    if reduce is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    total = reduce(torch.stack([(values * mask).sum(), mask.sum()]))
    return total[0] / total[1].clamp(min=1)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8, reduce: Reduce | None = None
) -> torch.Tensor:
    """Normalise to unit variance (and zero mean) over the masked entries of the whole batch
    (of every process, with ``reduce``)."""
    mean = masked_mean(values, mask, reduce)
    var = masked_mean((values - mean) ** 2, mask, reduce)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_estimate(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(policy ‖ reference) estimate from the sampled token's log-probs.

    ``k1`` = log π − log π_ref (unbiased, can be negative); ``k3`` = (r − 1) − log r with
    r = π_ref / π (unbiased, always ≥ 0, lower variance).
    """
    if estimator == "k1":
        return log_probs - ref_log_probs
    if estimator == "k3":
        return k3(log_probs, ref_log_probs)
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")


def k3(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """exp(log π_ref − log π) − (log π_ref − log π) − 1 per token (Schulman's k3; TRL's GRPO KL term)."""
    delta = ref_log_probs - log_probs
    return delta.exp() - delta - 1


def shape_sequence_rewards(
    env_rewards: torch.Tensor,
    terminated: torch.Tensor,
    reward_scale: float = 1.0,
    missing_eos_penalty: float | None = None,
    reward_clip: float | None = None,
) -> torch.Tensor:
    """clip(scale · env_reward − penalty · [no EOS], ±clip): the sequence reward the agent optimises."""
    rewards = env_rewards.float() * reward_scale
    if missing_eos_penalty:
        rewards = rewards - missing_eos_penalty * (~terminated.bool()).float()
    if reward_clip is not None:
        rewards = rewards.clamp(-reward_clip, reward_clip)
    return rewards


def token_rewards(
    sequence_rewards: torch.Tensor,
    kl: torch.Tensor,
    kl_coef: float,
    mask: torch.Tensor,
    turn_rewards: torch.Tensor | None = None,
) -> torch.Tensor:
    """−β·KL on every token, plus the sequence reward on each row's final real token.

    With ``turn_rewards`` ``(B, T)`` (each turn's reward already on its turn's last action, zero
    elsewhere; `place_turn_rewards`), those go where they are and only the rest of the sequence
    reward (``sequence_reward − Σ turn_rewards``: wrapper terms, the missing-EOS penalty, clipping)
    goes on the final token, so every row's rewards still sum to its sequence reward − β·ΣKL.
    """
    rewards = -kl_coef * kl * mask
    last = (mask.sum(-1) - 1).clamp(min=0)
    has_action = mask.any(-1)
    rows = torch.arange(sequence_rewards.shape[0], device=sequence_rewards.device)[has_action]
    final = sequence_rewards
    if turn_rewards is not None:
        turn_rewards = turn_rewards.to(rewards.dtype) * mask
        rewards = rewards + turn_rewards
        final = sequence_rewards - turn_rewards.sum(-1)
    rewards[rows, last[has_action]] += final[has_action]
    return rewards


def place_turn_rewards(
    turn_rewards: list[list[float] | None],
    turn_ends: list[list[int] | None],
    shape: tuple[int, int],
    scale: float = 1.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``(B, T)`` zeros with ``scale · turn_rewards[b][k]`` at action index ``turn_ends[b][k]`` (rows
    with ``None`` stay zero): each turn's reward on its turn's last action."""
    placed = torch.zeros(shape, device=device)
    for row, (values, ends) in enumerate(zip(turn_rewards, turn_ends)):
        if values is None:
            continue
        if ends is None or len(ends) != len(values):
            raise ValueError(f"row {row}: {len(values)} turn rewards but turn ends {ends!r}")
        for value, end in zip(values, ends):
            if not 0 <= end < shape[1]:
                raise ValueError(f"row {row}: turn end {end} outside the {shape[1]} action columns")
            placed[row, end] += scale * float(value)
    return placed


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = Σ_{s ≥ t} γ^{s−t} r_s within each row (Monte-Carlo returns)."""
    return gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)[1]


def value_calibration_shift(
    values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, reduce: Reduce | None = None
) -> float:
    """mean(G_t − V_t) over valid tokens: the bias shift that centres the value head on the
    Monte-Carlo returns (0 for a head that is already centred, so applying it is idempotent)."""
    return float(masked_mean(returns_to_go(rewards, mask, gamma) - values, mask, reduce))


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over tokens; returns ``(advantages, returns)``.

    Each row ends at its last real token with no bootstrap: EOS and the token budget are both
    real ends of the episode (the budget's final score is already in the last reward).
    """
    mask_f = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        # Past a row's end, mask_f = 0 zeroes both the bootstrap and the carried advantage.
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = (delta + gamma * lam * next_advantage) * mask_f[:, t]
        advantages[:, t] = advantage
        next_value = values[:, t] * mask_f[:, t]
        next_advantage = advantage
    return advantages, (advantages + values) * mask_f


IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


def importance_log_weights(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, mask: torch.Tensor, level: str = "token"
) -> torch.Tensor:
    """log ρ: per token log π − log π_old (``token``), or GSPO's per-sequence mean of it over the
    row's valid tokens, ``(B, 1)`` (``sequence``: TRL's ``importance_sampling_level``)."""
    log_ratio = log_probs - old_log_probs
    if level == "token":
        return log_ratio
    if level == "sequence":
        mask = mask.to(log_ratio.dtype)
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0))[:, None]
    raise ValueError(f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, got {level!r}")


def clipped_surrogate(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    clip_range_high: float | None = None,
    delta: float | None = None,
    level: str = "token",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token −min(ρ·A, clip(ρ, 1−ε, 1+ε_high)·A), ρ = π/π_old per token or per sequence
    (``level``, GSPO), ε_high = ε unless given (DAPO's clip-higher); with ``delta`` the unclipped
    term's ρ is also capped at δ (TRL's two-sided clipping). Returns the ratio statistics used for
    logging. Not reduced: callers normalise."""
    high = clip_range if clip_range_high is None else clip_range_high
    log_ratio = importance_log_weights(log_probs, old_log_probs, mask, level)
    ratio = log_ratio.exp()
    clipped = ratio.clamp(1 - clip_range, 1 + high)
    capped = ratio if delta is None else ratio.clamp(max=delta)
    per_token = -torch.minimum(capped * advantages, clipped * advantages)
    with torch.no_grad():
        ratio, log_ratio = ratio.expand_as(mask), log_ratio.expand_as(mask)
        stats = {
            "approx_kl": masked_mean((ratio - 1) - log_ratio, mask),
            "clip_fraction": masked_mean(((ratio < 1 - clip_range) | (ratio > 1 + high)).float(), mask),
            "ratio_max_dev": ((ratio - 1).abs() * mask).max(),
        }
    return per_token, stats


ROLLOUT_IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def rollout_importance_weights(
    log_probs: torch.Tensor,
    rollout_log_probs: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_truncate",
    cap: float = 2.0,
) -> torch.Tensor:
    """Correction weights for sampling from a slightly different distribution than the learner's
    (bf16 kernels, an inference engine): w = exp(log π_learner − log π_rollout), per token or per
    sequence (Σ over its tokens), then ``truncate``: min(w, C) (TIS), or ``mask``: 0 where w > C
    (TRL's ``vllm_importance_sampling_mode`` and ``_clip_max``). ``(B, T)``, zero off the mask, no grad."""
    if mode not in ROLLOUT_IS_MODES:
        raise ValueError(f"rollout_is_mode must be one of {ROLLOUT_IS_MODES}, got {mode!r}")
    if cap <= 0:
        raise ValueError(f"the rollout importance-sampling cap must be positive, got {cap}")
    with torch.no_grad():
        diff = (log_probs - rollout_log_probs) * mask
        if mode.startswith("sequence"):
            diff = diff.sum(-1, keepdim=True)
        weights = diff.exp()
        weights = weights.clamp(max=cap) if mode.endswith("truncate") else weights.masked_fill(weights > cap, 0.0)
        return weights.expand_as(mask) * mask


def clipped_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    clip_range_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (to minimise), a token mean, with the ratio statistics used for logging."""
    per_token, stats = clipped_surrogate(log_probs, old_log_probs, advantages, mask, clip_range, clip_range_high)
    return masked_mean(per_token, mask), stats


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_vf: float | None,
) -> torch.Tensor:
    """½·max((V − R)², (V_clipped − R)²), V_clipped kept within ``clip_range_vf`` of the old value."""
    loss = (values - returns) ** 2
    if clip_range_vf is not None:
        clipped = old_values + (values - old_values).clamp(-clip_range_vf, clip_range_vf)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


def explained_variance(predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(targets − predictions) / Var(targets) over valid tokens; NaN when the targets are constant."""
    var_targets = masked_mean((targets - masked_mean(targets, mask)) ** 2, mask)
    residual = targets - predictions
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return float("nan") if var_targets == 0 else float(1 - var_residual / var_targets)


class FixedKLController:
    """A constant KL coefficient β."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. (2019): move β so that the per-sequence KL tracks ``target``.

    ``β ← β · (1 + clip(KL / target − 1, −0.2, 0.2) · n_steps / horizon)``.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if init_kl_coef <= 0:
            raise ValueError(
                f"adaptive KL needs an initial kl_coef > 0 (got {init_kl_coef}): the update is "
                "multiplicative, so β = 0 could never move"
            )
        super().__init__(init_kl_coef)
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
