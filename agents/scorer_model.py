"""A scalar-head sequence classifier on a policy's backbone: build it, score texts, save it.

What `agents.RewardModel` and `agents.Discriminator` share: a transformers
``AutoModelForSequenceClassification`` with ``num_labels=1`` built from the same model specs as
`policies.load_lm` (the embedded name, a local directory or a hub id), trained with LoRA (peft,
the head trainable beside the adapter) or in full, and saved as a plain directory that
``transformers`` (and `rewards.RewardModelReward`) loads, the adapter merged. Imports torch,
transformers, peft and `policies.loading`.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

METRICS_FILE = "reward_model.json"


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (the head's initialisation and the data order)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_by(
    rows: Sequence[Mapping[str, Any]], column: str, eval_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A seeded split by the value of ``column`` (a prompt, a problem): about ``eval_fraction`` of
    the values (at least one when there are two or more) go to evaluation with all their rows."""
    values = sorted({r[column] for r in rows})
    order = np.random.default_rng(seed).permutation(len(values))
    n_eval = min(len(values) - 1, max(1, round(eval_fraction * len(values)))) if eval_fraction > 0 else 0
    held = {values[i] for i in order[:n_eval]}
    return [dict(r) for r in rows if r[column] not in held], [dict(r) for r in rows if r[column] in held]


def build_scorer(
    backbone: str,
    lora: Mapping[str, Any] | None = None,
    dtype: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Any, Any]:
    """``(model, tokenizer)``: a one-logit sequence classifier on ``backbone``'s weights, its head
    freshly initialised (seed torch first), with a LoRA adapter when ``lora`` is a dict of
    `peft.LoraConfig` fields (e.g. ``{"r": 8, "target_modules": "all-linear"}``), else every
    weight trainable.

    :param backbone: a model spec as `policies.load_lm` takes it (embedded name, local path, hub id).
    :param lora: LoRA settings, or ``None`` for full fine-tuning.
    :param dtype: ``None``/``"float32"``, ``"bfloat16"`` or ``"float16"``.
    :param device: where the model goes.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from policies.loading import _resolve_dtype, resolve_model_path

    path = os.path.expanduser(resolve_model_path(backbone))
    if not os.path.isdir(path) and (backbone.startswith((".", "/", "~")) or backbone.count("/") > 1):
        raise FileNotFoundError(f"backbone {backbone!r} does not exist: give an embedded name, a model dir or a hub id")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=_resolve_dtype(dtype))
    # The head reads the last token that is not padding; the config must know which id pads.
    model.config.pad_token_id = tokenizer.pad_token_id
    if lora is not None:
        import peft

        settings = {"lora_dropout": 0.0, **dict(lora)}
        model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", **settings))
    return model.to(pick_device(device)), tokenizer


def sequence_scores(
    model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, device: torch.device
) -> torch.Tensor:
    """``(len(texts),)`` logits of ``model`` (with grad when enabled), texts right-padded and, when
    too long, cut on the left so that the end of each completion is always seen."""
    tokenizer.truncation_side = "left"
    tokenizer.padding_side = "right"
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    batch = {k: v.to(device) for k, v in batch.items()}
    return model(**batch).logits.squeeze(-1).float()


def save_scorer(model: Any, tokenizer: Any, path: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    """Write a plain ``transformers`` model directory (a LoRA adapter merged into the weights),
    its tokenizer and ``reward_model.json`` (``metrics``); returns the directory."""
    import copy

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    plain = model
    if hasattr(model, "merge_and_unload"):  # peft: keep the trained object intact, merge a copy
        plain = copy.deepcopy(model).merge_and_unload()
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / METRICS_FILE).write_text(json.dumps(dict(metrics), indent=2, sort_keys=True, default=float) + "\n")
    return out
