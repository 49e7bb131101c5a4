"""Checkpoints: atomic, fsync'd directories that load without unpickling code.

What lives here: `write_checkpoint` / `read_checkpoint` (the on-disk format every agent shares),
`atomic_write_text` (the one atomic small-file writer), the safe encoding of RNG states and
numpy arrays, and `latest_checkpoint`. Imports only torch, numpy and the standard library; the
agent decides *what* goes in (`agents.core`), this module decides *how* it is stored.

Layout of a checkpoint directory::

    meta.json     format version, model spec, policy class, agent class (plain JSON)
    policy/       the trainable weights (`save_pretrained` + heads), never the frozen base
    agent.pt      hyperparameters, optimizer, controllers, counters, every RNG, env state

Guarantees:

* **Nothing executable is unpickled.** ``agent.pt`` is read with ``torch.load(weights_only=True)``:
  numpy arrays become tensors (tagged so they come back as arrays), numpy scalars become Python
  numbers, and RNG states are tuples of ints or tensors.
* **Atomic and durable.** The directory is written under a staging name, every file and the
  directory are fsync'd, then it replaces the old one with two renames (old → ``.NAME.old``,
  staging → ``NAME``). A kill between the two renames leaves ``.NAME.old``, which
  `resolve_checkpoint` finds; the next save sweeps stale staging dirs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FORMAT = 2
_NDARRAY = "__ndarray__"


# -- safe encoding ---------------------------------------------------------------------------
def encode(obj: Any) -> Any:
    """Recursively turn numpy arrays and scalars into what ``weights_only`` loading accepts."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"cannot store a numpy array of dtype {obj.dtype} in a checkpoint")
        dtype = str(obj.dtype)
        if obj.dtype == np.uint32 or obj.dtype == np.uint64:  # torch lacks full unsigned support
            return {_NDARRAY: torch.from_numpy(obj.astype(np.int64)), "dtype": dtype}
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(obj)).clone(), "dtype": dtype}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {key: encode(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(encode(value) for value in obj)
    return obj


def decode(obj: Any) -> Any:
    """Inverse of `encode`."""
    if isinstance(obj, dict):
        if _NDARRAY in obj:
            return obj[_NDARRAY].numpy().astype(obj["dtype"])
        return {key: decode(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(decode(value) for value in obj)
    return obj


def rng_states(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Python, numpy, torch CPU and (when present) every CUDA device's RNG state."""
    import random

    states = {"python": random.getstate(), "numpy": encode(np.random.get_state()), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    for name, generator in (generators or {}).items():
        states[name] = generator.get_state()
    return states


def set_rng_states(states: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    import random

    random.setstate(states["python"])
    np.random.set_state(decode(states["numpy"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    for name, generator in (generators or {}).items():
        generator.set_state(states[name])


# -- durable files ---------------------------------------------------------------------------
def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (the directory itself last)."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(Path(directory) / name)
        _fsync_path(Path(directory))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically and durably (temp file, fsync, rename, fsync dir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (see `atomic_write_text`)."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


# -- checkpoint directories -----------------------------------------------------------------
def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def sweep_staging(path: Path) -> None:
    """Remove staging dirs of ``path`` left by a killed save (never the ``.old`` fallback)."""
    for stale in path.parent.glob(f".{path.name}.*"):
        if stale != _old(path) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def write_checkpoint(
    path: str | os.PathLike, meta: dict[str, Any], state: dict[str, Any], write_policy: Callable[[Path], None]
) -> None:
    """Write ``meta.json``, ``policy/`` (by ``write_policy``) and ``agent.pt`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_staging(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write_policy(staging / "policy")
        (staging / "meta.json").write_text(json.dumps({"format": CHECKPOINT_FORMAT, **meta}, indent=2, default=str))
        torch.save(encode(state), staging / "agent.pt")
        fsync_tree(staging)
        if path.exists():
            old = _old(path)
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
            os.rename(staging, path)  # a kill before this line leaves `old`, which loading falls back to
            _fsync_path(path.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, path)
            shutil.rmtree(_old(path), ignore_errors=True)  # a fallback left by an earlier kill
        _fsync_path(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` if it holds a complete checkpoint, else its ``.old`` twin left by a kill between
    the two renames of `write_checkpoint`; an error naming both otherwise."""
    path = Path(path)
    for candidate in (path, _old(path)):
        if (candidate / "agent.pt").is_file() and (candidate / "meta.json").is_file():
            return candidate
    raise FileNotFoundError(f"no complete checkpoint at {path} (nor at {_old(path)})")


def read_checkpoint(path: str | os.PathLike) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """``(resolved path, meta, state)``; ``agent.pt`` is loaded with ``weights_only=True``."""
    path = resolve_checkpoint(path)
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {path} has format {meta.get('format')}; this version reads format {CHECKPOINT_FORMAT}"
        )
    state = decode(torch.load(path / "agent.pt", map_location="cpu", weights_only=True))
    return path, meta, state


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete ``iter_*`` checkpoint under ``directory`` (a ``.iter_*.old`` fallback
    counts for its iteration; staging dirs never do)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found: dict[str, Path] = {}
    for child in directory.iterdir():
        name = child.name
        if name.startswith(".") and name.endswith(".old"):
            name = name[1:-4]
        elif name.startswith("."):
            continue
        if name.startswith("iter_") and (child / "agent.pt").is_file() and (child / "meta.json").is_file():
            if name not in found or not child.name.startswith("."):
                found[name] = child
    return Path(directory / sorted(found)[-1]) if found else None
