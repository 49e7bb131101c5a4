"""`TokenVecEnv`: a natively batched SB3 `VecEnv` over the token-level MDP.

All rows live in one `EpisodeBatch`, so a step is a handful of numpy operations for the whole
batch, not a Python loop over envs. Two modes:

* ``lockstep`` (default, what the agents use): one iteration is one batch of whole episodes.
  Every row resets together. A row that finishes reports ``done`` once (with
  ``terminal_observation``); afterwards it *waits*: its obs is frozen, its actions are ignored,
  it reports reward 0, ``done=False`` and ``info["waiting"]=True``. When the last row finishes,
  the whole batch resets and the returned obs are the next batch's prompts. No episode ever
  spans two batches, so none crosses a policy update.
* ``autoreset``: each row resets as soon as it ends, exactly like
  ``DummyVecEnv([TokenEnv, ...])`` (same seeds and actions give the same transitions).

Prompts come from ``num_envs / completions_per_prompt`` seedable samplers ("slots"); slot ``g``
feeds rows ``g*k ... g*k+k-1``, so with ``k > 1`` consecutive rows share a prompt (group
baselines need this). ``seed(s)`` seeds slot ``g`` with ``s + g``, as `DummyVecEnv` seeds env ``i``
with ``s + i``. May import `rewards` (through tasks), never `policies` or `agents`.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from lm_envs.episodes import EpisodeBatch, EpisodeConfig
from lm_envs.sampler import PromptSampler
from lm_envs.tasks import Task


class TokenVecEnv(VecEnv):
    """Batched token-level MDP.

    :param task: prompts, references and the reward.
    :param tokenizer: a HF tokenizer.
    :param num_envs: number of rows (the rollout batch size).
    :param completions_per_prompt: ``k`` consecutive rows get the same prompt (lockstep only).
    :param autoreset: per-row SB3 auto-reset instead of whole-batch lockstep.
    :param seed: initial seed of the prompt samplers (``None``: fresh entropy).
    :param config: the episode settings (`lm_envs.episodes.EpisodeConfig`); keyword arguments
        override its fields, e.g. ``TokenVecEnv(task, tok, 8, max_new_tokens=32)``.
    """

    render_mode = None  # nothing to render; SB3 warns if the attribute is missing

    def __init__(
        self,
        task: Task,
        tokenizer: Any,
        num_envs: int = 16,
        config: EpisodeConfig | None = None,
        completions_per_prompt: int = 1,
        autoreset: bool = False,
        seed: int | None = None,
        **episode_kwargs: Any,
    ) -> None:
        if num_envs < 1:
            raise ValueError("num_envs must be at least 1")
        if completions_per_prompt < 1 or num_envs % completions_per_prompt:
            raise ValueError(
                f"num_envs={num_envs} must be a multiple of completions_per_prompt={completions_per_prompt}"
            )
        if autoreset and completions_per_prompt != 1:
            raise ValueError("completions_per_prompt > 1 needs lockstep mode (autoreset=False)")
        self.batch = EpisodeBatch(task, tokenizer, num_envs, config, **episode_kwargs)
        self.batch.sync_turns = self.batch.config.sync_turns and not autoreset  # auto-reset rows never wait
        self.batch.overlap_scoring = self.batch.overlap_scoring and not autoreset
        super().__init__(num_envs, self.batch.observation_space, gym.spaces.Discrete(self.batch.vocab_size))
        self.completions_per_prompt = completions_per_prompt
        self.autoreset = autoreset
        num_slots = num_envs // completions_per_prompt
        self.samplers = [PromptSampler(len(task), None if seed is None else seed + g) for g in range(num_slots)]
        self._ended = np.zeros(num_envs, dtype=bool)  # lockstep: rows that finished this batch
        self._actions = np.zeros(num_envs, dtype=np.int64)

    @property
    def task(self) -> Task:
        return self.batch.task

    @property
    def tokenizer(self) -> Any:
        """The tokenizer prompts are encoded with (part of the agents' env contract)."""
        return self.batch.tokenizer

    # -- VecEnv API ------------------------------------------------------------------------
    def reset(self):
        for g, sampler in enumerate(self.samplers):
            if self._seeds[g] is not None:
                sampler.seed(self._seeds[g])
        self._reset_seeds()
        self._reset_options()
        self._load(np.arange(self.num_envs))
        return self.batch.observation()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)

    def step_wait(self):
        active = ~self._ended if not self.autoreset else np.ones(self.num_envs, dtype=bool)
        rewards, terminated, truncated, infos = self.batch.step(self._actions, active)
        ended = terminated | truncated
        obs = self.batch.observation()
        for row in range(self.num_envs):
            infos[row]["TimeLimit.truncated"] = bool(truncated[row] and not terminated[row])
            if not active[row]:
                infos[row]["waiting"] = True
        ended_rows = np.flatnonzero(ended)
        for row in ended_rows:
            infos[row]["terminal_observation"] = {key: value[row] for key, value in obs.items()}
        if self.autoreset:
            if ended_rows.size:
                self._load(ended_rows)
                obs = self.batch.observation()
        else:
            self._ended |= ended
            if self._ended.all():
                self._load(np.arange(self.num_envs))
                obs = self.batch.observation()
        return obs, rewards, ended, infos

    def _load(self, rows: np.ndarray) -> None:
        k = self.completions_per_prompt
        # One draw per slot: row r belongs to slot r // k; slots draw in row order.
        slot_index = {}
        indices = []
        for row in rows:
            slot = int(row) // k
            if slot not in slot_index:
                slot_index[slot] = self.samplers[slot].next_index()
            indices.append(slot_index[slot])
        self.batch.load(rows, indices)
        self._ended[rows] = False
        for row, index in zip(rows, indices):
            self.reset_infos[row] = {"prompt": self.batch.encode_prompt(index)[1], "index": int(index)}

    @property
    def active_rows(self) -> np.ndarray:
        """Boolean mask of rows still generating in the current batch."""
        return ~self.batch.finished

    @property
    def max_turns(self) -> int:
        return self.batch.config.max_turns

    @property
    def waiting_rows(self) -> np.ndarray:
        """Boolean mask of rows that take no action this step, so the rollout must not record
        one for them: rows that ended a turn and wait for the task's reply (``sync_turns``), and
        rows that ended and wait for their score (``overlap_scoring``, see `scoring_rows`)."""
        return self.batch.waiting | self.batch.scoring

    @property
    def scoring_rows(self) -> np.ndarray:
        """Boolean mask of rows that have ended and are being scored in the background
        (``overlap_scoring``): their terminal step comes when the score is in, and they will
        never act again, so a policy may drop them from its forward batch."""
        return self.batch.scoring.copy()

    def close(self) -> None:
        self.batch.close()

    def sync_statistics(self, all_gather) -> None:
        """Running reward statistics equal on every rank: the env itself keeps none (reward
        wrappers do, and call this in turn)."""

    # -- state, for checkpoints: samplers plus the batch in flight ---------------------------
    def get_state(self) -> dict[str, Any]:
        return {"samplers": self.get_sampler_state(), "batch": self.batch.get_state(), "ended": self._ended.copy()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.set_sampler_state(state["samplers"])
        self.batch.set_state(state["batch"])
        self._ended[...] = state["ended"]

    def get_sampler_state(self) -> list[dict[str, Any]]:
        return [deepcopy(sampler.state_dict()) for sampler in self.samplers]

    def set_sampler_state(self, states: list[dict[str, Any]]) -> None:
        if len(states) != len(self.samplers):
            raise ValueError(f"got {len(states)} sampler states for {len(self.samplers)} samplers")
        for sampler, state in zip(self.samplers, states):
            sampler.load_state_dict(state)

    # -- attribute plumbing (SB3 VecEnv contract; this env has no sub-envs) -------------------
    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        return [getattr(self, method_name)(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]
