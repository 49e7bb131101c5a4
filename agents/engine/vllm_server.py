"""The engine server: one vLLM engine (`vllm_core.VLLMCore`) behind HTTP, in its own environment.

Run it from its file, in an environment that has ``vllm`` (it imports nothing else of ours)::

    python agents/engine/vllm_server.py --model DIR --host 0.0.0.0 --port 8765 --lora-rank 8

and point the trainer at it: ``rollout.engine=vllm rollout.server_url=http://HOST:8765``. Or let
the trainer start one on this machine (``rollout.deployment=server``, `agents.engine.deploy.start_server`).

Endpoints (JSON unless said): ``GET /health``; ``POST /generate`` ``{"requests": [...]}`` →
``{"results": [...]}`` (see `VLLMCore.generate`); ``POST /load_lora`` ``{"files": {name:
base64}}``; ``POST /load_weights`` with a safetensors file as the body; ``POST /shutdown``.
Requests are served one at a time (the engine batches within a request). There is no
authentication: serve on loopback or a private network only.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vllm_core import VLLMCore  # noqa: E402  (this file runs as a script, beside vllm_core.py)


def make_handler(core: VLLMCore, server_box: list):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # quiet: the trainer logs what matters
            pass

        def _reply(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def do_GET(self):
            if self.path == "/health":
                self._reply(200, {"ok": True, **core.info()})
            else:
                self._reply(404, {"error": f"no endpoint {self.path}"})

        def do_POST(self):
            try:
                if self.path == "/generate":
                    self._reply(200, {"results": core.generate(json.loads(self._body())["requests"])})
                elif self.path == "/load_lora":
                    files = {name: base64.b64decode(data) for name, data in json.loads(self._body())["files"].items()}
                    self._reply(200, {"seconds": core.load_lora(files)})
                elif self.path == "/load_weights":
                    from safetensors.torch import load

                    self._reply(200, {"seconds": core.load_weights(load(self._body()))})
                elif self.path == "/shutdown":
                    self._reply(200, {"ok": True})
                    threading.Thread(target=server_box[0].shutdown, daemon=True).start()
                else:
                    self._reply(404, {"error": f"no endpoint {self.path}"})
            except Exception as err:  # the trainer raises it with the server's words
                self._reply(500, {"error": f"{type(err).__name__}: {err}"})

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an HF model directory (the policy's base weights)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--kv-cache-gb", type=float, default=1.0, help="the KV cache's memory bound")
    parser.add_argument("--lora-rank", type=int, default=0, help="largest LoRA rank to serve (0: full weights only)")
    parser.add_argument("--dtype", default="float32", help="the weights' dtype: the learner's (float32, bfloat16)")
    parser.add_argument("--ready-file", default=None, help="write the server's address here once it serves")
    args = parser.parse_args(argv)
    core = VLLMCore(args.model, args.seed, args.max_model_len, args.kv_cache_gb, args.lora_rank, args.dtype)
    box: list = []
    server = HTTPServer((args.host, args.port), make_handler(core, box))
    box.append(server)
    url = f"http://{args.host}:{server.server_port}"
    print(f"engine server ready on {url} (engine start {core.start_seconds:.0f} s)", flush=True)
    if args.ready_file:
        with open(args.ready_file + ".tmp", "w") as f:
            f.write(url)
        os.replace(args.ready_file + ".tmp", args.ready_file)
    try:
        server.serve_forever()
    finally:
        core.close()


if __name__ == "__main__":
    main()
