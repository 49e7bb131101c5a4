"""The built-in ids, in one table (`BUILTIN_IDS`): for each ``lm_envs/...-v0`` id, the
`lm_envs.tasks` builder it registers, the env's own defaults (what ``gymnasium.make(id)`` and
``make_vec(id)`` use) and what a training run on it starts from (its run defaults, a sized-for-a-
2-core-CPU token budget, its splits and reward wrappers; `lm_envs.registration.run_defaults`).

``import lm_envs`` calls `register_builtin_ids`. The task builders themselves live in
`lm_envs.tasks`. May import `lm_envs.tasks` and `lm_envs.registration` (which imports nothing
of this module); never `policies` or `agents`.
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

__all__ = ["BUILTIN_IDS", "RUN_DEFAULTS", "register_builtin_ids"]

# Three attempts of up to 256 new tokens each; feedback trimmed to 128 tokens.
_FEEDBACK: dict[str, Any] = {
    "split": "test",
    "max_turns": 3,
    "max_turn_tokens": 256,
    "max_new_tokens": 768,
    "max_reply_tokens": 128,
    "max_injected_tokens": 384,
}
_GSM8K_FORMAT_BONUS = [
    {
        "type": "add_terms",  # +0.1 for a well-formed final '#### N' line
        "terms": {"format": {"reward": "gsm8k-format", "kwargs": {"bonus": 1.0}, "weight": 0.1}},
    }
]
_LEFT = {"truncate_prompt": "left"}

# id → builder, env defaults ("env": gymnasium.make's) and run defaults ("run": the training env's
# kwargs, merged over for the held-out env by "eval_kwargs", and the reward wrappers, a
# `reward_wrappers.from_config` list). A run's kwargs differ from the env's own only where a
# 2-core CPU run needs a shorter token budget or another split; ``run_ppo.py env.id=X`` alone gives
# X's run defaults and any key can still be overridden.
BUILTIN_IDS: dict[str, dict[str, Any]] = {
    "lm_envs/GSM8K-v0": {
        "builder": gsm8k_task,
        "env": {"max_new_tokens": 256},
        "run": {
            "kwargs": {"split": "train", "max_new_tokens": 48, "max_prompt_tokens": 512, **_LEFT},
            "eval_kwargs": {"split": "test"},
            "reward_wrappers": _GSM8K_FORMAT_BONUS,
        },
    },
    # MGSM has only a test split: a run trains and evaluates on it (pick languages apart with language=).
    "lm_envs/MGSM-v0": {
        "builder": mgsm_task,
        "env": {"split": "test", "max_new_tokens": 256},
        "run": {
            "kwargs": {"split": "test", "language": "en", "max_new_tokens": 48, "max_prompt_tokens": 512, **_LEFT},
            "eval_kwargs": {"split": "test"},
            "reward_wrappers": _GSM8K_FORMAT_BONUS,
        },
    },
    # Locally MMLU has test and dev (5 solved examples per subject): train on test, hold out dev.
    "lm_envs/MMLU-v0": {
        "builder": mmlu_task,
        "env": {"split": "test", "max_new_tokens": 64, "max_prompt_tokens": 1024},
        "run": {
            "kwargs": {"split": "test", "max_new_tokens": 32, "max_prompt_tokens": 1024, **_LEFT},
            "eval_kwargs": {"split": "dev"},
            "reward_wrappers": [],
        },
    },
    # Code: room for a function; the code reward already grades compile (0.2) and tests (0.8).
    "lm_envs/MBPP-v0": {
        "builder": mbpp_task,
        "env": {"split": "train", "max_new_tokens": 512, "max_prompt_tokens": 512},
        "run": {
            "kwargs": {"split": "train", "max_new_tokens": 256, "max_prompt_tokens": 512, **_LEFT},
            "eval_kwargs": {"split": "test"},
            "reward_wrappers": [],
        },
    },
    "lm_envs/HumanEval-v0": {
        "builder": humaneval_task,
        "env": {
            "split": "test",
            "max_new_tokens": 512,
            "max_prompt_tokens": 1024,
            "stop_strings": HUMANEVAL_STOP_STRINGS,
        },
        "run": {
            "kwargs": {"split": "test", "max_new_tokens": 200, "max_prompt_tokens": 1024, **_LEFT},
            "eval_kwargs": {"split": "test"},
            "reward_wrappers": [],
        },
    },
    # MultiPL-E stop tokens: the line that closes the function. HumanEval-X has one split: train on
    # 94 problems, hold out a fixed 64 (seeded_split, split_seed 0).
    "lm_envs/HumanEvalCpp-v0": {
        "builder": humaneval_cpp_task,
        "env": {"split": "test", "max_new_tokens": 512, "max_prompt_tokens": 1024, "stop_strings": ("\n}",)},
        "run": {
            "kwargs": {"split": "train", "max_new_tokens": 200, "max_prompt_tokens": 1024, **_LEFT},
            "eval_kwargs": {"split": "held_out"},
            "reward_wrappers": [],
        },
    },
    "lm_envs/HumanEvalJava-v0": {
        "builder": humaneval_java_task,
        "env": {
            "split": "test",
            "max_new_tokens": 512,
            "max_prompt_tokens": 1024,
            "stop_strings": ("\n    }\n",),
        },
        "run": {
            "kwargs": {"split": "train", "max_new_tokens": 200, "max_prompt_tokens": 1024, **_LEFT},
            "eval_kwargs": {"split": "held_out"},
            "reward_wrappers": [],
        },
    },
    # An empty continuation is never toxic: -1 below 16 tokens keeps that from being the answer.
    "lm_envs/Toxicity-v0": {
        "builder": toxicity_task,
        "env": {"split": "train", "max_new_tokens": 32, "max_prompt_tokens": 128},
        "run": {
            "kwargs": {"split": "train", "subset": "toxic", "max_new_tokens": 32, "max_prompt_tokens": 128, **_LEFT},
            "eval_kwargs": {"split": "test"},
            "reward_wrappers": [
                {"type": "add_terms", "terms": {"too_short": {"term": "length", "below": 16, "weight": -1.0}}}
            ],
        },
    },
    # Multi-turn: the env speaks mid-episode (lm_envs.tasks.turns). The calculator's answers are
    # a few tokens each; a feedback turn is at most max_reply_tokens of report plus its framing.
    "lm_envs/GSM8KCalculator-v0": {
        "builder": gsm8k_calculator_task,
        "env": {"max_new_tokens": 256, "max_injected_tokens": 64},
        "run": {
            "kwargs": {
                "split": "train",
                "max_new_tokens": 128,
                "max_prompt_tokens": 512,
                "max_injected_tokens": 48,
                **_LEFT,
            },
            "eval_kwargs": {"split": "test"},
            "reward_wrappers": _GSM8K_FORMAT_BONUS,
        },
    },
    "lm_envs/MBPPFeedback-v0": {
        "builder": mbpp_feedback_task,
        "env": {**_FEEDBACK, "max_prompt_tokens": 512},
        "run": {
            "kwargs": {**_FEEDBACK, "split": "train", "max_prompt_tokens": 512, **_LEFT},
            "eval_kwargs": {"split": "test"},
            "reward_wrappers": [],
        },
    },
    "lm_envs/HumanEvalCppFeedback-v0": {
        "builder": humaneval_cpp_feedback_task,
        "env": {**_FEEDBACK, "max_prompt_tokens": 1024, "stop_strings": ("\n}",)},
        "run": {
            "kwargs": {**_FEEDBACK, "split": "train", "max_prompt_tokens": 1024, **_LEFT},
            "eval_kwargs": {"split": "held_out"},
            "reward_wrappers": [],
        },
    },
}

# Each id's run defaults (a view of the table).
RUN_DEFAULTS: dict[str, dict[str, Any]] = {env_id: row["run"] for env_id, row in BUILTIN_IDS.items()}


def register_builtin_ids() -> None:
    """Register every built-in id with Gymnasium: its builder, env defaults and run defaults."""
    for env_id, row in BUILTIN_IDS.items():
        register_task(env_id, row["builder"], run_defaults=row["run"], **row["env"])
