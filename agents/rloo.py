"""RLOO (Ahmadian et al., 2024): REINFORCE with a leave-one-out group baseline.

Each of a prompt's ``k`` completions is judged against the mean reward of the other ``k − 1``.
As in TRL's ``RLOOTrainer``, the KL is a k1 penalty summed over the sequence and taken off its
reward (``kl_coef``, TRL's ``beta``), before the baseline. The loss is GRPO's clipped surrogate and token
normalisation (`agents.grpo.GRPO`, ``loss_type``); it differs from TRL's, which clips a
sequence-level ratio. No value head is built.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from agents import group_math, ppo_math
from agents.base import constructor_args
from agents.buffer import TokenRolloutBuffer
from agents.grpo import GRPO
from policies.causal_lm import CausalLMPolicy


class RLOO(GRPO):
    """REINFORCE Leave-One-Out over the token-level MDP.

    :param kl_coef: KL coefficient β of the k1 penalty in the reward (0: no reference pass). TRL's default 0.05.
    :param normalize_advantages: whiten the advantages over the batch (mean 0, std 1 + 1e-4).
    :param loss_type: token normalisation of the clipped surrogate, as in `agents.GRPO`.
    Other parameters are `agents.GRPO`'s.
    """

    tb_name = "RLOO"

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
        kl_coef: float = 0.05,
        normalize_advantages: bool = False,
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
    ) -> None:
        hparams = constructor_args(locals())
        self.normalize_advantages = normalize_advantages
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_epochs=n_epochs,
            batch_size=batch_size,
            micro_batch_size=micro_batch_size,
            clip_range=clip_range,
            clip_range_high=clip_range_high,
            kl_coef=kl_coef,
            kl_in_reward=True,
            kl_bias_correction=False,
            kl_estimator="k1",
            scale_rewards="none",
            loss_type=loss_type,
            ent_coef=ent_coef,
            max_grad_norm=max_grad_norm,
            missing_eos_penalty=missing_eos_penalty,
            reward_scale=reward_scale,
            reward_clip=reward_clip,
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
            _hparams=hparams,
        )

    def compute_advantages(self, buffer: TokenRolloutBuffer) -> None:
        """A_i = r_i − mean of the other k − 1 rewards of its group (r_i already holds −β·ΣKL)."""
        advantages = group_math.leave_one_out_advantages(
            self.sequence_reward_for_baseline(buffer), self.completions_per_prompt
        )
        if self.normalize_advantages:
            everywhere = torch.ones_like(advantages, dtype=torch.bool)
            mean = ppo_math.masked_mean(advantages, everywhere, self._reduce)
            advantages = (advantages - mean) / (group_math.batch_std(advantages, self._reduce) + 1e-4)
        buffer.advantages = group_math.broadcast_to_tokens(advantages, buffer.mask)
        buffer.returns = buffer.advantages
