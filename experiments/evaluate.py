"""Evaluate a checkpoint or a base model on a task split: ``python experiments/evaluate.py``.

    python experiments/evaluate.py checkpoint=outputs/ppo/checkpoints/iter_000004 env.kwargs.split=test \\
        episodes=200 env.num_envs=16 env.kwargs.max_new_tokens=256 deterministic=true output_dir=outputs/eval
    python experiments/evaluate.py env.id=lm_envs/MGSM-v0 checkpoint=none model=smollm2-135m-instruct \\
        env.kwargs.language=de output_dir=outputs/eval_mgsm_de

The same config style as ``run_ppo.py``: ``experiments/configs/evaluate.yaml`` and dotted
overrides (``--help`` lists every option). ``checkpoint=none`` evaluates the base ``model``. A
checkpoint is a directory written by ``agents.PPO.save``; its base model is the one recorded in
it unless ``model=`` is given. Task options go under ``env.kwargs`` (YAML values), e.g.
``env.kwargs.language=de`` or ``'env.kwargs.subjects=[anatomy, virology]'``. Writes
``summary.json`` (mean task score, the reward's metrics: accuracy, per-subject accuracy, compile
rate, pass@1, toxicity...) and ``samples.jsonl`` (one episode per line) to ``output_dir``
(atomically) and prints a table. A pause model (``config.pause_token_id``, e.g.
``model=outputs/sft/final``) or a `PauseLMPolicy` checkpoint is evaluated with that policy and
adds pause metrics (pauses per reply overall/correct/incorrect, percentage of pause tokens). A
thin script: composition only (lm_envs, policies, agents.evaluate_policy).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from config import compose_script
from omegaconf import DictConfig, OmegaConf

BASE = "evaluate.yaml"


def parse_args(argv: Sequence[str]) -> DictConfig:
    """The composed config (``configs/evaluate.yaml`` + overrides), checked."""
    cfg = compose_script(argv, BASE, __doc__, open_keys=["env.kwargs"])
    if (
        not isinstance(cfg.episodes, int)
        or not isinstance(cfg.env.num_envs, int)
        or cfg.episodes < 1
        or cfg.env.num_envs < 1
    ):
        raise SystemExit(
            f"episodes and env.num_envs must be positive integers, got {cfg.episodes!r} and {cfg.env.num_envs!r}"
        )
    cfg.checkpoint = "none" if cfg.checkpoint is None else str(cfg.checkpoint)
    return cfg


def load_policy(args: DictConfig, env: Any, model: Any) -> Any:
    """The policy to evaluate: a checkpoint's trained weights (via `PPO.load`) or the base model."""
    from agents import PPO
    from policies import CausalLMPolicy

    overrides = {} if args.temperature is None else {"temperature": args.temperature}
    pause = pause_policy_kwargs(args.checkpoint, model)
    if pause is not None:  # a pause model or checkpoint: build the PauseLMPolicy itself, like PPO.load would
        from policies import PauseLMPolicy

        policy = PauseLMPolicy(
            env.observation_space,
            env.action_space,
            lambda _: 0.0,
            model=model,
            reference=False,
            device=args.device,
            **{**pause, **overrides},
        )
        if args.checkpoint.lower() != "none":
            from agents.checkpoint import resolve_checkpoint

            policy.load_trainable(resolve_checkpoint(args.checkpoint) / "policy")
        return policy
    if args.checkpoint.lower() == "none":
        return CausalLMPolicy(
            env.observation_space,
            env.action_space,
            lambda _: 0.0,
            model=model,
            reference=False,
            device=args.device,
            **overrides,
        )
    # Evaluation needs no optimizer step, KL reference or env state from training: rows = one
    # batch, KL off (no reference copy), force_reset (the eval env keeps its own prompts).
    agent = PPO.load(
        args.checkpoint,
        env=env,
        model=model,
        device=args.device,
        force_reset=True,
        batch_size=env.num_envs,
        micro_batch_size=None,
        kl_coef=0.0,
        adaptive_kl=False,
        tensorboard_log=None,
        verbose=0,
    )
    if overrides:
        agent.policy.temperature = float(args.temperature)
    return agent.policy


def pause_policy_kwargs(checkpoint: str, model: Any) -> dict[str, Any] | None:
    """`PauseLMPolicy` kwargs when the checkpoint was trained with one (its ``policy/pause_config.json``)
    or the model holds a pause token, else ``None`` (a plain `CausalLMPolicy`)."""
    from agents.checkpoint import read_checkpoint, resolve_checkpoint
    from policies.pause import pause_config

    if checkpoint.lower() != "none":
        if pause_config(resolve_checkpoint(checkpoint) / "policy") is None:
            return None
        saved = read_checkpoint(checkpoint)[2]["policy_kwargs"]  # weights_only, with the .old fallback
        return {k: v for k, v in saved.items() if k not in ("model", "reference", "device", "tokenizer")}
    token = getattr(model.config, "pause_token", None)
    return None if getattr(model.config, "pause_token_id", None) is None else {"pause_token": token}


def checkpoint_model(checkpoint: str) -> str | None:
    from agents.checkpoint import resolve_checkpoint

    if checkpoint.lower() == "none":
        return None
    try:
        path = resolve_checkpoint(checkpoint)  # or the .old twin a killed save left
    except FileNotFoundError as error:
        raise SystemExit(
            f"{checkpoint} is not a PPO checkpoint directory ({error}); pass checkpoint=none to evaluate the base model"
        ) from None
    return json.loads((path / "meta.json").read_text())["model"]


def table(summary: dict[str, Any]) -> str:
    rows = [
        (k, f"{v:.4f}" if isinstance(v, float) else str(v))
        for k, v in summary.items()
        if isinstance(v, (int, float, str))
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    import lm_envs
    from agents import evaluate_policy
    from agents.checkpoint import atomic_write_text, write_json
    from policies import load_lm

    out = Path(args.output_dir)
    kwargs = OmegaConf.to_container(args.env.kwargs, resolve=True)
    model_spec = args.model or checkpoint_model(args.checkpoint) or "smollm2-135m-instruct"
    torch.manual_seed(args.seed)
    model, tokenizer = load_lm(model_spec, dtype=args.dtype)
    pause = pause_policy_kwargs(args.checkpoint, model)
    if pause is not None:  # the env's action space must hold the pause token (a no-op when the model has it)
        from policies import PAUSE_TOKEN, add_pause_token

        add_pause_token(model, tokenizer, pause.get("pause_token") or PAUSE_TOKEN)
    if args.data_dir:
        kwargs["data_dir"] = args.data_dir
    env = lm_envs.make_vec(
        args.env.id, args.env.num_envs, tokenizer, vocab_size=model.config.vocab_size, seed=args.seed, **kwargs
    )
    policy = load_policy(args, env, model)
    start = time.perf_counter()
    torch.manual_seed(args.seed)  # sampling draws from torch's global generator
    summary, samples = evaluate_policy(policy, env, args.episodes, deterministic=args.deterministic, seed=args.seed)
    summary = {
        "env": args.env.id,
        "split": kwargs.get("split"),
        "checkpoint": args.checkpoint,
        "model": model_spec,
        "decoding": "greedy" if args.deterministic else "sample",
        **summary,
        "seconds": round(time.perf_counter() - start, 2),
        "task": env.task.metadata | {"name": env.task.name},
        "args": OmegaConf.to_container(args, resolve=True),
    }
    write_json(out / "summary.json", summary)
    atomic_write_text(
        out / "samples.jsonl", "".join(json.dumps(sample, default=str, ensure_ascii=False) + "\n" for sample in samples)
    )
    print(table({k: v for k, v in summary.items() if k not in ("args", "task")}))
    print(f"wrote {out / 'summary.json'} and {out / 'samples.jsonl'}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
