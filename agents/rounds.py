"""Rounds of learning from scored samples, on the shared core: the base of SFT, STaR, DPO and KTO.

One round is one ``iteration`` of the core (so budgets, schedules, callbacks, checkpoints,
``resume`` and the progress bar are the online agents'):

1. **collect** ``rollout_batches`` lockstep batches through the env (`collect_episodes`; SFT
   reads its data set instead), scored by the env's reward and wrappers;
2. **make targets** (`make_targets`, the one place the agents differ with the loss): STaR keeps
   the samples above a threshold, DPO builds preference pairs, KTO labels samples, SFT takes the
   next slice of its data set. Reference log-probs, when the loss needs them, are computed here
   once per round (adapter off with LoRA, a frozen copy without);
3. **update** (`train`): ``n_epochs`` passes of shuffled minibatches of ``batch_size`` targets,
   each a sum of ``micro_batch_size``-target forward/backward passes of `target_loss`, each
   weighted by its share of the minibatch (`target_share`: targets, or tokens for a token-mean
   loss), then a gradient-norm clip and one optimizer step. With ``from_base`` the trainable
   weights and the optimizer go back to their starting values first, and the learning-rate
   schedule runs from its start over the round's steps (STaR's restart from the base model);
4. **log** the core's tags plus the agent's (``star/*``, ``rewards/chosen`` ...). A round with no
   target (nothing kept, no pair) is logged with ``train/skipped_round`` = 1 and takes no step.

`finalize` (`save_merged`) writes the policy as a plain model directory (LoRA merged in, tokenizer beside it),
which ``run_ppo.py policy.model=DIR`` starts from. Imports the core, `agents.sequences`,
`agents.rollout`, torch and SB3.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.utils import update_learning_rate

from agents import distributed
from agents.base import LMAlgorithm
from agents.buffer import TokenRolloutBuffer
from agents.env_contract import token_env
from agents.rollout import Episodes, collect_episodes, concat_episodes


def env_tokenizer(env: Any) -> Any:
    """The tokenizer a token VecEnv encodes prompts with (through the VecEnv API)."""
    return token_env(env).tokenizer


class ScoredRolloutAlgorithm(LMAlgorithm):
    """Shared loop of the agents that learn from scored samples (see the module docstring).

    Subclasses set `needs_reference` and implement `make_targets`, `num_targets` and
    `target_loss`; SFT also overrides `collect_rollouts`.

    :param rollout_batches: lockstep batches collected per round (prompts per round = this ×
        ``num_envs / completions_per_prompt``).
    :param from_base: restart the trainable weights and the optimizer from their starting values
        at the start of every round's update (STaR), instead of continuing.
    """

    needs_reference = False

    def __init__(
        self,
        policy,
        env,
        learning_rate,
        n_epochs: int,
        batch_size: int,
        micro_batch_size: int | None,
        max_grad_norm: float,
        hparams: dict[str, Any],
        rollout_batches: int = 1,
        from_base: bool = False,
        log_samples: int = 2,
        tensorboard_log=None,
        policy_kwargs=None,
        verbose: int = 0,
        seed=None,
        device="auto",
        _init_setup_model: bool = True,
    ) -> None:
        if rollout_batches < 1:
            raise ValueError(f"rollout_batches must be at least 1, got {rollout_batches}")
        if distributed.is_distributed():  # its update sums no gradients across ranks: refuse, never diverge
            raise RuntimeError(
                f"{type(self).__name__} runs in one process; launch it without torchrun "
                "(the online agents PPO, GRPO, RLOO and REINFORCE run data parallel)"
            )
        policy_kwargs = dict(policy_kwargs or {})
        policy_kwargs.setdefault("reference", self.needs_reference)
        self.rollout_batches, self.from_base = rollout_batches, from_base
        self._base_state: dict[str, torch.Tensor] | None = None
        self._round_stats: dict[str, float] = {}
        self.episodes: Episodes | None = None
        # batch_size and micro_batch_size count training targets (pairs, samples), not env rows.
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_epochs=n_epochs,
            batch_size=batch_size,
            micro_batch_size=micro_batch_size,
            max_grad_norm=max_grad_norm,
            hparams=hparams,
            log_samples=log_samples,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
        )
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        super()._setup_model()
        if self.needs_reference and not self.policy.uses_lora and self.policy.reference_model is None:
            raise ValueError(f"{type(self).__name__} needs a reference model: build the policy with reference=True")
        if self.from_base:  # the starting trainable weights, to restart from every round
            self._base_state = {
                name: p.detach().clone() for name, p in self.policy.named_parameters() if p.requires_grad
            }

    @property
    def tokenizer(self) -> Any:
        return env_tokenizer(self.env)

    @property
    def pad_id(self) -> int:
        tokenizer = self.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # -- what subclasses define ---------------------------------------------------------------
    def make_targets(self, episodes: Episodes) -> None:
        """Build this round's targets from its scored episodes; set ``self._round_stats``."""
        raise NotImplementedError

    def num_targets(self) -> int:
        raise NotImplementedError

    def target_loss(self, targets: torch.Tensor, weight: float) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of the targets with these indices, already multiplied by ``weight`` (their
        share of the minibatch, `target_share`), and statistics to average over the round."""
        raise NotImplementedError

    def target_share(self, targets: torch.Tensor) -> float:
        """How much these targets weigh in their minibatch's loss: one per target (a pair, a
        sample) by default; token-mean losses (SFT, STaR) count their tokens."""
        return float(len(targets))

    # -- one round ------------------------------------------------------------------------------
    def collect_rollouts(self, env, callback, rollout_buffer=None, n_rollout_steps: int = 1) -> bool:
        """Collect ``rollout_batches`` batches of whole episodes, then make the round's targets."""
        callback.on_rollout_start()
        batches = []
        for _ in range(self.rollout_batches):
            episodes, self._last_obs = collect_episodes(self.policy, env, self._last_obs, callback=callback)
            self.num_timesteps += episodes.num_steps * env.num_envs
            if not episodes.complete:
                return False  # a callback stopped us mid-batch: no round on a partial batch
            batches.append(episodes)
            self.ep_info_buffer.extend([info["episode"] for info in episodes.infos if "episode" in info])
        episodes = concat_episodes(batches)
        self._timings = {
            "rollout": episodes.seconds,
            "reward": float(sum(info.get("reward_time", 0.0) for info in episodes.infos)),
            "reward_wait": float(sum(info.get("reward_wait", 0.0) for info in episodes.infos)),
        }
        self.episodes = episodes
        self.buffer = TokenRolloutBuffer.from_episodes(episodes)  # what the core's logging reads
        start = time.perf_counter()
        self.policy.set_training_mode(False)
        self.make_targets(episodes)
        self._timings["targets"] = time.perf_counter() - start
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _restart_from_base(self) -> None:
        assert self._base_state is not None
        with torch.no_grad():
            for name, param in self.policy.named_parameters():
                if name in self._base_state:
                    param.copy_(self._base_state[name])
        self.policy.optimizer.state.clear()

    def train(self) -> None:
        """``n_epochs`` of shuffled minibatches of `target_loss` over this round's targets."""
        start = time.perf_counter()
        policy = self.policy
        n = self.num_targets()
        stats: dict[str, list[float]] = {}
        if n == 0:
            self._train_stats = {"skipped_round": 1.0}
            self._timings["update"] = time.perf_counter() - start
            if self.verbose >= 1:
                print(f"round {self.iteration + 1}: no training targets; skipped", file=sys.stderr, flush=True)
            return
        if self.from_base:
            self._restart_from_base()
        policy.set_training_mode(True)
        self._update_learning_rate(policy.optimizer)
        steps = self.n_epochs * math.ceil(n / self.batch_size)
        for epoch in range(self.n_epochs):
            order = torch.randperm(n, generator=self.shuffle_generator)
            for batch_index, minibatch in enumerate(order.split(self.batch_size)):
                if self.from_base:  # a retrain from the base follows the schedule from its start
                    step = epoch * math.ceil(n / self.batch_size) + batch_index
                    update_learning_rate(policy.optimizer, self.lr_schedule(1.0 - step / steps))
                share = self.target_share(minibatch)

                def micro_loss(micro: torch.Tensor, share: float = share) -> tuple[torch.Tensor, dict, float]:
                    weight = self.target_share(micro) / share
                    loss, micro_stats = self.target_loss(micro, weight)
                    return loss, micro_stats, weight

                acc = self.accumulate_and_step(minibatch.split(self.micro_batch_size), micro_loss)
                for key, value in acc.stats.items():  # means over the micro-batches that reported them
                    stats.setdefault(key, []).append(value / acc.shares[key])
                stats.setdefault("grad_norm", []).append(acc.grad_norm)
        policy.set_training_mode(False)
        self._timings["update"] = time.perf_counter() - start
        self._train_stats = {k: float(np.mean(v)) for k, v in stats.items() if v}
        self._train_stats["skipped_round"] = 0.0

    # -- logging --------------------------------------------------------------------------------
    def _extra_log_values(self, buffer) -> dict[str, float]:
        values = dict(self._round_stats)
        values["train/skipped_round"] = self._train_stats.get("skipped_round", 0.0)
        values["time/targets"] = self._timings.get("targets", 0.0)
        for key, value in self._train_stats.items():
            if "/" in key:  # agent statistics already named with their tag
                values[key] = value
        return values

    def _log_iteration(self) -> None:
        if self.buffer is not None:
            return super()._log_iteration()
        # No rollouts this round (SFT): the round's own values.
        values = {
            **self._extra_log_values(None),
            "loss/policy": self._train_stats.get("policy_loss"),
            "train/learning_rate": self.policy.optimizer.param_groups[0]["lr"],
            "train/n_updates": self._n_updates,
            "train/grad_norm": self._train_stats.get("grad_norm"),
            "time/update": self._timings.get("update", 0.0),
        }
        values = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        for key, value in values.items():
            self.logger.record(key, value)
        self.logger.dump(step=self.num_timesteps)
        self.last_iteration_stats = self._last_values = values
        if self.verbose >= 1:
            loss = values.get("loss/policy", float("nan"))
            print(
                f"iter {self.iteration:4d} | examples {self.num_timesteps:7d} | loss {loss:7.4f} | "
                f"update {values['time/update']:5.1f}s",
                file=sys.stderr,
                flush=True,
            )

    # -- the trained model as a plain model directory ---------------------------------------------
    def finalize(self, directory: str | os.PathLike) -> None:
        """The trained policy as a plain model directory (`save_merged`), which ``policy.model=DIR``
        starts from and whose RL reference is then this model."""
        self.save_merged(directory)

    def save_merged(self, directory: str | os.PathLike, tokenizer: Any = None) -> None:
        """Write the policy as a full model (``save_pretrained``, LoRA merged into a copy) plus the
        tokenizer, so ``policy.model=DIR`` starts from it and its RL reference is this model."""
        model = self.policy.model
        merged = copy.deepcopy(model).merge_and_unload() if self.policy.uses_lora else model
        os.makedirs(directory, exist_ok=True)
        merged.save_pretrained(directory)
        (tokenizer if tokenizer is not None else self.tokenizer).save_pretrained(directory)
