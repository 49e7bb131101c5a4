"""agents.PPO on the tiny model: first-minibatch ratio, learning, save/load, bit-exact resume."""

import numpy as np
import pytest
import torch
from helpers import echo_task
from stable_baselines3.common.callbacks import BaseCallback

from agents import PPO
from lm_envs import TokenVecEnv

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def make_env(tokenizer, num_envs=8, seed=0):
    return TokenVecEnv(echo_task(), tokenizer, num_envs=num_envs, max_new_tokens=6, max_prompt_tokens=16, seed=seed)


def make_agent(tiny_dir, tokenizer, lora=None, **kwargs):
    settings = dict(learning_rate=3e-3, batch_size=4, n_epochs=2, kl_coef=0.01, seed=0)
    settings.update(kwargs)
    return PPO("CausalLMPolicy", make_env(tokenizer), policy_kwargs=dict(model=str(tiny_dir), lora=lora), **settings)


@pytest.mark.parametrize("lora", [None, LORA])
def test_first_minibatch_ratio_is_one(tiny_dir, tiny_lm, lora):
    agent = make_agent(tiny_dir, tiny_lm[1], lora=lora, micro_batch_size=2)
    agent.learn(8 * 6)
    stats = agent.last_iteration_stats
    assert stats["policy/first_minibatch_ratio_max_dev"] < 1e-4
    assert stats["policy/first_minibatch_approxkl"] < 1e-6
    assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # KL to the reference is 0 at start
    for key in (
        "objective/kl_coef",
        "objective/entropy",
        "objective/scores",
        "objective/rlhf_reward",
        "policy/approxkl",
        "policy/clipfrac",
        "loss/policy",
        "loss/value",
        "val/var_explained",
        "tokens/response_len_mean",
        "time/rollout",
        "time/reward",
        "time/update",
    ):
        assert key in stats
        assert np.isfinite(stats[key]) or key == "val/var_explained"  # nan when returns are constant


def test_mean_reward_rises_on_synthetic_task(tiny_dir, tiny_lm):
    """reward = fraction of the token '7' in the completion: PPO must raise it clearly."""
    env = TokenVecEnv(echo_task(), tiny_lm[1], num_envs=16, max_new_tokens=6, max_prompt_tokens=16, seed=0)
    agent = PPO(
        "CausalLMPolicy",
        env,
        learning_rate=5e-3,
        batch_size=8,
        n_epochs=2,
        kl_coef=0.01,
        seed=0,
        policy_kwargs=dict(model=str(tiny_dir)),
    )
    scores = []

    class Track(BaseCallback):
        def _on_step(self):
            return True

        def _on_rollout_end(self):
            scores.append(float(self.locals["episodes"].env_rewards.mean()))

    agent.learn(16 * 6 * 25, callback=Track())
    assert np.mean(scores[:3]) < 0.1
    assert np.mean(scores[-3:]) > 0.5


def test_save_load_round_trip_and_checkpoint_is_small(tiny_dir, tiny_lm, tmp_path):
    agent = make_agent(tiny_dir, tiny_lm[1], lora=LORA)
    agent.learn(8 * 6)
    agent.save(tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt" / "policy").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files  # never the frozen base
    loaded = PPO.load(tmp_path / "ckpt", env=make_env(tiny_lm[1]))
    for (name, a), b in zip(agent.policy.state_dict().items(), loaded.policy.state_dict().values()):
        assert torch.equal(a, b), name
    obs = loaded.env.reset()
    actions, _ = loaded.predict(obs, deterministic=True)
    assert actions.shape == (8,)


@pytest.mark.parametrize("lora", [None, LORA])
def test_resume_is_bit_exact(tiny_dir, tiny_lm, tmp_path, lora):
    """N updates straight == N/2, save, a fresh process-like load, N/2 more."""
    per_iteration = 8 * 6
    straight = make_agent(tiny_dir, tiny_lm[1], lora=lora, seed=1, adaptive_kl=True, kl_target=0.5, kl_horizon=50)
    torch.manual_seed(123)
    straight.learn(4 * per_iteration)

    first = make_agent(tiny_dir, tiny_lm[1], lora=lora, seed=1, adaptive_kl=True, kl_target=0.5, kl_horizon=50)
    torch.manual_seed(123)
    first.learn(2 * per_iteration)
    first.save(tmp_path / "half")
    del first
    torch.manual_seed(999)  # whatever happens in between must not matter
    np.random.seed(5)
    resumed = PPO.load(tmp_path / "half", env=make_env(tiny_lm[1], seed=77))
    resumed.learn(2 * per_iteration, reset_num_timesteps=False)

    assert resumed.num_timesteps == straight.num_timesteps
    assert resumed.kl_controller.value == pytest.approx(straight.kl_controller.value, abs=0)
    for (name, a), b in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_only_lockstep_envs(tiny_dir, tiny_lm):
    env = TokenVecEnv(echo_task(), tiny_lm[1], num_envs=4, max_new_tokens=4, max_prompt_tokens=16, autoreset=True)
    agent = PPO("CausalLMPolicy", env, batch_size=4, policy_kwargs=dict(model=str(tiny_dir)))
    with pytest.raises(ValueError, match="lockstep"):
        agent.learn(16)
    with pytest.raises(ValueError, match="batch_size"):
        PPO("CausalLMPolicy", make_env(tiny_lm[1]), batch_size=3, policy_kwargs=dict(model=str(tiny_dir)))


@pytest.mark.parametrize("calibrate", [True, False])
def test_value_head_starts_at_first_mean_return(tiny_dir, tiny_lm, calibrate):
    """The zero-initialised value head is moved to the first batch's mean Monte-Carlo return,
    once, before any update; the buffer's values and advantages use the shifted head."""
    from agents import ppo_math

    constant = lambda completions, references, prompts=None: np.full(len(completions), 0.8, dtype=np.float32)
    env = TokenVecEnv(
        echo_task(reward=constant), tiny_lm[1], num_envs=8, max_new_tokens=6, max_prompt_tokens=16, seed=0
    )
    agent = PPO(
        "CausalLMPolicy",
        env,
        learning_rate=1e-4,
        batch_size=4,
        kl_coef=0.0,
        seed=0,
        calibrate_value_head=calibrate,
        policy_kwargs=dict(model=str(tiny_dir)),
    )
    seen = []

    class Record(BaseCallback):
        def _on_step(self):
            return True

        def _on_rollout_end(self):
            buffer = self.model.buffer
            episodes = self.locals["episodes"]
            seen.append(
                (
                    self.model.value_shift,
                    self.model.policy.value_head.bias.item(),
                    (buffer.values - episodes.values * buffer.mask).abs().max().item(),
                    buffer,
                )
            )

    agent.learn(8 * 6 * 2, callback=Record())
    (shift, bias, moved, buffer), (later_shift, _, later_moved, _) = seen[:2]
    if not calibrate:
        assert shift == 0.0 and bias == 0.0 and moved == 0.0
        return
    # With a constant score and no KL, every reward-to-go is the score itself.
    assert shift == pytest.approx(0.8, abs=1e-6)
    assert bias == pytest.approx(shift, abs=1e-6)
    assert moved == pytest.approx(shift, abs=1e-5)
    _, monte_carlo = ppo_math.gae(buffer.token_rewards, torch.zeros_like(buffer.values), buffer.mask, 1.0, 1.0)
    assert shift == pytest.approx(float(ppo_math.masked_mean(monte_carlo, buffer.mask)), abs=1e-6)
    assert later_moved == 0.0  # only once, before the first update
