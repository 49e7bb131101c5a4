"""Data parallel on this machine: PPO samples/s with 2 gloo ranks against 1 process, in one run.

Both sides train the same shape: ``--rows`` GSM8K rows per iteration in total (one process holds
them all; each of the 2 ranks holds half, as `torchrun` runs a config whose sizes are per rank),
up to ``--max-new-tokens`` new tokens, PPO with LoRA (r 16, all linear layers) and the KL term
(adapter-off reference), on the embedded model. Each side runs in its own process(es), one after
the other, alone on the machine: a warm-up iteration, then ``--iterations`` timed ones (rollout,
reference pass, update; evaluation and checkpoints are not part of it). The single process uses
every core; each rank gets ``cores / 2`` threads, as `agents.distributed.init_from_env` sets.

On a 2-core CPU this is not a scaling test: two ranks split the same two cores the single process
uses, and add the collectives (gradient all-reduce, batch statistics) and two copies of the model
in memory. What it measures is the overhead of running data parallel where there is nothing to
gain, which is the honest number for this machine. Real scaling needs one device (or core set) per
rank; see docs/distributed.md.

    python benchmarks/data_parallel.py [--iterations 2] [--rows 16] [--max-new-tokens 64]

Last line: ``ratio=<2-rank samples/s / 1-process samples/s>``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(args) -> None:
    """One side: ``--world`` 1 (a plain process) or 2 (under torchrun)."""
    import torch

    from agents import PPO, distributed
    from lm_envs import make_vec
    from policies import load_lm

    layout = distributed.init_from_env()
    world = distributed.world_size()
    if layout is None:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    rows = args.rows // world
    torch.manual_seed(0)
    model, tokenizer = load_lm(args.model)
    env = make_vec(
        "lm_envs/GSM8K-v0",
        rows,
        tokenizer,
        split="test",
        data_dir=args.data_dir,
        max_new_tokens=args.max_new_tokens,
        vocab_size=model.config.vocab_size,
    )
    agent = PPO(
        "CausalLMPolicy",
        env,
        learning_rate=1e-4,
        n_epochs=1,
        batch_size=rows,
        kl_coef=0.05,
        seed=0,
        policy_kwargs=dict(model=model, lora={"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}),
        verbose=0,
    )
    seconds, tokens = [], []
    for i in range(1 + args.iterations):
        distributed.barrier()
        start = time.perf_counter()
        agent.learn(total_iterations=i + 1, reset_num_timesteps=False)
        distributed.barrier()
        if i:  # the first iteration is the warm-up
            seconds.append(time.perf_counter() - start)
            tokens.append(int(distributed.reduce_sum(agent.buffer.lengths.sum())))
    if distributed.is_main_process():
        Path(args.out).write_text(
            json.dumps(
                {
                    "world": world,
                    "threads": torch.get_num_threads(),
                    "rows": args.rows,
                    "seconds": seconds,
                    "tokens": tokens,
                    "samples_per_s": args.rows * len(seconds) / sum(seconds),
                    "tokens_per_s": sum(tokens) / sum(seconds),
                }
            )
        )
    distributed.barrier()  # leave together, as run_ppo.py does
    distributed.shutdown()


def run_side(args, world: int, out: Path) -> dict:
    common = [
        str(Path(__file__).resolve()),
        "--child",
        "--out",
        str(out),
        "--rows",
        str(args.rows),
        "--iterations",
        str(args.iterations),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--model",
        args.model,
    ] + (["--data-dir", args.data_dir] if args.data_dir else [])
    if world == 1:
        cmd = [sys.executable, *common]
    else:
        with socket.socket() as sock:  # a free port for the rendezvous
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={world}",
            f"--master_port={port}",
            *common,
        ]
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
    env.pop("OMP_NUM_THREADS", None)  # torchrun would set 1; init_from_env sets cores / ranks
    subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations per side (after a warm-up)")
    parser.add_argument("--rows", type=int, default=16, help="rows per iteration in total (half per rank)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="anything policies.load_lm takes")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rows % 2:
        parser.error("--rows must be even (half per rank)")
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        one = run_side(args, 1, Path(tmp) / "one.json")
        two = run_side(args, 2, Path(tmp) / "two.json")
    print(
        f"PPO + LoRA, {args.rows} GSM8K rows per iteration, <= {args.max_new_tokens} new tokens, "
        f"{args.iterations} timed iterations per side"
    )
    for name, side in (("1 process", one), ("2 ranks", two)):
        print(
            f"{name:>9}: {side['threads']} threads each, "
            f"iterations {', '.join(f'{s:.1f}' for s in side['seconds'])} s, "
            f"{side['samples_per_s']:.3f} samples/s, {side['tokens_per_s']:.1f} tokens/s"
        )
    print(f"tokens_ratio={two['tokens_per_s'] / one['tokens_per_s']:.3f}")
    print(f"ratio={two['samples_per_s'] / one['samples_per_s']:.3f}")


if __name__ == "__main__":
    main()
