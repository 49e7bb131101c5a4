"""Task rewards for RL on language models, and a small registry to build them by name.

    >>> from rewards import make
    >>> reward = make("gsm8k")
    >>> reward(["... so she makes $18.\\n#### 18"], ["...\\n#### 18"])
    array([1.], dtype=float32)

A `Reward` scores a batch of completions against references (see `rewards.base`). Built-in
names: gsm8k, gsm8k-format, mgsm, mmlu, toxicity, and the code rewards mbpp, humaneval,
humaneval-cpp, humaneval-java (`rewards.code`, run in the `rewards.sandbox` jail; they raise
`SandboxError` / `MalformedRecordError` rather than return a score they cannot stand behind),
and reward-model: any local sequence classifier as a reward (`rewards.reward_model`).
`rewards.data` is the project's data loader. `register` adds your own. The registry stores
"module:Class" strings and imports on `make`, so heavy rewards cost nothing until used.
This package imports nothing from lm_envs, policies or agents.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from rewards.base import FunctionReward, Reward
from rewards.choice import MMLUReward, extract_choice, parse_choice_reference
from rewards.errors import MalformedRecordError, SandboxError
from rewards.math import GSM8KFormatReward, GSM8KReward, MGSMReward, extract_answer, format_ok, parse_reference
from rewards.toxicity import HFClassifierScorer, ProfanityCheckScorer, ToxicityReward

Factory = Callable[..., Reward]

_REGISTRY: dict[str, str | Factory] = {
    "gsm8k": "rewards.math:GSM8KReward",
    "gsm8k-format": "rewards.math:GSM8KFormatReward",
    "mgsm": "rewards.math:MGSMReward",
    "mmlu": "rewards.choice:MMLUReward",
    "toxicity": "rewards.toxicity:ToxicityReward",
    "mbpp": "rewards.code:MBPPReward",
    "humaneval": "rewards.code:HumanEvalReward",
    "humaneval-cpp": "rewards.code:HumanEvalCppReward",
    "humaneval-java": "rewards.code:HumanEvalJavaReward",
    "reward-model": "rewards.reward_model:RewardModelReward",
}
_LAZY = {"MBPPReward", "HumanEvalReward", "HumanEvalCppReward", "HumanEvalJavaReward"}
_LAZY_MODULES = {"RewardModelReward": "rewards.reward_model"}


def _resolve(target: str) -> Factory:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def register(name: str, factory: str | Factory, *, overwrite: bool = False) -> None:
    """Register `name` -> a "module:Class" string (imported lazily) or a callable returning a Reward."""
    if not isinstance(name, str) or not name:
        raise ValueError("reward name must be a non-empty string")
    if isinstance(factory, str):
        module, sep, attr = factory.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"factory string must look like 'package.module:Class', got {factory!r}")
    elif not callable(factory):
        raise TypeError(f"factory must be a 'module:Class' string or a callable, got {type(factory).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"reward {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = factory


def available() -> list[str]:
    """Sorted names `make` accepts."""
    return sorted(_REGISTRY)


def make(name: str, **kwargs) -> Reward:
    """Build the reward registered as `name`, passing `kwargs` to its constructor."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown reward {name!r}; available: {', '.join(available())}")
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        try:
            factory = _resolve(factory)
        except (ImportError, AttributeError) as e:
            raise ImportError(
                f"reward {name!r} is registered as {_REGISTRY[name]!r}, which cannot be imported: {e}"
            ) from e
    reward = factory(**kwargs)
    if not isinstance(reward, Reward):
        raise TypeError(f"factory for {name!r} returned {type(reward).__name__}, not a rewards.Reward")
    return reward


def __getattr__(attr: str):
    # Code rewards live in rewards.code (sandboxing, compilers); import it only when asked.
    if attr in _LAZY:
        return getattr(importlib.import_module("rewards.code"), attr)
    if attr in _LAZY_MODULES:  # torch and transformers load only when a learned reward is asked for
        return getattr(importlib.import_module(_LAZY_MODULES[attr]), attr)
    raise AttributeError(f"module 'rewards' has no attribute {attr!r}")


__all__ = [
    "Reward",
    "FunctionReward",
    "make",
    "register",
    "available",
    "SandboxError",
    "MalformedRecordError",
    "GSM8KReward",
    "MGSMReward",
    "GSM8KFormatReward",
    "MMLUReward",
    "ToxicityReward",
    "ProfanityCheckScorer",
    "HFClassifierScorer",
    "extract_answer",
    "parse_reference",
    "format_ok",
    "extract_choice",
    "parse_choice_reference",
]  # the lazy code rewards stay out so `import *` does not pull in rewards.code
