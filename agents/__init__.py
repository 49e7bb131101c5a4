"""Agents: algorithms and the buffers they learn from.

What lives here: rollout collection over a lockstep token `VecEnv` (`rollout`), the token
buffer (`buffer`), the PPO maths (`ppo_math`) and the PPO agent (`ppo`),
evaluation (`evaluation`) and SB3 callbacks for checkpoints and evaluation (`callbacks`). Agents meet
envs only through SB3's `VecEnv` API and policies only through the policy API.
"""
from agents.buffer import TokenRolloutBuffer
from agents.callbacks import CheckpointEveryIterations, EvalEveryIterations, latest_checkpoint
from agents.evaluation import evaluate_policy
from agents.ppo import PPO
from agents.rollout import Episodes, collect_episodes

__all__ = ["PPO", "CheckpointEveryIterations", "EvalEveryIterations", "Episodes", "TokenRolloutBuffer",
           "collect_episodes", "evaluate_policy", "latest_checkpoint"]
