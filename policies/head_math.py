"""The chosen token's log-prob and the entropy from the LM head, without ``(N, V)`` temporaries.

What lives here: `log_softmax` and `probabilities`, the rollout's (floored, see below), and two
custom autograd functions that return, per row, log π(a) and the entropy H of the tempered
softmax:

- `selected_log_probs` from ``(N, V)`` logits (any output layer: soft-capped, LoRA-wrapped...);
- `linear_selected_log_probs` from the final hidden states and a plain linear head's weight,
  which also owns the logits, so its backward writes their gradient into them in place.

They are the teacher-forced update's and the reference pass's route when no top-k/top-p
truncation applies (see `CausalLMPolicy.evaluate_actions`). Pure maths; imports only torch.

Why: ``log_softmax`` + ``gather`` + an entropy over the log-probs makes about six full-size
``(N, V)`` tensors per update (log-probs, probs, a mask, a masked copy, a product, the
log-softmax gradient): with a 49k vocabulary and a thousand actions that is 200 MB each, freshly
allocated and page-faulted, and ``exp`` of the many log-probs below −87 takes the CPU's slow
subnormal path. Here rows are processed in small chunks that stay in cache, exponents are
floored (`_exp_floor`), only ``lse`` and H are kept per row, and the gradient is written once.
"""
from __future__ import annotations

import math

import torch

CHUNK_BYTES = 4 * 2**20  # about 4 MB of float32 logits per chunk: cache-sized, few Python steps


def selected_log_probs(logits: torch.Tensor, actions: torch.Tensor, temperature: float = 1.0,
                       with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log softmax(z)[a], −Σ softmax(z)·log softmax(z)) per row, z = logits / temperature.

    Equal (to float rounding) to ``log_softmax(z).gather(-1, a)`` and the entropy of
    ``softmax(z)``, gradients included (both outputs are differentiable w.r.t. ``logits``).
    ``logits`` ``(N, V)`` of any float dtype (computed in float32 or wider); ``actions`` ``(N,)``
    long. The entropy is ``None`` unless ``with_entropy``.
    """
    _check(logits.shape, actions)
    chosen, entropy = _SelectedLogProbs.apply(logits, actions, float(temperature), with_entropy)
    return chosen, (entropy if with_entropy else None)


def linear_selected_log_probs(hidden: torch.Tensor, weight: torch.Tensor, actions: torch.Tensor,
                              temperature: float = 1.0,
                              with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`selected_log_probs` of ``logits = hidden @ weightᵀ`` (a bias-free linear head, e.g. a
    tied LM head), differentiable w.r.t. ``hidden`` ``(N, H)`` and ``weight`` ``(V, H)``. The
    logits never leave the function, so their gradient overwrites them: one ``(N, V)`` tensor
    per pass instead of two."""
    _check((hidden.shape[0], weight.shape[0]), actions)
    chosen, entropy = _LinearSelectedLogProbs.apply(hidden, weight, actions, float(temperature), with_entropy)
    return chosen, (entropy if with_entropy else None)


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``torch.log_softmax(logits, -1)`` with the normaliser summed over floored exponents
    (`_exp_floor`): the same values and gradients to float rounding, without the slow subnormal
    ``exp``."""
    top = logits.detach().amax(-1, keepdim=True)
    shifted = logits - torch.where(torch.isfinite(top), top, 0.0)
    return shifted - shifted.clamp(min=_exp_floor(logits.dtype)).exp().sum(-1, keepdim=True).log()


def probabilities(log_probs: torch.Tensor) -> torch.Tensor:
    """``log_probs.exp()``, with probabilities under e^floor (≤ 1e-30 in float32) set to exactly 0
    rather than computed through the slow subnormal ``exp``; −inf stays 0."""
    floor = _exp_floor(log_probs.dtype)
    return log_probs.clamp(min=floor).exp_().masked_fill_(log_probs <= floor, 0.0)


def _check(shape, actions: torch.Tensor) -> None:
    if len(shape) != 2 or actions.shape != tuple(shape[:1]):
        raise ValueError(f"logits must be (N, V) and actions (N,), got {tuple(shape)} and {tuple(actions.shape)}")


def _exp_floor(dtype: torch.dtype) -> float:
    """Lower bound on exponents: ``exp`` of anything below is ≤ 1e-30 (float32), far under float
    resolution, yet the vectorised ``exp`` takes a slow path (about 10× on CPU) for arguments
    whose result would be subnormal, and a 49k vocabulary has thousands of those per row."""
    return 0.8 * math.log(torch.finfo(dtype).tiny)


def _rows_per_chunk(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * max(vocab, 1)))


def _statistics(logits: torch.Tensor, actions: torch.Tensor, temperature: float, with_entropy: bool):
    """(log π(a), lse, H) per row of z = logits / temperature, chunk by chunk."""
    n, vocab = logits.shape
    dtype = torch.promote_types(logits.dtype, torch.float32)
    floor = _exp_floor(dtype)
    lse = torch.empty(n, dtype=dtype, device=logits.device)
    entropy = torch.zeros(n, dtype=dtype, device=logits.device)
    step = _rows_per_chunk(vocab)
    for start in range(0, n, step):
        z = logits[start:start + step].to(dtype)
        if temperature != 1.0:
            z = z / temperature
        top = z.amax(-1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, 0.0)  # an all −inf row: no NaN from −inf − −inf
        shifted = (z - top).clamp_(min=floor)  # z − max, floored: never −inf, never subnormal exp
        probs = shifted.exp()
        total = probs.sum(-1)
        lse[start:start + step] = top.squeeze(-1) + total.log()
        if with_entropy:  # H = −Σ p·log p = log Σ − Σ exp(s)·s / Σ
            entropy[start:start + step] = total.log() - torch.linalg.vecdot(probs, shifted) / total
    chosen = logits.gather(-1, actions[:, None]).squeeze(-1).to(dtype) / temperature - lse
    return chosen, lse, entropy


def _logits_grad(logits: torch.Tensor, out: torch.Tensor, actions: torch.Tensor, lse: torch.Tensor,
                 entropy: torch.Tensor, temperature: float, grad_chosen, grad_entropy) -> torch.Tensor:
    """∂L/∂logits into ``out`` (which may be ``logits`` itself), chunk by chunk:
    ∂log π(a)/∂z = onehot(a) − p, ∂H/∂z = −p·(log p + H), then ÷ temperature."""
    n, vocab = logits.shape
    floor = _exp_floor(lse.dtype)
    step = _rows_per_chunk(vocab)
    for start in range(0, n, step):
        stop = start + step
        z = logits[start:stop].to(lse.dtype)
        if temperature != 1.0:
            z = z / temperature
        log_p = (z - lse[start:stop, None]).clamp_(min=floor)
        probs = log_p.exp()
        if grad_entropy is not None:
            part = probs * log_p.add_(entropy[start:stop, None])
            part.mul_(-grad_entropy[start:stop, None])
            if grad_chosen is not None:
                part.sub_(probs * grad_chosen[start:stop, None])
        else:
            part = probs.mul_(-grad_chosen[start:stop, None])
        if grad_chosen is not None:
            part.scatter_add_(1, actions[start:stop, None], grad_chosen[start:stop, None].to(part.dtype))
        if temperature != 1.0:
            part.div_(temperature)
        out[start:stop] = part
    return out


class _SelectedLogProbs(torch.autograd.Function):
    """Forward keeps ``lse`` and H per row; backward rebuilds softmax from the saved logits."""

    @staticmethod
    def forward(ctx, logits, actions, temperature, with_entropy):
        chosen, lse, entropy = _statistics(logits, actions, temperature, with_entropy)
        ctx.save_for_backward(logits, actions, lse, entropy)
        ctx.temperature = temperature
        ctx.set_materialize_grads(False)
        return chosen, entropy

    @staticmethod
    def backward(ctx, grad_chosen, grad_entropy):
        logits, actions, lse, entropy = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or (grad_chosen is None and grad_entropy is None):
            return None, None, None, None
        grad = _logits_grad(logits, torch.empty_like(logits), actions, lse, entropy, ctx.temperature,
                            grad_chosen, grad_entropy)
        return grad, None, None, None


class _LinearSelectedLogProbs(torch.autograd.Function):
    """The same with the head's matmul inside: the logits are private, so the backward turns
    them into their own gradient, then ∂hidden = g·W and ∂W = gᵀ·hidden."""

    @staticmethod
    def forward(ctx, hidden, weight, actions, temperature, with_entropy):
        logits = hidden @ weight.t()
        chosen, lse, entropy = _statistics(logits, actions, temperature, with_entropy)
        ctx.save_for_backward(hidden, weight, actions, lse, entropy)
        ctx.logits = logits if any(ctx.needs_input_grad[:2]) else None
        ctx.temperature = temperature
        ctx.set_materialize_grads(False)
        return chosen, entropy

    @staticmethod
    def backward(ctx, grad_chosen, grad_entropy):
        hidden, weight, actions, lse, entropy = ctx.saved_tensors
        logits, ctx.logits = ctx.logits, None  # a second backward through this graph fails loudly
        if logits is None:
            raise RuntimeError("linear_selected_log_probs: backward through the graph a second time "
                               "(the logits became their gradient during the first)")
        if grad_chosen is None and grad_entropy is None:
            return None, None, None, None, None
        grad = _logits_grad(logits, logits, actions, lse, entropy, ctx.temperature, grad_chosen, grad_entropy)
        grad_hidden = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad.t() @ hidden if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None, None
