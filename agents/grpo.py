"""GRPO (Shao et al., 2024) and its loss variants, on the shared on-policy core.

The critic-free group method: each prompt gets ``k`` completions (the env's
``completions_per_prompt``), each completion's advantage is its reward against its group's mean
(scaled by a standard deviation, or not), the same for all its tokens, and the loss is PPO's
clipped surrogate with TRL's token normalisations (``loss_type``). No value head is built.
With ``kl_coef > 0`` (TRL: ``beta``) the KL to the reference is k3 in the loss (TRL's choice), or −β·KL in the
reward with ``kl_in_reward=True``; with ``kl_coef = 0`` no reference pass runs at all.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from agents import group_math, ppo_math
from agents.base import constructor_args
from agents.buffer import TokenBatch, TokenRolloutBuffer
from agents.core import LossContext, OnPolicyLMAlgorithm
from agents.env_contract import token_env
from policies.causal_lm import CausalLMPolicy


class GRPO(OnPolicyLMAlgorithm):
    """Group Relative Policy Optimization over the token-level MDP (names as TRL's ``GRPOConfig``).

    :param policy: ``"CausalLMPolicy"`` or the class.
    :param env: a lockstep `lm_envs.TokenVecEnv` with ``completions_per_prompt = k ≥ 2``.
    :param learning_rate: float, schedule dict or SB3 schedule callable.
    :param n_epochs: μ, passes over each generated batch (1: on-policy, ratio = 1; TRL: ``num_iterations``).
    :param batch_size: rows per optimizer step (``None``: the whole batch, one step per pass, as TRL).
    :param micro_batch_size: rows per forward/backward (the accumulation window).
    :param clip_range: lower clip ε of the ratio (TRL: ``epsilon``).
    :param clip_range_high: upper clip (``None``: = ε; DAPO's clip-higher uses e.g. 0.28; TRL: ``epsilon_high``).
    :param delta: two-sided clipping (TRL's ``delta``): the unclipped term's ratio is capped at δ,
        so a very negative advantage cannot pull through a huge ratio (``None``: off; > 1 + ε_high).
    :param importance_sampling_level: ``token`` (GRPO) or ``sequence`` (GSPO: one ratio per
        completion, exp of the mean per-token log-ratio; TRL's name). GSPO's paper clips at
        ε = 3e-4, ε_high = 4e-4 with ``loss_type="grpo"`` (``agent=gspo``).
    :param dynamic_sampling: DAPO's dynamic sampling: drop groups whose rewards all agree (within
        ``dynamic_sampling_tolerance``) and sample more batches until the batch is full of groups
        that teach something, at most ``max_extra_rollouts`` more (see `OnPolicyLMAlgorithm`).
    :param kl_coef: KL coefficient β (0: no KL and no reference pass, TRL's default; TRL: ``beta``).
    :param kl_in_reward: put −β·KL (``kl_estimator``) in the reward before the group baseline,
        instead of β·k3 in the loss.
    :param kl_bias_correction: multiply the loss's k3 term by the ratio π/π_old, which makes its
        gradient the unbiased reverse-KL gradient (DeepSeek-V3.2; TRL's ``use_bias_correction_kl``,
        default on since TRL 1.x).
    :param kl_estimator: KL estimator for the reward and the logged ``objective/kl``.
    :param scale_rewards: ``group`` (÷ group std), ``batch`` (÷ batch std) or ``none`` (Dr. GRPO).
    :param loss_type: ``grpo`` | ``bnpo`` | ``dr_grpo`` | ``dapo``, the token normalisations of
        TRL (see `agents.group_math.grpo_loss`).
    :param ent_coef: entropy bonus (default 0).
    :param max_grad_norm: gradient-norm clipping.
    :param missing_eos_penalty, reward_scale, reward_clip: sequence-reward shaping, as in PPO.
    :param recompute_log_probs, rollout_is_mode, rollout_is_cap: the rollout-versus-update
        mismatch correction (see `OnPolicyLMAlgorithm`).
    :param log_samples, tensorboard_log, policy_kwargs, verbose, seed, device: as in PPO.
    """

    tb_name = "GRPO"

    def __init__(
        self,
        policy: str | type[CausalLMPolicy],
        env: GymEnv,
        learning_rate: float | dict | Schedule = 1e-6,
        n_epochs: int = 1,
        batch_size: int | None = None,
        micro_batch_size: int | None = None,
        clip_range: float | dict | Schedule = 0.2,
        clip_range_high: float | None = None,
        delta: float | None = None,
        importance_sampling_level: str = "token",
        kl_coef: float = 0.0,
        kl_in_reward: bool = False,
        kl_bias_correction: bool = True,
        kl_estimator: str = "k3",
        scale_rewards: str = "group",
        loss_type: str = "dapo",
        ent_coef: float = 0.0,
        max_grad_norm: float = 1.0,
        missing_eos_penalty: float | None = None,
        reward_scale: float = 1.0,
        reward_clip: float | None = None,
        dynamic_sampling: bool = False,
        dynamic_sampling_tolerance: float = 0.0,
        max_extra_rollouts: int = 8,
        recompute_log_probs: bool | None = None,
        rollout_is_mode: str | None = "token_truncate",
        rollout_is_cap: float = 2.0,
        log_samples: int = 2,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
        _hparams: dict[str, Any] | None = None,
    ) -> None:
        # A subclass (RLOO) passes its own constructor arguments: those are what its checkpoints hold.
        hparams = _hparams if _hparams is not None else constructor_args(locals())
        if loss_type not in group_math.GRPO_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {group_math.GRPO_LOSS_TYPES}, got {loss_type!r}")
        if scale_rewards not in group_math.SCALE_REWARDS:
            raise ValueError(f"scale_rewards must be one of {group_math.SCALE_REWARDS}, got {scale_rewards!r}")
        if importance_sampling_level not in ppo_math.IMPORTANCE_SAMPLING_LEVELS:
            raise ValueError(
                f"importance_sampling_level must be one of {ppo_math.IMPORTANCE_SAMPLING_LEVELS}, "
                f"got {importance_sampling_level!r}"
            )
        if delta is not None and delta <= 1:
            raise ValueError(
                f"delta caps the ratio from above and must be > 1 (TRL recommends > 1 + clip_range_high), got {delta}"
            )
        self.loss_type, self.scale_rewards = loss_type, scale_rewards
        self.kl_bias_correction, self.delta = kl_bias_correction, delta
        self.importance_sampling_level = importance_sampling_level
        group = _env_completions_per_prompt(env)
        if group < 2:
            raise ValueError(
                f"{type(self).__name__} needs groups: build the env with completions_per_prompt >= 2 "
                f"(run_ppo: env.completions_per_prompt=4), got {group}"
            )
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_epochs=n_epochs,
            batch_size=batch_size or env.num_envs,
            micro_batch_size=micro_batch_size,
            clip_range=clip_range,
            clip_range_high=clip_range_high,
            max_grad_norm=max_grad_norm,
            kl_coef=kl_coef,
            kl_in_reward=kl_in_reward,
            hparams=hparams,
            kl_estimator=kl_estimator,
            ent_coef=ent_coef,
            missing_eos_penalty=missing_eos_penalty,
            reward_scale=reward_scale,
            reward_clip=reward_clip,
            completions_per_prompt=group,
            dynamic_sampling=dynamic_sampling,
            dynamic_sampling_tolerance=dynamic_sampling_tolerance,
            max_extra_rollouts=max_extra_rollouts,
            recompute_log_probs=recompute_log_probs,
            rollout_is_mode=rollout_is_mode,
            rollout_is_cap=rollout_is_cap,
            log_samples=log_samples,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

    def sequence_reward_for_baseline(self, buffer: TokenRolloutBuffer) -> torch.Tensor:
        """Σ_t token_rewards: the sequence reward, minus β·ΣKL when the KL is in the reward."""
        return (buffer.token_rewards * buffer.mask).sum(-1)

    def compute_advantages(self, buffer: TokenRolloutBuffer) -> None:
        """A_i = (r_i − mean_group r) / (std + 1e-4) (``scale_rewards``), on every token of row i."""
        advantages = group_math.group_advantages(
            self.sequence_reward_for_baseline(buffer),
            self.completions_per_prompt,
            self.scale_rewards,
            reduce=self._reduce,
        )
        buffer.advantages = group_math.broadcast_to_tokens(advantages, buffer.mask)
        buffer.returns = buffer.advantages

    def loss(
        self, micro: TokenBatch, log_probs: torch.Tensor, values: torch.Tensor | None, context: LossContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        per_token, stats = ppo_math.clipped_surrogate(
            log_probs,
            micro.old_log_probs,
            micro.advantages,
            micro.mask,
            context.clip_range,
            self.clip_range_high,
            self.delta,
            self.importance_sampling_level,
        )
        policy_per_token = per_token
        if self.kl_coef and not self.kl_in_reward:
            kl = ppo_math.k3(log_probs, micro.ref_log_probs)
            if self.kl_bias_correction:  # × the importance weight (per sequence under GSPO), as TRL
                kl = (
                    kl
                    * ppo_math.importance_log_weights(
                        log_probs, micro.old_log_probs, micro.mask, self.importance_sampling_level
                    ).exp()
                )
            per_token = per_token + self.kl_coef * kl
            stats["kl"] = ppo_math.masked_mean(kl, micro.mask)
        loss = group_math.grpo_loss(
            per_token,
            micro.mask,
            self.loss_type,
            context.max_completion_length,
            context.minibatch_tokens,
            context.num_micro_batches,
        )
        stats["policy_loss"] = ppo_math.masked_mean(policy_per_token, micro.mask)
        return loss, stats

    def _extra_log_values(self, buffer: TokenRolloutBuffer) -> dict[str, float]:
        grouped = (buffer.token_rewards * buffer.mask).sum(-1).view(-1, self.completions_per_prompt)
        return {
            "objective/group_std": float(grouped.std(1).mean()),
            "objective/frac_zero_std_groups": float((grouped.std(1) == 0).float().mean()),
        }


def _env_completions_per_prompt(env: Any) -> int:
    return token_env(env).completions_per_prompt
