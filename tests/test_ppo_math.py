"""PPO maths against hand-computed references on small tensors."""

import math

import pytest
import torch

from agents import ppo_math


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    gamma, lam = 0.9, 0.8
    adv, ret = ppo_math.gae(rewards, values, mask, gamma, lam)
    # Row 0: deltas with no bootstrap after the last token.
    d2 = 1.0 - 0.3
    d1 = 0.0 + gamma * 0.3 - 0.2
    d0 = 0.0 + gamma * 0.2 - 0.1
    a2, a1 = d2, d1 + gamma * lam * d2
    a0 = d0 + gamma * lam * a1
    assert torch.allclose(adv[0], torch.tensor([a0, a1, a2]))
    # Row 1 ends at t=1: the (garbage) value 9.0 after the end must not leak in.
    b1 = 2.0 - 0.5
    b0 = 0.5 + gamma * 0.5 - 0.4 + gamma * lam * b1
    assert torch.allclose(adv[1], torch.tensor([b0, b1, 0.0]))
    assert torch.allclose(ret, (adv + values) * mask)


def test_whitening_uses_only_masked_entries():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    w = ppo_math.masked_whiten(x, mask)
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = (vals - 2.5) / math.sqrt(vals.var(unbiased=False) + 1e-8)
    assert torch.allclose(w[mask], expected, atol=1e-6)
    assert (w[~mask] == 0).all()


def test_token_rewards_put_score_on_last_real_token():
    scores = torch.tensor([1.0, -2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    r = ppo_math.token_rewards(scores, kl, 0.5, mask)
    assert torch.allclose(r, torch.tensor([[-0.05, -0.1, -0.15 + 1.0], [-0.2 - 2.0, 0.0, 0.0]]))


def test_kl_estimators():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    assert torch.allclose(ppo_math.kl_estimate(lp, ref, "k1"), torch.tensor([0.5, 0.0]))
    k3 = ppo_math.kl_estimate(lp, ref, "k3")
    assert torch.allclose(k3, torch.tensor([math.exp(-0.5) - 1 + 0.5, 0.0]))
    with pytest.raises(ValueError):
        ppo_math.kl_estimate(lp, ref, "k2")


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, stats = ppo_math.clipped_policy_loss(new, old, adv, mask, 0.2)
    # max(-A r, -A clip(r)): token0: max(-1.5, -1.2) = -1.2; token1: max(-0.5, -0.8) = -0.5; token2: max(1.1, 1.1) = 1.1
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 3)
    ratio = torch.tensor([1.5, 0.5, 1.1])
    assert stats["approx_kl"].item() == pytest.approx(((ratio - 1) - ratio.log()).mean().item())


def test_clipped_value_loss_by_hand():
    v = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.0, 0.0]])
    ret = torch.tensor([[2.0, 1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    # token0: unclipped (1-2)^2=1, clipped v=0.2 -> (0.2-2)^2=3.24 -> 3.24; token1: 1 vs 1 -> 1
    assert ppo_math.clipped_value_loss(v, old, ret, mask, 0.2).item() == pytest.approx(0.5 * (3.24 + 1) / 2)
    assert ppo_math.clipped_value_loss(v, old, ret, mask, None).item() == pytest.approx(0.5 * (1 + 1) / 2)


def test_adaptive_kl_controller():
    ctl = ppo_math.AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(12.0, 10)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    ctl.update(6.0, 10)
    assert ctl.value == pytest.approx(0.1 * 1.02)
    fixed = ppo_math.FixedKLController(0.3)
    fixed.update(100.0, 10)
    assert fixed.value == 0.3
