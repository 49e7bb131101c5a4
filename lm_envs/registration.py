"""Registering tasks as Gymnasium ids, and building single or batched envs from an id.

One registry: Gymnasium's. Each id's spec carries the task builder, so `gymnasium.make(id)`
gives a `TokenEnv` and `make_vec(id, num_envs)` a `TokenVecEnv` over the same task. Keyword
arguments that the env does not take (``split``, ``data_dir``, ``reward``...) go to the
task builder.

Each id may also carry *run defaults* (`run_defaults`): the env kwargs, held-out eval kwargs
and reward wrappers a training run on it starts from (its token budget, its splits, the
wrappers to use or none), so ``run_ppo.py env.id=X`` alone gives X's. ``register_task(...,
run_defaults=...)`` sets them (the built-in ids' come from `lm_envs.suite.BUILTIN_IDS`, which
imports this module; this module imports nothing of it).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from lm_envs.episodes import EpisodeConfig
from lm_envs.tasks import Task
from lm_envs.token_env import TokenEnv
from lm_envs.vec_env import TokenVecEnv

TaskBuilder = Callable[..., Task]
_ENV_KEYS = EpisodeConfig.names() | {"config"}
_VEC_KEYS = _ENV_KEYS | {"completions_per_prompt", "autoreset", "seed"}
RUN_DEFAULT_KEYS = ("kwargs", "eval_kwargs", "reward_wrappers")
_RUN_DEFAULTS: dict[str, dict[str, Any]] = {}


def _split_kwargs(kwargs: dict[str, Any], env_keys: set[str]) -> tuple[dict, dict]:
    env_kwargs = {k: v for k, v in kwargs.items() if k in env_keys}
    task_kwargs = {k: v for k, v in kwargs.items() if k not in env_keys}
    return env_kwargs, task_kwargs


def make_token_env(
    task_builder: TaskBuilder, tokenizer: Any, render_mode: str | None = None, **kwargs: Any
) -> TokenEnv:
    """Gymnasium entry point: build the task, then a `TokenEnv` over it."""
    env_kwargs, task_kwargs = _split_kwargs(kwargs, _ENV_KEYS)
    return TokenEnv(task_builder(**task_kwargs), tokenizer, render_mode=render_mode, **env_kwargs)


def register_task(
    env_id: str, task_builder: TaskBuilder, run_defaults: dict[str, Any] | None = None, **default_kwargs: Any
) -> None:
    """Register ``env_id`` so that `gymnasium.make` and `make_vec` build envs over the task.

    :param task_builder: ``builder(**task_kwargs) -> Task``.
    :param run_defaults: what a training run on this id starts from (see `run_defaults`):
        ``{"kwargs": {...}, "eval_kwargs": {...}, "reward_wrappers": [...]}``, any part optional.
    :param default_kwargs: defaults for env or task keyword arguments (e.g. ``max_new_tokens``).
    """
    unknown = sorted(set(run_defaults or {}) - set(RUN_DEFAULT_KEYS))
    if unknown:
        raise ValueError(f"{env_id}: unknown run_defaults keys {unknown}; known: {list(RUN_DEFAULT_KEYS)}")
    gym.register(env_id, entry_point=make_token_env, kwargs={"task_builder": task_builder, **default_kwargs})
    if run_defaults is not None:
        _RUN_DEFAULTS[env_id] = copy.deepcopy(run_defaults)
    else:
        _RUN_DEFAULTS.pop(env_id, None)


def run_defaults(env_id: str) -> dict[str, Any]:
    """A training run's starting point for ``env_id``: ``kwargs`` (env and task kwargs of the
    training env: split, token budget...), ``eval_kwargs`` (merged over them for the held-out
    env) and ``reward_wrappers`` (a `lm_envs.reward_wrappers.from_config` list; ``[]``: none).
    Empty for an id registered without them (its spec's own defaults then apply)."""
    found = _RUN_DEFAULTS.get(env_id, {})
    defaults: dict[str, Any] = {"kwargs": {}, "eval_kwargs": {}, "reward_wrappers": []}
    defaults.update(copy.deepcopy(found))
    return defaults


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
