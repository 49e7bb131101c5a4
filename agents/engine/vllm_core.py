"""The vLLM side of the engine: one `vllm.LLM`, token ids in, sampled ids and log-probs out.

Both deployments run this class: the colocated engine (`agents.engine.deploy.VLLMEngine`) holds
one in the trainer's process, and the server (``agents/engine/vllm_server.py``) holds one
behind HTTP in its own environment. It imports only the standard library, torch, safetensors
and vllm, so the server script runs from its file alone on a machine that has vllm and nothing
of ours (``python vllm_server.py --model DIR``).

* **Log-probs.** The engine is started with ``logprobs_mode="processed_logprobs"``: each sampled
  token comes back with its log-prob under the distribution it was drawn from, after temperature,
  top-k and top-p, which is what the policy's own rollout log-probs are.
* **Weight sync.** `load_lora` writes the adapter's two files to a fresh directory and serves
  every later request with it as a new `LoRARequest` (the base stays unmerged); `load_weights`
  reloads full weights in place (the worker's ``reload_weights``, which takes checkpoint names
  and re-packs them for the kernels). Both reset the prefix cache.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any


def engine_args(
    model: str, seed: int, max_model_len: int, kv_cache_gb: float, lora_rank: int, dtype: str = "float32", **extra: Any
):
    """The `vllm.LLM` keyword arguments of this engine (the learner's dtype; eager: no graph capture)."""
    args = {
        "model": model,
        "dtype": dtype,
        "seed": int(seed),
        "max_model_len": int(max_model_len),
        "enable_prefix_caching": True,
        "logprobs_mode": "processed_logprobs",
        "kv_cache_memory_bytes": int(kv_cache_gb * 2**30),
        "enforce_eager": True,
    }
    if lora_rank > 0:
        args.update(enable_lora=True, max_lora_rank=int(lora_rank), max_loras=1)
    args.update(extra)
    return args


class VLLMCore:
    """One vLLM engine that generates from token ids and takes new weights.

    :param model: an HF model directory (or hub id) holding the base weights.
    :param seed: the engine's seed (requests carry their own seeds as well).
    :param max_model_len: the longest context (prompt + completion + injected turns).
    :param kv_cache_gb: the KV cache's memory bound, in GiB.
    :param lora_rank: the largest LoRA rank to serve (0: no LoRA, full-weight sync only).
    :param dtype: the weights' dtype, the learner's (``float32``, ``bfloat16``, ``float16``).
    """

    def __init__(
        self,
        model: str,
        seed: int = 0,
        max_model_len: int = 2048,
        kv_cache_gb: float = 1.0,
        lora_rank: int = 0,
        dtype: str = "float32",
        **extra: Any,
    ) -> None:
        # One process: the engine core runs where it is created (the colocated trainer, or the server).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        start = time.perf_counter()
        self.llm = LLM(**engine_args(model, seed, max_model_len, kv_cache_gb, lora_rank, dtype, **extra))
        self.start_seconds = time.perf_counter() - start
        self.model = model
        self.lora_rank, self.dtype = int(lora_rank), dtype
        self._lora = None  # the LoRARequest every generation uses (None: the base weights)
        self._lora_dir: str | None = None
        self._version = 0

    def generate(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Continue each request's ``prompt_ids``.

        A request: ``prompt_ids`` (list of ints), ``max_tokens``, ``temperature`` (0: greedy),
        ``top_k`` (0: off), ``top_p``, ``seed`` (or None), ``stop_token_ids`` (list).
        :return: per request ``token_ids``, ``log_probs`` (of each sampled token) and ``finish_reason``.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, params = [], []
        for r in requests:
            prompts.append(TokensPrompt(prompt_token_ids=[int(t) for t in r["prompt_ids"]]))
            params.append(
                SamplingParams(
                    n=1,
                    temperature=float(r.get("temperature", 1.0)),
                    top_k=int(r.get("top_k", 0)) or -1,
                    top_p=float(r.get("top_p", 1.0)),
                    seed=r.get("seed"),
                    max_tokens=int(r["max_tokens"]),
                    stop_token_ids=[int(t) for t in r.get("stop_token_ids", [])],
                    logprobs=0,  # the sampled token's own log-prob only
                    detokenize=False,
                    skip_special_tokens=False,
                )
            )
        outputs = self.llm.generate(prompts, params, lora_request=self._lora, use_tqdm=False)
        results = []
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            log_probs = [float(step[token].logprob) for step, token in zip(completion.logprobs, ids, strict=True)]
            results.append({"token_ids": ids, "log_probs": log_probs, "finish_reason": completion.finish_reason})
        return results

    def load_lora(self, files: dict[str, bytes]) -> float:
        """Serve an adapter from now on: ``files`` are a PEFT ``save_pretrained`` directory's
        ``adapter_config.json`` and ``adapter_model.safetensors``. :return: seconds taken."""
        from vllm.lora.request import LoRARequest

        if self.lora_rank <= 0:
            raise ValueError("this engine was started without LoRA (lora_rank=0); start it with the adapter's rank")
        start = time.perf_counter()
        self._version += 1
        directory = tempfile.mkdtemp(prefix=f"lora-{self._version}-")
        for name, data in files.items():
            if os.path.basename(name) != name:
                raise ValueError(f"adapter file names are plain names, got {name!r}")
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
        old = self._lora_dir
        self._lora = LoRARequest(f"policy-{self._version}", self._version, directory)
        self._lora_dir = directory
        self.llm.reset_prefix_cache()
        # vLLM reads an adapter when a request first names it: load it now, then the old files can go.
        self.generate([{"prompt_ids": [0], "max_tokens": 1, "temperature": 0.0}])
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return time.perf_counter() - start

    def load_weights(self, tensors: dict[str, Any]) -> float:
        """Copy full weights (checkpoint names → tensors) into the served model. :return: seconds."""
        start = time.perf_counter()
        # The worker's in-place reload: checkpoint-format tensors, re-processed into the kernels'
        # own layouts (on a CPU, linear weights live prepacked for oneDNN, not as plain tensors).
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": list(tensors.items()), "is_checkpoint_format": True}
        )
        self.llm.reset_prefix_cache()
        self._lora = None  # a full-weight policy has no adapter: serve the weights as loaded
        self._version += 1
        return time.perf_counter() - start

    def info(self) -> dict[str, Any]:
        return {"model": self.model, "lora_rank": self.lora_rank, "dtype": self.dtype, "version": self._version}

    def close(self) -> None:
        if self._lora_dir is not None:
            shutil.rmtree(self._lora_dir, ignore_errors=True)
        self.llm = None
