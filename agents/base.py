"""The base every agent shares: `LMAlgorithm` — learn, seeding, logging, save/load and resume.

Two siblings build on it and differ only in what one iteration collects and how it updates:

- `agents.core.OnPolicyLMAlgorithm`, the online agents' core (PPO, GRPO, RLOO, REINFORCE):
  rollouts, reference pass, reward shaping, advantages, minibatch epochs of the agent's loss;
- `agents.rounds.ScoredRolloutAlgorithm`, the scored-sample core (SFT, STaR, DPO, KTO): scored
  rollouts (or a data set), targets, epochs of the agent's target loss.

Both update through `LMAlgorithm.accumulate_and_step`: one optimizer step from micro-batches whose
losses are already weighted by their share of the minibatch (tokens for a token mean, targets for a
per-target mean), so gradient accumulation gives the minibatch's loss whatever the micro-batch size.

Why one file of this length: its one concern is the surface every agent shows SB3 users (the
``learn`` loop, the logged tags, ``save``/``load`` and what resume restores), which must change
together; file formats live in `agents.checkpoint`, collectives in `agents.distributed`.

Built on SB3's `OnPolicyAlgorithm` (callbacks, logger, schedules, ``learn``); agents meet envs
only through the `VecEnv` API and its contract (`agents.env_contract`) and policies only through
the policy API. Imports `agents` checkpoint, distributed, memory and buffer modules, the
policies, SB3 and torch.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import FloatSchedule, LinearSchedule, set_random_seed

from agents import checkpoint, distributed, memory, ppo_math
from agents.env_contract import token_env
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


@dataclass
class Accumulated:
    """What `LMAlgorithm.accumulate_and_step` gathered over one minibatch's micro-batches."""

    stats: dict[str, float] = field(default_factory=dict)  # Σ share · value, per statistic
    shares: dict[str, float] = field(default_factory=dict)  # Σ share of the micro-batches that reported it
    grad_norm: float | None = None  # the clipped gradient's norm before clipping; None: no step taken


class LMAlgorithm(OnPolicyAlgorithm):
    """The base of every agent (see the module docstring): SB3's surface over a causal-LM policy.

    Subclasses implement ``collect_rollouts`` and ``train`` (the two cores do), and may add
    `_extra_log_values`, `_extra_state` / `_load_extra_state` and `finalize`.

    :param policy: ``"CausalLMPolicy"``, ``"PauseLMPolicy"`` or a policy class.
    :param env: a token `VecEnv` (`lm_envs.TokenVecEnv`, possibly wrapped).
    :param learning_rate: a float, a schedule dict (`make_schedule`) or an SB3 schedule callable.
    :param n_epochs: passes over each iteration's data.
    :param batch_size: rows (or targets) per optimizer step.
    :param micro_batch_size: rows (or targets) per forward/backward (``None``: = batch_size).
    :param max_grad_norm: gradient-norm clip of every step.
    :param hparams: the concrete agent's constructor arguments, as a checkpoint saves them.
    :param gamma, gae_lambda, ent_coef, vf_coef: SB3's, for the agents that use them (PPO).
    :param log_samples: prompt/completion pairs written to tensorboard as text per iteration.
    :param tensorboard_log, policy_kwargs, verbose, seed, device: as in SB3.
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
        max_grad_norm: float,
        hparams: dict[str, Any],
        gamma: float = 1.0,
        gae_lambda: float = 1.0,
        ent_coef: float = 0.0,
        vf_coef: float = 0.0,
        log_samples: int = 2,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
    ) -> None:
        self._hparams = dict(hparams)
        self._reduce = distributed.reduce_sum if distributed.is_distributed() else None
        if not distributed.is_main_process():  # rank 0 alone logs
            tensorboard_log, verbose = None, 0
        policy_kwargs = dict(policy_kwargs or {})
        policy_kwargs.setdefault("value_head", self.uses_value_head)
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
        if batch_size < 1 or micro_batch_size < 1:
            raise ValueError(f"batch_size={batch_size} and micro_batch_size={micro_batch_size} must be positive")
        if batch_size % micro_batch_size:
            raise ValueError(f"micro_batch_size={micro_batch_size} must divide batch_size={batch_size}")
        self.n_epochs, self.batch_size, self.micro_batch_size = n_epochs, batch_size, micro_batch_size
        self.log_samples = log_samples
        self.buffer: Any = None
        self.iteration = 0
        self._total_iterations: int | None = None
        self._keep_last_obs = False
        self._timings: dict[str, float] = {}
        self._train_stats: dict[str, float] = {}
        self._last_values: dict[str, float] = {}

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

    # -- one optimizer step --------------------------------------------------------------------
    def accumulate_and_step(
        self,
        micro_batches: Iterable[Any],
        micro_loss: Callable[[Any], tuple[torch.Tensor, dict[str, Any], float]],
        before_step: Callable[[Accumulated], bool] | None = None,
    ) -> Accumulated:
        """One optimizer step over a minibatch: zero the gradients, then for each micro-batch
        ``loss, stats, share = micro_loss(micro)`` and ``loss.backward()`` (the loss is already
        multiplied by ``share``, its part of the minibatch's mean, so the summed gradients are the
        minibatch loss's); then ``before_step`` (``False``: drop the gradients, take no step, e.g.
        SB3's ``target_kl``), the cross-rank gradient sum, the norm clip and the step.

        :return: ``Σ share · value`` and ``Σ share`` per statistic, and the gradient norm
            (``None`` when no step was taken).
        """
        policy = self.policy
        policy.optimizer.zero_grad(set_to_none=True)
        acc = Accumulated()
        for micro in micro_batches:
            loss, stats, share = micro_loss(micro)
            loss.backward()
            for key, value in stats.items():  # a statistic a micro-batch lacks is not a 0
                acc.stats[key] = acc.stats.get(key, 0.0) + float(value) * float(share)
                acc.shares[key] = acc.shares.get(key, 0.0) + float(share)
        if before_step is not None and not before_step(acc):
            policy.optimizer.zero_grad(set_to_none=True)
            return acc
        distributed.all_reduce_gradients(policy.parameters())  # FSDP's shards are reduced already
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), self.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        policy.optimizer.step()
        self._n_updates += 1
        acc.grad_norm = float(grad_norm)
        return acc

    # -- logging -----------------------------------------------------------------------------
    def _family_log_values(self, buffer: Any) -> dict[str, float]:
        """The core's own values beside the base's (e.g. dynamic sampling's ``dapo/*``)."""
        return {}

    def _extra_log_values(self, buffer: Any) -> dict[str, float]:
        """The agent's own values (e.g. PPO's ``loss/value``)."""
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
        if "weight_sync" in self._timings:  # an inference engine took the policy's weights (agents.engine)
            values["time/weight_sync"] = self._timings["weight_sync"]
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
        values.update(self._family_log_values(buffer))
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

    def _family_state(self) -> dict[str, Any]:
        """The core's own state beside the base's (e.g. the KL controller), saved once (rank 0's)."""
        return {}

    def _load_family_state(self, state: dict[str, Any]) -> None:
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
            "num_timesteps": self.num_timesteps,
            "n_updates": self._n_updates,
            "iteration": self.iteration,
            "total_iterations": self._total_iterations,
            "total_timesteps": self._total_timesteps,
            "ranks": ranks,
            **self._family_state(),
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
        agent._load_family_state(state)
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
    ``**kwargs`` up the class hierarchy, with the accepted spellings of `agents.names`."""
    names: set[str] = set()
    for klass in agent_class.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    if getattr(agent_class.__init__, "accepts_aliases", False):  # an online agent: TRL's spellings too
        from agents.names import ALIASES

        names |= set(ALIASES)
    return {name for name in names if not name.startswith("_")} - {"self", "policy", "env"}
