"""Multi-turn episodes: env-injected tokens are context, never actions.

Env mechanics (replies, tools, budgets, termination vs truncation), the policy's KV cache with
hole columns (no prefix re-run, counted in forward tokens), rollout = teacher forcing with
injected tokens, greedy rollout = a manual generate + inject + generate loop, and every agent
training on a multi-turn env with a first minibatch ratio of 1.
"""

import dataclasses

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from helpers import echo_task
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from agents import GRPO, PPO, REINFORCE, RLOO, REINFORCEPlusPlus, collect_episodes
from lm_envs import EpisodeConfig, TokenEnv, TokenVecEnv
from lm_envs.tasks.tools import CodeFeedback, calculator, format_number, safe_arithmetic
from lm_envs.tasks.turns import Reply, Tool
from policies import CausalLMPolicy

CodeFeedbackRequest = CodeFeedback.REQUEST
ALL = {"ppo": PPO, "grpo": GRPO, "rloo": RLOO, "reinforce": REINFORCE, "reinforce_pp": REINFORCEPlusPlus}


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class ScriptedReplies:
    """respond(): replies from a script per turn; records what it was asked."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def __call__(self, attempts, references, turns):
        self.calls.append((list(attempts), list(turns)))
        return [self.script[turn - 1] for turn in turns]


def replying_task(respond, tools=()):
    return dataclasses.replace(echo_task(), respond=respond, tools=tuple(tools))


def step_all(env, tokens):
    out = None
    for token in tokens:
        out = env.step(token)
    return out


def test_a_reply_is_injected_as_context_and_the_last_score_is_the_reward(tiny_lm):
    tok = tiny_lm[1]
    respond = ScriptedReplies([Reply("a b c", score=0.25, chat=False), Reply(None, score=1.0)])
    env = TokenEnv(
        replying_task(respond), tok, max_new_tokens=8, max_prompt_tokens=16, max_turns=3, max_injected_tokens=16
    )
    obs, _ = env.reset(seed=0)
    seven, eos = ids(tok, "7")[0], tok.eos_token_id
    obs, reward, terminated, truncated, info = step_all(env, [seven, eos])
    assert not (terminated or truncated) and reward == 0.0
    assert respond.calls == [(["7"], [1])]
    P, n = 16, int(obs["completion_length"][0])
    injected = ids(tok, "\n\na b c\n\n")
    assert n == 2 + len(injected) and int(obs["num_generated"][0]) == 2
    assert obs["input_ids"][P + 2 : P + n].tolist() == injected
    assert obs["attention_mask"][P : P + n].tolist() == [1] * n
    assert obs["policy_mask"][P : P + n].tolist() == [1, 1] + [0] * len(injected)
    obs, reward, terminated, truncated, info = step_all(env, [ids(tok, "8")[0], eos])
    assert respond.calls[-1] == (["8"], [2])  # the attempt is this turn's text only
    assert terminated and not truncated
    assert reward == 1.0 and info["score"] == 1.0 and info["first_score"] == 0.25
    assert info["turns"] == 2 and info["extra_turns"] == 1 and info["injected_tokens"] == len(injected)
    assert info["completion"] == "7 a b c 8"
    assert obs["policy_mask"].sum() == 4


def test_turn_limit_terminates_and_budgets_truncate(tiny_lm):
    tok = tiny_lm[1]
    seven, eos = ids(tok, "7")[0], tok.eos_token_id
    again = Reply("a", score=0.5, chat=False)
    # The model ends its last allowed turn itself: terminated, reward = that turn's score.
    env = TokenEnv(
        replying_task(ScriptedReplies([again, Reply("b", 0.75, chat=False)])),
        tok,
        max_new_tokens=8,
        max_prompt_tokens=16,
        max_turns=2,
        max_injected_tokens=8,
    )
    env.reset(seed=0)
    *_, reward, terminated, truncated, info = step_all(env, [eos, seven, eos])
    assert terminated and not truncated and reward == 0.75 and info["turns"] == 2
    # max_turn_tokens ends a turn like EOS; on the last turn it truncates.
    env = TokenEnv(
        replying_task(ScriptedReplies([again, again])),
        tok,
        max_new_tokens=8,
        max_prompt_tokens=16,
        max_turns=2,
        max_turn_tokens=2,
        max_injected_tokens=8,
    )
    env.reset(seed=0)
    obs, _, terminated, truncated, _ = step_all(env, [seven, seven])
    assert not (terminated or truncated) and int(obs["completion_length"][0]) == 3  # the reply went in
    *_, reward, terminated, truncated, info = step_all(env, [seven, seven])
    assert truncated and not terminated and reward == 0.5
    # ... unless the task's reply ends the episode: its verdict terminates, cut or not.
    env = TokenEnv(
        replying_task(ScriptedReplies([Reply(None, 1.0)])),
        tok,
        max_new_tokens=8,
        max_prompt_tokens=16,
        max_turns=2,
        max_turn_tokens=2,
        max_injected_tokens=8,
    )
    env.reset(seed=0)
    *_, reward, terminated, truncated, info = step_all(env, [seven, seven])
    assert terminated and not truncated and reward == 1.0
    # An injection that does not fit ends the episode (truncated), never cut silently.
    env = TokenEnv(
        replying_task(ScriptedReplies([Reply("a b c d e", 0.5, chat=False)] * 2)),
        tok,
        max_new_tokens=8,
        max_prompt_tokens=16,
        max_turns=2,
        max_injected_tokens=3,
    )
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(eos)
    assert truncated and not terminated and info["injected_tokens"] == 0
    # The whole-episode budget truncates too, whatever the turn.
    env = TokenEnv(
        replying_task(ScriptedReplies([again] * 3)),
        tok,
        max_new_tokens=3,
        max_prompt_tokens=16,
        max_turns=3,
        max_injected_tokens=8,
    )
    env.reset(seed=0)
    *_, terminated, truncated, info = step_all(env, [eos, seven, seven])
    assert truncated and not terminated and info["turns"] == 2


def test_a_per_turn_cost_is_a_reward_wrapper_on_extra_turns(tiny_lm):
    from lm_envs import RewardWrapper
    from lm_envs.reward_wrappers import from_config

    tok = tiny_lm[1]
    respond = ScriptedReplies([Reply("a", 0.0, chat=False), Reply("a", 0.5, chat=False), Reply(None, 1.0)])
    cost = from_config(
        [{"type": "add_terms", "terms": {"turn_cost": {"term": "info", "key": "extra_turns", "weight": -0.1}}}]
    )
    env = RewardWrapper(
        TokenEnv(
            replying_task(respond), tok, max_new_tokens=8, max_prompt_tokens=16, max_turns=3, max_injected_tokens=8
        ),
        cost,
    )
    env.reset(seed=0)
    *_, reward, terminated, truncated, info = step_all(env, [tok.eos_token_id] * 3)
    assert terminated and info["score"] == 1.0 and info["extra_turns"] == 2
    assert reward == pytest.approx(1.0 - 0.2)


def test_bad_settings_are_refused(tiny_lm):
    tok = tiny_lm[1]
    with pytest.raises(ValueError, match="max_injected_tokens=0"):
        TokenEnv(replying_task(ScriptedReplies([])), tok, max_prompt_tokens=16)
    with pytest.raises(ValueError, match="needs a task that replies"):
        TokenEnv(echo_task(), tok, max_prompt_tokens=16, max_turns=2)
    with pytest.raises(TypeError, match="unknown episode settings"):
        TokenEnv(echo_task(), tok, max_prompt_tokens=16, max_turn=2)
    env = TokenEnv(replying_task(lambda a, r, t: ["not a reply"]), tok, max_prompt_tokens=16, max_injected_tokens=4)
    env.reset(seed=0)
    with pytest.raises(TypeError, match="one lm_envs.tasks.turns.Reply per attempt"):
        env.step(tok.eos_token_id)


def test_an_inline_tool_call_is_answered_mid_turn(tiny_lm):
    tok = tiny_lm[1]
    add = Tool("add", r"(\d) \+ (\d) =", lambda m: str(int(m.group(1)) + int(m.group(2))))
    env = TokenEnv(
        dataclasses.replace(echo_task(), tools=(add,)),
        tok,
        max_new_tokens=8,
        max_prompt_tokens=16,
        max_injected_tokens=4,
    )
    env.reset(seed=0)
    obs, *_ = step_all(env, [ids(tok, w)[0] for w in "1 + 2 =".split()])
    P = 16
    assert int(obs["completion_length"][0]) == 5 and obs["input_ids"][P + 4] == ids(tok, "3")[0]
    assert obs["policy_mask"][P : P + 5].tolist() == [1, 1, 1, 1, 0]
    obs, reward, terminated, truncated, info = step_all(env, [ids(tok, "7")[0], tok.eos_token_id])
    assert terminated and info["tool_calls"] == 1 and info["completion"] == "1 + 2 = 3 7"
    # The model's own token after "=" means it computed itself: nothing is injected.
    env.reset(seed=0)
    obs, *_ = step_all(env, [ids(tok, w)[0] for w in "1 + 2".split()])
    assert int(obs["completion_length"][0]) == 3


def test_calculator_is_safe_arithmetic():
    assert safe_arithmetic("48/2") == 24 and format_number(24.0) == "24"
    assert format_number(safe_arithmetic("1/4")) == "0.25" and format_number(safe_arithmetic("2*(3+4)-1")) == "13"
    assert format_number(safe_arithmetic("10/3")) == "3.333333"
    for bad in ("__import__('os')", "2**99999", "9**9**9", "1/0", "a+1", "()", "", "1" * 200, "[1]*9"):
        assert safe_arithmetic(bad) is None, bad
    assert calculator.call("so <<48/2=") == "24>>"
    assert calculator.call("so <<48/2=24") is None  # the model wrote the result itself
    assert calculator.call("so <<48/0=") is None


def test_calculator_env_with_the_real_tokenizer(smollm):
    from lm_envs import gsm8k_calculator_task

    _, tok = smollm
    task = gsm8k_calculator_task(split="test", limit=4)
    env = TokenEnv(task, tok, max_new_tokens=40, max_prompt_tokens=512, max_injected_tokens=32)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=False)
    env.reset(seed=0)
    for token in ids(tok, "Half of 48 is <<48/2="):
        obs, *_ = env.step(token)
    P, n = 512, int(obs["completion_length"][0])
    injected = obs["input_ids"][P : P + n][obs["policy_mask"][P : P + n] == 0]
    assert tok.decode(injected.tolist()) == "24>>"
    # A token that already carries characters after "=" (SmolLM2 has "=-") means no call.
    env.reset(seed=0)
    assert tok.convert_ids_to_tokens(ids(tok, "<<48/2=-"))[-1] == "=-"
    for token in ids(tok, "<<48/2=-"):
        obs, *_ = env.step(token)
    assert obs["policy_mask"][P : P + int(obs["completion_length"][0])].all()


# -- the policy on multi-turn rollouts ----------------------------------------------------------
def varied_replies(attempts, references, turns):
    """Rows inject different amounts: 1 to 4 words depending on the data row and turn."""
    return [
        Reply(" ".join(["a"] * (1 + (int(r) + t) % 4)), score=0.1 * t, chat=False) for r, t in zip(references, turns)
    ]


def multi_turn_env(tokenizer, num_envs=4, seed=0, group=1, tools=True):
    seven = Tool("seven", r"7", lambda m: "b c")  # inline, whenever a turn's text ends with 7
    task = replying_task(varied_replies, tools=(seven,) if tools else ())
    return TokenVecEnv(
        task,
        tokenizer,
        num_envs=num_envs,
        max_new_tokens=9,
        max_prompt_tokens=16,
        max_turns=3,
        max_turn_tokens=3,
        max_injected_tokens=24,
        seed=seed,
        completions_per_prompt=group,
    )


@pytest.mark.parametrize(
    "policy_kwargs", [{}, {"top_k": 5}, {"lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}}]
)
def test_rollout_log_probs_equal_teacher_forced_with_injected_tokens(tiny_lm, policy_kwargs):
    model, tok = tiny_lm
    torch.manual_seed(0)
    env = multi_turn_env(tok, num_envs=6)
    policy = CausalLMPolicy(env.observation_space, env.action_space, lambda _: 1e-3, model=model, **policy_kwargs)
    episodes, _ = collect_episodes(policy, env)
    prompt = episodes.attention_mask[:, :16].sum(-1)
    injected = episodes.attention_mask.sum(-1) - episodes.policy_mask.sum(-1) - prompt
    assert (injected > 0).all() and len(set(injected.tolist())) > 1  # rows injected different amounts
    assert (episodes.policy_mask.sum(-1) == episodes.action_mask.sum(-1)).all()
    out = policy.evaluate_actions(episodes.input_ids, episodes.attention_mask, episodes.policy_mask)
    assert torch.allclose(out.log_prob, episodes.log_probs[episodes.action_mask], atol=1e-4)
    assert torch.allclose(out.values, episodes.values[episodes.action_mask], atol=1e-4)
    if "top_k" not in policy_kwargs:  # (the reference is scored untruncated)
        ref = policy.evaluate_actions(
            episodes.input_ids, episodes.attention_mask, episodes.policy_mask, reference=True
        ).log_prob
        assert torch.allclose(ref, out.log_prob, atol=1e-4)  # KL to the reference is 0 at init


def test_injections_are_one_prefill_step_and_no_prefix_is_rerun(tiny_lm):
    """Every real token is fed to the model once: the prompt in the first pass, and then each
    step feeds exactly what each row gained (its action plus any injection), right-aligned."""
    model, tok = tiny_lm
    torch.manual_seed(1)
    env = multi_turn_env(tok, num_envs=4)
    policy = CausalLMPolicy(env.observation_space, env.action_space, lambda _: 1e-3, model=model)
    calls = []
    run = policy._run

    def counting(model_, input_ids, attention_mask, position_ids, cache=None, use_cache=False):
        calls.append((input_ids.shape, int(attention_mask[:, -input_ids.shape[1] :].sum()), cache is not None))
        return run(model_, input_ids, attention_mask, position_ids, cache, use_cache)

    policy._run = counting
    episodes, _ = collect_episodes(policy, env)
    prompt_tokens = int(episodes.attention_mask[:, :16].sum())
    after = episodes.attention_mask[:, 16:].sum(-1)
    first, steps = calls[0], calls[1:]
    assert not first[2] and all(cached for *_, cached in steps)
    # Everything after the prompt is fed at most once: a row's last action only if the row was
    # still in the batch after it (waiting for the others to end their last turn).
    assert first[1] <= prompt_tokens  # (shared prompts are run once)
    fed = sum(real for _, real, _ in steps)
    assert int((after - 1).sum()) <= fed <= int(after.sum())
    assert any(shape[1] > 1 for shape, _, _ in steps)  # injections went in as one multi-column step


@pytest.mark.parametrize("sync_turns", [True, False])
def test_sync_turns_answers_the_batch_at_once(tiny_lm, sync_turns):
    """With sync_turns, rows that end a turn wait (no action is recorded for them) and the task
    answers every row in one call; without it, rows get replies as they end."""
    model, tok = tiny_lm
    calls = []

    def respond(attempts, references, turns):
        calls.append(len(attempts))
        return varied_replies(attempts, references, turns)

    # A tiny random model rarely says EOS: end turns with stop strings (a dozen of its words).
    stops = tuple(sorted(set(tok.convert_ids_to_tokens(range(3, 40)))))[:12]
    # A budget that leaves room for both turns of every row, so every row gets both replies.
    env = TokenVecEnv(
        replying_task(respond),
        tok,
        num_envs=4,
        max_new_tokens=32,
        max_prompt_tokens=16,
        max_turns=2,
        max_injected_tokens=16,
        seed=0,
        sync_turns=sync_turns,
        stop_strings=stops,
    )
    policy = CausalLMPolicy(env.observation_space, env.action_space, lambda _: 1e-3, model=model)
    torch.manual_seed(0)
    episodes, _ = collect_episodes(policy, env)
    if sync_turns:
        assert calls == [4, 4]
    else:
        # Replies as rows end: more calls than turns, some for part of the batch, one per row and turn.
        assert sum(calls) == 8 and len(calls) > 2 and min(calls) < 4
    assert (episodes.policy_mask.sum(-1) == episodes.action_mask.sum(-1)).all()
    # Actions are contiguous per row in the (B, T) tensors, waiting or not.
    counts = episodes.action_mask.sum(-1)
    assert all(episodes.action_mask[b, : counts[b]].all() for b in range(4))
    out = policy.evaluate_actions(episodes.input_ids, episodes.attention_mask, episodes.policy_mask)
    assert torch.allclose(out.log_prob, episodes.log_probs[episodes.action_mask], atol=1e-4)


def test_greedy_multi_turn_rollout_equals_generate_inject_generate(tiny_lm):
    model, tok = tiny_lm
    env = multi_turn_env(tok, num_envs=3, tools=False)
    policy = CausalLMPolicy(env.observation_space, env.action_space, lambda _: 1e-3, model=model)
    episodes, _ = collect_episodes(policy, env, deterministic=True)
    for row in range(3):
        prompt_ids = episodes.input_ids[row, :16][episodes.attention_mask[row, :16].bool()]
        sequence = prompt_ids[None]
        reference = int(episodes.infos[row]["reference"])
        for turn in (1, 2, 3):
            out = model.generate(
                sequence,
                attention_mask=torch.ones_like(sequence),
                max_new_tokens=3,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
            sequence = out
            if turn < 3:
                reply = varied_replies([""], [reference], [turn])[0].text
                sequence = torch.cat([sequence, torch.tensor([ids(tok, f"\n\n{reply}\n\n")])], 1)
        got = episodes.input_ids[row][episodes.attention_mask[row].bool()]
        assert got.tolist() == sequence[0].tolist()


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_agent_trains_on_a_multi_turn_env(name, tiny_dir, tiny_lm):
    group = 4 if name in ("grpo", "rloo") else 1
    settings = dict(learning_rate=3e-3, batch_size=4, seed=0, micro_batch_size=2)
    settings.update(n_epochs=2, kl_coef=0.01) if name == "ppo" else settings.update(num_iterations=2, beta=0.01)
    agent = ALL[name](
        "CausalLMPolicy",
        multi_turn_env(tiny_lm[1], num_envs=8, group=group),
        policy_kwargs=dict(model=str(tiny_dir), lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
        **settings,
    )
    agent.learn(total_iterations=2)
    stats = agent.last_iteration_stats
    assert np.isfinite(list(stats.values())).all()
    first = ALL[name](
        "CausalLMPolicy",
        multi_turn_env(tiny_lm[1], num_envs=8, group=group),
        policy_kwargs=dict(model=str(tiny_dir)),
        **settings,
    )
    first.learn(total_iterations=1)
    assert first.last_iteration_stats["policy/first_minibatch_ratio_max_dev"] < 1e-4
    assert first.last_iteration_stats["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    # Only policy tokens carry advantages: the buffer's per-action mask counts them.
    buffer = first.buffer
    assert int(buffer.mask.sum()) == int(buffer.policy_mask.sum())


def test_episode_config_is_the_one_list_of_settings(tiny_lm):
    tok = tiny_lm[1]
    config = EpisodeConfig(max_new_tokens=5, max_prompt_tokens=16, stop_strings=["!"])
    a = TokenVecEnv(echo_task(), tok, num_envs=2, config=config)
    b = TokenVecEnv(echo_task(), tok, num_envs=2, config=config, max_new_tokens=7)
    assert a.batch.config.max_new_tokens == 5 and b.batch.config.max_new_tokens == 7
    assert b.batch.config.stop_strings == ("!",) and a.observation_space["input_ids"].shape == (21,)


def test_episode_state_saved_before_multi_turn_episodes_still_loads(tiny_lm):
    """`EpisodeBatch.set_state` reads state saved before multi-turn episodes and per-turn rewards:
    the arrays added since take the values they would have had (nothing injected, no turn ended)."""
    tok = tiny_lm[1]
    env = TokenVecEnv(echo_task(), tok, num_envs=2, max_new_tokens=8, max_prompt_tokens=16, seed=0)
    env.reset()
    for _ in range(3):
        env.step(np.full(2, ids(tok, "7")[0]))
    state = env.batch.get_state()
    added = {"completion_length", "num_injected", "turns", "turn_start", "turn_generated", "segment_start"}
    added |= {"tool_calls", "first_score", "last_score", "waiting", "turn_end"}
    for later in (added | {"turn_spans", "turn_last_action", "turn_rewards"}, {"turn_spans", "turn_rewards"}):
        restored = TokenVecEnv(echo_task(), tok, num_envs=2, max_new_tokens=8, max_prompt_tokens=16, seed=1)
        restored.batch.set_state({name: array for name, array in state.items() if name not in later})
        for name, array in restored.batch.get_state().items():
            np.testing.assert_array_equal(array, state[name], err_msg=name)
    with pytest.raises(ValueError, match="lacks.*input_ids"):
        restored.batch.set_state({name: array for name, array in state.items() if name != "input_ids"})


# -- the registered multi-turn ids ----------------------------------------------------------------
@pytest.mark.parametrize(
    "env_id", ["lm_envs/GSM8KCalculator-v0", "lm_envs/MBPPFeedback-v0", "lm_envs/HumanEvalCppFeedback-v0"]
)
def test_multi_turn_ids_pass_both_env_checkers(env_id, tiny_lm):
    import gymnasium as gym

    env = gym.make(env_id, tokenizer=tiny_lm[1], max_prompt_tokens=512, truncate_prompt="left", limit=3)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=False)
    config = env.unwrapped.batch.config
    if "Feedback" in env_id:
        assert (config.max_turns, config.max_turn_tokens, config.max_reply_tokens) == (3, 256, 128)


def test_mbpp_feedback_shows_the_failing_test_then_scores_the_fix(smollm):
    import gymnasium as gym

    from agents.evaluation import turn_metrics

    _, tok = smollm
    env = gym.make("lm_envs/MBPPFeedback-v0", tokenizer=tok, split="test", limit=1).unwrapped
    env.reset(options={"index": 0})
    record = env.task.references[0]
    wrong = "```python\n" + record["code"].replace("return", "return None and", 1) + "\n```"
    for token in ids(tok, wrong) + [tok.eos_token_id]:
        obs, reward, terminated, truncated, info = env.step(token)
    assert not (terminated or truncated)
    P, n = env.batch.max_prompt_tokens, int(obs["completion_length"][0])
    injected = obs["input_ids"][P : P + n][obs["policy_mask"][P : P + n] == 0]
    text = tok.decode(injected.tolist())
    # A user turn with the first failing test, then the assistant header (no second <|im_end|>).
    assert text.startswith("\n<|im_start|>user\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "This test failed:\n" + record["test_list"][0].strip() in text and CodeFeedbackRequest in text
    right = "```python\n" + record["code"] + "\n```"
    for token in ids(tok, right) + [tok.eos_token_id]:
        obs, reward, terminated, truncated, info = env.step(token)
    assert terminated and reward == pytest.approx(1.0) and info["turns"] == 2
    assert info["first_score"] < 1.0
    metrics = turn_metrics([{**info, "score": info["score"]}])
    assert metrics["first_turn_pass"] == 0.0 and metrics["final_pass"] == 1.0 and metrics["turns_mean"] == 2


def test_humaneval_cpp_feedback_comments_the_error_and_repeats_the_header(smollm):
    import gymnasium as gym

    _, tok = smollm
    env = gym.make("lm_envs/HumanEvalCppFeedback-v0", tokenizer=tok, limit=1).unwrapped
    env.reset(options={"index": 0})
    header = env.task.references[0]["prompt"].rstrip().splitlines()[-1]
    for token in ids(tok, "    return undefined_name;\n}"):
        obs, reward, terminated, truncated, info = env.step(token)
        if terminated or truncated or obs["policy_mask"].sum() < obs["num_generated"][0]:
            break
    P, n = env.batch.max_prompt_tokens, int(obs["completion_length"][0])
    injected = tok.decode(obs["input_ids"][P : P + n][obs["policy_mask"][P : P + n] == 0].tolist())
    assert not (terminated or truncated)
    assert "// The program does not compile or run:" in injected and "undefined_name" in injected
    assert injected.endswith(f"// {CodeFeedbackRequest}\n{header}\n")
