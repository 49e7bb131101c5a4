"""The built-in ids: which `lm_envs.tasks` builder each ``lm_envs/...-v0`` id registers, with its
env defaults (`register_builtin_ids`), and what a training run on each starts from (`RUN_DEFAULTS`).

``import lm_envs`` calls `register_builtin_ids`. The task builders themselves live in
`lm_envs.tasks`. May import `lm_envs.tasks` and `lm_envs.registration`; never `policies` or
`agents`.
"""

from __future__ import annotations

from typing import Any

from lm_envs.registration import register_task
from lm_envs.tasks import (
    HUMANEVAL_STOP_STRINGS,
    gsm8k_calculator_task,
    gsm8k_task,
    humaneval_cpp_feedback_task,
    humaneval_cpp_task,
    humaneval_java_task,
    humaneval_task,
    mbpp_feedback_task,
    mbpp_task,
    mgsm_task,
    mmlu_task,
    toxicity_task,
)

__all__ = ["RUN_DEFAULTS", "register_builtin_ids"]


# -- the built-in ids ----------------------------------------------------------------------------
def register_builtin_ids() -> None:
    """Register every built-in id with Gymnasium (its builder and env defaults; `register_task`)."""
    register_task("lm_envs/GSM8K-v0", gsm8k_task, max_new_tokens=256)
    register_task("lm_envs/MGSM-v0", mgsm_task, split="test", max_new_tokens=256)
    register_task("lm_envs/MMLU-v0", mmlu_task, split="test", max_new_tokens=64, max_prompt_tokens=1024)
    register_task("lm_envs/MBPP-v0", mbpp_task, split="train", max_new_tokens=512, max_prompt_tokens=512)
    register_task(
        "lm_envs/HumanEval-v0",
        humaneval_task,
        split="test",
        max_new_tokens=512,
        max_prompt_tokens=1024,
        stop_strings=HUMANEVAL_STOP_STRINGS,
    )
    # MultiPL-E stop tokens: the line that closes the function.
    register_task(
        "lm_envs/HumanEvalCpp-v0",
        humaneval_cpp_task,
        split="test",
        max_new_tokens=512,
        max_prompt_tokens=1024,
        stop_strings=("\n}",),
    )
    register_task(
        "lm_envs/HumanEvalJava-v0",
        humaneval_java_task,
        split="test",
        max_new_tokens=512,
        max_prompt_tokens=1024,
        stop_strings=("\n    }\n",),
    )
    register_task("lm_envs/Toxicity-v0", toxicity_task, split="train", max_new_tokens=20, max_prompt_tokens=128)
    # Multi-turn: the env speaks mid-episode (lm_envs.tasks.turns). The calculator's answers are
    # a few tokens each; a feedback turn is at most max_reply_tokens of report plus its framing.
    register_task("lm_envs/GSM8KCalculator-v0", gsm8k_calculator_task, max_new_tokens=256, max_injected_tokens=64)
    register_task("lm_envs/MBPPFeedback-v0", mbpp_feedback_task, **_FEEDBACK, max_prompt_tokens=512)
    register_task(
        "lm_envs/HumanEvalCppFeedback-v0",
        humaneval_cpp_feedback_task,
        **_FEEDBACK,
        max_prompt_tokens=1024,
        stop_strings=("\n}",),
    )


# Three attempts of up to 256 new tokens each; feedback trimmed to 128 tokens.
_FEEDBACK: dict[str, Any] = {
    "split": "test",
    "max_turns": 3,
    "max_turn_tokens": 256,
    "max_new_tokens": 768,
    "max_reply_tokens": 128,
    "max_injected_tokens": 384,
}


# -- run defaults --------------------------------------------------------------------------------
# What a training run on each built-in id starts from (`lm_envs.registration.run_defaults`): the
# training env's kwargs (split, a token budget sized for a 2-core CPU run), the held-out env's
# kwargs merged over them, and the reward wrappers (a `reward_wrappers.from_config` list).
# ``run_ppo.py env.id=X`` alone gives X's; any key can still be overridden.
_GSM8K_FORMAT_BONUS = [
    {
        "type": "add_terms",  # +0.1 for a well-formed final '#### N' line
        "terms": {"format": {"reward": "gsm8k-format", "kwargs": {"bonus": 1.0}, "weight": 0.1}},
    }
]
RUN_DEFAULTS: dict[str, dict[str, Any]] = {
    "lm_envs/GSM8K-v0": {
        "kwargs": {"split": "train", "max_new_tokens": 48, "max_prompt_tokens": 512, "truncate_prompt": "left"},
        "eval_kwargs": {"split": "test"},
        "reward_wrappers": _GSM8K_FORMAT_BONUS,
    },
    # MGSM has only a test split: a run trains and evaluates on it (pick languages apart with language=).
    "lm_envs/MGSM-v0": {
        "kwargs": {
            "split": "test",
            "language": "en",
            "max_new_tokens": 48,
            "max_prompt_tokens": 512,
            "truncate_prompt": "left",
        },
        "eval_kwargs": {"split": "test"},
        "reward_wrappers": _GSM8K_FORMAT_BONUS,
    },
    # Locally MMLU has test and dev (5 solved examples per subject): train on test, hold out dev.
    "lm_envs/MMLU-v0": {
        "kwargs": {"split": "test", "max_new_tokens": 32, "max_prompt_tokens": 1024, "truncate_prompt": "left"},
        "eval_kwargs": {"split": "dev"},
        "reward_wrappers": [],
    },
    # Code: room for a function; the code reward already grades compile (0.2) and tests (0.8).
    "lm_envs/MBPP-v0": {
        "kwargs": {"split": "train", "max_new_tokens": 256, "max_prompt_tokens": 512, "truncate_prompt": "left"},
        "eval_kwargs": {"split": "test"},
        "reward_wrappers": [],
    },
    "lm_envs/HumanEval-v0": {
        "kwargs": {"split": "test", "max_new_tokens": 200, "max_prompt_tokens": 1024, "truncate_prompt": "left"},
        "eval_kwargs": {"split": "test"},
        "reward_wrappers": [],
    },
    # HumanEval-X has one split: train on 94 problems, hold out a fixed 64 (seeded_split, split_seed 0).
    "lm_envs/HumanEvalCpp-v0": {
        "kwargs": {"split": "train", "max_new_tokens": 200, "max_prompt_tokens": 1024, "truncate_prompt": "left"},
        "eval_kwargs": {"split": "held_out"},
        "reward_wrappers": [],
    },
    "lm_envs/HumanEvalJava-v0": {
        "kwargs": {"split": "train", "max_new_tokens": 200, "max_prompt_tokens": 1024, "truncate_prompt": "left"},
        "eval_kwargs": {"split": "held_out"},
        "reward_wrappers": [],
    },
    # An empty continuation is never toxic: -1 below 16 tokens keeps that from being the answer.
    "lm_envs/Toxicity-v0": {
        "kwargs": {
            "split": "train",
            "subset": "toxic",
            "max_new_tokens": 32,
            "max_prompt_tokens": 128,
            "truncate_prompt": "left",
        },
        "eval_kwargs": {"split": "test"},
        "reward_wrappers": [
            {"type": "add_terms", "terms": {"too_short": {"term": "length", "below": 16, "weight": -1.0}}}
        ],
    },
    "lm_envs/GSM8KCalculator-v0": {
        "kwargs": {
            "split": "train",
            "max_new_tokens": 128,
            "max_prompt_tokens": 512,
            "max_injected_tokens": 48,
            "truncate_prompt": "left",
        },
        "eval_kwargs": {"split": "test"},
        "reward_wrappers": _GSM8K_FORMAT_BONUS,
    },
    "lm_envs/MBPPFeedback-v0": {
        "kwargs": {**_FEEDBACK, "split": "train", "max_prompt_tokens": 512, "truncate_prompt": "left"},
        "eval_kwargs": {"split": "test"},
        "reward_wrappers": [],
    },
    "lm_envs/HumanEvalCppFeedback-v0": {
        "kwargs": {**_FEEDBACK, "split": "train", "max_prompt_tokens": 1024, "truncate_prompt": "left"},
        "eval_kwargs": {"split": "held_out"},
        "reward_wrappers": [],
    },
}
