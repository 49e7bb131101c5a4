"""`RewardModel`: train a scalar reward model on preference pairs with the Bradley–Terry loss.

The data are ``prompt``/``chosen``/``rejected`` rows (optionally ``margin``), the format
``experiments/build_preferences.py`` writes and TRL's ``RewardTrainer`` reads: a ``datasets``
data set, its directory, a ``DatasetDict`` with ``train`` (and ``test``) splits, or a list of
dicts. Each side is scored as ``prompt + completion`` by a one-logit sequence classifier on the
policy's backbone (`agents.scorer_model`). Held-out pairs (the ``test`` split, or a seeded
``eval_fraction`` of the prompts, never the same prompt on both sides) give the pair accuracy.
`save` writes a directory ``transformers`` and `rewards.RewardModelReward` load. Not an RL agent:
it does not run on the on-policy core.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.reward_math import bradley_terry_loss, pair_statistics
from agents.scorer_model import build_scorer, pick_device, save_scorer, seed_everything, sequence_scores, split_by

PAIR_COLUMNS = ("prompt", "chosen", "rejected")


def load_pairs(data: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """``(train rows, test rows or None)`` from a path, a ``Dataset``/``DatasetDict`` or a list of
    dicts; every row must have ``prompt``, ``chosen`` and ``rejected``."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(
                f"no preference data at {path}: write some with python experiments/build_preferences.py "
                f"prefs.out={path}, or point to a datasets directory with prompt/chosen/rejected columns"
            )
        import datasets

        data = datasets.load_from_disk(str(path))
    test = None
    if hasattr(data, "keys") and "train" in data.keys():  # a DatasetDict
        test = data["test"] if "test" in data.keys() else None
        data = data["train"]
    rows = [dict(r) for r in data]
    for name, part in (("train", rows), ("test", None if test is None else [dict(r) for r in test])):
        if part is None:
            continue
        missing = [c for c in PAIR_COLUMNS if part and c not in part[0]]
        if missing or not part:
            raise ValueError(
                f"preference data ({name}) must be non-empty rows with columns {PAIR_COLUMNS} "
                f"(as build_preferences.py writes with prefs.format=pairs); missing {missing or 'all rows'}"
            )
        if name == "test":
            test = part
    return rows, test


def split_by_prompt(
    rows: Sequence[Mapping[str, Any]], eval_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A seeded split of the pairs by prompt (`agents.scorer_model.split_by`)."""
    return split_by(rows, "prompt", eval_fraction, seed)


class RewardModel:
    """A reward model trained on preference pairs, TRL ``RewardTrainer``-style.

    :param model: the backbone: a model spec as `policies.load_lm` takes it (``"smollm2-135m-instruct"``,
        a model directory, a hub id).
    :param lora: LoRA settings (`peft.LoraConfig` fields) or ``None`` for full fine-tuning.
    :param learning_rate: AdamW's step size.
    :param batch_size: pairs per optimizer step.
    :param n_epochs: passes over the training pairs.
    :param max_length: tokens per scored text (cut on the left, so the completion's end stays).
    :param center_rewards_coefficient: η of TRL's centring term η·mean (r_c + r_r)² (``None``: off).
    :param use_margin: subtract each pair's ``margin`` column inside the sigmoid (TRL's margin).
    :param eval_fraction: share of prompts held out when the data have no ``test`` split.
    :param seed: seeds the head's initialisation, the split and the data order.
    :param device: ``"auto"``, ``"cpu"``, ``"cuda"``...
    :param dtype: the backbone's dtype (``None``: float32).
    """

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        lora: Mapping[str, Any] | None = None,
        learning_rate: float = 1e-4,
        batch_size: int = 8,
        n_epochs: int = 1,
        max_length: int = 512,
        center_rewards_coefficient: float | None = None,
        use_margin: bool = False,
        eval_fraction: float = 0.1,
        seed: int = 0,
        device: str = "auto",
        dtype: str | None = None,
    ) -> None:
        if batch_size < 1 or n_epochs < 1 or max_length < 2:
            raise ValueError(
                f"batch_size and n_epochs must be >= 1 and max_length >= 2, got {batch_size}, {n_epochs}, {max_length}"
            )
        if not 0 <= eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        self.backbone, self.lora = model, None if lora is None else dict(lora)
        self.learning_rate, self.batch_size, self.n_epochs = float(learning_rate), int(batch_size), int(n_epochs)
        self.max_length, self.center_rewards_coefficient = int(max_length), center_rewards_coefficient
        self.use_margin, self.eval_fraction, self.seed = use_margin, float(eval_fraction), int(seed)
        self.device = pick_device(device)
        seed_everything(self.seed)
        self.model, self.tokenizer = build_scorer(model, self.lora, dtype, self.device)
        self.history: list[dict[str, float]] = []
        self.eval_metrics: dict[str, float] = {}

    # -- scoring -------------------------------------------------------------------------------------
    def _pair_rewards(self, rows: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [r["prompt"] + r["chosen"] for r in rows] + [r["prompt"] + r["rejected"] for r in rows]
        rewards = sequence_scores(self.model, self.tokenizer, texts, self.max_length, self.device)
        return rewards[: len(rows)], rewards[len(rows) :]

    @torch.no_grad()
    def score(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """The reward of each full text (prompt + completion), float32."""
        self.model.eval()
        out = [
            sequence_scores(self.model, self.tokenizer, texts[i : i + batch_size], self.max_length, self.device)
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(out).cpu().numpy().astype(np.float32) if out else np.zeros(0, dtype=np.float32)

    @torch.no_grad()
    def evaluate(self, pairs: Sequence[Mapping[str, Any]], batch_size: int = 32) -> dict[str, float]:
        """Pair statistics on ``pairs`` (`agents.reward_math.pair_statistics`: ``accuracy``, ``margin``...)
        and their Bradley–Terry ``loss``, each prefixed ``eval_``."""
        self.model.eval()
        chosen, rejected = [], []
        for i in range(0, len(pairs), batch_size):
            c, r = self._pair_rewards(pairs[i : i + batch_size])
            chosen.append(c)
            rejected.append(r)
        chosen_t, rejected_t = torch.cat(chosen), torch.cat(rejected)
        stats = pair_statistics(chosen_t, rejected_t)
        stats["loss"] = float(bradley_terry_loss(chosen_t, rejected_t))
        stats["pairs"] = len(pairs)
        return {f"eval_{k}": v for k, v in stats.items()}

    # -- training ------------------------------------------------------------------------------------
    def learn(self, data: Any, eval_data: Any = None, progress_bar: bool = False) -> dict[str, float]:
        """Train on ``data`` (see `load_pairs`), evaluate on ``eval_data``, or on the data's ``test``
        split, or on a held-out ``eval_fraction`` of its prompts; returns the eval metrics."""
        from tqdm.auto import tqdm

        rows, test = load_pairs(data)
        if eval_data is not None:
            test = load_pairs(eval_data)[0]
        elif test is None and self.eval_fraction > 0:
            rows, test = split_by_prompt(rows, self.eval_fraction, self.seed)
        if self.use_margin and "margin" not in rows[0]:
            raise ValueError("use_margin=True needs a 'margin' column in the pairs (TRL's name for it)")
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.learning_rate)
        rng = np.random.default_rng(self.seed)
        steps = self.n_epochs * -(-len(rows) // self.batch_size)
        bar = tqdm(total=steps, desc="reward model", disable=not progress_bar)
        self.model.train()
        for epoch in range(self.n_epochs):
            order = rng.permutation(len(rows))
            for start in range(0, len(rows), self.batch_size):
                batch = [rows[i] for i in order[start : start + self.batch_size]]
                chosen, rejected = self._pair_rewards(batch)
                margin = (
                    torch.tensor([float(r["margin"]) for r in batch], device=self.device) if self.use_margin else None
                )
                loss = bradley_terry_loss(chosen, rejected, margin, self.center_rewards_coefficient)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                stats = {"epoch": epoch, "loss": float(loss.detach()), **pair_statistics(chosen, rejected)}
                self.history.append(stats)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['accuracy']:.2f}")
                bar.update(1)
        bar.close()
        self.model.eval()
        self.eval_metrics = {"train_pairs": len(rows), **(self.evaluate(test) if test else {})}
        return self.eval_metrics

    def save(self, path: str | os.PathLike) -> Path:
        """A ``transformers`` directory (adapter merged) plus ``reward_model.json``: the eval metrics
        and the settings it was trained with."""
        settings = {
            "backbone": self.backbone,
            "lora": self.lora,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "n_epochs": self.n_epochs,
            "max_length": self.max_length,
            "center_rewards_coefficient": self.center_rewards_coefficient,
            "use_margin": self.use_margin,
            "seed": self.seed,
        }
        return save_scorer(self.model, self.tokenizer, path, {**self.eval_metrics, "settings": settings})
