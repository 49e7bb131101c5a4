"""Train a reward model on preference pairs: ``python experiments/train_reward_model.py data=DIR``.

    python experiments/train_reward_model.py data=runs/mbpp_prefs output_dir=runs/mbpp_rm
    python experiments/run_ppo.py agent=reward_model data=runs/mbpp_prefs output_dir=runs/mbpp_rm

The same config style as ``run_ppo.py``: ``experiments/configs/reward_model.yaml`` and dotted
overrides, a key the file does not have is an error (``--help`` lists every option). Trains
`agents.RewardModel` (Bradley–Terry, TRL ``RewardTrainer``'s loss with its optional margin and
centring term) on the ``prompt``/``chosen``/``rejected`` pairs ``build_preferences.py`` writes,
and writes to ``output_dir`` a ``transformers`` model directory that `rewards.RewardModelReward`
loads, with ``reward_model.json`` (held-out pair accuracy, margin, loss, the settings). A thin
script: composition only.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `config` when run as a script

from config import compose_script  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

BASE = "reward_model.yaml"


def main(argv: Sequence[str]) -> dict:
    cfg = compose_script(argv, BASE, __doc__, open_keys=["lora"])
    from agents import RewardModel

    lora = OmegaConf.to_container(cfg.lora, resolve=True) if cfg.lora else None
    model = RewardModel(
        cfg.model,
        lora=lora,
        learning_rate=cfg.learning_rate,
        batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs,
        max_length=cfg.max_length,
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        use_margin=cfg.use_margin,
        eval_fraction=cfg.eval_fraction,
        seed=cfg.seed,
        device=cfg.device,
        dtype=cfg.dtype,
    )
    metrics = model.learn(cfg.data, eval_data=cfg.eval_data, progress_bar=cfg.progress_bar)
    out = model.save(cfg.output_dir)
    print(
        "reward model: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()) + f"; saved to {out}", file=sys.stderr
    )
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
