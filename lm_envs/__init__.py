"""Token-level Gymnasium MDPs for language models.

What lives here: data loading (`data`), prompt samplers (`sampler`), tasks (`tasks`), the
shared transition logic (`episodes`), `TokenEnv` (one episode) and `TokenVecEnv` (a native
SB3 `VecEnv`), and the registry of built-in ids. May import `rewards`; never `policies` or
`agents`. Importing this package registers the built-in ids:

* ``lm_envs/GSM8K-v0``: GSM8K, numeric-answer correctness.
"""
from lm_envs.data import DATA_DIR_ENV, resolve_data_dir
from lm_envs.episodes import EpisodeBatch, observation_space
from lm_envs.registration import make_token_env, make_vec, register_task
from lm_envs.sampler import PromptSampler
from lm_envs.tasks import Task, gsm8k_task
from lm_envs.token_env import TokenEnv
from lm_envs.vec_env import TokenVecEnv

register_task("lm_envs/GSM8K-v0", gsm8k_task, max_new_tokens=256)

__all__ = [
    "DATA_DIR_ENV", "EpisodeBatch", "PromptSampler", "Task", "TokenEnv", "TokenVecEnv", "gsm8k_task",
    "make_token_env", "make_vec", "observation_space", "register_task", "resolve_data_dir",
]
