"""Rollout throughput: TokenVecEnv + CausalLMPolicy against `model.generate`, in one run.

Same embedded model (SmolLM2-135M-Instruct), same 16 GSM8K prompts, same batch and the same
sampling (temperature 1, no top-k/top-p). Two cases:

* **variable** (``--variable-max-new-tokens``, 256): rows end at very different lengths. Our
  rollout drops finished rows from the forward batch (compaction); `generate` keeps computing
  them until the last row ends. Prints the length distribution and ``ratio_variable=``.
* **multi-turn** (``--turn-tokens``, 32; 3 turns): after each turn the env answers with a fixed
  user message (a chat turn, as `lm_envs.tasks.turns.ChatTurns` renders it) and the model goes
  on. Our rollout feeds each row's injected tokens into the kept KV cache in one step; the
  baseline is the manual loop people write: `generate`, append each row's turn and the
  message, left-pad, `generate` again (re-running the whole prefix). Prints ``ratio_multi_turn=``.
* **fixed** (``--max-new-tokens``, 64): most rows use the whole budget. Prints
  ``ratio=<rollout tokens/s ÷ generate tokens/s>``.
* **engine** (``--engine server`` or ``colocated``; ``--engine-max-new-tokens``, 128): the same
  env collected by our rollout (the policy) and by a vLLM engine through `agents.engine.EngineActor`
  (``rollout.engine=vllm``), both sampled at T=1, the engine's time including its HTTP round
  trips and the env's steps. Prints, last, ``ratio_engine=<engine tokens/s ÷ rollout tokens/s>``.
  ``server`` needs ``make engine``; ``colocated`` needs vllm in this environment.
  ``--engine-lora-rank R`` serves a LoRA policy (the adapter loaded unmerged, as in training).

Freed memory stays in the process (`agents.memory.keep_freed_memory`, as in `learn`), for both
sides alike. Repetitions alternate between the two sides so machine noise hits both alike; ratios are
medians over repetitions, measured in the same run. Tokens are counted up to and including each
row's first EOS on both sides.

    python benchmarks/rollout_throughput.py [--repeats 3] [--batch 16] [--max-new-tokens 64]
        [--variable-max-new-tokens 256] [--turn-tokens 32] [--device cuda --dtype bfloat16]
        [--engine server --engine-max-new-tokens 128]

On a GPU (``--device cuda``) every timing ends with ``torch.cuda.synchronize()``; the summary
lines also give absolute tokens/s (``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch

from agents import collect_episodes, memory
from lm_envs import Reply, TokenVecEnv, gsm8k_task, make_vec
from lm_envs.tasks.turns import ChatTurns
from policies import CausalLMPolicy, load_lm

TURNS = 3
MESSAGE = "Check each step of your arithmetic once more, then give the final answer again."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="the fixed-length case (0: skip it)")
    parser.add_argument("--variable-max-new-tokens", type=int, default=256, help="the variable-length case (0: skip)")
    parser.add_argument("--turn-tokens", type=int, default=32, help="the multi-turn case's budget per turn (0: skip)")
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="anything policies.load_lm takes (random:DIR: DIR's config with fresh weights)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    parser.add_argument("--engine", default="none", choices=["none", "server", "colocated"], help="the engine case")
    parser.add_argument("--engine-max-new-tokens", type=int, default=128)
    parser.add_argument("--engine-lora-rank", type=int, default=0, help="the engine case: a LoRA policy of this rank")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.device == "cpu":  # as `learn` does (agents.memory); process-wide, so `generate` gains as much
        memory.keep_freed_memory()
    torch.manual_seed(0)
    model, tokenizer = load_lm(args.model, dtype=args.dtype)
    model = model.to(args.device)
    if args.variable_max_new_tokens:
        rate, lengths = measure(model, tokenizer, args, args.variable_max_new_tokens)
        quartiles = statistics.quantiles(lengths, n=4)
        print(
            f"variable case: episode lengths min {min(lengths)}, quartiles {quartiles[0]:.0f}/{quartiles[1]:.0f}/"
            f"{quartiles[2]:.0f}, max {max(lengths)} of {args.variable_max_new_tokens}"
        )
        print(f"ratio_variable={rate:.3f}")
    if args.turn_tokens:
        print(f"ratio_multi_turn={measure_multi_turn(model, tokenizer, args):.3f}")
    if args.max_new_tokens:
        rate, _ = measure(model, tokenizer, args, args.max_new_tokens)
        print(f"ratio={rate:.3f}")
    if args.engine != "none":
        print(f"ratio_engine={measure_engine(model, tokenizer, args):.3f}")


def measure_engine(model, tokenizer, args) -> float:
    """Our rollout against a vLLM engine's, on one env and the same prompts; median ratio engine ÷ ours."""
    from agents.engine import EngineActor
    from agents.engine.deploy import make_engine

    env = gsm8k_env(model, tokenizer, args.batch, args.engine_max_new_tokens)
    policy = CausalLMPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 0.0,
        model=args.model,
        reference=False,
        device=args.device,
        dtype=args.dtype,
        lora=None
        if not args.engine_lora_rank
        else {"r": args.engine_lora_rank, "lora_alpha": 2 * args.engine_lora_rank, "target_modules": "all-linear"},
    )
    start = time.perf_counter()
    engine = make_engine(policy, deployment=args.engine, seed=0, max_model_len=1024)
    print(f"engine ({args.engine}) started in {time.perf_counter() - start:.1f} s")
    trainable = sum(p.numel() for p in policy.model.parameters() if p.requires_grad) / 1e6
    kind = f"LoRA r={args.engine_lora_rank}" if args.engine_lora_rank else "full"
    print(f"weight sync ({kind}, {trainable:.1f}M parameters): {engine.sync(policy):.2f} s")
    actor = EngineActor(engine, policy, seed=0)

    def rollout(who):
        def run(seed: int) -> tuple[int, float]:
            env.seed(0)  # the same prompts every time
            torch.manual_seed(seed)
            actor.rng = np.random.default_rng(seed)
            episodes, _ = collect_episodes(who, env)
            return int(episodes.lengths.sum()), episodes.seconds

        return run

    try:
        return alternate(
            rollout(actor),
            rollout(policy),
            args,
            f"max_new_tokens {args.engine_max_new_tokens}, {kind} weights",
            names=(f"vLLM engine ({args.engine})", "TokenVecEnv+CausalLMPolicy"),
        )
    finally:
        engine.close()


def gsm8k_env(model, tokenizer, batch: int, max_new_tokens: int):
    """The benchmark's env: the first ``batch`` GSM8K test prompts (seed 0), left-truncated to 512 tokens."""
    return make_vec(
        "lm_envs/GSM8K-v0",
        batch,
        tokenizer,
        split="test",
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=512,
        truncate_prompt="left",
        vocab_size=model.config.vocab_size,
        seed=0,
    )


def trimmed_prompts(env, P: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first batch's prompts, without the columns that are padding in every row."""
    env.seed(0)
    prompts = env.reset()
    prompt_ids = torch.as_tensor(prompts["input_ids"][:, :P])
    prompt_mask = torch.as_tensor(prompts["attention_mask"][:, :P]).long()
    first_real = int(prompt_mask.any(0).nonzero()[0])  # give generate the same trimmed prefix
    return prompt_ids[:, first_real:], prompt_mask[:, first_real:]


def tokens_to_eos(new: torch.Tensor, eos: int) -> torch.Tensor:
    """``(B, T)`` bool: each row's tokens up to and including its first EOS, like the env counts."""
    is_eos = (new == eos).int()
    return (is_eos.cumsum(-1) - is_eos) == 0


def measure_multi_turn(model, tokenizer, args) -> float:
    """Ours (injections into the kept cache) against generate + inject + generate; median ratio."""
    budget = args.turn_tokens
    task = dataclasses.replace(gsm8k_task(split="test"), respond=lambda a, r, t: [Reply(MESSAGE)] * len(a))
    env = TokenVecEnv(
        task,
        tokenizer,
        num_envs=args.batch,
        max_new_tokens=TURNS * budget,
        max_turn_tokens=budget,
        max_turns=TURNS,
        max_injected_tokens=TURNS * 64,
        max_prompt_tokens=512,
        truncate_prompt="left",
        vocab_size=model.config.vocab_size,
        seed=0,
    )
    policy = CausalLMPolicy(
        env.observation_space, env.action_space, lambda _: 0.0, model=model, reference=False, device=args.device
    )
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    chat = ChatTurns(tokenizer, task.uses_chat_template(tokenizer))
    replies = {
        ended: tokenizer(chat.render(MESSAGE, ended), add_special_tokens=False)["input_ids"] for ended in (True, False)
    }

    def ours(seed: int) -> tuple[int, float]:
        env.seed(0)
        torch.manual_seed(seed)
        episodes, _ = collect_episodes(policy, env)
        return int(episodes.lengths.sum()), episodes.seconds

    prompt_ids, prompt_mask = trimmed_prompts(env, env.batch.max_prompt_tokens)
    prompts = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask)]
    device = model.device

    def theirs(seed: int) -> tuple[int, float]:
        torch.manual_seed(seed)
        start, tokens = time.perf_counter(), 0
        rows = [list(p) for p in prompts]
        for turn in range(TURNS):
            width = max(len(r) for r in rows)  # left-pad the conversations so far
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=budget,
                pad_token_id=pad,
            )
            new = out[:, width:]
            keep = tokens_to_eos(new, eos)
            tokens += int(keep.sum())
            if turn < TURNS - 1:
                for r, row_new, row_keep in zip(rows, new, keep):
                    turn_ids = row_new[row_keep].tolist()
                    r.extend(turn_ids + replies[bool(turn_ids and turn_ids[-1] == eos)])
        _sync(device)
        return tokens, time.perf_counter() - start

    return alternate(
        ours,
        theirs,
        args,
        f"multi-turn: {TURNS} turns of <= {budget} tokens, a chat-turn message "
        f"of {len(replies[True])} tokens between them",
    )


def measure(model, tokenizer, args, max_new_tokens: int) -> tuple[float, list[int]]:
    """Alternate ours and generate; print the table; return (median ratio, our episode lengths)."""
    env = gsm8k_env(model, tokenizer, args.batch, max_new_tokens)
    policy = CausalLMPolicy(
        env.observation_space, env.action_space, lambda _: 0.0, model=model, reference=False, device=args.device
    )
    eos = tokenizer.eos_token_id
    lengths: list[int] = []

    def ours(seed: int) -> tuple[int, float]:
        env.seed(0)  # the same prompts every time
        torch.manual_seed(seed)
        episodes, _ = collect_episodes(policy, env)
        lengths.extend(episodes.lengths.tolist())
        return int(episodes.lengths.sum()), episodes.seconds

    prompt_ids, prompt_mask = (t.to(model.device) for t in trimmed_prompts(env, env.batch.max_prompt_tokens))

    def theirs(seed: int) -> tuple[int, float]:
        torch.manual_seed(seed)
        start = time.perf_counter()
        out = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
        _sync(model.device)
        seconds = time.perf_counter() - start
        return int(tokens_to_eos(out[:, prompt_ids.shape[1] :], eos).sum()), seconds

    rate = alternate(ours, theirs, args, f"max_new_tokens {max_new_tokens}", lengths.clear)
    return rate, lengths


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(
    ours, theirs, args, what: str, after_warmup=lambda: None, names=("TokenVecEnv+CausalLMPolicy", "model.generate")
) -> float:
    """Warm up, then alternate the two sides ``args.repeats`` times; print the table; median ratio
    of the first side's tokens/s to the second's."""
    ours(0), theirs(0)  # warm-up
    after_warmup()
    rows = []
    for repeat in range(args.repeats):
        for name, fn in zip(names, (ours, theirs)):
            tokens, seconds = fn(repeat + 1)
            rows.append((name, repeat, tokens, seconds, tokens / seconds))
    print(f"{'side':28s} {'rep':>3s} {'tokens':>7s} {'seconds':>8s} {'tokens/s':>9s}")
    for name, repeat, tokens, seconds, rate in rows:
        print(f"{name:28s} {repeat:3d} {tokens:7d} {seconds:8.2f} {rate:9.1f}")
    ours_rate = statistics.median(r[4] for r in rows if r[0] == names[0])
    theirs_rate = statistics.median(r[4] for r in rows if r[0] == names[1])
    print(
        f"median tokens/s: {names[0]} {ours_rate:.1f}, {names[1]} {theirs_rate:.1f} "
        f"(batch {args.batch}, {what}, sampled, T=1)"
    )
    return ours_rate / theirs_rate


if __name__ == "__main__":
    main()
