"""Iterative (online) DPO and KTO from env rewards.

Each round samples ``k`` completions per prompt through the env (``completions_per_prompt``)
and scores them with its reward. **DPO** builds preference pairs within each prompt's samples
(best against worst, or every pair above a margin; for code, "compiles and passes more" over
"fails") and minimises the DPO loss (``sigmoid``, ``ipo`` or ``hinge``) against the reference.
**KTO** labels each sample desirable or not by a reward threshold and minimises the KTO loss,
with the reference point estimated on mismatched prompt/completion pairs. The reference is the
starting model (LoRA: the adapter switched off; full fine-tuning: a frozen copy); its log-probs
are computed once per round. A round that builds no pair is logged and skipped. The maths is
in `agents.preference_math`.
"""

from __future__ import annotations

from typing import Any

import torch

from agents import preference_math as pm
from agents import sequences
from agents.base import constructor_args
from agents.env_contract import token_env
from agents.rollout import Episodes
from agents.rounds import ScoredRolloutAlgorithm
from agents.sequences import Sequences
from agents.star import FILTER_ON, episode_groups, episode_values


@torch.no_grad()
def reference_sequence_log_probs(policy: Any, rows: Sequences, chunk: int = 16) -> torch.Tensor:
    """Σ_t log π_ref of every row's completion, in no-grad chunks."""
    parts = [
        pm.sequence_log_probs(sequences.log_probs(policy, rows, idx, reference=True), rows.mask[idx])
        for idx in torch.arange(len(rows), device=rows.mask.device).split(chunk)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, device=rows.mask.device)


class _PreferenceBase(ScoredRolloutAlgorithm):
    needs_reference = True

    def _check_groups(self, env: Any) -> None:
        k = token_env(env).completions_per_prompt
        if k < 2:
            raise ValueError(
                f"{type(self).__name__} compares samples of one prompt: build the env with "
                f"completions_per_prompt >= 2 (run_ppo: env.completions_per_prompt=4), got {k}"
            )


class DPO(_PreferenceBase):
    """Iterative DPO: pairs from env rewards within each prompt's ``k`` samples.

    :param policy: ``"CausalLMPolicy"`` or the class (LoRA recommended: the reference is then
        the adapter switched off, with no second copy of the weights).
    :param env: a lockstep token VecEnv with ``completions_per_prompt = k ≥ 2``.
    :param beta: β, the strength of the implicit KL to the reference.
    :param loss_type: ``sigmoid`` (DPO), ``ipo``, ``hinge`` or ``robust`` (as TRL 1.16; see
        `preference_math.dpo_loss`).
    :param label_smoothing: ε in [0, 0.5), the assumed chance that a pair's preference is wrong:
        conservative DPO with ``sigmoid``, robust DPO with ``robust`` (0: plain DPO).
    :param pair_strategy: ``best_vs_worst`` (one pair per prompt) or ``all`` (every pair above the margin).
    :param margin: a pair needs chosen − rejected > margin.
    :param pair_on: ``reward`` (env reward after wrappers) or ``score`` (the task's verdict).
    :param rollout_batches: lockstep batches sampled per round.
    :param n_epochs: passes over each round's pairs.
    :param batch_size: pairs per optimizer step; ``micro_batch_size`` pairs per forward/backward.
    :param learning_rate, max_grad_norm: the optimizer step.
    :param log_samples, tensorboard_log, policy_kwargs, verbose, seed, device: as in PPO.

    Logged per round with TRL's names: ``rewards/chosen``, ``rewards/rejected``,
    ``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``, plus
    ``dpo/pairs`` and ``dpo/prompts_with_pair``.
    """

    tb_name = "DPO"

    def __init__(
        self,
        policy,
        env,
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        pair_strategy: str = "best_vs_worst",
        margin: float = 0.0,
        pair_on: str = "reward",
        rollout_batches: int = 1,
        n_epochs: int = 1,
        batch_size: int = 4,
        micro_batch_size: int | None = None,
        learning_rate: float | dict = 5e-5,
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
        if loss_type not in pm.DPO_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {pm.DPO_LOSS_TYPES}, got {loss_type!r}")
        if pair_strategy not in pm.PAIR_STRATEGIES:
            raise ValueError(f"pair_strategy must be one of {pm.PAIR_STRATEGIES}, got {pair_strategy!r}")
        if pair_on not in FILTER_ON:
            raise ValueError(f"pair_on must be one of {FILTER_ON}, got {pair_on!r}")
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self._check_groups(env)
        self.beta, self.loss_type, self.pair_strategy = beta, loss_type, pair_strategy
        self.label_smoothing = label_smoothing
        self.margin, self.pair_on = margin, pair_on
        self.rows: Sequences | None = None
        self.pairs = torch.zeros(0, 2, dtype=torch.long)
        self.ref_logps: torch.Tensor | None = None
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
            log_samples=log_samples,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

    def make_targets(self, episodes: Episodes) -> None:
        rows = sequences.from_episodes(episodes)
        groups = episode_groups(episodes)
        pairs = pm.preference_pairs(
            episode_values(episodes, self.pair_on), groups, self.pair_strategy, self.margin, sequences.as_keys(rows)
        )
        used = sorted({i for pair in pairs for i in pair})
        # Only the rows in a pair are kept; pairs index into them.
        position = {row: n for n, row in enumerate(used)}
        self.pairs = torch.as_tensor([(position[c], position[r]) for c, r in pairs], dtype=torch.long).reshape(-1, 2)
        self.rows = rows.select(used) if used else None
        self.ref_logps = reference_sequence_log_probs(self.policy, self.rows) if used else None
        self._round_stats = {
            "dpo/pairs": float(len(pairs)),
            "dpo/prompts_with_pair": len({groups[c] for c, _ in pairs}) / max(1, len(set(groups))),
        }

    def num_targets(self) -> int:
        return len(self.pairs)

    def target_loss(self, targets: torch.Tensor, weight: float):
        pairs = self.pairs[targets]
        both = torch.cat([pairs[:, 0], pairs[:, 1]])
        logps = pm.sequence_log_probs(sequences.log_probs(self.policy, self.rows, both), self.rows.mask[both])
        lengths = self.rows.lengths[both]
        ref = self.ref_logps[both]
        n = len(pairs)
        losses, stats = pm.dpo_loss(
            logps[:n],
            logps[n:],
            ref[:n],
            ref[n:],
            self.beta,
            self.loss_type,
            lengths[:n],
            lengths[n:],
            self.label_smoothing,
        )
        loss = losses.mean()
        return loss * weight, {
            "policy_loss": float(loss.detach()),
            "rewards/chosen": float(stats["chosen_rewards"].mean()),
            "rewards/rejected": float(stats["rejected_rewards"].mean()),
            "rewards/accuracies": float(stats["accuracies"].mean()),
            "rewards/margins": float((stats["chosen_rewards"] - stats["rejected_rewards"]).mean()),
            "logps/chosen": float(logps[:n].detach().mean()),
            "logps/rejected": float(logps[n:].detach().mean()),
        }


class KTO(_PreferenceBase):
    """KTO from unpaired samples labelled by the env reward.

    :param policy, env: as `DPO` (``completions_per_prompt = k ≥ 2``: the reference point pairs
        each prompt with a completion written for another prompt).
    :param beta: β.
    :param desirable_threshold: a sample is desirable when its value ≥ this.
    :param label_on: ``reward`` (env reward after wrappers) or ``score`` (the task's verdict).
    :param desirable_weight, undesirable_weight: λ_D, λ_U (KTO suggests λ_D·n_D ≈ λ_U·n_U, within 4/3).
    :param rollout_batches, n_epochs, batch_size, micro_batch_size, learning_rate, max_grad_norm: as `DPO`
        (``batch_size`` counts samples).
    :param log_samples, tensorboard_log, policy_kwargs, verbose, seed, device: as in PPO.

    Logged per round: ``rewards/chosen`` and ``rewards/rejected`` (β·log-ratio of desirable and
    undesirable samples), ``kto/kl`` (the reference point z_ref, TRL's ``kl``), ``kto/desirable_fraction``.
    """

    tb_name = "KTO"

    def __init__(
        self,
        policy,
        env,
        beta: float = 0.1,
        desirable_threshold: float = 1.0,
        label_on: str = "reward",
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        rollout_batches: int = 1,
        n_epochs: int = 1,
        batch_size: int = 8,
        micro_batch_size: int | None = None,
        learning_rate: float | dict = 5e-5,
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
        if label_on not in FILTER_ON:
            raise ValueError(f"label_on must be one of {FILTER_ON}, got {label_on!r}")
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self._check_groups(env)
        self.beta, self.desirable_threshold, self.label_on = beta, desirable_threshold, label_on
        self.desirable_weight, self.undesirable_weight = desirable_weight, undesirable_weight
        self.rows: Sequences | None = None
        self.mismatched: Sequences | None = None
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
            log_samples=log_samples,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

    def make_targets(self, episodes: Episodes) -> None:
        rows = sequences.from_episodes(episodes)
        groups = episode_groups(episodes)
        self.labels = torch.as_tensor(
            pm.kto_labels(episode_values(episodes, self.label_on), self.desirable_threshold), device=rows.mask.device
        )
        partners = pm.mismatched_partners(groups)
        self.rows = rows
        self.mismatched = Sequences.from_ids(
            [rows.prompt_ids(i) for i in range(len(rows))],
            [rows.completion_ids(j) for j in partners],
            self.pad_id,
            self.device,
            [rows.completion_policy_mask(j) for j in partners],
        )
        self.ref_logps = reference_sequence_log_probs(self.policy, rows)
        self.ref_kl_logps = reference_sequence_log_probs(self.policy, self.mismatched)
        self._round_stats = {"kto/desirable_fraction": float(self.labels.float().mean())}

    def num_targets(self) -> int:
        return 0 if self.rows is None else len(self.rows)

    def target_loss(self, targets: torch.Tensor, weight: float):
        with torch.no_grad():
            kl_logps = pm.sequence_log_probs(
                sequences.log_probs(self.policy, self.mismatched, targets), self.mismatched.mask[targets]
            )
        z = pm.kto_reference_point(kl_logps, self.ref_kl_logps[targets])
        logps = pm.sequence_log_probs(sequences.log_probs(self.policy, self.rows, targets), self.rows.mask[targets])
        labels = self.labels[targets]
        losses, stats = pm.kto_loss(
            logps, self.ref_logps[targets], labels, z, self.beta, self.desirable_weight, self.undesirable_weight
        )
        loss = losses.mean()
        out = {"policy_loss": float(loss.detach()), "kto/kl": float(z)}
        # Means over an empty class are left out (never NaN in the logs).
        for name, chosen in (("rewards/chosen", labels), ("rewards/rejected", ~labels)):
            value = pm.summarize(stats["rewards"][chosen])
            if value is not None:
                out[name] = value
        return loss * weight, out
