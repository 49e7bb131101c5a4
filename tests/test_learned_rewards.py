"""Learned rewards: the Bradley–Terry loss (by hand and against TRL 1.16's ``RewardTrainer``), a
tiny reward model that learns "more 7s is better", `rewards.RewardModelReward` (batching, device
placement under CUDA's rule, running-statistics normalisation, composition with the task score),
and the degenerate-body metric per language."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from device_rule import CudaDeviceRule

from agents.reward_math import bradley_terry_loss, discriminator_loss, log_d, pair_statistics
from rewards.degenerate import c_family_parameters, degenerate_rate, is_degenerate

DIGITS = "0 1 2 3 4 5 6 8 9".split()


# -- the Bradley–Terry loss ------------------------------------------------------------------------------
def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # −mean log σ(d): d = 1 and −1
    by_hand = -(math.log(1 / (1 + math.exp(-1))) + math.log(1 / (1 + math.exp(1)))) / 2
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx(by_hand, rel=1e-6)
    # margin m = 1 on both pairs: d = 0 and −2
    with_margin = -(math.log(0.5) + math.log(1 / (1 + math.exp(2)))) / 2
    assert float(bradley_terry_loss(chosen, rejected, margin=1.0)) == pytest.approx(with_margin, rel=1e-6)
    # centring η = 0.5: + 0.5 · mean((2 + 1)², (0 + 1)²) = 0.5 · 5
    centred = bradley_terry_loss(chosen, rejected, center_rewards_coefficient=0.5)
    assert float(centred) == pytest.approx(by_hand + 2.5, rel=1e-6)
    stats = pair_statistics(chosen, rejected)
    assert stats["accuracy"] == 0.5 and stats["margin"] == 0.0 and stats["max_reward"] == 2.0
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))


def test_discriminator_loss_and_log_d_by_hand():
    logits, labels = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    by_hand = -(math.log(0.5) + math.log(1 - 1 / (1 + math.exp(-2)))) / 2
    assert float(discriminator_loss(logits, labels)) == pytest.approx(by_hand, rel=1e-6)
    assert log_d(torch.tensor([0.0])).item() == pytest.approx(math.log(0.5))


def _trl_compute_loss(chosen, rejected, margin, center):
    """TRL 1.16.0's ``RewardTrainer.compute_loss`` itself, on a stand-in trainer and a model that
    returns the given rewards as its logits (TRL's layout: the chosen rows, then the rejected)."""
    from trl import RewardTrainer

    logits = torch.cat([chosen, rejected]).unsqueeze(-1)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True),
        args=SimpleNamespace(center_rewards_coefficient=center),
        accelerator=SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x),
        _total_train_tokens=0,
        _tp_size=1,
        _metrics={
            "train": {k: [] for k in ("num_tokens", "min_reward", "mean_reward", "max_reward", "accuracy", "margin")}
        },
    )
    inputs = {"input_ids": torch.zeros(logits.shape[0], 3, dtype=torch.long)}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if margin is not None:
        inputs["margin"] = margin
    return RewardTrainer.compute_loss(trainer, lambda **kw: SimpleNamespace(logits=logits), inputs), trainer._metrics


@pytest.mark.parametrize("use_margin, center", [(False, None), (True, None), (False, 0.01), (True, 0.1)])
def test_bradley_terry_loss_equals_trls(use_margin, center):
    pytest.importorskip("trl")
    generator = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(6, generator=generator) * 2, torch.randn(6, generator=generator) * 2
    margin = torch.rand(6, generator=generator) if use_margin else None
    theirs, metrics = _trl_compute_loss(chosen, rejected, margin, center)
    ours = bradley_terry_loss(chosen, rejected, margin, center)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    stats = pair_statistics(chosen, rejected)
    assert stats["accuracy"] == pytest.approx(metrics["train"]["accuracy"][0])
    assert stats["margin"] == pytest.approx(metrics["train"]["margin"][0], rel=1e-6)


# -- the reward-model trainer -------------------------------------------------------------------------
def sevens_pairs(n: int, seed: int) -> list[dict]:
    """Pairs of 6-token digit strings where the chosen one has more 7s."""
    rng = np.random.default_rng(seed)

    def completion(sevens: int) -> str:
        words = [*rng.choice(DIGITS, size=6 - sevens), *["7"] * sevens]
        rng.shuffle(words)
        return " " + " ".join(words)

    rows = []
    for _ in range(n):
        few, many = sorted(rng.choice(7, size=2, replace=False))
        rows.append(
            {
                "prompt": " ".join(rng.choice(list("abcdef"), size=3)),
                "chosen": completion(many),
                "rejected": completion(few),
            }
        )
    return rows


@pytest.mark.parametrize("lora", [None, {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}])
def test_reward_model_learns_more_sevens_is_better(lora, tiny_dir, tmp_path):
    from datasets import Dataset, DatasetDict

    from agents import RewardModel
    from rewards import RewardModelReward

    data = DatasetDict(
        {"train": Dataset.from_list(sevens_pairs(200, 0)), "test": Dataset.from_list(sevens_pairs(60, 1))}
    )
    data.save_to_disk(str(tmp_path / "pairs"))
    model = RewardModel(
        str(tiny_dir),
        lora=lora,
        learning_rate=3e-3 if lora is None else 1e-2,
        batch_size=16,
        n_epochs=2,
        seed=0,
        device="cpu",
    )
    before = model.evaluate(sevens_pairs(60, 1))["eval_accuracy"]
    metrics = model.learn(str(tmp_path / "pairs"))
    assert before < 0.8, "an untrained head should not already rank the pairs"
    assert metrics["eval_accuracy"] >= 0.9 and metrics["eval_pairs"] == 60 and metrics["train_pairs"] == 200
    out = model.save(tmp_path / "rm")
    assert (out / "reward_model.json").exists()
    # The saved directory is a plain transformers model that scores as the trained one does.
    texts = [r["prompt"] + r["chosen"] for r in sevens_pairs(5, 2)]
    reward = RewardModelReward(out, device="cpu")
    np.testing.assert_allclose(reward(texts, None), model.score(texts), rtol=1e-4, atol=1e-5)


def test_reward_model_splits_held_out_prompts_and_explains_bad_data(tiny_dir, tmp_path):
    from agents.reward_model import load_pairs, split_by_prompt

    rows = sevens_pairs(40, 3)
    train, held = split_by_prompt(rows, 0.25, seed=0)
    assert held and train and not {r["prompt"] for r in held} & {r["prompt"] for r in train}
    with pytest.raises(FileNotFoundError, match="build_preferences.py"):
        load_pairs(tmp_path / "nothing")
    with pytest.raises(ValueError, match="prompt/chosen/rejected|columns"):
        load_pairs([{"prompt": "a", "completion": "b"}])


# -- RewardModelReward ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier_dir(tiny_dir, tmp_path_factory):
    """A saved one-logit classifier on the tiny backbone (random head, seeded)."""
    from agents.scorer_model import build_scorer, save_scorer

    torch.manual_seed(0)
    model, tokenizer = build_scorer(str(tiny_dir))
    return save_scorer(model, tokenizer, tmp_path_factory.mktemp("classifier"), {})


def test_reward_model_reward_batches_and_outputs(classifier_dir):
    from rewards import RewardModelReward, make

    texts = ["7", "7 7 7 7 7 7 7 7 7 7 1", "1 2", "a b c d e f g h"]
    whole = RewardModelReward(classifier_dir, batch_size=16)
    one_by_one = RewardModelReward(classifier_dir, batch_size=1)
    logits = whole(texts, None)
    np.testing.assert_allclose(one_by_one(texts, None), logits, rtol=1e-5, atol=1e-6)  # padding changes nothing
    assert len(set(np.round(logits, 5))) == len(texts)
    sigmoid = make("reward-model", path=str(classifier_dir), output="sigmoid")(texts, None)
    np.testing.assert_allclose(sigmoid, 1 / (1 + np.exp(-logits)), rtol=1e-5)
    log_sigmoid = RewardModelReward(classifier_dir, output="log_sigmoid")(texts, None)
    np.testing.assert_allclose(log_sigmoid, np.log(sigmoid), rtol=1e-4, atol=1e-6)
    # The prompt is scored in front of the completion unless include_prompt=False.
    with_prompt = whole(["7 7"], None, prompts=["a b "])
    assert with_prompt[0] == pytest.approx(whole(["a b 7 7"], None)[0], rel=1e-5)
    alone = RewardModelReward(classifier_dir, include_prompt=False)(["7 7"], None, prompts=["a b "])
    assert alone[0] == pytest.approx(whole(["7 7"], None)[0], rel=1e-5)
    with pytest.raises(FileNotFoundError, match="train_reward_model.py"):
        RewardModelReward(classifier_dir / "missing")
    with pytest.raises(ValueError, match="output"):
        RewardModelReward(classifier_dir, output="probability")


def test_reward_model_reward_normalises_with_running_statistics(classifier_dir):
    from rewards import RewardModelReward

    raw = RewardModelReward(classifier_dir)
    norm = RewardModelReward(classifier_dir, normalize=True)
    first, second = ["7", "1 2", "a b c"], ["7 7 7", "d e"]
    out1 = norm(first, None)
    np.testing.assert_allclose(out1, (raw(first, None) - raw(first, None).mean()) / raw(first, None).std(), rtol=1e-4)
    seen = np.concatenate([raw(first, None), raw(second, None)])
    out2 = norm(second, None)  # statistics of everything so far, this batch included
    np.testing.assert_allclose(out2, (raw(second, None) - seen.mean()) / seen.std(), rtol=1e-4)
    assert norm.moments.count == 5
    frozen = RewardModelReward(classifier_dir, normalize=True, update=False)
    frozen.load_state_dict(norm.state_dict())
    np.testing.assert_allclose(frozen(second, None), out2, rtol=1e-5)
    assert frozen.moments.count == 5
    clipped = RewardModelReward(classifier_dir, normalize=True, clip=0.5)(first, None)
    assert np.abs(clipped).max() <= 0.5


def test_device_reward_model_reward_runs_under_cudas_rule(classifier_dir):
    """Inputs go to the model's device: nothing made without a device meets the model's tensors."""
    from rewards import RewardModelReward

    reward = RewardModelReward(classifier_dir, device=torch.device("cpu"))
    with CudaDeviceRule():
        scores = reward(["7 7", "1 2 3"], None, prompts=["a ", "b "])
    assert scores.shape == (2,) and np.isfinite(scores).all()
    assert next(reward.model.parameters()).device == torch.device("cpu")


def test_reward_model_term_composes_with_the_task_score_and_is_logged(classifier_dir):
    from lm_envs.reward_wrappers import from_config

    transform = from_config(
        [
            {
                "type": "add_terms",
                "terms": {
                    "discriminator": {
                        "reward": "reward-model",
                        "kwargs": {"path": str(classifier_dir), "output": "log_sigmoid"},
                        "weight": 0.5,
                    }
                },
            }
        ]
    )
    completions, prompts = ["7 7", "1 2"], ["a ", "b "]
    infos = [{"episode": {"l": 2}} for _ in completions]
    task_score = np.array([0.2, 1.0], dtype=np.float32)
    total, components = transform(task_score, completions, [None, None], prompts, infos)
    from rewards import RewardModelReward

    term = 0.5 * RewardModelReward(classifier_dir, output="log_sigmoid")(completions, None, prompts)
    np.testing.assert_allclose(components["discriminator"], term, rtol=1e-5)
    np.testing.assert_allclose(total, task_score + term, rtol=1e-5)


# -- the degenerate-body metric -------------------------------------------------------------------------
CPP = {
    "prompt": "#include<bits/stdc++.h>\n// Sum\nlong add(long x, std::map<std::string, long> y) {\n",
    "stop_tokens": ["\n}"],
}
JAVA = {
    "prompt": "class Problem {\n    public static ArrayList<Long> evens(ArrayList<Long> lst, long n) {\n",
    "stop_tokens": ["\n    }\n"],
}
HUMANEVAL = {"prompt": 'def f(xs: list, k: int):\n    """Doc."""\n', "entry_point": "f"}
MBPP = {"test_list": ["assert add_one([1]) == [2]"]}


@pytest.mark.parametrize(
    "language, reference, completion, degenerate",
    [
        ("cpp", CPP, "    return 0;\n}", True),
        ("cpp", CPP, "    // nothing to do\n    return (false);\n}\nint main() { return 1; }", True),
        ("cpp", CPP, "    return x;\n}", True),  # an argument unchanged
        ("cpp", CPP, '    return "}";\n}', True),
        ("cpp", CPP, "    return {};\n}", True),
        ("cpp", CPP, "    return std::vector<long>();\n}", True),
        ("cpp", CPP, "    return 'a';\n}", True),
        ("cpp", CPP, "    return x + 1;\n}", False),
        ("cpp", CPP, "    return y.size();\n}", False),
        ("cpp", CPP, "    long s = 0;\n    return s;\n}", False),
        ("cpp", CPP, "    for (;;) {}\n", False),
        ("java", JAVA, "        return new ArrayList<>();\n    }\n", True),
        ("java", JAVA, "        return null;\n    }\n    public static void main(String[] a) {}\n", True),
        ("java", JAVA, "        return lst;\n    }\n", True),
        ("java", JAVA, "        return 0l;\n    }\n", True),
        ("java", JAVA, "        return new ArrayList<>(lst.subList(0, 1));\n    }\n", False),
        ("java", JAVA, "        lst.clear();\n        return lst;\n    }\n", False),
        ("python", HUMANEVAL, "    return []\n", True),
        ("python", HUMANEVAL, "    return xs\n\ndef g(): pass\n", True),
        ("python", HUMANEVAL, '    """More doc."""\n    return None\n', True),
        ("python", HUMANEVAL, "    return sorted(xs)[:k]\n", False),
        ("python", HUMANEVAL, "    ys = list(xs)\n    return ys\n", False),
        ("python", HUMANEVAL, "    return (\n", False),  # does not parse: not counted
        ("python", MBPP, "```python\ndef add_one(xs):\n    return [2]\n```", True),
        (
            "python",
            MBPP,
            "```python\ndef helper():\n    return 1\n\ndef add_one(xs):\n    return [x + 1 for x in xs]\n```",
            False,
        ),
        ("python", MBPP, "def add_one(xs):\n    return xs\n", True),
    ],
)
def test_degenerate_body_per_language(language, reference, completion, degenerate):
    assert is_degenerate(language, completion, reference) is degenerate


def test_degenerate_rate_and_parameters():
    assert c_family_parameters(CPP["prompt"]) == {"x", "y"}  # the comma inside <...> is not a separator
    assert c_family_parameters(JAVA["prompt"]) == {"lst", "n"}
    rate = degenerate_rate("cpp", ["    return 0;\n}", "    return x * 2;\n}", "    return -1;\n}", ""], [CPP] * 4)
    assert rate == 0.5 and degenerate_rate("java", [], []) == 0.0
    with pytest.raises(ValueError, match="language"):
        is_degenerate("rust", "", {})


def test_degenerate_rate_is_a_metric_of_every_code_reward():
    import rewards.code as code

    for cls, language in [
        (code.MBPPReward, "python"),
        (code.HumanEvalReward, "python"),
        (code.HumanEvalCppReward, "cpp"),
        (code.HumanEvalJavaReward, "java"),
    ]:
        assert cls.language == language
    reward = code.HumanEvalCppReward.__new__(code.HumanEvalCppReward)  # no sandbox: the results are given
    result = code.CodeResult(True, 1, 2)
    reward._last = (["    return 0;\n}", "    return x + 1;\n}"], [result, result], 0)
    reward._recent = {}
    metrics = reward.metrics(["    return 0;\n}", "    return x + 1;\n}"], [CPP, CPP], np.zeros(2))
    assert metrics["degenerate_rate"] == 0.5 and metrics["compile_rate"] == 1.0


# -- the discriminator ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "env_id, task_name",
    [
        ("lm_envs/HumanEvalCpp-v0", "humaneval-cpp"),
        ("lm_envs/HumanEvalJava-v0", "humaneval-java"),
        ("lm_envs/MBPP-v0", "mbpp"),
    ],
)
def test_discriminator_training_data_excludes_held_out_problems(env_id, task_name):
    """The problems the code env evaluates on (its run defaults' eval split, built here as the env
    builds it) never reach the discriminator's rows, and a sample of one is refused."""
    import lm_envs  # noqa: F401  (registers the ids)
    from lm_envs.references import (
        discriminator_examples,
        held_out_keys,
        problem_key,
        reference_solutions,
        training_keys,
    )
    from lm_envs.registration import run_defaults
    from lm_envs.tasks.code import humaneval_x_task, mbpp_task

    defaults = run_defaults(env_id)
    build = mbpp_task if task_name == "mbpp" else lambda **kw: humaneval_x_task(task_name.split("-")[1], **kw)
    none = lambda c, r, p=None: [0.0] * len(c)  # noqa: E731
    train = build(split=defaults["kwargs"]["split"], reward=none)
    evaluated = build(split=defaults["eval_kwargs"]["split"], reward=none)
    eval_keys = {problem_key(r) for r in evaluated.references}
    assert eval_keys and eval_keys <= held_out_keys(task_name)
    samples = [{"prompt": q, "completion": " x", "reference": r} for q, r in zip(train.questions, train.references)]
    solutions = reference_solutions(task_name)
    rows = discriminator_examples(samples, task_name, solutions, held_out_keys(task_name), degenerate_negatives=True)
    keys = {r["key"] for r in rows}
    assert keys and not keys & eval_keys and keys <= training_keys(task_name)
    assert keys == {problem_key(r) for r in train.references} & set(solutions)  # every training problem is used
    references = [r["completion"] for r in rows if r["label"] == 1]
    if task_name == "mbpp":
        assert all(c.startswith("```python\n") for c in references)
    else:  # bodies only, in the task's own language
        assert not any(c.rstrip().endswith("}") and c.count("}") > c.count("{") for c in references)
        marker = "std::" if task_name == "humaneval-cpp" else "new ArrayList"
        assert any(marker in c for c in references) and not any("def " in c for c in references)
    held = next(r for r in evaluated.references)
    with pytest.raises(ValueError, match="held out"):
        discriminator_examples(
            [{"prompt": "p", "completion": "c", "reference": held}], task_name, solutions, held_out_keys(task_name)
        )


def test_discriminator_references_are_matched_by_number_and_never_cross_languages():
    from lm_envs.references import language_of, problem_key, reference_solutions

    cpp, java = reference_solutions("humaneval-cpp"), reference_solutions("humaneval-java")
    assert len(cpp) == len(java) == 164 and cpp[23] != java[23]
    assert "length()" in java[23] and ("size()" in cpp[23] or "length()" in cpp[23])  # strlen, both languages
    assert problem_key({"name": "HumanEval_23_strlen"}) == 23 and problem_key({"task_id": 601}) == 601
    with pytest.raises(ValueError, match="no reference solutions"):
        language_of("humaneval")


def test_rename_identifiers_renames_at_once_and_leaves_literals_and_members_alone():
    from lm_envs.references import rename_identifiers

    code = 'if (a.size() > b) swap(a, b); s = "a b"; p->a = x::b; return a + b;'
    assert rename_identifiers(code, {"a": "b", "b": "a"}) == (
        'if (b.size() > a) swap(b, a); s = "a b"; p->a = x::b; return b + a;'
    )
    assert rename_identifiers("ab + a", {"a": "c"}) == "ab + c" and rename_identifiers("x", {}) == "x"


def test_reference_candidates_speak_the_prompts_names_and_types():
    """HumanEval-X's strlen is ``strlen(string str)`` with ``int``; MultiPL-E's prompt is
    ``long strlen(std::string string)``: the candidates use the prompt's parameter name, qualified
    standard names, and (second candidate) ``long``."""
    from lm_envs.references import reference_candidates, reference_solutions

    record = {"name": "HumanEval_23_strlen", "prompt": "long strlen(std::string string) {\n"}
    raw = reference_solutions("humaneval-cpp")[23]
    assert "str." in raw and reference_candidates("humaneval-cpp", [record])[23] == ["    return string.length();"]
    unique = {"name": "HumanEval_34_unique", "prompt": "std::vector<long> unique(std::vector<long> xs) {\n"}
    first, widened = reference_candidates("humaneval-cpp", [unique])[34]
    assert "std::sort(" in first and "xs[i]" in first and "l[i]" not in first  # qualified and renamed
    assert "std::vector<int> out" in first and "std::vector<long> out" in widened
    assert widened == re.sub(r"\bint\b", "long", first)
    mbpp = reference_candidates("mbpp", [{"task_id": 601}])[601]
    assert mbpp == [reference_solutions("mbpp")[601]]


def test_verified_references_keep_the_first_candidate_that_passes_and_drop_problems_with_none():
    from lm_envs.references import verified_references
    from rewards.code.outcome import CodeResult

    class Judge:  # passes the candidates that say so
        def evaluate(self, completions, references, prompts):
            assert prompts == [r["prompt"] for r in references]
            return [CodeResult(compiled="ok" in c, passed=int("ok" in c), total=1) for c in completions]

    records = [{"name": f"HumanEval_{k}_f", "prompt": f"p{k}"} for k in (1, 2, 3)]
    candidates = {1: ["bad", "ok 1", "ok 2"], 2: ["bad", "worse"], 3: ["ok 3"]}
    assert verified_references(candidates, records, Judge()) == {1: "ok 1", 3: "ok 3"}


def test_verified_cpp_references_pass_their_tests_under_the_task_reward():
    """On the real compiler and tests: HumanEval-X's strlen as written does not compile against our
    prompt (its parameter is ``str``, ours ``string``); the verified candidate passes every test."""
    import rewards
    from lm_envs.references import reference_candidates, reference_solutions, verified_references
    from lm_envs.tasks.code import humaneval_x_task

    task = humaneval_x_task("cpp", split="train", reward=lambda c, r, p=None: [0.0] * len(c))
    record = next(r for r in task.references if r["name"] == "HumanEval_23_strlen")
    reward = rewards.make("humaneval-cpp")
    try:
        raw = reward.evaluate([reference_solutions("humaneval-cpp")[23]], [record], [record["prompt"]])[0]
        verified = verified_references(reference_candidates("humaneval-cpp", [record]), [record], reward)
        again = reward.evaluate([verified[23]], [record], [record["prompt"]])[0]
    finally:
        reward.close()
    assert not raw.compiled and again.all_passed


def test_discriminator_learns_references_from_samples(tiny_dir, tmp_path):
    from agents import Discriminator
    from rewards import RewardModelReward

    rng = np.random.default_rng(0)
    rows = []
    for key in range(40):
        prompt = " ".join(rng.choice(list("abcdef"), size=3)) + " "
        rows.append(
            {
                "prompt": prompt,
                "completion": "7 7 " + " ".join(rng.choice(DIGITS, 2)),
                "label": 1,
                "key": key,
                "kind": "reference",
            }
        )
        rows.append(
            {"prompt": prompt, "completion": " ".join(rng.choice(DIGITS, 4)), "label": 0, "key": key, "kind": "sample"}
        )
    disc = Discriminator(
        str(tiny_dir), learning_rate=3e-3, batch_size=8, n_epochs=3, eval_fraction=0.25, seed=0, device="cpu"
    )
    metrics = disc.learn(rows)
    assert metrics["eval_accuracy"] >= 0.9 and metrics["eval_d_reference"] > metrics["eval_d_sample"]
    path = disc.save(tmp_path / "disc", task="synthetic")
    log_d = RewardModelReward(path, output="log_sigmoid")(["7 7 1 2", "1 2 3 4"], None, prompts=["a b c ", "a b c "])
    assert log_d[0] > log_d[1] and (log_d <= 0).all()


def test_train_discriminator_script_samples_trains_and_saves(tiny_dir, tmp_path):
    """Step 1 of compile_disc_cpu end to end on the tiny model: sample the training split, train,
    save where the preset's term reads it; then step 2's reward term loads it."""
    import json
    import sys

    from helpers import REPO

    sys.path.insert(0, str(REPO / "experiments"))
    import train_discriminator

    from lm_envs.references import held_out_keys

    out = tmp_path / "disc"
    result = train_discriminator.main(
        [
            "experiment=compile_disc_cpu",
            f"policy.model={tiny_dir}",
            "env.num_envs=4",
            "env.kwargs.max_new_tokens=4",
            "disc.batches=1",
            "disc.n_epochs=1",
            "disc.lora=null",
            "disc.device=cpu",
            f"disc.out={out}",
            "progress_bar=false",
        ]
    )
    saved = json.loads((out / "reward_model.json").read_text())
    assert saved["task"] == "humaneval-cpp" and saved["samples"] == 4 and saved["problems"] == result["problems"]
    # The references were checked against our prompts: the problems trained on are those that passed.
    assert saved["references"]["verified"] and saved["references"]["problems"] <= 4
    assert len(saved["problems"]) == saved["references"]["passing"] > 0
    assert result["problems"] and not set(result["problems"]) & held_out_keys("humaneval-cpp")
    wrappers = train_discriminator.compose(["experiment=compile_disc_cpu"]).env.reward_wrappers
    assert train_discriminator.term_path(wrappers, "discriminator") == "outputs/discriminators/humaneval-cpp"
    with pytest.raises(SystemExit, match="disc.out"):
        train_discriminator.main(["disc.batches=1", f"policy.model={tiny_dir}"])


def test_run_ppo_agent_reward_model_trains_from_the_pairs_build_preferences_writes(tiny_dir, tmp_path):
    """``run_ppo.py agent=reward_model`` dispatches to ``train_reward_model.py`` (strict keys)."""
    import json
    import sys

    from datasets import Dataset
    from helpers import REPO

    sys.path.insert(0, str(REPO / "experiments"))
    import run_ppo

    Dataset.from_list(sevens_pairs(240, 4)).save_to_disk(str(tmp_path / "pairs"))  # one split: held-out prompts
    argv = [
        "agent=reward_model",
        f"data={tmp_path / 'pairs'}",
        f"model={tiny_dir}",
        "lora=null",
        "learning_rate=3e-3",
        "batch_size=16",
        "n_epochs=3",
        "eval_fraction=0.25",
        "device=cpu",
        "progress_bar=false",
        f"output_dir={tmp_path / 'rm'}",
    ]
    metrics = run_ppo.cli(argv)
    saved = json.loads((tmp_path / "rm" / "reward_model.json").read_text())
    assert saved["eval_accuracy"] == metrics["eval_accuracy"] >= 0.9 and saved["settings"]["lora"] is None
    assert metrics["train_pairs"] + metrics["eval_pairs"] == 240
    with pytest.raises(SystemExit, match="unknown option"):
        run_ppo.cli([*argv, "n_epoch=2"])
