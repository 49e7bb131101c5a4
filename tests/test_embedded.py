"""Integration tests on the real embedded SmolLM2-135M-Instruct (a few, they are slower)."""

import pytest
import torch

from agents import collect_episodes
from lm_envs import make_vec
from policies import CausalLMPolicy, load_lm


@pytest.fixture(scope="module")
def smol_policy_env():
    model, tokenizer = load_lm("smollm2-135m-instruct")  # its own copy: LoRA is injected in place
    env = make_vec(
        "lm_envs/GSM8K-v0",
        4,
        tokenizer,
        split="test",
        max_new_tokens=16,
        max_prompt_tokens=320,
        vocab_size=model.config.vocab_size,
        seed=0,
    )
    policy = CausalLMPolicy(
        env.observation_space, env.action_space, lambda _: 1e-5, model=model, lora={"r": 8, "lora_alpha": 16}
    )
    return policy, env, model, tokenizer


def test_greedy_rollout_reproduces_generate(smol_policy_env):
    policy, env, model, tokenizer = smol_policy_env
    episodes, _ = collect_episodes(policy, env, deterministic=True)
    P = env.batch.max_prompt_tokens
    with policy.model.disable_adapter():  # fresh LoRA is the identity anyway
        generated = policy.model.generate(
            input_ids=episodes.input_ids[:, :P],
            attention_mask=episodes.attention_mask[:, :P],
            do_sample=False,
            max_new_tokens=16,
            pad_token_id=tokenizer.pad_token_id,
        )
    for row in range(4):
        n = int(episodes.lengths[row])
        assert episodes.input_ids[row, P : P + n].tolist() == generated[row, P : P + n].tolist()


def test_sampled_rollout_log_probs_match_teacher_forced_and_kl_is_zero(smol_policy_env):
    policy, env, _, _ = smol_policy_env
    torch.manual_seed(0)
    episodes, _ = collect_episodes(policy, env)
    out = policy.evaluate_actions(episodes.input_ids, episodes.attention_mask, episodes.policy_mask)
    rollout = episodes.log_probs[episodes.action_mask]
    assert (out.log_prob - rollout).abs().max() < 1e-4
    ref = policy.evaluate_actions(episodes.input_ids, episodes.attention_mask, episodes.policy_mask, reference=True)
    assert (ref.log_prob - out.log_prob).abs().max() < 1e-6
