"""Agents: algorithms and the buffers they learn from.

What lives here: rollout collection over a lockstep token `VecEnv` (`rollout`). Agents meet
envs only through SB3's `VecEnv` API and policies only through the policy API.
"""
from agents.rollout import Episodes, collect_episodes

__all__ = ["Episodes", "collect_episodes"]
