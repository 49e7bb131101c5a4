"""SFT/DPO/KTO losses and target construction (STaR's filter, DPO's pairs, KTO's labels):
by hand, and the losses against TRL 1.16.0's trainers on identical log-probs."""

import math
from types import SimpleNamespace

import pytest
import torch

from agents import preference_math as pm


def sig(x):
    return 1 / (1 + math.exp(-x))


# -- losses by hand ------------------------------------------------------------------------------
def test_sequence_log_probs_and_nll_are_masked():
    log_probs = torch.tensor([[-1.0, -2.0, -50.0], [-0.5, -99.0, -99.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert pm.sequence_log_probs(log_probs, mask).tolist() == [-3.0, -0.5]
    assert float(pm.nll_loss(log_probs, mask)) == pytest.approx((1.0 + 2.0 + 0.5) / 3)


def test_dpo_label_smoothing_by_hand():
    """Conservative DPO (sigmoid, ε > 0) and robust DPO, from their formulas."""
    import math

    pc, pr, rc, rr = (torch.tensor([v]) for v in (-2.0, -5.0, -3.0, -3.0))  # h = 1 + 2 = 3
    beta, eps = 0.5, 0.1
    z = beta * 3.0

    def log_sigmoid(x):
        return -math.log1p(math.exp(-x))

    cdpo, _ = pm.dpo_loss(pc, pr, rc, rr, beta, "sigmoid", label_smoothing=eps)
    assert float(cdpo) == pytest.approx(-(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z), rel=1e-6)
    robust, _ = pm.dpo_loss(pc, pr, rc, rr, beta, "robust", label_smoothing=eps)
    assert float(robust) == pytest.approx(
        (-(1 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (1 - 2 * eps), rel=1e-6
    )
    plain, _ = pm.dpo_loss(pc, pr, rc, rr, beta, "sigmoid")
    assert float(plain) == pytest.approx(-log_sigmoid(z), rel=1e-6) and float(cdpo) > float(plain)
    with pytest.raises(ValueError, match="label_smoothing"):
        pm.dpo_loss(pc, pr, rc, rr, beta, "robust", label_smoothing=0.5)


def test_dpo_losses_by_hand():
    pc, pr = torch.tensor([-4.0, -2.0]), torch.tensor([-5.0, -1.0])
    rc, rr = torch.tensor([-4.5, -2.0]), torch.tensor([-4.0, -1.5])
    beta = 0.5
    h = [(-4.0 + 4.5) - (-5.0 + 4.0), (-2.0 + 2.0) - (-1.0 + 1.5)]  # [1.5, -0.5]
    sigmoid, stats = pm.dpo_loss(pc, pr, rc, rr, beta, "sigmoid")
    assert sigmoid.tolist() == pytest.approx([-math.log(sig(beta * x)) for x in h])
    hinge, _ = pm.dpo_loss(pc, pr, rc, rr, beta, "hinge")
    assert hinge.tolist() == pytest.approx([max(0.0, 1 - beta * x) for x in h])
    lc, lr = torch.tensor([2, 4]), torch.tensor([1, 5])
    ipo, _ = pm.dpo_loss(pc, pr, rc, rr, beta, "ipo", lc, lr)
    hbar = [0.5 / 2 - (-1.0) / 1, 0.0 / 4 - 0.5 / 5]
    assert ipo.tolist() == pytest.approx([(x - 1 / (2 * beta)) ** 2 for x in hbar])
    assert stats["chosen_rewards"].tolist() == pytest.approx([0.25, 0.0])
    assert stats["rejected_rewards"].tolist() == pytest.approx([-0.5, 0.25])
    assert stats["accuracies"].tolist() == [1.0, 0.0]


def test_dpo_rejects_bad_settings():
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="loss_type"):
        pm.dpo_loss(x, x, x, x, 0.1, "nope")
    with pytest.raises(ValueError, match="lengths"):
        pm.dpo_loss(x, x, x, x, 0.1, "ipo")
    with pytest.raises(ValueError, match="beta"):
        pm.dpo_loss(x, x, x, x, 0.0)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = torch.tensor([-3.0], requires_grad=True), torch.tensor([-3.0], requires_grad=True)
    loss, _ = pm.dpo_loss(pc, pr, torch.tensor([-3.0]), torch.tensor([-3.0]), 0.1)
    loss.sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descending the loss raises log π_c and lowers log π_r


def test_kto_loss_and_reference_point_by_hand():
    logps, ref = torch.tensor([-2.0, -3.0, -1.0]), torch.tensor([-2.5, -2.0, -1.0])
    desirable = torch.tensor([True, False, True])
    z = pm.kto_reference_point(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.1]))
    assert float(z) == pytest.approx(0.3)
    assert float(pm.kto_reference_point(torch.tensor([-3.0]), torch.tensor([-1.0]))) == 0.0  # clamped at 0
    beta, wd, wu = 0.4, 1.0, 1.5
    losses, stats = pm.kto_loss(logps, ref, desirable, z, beta, wd, wu)
    r = [0.5, -1.0, 0.0]
    expected = [
        wd * (1 - sig(beta * (r[0] - 0.3))),
        wu * (1 - sig(beta * (0.3 - r[1]))),
        wd * (1 - sig(beta * (r[2] - 0.3))),
    ]
    assert losses.tolist() == pytest.approx(expected)
    assert stats["rewards"].tolist() == pytest.approx([beta * x for x in r])


# -- targets -------------------------------------------------------------------------------------
def test_star_filter_threshold_cap_and_duplicates():
    rewards = [1.0, 0.0, 1.0, 1.0, 0.5, 1.0, 0.0]
    groups = [0, 0, 0, 0, 1, 1, 2]
    assert pm.keep_above_threshold(rewards, groups, 1.0) == [0, 2, 3, 5]
    assert pm.keep_above_threshold(rewards, groups, 0.5) == [0, 2, 3, 4, 5]
    assert pm.keep_above_threshold(rewards, groups, 1.0, max_per_group=2) == [0, 2, 5]
    keys = ["a", "b", "a", "c", "d", "e", "f"]  # sample 2 repeats sample 0's completion
    assert pm.keep_above_threshold(rewards, groups, 1.0, keys=keys) == [0, 3, 5]
    assert pm.keep_above_threshold(rewards, groups, 1.0, max_per_group=1, keys=keys) == [0, 5]
    assert pm.keep_above_threshold(rewards, groups, 2.0) == []
    assert pm.groups_without([0, 5], groups) == [2]
    assert pm.groups_without([], groups) == [0, 1, 2]


def test_preference_pairs_best_vs_worst_and_all():
    rewards = [0.2, 1.0, 0.0, 1.0, 0.5, 0.5, 0.3, 0.9]
    groups = ["a", "a", "a", "a", "b", "b", "c", "c"]
    # a: best = 1 (first of the two 1.0s), worst = 2; b: no difference, no pair; c: 7 over 6.
    assert pm.preference_pairs(rewards, groups) == [(1, 2), (7, 6)]
    assert pm.preference_pairs(rewards, groups, margin=0.7) == [(1, 2)]
    assert pm.preference_pairs(rewards, groups, margin=1.0) == []  # strictly above the margin
    assert sorted(pm.preference_pairs(rewards, groups, "all")) == [(0, 2), (1, 0), (1, 2), (3, 0), (3, 2), (7, 6)]
    assert sorted(pm.preference_pairs(rewards, groups, "all", margin=0.5)) == [(1, 0), (1, 2), (3, 0), (3, 2), (7, 6)]
    keys = ["x", "y", "w", "z", "p", "q", "r", "r"]  # 7 and 6 are the same completion
    assert pm.preference_pairs(rewards, groups, keys=keys) == [(1, 2)]
    with pytest.raises(ValueError, match="strategy"):
        pm.preference_pairs(rewards, groups, "random")


def test_kto_labels_and_mismatched_partners():
    assert pm.kto_labels([1.0, 0.4, 0.5], 0.5).tolist() == [True, False, True]
    assert pm.mismatched_partners([0, 0, 1, 1]) == [2, 2, 0, 0]
    assert pm.mismatched_partners([0, 1, 2]) == [1, 2, 0]
    assert pm.mismatched_partners([5, 5]) == [1, 0]  # one group: the next sample
    assert pm.summarize([]) is None and pm.summarize([1.0, 3.0]) == 2.0


# -- parity with TRL 1.16.0 (a test-only dependency), on identical log-probs ----------------------
def _stub(per_input: dict[int, torch.Tensor]):
    """A stand-in for the model TRL's ``_compute_loss`` calls: it returns the given per-token
    log-probs (zero off the completion, as TRL's fused head does for label -100) for the
    ``input_ids`` tensor it is called with, so both sides see identical log-probs."""

    def model(input_ids, **kwargs):
        log_probs = per_input[input_ids.data_ptr()]
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(
            log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=torch.zeros_like(log_probs, dtype=torch.bool)
        )

    return model


def _batch(lengths, width, generator):
    """Right-padded completion rows: prompt of 3 tokens, then ``length`` completion tokens."""
    n = len(lengths)
    ids = torch.randint(3, 50, (n, width), generator=generator)
    completion_mask = torch.zeros(n, width, dtype=torch.long)
    attention = torch.zeros(n, width, dtype=torch.long)
    for row, length in enumerate(lengths):
        completion_mask[row, 3 : 3 + length] = 1
        attention[row, : 3 + length] = 1
    per_token = -torch.rand(n, width - 1, generator=generator) * 3 * completion_mask[:, 1:]
    return ids, attention, completion_mask, per_token


@pytest.mark.parametrize("loss_type, label_smoothing", [(t, 0.0) for t in pm.DPO_LOSS_TYPES] + [("robust", 0.2)])
def test_dpo_loss_equals_trls(loss_type, label_smoothing, tiny_lm, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = tiny_lm
    beta = 0.3
    config = DPOConfig(
        output_dir=str(tmp_path),
        beta=beta,
        loss_type=[loss_type],
        report_to=[],
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=2,
        label_smoothing=label_smoothing,
    )
    trainer = DPOTrainer(
        model=model,
        args=config,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": ["a"] * 2, "chosen": ["b"] * 2, "rejected": ["c"] * 2}),
    )
    trainer.precompute_ref_logps = True
    generator = torch.Generator().manual_seed(0)
    lengths = [2, 5, 3, 1, 4, 5, 2, 3]  # 4 chosen rows, then 4 rejected rows (TRL's layout)
    ids, attention, completion_mask, per_token = _batch(lengths, 9, generator)
    per_token.requires_grad_(True)
    ref = -torch.rand(8, generator=generator) * 6
    inputs = {
        "input_ids": ids,
        "attention_mask": attention,
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref[:4],
        "ref_rejected_logps": ref[4:],
    }
    theirs = trainer._compute_loss(_stub({ids.data_ptr(): per_token}), inputs, return_outputs=False)
    (their_grad,) = torch.autograd.grad(theirs, per_token)

    seq = pm.sequence_log_probs(per_token, completion_mask[:, 1:].bool())
    counts = completion_mask.sum(1)
    losses, _ = pm.dpo_loss(
        seq[:4], seq[4:], ref[:4], ref[4:], beta, loss_type, counts[:4], counts[4:], label_smoothing
    )
    ours = losses.mean()
    (our_grad,) = torch.autograd.grad(ours, per_token)
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-6, abs=1e-7)
    # TRL sums every position (its head gives log-prob 0 off the completion); ours is masked.
    on = completion_mask[:, 1:].bool()
    torch.testing.assert_close(our_grad[on], their_grad[on])
    assert (our_grad[~on] == 0).all()


def test_kto_loss_equals_trls(tiny_lm, tmp_path):
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    model, tokenizer = tiny_lm
    beta, wd, wu = 0.2, 1.0, 1.33
    config = KTOConfig(
        output_dir=str(tmp_path),
        beta=beta,
        desirable_weight=wd,
        undesirable_weight=wu,
        report_to=[],
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=2,
    )
    trainer = KTOTrainer(
        model=model,
        args=config,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict(
            {"prompt": ["a"] * 4, "completion": ["b", "c", "b", "c"], "label": [True, False, True, False]}
        ),
    )
    trainer.precompute_ref_logps = True
    generator = torch.Generator().manual_seed(1)
    ids, attention, completion_mask, per_token = _batch([3, 1, 4, 2, 5, 2], 9, generator)
    kl_ids, kl_attention, kl_mask, kl_per_token = _batch([2, 2, 3, 4, 1, 5], 9, generator)
    per_token.requires_grad_(True)
    labels = torch.tensor([True, False, True, True, False, False])
    ref = -torch.rand(6, generator=generator) * 5
    ref_kl = -torch.rand(6, generator=generator) * 5 - 8  # below the policy's: a positive reference point
    inputs = {
        "input_ids": ids,
        "attention_mask": attention,
        "completion_mask": completion_mask,
        "label": labels,
        "KL_input_ids": kl_ids,
        "KL_attention_mask": kl_attention,
        "KL_completion_mask": kl_mask,
        "ref_logps": ref,
        "ref_KL_logps": ref_kl,
    }
    stub = _stub({ids.data_ptr(): per_token, kl_ids.data_ptr(): kl_per_token})
    theirs = trainer._compute_loss(stub, inputs, return_outputs=False)
    (their_grad,) = torch.autograd.grad(theirs, per_token)

    z = pm.kto_reference_point(pm.sequence_log_probs(kl_per_token, kl_mask[:, 1:].bool()), ref_kl)
    assert float(z) > 0
    losses, _ = pm.kto_loss(
        pm.sequence_log_probs(per_token, completion_mask[:, 1:].bool()), ref, labels, z, beta, wd, wu
    )
    ours = losses.mean()
    (our_grad,) = torch.autograd.grad(ours, per_token)
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-6, abs=1e-7)
    # TRL sums every position (its head gives log-prob 0 off the completion); ours is masked.
    on = completion_mask[:, 1:].bool()
    torch.testing.assert_close(our_grad[on], their_grad[on])
    assert (our_grad[~on] == 0).all()
