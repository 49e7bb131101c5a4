"""experiments/build_preferences.py (tiny model): pairs and unpaired samples as a `datasets` data
set with its metadata, readable by TRL's DPO/KTO data formats."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))

ENV_ID = "test_envs/Digits-v0"


def digits_task(split="train", data_dir=None):
    from helpers import WORDS

    from lm_envs import Task

    rng = np.random.default_rng(0)
    questions = [" ".join(rng.choice(WORDS[6:16], size=4)) for _ in range(6)]

    def digit_fraction(completions, references, prompts=None):
        return np.array(
            [sum(w.isdigit() for w in c.split()) / max(1, len(c.split())) for c in completions], dtype=np.float32
        )

    return Task(
        questions=questions, references=list(range(6)), reward=digit_fraction, name="digits", chat_template=False
    )


@pytest.fixture(scope="module", autouse=True)
def registered():
    from lm_envs import register_task

    register_task(ENV_ID, digits_task, max_new_tokens=6)


def args(tiny_dir, out, *extra):
    return [
        f"env.id={ENV_ID}",
        f"policy.model={tiny_dir}",
        "env.num_envs=8",
        "env.kwargs.max_new_tokens=5",
        "env.kwargs.max_prompt_tokens=16",
        "env.reward_wrappers=[]",
        f"prefs.out={out}",
        *extra,
    ]


def test_pairs_data_set_with_metadata(tiny_dir, tiny_lm, tmp_path):
    import build_preferences
    import datasets

    result = build_preferences.main(args(tiny_dir, tmp_path / "pairs", "prefs.strategy=all", "prefs.batches=2"))
    data = datasets.load_from_disk(str(tmp_path / "pairs"))
    assert data.column_names == ["prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "index"]
    assert len(data) == result["rows"] > 0
    assert all(c > r for c, r in zip(data["chosen_reward"], data["rejected_reward"]))
    assert all(c != r for c, r in zip(data["chosen"], data["rejected"]))
    meta = json.loads(data.info.description)
    assert meta["env_id"] == ENV_ID and meta["model"] == str(tiny_dir) and meta["reward"] == "digit_fraction"
    assert meta["samples"] == 16 and json.loads((tmp_path / "pairs" / "metadata.json").read_text()) == meta
    # TRL's DPOTrainer reads it as is (a test-only dependency).
    from trl import DPOConfig, DPOTrainer

    trainer = DPOTrainer(
        model=tiny_lm[0],
        processing_class=tiny_lm[1],
        train_dataset=data,
        args=DPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False),
    )
    assert len(trainer.train_dataset) == len(data)


def test_unpaired_data_set_labels_by_threshold(tiny_dir, tiny_lm, tmp_path):
    import build_preferences
    import datasets

    build_preferences.main(
        args(tiny_dir, tmp_path / "kto", "prefs.format=unpaired", "prefs.threshold=0.2", "prefs.batches=1")
    )
    data = datasets.load_from_disk(str(tmp_path / "kto"))
    assert data.column_names == ["prompt", "completion", "label", "reward", "index"] and len(data) == 8
    assert data["label"] == [r >= 0.2 for r in data["reward"]]
    assert json.loads(data.info.description)["prefs_format"] == "unpaired"
    from trl import KTOConfig, KTOTrainer

    trainer = KTOTrainer(
        model=tiny_lm[0],
        processing_class=tiny_lm[1],
        train_dataset=data,
        args=KTOConfig(
            output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False, per_device_train_batch_size=2
        ),
    )
    assert len(trainer.train_dataset) == len(data)
    with pytest.raises(SystemExit, match=r"unknown option 'prefs.nope'.*known keys under prefs: \['batches'"):
        build_preferences.main(args(tiny_dir, tmp_path / "x", "prefs.nope=1"))
