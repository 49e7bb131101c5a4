"""Win rate of a policy on a TextArena game, base versus trained: ``python experiments/win_rate.py``.

    python experiments/win_rate.py run_dir=outputs/ta_guess episodes=64
    python experiments/win_rate.py env.id=textarena/TicTacToe-v0 env.kwargs.opponent=heuristic output_dir=DIR

The conventions of ``evaluate.py``: ``experiments/configs/win_rate.yaml`` and dotted overrides
(``--help`` lists every option), greedy decoding by default (``deterministic=false`` samples,
seeded), and the same games (deals, and the scripted opponent's choices) for every policy. With
``run_dir`` (a ``run_ppo.py`` output directory) it plays the run's base model and its newest
checkpoint on the run's held-out env; else the base ``model`` and, if given, a ``checkpoint``.

A game is *won* when the game's own result is 1 (TextArena pays 1 for a win; a single-player
game stopped by its turn limit pays partial credit below 1, a two-player game 0 for a draw and
-1 for a loss); ``win_rate`` is games won / games played. A game the episode's turn budget cuts
off pays nothing and counts as played, not won. Writes ``win_rate.json`` (per policy: episodes,
wins, losses, win_rate, score_mean and `evaluate_policy`'s summary) and one
``samples_<policy>.jsonl`` per policy to ``output_dir``, and prints a table.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from config import compose_script
from omegaconf import DictConfig, OmegaConf

BASE = "win_rate.yaml"
WIN = 1.0  # TextArena's reward for a won game


def outcomes(scores: Sequence[float]) -> dict[str, Any]:
    """Counts of won (score >= 1) and lost (score <= -1) games among ``scores``, one per game
    played (the game's result: the sum of its turns' rewards, of which only the last is nonzero).

    :param scores: each played game's score (``info["score"]``, a sample's ``score``).
    """
    if not scores:
        raise ValueError("no games played: pass episodes >= 1")
    wins = sum(float(s) >= WIN for s in scores)
    losses = sum(float(s) <= -WIN for s in scores)
    return {
        "episodes": len(scores),
        "wins": wins,
        "losses": losses,
        "win_rate": wins / len(scores),
        "score_mean": sum(map(float, scores)) / len(scores),
    }


def win_rate(
    policy: Any, env: Any, episodes: int, deterministic: bool = True, seed: int = 0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Play ``episodes`` games with ``policy`` on ``env`` (`agents.evaluate_policy`, seeded);
    return (`outcomes` + ``evaluate_policy``'s summary under ``"summary"``, the samples).

    :param policy: a `policies.CausalLMPolicy` (or any policy `evaluate_policy` takes).
    :param env: a token VecEnv over a ``textarena/<Game>-v0`` id.
    :param episodes: games to play.
    :param deterministic: greedy decoding; else sampling from the policy, seeded with ``seed``.
    :param seed: seed of the env's deals and of sampling.
    """
    from agents import evaluate_policy

    summary, samples = evaluate_policy(policy, env, episodes, deterministic=deterministic, seed=seed)
    return {**outcomes([s["score"] for s in samples]), "summary": summary}, samples


def parse_args(argv: Sequence[str]) -> DictConfig:
    """The composed config, with ``env`` and ``model`` taken from ``run_dir``'s config when given."""
    cfg = compose_script(argv, BASE, __doc__, open_keys=["env.kwargs"])
    if not isinstance(cfg.episodes, int) or cfg.episodes < 1:
        raise SystemExit(f"episodes must be a positive integer, got {cfg.episodes!r}")
    cfg.checkpoint = "none" if cfg.checkpoint is None else str(cfg.checkpoint)
    if cfg.run_dir is None:
        if cfg.output_dir is None:
            raise SystemExit("set output_dir=... (or run_dir=... to play a run's base model and newest checkpoint)")
        return cfg
    from agents import latest_checkpoint

    run = Path(cfg.run_dir)
    if not (run / "config.yaml").is_file():
        raise SystemExit(f"run_dir={run} has no config.yaml: pass the output_dir of a run_ppo.py run")
    found = latest_checkpoint(run / "checkpoints")
    if found is None:
        raise SystemExit(f"run_dir={run} has no checkpoint under {run / 'checkpoints'}: did the run save one?")
    saved = OmegaConf.load(run / "config.yaml")
    kwargs = OmegaConf.merge(saved.env.kwargs, saved.env.get("eval_kwargs") or {})
    kwargs = OmegaConf.merge(kwargs, cfg.env.kwargs)  # the run's held-out env, then this script's overrides
    cfg.env = {"id": saved.env.id, "num_envs": cfg.env.num_envs, "kwargs": kwargs}
    cfg.checkpoint = str(found)
    cfg.model = cfg.model or saved.policy.model
    cfg.output_dir = cfg.output_dir or str(run / "win_rate")
    return cfg


def trained_policy(checkpoint: str, env: Any, model: Any, device: str) -> Any:
    """The policy a checkpoint of any agent holds: its saved policy settings on ``model`` (the
    starting model), then its trained weights (LoRA adapter or full weights)."""
    from agents.checkpoint import read_checkpoint
    from policies import CausalLMPolicy

    path, meta, state = read_checkpoint(checkpoint)
    if meta.get("policy_class", "CausalLMPolicy") != "CausalLMPolicy":
        raise SystemExit(f"{path} holds a {meta['policy_class']}; this script plays CausalLMPolicy checkpoints")
    saved = {k: v for k, v in state["policy_kwargs"].items() if k not in ("model", "reference", "device", "tokenizer")}
    policy = CausalLMPolicy(
        env.observation_space, env.action_space, lambda _: 0.0, model=model, reference=False, device=device, **saved
    )
    policy.load_trainable(path / "policy")
    return policy


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    import lm_envs
    from agents.checkpoint import atomic_write_text, write_json
    from policies import CausalLMPolicy, load_lm

    out = Path(args.output_dir)
    kwargs = OmegaConf.to_container(args.env.kwargs, resolve=True)
    if args.data_dir:
        kwargs["data_dir"] = args.data_dir
    model_spec = args.model
    if model_spec is None and args.checkpoint.lower() != "none":
        model_spec = json.loads((Path(args.checkpoint) / "meta.json").read_text())["model"]
    model_spec = model_spec or "smollm2-135m-instruct"
    results: dict[str, Any] = {"env": args.env.id, "split": kwargs.get("split"), "model": model_spec}
    players = ["base"] + (["trained"] if args.checkpoint.lower() != "none" else [])
    for name in players:
        model, tokenizer = load_lm(model_spec, dtype=args.dtype)  # fresh: LoRA wraps the model in place
        env = lm_envs.make_vec(
            args.env.id, args.env.num_envs, tokenizer, vocab_size=model.config.vocab_size, seed=args.seed, **kwargs
        )
        if name == "base":
            policy = CausalLMPolicy(
                env.observation_space, env.action_space, lambda _: 0.0, model=model, reference=False, device=args.device
            )
        else:
            policy = trained_policy(args.checkpoint, env, model, args.device)
        if args.temperature is not None:
            policy.temperature = float(args.temperature)
        torch.manual_seed(args.seed)
        results[name], samples = win_rate(policy, env, args.episodes, args.deterministic, args.seed)
        lines = [json.dumps(sample, default=str, ensure_ascii=False) + "\n" for sample in samples]
        atomic_write_text(out / f"samples_{name}.jsonl", "".join(lines))
    results["checkpoint"] = args.checkpoint
    results["decoding"] = "greedy" if args.deterministic else "sample"
    results["args"] = OmegaConf.to_container(args, resolve=True)
    write_json(out / "win_rate.json", results)
    print(table(results, players))
    print(f"wrote {out / 'win_rate.json'}", file=sys.stderr)
    return results


def table(results: dict[str, Any], players: Sequence[str]) -> str:
    """A markdown table: one column per policy, rows win_rate, wins, losses, episodes, score_mean."""
    rows = ["| | " + " | ".join(players) + " |", "|---|" + "---|" * len(players)]
    for key in ("win_rate", "wins", "losses", "episodes", "score_mean"):
        cells = [results[p][key] for p in players]
        rows.append(f"| {key} | " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main(sys.argv[1:])
