"""Per-env run defaults: env.id=X alone gives X's token budget, splits and reward wrappers; the
default run is unchanged; what a preset or the command line sets wins."""

import inspect
import sys
from pathlib import Path

import gymnasium as gym
import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
from config import compose  # noqa: E402

import lm_envs  # noqa: E402,F401
from lm_envs.registration import _VEC_KEYS, register_task, run_defaults  # noqa: E402
from lm_envs.suite import RUN_DEFAULTS  # noqa: E402

FORMAT_BONUS = [
    {"type": "add_terms", "terms": {"format": {"reward": "gsm8k-format", "kwargs": {"bonus": 1.0}, "weight": 0.1}}}
]


def env_of(argv):
    return OmegaConf.to_container(compose(argv).env, resolve=True)


TOO_SHORT = [{"type": "add_terms", "terms": {"too_short": {"term": "length", "below": 16, "weight": -1.0}}}]


def test_the_default_run():
    env = env_of([])
    assert env["id"] == "lm_envs/Toxicity-v0" and env["num_envs"] == 16
    assert env["kwargs"] == {
        "split": "train",
        "subset": "toxic",
        "max_new_tokens": 32,
        "max_prompt_tokens": 128,
        "truncate_prompt": "left",
    }
    assert env["eval_kwargs"] == {"split": "test"} and env["reward_wrappers"] == TOO_SHORT
    gsm8k = env_of(["env.id=lm_envs/GSM8K-v0"])
    assert gsm8k["kwargs"] == {
        "split": "train",
        "max_new_tokens": 48,
        "max_prompt_tokens": 512,
        "truncate_prompt": "left",
    }
    assert gsm8k["eval_kwargs"] == {"split": "test"} and gsm8k["reward_wrappers"] == FORMAT_BONUS


def test_the_default_tuning_applies_only_without_a_preset():
    agent = OmegaConf.to_container(compose([]).agent)
    assert agent["learning_rate"] == 5.0e-4 and agent["gae_lambda"] == 1.0 and agent["adaptive_kl"] is True
    grpo = OmegaConf.to_container(compose(["agent=grpo"]).agent)
    assert grpo["kl_coef"] == 0.2 and grpo["loss_type"] == "dapo"
    preset = OmegaConf.to_container(compose(["experiment=mbpp_feedback_cpu"]).agent)
    assert preset["learning_rate"] == 2.5e-4 and preset["adaptive_kl"] is False  # the preset's and agent file's own
    assert "per_agent" not in compose([])


def test_env_id_alone_gives_that_envs_defaults():
    mbpp = env_of(["env.id=lm_envs/MBPP-v0"])
    assert mbpp["kwargs"]["max_new_tokens"] == 256 and mbpp["kwargs"]["split"] == "train"
    assert mbpp["eval_kwargs"] == {"split": "test"} and mbpp["reward_wrappers"] == []  # no GSM8K bonus on code
    cpp = env_of(["env.id=lm_envs/HumanEvalCpp-v0"])
    assert cpp["kwargs"]["max_new_tokens"] == 200 and cpp["reward_wrappers"] == []
    assert cpp["kwargs"]["split"] == "train" and cpp["eval_kwargs"] == {"split": "held_out"}  # never trained on
    tox = env_of(["env.id=lm_envs/Toxicity-v0"])
    assert tox["kwargs"]["subset"] == "toxic" and tox["kwargs"]["max_new_tokens"] == 32


def test_what_is_set_wins_over_the_env_defaults():
    env = env_of(
        [
            "env.id=lm_envs/MBPP-v0",
            "env.kwargs.max_new_tokens=64",
            "env.eval_kwargs.split=validation",
            "env.reward_wrappers=[{type: scale, factor: 2.0}]",
        ]
    )
    assert env["kwargs"]["max_new_tokens"] == 64 and env["kwargs"]["max_prompt_tokens"] == 512
    assert env["eval_kwargs"] == {"split": "validation"} and env["reward_wrappers"] == [
        {"type": "scale", "factor": 2.0}
    ]
    assert env_of(["env.reward_wrappers=[]"])["reward_wrappers"] == []  # off, not the env's default
    tox = env_of(["experiment=toxicity_cpu"])  # a preset's own wrappers and kwargs stay
    assert tox["reward_wrappers"][0]["terms"]["too_short"]["below"] == 16 and tox["kwargs"]["test_size"] == 200


def test_every_builtin_id_has_defaults_its_builder_takes():
    builtin = sorted(k for k in gym.registry if k.startswith("lm_envs/"))
    assert sorted(RUN_DEFAULTS) == builtin
    for env_id in builtin:
        defaults = run_defaults(env_id)
        builder = gym.spec(env_id).kwargs["task_builder"]
        params = set(inspect.signature(builder).parameters)
        for key in {**defaults["kwargs"], **defaults["eval_kwargs"]}:
            assert key in _VEC_KEYS or key in params, (env_id, key)
        assert isinstance(defaults["reward_wrappers"], list)


def test_registering_with_run_defaults_and_without():
    from helpers import echo_task

    register_task(
        "test_envs/WithDefaults-v0",
        lambda: echo_task(),
        max_new_tokens=4,
        run_defaults={"kwargs": {"max_new_tokens": 3}, "reward_wrappers": [{"type": "scale", "factor": 3.0}]},
    )
    env = env_of(["env.id=test_envs/WithDefaults-v0"])
    assert env["kwargs"] == {"max_new_tokens": 3} and env["eval_kwargs"] == {}
    assert env["reward_wrappers"] == [{"type": "scale", "factor": 3.0}]
    register_task("test_envs/NoDefaults-v0", lambda: echo_task(), max_new_tokens=4)
    assert run_defaults("test_envs/NoDefaults-v0") == {"kwargs": {}, "eval_kwargs": {}, "reward_wrappers": []}
    with pytest.raises(ValueError, match="unknown run_defaults keys"):
        register_task("test_envs/Bad-v0", lambda: echo_task(), run_defaults={"kwarg": {}})
    assert "test_envs/Bad-v0" not in gym.registry


def test_one_table_holds_every_builtin_ids_defaults_and_registration_does_not_import_it():
    import ast

    from lm_envs import registration
    from lm_envs.suite import BUILTIN_IDS

    for env_id, row in BUILTIN_IDS.items():
        spec_kwargs = dict(gym.spec(env_id).kwargs)
        assert spec_kwargs.pop("task_builder") is row["builder"] and spec_kwargs == row["env"], env_id
        assert run_defaults(env_id) == {"kwargs": {}, "eval_kwargs": {}, "reward_wrappers": [], **row["run"]}
    # Toxicity's own budget is its run's (it was 20 for gymnasium.make and 32 for a run).
    assert (
        gym.spec("lm_envs/Toxicity-v0").kwargs["max_new_tokens"]
        == RUN_DEFAULTS["lm_envs/Toxicity-v0"]["kwargs"]["max_new_tokens"]
    )
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(Path(registration.__file__).read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert "lm_envs.suite" not in imported and "lm_envs" not in imported  # no import circle
