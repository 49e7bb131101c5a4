"""STaR / expert iteration / rejection-sampling fine-tuning from env rewards.

Each round (Zelikman et al., 2022): sample ``k`` completions per prompt through the env (its
``completions_per_prompt``), keep those scoring at least ``threshold``, and fine-tune on them
with the completion-only NLL (a token mean over each minibatch), either from the starting
weights every round on everything kept so far (``from_base``, as in STaR) or continuing on the
round's own samples. In a multi-turn episode only the policy's tokens are trained on; what the
env injected stays context. Optional *rationalization*: for prompts with no kept sample, sample once
more with the gold answer given as a hint (an env built by ``hint_env_fn``), keep the correct
rationales, and train on them under the prompt *without* the hint. A round that keeps nothing
is logged and skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from agents import preference_math, sequences
from agents.base import constructor_args
from agents.rollout import Episodes, collect_episodes
from agents.rounds import ScoredRolloutAlgorithm
from agents.sequences import Sequences
from agents.sft import nll, token_share

FILTER_ON = ("score", "reward")


def episode_values(episodes: Episodes, on: str) -> np.ndarray:
    """Per episode: the task's score (``info["score"]``) or the env reward (after wrappers)."""
    if on not in FILTER_ON:
        raise ValueError(f"must be one of {FILTER_ON}, got {on!r}")
    rewards = episodes.env_rewards.detach().cpu().numpy().astype(np.float64)
    if on == "reward":
        return rewards
    return np.array([float(info.get("score", r)) for info, r in zip(episodes.infos, rewards)])


def episode_groups(episodes: Episodes) -> list[int]:
    """Per episode: the data row of its prompt (samples of one prompt form a group)."""
    return [int(info["index"]) for info in episodes.infos]


class STaR(ScoredRolloutAlgorithm):
    """Self-taught reasoner / expert iteration: keep the samples the reward accepts, fine-tune on them.

    :param policy: ``"CausalLMPolicy"`` or the class.
    :param env: a lockstep token VecEnv; ``completions_per_prompt = k`` samples per prompt.
    :param threshold: keep samples with value ≥ threshold.
    :param filter_on: ``"score"`` (the task's verdict, e.g. GSM8K correctness) or ``"reward"``
        (the env reward after wrappers).
    :param max_per_prompt: keep at most this many samples per prompt (``None``: all); identical
        completions of one prompt are kept once.
    :param from_base: restart from the starting weights (a fresh optimizer, the learning-rate
        schedule from its start) every round and train on the union of every sample kept so far,
        de-duplicated, as STaR does; ``False`` continues from the previous round on the round's
        own samples. The starting trainable weights are kept in memory (the adapter with LoRA; a
        full copy with full fine-tuning), and the kept samples in checkpoints.
    :param rationalize: retry prompts with no kept sample with the gold answer as a hint.
    :param hint_env_fn: ``hint_env_fn(indices, seed) -> VecEnv``: a lockstep env whose row ``j``
        is data row ``indices[j]`` with the hint in its prompt and reports ``info["index"] == j``
        (`lm_envs.hints.hinted_vec_env`; run_ppo builds it). A callable: pass it again to ``load``.
    :param rollout_batches: lockstep batches sampled per round.
    :param n_epochs, batch_size, micro_batch_size, learning_rate, max_grad_norm: the fine-tuning
        step (as `SFT`).
    :param log_samples, tensorboard_log, policy_kwargs, verbose, seed, device: as in PPO.

    Logged per round: ``star/kept_fraction``, ``star/accuracy`` (mean task score of the samples),
    ``star/prompts_solved`` (fraction of prompts with a kept sample), ``star/rationalized``,
    ``star/kept``, ``star/tokens_trained``, ``star/train_set`` (samples trained on this round).
    """

    tb_name = "STaR"

    def __init__(
        self,
        policy,
        env,
        threshold: float = 1.0,
        filter_on: str = "score",
        max_per_prompt: int | None = None,
        from_base: bool = True,
        rationalize: bool = False,
        hint_env_fn: Callable[[list[int], int], Any] | None = None,
        rollout_batches: int = 1,
        n_epochs: int = 1,
        batch_size: int = 8,
        micro_batch_size: int | None = None,
        learning_rate: float | dict = 1e-4,
        max_grad_norm: float = 1.0,
        log_samples: int = 2,
        tensorboard_log: str | None = None,
        policy_kwargs: dict | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        hparams = constructor_args(locals())
        if filter_on not in FILTER_ON:
            raise ValueError(f"filter_on must be one of {FILTER_ON}, got {filter_on!r}")
        if max_per_prompt is not None and max_per_prompt < 1:
            raise ValueError(f"max_per_prompt must be at least 1 (or None), got {max_per_prompt}")
        if rationalize and hint_env_fn is None:
            raise ValueError(
                "rationalize=True needs hint_env_fn (e.g. lm_envs.hints.hinted_vec_env; run_ppo "
                "builds it from agent.hint_template)"
            )
        self.threshold, self.filter_on, self.max_per_prompt = threshold, filter_on, max_per_prompt
        self.rationalize, self.hint_env_fn = rationalize, hint_env_fn
        self.targets: Sequences | None = None
        self._kept_pool: dict[tuple, tuple] = {}  # (prompt, completion, policy mask) kept so far, in order
        super().__init__(
            policy,
            env,
            learning_rate,
            n_epochs,
            batch_size,
            micro_batch_size,
            max_grad_norm,
            hparams,
            rollout_batches=rollout_batches,
            from_base=from_base,
            log_samples=log_samples,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

    def rationalize_prompts(self, missing: list[int], rows: Sequences, groups: list[int]) -> list[tuple]:
        """Sample once per prompt in ``missing`` with the hint; return the kept rationales as
        ``(prompt ids without the hint, completion ids, completion policy mask)``."""
        env = self.hint_env_fn(list(missing), (self.seed or 0) * 100_003 + self.iteration)
        hinted, _ = collect_episodes(self.policy, env)
        values = episode_values(hinted, self.filter_on)
        hinted_rows = sequences.from_episodes(hinted)
        first_row = {g: r for r, g in reversed(list(enumerate(groups)))}
        kept = []
        for row, position in enumerate(episode_groups(hinted)):  # hinted row j answers missing[j]
            group = missing[position]
            if values[row] >= self.threshold:  # the training prompt has no hint
                kept.append(
                    (
                        rows.prompt_ids(first_row[group]),
                        hinted_rows.completion_ids(row),
                        hinted_rows.completion_policy_mask(row),
                    )
                )
        return kept

    def make_targets(self, episodes: Episodes) -> None:
        rows = sequences.from_episodes(episodes)
        values = episode_values(episodes, self.filter_on)
        scores = episode_values(episodes, "score")
        groups = episode_groups(episodes)
        kept = preference_math.keep_above_threshold(
            values, groups, self.threshold, self.max_per_prompt, sequences.as_keys(rows)
        )
        samples = [(rows.prompt_ids(i), rows.completion_ids(i), rows.completion_policy_mask(i)) for i in kept]
        rationalized = 0
        if self.rationalize:
            missing = preference_math.groups_without(kept, groups)
            if missing:
                hinted = self.rationalize_prompts(missing, rows, groups)
                rationalized = len(hinted)
                samples += hinted
        # From the base, every round retrains on all that was kept so far (de-duplicated), as STaR
        # does; continuing, a round trains on its own samples.
        for sample in samples:
            self._kept_pool.setdefault(self._sample_key(sample), sample)
        train_on = list(self._kept_pool.values()) if self.from_base else samples
        self.targets = (
            Sequences.from_ids(
                [p for p, _, _ in train_on],
                [c for _, c, _ in train_on],
                self.pad_id,
                self.device,
                [m for _, _, m in train_on],
            )
            if train_on
            else None
        )
        tokens = int(self.targets.lengths.sum()) if self.targets is not None else 0
        n_groups = len(set(groups))
        self._round_stats = {
            "star/samples": float(len(values)),
            "star/kept": float(len(kept)),
            "star/kept_fraction": len(kept) / max(1, len(values)),
            "star/accuracy": float(np.mean(scores)),
            "star/prompts_solved": len({groups[i] for i in kept}) / max(1, n_groups),
            "star/rationalized": float(rationalized),
            "star/tokens_trained": float(tokens * self.n_epochs),
            "star/train_set": float(len(train_on)),
        }

    @staticmethod
    def _sample_key(sample: tuple) -> tuple:
        return tuple(tuple(part) for part in sample)

    def num_targets(self) -> int:
        return 0 if self.targets is None else len(self.targets)

    def target_share(self, targets: torch.Tensor) -> float:
        return token_share(self.targets, targets)

    def target_loss(self, targets: torch.Tensor, weight: float):
        return nll(self.policy, self.targets, targets, weight)

    def _extra_state(self) -> dict[str, Any]:
        return {"kept_pool": [[list(part) for part in sample] for sample in self._kept_pool.values()]}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._kept_pool = {self._sample_key(sample): tuple(sample) for sample in state.get("kept_pool", [])}
