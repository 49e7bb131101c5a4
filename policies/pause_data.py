"""Pause-token data: insert ``<|pause|>`` strings into answers, and read the rows to augment.

What lives here: the insertion points (`protected_start`, `word_boundaries`, `token_boundaries`,
`candidate_points`), the three insertion modes (`random_positions`, `pattern_positions`,
`probabilistic_positions` and their ``insert_*`` forms), `augment_rows` with its `AugmentStats`,
and the readers that ``experiments/augment_pauses.py`` and ``experiments/sft_warmup.py`` share
(`load_splits`, `load_rows`, `load_tokenizer`). Text and rows only: no model is run. The pause
string defaults to `policies.pause.PAUSE_TOKEN`, the one constant the policy, the SFT warm-up and
the augmentation use. May import `policies.pause`/`policies.loading`; knows nothing of tasks,
envs or agents (the ``#### N`` answer line is protected as plain text).

Three insertion modes, usable together (their pauses are simply added up):

* **random** (``n_random_pauses=N``): exactly N pauses at uniformly random insertion points
  (drawn with replacement, so several pauses may sit together), or a count drawn from U{0..N}
  per sample with ``variable_number_of_pauses=True``;
* **pattern** (``n_pauses_per_patterns={"\\n": 2}``): n pauses right after every occurrence of
  each pattern (non-overlapping occurrences; counts are always exact);
* **probability** (``pause_probability=p``): after each token/word, one pause with probability p.

Insertion points for the random and probability modes are token boundaries (the end of each
token) of a tokenizer when one is given, else the ends of whitespace-delimited words. Pattern
mode inserts right after the pattern, wherever that falls.

**The gold answer is protected.** Nothing is ever inserted in the final ``#### N`` line, nor at
the start of it: the protected tail is the newline before the last ``####`` plus that whole
line, so ``rewards.math.extract_answer`` and ``format_ok`` read the augmented answer exactly as
the original. A pattern occurrence that ends inside the tail (e.g. the ``\\n`` just before
``####``) is skipped. Removing every pause string gives back the input exactly.

Randomness is seeded per sample from ``(seed, row index, sample index)``: the same seed gives
identical output, different seeds differ, and a row limit does not change the rows it keeps.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policies.pause import PAUSE_TOKEN

MODES = ("random", "pattern", "probability")
# Hub ids whose default config is not the only one (openai/gsm8k has "main" and "socratic").
HUB_DEFAULT_CONFIGS = {"openai/gsm8k": "main", "gsm8k": "main"}
# Files of a directory that holds one json-lines file per split (the seed project's layout).
SPLIT_FILE_SUFFIXES = (".jsonl", ".json")
# Marker files of a `datasets` save_to_disk directory (a Dataset or a DatasetDict).
DATASETS_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


# --------------------------------------------------------------------------- positions


def protected_start(text: str) -> int:
    """First index of the protected tail: the newline before the last ``####`` line.

    Insertion points must be ``<= protected_start(text)``. Without a ``####`` nothing is
    protected (``len(text)``); a marker on the first line protects the whole text (0).
    """
    marker = text.rfind("####")
    if marker < 0:
        return len(text)
    newline = text.rfind("\n", 0, marker)
    return newline if newline >= 0 else 0


def word_boundaries(text: str) -> list[int]:
    """End offsets of the whitespace-delimited words: pauses go right after a word."""
    return [m.end() for m in re.finditer(r"\S+", text)]


def token_boundaries(text: str, tokenizer: Any) -> list[int]:
    """End offsets of the tokens of `text` under a fast tokenizer (character offsets).

    An end that falls strictly inside another token's span (byte-level BPE can split one
    character over several tokens) is dropped: a pause there would cut the character.
    """
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    spans = [(int(s), int(e)) for s, e in offsets if e > s]
    ends = sorted({e for _, e in spans})
    return [e for e in ends if not any(s < e < t for s, t in spans)]


def candidate_points(text: str, boundaries: Iterable[int] | None = None) -> list[int]:
    """Allowed insertion points: the boundaries (default: word ends) outside the protected tail."""
    limit = protected_start(text)
    points = word_boundaries(text) if boundaries is None else boundaries
    return sorted({int(b) for b in points if 0 < int(b) <= limit})


def random_positions(text: str, n: int, rng: np.random.Generator, boundaries: Iterable[int] | None = None) -> list[int]:
    """`n` insertion points drawn uniformly with replacement (exactly n, unless there is none)."""
    if n < 0:
        raise ValueError(f"number of pauses must be >= 0, got {n}")
    points = candidate_points(text, boundaries)
    if n == 0 or not points:
        return []
    return sorted(int(p) for p in rng.choice(points, size=n, replace=True))


def pattern_positions(text: str, patterns: Mapping[str, int]) -> list[int]:
    """`count` copies of the end offset of every non-overlapping occurrence of each pattern."""
    limit = protected_start(text)
    positions: list[int] = []
    for pattern, count in patterns.items():
        if not pattern:
            raise ValueError("patterns must be non-empty strings")
        if int(count) < 0:
            raise ValueError(f"pause count for pattern {pattern!r} must be >= 0, got {count}")
        ends = [m.end() for m in re.finditer(re.escape(pattern), text)]
        positions += [e for e in ends if e <= limit for _ in range(int(count))]
    return sorted(positions)


def probabilistic_positions(
    text: str, p: float, rng: np.random.Generator, boundaries: Iterable[int] | None = None
) -> list[int]:
    """Each allowed insertion point independently, with probability `p`."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"pause probability must be in [0, 1], got {p}")
    points = candidate_points(text, boundaries)
    if p == 0.0 or not points:
        return []
    keep = rng.random(len(points)) < p
    return [pt for pt, k in zip(points, keep) if k]


def insert_at(text: str, positions: Iterable[int], pause_token: str = PAUSE_TOKEN) -> str:
    """Insert one `pause_token` per entry of `positions` (offsets in the original `text`)."""
    pieces, last = [], 0
    for pos in sorted(positions):
        if not 0 <= pos <= len(text):
            raise ValueError(f"insertion point {pos} outside the text (length {len(text)})")
        pieces += [text[last:pos], pause_token]
        last = pos
    pieces.append(text[last:])
    return "".join(pieces)


def remove_pauses(text: str, pause_token: str = PAUSE_TOKEN) -> str:
    """Inverse of the insertion: drop every pause string."""
    return text.replace(pause_token, "")


def insert_random_pauses(
    text: str, n: int, rng: np.random.Generator, boundaries: Iterable[int] | None = None, pause_token: str = PAUSE_TOKEN
) -> str:
    """`text` with exactly `n` pauses at random boundaries (with replacement)."""
    return insert_at(text, random_positions(text, n, rng, boundaries), pause_token)


def insert_pattern_pauses(text: str, patterns: Mapping[str, int], pause_token: str = PAUSE_TOKEN) -> str:
    """`text` with ``patterns[pat]`` pauses after every occurrence of each pattern `pat`."""
    return insert_at(text, pattern_positions(text, patterns), pause_token)


def insert_probabilistic_pauses(
    text: str,
    p: float,
    rng: np.random.Generator,
    boundaries: Iterable[int] | None = None,
    pause_token: str = PAUSE_TOKEN,
) -> str:
    """`text` with a pause after each token/word with probability `p`."""
    return insert_at(text, probabilistic_positions(text, p, rng, boundaries), pause_token)


# --------------------------------------------------------------------------- rows


@dataclass
class AugmentStats:
    """What a run did; `pauses` is per mode, `per_sample` the total pauses of each output row."""

    rows_in: int = 0
    rows_out: int = 0
    pauses: dict[str, int] = field(default_factory=lambda: {m: 0 for m in MODES})
    per_sample: list[int] = field(default_factory=list)

    def merge(self, other: AugmentStats) -> None:
        """Add another run's counts to these (e.g. one split's to the whole data set's)."""
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        for mode, count in other.pauses.items():
            self.pauses[mode] = self.pauses.get(mode, 0) + count
        self.per_sample += other.per_sample

    def summary(self) -> dict[str, Any]:
        counts = np.asarray(self.per_sample or [0])
        n = max(1, self.rows_out)
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "pauses_total": int(sum(self.pauses.values())),
            "pauses_per_mode": dict(self.pauses),
            "mean_pauses_per_sample": float(sum(self.pauses.values()) / n),
            "mean_pauses_per_sample_per_mode": {m: self.pauses[m] / n for m in MODES},
            "min_pauses_per_sample": int(counts.min()),
            "max_pauses_per_sample": int(counts.max()),
            "samples_without_pause": int(sum(c == 0 for c in self.per_sample)),
        }


def augment_text(
    text: str,
    rng: np.random.Generator,
    *,
    n_random_pauses: int = 0,
    variable_number_of_pauses: bool = False,
    patterns: Mapping[str, int] | None = None,
    pause_probability: float = 0.0,
    boundaries: Sequence[int] | None = None,
    pause_token: str = PAUSE_TOKEN,
) -> tuple[str, dict[str, int]]:
    """One augmented sample of `text` and the pauses each mode inserted.

    All modes pick points in the original text, so they do not see each other's pauses.
    """
    n = int(rng.integers(0, n_random_pauses + 1)) if variable_number_of_pauses else n_random_pauses
    chosen = {
        "random": random_positions(text, n, rng, boundaries),
        "pattern": pattern_positions(text, patterns or {}),
        "probability": probabilistic_positions(text, pause_probability, rng, boundaries),
    }
    out = insert_at(text, [p for positions in chosen.values() for p in positions], pause_token)
    return out, {mode: len(positions) for mode, positions in chosen.items()}


def augment_rows(
    rows: Sequence[Mapping[str, Any]],
    *,
    source_col_name: str = "answer",
    pause_augm_col_name: str = "answer",
    pause_token: str = PAUSE_TOKEN,
    n_random_pauses: int = 0,
    variable_number_of_pauses: bool = False,
    n_pauses_per_patterns: Mapping[str, int] | None = None,
    pause_probability: float = 0.0,
    n_generated_samples_per_datapoint: int = 1,
    seed: int = 0,
    tokenizer: Any | None = None,
) -> tuple[list[dict[str, Any]], AugmentStats]:
    """k augmented copies of every row (consecutive in the output), plus run statistics.

    Each output row is the input row with `pause_augm_col_name` set to the augmented
    `source_col_name` text (the source is kept when the names differ).
    """
    if n_generated_samples_per_datapoint < 1:
        raise ValueError(f"n_generated_samples_per_datapoint must be >= 1, got {n_generated_samples_per_datapoint}")
    if n_random_pauses < 0:
        raise ValueError(f"n_random_pauses must be >= 0, got {n_random_pauses}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not pause_token:
        raise ValueError("pause_token must be a non-empty string")
    stats = AugmentStats(rows_in=len(rows))
    out: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        if source_col_name not in row:
            raise KeyError(f"row {i} has no column {source_col_name!r}; columns: {sorted(row)}")
        text = row[source_col_name]
        if not isinstance(text, str):
            raise TypeError(f"row {i}: column {source_col_name!r} must hold text, got {type(text).__name__}")
        # Tokenize once per row: the boundaries do not depend on the sample.
        boundaries = token_boundaries(text, tokenizer) if tokenizer is not None else None
        for j in range(n_generated_samples_per_datapoint):
            # One stream per (seed, row, sample): reproducible and independent of --limit.
            rng = np.random.default_rng([seed, i, j])
            augmented, counts = augment_text(
                text,
                rng,
                n_random_pauses=n_random_pauses,
                variable_number_of_pauses=variable_number_of_pauses,
                patterns=n_pauses_per_patterns,
                pause_probability=pause_probability,
                boundaries=boundaries,
                pause_token=pause_token,
            )
            out.append({**row, pause_augm_col_name: augmented})
            for mode, c in counts.items():
                stats.pauses[mode] += c
            stats.per_sample.append(sum(counts.values()))
    stats.rows_out = len(out)
    return out, stats


# --------------------------------------------------------------------------- reading rows


def local_gsm8k_hint() -> Path:
    """Where the local GSM8K train file is expected ($LM_ENVS_DATA_DIR or ../shared/data)."""
    repo = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("LM_ENVS_DATA_DIR") or repo.parent / "shared" / "data") / "gsm8k" / "train.jsonl"


def _looks_like_path(location: str) -> bool:
    return (
        location.startswith((".", "/", "~"))
        or location.endswith(SPLIT_FILE_SUFFIXES)
        or location.count("/") > 1
        or os.sep != "/"
        and os.sep in location
    )


def read_jsonl(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of a json-lines file (blank lines skipped), the first `limit` when given."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if limit is not None and len(rows) >= limit:
                break
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number} is not a JSON line ({err})") from None
    return rows


def is_datasets_dir(path: Path) -> bool:
    """Whether `path` is a `datasets` ``save_to_disk`` directory (a Dataset or a DatasetDict)."""
    return path.is_dir() and any((path / marker).is_file() for marker in DATASETS_MARKERS)


def split_files(directory: Path) -> dict[str, Path]:
    """``{split: file}`` for a directory of per-split json-lines files (``train.jsonl``, ``test.json``...)."""
    files: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix in SPLIT_FILE_SUFFIXES and not path.name.startswith("."):
            if path.stem in files:
                raise ValueError(
                    f"{directory} holds two files for split {path.stem!r}: {files[path.stem].name}, {path.name}"
                )
            files[path.stem] = path
    return files


def source_layout(location: str) -> str:
    """How `location` stores its rows: ``"file"`` (one json-lines file), ``"split_files"`` (a
    directory of per-split json-lines files), ``"datasets"`` (a ``save_to_disk`` directory) or
    ``"hub"`` (a Hugging Face hub id)."""
    path = Path(location).expanduser()
    if path.is_file():
        return "file"
    if path.is_dir():
        if is_datasets_dir(path):
            return "datasets"
        if split_files(path):
            return "split_files"
        raise ValueError(
            f"{path} is neither a datasets save_to_disk directory nor a directory of per-split "
            f"json-lines files (train.jsonl, test.jsonl, ...)"
        )
    if _looks_like_path(location):
        raise FileNotFoundError(f"dataset file or directory {location!r} does not exist")
    return "hub"


def load_splits(location: str, limit: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every split of a data set, ``{split: rows}``, each cut to its first `limit` rows.

    `location` is a json-lines file (its rows are split ``"train"``), a directory of per-split
    json-lines files (``train.jsonl``/``test.jsonl``, or ``.json`` as the seed project writes
    them: the split is the file's stem), a ``save_to_disk`` directory (a Dataset is ``"train"``;
    a DatasetDict gives every split), or a hub id (``name`` or ``name:config``; its train split).
    """
    layout = source_layout(location)
    path = Path(location).expanduser()
    if layout == "file":
        return {"train": read_jsonl(path, limit)}
    if layout == "split_files":
        return {split: read_jsonl(file, limit) for split, file in split_files(path).items()}
    if layout == "datasets":
        import datasets

        data = datasets.load_from_disk(str(path))
        parts = dict(data) if isinstance(data, datasets.DatasetDict) else {"train": data}
        return {
            split: [dict(row) for row in (part if limit is None else part.select(range(min(limit, len(part)))))]
            for split, part in parts.items()
        }
    return {"train": _load_from_hub(location, limit)}


def load_rows(location: str, limit: int | None = None, split: str | None = None) -> list[dict[str, Any]]:
    """The rows of one split of `location` (see `load_splits`): `split`, else ``"train"``, else
    the only split there is."""
    splits = load_splits(location, limit)
    if split is None:
        if "train" not in splits and len(splits) != 1:
            raise ValueError(f"{location} holds splits {sorted(splits)}; name one (or give a 'train' split)")
        split = "train" if "train" in splits else next(iter(splits))
    if split not in splits:
        raise ValueError(f"{location} has no split {split!r}; it has {sorted(splits)}")
    return splits[split]


def _load_from_hub(location: str, limit: int | None) -> list[dict[str, Any]]:
    import datasets

    name, _, config = location.partition(":")
    split = "train" if limit is None else f"train[:{limit}]"
    try:
        data = datasets.load_dataset(name, config or HUB_DEFAULT_CONFIGS.get(name), split=split)
    except Exception as err:  # datasets raises several types when the hub is unreachable
        raise ConnectionError(
            f"could not load dataset {location!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            f"This machine may be offline: pass a local file instead, e.g. "
            f"--dataset_location {local_gsm8k_hint()} (a jsonl file, a directory of per-split jsonl files "
            f"or a save_to_disk directory)."
        ) from err
    return [dict(row) for row in data]


def load_tokenizer(name: str) -> Any:
    """A fast tokenizer: an embedded model name (``smollm2-135m-instruct``), a local path or a hub id."""
    from transformers import AutoTokenizer

    from policies.loading import EMBEDDED_MODELS, embedded_checkpoint

    if name in EMBEDDED_MODELS:
        tokenizer = AutoTokenizer.from_pretrained(embedded_checkpoint(name))
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(name))
        except OSError as err:
            raise OSError(
                f"could not load tokenizer {name!r} ({err}). Offline? Pass a local directory "
                f"or the embedded name {sorted(EMBEDDED_MODELS)[0]!r}."
            ) from err
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {name!r} is not a fast tokenizer; token boundaries need offset mappings")
    return tokenizer
