"""Envs from other libraries (lm_envs.ecosystem): reasoning-gym ids and curriculum, TextArena games
offline, per-turn rewards down to PPO's GAE, and OpenEnv both ways on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from helpers import REPO, build_tiny_tokenizer
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import lm_envs
from agents import ppo_math
from agents.core import OnPolicyLMAlgorithm
from lm_envs import Reply, Task
from lm_envs.ecosystem import MissingExtra, require
from lm_envs.ecosystem.reasoning_gym import TASK_NAMES, make_curriculum_vec
from lm_envs.ecosystem.textarena import EXCLUDED, GAMES, textarena_task
from lm_envs.ecosystem.textarena_duel import TWO_PLAYER_GAMES, heuristic_opponent, textarena_duel_task

EASY = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=("+",), allow_negation=False)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def _word(tok, word):
    return tok(word, add_special_tokens=False)["input_ids"][0]


# -- reasoning-gym -----------------------------------------------------------------------------------
def test_task_names_are_reasoning_gyms_registry_and_all_registered():
    from reasoning_gym.factory import DATASETS

    assert TASK_NAMES == tuple(sorted(DATASETS))
    assert all(f"reasoning_gym/{name}-v0" in gym.registry for name in TASK_NAMES)


def test_every_reasoning_gym_id_builds_and_steps(tok):
    # The held-out split: one reasoning-gym dataset per id (the training split draws a second one).
    small = dict(split="test", test_size=2, max_new_tokens=2, max_prompt_tokens=32, truncate_prompt="left", seed=0)
    for name in TASK_NAMES:
        extra = {"datasets": [{"name": "chain_sum", "weight": 1.0}]} if name == "composite" else {}
        env = lm_envs.make_vec(f"reasoning_gym/{name}-v0", 1, tok, **small, **extra)
        env.reset()
        _, rewards, dones, infos = env.step(np.array([tok.eos_token_id]))
        assert dones[0] and rewards.dtype == np.float32 and rewards[0] == 0.0, name  # nothing answered, 0
        assert isinstance(infos[0]["reference"]["question"], str), name


def test_checkers_pass_on_a_reasoning_gym_env(tok):
    env = gym.make("reasoning_gym/basic_arithmetic-v0", tokenizer=tok, size=8, max_new_tokens=4, **EASY)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)


def test_config_keys_reach_reasoning_gym_and_the_answer_is_scored(tok):
    task = gym.make("reasoning_gym/basic_arithmetic-v0", tokenizer=tok, size=16, **EASY).unwrapped.task
    entries = [task.references[i] for i in range(len(task))]
    assert all(e["metadata"]["num_terms"] == 2 and e["metadata"]["num_digits"] == 1 for e in entries)
    assert all("+" in e["metadata"]["expression"] and "*" not in e["metadata"]["expression"] for e in entries)
    right = [e["answer"] for e in entries]
    scores = task.reward(right + ["nonsense", ""], entries + entries[:2])
    assert scores[:16].tolist() == [1.0] * 16 and scores[16:].tolist() == [0.0, 0.0]
    metrics = task.reward.metrics(
        right[:1] + [" \n" + right[1] + "\nmore", "", "12345"],
        entries[:4],
        task.reward(right[:1] + [" \n" + right[1] + "\nmore", "", "12345"], entries[:4]),
    )
    assert metrics["accuracy"] == 0.5 and metrics["format_rate"] == 0.75  # first line extracted; "" has none


def test_partial_credit_off_scores_exact_answers_only(tok):
    from lm_envs.ecosystem.reasoning_gym import reasoning_gym_task

    kwargs = dict(split="test", test_size=8, min_word_len=3, max_word_len=3)
    lenient = reasoning_gym_task("spell_backward", **kwargs)
    strict = reasoning_gym_task("spell_backward", partial_credit=False, **kwargs)
    entries = [lenient.references[i] for i in range(len(lenient))]
    words = [e["metadata"]["word"] for e in entries]
    answers = [e["answer"] for e in entries]
    echo = [float(s) for s in lenient.reward(words, entries)]  # the echo hack: the word unreversed
    assert any(0 < s < 1 for s in echo)  # the task's partial credit pays for it ...
    assert [float(s) for s in strict.reward(words, entries)] == [float(w == a) for w, a in zip(words, answers)]
    assert [float(s) for s in strict.reward(answers, entries)] == [1.0] * len(entries)  # ... exact answers still 1


def test_a_game_takes_its_own_reward_and_refuses_any_other():
    from lm_envs.ecosystem.textarena import textarena_task
    from lm_envs.ecosystem.textarena_duel import textarena_duel_task

    for build, game in ((textarena_task, "GuessTheNumber-v0"), (textarena_duel_task, "TicTacToe-v0")):
        train = build(game, size=2)
        test = build(game, split="test", size=2, reward=train.reward)  # as run_ppo shares it with the eval env
        assert test.questions[0] and test.reward is train.reward
        with pytest.raises(ValueError, match="scores every turn with the game's own reward"):
            build(game, size=2, reward=lambda texts, refs, prompts=None: [1.0] * len(texts))


def test_held_out_questions_never_appear_in_training():
    from lm_envs.ecosystem.reasoning_gym import reasoning_gym_task

    test = reasoning_gym_task("basic_arithmetic", split="test", test_size=48, **EASY)
    train = reasoning_gym_task("basic_arithmetic", split="train", size=300, **EASY)
    held_out = {test.questions[i] for i in range(len(test))}
    assert len(held_out) < 48  # at this config the draw repeats itself: ~100 distinct sums
    assert not held_out & {train.questions[i] for i in range(len(train))}
    # A different seed alone would leak: the same config drawn with the training seed hits the test set.
    import reasoning_gym as rg

    naive = rg.create_dataset("basic_arithmetic", size=300, seed=0, **EASY)
    assert held_out & {naive[i]["question"] for i in range(300)}


def test_missing_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(MissingExtra, match=r"\.\[envs\]"):
        require("reasoning_gym", "reasoning-gym")


def _run_batches(env, tok, batches):
    """Lockstep batches with fixed actions ("7" then EOS); the observations and rewards seen."""
    seen = []
    seven = _word(tok, "7")
    for _ in range(batches):
        for action in (seven, tok.eos_token_id):
            obs, rewards, dones, infos = env.step(np.full(env.num_envs, action))
            seen.append((obs["input_ids"].copy(), rewards.copy(), [i.get("curriculum_level") for i in infos]))
    return seen


def test_curriculum_raises_the_level_and_resumes_bit_exactly(tok, monkeypatch):
    kwargs = dict(
        size=16,
        max_new_tokens=2,
        max_prompt_tokens=48,
        truncate_prompt="left",
        seed=3,
        window=4,
        raise_above=0.75,
        lower_below=0.25,
        **EASY,
    )
    env = make_curriculum_vec("reasoning_gym/basic_arithmetic-v0", 4, tok, **kwargs)
    task = env.get_attr("task", [0])[0]
    assert task.metadata["levels"] == 5 and env.level == 0
    task.reward = lambda completions, references, prompts=None: np.ones(len(completions), dtype=np.float32)
    env.reset()
    _run_batches(env, tok, 1)  # 4 successes fill the window: level 1 from the next batch on
    assert env.level == 1 and env.changes == [(4, 1)]
    assert (env.venv.batch.row_index // 16 == 1).all()  # the batch loaded after the change is level 1
    saved = env.env_method("get_state", indices=[0])[0]
    assert saved["curriculum"]["level"] == 1
    task.reward = lambda completions, references, prompts=None: np.zeros(len(completions), dtype=np.float32)
    after = _run_batches(env, tok, 3)
    assert env.level == 0  # four failures lower it again

    resumed = make_curriculum_vec("reasoning_gym/basic_arithmetic-v0", 4, tok, **{**kwargs, "seed": 99})
    resumed.get_attr("task", [0])[0].reward = task.reward
    resumed.reset()
    resumed.env_method("set_state", saved, indices=[0])
    assert resumed.level == 1
    again = _run_batches(resumed, tok, 3)
    for (ids_a, rew_a, lvl_a), (ids_b, rew_b, lvl_b) in zip(after, again):
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_array_equal(rew_a, rew_b)
        assert lvl_a == lvl_b
    assert resumed.state_dict() == env.state_dict()


# -- TextArena -------------------------------------------------------------------------------------------
_OFFLINE_PROBE = r"""
import json, socket, sys
def refuse(*args, **kwargs):
    raise OSError("network disabled by the test")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from lm_envs.ecosystem.textarena import textarena_task
from lm_envs.ecosystem.textarena_duel import TWO_PLAYER_GAMES, textarena_duel_task
results = {}
for game in sys.argv[1:]:
    try:
        build = textarena_duel_task if game in TWO_PLAYER_GAMES else textarena_task
        task = build(game, size=1) if not game.endswith("!raw") else None
        if task is None:
            import textarena as ta
            env = ta.make(game[:-4] + "-raw"); env.reset(num_players=1, seed=0); env.step("[a]")
        else:
            assert task.questions[0]
            task.respond(["[1]"], [task.references[0]], [1], histories=[[]])
        results[game] = "ok"
    except BaseException as err:
        results[game] = repr(err)[:200]
print(json.dumps(results))
"""


def test_shipped_textarena_games_run_with_no_network(tmp_path):
    """Every shipped game, single- and two-player, imports and plays a move (answered by the
    scripted opponent) with sockets refused and an empty NLTK data path; an excluded one (Wordle
    needs NLTK's word list) fails the same probe, so the probe can fail."""
    env = {**os.environ, "NLTK_DATA": str(tmp_path), "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _OFFLINE_PROBE, *GAMES, *TWO_PLAYER_GAMES, "Wordle-v0!raw"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    results = json.loads(out.stdout.strip().splitlines()[-1])
    shipped = [*GAMES, *TWO_PLAYER_GAMES]
    assert {game: results[game] for game in shipped} == {game: "ok" for game in shipped}
    assert results["Wordle-v0!raw"] != "ok" and "Wordle-v0" in EXCLUDED


def test_checkers_pass_on_a_textarena_env(tok):
    env = gym.make(
        "textarena/GuessTheNumber-v0",
        tokenizer=tok,
        max_turns=3,
        max_turn_tokens=2,
        max_new_tokens=6,
        max_injected_tokens=768,
    )
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)


def test_textarena_turns_carry_the_games_rewards(tok):
    env = gym.make("textarena/GuessTheNumber-v0", tokenizer=tok, size=4)
    env.reset(seed=0)
    seven = _word(tok, "7")
    actions = [seven, tok.eos_token_id] * 16
    for action in actions:
        _, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    assert info["turn_ends"] == [2 * k + 1 for k in range(info["turns"])]
    assert reward == pytest.approx(sum(info["turn_rewards"])) and info["score"] == pytest.approx(reward)


def test_two_invalid_moves_end_every_shipped_game_with_a_float_reward():
    """TextArena's second invalid move in a row ends a game; its reward is a float even where the
    game passes a message as the reward (ThreeCardMonte in textarena 0.7.4)."""
    for game in GAMES:
        task = textarena_task(game, size=1)
        reply = task.respond(["x"], [task.references[0]], [2], histories=[["y"]])[0]
        assert reply.text is None and isinstance(reply.reward, float), game


def _play(env, tok, moves):
    """One episode of single-token moves (each followed by EOS), cycling through ``moves``."""
    env.reset(seed=0)
    for k in range(64):
        for action in (_word(tok, moves[k % len(moves)]), tok.eos_token_id):
            _, reward, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                return reward, terminated, info
    raise AssertionError("the episode did not end")


def test_two_player_game_runs_to_the_end_against_the_scripted_opponent(tok):
    env = gym.make("textarena/TicTacToe-v0", tokenizer=tok, size=4, max_injected_tokens=2048)
    reward, terminated, info = _play(env, tok, "401235678")
    assert terminated and info["turns"] >= 3  # the game ended (win, draw or loss), not the turn budget
    # Per-turn rewards as in the single-player games: 0 until the game's result on the last turn.
    assert info["turn_rewards"][:-1] == [0.0] * (info["turns"] - 1) and info["turn_rewards"][-1] in (-1.0, 0.0, 1.0)
    assert reward == pytest.approx(sum(info["turn_rewards"])) and info["score"] == pytest.approx(reward)
    # The opponent's moves are injected, never actions: the policy's actions are its 2 tokens a turn.
    assert info["turn_ends"] == [2 * k + 1 for k in range(info["turns"])]
    # The same moves replayed on the task give the same result; the opponent's move is in the reply.
    task, moves = env.unwrapped.task, list("401235678"[: info["turns"]])
    reference = task.references[info["index"]]
    last = task.respond([moves[-1]], [reference], [len(moves)], histories=[moves[:-1]])[0]
    assert last.text is None and last.reward == info["turn_rewards"][-1]
    first = task.respond(["4"], [reference], [1], histories=[[]])[0]
    assert "Opponent's move: [" in first.text and "placed their symbol (O) in cell 4" in first.text


def test_checkers_pass_on_a_two_player_textarena_env(tok):
    env = gym.make(
        "textarena/ConnectFour-v0",
        tokenizer=tok,
        max_turns=3,
        max_turn_tokens=2,
        max_new_tokens=6,
        max_injected_tokens=1024,
    )
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)


def test_scripted_opponents_are_seeded_and_the_heuristic_wins_or_blocks():
    task = textarena_duel_task("TicTacToe-v0", size=8)
    replies = [task.respond(["4"], [task.references[i]], [1], histories=[[]])[0].text for i in range(8)]
    assert replies == [task.respond(["4"], [task.references[i]], [1], histories=[[]])[0].text for i in range(8)]
    assert len(set(replies)) > 1  # the seed picks the random opponent's moves
    import textarena as ta

    def board(moves):  # alternate O (player 0) and X (player 1); X is to move after an odd count
        env = ta.make("TicTacToe-v0-raw")
        env.reset(num_players=2, seed=0)
        for move in moves:
            env.step(f"[{move}]")
        taken = set(moves)
        return env, [f"[{c}]" for c in range(9) if c not in taken]

    env, legal = board([0, 4, 1])  # O threatens 0-1-2
    assert heuristic_opponent(env, 1, legal, ("[4]", "[8]"), None) == "[2]"  # blocks
    env, legal = board([0, 4, 8, 2, 1])  # X can win 2-4-6
    assert heuristic_opponent(env, 1, legal, ("[3]",), None) == "[6]"  # wins
    player1 = textarena_duel_task("TicTacToe-v0", size=1, opponent="heuristic", player=1)
    assert "Opponent's move: [4]" in player1.questions[0]  # the opponent opens in the centre


# -- per-turn rewards -------------------------------------------------------------------------------------
def _two_turn_task():
    def respond(attempts, references, turns, histories=()):
        # Turn 1 earns 0.5 and the env asks again; turn 2 earns 1.0 and ends the episode.
        return [Reply(text="again", reward=0.5) if t == 1 else Reply(text=None, reward=1.0) for t in turns]

    return Task(
        questions=["a b", "c d"],
        references=[0, 1],
        name="two-turns",
        chat_template=False,
        reward=lambda c, r, p=None: np.full(len(c), 9.0, dtype=np.float32),
        respond=respond,
    )


def test_env_records_turn_rewards_and_the_last_action_of_each_turn(tok):
    env = lm_envs.TokenEnv(_two_turn_task(), tok, max_new_tokens=8, max_turns=2, max_injected_tokens=8)
    env.reset(seed=0)
    seven = _word(tok, "7")
    for action in (seven, tok.eos_token_id, seven, seven, tok.eos_token_id):
        _, reward, terminated, truncated, info = env.step(action)
    assert terminated and not truncated
    assert info["turn_rewards"] == [0.5, 1.0] and info["turn_ends"] == [1, 4]
    assert reward == 1.5 and info["score"] == 1.5  # the sum; the task's whole-completion reward (9) is unused
    state = env.batch.get_state()
    assert state["turn_rewards"][0].tolist() == [0.5, 1.0]


def test_per_turn_rewards_in_ppos_gae_hand_computed():
    """Two turns: actions 0-1 (reward 0.5 on action 1) and 2-4 (reward 1.0 on action 4), no KL."""
    mask = torch.ones(1, 5, dtype=torch.bool)
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]])
    infos = [{"turn_rewards": [0.5, 1.0], "turn_ends": [1, 4]}]

    def shaped(uses_value_head):
        buffer = SimpleNamespace(
            env_rewards=torch.tensor([1.5]),
            terminated=torch.tensor([True]),
            kl=None,
            mask=mask,
            log_probs=torch.zeros(1, 5),
            infos=infos,
        )
        agent = SimpleNamespace(
            kl_controller=SimpleNamespace(value=0.0),
            _uses_reference=False,
            reward_scale=1.0,
            missing_eos_penalty=None,
            reward_clip=None,
            kl_in_reward=True,
            uses_value_head=uses_value_head,
        )
        OnPolicyLMAlgorithm.shape_rewards(agent, buffer)
        return buffer.token_rewards

    ppo_rewards = shaped(True)
    assert ppo_rewards.tolist() == [[0.0, 0.5, 0.0, 0.0, 1.0]]
    advantages, returns = ppo_math.gae(ppo_rewards, values, mask, gamma=1.0, lam=0.5)
    # δ = r_t + V_{t+1} − V_t = [0.1, 0.6, 0.1, 0.1, 0.5]; A_t = δ_t + 0.5·A_{t+1}
    expected = [0.1 + 0.5 * 0.7375, 0.6 + 0.5 * 0.275, 0.1 + 0.5 * 0.35, 0.1 + 0.5 * 0.5, 0.5]
    torch.testing.assert_close(advantages, torch.tensor([expected]))
    torch.testing.assert_close(returns, torch.tensor([expected]) + values)
    # Sequence-level agents (no critic): the sum of the turns' rewards on the final token.
    assert shaped(False).tolist() == [[0.0, 0.0, 0.0, 0.0, 1.5]]
    # A wrapper's extra term (env reward 1.7 = 1.5 + 0.2) stays on the final token.
    rewards = ppo_math.token_rewards(
        torch.tensor([1.7]), torch.zeros(1, 5), 0.0, mask, ppo_math.place_turn_rewards([[0.5, 1.0]], [[1, 4]], (1, 5))
    )
    torch.testing.assert_close(rewards, torch.tensor([[0.0, 0.5, 0.0, 0.0, 1.2]]))


# -- OpenEnv ------------------------------------------------------------------------------------------------
def _port_open(url):
    host, port = url.rsplit(":", 1)
    with socket.socket() as probe:
        return probe.connect_ex((host.removeprefix("http://"), int(port))) == 0


@pytest.mark.server
def test_openenv_serves_an_lm_envs_id(tok):
    from openenv.core.generic_client import GenericEnvClient

    from lm_envs.ecosystem.openenv import serve

    server = serve("reasoning_gym/basic_arithmetic-v0", split="test", test_size=8, **EASY)
    try:
        with GenericEnvClient(base_url=server.url).sync() as client:
            first = client.reset(seed=0)
            assert "Give only the final answer." in first.observation["prompt"] and not first.done
            index = first.observation["index"]
            task = lm_envs.ecosystem.reasoning_gym.reasoning_gym_task(
                "basic_arithmetic", split="test", test_size=8, **EASY
            )
            right = client.step({"text": task.references[index]["answer"]})
            assert right.done and right.reward == 1.0
            client.reset(index=index)
            assert client.step({"text": "no idea"}).reward == 0.0
    finally:
        server.stop()
    assert not _port_open(server.url)


@pytest.mark.server
def test_openenv_env_trains_as_an_lm_envs_env(tok):
    """Our TextArena id served by OpenEnv, consumed back through OpenEnv's client as a token env:
    the same game, its per-turn rewards through the wire."""
    from lm_envs.ecosystem.openenv import openenv_task, serve

    server = serve("textarena/GuessTheNumber-v0", split="train", max_turns=8)
    try:
        task = openenv_task(server.url, size=2, seed=0, name="openenv-guess", chat_template=False)
        direct = gym.make("textarena/GuessTheNumber-v0", tokenizer=tok, chat_template=False).unwrapped.task
        assert task.questions[0] == direct.prompt_template.format(question=direct.questions[0])
        env = lm_envs.TokenEnv(task, tok, max_new_tokens=16, max_turns=8, max_turn_tokens=2, max_injected_tokens=512)
        env.reset(options={"index": 0})
        seven = _word(tok, "7")
        for action in [seven, tok.eos_token_id] * 8:
            _, reward, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        assert len(info["turn_rewards"]) == info["turns"] and reward == pytest.approx(sum(info["turn_rewards"]))
        # The same moves on the game directly give the same rewards.
        moves = ["7"] * info["turns"]
        row = lm_envs.PromptSampler(len(direct), 0).next_index()  # the row the server deals for seed 0
        replies = direct.respond([moves[-1]], [direct.references[row]], [len(moves)], histories=[moves[:-1]])
        assert replies[0].reward == pytest.approx(info["turn_rewards"][-1])
    finally:
        server.stop()
    assert not _port_open(server.url)


def test_run_config_turns_the_curriculum_on_and_checkpoints_keep_it(tiny_dir, tmp_path):
    """experiment=rg_basic_arithmetic_curriculum_cpu composes and instantiates with the curriculum
    on the training env only, and a checkpoint resumed with resume=true brings its state back."""
    sys.path.insert(0, str(REPO / "experiments"))
    import run_ppo
    from config import compose

    from lm_envs.ecosystem.reasoning_gym import CurriculumLogCallback, ReasoningGymCurriculum

    argv = [
        "experiment=rg_basic_arithmetic_curriculum_cpu",
        "agent=dapo",
        f"policy.model={tiny_dir}",
        "policy.lora.r=2",
        f"output_dir={tmp_path}",
        "env.kwargs.size=16",
        "env.kwargs.test_size=8",
        "env.kwargs.max_new_tokens=2",
        "env.curriculum.window=4",
        "agent.max_extra_rollouts=0",
    ]
    agent, env, eval_env, _ = run_ppo.prepare(compose(argv))
    assert isinstance(env, ReasoningGymCurriculum) and not isinstance(eval_env, ReasoningGymCurriculum)
    assert (env.window, env.raise_above, env.lower_below, env.level) == (4, 0.7, 0.2, 0)
    assert env.num_levels == 5 and eval_env.task.metadata["levels"] == 1  # held out: level 0 only
    agent.learn(total_iterations=1, callback=CurriculumLogCallback())
    env.load_state_dict({"level": 2, "recent": [1.0, 0.0], "episodes": 20, "changes": [[4, 1], [8, 2]]})
    logged = CurriculumLogCallback()
    logged.init_callback(agent)
    logged.on_rollout_start()
    assert {k: v for k, v in agent.logger.name_to_value.items() if k.startswith("curriculum/")} == {
        "curriculum/level": 2,
        "curriculum/success_rate": 0.5,
        "curriculum/changes": 2,
    }
    agent.save(tmp_path / "checkpoints" / "iter_000001")

    resumed, env2, _, source = run_ppo.prepare(compose([*argv, "resume=true"]))
    assert source is not None and source.name == "iter_000001"
    assert env2.state_dict() == env.state_dict() and env2.level == 2
    with pytest.raises(SystemExit, match="reasoning_gym/<task>-v0"):
        run_ppo.curriculum_kwargs(compose(["env.curriculum.enabled=true"]))


def test_answer_extractors_read_what_each_format_promises_and_nothing_else():
    from lm_envs.ecosystem.reasoning_gym import EXTRACTORS

    read = {name: fn for name, (fn, _) in EXTRACTORS.items()}
    assert read["first_line"]("\n 4 + 3 = 7 \nmore") == "4 + 3 = 7"
    assert read["first_line_result"]("\n 4 + 3 = 7 \n8") == "7"  # the restated sum's result
    assert read["first_line_result"]("7") == "7" and read["first_line_result"]("-8 + -5 = -13") == "-13"
    assert read["first_line_result"]("4 + 3 =") is None and read["first_line_result"]("  \n") is None
    assert read["last_line"]("work\n\n 12 ") == "12"
    assert read["answer_tag"]("<answer>1</answer> then <answer> 2 </answer>") == "2"
