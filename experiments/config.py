"""Config composition for the experiment scripts: YAML file + ``experiment=`` preset + dotted overrides.

``python experiments/run_ppo.py experiment=NAME key.sub=value ...``: the base config
(``configs/ppo.yaml``), then the preset ``configs/experiment/NAME.yaml`` merged over it, then the
command-line overrides, in that order (the Hydra convention, with OmegaConf underneath).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def compose(argv: Sequence[str], base: str = "ppo.yaml") -> DictConfig:
    overrides = [arg for arg in argv if not arg.startswith("experiment=")]
    presets = [arg.split("=", 1)[1] for arg in argv if arg.startswith("experiment=")]
    bad = [arg for arg in overrides if "=" not in arg]
    if bad:
        raise SystemExit(f"overrides must look like key.sub=value, got {bad}")
    cfg = OmegaConf.load(CONFIG_DIR / base)
    for name in presets:
        preset = CONFIG_DIR / "experiment" / f"{name}.yaml"
        if not preset.exists():
            known = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
            raise SystemExit(f"unknown experiment {name!r}; presets: {known}")
        cfg = OmegaConf.merge(cfg, OmegaConf.load(preset))
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    cfg.experiment = presets[-1] if presets else None
    return cfg


def presets() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
