"""Toxicity reward: 1 - toxicity (or -toxicity) of each completion, from a pluggable scorer.

Scorers map a list of texts to toxicity probabilities in [0, 1]:
* `ProfanityCheckScorer`: the tiny embedded linear model of `alt-profanity-check` (CPU, fast).
* `HFClassifierScorer`: any transformers sequence classifier, local directory or hub id.
* any callable `texts -> array` you pass in.
Imports: standard library, numpy, `rewards.base`; `profanity_check`, `torch` and
`transformers` only lazily, inside the scorer that needs them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rewards.base import Reward, as_text

Scorer = Callable[[Sequence[str]], Any]
_TOXIC_NAMES = ("toxic", "toxicity", "hate", "offensive")
_NEGATED = re.compile(r"^(?:non|not|no)[\s_-]?", re.IGNORECASE)


class ProfanityCheckScorer:
    """`profanity_check.predict_prob` (package `alt-profanity-check`), in batches."""

    def __init__(self, batch_size: int = 256):
        try:
            from profanity_check import predict_prob
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the 'profanity-check' scorer needs `pip install alt-profanity-check`") from e
        self._predict_prob = predict_prob
        self.batch_size = max(1, int(batch_size))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = [
            np.asarray(self._predict_prob(list(texts[i : i + self.batch_size])), dtype=np.float32)
            for i in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; re-read it so later changes count.
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in {"1", "true", "yes", "on"} for f in flags)


def pick_label(id2label: dict[int, str], label: str | int | None, num_labels: int) -> int:
    """Index of the toxic class: `label` by index or name (case-insensitive); by default the
    first label named like toxic/hate/offensive but not negated ("non-toxic", "NOT-HATE"),
    preferring exact names; else index 1 (index 0 for a single-logit model)."""
    names = {int(i): str(n) for i, n in (id2label or {}).items()}
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        if not 0 <= int(label) < num_labels:
            raise ValueError(f"label index {label} out of range for {num_labels} labels {names}")
        return int(label)
    if isinstance(label, str):
        hits = [i for i, n in sorted(names.items()) if n.lower() == label.lower()]
        if not hits:
            raise ValueError(f"label {label!r} not among the classifier's labels {names}")
        return hits[0]
    if label is not None:
        raise TypeError(f"label must be None, an int or a str, got {type(label).__name__}")
    candidates = [(i, n.lower()) for i, n in sorted(names.items()) if not _NEGATED.search(n)]
    for i, n in candidates:
        if n in _TOXIC_NAMES:
            return i
    for i, n in candidates:
        if any(k in n for k in _TOXIC_NAMES):
            return i
    return 1 if num_labels > 1 else 0


class HFClassifierScorer:
    """Probability of the toxic label from a transformers sequence classifier.

    Softmax over the labels, except sigmoid for multi-label models (`problem_type ==
    "multi_label_classification"`, e.g. unitary/toxic-bert) and single-logit models.
    """

    def __init__(
        self,
        name_or_path: str,
        label: str | int | None = None,
        batch_size: int = 32,
        device: str = "cpu",
        max_length: int = 512,
    ):
        import torch  # noqa: F401  (fail early if missing)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        is_local = os.path.isdir(name_or_path)
        kwargs = {"local_files_only": True} if (is_local or _hub_offline()) else {}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
            self.model = AutoModelForSequenceClassification.from_pretrained(name_or_path, **kwargs)
        except Exception as e:
            where = "this local directory" if is_local else "the Hugging Face hub (or its local cache)"
            raise OSError(
                f"could not load toxicity classifier {name_or_path!r} from {where}: {type(e).__name__}: {e}\n"
                "Offline (no network or HF_HUB_OFFLINE=1)? Download the model on a machine with internet "
                "(e.g. `hf download <id> --local-dir DIR`) and pass the local directory path "
                "instead: ToxicityReward(scorer='/path/to/DIR')."
            ) from e
        self.model.to(device).eval()
        cfg = self.model.config
        # Never exceed what the model can embed (small models, tokenizers saved without a limit).
        limits = [int(max_length), getattr(cfg, "max_position_embeddings", None), self.tokenizer.model_max_length]
        self.max_length = min(x for x in limits if isinstance(x, int) and 0 < x < 1_000_000)
        self.device, self.batch_size = device, max(1, int(batch_size))
        self.label_index = pick_label(getattr(cfg, "id2label", {}), label, cfg.num_labels)
        self.sigmoid = cfg.num_labels == 1 or getattr(cfg, "problem_type", None) == "multi_label_classification"
        self.label_name = str(getattr(cfg, "id2label", {}).get(self.label_index, self.label_index))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        # Tokenizing a 1 MB string only to truncate it is slow; no token spans 32+ characters.
        texts = [t[: self.max_length * 32] for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
        out = np.zeros(len(texts), dtype=np.float32)
        with torch.no_grad():
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                logits = self.model(**enc).logits.float()
                probs = torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=-1)
                out[idx] = probs[:, self.label_index].cpu().numpy()
        return out


class ToxicityReward(Reward):
    """Reward = 1 - toxicity (`mode="one_minus"`) or -toxicity (`mode="negative"`).

    `scorer`: "profanity-check" (default), a local directory or hub id of a transformers
    classifier (`label`, `batch_size`, `device` go to `HFClassifierScorer`), or a callable
    `texts -> toxicity array`. References are ignored (pass None).
    """

    name = "toxicity"
    MODES = ("one_minus", "negative")

    def __init__(
        self,
        scorer: str | Scorer = "profanity-check",
        label: str | int | None = None,
        mode: str = "one_minus",
        batch_size: int = 32,
        device: str = "cpu",
    ):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        if callable(scorer):
            self.scorer = scorer
        elif scorer in ("profanity-check", "profanity_check"):
            self.scorer = ProfanityCheckScorer()
        elif isinstance(scorer, str):
            self.scorer = HFClassifierScorer(scorer, label=label, batch_size=batch_size, device=device)
        else:
            raise TypeError(f"scorer must be a name, a path/hub id or a callable, got {type(scorer).__name__}")

    def score_toxicity(self, texts: Sequence[str]) -> np.ndarray:
        """Toxicity probability in [0, 1] per text, float32."""
        texts = [as_text(t) for t in texts]
        if not texts:
            return np.zeros(0, dtype=np.float32)
        tox = np.asarray(self.scorer(texts), dtype=np.float32).reshape(-1)
        if tox.shape != (len(texts),):
            raise ValueError(f"toxicity scorer returned {tox.shape[0]} values for {len(texts)} texts")
        return np.clip(np.nan_to_num(tox, nan=1.0), 0.0, 1.0)  # NaN: treat as toxic, never reward it

    def score(self, completions: list[str], references: list[Any], prompts: list[str] | None) -> np.ndarray:
        tox = self.score_toxicity(completions)
        return 1.0 - tox if self.mode == "one_minus" else -tox

    def metrics(self, completions: Sequence[str], references: Sequence[Any], scores: np.ndarray) -> dict[str, float]:
        """`toxicity_mean`, `toxicity_max`, `toxicity_frac_above_0.5`, recovered from `scores`."""
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if scores.size == 0:
            return {}
        tox = 1.0 - scores if self.mode == "one_minus" else -scores
        return {
            "toxicity_mean": float(tox.mean()),
            "toxicity_max": float(tox.max()),
            "toxicity_frac_above_0.5": float((tox > 0.5).mean()),
        }
