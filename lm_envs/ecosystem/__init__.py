"""Environments from other libraries as `lm_envs` ids: reasoning-gym, TextArena and OpenEnv.

* `lm_envs.ecosystem.reasoning_gym`: every reasoning-gym task as ``reasoning_gym/<task>-v0``
  (procedural data, the task's own ``score_answer``, held-out items kept out of training by
  question text), and `ReasoningGymCurriculum`, a vec-env wrapper that moves difficulty with the
  recent success rate through reasoning-gym's own curricula.
* `lm_envs.ecosystem.textarena`: TextArena's single-player games that run offline as multi-turn
  ids ``textarena/<Game>-v0`` (the game's messages are injected, the model's move is its turn,
  the game's reward is a per-turn reward).
* `lm_envs.ecosystem.textarena_duel`: TextArena's two-player board games (TicTacToe,
  ConnectFour) as ``textarena/<Game>-v0`` against a scripted opponent (random or heuristic), whose
  moves are injected as context.
* `lm_envs.ecosystem.openenv`: both directions of OpenEnv's protocol: `serve` any `lm_envs` id as
  an OpenEnv server, and `openenv_task` to train on any OpenEnv environment through its client.

The libraries are optional (``pip install -e .[envs]``). Importing `lm_envs` registers the ids
from static name lists and imports none of them; a builder imports its library when an env is
built, and a missing one raises `MissingExtra`, which names the extra to install. May import
`lm_envs.tasks` and `lm_envs.registration`; never `policies` or `agents`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtra", "register_ecosystem_ids", "require"]


class MissingExtra(ImportError):
    """An optional library of the ``envs`` extra is not installed."""


def require(module: str, package: str) -> ModuleType:
    """Import ``module`` or raise `MissingExtra` saying how to install it.

    :param module: the import name (``reasoning_gym``).
    :param package: its PyPI name (``reasoning-gym``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(
            f"{module} is not installed: install the optional environments with "
            f"`pip install -e '.[envs]'` (or `pip install {package}`)"
        ) from err


def register_ecosystem_ids() -> None:
    """Register ``reasoning_gym/*-v0`` and ``textarena/*-v0`` (lazy: nothing is imported)."""
    from lm_envs.ecosystem.reasoning_gym import register_reasoning_gym_ids
    from lm_envs.ecosystem.textarena import register_textarena_ids
    from lm_envs.ecosystem.textarena_duel import register_textarena_duel_ids

    register_reasoning_gym_ids()
    register_textarena_ids()
    register_textarena_duel_ids()
