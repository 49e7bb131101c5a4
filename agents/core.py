"""The on-policy core every token agent shares: collect, score the reference, shape, update, log, save.

One iteration of every agent (PPO, GRPO, RLOO, REINFORCE):

1. **collect** one lockstep batch of whole episodes (`agents.rollout.collect_episodes`);
2. **reference pass**: one no-grad teacher-forced pass of the reference (adapter off), only when
   the agent uses a KL term, giving the per-token KL;
3. **shape**: sequence reward (scale, missing-EOS penalty, clip), then per-token rewards
   (the sequence reward on the last token, −β·KL on every token when the KL is in the reward);
4. **estimate** advantages: the one place agents differ (`compute_advantages`);
5. **update**: epochs of shuffled minibatches, each a sum of micro-batch forward/backward passes
   of the agent's loss (`loss`, the other place agents differ), then a clipped optimizer step;
6. **log** with the tags TRL and SB3 users know, and **save/load** through `agents.checkpoint`.

Under ``torchrun`` each rank runs this loop on its own rows; `agents.distributed` sums gradients
and batch statistics across ranks, and rank 0 alone logs and writes (see that module).

Built on SB3's `OnPolicyAlgorithm` (callbacks, logger, schedules, ``learn``); agents meet envs
only through the `VecEnv` API and its contract (`agents.env_contract`) and policies only through
the policy API. Why one file of this length: it is one concern, the iteration above, read top to
bottom as CleanRL's ``ppo.py`` is; the maths it calls lives in `ppo_math`, the data in `buffer`,
generation in `rollout` and persistence in `checkpoint`. Imports `agents.*`
maths, buffer, rollout, checkpoint and memory modules, the policies, SB3 and torch.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import FloatSchedule, LinearSchedule, set_random_seed

from agents import checkpoint, distributed, memory, ppo_math
from agents.buffer import TokenBatch, TokenRolloutBuffer
from agents.env_contract import token_env
from agents.rollout import collect_episodes, concat_episodes
from policies.causal_lm import CausalLMPolicy
from policies.pause import PauseLMPolicy

# Constructor arguments that are not hyperparameters (never saved in a checkpoint).
_NOT_HPARAMS = {
    "self",
    "policy",
    "env",
    "tensorboard_log",
    "policy_kwargs",
    "verbose",
    "device",
    "_init_setup_model",
    "__class__",
}


def make_schedule(spec: float | dict | Callable[[float], float]) -> Callable[[float], float]:
    """A schedule over SB3's progress-remaining (1 → 0) from a number, a callable, or a config
    dict ``{schedule: linear, start: 1e-4, end: 0.0, end_fraction: 1.0}``. Only numbers and
    dicts are saved in checkpoints; a callable must be passed again to ``load``."""
    if isinstance(spec, dict):
        spec = dict(spec)
        kind = spec.pop("schedule", None)
        if kind == "constant":
            return FloatSchedule(float(spec["value"]))
        if kind == "linear":
            return LinearSchedule(float(spec["start"]), float(spec["end"]), float(spec.get("end_fraction", 1.0)))
        raise ValueError(
            f"unknown schedule {kind!r}: use {{schedule: linear, start, end}} or {{schedule: constant, value}}"
        )
    return FloatSchedule(spec)


def constructor_args(frame_locals: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters among a constructor's ``locals()`` (what a checkpoint saves)."""
    return {k: v for k, v in frame_locals.items() if k not in _NOT_HPARAMS and not k.startswith("_")}


@dataclass
class LossContext:
    """What a micro-batch's loss needs to know about the minibatch it belongs to."""

    minibatch_tokens: torch.Tensor  # valid action tokens in the whole minibatch
    num_micro_batches: int
    max_completion_length: int  # the env's token budget T
    clip_range: float


def _plain(value: Any) -> Any:
    """Policy kwargs as plain data: classes become ``"module:qualname"``, peft configs dicts."""
    if inspect.isclass(value):
        return f"{value.__module__}:{value.__qualname__}"
    if type(value).__module__.startswith("peft") and hasattr(value, "to_dict"):  # e.g. a LoraConfig
        defaults = type(value)().to_dict()
        changed = {k: v for k, v in value.to_dict().items() if k != "peft_type" and v != defaults.get(k)}
        return {"__peft__": type(value).__name__, **{k: _plain(v) for k, v in changed.items()}}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and type(value).__module__.startswith(("peft", "enum")):
        return value.value
    return value


def _unplain(value: Any) -> Any:
    if isinstance(value, dict):
        if "__peft__" in value:
            import peft

            fields = {k: v for k, v in value.items() if k != "__peft__"}
            return getattr(peft, value["__peft__"])(**fields)
        return {k: _unplain(v) for k, v in value.items()}
    if isinstance(value, str) and value.startswith("torch.optim.") and ":" in value:  # an optimizer class
        module, name = value.split(":")
        return getattr(importlib.import_module(module), name)
    return value


class OnPolicyLMAlgorithm(OnPolicyAlgorithm):
    """The shared core; subclasses set `uses_value_head`, `needs_reference`, `compute_advantages`,
    `loss` and, optionally, `_extra_log_values` / `_extra_state`.

    Parameters every agent takes (subclasses document theirs and map their names onto these):

    :param n_epochs: passes over each rollout batch (GRPO's μ, ``num_iterations``).
    :param batch_size: rows per optimizer step.
    :param micro_batch_size: rows per forward/backward (gradients accumulate; ``None``: = batch_size).
    :param clip_range: policy-ratio clip ε (float, schedule dict or callable).
    :param clip_range_high: upper clip ε_high (``None``: = ε).
    :param kl_coef: β of the KL term (0 with no adaptive control: no reference pass runs).
    :param kl_in_reward: put −β·KL in the per-token rewards (else the agent's loss uses it).
    :param group_size: completions per prompt the estimator groups (must equal the env's
        ``completions_per_prompt``).
    :param dynamic_sampling: DAPO's dynamic sampling (group agents): after a batch, groups whose
        env rewards all agree (max − min ≤ ``dynamic_sampling_tolerance``) are dropped, since
        their advantages are 0, and more lockstep batches are sampled until the batch is full of
        groups whose rewards differ, at most ``max_extra_rollouts`` more; then the batch is filled
        with tied groups. Logged: ``dapo/kept_fraction`` (sampled groups whose rewards differ),
        ``dapo/extra_rollouts``, ``dapo/filled_groups``.
    :param recompute_log_probs: recompute the old log-probs with a teacher-forced pass of the
        learner before the update, instead of trusting the rollout's (which came from incremental
        decoding, in bf16 on a GPU or from an inference engine). ``None``: on when the model
        computes in half precision, off in fp32, where the two agree.
    :param rollout_is_mode: with recomputed log-probs, the rollout-versus-update correction
        (`ppo_math.rollout_importance_weights`: ``token_truncate`` is TIS) applied to the
        advantages; ``None``: recompute only. ``rollout/logprob_diff`` (mean |log π_update − log
        π_rollout|) is always logged: over the batch when recomputed, else over the first minibatch.
    :param rollout_is_cap: C, the cap of the correction weights.
    """

    policy_aliases = {"CausalLMPolicy": CausalLMPolicy, "PauseLMPolicy": PauseLMPolicy}
    uses_value_head = False
    tb_name = "run"
    _restoring = False  # set by `load` while it rebuilds an agent: the env keeps its restored state

    def __init__(
        self,
        policy: str | type[CausalLMPolicy],
        env: GymEnv,
        learning_rate: float | dict | Schedule,
        n_epochs: int,
        batch_size: int,
        micro_batch_size: int | None,
        clip_range: float | dict | Schedule,
        max_grad_norm: float,
        kl_coef: float,
        kl_in_reward: bool,
        hparams: dict[str, Any],
        clip_range_high: float | None = None,
        kl_estimator: str = "k1",
        adaptive_kl: bool = False,
        kl_target: float = 6.0,
        kl_horizon: int = 10000,
        ent_coef: float = 0.0,
        gamma: float = 1.0,
        gae_lambda: float = 1.0,
        vf_coef: float = 0.0,
        missing_eos_penalty: float | None = None,
        reward_scale: float = 1.0,
        reward_clip: float | None = None,
        group_size: int = 1,
        dynamic_sampling: bool = False,
        dynamic_sampling_tolerance: float = 0.0,
        max_extra_rollouts: int = 8,
        recompute_log_probs: bool | None = None,
        rollout_is_mode: str | None = "token_truncate",
        rollout_is_cap: float = 2.0,
        target_kl: float | None = None,
        log_samples: int = 2,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        self._hparams = dict(hparams)
        self._reduce = distributed.reduce_sum if distributed.is_distributed() else None
        if not distributed.is_main_process():  # rank 0 alone logs
            tensorboard_log, verbose = None, 0
        policy_kwargs = dict(policy_kwargs or {})
        policy_kwargs.setdefault("value_head", self.uses_value_head)
        self._uses_reference = kl_coef != 0 or adaptive_kl
        if not self._uses_reference:
            policy_kwargs.setdefault("reference", False)  # no KL: no reference copy to keep
        super().__init__(
            policy,
            env,
            learning_rate=make_schedule(learning_rate),
            n_steps=1,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=False,
            sde_sample_freq=-1,
            tensorboard_log=tensorboard_log,
            monitor_wrapper=False,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=distributed.local_device(device),
            _init_setup_model=False,
        )
        micro_batch_size = micro_batch_size or batch_size
        if batch_size > self.n_envs or self.n_envs % batch_size:
            raise ValueError(f"batch_size={batch_size} must divide the number of rows ({self.n_envs})")
        if batch_size % micro_batch_size:
            raise ValueError(f"micro_batch_size={micro_batch_size} must divide batch_size={batch_size}")
        if kl_estimator not in ("k1", "k3"):
            raise ValueError("kl_estimator must be 'k1' or 'k3'")
        env_group = token_env(self.env).completions_per_prompt
        if group_size > 1 and (self.n_envs % group_size or env_group != group_size):
            raise ValueError(
                f"{type(self).__name__} groups {group_size} completions per prompt, but the env has num_envs="
                f"{self.n_envs} and completions_per_prompt={env_group}: build the env with "
                f"completions_per_prompt={group_size} and num_envs a multiple of it "
                f"(run_ppo: env.completions_per_prompt={group_size})"
            )
        if dynamic_sampling and group_size < 2:
            raise ValueError(
                "dynamic_sampling drops groups whose rewards all agree: it needs groups "
                "(completions_per_prompt >= 2, a group agent such as GRPO or RLOO)"
            )
        if max_extra_rollouts < 0 or dynamic_sampling_tolerance < 0:
            raise ValueError("max_extra_rollouts and dynamic_sampling_tolerance must be >= 0")
        if rollout_is_mode is not None and rollout_is_mode not in ppo_math.ROLLOUT_IS_MODES:
            raise ValueError(
                f"rollout_is_mode must be one of {ppo_math.ROLLOUT_IS_MODES} or None, got {rollout_is_mode!r}"
            )
        if rollout_is_cap <= 0:
            raise ValueError(f"rollout_is_cap must be positive, got {rollout_is_cap}")
        self.dynamic_sampling, self.dynamic_sampling_tolerance = dynamic_sampling, dynamic_sampling_tolerance
        self.max_extra_rollouts = max_extra_rollouts
        self.recompute_log_probs, self.rollout_is_mode, self.rollout_is_cap = (
            recompute_log_probs,
            rollout_is_mode,
            rollout_is_cap,
        )
        self._sampling_stats: dict[str, float] = {}
        self.n_epochs, self.batch_size, self.micro_batch_size = n_epochs, batch_size, micro_batch_size
        self.clip_range, self.clip_range_high, self.target_kl = clip_range, clip_range_high, target_kl
        self.kl_coef, self.kl_in_reward, self.kl_estimator = kl_coef, kl_in_reward, kl_estimator
        self.adaptive_kl, self.kl_target, self.kl_horizon = adaptive_kl, kl_target, kl_horizon
        self.missing_eos_penalty, self.reward_scale, self.reward_clip = missing_eos_penalty, reward_scale, reward_clip
        self.group_size, self.log_samples = group_size, log_samples
        self.buffer: TokenRolloutBuffer | None = None
        self.iteration = 0
        self._total_iterations: int | None = None
        self._keep_last_obs = False
        self._timings: dict[str, float] = {}
        self._train_stats: dict[str, float] = {}
        self._last_values: dict[str, float] = {}
        if _init_setup_model:
            self._setup_model()

    # -- set-up ------------------------------------------------------------------------------
    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(
            self.observation_space, self.action_space, self.lr_schedule, device=str(self.device), **self.policy_kwargs
        )
        distributed.broadcast_parameters(self.policy)  # every rank starts from rank 0's weights
        if getattr(self.policy, "fsdp", False):
            self.policy.shard()  # FSDP2 over the ranks (a no-op in one process)
        self.clip_range = make_schedule(self.clip_range)
        self.kl_controller = (
            ppo_math.AdaptiveKLController(self.kl_coef, self.kl_target, self.kl_horizon)
            if self.adaptive_kl
            else ppo_math.FixedKLController(self.kl_coef)
        )
        # Minibatch order comes from the agent's own generator, so resume can restore it.
        self.shuffle_generator = torch.Generator().manual_seed(
            (0 if self.seed is None else self.seed) + distributed.rank()
        )

    def set_random_seed(self, seed: int | None = None) -> None:
        """SB3's seeding, except that an agent rebuilt by `load` leaves the env's restored state
        alone. Under torchrun, rank r seeds its RNGs with ``seed + r`` and its env's prompt slots
        as slots ``[r·S, (r+1)·S)`` of one big env (``S`` slots per rank), so N ranks of B rows
        draw the prompts one process of N·B rows would."""
        if seed is None:
            return
        rank = distributed.rank()
        set_random_seed(seed + rank, using_cuda=self.device.type == "cuda")
        self.action_space.seed(seed)
        if self.env is not None and not self._restoring:
            slots = self.n_envs // token_env(self.env).completions_per_prompt
            self.env.seed(seed + rank * slots)

    def _setup_learn(
        self, total_timesteps, callback=None, reset_num_timesteps=True, tb_log_name="run", progress_bar=False
    ):
        if self._keep_last_obs:  # just loaded: continue the restored batch and prompt order
            if reset_num_timesteps:
                self.num_timesteps, self._episode_num, self.ep_info_buffer = 0, 0, None
            reset_num_timesteps, self._keep_last_obs = False, False
        # SB3 prints its table at verbose >= 1; we print one summary line there and keep the
        # table for verbose >= 2.
        verbose, self.verbose = self.verbose, max(self.verbose - 1, 0)
        if self.device.type == "cpu":
            memory.keep_freed_memory()  # no page faults on every large tensor (see agents.memory)
        try:
            return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        finally:
            self.verbose = verbose

    # -- the loop ----------------------------------------------------------------------------
    def learn(
        self,
        total_timesteps: int | None = None,
        callback=None,
        log_interval: int = 1,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
        total_iterations: int | None = None,
    ):
        """Train until ``total_timesteps`` env steps × rows (SB3's unit; a batch of B rows that
        runs T steps counts B·T), or until ``self.iteration`` reaches ``total_iterations``.

        :param total_iterations: the run's iteration budget, counted from the start of the run
            (``self.iteration`` survives save/load). When given, it also defines schedule
            progress (``1 − iteration / total_iterations``) and the progress bar, so a resumed
            run follows the uninterrupted schedule exactly.
        """
        if total_timesteps is None and total_iterations is None:
            raise ValueError("learn() needs total_timesteps or total_iterations")
        if total_iterations is not None:
            self._total_iterations = int(total_iterations)
        total_timesteps, callback = self._setup_learn(
            sys.maxsize // 2 if total_timesteps is None else total_timesteps,
            callback,
            reset_num_timesteps,
            tb_log_name or self.tb_name,
            progress_bar=progress_bar and total_iterations is None,
        )
        bar = None
        if progress_bar and total_iterations is not None and distributed.is_main_process():
            from tqdm.auto import tqdm

            bar = tqdm(
                total=total_iterations,
                initial=min(self.iteration, total_iterations),
                unit="iter",
                desc=type(self).__name__,
                dynamic_ncols=True,
            )
        callback.on_training_start(locals(), globals())
        try:
            while self.num_timesteps < total_timesteps and (
                total_iterations is None or self.iteration < total_iterations
            ):
                if not self.collect_rollouts(self.env, callback, None, n_rollout_steps=1):
                    break
                self._update_progress(total_timesteps)
                self.train()
                self.iteration += 1
                if log_interval is not None and self.iteration % log_interval == 0:
                    self._log_iteration()
                if bar is not None:  # after logging: the iteration just done (or the last one logged)
                    bar.update(1)
                    # The score; a round without rollouts (SFT) has none: its loss.
                    for name, key in (("score", "objective/scores"), ("loss", "loss/policy")):
                        if key in self._last_values:
                            bar.set_postfix({name: f"{self._last_values[key]:.3f}"})
                            break
        finally:
            if bar is not None:
                bar.close()
        callback.on_training_end()
        return self

    def _update_progress(self, total_timesteps: int) -> None:
        if self._total_iterations:
            self._current_progress_remaining = 1.0 - self.iteration / self._total_iterations
        else:
            self._update_current_progress_remaining(self.num_timesteps, total_timesteps)

    def collect_rollouts(self, env, callback, rollout_buffer=None, n_rollout_steps: int = 1) -> bool:
        """Collect one batch of whole episodes (more with ``dynamic_sampling``), score the
        reference, shape rewards, estimate advantages."""
        self.policy.set_training_mode(False)
        callback.on_rollout_start()
        batches, extra = [], 0
        while True:
            with self.policy.gathered():  # FSDP: full weights for generation, which takes each rank its own steps
                episodes, self._last_obs = collect_episodes(self.policy, env, self._last_obs, callback=callback)
            # Env steps × rows of every rank (ranks' batches may run different numbers of steps).
            self.num_timesteps += int(
                distributed.reduce_sum(torch.tensor(episodes.num_steps * env.num_envs, device=self.device))
            )
            if distributed.is_distributed():  # reward wrappers' running statistics: every rank's rewards
                token_env(env).sync_statistics(distributed.all_gather_object)
            if not episodes.complete:
                return False  # a callback stopped us mid-batch: the partial batch is not trained on
            for info in episodes.infos:
                if "episode" in info:
                    self.ep_info_buffer.extend([info["episode"]])
            batches.append(episodes)
            if not self.dynamic_sampling or extra >= self.max_extra_rollouts:
                break
            short = len(self._informative_groups(batches)) * self.group_size < env.num_envs
            # Every rank samples as long as any rank is short, so their collectives stay in step.
            if not float(distributed.reduce_max(torch.tensor(float(short), device=self.device))):
                break
            extra += 1
        episodes = concat_episodes(batches)
        self._timings = {
            "rollout": episodes.seconds,
            "reward": float(sum(info.get("reward_time", 0.0) for info in episodes.infos)),
            "reward_wait": float(sum(info.get("reward_wait", 0.0) for info in episodes.infos)),
        }
        if self.dynamic_sampling:
            episodes = self._fill_batch(episodes, self._informative_groups(batches), env.num_envs, extra)
        self.buffer = self.process_episodes(episodes)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _informative_groups(self, batches: list) -> list[int]:
        """Groups (indices over the concatenated batches) whose env rewards differ by more than the tolerance."""
        rewards = torch.cat([b.env_rewards for b in batches]).float().view(-1, self.group_size)
        spread = rewards.max(1).values - rewards.min(1).values
        return (spread > self.dynamic_sampling_tolerance).nonzero().flatten().tolist()

    def _fill_batch(self, episodes, informative: list[int], rows: int, extra: int):
        """The first groups whose rewards differ, in sampling order, topped up with tied ones
        when ``max_extra_rollouts`` ran out; records the ``dapo/*`` statistics."""
        wanted, total = rows // self.group_size, episodes.env_rewards.shape[0] // self.group_size
        keep = set(informative)
        tied = [g for g in range(total) if g not in keep]
        groups = informative[:wanted]
        filled = tied[: wanted - len(groups)]
        order = sorted(groups + filled)
        self._sampling_stats = {
            "dapo/kept_fraction": len(informative) / total,
            "dapo/extra_rollouts": float(extra),
            "dapo/filled_groups": float(len(filled)),
        }
        return episodes.select([g * self.group_size + i for g in order for i in range(self.group_size)])

    def process_episodes(self, episodes) -> TokenRolloutBuffer:
        """A batch of episodes → a buffer ready for `train`: the learner's log-probs (when they
        are recomputed), reference pass, shaping, advantages, the rollout correction."""
        start = time.perf_counter()
        buffer = TokenRolloutBuffer.from_episodes(episodes, group_size=self.group_size)
        if self._recomputes_log_probs():
            self.recompute_pass(buffer)
        self.reference_pass(buffer)
        self._timings["reference"] = time.perf_counter() - start
        self.shape_rewards(buffer)
        self.compute_advantages(buffer)
        if buffer.rollout_log_probs is not None and self.rollout_is_mode is not None:
            buffer.is_weights = ppo_math.rollout_importance_weights(
                buffer.log_probs, buffer.rollout_log_probs, buffer.mask, self.rollout_is_mode, self.rollout_is_cap
            )
            buffer.advantages = buffer.advantages * buffer.is_weights  # = weighting the policy loss: w ≥ 0, no grad
        return buffer

    def _recomputes_log_probs(self) -> bool:
        if self.recompute_log_probs is not None:
            return bool(self.recompute_log_probs)
        return next(self.policy.model.parameters()).dtype in (torch.bfloat16, torch.float16)

    @torch.no_grad()
    def recompute_pass(self, buffer: TokenRolloutBuffer, batch_size: int = 16) -> None:
        """The learner's own log-probs of the rollout's actions (teacher-forced, no grad) become
        the old log-probs; the sampler's are kept as ``buffer.rollout_log_probs``."""
        flat = []
        for rows in torch.arange(buffer.num_rows, device=self.device).split(batch_size):
            ids, attn, pol = buffer.trimmed_rows(rows)
            flat.append(self.policy.evaluate_actions(ids, attn, pol, with_entropy=False, with_values=False).log_prob)
        buffer.rollout_log_probs = buffer.log_probs
        buffer.log_probs = torch.zeros_like(buffer.log_probs).masked_scatter(buffer.mask, torch.cat(flat))

    @torch.no_grad()
    def reference_pass(self, buffer: TokenRolloutBuffer, reference_batch_size: int = 16) -> None:
        """Reference log-probs and the per-token KL, in no-grad teacher-forced passes (skipped
        when the agent has no KL term)."""
        if not self._uses_reference:
            return
        flat = []
        for rows in torch.arange(buffer.num_rows).split(reference_batch_size):
            ids, attn, pol = buffer.trimmed_rows(rows)
            flat.append(self.policy.evaluate_actions(ids, attn, pol, reference=True).log_prob)
        buffer.ref_log_probs = torch.zeros_like(buffer.log_probs).masked_scatter(buffer.mask, torch.cat(flat))
        buffer.kl = ppo_math.kl_estimate(buffer.log_probs, buffer.ref_log_probs, self.kl_estimator) * buffer.mask

    def shape_rewards(self, buffer: TokenRolloutBuffer) -> None:
        buffer.kl_coef = float(self.kl_controller.value) if self._uses_reference else 0.0
        buffer.sequence_rewards = ppo_math.shape_sequence_rewards(
            buffer.env_rewards, buffer.terminated, self.reward_scale, self.missing_eos_penalty, self.reward_clip
        )
        in_reward = self.kl_in_reward and buffer.kl is not None
        # Per-turn rewards (info["turn_rewards"], multi-turn games) land on each turn's last action
        # for agents with a critic (PPO's GAE); sequence-level agents keep their sum at the end.
        turn_rewards = None
        if self.uses_value_head and any("turn_rewards" in info for info in buffer.infos):
            turn_rewards = ppo_math.place_turn_rewards(
                [info.get("turn_rewards") for info in buffer.infos],
                [info.get("turn_ends") for info in buffer.infos],
                tuple(buffer.mask.shape),
                self.reward_scale,
                buffer.mask.device,
            )
        buffer.token_rewards = ppo_math.token_rewards(
            buffer.sequence_rewards,
            buffer.kl if in_reward else torch.zeros_like(buffer.log_probs),
            buffer.kl_coef if in_reward else 0.0,
            buffer.mask,
            turn_rewards,
        )

    def compute_advantages(self, buffer: TokenRolloutBuffer) -> None:
        """Set ``buffer.advantages`` and ``buffer.returns`` (``(B, T)``, zero off the mask)."""
        raise NotImplementedError

    def loss(
        self, micro: TokenBatch, log_probs: torch.Tensor, values: torch.Tensor | None, context: LossContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The micro-batch's contribution to the minibatch loss (what ``backward`` sees, already
        normalised for accumulation), and per-micro-batch statistics (token means)."""
        raise NotImplementedError

    # -- the update --------------------------------------------------------------------------
    def train(self) -> None:
        """``n_epochs`` of shuffled minibatches of the agent's loss on the last rollout batch."""
        assert self.buffer is not None, "collect_rollouts() first"
        start = time.perf_counter()
        policy, buffer = self.policy, self.buffer
        policy.set_training_mode(True)
        self._update_learning_rate(policy.optimizer)
        clip_range = float(self.clip_range(self._current_progress_remaining))
        stats: dict[str, list[float]] = {}
        first_minibatch: dict[str, float] | None = None
        stop = False
        for epoch in range(self.n_epochs):
            for minibatch in buffer.minibatches(self.batch_size, self.shuffle_generator):
                policy.optimizer.zero_grad(set_to_none=True)
                micros = list(minibatch.split(self.micro_batch_size))
                # Normalisers count every rank's tokens and micro-batches; gradients are then summed.
                context = LossContext(
                    distributed.reduce_sum(minibatch.mask.sum()).clamp(min=1),
                    len(micros) * distributed.world_size(),
                    buffer.mask.shape[1],
                    clip_range,
                )
                minibatch_stats: dict[str, float] = {}
                ratio_dev = 0.0
                diff = torch.zeros(3, dtype=torch.float64, device=self.device)  # Σ|Δ log π|, tokens, max
                for micro in micros:
                    out = policy.evaluate_actions(
                        micro.input_ids,
                        micro.attention_mask,
                        micro.policy_mask,
                        with_entropy=True,
                        with_values=self.uses_value_head,
                        entropy_grad=self.ent_coef != 0,
                    )
                    log_probs, values, entropy = (
                        micro.unflatten(out.log_prob),
                        micro.unflatten(out.values),
                        micro.unflatten(out.entropy),
                    )
                    weight = micro.mask.sum() / context.minibatch_tokens  # this micro-batch's share of tokens
                    loss, micro_stats = self.loss(micro, log_probs, values, context)
                    if first_minibatch is None:  # before any step: the update's log-probs against the old ones
                        gap = (log_probs.detach() - micro.old_log_probs).abs() * micro.mask
                        diff += torch.stack([gap.sum().double(), micro.mask.sum().double(), gap.max().double()])
                    entropy_mean = ppo_math.masked_mean(entropy, micro.mask)
                    if self.ent_coef:
                        loss = loss - self.ent_coef * entropy_mean * weight
                    loss.backward()
                    micro_stats["entropy"] = entropy_mean
                    ratio_dev = max(ratio_dev, float(micro_stats.pop("ratio_max_dev", 0.0)))
                    for key, value in micro_stats.items():
                        minibatch_stats[key] = minibatch_stats.get(key, 0.0) + float(value.detach()) * float(weight)
                if distributed.is_distributed():  # the same numbers on every rank, e.g. for target_kl
                    keys = sorted(minibatch_stats)
                    summed = distributed.reduce_sum(
                        torch.tensor([minibatch_stats[k] for k in keys], dtype=torch.float64, device=self.device)
                    )
                    minibatch_stats = dict(zip(keys, summed.tolist()))
                    ratio_dev = float(distributed.reduce_max(torch.tensor(ratio_dev, device=self.device)))
                if first_minibatch is None:
                    first_minibatch = {
                        "ratio_max_dev": ratio_dev,
                        "approx_kl": minibatch_stats.get("approx_kl", 0.0),
                        "logprob_diff": float(diff[0] / diff[1].clamp(min=1)),
                        "logprob_diff_max": float(diff[2]),
                    }
                if self.target_kl is not None and minibatch_stats.get("approx_kl", 0.0) > 1.5 * self.target_kl:
                    # As SB3: checked before the optimizer step, so the overshooting step is never taken.
                    policy.optimizer.zero_grad(set_to_none=True)
                    stop = True
                    if self.verbose >= 2:
                        print(f"early stop at epoch {epoch}: approx_kl {minibatch_stats['approx_kl']:.4f}")
                    break
                distributed.all_reduce_gradients(policy.parameters())  # FSDP's shards are reduced already
                grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), self.max_grad_norm)
                if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
                    grad_norm = grad_norm.full_tensor()
                policy.optimizer.step()
                self._n_updates += 1
                for key, value in minibatch_stats.items():
                    stats.setdefault(key, []).append(value)
                stats.setdefault("grad_norm", []).append(float(grad_norm))
            if stop:
                break
        # The KL controller moves after the update, on the batch's mean per-sequence KL.
        if buffer.kl is not None:
            kl_sum = buffer.sequence_kl.sum()
            total = distributed.reduce_sum(
                torch.stack([kl_sum, torch.tensor(float(buffer.num_rows), device=kl_sum.device)])
            )
            self.kl_controller.update(float(total[0] / total[1]), int(total[1]))
        self._timings["update"] = time.perf_counter() - start
        self._train_stats = {k: float(np.mean(v)) for k, v in stats.items() if v}
        self._train_stats.update({f"first_minibatch_{k}": v for k, v in (first_minibatch or {}).items()})
        self._train_stats["clip_range"] = clip_range
        self._train_stats["early_stopped"] = float(stop)

    # -- logging -----------------------------------------------------------------------------
    def _extra_log_values(self, buffer: TokenRolloutBuffer) -> dict[str, float]:
        return {}

    def _log_iteration(self) -> None:
        buffer, stats, log = self.buffer, self._train_stats, self.logger
        assert buffer is not None
        scores = float(buffer.env_rewards.mean())
        task_scores = [float(info.get("score", reward)) for info, reward in zip(buffer.infos, buffer.env_rewards)]
        values = {
            "objective/kl_coef": float(buffer.kl_coef),
            "objective/entropy": float(buffer.sequence_neg_log_prob.mean()),
            "objective/scores": scores,  # TRL's tag: the reward trained on (the env's, after wrappers)
            "objective/task_score": float(np.mean(task_scores)),  # the task's own verdict, info["score"]
            "policy/approxkl": stats.get("approx_kl"),
            "policy/clipfrac": stats.get("clip_fraction"),
            "policy/entropy": stats.get("entropy"),
            "policy/first_minibatch_ratio_max_dev": stats.get("first_minibatch_ratio_max_dev"),
            "policy/first_minibatch_approxkl": stats.get("first_minibatch_approx_kl"),
            "loss/policy": stats.get("policy_loss"),
            "tokens/response_len_mean": float(buffer.lengths.float().mean()),
            "tokens/eos_fraction": float(buffer.terminated.float().mean()),
            "train/learning_rate": self.policy.optimizer.param_groups[0]["lr"],
            "train/n_updates": self._n_updates,
            "train/grad_norm": stats.get("grad_norm"),
            "train/clip_range": stats.get("clip_range"),
            "train/early_stopped": stats.get("early_stopped"),
            "time/rollout": self._timings.get("rollout", 0.0),
            "time/reward": self._timings.get("reward", 0.0),
            "time/reward_wait": self._timings.get("reward_wait", 0.0),
            "time/reference": self._timings.get("reference", 0.0),
            "time/update": self._timings.get("update", 0.0),
        }
        if buffer.has_reference:  # no reference pass, no KL to report
            kl = float(buffer.sequence_kl.mean())
            values["objective/kl"] = kl
            values["objective/rlhf_reward"] = scores - float(buffer.kl_coef) * kl
        if buffer.rollout_log_probs is not None:  # the sampler against the learner, over the whole batch
            gap = (buffer.log_probs - buffer.rollout_log_probs).abs() * buffer.mask
            values["rollout/logprob_diff"] = float(gap.sum() / buffer.mask.sum().clamp(min=1))
            values["rollout/logprob_diff_max"] = float(gap.max())
        else:  # the first minibatch's update pass, before any step, against the rollout
            values["rollout/logprob_diff"] = stats.get("first_minibatch_logprob_diff")
            values["rollout/logprob_diff_max"] = stats.get("first_minibatch_logprob_diff_max")
        if buffer.is_weights is not None:
            values["rollout/is_weight_mean"] = float(ppo_math.masked_mean(buffer.is_weights, buffer.mask))
        values.update(self._sampling_stats)
        values.update(self._extra_log_values(buffer))
        for name, value in buffer.reward_components().items():
            values[f"rewards/{name}/mean"] = value
        # Every logged scalar is finite: a quantity undefined this iteration is not logged.
        values = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        if distributed.is_distributed():  # means over ranks (equal rows per rank), logged by rank 0
            gathered = distributed.all_gather_object(values)
            keys = set().union(*gathered)
            values = {k: float(np.mean([g[k] for g in gathered if k in g])) for k in sorted(keys)}
            if not distributed.is_main_process():
                self.last_iteration_stats = self._last_values = values
                return
            scores = values["objective/scores"]
        for key, value in values.items():
            log.record(key, value)
        if self.ep_info_buffer:
            log.record("rollout/ep_rew_mean", float(np.mean([ep["r"] for ep in self.ep_info_buffer])))
            log.record("rollout/ep_len_mean", float(np.mean([ep["l"] for ep in self.ep_info_buffer])))
        samples = [info for info in buffer.infos if "completion" in info][: self.log_samples]
        if samples:
            text = "\n\n".join(
                f"**prompt:** {s['prompt']}\n\n**completion:** {s['completion']}\n\n**score:** {s['score']:.3f}"
                for s in samples
            )
            log.record("samples/text", text, exclude=("stdout", "log", "json", "csv"))
        log.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        log.dump(step=self.num_timesteps)
        self.last_iteration_stats = self._last_values = values
        if self.verbose >= 1:
            kl_value = values.get("objective/kl")
            kl_text = f"kl {kl_value:7.4f} | " if kl_value is not None else ""
            print(
                f"iter {self.iteration:4d} | steps {self.num_timesteps:7d} | score {scores:7.4f} | {kl_text}"
                f"beta {values['objective/kl_coef']:.4f} | len {values['tokens/response_len_mean']:5.1f} | "
                f"rollout {values['time/rollout']:5.1f}s update {values['time/update']:5.1f}s",
                file=sys.stderr,
                flush=True,
            )

    # -- saving, loading, resuming -------------------------------------------------------------
    def finalize(self, directory) -> None:
        """Write the trained policy for use after training: its trainable weights (the LoRA
        adapter, or full weights, with its heads; ``policy.save_trainable``). The round agents
        write a plain model directory instead (`ScoredRolloutAlgorithm.finalize`). Under FSDP
        every rank calls it (the weights are gathered); rank 0 writes."""
        self.policy.save_trainable(directory)

    def _extra_state(self) -> dict[str, Any]:
        """Agent-specific state to checkpoint (e.g. a running baseline)."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def save(self, path, exclude=None, include=None) -> None:
        """Write a checkpoint directory atomically (see `agents.checkpoint`).

        Holds: the trainable weights (LoRA adapter or full model, plus heads) via
        ``save_pretrained``, the model spec it starts from, hyperparameters, optimizer and
        KL-controller state, counters, every RNG state (CUDA's too), the env's sampler/batch
        state and the in-flight observation.
        """
        hparams, callables = {}, []
        for key, value in self._hparams.items():
            if callable(value) and not isinstance(value, (int, float)):
                callables.append(key)  # a Python callable (a schedule) cannot be stored as data
            else:
                hparams[key] = _plain(value)
        policy_kwargs = {k: _plain(v) for k, v in self.policy_kwargs.items() if k != "model" or isinstance(v, str)}
        # FSDP: the full weights and optimizer state, gathered to rank 0 (collectives).
        trainable, optimizer_state = self.policy.trainable_state(), self.policy.optimizer_state()
        # Every rank's own state (RNGs, env sampler and batch), gathered to rank 0, which writes.
        ranks = distributed.all_gather_object(
            checkpoint.encode(
                {
                    "rng": checkpoint.rng_states({"shuffle": self.shuffle_generator}),
                    "env_state": token_env(self.env).get_state() if self.env is not None else None,
                    "last_obs": self._last_obs,
                    "extra": self._extra_state(),
                }
            )
        )
        if not distributed.is_main_process():
            return
        meta = {
            "model": self.policy.model_spec,
            "uses_lora": self.policy.uses_lora,
            "policy_class": type(self.policy).__name__,
            "agent_class": type(self).__name__,
            "num_timesteps": self.num_timesteps,
            "iteration": self.iteration,
            "world_size": distributed.world_size(),
        }
        state = {
            "hparams": hparams,
            "callable_hparams": callables,
            "policy_kwargs": policy_kwargs,
            "optimizer": optimizer_state,
            "kl_controller": self.kl_controller.state_dict(),
            "num_timesteps": self.num_timesteps,
            "n_updates": self._n_updates,
            "iteration": self.iteration,
            "total_iterations": self._total_iterations,
            "total_timesteps": self._total_timesteps,
            "ranks": ranks,
        }
        checkpoint.write_checkpoint(
            path,
            meta,
            state,
            self.policy.save_trainable
            if trainable is None
            else functools.partial(self.policy.save_trainable, state=trainable),
        )

    @classmethod
    def load(
        cls,
        path,
        env: GymEnv | None = None,
        device: str = "auto",
        custom_objects=None,
        print_system_info: bool = False,
        force_reset: bool = False,
        model: Any = None,
        **kwargs,
    ):
        """Rebuild an agent from `save`: the starting model, then the trained weights and state.
        A following ``learn()`` continues the saved batch and prompt order.

        :param model: the starting model object, when it was given as an object rather than a spec.
        :param kwargs: override saved hyperparameters (required for those saved as callables).
        """
        path, meta, state = checkpoint.read_checkpoint(path)
        if meta.get("world_size", 1) != distributed.world_size():
            raise ValueError(
                f"{path} was written by {meta.get('world_size', 1)} ranks and this run has "
                f"{distributed.world_size()}: resume with the same world size (each rank's prompts, "
                "batch and RNGs are its own)"
            )
        if env is None:
            raise ValueError(f"{cls.__name__}.load needs env=...: the token env is not pickled into checkpoints")
        if meta.get("agent_class", cls.__name__) != cls.__name__:
            raise ValueError(
                f"{path} holds a {meta['agent_class']} checkpoint; load it with {meta['agent_class']}.load"
            )
        missing = [k for k in state["callable_hparams"] if k not in kwargs]
        if missing:
            raise ValueError(
                f"{path} was saved with Python callables for {missing}; pass them again, e.g. "
                f"{cls.__name__}.load(path, env, {missing[0]}=...)"
            )
        policy_kwargs = {k: _unplain(v) for k, v in state["policy_kwargs"].items()}
        policy_kwargs["model"] = model if model is not None else meta["model"]
        hparams = {**state["hparams"], **kwargs}
        cls._restoring = True
        try:
            agent = cls(
                meta.get("policy_class", "CausalLMPolicy"), env, policy_kwargs=policy_kwargs, device=device, **hparams
            )
        finally:
            cls._restoring = False
        agent.policy.load_trainable(path / "policy")
        agent.policy.load_optimizer_state(state["optimizer"])
        agent.kl_controller.load_state_dict(state["kl_controller"])
        own = state["ranks"][distributed.rank()]
        agent._load_extra_state(own["extra"])
        agent.num_timesteps, agent._n_updates = state["num_timesteps"], state["n_updates"]
        agent.iteration, agent._total_timesteps = state["iteration"], state["total_timesteps"]
        agent._total_iterations = state["total_iterations"]
        if own["env_state"] is not None and not force_reset:
            token_env(agent.env).set_state(own["env_state"])
            agent._last_obs = own["last_obs"]
            agent._keep_last_obs = True
        checkpoint.set_rng_states(own["rng"], {"shuffle": agent.shuffle_generator})
        return agent


def agent_parameters(agent_class: type) -> set[str]:
    """The keyword arguments an agent's constructor accepts (for config validation), following
    ``**kwargs`` up the class hierarchy."""
    names: set[str] = set()
    for klass in agent_class.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names - {"self", "policy", "env", "_init_setup_model"}
