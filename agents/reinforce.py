"""REINFORCE with a baseline, and REINFORCE++ (Hu, 2025), on the shared on-policy core.

The advantage of token t is its reward-to-go G_t = Σ_{s≥t} r_s (the sequence reward on the last
token, −β·KL on every token), minus a baseline: none, the batch mean, or a running mean
across batches. REINFORCE++ is the variant OpenRLHF and verl ship: per-token KL in the reward,
no baseline, and advantages whitened over all tokens of the batch. The loss is the clipped
surrogate, a token mean (with ``n_epochs = 1`` its gradient is plain REINFORCE's).
No value head is built.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from agents import group_math, ppo_math
from agents.base import constructor_args
from agents.buffer import TokenBatch, TokenRolloutBuffer
from agents.core import LossContext, OnPolicyLMAlgorithm
from agents.grpo import _env_completions_per_prompt
from policies.causal_lm import CausalLMPolicy

BASELINES = ("none", "batch", "running", "group")


class REINFORCE(OnPolicyLMAlgorithm):
    """REINFORCE over the token-level MDP.

    :param learning_rate: float, schedule dict or SB3 schedule callable.
    :param n_epochs: passes over each batch (1: on-policy; TRL: ``num_iterations``).
    :param batch_size: rows per optimizer step (``None``: the whole batch).
    :param micro_batch_size: rows per forward/backward.
    :param clip_range: ratio clip ε (matters only when ``n_epochs > 1``; TRL: ``epsilon``).
    :param kl_coef: coefficient β of the per-token KL penalty in the reward (0: no reference pass; TRL: ``beta``).
    :param kl_estimator: ``k1`` or ``k3``.
    :param baseline: ``none``, ``batch`` (mean reward-to-go of the batch's tokens), ``running``
        (a running mean of sequence rewards, ``baseline_momentum``; saved in checkpoints) or
        ``group`` (each completion's score minus its prompt's mean score over the env's
        ``completions_per_prompt`` samples, before the KL is added: OpenRLHF's
        REINFORCE++-baseline with ``whiten_advantages``).
    :param baseline_momentum: m in b ← m·b + (1 − m)·batch mean.
    :param whiten_advantages: whiten advantages over all tokens of the batch (REINFORCE++).
    :param gamma: discount over tokens (1: none).
    :param ent_coef, max_grad_norm, missing_eos_penalty, reward_scale, reward_clip, recompute_log_probs,
        rollout_is_mode, rollout_is_cap, log_samples, tensorboard_log, policy_kwargs, verbose, seed,
        device: as in `agents.PPO`.
    """

    tb_name = "REINFORCE"

    def __init__(
        self,
        policy: str | type[CausalLMPolicy],
        env: GymEnv,
        learning_rate: float | dict | Schedule = 1e-6,
        n_epochs: int = 1,
        batch_size: int | None = None,
        micro_batch_size: int | None = None,
        clip_range: float | dict | Schedule = 0.2,
        kl_coef: float = 0.0,
        kl_estimator: str = "k1",
        baseline: str = "batch",
        baseline_momentum: float = 0.9,
        whiten_advantages: bool = False,
        gamma: float = 1.0,
        ent_coef: float = 0.0,
        max_grad_norm: float = 1.0,
        missing_eos_penalty: float | None = None,
        reward_scale: float = 1.0,
        reward_clip: float | None = None,
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
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if baseline == "group" and _env_completions_per_prompt(env) < 2:
            raise ValueError(
                "baseline='group' subtracts each prompt's mean score: build the env with "
                "completions_per_prompt >= 2 (run_ppo: env.completions_per_prompt=4)"
            )
        self.baseline, self.whiten_advantages = baseline, whiten_advantages
        self.running_baseline = group_math.RunningMeanBaseline(baseline_momentum)
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_epochs=n_epochs,
            batch_size=batch_size or env.num_envs,
            micro_batch_size=micro_batch_size,
            clip_range=clip_range,
            max_grad_norm=max_grad_norm,
            kl_coef=kl_coef,
            kl_in_reward=True,
            hparams=hparams,
            kl_estimator=kl_estimator,
            ent_coef=ent_coef,
            gamma=gamma,
            missing_eos_penalty=missing_eos_penalty,
            reward_scale=reward_scale,
            reward_clip=reward_clip,
            completions_per_prompt=_env_completions_per_prompt(env) if baseline == "group" else 1,
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

    def shape_rewards(self, buffer: TokenRolloutBuffer) -> None:
        """The core's shaping; with ``baseline="group"`` the sequence reward then loses its group's
        mean before the per-token KL joins it (REINFORCE++-baseline's order)."""
        super().shape_rewards(buffer)
        if self.baseline == "group":
            buffer.sequence_rewards = group_math.group_advantages(
                buffer.sequence_rewards, self.completions_per_prompt, "none"
            )
            kl = buffer.kl if buffer.kl is not None else torch.zeros_like(buffer.log_probs)
            buffer.token_rewards = ppo_math.token_rewards(buffer.sequence_rewards, kl, buffer.kl_coef, buffer.mask)

    def compute_advantages(self, buffer: TokenRolloutBuffer) -> None:
        """A_t = G_t − b (``baseline``; ``group``: already in the shaped rewards), then optional
        whitening over the batch's tokens."""
        returns = ppo_math.returns_to_go(buffer.token_rewards, buffer.mask, self.gamma)
        if self.baseline == "batch":
            advantages = group_math.batch_mean_baseline(returns, buffer.mask, self._reduce)
        elif self.baseline == "running":
            advantages = self.running_baseline(
                returns, (buffer.token_rewards * buffer.mask).sum(-1), buffer.mask, self._reduce
            )
        else:
            advantages = returns
        if self.whiten_advantages:
            advantages = ppo_math.masked_whiten(advantages, buffer.mask, reduce=self._reduce)
        buffer.advantages, buffer.returns = advantages, returns

    def loss(
        self, micro: TokenBatch, log_probs: torch.Tensor, values: torch.Tensor | None, context: LossContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Clipped surrogate, a token mean over the minibatch."""
        pg_loss, stats = ppo_math.clipped_policy_loss(
            log_probs, micro.old_log_probs, micro.advantages, micro.mask, context.clip_range
        )
        return pg_loss * (micro.mask.sum() / context.minibatch_tokens), {"policy_loss": pg_loss, **stats}

    def _extra_state(self) -> dict[str, Any]:
        return {"running_baseline": self.running_baseline.state_dict()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.running_baseline.load_state_dict(state["running_baseline"])


class REINFORCEPlusPlus(REINFORCE):
    """REINFORCE++: per-token KL in the reward, no baseline, global advantage whitening.

    Parameters are `REINFORCE`'s, with these defaults: ``kl_coef=0.01``, ``baseline="none"``,
    ``whiten_advantages=True``.
    """

    tb_name = "REINFORCEPlusPlus"

    def __init__(
        self, policy, env, kl_coef: float = 0.01, baseline: str = "none", whiten_advantages: bool = True, **kwargs
    ) -> None:
        super().__init__(policy, env, kl_coef=kl_coef, baseline=baseline, whiten_advantages=whiten_advantages, **kwargs)
