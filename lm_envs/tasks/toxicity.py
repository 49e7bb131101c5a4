"""RealToxicityPrompts continuation: the policy continues a prompt, the reward is 1 - toxicity.

The set has no splits of its own: `toxicity_split` carves a seeded, disjoint train/test split
out of it. May import `rewards` and `lm_envs.tasks.base`; never `policies` or `agents`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lm_envs.tasks.base import RewardFn, Task, _build, _check_split, _limit, make_reward, seeded_split, validate_rows
from rewards.data import load_from_hub, local_file, read_jsonl, resolve_data_dir

__all__ = ["TOXICITY_SUBSETS", "load_toxicity", "toxicity_split", "toxicity_task"]

TOXICITY_SUBSETS = ("toxic", "nontoxic", "both")


def load_toxicity(subset: str, data_dir: str | None) -> list[Any]:
    """RealToxicityPrompts records: "toxic" = the challenging prompts, "nontoxic" = prompts that
    are not challenging and have Perspective toxicity < 0.5 (on the hub; locally the given file)."""
    local = resolve_data_dir(data_dir)
    parts = ("toxic", "nontoxic") if subset == "both" else (subset,)
    if local is not None:
        return [
            row
            for part in parts
            for row in read_jsonl(local_file(local, "toxicity", f"rtp_{part}.jsonl"), lenient=True)
        ]

    def from_hub():
        import datasets

        rows = datasets.load_dataset("allenai/real-toxicity-prompts", split="train")
        for part in parts:  # toxic first, as locally
            for row in rows:
                tox = (row.get("prompt") or {}).get("toxicity")
                if (
                    row.get("challenging")
                    if part == "toxic"
                    else not row.get("challenging") and tox is not None and tox < 0.5
                ):
                    yield row

    return load_from_hub(from_hub, "allenai/real-toxicity-prompts (train)")


def _prompt_text(row: dict[str, Any]) -> str:
    text = row["prompt"]["text"]
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty prompt text")
    return text


def toxicity_split(n: int, split: str, test_size: int, split_seed: int) -> np.ndarray:
    """Row indices of ``split``: a ``split_seed`` permutation's first ``test_size`` rows are the
    test split, the rest train. Deterministic, and the two are disjoint and cover all rows."""
    _check_split("Toxicity", split, ("train", "test"))
    return np.asarray(seeded_split("Toxicity (test_size)", n, split == "test", test_size, split_seed), dtype=np.int64)


def toxicity_task(
    split: str = "train",
    subset: str = "toxic",
    test_size: int = 200,
    split_seed: int = 0,
    data_dir: str | None = None,
    reward: RewardFn | str | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    limit: int | None = None,
    on_bad_row: str = "skip",
    **task_kwargs: Any,
) -> Task:
    """RealToxicityPrompts continuation: the policy continues a prompt; reward = 1 - toxicity.

    Data: local ``toxicity/rtp_toxic.jsonl`` (1,196 challenging prompts) and
    ``toxicity/rtp_nontoxic.jsonl`` (1,200), else hub ``allenai/real-toxicity-prompts``.
    ``subset=``: "toxic", "nontoxic" or "both". The set has no splits of its own: ``split="test"``
    is ``test_size`` prompts chosen by a ``split_seed`` permutation and ``split="train"`` the rest
    (disjoint; `toxicity_split`). ``split_seed`` is separate from the env's sampling ``seed``.
    Prompt: ``row["prompt"]["text"]`` verbatim, no chat template (``chat_template=False``; pass
    ``chat_template=None`` and a ``prompt_template`` to use one). Reference: the whole record.
    Reward: ``rewards.make("toxicity")`` (profanity-check scorer by default; ``reward_kwargs=
    {"scorer": "<classifier dir or hub id>"}`` for a transformers classifier).
    """
    if subset not in TOXICITY_SUBSETS:
        raise ValueError(f"subset must be one of {list(TOXICITY_SUBSETS)}, got {subset!r}")
    rows = validate_rows(
        load_toxicity(subset, data_dir), ("prompt",), f"toxicity_{subset}", on_bad_row, check=_prompt_text
    )
    rows = [rows[i] for i in toxicity_split(len(rows), split, test_size, split_seed)]
    return _build(
        _limit(rows, limit),
        _prompt_text,
        lambda r: r,
        make_reward(reward, "toxicity", reward_kwargs),
        f"toxicity_{subset}",
        {"split": split, "subset": subset, "test_size": test_size, "split_seed": split_seed},
        task_kwargs,
        chat_template=False,
    )
