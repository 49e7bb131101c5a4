"""The agent family on the shared core (tiny model): GRPO, RLOO, REINFORCE, REINFORCE++ and PPO.

Each agent: first-minibatch ratio 1, learning the synthetic task, bit-exact resume, finite logs.
Plus PPO's fixed defects: top-k KL, schedules on resume, logit soft-capping, idempotent value
calibration, target_kl before the step, adaptive KL from 0, weight decay, load-then-learn order.
"""

import math

import numpy as np
import pytest
import torch
from helpers import echo_env, echo_task, score_tracker
from stable_baselines3.common.callbacks import BaseCallback

from agents import GRPO, PPO, REINFORCE, RLOO, REINFORCEPlusPlus

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
GROUP_AGENTS = {"grpo": GRPO, "rloo": RLOO}
ALL = {"ppo": PPO, "grpo": GRPO, "rloo": RLOO, "reinforce": REINFORCE, "reinforce_pp": REINFORCEPlusPlus}


def make_env(tokenizer, num_envs=8, seed=0, group=1, max_new_tokens=6, task=None):
    return echo_env(tokenizer, num_envs, max_new_tokens, seed, group, task)


def make(name, tiny_dir, tokenizer, lora=None, num_envs=8, env_seed=0, **kwargs):
    cls = ALL[name]
    group = 4 if name in GROUP_AGENTS else 1
    settings = dict(learning_rate=3e-3, batch_size=4, seed=0)
    if name == "ppo":
        settings.update(n_epochs=2, kl_coef=0.01)
    else:
        settings.update(num_iterations=2, beta=0.01)
    settings.update(kwargs)
    return cls(
        "CausalLMPolicy",
        make_env(tokenizer, num_envs, env_seed, group),
        policy_kwargs=dict(model=str(tiny_dir), lora=lora),
        **settings,
    )


@pytest.mark.parametrize("name", sorted(ALL))
def test_first_minibatch_ratio_is_one_and_every_logged_scalar_is_finite(name, tiny_dir, tiny_lm):
    agent = make(name, tiny_dir, tiny_lm[1], lora=LORA, micro_batch_size=2)
    agent.learn(total_iterations=1)
    stats = agent.last_iteration_stats
    assert stats["policy/first_minibatch_ratio_max_dev"] < 1e-4
    assert stats["policy/first_minibatch_approxkl"] < 1e-6
    assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # KL to the reference is 0 at init
    assert all(math.isfinite(v) for v in stats.values())
    assert ("loss/value" in stats) == (name == "ppo") and ("val/var_explained" in stats) == (name == "ppo")
    for key in ("objective/scores", "objective/kl_coef", "loss/policy", "policy/approxkl", "time/update"):
        assert key in stats
    assert (agent.policy.value_head is None) == (name != "ppo")  # critic-free agents build no value head
    assert not any("value_head" in n for n, p in agent.policy.named_parameters() if p.requires_grad) or name == "ppo"


def test_beta_zero_runs_no_reference_pass_and_logs_no_kl(tiny_dir, tiny_lm):
    agent = make("grpo", tiny_dir, tiny_lm[1], beta=0.0)
    assert agent.policy.reference_model is None  # full fine-tuning, no KL: no frozen copy either
    calls = []
    original = agent.policy.evaluate_actions

    def spy(*args, reference=False, **kwargs):
        calls.append(reference)
        return original(*args, reference=reference, **kwargs)

    agent.policy.evaluate_actions = spy
    agent.learn(total_iterations=1)
    assert calls and not any(calls)
    assert agent.buffer.ref_log_probs is None and "objective/kl" not in agent.last_iteration_stats


@pytest.mark.parametrize("name", sorted(ALL))
def test_each_agent_learns_the_synthetic_task(name, tiny_dir, tiny_lm):
    """reward = fraction of the token '7' in the completion: every agent must raise it clearly."""
    cls = ALL[name]
    group = 4 if name in GROUP_AGENTS else 1
    env = make_env(tiny_lm[1], num_envs=16, group=group)
    if name == "ppo":
        kwargs = dict(learning_rate=5e-3, batch_size=8, n_epochs=2, kl_coef=0.01)
    else:
        kwargs = dict(learning_rate=5e-3, batch_size=8, num_iterations=2, beta=0.0)
    agent = cls("CausalLMPolicy", env, seed=0, policy_kwargs=dict(model=str(tiny_dir)), **kwargs)
    track = score_tracker()
    agent.learn(total_iterations=25, callback=track)
    assert np.mean(track.scores[:3]) < 0.1
    assert np.mean(track.scores[-3:]) > 0.5, track.scores


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce", "reinforce_pp"])
def test_resume_is_bit_exact(name, tiny_dir, tiny_lm, tmp_path):
    """4 iterations straight == 2, save, load (with stray RNG use in between), 2 more."""
    kwargs = dict(baseline="running") if name == "reinforce" else {}
    straight = make(name, tiny_dir, tiny_lm[1], lora=LORA, seed=1, **kwargs)
    torch.manual_seed(123)
    straight.learn(total_iterations=4)

    first = make(name, tiny_dir, tiny_lm[1], lora=LORA, seed=1, **kwargs)
    torch.manual_seed(123)
    first.learn(total_iterations=2)
    first.save(tmp_path / "half")
    del first
    torch.manual_seed(999)
    np.random.seed(5)
    resumed = ALL[name].load(
        tmp_path / "half", env=make_env(tiny_lm[1], seed=77, group=4 if name in GROUP_AGENTS else 1)
    )
    resumed.learn(total_iterations=4, reset_num_timesteps=False)
    assert resumed.num_timesteps == straight.num_timesteps and resumed.iteration == 4
    for (key, a), b in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(a, b), key
    if name == "reinforce":
        assert resumed.running_baseline.value == straight.running_baseline.value


def test_group_agents_check_the_env_groups(tiny_dir, tiny_lm):
    with pytest.raises(ValueError, match="completions_per_prompt >= 2"):
        GRPO("CausalLMPolicy", make_env(tiny_lm[1]), policy_kwargs=dict(model=str(tiny_dir)))
    with pytest.raises(ValueError, match="loss_type must be one of"):
        GRPO("CausalLMPolicy", make_env(tiny_lm[1], group=4), loss_type="nope", policy_kwargs=dict(model=str(tiny_dir)))
    with pytest.raises(ValueError, match="baseline must be one of"):
        REINFORCE("CausalLMPolicy", make_env(tiny_lm[1]), baseline="nope", policy_kwargs=dict(model=str(tiny_dir)))


def test_minibatches_keep_groups_together(tiny_dir, tiny_lm):
    agent = make("grpo", tiny_dir, tiny_lm[1], batch_size=4)
    agent.learn(total_iterations=1)
    buffer = agent.buffer
    for minibatch in buffer.minibatches(4, torch.Generator().manual_seed(3)):
        groups = [g for g in range(2) if torch.equal(minibatch.old_log_probs, buffer.log_probs[g * 4 : (g + 1) * 4])]
        assert len(groups) == 1  # the minibatch is exactly one prompt's group


# -- PPO defects, each with a test that failed before the fix ----------------------------------
@pytest.mark.parametrize("sampling", [dict(top_k=3), dict(top_p=0.5)])
def test_truncated_sampling_with_kl_stays_finite(sampling, tiny_dir, tiny_lm):
    agent = make("ppo", tiny_dir, tiny_lm[1], kl_coef=0.1)
    agent.policy.top_k, agent.policy.top_p = sampling.get("top_k", 0), sampling.get("top_p", 1.0)
    agent.learn(total_iterations=2)
    buffer = agent.buffer
    assert torch.isfinite(buffer.kl).all() and torch.isfinite(buffer.advantages).all()
    # The reference is scored untruncated: every sampled token has a finite reference log-prob.
    assert torch.isfinite(buffer.ref_log_probs[buffer.mask]).all()
    assert all(math.isfinite(v) for v in agent.last_iteration_stats.values())


def test_schedules_resume_on_the_uninterrupted_path(tiny_dir, tiny_lm, tmp_path):
    schedules = dict(
        learning_rate={"schedule": "linear", "start": 1e-3, "end": 0.0},
        clip_range={"schedule": "linear", "start": 0.3, "end": 0.1},
    )
    straight = make("ppo", tiny_dir, tiny_lm[1], **schedules)
    straight.learn(total_iterations=4)
    killed = make("ppo", tiny_dir, tiny_lm[1], **schedules)
    killed.learn(total_iterations=4, callback=_StopAt(2))  # a run of 4 iterations stopped after 2
    assert killed.iteration == 2
    killed.save(tmp_path / "ckpt")
    resumed = PPO.load(tmp_path / "ckpt", env=make_env(tiny_lm[1]))
    resumed.learn(total_iterations=4, reset_num_timesteps=False)
    # Progress is iterations done / budget: the last update ran at progress remaining 1 − 3/4,
    # whatever the episodes' lengths, and the resumed run is on the same path.
    lr = straight.policy.optimizer.param_groups[0]["lr"]
    assert lr == pytest.approx(1e-3 * (1 - 3 / 4))
    assert resumed.policy.optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-9)
    assert straight.last_iteration_stats["train/clip_range"] == pytest.approx(0.3 - 0.2 * 3 / 4)
    assert resumed.last_iteration_stats["train/clip_range"] == pytest.approx(0.3 - 0.2 * 3 / 4)


class _StopAt(BaseCallback):
    """Stop ``learn`` before the iteration ``n`` (0-based) starts its rollout."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def _on_step(self):
        return self.model.iteration < self.n


def test_callable_schedules_must_be_passed_again_on_load(tiny_dir, tiny_lm, tmp_path):
    agent = make("ppo", tiny_dir, tiny_lm[1], learning_rate=lambda progress: 1e-3 * progress)
    agent.learn(total_iterations=1)
    agent.save(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="pass them again.*learning_rate"):
        PPO.load(tmp_path / "ckpt", env=make_env(tiny_lm[1]))
    loaded = PPO.load(tmp_path / "ckpt", env=make_env(tiny_lm[1]), learning_rate=lambda progress: 1e-3 * progress)
    assert loaded.iteration == 1


def test_logit_soft_capping_keeps_rollout_and_teacher_forcing_on_one_route(tmp_path):
    """A Gemma-2-style model caps its final logits; rollouts and updates must both see the cap."""
    from helpers import build_tiny_tokenizer
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tokenizer = build_tiny_tokenizer(tmp_path)
    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        final_logit_softcapping=0.5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = Gemma2ForCausalLM(config).eval()
    # learning_rate=0: the update leaves the model as it was when the buffer was sampled.
    agent = PPO(
        "CausalLMPolicy",
        make_env(tokenizer),
        batch_size=4,
        kl_coef=0.01,
        seed=0,
        learning_rate=0.0,
        policy_kwargs=dict(model=model),
    )
    agent.learn(total_iterations=1)
    stats = agent.last_iteration_stats
    assert stats["policy/first_minibatch_ratio_max_dev"] < 1e-4
    # Both routes agree with the model's own (capped) forward pass.
    buffer = agent.buffer
    with torch.no_grad():
        logits = model(
            input_ids=buffer.input_ids,
            attention_mask=buffer.attention_mask,
            position_ids=(buffer.attention_mask.cumsum(-1) - 1).clamp(min=0),
        ).logits
    own = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, buffer.input_ids[:, 1:, None]).squeeze(-1)
    select = buffer.policy_mask[:, 1:].bool()
    assert torch.allclose(own[select], buffer.log_probs[buffer.mask], atol=1e-4)


def test_value_calibration_is_idempotent(tiny_dir, tiny_lm):
    constant = lambda completions, references, prompts=None: np.full(len(completions), 0.8, dtype=np.float32)  # noqa: E731
    env = make_env(tiny_lm[1], task=echo_task(reward=constant))
    agent = PPO(
        "CausalLMPolicy",
        env,
        learning_rate=1e-4,
        batch_size=4,
        kl_coef=0.0,
        seed=0,
        policy_kwargs=dict(model=str(tiny_dir)),
        _init_setup_model=True,
    )
    with torch.no_grad():
        agent.policy.value_head.bias.fill_(0.8)  # already centred on the returns
    agent.learn(total_iterations=1)
    assert agent.value_shift == pytest.approx(0.0, abs=1e-5)
    assert agent.policy.value_head.bias.item() == pytest.approx(0.8, abs=1e-3)


def test_target_kl_is_checked_before_the_optimizer_step(tiny_dir, tiny_lm):
    agent = make("ppo", tiny_dir, tiny_lm[1], target_kl=1e-12, n_epochs=3, learning_rate=1e-2)
    before = [p.detach().clone() for p in agent.policy.parameters() if p.requires_grad]
    agent.learn(total_iterations=1)
    stats = agent.last_iteration_stats
    # The first minibatch is on-policy (approx-KL ~ 0 ≤ 1.5e-12 is not guaranteed: float noise), so
    # at most one step ran; the step that measured too much KL was never taken.
    assert stats["train/early_stopped"] == 1.0
    assert agent._n_updates <= 1
    if agent._n_updates == 0:
        after = [p for p in agent.policy.parameters() if p.requires_grad]
        assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_adaptive_kl_from_zero_is_an_error(tiny_dir, tiny_lm):
    with pytest.raises(ValueError, match="adaptive KL needs an initial kl_coef > 0"):
        make("ppo", tiny_dir, tiny_lm[1], kl_coef=0.0, adaptive_kl=True)


@pytest.mark.parametrize("lora", [None, LORA])
def test_no_weight_decay_by_default(lora, tiny_dir, tiny_lm):
    agent = make("ppo", tiny_dir, tiny_lm[1], lora=lora)
    assert all(group["weight_decay"] == 0.0 for group in agent.policy.optimizer.param_groups)
    decayed = PPO(
        "CausalLMPolicy",
        make_env(tiny_lm[1]),
        batch_size=4,
        seed=0,
        policy_kwargs=dict(model=str(tiny_dir), optimizer_kwargs={"weight_decay": 0.1}),
    )
    assert decayed.policy.optimizer.param_groups[0]["weight_decay"] == 0.1


def test_load_then_learn_continues_the_prompt_order(tiny_dir, tiny_lm, tmp_path):
    """``PPO.load(...)`` then a plain ``learn()`` serves the prompts the saved run would have served next."""
    straight = make("ppo", tiny_dir, tiny_lm[1], env_seed=3)
    straight.learn(total_iterations=3)
    straight_prompts = [info["index"] for info in straight.buffer.infos]

    first = make("ppo", tiny_dir, tiny_lm[1], env_seed=3)
    first.learn(total_iterations=2)
    first.save(tmp_path / "ckpt")
    loaded = PPO.load(tmp_path / "ckpt", env=make_env(tiny_lm[1], seed=3))
    loaded.learn(total_iterations=3)  # default reset_num_timesteps=True
    assert [info["index"] for info in loaded.buffer.infos] == straight_prompts


def test_cuda_rng_is_saved_when_present():
    from agents import checkpoint

    states = checkpoint.rng_states()
    assert ("cuda" in states) == torch.cuda.is_available()


def test_progress_bar_shows_the_score_of_the_iteration_just_done(tiny_dir, tiny_lm, capfd):
    """learn(total_iterations=..., progress_bar=True): a tqdm bar of iterations whose postfix is the
    iteration's own score (it once showed the previous iteration's, so `score=nan` after the first)."""
    agent = make("ppo", tiny_dir, tiny_lm[1])
    scores = []
    agent.learn(total_iterations=1, progress_bar=True)
    scores.append(agent.last_iteration_stats["objective/scores"])
    first = capfd.readouterr().err
    agent.learn(total_iterations=2, progress_bar=True, reset_num_timesteps=False)
    scores.append(agent.last_iteration_stats["objective/scores"])
    second = capfd.readouterr().err
    assert "1/1" in first and f"score={scores[0]:.3f}" in first and "nan" not in first
    assert "2/2" in second and f"score={scores[1]:.3f}" in second and "loss=" not in second
