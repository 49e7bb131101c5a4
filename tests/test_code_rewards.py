"""The code rewards (`rewards.code`): honest solutions get full marks, scores are what the
weights say, and infrastructure failures are errors, never scores.

The attacks (forged verdicts, always-equal objects, reading the answer key...) are in
`test_hostile.py`; the jail itself in `test_sandbox.py`.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import lm_envs.tasks.code
import rewards
import rewards.code
import rewards.data
from rewards.code import (
    CodeWeights,
    HumanEvalCppReward,
    HumanEvalJavaReward,
    HumanEvalReward,
    MBPPReward,
    strip_code_fences,
)
from rewards.data import load_humaneval, load_humaneval_x, load_mbpp
from rewards.sandbox import Limits

ROOT = Path(__file__).resolve().parents[1]
CPP_STRLEN_OK = "    return string.size();\n}\n"
JAVA_STRLEN_OK = "        return string.length();\n    }\n"


@pytest.fixture(scope="module")
def mbpp():
    return {r["task_id"]: r for r in load_mbpp()}


@pytest.fixture(scope="module")
def mbpp_reward():
    r = MBPPReward(workers=2, limits=Limits(wall_s=5.0, cpu_s=5.0, memory_mb=512))
    yield r
    r.close()


@pytest.fixture(scope="module")
def humaneval_reward():
    r = HumanEvalReward(workers=2)
    yield r
    r.close()


@pytest.fixture(scope="module")
def cpp_strlen():
    return next(r for r in load_humaneval_x("cpp") if r["name"] == "HumanEval_23_strlen")


@pytest.fixture(scope="module")
def java_strlen():
    return next(r for r in load_humaneval_x("java") if r["name"] == "HumanEval_23_strlen")


# ----------------------------------------------------------------------------------- honest solutions


def test_every_mbpp_reference_solution_gets_full_marks(mbpp_reward, mbpp):
    """All 974 records, including 367 and 927, whose test setup builds `Node` trees from the
    solution's own class (that setup runs in the jail; the host passes the trees by name)."""
    recs = list(mbpp.values())
    results = mbpp_reward.evaluate([r["code"] for r in recs], recs, raise_errors=False)
    bad = [(r["task_id"], res) for r, res in zip(recs, results) if not res.all_passed or res.error]
    assert bad == []
    wrong = (
        "class Node:\n    def __init__(self, d):\n        self.data, self.left, self.right = d, None, None\n"
        "def is_tree_balanced(root):\n    return True\n"
    )
    assert mbpp_reward([wrong], [mbpp[367]])[0] == pytest.approx(0.2 + 0.8 / 3)  # 1 of 3: only the True case


def test_every_humaneval_canonical_solution_gets_full_marks(humaneval_reward):
    recs = load_humaneval()
    scores = humaneval_reward([r["canonical_solution"] for r in recs], recs)
    assert scores.tolist() == [1.0] * 164


def test_mbpp_scores_wrong_syntax_empty(mbpp_reward, mbpp):
    rec = mbpp[11]
    cases = {
        "def remove_Occ(s, ch):\n    return s\n": 0.2,  # compiles, fails every test
        "def remove_Occ(s, ch:\n    return s\n": 0.0,  # syntax error
        "": 0.0,
        "   \n": 0.0,
        "```python\n" + rec["code"] + "\n```\nThis removes the first and last occurrence.": 1.0,
        "x = '\udcff'\n" + rec["code"]: 1.0,  # lone surrogate is cleaned, not a crash
        "def remove_Occ(s, ch):\n    raise ValueError(ch)\n": 0.2,
    }
    scores = mbpp_reward(list(cases), [rec] * len(cases))
    assert scores.tolist() == pytest.approx(list(cases.values()))
    m = mbpp_reward.metrics(list(cases), [rec] * len(cases), scores)
    assert m["compile_rate"] == pytest.approx(4 / 7) and m["pass@1"] == pytest.approx(2 / 7)
    assert m["sandbox_error_rate"] == 0.0


def test_metrics_reuse_results_scored_in_several_calls(mbpp_reward, mbpp, monkeypatch):
    """An env scoring rows as they finish (overlap_scoring) calls the reward several times;
    metrics over the whole batch then runs nothing again."""
    recs = [mbpp[11], mbpp[12], mbpp[13]]
    texts = [recs[0]["code"], "def f(:\n", recs[2]["code"] + "\n# v2"]
    first = mbpp_reward(texts[:1], recs[:1])
    rest = mbpp_reward(texts[1:], recs[1:])
    submitted = []
    original = mbpp_reward.sandbox.submit
    monkeypatch.setattr(mbpp_reward.sandbox, "submit", lambda jobs: submitted.append(len(jobs)) or original(jobs))
    m = mbpp_reward.metrics(texts, recs, np.concatenate([first, rest]))
    assert submitted == [] and m["compile_rate"] == pytest.approx(2 / 3) and m["pass@1"] == pytest.approx(2 / 3)
    assert mbpp_reward.metrics(texts + ["x = 1\n"], recs + [recs[0]], np.zeros(4))["compile_rate"] == 0.75
    assert submitted == [1]  # a completion it has not seen is run


def test_mbpp_partial_credit_and_weights(mbpp):
    rec = mbpp[11]  # three asserts; this passes exactly the first ("hello", "l") -> "heo"
    partial = "def remove_Occ(s, ch):\n    return 'heo'\n"
    reward = MBPPReward(workers=1, weights=CodeWeights(compile_fail=-1.0, compile_ok=0.0, pass_weight=1.0))
    try:
        scores = reward([partial, rec["code"], "def remove_Occ(:\n"], [rec] * 3)
        assert scores.tolist() == pytest.approx([1 / 3, 1.0, -1.0])
        assert scores.dtype.name == "float32"
    finally:
        reward.close()


def test_humaneval_partial_and_random_tests(humaneval_reward):
    he = {r["task_id"]: r for r in load_humaneval()}
    add = he["HumanEval/53"]  # 5 fixed asserts, then 100 random ones in one loop (one test)
    wrong = "    if x == 0 or y == 0:\n        return x + y\n    return 0\n"
    full = "```python\ndef add(x: int, y: int):\n    return x + y\n```"
    s = humaneval_reward([wrong, full, "    return x +\n"], [add, add, add])
    assert s[0] == pytest.approx(0.2 + 0.8 * 2 / 6) and s[1] == 1.0 and s[2] == 0.0


def test_strip_code_fences():
    assert strip_code_fences("no fences") == "no fences"
    assert strip_code_fences("Here:\n```python\nx = 1\n```\nDone") == "x = 1\n"
    assert strip_code_fences("```\ny = 2\n") == "y = 2\n"  # truncated generation


def test_cpp_reward(cpp_strlen):
    reward = HumanEvalCppReward(workers=2, limits=Limits(wall_s=5, cpu_s=5))
    try:
        completions = [
            CPP_STRLEN_OK,
            "    return 0;\n}\n",  # passes only strlen("") == 0: 1 of 3
            "    return string.size()\n}\n",  # missing ';'
            "    exit(0);\n}\n",  # leaves before any result
            "    while (true) {}\n}\n",  # killed at the wall limit
            # Falling off the end of a non-void function is undefined behaviour (the caller reads
            # a stale register, which can match expected values): refused at compile time.
            "    // strlen\n}\n",
            "    if (string.empty()) return 0;\n}\n",
        ]
        scores = reward(completions, [cpp_strlen] * len(completions))
        assert scores.tolist() == pytest.approx([1.0, 0.2 + 0.8 / 3, 0.0, 0.2, 0.2, 0.0, 0.0])
        m = reward.metrics(completions, [cpp_strlen] * len(completions), scores)
        assert m["compile_rate"] == pytest.approx(4 / 7) and m["pass@1"] == pytest.approx(1 / 7)
        assert m["timeout_rate"] == pytest.approx(1 / 7) and m["sandbox_error_rate"] == 0.0
        assert "return-type" in reward.evaluate([completions[5]], [cpp_strlen])[0].feedback
    finally:
        reward.close()


def test_cpp_types_round_trip():
    """vector, tuple, optional, map, float and string results compare as the test's `==` does."""
    recs = {r["name"]: r for r in load_humaneval_x("cpp")}
    bodies = {
        "HumanEval_8_sum_product": "    long s = 0, p = 1;\n    for (long x : numbers) { s += x; p *= x; }\n"
        "    return std::make_tuple(s, p);\n}\n",
        "HumanEval_90_next_smallest": "    std::set<long> s(lst.begin(), lst.end());\n"
        "    if (s.size() < 2) return std::nullopt;\n    return *std::next(s.begin());\n}\n",
        "HumanEval_45_triangle_area": "    return a * h / 2.0;\n}\n",
        "HumanEval_29_filter_by_prefix": "    std::vector<std::string> out;\n"
        "    for (auto& s : strings) if (s.rfind(prefix, 0) == 0) out.push_back(s);\n    return out;\n}\n",
    }
    reward = HumanEvalCppReward(workers=2)
    try:
        names = [n for n in bodies if n in recs]
        assert len(names) == len(bodies)
        scores = reward([bodies[n] for n in names], [recs[n] for n in names])
        assert scores.tolist() == [1.0] * len(names)
        wrong = reward(
            ["    return std::make_tuple(s0, 1);\n}\n".replace("s0", "0L")], [recs["HumanEval_8_sum_product"]]
        )
        assert wrong[0] < 1.0
    finally:
        reward.close()


def test_java_reward(java_strlen):
    reward = HumanEvalJavaReward(workers=2)
    try:
        completions = [
            JAVA_STRLEN_OK,
            "        return 0l;\n    }\n",  # 1 of 3
            "        return string.length()\n    }\n",  # missing ';'
            "        System.exit(0); return 0;\n    }\n",
        ]
        scores = reward(completions, [java_strlen] * len(completions))
        assert scores.tolist() == pytest.approx([1.0, 0.2 + 0.8 / 3, 0.0, 0.2])
    finally:
        reward.close()


@pytest.mark.parametrize("name", ["lmsb_serializer.cpp", "LmsbSerializer.java"])
def test_harness_files_compile(name, tmp_path):
    """The C++ and Java code pasted into every MultiPL-E harness and checker ships as real source
    files (`rewards/harness/`); each compiles on its own, and it is what the plans paste in."""
    import subprocess

    from rewards import multipl_e
    from rewards.code import CPP_FLAGS, JAVATUPLES_JAR

    path = ROOT / "rewards" / "harness" / name
    if name.endswith(".cpp"):
        # as the reward compiles it: every HumanEval-X prompt includes <bits/stdc++.h> (the PCH)
        cmd = ["g++", *CPP_FLAGS, "-Wall", "-Werror", "-Wno-unused-function", "-include", "bits/stdc++.h"]
        cmd += ["-fsyntax-only", str(path)]
        pasted = multipl_e.CPP_SERIALIZER
    else:
        cmd = ["javac", "-Werror", "-cp", JAVATUPLES_JAR, "-d", str(tmp_path), str(path)]
        pasted = multipl_e.JAVA_SERIALIZER
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert pasted.strip() and pasted.strip() in path.read_text() and "lmsb: pasted" not in pasted


# ----------------------------------------------------------------------------------- faults


def test_malformed_record_is_a_per_record_error(humaneval_reward, mbpp_reward):
    he = {r["task_id"]: r for r in load_humaneval()}
    good = he["HumanEval/0"]
    broken = {
        **he["HumanEval/2"],
        "task_id": "HumanEval/broken",
        "test": "def check(candidate):\n    assert candidate(1 ==\n",
    }
    results = humaneval_reward.evaluate(
        [good["canonical_solution"], he["HumanEval/2"]["canonical_solution"]], [good, broken], raise_errors=False
    )
    assert results[0].all_passed and results[0].error is None  # the other item is scored
    assert "HumanEval/broken" in results[1].error and "does not parse" in results[1].error
    with pytest.raises(rewards.MalformedRecordError, match="HumanEval/broken"):
        humaneval_reward([good["canonical_solution"]] * 2, [good, broken])
    with pytest.raises(rewards.MalformedRecordError, match="test_list"):
        mbpp_reward(["x"], [{"task_id": 9, "test_list": []}])


def test_missing_compiler_is_an_error_not_a_zero(cpp_strlen):
    with pytest.raises(rewards.SandboxError, match="no-such-g"):
        HumanEvalCppReward(workers=1, compiler="no-such-g++", pch=False)
    reward = HumanEvalCppReward(workers=1, pch=False)
    try:
        reward.compiler = "no-such-g++"  # the toolchain disappears after construction
        with pytest.raises(rewards.SandboxError, match="no-such-g"):
            reward([CPP_STRLEN_OK], [cpp_strlen])
        assert reward.faults >= reward.retries + 1
    finally:
        reward.close()
    with pytest.raises(rewards.SandboxError, match="canary"):  # javatuples missing: the canary says so
        HumanEvalJavaReward(workers=1, classpath=["/nonexistent/javatuples.jar"], retries=0)


def test_failed_canary_raises():
    class Broken(MBPPReward):
        CANARY = ("def add_lists(xs, ys):\n    return xs\n", MBPPReward.CANARY[1])

    with pytest.raises(rewards.SandboxError, match="canary"):
        Broken(workers=1, retries=0)


def test_killed_server_recovers_or_raises_never_zeros(mbpp):
    recs = [mbpp[i] for i in range(11, 27)]
    slow = ["import time\ntime.sleep(0.4)\n" + r["code"] for r in recs]
    reward = MBPPReward(workers=2)
    try:
        # One death mid-batch: resent, scored right, and counted.
        killer = threading.Timer(0.3, lambda: os.kill(reward.sandbox.server_pid, 9))
        killer.start()
        scores = reward(slow, recs)
        killer.join()
        assert scores.tolist() == [1.0] * len(recs)
        assert reward.metrics(slow, recs, scores)["sandbox_error_rate"] > 0
        # A server that keeps dying: an exception naming the cause, not zeros.
        stop = threading.Event()

        def keep_killing() -> None:
            while not stop.is_set():
                try:
                    os.kill(reward.sandbox.server_pid, 9)
                except (OSError, rewards.SandboxError):
                    pass
                time.sleep(0.05)

        t = threading.Thread(target=keep_killing, daemon=True)
        t.start()
        try:
            with pytest.raises(rewards.SandboxError, match="could not be judged|server"):
                reward(slow, recs)
        finally:
            stop.set()
            t.join()
        assert reward([recs[0]["code"]], [recs[0]]).tolist() == [1.0]  # and it recovers afterwards
    finally:
        reward.close()


def test_one_loader_lives_in_rewards():
    """lm_envs reads its data through rewards.data; no copy of the loaders is left there."""
    assert not (ROOT / "lm_envs" / "data.py").exists()
    assert lm_envs.tasks.code.load_mbpp is rewards.data.load_mbpp
    assert lm_envs.tasks.code.load_humaneval_x is rewards.data.load_humaneval_x
    assert rewards.code.load_mbpp is rewards.data.load_mbpp
    assert len(load_mbpp("test")) == 500 and len(load_mbpp()) == 974
