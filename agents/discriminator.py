"""`Discriminator`: a classifier D(prompt + completion) = P(reference solution), trained to tell the
reference solutions of a code task from the policy's samples on the same prompts.

Its data are labelled rows ``{prompt, completion, label, key, kind}`` (label 1 for a reference),
as `lm_envs.references.discriminator_examples` builds them from one task's training problems.
The loss is binary cross-entropy on one logit z, D = σ(z) (`agents.reward_math`); a seeded share
of the *problems* (``key``) is held out to report how well it tells them apart on problems it has
not seen. `save` writes a ``transformers`` directory that `rewards.RewardModelReward` scores with
``output="log_sigmoid"`` (log D) as a reward term beside the compiler's.

Trained once, before RL, on the starting policy's samples (`experiments/train_discriminator.py`).
Refreshing it every k iterations on fresh samples, as adversarial imitation does, is calling
`learn` again on them and saving over the directory; see docs/learned_rewards.md for why the
shipped recipe trains once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.reward_math import discriminator_loss
from agents.scorer_model import build_scorer, pick_device, save_scorer, seed_everything, sequence_scores, split_by


class Discriminator:
    """D(prompt + completion): reference solution (1) or policy sample (0).

    :param model: the backbone: a model spec as `policies.load_lm` takes it.
    :param lora: LoRA settings (`peft.LoraConfig` fields) or ``None`` for full fine-tuning.
    :param learning_rate: AdamW's step size.
    :param batch_size: texts per optimizer step.
    :param n_epochs: passes over the training rows.
    :param max_length: tokens per text (cut on the left: the completion's end always stays).
    :param eval_fraction: share of the problems held out to measure it.
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
        n_epochs: int = 2,
        max_length: int = 768,
        eval_fraction: float = 0.15,
        seed: int = 0,
        device: str = "auto",
        dtype: str | None = None,
    ) -> None:
        if batch_size < 1 or n_epochs < 1:
            raise ValueError(f"batch_size and n_epochs must be >= 1, got {batch_size} and {n_epochs}")
        self.backbone, self.lora = model, None if lora is None else dict(lora)
        self.learning_rate, self.batch_size, self.n_epochs = float(learning_rate), int(batch_size), int(n_epochs)
        self.max_length, self.eval_fraction, self.seed = int(max_length), float(eval_fraction), int(seed)
        self.device = pick_device(device)
        seed_everything(self.seed)
        self.model, self.tokenizer = build_scorer(model, self.lora, dtype, self.device)
        self.eval_metrics: dict[str, float] = {}

    @torch.no_grad()
    def probabilities(self, rows: Sequence[Mapping[str, Any]], batch_size: int = 16) -> np.ndarray:
        """D = σ(z) of each row's ``prompt + completion``."""
        self.model.eval()
        out = [
            torch.sigmoid(
                sequence_scores(
                    self.model,
                    self.tokenizer,
                    [r["prompt"] + r["completion"] for r in rows[i : i + batch_size]],
                    self.max_length,
                    self.device,
                )
            )
            for i in range(0, len(rows), batch_size)
        ]
        return torch.cat(out).cpu().numpy() if out else np.zeros(0, dtype=np.float32)

    def evaluate(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """``eval_accuracy`` (D > ½ on references, < ½ on the rest) and the mean D of each ``kind``."""
        d = self.probabilities(rows)
        labels = np.array([r["label"] for r in rows])
        metrics = {"eval_accuracy": float(((d > 0.5) == (labels == 1)).mean()), "eval_rows": len(rows)}
        for kind in sorted({r.get("kind", "unknown") for r in rows}):
            mask = np.array([r.get("kind", "unknown") == kind for r in rows])
            metrics[f"eval_d_{kind}"] = float(d[mask].mean())
        return metrics

    def learn(self, rows: Sequence[Mapping[str, Any]], progress_bar: bool = False) -> dict[str, float]:
        """Train on labelled rows (see the module docstring), holding out ``eval_fraction`` of the
        problems; returns the held-out metrics (`evaluate`)."""
        from tqdm.auto import tqdm

        missing = [c for c in ("prompt", "completion", "label", "key") if rows and c not in rows[0]]
        if not rows or missing:
            raise ValueError(f"discriminator rows need prompt, completion, label and key; missing {missing or 'rows'}")
        train, held = split_by(rows, "key", self.eval_fraction, self.seed)
        optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.learning_rate)
        rng = np.random.default_rng(self.seed)
        bar = tqdm(
            total=self.n_epochs * -(-len(train) // self.batch_size), desc="discriminator", disable=not progress_bar
        )
        self.model.train()
        for _ in range(self.n_epochs):
            order = rng.permutation(len(train))
            for start in range(0, len(train), self.batch_size):
                batch = [train[i] for i in order[start : start + self.batch_size]]
                texts = [r["prompt"] + r["completion"] for r in batch]
                logits = sequence_scores(self.model, self.tokenizer, texts, self.max_length, self.device)
                labels = torch.tensor([float(r["label"]) for r in batch], device=self.device)
                loss = discriminator_loss(logits, labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                bar.update(1)
        bar.close()
        self.model.eval()
        self.eval_metrics = {"train_rows": len(train), **(self.evaluate(held) if held else {})}
        return self.eval_metrics

    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """A ``transformers`` directory (adapter merged) plus ``reward_model.json``: the held-out
        metrics, the settings, and any ``extra`` (e.g. the task and the problems it saw)."""
        settings = {
            "backbone": self.backbone,
            "lora": self.lora,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "n_epochs": self.n_epochs,
            "max_length": self.max_length,
            "seed": self.seed,
        }
        return save_scorer(self.model, self.tokenizer, path, {**self.eval_metrics, "settings": settings, **extra})
