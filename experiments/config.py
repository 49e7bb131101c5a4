"""Config composition for the experiment scripts: base YAML + ``agent=`` group + ``experiment=`` presets + dotted overrides.

``python experiments/run_ppo.py agent=NAME experiment=NAME key.sub=value ...`` composes, in this
order whatever the order on the command line (the Hydra convention, OmegaConf underneath):

1. the base config (``configs/ppo.yaml``);
2. the agent group ``configs/agent/NAME.yaml`` (default ``ppo``): its ``agent`` node *replaces*
   the base's, and its other keys (e.g. ``env.completions_per_prompt`` for group agents) merge;
3. each ``experiment=NAME`` preset (``configs/experiment/NAME.yaml``): merged, except its
   ``per_agent`` section, of which only ``per_agent.<agent name>`` is merged into ``agent``;
   a preset's plain ``agent`` keys must be ones every agent takes;
4. the dotted overrides;
5. the env's own run defaults (`lm_envs.registration.run_defaults` of ``env.id``): its
   ``kwargs`` and ``eval_kwargs`` under whatever the layers above set, and its
   ``reward_wrappers`` unless a layer set them (``env.reward_wrappers=[]`` turns them off). So
   ``env.id=X`` alone gives X's token budget, splits and wrappers.

The chosen agent's name is ``cfg.agent.name``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
GROUPS = ("agent", "experiment")


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _load(group: str, name: str) -> DictConfig:
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.exists():
        raise SystemExit(f"unknown {group} {name!r}; known: {_names(group)}")
    return OmegaConf.load(path)


def compose(argv: Sequence[str], base: str = "ppo.yaml") -> DictConfig:
    chosen: dict[str, list[str]] = {group: [] for group in GROUPS}
    overrides = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in GROUPS and value:
            chosen[key].append(value)
        else:
            overrides.append(arg)
    bad = [arg for arg in overrides if "=" not in arg]
    if bad:
        raise SystemExit(f"overrides must look like key.sub=value, got {bad}")
    if len(chosen["agent"]) > 1:
        raise SystemExit(f"choose one agent, got agent={chosen['agent']}")
    agent_name = chosen["agent"][0] if chosen["agent"] else "ppo"

    cfg = OmegaConf.load(CONFIG_DIR / base)
    group = _load("agent", agent_name)
    cfg.agent = group.agent  # replaces the node: no key of another agent survives
    cfg = OmegaConf.merge(cfg, {k: v for k, v in group.items() if k != "agent"})
    for name in chosen["experiment"]:
        preset = _load("experiment", name)
        per_agent = preset.pop("per_agent", None)
        cfg = OmegaConf.merge(cfg, preset)
        if per_agent is not None and agent_name in per_agent:
            cfg.agent = OmegaConf.merge(cfg.agent, per_agent[agent_name])
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    apply_env_defaults(cfg)
    cfg.agent.name = agent_name
    cfg.experiment = chosen["experiment"][-1] if chosen["experiment"] else None
    return cfg


def apply_env_defaults(cfg: DictConfig) -> None:
    """Fill ``cfg.env`` from the run defaults registered with ``cfg.env.id`` (what is set wins)."""
    import lm_envs  # noqa: F401  (registers the built-in ids)
    from lm_envs.registration import run_defaults

    defaults = run_defaults(cfg.env.id)
    for key in ("kwargs", "eval_kwargs"):
        cfg.env[key] = OmegaConf.merge(defaults[key], cfg.env.get(key) or {})
    if cfg.env.get("reward_wrappers") is None:
        cfg.env.reward_wrappers = defaults["reward_wrappers"]


def presets() -> list[str]:
    return _names("experiment")


def agents() -> list[str]:
    return _names("agent")
