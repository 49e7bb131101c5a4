"""Registering tasks as Gymnasium ids, and building single or batched envs from an id.

One registry: Gymnasium's. Each id's spec carries the task builder, so `gymnasium.make(id)`
gives a `TokenEnv` and `make_vec(id, num_envs)` a `TokenVecEnv` over the same task. Keyword
arguments that the env does not take (``split``, ``data_dir``, ``reward``...) go to the
task builder.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import gymnasium as gym

from lm_envs.tasks import Task
from lm_envs.token_env import TokenEnv
from lm_envs.vec_env import TokenVecEnv

TaskBuilder = Callable[..., Task]
_ENV_KEYS = {"max_new_tokens", "max_prompt_tokens", "vocab_size", "eos_token_ids", "stop_strings", "truncate_prompt",
             "count_tokens"}
_VEC_KEYS = _ENV_KEYS | {"completions_per_prompt", "autoreset", "seed"}


def _split_kwargs(kwargs: dict[str, Any], env_keys: set[str]) -> tuple[dict, dict]:
    env_kwargs = {k: v for k, v in kwargs.items() if k in env_keys}
    task_kwargs = {k: v for k, v in kwargs.items() if k not in env_keys}
    return env_kwargs, task_kwargs


def make_token_env(task_builder: TaskBuilder, tokenizer: Any, render_mode: str | None = None, **kwargs: Any) -> TokenEnv:
    """Gymnasium entry point: build the task, then a `TokenEnv` over it."""
    env_kwargs, task_kwargs = _split_kwargs(kwargs, _ENV_KEYS)
    return TokenEnv(task_builder(**task_kwargs), tokenizer, render_mode=render_mode, **env_kwargs)


def register_task(env_id: str, task_builder: TaskBuilder, **default_kwargs: Any) -> None:
    """Register ``env_id`` so that `gymnasium.make` and `make_vec` build envs over the task.

    :param task_builder: ``builder(**task_kwargs) -> Task``.
    :param default_kwargs: defaults for env or task keyword arguments (e.g. ``max_new_tokens``).
    """
    gym.register(env_id, entry_point=make_token_env, kwargs={"task_builder": task_builder, **default_kwargs})


def make_vec(env_id: str, num_envs: int, tokenizer: Any, **kwargs: Any) -> TokenVecEnv:
    """A natively batched `TokenVecEnv` for a registered id (same kwargs as `gymnasium.make`)."""
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as err:
        known = sorted(k for k in gym.registry if k.startswith("lm_envs/"))
        raise ValueError(f"unknown env id {env_id!r}; registered lm_envs ids: {known}") from err
    merged = {**spec.kwargs, **kwargs}
    task_builder = merged.pop("task_builder", None)
    if task_builder is None:
        raise ValueError(f"{env_id!r} is not a token-level task env (registered without register_task)")
    env_kwargs, task_kwargs = _split_kwargs(merged, _VEC_KEYS)
    unknown = set(task_kwargs) - set(inspect.signature(task_builder).parameters)
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(task_builder).parameters.values()):
        raise TypeError(f"{env_id}: unexpected keyword arguments {sorted(unknown)}")
    return TokenVecEnv(task_builder(**task_kwargs), tokenizer, num_envs=num_envs, **env_kwargs)
