"""Reward wrappers: one implementation behind the gym and vec wrappers, components, state, config, PPO."""

import sys

import numpy as np
import pytest
from helpers import REPO, echo_task
from omegaconf import OmegaConf
from stable_baselines3.common.vec_env import DummyVecEnv

import rewards
from agents import PPO, evaluate_policy
from lm_envs import TokenEnv, TokenVecEnv
from lm_envs.reward_wrappers import (
    AddTerms,
    Clip,
    Compose,
    InfoTerm,
    LengthTerm,
    Normalize,
    ReplaceReward,
    RewardWrapper,
    Scale,
    ScoreGate,
    VecRewardWrapper,
    apply_transform,
    from_config,
)

sys.path.insert(0, str(REPO / "experiments"))
from config import compose  # noqa: E402

KW = dict(max_new_tokens=4, max_prompt_tokens=16)


@pytest.fixture
def tokenizer(tiny_lm):
    return tiny_lm[1]


def count_sevens(completions, references, prompts=None):
    return np.array([c.split().count("7") for c in completions], dtype=np.float32)


def shaping():
    """Terms of all three kinds (RewardFn, Reward, info-reading term), then scale and clip."""
    return Compose(
        [
            AddTerms(
                {
                    "sevens": (count_sevens, 0.5),
                    "length": (LengthTerm(), -0.1),
                    "format": (rewards.make("gsm8k-format", bonus=1.0), 0.3),
                }
            ),
            Scale(2.0),
            Clip(-0.7, 4.0),
        ]
    )


def random_actions(rng, n, tokenizer):
    actions = rng.integers(3, len(tokenizer), size=n)
    actions[rng.random(n) < 0.3] = tokenizer.convert_tokens_to_ids("7")
    actions[rng.random(n) < 0.15] = tokenizer.eos_token_id
    return actions


def test_gym_and_vec_wrappers_give_the_same_numbers(tokenizer):
    task, n = echo_task(), 4
    ours = VecRewardWrapper(TokenVecEnv(task, tokenizer, num_envs=n, autoreset=True, **KW), shaping())
    dummy = DummyVecEnv([lambda: RewardWrapper(TokenEnv(task, tokenizer, **KW), shaping()) for _ in range(n)])
    ours.seed(11), dummy.seed(11)
    ours.reset(), dummy.reset()
    rng = np.random.default_rng(0)
    ended, changed = 0, 0
    for _ in range(30):
        actions = random_actions(rng, n, tokenizer)
        _, rew_a, done_a, info_a = ours.step(actions)
        _, rew_b, done_b, info_b = dummy.step(actions)
        np.testing.assert_array_equal(rew_a, rew_b)
        np.testing.assert_array_equal(done_a, done_b)
        for row in np.flatnonzero(done_a):
            a, b = info_a[row], info_b[row]
            assert a["reward_components"] == b["reward_components"]
            assert set(a["reward_components"]) == {"score", "sevens", "length", "format"}
            assert a["episode"]["r"] == b["episode"]["r"] == rew_a[row]
            assert a["score"] == b["score"] == task.reward([a["completion"]], None)[0]  # the raw task score
            assert a["reward_components"]["score"] == a["score"]
            ended += 1
            changed += a["episode"]["r"] != a["score"]
    assert ended > 10 and changed > 5  # the comparison saw many episodes, and the transform did something


def test_components_and_shaping_arithmetic(tokenizer):
    seven = tokenizer.convert_tokens_to_ids("7")
    env = RewardWrapper(TokenEnv(echo_task(), tokenizer, **KW), shaping())
    env.reset(seed=0)
    for action in (seven, seven, 5):
        _, reward, terminated, truncated, info = env.step(action)
        assert reward == 0 and "reward_components" not in info  # nothing until the episode ends
    _, reward, terminated, truncated, info = env.step(seven)
    assert truncated and info["completion"].split().count("7") == 3
    parts = info["reward_components"]
    assert parts["score"] == pytest.approx(3 / 4) and info["score"] == pytest.approx(3 / 4)
    assert parts["sevens"] == pytest.approx(1.5) and parts["length"] == pytest.approx(-0.4)
    assert parts["format"] == 0.0
    assert reward == pytest.approx(2 * (0.75 + 1.5 - 0.4)) == info["episode"]["r"]


def test_vec_wrapper_calls_once_per_step_and_leaves_waiting_rows_alone(tokenizer):
    calls = []

    def spy(scores, completions, references, prompts, infos):
        calls.append(len(scores))
        return scores + 10, {"bonus": np.full(len(scores), 10.0)}

    env = VecRewardWrapper(TokenVecEnv(echo_task(), tokenizer, num_envs=4, seed=0, **KW), spy)
    env.reset()
    actions = np.array([tokenizer.eos_token_id, 5, 6, 7])
    _, rew, done, infos = env.step(actions)
    assert calls == [1] and done[0] and rew[0] == 10 and infos[0]["reward_components"] == {"score": 0.0, "bonus": 10}
    for _ in range(3):
        _, rew, done, infos = env.step(actions)
        assert infos[0]["waiting"] and rew[0] == 0 and "reward_components" not in infos[0]
    assert calls == [1, 3] and done[1:].all() and (rew[1:] >= 10).all()


def test_replace_reward_keeps_the_task_score(tokenizer):
    replaced = ReplaceReward(
        lambda completions, references, prompts=None: np.full(len(completions), -2.0), name="constant"
    )
    env = VecRewardWrapper(TokenVecEnv(echo_task(), tokenizer, num_envs=2, seed=0, **KW), replaced)
    env.reset()
    seven = tokenizer.convert_tokens_to_ids("7")
    for _ in range(4):
        _, rew, done, infos = env.step(np.array([seven, seven]))
    assert done.all() and (rew == -2).all()
    assert infos[0]["score"] == 1.0 and infos[0]["reward_components"] == {"score": 1.0, "constant": -2.0}


def test_info_term_is_a_hook_for_env_reported_costs():
    infos = [
        {"completion": "a", "score": 1.0, "pauses": 3, "episode": {"r": 1.0, "l": 1}},
        {"completion": "b", "score": 0.0, "episode": {"r": 0.0, "l": 1}},
    ]
    rew, out = apply_transform(
        AddTerms({"pauses": (InfoTerm("pauses"), -0.25)}),
        np.array([1.0, 0.0, 5.0]),
        infos + [{"waiting": True}],
        [0, 1],
    )
    np.testing.assert_allclose(rew, [0.25, 0.0, 5.0])
    assert out[0]["reward_components"] == {"score": 1.0, "pauses": -0.75} and out[2] == {"waiting": True}
    assert infos[0]["episode"]["r"] == 1.0 and "reward_components" not in infos[0]  # inputs not mutated


def test_score_gate_scores_only_episodes_that_reach_the_task_score():
    """A term behind ``min_score`` is computed on the episodes whose raw task score reaches it and is
    0 on the others: two failures (score 0) stay tied whatever the term thinks of them."""
    seen = []

    def term(completions, references, prompts):
        seen.append(list(completions))
        return [-float(len(c)) for c in completions]

    infos = [
        {"completion": c, "score": s, "prompt": "p", "episode": {"r": s, "l": 1}}
        for c, s in (("ab", 0.2), ("abcd", 0.0), ("abc", 1.0), ("a", 0.0))
    ]
    rewards = np.array([info["score"] for info in infos])
    rew, out = apply_transform(AddTerms({"d": (ScoreGate(term, 0.2), 0.1)}), rewards, infos, [0, 1, 2, 3])
    np.testing.assert_allclose(rew, [0.2 - 0.2, 0.0, 1.0 - 0.3, 0.0], atol=1e-6)
    assert seen == [["ab", "abc"]]  # not computed on the gated-out episodes
    assert [o["reward_components"]["d"] for o in out] == pytest.approx([-0.2, 0.0, -0.3, 0.0])
    seen.clear()
    none = apply_transform(AddTerms({"d": (ScoreGate(term, 2.0), 1.0)}), rewards, infos, [0, 1, 2, 3])[0]
    np.testing.assert_allclose(none, rewards)  # nobody reaches it: the term is never called
    assert seen == []
    (add,) = from_config(
        [{"type": "add_terms", "terms": {"len": {"term": "length", "unit": "chars", "weight": 1, "min_score": 0.5}}}]
    ).transforms
    gated = add.terms["len"][0]
    assert isinstance(gated, ScoreGate) and gated.min_score == 0.5 and isinstance(gated.term, LengthTerm)
    np.testing.assert_allclose(apply_transform(add, rewards, infos, [0, 1, 2, 3])[0], [0.2, 0.0, 4.0, 0.0])


def test_stacked_wrappers_keep_inner_components(tokenizer):
    inner = VecRewardWrapper(
        TokenVecEnv(echo_task(), tokenizer, num_envs=2, seed=0, **KW), AddTerms({"len": (LengthTerm("chars"), 1.0)})
    )
    outer = VecRewardWrapper(inner, Scale(3.0))
    outer.reset()
    for _ in range(4):
        _, rew, done, infos = outer.step(np.array([5, 6]))
    parts = infos[0]["reward_components"]
    assert set(parts) == {"score", "len"} and rew[0] == pytest.approx(3 * (parts["score"] + parts["len"]))


# -- Normalize and state ------------------------------------------------------------------------
def test_normalize_statistics_and_state_round_trip():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=k).astype(np.float32) for k in (5, 1, 17, 8)]
    norm = Normalize()
    for batch in batches[:-1]:
        norm(batch, [], [], [], [])
    seen = np.concatenate(batches[:-1]).astype(np.float64)
    assert norm.count == seen.size and norm.mean == pytest.approx(seen.mean()) and norm.var == pytest.approx(seen.var())
    restored = Normalize()
    restored.load_state_dict(norm.state_dict())
    np.testing.assert_array_equal(norm(batches[-1], [], [], [], [])[0], restored(batches[-1], [], [], [], [])[0])
    assert not np.allclose(Normalize()(batches[-1], [], [], [], [])[0], restored(batches[-1], [], [], [], [])[0])
    frozen = Normalize(update=False)
    frozen.load_state_dict(norm.state_dict())
    out, _ = frozen(np.array([norm.mean], dtype=np.float32), [], [], [], [])
    assert out[0] == pytest.approx(0.0, abs=1e-5) and frozen.count == norm.count
    clipped, _ = Normalize(clip=0.5)(np.array([0.0, 100.0]), [], [], [], [])
    assert np.abs(clipped).max() == pytest.approx(0.5)


def test_normalize_sync_merges_every_ranks_moments_in_rank_order():
    """Two "ranks" see different batches; after `sync` (a fake all-gather) both hold the statistics
    of everything seen so far, and a second round merges onto the first sync's."""
    rng = np.random.default_rng(1)
    ranks = [Compose([Normalize()]), Compose([Normalize()])]
    everything = []
    for _ in range(2):
        for norm in ranks:
            for k in (3, 5):
                batch = rng.normal(2.0, 3.0, size=k)
                norm(batch, [], [], [], [])
                everything.append(batch)
        assert ranks[0].transforms[0].count != 16 or ranks[1].transforms[0].count != 16
        pendings = [norm.transforms[0]._pending for norm in ranks]
        for norm in ranks:
            norm.sync(lambda obj, pendings=pendings: list(pendings))
        assert ranks[0].state_dict() == ranks[1].state_dict()
        seen = np.concatenate(everything)
        stats = ranks[0].transforms[0]
        assert stats.count == seen.size and stats._pending[2] == 0
        assert stats.mean == pytest.approx(seen.mean(), rel=1e-12) and stats.var == pytest.approx(seen.var(), rel=1e-12)
    restored = Normalize()
    restored.load_state_dict(ranks[0].transforms[0].state_dict())
    assert restored.state_dict() == ranks[0].transforms[0].state_dict()
    legacy = Normalize()
    legacy.load_state_dict({"mean": 1.0, "var": 4.0, "count": 3})  # a state written before sync existed
    legacy.sync(lambda obj: [obj])
    assert (legacy.mean, legacy.var, legacy.count) == (1.0, 4.0, 3)


def test_vec_wrapper_state_includes_the_transform(tokenizer):
    def make():
        return VecRewardWrapper(TokenVecEnv(echo_task(), tokenizer, num_envs=2, seed=0, **KW), Compose([Normalize()]))

    env = make()
    env.reset()
    for _ in range(8):
        env.step(np.array([5, 7]))
    state = env.env_method("get_state", indices=[0])[0]
    assert state["reward_transforms"] == [
        {
            "0": {
                "mean": env.transform.transforms[0].mean,
                "var": env.transform.transforms[0].var,
                "count": 4,
                "synced": [0.0, 1.0, 0],
                "pending": [0.0, 0.0, 4],
            }
        }
    ]
    fresh = make()
    fresh.env_method("set_state", state, indices=[0])
    assert fresh.transform.state_dict() == env.transform.state_dict()
    assert fresh.get_sampler_state()[0]["position"] == env.get_sampler_state()[0]["position"]
    plain = TokenVecEnv(echo_task(), tokenizer, num_envs=2, seed=0, **KW)
    plain.set_state(state)  # the wrapped state is a superset of the plain one
    np.testing.assert_array_equal(plain.batch.input_ids, env.venv.batch.input_ids)


# -- configuration ------------------------------------------------------------------------------
def test_from_config_builds_the_shipped_defaults():
    cfg = compose(["env.id=lm_envs/GSM8K-v0"])
    transform = from_config(OmegaConf.to_container(cfg.env.reward_wrappers))
    (add,) = transform.transforms
    assert isinstance(add, AddTerms) and add.terms["format"][1] == 0.1
    infos = [{"completion": c, "score": 0.0, "episode": {"r": 0.0, "l": 3}} for c in ("so\n#### 5", "5")]
    rew, out = apply_transform(transform, np.zeros(2), infos, [0, 1])
    np.testing.assert_allclose(rew, [0.1, 0.0])
    assert out[0]["reward_components"]["format"] == pytest.approx(0.1)
    # the default run (Toxicity): -1 for a continuation under 16 tokens
    (short,) = from_config(OmegaConf.to_container(compose([]).env.reward_wrappers)).transforms
    infos = [{"completion": "x", "score": 0.9, "episode": {"r": 0.9, "l": n}} for n in (3, 16)]
    rew, out = apply_transform(short, np.full(2, 0.9), infos, [0, 1])
    np.testing.assert_allclose(rew, [-0.1, 0.9], rtol=1e-6)
    assert out[0]["reward_components"]["too_short"] == pytest.approx(-1.0)


@pytest.mark.parametrize(
    "override,kinds",
    [
        ("env.reward_wrappers=[{type: scale, factor: 2.0}]", ["Scale"]),
        ("env.reward_wrappers=[]", []),
        (
            "env.reward_wrappers=[{type: add_terms, terms: {format: {reward: gsm8k-format, kwargs: {bonus: 1.0}, "
            "weight: 0.2}, length: {term: length, weight: -0.001}}}, {type: clip, low: -1, high: 1}, "
            "{type: normalize}]",
            ["AddTerms", "Clip", "Normalize"],
        ),
        ("env.reward_wrappers=[{type: replace, reward: toxicity}]", ["ReplaceReward"]),
    ],
)
def test_one_cli_override_swaps_the_wrappers(override, kinds):
    cfg = compose([override])
    transform = from_config(OmegaConf.to_container(cfg.env.reward_wrappers))
    assert [type(t).__name__ for t in transform.transforms] == kinds
    if kinds == ["Scale"]:
        assert transform.transforms[0].factor == 2.0


def test_from_config_errors_are_clear():
    with pytest.raises(ValueError, match=r"unknown type 'sclae'.*scale"):
        from_config([{"type": "sclae", "factor": 2}])
    with pytest.raises(ValueError, match=r"\(scale\).*factr"):
        from_config([{"type": "scale", "factr": 2}])
    with pytest.raises(ValueError, match="term 'x'"):
        from_config([{"type": "add_terms", "terms": {"x": {"weight": 1}}}])
    with pytest.raises(ValueError, match="unknown reward"):
        from_config([{"type": "replace", "reward": "nope"}])


# -- agents through a wrapped env ---------------------------------------------------------------
def test_ppo_trains_saves_and_resumes_through_a_wrapped_env(tiny_dir, tokenizer, tmp_path):
    def make():
        env = TokenVecEnv(echo_task(), tokenizer, num_envs=8, max_new_tokens=6, max_prompt_tokens=16, seed=0)
        return VecRewardWrapper(env, Compose([AddTerms({"length": (LengthTerm(), -0.01)}), Normalize()]))

    agent = PPO(
        "CausalLMPolicy",
        make(),
        batch_size=4,
        n_epochs=1,
        learning_rate=1e-3,
        seed=0,
        policy_kwargs=dict(model=str(tiny_dir)),
    )
    agent.learn(8 * 6)
    stats = agent.last_iteration_stats
    assert agent.iteration == 1
    assert -0.061 <= stats["rewards/length/mean"] <= -0.01 and 0 <= stats["rewards/score/mean"] <= 1
    # PPO learns from the transformed rewards; the raw task score stays in the infos.
    shaped = [info["episode"]["r"] for info in agent.buffer.infos]
    np.testing.assert_allclose(agent.buffer.env_rewards.cpu().numpy(), shaped, rtol=1e-6)
    assert stats["objective/scores"] == pytest.approx(np.mean(shaped), abs=1e-6)
    assert not np.allclose(shaped, [info["score"] for info in agent.buffer.infos])
    agent.save(tmp_path / "ckpt")
    loaded = PPO.load(tmp_path / "ckpt", env=make())
    assert loaded.env.transform.state_dict() == agent.env.transform.state_dict()
    assert loaded.env.transform.transforms[1].count == 8
    loaded.learn(8 * 6, reset_num_timesteps=False)
    assert loaded.iteration == 2 and loaded.env.transform.transforms[1].count == 16


def test_evaluation_reports_the_task_score_under_wrappers(tiny_dir, tokenizer):
    from policies import CausalLMPolicy

    plain = TokenVecEnv(echo_task(), tokenizer, num_envs=4, max_new_tokens=6, max_prompt_tokens=16)
    wrapped = VecRewardWrapper(
        TokenVecEnv(echo_task(), tokenizer, num_envs=4, max_new_tokens=6, max_prompt_tokens=16),
        Compose([AddTerms({"bonus": (lambda c, r, p=None: np.ones(len(c)), 1.0)}), Scale(10.0)]),
    )
    policy = CausalLMPolicy(
        plain.observation_space, plain.action_space, lambda _: 0.0, model=str(tiny_dir), reference=False
    )
    base, base_samples = evaluate_policy(policy, plain, 8)
    shaped, samples = evaluate_policy(policy, wrapped, 8)
    assert shaped["score_mean"] == pytest.approx(base["score_mean"])
    assert shaped["reward_mean"] == pytest.approx(10 * (base["score_mean"] + 1))
    assert shaped["rewards/bonus/mean"] == 1.0 and base["reward_mean"] == pytest.approx(base["score_mean"])
    assert [s["completion"] for s in samples] == [s["completion"] for s in base_samples]
    assert all(s["reward"] == pytest.approx(10 * (s["score"] + 1)) for s in samples)
