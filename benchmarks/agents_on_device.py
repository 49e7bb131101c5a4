"""One short iteration of every agent on a device: does each one run there, with its KL term on?

Each agent (PPO, GRPO, RLOO, REINFORCE, REINFORCE++, SFT, STaR, DPO, KTO) gets a fresh model, a
LoRA adapter (the reference is the adapter switched off) and one iteration on short sums, with a
reward that differs between samples (so DPO has pairs and KTO both labels); PPO
runs once more with full fine-tuning (a frozen reference copy). One line per run: ``ok`` or the
error, seconds, and the logged KL and first-minibatch ratio deviation where the agent has them
(in bf16 they are small, not 0). The last line counts failures; the exit status is 1 if any.

    python benchmarks/agents_on_device.py --device cuda --dtype bfloat16 --model random:DIR   # the GPU check
    python benchmarks/agents_on_device.py --model random:DIR --max-new-tokens 4                 # the CPU wiring
"""

from __future__ import annotations

import argparse
import time
import traceback

import numpy as np
import torch

GROUPED = {"grpo", "rloo", "star", "dpo", "kto"}
KL_ON = {
    "ppo": {"kl_coef": 0.05, "adaptive_kl": True},
    "grpo": {"beta": 0.05},
    "rloo": {"beta": 0.05},
    "reinforce": {"beta": 0.05},
    "reinforce_pp": {"beta": 0.05},
    "dpo": {"beta": 0.1},
    "kto": {"beta": 0.1},
    "star": {"threshold": 0.0},
    "sft": {"examples_per_round": 8},
}


def varied(completions, references, prompts=None):
    """A reward that differs between samples of one prompt, so DPO has pairs and KTO both labels."""
    return np.array([len(c) % 7 / 6 for c in completions], dtype=np.float32)


def task():
    from lm_envs import Task

    questions = [f"What is {a} plus {b}? Think step by step." for a in range(4) for b in range(4)]
    references = [f"{a} plus {b} is {a + b}. The answer is {a + b}." for a in range(4) for b in range(4)]
    return Task(questions=questions, references=references, reward=varied, name="varied", chat_template=False)


def run_one(name: str, args, lora: bool) -> str:
    from agents import AGENTS
    from lm_envs import TokenVecEnv
    from policies import load_lm

    torch.manual_seed(0)
    model, tokenizer = load_lm(args.model, dtype=args.dtype)
    group = 4 if name in GROUPED else 1
    env = TokenVecEnv(
        task(),
        tokenizer,
        num_envs=args.rows,
        max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=64,
        truncate_prompt="left",
        vocab_size=model.config.vocab_size,
        seed=0,
        completions_per_prompt=group,
    )
    policy_kwargs = dict(model=model)
    if lora:
        policy_kwargs["lora"] = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    agent = AGENTS[name](
        "CausalLMPolicy",
        env,
        learning_rate=1e-5,
        batch_size=4,
        micro_batch_size=2,
        seed=0,
        device=args.device,
        policy_kwargs=policy_kwargs,
        **KL_ON[name],
    )
    start = time.perf_counter()
    agent.learn(total_iterations=1)
    if agent.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    stats = agent.last_iteration_stats
    parts = [f"{seconds:.2f} s"]
    for key, label in (
        ("objective/kl", "kl"),
        ("policy/first_minibatch_ratio_max_dev", "ratio_dev"),
        ("loss/policy", "loss"),
    ):
        if key in stats:
            parts.append(f"{label} {stats[key]:.2e}")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="anything policies.load_lm takes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32 (CPU) or bfloat16 (GPU)")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--agents", default="ppo,grpo,rloo,reinforce,reinforce_pp,sft,star,dpo,kto")
    args = parser.parse_args()
    runs = [(name, True) for name in args.agents.split(",")] + [("ppo", False)]
    failed = 0
    for name, lora in runs:
        label = f"{name}{'' if lora else ' (full fine-tuning)'}"
        try:
            print(f"{label}: ok, {run_one(name, args, lora)}", flush=True)
        except Exception as error:  # report every agent, then fail
            failed += 1
            print(f"{label}: FAILED {type(error).__name__}: {error}", flush=True)
            traceback.print_exc()
    print(f"agents on {args.device} ({args.dtype}): {len(runs) - failed} ok, {failed} failed")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
