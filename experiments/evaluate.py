"""Evaluate a PPO checkpoint or a base model on a task split: ``python experiments/evaluate.py``.

    python experiments/evaluate.py --env lm_envs/GSM8K-v0 --split test --checkpoint outputs/ppo/checkpoints/iter_000004 \\
        --episodes 200 --batch-size 16 --max-new-tokens 256 --greedy --output-dir outputs/eval

``--checkpoint none`` evaluates the base ``--model``. A checkpoint is a directory written by
``agents.PPO.save``; its base model is the one recorded in it unless ``--model`` is given.
Task options go through ``--task-kwarg key=value`` (YAML values), e.g. ``--task-kwarg language=de``
or ``--task-kwarg 'subjects=[anatomy, virology]'``. Writes ``summary.json`` (mean task score,
the reward's metrics: accuracy, per-subject accuracy, compile rate, pass@1, toxicity...) and
``samples.jsonl`` (one episode per line) to ``--output-dir`` and prints a table. A pause model
(``config.pause_token_id``, e.g. ``--model outputs/sft/final``) or a `PauseLMPolicy` checkpoint is
evaluated with that policy and adds pause metrics (pauses per reply overall/correct/incorrect,
percentage of pause tokens). A thin script:
composition only (lm_envs, policies, agents.evaluate_policy).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--env", default="lm_envs/GSM8K-v0", help="registered env id")
    parser.add_argument("--split", default="test")
    parser.add_argument("--checkpoint", default="none", help="PPO checkpoint directory, or 'none' for the base model")
    parser.add_argument("--model", default=None,
                        help="base model: embedded name, hub id or path (default: the checkpoint's, "
                             "else smollm2-135m-instruct)")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16, help="episodes generated together")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--max-prompt-tokens", type=int, default=1024,
                        help="prompt width; longer prompts keep their last tokens")
    decoding = parser.add_mutually_exclusive_group()
    decoding.add_argument("--greedy", dest="greedy", action="store_true", default=True, help="greedy decoding (default)")
    decoding.add_argument("--sample", dest="greedy", action="store_false", help="sample with the policy's temperature")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (with --sample)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt order and of sampling")
    parser.add_argument("--data-dir", default=None, help="local data directory (else $LM_ENVS_DATA_DIR, else the hub)")
    parser.add_argument("--task-kwarg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra task option, value parsed as YAML (repeatable)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(list(argv))
    if args.episodes < 1 or args.batch_size < 1:
        parser.error("--episodes and --batch-size must be positive")
    return args


def task_kwargs(pairs: Sequence[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--task-kwarg must look like key=value, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def load_policy(args: argparse.Namespace, env: Any, model: Any) -> Any:
    """The policy to evaluate: a checkpoint's trained weights (via `PPO.load`) or the base model."""
    from agents import PPO
    from policies import CausalLMPolicy

    overrides = {} if args.temperature is None else {"temperature": args.temperature}
    pause = pause_policy_kwargs(args.checkpoint, model)
    if pause is not None:  # a pause model or checkpoint: build the PauseLMPolicy itself, like PPO.load would
        from policies import PauseLMPolicy

        policy = PauseLMPolicy(env.observation_space, env.action_space, lambda _: 0.0, model=model,
                               reference=False, device=args.device, **{**pause, **overrides})
        if args.checkpoint.lower() != "none":
            policy.load_trainable(Path(args.checkpoint) / "policy")
        return policy
    if args.checkpoint.lower() == "none":
        return CausalLMPolicy(env.observation_space, env.action_space, lambda _: 0.0, model=model, reference=False,
                              device=args.device, **overrides)
    # Evaluation needs no optimizer step, KL reference or env state from training: rows = one
    # batch, KL off (no reference copy), force_reset (the eval env keeps its own prompts).
    agent = PPO.load(args.checkpoint, env=env, model=model, device=args.device, force_reset=True,
                     batch_size=env.num_envs, micro_batch_size=None, kl_coef=0.0, adaptive_kl=False,
                     tensorboard_log=None, verbose=0)
    if overrides:
        agent.policy.temperature = float(args.temperature)
    return agent.policy


def pause_policy_kwargs(checkpoint: str, model: Any) -> dict[str, Any] | None:
    """`PauseLMPolicy` kwargs when the checkpoint was trained with one (its ``policy/pause_config.json``)
    or the model holds a pause token, else ``None`` (a plain `CausalLMPolicy`)."""
    import torch

    from policies.pause import pause_config

    if checkpoint.lower() != "none":
        if pause_config(Path(checkpoint) / "policy") is None:
            return None
        saved = torch.load(Path(checkpoint) / "agent.pt", map_location="cpu", weights_only=False)["policy_kwargs"]
        return {k: v for k, v in saved.items() if k not in ("model", "reference", "device", "tokenizer")}
    token = getattr(model.config, "pause_token", None)
    return None if getattr(model.config, "pause_token_id", None) is None else {"pause_token": token}


def checkpoint_model(checkpoint: str) -> str | None:
    if checkpoint.lower() == "none":
        return None
    meta = Path(checkpoint) / "meta.json"
    if not meta.is_file():
        raise SystemExit(f"{checkpoint} is not a PPO checkpoint directory (no meta.json); pass --checkpoint none "
                         f"to evaluate the base model")
    return json.loads(meta.read_text())["model"]


def table(summary: dict[str, Any]) -> str:
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in summary.items()
            if isinstance(v, (int, float, str))]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    import lm_envs
    from agents import evaluate_policy
    from policies import load_lm

    out = Path(args.output_dir)
    kwargs = task_kwargs(args.task_kwarg)
    model_spec = args.model or checkpoint_model(args.checkpoint) or "smollm2-135m-instruct"
    torch.manual_seed(args.seed)
    model, tokenizer = load_lm(model_spec, dtype=args.dtype)
    pause = pause_policy_kwargs(args.checkpoint, model)
    if pause is not None:  # the env's action space must hold the pause token (a no-op when the model has it)
        from policies import PAUSE_TOKEN, add_pause_token

        add_pause_token(model, tokenizer, pause.get("pause_token") or PAUSE_TOKEN)
    if args.data_dir:
        kwargs["data_dir"] = args.data_dir
    env = lm_envs.make_vec(args.env, args.batch_size, tokenizer, split=args.split, max_new_tokens=args.max_new_tokens,
                           max_prompt_tokens=args.max_prompt_tokens, truncate_prompt="left",
                           vocab_size=model.config.vocab_size, seed=args.seed, **kwargs)
    policy = load_policy(args, env, model)
    start = time.perf_counter()
    torch.manual_seed(args.seed)  # sampling draws from torch's global generator
    summary, samples = evaluate_policy(policy, env, args.episodes, deterministic=args.greedy, seed=args.seed)
    summary = {"env": args.env, "split": args.split, "checkpoint": args.checkpoint, "model": model_spec,
               "decoding": "greedy" if args.greedy else "sample", **summary,
               "seconds": round(time.perf_counter() - start, 2), "task": env.task.metadata | {"name": env.task.name},
               "args": vars(args)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    with open(out / "samples.jsonl", "w", encoding="utf-8") as handle:
        for sample in samples:
            handle.write(json.dumps(sample, default=str, ensure_ascii=False) + "\n")
    print(table({k: v for k, v in summary.items() if k not in ("args", "task")}))
    print(f"wrote {out / 'summary.json'} and {out / 'samples.jsonl'}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
