"""SFT, STaR, DPO and KTO on the rounds loop (tiny model): targets, a round of each end to end,
skipped rounds, rationalization's hint stripping, merged model directories, bit-exact resume."""
import math

import numpy as np
import pytest
import torch

from agents import SFT, sequences
from agents.rounds import ScoredRolloutAlgorithm
from helpers import echo_task
from lm_envs import Task, TokenVecEnv

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def digit_fraction(completions, references, prompts=None):
    """A reward the random tiny model's samples differ on: the fraction of digit words."""
    return np.array([sum(w.isdigit() for w in c.split()) / max(1, len(c.split())) for c in completions],
                    dtype=np.float32)


def make_env(tokenizer, num_envs=8, group=4, seed=0, task=None, max_new_tokens=6):
    return TokenVecEnv(task or echo_task(), tokenizer, num_envs=num_envs, max_new_tokens=max_new_tokens,
                       max_prompt_tokens=16, seed=seed, completions_per_prompt=group)


def make(cls, tiny_dir, tokenizer, lora=LORA, group=4, env_seed=0, task=None, **kwargs):
    settings = dict(learning_rate=3e-3, batch_size=4, seed=0)
    settings.update(kwargs)
    env = make_env(tokenizer, group=group if cls is not SFT else 1, seed=env_seed,
                   task=task or echo_task(reward=digit_fraction))
    return cls("CausalLMPolicy", env, policy_kwargs=dict(model=str(tiny_dir), lora=lora), **settings)


def trainable(agent):
    return {n: p.detach().clone() for n, p in agent.policy.named_parameters() if p.requires_grad}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sft_learns_completions_and_writes_a_loadable_merged_model(tiny_dir, tiny_lm, tmp_path):
    from policies import load_lm

    model, tokenizer = tiny_lm
    task = echo_task()
    data = [{"prompt": q, "completion": "7 7 7"} for q in task.questions]
    agent = SFT("CausalLMPolicy", make_env(tokenizer, group=1, task=task), dataset=data, learning_rate=1e-2,
                batch_size=4, micro_batch_size=2, seed=0, policy_kwargs=dict(model=str(tiny_dir)))
    agent.learn(total_iterations=6)
    assert agent.iteration == 6 and agent.num_timesteps == 6 * len(data)
    stats = agent.last_iteration_stats
    assert all(math.isfinite(v) for v in stats.values())
    assert stats["loss/policy"] < 1.0 and stats["sft/examples"] == len(data)
    # The completion is what it learnt: greedy decoding now writes 7s.
    from agents.evaluation import evaluate_policy

    summary, _ = evaluate_policy(agent.policy, make_env(tokenizer, group=1, task=task), 8)
    assert summary["score_mean"] > 0.5
    # LoRA: the adapter is merged into a copy; the directory is a plain model + tokenizer.
    agent = SFT("CausalLMPolicy", make_env(tokenizer, group=1, task=task), dataset=data, learning_rate=1e-2,
                batch_size=4, seed=0, policy_kwargs=dict(model=str(tiny_dir), lora=LORA))
    agent.learn(total_iterations=1)
    assert agent.policy.uses_lora
    agent.save_merged(tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert (tmp_path / "merged" / "model.safetensors").exists()
    merged, merged_tokenizer = load_lm(str(tmp_path / "merged"))
    assert len(merged_tokenizer) == len(tokenizer)
    ids = torch.tensor([tokenizer("how many 7 7").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, agent.policy.model(ids).logits, atol=1e-4, rtol=1e-4)


def test_sft_default_data_is_the_tasks_gold_references_and_a_bad_column_is_clear(tiny_dir, tiny_lm):
    tokenizer = tiny_lm[1]
    task = Task(questions=["how many apples", "how many cats"], references=["7 7", "3"],
                reward=lambda c, r, p=None: np.zeros(len(c), np.float32), name="gold", chat_template=False)
    agent = SFT("CausalLMPolicy", make_env(tokenizer, num_envs=2, group=1, task=task), batch_size=2, seed=0,
                policy_kwargs=dict(model=str(tiny_dir)))
    prompts, completions = agent.encoded()
    assert [tokenizer.decode(c) for c in completions] == ["7 7 </s>", "3 </s>"]
    assert tokenizer.decode(prompts[0]) == "how many apples"
    bad = SFT("CausalLMPolicy", make_env(tokenizer, num_envs=2, group=1, task=task), dataset=[{"question": "a"}],
              batch_size=2, policy_kwargs=dict(model=str(tiny_dir)))
    with pytest.raises(ValueError, match=r"no column\(s\) \['prompt', 'completion'\]"):
        bad.encoded()


def test_sft_resume_continues_the_data_stream_bit_exactly(tiny_dir, tiny_lm, tmp_path):
    tokenizer = tiny_lm[1]
    data = [{"prompt": q, "completion": "7 3"} for q in echo_task().questions]

    def build():
        return SFT("CausalLMPolicy", make_env(tokenizer, group=1), dataset=data, examples_per_round=5,
                   batch_size=4, micro_batch_size=2, learning_rate=1e-2, seed=3,
                   policy_kwargs=dict(model=str(tiny_dir), lora=LORA))

    straight = build()
    straight.learn(total_iterations=4)
    first = build()
    first.learn(total_iterations=2)
    first.save(tmp_path / "half")
    with pytest.raises(ValueError, match="pass it again"):
        SFT.load(tmp_path / "half", env=make_env(tokenizer, group=1))
    resumed = SFT.load(tmp_path / "half", env=make_env(tokenizer, group=1), dataset=data)
    assert resumed._stream == {"epoch": 0, "position": 10}
    resumed.learn(total_iterations=4, reset_num_timesteps=False)
    assert same(trainable(straight), trainable(resumed))


