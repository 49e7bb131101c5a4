"""One name per setting: the online agents take TRL's spellings through one alias table
(`agents.names`), in Python and in configs; both spellings of one setting is an error; DPO's and
KTO's own ``beta`` is left alone."""

import sys
from pathlib import Path

import pytest
from helpers import echo_task
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from config import compose  # noqa: E402

from agents import AGENTS, GRPO, PPO, RLOO, REINFORCEPlusPlus  # noqa: E402
from agents.base import agent_parameters  # noqa: E402
from agents.names import ALIASES, resolve_aliases  # noqa: E402
from lm_envs import TokenVecEnv  # noqa: E402


def test_resolve_aliases_renames_and_refuses_both_spellings():
    assert resolve_aliases("X", {"beta": 0.1, "epsilon": 0.3, "seed": 1}) == {
        "kl_coef": 0.1,
        "clip_range": 0.3,
        "seed": 1,
    }
    with pytest.raises(TypeError, match="both beta= and kl_coef="):
        resolve_aliases("GRPO", {"beta": 0.1, "kl_coef": 0.2})
    assert set(ALIASES.values()) <= agent_parameters(GRPO)


def env(tokenizer, group):
    return TokenVecEnv(
        echo_task(), tokenizer, num_envs=8, max_new_tokens=4, max_prompt_tokens=16, completions_per_prompt=group
    )


@pytest.mark.parametrize("cls, group", [(GRPO, 4), (RLOO, 4), (REINFORCEPlusPlus, 1), (PPO, 1)])
def test_online_agents_take_either_spelling_and_save_the_internal_name(cls, group, tiny_dir, tiny_lm):
    common = dict(policy_kwargs=dict(model=str(tiny_dir)), batch_size=4, seed=0)
    trl = cls("CausalLMPolicy", env(tiny_lm[1], group), beta=0.3, epsilon=0.1, num_iterations=2, **common)
    ours = cls("CausalLMPolicy", env(tiny_lm[1], group), kl_coef=0.3, clip_range=0.1, n_epochs=2, **common)
    for agent in (trl, ours):
        assert (agent.kl_coef, agent.n_epochs, agent.clip_range(1.0)) == (0.3, 2, 0.1)
        assert agent._hparams["kl_coef"] == 0.3 and "beta" not in agent._hparams  # checkpoints hold one name
    with pytest.raises(TypeError, match="give only n_epochs="):
        cls("CausalLMPolicy", env(tiny_lm[1], group), num_iterations=2, n_epochs=1, **common)


def test_configs_take_either_spelling_for_online_agents_only():
    grpo = compose(["agent=grpo", "agent.beta=0.3", "agent.num_iterations=2", "iterations=5"])
    assert grpo.agent.kl_coef == 0.3 and grpo.agent.n_epochs == 2 and grpo.iterations == 5
    assert not {"beta", "num_iterations"} & set(grpo.agent)
    assert compose(["agent=rloo", "agent.kl_coef=0.2"]).agent.kl_coef == 0.2
    dpo = compose(["agent=dpo", "agent.beta=0.3"])  # DPO's beta is its own temperature
    assert dpo.agent.beta == 0.3 and "kl_coef" not in dpo.agent
    for name in ("grpo", "rloo", "reinforce", "reinforce_pp", "gspo", "dapo", "reinforce_pp_baseline"):
        agent = OmegaConf.to_container(compose([f"agent={name}"]).agent)
        assert not set(agent) & set(ALIASES), (name, agent)  # the shipped files use the internal names
    assert all(getattr(AGENTS[n].__init__, "accepts_aliases", False) for n in ("ppo", "grpo", "rloo", "reinforce"))
    assert not any(getattr(AGENTS[n].__init__, "accepts_aliases", False) for n in ("sft", "star", "dpo", "kto"))
