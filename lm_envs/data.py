"""Finding and reading data sets: a local directory first, the Hugging Face hub otherwise.

The local directory has the layout and file formats of the project's reference data
(``gsm8k/train.jsonl``, ``mgsm/mgsm_en.tsv``, ``mmlu/test/<subject>_test.csv``...). It is chosen
by a ``data_dir=`` option or the ``LM_ENVS_DATA_DIR`` environment variable and wins when given.
Without one, loaders use `datasets.load_dataset`; when the hub cannot be reached the error
names both ways of giving a local directory. Imports nothing from the rest of the project.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

DATA_DIR_ENV = "LM_ENVS_DATA_DIR"


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
