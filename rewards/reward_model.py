"""`RewardModelReward`: a local sequence-classification model as a batched reward.

Any directory that ``transformers`` loads with ``AutoModelForSequenceClassification`` (a reward
model `agents.RewardModel` wrote, a discriminator `agents.Discriminator` wrote, any classifier)
scores ``prompt + completion`` in batches on a chosen device, returning one number per
completion: the raw logit of a label, its sigmoid (``D``) or its log-sigmoid (``log D``),
optionally normalised by running statistics. As a term of `lm_envs.reward_wrappers.AddTerms`
it sits beside the task score, each logged as ``rewards/<name>/mean``::

    {type: add_terms, terms: {discriminator: {reward: reward-model,
        kwargs: {path: DIR, output: log_sigmoid}, weight: 0.5}}}

Imports: standard library, numpy, `rewards.base`; torch and transformers when built.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from rewards.base import Reward

OUTPUTS = ("logit", "sigmoid", "log_sigmoid")


class RunningMoments:
    """Mean and variance of every value seen so far (Chan et al.'s parallel update per batch)."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, x: np.ndarray) -> None:
        """Fold a batch of values into the statistics."""
        if x.size == 0:
            return
        n, b_mean, b_var = x.size, float(x.mean()), float(x.var())
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])


class RewardModelReward(Reward):
    """The score of a local sequence-classification model, batched.

    :param path: a local model directory (``save_pretrained`` of a sequence classifier and its tokenizer).
    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` (the GPU when there is one) or a
        ``torch.device`` (e.g. the policy's).
    :param output: ``"logit"`` (a reward model's r), ``"sigmoid"`` (a discriminator's D) or
        ``"log_sigmoid"`` (log D, ≤ 0).
    :param label: which logit of a multi-label model (index); a one-logit model has only 0.
    :param normalize: map each score s to (s − mean) / sqrt(var + epsilon) over every score seen
        so far (this batch included), with ``clip`` bounding the result (``None``: unbounded).
    :param update: update the running statistics (turn off to freeze them, e.g. for evaluation).
    :param include_prompt: score ``prompt + completion`` (default) rather than the completion alone.
    :param batch_size: texts per forward pass.
    :param max_length: tokens per text; longer texts lose their beginning, never the completion's end.
    :param name: the term's name in logs.
    :param lazy: load the model at the first score instead of now (a preset's run builds its
        envs before the model it names has to exist, e.g. a discriminator a first step trains).
    """

    name = "reward_model"

    def __init__(
        self,
        path: str | os.PathLike,
        device: Any = "cpu",
        output: str = "logit",
        label: int = 0,
        normalize: bool = False,
        epsilon: float = 1e-8,
        clip: float | None = None,
        update: bool = True,
        include_prompt: bool = True,
        batch_size: int = 32,
        max_length: int = 512,
        name: str | None = None,
        lazy: bool = False,
    ) -> None:
        import torch

        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.path, self.output, self.label = os.path.expanduser(str(path)), output, int(label)
        self.normalize, self.epsilon, self.clip, self.update = bool(normalize), float(epsilon), clip, bool(update)
        self.include_prompt, self.batch_size = bool(include_prompt), max(1, int(batch_size))
        self.max_length = int(max_length)
        self.moments = RunningMoments()
        self._model = self._tokenizer = None
        if name:
            self.name = name
        if lazy:
            return
        self.load()

    def load(self) -> None:
        """Load the model and its tokenizer onto ``device`` (done once, at construction unless ``lazy``)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not os.path.isdir(self.path):
            raise FileNotFoundError(
                f"no reward model directory at {self.path!r}: train one with python experiments/train_reward_model.py "
                f"(a discriminator: python experiments/train_discriminator.py experiment=NAME) and pass its output "
                f"directory"
            )
        tokenizer = AutoTokenizer.from_pretrained(self.path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(self.path).to(self.device).eval()
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if not 0 <= self.label < model.config.num_labels:
            raise ValueError(f"label {self.label} out of range for a model with {model.config.num_labels} logits")
        self._model, self._tokenizer = model, tokenizer

    @property
    def model(self) -> Any:
        if self._model is None:
            self.load()
        return self._model

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self.load()
        return self._tokenizer

    def raw_scores(self, texts: Sequence[str]) -> np.ndarray:
        """The model's output (``output``) per text, before any normalisation, float32."""
        import torch
        import torch.nn.functional as F

        self.tokenizer.padding_side, self.tokenizer.truncation_side = "right", "left"
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
        out = np.zeros(len(texts), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                logits = self.model(**batch).logits[:, self.label].float()
                if self.output == "sigmoid":
                    logits = torch.sigmoid(logits)
                elif self.output == "log_sigmoid":
                    logits = F.logsigmoid(logits)
                out[rows] = logits.cpu().numpy()
        return out

    def score(self, completions: list[str], references: list[Any], prompts: list[str] | None) -> np.ndarray:
        if self.include_prompt and prompts is not None:
            texts = [p + c for p, c in zip(prompts, completions)]
        else:
            texts = list(completions)
        scores = self.raw_scores(texts).astype(np.float64)
        if not self.normalize:
            return scores.astype(np.float32)
        if self.update:
            self.moments.update(scores)
        scores = (scores - self.moments.mean) / np.sqrt(self.moments.var + self.epsilon)
        if self.clip is not None:
            scores = np.clip(scores, -self.clip, self.clip)
        return scores.astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """The running statistics (for a checkpoint)."""
        return self.moments.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.moments.load_state_dict(state)

    def __repr__(self) -> str:
        return f"RewardModelReward(path={self.path!r}, output={self.output!r}, device={str(self.device)!r})"
