"""The registered task suite: every id builds and passes the checker, splits, options, bad rows."""

import csv
import json
import logging

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from helpers import DATA_DIR

import lm_envs
import rewards

SMALL = dict(max_new_tokens=4, max_prompt_tokens=256, truncate_prompt="left")
CHAT = "{% for m in messages %}<s> {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}<s> {% endif %}"

# id -> (a split it has, name of its default reward, class of the reference)
SUITE = {
    "lm_envs/GSM8K-v0": ("test", "gsm8k", str),
    "lm_envs/MGSM-v0": ("test", "mgsm", str),
    "lm_envs/MMLU-v0": ("test", "mmlu", dict),
    "lm_envs/MBPP-v0": ("test", "mbpp", dict),
    "lm_envs/HumanEval-v0": ("test", "humaneval", dict),
    "lm_envs/HumanEvalCpp-v0": ("test", "humaneval-cpp", dict),
    "lm_envs/HumanEvalJava-v0": ("test", "humaneval-java", dict),
    "lm_envs/Toxicity-v0": ("test", "toxicity", dict),
}
REWARD_CLASS = {
    "gsm8k": "GSM8KReward",
    "mgsm": "MGSMReward",
    "mmlu": "MMLUReward",
    "mbpp": "MBPPReward",
    "humaneval": "HumanEvalReward",
    "humaneval-cpp": "HumanEvalCppReward",
    "humaneval-java": "HumanEvalJavaReward",
    "toxicity": "ToxicityReward",
}


@pytest.fixture
def tokenizer(tiny_lm):
    return tiny_lm[1]


@pytest.fixture
def chat_tokenizer(tiny_lm):
    tokenizer = tiny_lm[1]
    tokenizer.chat_template = CHAT
    return tokenizer


def jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def one_warning(caplog, count):
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1, messages
    assert f"skipped {count} malformed rows" in messages[0]


# -- every registered id -------------------------------------------------------------------------
def test_every_suite_id_is_registered():
    assert set(SUITE) <= set(gym.registry)


@pytest.mark.parametrize("env_id", sorted(SUITE))
def test_registered_env_builds_passes_checker_and_scores(env_id, tokenizer):
    split, reward_name, reference_type = SUITE[env_id]
    env = gym.make(env_id, tokenizer=tokenizer, split=split, **SMALL)
    gym_check_env(env.unwrapped, skip_render_check=True)
    task = env.unwrapped.task
    assert task.reward.name == reward_name and isinstance(task.reward, getattr(rewards, REWARD_CLASS[reward_name]))
    assert isinstance(task.references[0], reference_type)
    # The batched env over the same id: ending every row at once scores them all.
    vec = lm_envs.make_vec(env_id, 2, tokenizer, split=split, seed=0, **SMALL)
    obs = vec.reset()
    assert obs["input_ids"].shape == (2, 260)
    indices = vec.batch.row_index.copy()  # lockstep: the step that ends the batch loads the next one
    _, rewards_, dones, infos = vec.step(np.full(2, tokenizer.eos_token_id))
    assert dones.all() and rewards_.dtype == np.float32
    for row, info in enumerate(infos):
        assert info["completion"] == "" and isinstance(info["reference"], reference_type)
        assert info["score"] == rewards_[row] and info["index"] == indices[row]
        assert info["reference"] == task.references[info["index"]]


@pytest.mark.parametrize(
    "env_id,bad_split",
    [
        ("lm_envs/GSM8K-v0", "validation"),
        ("lm_envs/MGSM-v0", "train"),
        ("lm_envs/MMLU-v0", "validation"),
        ("lm_envs/MBPP-v0", "dev"),
        ("lm_envs/HumanEval-v0", "train"),
        ("lm_envs/HumanEvalCpp-v0", "validation"),
        ("lm_envs/HumanEvalJava-v0", "dev"),
        ("lm_envs/Toxicity-v0", "validation"),
    ],
)
def test_missing_split_is_a_clear_error(env_id, bad_split, tokenizer):
    with pytest.raises(ValueError, match=f"not '{bad_split}'"):
        gym.make(env_id, tokenizer=tokenizer, split=bad_split, **SMALL)


# -- MGSM ----------------------------------------------------------------------------------------
def test_mgsm_languages_references_and_reward(tokenizer):
    env = gym.make("lm_envs/MGSM-v0", tokenizer=tokenizer, language="de", **SMALL)
    task = env.unwrapped.task
    assert len(task) == 250 and task.name == "mgsm_de" and task.metadata["language"] == "de"
    assert task.questions[0].startswith("Janets Enten legen 16 Eier")
    assert task.references[0] == "18" and len([float(r.replace(",", "")) for r in task.references]) == 250
    assert isinstance(task.reward, rewards.MGSMReward)
    assert task.prompt(0, tokenizer).endswith("'#### <number>'.")
    assert task.reward(["Also verdient sie\n#### 18"], [task.references[0]])[0] == 1.0
    zh = lm_envs.mgsm_task(language="zh")
    assert zh.references == lm_envs.mgsm_task(language="en").references  # same problems, translated
    with pytest.raises(ValueError, match=r"no language 'xx'.*'en', 'de'"):
        lm_envs.mgsm_task(language="xx")


def test_offline_without_data_dir_names_both_options(monkeypatch):
    monkeypatch.delenv("LM_ENVS_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="data_dir=PATH.*LM_ENVS_DATA_DIR"):
        lm_envs.mgsm_task(language="fr")


# -- MMLU ----------------------------------------------------------------------------------------
def csv_rows(split, subject):
    with open(DATA_DIR / "mmlu" / split / f"{subject}_{split}.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_mmlu_subject_filter_and_references():
    one = lm_envs.mmlu_task(subjects="anatomy")
    assert len(one) == len(csv_rows("test", "anatomy"))
    assert {r["subject"] for r in one.references} == {"anatomy"}
    ref, row = one.references[0], csv_rows("test", "anatomy")[0]
    assert ref["answer"] == int(row["answer"]) and ref["choices"] == [row[f"choice{i}"] for i in range(4)]
    two = lm_envs.mmlu_task(subjects=["anatomy", "virology"])
    assert len(two) == len(csv_rows("test", "anatomy")) + len(csv_rows("test", "virology"))
    assert {r["subject"] for r in two.references} == {"anatomy", "virology"}
    assert len(lm_envs.mmlu_task()) == 14042
    with pytest.raises(ValueError, match=r"unknown MMLU subject.*'anatomy'"):
        lm_envs.mmlu_task(subjects=["anatomy", "astrology"])


def test_mmlu_prompt_format_and_k_shot():
    zero = lm_envs.mmlu_task(subjects="anatomy", chat_template=False)
    text = zero.prompt(0, None)
    row = csv_rows("test", "anatomy")[0]
    assert text.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert text.endswith(
        f"{row['question']}\nA. {row['choice0']}\nB. {row['choice1']}\nC. {row['choice2']}\n"
        f"D. {row['choice3']}\nAnswer:"
    )
    assert text.count("Answer:") == 1
    shots = lm_envs.mmlu_task(subjects="anatomy", k_shot=2, chat_template=False)
    text = shots.prompt(0, None)
    dev = csv_rows("dev", "anatomy")
    assert text.count("Answer:") == 3 and text.endswith("Answer:")
    for shot in dev[:2]:
        assert f"{shot['question']}\nA. {shot['choice0']}" in text
        assert f"D. {shot['choice3']}\nAnswer: {'ABCD'[int(shot['answer'])]}\n\n" in text
    assert dev[2]["question"] not in text
    # On the dev split a row is never its own shot.
    dev_task = lm_envs.mmlu_task(split="dev", subjects="anatomy", k_shot=5, chat_template=False)
    first = dev_task.prompt(0, None)
    assert first.count("Answer:") == 5 and first.count(dev[0]["question"]) == 1
    with pytest.raises(ValueError, match="k_shot"):
        lm_envs.mmlu_task(subjects="anatomy", k_shot=6)


def test_mmlu_per_subject_metrics():
    task = lm_envs.mmlu_task(subjects=["anatomy", "virology"])
    refs = [task.references[0], task.references[-1]]
    completions = [f"Answer: {'ABCD'[refs[0]['answer']]}", f"Answer: {'ABCD'[(refs[1]['answer'] + 1) % 4]}"]
    metrics = task.reward.metrics(completions, refs, task.reward(completions, refs))
    assert metrics == {"accuracy": 0.5, "accuracy/anatomy": 1.0, "accuracy/virology": 0.0}


def test_mmmlu_needs_hub_or_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(
        ConnectionError, match=r"(?s)openai/MMMLU.*mmmlu/test/mmlu_FR-FR.csv.*data_dir.*LM_ENVS_DATA_DIR"
    ):
        lm_envs.mmlu_task(language="fr", data_dir=str(tmp_path))
    path = tmp_path / "mmmlu" / "test" / "mmlu_FR-FR.csv"
    path.parent.mkdir(parents=True)
    path.write_text(
        ",Question,A,B,C,D,Answer,Subject\n"
        "0,Quelle est la capitale ?,Paris,Lyon,Nice,Lille,A,geography_fake\n"
        "1,Combien font 2+2 ?,3,4,5,6,B,elementary_mathematics\n"
        "2,Question sans réponse,1,2,3,4,Z,elementary_mathematics\n",
        encoding="utf-8",
    )
    task = lm_envs.mmlu_task(language="fr", data_dir=str(tmp_path))
    assert len(task) == 1 and task.name == "mmmlu_fr"  # other subject filtered, bad answer skipped
    assert task.references[0] == {
        "answer": 1,
        "choices": ["3", "4", "5", "6"],
        "subject": "elementary_mathematics",
        "question": "Combien font 2+2 ?",
    }
    with pytest.raises(ValueError, match="dev split"):
        lm_envs.mmlu_task(language="fr", k_shot=1, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no language 'xx'"):
        lm_envs.mmlu_task(language="xx", data_dir=str(tmp_path))


# -- MBPP and HumanEval --------------------------------------------------------------------------
@pytest.mark.parametrize("language", ["cpp", "java"])
def test_humaneval_x_held_out_split_is_fixed_and_disjoint(language):
    """The splits are lists of problems (built without a sandbox: each would run its canary)."""

    def build(**kwargs):
        return lm_envs.tasks.humaneval_x_task(language, reward=lambda c, r, p=None: [0.0] * len(c), **kwargs)

    names = {split: [r["name"] for r in build(split=split).references] for split in ("test", "train", "held_out")}
    assert len(names["held_out"]) == 64 and len(names["train"]) == len(names["test"]) - 64
    assert not set(names["train"]) & set(names["held_out"])
    assert sorted(names["train"] + names["held_out"]) == sorted(names["test"])
    if language != "java":  # the options below are language-independent: checked once
        return
    again = [r["name"] for r in build(split="held_out").references]
    other = [r["name"] for r in build(split="held_out", split_seed=1).references]
    assert again == names["held_out"] and other != names["held_out"]
    task = build(split="held_out", held_out_size=10)
    assert len(task) == 10 and task.metadata["held_out_size"] == 10
    with pytest.raises(ValueError, match="held-out size must be in 1.."):
        build(split="train", held_out_size=len(names["test"]))


def test_mbpp_splits_follow_task_ids():
    sizes = {"prompt": (10, 1, 10), "test": (500, 11, 510), "validation": (90, 511, 600), "train": (374, 601, 974)}
    for split, (size, low, high) in sizes.items():
        task = lm_envs.mbpp_task(split=split)
        ids = [r["task_id"] for r in task.references]
        assert len(task) == size and min(ids) == low and max(ids) == high


def test_mbpp_prompt_has_problem_and_tests_through_the_chat_template(chat_tokenizer):
    task = lm_envs.mbpp_task(split="test")
    record = task.references[0]
    assert set(record) >= {"text", "code", "task_id", "test_list", "test_setup_code", "challenge_test_list"}
    text = task.prompt(0, chat_tokenizer)
    assert text.startswith("<s> ") and record["text"] in text  # wrapped by the chat template
    assert all(test in text for test in record["test_list"]) and "Your code should pass these tests:" in text


def test_code_references_are_whole_records_the_rewards_accept():
    mbpp = lm_envs.mbpp_task(split="test", limit=1)
    assert mbpp.reward([mbpp.references[0]["code"]], mbpp.references)[0] == pytest.approx(1.0)
    he = lm_envs.humaneval_task(limit=1)
    scores = he.reward([he.references[0]["canonical_solution"], "    return None\n"], he.references * 2)
    assert scores[0] == pytest.approx(1.0) and scores[1] < 1.0


def test_humaneval_prompts_are_the_code_prefix(chat_tokenizer):
    for builder, size, _stop in (
        (lm_envs.humaneval_task, 164, lm_envs.HUMANEVAL_STOP_STRINGS),
        # 161 records, of which 3 (Union_* types) have no plain-data verdict
        (lm_envs.humaneval_cpp_task, 158, ("\n}",)),
        (lm_envs.humaneval_java_task, 158, ("\n    }\n",)),
    ):
        task = builder(reward=lambda c, r, p=None: [0.0] * len(c))  # no sandbox: nothing is scored here
        assert len(task) == size and task.chat_template is False
        assert task.prompt(3, chat_tokenizer) == task.references[3]["prompt"]  # no chat template, verbatim
    with pytest.raises(ValueError, match="humaneval-cpp: 3 malformed rows"):
        lm_envs.humaneval_cpp_task(on_bad_row="error", reward=lambda c, r, p=None: [0.0] * len(c))
    env = gym.make("lm_envs/HumanEvalJava-v0", tokenizer=chat_tokenizer, **SMALL)
    assert env.unwrapped.batch.stop_strings == ("\n    }\n",)
    env = gym.make("lm_envs/HumanEval-v0", tokenizer=chat_tokenizer, **SMALL)
    assert env.unwrapped.batch.stop_strings == lm_envs.HUMANEVAL_STOP_STRINGS


# -- Toxicity ------------------------------------------------------------------------------------
def test_toxicity_split_is_disjoint_deterministic_and_seeded():
    test = lm_envs.toxicity_task(split="test")
    train = lm_envs.toxicity_task(split="train")
    test_files = {r["filename"] + str(r["begin"]) for r in test.references}
    train_files = {r["filename"] + str(r["begin"]) for r in train.references}
    assert len(test) == 200 and len(train) == 1196 - 200
    assert not test_files & train_files and len(test_files | train_files) == 1196
    assert lm_envs.toxicity_task(split="test").questions == test.questions
    other = lm_envs.toxicity_task(split="test", split_seed=1)
    assert set(other.questions) != set(test.questions) and len(other) == 200
    small = lm_envs.toxicity_task(split="test", test_size=50, subset="nontoxic")
    assert len(small) == 50 and not any(r["challenging"] for r in small.references)
    assert len(lm_envs.toxicity_task(split="train", subset="both")) == 1196 + 1200 - 200
    with pytest.raises(ValueError, match="test_size"):
        lm_envs.toxicity_task(test_size=1196)
    with pytest.raises(ValueError, match="subset"):
        lm_envs.toxicity_task(subset="mild")


def test_toxicity_prompt_is_plain_continuation_and_seed_kwargs_do_not_clash(chat_tokenizer):
    vec = lm_envs.make_vec("lm_envs/Toxicity-v0", 2, chat_tokenizer, split="test", split_seed=3, seed=5, **SMALL)
    task = vec.task
    assert task.prompt(0, chat_tokenizer) == task.references[0]["prompt"]["text"]
    assert task.metadata["split_seed"] == 3
    assert isinstance(task.reward, rewards.ToxicityReward)
    chat = lm_envs.toxicity_task(split="test", chat_template=None)
    assert chat.prompt(0, chat_tokenizer).startswith("<s> ")  # overridable


# -- malformed rows ------------------------------------------------------------------------------
def test_malformed_rows_are_skipped_with_one_counted_warning(tmp_path, caplog):
    good = {"question": "how many apples", "answer": "so\n#### 4"}
    jsonl(
        tmp_path / "gsm8k" / "test.jsonl",
        [good, {"question": "no answer"}, {"question": "q", "answer": "none"}, "{not json", good],
    )
    with caplog.at_level(logging.WARNING):
        task = lm_envs.gsm8k_task(split="test", data_dir=str(tmp_path))
    assert len(task) == 2
    one_warning(caplog, 3)
    with pytest.raises(ValueError, match="3 malformed rows"):
        lm_envs.gsm8k_task(split="test", data_dir=str(tmp_path), on_bad_row="error")


def test_malformed_mgsm_and_mmlu_rows(tmp_path, caplog):
    (tmp_path / "mgsm").mkdir()
    (tmp_path / "mgsm" / "mgsm_en.tsv").write_text("q one\t5\nq two\tfive\nno tab here\nq three\t\nq four\t1,000\n")
    with caplog.at_level(logging.WARNING):
        task = lm_envs.mgsm_task(data_dir=str(tmp_path))
    assert task.references == ["5", "1,000"]
    one_warning(caplog, 3)
    caplog.clear()
    folder = tmp_path / "mmlu" / "test"
    folder.mkdir(parents=True)
    (folder / "anatomy_test.csv").write_text(
        "question,choice0,choice1,choice2,choice3,answer\n"
        "good,a,b,c,d,2\nempty choice,a,,c,d,1\nout of range,a,b,c,d,7\nnot a number,a,b,c,d,x\n"
    )
    with caplog.at_level(logging.WARNING):
        task = lm_envs.mmlu_task(data_dir=str(tmp_path))
    assert [r["question"] for r in task.references] == ["good"]
    one_warning(caplog, 3)
    with pytest.raises(ValueError, match="3 malformed"):
        lm_envs.mmlu_task(data_dir=str(tmp_path), on_bad_row="error")


def test_malformed_code_and_toxicity_rows(tmp_path, caplog):
    record = {
        "text": "write f",
        "code": "def f(): return 1",
        "task_id": 11,
        "test_setup_code": "",
        "test_list": ["assert f() == 1"],
        "challenge_test_list": [],
    }
    jsonl(
        tmp_path / "mbpp" / "mbpp.jsonl",
        [
            record,
            {**record, "task_id": 12, "test_list": []},
            {**record, "task_id": 13, "text": None},
            {**record, "task_id": 700},
        ],
    )
    with caplog.at_level(logging.WARNING):
        task = lm_envs.mbpp_task(split="test", data_dir=str(tmp_path))
    assert [r["task_id"] for r in task.references] == [11]
    one_warning(caplog, 2)
    caplog.clear()
    prompt = {"prompt": {"text": "you are", "toxicity": 0.9}, "challenging": True}
    jsonl(
        tmp_path / "toxicity" / "rtp_toxic.jsonl",
        [prompt, prompt, {"prompt": {"text": ""}}, {"continuation": {}}, {"prompt": {"text": None}}, prompt],
    )
    with caplog.at_level(logging.WARNING):
        both = [lm_envs.toxicity_task(split=s, test_size=1, data_dir=str(tmp_path)) for s in ("train", "test")]
    assert [len(t) for t in both] == [2, 1]
    assert sum("skipped 3 malformed rows" in r.getMessage() for r in caplog.records) == 2  # once per build
    jsonl(tmp_path / "humaneval-x" / "humaneval-cpp.jsonl", [{"name": "x", "prompt": "int f() {\n", "tests": ""}])
    with pytest.raises(ValueError, match="1 malformed"):
        lm_envs.humaneval_cpp_task(data_dir=str(tmp_path), on_bad_row="error")
