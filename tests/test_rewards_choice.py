"""MMLU choice rewards: letter extraction and its ambiguity policy, references, real rows."""

import csv
import os
import time
from pathlib import Path

import numpy as np
import pytest

from rewards.choice import MMLUReward, extract_choice, parse_choice_reference

DATA = Path(os.environ.get("LM_ENVS_DATA_DIR", Path(__file__).resolve().parents[1] / "../shared/data"))
needs_data = pytest.mark.skipif(not (DATA / "mmlu").is_dir(), reason=f"no data dir at {DATA}")

OPTS = [
    "paralysis of the facial muscles.",
    "paralysis of the facial muscles and loss of taste.",
    "Both A and B",
    "lacrimation",
]


@pytest.mark.parametrize(
    "text, expected",
    [
        # explicit markers
        ("Answer: B", 1),
        ("The answer is B.", 1),
        ("the correct answer is (C)", 2),
        ("ANSWER: **D**", 3),
        ("answer: b", 1),
        ("The answer is: c.", 2),
        ("Answer: option A", 0),
        ("The correct option is D", 3),
        ('The answer is "B"', 1),
        ("answer = C", 2),
        ("The answer is a bit tricky. Answer: D", 3),  # lowercase 'a' + word is prose: skipped
        ("Answer: C. Although B is tempting", 2),  # first explicit marker wins over later letters
        ("The answer is A lesion of...", 0),  # uppercase letter after a marker counts
        ("Answer: Both", None),  # 'B' inside a word is no letter
        # leading standalone letter
        ("B", 1),
        ("(B)", 1),
        ("B)", 1),
        ("B.", 1),
        ("B: because", 1),
        ("**B**", 1),
        ("[C]", 2),
        ("  D\nbecause ...", 3),
        ("B is correct", 1),
        ("A is correct", 0),
        ("b", 1),
        ("(c)", 2),
        ("A good question. Hmm.", None),  # article, not a letter
        ("a nice day", None),
        # letter mentions elsewhere
        ("I think it's C.", 2),
        ("I pick (B) here", 1),
        ("Going with option D", 3),
        ("so, **A**", 0),
        ("I think (A) or (B)", None),
        ("It's B, not A.", None),  # several distinct letters -> None
        ("Vitamin D deficiency", None),  # a capital inside prose is not a mention
        ("E", None),
        ("Answer: E", None),  # only A-D for four options
        ("", None),
        (None, None),
        ("\ud800", None),
        (b"\xff\xfeB", 1),  # bad bytes become U+FFFD, the letter survives
    ],
)
def test_extract_choice_without_options(text, expected):
    assert extract_choice(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("paralysis of the facial muscles.", 0),  # equals option A
        ("Paralysis   of the facial MUSCLES", 0),  # case/space/period-insensitive
        ("It causes paralysis of the facial muscles and loss of taste", 1),  # longer option wins
        ("Both A and B", 2),  # exact option text beats the letters in it
        ("Mostly lacrimation, I believe", 3),
        ("lacrimation or paralysis of the facial muscles", None),  # two unrelated options
        ("Answer: D. paralysis of the facial muscles", 3),  # explicit letter beats option text
        ("nothing relevant", None),
    ],
)
def test_extract_choice_with_option_texts(text, expected):
    assert extract_choice(text, OPTS) == expected


def test_extract_choice_number_of_options():
    assert extract_choice("Answer: E", ["1", "2", "3", "4", "5"]) == 4
    assert extract_choice("Answer: E", n_choices=5) == 4
    assert extract_choice("Answer: C", ["yes", "no"]) is None
    with pytest.raises(ValueError):
        extract_choice("A", n_choices=0)


def test_extract_choice_long_and_odd_text():
    assert extract_choice("x " * 500_000 + "Answer: C", OPTS) == 2
    assert extract_choice("so (A) or (B) " * 70_000, OPTS) is None
    assert extract_choice("\u0000\u200b(B)\u202e", OPTS) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text",
    [
        "answer:" + " " * 50_000 + "x",
        "answer: " + "*(" * 25_000 + "x",
        " " * 50_000 + "a" + " " * 50_000 + "x",
        "option" + " " * 50_000 + "x",
        ("A" + " " * 100) * 500,
        "(a)" * 50_000,
        "Answer is " * 10_000,
    ],
)
def test_extract_choice_degenerate_text_is_linear_time(text):
    # Overlapping unbounded `\s*` runs once made these take minutes (quadratic backtracking).
    start = time.perf_counter()
    extract_choice(text, OPTS)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize(
    "ref, expected",
    [
        (2, (2, None, None)),
        (np.int64(1), (1, None, None)),
        ("C", (2, None, None)),
        ("c", (2, None, None)),
        ("3", (3, None, None)),
        (" 0 ", (0, None, None)),
        ({"answer": 1, "choices": ["a", "b"], "subject": "anatomy"}, (1, ["a", "b"], "anatomy")),
        (
            {"answer": "2", "choice0": "w", "choice1": "x", "choice2": "y", "choice3": "z"},
            (2, ["w", "x", "y", "z"], None),
        ),
        ({"answer": "D"}, (3, None, None)),
    ],
)
def test_parse_choice_reference(ref, expected):
    assert parse_choice_reference(ref) == expected


@pytest.mark.parametrize(
    "ref", [4, -1, "E", "AB", True, None, 1.5, {"choices": ["a"]}, {"answer": 2, "choices": ["a", "b"]}]
)
def test_parse_choice_reference_rejects(ref):
    with pytest.raises(ValueError):
        parse_choice_reference(ref)


def test_mmlu_reward_values_and_metrics():
    r = MMLUReward()
    comps = ["Answer: A", "B", "The answer is C", "I think (A) or (B)", "Answer: D"]
    refs = [
        {"answer": 0, "subject": "anatomy"},
        {"answer": "B", "subject": "anatomy"},
        {"answer": 0, "subject": "virology"},
        0,
        3,
    ]
    out = r(comps, refs)
    assert out.dtype == np.float32 and out.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert r.metrics(comps, refs, out) == {"accuracy": 0.6, "accuracy/anatomy": 1.0, "accuracy/virology": 0.0}
    assert MMLUReward(correct=1.0, incorrect=-1.0)(["A", "B"], [0, 0]).tolist() == [1.0, -1.0]
    assert r.metrics([], [], np.zeros(0)) == {}


def test_mmlu_reward_uses_option_texts_from_reference():
    ref = {"answer": 3, "choice0": "red", "choice1": "green", "choice2": "blue", "choice3": "yellow"}
    assert MMLUReward()(["It is yellow.", "It is blue.", "green or red"], [ref] * 3).tolist() == [1.0, 0.0, 0.0]


def test_mmlu_reward_robustness_and_length_check():
    r = MMLUReward()
    assert r(["", b"\xff\xfe", "\ud800B", "A" * (1 << 20)], [0, 0, 1, 0]).tolist() == [0.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="equal lengths"):
        r(["A"], [0, 1])


def _mmlu_rows(subject: str, split: str = "test") -> list[dict]:
    with open(DATA / "mmlu" / split / f"{subject}_{split}.csv", encoding="utf-8", newline="") as f:
        return [dict(row, subject=subject) for row in csv.DictReader(f)]


@needs_data
def test_real_mmlu_rows_letters_and_option_texts():
    rows = _mmlu_rows("anatomy")[:40] + _mmlu_rows("virology")[:40]
    letters = ["ABCD"[int(row["answer"])] for row in rows]
    r = MMLUReward()
    assert r([f"The answer is {x}." for x in letters], rows).tolist() == [1.0] * len(rows)
    wrong = ["ABCD"[(int(row["answer"]) + 1) % 4] for row in rows]
    assert r([f"Answer: {x}" for x in wrong], rows).tolist() == [0.0] * len(rows)
    # The gold option's own text picks it, unless another option is the same text.
    gold_texts = [row[f"choice{row['answer']}"] for row in rows]
    unique = [
        sum(row[f"choice{i}"].strip().casefold() == t.strip().casefold() for i in range(4)) == 1
        for row, t in zip(rows, gold_texts)
    ]
    got = r(gold_texts, rows)
    assert got[np.array(unique)].tolist() == [1.0] * sum(unique)
    m = r.metrics([f"({x})" for x in letters[:40]] + ["no idea"] * 40, rows, got)
    assert m == {"accuracy": 0.5, "accuracy/anatomy": 1.0, "accuracy/virology": 0.0}


@needs_data
def test_real_mmlu_dev_answers_parse_for_all_subjects():
    files = sorted((DATA / "mmlu" / "dev").glob("*_dev.csv"))
    assert len(files) == 57
    for f in files:
        for row in _mmlu_rows(f.name[: -len("_dev.csv")], "dev"):
            gold, choices, subject = parse_choice_reference(row)
            assert 0 <= gold <= 3 and len(choices) == 4 and subject
