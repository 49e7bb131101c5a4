"""GSM8K / MGSM rewards: answer extraction, reference parsing, format check, real data rows."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from rewards.math import (
    GSM8KFormatReward,
    GSM8KReward,
    MGSMReward,
    extract_answer,
    format_ok,
    normalize_digits,
    parse_reference,
)

DATA = Path(os.environ.get("LM_ENVS_DATA_DIR", Path(__file__).resolve().parents[1] / "../shared/data"))
needs_data = pytest.mark.skipif(not (DATA / "gsm8k").is_dir(), reason=f"no data dir at {DATA}")
MGSM_LANGS = ["bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"]


def in_script(number: str, zero: int) -> str:
    """ASCII digits rewritten in the script whose digit zero is `zero`."""
    return "".join(chr(zero + int(c)) if c.isdigit() else c for c in number)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("#### 18", 18.0),
        ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", 18.0),
        ("#### 1,450,000", 1450000.0),
        ("#### -10", -10.0),
        ("#### $ 42", 42.0),
        ("The answer is 1,234.", 1234.0),
        ("the ANSWER IS 7", 7.0),
        ("Answer: 12", 12.0),
        ("answer = 3.5", 3.5),
        ("The answer is $\\boxed{72}$.", 72.0),
        ("\\boxed{-4}", -4.0),
        ("It costs $5", 5.0),
        ("-$7 is the loss", -7.0),
        ("She spent 12 dollars", 12.0),
        ("The bag weighs 5kg", 5.0),
        ("That is 42.", 42.0),
        ("2.5 hours", 2.5),
        ("3/4 of a pie", 0.75),
        ("The answer is 1/0 or 6", 6.0),  # zero denominator is skipped, next number taken
        ("5 - 3 = 2", 2.0),  # a minus between numbers is not a sign
        ("x-5", 5.0),
        ("50% of them", 50.0),
        ("x² + 5 m²", 5.0),  # superscripts are not digits
        ("12,34", 34.0),  # not a thousands group: two numbers
        ("between 3, 4 and 5", 5.0),
        ("Step 1: 10 apples. Step 2: 20 apples. So 30", 30.0),
        ("The answer is 18. Question: next one. The answer is 20.", 18.0),  # first marker wins
        ("#### 5\n#### 6", 5.0),
        ("The answer is 9 but #### 8", 8.0),  # `####` outranks "answer is"
        ("The answer is unclear.\nWe have 7 left", 7.0),  # marker without a number: fall through
        ("answer isn't 5, it's 6", 6.0),
        ("১৮", 18.0),
        ("๑๘", 18.0),
        ("１８", 18.0),
        ("٤٢", 42.0),
        ("१२", 12.0),
        ("౧౨", 12.0),
        ("Ответ: 1\u00a0000", 1000.0),  # no-break-space thousands
        ("答案是 18", 18.0),
        ("答えは３", 3.0),
        ("La respuesta es 25.", 25.0),
        ("Jibu ni 4", 4.0),
        ("Die Antwort ist 7, nicht 8", 7.0),
        ("คำตอบคือ ๑๒ บาท", 12.0),
        ("-３", -3.0),
        ("１，２３４", 1234.0),
        ("\u22125", -5.0),
        ("no digits here", None),
        ("", None),
        (None, None),
        (b"\xff\xfe 17", 17.0),
        ("\ud800 3", 3.0),
        ("9" * 500, None),  # overflows float: no answer, no crash
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_normalize_digits_keeps_ascii_and_maps_scripts():
    assert normalize_digits("abc 12") == "abc 12"
    assert normalize_digits("০১২৩৪৫৬৭৮৯") == "0123456789"
    assert normalize_digits("๐๑๒๓๔๕๖๗๘๙ ０１２３４５６７８９") == "0123456789 0123456789"


def test_extract_answer_very_long_text_is_fast_enough_and_correct():
    assert extract_answer("blah " * 200_000 + "so #### 7") == 7.0
    assert extract_answer("ক" * 1_000_000 + " 5") == 5.0
    assert extract_answer("x" * 1_000_000) is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text",
    [
        "####" * 200_000,
        "\\boxed{" * 100_000,
        "answer: " * 100_000,
        "1," * 200_000,
        "-$" * 200_000,
        "#### 5" + " " * 50_000 + "x",
        "answer is" + " " * 200_000,
    ],
)
def test_degenerate_text_is_bounded(text):
    start = time.perf_counter()
    extract_answer(text), format_ok(text)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("Janet sells 9 eggs.\n#### 18", 18.0),
        ("5,600", 5600.0),
        ("-3", -3.0),
        (18, 18.0),
        (2.5, 2.5),
        (np.int64(4), 4.0),
        ({"question": "q", "answer": "x\n#### 1,000"}, 1000.0),
    ],
)
def test_parse_reference(ref, expected):
    assert parse_reference(ref) == expected


@pytest.mark.parametrize("ref", ["no number", None, {"question": "q"}, [1]])
def test_parse_reference_rejects_unparseable(ref):
    with pytest.raises(ValueError):
        parse_reference(ref)


@pytest.mark.parametrize(
    "text, ok",
    [
        ("9 * 2 = 18\n#### 18", True),
        ("#### 18", True),
        ("#### 1,450,000.", True),
        ("#### -10", True),
        ("#### $18\n\n", True),
        ("####18", True),
        ("#### 2.5", True),
        ("#### １８", True),
        ("#### 18 dollars", False),
        ("#### 18\nQuestion: next", False),
        ("#### 18\n#### 19", False),
        ("The answer is 18", False),
        ("####", False),
        ("#### eighteen", False),
        ("", False),
    ],
)
def test_format_ok(text, ok):
    assert format_ok(text) is ok


def test_gsm8k_reward_scores_shape_dtype_and_values():
    r = GSM8KReward()
    out = r(["#### 18", "The answer is 17", "", "18.0", "#### 18.00001"], ["#### 18"] * 5)
    assert out.dtype == np.float32 and out.shape == (5,)
    assert out.tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert GSM8KReward(correct=2.0, incorrect=-1.0)(["18", "19"], [18, 18]).tolist() == [2.0, -1.0]
    assert GSM8KReward(tolerance=0.0)(["18.00001"], [18]).tolist() == [0.0]
    assert r([], []).shape == (0,)


def test_gsm8k_reward_length_mismatch_is_clear():
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        GSM8KReward()(["1", "2"], [1])


def test_gsm8k_metrics():
    r = GSM8KReward(correct=5.0)
    comps, refs = ["#### 3", "#### 4", "nothing", "The answer is 6."], [3, 3, 3, 6]
    m = r.metrics(comps, refs, r(comps, refs))
    assert m == {"accuracy": 0.5, "no_answer_frac": 0.25, "format_ok_frac": 0.5}
    assert r.metrics([], [], np.zeros(0)) == {}


def test_robust_inputs_never_crash():
    r = GSM8KReward()
    comps = ["", b"\xc3\x28 #### 4", "\ud83d #### 4", "\x00" * 10, "4" + "\u0301" * 100, "a" * (1 << 20) + " 4"]
    assert r(comps, [4] * len(comps)).tolist() == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]


def test_mgsm_reward_is_gsm8k_logic_with_own_name():
    assert MGSMReward.name == "mgsm" and GSM8KReward.name == "gsm8k"
    assert MGSMReward()(["উত্তর: ১৮", "答案：１９"], ["18", "18"]).tolist() == [1.0, 0.0]


def test_format_reward_is_a_small_bonus():
    r = GSM8KFormatReward()
    assert r.name == "format"
    out = r(["x\n#### 3", "the answer is 3"], None)
    assert out.tolist() == pytest.approx([0.1, 0.0])
    assert GSM8KFormatReward(bonus=1.0)(["#### 3"], [None]).tolist() == [1.0]
    assert r.metrics(["#### 3", "3"], [None, None], out) == {"format_ok_frac": 0.5}


def _gsm8k_rows(split="test"):
    with open(DATA / "gsm8k" / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@needs_data
def test_real_gsm8k_gold_against_itself_and_wrong_number():
    rows = _gsm8k_rows()
    golds = [r["answer"] for r in rows]
    r = GSM8KReward()
    assert r(golds, golds).tolist() == [1.0] * len(rows)
    assert all(format_ok(g) for g in golds)
    wrong = [f"#### {parse_reference(g) + 1:g}" for g in golds[:100]]
    assert r(wrong, golds[:100]).tolist() == [0.0] * 100
    # The reasoning without the final line is scored by its last number, which may be wrong:
    # but it must never raise, and the first row's reasoning ends with the answer (18).
    assert r([golds[0].rsplit("####", 1)[0]], [golds[0]]).tolist() == [1.0]


@needs_data
def test_real_gsm8k_reference_with_commas_and_negatives():
    values = {parse_reference(r["answer"]) for r in _gsm8k_rows("train")}
    assert {850000.0, 2250.0, -47.0} <= values  # "#### 850,000", "#### 2,250", "#### -47"
    assert {1450000.0, -10.0} <= {parse_reference(r["answer"]) for r in _gsm8k_rows("test")}
    assert all(v == int(v) for v in values)  # every GSM8K gold answer is an integer


@needs_data
@pytest.mark.parametrize("lang", MGSM_LANGS)
def test_real_mgsm_rows_all_languages(lang):
    with open(DATA / "mgsm" / f"mgsm_{lang}.tsv", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    assert len(rows) == 250
    refs = [num for _, num in rows]
    r = MGSMReward()
    # Plain ASCII answers and the question-writers' own numbers ("5,600") both parse.
    assert r([f"... #### {n}" for n in refs], refs).tolist() == [1.0] * 250
    zero = {"bn": 0x09E6, "th": 0x0E50, "te": 0x0C66}.get(lang, 0xFF10)
    native = [f"{q[:50]} ... {in_script(n.replace(',', ''), zero)}" for q, n in rows[:20]]
    assert r(native, refs[:20]).tolist() == [1.0] * 20
    assert r([f"#### {parse_reference(n) + 1:g}" for n in refs[:20]], refs[:20]).tolist() == [0.0] * 20
