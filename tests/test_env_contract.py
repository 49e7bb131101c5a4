"""The agents' env contract (`agents.env_contract`): what envs and wrappers provide, what is refused,
and that agents never read env attributes by name."""

import re
from pathlib import Path

import pytest
from helpers import echo_task

from agents.env_contract import TokenVecEnvLike, token_env
from lm_envs import TokenVecEnv
from lm_envs.reward_wrappers import Normalize, VecRewardWrapper

AGENTS_DIR = Path(__file__).resolve().parents[1] / "agents"


def test_token_envs_and_their_wrappers_keep_the_contract(tiny_lm):
    env = TokenVecEnv(
        echo_task(), tiny_lm[1], num_envs=4, max_new_tokens=4, max_prompt_tokens=16, seed=0, completions_per_prompt=2
    )
    wrapped = VecRewardWrapper(VecRewardWrapper(env, Normalize()), Normalize())
    for candidate in (env, wrapped):
        view = token_env(candidate)
        assert isinstance(view, TokenVecEnvLike)
        assert (view.completions_per_prompt, view.max_turns, view.autoreset) == (2, 1, False)
        assert view.tokenizer is tiny_lm[1] and view.task is env.task
        assert view.waiting_rows.shape == view.scoring_rows.shape == (4,)
    gathered = []
    wrapped.sync_statistics(lambda obj: gathered.append(obj) or [obj])  # every wrapper's statistics, outer first
    assert len(gathered) == 2
    state = wrapped.get_state()
    assert len(state["reward_transforms"]) == 2 and "samplers" in state


def test_a_vec_env_without_the_contract_is_refused_clearly(tiny_dir):
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents import PPO

    plain = DummyVecEnv([lambda: gym.make("CartPole-v1")])
    with pytest.raises(TypeError, match=r"need a token VecEnv.*lacks \[.*'completions_per_prompt'"):
        token_env(plain)
    with pytest.raises((TypeError, ValueError)):
        PPO("CausalLMPolicy", plain, policy_kwargs=dict(model=str(tiny_dir)))


def test_agents_read_no_env_attribute_by_name():
    """Through get_attr/env_method strings an env's attributes escape type checks and wrappers:
    agents use the typed contract instead (env.task, env.completions_per_prompt ...)."""
    offenders = []
    for path in sorted(AGENTS_DIR.glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.(get_attr|env_method|set_attr)\(", line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, offenders
