"""Insert ``<|pause|>`` control tokens into GSM8K answers (the PauseToken research line).

An SFT warm-up on the augmented answers teaches a model to emit pauses before it is trained
with RL. The flags are the seed project's (``--dataset_location``, ``--pause_token``,
``--n_pauses_per_patterns``, ``--augm_dataset_save_location``, ``--pause_augm_col_name``,
``--verbose``, ``--n_random_pauses``, ``--tokenizer_hf_name``, ``--seed``,
``--variable_number_of_pauses``, ``--n_generated_samples_per_datapoint``) plus
``--pause_probability``, ``--source_col_name`` and ``--limit``. The insertion modes, the
protected ``#### N`` line and the seeding are in `policies.pause_data`, which this script
composes.

``--dataset_location`` takes what the seed passes: a directory of json-lines files, one per
split (``train.jsonl``/``test.jsonl``, or the seed's ``train.json``/``test.json``), a single
json-lines file, a ``datasets`` ``save_to_disk`` directory (a Dataset or a DatasetDict), or a
hub id. Every split is augmented. The output keeps the input's shape:

* ``--augm_dataset_save_location`` ending in ``.jsonl``/``.json``: one json-lines file (the
  input must have one split);
* from a directory of split files: a directory with one json-lines file per split, named as
  the input's (as the seed writes ``train.json``/``test.json``);
* otherwise: a ``save_to_disk`` directory (a Dataset for one split, a DatasetDict for several).

Example::

    python experiments/augment_pauses.py --dataset_location ../shared/data/gsm8k/train.jsonl \\
        --augm_dataset_save_location runs/gsm8k_pauses.jsonl --n_random_pauses 10 \\
        --variable_number_of_pauses --n_generated_samples_per_datapoint 2 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agents.checkpoint import atomic_write_text
from policies.pause import PAUSE_TOKEN
from policies.pause_data import (
    MODES,
    SPLIT_FILE_SUFFIXES,
    AugmentStats,
    augment_rows,
    load_splits,
    load_tokenizer,
    source_layout,
    split_files,
)

# --------------------------------------------------------------------------- writing rows


def jsonl_text(rows: Sequence[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def save_rows(rows: Sequence[Mapping[str, Any]], location: str) -> Path:
    """A ``.jsonl``/``.json`` path writes json lines (atomically); anything else is a
    `Dataset.save_to_disk` directory."""
    path = Path(location).expanduser()
    if path.suffix in SPLIT_FILE_SUFFIXES:
        atomic_write_text(path, jsonl_text(rows))
    else:
        import datasets

        path.parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list([dict(r) for r in rows]).save_to_disk(str(path))
    return path


def save_splits(
    splits: Mapping[str, Sequence[Mapping[str, Any]]], location: str, file_names: Mapping[str, str] | None = None
) -> Path:
    """Write every split: one file (a ``.jsonl``/``.json`` path, one split only); with
    `file_names` (``{split: "train.json"}``), one json-lines file per split in the directory
    `location`; else a ``save_to_disk`` directory (a DatasetDict when there are several splits)."""
    path = Path(location).expanduser()
    if path.suffix in SPLIT_FILE_SUFFIXES or len(splits) == 1 and file_names is None:
        if len(splits) != 1:
            raise ValueError(
                f"the data has splits {sorted(splits)}; give a directory to "
                f"--augm_dataset_save_location, not the file {location}"
            )
        return save_rows(next(iter(splits.values())), location)
    if file_names is not None:
        for split, rows in splits.items():
            atomic_write_text(path / file_names[split], jsonl_text(rows))
        return path
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.DatasetDict(
        {split: datasets.Dataset.from_list([dict(r) for r in rows]) for split, rows in splits.items()}
    ).save_to_disk(str(path))
    return path


# --------------------------------------------------------------------------- CLI


def parse_patterns(value: str) -> dict[str, int]:
    """``'{"\\n": 2}'`` -> ``{"\\n": 2}``; an argparse type."""
    try:
        patterns = json.loads(value)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(patterns, dict) or not all(
        isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in patterns.items()
    ):
        raise argparse.ArgumentTypeError(
            "expected a JSON object of non-empty pattern -> count >= 0, e.g. '{\"\\n\": 2}'"
        )
    return patterns


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset_location",
        required=True,
        help="a directory of per-split jsonl files, a jsonl file, a save_to_disk directory, or a hub id "
        "(e.g. openai/gsm8k, needs internet)",
    )
    parser.add_argument(
        "--augm_dataset_save_location",
        required=True,
        help="output: a .jsonl path, a directory of per-split files (from a directory of split "
        "files), or a directory for save_to_disk",
    )
    parser.add_argument("--pause_token", default=PAUSE_TOKEN)
    parser.add_argument(
        "--n_pauses_per_patterns",
        type=parse_patterns,
        default={},
        help="JSON pattern -> pauses inserted after each occurrence, e.g. '{\"\\n\": 2}'",
    )
    parser.add_argument("--n_random_pauses", type=int, default=0, help="pauses at random positions per sample")
    parser.add_argument(
        "--variable_number_of_pauses",
        action="store_true",
        help="draw the random count from U{0..n_random_pauses} per sample",
    )
    parser.add_argument(
        "--pause_probability",
        type=float,
        default=0.0,
        help="after each token/word, insert a pause with this probability",
    )
    parser.add_argument(
        "--tokenizer_hf_name",
        default=None,
        help="insert at this tokenizer's token boundaries (hub id, local path or "
        "smollm2-135m-instruct); default (or 'None', as the seed): word ends",
    )
    parser.add_argument("--source_col_name", default="answer")
    parser.add_argument("--pause_augm_col_name", default="answer", help="output column (default overwrites answer)")
    parser.add_argument("--n_generated_samples_per_datapoint", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--limit", type=int, default=None, help="only the first n rows")
    parser.add_argument("--verbose", action="store_true", help="print a few examples")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.n_random_pauses or args.n_pauses_per_patterns or args.pause_probability):
        parser.error("nothing to insert: give --n_random_pauses, --n_pauses_per_patterns or --pause_probability")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    tokenizer_name = None if args.tokenizer_hf_name in (None, "", "None") else args.tokenizer_hf_name
    try:
        layout = source_layout(args.dataset_location)
        splits = load_splits(args.dataset_location, args.limit)
        tokenizer = load_tokenizer(tokenizer_name) if tokenizer_name else None
        augmented, stats = {}, AugmentStats()
        for split, rows in splits.items():
            augmented[split], split_stats = augment_rows(
                rows,
                source_col_name=args.source_col_name,
                pause_augm_col_name=args.pause_augm_col_name,
                pause_token=args.pause_token,
                n_random_pauses=args.n_random_pauses,
                variable_number_of_pauses=args.variable_number_of_pauses,
                n_pauses_per_patterns=args.n_pauses_per_patterns,
                pause_probability=args.pause_probability,
                n_generated_samples_per_datapoint=args.n_generated_samples_per_datapoint,
                seed=args.seed,
                tokenizer=tokenizer,
            )
            stats.merge(split_stats)
        names = (
            {split: file.name for split, file in split_files(Path(args.dataset_location).expanduser()).items()}
            if layout == "split_files"
            else None
        )
        saved = save_splits(augmented, args.augm_dataset_save_location, names)
    except (OSError, ValueError, KeyError, TypeError) as err:  # ConnectionError is an OSError
        raise SystemExit(f"error: {err}") from err
    out = [row for rows in augmented.values() for row in rows]
    if args.verbose:
        for row in out[:3]:
            print(f"--- {args.source_col_name} -> {args.pause_augm_col_name}")
            print(row[args.pause_augm_col_name])
    summary = stats.summary()
    print(
        f"rows in {summary['rows_in']}, rows out {summary['rows_out']}, pauses {summary['pauses_total']} "
        f"(mean {summary['mean_pauses_per_sample']:.2f}/sample, min {summary['min_pauses_per_sample']}, "
        f"max {summary['max_pauses_per_sample']})"
    )
    for mode in MODES:
        print(
            f"  {mode:<11} {summary['pauses_per_mode'][mode]:>7} pauses, "
            f"{summary['mean_pauses_per_sample_per_mode'][mode]:.2f}/sample"
        )
    if len(augmented) > 1:
        print("splits: " + ", ".join(f"{split} {len(rows)} rows" for split, rows in augmented.items()))
    print(f"saved to {saved}")
    print("summary: " + json.dumps(summary))  # one machine-readable line
    return 0


if __name__ == "__main__":
    sys.exit(main())
