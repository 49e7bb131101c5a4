"""Train the compiler-feedback seed's discriminator: ``python experiments/train_discriminator.py experiment=NAME``.

    python experiments/train_discriminator.py experiment=compile_disc_cpu
    python experiments/run_ppo.py experiment=compile_disc_cpu output_dir=runs/disc

Composes the same config as ``run_ppo.py`` (``ppo.yaml``, ``experiment=``, dotted overrides, the
env's own defaults) plus this script's ``disc.*`` options (`DEFAULTS`), then:

1. samples ``disc.batches`` lockstep batches of the starting policy (``policy.model``) on the
   env's *training* split (``env.kwargs``; ``disc.completions_per_prompt`` per prompt, unscored);
2. pairs each sample with its problem's reference solution on the same prompt, in the task's own
   language (`lm_envs.references`: HumanEval-X canonical bodies for C++/Java, renamed to our
   prompts' parameters, MBPP's code for Python), plus constant bodies as extra negatives with
   ``disc.degenerate_negatives``; with ``disc.verify_references`` (default) only references that
   pass their problem's tests against our prompt, under the task's own reward, are used; a sample
   of a held-out problem is an error;
3. trains `agents.Discriminator` (a one-logit classifier on the policy's backbone, LoRA) and
   saves it where the preset's reward term reads it: the ``path`` of the ``disc.term`` term of
   ``env.reward_wrappers`` (or ``disc.out``), with ``reward_model.json`` (held-out-problem
   accuracy, mean D per kind of text, the problems it saw).

Trained once, on the starting policy's samples (why: docs/learned_rewards.md). A thin script:
composition and I/O.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `config` when run as a script

from config import compose  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

DEFAULTS = {
    "out": None,  # default: the path of the `term` reward term in env.reward_wrappers
    "term": "discriminator",
    "batches": 6,  # x env.num_envs samples of the starting policy
    "completions_per_prompt": 1,
    "degenerate_negatives": True,
    "verify_references": True,  # keep only references that pass their record's tests against our prompt
    "lora": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
    "learning_rate": 1.0e-4,
    "batch_size": 8,
    "n_epochs": 2,
    "max_length": 768,
    "eval_fraction": 0.15,
    "device": "auto",
}


def term_path(wrappers: list[dict[str, Any]], term: str) -> str | None:
    """The ``kwargs.path`` of the reward term named ``term`` in a reward-wrapper config."""
    for spec in wrappers or []:
        for name, value in (spec.get("terms") or {}).items() if spec.get("type") == "add_terms" else ():
            if name == term and isinstance(value, Mapping):
                return (value.get("kwargs") or {}).get("path")
    return None


def sample_policy(cfg, disc: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """``disc.batches`` batches of the starting policy on the training split, unscored; and the task's name."""
    import lm_envs
    from agents.rollout import collect_episodes
    from policies import CausalLMPolicy, load_lm

    model, tokenizer = load_lm(cfg.policy.model, dtype=cfg.policy.dtype)
    kwargs = OmegaConf.to_container(cfg.env.kwargs, resolve=True)
    if cfg.data_dir:
        kwargs["data_dir"] = cfg.data_dir
    kwargs["reward"] = lambda completions, references, prompts=None: [0.0] * len(completions)  # no sandbox needed
    env = lm_envs.make_vec(
        cfg.env.id,
        cfg.env.num_envs,
        tokenizer,
        vocab_size=model.config.vocab_size,
        seed=cfg.seed,
        completions_per_prompt=disc["completions_per_prompt"],
        **kwargs,
    )
    policy = CausalLMPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 0.0,
        model=model,
        value_head=False,
        reference=False,
        temperature=cfg.policy.temperature,
        top_k=cfg.policy.top_k,
        top_p=cfg.policy.top_p,
        device=cfg.policy.device,
    )
    samples, obs = [], None
    for _ in range(int(disc["batches"])):
        episodes, obs = collect_episodes(policy, env, obs)
        samples += [{k: info[k] for k in ("prompt", "completion", "reference")} for info in episodes.infos]
    return samples, env.get_attr("task", [0])[0].name


def training_references(
    task_name: str, samples: list[dict[str, Any]], data_dir: str | None, verify: bool
) -> tuple[dict[int, str], dict[str, Any]]:
    """The reference solution of each sampled problem, and how many were tried and passed: with
    ``verify``, the first of `lm_envs.references.reference_candidates` that passes its record's
    tests under the task's own reward (its compiler, its sandbox); a problem with none is left out."""
    import rewards
    from lm_envs.references import problem_key, reference_candidates, reference_solutions, verified_references

    if not verify:
        return reference_solutions(task_name, data_dir), {"verified": False}
    records = list({problem_key(s["reference"]): s["reference"] for s in samples}.values())
    reward = rewards.make(task_name)
    try:
        solutions = verified_references(reference_candidates(task_name, records, data_dir), records, reward)
    finally:
        reward.close()
    print(f"{len(solutions)} of {len(records)} references pass their tests on our prompts", file=sys.stderr)
    return solutions, {"verified": True, "problems": len(records), "passing": len(solutions)}


def main(argv: list[str]) -> dict[str, Any]:
    cfg = compose(list(argv), extra_nodes={"disc": DEFAULTS})
    disc = OmegaConf.to_container(cfg.disc, resolve=True)
    wrappers = OmegaConf.to_container(cfg.env.reward_wrappers, resolve=True) if cfg.env.reward_wrappers else []
    out = disc["out"] or term_path(wrappers, disc["term"])
    if not out:
        raise SystemExit(
            f"where should the discriminator go? Give disc.out=DIR, or a preset whose env.reward_wrappers has an "
            f"add_terms term {disc['term']!r} with kwargs.path (e.g. experiment=compile_disc_cpu)"
        )
    from stable_baselines3.common.utils import set_random_seed

    from agents import Discriminator
    from lm_envs.references import discriminator_examples, held_out_keys

    set_random_seed(cfg.seed)
    samples, task_name = sample_policy(cfg, disc)
    data_dir = cfg.data_dir or None
    solutions, references = training_references(task_name, samples, data_dir, disc["verify_references"])
    rows = discriminator_examples(
        samples,
        task_name,
        solutions,
        held_out_keys(task_name, data_dir),
        degenerate_negatives=disc["degenerate_negatives"],
    )
    discriminator = Discriminator(
        cfg.policy.model,
        lora=disc["lora"],
        learning_rate=disc["learning_rate"],
        batch_size=disc["batch_size"],
        n_epochs=disc["n_epochs"],
        max_length=disc["max_length"],
        eval_fraction=disc["eval_fraction"],
        seed=cfg.seed,
        device=disc["device"],
        dtype=cfg.policy.dtype,
    )
    metrics = discriminator.learn(rows, progress_bar=cfg.progress_bar)
    keys = sorted({r["key"] for r in rows})
    path = discriminator.save(
        out, task=task_name, env_id=cfg.env.id, samples=len(samples), problems=keys, references=references
    )
    print(
        f"discriminator ({task_name}, {len(keys)} training problems, {len(rows)} rows): "
        + " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        + f"; saved to {path}",
        file=sys.stderr,
    )
    return {"out": str(path), "problems": keys, "references": references, **metrics}


if __name__ == "__main__":
    main(sys.argv[1:])
