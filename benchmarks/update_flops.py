"""One PPO update against the machine's own limit: achieved FLOP/s ÷ fp32 GEMM FLOP/s, in one run.

Workload: the embedded SmolLM2-135M-Instruct (fp32; or ``--model random:DIR``, fresh weights), the
same 4 GSM8K test prompts × 4 completions = 16 completions of up to 64 new tokens as
``benchmarks/ppo_vs_trl.py``, one PPO epoch in one optimizer step over the 16 rows (no KL term:
no reference pass). Only the update is timed (``time/update`` of `agents.PPO`: the
teacher-forced forward, the backward and the AdamW step); the rollout is not.

FLOPs of one update, counted as documented here (the usual 2·N per token per forward pass):

- ``N`` = non-embedding parameters (the input embedding is a lookup; the tied LM head is
  counted apart, below);
- per trained token (a completion token, an action): ``6·N`` for full fine-tuning (forward 2N,
  backward 4N: activation and weight gradients), ``4·N`` for LoRA (no weight gradients of the
  frozen base; the adapters' own FLOPs are negligible and not counted);
- prompt tokens: once per *distinct* prompt (its rows share it), at the same 6·N or 4·N;
- the LM head (``d × V``) only at action positions: ``6·d·V`` (full) or ``4·d·V`` (LoRA) per
  trained token, since logits are needed only there;
- attention score/value products, norms, the value head and the optimizer's element-wise work
  are not counted (small at these lengths; they make the ratio a slight underestimate).

Machine limit: the best of several fp32 ``torch.mm`` runs at the model's own GEMM shapes (rows =
the update's tokens, d × 3d/... as the MLP and attention projections), with the same number of
threads as the update, into a preallocated output. Everything runs in one process, alone on the
machine, alternating GEMM and update measurements so drift in load hits both. The first
``--warmup`` updates are not timed (the first builds AdamW's state; the heap grows to its peak
over the first few, see `agents.memory`); each iteration's minor page faults are printed. Last
line: ``ratio=<achieved/GEMM>``.

    python benchmarks/update_flops.py [--steps 3] [--warmup 2] [--threads 2] [--lora]
    python benchmarks/update_flops.py --device cuda --dtype bfloat16 --model random:DIR   # a GPU: bf16 GEMM
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch


def gemm_flops_per_s(shapes: list[tuple[int, int, int]], repeats: int) -> float:
    """Best fp32 FLOP/s over `shapes` (M, K, N) of ``torch.mm``: 2·M·K·N per product, into a
    preallocated output (the product alone, no allocation or page faults)."""
    best = 0.0
    for m, k, n in shapes:
        a, b, c = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        torch.mm(a, b, out=c)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=c)
            best = max(best, 2.0 * m * k * n / (time.perf_counter() - start))
    return best


def model_counts(model) -> tuple[int, int, int]:
    """(non-embedding parameters N, hidden size d, vocabulary V)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embed = base.get_input_embeddings().weight
    total = sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n)
    head = base.get_output_embeddings().weight
    tied = head.data_ptr() == embed.data_ptr()
    n = total - embed.numel() - (0 if tied else head.numel())
    return n, embed.shape[1], embed.shape[0]


def update_flops(n: int, d: int, vocab: int, trained_tokens: int, prompt_tokens: int, lora: bool) -> float:
    per_token = 4 if lora else 6
    return per_token * n * (trained_tokens + prompt_tokens) + per_token * d * vocab * trained_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed updates (after the warm-up ones)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed updates first: the first builds the optimizer state, and the process heap "
        "grows to its peak over the first few (agents.memory keeps it from then on)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--lora", action="store_true", help="LoRA (r 16, all linear layers) instead of full fine-tuning"
    )
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="anything policies.load_lm takes (random:DIR: DIR's config, fresh weights)",
    )
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32 (CPU) or bfloat16 (GPU)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from agents import PPO
    from lm_envs import make_vec
    from policies import load_lm

    model, tokenizer = load_lm(args.model, dtype=args.dtype)
    dtype = getattr(torch, args.dtype)
    n = args.prompts * args.generations
    env = make_vec(
        "lm_envs/GSM8K-v0",
        n,
        tokenizer,
        split="test",
        limit=args.prompts,
        data_dir=args.data_dir,
        completions_per_prompt=args.generations,
        max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=512,
        vocab_size=model.config.vocab_size,
    )
    policy_kwargs = dict(model=model, temperature=1.0, optimizer_kwargs={"weight_decay": 0.0})
    if args.lora:
        policy_kwargs["lora"] = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
    agent = PPO(
        "CausalLMPolicy",
        env,
        learning_rate=1e-5,
        n_epochs=1,
        batch_size=n,
        micro_batch_size=n,
        kl_coef=0.0,
        max_grad_norm=1.0,
        policy_kwargs=policy_kwargs,
        device=args.device,
        verbose=0,
    )
    n_params, d, vocab = model_counts(agent.policy.model)
    hidden = model.config.hidden_size
    inter = getattr(model.config, "intermediate_size", 4 * hidden)

    rows = []
    gemm = []
    for step in range(args.warmup + args.steps):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        agent.learn(total_iterations=step + 1, reset_num_timesteps=False)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults  # rollout and update
        stats = agent.last_iteration_stats
        buffer = agent.buffer
        trained = int(buffer.lengths.sum())
        prompt_tokens = distinct_prompt_tokens(buffer)
        flops = update_flops(n_params, d, vocab, trained, prompt_tokens, args.lora)
        seconds = float(stats["time/update"])  # on a GPU the update ends with .item() calls: synchronised
        tokens = trained + prompt_tokens
        if args.device == "cpu":  # alternate: a GEMM measurement next to every update
            gemm.append(
                gemm_flops_per_s(
                    [(tokens, hidden, inter), (tokens, inter, hidden), (tokens, hidden, hidden)], repeats=3
                )
            )
        if step >= args.warmup:
            rows.append((seconds, flops, trained, prompt_tokens))
        print(
            f"update {step + 1}{' (warm-up)' if step < args.warmup else ''}: {seconds:.2f} s, "
            f"{flops / 1e12:.3f} TFLOP ({trained} trained tokens, {prompt_tokens} distinct prompt tokens), "
            f"{flops / seconds / 1e9:.1f} GFLOP/s; {faults} minor page faults in the iteration"
        )
    if args.device != "cpu":
        gemm.append(_gpu_gemm(dtype, hidden, inter))
    seconds = sum(r[0] for r in rows)
    achieved = sum(r[1] for r in rows) / seconds
    limit = max(gemm)
    print(
        f"model: N={n_params / 1e6:.1f}M non-embedding parameters, d={d}, V={vocab}; "
        f"{'LoRA' if args.lora else 'full fine-tuning'}, {args.dtype}, {args.device}, "
        f"{torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"GEMM ({args.dtype}, model shapes): {limit / 1e9:.1f} GFLOP/s (best of {len(gemm)} measurements)")
    print(f"PPO update: {achieved / 1e9:.1f} GFLOP/s over {len(rows)} updates ({seconds:.2f} s)")
    print(f"ratio={achieved / limit:.3f}")


def distinct_prompt_tokens(buffer) -> int:
    """Prompt tokens of the batch, each distinct prompt (``info["index"]``) once: a row's prompt
    is its attended columns before its first action."""
    counted: dict[int, int] = {}
    for row, info in enumerate(buffer.infos):
        actions = buffer.policy_mask[row].nonzero()
        first = int(actions[0]) if len(actions) else buffer.policy_mask.shape[1]
        counted[int(info["index"])] = int(buffer.attention_mask[row, :first].sum())
    return sum(counted.values())


def _gpu_gemm(dtype, hidden: int, inter: int) -> float:
    best = 0.0
    for m in (4096, 8192):
        a = torch.randn(m, hidden, device="cuda", dtype=dtype)
        b = torch.randn(hidden, inter, device="cuda", dtype=dtype)
        torch.mm(a, b)
        torch.cuda.synchronize()
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(10):
                torch.mm(a, b)
            torch.cuda.synchronize()
            best = max(best, 10 * 2.0 * m * hidden * inter / (time.perf_counter() - start))
    return best


if __name__ == "__main__":
    main()
