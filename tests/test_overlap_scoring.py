"""Overlapped scoring (`EpisodeConfig.overlap_scoring`, `lm_envs.scoring.BackgroundScorer`): rows
are scored in the background as they finish, their terminal step (with the reward) is held back
until the score is in, and a rollout with it equals one without it."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from helpers import echo_task

from agents.rollout import collect_episodes
from lm_envs import TokenVecEnv
from lm_envs.scoring import BackgroundScorer
from policies import CausalLMPolicy
from rewards import SandboxError


class SlowReward:
    """The echo task's reward, recording every call (and its thread); optionally held on a gate."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False):
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()
        self.gate, self.fail = gate, fail

    def __call__(self, completions, references, prompts=None):
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise SandboxError("the jail could not start (test)")
        self.calls.append(list(completions))
        return np.array([c.split().count("7") / max(1, len(c.split())) for c in completions], dtype=np.float32)


def vec(tokenizer, reward, **kw):
    return TokenVecEnv(
        echo_task(reward=reward),
        tokenizer,
        num_envs=4,
        max_new_tokens=6,
        max_prompt_tokens=16,
        seed=0,
        overlap_scoring=True,
        **kw,
    )


def test_held_rows_report_their_terminal_step_once_scored(tiny_lm):
    _, tok = tiny_lm
    eos, seven = tok.eos_token_id, tok.convert_tokens_to_ids("7")
    gate = threading.Event()
    reward = SlowReward(gate)
    env = vec(tok, reward)
    assert env.batch.overlap_scoring
    env.reset()
    # step 1: row 0 ends at once (EOS); the others write a 7
    obs, rewards, dones, infos = env.step(np.array([eos, seven, seven, seven]))
    assert not dones.any() and env.scoring_rows.tolist() == [True, False, False, False]
    assert env.waiting_rows[0] and not env.waiting_rows[1:].any()  # no action recorded for a held row
    obs, rewards, dones, infos = env.step(np.array([seven, eos, seven, seven]))  # row 0's action is ignored
    assert not dones.any() and env.scoring_rows.tolist() == [True, True, False, False]
    gate.set()  # the scorer may now finish; rows 2 and 3 end on this step, so the batch waits for all
    obs, rewards, dones, infos = env.step(np.array([seven, seven, eos, eos]))
    assert dones.all() and not env.scoring_rows.any()
    assert rewards.tolist() == [0.0, 1.0, 1.0, 1.0]  # "", "7", "7 7", "7 7" (EOS is not text)
    assert [info["score"] for info in infos] == rewards.tolist()
    assert all("terminal_observation" in info and info["reward_wait"] >= 0 for info in infos)
    assert sum(len(c) for c in reward.calls) == 4 and len(reward.calls) < 4  # each row once, batched
    assert reward.threads == {"lm-envs-scorer_0"}  # never on the stepping thread


def test_a_reward_error_reaches_the_caller(tiny_lm):
    _, tok = tiny_lm
    env = vec(tok, SlowReward(fail=True))
    env.reset()
    eos = tok.eos_token_id
    with pytest.raises(SandboxError, match="could not start"):
        for _ in range(6):  # the error surfaces on a later step, at the latest when the batch waits
            env.step(np.full(4, eos))


def test_when_overlap_is_on(tiny_lm):
    from lm_envs import Task
    from lm_envs.tasks.turns import Reply

    _, tok = tiny_lm

    def respond(attempts, references, turns):
        return [Reply(None, 1.0) for _ in attempts]

    slow = SlowReward()
    kw = dict(max_new_tokens=4, max_prompt_tokens=8)
    assert not vec_of(Task(["q"], [0], slow, name="t"), tok, 4, **kw).batch.overlap_scoring  # off by default
    assert vec_of(Task(["q"], [0], slow, name="t"), tok, 4, overlap_scoring=True, **kw).batch.overlap_scoring
    on = dict(kw, overlap_scoring=True)
    assert not vec_of(Task(["q"], [0], slow, name="t"), tok, 4, autoreset=True, **on).batch.overlap_scoring
    assert not vec_of(
        Task(["q"], [0], slow, name="t"), tok, 1, **on
    ).batch.overlap_scoring  # one row: nothing to hide behind
    replying = Task(["q"], [0], slow, name="t", respond=respond)
    assert not vec_of(replying, tok, 4, max_injected_tokens=8, **kw).batch.overlap_scoring
    with pytest.raises(ValueError, match="verdicts are needed at once"):
        vec_of(replying, tok, 4, max_injected_tokens=8, overlap_scoring=True, **kw)


def vec_of(task, tok, n, **kw):
    return TokenVecEnv(task, tok, num_envs=n, seed=0, **kw)


@pytest.mark.parametrize("deterministic", [True, False])
def test_a_rollout_with_overlap_equals_one_without(tiny_lm, deterministic):
    """The same actions, log-probs, values, rewards and infos; rows being scored leave the
    forward batch as finished rows do."""
    model, tok = tiny_lm
    # rows end at very different steps (greedy: the tiny model repeats one token per row, and
    # these end rows 1 and 7 after 1 and 5 steps)
    eos = list(range(2, 40)) if not deterministic else [14, 34]

    def env(overlap):
        return TokenVecEnv(
            echo_task(reward=SlowReward()),
            tok,
            num_envs=8,
            max_new_tokens=10,
            max_prompt_tokens=16,
            seed=0,
            eos_token_ids=eos,
            overlap_scoring=overlap,
        )

    policy = CausalLMPolicy(env(False).observation_space, env(False).action_space, lambda _: 1e-3, model=model)
    runs = []
    for overlap in (False, True):
        torch.manual_seed(0)
        episodes, _ = collect_episodes(policy, env(overlap), deterministic=deterministic)
        runs.append(episodes)
    plain, overlapped = runs
    assert len(set(plain.lengths.tolist())) > 1
    for name in ("input_ids", "attention_mask", "policy_mask", "action_mask", "env_rewards", "terminated"):
        assert torch.equal(getattr(plain, name), getattr(overlapped, name)), name
    assert torch.allclose(plain.log_probs, overlapped.log_probs, atol=1e-5)
    assert torch.allclose(plain.values, overlapped.values, atol=1e-5)
    keys = ("completion", "score", "index", "prompt")
    assert [{k: i[k] for k in keys} for i in plain.infos] == [{k: i[k] for k in keys} for i in overlapped.infos]


def test_scorer_batches_what_finished_while_a_call_ran():
    gate = threading.Event()
    seen = []

    def reward(completions, references, prompts):
        gate.wait(10)
        seen.append(list(completions))
        return [len(c) for c in completions]

    scorer = BackgroundScorer(reward)
    scorer.submit(0, "a", None, None)
    scorer.submit(1, "bb", None, None)  # queued behind the call in flight
    scorer.submit(2, "ccc", None, None)
    assert scorer.pending == {0, 1, 2} and scorer.ready() == {}
    gate.set()
    done = scorer.wait()
    assert {k: v[0] for k, v in done.items()} == {0: 1.0, 1: 2.0, 2: 3.0}
    assert seen == [["a"], ["bb", "ccc"]] and scorer.pending == set()
    scorer.close()
