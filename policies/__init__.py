"""Policies: Hugging Face causal LMs behind Stable-Baselines3's policy API.

What lives here: model loading (`load_lm`, the embedded SmolLM2 included), `CausalLMPolicy`
(LM + value head, optional LoRA, KV-cache stepping, teacher-forced evaluation, the KL
reference), `PauseLMPolicy` (the same with a ``<|pause|>`` token chosen by a pause head, and
`add_pause_token` to give a model that token), and `head_math` (the chosen token's log-prob and
the entropy from the LM head without ``(N, V)`` temporaries; sampling), and `kv_cache` (one cache
merged from length-bucketed prompt passes; rollout caches that append a step in place). Knows
nothing of tasks, envs or agents.
"""

from policies.causal_lm import CausalLMPolicy, RolloutState, SequenceEval
from policies.loading import DEFAULT_MODEL, EMBEDDED_MODELS, cache_dir, embedded_checkpoint, load_lm
from policies.pause import PAUSE_TOKEN, PauseLMPolicy, add_pause_token, load_pause_head, save_pause_checkpoint

__all__ = [
    "CausalLMPolicy",
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "PAUSE_TOKEN",
    "PauseLMPolicy",
    "RolloutState",
    "SequenceEval",
    "add_pause_token",
    "cache_dir",
    "embedded_checkpoint",
    "load_lm",
    "load_pause_head",
    "save_pause_checkpoint",
]
