"""Agents: algorithms and the buffers they learn from.

What lives here: the base every agent shares (`base.LMAlgorithm`: learn, seeding, logging,
save/load, resume, and the one accumulate-and-step update helper); the on-policy core on it
(`core`: collect, reference pass, shaping, the minibatch update) and the agents on that, each
mostly its estimator and its loss:
`PPO` (`ppo`), `GRPO` (`grpo`), `RLOO` (`rloo`), `REINFORCE` and `REINFORCEPlusPlus`
(`reinforce`). Agents that learn from scored samples in rounds (`rounds`, the scored-sample
core, also on the base): `SFT` (`sft`),
`STaR` (`star`), `DPO` and `KTO` (`dpo`), over training rows built by `sequences`. Pure maths
in `ppo_math`, `group_math` and `preference_math`; rollout collection over a lockstep
token `VecEnv` (`rollout`); the token buffer (`buffer`); checkpoints (`checkpoint`);
evaluation (`evaluation`) and SB3 callbacks (`callbacks`). Agents meet envs only through SB3's
`VecEnv` API and policies only through the policy API.
"""

from agents.base import LMAlgorithm
from agents.buffer import TokenRolloutBuffer
from agents.callbacks import CheckpointEveryIterations, EvalEveryIterations
from agents.checkpoint import latest_checkpoint
from agents.core import OnPolicyLMAlgorithm
from agents.discriminator import Discriminator
from agents.dpo import DPO, KTO
from agents.evaluation import evaluate_policy
from agents.grpo import GRPO
from agents.ppo import PPO
from agents.reinforce import REINFORCE, REINFORCEPlusPlus
from agents.reward_model import RewardModel
from agents.rloo import RLOO
from agents.rollout import Episodes, collect_episodes
from agents.rounds import ScoredRolloutAlgorithm
from agents.sft import SFT
from agents.star import STaR
from agents.token_log import TokenLogCallback

# Names for configs (``run_ppo.py agent=NAME``) and for checkpoints' ``agent_class``.
AGENTS = {
    "ppo": PPO,
    "grpo": GRPO,
    "rloo": RLOO,
    "reinforce": REINFORCE,
    "reinforce_pp": REINFORCEPlusPlus,
    "sft": SFT,
    "star": STaR,
    "dpo": DPO,
    "kto": KTO,
}

__all__ = [
    "AGENTS",
    "DPO",
    "Discriminator",
    "GRPO",
    "KTO",
    "PPO",
    "REINFORCE",
    "RLOO",
    "RewardModel",
    "REINFORCEPlusPlus",
    "SFT",
    "STaR",
    "CheckpointEveryIterations",
    "EvalEveryIterations",
    "Episodes",
    "LMAlgorithm",
    "OnPolicyLMAlgorithm",
    "ScoredRolloutAlgorithm",
    "TokenRolloutBuffer",
    "collect_episodes",
    "evaluate_policy",
    "latest_checkpoint",
    "TokenLogCallback",
]
