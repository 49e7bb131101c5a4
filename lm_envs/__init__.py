"""Token-level Gymnasium MDPs for language models.

What lives here: prompt samplers (`sampler`), tasks (the `tasks` package: `Task` and the task
builders, one module per family; they read data through `rewards.data`, the one loader, shared
with the code rewards), the shared transition logic (`episodes`), `TokenEnv` (one episode) and
`TokenVecEnv` (a native SB3 `VecEnv`), reward wrappers (`reward_wrappers`), the registry
(`registration`) and the built-in ids with their run defaults (`suite`). May import `rewards`;
never `policies` or `agents`. Importing this package registers the built-in ids:

* ``lm_envs/GSM8K-v0``: GSM8K, numeric-answer correctness.
* ``lm_envs/MGSM-v0``: MGSM in 11 languages (``language=``), numeric-answer correctness.
* ``lm_envs/MMLU-v0``: MMLU multiple choice (``subjects=``, ``k_shot=``, ``language=``).
* ``lm_envs/MBPP-v0``: MBPP Python problems, sandboxed tests.
* ``lm_envs/HumanEval-v0``, ``lm_envs/HumanEvalCpp-v0``, ``lm_envs/HumanEvalJava-v0``: code
  completion, compiled and tested in the sandbox.
* ``lm_envs/Toxicity-v0``: RealToxicityPrompts continuation, reward 1 - toxicity.

Multi-turn ids, where the env speaks mid-episode (`lm_envs.tasks.turns`):

* ``lm_envs/GSM8KCalculator-v0``: GSM8K with its calculator annotations as a tool.
* ``lm_envs/MBPPFeedback-v0``, ``lm_envs/HumanEvalCppFeedback-v0``: up to three attempts, with
  the compiler error or the first failing test shown after a failed one.

Ids from other libraries (`lm_envs.ecosystem`; optional, ``pip install -e .[envs]``; registered
without importing them): ``reasoning_gym/<task>-v0`` for every reasoning-gym task and
``textarena/<Game>-v0`` for TextArena's offline single-player games.
"""

from lm_envs.ecosystem import register_ecosystem_ids
from lm_envs.episodes import EpisodeBatch, EpisodeConfig, observation_space
from lm_envs.registration import make_token_env, make_vec, register_task
from lm_envs.reward_wrappers import RewardWrapper, VecRewardWrapper
from lm_envs.sampler import PromptSampler
from lm_envs.suite import register_builtin_ids
from lm_envs.tasks import (
    HUMANEVAL_STOP_STRINGS,
    Reply,
    Task,
    Tool,
    gsm8k_calculator_task,
    gsm8k_task,
    humaneval_cpp_feedback_task,
    humaneval_cpp_task,
    humaneval_java_task,
    humaneval_task,
    mbpp_feedback_task,
    mbpp_task,
    mgsm_task,
    mmlu_task,
    toxicity_task,
)
from lm_envs.token_env import TokenEnv
from lm_envs.vec_env import TokenVecEnv
from rewards.data import DATA_DIR_ENV, resolve_data_dir

register_builtin_ids()
register_ecosystem_ids()

__all__ = [
    "DATA_DIR_ENV",
    "HUMANEVAL_STOP_STRINGS",
    "EpisodeBatch",
    "EpisodeConfig",
    "PromptSampler",
    "Reply",
    "RewardWrapper",
    "Task",
    "TokenEnv",
    "TokenVecEnv",
    "Tool",
    "gsm8k_calculator_task",
    "gsm8k_task",
    "humaneval_cpp_feedback_task",
    "humaneval_cpp_task",
    "humaneval_java_task",
    "humaneval_task",
    "make_token_env",
    "make_vec",
    "mbpp_feedback_task",
    "mbpp_task",
    "mgsm_task",
    "mmlu_task",
    "observation_space",
    "register_task",
    "resolve_data_dir",
    "toxicity_task",
    "VecRewardWrapper",
]
