"""The chosen token's log-prob and the entropy from the LM head, without ``(N, V)`` temporaries.

What lives here: `log_softmax`, `probabilities` and `sample`, the rollout's (floored, see below), and two
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
import weakref

import torch

CHUNK_BYTES = 4 * 2**20  # about 4 MB of float32 logits per chunk: cache-sized, few Python steps


def selected_log_probs(
    logits: torch.Tensor, actions: torch.Tensor, temperature: float = 1.0, with_entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log softmax(z)[a], −Σ softmax(z)·log softmax(z)) per row, z = logits / temperature.

    Equal (to float rounding) to ``log_softmax(z).gather(-1, a)`` and the entropy of
    ``softmax(z)``, gradients included (both outputs are differentiable w.r.t. ``logits``).
    ``logits`` ``(N, V)`` of any float dtype (computed in float32 or wider); ``actions`` ``(N,)``
    long. The entropy is ``None`` unless ``with_entropy``.
    """
    _check(logits.shape, actions)
    chosen, entropy = _SelectedLogProbs.apply(logits, actions, float(temperature), with_entropy)
    return chosen, (entropy if with_entropy else None)


def linear_selected_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    actions: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = True,
    workspace: LogitsWorkspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`selected_log_probs` of ``logits = hidden @ weightᵀ`` (a bias-free linear head, e.g. a
    tied LM head), differentiable w.r.t. ``hidden`` ``(N, H)`` and ``weight`` ``(V, H)``. The
    logits never leave the function, so their gradient overwrites them: one ``(N, V)`` tensor
    per pass instead of two; with a ``workspace``, that tensor is reused from call to call."""
    _check((hidden.shape[0], weight.shape[0]), actions)
    chosen, entropy = _LinearSelectedLogProbs.apply(
        hidden, weight, actions, float(temperature), with_entropy, workspace
    )
    return chosen, (entropy if with_entropy else None)


class LogitsWorkspace:
    """One ``(N, V)`` logits buffer that `linear_selected_log_probs` reuses across calls.

    A fresh tensor of that size (200 MB for 1,000 actions and a 49k vocabulary) is page-faulted
    by the matmul that fills it, which made the head's forward matmul run at half the machine's
    GEMM rate. The buffer is lent to one call at a time: from its forward until its backward has
    run, or until its graph is freed without one (a weak reference to the autograd node); a call
    that finds it lent gets a fresh tensor. It grows to the largest batch seen and is kept (the
    memory a fresh tensor would take at that point anyway).
    """

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None
        self._borrower: weakref.ref | None = None

    def take(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, bool]:
        """(an uninitialised ``(rows, vocab)`` tensor, whether it is the shared buffer)."""
        if self._borrower is not None and self._borrower() is not None:
            return torch.empty(rows, vocab, dtype=dtype, device=device), False
        self._borrower = None
        old = self._buffer
        if old is None or old.numel() < rows * vocab or old.dtype != dtype or old.device != device:
            self._buffer = old = None  # free the old one before allocating the new one
            self._buffer = torch.empty(rows * vocab, dtype=dtype, device=device)
        return self._buffer[: rows * vocab].view(rows, vocab), True

    def lend(self, borrower) -> None:
        self._borrower = weakref.ref(borrower)

    def give_back(self) -> None:
        self._borrower = None


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


def sample(probs: torch.Tensor) -> torch.Tensor:
    """One index per row of ``probs`` ``(B, V)`` (non-negative, need not sum to 1), drawn by the
    inverse CDF: ``a = min{i : Σ_{j≤i} p_j > u·Σ p}`` with one uniform ``u`` per row.

    The distribution of ``torch.multinomial(probs, 1)``, which instead draws V exponentials per
    row (14 ms against 1 ms for 16 × 49,152 on our CPU, a twentieth of a decoding step). A
    zero-probability index is never drawn; the float32 CDF moves any other probability by at most
    about 1e-7."""
    cdf = probs.cumsum(-1)
    u = torch.rand(len(probs), 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    index = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    last = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(-1)  # u rounded up to Σp: the last possible
    return torch.minimum(index, last)


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
    """(log π(a), lse, H) per row of z = logits / temperature, chunk by chunk, in two reused
    chunk buffers (fresh allocations of that size are page-faulted on every call)."""
    n, vocab = logits.shape
    dtype = torch.promote_types(logits.dtype, torch.float32)
    floor = _exp_floor(dtype)
    lse = torch.empty(n, dtype=dtype, device=logits.device)
    entropy = torch.zeros(n, dtype=dtype, device=logits.device)
    step = min(_rows_per_chunk(vocab), max(n, 1))
    shifted_buffer = torch.empty(step, vocab, dtype=dtype, device=logits.device)
    probs_buffer = torch.empty_like(shifted_buffer)
    for start in range(0, n, step):
        z = logits[start : start + step]
        shifted, probs = shifted_buffer[: len(z)], probs_buffer[: len(z)]
        top = z.amax(-1, keepdim=True).to(dtype) / temperature
        top = torch.where(torch.isfinite(top), top, 0.0)  # an all −inf row: no NaN from −inf − −inf
        torch.add(-top, z, alpha=1.0 / temperature, out=shifted)  # z/T − max
        shifted.clamp_(min=floor)  # never −inf, never a subnormal exp
        torch.exp(shifted, out=probs)
        total = probs.sum(-1)
        lse[start : start + step] = top.squeeze(-1) + total.log()
        if with_entropy:  # H = −Σ p·log p = log Σ − Σ exp(s)·s / Σ
            entropy[start : start + step] = total.log() - torch.linalg.vecdot(probs, shifted) / total
    chosen = logits.gather(-1, actions[:, None]).squeeze(-1).to(dtype) / temperature - lse
    return chosen, lse, entropy


def _logits_grad(
    logits: torch.Tensor,
    out: torch.Tensor,
    actions: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    temperature: float,
    grad_chosen,
    grad_entropy,
) -> torch.Tensor:
    """∂L/∂logits into ``out`` (which may be ``logits`` itself), chunk by chunk:
    ∂log π(a)/∂z = onehot(a) − p, ∂H/∂z = −p·(log p + H), then ÷ temperature."""
    n, vocab = logits.shape
    floor = _exp_floor(lse.dtype)
    step = min(_rows_per_chunk(vocab), max(n, 1))
    log_p_buffer = torch.empty(step, vocab, dtype=lse.dtype, device=logits.device)
    for start in range(0, n, step):
        stop = start + step
        z, dest = logits[start:stop], out[start:stop]
        log_p = log_p_buffer[: len(z)]
        torch.add(-lse[start:stop, None], z, alpha=1.0 / temperature, out=log_p)
        log_p.clamp_(min=floor)
        torch.exp(log_p, out=dest)  # p; ``z`` is not read again, so ``dest`` may be ``z``
        if grad_entropy is not None:  # p·(−(log p + H)·g_H − g_a)
            coefficient = log_p.add_(entropy[start:stop, None]).mul_(-grad_entropy[start:stop, None])
            if grad_chosen is not None:
                coefficient.sub_(grad_chosen[start:stop, None])
            dest.mul_(coefficient)
        else:
            dest.mul_(-grad_chosen[start:stop, None])
        if grad_chosen is not None:
            dest.scatter_add_(1, actions[start:stop, None], grad_chosen[start:stop, None].to(dest.dtype))
        if temperature != 1.0:
            dest.div_(temperature)
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
        grad = _logits_grad(
            logits, torch.empty_like(logits), actions, lse, entropy, ctx.temperature, grad_chosen, grad_entropy
        )
        return grad, None, None, None


class _LinearSelectedLogProbs(torch.autograd.Function):
    """The same with the head's matmul inside: the logits are private, so the backward turns
    them into their own gradient, then ∂hidden = g·W and ∂W = gᵀ·hidden."""

    @staticmethod
    def forward(ctx, hidden, weight, actions, temperature, with_entropy, workspace):
        shape = (hidden.shape[0], weight.shape[0])
        if workspace is None:
            logits, shared = torch.empty(shape, dtype=hidden.dtype, device=hidden.device), False
        else:
            logits, shared = workspace.take(*shape, hidden.dtype, hidden.device)
        torch.mm(hidden, weight.t(), out=logits)
        chosen, lse, entropy = _statistics(logits, actions, temperature, with_entropy)
        ctx.save_for_backward(hidden, weight, actions, lse, entropy)
        needs_grad = any(ctx.needs_input_grad[:2])
        ctx.logits = logits if needs_grad else None
        ctx.workspace = workspace if shared and needs_grad else None
        if ctx.workspace is not None:
            workspace.lend(ctx)
        elif shared:
            workspace.give_back()
        ctx.temperature = temperature
        ctx.set_materialize_grads(False)
        return chosen, entropy

    @staticmethod
    def backward(ctx, grad_chosen, grad_entropy):
        hidden, weight, actions, lse, entropy = ctx.saved_tensors
        logits, ctx.logits = ctx.logits, None  # a second backward through this graph fails loudly
        if logits is None:
            raise RuntimeError(
                "linear_selected_log_probs: backward through the graph a second time "
                "(the logits became their gradient during the first)"
            )
        grad_hidden = grad_weight = None
        if grad_chosen is not None or grad_entropy is not None:
            grad = _logits_grad(logits, logits, actions, lse, entropy, ctx.temperature, grad_chosen, grad_entropy)
            grad_hidden = grad @ weight if ctx.needs_input_grad[0] else None
            grad_weight = grad.t() @ hidden if ctx.needs_input_grad[1] else None
        if ctx.workspace is not None:
            ctx.workspace.give_back()
        return grad_hidden, grad_weight, None, None, None, None
