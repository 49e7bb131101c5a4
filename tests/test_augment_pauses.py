"""Tests for the pause data helpers (`policies.pause_data`) and experiments/augment_pauses.py:
counts per mode, seeding, token boundaries, the protected `#### N` line, every input and output
shape (a jsonl file, a directory of per-split files, save_to_disk) and the command line on real
GSM8K rows with the seed project's flags."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import call_script

import policies.pause_data as ap
from policies import PAUSE_TOKEN

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "augment_pauses.py"
DATA = Path(os.environ.get("LM_ENVS_DATA_DIR") or REPO.parent / "shared" / "data")
GSM8K = DATA / "gsm8k" / "train.jsonl"
PAUSE = "<|pause|>"
assert PAUSE_TOKEN == PAUSE  # one constant: the policy, the SFT warm-up and the augmentation

# The helpers are a library module; the script (not in a package) is loaded by path.
_spec = importlib.util.spec_from_file_location("augment_pauses", SCRIPT)
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)


@pytest.fixture(scope="module")
def gsm_rows() -> list[dict]:
    rows = []
    with open(GSM8K, encoding="utf-8") as handle:
        for line in handle:
            rows.append(json.loads(line))
            if len(rows) == 60:
                break
    return rows


def pause_points(augmented: str, pause: str = PAUSE) -> list[int]:
    """Offsets in the original text where each pause of `augmented` was inserted."""
    pieces = augmented.split(pause)
    points, offset = [], 0
    for piece in pieces[:-1]:
        offset += len(piece)
        points.append(offset)
    return points


def final_line(text: str) -> str:
    return text[text.rfind("\n", 0, text.rfind("####")) :]


# ------------------------------------------------------------------ counts per mode


def test_fixed_random_count_is_exact(gsm_rows):
    rng = np.random.default_rng(0)
    for row in gsm_rows:
        for n in (1, 7, 40):  # 40 exceeds the word count of short answers: drawn with replacement
            out = ap.insert_random_pauses(row["answer"], n, rng)
            assert out.count(PAUSE) == n
            assert out.replace(PAUSE, "") == row["answer"]
            assert all(p in ap.word_boundaries(row["answer"]) for p in pause_points(out))


def test_variable_count_is_within_range_and_varies(gsm_rows):
    out, stats = ap.augment_rows(gsm_rows, n_random_pauses=6, variable_number_of_pauses=True, seed=1)
    counts = [row["answer"].count(PAUSE) for row in out]
    assert counts == stats.per_sample
    assert all(0 <= c <= 6 for c in counts)
    assert len(set(counts)) >= 4  # U{0..6} over 60 rows: not a constant
    assert 0 in counts and 6 in counts
    assert 2.0 < np.mean(counts) < 4.0  # mean 3, std of the mean ~0.26
    fixed, _ = ap.augment_rows(gsm_rows, n_random_pauses=6, seed=1)
    assert {row["answer"].count(PAUSE) for row in fixed} == {6}


def test_pattern_counts_are_occurrences_times_n(gsm_rows):
    text = "a = 1\nb = 2\nc = 3\n#### 3"
    # The "\n" before "####" is protected: two occurrences count, not three.
    assert ap.insert_pattern_pauses(text, {"\n": 2}) == f"a = 1\n{PAUSE * 2}b = 2\n{PAUSE * 2}c = 3\n#### 3"
    patterns = {"\n": 2, " = ": 1, "<<": 3}
    for row in gsm_rows:
        text = row["answer"]
        head = text[: ap.protected_start(text)]
        expected = sum(n * head.count(pat) for pat, n in patterns.items())
        out = ap.insert_pattern_pauses(text, patterns)
        assert out.count(PAUSE) == expected
        assert out.replace(PAUSE, "") == text
        assert all(text[:p].endswith(tuple(patterns)) for p in pause_points(out))
    assert ap.insert_pattern_pauses("x\n\n\ny", {"\n\n": 1}) == f"x\n\n{PAUSE}\ny"  # non-overlapping


def test_probability_rate_is_near_p():
    rng = np.random.default_rng(123)
    words = rng.choice(["apples", "cost", "$3", "each", "so", "12", "=", "<<4*3=12>>"], size=20000)
    text = " ".join(words)
    p = 0.3
    out = ap.insert_probabilistic_pauses(text, p, np.random.default_rng(7))
    n = len(ap.candidate_points(text))
    assert n == 20000
    k = out.count(PAUSE)
    assert abs(k / n - p) < 4 * math.sqrt(p * (1 - p) / n)  # 4 binomial stds: ~0.013
    assert len(set(pause_points(out))) == k  # at most one pause per word in this mode
    assert ap.insert_probabilistic_pauses(text[:200], 0.0, rng) == text[:200]
    every = ap.insert_probabilistic_pauses("a b c\n#### 1", 1.0, rng)
    assert every == f"a{PAUSE} b{PAUSE} c{PAUSE}\n#### 1"


def test_stats_per_mode_match_the_output(gsm_rows):
    out, stats = ap.augment_rows(
        gsm_rows,
        n_random_pauses=3,
        n_pauses_per_patterns={"\n": 1},
        pause_probability=0.2,
        seed=5,
        pause_augm_col_name="augmented_answer",
    )
    newlines = sum(r["answer"][: ap.protected_start(r["answer"])].count("\n") for r in gsm_rows)
    assert stats.pauses["random"] == 3 * len(gsm_rows)
    assert stats.pauses["pattern"] == newlines
    assert stats.pauses["probability"] > 0
    total = sum(r["augmented_answer"].count(PAUSE) for r in out)
    summary = stats.summary()
    assert summary["pauses_total"] == total == sum(stats.pauses.values())
    assert summary["mean_pauses_per_sample"] == pytest.approx(total / len(out))
    assert [r["answer"] for r in out] == [r["answer"] for r in gsm_rows]  # source column kept


# ------------------------------------------------------------------ samples and seeds


def test_k_samples_per_datapoint(gsm_rows):
    rows = gsm_rows[:10]
    out, stats = ap.augment_rows(rows, n_random_pauses=5, n_generated_samples_per_datapoint=3, seed=0)
    assert stats.rows_in == 10 and stats.rows_out == len(out) == 30
    for i, row in enumerate(rows):
        group = out[3 * i : 3 * i + 3]
        assert all(g["question"] == row["question"] for g in group)
        assert all(g["answer"].replace(PAUSE, "") == row["answer"] for g in group)
        assert len({g["answer"] for g in group}) > 1  # independent draws, not copies
    with pytest.raises(ValueError):
        ap.augment_rows(rows, n_random_pauses=1, n_generated_samples_per_datapoint=0)


def test_same_seed_same_output_different_seed_differs(gsm_rows):
    kwargs = dict(
        n_random_pauses=4, variable_number_of_pauses=True, pause_probability=0.1, n_generated_samples_per_datapoint=2
    )
    a, _ = ap.augment_rows(gsm_rows, seed=11, **kwargs)
    b, _ = ap.augment_rows(gsm_rows, seed=11, **kwargs)
    c, _ = ap.augment_rows(gsm_rows, seed=12, **kwargs)
    assert a == b
    assert sum(x["answer"] != y["answer"] for x, y in zip(a, c)) > len(a) // 2
    prefix, _ = ap.augment_rows(gsm_rows[:5], seed=11, **kwargs)
    assert prefix == a[:10]  # --limit keeps the rows it keeps unchanged


# ------------------------------------------------------------------ token boundaries


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory, gsm_rows) -> Path:
    """A small byte-level BPE trained on a few GSM8K answers: it splits most words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["[UNK]"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator([r["answer"] for r in gsm_rows[:20]], trainer)
    directory = tmp_path_factory.mktemp("bpe")
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(directory)
    return directory


def test_tokenizer_aware_positions_sit_at_token_boundaries(bpe_dir, gsm_rows):
    tokenizer = ap.load_tokenizer(str(bpe_dir))  # a local path, as --tokenizer_hf_name takes it
    out, stats = ap.augment_rows(gsm_rows, n_random_pauses=8, pause_probability=0.3, seed=3, tokenizer=tokenizer)
    inside_words = 0
    for i, (row, aug) in enumerate(zip(gsm_rows, out)):
        text = row["answer"]
        assert aug["answer"].replace(PAUSE, "") == text
        spans = [
            tuple(o) for o in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        ]
        ends = {e for _, e in spans}
        points = pause_points(aug["answer"])
        assert len(points) == stats.per_sample[i]
        for p in points:
            assert p in ends
            assert not any(s < p < e for s, e in spans)
            assert p <= ap.protected_start(text)
        inside_words += sum(p not in ap.word_boundaries(text) for p in points)
    assert inside_words > 0  # subword boundaries were used, not word ends


def test_embedded_smollm2_tokenizer():
    # The embedded model package is installed by `make test`; a missing one must fail, not skip.
    tokenizer = ap.load_tokenizer("smollm2-135m-instruct")
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    points = ap.token_boundaries(text, tokenizer)
    assert text.index("Natalia") + 1 in points  # "N" | "atal" | "ia": subword ends
    out = ap.insert_probabilistic_pauses(text, 1.0, np.random.default_rng(0), points)
    assert out.replace(PAUSE, "") == text and final_line(out) == "\n#### 72"
    assert out.count(PAUSE) == len([p for p in points if p <= ap.protected_start(text)])


# ------------------------------------------------------------------ the gold answer


def test_final_answer_line_stays_intact(gsm_rows):
    from rewards.math import extract_answer, format_ok

    heavy = dict(
        n_random_pauses=30,
        n_pauses_per_patterns={"\n": 3, "4": 2, "#": 1, " ": 1},
        pause_probability=1.0,
        n_generated_samples_per_datapoint=2,
        seed=0,
    )
    out, _ = ap.augment_rows(gsm_rows, **heavy)
    for row, aug in zip([r for r in gsm_rows for _ in range(2)], out):
        assert final_line(aug["answer"]) == final_line(row["answer"])
        assert aug["answer"].split("####")[-1] == row["answer"].split("####")[-1]
        assert extract_answer(aug["answer"]) == extract_answer(row["answer"])
        assert format_ok(aug["answer"])
    # A marker on the first line protects everything; no marker protects nothing.
    assert ap.insert_random_pauses("#### 72", 5, np.random.default_rng(0)) == "#### 72"
    assert ap.insert_pattern_pauses("1 2\n3", {"\n": 1}) == f"1 2\n{PAUSE}3"


# ------------------------------------------------------------------ I/O


def test_jsonl_and_save_to_disk_round_trip(tmp_path, gsm_rows):
    out, _ = ap.augment_rows(gsm_rows[:7], n_random_pauses=2, seed=0, pause_augm_col_name="augmented_answer")
    jsonl = script.save_rows(out, str(tmp_path / "sub" / "aug.jsonl"))
    assert jsonl.is_file() and len(jsonl.read_text().splitlines()) == 7
    assert ap.load_rows(str(jsonl)) == out
    directory = script.save_rows(out, str(tmp_path / "aug_ds"))
    assert (directory / "dataset_info.json").is_file()
    import datasets

    assert datasets.load_from_disk(str(directory)).to_list() == out
    assert ap.load_rows(str(directory), limit=3) == out[:3]  # a save_to_disk dir is also an input
    with pytest.raises(FileNotFoundError):
        ap.load_rows(str(tmp_path / "missing.jsonl"))


def test_split_inputs_directory_of_split_files_and_dataset_dict(tmp_path, gsm_rows):
    seed_dir = tmp_path / "gsm8k_jsonl" / "gsm8k"  # the seed project's layout: train.json / test.json
    seed_dir.mkdir(parents=True)
    for name, rows in (("train.json", gsm_rows[:5]), ("test.json", gsm_rows[5:8])):
        (seed_dir / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert ap.source_layout(str(seed_dir)) == "split_files"
    assert ap.load_splits(str(seed_dir)) == {"test": gsm_rows[5:8], "train": gsm_rows[:5]}
    assert ap.load_rows(str(seed_dir)) == gsm_rows[:5] and ap.load_rows(str(seed_dir), split="test") == gsm_rows[5:8]
    assert ap.load_rows(str(DATA / "gsm8k"), limit=2) == gsm_rows[:2]  # ../shared/data/gsm8k: train.jsonl, test.jsonl
    import datasets

    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(gsm_rows[:4]), "test": datasets.Dataset.from_list(gsm_rows[4:6])}
    ).save_to_disk(str(tmp_path / "dd"))
    assert ap.source_layout(str(tmp_path / "dd")) == "datasets"
    assert ap.load_splits(str(tmp_path / "dd"), limit=1) == {"train": gsm_rows[:1], "test": gsm_rows[4:5]}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither"):
        ap.load_rows(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no split 'validation'"):
        ap.load_rows(str(seed_dir), split="validation")


def test_parse_patterns():
    assert script.parse_patterns('{"\\n": 2, "=": 1}') == {"\n": 2, "=": 1}
    for bad in ('{"\\n": -1}', '["\\n"]', '{"": 1}', '{"a": 1.5}', "not json"):
        with pytest.raises(Exception):
            script.parse_patterns(bad)


# ------------------------------------------------------------------ command line


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command line's result: ``python experiments/augment_pauses.py ARGS`` in a subprocess when
    ``env`` is given (settings read at import, e.g. HF_HUB_OFFLINE), else the script's ``main`` in
    this process, with its exit status, stdout and stderr (no interpreter start-up per call)."""
    if env is not None:
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **env},
        )
    return call_script(script.main, list(args))


def test_cli_end_to_end_on_real_rows(tmp_path):
    target = tmp_path / "gsm8k_pauses.jsonl"
    proc = run_cli(
        "--dataset_location",
        str(GSM8K),
        "--augm_dataset_save_location",
        str(target),
        "--limit",
        "20",
        "--n_random_pauses",
        "4",
        "--n_pauses_per_patterns",
        '{"\\n": 1}',
        "--n_generated_samples_per_datapoint",
        "2",
        "--pause_augm_col_name",
        "augmented_answer",
        "--seed",
        "3",
        "--verbose",
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    source = [json.loads(line) for line in GSM8K.read_text().splitlines()[:20]]
    assert len(rows) == 40
    newlines = 0
    for row, src in zip(rows, [s for s in source for _ in range(2)]):
        assert row["question"] == src["question"] and row["answer"] == src["answer"]
        assert row["augmented_answer"].replace(PAUSE, "") == src["answer"]
        assert final_line(row["augmented_answer"]) == final_line(src["answer"])
        n_lines = src["answer"][: ap.protected_start(src["answer"])].count("\n")
        assert row["augmented_answer"].count(PAUSE) == 4 + n_lines
        newlines += n_lines
    summary = json.loads(re.search(r"^summary: (.*)$", proc.stdout, re.M).group(1))
    assert summary["rows_in"] == 20 and summary["rows_out"] == 40
    assert summary["pauses_per_mode"] == {"random": 160, "pattern": newlines, "probability": 0}
    assert PAUSE in proc.stdout.split("rows in")[0]  # --verbose printed examples
    again = tmp_path / "again.jsonl"
    assert (
        run_cli(
            "--dataset_location",
            str(GSM8K),
            "--augm_dataset_save_location",
            str(again),
            "--limit",
            "20",
            "--n_random_pauses",
            "4",
            "--n_pauses_per_patterns",
            '{"\\n": 1}',
            "--n_generated_samples_per_datapoint",
            "2",
            "--pause_augm_col_name",
            "augmented_answer",
            "--seed",
            "3",
        ).returncode
        == 0
    )
    assert again.read_bytes() == target.read_bytes()


def test_cli_seed_command_on_a_directory_of_split_files(tmp_path, gsm_rows):
    """The seed project's command, flag for flag, on its layout (a directory of train/test json files)."""
    seed_dir = tmp_path / "data" / "gsm8k_jsonl" / "gsm8k"
    seed_dir.mkdir(parents=True)
    for name, rows in (("train.json", gsm_rows[:6]), ("test.json", gsm_rows[6:9])):
        (seed_dir / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "data" / "gsm8k_json" / "gsm8k_variable_random_pauses"
    proc = run_cli(
        "--dataset_location",
        str(seed_dir),
        "--pause_token",
        "<|pause|>",
        "--n_pauses_per_patterns",
        "{}",
        "--augm_dataset_save_location",
        str(out),
        "--pause_augm_col_name",
        "answer",
        "--verbose",
        "--n_random_pauses",
        "10",
        "--tokenizer_hf_name",
        "None",
        "--variable_number_of_pauses",
        "--n_generated_samples_per_datapoint",
        "5",
        "--verbose",
        "--seed",
        "42",
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["test.json", "train.json"]  # as the seed writes them
    for name, source in (("train.json", gsm_rows[:6]), ("test.json", gsm_rows[6:9])):
        rows = [json.loads(line) for line in (out / name).read_text().splitlines()]
        assert len(rows) == 5 * len(source)
        for row, src in zip(rows, [s for s in source for _ in range(5)]):
            assert row["question"] == src["question"]
            assert row["answer"].replace(PAUSE, "") == src["answer"] and row["answer"].count(PAUSE) <= 10
    assert "splits: test 15 rows, train 30 rows" in proc.stdout
    # The shared data's gsm8k/ (train.jsonl, test.jsonl) gives the same two files; a DatasetDict
    # directory gives a DatasetDict directory; several splits never go to one file.
    split_out = tmp_path / "split_out"
    assert (
        run_cli(
            "--dataset_location",
            str(DATA / "gsm8k"),
            "--augm_dataset_save_location",
            str(split_out),
            "--limit",
            "2",
            "--n_random_pauses",
            "1",
        ).returncode
        == 0
    )
    assert sorted(p.name for p in split_out.iterdir()) == ["test.jsonl", "train.jsonl"]
    import datasets

    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(gsm_rows[:3]), "test": datasets.Dataset.from_list(gsm_rows[3:5])}
    ).save_to_disk(str(tmp_path / "dd"))
    assert (
        run_cli(
            "--dataset_location",
            str(tmp_path / "dd"),
            "--augm_dataset_save_location",
            str(tmp_path / "dd_out"),
            "--n_random_pauses",
            "1",
        ).returncode
        == 0
    )
    saved = datasets.load_from_disk(str(tmp_path / "dd_out"))
    assert {split: len(part) for split, part in saved.items()} == {"train": 3, "test": 2}
    one_file = run_cli(
        "--dataset_location",
        str(seed_dir),
        "--augm_dataset_save_location",
        str(tmp_path / "x.jsonl"),
        "--n_random_pauses",
        "1",
    )
    assert one_file.returncode != 0 and "give a directory" in one_file.stderr


def test_cli_errors(tmp_path):
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = run_cli(
        "--dataset_location",
        "openai/gsm8k",
        "--augm_dataset_save_location",
        str(tmp_path / "o.jsonl"),
        "--n_random_pauses",
        "2",
        env=offline,
    )
    assert proc.returncode != 0
    assert "offline" in proc.stderr and "--dataset_location" in proc.stderr and "train.jsonl" in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()
    nothing = run_cli("--dataset_location", str(GSM8K), "--augm_dataset_save_location", str(tmp_path / "n.jsonl"))
    assert nothing.returncode == 2 and "nothing to insert" in nothing.stderr
