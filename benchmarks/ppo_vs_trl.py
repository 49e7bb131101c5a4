"""One RL update, head to head: our PPO (`agents.PPO`) and GRPO (`agents.GRPO`) against TRL's `GRPOTrainer`, in one run.

Workload, the same on both sides: the embedded SmolLM2-135M-Instruct in fp32, loaded through
`policies.load_lm` (TRL gets that plain model object, never the quantized-flagged GGUF); the
same 4 GSM8K test prompts × 4 completions = 16 completions of up to 64 new tokens, sampled at
temperature 1 (no top-k/top-p); the GSM8K reward (`rewards.make("gsm8k")`); one optimisation
epoch over the 16 completions in one optimizer step of one 16-row forward/backward; no KL
term (ours: ``kl_coef=0``, so no reference pass and no reference copy; TRL: ``beta=0``, so
no reference model); the same learning rate, AdamW without weight decay, max grad norm 1; the
same gradient-checkpointing setting (off by default, ``--gradient-checkpointing`` turns it on
for both); the same number of torch threads. Three cases: PPO full fine-tuning (``full``),
PPO with LoRA (the same `peft.LoraConfig` on both sides, ``lora``), and our `GRPO` with full
fine-tuning (``grpo``), with TRL's loss type (``dapo``) on both sides. TRL always runs
``GRPOTrainer`` with ``loss_type="dapo"``.

Each (case, side) runs in its own subprocess, so its peak RSS (``ru_maxrss``) is its own. A
subprocess builds its trainer, runs ``--warmup`` update(s) (excluded) and then ``--steps``
timed updates; one update is generation + reward + loss forward/backward + optimizer step.
Ours reports its phases from ``agent.last_iteration_stats`` (rollout includes the reward);
TRL's from its profiling hooks (generate, reward, the rest of input preparation, and the
remainder of the step, i.e. the loss forward/backward and optimizer step). The parent prints a
table, the per-case ratios and, last, ``ratio=<our samples/s ÷ TRL samples/s, the lower of the
cases>``.

    python benchmarks/ppo_vs_trl.py [--steps 2] [--warmup 1] [--threads 2] [--cases full,lora,grpo]
    python benchmarks/ppo_vs_trl.py --side ours --case lora --json   # one side, one JSON line
    python benchmarks/ppo_vs_trl.py --device cuda --dtype bfloat16 --model random:DIR  # a GPU (gpu_check.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT_TAG = "PPO_VS_TRL_RESULT "
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def lora_fields(args) -> dict:
    return {
        "r": args.lora_r,
        "lora_alpha": 2 * args.lora_r,
        "lora_dropout": 0.0,
        "target_modules": LORA_TARGETS,
        "bias": "none",
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# -- one side, in this process ---------------------------------------------------------------------
def run_ours(args) -> dict:
    import torch

    from agents import GRPO, PPO
    from lm_envs import make_vec
    from policies import load_lm

    torch.manual_seed(args.seed)
    model, tokenizer = load_lm(args.model, dtype=args.dtype)
    env = make_vec(
        "lm_envs/GSM8K-v0",
        args.prompts * args.generations,
        tokenizer,
        split="test",
        limit=args.prompts,
        data_dir=args.data_dir,
        completions_per_prompt=args.generations,
        max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        vocab_size=model.config.vocab_size,
    )
    if len(env.task) != args.prompts:
        raise RuntimeError(f"expected {args.prompts} GSM8K prompts, got {len(env.task)}")
    # Every batch holds each of the prompts once (× generations), like TRL's group of `prompts`:
    # in-order samplers, slot g starting at row g, so a batch is always a permutation of them.
    for g, sampler in enumerate(env.samplers):
        sampler.shuffle = False
        sampler.seed(None)
        sampler.position = g
    load_peak = peak_rss_mb()
    policy_kwargs = dict(
        model=model,
        gradient_checkpointing=args.gradient_checkpointing,
        temperature=1.0,
        optimizer_kwargs={"weight_decay": 0.0},
    )
    if args.case == "lora":
        policy_kwargs["lora"] = lora_fields(args)
    n = args.prompts * args.generations
    if args.case == "grpo":
        agent = GRPO(
            "CausalLMPolicy",
            env,
            learning_rate=args.lr,
            num_iterations=1,
            batch_size=n,
            beta=0.0,
            loss_type="dapo",
            max_grad_norm=1.0,
            policy_kwargs=policy_kwargs,
            device=args.device,
            verbose=0,
        )
    else:
        agent = PPO(
            "CausalLMPolicy",
            env,
            learning_rate=args.lr,
            n_epochs=1,
            batch_size=n,
            kl_coef=0.0,
            max_grad_norm=1.0,
            policy_kwargs=policy_kwargs,
            device=args.device,
            verbose=0,
        )
    assert agent.policy.reference_model is None, "kl_coef=0 should build no reference copy"
    trainable = sum(p.numel() for p in agent.policy.parameters() if p.requires_grad)
    steps = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        # One learn() call is one iteration: one lockstep batch of whole episodes, then one update.
        agent.learn(total_iterations=i + 1, reset_num_timesteps=False)
        _sync(args.device)
        seconds = time.perf_counter() - start
        stats = agent.last_iteration_stats
        phases = {k: float(stats[f"time/{k}"]) for k in ("rollout", "reward", "reference", "update")}
        # learn()'s own overhead: set-up, GAE/buffer outside the reference pass, logging.
        phases["other"] = seconds - phases["rollout"] - phases["reference"] - phases["update"]
        rows = agent.buffer.infos
        steps.append(
            {
                "seconds": seconds,
                "phases": phases,
                "tokens": int(agent.buffer.lengths.sum()),
                "prompts": sorted({int(info["index"]) for info in rows}),
                "score": float(agent.buffer.env_rewards.mean()),
            }
        )
    return {
        "trainable_params": trainable,
        "load_peak_rss_mb": load_peak,
        "steps": steps,
        "gradient_checkpointing_effective": _is_checkpointing(agent.policy.model),
    }


def run_trl(args) -> dict:
    import datasets
    import peft
    import torch
    import trl
    from transformers import TrainerCallback
    from trl.extras import profiling

    import rewards
    from lm_envs import gsm8k_task
    from policies import load_lm

    torch.manual_seed(args.seed)
    model, tokenizer = load_lm(args.model, dtype=args.dtype)
    task = gsm8k_task(split="test", data_dir=args.data_dir, limit=args.prompts)
    # The exact prompt text our env feeds the model (chat template applied); TRL takes it as a
    # plain-text prompt and tokenizes it as is.
    prompts = [task.prompt(i, tokenizer) for i in range(len(task))]
    ours_ids = [tokenizer(p, add_special_tokens=not task.uses_chat_template(tokenizer))["input_ids"] for p in prompts]
    trl_ids = [tokenizer(text=p)["input_ids"] for p in prompts]
    prompt_ids_match = ours_ids == trl_ids
    dataset = datasets.Dataset.from_dict({"prompt": prompts, "reference": list(task.references)})
    reward = rewards.make("gsm8k")
    reward_calls = []

    def gsm8k(prompts, completions, reference, **kwargs):
        reward_calls.append(len(completions))
        return [float(x) for x in reward(list(completions), list(reference), list(prompts))]

    load_peak = peak_rss_mb()
    n = args.prompts * args.generations
    total_steps = args.warmup + args.steps
    output_dir = tempfile.mkdtemp(prefix="ppo_vs_trl_")
    config = trl.GRPOConfig(
        output_dir=output_dir,
        use_cpu=args.device == "cpu",
        bf16=args.dtype == "bfloat16",
        fp16=False,
        seed=args.seed,
        per_device_train_batch_size=n,
        num_generations=args.generations,
        gradient_accumulation_steps=1,
        max_completion_length=args.max_new_tokens,
        beta=0.0,
        num_iterations=1,
        max_steps=total_steps,
        loss_type="dapo",
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        gradient_checkpointing=args.gradient_checkpointing,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
    )
    peft_config = peft.LoraConfig(task_type="CAUSAL_LM", **lora_fields(args)) if args.case == "lora" else None

    # TRL times its phases with profiling contexts that only report to wandb/mlflow/trackio;
    # record them here instead.
    current: dict[str, float] = {}
    original_log = profiling.ProfilingContext._log_metrics

    def record(self, duration):
        name = self.name.split(".", 1)[-1]
        current[name] = current.get(name, 0.0) + duration
        return original_log(self, duration)

    profiling.ProfilingContext._log_metrics = record
    steps = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            current.clear()
            self.start = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            _sync(args.device)
            seconds = time.perf_counter() - self.start
            prepare = current.get("_prepare_inputs", 0.0)
            generate = current.get("transformers.generate", 0.0)
            reward_s = current.get("_calculate_rewards", 0.0)
            self.checkpointing = _is_checkpointing(kwargs["model"])  # while training: train mode is on
            steps.append(
                {
                    "seconds": seconds,
                    "phases": {
                        "generate": generate,
                        "reward": reward_s,
                        "prep_other": prepare - generate - reward_s,
                        "update": seconds - prepare,
                    },
                }
            )

    timer = Timer()
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=gsm8k,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[timer],
    )
    if trainer.ref_model is not None:
        raise RuntimeError("beta=0 should build no reference model")
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "step_time" in entry]
    for step, entry in zip(steps, logs):
        step["score"] = float(entry.get("reward", float("nan")))
        step["tokens"] = round(float(entry.get("completions/mean_length", 0.0)) * n)
    if len(steps) != total_steps:
        raise RuntimeError(f"TRL ran {len(steps)} steps, expected {total_steps}")
    return {
        "trainable_params": trainable,
        "load_peak_rss_mb": load_peak,
        "steps": steps,
        "prompt_ids_match": prompt_ids_match,
        "reward_calls": reward_calls,
        "gradient_checkpointing_effective": timer.checkpointing,
    }


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _is_checkpointing(model) -> bool:
    """Whether the update really recomputes activations: transformers' checkpointed layers only
    checkpoint when both their ``gradient_checkpointing`` flag is set and they are in training mode."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return any(getattr(m, "gradient_checkpointing", False) and m.training for m in base.modules())


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = (run_ours if args.side == "ours" else run_trl)(args)
    timed = result["steps"][args.warmup :]
    seconds = sum(s["seconds"] for s in timed) / len(timed)
    phases = {k: sum(s["phases"][k] for s in timed) / len(timed) for k in timed[0]["phases"]}
    result.update(
        side=args.side,
        case=args.case,
        seconds_per_step=seconds,
        samples_per_s=args.prompts * args.generations / seconds,
        phases=phases,
        peak_rss_mb=peak_rss_mb(),
        wall_s=time.perf_counter() - start,
        threads=torch.get_num_threads(),
    )
    if args.json:
        print(RESULT_TAG + json.dumps(result), flush=True)
    else:
        print(
            f"{args.case}/{args.side}: {seconds:.2f} s/step, {result['samples_per_s']:.3f} samples/s, "
            f"peak RSS {result['peak_rss_mb']:.0f} MB, phases {fmt_phases(phases)}"
        )


# -- the parent: one subprocess per (case, side), then the table -----------------------------------
def run_child(args, case: str, side: str) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--side",
        side,
        "--case",
        case,
        "--json",
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--model",
        args.model,
        "--prompts",
        str(args.prompts),
        "--generations",
        str(args.generations),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--max-prompt-tokens",
        str(args.max_prompt_tokens),
        "--lr",
        repr(args.lr),
        "--lora-r",
        str(args.lora_r),
        "--seed",
        str(args.seed),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
    ]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"[{case}/{side}] running...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG) :])
        elif line.strip():
            print(f"[{case}/{side}] {line}", file=sys.stderr)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"{case}/{side} failed with exit code {proc.returncode}")
    print(
        f"[{case}/{side}] {result['seconds_per_step']:.2f} s/step, peak RSS {result['peak_rss_mb']:.0f} MB, "
        f"wall {result['wall_s']:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return result


def fmt_phases(phases: dict) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in phases.items())


def parent(args) -> None:
    cases = [c for c in args.cases.split(",") if c]
    # Alternate which side goes first, so drift in machine load does not always favour one side.
    load_before = os.getloadavg()
    results = {}
    for k, case in enumerate(cases):
        for side in ("ours", "trl") if k % 2 == 0 else ("trl", "ours"):
            results[(case, side)] = run_child(args, case, side)
            if args.results_json:  # as we go, so an interrupted run keeps what it measured
                Path(args.results_json).write_text(json.dumps(list(results.values()), indent=1))
    results = {(case, side): results[(case, side)] for case in cases for side in ("ours", "trl")}
    if args.results_json:
        Path(args.results_json).write_text(json.dumps([r for r in results.values()], indent=1))
    n = args.prompts * args.generations
    print(
        f"PPO (ours) vs TRL {_trl_version()} GRPOTrainer: one update of {n} completions "
        f"({args.prompts} GSM8K prompts x {args.generations}), <= {args.max_new_tokens} new tokens, T=1, no KL, "
        f"1 epoch, lr {args.lr:g}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
        f"{args.threads} torch threads, model {args.model} {args.dtype}, {args.device}; {args.warmup} warm-up + "
        f"{args.steps} timed step(s); 1-min load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"({os.cpu_count()} CPUs)"
    )
    print(
        "phases (s, mean per timed step): ours: s/step = rollout (generation; includes the reward, also shown "
        "alone) + reference + update (loss fwd/bwd + optimizer) + other (learn() overhead); TRL: s/step = "
        "generate + reward + prep_other (rest of input preparation) + update (rest: loss fwd/bwd + optimizer)"
    )
    print(
        f"{'case':5s} {'side':5s} {'s/step':>7s} {'samples/s':>9s} {'peak RSS MB':>11s} {'trainable':>11s} "
        f"{'tokens':>7s}  phases"
    )
    for (case, side), r in results.items():
        timed = r["steps"][args.warmup :]
        tokens = sum(s.get("tokens", 0) for s in timed) / len(timed)
        print(
            f"{case:5s} {side:5s} {r['seconds_per_step']:7.2f} {r['samples_per_s']:9.3f} {r['peak_rss_mb']:11.0f} "
            f"{r['trainable_params']:11d} {tokens:7.0f}  {fmt_phases(r['phases'])}"
        )
    notes = []
    for case in cases:
        ours, trl = results[(case, "ours")], results[(case, "trl")]
        if not trl.get("prompt_ids_match", True):
            notes.append(f"{case}: TRL tokenized the prompts differently from our env")
        for side, r in (("ours", ours), ("trl", trl)):
            if r.get("gradient_checkpointing_effective") != args.gradient_checkpointing:
                notes.append(
                    f"{case}/{side}: gradient checkpointing requested "
                    f"{'on' if args.gradient_checkpointing else 'off'} but is effectively "
                    f"{'on' if r.get('gradient_checkpointing_effective') else 'off'} in the update"
                )
        print(
            f"case {case}: samples/s ratio (ours/TRL) = {ours['samples_per_s'] / trl['samples_per_s']:.3f}; "
            f"peak RSS ratio (ours/TRL) = {ours['peak_rss_mb'] / trl['peak_rss_mb']:.3f}; "
            f"load-time RSS ours {ours['load_peak_rss_mb']:.0f} MB, TRL {trl['load_peak_rss_mb']:.0f} MB"
        )
    for note in notes:
        print("note:", note)
    ratio = min(results[(c, "ours")]["samples_per_s"] / results[(c, "trl")]["samples_per_s"] for c in cases)
    print(f"ratio={ratio:.3f}")


def _trl_version() -> str:
    try:
        from importlib.metadata import version

        return version("trl")
    except Exception:  # noqa: BLE001
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed updates per side and case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates first")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    parser.add_argument("--cases", default="full,lora,grpo", help="comma-separated: full, lora, grpo")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="anything policies.load_lm takes")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-prompt-tokens", type=int, default=512, help="our env's prompt width (no truncation)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2r, q/k/v/o projections)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on for both sides (default: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    parser.add_argument("--dtype", default="float32", help="float32, or bfloat16 on both sides")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("LM_ENVS_DATA_DIR")
        or (str(REPO.parent / "shared" / "data") if (REPO.parent / "shared" / "data").is_dir() else None),
    )
    parser.add_argument("--results-json", help="also write every side's raw results (per step) to this file")
    parser.add_argument("--side", choices=("ours", "trl"), help="run one side in this process")
    parser.add_argument("--case", choices=("full", "lora", "grpo"), default="full")
    parser.add_argument("--json", action="store_true", help="with --side: print the result as one JSON line")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.side:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
