"""The loss family beyond GRPO/PPO (tiny model): GSPO's sequence ratio, TRL's two-sided clip,
DAPO's dynamic sampling and overlong shaping, REINFORCE++-baseline, and the rollout-versus-update
correction. Formulas by hand (TRL parity for GSPO, delta and robust DPO is in test_group_math.py
and test_preference_math.py); then each new piece learns a 0/1 task and resumes bit-exactly."""

import math

import numpy as np
import pytest
import torch
from helpers import echo_env, echo_task, score_tracker
from stable_baselines3.common.callbacks import BaseCallback

from agents import GRPO, REINFORCEPlusPlus, group_math, ppo_math
from lm_envs.reward_wrappers import OverlongTerm, VecRewardWrapper, from_config

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def has_seven(completions, references, prompts=None):
    """0/1: does the completion say 7? Groups of a random model often all agree, so they tie."""
    return np.array([float("7" in c.split()) for c in completions], dtype=np.float32)


def make_env(tokenizer, num_envs=8, seed=0, group=4, max_new_tokens=6, wrappers=None):
    env = echo_env(tokenizer, num_envs, max_new_tokens, seed, group, echo_task(reward=has_seven))
    return VecRewardWrapper(env, from_config(wrappers)) if wrappers else env


OVERLONG = [{"type": "overlong", "max_length": 6, "cache": 3}]
RECIPES = {
    "gspo": (
        GRPO,
        dict(importance_sampling_level="sequence", loss_type="grpo", epsilon=3e-4, epsilon_high=4e-4, num_iterations=2),
        None,
    ),
    "dynamic_sampling": (GRPO, dict(dynamic_sampling=True, max_extra_rollouts=3, epsilon_high=0.28), None),
    "overlong": (GRPO, dict(), OVERLONG),
    "reinforce_pp_baseline": (REINFORCEPlusPlus, dict(baseline="group", beta=0.01), None),
}


def make(recipe, tiny_dir, tokenizer, lora=None, seed=0, env_seed=0, num_envs=8, **extra):
    cls, kwargs, wrappers = RECIPES[recipe]
    settings = dict(learning_rate=5e-3, batch_size=8, seed=seed, **kwargs)
    settings.update(extra)
    return cls(
        "CausalLMPolicy",
        make_env(tokenizer, num_envs, env_seed, wrappers=wrappers),
        policy_kwargs=dict(model=str(tiny_dir), lora=lora),
        **settings,
    )


# -- formulas by hand ---------------------------------------------------------------------------------
def test_gspo_ratio_and_two_sided_clip_by_hand():
    log_probs = torch.log(torch.tensor([[2.0, 0.5, 9.0], [1.2, 1.0, 1.0]]))
    old = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    weights = ppo_math.importance_log_weights(log_probs, old, mask, "sequence")
    # Row 0: mean(log 2, log 0.5) = 0 over its 2 valid tokens (the third is padding); row 1: log(1.2) / 3.
    torch.testing.assert_close(weights, torch.tensor([[0.0], [math.log(1.2) / 3]]))
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    per_token, _ = ppo_math.clipped_surrogate(log_probs, old, advantages, mask, 0.01, level="sequence")
    ratio = 1.2 ** (1 / 3)  # > 1.01: with A < 0 the unclipped term is the min's argmax
    torch.testing.assert_close(per_token, torch.tensor([[-1.0] * 3, [ratio] * 3]))
    # delta caps the unclipped ratio: ratio 3 with A = −1 gives −min(−3, −1.2) = 3; with δ = 2, 2.
    three = torch.log(torch.tensor([[3.0]]))
    one = torch.ones(1, 1, dtype=torch.bool)
    plain, _ = ppo_math.clipped_surrogate(three, torch.zeros(1, 1), -torch.ones(1, 1), one, 0.2)
    capped, _ = ppo_math.clipped_surrogate(three, torch.zeros(1, 1), -torch.ones(1, 1), one, 0.2, delta=2.0)
    assert float(plain) == pytest.approx(3.0) and float(capped) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="importance_sampling_level"):
        ppo_math.importance_log_weights(log_probs, old, mask, "word")


def test_rollout_importance_weights_by_hand():
    learner = torch.log(torch.tensor([[0.5, 0.9, 0.3], [0.2, 0.2, 0.2]]))
    rollout = torch.log(torch.tensor([[0.1, 0.9, 0.6], [0.2, 0.1, 0.2]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    token = ppo_math.rollout_importance_weights(learner, rollout, mask, "token_truncate", 2.0)
    torch.testing.assert_close(token, torch.tensor([[2.0, 1.0, 0.5], [1.0, 2.0, 0.0]]))  # 5 → 2 (TIS)
    masked = ppo_math.rollout_importance_weights(learner, rollout, mask, "token_mask", 2.0)
    torch.testing.assert_close(masked, torch.tensor([[0.0, 1.0, 0.5], [1.0, 2.0, 0.0]]))
    sequence = ppo_math.rollout_importance_weights(learner, rollout, mask, "sequence_truncate", 3.0)
    torch.testing.assert_close(sequence, torch.tensor([[2.5, 2.5, 2.5], [2.0, 2.0, 0.0]]))  # 5·1·0.5 and 1·2
    sequence = ppo_math.rollout_importance_weights(learner, rollout, mask, "sequence_mask", 2.2)
    torch.testing.assert_close(sequence, torch.tensor([[0.0, 0.0, 0.0], [2.0, 2.0, 0.0]]))
    with pytest.raises(ValueError, match="rollout_is_mode"):
        ppo_math.rollout_importance_weights(learner, rollout, mask, "always", 2.0)


def test_overlong_punishment_by_hand_and_against_trl():
    from trl.rewards import get_soft_overlong_punishment

    term = OverlongTerm(max_length=10, cache=4)
    lengths = [1, 6, 7, 8, 10, 11]
    infos = [{"episode": {"l": n}} for n in lengths]
    ours = term([""] * 6, [None] * 6, [""] * 6, infos)
    np.testing.assert_allclose(ours, [0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    theirs = get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=4)([[1] * n for n in lengths])
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    wrapper = from_config([{"type": "overlong", "max_length": 10, "cache": 4}])
    rewards, components = wrapper(np.ones(6, np.float32), [""] * 6, [None] * 6, [""] * 6, infos)
    np.testing.assert_allclose(rewards, 1.0 + ours)
    np.testing.assert_allclose(components["overlong"], ours)
    with pytest.raises(ValueError, match="max_new_tokens"):
        OverlongTerm(max_length=4, cache=8)


def test_reinforce_pp_baseline_centres_scores_then_shapes_then_whitens(tiny_dir, tiny_lm):
    """OpenRLHF's order: score − group mean, then −β·KL per token and returns-to-go, then
    whitening over every token of the batch."""
    agent = make("reinforce_pp_baseline", tiny_dir, tiny_lm[1], beta=0.5)
    with torch.no_grad():  # a policy apart from its reference, so the KL term is not 0
        for param in agent.policy.model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(0)))
    agent.learn(total_iterations=1)
    buffer = agent.buffer
    assert float(buffer.kl.abs().sum()) > 1e-3
    scores = buffer.env_rewards.view(-1, 4)
    centred = (scores - scores.mean(1, keepdim=True)).reshape(-1)
    torch.testing.assert_close(buffer.sequence_rewards, centred)
    rewards = -0.5 * buffer.kl * buffer.mask
    last = buffer.mask.sum(-1) - 1
    rewards[torch.arange(8), last] += centred
    expected = ppo_math.masked_whiten(ppo_math.returns_to_go(rewards, buffer.mask), buffer.mask)
    torch.testing.assert_close(buffer.advantages, expected)
    with pytest.raises(ValueError, match="completions_per_prompt >= 2"):
        REINFORCEPlusPlus(
            "CausalLMPolicy", make_env(tiny_lm[1], group=1), baseline="group", policy_kwargs=dict(model=str(tiny_dir))
        )


# -- dynamic sampling ----------------------------------------------------------------------------------
class Batches(BaseCallback):
    """Per iteration: the rewards trained on and the ``dapo/*`` statistics."""

    def __init__(self):
        super().__init__()
        self.trained, self.stats = [], []

    def _on_step(self):
        return True

    def _on_rollout_end(self):
        self.trained.append(self.model.buffer.env_rewards.clone())
        self.stats.append(dict(self.model._sampling_stats))


def test_dynamic_sampling_keeps_groups_that_teach_and_logs_what_it_did(tiny_dir, tiny_lm, monkeypatch):
    from agents import core

    agent = make("dynamic_sampling", tiny_dir, tiny_lm[1], lora=LORA, num_envs=8)
    sampled = []
    collect = core.collect_episodes

    def recording(*args, **kwargs):
        episodes, obs = collect(*args, **kwargs)
        sampled.append(episodes.env_rewards.clone().view(-1, 4))
        return episodes, obs

    monkeypatch.setattr(core, "collect_episodes", recording)
    track = Batches()
    agent.learn(total_iterations=4, callback=track)
    extras = [int(s["dapo/extra_rollouts"]) for s in track.stats]
    assert len(sampled) == 4 + sum(extras) and max(extras) <= 3
    ties = torch.cat([(g.max(1).values == g.min(1).values) for g in sampled])
    assert ties.any() and (~ties).any()  # a 0/1 task: some groups tie, some do not
    start = 0
    for rewards, stats, extra in zip(track.trained, track.stats, extras):
        batches = torch.cat(sampled[start : start + 1 + extra])
        start += 1 + extra
        informative = batches.max(1).values > batches.min(1).values
        assert stats["dapo/kept_fraction"] == pytest.approx(float(informative.float().mean()))
        groups = rewards.view(-1, 4)
        kept = int((groups.max(1).values > groups.min(1).values).sum())
        assert kept == min(2, int(informative.sum())) and stats["dapo/filled_groups"] == 2 - kept
        assert extra == 3 or kept == 2  # more batches only while short, up to the cap
        assert extra == 0 or int(informative[:-4].sum()) < 2  # and never once full
    assert agent.last_iteration_stats["dapo/extra_rollouts"] == extras[-1]


# -- the rollout-versus-update correction ---------------------------------------------------------------
def test_recomputed_log_probs_equal_the_rollouts_in_fp32_and_the_mismatch_is_logged(tiny_dir, tiny_lm):
    agent = make("overlong", tiny_dir, tiny_lm[1], recompute_log_probs=True, beta=0.05)
    agent.learn(total_iterations=1)
    buffer, stats = agent.buffer, agent.last_iteration_stats
    assert buffer.rollout_log_probs is not None and buffer.is_weights is not None
    torch.testing.assert_close(buffer.log_probs, buffer.rollout_log_probs, atol=1e-4, rtol=1e-4)
    assert stats["rollout/logprob_diff"] < 1e-4 and stats["rollout/is_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    assert stats["policy/first_minibatch_ratio_max_dev"] < 1e-4
    plain = make("overlong", tiny_dir, tiny_lm[1])  # off by default in fp32: logged from the first minibatch
    plain.learn(total_iterations=1)
    assert plain.buffer.rollout_log_probs is None and 0 <= plain.last_iteration_stats["rollout/logprob_diff"] < 1e-4


def test_truncated_importance_sampling_scales_the_advantages(tiny_dir, tiny_lm):
    """A sampler that disagrees with the learner (its log-probs shifted): the advantages the
    update sees are the estimator's times min(π_learner / π_rollout, C)."""
    agent = make("overlong", tiny_dir, tiny_lm[1], recompute_log_probs=True, rollout_is_cap=1.5)
    from agents.rollout import collect_episodes

    episodes, _ = collect_episodes(agent.policy, agent.env)
    shift = torch.where(torch.arange(episodes.log_probs.shape[1]) % 2 == 0, -0.7, 0.3) * episodes.action_mask
    episodes.log_probs = episodes.log_probs + shift  # as a bf16 kernel or an engine might report
    buffer = agent.process_episodes(episodes)
    expected_weights = torch.exp(-shift).clamp(max=1.5) * episodes.action_mask
    torch.testing.assert_close(buffer.is_weights, expected_weights, atol=1e-4, rtol=1e-4)
    unweighted = group_math.broadcast_to_tokens(
        group_math.group_advantages((buffer.token_rewards * buffer.mask).sum(-1), 4, "group"), buffer.mask
    )
    torch.testing.assert_close(buffer.advantages, unweighted * buffer.is_weights)


# -- each new piece learns and resumes ------------------------------------------------------------------
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_each_new_piece_learns_the_binary_task(recipe, tiny_dir, tiny_lm):
    """reward = 1 if the completion says 7 (less the overlong penalty where it applies)."""
    agent = make(recipe, tiny_dir, tiny_lm[1], num_envs=16)
    track = score_tracker()
    agent.learn(total_iterations=16, callback=track)
    start, end = np.mean(track.scores[:3]), np.mean(track.scores[-3:])
    assert end > start + 0.3, track.scores
    if recipe != "overlong":  # (there most completions still pay for running into the budget)
        assert end > 0.5, track.scores


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_each_new_piece_resumes_bit_exactly(recipe, tiny_dir, tiny_lm, tmp_path):
    straight = make(recipe, tiny_dir, tiny_lm[1], lora=LORA, seed=1)
    torch.manual_seed(123)
    straight.learn(total_iterations=4)
    first = make(recipe, tiny_dir, tiny_lm[1], lora=LORA, seed=1)
    torch.manual_seed(123)
    first.learn(total_iterations=2)
    first.save(tmp_path / "half")
    del first
    torch.manual_seed(999)
    np.random.seed(5)
    cls, _, wrappers = RECIPES[recipe]
    resumed = cls.load(tmp_path / "half", env=make_env(tiny_lm[1], seed=77, wrappers=wrappers))
    resumed.learn(total_iterations=4, reset_num_timesteps=False)
    assert resumed.num_timesteps == straight.num_timesteps and resumed.iteration == 4
    for (key, a), b in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(a, b), key


# -- selectable from the config --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "recipe, cls_name, key, value",
    [
        ("gspo", "GRPO", "importance_sampling_level", "sequence"),
        ("dapo", "GRPO", "dynamic_sampling", True),
        ("reinforce_pp_baseline", "REINFORCEPlusPlus", "baseline", "group"),
    ],
)
def test_recipes_compose_to_their_agent_class(recipe, cls_name, key, value):
    import sys

    from helpers import REPO

    sys.path.insert(0, str(REPO / "experiments"))
    import run_ppo
    from config import compose

    cfg = compose([f"agent={recipe}", "output_dir=/tmp/x"])
    assert cfg.agent.name == recipe and cfg.agent[key] == value and cfg.env.completions_per_prompt == 4
    assert run_ppo.agent_class(cfg).__name__ == cls_name


def test_recomputation_is_on_by_default_in_half_precision_only(tiny_dir, tiny_lm):
    from policies import load_lm

    model, tokenizer = load_lm(str(tiny_dir), dtype="bfloat16")
    half = GRPO("CausalLMPolicy", make_env(tokenizer), policy_kwargs=dict(model=model))
    full = GRPO("CausalLMPolicy", make_env(tokenizer), policy_kwargs=dict(model=str(tiny_dir)))
    assert half._recomputes_log_probs() and not full._recomputes_log_probs()
    forced = GRPO("CausalLMPolicy", make_env(tokenizer), policy_kwargs=dict(model=model), recompute_log_probs=False)
    assert not forced._recomputes_log_probs()
    with pytest.raises(ValueError, match="rollout_is_mode"):
        GRPO("CausalLMPolicy", make_env(tokenizer), policy_kwargs=dict(model=str(tiny_dir)), rollout_is_mode="tis")
