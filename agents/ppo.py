"""PPO for language models, as RLHF practice has settled it, on the shared on-policy core.

One iteration (`agents.core`): collect one lockstep batch of whole episodes; score the
reference (one no-grad teacher-forced pass) for the per-token KL; per-token rewards (the
sequence reward on the final token minus β·KL on every token); then, here, the value head's
calibration on the first batch (`PPO.prepare_critic`), GAE over tokens and advantage
whitening, and ``n_epochs`` of shuffled minibatches of clipped policy and value losses.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from agents import ppo_math
from agents.base import constructor_args
from agents.buffer import TokenBatch, TokenRolloutBuffer
from agents.core import LossContext, OnPolicyLMAlgorithm
from policies.causal_lm import CausalLMPolicy


class PPO(OnPolicyLMAlgorithm):
    """Proximal Policy Optimization over the token-level MDP.

    :param policy: ``"CausalLMPolicy"`` or the class.
    :param env: a lockstep `lm_envs.TokenVecEnv` (possibly wrapped); one rollout is one batch
        of ``env.num_envs`` whole episodes.
    :param learning_rate: a float, a schedule dict (``{schedule: linear, start, end}``) or an SB3
        schedule callable (progress remaining → lr; not stored in checkpoints).
    :param n_epochs: passes over each rollout batch.
    :param batch_size: episodes (rows) per optimizer step.
    :param micro_batch_size: rows per forward/backward; gradients accumulate over
        ``batch_size / micro_batch_size`` micro-batches (``None``: no accumulation).
    :param gamma: discount over tokens (1.0: none, the RLHF default).
    :param gae_lambda: GAE λ over tokens.
    :param clip_range: policy-ratio clip ε (float, schedule dict or callable).
    :param clip_range_vf: value clip around the rollout values (``None``: unclipped).
    :param vf_coef: value-loss coefficient.
    :param ent_coef: entropy bonus coefficient (default 0).
    :param max_grad_norm: gradient-norm clipping.
    :param target_kl: stop the epochs once a minibatch's approx-KL exceeds ``1.5 · target_kl``,
        before its optimizer step, as SB3 does (``None``: never).
    :param kl_coef: initial β of the per-token KL penalty (0 disables the reference pass).
    :param adaptive_kl: adapt β towards ``kl_target`` nats per sequence over ``kl_horizon`` episodes
        (needs ``kl_coef > 0``: the update is multiplicative).
    :param kl_estimator: ``"k1"`` or ``"k3"`` (see `ppo_math.kl_estimate`).
    :param missing_eos_penalty: subtracted from the score of episodes cut by the token budget.
    :param reward_scale: multiply scores by this before anything else.
    :param reward_clip: clip scaled scores to ``[-reward_clip, reward_clip]`` (``None``: off).
    :param whiten_advantages: whiten advantages over the batch's generated tokens.
    :param calibrate_value_head: before the first update, shift the value head's bias by the
        first batch's mean(Monte-Carlo return − value), so it starts centred on the returns
        (`prepare_critic`; why: docs/ppo.md, "Value-head calibration").
    :param recompute_log_probs, rollout_is_mode, rollout_is_cap: the rollout-versus-update
        mismatch correction (see `OnPolicyLMAlgorithm`; the values stay the rollout's).
    :param log_samples: prompt/completion pairs written to tensorboard as text per iteration.
    :param tensorboard_log, policy_kwargs, verbose, seed, device: as in SB3. ``verbose=1``
        prints one summary line per iteration; ``verbose=2`` adds SB3's table.
    """

    uses_value_head = True
    tb_name = "PPO"

    def __init__(
        self,
        policy: str | type[CausalLMPolicy],
        env: GymEnv,
        learning_rate: float | dict | Schedule = 1e-5,
        n_epochs: int = 1,
        batch_size: int = 16,
        micro_batch_size: int | None = None,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        clip_range: float | dict | Schedule = 0.2,
        clip_range_vf: float | None = 0.2,
        vf_coef: float = 0.1,
        ent_coef: float = 0.0,
        max_grad_norm: float = 1.0,
        target_kl: float | None = None,
        kl_coef: float = 0.05,
        adaptive_kl: bool = False,
        kl_target: float = 6.0,
        kl_horizon: int = 10000,
        kl_estimator: str = "k1",
        missing_eos_penalty: float | None = None,
        reward_scale: float = 1.0,
        reward_clip: float | None = None,
        whiten_advantages: bool = True,
        calibrate_value_head: bool = True,
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
    ) -> None:
        hparams = constructor_args(locals())
        self.clip_range_vf, self.whiten_advantages = clip_range_vf, whiten_advantages
        self.calibrate_value_head, self.value_shift = calibrate_value_head, 0.0
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_epochs=n_epochs,
            batch_size=batch_size,
            micro_batch_size=micro_batch_size,
            clip_range=clip_range,
            max_grad_norm=max_grad_norm,
            kl_coef=kl_coef,
            kl_in_reward=True,
            hparams=hparams,
            kl_estimator=kl_estimator,
            adaptive_kl=adaptive_kl,
            kl_target=kl_target,
            kl_horizon=kl_horizon,
            ent_coef=ent_coef,
            gamma=gamma,
            gae_lambda=gae_lambda,
            vf_coef=vf_coef,
            missing_eos_penalty=missing_eos_penalty,
            reward_scale=reward_scale,
            reward_clip=reward_clip,
            target_kl=target_kl,
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

    def prepare_critic(self, buffer: TokenRolloutBuffer) -> None:
        """Value-head calibration (``calibrate_value_head``), before the first update only: shift
        the head's bias, and this batch's values, by mean(Monte-Carlo return − value)."""
        if self.calibrate_value_head and self._n_updates == 0:
            shift = ppo_math.value_calibration_shift(
                buffer.values, buffer.token_rewards, buffer.mask, self.gamma, self._reduce
            )
            buffer.values = (buffer.values + shift) * buffer.mask
            self.policy.shift_values(shift)
            self.value_shift = shift

    def compute_advantages(self, buffer: TokenRolloutBuffer) -> None:
        """GAE over tokens (no bootstrap past the end), then whitening over the batch's tokens."""
        buffer.advantages, buffer.returns = ppo_math.gae(
            buffer.token_rewards, buffer.values, buffer.mask, self.gamma, self.gae_lambda
        )
        if self.whiten_advantages:
            buffer.advantages = ppo_math.masked_whiten(buffer.advantages, buffer.mask, reduce=self._reduce)

    def loss(
        self, micro: TokenBatch, log_probs: torch.Tensor, values: torch.Tensor | None, context: LossContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Clipped surrogate + vf_coef · clipped value loss, token means (weighted by token share)."""
        pg_loss, stats = ppo_math.clipped_policy_loss(
            log_probs, micro.old_log_probs, micro.advantages, micro.mask, context.clip_range
        )
        vf_loss = ppo_math.clipped_value_loss(values, micro.old_values, micro.returns, micro.mask, self.clip_range_vf)
        weight = micro.mask.sum() / context.minibatch_tokens
        return (pg_loss + self.vf_coef * vf_loss) * weight, {"policy_loss": pg_loss, "value_loss": vf_loss, **stats}

    def _extra_log_values(self, buffer: TokenRolloutBuffer) -> dict[str, float]:
        return {
            "loss/value": self._train_stats.get("value_loss"),
            "val/var_explained": ppo_math.explained_variance(buffer.values, buffer.returns, buffer.mask),
        }
