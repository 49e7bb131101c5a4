"""The on-policy core every online agent shares: collect, score the reference, shape, update.

One iteration of every online agent (PPO, GRPO, RLOO, REINFORCE), on `agents.base.LMAlgorithm`:

1. **collect** one lockstep batch of whole episodes (`agents.rollout.collect_episodes`);
2. **reference pass**: one no-grad teacher-forced pass of the reference (adapter off), only when
   the agent uses a KL term, giving the per-token KL;
3. **shape**: sequence reward (scale, missing-EOS penalty, clip), then per-token rewards
   (the sequence reward on the last token, −β·KL on every token when the KL is in the reward);
4. **prepare the critic** (`prepare_critic`, PPO's value-head calibration; a no-op elsewhere);
5. **estimate** advantages: the one place agents differ (`compute_advantages`);
6. **update**: epochs of shuffled minibatches, each a sum of micro-batch forward/backward passes
   of the agent's loss (`loss`, the other place agents differ), then one clipped optimizer step
   (`LMAlgorithm.accumulate_and_step`);
7. **log** with the tags TRL and SB3 users know, and **save/load** (`agents.base`).

Under ``torchrun`` each rank runs this loop on its own rows; `agents.distributed` sums gradients
and batch statistics across ranks, and rank 0 alone logs and writes (see that module).

Why one file of this length: it is one concern, the iteration above, read top to bottom as
CleanRL's ``ppo.py`` is; the maths it calls lives in `ppo_math`, the data in `buffer`, generation
in `rollout`, the shared surface in `base`. Imports `agents.*` maths, buffer, rollout and base
modules, torch and SB3's types.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from agents import distributed, names, ppo_math
from agents.base import Accumulated, LMAlgorithm, make_schedule
from agents.buffer import TokenBatch, TokenRolloutBuffer
from agents.engine.actor import EngineActor
from agents.env_contract import token_env
from agents.rollout import collect_episodes, concat_episodes
from policies.causal_lm import CausalLMPolicy


@dataclass
class LossContext:
    """What a micro-batch's loss needs to know about the minibatch it belongs to."""

    minibatch_tokens: torch.Tensor  # valid action tokens in the whole minibatch
    num_micro_batches: int
    max_completion_length: int  # the env's token budget T
    clip_range: float


class OnPolicyLMAlgorithm(LMAlgorithm):
    """The online agents' core; subclasses set `uses_value_head`, `compute_advantages`, `loss`
    and, optionally, `prepare_critic`, `_extra_log_values` / `_extra_state`.

    Parameters every agent takes (subclasses document theirs and map their names onto these):

    :param n_epochs: passes over each rollout batch (TRL's μ, ``num_iterations``).
    :param batch_size: rows per optimizer step.
    :param micro_batch_size: rows per forward/backward (gradients accumulate; ``None``: = batch_size).
    :param clip_range: policy-ratio clip ε (float, schedule dict or callable).
    :param clip_range_high: upper clip ε_high (``None``: = ε).
    :param kl_coef: β of the KL term (0 with no adaptive control: no reference pass runs).
    :param kl_in_reward: put −β·KL in the per-token rewards (else the agent's loss uses it).
    :param completions_per_prompt: completions per prompt the estimator groups (must equal the env's
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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every online agent's constructor accepts TRL's spellings of its settings (`agents.names`)."""
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):
            cls.__init__ = names.with_aliases(cls.__init__)

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
        clip_range: float | dict | Schedule = 0.2,
        kl_coef: float = 0.0,
        kl_in_reward: bool = True,
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
        completions_per_prompt: int = 1,
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
        self._uses_reference = kl_coef != 0 or adaptive_kl
        policy_kwargs = dict(policy_kwargs or {})
        if not self._uses_reference:
            policy_kwargs.setdefault("reference", False)  # no KL: no reference copy to keep
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_epochs=n_epochs,
            batch_size=batch_size,
            micro_batch_size=micro_batch_size,
            max_grad_norm=max_grad_norm,
            hparams=hparams,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            log_samples=log_samples,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
        )
        if batch_size > self.n_envs or self.n_envs % batch_size:
            raise ValueError(f"batch_size={batch_size} must divide the number of rows ({self.n_envs})")
        if kl_estimator not in ("k1", "k3"):
            raise ValueError("kl_estimator must be 'k1' or 'k3'")
        env_group = token_env(self.env).completions_per_prompt
        if completions_per_prompt > 1 and (self.n_envs % completions_per_prompt or env_group != completions_per_prompt):
            raise ValueError(
                f"{type(self).__name__} groups {completions_per_prompt} completions per prompt, but the env has "
                f"num_envs={self.n_envs} and completions_per_prompt={env_group}: build the env with "
                f"completions_per_prompt={completions_per_prompt} and num_envs a multiple of it "
                f"(run_ppo: env.completions_per_prompt={completions_per_prompt})"
            )
        if dynamic_sampling and completions_per_prompt < 2:
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
        self.clip_range, self.clip_range_high, self.target_kl = clip_range, clip_range_high, target_kl
        self.kl_coef, self.kl_in_reward, self.kl_estimator = kl_coef, kl_in_reward, kl_estimator
        self.adaptive_kl, self.kl_target, self.kl_horizon = adaptive_kl, kl_target, kl_horizon
        self.missing_eos_penalty, self.reward_scale, self.reward_clip = missing_eos_penalty, reward_scale, reward_clip
        self.completions_per_prompt = completions_per_prompt
        self.rollout_engine: Any = None  # `use_engine`: None generates with the policy itself (rollout.engine=hf)
        self._engine_actor: EngineActor | None = None
        self._engine_version: int | None = None  # the update count whose weights the engine serves
        self._sync_seconds = 0.0
        if _init_setup_model:
            self._setup_model()

    # -- set-up ------------------------------------------------------------------------------
    def _setup_model(self) -> None:
        super()._setup_model()
        self.clip_range = make_schedule(self.clip_range)
        self.kl_controller = (
            ppo_math.AdaptiveKLController(self.kl_coef, self.kl_target, self.kl_horizon)
            if self.adaptive_kl
            else ppo_math.FixedKLController(self.kl_coef)
        )

    def collect_rollouts(self, env, callback, rollout_buffer=None, n_rollout_steps: int = 1) -> bool:
        """Collect one batch of whole episodes (more with ``dynamic_sampling``), score the
        reference, shape rewards, estimate advantages."""
        self.policy.set_training_mode(False)
        callback.on_rollout_start()
        batches, extra = [], 0
        self._sync_seconds = 0.0
        while True:
            with self.policy.gathered():  # FSDP: full weights for generation, which takes each rank its own steps
                actor = self._rollout_actor()  # the policy, or an inference engine (use_engine)
                episodes, self._last_obs = collect_episodes(actor, env, self._last_obs, callback=callback)
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
            short = len(self._informative_groups(batches)) * self.completions_per_prompt < env.num_envs
            # Every rank samples as long as any rank is short, so their collectives stay in step.
            if not float(distributed.reduce_max(torch.tensor(float(short), device=self.device))):
                break
            extra += 1
        episodes = concat_episodes(batches)
        self._timings = {
            **({"weight_sync": self._sync_seconds} if self.rollout_engine is not None else {}),
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

    # -- the rollout engine -------------------------------------------------------------------
    def use_engine(self, engine: Any) -> None:
        """Generate rollouts with an inference engine (`agents.engine`) instead of the policy's
        own decoding loop; ``None`` goes back to the policy.

        The engine gets the policy's weights before the first rollout and after every update
        (``time/weight_sync``). The old log-probs, and PPO's values, are recomputed with the
        learner (the engine's log-probs are kept as the sampler's, ``rollout/logprob_diff``, and
        ``rollout_is_mode`` corrects for the difference). The engine is not saved with the
        agent: pass it again after `load`.
        """
        if engine is not None:
            from agents.engine.deploy import check_policy

            check_policy(self.policy)
            if distributed.is_distributed():
                raise ValueError(
                    "rollout.engine=vllm runs in one trainer process; under torchrun use rollout.engine=hf"
                )
        self.rollout_engine = engine
        self._engine_actor = None if engine is None else EngineActor(engine, self.policy, self.seed)
        self._engine_version = None

    def _rollout_actor(self):
        """What chooses the actions: the policy, or the engine once it serves the current weights."""
        if self.rollout_engine is None:
            return self.policy
        if self._engine_version != self._n_updates:
            start = time.perf_counter()
            self.rollout_engine.sync(self.policy)
            self._sync_seconds += time.perf_counter() - start
            self._engine_version = self._n_updates
        if self.seed is not None:  # request seeds follow the run's progress: a resumed run draws the same
            self._engine_actor.rng = np.random.default_rng([self.seed, distributed.rank(), self.num_timesteps])
        return self._engine_actor

    def _informative_groups(self, batches: list) -> list[int]:
        """Groups (indices over the concatenated batches) whose env rewards differ by more than the tolerance."""
        rewards = torch.cat([b.env_rewards for b in batches]).float().view(-1, self.completions_per_prompt)
        spread = rewards.max(1).values - rewards.min(1).values
        return (spread > self.dynamic_sampling_tolerance).nonzero().flatten().tolist()

    def _fill_batch(self, episodes, informative: list[int], rows: int, extra: int):
        """The first groups whose rewards differ, in sampling order, topped up with tied ones
        when ``max_extra_rollouts`` ran out; records the ``dapo/*`` statistics."""
        wanted, total = (
            rows // self.completions_per_prompt,
            episodes.env_rewards.shape[0] // self.completions_per_prompt,
        )
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
        return episodes.select(
            [g * self.completions_per_prompt + i for g in order for i in range(self.completions_per_prompt)]
        )

    def process_episodes(self, episodes) -> TokenRolloutBuffer:
        """A batch of episodes → a buffer ready for `train`: the learner's log-probs (when they
        are recomputed), reference pass, shaping, advantages, the rollout correction."""
        start = time.perf_counter()
        buffer = TokenRolloutBuffer.from_episodes(episodes, completions_per_prompt=self.completions_per_prompt)
        if self.rollout_engine is not None:  # the engine's log-probs are the sampler's; it has no value head
            self.recompute_pass(buffer, with_values=self.uses_value_head)
        elif self._recomputes_log_probs():
            self.recompute_pass(buffer)
        self.reference_pass(buffer)
        self._timings["reference"] = time.perf_counter() - start
        self.shape_rewards(buffer)
        self.prepare_critic(buffer)
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
    def recompute_pass(self, buffer: TokenRolloutBuffer, batch_size: int = 16, with_values: bool = False) -> None:
        """The learner's own log-probs of the rollout's actions (teacher-forced, no grad) become
        the old log-probs; the sampler's are kept as ``buffer.rollout_log_probs``.

        :param with_values: also the value head's values (an engine's rollout has none)."""
        flat, flat_values = [], []
        for rows in torch.arange(buffer.num_rows, device=self.device).split(batch_size):
            ids, attn, pol = buffer.trimmed_rows(rows)
            out = self.policy.evaluate_actions(ids, attn, pol, with_entropy=False, with_values=with_values)
            flat.append(out.log_prob)
            flat_values.append(out.values)
        buffer.rollout_log_probs = buffer.log_probs
        buffer.log_probs = torch.zeros_like(buffer.log_probs).masked_scatter(buffer.mask, torch.cat(flat))
        if with_values:
            buffer.values = torch.zeros_like(buffer.values).masked_scatter(buffer.mask, torch.cat(flat_values))

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

    def prepare_critic(self, buffer: TokenRolloutBuffer) -> None:
        """Adjust the critic to this batch before advantages are estimated (PPO's value-head
        calibration); the online agents without a critic do nothing."""

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
                micros = list(minibatch.split(self.micro_batch_size))
                # Normalisers count every rank's tokens and micro-batches; gradients are then summed.
                context = LossContext(
                    distributed.reduce_sum(minibatch.mask.sum()).clamp(min=1),
                    len(micros) * distributed.world_size(),
                    buffer.mask.shape[1],
                    clip_range,
                )
                step = _MinibatchStep(self, context, measure_first=first_minibatch is None)
                # Statistics are token-share-weighted sums: their means over the minibatch (every rank's).
                acc = self.accumulate_and_step(micros, step.micro_loss, step.before_step)
                if step.first is not None:
                    first_minibatch = step.first
                if acc.grad_norm is None:  # target_kl: no step, and no more epochs
                    stop = True
                    if self.verbose >= 2:
                        print(f"early stop at epoch {epoch}: approx_kl {acc.stats['approx_kl']:.4f}")
                    break
                for key, value in acc.stats.items():
                    stats.setdefault(key, []).append(value)
                stats.setdefault("grad_norm", []).append(acc.grad_norm)
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

    # -- logging, state ----------------------------------------------------------------------
    def _family_log_values(self, buffer: TokenRolloutBuffer) -> dict[str, float]:
        return dict(self._sampling_stats)

    def _family_state(self) -> dict[str, Any]:
        return {"kl_controller": self.kl_controller.state_dict()}

    def _load_family_state(self, state: dict[str, Any]) -> None:
        self.kl_controller.load_state_dict(state["kl_controller"])


class _MinibatchStep:
    """One minibatch of `OnPolicyLMAlgorithm.train`, as `LMAlgorithm.accumulate_and_step` takes it:
    each micro-batch's loss (weighted by its share of the minibatch's tokens, with the entropy
    bonus), then, before the optimizer step, the statistics summed over ranks, the first
    minibatch's measurements, and SB3's ``target_kl`` check."""

    def __init__(self, agent: OnPolicyLMAlgorithm, context: LossContext, measure_first: bool) -> None:
        self.agent, self.context, self.measure_first = agent, context, measure_first
        self.ratio_dev = 0.0
        self.diff = torch.zeros(3, dtype=torch.float64, device=agent.device)  # Σ|Δ log π|, tokens, max
        self.first: dict[str, float] | None = None

    def micro_loss(self, micro: TokenBatch) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor]:
        agent, context = self.agent, self.context
        out = agent.policy.evaluate_actions(
            micro.input_ids,
            micro.attention_mask,
            micro.policy_mask,
            with_entropy=True,
            with_values=agent.uses_value_head,
            entropy_grad=agent.ent_coef != 0,
        )
        log_probs, values, entropy = (
            micro.unflatten(out.log_prob),
            micro.unflatten(out.values),
            micro.unflatten(out.entropy),
        )
        weight = micro.mask.sum() / context.minibatch_tokens  # this micro-batch's share of tokens
        loss, stats = agent.loss(micro, log_probs, values, context)
        if self.measure_first:  # before any step: the update's log-probs against the old ones
            gap = (log_probs.detach() - micro.old_log_probs).abs() * micro.mask
            self.diff += torch.stack([gap.sum().double(), micro.mask.sum().double(), gap.max().double()])
        entropy_mean = ppo_math.masked_mean(entropy, micro.mask)
        if agent.ent_coef:
            loss = loss - agent.ent_coef * entropy_mean * weight
        stats["entropy"] = entropy_mean
        self.ratio_dev = max(self.ratio_dev, float(stats.pop("ratio_max_dev", 0.0)))
        return loss, {key: value.detach() for key, value in stats.items()}, weight

    def before_step(self, acc: Accumulated) -> bool:
        agent = self.agent
        if distributed.is_distributed():  # the same numbers on every rank, e.g. for target_kl
            keys = sorted(acc.stats)
            summed = distributed.reduce_sum(
                torch.tensor([acc.stats[k] for k in keys], dtype=torch.float64, device=agent.device)
            )
            acc.stats = dict(zip(keys, summed.tolist()))
            self.ratio_dev = float(distributed.reduce_max(torch.tensor(self.ratio_dev, device=agent.device)))
        if self.measure_first:
            self.first = {
                "ratio_max_dev": self.ratio_dev,
                "approx_kl": acc.stats.get("approx_kl", 0.0),
                "logprob_diff": float(self.diff[0] / self.diff[1].clamp(min=1)),
                "logprob_diff_max": float(self.diff[2]),
            }
        # As SB3: checked before the optimizer step, so the overshooting step is never taken.
        return agent.target_kl is None or acc.stats.get("approx_kl", 0.0) <= 1.5 * agent.target_kl
