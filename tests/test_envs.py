"""TokenEnv / TokenVecEnv: checkers, MDP semantics, DummyVecEnv parity, bad input."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from helpers import echo_task
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv

import lm_envs
from lm_envs import PromptSampler, Task, TokenEnv, TokenVecEnv


@pytest.fixture
def tokenizer(tiny_lm):
    return tiny_lm[1]


def test_env_checkers_pass(tokenizer):
    env = TokenEnv(echo_task(), tokenizer, max_new_tokens=5, max_prompt_tokens=16)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


def test_registered_gsm8k_env_passes_checkers(tokenizer):
    env = gym.make(
        "lm_envs/GSM8K-v0",
        tokenizer=tokenizer,
        split="test",
        max_new_tokens=4,
        max_prompt_tokens=400,
        truncate_prompt="left",
    )
    gym_check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert "Solve step by step" in info["prompt"]
    _, reward, terminated, truncated, info = env.step(5)
    assert reward == 0 and not terminated and not truncated and info == {}


def test_episode_semantics(tokenizer):
    env = TokenEnv(echo_task(), tokenizer, max_new_tokens=3, max_prompt_tokens=16)
    seven = tokenizer.convert_tokens_to_ids("7")
    obs, info = env.reset(seed=3)
    P = 16
    assert obs["attention_mask"][:P].sum() == obs["prompt_length"][0] > 0
    assert obs["attention_mask"][P:].sum() == 0 and obs["policy_mask"].sum() == 0
    obs, reward, terminated, truncated, info = env.step(seven)
    assert (reward, terminated, truncated, info) == (0.0, False, False, {})
    assert obs["input_ids"][P] == seven and obs["policy_mask"][P] == 1 and obs["num_generated"][0] == 1
    env.step(seven)
    obs, reward, terminated, truncated, info = env.step(5)
    assert truncated and not terminated
    assert reward == pytest.approx(2 / 3)
    assert info["completion"].split() == ["7", "7", tokenizer.convert_ids_to_tokens(5)]
    assert info["reference"] == env.task.references[env.batch.row_index[0]]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(5)
    # EOS terminates immediately and is not part of the text.
    env.reset()
    _, reward, terminated, truncated, info = env.step(tokenizer.eos_token_id)
    assert terminated and not truncated and info["completion"] == "" and reward == 0


def test_stop_strings_terminate(tokenizer):
    env = TokenEnv(echo_task(), tokenizer, max_new_tokens=6, max_prompt_tokens=16, stop_strings=["!"])
    env.reset(seed=0)
    env.step(tokenizer.convert_tokens_to_ids("7"))
    _, reward, terminated, _, info = env.step(tokenizer.convert_tokens_to_ids("!"))
    assert terminated and info["completion"].strip() == "7" and reward == 1.0


def test_vocab_size_larger_than_tokenizer(tokenizer):
    V = len(tokenizer) + 10
    env = TokenEnv(echo_task(), tokenizer, max_new_tokens=2, max_prompt_tokens=16, vocab_size=V)
    assert env.action_space.n == V
    env.reset(seed=0)
    env.step(V - 1)
    *_, truncated, info = env.step(V - 2)
    assert truncated and info["completion"] == ""
    with pytest.raises(ValueError, match="actions must be"):
        env.reset()
        env.step(V)


def random_actions(rng, n, tokenizer):
    actions = rng.integers(3, len(tokenizer), size=n)
    actions[rng.random(n) < 0.2] = tokenizer.eos_token_id  # some episodes end early
    return actions


def test_autoreset_matches_dummy_vec_env(tokenizer):
    task, n = echo_task(), 4
    kwargs = dict(max_new_tokens=4, max_prompt_tokens=16)
    ours = TokenVecEnv(task, tokenizer, num_envs=n, autoreset=True, **kwargs)
    dummy = DummyVecEnv([lambda: TokenEnv(task, tokenizer, **kwargs) for _ in range(n)])
    ours.seed(7), dummy.seed(7)
    obs_a, obs_b = ours.reset(), dummy.reset()
    rng = np.random.default_rng(0)
    for _ in range(20):
        for key in obs_a:
            np.testing.assert_array_equal(obs_a[key], obs_b[key])
        actions = random_actions(rng, n, tokenizer)
        obs_a, rew_a, done_a, info_a = ours.step(actions)
        obs_b, rew_b, done_b, info_b = dummy.step(actions)
        np.testing.assert_array_equal(rew_a, rew_b)
        np.testing.assert_array_equal(done_a, done_b)
        for a, b in zip(info_a, info_b):
            assert a.keys() == b.keys()
            for key in a:
                if key == "terminal_observation":
                    for k in a[key]:
                        np.testing.assert_array_equal(a[key][k], b[key][k])
                elif key not in ("episode", "reward_time"):  # wall-clock measurements differ run to run
                    assert a[key] == b[key]
    assert ours.get_sampler_state()[0]["position"] == dummy.envs[0].sampler.position


def test_lockstep_matches_dummy_until_each_row_ends_then_waits(tokenizer):
    task, n = echo_task(), 4
    kwargs = dict(max_new_tokens=5, max_prompt_tokens=16)
    ours = TokenVecEnv(task, tokenizer, num_envs=n, **kwargs)
    dummy = DummyVecEnv([lambda: TokenEnv(task, tokenizer, **kwargs) for _ in range(n)])
    ours.seed(3), dummy.seed(3)
    obs_a, obs_b = ours.reset(), dummy.reset()
    first_prompts = obs_a["input_ids"].copy()
    ended = np.zeros(n, dtype=bool)
    actions = np.array([2, 5, 6, 7])  # row 0 ends at once (EOS), others run to the budget
    for step in range(5):
        obs_a, rew_a, done_a, info_a = ours.step(actions)
        obs_b, rew_b, done_b, info_b = dummy.step(actions)
        live = ~ended
        np.testing.assert_array_equal(rew_a[live], rew_b[live])
        np.testing.assert_array_equal(done_a[live], done_b[live])
        for row in np.flatnonzero(ended):  # waiting rows: frozen, reward 0, not done
            assert info_a[row]["waiting"] and not done_a[row] and rew_a[row] == 0
        ended |= done_a
        if step < 4:
            np.testing.assert_array_equal(
                obs_a["input_ids"][0],
                info_a[0].get("terminal_observation", {"input_ids": obs_a["input_ids"][0]})["input_ids"],
            )
    assert ended.all()
    # The last step reset the whole batch together: fresh prompts, nothing generated.
    assert (obs_a["num_generated"] == 0).all() and not np.array_equal(obs_a["input_ids"], first_prompts)


def test_completions_per_prompt_groups_rows(tokenizer):
    env = TokenVecEnv(
        echo_task(), tokenizer, num_envs=6, completions_per_prompt=3, max_new_tokens=2, max_prompt_tokens=16, seed=0
    )
    obs = env.reset()
    ids = obs["input_ids"]
    assert (ids[0] == ids[1]).all() and (ids[1] == ids[2]).all() and (ids[3] == ids[5]).all()
    assert not (ids[0] == ids[3]).all()
    with pytest.raises(ValueError, match="multiple"):
        TokenVecEnv(echo_task(), tokenizer, num_envs=5, completions_per_prompt=2)


def test_envs_coexist_and_sampler_state_round_trips(tokenizer):
    train = TokenVecEnv(echo_task(), tokenizer, num_envs=2, max_new_tokens=2, max_prompt_tokens=16, seed=1)
    evaluation = TokenVecEnv(echo_task(), tokenizer, num_envs=2, max_new_tokens=2, max_prompt_tokens=16, seed=2)
    train.reset(), evaluation.reset()
    state = train.get_sampler_state()
    nxt = train.reset()
    train.set_sampler_state(state)
    np.testing.assert_array_equal(train.reset()["input_ids"], nxt["input_ids"])
    sampler = PromptSampler(5, seed=0)
    seen = [sampler.next_index() for _ in range(5)]
    assert sorted(seen) == list(range(5))  # one epoch without replacement


def test_gym_make_and_make_vec_share_the_task(tokenizer):
    vec = lm_envs.make_vec(
        "lm_envs/GSM8K-v0",
        2,
        tokenizer,
        split="test",
        max_new_tokens=3,
        max_prompt_tokens=400,
        truncate_prompt="left",
        seed=0,
    )
    obs = vec.reset()
    assert obs["input_ids"].shape == (2, 403)
    with pytest.raises(ValueError, match="unknown env id"):
        lm_envs.make_vec("lm_envs/Nope-v0", 2, tokenizer)


def test_custom_task_registration(tokenizer):
    def shout_task(split="train"):
        return Task(
            questions=["say a", "say b"],
            references=["a", "b"],
            chat_template=False,
            reward=lambda completions, refs, prompts=None: np.array(
                [float(r in c.split()) for c, r in zip(completions, refs)], dtype=np.float32
            ),
        )

    lm_envs.register_task("my_envs/Shout-v0", shout_task, max_new_tokens=2, max_prompt_tokens=8)
    env = gym.make("my_envs/Shout-v0", tokenizer=tokenizer)
    env.reset(seed=0, options={"index": 1})
    env.step(tokenizer.convert_tokens_to_ids("b"))
    *_, info = env.step(tokenizer.convert_tokens_to_ids("b"))
    assert info["score"] == 1.0


# -- bad input ---------------------------------------------------------------------------------
def test_prompt_longer_than_context_errors_or_truncates_left(tokenizer):
    long_task = Task(
        questions=["a " * 40], references=[0], reward=lambda c, r, p=None: np.zeros(len(c)), chat_template=False
    )
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        TokenEnv(long_task, tokenizer, max_new_tokens=2, max_prompt_tokens=8).reset()
    env = TokenEnv(long_task, tokenizer, max_new_tokens=2, max_prompt_tokens=8, truncate_prompt="left")
    obs, _ = env.reset()
    assert obs["prompt_length"][0] == 8 and obs["attention_mask"][:8].all()


def test_empty_data_set_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        Task(questions=[], references=[], reward=lambda c, r, p=None: np.zeros(len(c)))


def test_missing_data_directory_is_an_error(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lm_envs.gsm8k_task(data_dir=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="layout"):
        lm_envs.gsm8k_task(data_dir=str(tmp_path))


def test_offline_without_data_dir_names_both_options(monkeypatch):
    monkeypatch.delenv("LM_ENVS_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="data_dir=PATH.*LM_ENVS_DATA_DIR"):
        lm_envs.gsm8k_task(split="test")
