"""`TokenEnv`: one prompt and one completion per episode, as a `gymnasium.Env`.

Observation: the prompt plus the tokens generated so far (see `lm_envs.episodes` for the
layout). Action: the next token, ``Discrete(vocab_size)``. EOS (or a stop string) terminates;
the token budget truncates. The task reward arrives on the step that ends the episode and
is 0 before it. May import `rewards` (through tasks), never `policies` or `agents`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from lm_envs.episodes import EpisodeBatch, EpisodeConfig
from lm_envs.sampler import PromptSampler
from lm_envs.tasks import Task


class TokenEnv(gym.Env):
    """A single-row token-level MDP.

    :param task: prompts, references and reward (`lm_envs.tasks.Task`).
    :param tokenizer: a HF tokenizer.
    :param config: the episode settings (`lm_envs.episodes.EpisodeConfig`: token budgets, prompt
        width, ``vocab_size``, stop rules, turns); keyword arguments override its fields, e.g.
        ``TokenEnv(task, tok, max_new_tokens=32)``. Pass ``vocab_size=model.config.vocab_size``
        when the model's vocabulary is larger than the tokenizer's.
    :param sampler: where the next prompt comes from; defaults to a shuffling `PromptSampler`.
        ``reset(seed=s)`` reseeds it.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        task: Task,
        tokenizer: Any,
        config: EpisodeConfig | None = None,
        sampler: PromptSampler | None = None,
        render_mode: str | None = None,
        **episode_kwargs: Any,
    ) -> None:
        super().__init__()
        self.batch = EpisodeBatch(task, tokenizer, 1, config, **episode_kwargs)
        self.sampler = sampler if sampler is not None else PromptSampler(len(task))
        self.observation_space = self.batch.observation_space
        self.action_space = gym.spaces.Discrete(self.batch.vocab_size)
        self.render_mode = render_mode

    @property
    def task(self) -> Task:
        return self.batch.task

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.sampler.seed(seed)
        # options={"index": i} starts from a chosen data row (evaluation, debugging).
        index = options["index"] if options and "index" in options else self.sampler.next_index()
        self.batch.load(np.array([0]), [index])
        return self._obs(), {"prompt": self.batch.encode_prompt(index)[1], "index": int(index)}

    def step(self, action):
        if self.batch.finished[0]:
            raise RuntimeError("step() called after the episode ended; call reset() first")
        rewards, terminated, truncated, infos = self.batch.step(np.array([action]), np.array([True]))
        return self._obs(), float(rewards[0]), bool(terminated[0]), bool(truncated[0]), infos[0]

    def _obs(self) -> dict[str, np.ndarray]:
        return {key: value[0] for key, value in self.batch.observation().items()}

    def render(self) -> str:
        return self.batch.encode_prompt(int(self.batch.row_index[0]))[1] + self.batch.completion(0)
