"""The reward registry (`make`/`register`/`available`), the `Reward` base and `FunctionReward`."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rewards
from rewards import (
    FunctionReward,
    GSM8KFormatReward,
    GSM8KReward,
    MGSMReward,
    MMLUReward,
    Reward,
    ToxicityReward,
    available,
    make,
    register,
)

ROOT = Path(__file__).resolve().parents[1]
CODE_NAMES = {
    "mbpp": "MBPPReward",
    "humaneval": "HumanEvalReward",
    "humaneval-cpp": "HumanEvalCppReward",
    "humaneval-java": "HumanEvalJavaReward",
}


@pytest.fixture(autouse=True)
def restore_registry():
    saved = dict(rewards._REGISTRY)
    yield
    rewards._REGISTRY.clear()
    rewards._REGISTRY.update(saved)


def test_available_lists_builtins_sorted():
    names = available()
    assert names == sorted(names)
    assert {"gsm8k", "gsm8k-format", "mgsm", "mmlu", "toxicity", *CODE_NAMES} <= set(names)


@pytest.mark.parametrize(
    "name, cls",
    [
        ("gsm8k", GSM8KReward),
        ("mgsm", MGSMReward),
        ("mmlu", MMLUReward),
        ("toxicity", ToxicityReward),
        ("gsm8k-format", GSM8KFormatReward),
    ],
)
def test_make_builtins(name, cls):
    r = make(name)
    assert type(r) is cls and isinstance(r, Reward)


def test_make_passes_kwargs():
    assert make("gsm8k", correct=3.0)(["#### 1"], [1]).tolist() == [3.0]
    assert make("toxicity", mode="negative").mode == "negative"
    with pytest.raises(TypeError):
        make("gsm8k", no_such_option=1)


def test_code_rewards_registered_as_lazy_strings():
    for name, cls in CODE_NAMES.items():
        assert rewards._REGISTRY[name] == f"rewards.code:{cls}"


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="unknown reward 'gsm9k'; available: .*gsm8k.*mmlu.*toxicity"):
        make("gsm9k")


def test_register_callable_and_string():
    register("brevity", lambda max_chars=10: FunctionReward(lambda c, r: float(len(c) <= max_chars), name="brevity"))
    assert "brevity" in available()
    assert make("brevity")(["short", "much too long"], None).tolist() == [1.0, 0.0]
    assert make("brevity", max_chars=100)(["much too long"], None).tolist() == [1.0]
    register("exact-gsm8k", "rewards.math:GSM8KReward")
    assert type(make("exact-gsm8k", tolerance=0.0)) is GSM8KReward


def test_register_rejects_duplicates_and_bad_factories():
    with pytest.raises(ValueError, match="already registered"):
        register("gsm8k", GSM8KReward)
    register("gsm8k", MGSMReward, overwrite=True)
    assert type(make("gsm8k")) is MGSMReward
    with pytest.raises(ValueError, match="module:Class"):
        register("x", "rewards.math.GSM8KReward")
    with pytest.raises(TypeError):
        register("x", 42)
    with pytest.raises(ValueError):
        register("", GSM8KReward)


def test_make_reports_unimportable_and_non_reward_factories():
    register("ghost", "rewards.no_such_module:Ghost")
    with pytest.raises(ImportError, match="'ghost' is registered as 'rewards.no_such_module:Ghost'"):
        make("ghost")
    register("plain", lambda: lambda c, r: 1.0)
    with pytest.raises(TypeError, match="not a rewards.Reward"):
        make("plain")


# ---------------------------------------------------------------- Reward base and FunctionReward


def test_function_reward_per_item_and_batched():
    per_item = FunctionReward(lambda c, r: len(c) - r)
    assert per_item.name == "<lambda>"
    out = per_item(["abc", ""], [1, 0])
    assert out.dtype == np.float32 and out.tolist() == [2.0, 0.0]

    def exact(cs, rs):
        return [c == r for c, r in zip(cs, rs)]

    batched = FunctionReward(exact, batched=True)
    assert batched.name == "exact" and batched(["a", "b"], ["a", "c"]).tolist() == [1.0, 0.0]
    with pytest.raises(TypeError):
        FunctionReward("not callable")


def test_base_validation_errors_are_clear():
    r = FunctionReward(lambda c, ref: 0.0, name="zero")
    with pytest.raises(ValueError, match="zero: got 2 completions but 3 references"):
        r(["a", "b"], [1, 2, 3])
    with pytest.raises(ValueError, match="2 completions but 1 prompts"):
        r(["a", "b"], [1, 2], prompts=["p"])
    with pytest.raises(TypeError, match="not a single string"):
        r("abc", [1, 2, 3])
    with pytest.raises(ValueError, match="returned 1 values for 2"):
        FunctionReward(lambda cs, rs: [0.0], batched=True)(["a", "b"], None)
    assert r.metrics(["a"], [1], np.zeros(1)) == {}


def test_base_cleans_odd_inputs_before_scoring():
    seen = []
    r = FunctionReward(lambda c, ref: seen.append(c) or 0.0)
    r([b"\xff\xfeok", None, "\ud800x", 12], None, prompts=["p", b"q", None, "r"])
    assert seen == ["\ufffd\ufffdok", "", "?x", "12"]
    assert all(isinstance(s.encode("utf-8"), bytes) for s in seen)


def test_reward_is_abstract():
    with pytest.raises(TypeError):
        Reward()


def test_import_is_light_and_independent():
    """`import rewards` pulls in neither the other packages nor torch/transformers."""
    code = (
        "import sys, rewards; bad = {'lm_envs', 'policies', 'agents', 'torch', 'transformers', "
        "'profanity_check', 'sklearn', 'rewards.code'}; print(sorted(m for m in sys.modules if m in bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    banned = re.compile(r"^\s*(?:from|import)\s+(?:lm_envs|policies|agents)\b", re.MULTILINE)
    for path in (ROOT / "rewards").glob("*.py"):
        assert not banned.search(path.read_text(encoding="utf-8")), path
