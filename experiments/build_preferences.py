"""Sample, score and save preference data as a standard ``datasets`` data set.

    python experiments/build_preferences.py env.id=lm_envs/MBPP-v0 prefs.out=runs/mbpp_prefs
    python experiments/build_preferences.py prefs.format=unpaired prefs.batches=8 prefs.out=runs/gsm8k_kto

Composes the same config as ``run_ppo.py`` (``ppo.yaml``, ``experiment=``, dotted overrides, the
env's own defaults), samples ``env.completions_per_prompt`` completions per prompt (default 4
here) for ``prefs.batches`` lockstep batches with the policy, scores them with the env's reward
and wrappers, and writes with ``save_to_disk``:

* ``prefs.format=pairs``: ``prompt``/``chosen``/``rejected`` (+ ``chosen_reward``,
  ``rejected_reward``, ``index``), pairs built as `agents.DPO` builds them (``prefs.strategy``
  ``best_vs_worst`` or ``all``, ``prefs.margin``), which TRL's ``DPOTrainer`` reads;
* ``prefs.format=unpaired``: ``prompt``/``completion``/``label`` (+ ``reward``, ``index``), label =
  value ≥ ``prefs.threshold``, which TRL's ``KTOTrainer`` reads.

Values are the env reward (``prefs.on=reward``) or the task score (``prefs.on=score``). Prompts are
the rendered prompt text the policy saw. The env id, reward, wrappers, model and sampling settings
go in the data set's metadata (``DatasetInfo.description`` as JSON, and ``metadata.json``). A thin
script: composition and I/O; pairs and labels come from `agents.preference_math`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `config` when run as a script

import torch  # noqa: E402
from config import compose  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

DEFAULTS = {
    "out": "outputs/preferences",
    "format": "pairs",
    "batches": 2,
    "strategy": "best_vs_worst",
    "margin": 0.0,
    "threshold": 1.0,
    "on": "reward",
    "completions_per_prompt": 4,
}


def build_env(cfg, tokenizer, model):
    import lm_envs
    from lm_envs.reward_wrappers import VecRewardWrapper, from_config

    kwargs = OmegaConf.to_container(cfg.env.kwargs, resolve=True)
    if cfg.data_dir:
        kwargs["data_dir"] = cfg.data_dir
    env = lm_envs.make_vec(
        cfg.env.id,
        cfg.env.num_envs,
        tokenizer,
        vocab_size=model.config.vocab_size,
        seed=cfg.seed,
        completions_per_prompt=cfg.env.completions_per_prompt,
        **kwargs,
    )
    wrappers = OmegaConf.to_container(cfg.env.reward_wrappers, resolve=True) if cfg.env.get("reward_wrappers") else []
    return (VecRewardWrapper(env, from_config(wrappers)) if wrappers else env), wrappers


def rows_from_episodes(episodes_list: list[Any], prefs: dict[str, Any]) -> list[dict[str, Any]]:
    """Pairs or labelled samples from scored episodes (see the module docstring)."""
    from agents import preference_math as pm
    from agents.star import episode_values

    out: list[dict[str, Any]] = []
    for episodes in episodes_list:
        values = episode_values(episodes, prefs["on"]).tolist()
        infos = episodes.infos
        groups = [int(info["index"]) for info in infos]
        if prefs["format"] == "pairs":
            keys = [info["completion"] for info in infos]
            for c, r in pm.preference_pairs(values, groups, prefs["strategy"], float(prefs["margin"]), keys):
                out.append(
                    {
                        "prompt": infos[c]["prompt"],
                        "chosen": infos[c]["completion"],
                        "rejected": infos[r]["completion"],
                        "chosen_reward": values[c],
                        "rejected_reward": values[r],
                        "index": groups[c],
                    }
                )
        else:
            labels = pm.kto_labels(values, float(prefs["threshold"]))
            out.extend(
                {
                    "prompt": info["prompt"],
                    "completion": info["completion"],
                    "label": bool(label),
                    "reward": value,
                    "index": group,
                }
                for info, label, value, group in zip(infos, labels, values, groups)
            )
    return out


def main(argv: list[str]) -> dict[str, Any]:
    argv = list(argv)
    if not any(a.startswith("env.completions_per_prompt=") for a in argv):
        argv.append(f"env.completions_per_prompt={DEFAULTS['completions_per_prompt']}")
    cfg = compose(argv, extra_nodes={"prefs": DEFAULTS})
    prefs = OmegaConf.to_container(cfg.prefs, resolve=True)  # DEFAULTS, with overrides checked by compose
    if prefs["format"] not in ("pairs", "unpaired"):
        raise SystemExit(f"prefs.format must be pairs or unpaired, got {prefs['format']!r}")
    import datasets
    from stable_baselines3.common.utils import set_random_seed

    from agents.checkpoint import write_json
    from agents.rollout import collect_episodes
    from policies import CausalLMPolicy, load_lm

    set_random_seed(cfg.seed)
    model, tokenizer = load_lm(cfg.policy.model, dtype=cfg.policy.dtype)
    env, wrappers = build_env(cfg, tokenizer, model)
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
    batches, obs = [], None
    for _ in range(int(prefs["batches"])):
        episodes, obs = collect_episodes(policy, env, obs)
        batches.append(episodes)
    rows = rows_from_episodes(batches, prefs)
    task = env.get_attr("task", [0])[0]
    reward_name = getattr(task.reward, "name", None) or getattr(task.reward, "__name__", type(task.reward).__name__)
    meta = {
        "env_id": cfg.env.id,
        "env_kwargs": OmegaConf.to_container(cfg.env.kwargs, resolve=True),
        "reward": reward_name,
        "reward_wrappers": wrappers,
        "model": cfg.policy.model,
        "temperature": cfg.policy.temperature,
        "top_k": cfg.policy.top_k,
        "top_p": cfg.policy.top_p,
        "seed": cfg.seed,
        "samples": sum(len(b.infos) for b in batches),
        "rows": len(rows),
        **{f"prefs_{k}": v for k, v in prefs.items() if k != "out"},
    }
    columns = (
        ["prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "index"]
        if prefs["format"] == "pairs"
        else ["prompt", "completion", "label", "reward", "index"]
    )
    data = datasets.Dataset.from_dict(
        {c: [r[c] for r in rows] for c in columns}, info=datasets.DatasetInfo(description=json.dumps(meta))
    )
    out = Path(prefs["out"])
    data.save_to_disk(str(out))
    write_json(out / "metadata.json", meta)
    print(
        f"wrote {len(rows)} {'pairs' if prefs['format'] == 'pairs' else 'samples'} from {meta['samples']} "
        f"samples to {out}",
        file=sys.stderr,
    )
    return {"rows": len(rows), "out": str(out), "meta": meta}


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main(sys.argv[1:])
