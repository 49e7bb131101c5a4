"""agents.group_math against hand-computed values, and our GRPO loss against TRL's own loss path."""

import pytest
import torch

from agents import group_math, ppo_math


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    # group 1: mean 0.25, unbiased std = sqrt(((.75)^2 + 3 (.25)^2) / 3) = 0.5
    expected_centred = torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    torch.testing.assert_close(group_math.group_advantages(rewards, 4, "none"), expected_centred)
    torch.testing.assert_close(
        group_math.group_advantages(rewards, 4, "group"),
        expected_centred / torch.tensor([0.5] * 4 + [0.0] * 4).add(1e-4),
    )
    batch_std = rewards.std()
    torch.testing.assert_close(group_math.group_advantages(rewards, 4, "batch"), expected_centred / (batch_std + 1e-4))
    with pytest.raises(ValueError, match="scale_rewards"):
        group_math.group_advantages(rewards, 4, "nope")
    with pytest.raises(ValueError, match="groups of 3"):
        group_math.group_advantages(rewards, 3)


def test_leave_one_out_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 3.0, 5.0, 7.0])
    # group (1, 0, 0): baselines 0, 0.5, 0.5; group (3, 5, 7): baselines 6, 5, 4
    torch.testing.assert_close(
        group_math.leave_one_out_advantages(rewards, 3), torch.tensor([1.0, -0.5, -0.5, -3.0, 0.0, 3.0])
    )
    with pytest.raises(ValueError, match="at least 2"):
        group_math.leave_one_out_advantages(rewards, 1)


def test_grpo_token_normalisations_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    assert float(group_math.grpo_loss(loss, mask, "grpo", 4)) == pytest.approx((2.0 + 4.0) / 2)
    assert float(group_math.grpo_loss(loss, mask, "bnpo", 4)) == pytest.approx(10 / 4)
    assert float(group_math.grpo_loss(loss, mask, "dr_grpo", 4)) == pytest.approx(10 / (2 * 4))
    assert float(group_math.grpo_loss(loss, mask, "dapo", 4, num_items_in_batch=8)) == pytest.approx(10 / 8)
    assert float(group_math.grpo_loss(loss, mask, "grpo", 4, gradient_accumulation_steps=2)) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="loss_type"):
        group_math.grpo_loss(loss, mask, "nope", 4)


def test_asymmetric_clip_and_k3_by_hand():
    log_probs = torch.log(torch.tensor([[1.5, 0.5]]))
    old = torch.zeros(1, 2)
    advantages = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    per_token, stats = ppo_math.clipped_surrogate(log_probs, old, advantages, mask, 0.2, 0.28)
    # ratio 1.5 with A = 1: min(1.5, 1.28) = 1.28; ratio 0.5 with A = −1: min(−0.5, −0.8) = −0.8
    torch.testing.assert_close(per_token, torch.tensor([[-1.28, 0.8]]))
    assert float(stats["clip_fraction"]) == 1.0
    kl = ppo_math.k3(torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25])))
    assert float(kl) == pytest.approx(0.5 - torch.log(torch.tensor(0.5)).item() - 1)


def test_reinforce_baselines_by_hand():
    returns = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    torch.testing.assert_close(
        group_math.batch_mean_baseline(returns, mask), torch.tensor([[1 - 5 / 3, 1 - 5 / 3], [3 - 5 / 3, 0.0]])
    )
    running = group_math.RunningMeanBaseline(momentum=0.5)
    first = running(returns, torch.tensor([1.0, 3.0]), mask)  # starts at the first batch's mean, 2
    torch.testing.assert_close(first, torch.tensor([[-1.0, -1.0], [1.0, 0.0]]))
    assert running.value == pytest.approx(2.0)
    running(returns, torch.tensor([4.0, 4.0]), mask)
    assert running.value == pytest.approx(0.5 * 2 + 0.5 * 4)
    returns_to_go = ppo_math.returns_to_go(torch.tensor([[0.0, -0.1, 1.0]]), torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(returns_to_go, torch.tensor([[0.9, 0.9, 1.0]]))


# -- parity with TRL (a test-only dependency, pinned in setup.py's test extra) --------------------
@pytest.mark.parametrize("loss_type", group_math.GRPO_LOSS_TYPES)
@pytest.mark.parametrize("beta, correction", [(0.0, True), (0.05, True), (0.05, False)])
def test_grpo_loss_equals_trls_compute_loss(loss_type, beta, correction, tiny_dir, tiny_lm, tmp_path):
    """Same fixed batch (prompts, completions, old and reference log-probs, advantages), same
    model: our GRPO loss (policy log-probs from `CausalLMPolicy.evaluate_actions`, then
    `GRPO.loss`) equals ``GRPOTrainer._compute_loss`` (TRL 1.16.0, a private method: the version
    is pinned in setup.py's test extra), which computes its own log-probs from the same model.
    Compared: the loss value and its gradient on every trainable parameter."""
    assert_grpo_loss_equals_trls(tiny_lm, tmp_path, loss_type, beta, correction)


@pytest.mark.parametrize(
    "loss_type, beta, variant",
    [
        ("grpo", 0.0, {"importance_sampling_level": "sequence"}),  # GSPO as its paper runs it
        ("grpo", 0.05, {"importance_sampling_level": "sequence"}),  # with the corrected k3 term
        ("dapo", 0.0, {"delta": 1.05}),  # TRL's two-sided clip (binding here)
        ("dr_grpo", 0.05, {"delta": 1.05, "importance_sampling_level": "sequence"}),
    ],
)
def test_gspo_and_two_sided_clip_equal_trls_compute_loss(loss_type, beta, variant, tiny_lm, tmp_path):
    """GSPO (``importance_sampling_level="sequence"``) and TRL's ``delta``, against the same
    private ``GRPOTrainer._compute_loss``."""
    assert_grpo_loss_equals_trls(tiny_lm, tmp_path, loss_type, beta, True, **variant)


def assert_grpo_loss_equals_trls(tiny_lm, tmp_path, loss_type, beta, correction, **variant):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from agents import GRPO
    from agents.buffer import TokenBatch
    from agents.core import LossContext
    from lm_envs import Task, TokenVecEnv

    model, tokenizer = tiny_lm
    # Prompts of one length: TRL passes no position ids, so left padding would shift its positions.
    task = Task(
        questions=["how many apples does tom have", "how many cats does tom sell"],
        references=[0, 1],
        reward=lambda completions, references, prompts=None: [0.0] * len(completions),
        name="fixed",
        chat_template=False,
    )
    env = TokenVecEnv(
        task, tokenizer, num_envs=8, max_new_tokens=6, max_prompt_tokens=16, seed=0, completions_per_prompt=4
    )
    agent = GRPO(
        "CausalLMPolicy",
        env,
        loss_type=loss_type,
        beta=beta,
        kl_bias_correction=correction,
        epsilon=0.2,
        epsilon_high=0.28,
        seed=0,
        batch_size=8,
        micro_batch_size=8,
        policy_kwargs=dict(model=model),
        **variant,
    )
    agent.learn(total_iterations=1)  # one real batch; then a fixed, perturbed set of inputs
    buffer = agent.buffer
    generator = torch.Generator().manual_seed(0)
    old = buffer.log_probs + 0.05 * torch.randn(buffer.log_probs.shape, generator=generator) * buffer.mask
    ref = buffer.log_probs + 0.1 * torch.randn(buffer.log_probs.shape, generator=generator) * buffer.mask
    advantages = torch.randn(buffer.num_rows, generator=generator)

    # Ours.
    ids, attn, pol = buffer.trimmed_rows(torch.arange(buffer.num_rows))
    micro = TokenBatch(
        ids,
        attn,
        pol,
        buffer.mask,
        old,
        ref,
        buffer.values,
        advantages[:, None] * buffer.mask,
        advantages[:, None] * buffer.mask,
    )
    agent.policy.set_training_mode(True)
    agent.policy.optimizer.zero_grad(set_to_none=True)
    out = agent.policy.evaluate_actions(ids, attn, pol, with_entropy=False, with_values=False)
    context = LossContext(buffer.mask.sum(), 1, buffer.mask.shape[1], 0.2)
    ours, _ = agent.loss(micro, micro.unflatten(out.log_prob), None, context)
    ours.backward()
    our_grads = {n: p.grad.clone() for n, p in agent.policy.model.named_parameters() if p.grad is not None}

    # TRL's, on the same model object: prompt = the row's columns before its first action,
    # completion = the T action columns (padding after EOS masked out).
    prompt_width = agent.policy.prompt_width
    prompt_ids, prompt_mask = buffer.input_ids[:, :prompt_width], buffer.attention_mask[:, :prompt_width]
    completion_ids = buffer.input_ids[:, prompt_width:]
    completion_mask = buffer.mask.long()
    config = GRPOConfig(
        output_dir=str(tmp_path),
        loss_type=loss_type,
        beta=beta,
        epsilon=0.2,
        epsilon_high=0.28,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,
        report_to=[],
        use_cpu=True,
        bf16=False,
        gradient_accumulation_steps=1,
        temperature=1.0,
        logging_steps=1,
        use_bias_correction_kl=correction,
        **variant,
    )
    trainer = GRPOTrainer(
        model=agent.policy.model,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=config,
        train_dataset=Dataset.from_dict({"prompt": ["a b"] * 8}),
        processing_class=tokenizer,
    )
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": completion_mask.sum(),
    }
    agent.policy.optimizer.zero_grad(set_to_none=True)
    theirs = trainer._compute_loss(trainer.model, inputs)
    theirs.backward()
    their_grads = {n: p.grad.clone() for n, p in agent.policy.model.named_parameters() if p.grad is not None}

    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), abs=1e-5)
    assert our_grads.keys() == their_grads.keys() and our_grads
    for name in our_grads:
        torch.testing.assert_close(our_grads[name], their_grads[name], atol=1e-5, rtol=1e-4)
