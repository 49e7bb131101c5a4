"""policies.head_math: the fused log-prob/entropy routes equal log_softmax + gather, gradients
included, and the policy's teacher-forced evaluation equals its unfused route."""

import pytest
import torch
from helpers import echo_task

from agents import collect_episodes
from lm_envs import TokenVecEnv
from policies import CausalLMPolicy
from policies.head_math import (
    LogitsWorkspace,
    linear_selected_log_probs,
    log_softmax,
    probabilities,
    selected_log_probs,
)


def reference(logits, actions, temperature):
    log_probs = torch.log_softmax(logits / temperature, -1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs.masked_fill(probs == 0, 0.0)).sum(-1)
    return log_probs.gather(-1, actions[:, None]).squeeze(-1), entropy


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("which", ["chosen", "entropy", "both"])
def test_selected_log_probs_match_log_softmax_with_gradients(temperature, which):
    torch.manual_seed(0)
    logits = (torch.randn(300, 257, dtype=torch.float64) * 6).requires_grad_()  # 300 rows: several chunks
    actions = torch.randint(0, 257, (300,))
    g_chosen, g_entropy = torch.randn(300, dtype=torch.float64), torch.randn(300, dtype=torch.float64)

    def loss(chosen, entropy):
        return ((chosen * g_chosen).sum() if which != "entropy" else 0) + (
            (entropy * g_entropy).sum() if which != "chosen" else 0
        )

    chosen, entropy = selected_log_probs(logits, actions, temperature)
    want_chosen, want_entropy = reference(logits, actions, temperature)
    torch.testing.assert_close(chosen, want_chosen)
    torch.testing.assert_close(entropy, want_entropy)
    got = torch.autograd.grad(loss(chosen, entropy), logits)[0]
    want = torch.autograd.grad(loss(want_chosen, want_entropy), logits)[0]
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_linear_selected_log_probs_match_with_gradients(temperature):
    torch.manual_seed(1)
    hidden = torch.randn(70, 16, dtype=torch.float64, requires_grad=True)
    weight = (torch.randn(300, 16, dtype=torch.float64) * 2).requires_grad_()
    actions = torch.randint(0, 300, (70,))
    g = torch.randn(70, dtype=torch.float64)
    chosen, entropy = linear_selected_log_probs(hidden, weight, actions, temperature)
    want_chosen, want_entropy = reference(hidden @ weight.t(), actions, temperature)
    torch.testing.assert_close(chosen, want_chosen)
    torch.testing.assert_close(entropy, want_entropy)
    got = torch.autograd.grad((chosen * g).sum() + entropy.sum(), (hidden, weight))
    want = torch.autograd.grad((want_chosen * g).sum() + want_entropy.sum(), (hidden, weight))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    _, none = linear_selected_log_probs(hidden, weight, actions, temperature, with_entropy=False)
    assert none is None


def test_linear_route_refuses_a_second_backward():
    hidden = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(10, 8, requires_grad=True)
    chosen, _ = linear_selected_log_probs(hidden, weight, torch.tensor([1, 2, 3, 4]))
    chosen.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second time"):
        chosen.sum().backward()


def test_workspace_is_lent_to_one_graph_at_a_time():
    """Two graphs alive at once (chosen and rejected rows of DPO, say) never share the buffer;
    it comes back after a backward, after a graph is freed unused, and after a no-grad pass."""
    torch.manual_seed(3)
    weight = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    hiddens = [torch.randn(n, 8, dtype=torch.float64, requires_grad=True) for n in (6, 4)]
    actions = [torch.randint(0, 50, (n,)) for n in (6, 4)]
    workspace = LogitsWorkspace()
    outs = [linear_selected_log_probs(h, weight, a, workspace=workspace)[0] for h, a in zip(hiddens, actions)]
    assert not workspace.take(2, 50, torch.float64, torch.device("cpu"))[1]  # lent to the first graph
    (outs[0].sum() + 2 * outs[1].sum()).backward()
    want = [reference(h @ weight.t(), a, 1.0)[0] for h, a in zip(hiddens, actions)]
    grads = torch.autograd.grad(want[0].sum() + 2 * want[1].sum(), [*hiddens, weight])
    for got, expected in zip([h.grad for h in hiddens] + [weight.grad], grads):
        torch.testing.assert_close(got, expected)
    assert workspace.take(2, 50, torch.float64, torch.device("cpu"))[1]  # given back by the backward
    unused = linear_selected_log_probs(hiddens[0], weight, actions[0], workspace=workspace)
    assert not workspace.take(2, 50, torch.float64, torch.device("cpu"))[1]
    del unused
    assert workspace.take(2, 50, torch.float64, torch.device("cpu"))[1]  # graph freed: back
    with torch.no_grad():
        linear_selected_log_probs(hiddens[0], weight, actions[0], workspace=workspace)
    assert workspace.take(2, 50, torch.float64, torch.device("cpu"))[1]


def test_minus_inf_logits_and_bad_shapes():
    logits = torch.randn(3, 20)
    logits[:, :5] = -float("inf")
    actions = torch.tensor([7, 9, 19])
    chosen, entropy = selected_log_probs(logits, actions)
    want_chosen, want_entropy = reference(logits, actions, 1.0)
    torch.testing.assert_close(chosen, want_chosen)
    torch.testing.assert_close(entropy, want_entropy)
    with pytest.raises(ValueError, match=r"actions \(N,\)"):
        selected_log_probs(logits, actions[:2])


def test_floored_log_softmax_and_probabilities():
    torch.manual_seed(2)
    logits = torch.randn(6, 5000) * 30  # most exponents far below the float32 subnormal range
    logits[0, :100] = -float("inf")
    got, want = log_softmax(logits), torch.log_softmax(logits, -1)
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got))
    torch.testing.assert_close(got[finite], want[finite])
    probs = probabilities(want)
    torch.testing.assert_close(probs, want.exp(), atol=1e-30, rtol=1e-6)
    assert (probs[~finite] == 0).all() and (probs[want < -80] == 0).all()


class Unfused(CausalLMPolicy):
    """Overriding the hook turns the fused route off: the plain log_softmax + gather route."""

    def action_log_probs(self, *args, **kwargs):
        return super().action_log_probs(*args, **kwargs)


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_policy_fused_route_equals_unfused_route(tiny_lm, temperature):
    model, tokenizer = tiny_lm
    env = TokenVecEnv(echo_task(), tokenizer, num_envs=4, max_new_tokens=8, max_prompt_tokens=16, seed=0)
    torch.manual_seed(0)
    policies = [
        cls(env.observation_space, env.action_space, lambda _: 1e-3, model=model, temperature=temperature)
        for cls in (CausalLMPolicy, Unfused)
    ]
    policies[1].load_state_dict(policies[0].state_dict())
    episodes, _ = collect_episodes(policies[0], env)
    outs, grads = [], []
    for policy in policies:
        policy.zero_grad(set_to_none=True)
        out = policy.evaluate_actions(episodes.input_ids, episodes.attention_mask, episodes.policy_mask)
        (out.log_prob.sum() + 0.1 * out.entropy.sum() + out.values.sum()).backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[0].log_prob, episodes.log_probs[episodes.action_mask], atol=1e-5, rtol=1e-5)
    for field in ("log_prob", "entropy", "values"):
        torch.testing.assert_close(getattr(outs[0], field), getattr(outs[1], field), atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)
    ref = [
        p.evaluate_actions(episodes.input_ids, episodes.attention_mask, episodes.policy_mask, reference=True)
        for p in policies
    ]
    torch.testing.assert_close(ref[0].log_prob, ref[1].log_prob, atol=1e-5, rtol=1e-5)


def test_sample_draws_the_multinomial_distribution(monkeypatch):
    from policies.head_math import sample

    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3, 0.0], [0.0, 0.0, 0.0, 2.0, 0.0]])  # the second unnormalised
    torch.manual_seed(0)
    draws = sample(probs.repeat(20000, 1)).view(20000, 2)
    first = torch.bincount(draws[:, 0], minlength=5).double() / 20000
    assert torch.allclose(first, torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0], dtype=torch.float64), atol=0.012)
    assert first[1] == 0 and first[4] == 0  # zero probability: never drawn
    assert (draws[:, 1] == 3).all()
    torch.manual_seed(0)
    assert torch.equal(sample(probs.repeat(20000, 1)).view(20000, 2), draws)  # seeded: reproducible
    # u rounded up to the total lands on the last index with probability, not on a zero one.
    monkeypatch.setattr(torch, "rand", lambda *shape, **kwargs: torch.ones(*shape, **kwargs))
    assert sample(torch.tensor([[0.5, 0.5, 0.0, 0.0]])).item() == 1
    big = torch.softmax(torch.randn(4, 49152) * 3, -1)
    assert ((big.gather(1, sample(big)[:, None])) > 0).all()
