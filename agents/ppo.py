"""PPO for language models, as RLHF practice has settled it, behind SB3's public surface.

One iteration: collect one lockstep batch of whole episodes (`agents.rollout`); score the
reference model (one no-grad teacher-forced pass) for the per-token KL; build per-token
rewards (task score on the final token minus β·KL on every token); GAE over tokens; whiten
advantages over all generated tokens of the batch; then ``n_epochs`` of shuffled minibatches,
each a teacher-forced forward/backward of the policy with clipped policy and value losses.

Built on SB3's `OnPolicyAlgorithm` (callbacks, logger, progress bar, learning-rate schedules,
``learn``), with its own token buffer and its own ``save``/``load``: a checkpoint holds only
what training changed (the LoRA adapter or full weights, plus the value head), never the frozen
base. Agents meet envs only through the `VecEnv` API and policies only through the policy API.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import FloatSchedule

from agents import ppo_math
from agents.buffer import TokenRolloutBuffer
from agents.rollout import collect_episodes
from policies.causal_lm import CausalLMPolicy
from policies.pause import PauseLMPolicy

CHECKPOINT_FORMAT = 1


class PPO(OnPolicyAlgorithm):
    """Proximal Policy Optimization over the token-level MDP.

    :param policy: ``"CausalLMPolicy"`` or the class.
    :param env: a lockstep `lm_envs.TokenVecEnv` (possibly wrapped); one rollout is one batch
        of ``env.num_envs`` whole episodes.
    :param learning_rate: float or SB3 schedule (progress remaining → lr).
    :param n_epochs: passes over each rollout batch.
    :param batch_size: episodes (rows) per optimizer step.
    :param micro_batch_size: rows per forward/backward; gradients accumulate over
        ``batch_size / micro_batch_size`` micro-batches (``None``: no accumulation).
    :param gamma: discount over tokens (1.0: none, the RLHF default).
    :param gae_lambda: GAE λ over tokens.
    :param clip_range: policy-ratio clip ε (float or schedule).
    :param clip_range_vf: value clip around the rollout values (``None``: unclipped).
    :param vf_coef: value-loss coefficient.
    :param ent_coef: entropy bonus coefficient (default 0).
    :param max_grad_norm: gradient-norm clipping.
    :param target_kl: stop the epochs early once approx-KL exceeds ``1.5 · target_kl`` (``None``: never).
    :param kl_coef: initial β of the per-token KL penalty (0 disables the reference pass).
    :param adaptive_kl: adapt β towards ``kl_target`` nats per sequence over ``kl_horizon`` episodes.
    :param kl_estimator: ``"k1"`` or ``"k3"`` (see `ppo_math.kl_estimate`).
    :param missing_eos_penalty: subtracted from the score of episodes cut by the token budget.
    :param reward_scale: multiply scores by this before anything else.
    :param reward_clip: clip scaled scores to ``[-reward_clip, reward_clip]`` (``None``: off).
    :param whiten_advantages: whiten advantages over the batch's generated tokens.
    :param calibrate_value_head: before the first update, move the value head's bias to the
        first batch's mean return (the head starts at 0). Adam moves a bias by about one
        learning rate per step, so an uncalibrated head stays far below scores near 1 for
        hundreds of updates, and with ``gae_lambda < 1`` that offset turns into advantages that
        depend on the token's position rather than on the completion's score.
    :param log_samples: prompt/completion pairs written to tensorboard as text per iteration.
    :param tensorboard_log, policy_kwargs, verbose, seed, device: as in SB3. ``verbose=1``
        prints one summary line per iteration; ``verbose=2`` adds SB3's table.
    """

    policy_aliases = {"CausalLMPolicy": CausalLMPolicy, "PauseLMPolicy": PauseLMPolicy}

    def __init__(
        self,
        policy: str | type[CausalLMPolicy],
        env: GymEnv,
        learning_rate: float | Schedule = 1e-5,
        n_epochs: int = 1,
        batch_size: int = 16,
        micro_batch_size: int | None = None,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.2,
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
        log_samples: int = 2,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        policy_kwargs = dict(policy_kwargs or {})
        if kl_coef == 0 and not adaptive_kl:
            policy_kwargs.setdefault("reference", False)  # no KL: no reference copy to keep
        super().__init__(
            policy, env, learning_rate=learning_rate, n_steps=1, gamma=gamma, gae_lambda=gae_lambda,
            ent_coef=ent_coef, vf_coef=vf_coef, max_grad_norm=max_grad_norm, use_sde=False, sde_sample_freq=-1,
            tensorboard_log=tensorboard_log, monitor_wrapper=False, policy_kwargs=policy_kwargs,
            verbose=verbose, seed=seed, device=device, _init_setup_model=False,
        )
        if batch_size > self.n_envs or self.n_envs % batch_size:
            raise ValueError(f"batch_size={batch_size} must divide the number of rows ({self.n_envs})")
        micro_batch_size = micro_batch_size or batch_size
        if batch_size % micro_batch_size:
            raise ValueError(f"micro_batch_size={micro_batch_size} must divide batch_size={batch_size}")
        if kl_estimator not in ("k1", "k3"):
            raise ValueError("kl_estimator must be 'k1' or 'k3'")
        self.n_epochs, self.batch_size, self.micro_batch_size = n_epochs, batch_size, micro_batch_size
        self.clip_range, self.clip_range_vf, self.target_kl = clip_range, clip_range_vf, target_kl
        self.kl_coef, self.adaptive_kl, self.kl_target, self.kl_horizon = kl_coef, adaptive_kl, kl_target, kl_horizon
        self.kl_estimator, self.missing_eos_penalty = kl_estimator, missing_eos_penalty
        self.reward_scale, self.reward_clip, self.whiten_advantages = reward_scale, reward_clip, whiten_advantages
        self.calibrate_value_head = calibrate_value_head
        self.log_samples = log_samples
        self.buffer: TokenRolloutBuffer | None = None
        self._timings: dict[str, float] = {}
        if _init_setup_model:
            self._setup_model()

    # -- set-up ------------------------------------------------------------------------------
    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(self.observation_space, self.action_space, self.lr_schedule,
                                        device=str(self.device), **self.policy_kwargs)
        self.clip_range = FloatSchedule(self.clip_range)
        self.kl_controller = (ppo_math.AdaptiveKLController(self.kl_coef, self.kl_target, self.kl_horizon)
                              if self.adaptive_kl else ppo_math.FixedKLController(self.kl_coef))
        # Minibatch order comes from the agent's own generator, so resume can restore it.
        self.shuffle_generator = torch.Generator().manual_seed(0 if self.seed is None else self.seed)

    def _setup_learn(self, total_timesteps, callback=None, reset_num_timesteps=True, tb_log_name="run",
                     progress_bar=False):
        # SB3 prints its table at verbose >= 1; we print one summary line there and keep the
        # table for verbose >= 2.
        verbose, self.verbose = self.verbose, max(self.verbose - 1, 0)
        try:
            return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        finally:
            self.verbose = verbose

    # -- the loop ----------------------------------------------------------------------------
    def learn(self, total_timesteps: int, callback=None, log_interval: int = 1, tb_log_name: str = "PPO",
              reset_num_timesteps: bool = True, progress_bar: bool = False,
              max_iterations: int | None = None) -> "PPO":
        """Train for ``total_timesteps`` env steps × rows (SB3's unit; a batch of B rows that
        runs T steps counts B·T). Rollouts, updates and logs alternate, one iteration each.

        :param max_iterations: also stop once ``self.iteration`` (which survives save/load)
            reaches this many iterations.
        """
        total_timesteps, callback = self._setup_learn(total_timesteps, callback, reset_num_timesteps,
                                                      tb_log_name, progress_bar)
        callback.on_training_start(locals(), globals())
        self.iteration = getattr(self, "iteration", 0)
        while self.num_timesteps < total_timesteps and (max_iterations is None or self.iteration < max_iterations):
            if not self.collect_rollouts(self.env, callback, None, n_rollout_steps=1):
                break
            self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
            self.train()
            self.iteration += 1
            if log_interval is not None and self.iteration % log_interval == 0:
                self._log_iteration()
        callback.on_training_end()
        return self

    def collect_rollouts(self, env, callback, rollout_buffer=None, n_rollout_steps: int = 1) -> bool:
        """Collect one batch of whole episodes and prepare it for `train`."""
        self.policy.set_training_mode(False)
        callback.on_rollout_start()
        episodes, self._last_obs = collect_episodes(self.policy, env, self._last_obs, callback=callback)
        self.num_timesteps += episodes.num_steps * env.num_envs
        if not episodes.complete:
            return False  # a callback stopped us mid-batch: the partial batch is not trained on
        for info in episodes.infos:
            if "episode" in info:
                self.ep_info_buffer.extend([info["episode"]])
        self._timings = {"rollout": episodes.seconds,
                         "reward": float(sum(info.get("reward_time", 0.0) for info in episodes.infos))}
        start = time.perf_counter()
        self.buffer = TokenRolloutBuffer.from_episodes(
            episodes, self.policy, kl_coef=self.kl_controller.value, kl_estimator=self.kl_estimator,
            gamma=self.gamma, gae_lambda=self.gae_lambda, missing_eos_penalty=self.missing_eos_penalty,
            reward_scale=self.reward_scale, reward_clip=self.reward_clip,
            whiten_advantages=self.whiten_advantages,
            calibrate_values=self.calibrate_value_head and self._n_updates == 0)
        if self.buffer.value_shift:
            self.policy.shift_values(self.buffer.value_shift)
        self._timings["reference"] = time.perf_counter() - start
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def train(self) -> None:
        """``n_epochs`` of shuffled minibatches of clipped PPO on the last rollout batch."""
        assert self.buffer is not None, "collect_rollouts() first"
        start = time.perf_counter()
        policy, buffer = self.policy, self.buffer
        policy.set_training_mode(True)
        self._update_learning_rate(policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "entropy", "approx_kl",
                                                         "clip_fraction", "grad_norm")}
        first_minibatch: dict[str, float] | None = None
        stop = False
        for epoch in range(self.n_epochs):
            for minibatch in buffer.minibatches(self.batch_size, self.shuffle_generator):
                policy.optimizer.zero_grad(set_to_none=True)
                tokens_in_minibatch = minibatch.mask.sum().clamp(min=1)
                minibatch_stats: dict[str, float] = {}
                for micro in minibatch.split(self.micro_batch_size):
                    out = policy.evaluate_actions(micro.input_ids, micro.attention_mask, micro.policy_mask,
                                                  with_entropy=True, with_values=True,
                                                  entropy_grad=self.ent_coef != 0)
                    log_probs, values, entropy = (micro.unflatten(out.log_prob), micro.unflatten(out.values),
                                                  micro.unflatten(out.entropy))
                    # Token-level means over the whole minibatch: weight each micro-batch by its tokens.
                    weight = micro.mask.sum() / tokens_in_minibatch
                    pg_loss, pg_stats = ppo_math.clipped_policy_loss(log_probs, micro.old_log_probs,
                                                                     micro.advantages, micro.mask, clip_range)
                    vf_loss = ppo_math.clipped_value_loss(values, micro.old_values, micro.returns, micro.mask,
                                                          self.clip_range_vf)
                    ent = ppo_math.masked_mean(entropy, micro.mask)
                    loss = pg_loss + self.vf_coef * vf_loss - self.ent_coef * ent
                    (loss * weight).backward()
                    for key, value in (("policy_loss", pg_loss), ("value_loss", vf_loss), ("entropy", ent),
                                       ("approx_kl", pg_stats["approx_kl"]),
                                       ("clip_fraction", pg_stats["clip_fraction"])):
                        minibatch_stats[key] = minibatch_stats.get(key, 0.0) + value.item() * weight.item()
                    if first_minibatch is None:
                        first_minibatch = {"ratio_max_dev": float(pg_stats["ratio_max_dev"]),
                                           "approx_kl": float(pg_stats["approx_kl"])}
                grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), self.max_grad_norm)
                policy.optimizer.step()
                self._n_updates += 1
                for key, value in minibatch_stats.items():
                    stats[key].append(value)
                stats["grad_norm"].append(float(grad_norm))
                if self.target_kl is not None and minibatch_stats["approx_kl"] > 1.5 * self.target_kl:
                    stop = True
                    if self.verbose >= 2:
                        print(f"early stop at epoch {epoch}: approx_kl {minibatch_stats['approx_kl']:.4f}")
                    break
            if stop:
                break
        # The KL controller moves after the update, on the batch's mean per-sequence KL.
        self.kl_controller.update(float(buffer.sequence_kl.mean()), buffer.num_rows)
        self._timings["update"] = time.perf_counter() - start
        self._train_stats = {k: float(np.mean(v)) if v else float("nan") for k, v in stats.items()}
        self._train_stats.update({f"first_minibatch_{k}": v for k, v in (first_minibatch or {}).items()})
        self._train_stats["clip_range"] = clip_range
        self._train_stats["early_stopped"] = float(stop)

    # -- logging -----------------------------------------------------------------------------
    def _log_iteration(self) -> None:
        buffer, stats, log = self.buffer, self._train_stats, self.logger
        assert buffer is not None
        kl = float(buffer.sequence_kl.mean())
        scores = float(buffer.scores.mean())
        values = {
            "objective/kl": kl,
            "objective/kl_coef": float(buffer.kl_coef),
            "objective/entropy": float(buffer.sequence_neg_log_prob.mean()),
            "objective/scores": scores,
            "objective/rlhf_reward": scores - float(buffer.kl_coef) * kl,
            "policy/approxkl": stats["approx_kl"],
            "policy/clipfrac": stats["clip_fraction"],
            "policy/entropy": stats["entropy"],
            "policy/first_minibatch_ratio_max_dev": stats.get("first_minibatch_ratio_max_dev", float("nan")),
            "policy/first_minibatch_approxkl": stats.get("first_minibatch_approx_kl", float("nan")),
            "loss/policy": stats["policy_loss"],
            "loss/value": stats["value_loss"],
            "val/var_explained": ppo_math.explained_variance(buffer.values, buffer.returns, buffer.mask),
            "tokens/response_len_mean": float(buffer.lengths.float().mean()),
            "tokens/eos_fraction": float(buffer.terminated.float().mean()),
            "train/learning_rate": self.policy.optimizer.param_groups[0]["lr"],
            "train/n_updates": self._n_updates,
            "train/grad_norm": stats["grad_norm"],
            "train/clip_range": stats["clip_range"],
            "train/early_stopped": stats["early_stopped"],
            "time/rollout": self._timings.get("rollout", 0.0),
            "time/reward": self._timings.get("reward", 0.0),
            "time/reference": self._timings.get("reference", 0.0),
            "time/update": self._timings.get("update", 0.0),
        }
        for name, value in buffer.reward_components().items():
            values[f"rewards/{name}/mean"] = value
        for key, value in values.items():
            log.record(key, value)
        if self.ep_info_buffer:
            log.record("rollout/ep_rew_mean", float(np.mean([ep["r"] for ep in self.ep_info_buffer])))
            log.record("rollout/ep_len_mean", float(np.mean([ep["l"] for ep in self.ep_info_buffer])))
        samples = [info for info in buffer.infos if "completion" in info][: self.log_samples]
        if samples:
            text = "\n\n".join(f"**prompt:** {s['prompt']}\n\n**completion:** {s['completion']}\n\n"
                               f"**score:** {s['score']:.3f}" for s in samples)
            log.record("samples/text", text, exclude=("stdout", "log", "json", "csv"))
        log.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        log.dump(step=self.num_timesteps)
        self.last_iteration_stats = values
        if self.verbose >= 1:
            print(f"iter {self.iteration:4d} | steps {self.num_timesteps:7d} | score {scores:7.4f} | "
                  f"kl {kl:7.4f} | beta {buffer.kl_coef:.4f} | len {values['tokens/response_len_mean']:5.1f} | "
                  f"rollout {values['time/rollout']:5.1f}s update {values['time/update']:5.1f}s", file=sys.stderr,
                  flush=True)

    # -- saving, loading, resuming -------------------------------------------------------------
    _SAVED_HPARAMS = ("learning_rate", "n_epochs", "batch_size", "micro_batch_size", "gamma", "gae_lambda",
                      "clip_range_vf", "vf_coef", "ent_coef", "max_grad_norm", "target_kl", "kl_coef",
                      "adaptive_kl", "kl_target", "kl_horizon", "kl_estimator", "missing_eos_penalty",
                      "reward_scale", "reward_clip", "whiten_advantages", "calibrate_value_head", "log_samples",
                      "seed")

    def save(self, path: str | os.PathLike, exclude=None, include=None) -> None:
        """Write a checkpoint directory atomically (write to a temp dir, then rename).

        Holds: the trainable weights (LoRA adapter or full model, plus value head) via
        ``save_pretrained``, the model spec it starts from, optimizer and KL-controller state,
        counters, every RNG state, the env's sampler/batch state and a format version.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            self.policy.save_trainable(staging / "policy")
            hparams = {k: getattr(self, k) for k in self._SAVED_HPARAMS}
            if callable(hparams["learning_rate"]):
                hparams["learning_rate"] = float(self.policy.optimizer.param_groups[0]["lr"])
            policy_kwargs = {k: v for k, v in self.policy_kwargs.items() if k != "model" or isinstance(v, str)}
            meta = {"format": CHECKPOINT_FORMAT, "model": self.policy.model_spec, "uses_lora": self.policy.uses_lora,
                    "policy_class": type(self.policy).__name__,
                    "num_timesteps": self.num_timesteps}
            (staging / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            env_state = self.env.env_method("get_state", indices=[0])[0] if self.env is not None else None
            torch.save({
                "format": CHECKPOINT_FORMAT,
                "hparams": hparams,
                "clip_range": float(self.clip_range(1.0)),
                "policy_kwargs": policy_kwargs,
                "optimizer": self.policy.optimizer.state_dict(),
                "kl_controller": self.kl_controller.state_dict(),
                "num_timesteps": self.num_timesteps,
                "n_updates": self._n_updates,
                "iteration": getattr(self, "iteration", 0),
                "total_timesteps": self._total_timesteps,
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                        "torch": torch.get_rng_state(), "shuffle": self.shuffle_generator.get_state()},
                "env_state": env_state,
                "last_obs": self._last_obs,
            }, staging / "agent.pt")
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.rename(path, old)
                os.rename(staging, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(staging, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @classmethod
    def load(cls, path: str | os.PathLike, env: GymEnv | None = None, device: str = "auto",
             custom_objects=None, print_system_info: bool = False, force_reset: bool = False,
             model: Any = None, **kwargs) -> "PPO":
        """Rebuild an agent from `save`: the starting model, then the trained weights and state.

        :param model: the starting model object, when it was given as an object rather than a spec.
        :param kwargs: override saved hyperparameters.
        """
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        if meta["format"] != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {meta['format']} is not supported (expected {CHECKPOINT_FORMAT})")
        state = torch.load(path / "agent.pt", map_location="cpu", weights_only=False)
        if env is None:
            raise ValueError("PPO.load needs env=...: the token env is not pickled into checkpoints")
        policy_kwargs = dict(state["policy_kwargs"])
        policy_kwargs["model"] = model if model is not None else meta["model"]
        hparams = {**state["hparams"], **kwargs}
        agent = cls(meta.get("policy_class", "CausalLMPolicy"), env, clip_range=state["clip_range"], policy_kwargs=policy_kwargs,
                    device=device, **hparams)
        agent.policy.load_trainable(path / "policy")
        agent.policy.optimizer.load_state_dict(state["optimizer"])
        agent.kl_controller.load_state_dict(state["kl_controller"])
        agent.num_timesteps, agent._n_updates = state["num_timesteps"], state["n_updates"]
        agent.iteration, agent._total_timesteps = state["iteration"], state["total_timesteps"]
        if state["env_state"] is not None and not force_reset:
            agent.env.env_method("set_state", state["env_state"], indices=[0])
            agent._last_obs = state["last_obs"]
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        agent.shuffle_generator.set_state(rng["shuffle"])
        return agent
