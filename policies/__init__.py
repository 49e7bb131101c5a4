"""Policies: Hugging Face causal LMs behind Stable-Baselines3's policy API.

What lives here: model loading (`load_lm`, the embedded SmolLM2 included), `CausalLMPolicy`
(LM + value head, optional LoRA, KV-cache stepping, teacher-forced evaluation, the KL
reference). Knows nothing of tasks, envs or agents.
"""
from policies.causal_lm import CausalLMPolicy, RolloutState, SequenceEval
from policies.loading import DEFAULT_MODEL, EMBEDDED_MODELS, cache_dir, embedded_checkpoint, load_lm

__all__ = ["CausalLMPolicy", "DEFAULT_MODEL", "EMBEDDED_MODELS", "RolloutState", "SequenceEval",
           "cache_dir", "embedded_checkpoint", "load_lm"]
