"""CausalLMPolicy on a tiny random Llama: rollout/teacher-forced agreement, KL, greedy parity."""

import itertools

import numpy as np
import pytest
import torch
from helpers import echo_task

from agents import collect_episodes
from lm_envs import TokenVecEnv
from policies import CausalLMPolicy, load_lm


def make(tiny_lm, num_envs=4, max_new_tokens=8, seed=0, **policy_kwargs):
    model, tokenizer = tiny_lm
    env = TokenVecEnv(
        echo_task(), tokenizer, num_envs=num_envs, max_new_tokens=max_new_tokens, max_prompt_tokens=16, seed=seed
    )
    policy = CausalLMPolicy(env.observation_space, env.action_space, lambda _: 1e-3, model=model, **policy_kwargs)
    return env, policy


def teacher_forced(policy, episodes, **kwargs):
    out = policy.evaluate_actions(episodes.input_ids, episodes.attention_mask, episodes.policy_mask, **kwargs)
    return out


@pytest.mark.parametrize(
    "policy_kwargs",
    [
        {},
        {"temperature": 0.7},
        {"top_k": 5},
        {"top_p": 0.8, "temperature": 1.3},
        {"lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
    ],
)
def test_rollout_log_probs_equal_teacher_forced(tiny_lm, policy_kwargs):
    torch.manual_seed(0)
    env, policy = make(tiny_lm, **policy_kwargs)
    episodes, _ = collect_episodes(policy, env)
    assert episodes.action_mask.any(1).all()
    out = teacher_forced(policy, episodes)
    assert out.log_prob.shape == (int(episodes.action_mask.sum()),)
    assert torch.allclose(out.log_prob, episodes.log_probs[episodes.action_mask], atol=1e-4)
    assert torch.allclose(out.values, episodes.values[episodes.action_mask], atol=1e-4)
    assert torch.isfinite(out.entropy).all() and (out.entropy >= 0).all()


def test_truncated_sampling_log_probs_never_minus_inf(tiny_lm):
    torch.manual_seed(1)
    env, policy = make(tiny_lm, top_k=3)
    episodes, _ = collect_episodes(policy, env)
    assert torch.isfinite(episodes.log_probs[episodes.action_mask]).all()
    # With top-k 3, every chosen token is among the 3 most likely ones.
    logits = torch.randn(2, 50)
    lp = policy.log_probs_from_logits(logits)
    assert (torch.isfinite(lp).sum(-1) == 3).all()
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2))


@pytest.mark.parametrize("lora", [None, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}])
def test_kl_to_reference_is_zero_at_init(tiny_lm, lora):
    torch.manual_seed(0)
    env, policy = make(tiny_lm, lora=lora)
    if lora:  # peft initialises B = 0; make the adapter non-trivial to prove it is switched off
        assert policy.reference_model is None
    episodes, _ = collect_episodes(policy, env)
    ref = teacher_forced(policy, episodes, reference=True).log_prob
    cur = teacher_forced(policy, episodes).log_prob
    assert torch.allclose(ref, cur, atol=1e-6)
    # ...and the reference really is separate: moving the policy moves the KL.
    with torch.no_grad():
        for param in policy.model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    moved = teacher_forced(policy, episodes).log_prob
    ref_after = teacher_forced(policy, episodes, reference=True).log_prob
    assert torch.allclose(ref_after, ref, atol=1e-6)
    assert (moved - ref).abs().max() > 1e-3


def test_lora_reference_shares_the_backbone(tiny_lm):
    env, policy = make(tiny_lm, lora={"r": 4, "target_modules": ["q_proj"]})
    base_params = sum(p.numel() for p in policy.model.parameters())
    total = sum(p.numel() for p in policy.parameters())
    assert total == base_params + sum(p.numel() for p in policy.value_head.parameters())


def test_greedy_rollout_matches_generate(tiny_lm):
    model, tokenizer = tiny_lm
    env, policy = make(tiny_lm, num_envs=4, max_new_tokens=10)
    episodes, _ = collect_episodes(policy, env, deterministic=True)
    P = env.batch.max_prompt_tokens
    prompts = episodes.input_ids[:, :P]
    mask = episodes.attention_mask[:, :P]
    generated = model.generate(
        input_ids=prompts,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=10,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    for row in range(4):
        ours = episodes.input_ids[row, P : P + int(episodes.lengths[row])].tolist()
        theirs = generated[row, P:].tolist()[: len(ours)]
        assert ours == theirs


def test_pad_equals_eos_is_not_masked(tiny_lm):
    """With pad == eos, an emitted EOS is a real action: attended, scored and terminal."""
    model, tokenizer = tiny_lm
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    env, policy = make(tiny_lm, num_envs=2, max_new_tokens=5)
    obs = env.reset()
    eos = tokenizer.eos_token_id
    obs, rewards, dones, infos = env.step(np.array([eos, 5]))
    assert dones[0] and not dones[1]
    final = infos[0]["terminal_observation"]
    P = env.batch.max_prompt_tokens
    assert final["input_ids"][P] == eos and final["attention_mask"][P] == 1 and final["policy_mask"][P] == 1
    ids = torch.as_tensor(final["input_ids"])[None]
    out = policy.evaluate_actions(
        ids, torch.as_tensor(final["attention_mask"])[None].long(), torch.as_tensor(final["policy_mask"])[None].long()
    )
    assert out.log_prob.shape == (1,) and torch.isfinite(out.log_prob).all()


def test_out_of_step_rows_fall_back_to_full_prefix(tiny_lm):
    """Per-row auto-reset: rows out of step give the same log-probs as a fresh full pass."""
    model, tokenizer = tiny_lm
    env = TokenVecEnv(
        echo_task(), tokenizer, num_envs=3, max_new_tokens=6, max_prompt_tokens=16, seed=0, autoreset=True
    )
    policy = CausalLMPolicy(env.observation_space, env.action_space, lambda _: 1e-3, model=model)
    obs = env.reset()
    obs, *_ = env.step(np.array([5, 6, 7]))
    # Pretend row 1 just restarted: its prompt is reloaded, others keep their token.
    env.batch.load(np.array([1]), [3])
    obs = env.batch.observation()
    mixed = policy.act(
        {k: torch.as_tensor(v) for k, v in obs.items()}, None, np.array([False, True, False]), deterministic=True
    )
    assert mixed[3].cache is None
    assert obs["num_generated"][:, 0].tolist() == [1, 0, 1]
    for row in range(3):
        single = {k: torch.as_tensor(v[row : row + 1]) for k, v in obs.items()}
        alone = policy.act(single, None, np.array([True]), deterministic=True)
        for got, want in zip(mixed[:3], alone[:3]):
            assert torch.allclose(got[row : row + 1].float(), want.float(), atol=1e-5)


def test_action_space_must_match_model(tiny_lm):
    model, tokenizer = tiny_lm
    env = TokenVecEnv(
        echo_task(), tokenizer, num_envs=1, max_new_tokens=4, max_prompt_tokens=16, vocab_size=len(tokenizer) + 7
    )
    with pytest.raises(ValueError, match="vocab_size=model.config.vocab_size"):
        CausalLMPolicy(env.observation_space, env.action_space, lambda _: 1e-3, model=model)


def test_predict_sb3_surface(tiny_lm):
    env, policy = make(tiny_lm, num_envs=2)
    obs = env.reset()
    actions, state = policy.predict(obs, None, np.ones(2, dtype=bool), deterministic=True)
    assert actions.shape == (2,) and actions.dtype.kind == "i"
    obs, *_ = env.step(actions)
    actions2, state2 = policy.predict(obs, state, np.zeros(2, dtype=bool), deterministic=True)
    assert state2.mask.shape[1] == state.mask.shape[1] + 1  # the cache grew by one column
    assert torch.equal(state2.fed, state.fed + 1)


def test_dropout_is_zeroed_and_gradient_checkpointing_is_live(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), attention_dropout=0.3)
    env = TokenVecEnv(echo_task(), load_lm(str(tiny_dir))[1], num_envs=2, max_new_tokens=4, max_prompt_tokens=16)
    policy = CausalLMPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 1e-3,
        model=model,
        lora={"r": 2, "lora_dropout": 0.5, "target_modules": ["q_proj"]},
        gradient_checkpointing=True,
    )
    dropouts = [m.p for m in policy.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(p == 0.0 for p in dropouts)
    policy.set_training_mode(True)
    assert any(getattr(m, "gradient_checkpointing", False) and m.training for m in policy.model.modules())
    torch.manual_seed(0)
    episodes, _ = collect_episodes(policy, env)  # rollouts switch back to eval (KV cache on)
    assert not policy.model.training
    policy.set_training_mode(True)
    out = policy.evaluate_actions(episodes.input_ids, episodes.attention_mask, episodes.policy_mask)
    assert torch.allclose(out.log_prob, episodes.log_probs[episodes.action_mask], atol=1e-4)
    out.log_prob.sum().backward()
    assert any(p.grad is not None for p in policy.model.parameters() if p.requires_grad)


def test_grouped_prompts_share_one_prefill(tiny_lm):
    """With k completions per prompt the prompt pass runs once per distinct prompt; the copies get
    the same cache, so log-probs still equal teacher-forced ones and greedy copies agree."""
    model, tokenizer = tiny_lm
    env = TokenVecEnv(
        echo_task(), tokenizer, num_envs=8, completions_per_prompt=4, max_new_tokens=8, max_prompt_tokens=16, seed=0
    )
    policy = CausalLMPolicy(env.observation_space, env.action_space, lambda _: 1e-3, model=model)
    batch_sizes = []
    run = policy._run
    policy._run = lambda model, input_ids, *args, **kwargs: (
        batch_sizes.append(len(input_ids)),
        run(model, input_ids, *args, **kwargs),
    )[1]
    torch.manual_seed(0)
    episodes, _ = collect_episodes(policy, env)
    # One pass over the 2 distinct prompts, then decoding steps over the 8 rows (fewer as rows end).
    assert batch_sizes[0] == 2 and batch_sizes[1] == 8 and batch_sizes[1:] == sorted(batch_sizes[1:], reverse=True)
    assert len({tuple(row) for row in episodes.input_ids[:, : env.batch.max_prompt_tokens].tolist()}) == 2
    del batch_sizes[:]
    out = teacher_forced(policy, episodes)
    assert batch_sizes == [2, 8]  # teacher forcing shares the prompt pass too
    assert torch.allclose(out.log_prob, episodes.log_probs[episodes.action_mask], atol=1e-4)
    assert torch.allclose(out.values, episodes.values[episodes.action_mask], atol=1e-4)
    # Gradients through the shared prompt pass equal those of running every row on its own.
    params = [p for p in policy.parameters() if p.requires_grad]
    policy.optimizer.zero_grad()
    (out.log_prob.sum() + out.values.sum() + out.entropy.sum()).backward()
    shared = [p.grad.clone() for p in params]
    policy.optimizer.zero_grad()
    for row in range(8):
        one = policy.evaluate_actions(
            episodes.input_ids[row : row + 1],
            episodes.attention_mask[row : row + 1],
            episodes.policy_mask[row : row + 1],
        )
        (one.log_prob.sum() + one.values.sum() + one.entropy.sum()).backward()
    for a, p in zip(shared, params):
        assert torch.allclose(a, p.grad, atol=1e-4, rtol=1e-4)
    assert any(a.abs().sum() > 0 for a in shared)
    greedy, _ = collect_episodes(policy, env, deterministic=True)
    for group in greedy.input_ids.split(4):
        assert (group == group[0]).all()


def test_finished_rows_leave_the_forward_batch(tiny_lm):
    """Compaction: once a row ends, it leaves the KV cache and every later forward pass; log-probs
    still equal teacher forcing, and greedy tokens equal an uncompacted rollout's."""
    model, tokenizer = tiny_lm
    eos = list(range(2, 40))  # many end tokens, so rows end at very different steps

    def env():
        return TokenVecEnv(
            echo_task(), tokenizer, num_envs=8, max_new_tokens=10, max_prompt_tokens=16, seed=0, eos_token_ids=eos
        )

    policy = CausalLMPolicy(env().observation_space, env().action_space, lambda _: 1e-3, model=model)
    rows_seen, head_rows = [], []
    hook = policy.model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: rows_seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    head = policy.model.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: head_rows.append(args[0].shape[:-1])
    )
    torch.manual_seed(0)
    episodes, _ = collect_episodes(policy, env())
    hook.remove()
    head.remove()
    lengths = episodes.lengths
    assert len(set(lengths.tolist())) > 2
    # After the first pass, step t runs exactly the rows whose episode is longer than t.
    assert rows_seen[1:] == [int((lengths > t).sum()) for t in range(1, int(lengths.max()))]
    # The LM head runs once per step, on one position per active row (never also inside the
    # model); the first pass runs each distinct prompt once but scores every row.
    assert [tuple(r) for r in head_rows] == [(8,)] + [(n,) for n in rows_seen[1:]]
    out = teacher_forced(policy, episodes)
    assert torch.allclose(out.log_prob, episodes.log_probs[episodes.action_mask], atol=1e-4)
    assert torch.allclose(out.values, episodes.values[episodes.action_mask], atol=1e-4)
    compacted, _ = collect_episodes(policy, env(), deterministic=True)
    full, _ = collect_episodes(policy, env(), deterministic=True, compact=False)
    assert torch.equal(compacted.input_ids, full.input_ids)
    assert torch.allclose(compacted.log_probs, full.log_probs, atol=1e-5)


def test_fsdp_refuses_lora_and_is_a_no_op_in_one_process(tiny_lm):
    """fsdp=True shards full fine-tuning under torchrun (tests/test_distributed.py); with LoRA it is a
    clear error, and in one process `shard` and `gathered` change nothing."""
    model, tokenizer = tiny_lm
    env = TokenVecEnv(echo_task(), tokenizer, num_envs=2, max_new_tokens=4, max_prompt_tokens=16, seed=0)
    with pytest.raises(ValueError, match="fsdp=True shards full fine-tuning"):
        CausalLMPolicy(env.observation_space, env.action_space, lambda _: 1e-3, model=model, lora={"r": 2}, fsdp=True)
    policy = CausalLMPolicy(
        env.observation_space, env.action_space, lambda _: 1e-3, model=model, fsdp=True, reference=False
    )
    optimizer = policy.optimizer
    policy.shard()
    assert not policy.sharded and policy.optimizer is optimizer and policy.trainable_state() is None
    with policy.gathered(reference=True):
        assert not policy.sharded
    assert policy.optimizer_state() == optimizer.state_dict()


def test_length_buckets_pad_no_row_by_more_than_the_slack():
    from policies.causal_lm import _length_buckets

    buckets = _length_buckets(torch.tensor([5, 30, 20, 29, 6]), slack=3)
    assert [b.tolist() for b in buckets] == [[1, 3], [2], [4, 0]]
    assert [b.tolist() for b in _length_buckets(torch.tensor([7, 7, 7]), slack=0)] == [[0, 1, 2]]


def test_left_padded_cache_refuses_sliding_window_layers():
    from transformers import DynamicCache

    from policies.kv_cache import left_padded

    k = torch.randn(1, 2, 3, 4)
    padded = left_padded([DynamicCache([(k, k)]), DynamicCache([(k[:, :, :2], k[:, :, :2])])], 5)
    keys, values, _ = next(iter(padded))
    assert keys.shape == (2, 2, 5, 4) and torch.equal(keys[0, :, 2:], k[0]) and (keys[:, :, :2] == 0).all()
    assert torch.equal(keys[1, :, 3:], k[0, :, :2]) and (keys[1, :, :3] == 0).all()
    assert left_padded([DynamicCache([(k, k, torch.tensor(2))])], 5) is None


def test_prompts_of_different_lengths_run_in_length_buckets(tiny_lm):
    """Short and long prompts run in separate passes, each as wide as its longest prompt; the
    log-probs, values, gradients and greedy tokens equal those of one padded pass."""
    from lm_envs import Task
    from policies.causal_lm import PROMPT_BUCKET_SLACK

    model, tokenizer = tiny_lm
    short, long = "how many apples", " ".join(["tom buys more cats and dogs"] * 6)
    task = Task(
        questions=[short, long, short + " does tom have", long + " and sells them"],
        references=[0, 1, 2, 3],
        reward=echo_task().reward,
        name="lengths",
        chat_template=False,
    )

    def env():
        return TokenVecEnv(task, tokenizer, num_envs=4, max_new_tokens=6, max_prompt_tokens=64, seed=0)

    policy = CausalLMPolicy(env().observation_space, env().action_space, lambda _: 1e-3, model=model)
    widths = []
    run = policy._run
    policy._run = lambda model, input_ids, *args, **kwargs: (
        widths.append(tuple(input_ids.shape)),
        run(model, input_ids, *args, **kwargs),
    )[1]
    torch.manual_seed(0)
    episodes, _ = collect_episodes(policy, env())
    width = env().batch.max_prompt_tokens
    lengths = {
        tuple(row): int(n)
        for row, n in zip(episodes.input_ids[:, :width].tolist(), episodes.attention_mask[:, :width].sum(1))
    }
    assert max(lengths.values()) - min(lengths.values()) > PROMPT_BUCKET_SLACK
    # The prefill: one pass per length bucket, long prompts first, each only as wide as its
    # longest prompt, over the distinct prompts; then one decoding step per step over every row.
    prefill = list(itertools.takewhile(lambda shape: shape[1] > 1, widths))
    assert len(prefill) == 2 and sum(rows for rows, _ in prefill) == len(lengths)
    assert prefill[0][1] == max(lengths.values()) and prefill[1][1] < prefill[0][1] - PROMPT_BUCKET_SLACK

    def scored(bucketed):
        policy._bucket_prompts = bucketed
        policy.optimizer.zero_grad()
        out = teacher_forced(policy, episodes)
        (out.log_prob.sum() + out.values.sum() + out.entropy.sum()).backward()
        return out, [p.grad.clone() for p in policy.parameters() if p.requires_grad]

    del widths[:]
    bucketed, grads = scored(True)
    assert len(widths) == 3  # two prompt buckets, then the completion columns of every row
    padded, padded_grads = scored(False)
    assert torch.allclose(bucketed.log_prob, episodes.log_probs[episodes.action_mask], atol=1e-4)
    assert torch.allclose(bucketed.log_prob, padded.log_prob, atol=1e-5)
    assert torch.allclose(bucketed.values, padded.values, atol=1e-5)
    for a, b in zip(grads, padded_grads):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in grads)
    policy._bucket_prompts = True
    greedy, _ = collect_episodes(policy, env(), deterministic=True)
    policy._bucket_prompts = False
    greedy_padded, _ = collect_episodes(policy, env(), deterministic=True)
    assert torch.equal(greedy.input_ids, greedy_padded.input_ids)
    assert torch.allclose(greedy.log_probs, greedy_padded.log_probs, atol=1e-5)
