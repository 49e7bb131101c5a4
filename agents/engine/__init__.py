"""Rollouts on an inference engine (``rollout.engine=vllm``), beside our own decoding loop (``hf``).

`EngineActor` (`agents.engine.actor`) lets `agents.rollout.collect_episodes` take its actions from
an engine: token ids in, sampled ids and their sampler log-probs out, the env the source of
truth. `agents.engine.deploy` holds the vLLM engines (colocated or server) and their weight sync;
``vllm_core.py`` and ``vllm_server.py`` are the engine side, which imports vllm. An agent takes an
engine with `OnPolicyLMAlgorithm.use_engine`; see docs/engines.md.
"""

from agents.engine.actor import EngineActor, RolloutEngine

__all__ = ["EngineActor", "RolloutEngine"]
