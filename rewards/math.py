"""Numeric-answer rewards for GSM8K and MGSM, plus a `#### N` format check.

`extract_answer` pulls the final number out of free text; `parse_reference` reads a gold
answer; `GSM8KReward`/`MGSMReward` compare the two numerically; `GSM8KFormatReward` is a
small bonus term for well-formed answers. Imports: standard library, numpy, `rewards.base`.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

from rewards.base import Reward, as_text

# Look-alike punctuation seen in model output and MGSM languages, mapped to ASCII.
_PUNCT = str.maketrans(
    {
        "\u2212": "-",  # minus sign
        "\uff0d": "-",  # full-width hyphen-minus
        "\uff0c": ",",  # full-width comma
        "\u066c": ",",  # Arabic thousands separator
        "\uff0e": ".",  # full-width full stop
        "\u066b": ".",  # Arabic decimal separator
        "\uff04": "$",  # full-width dollar
        "\uff1a": ":",  # full-width colon
        "\uff03": "#",  # full-width number sign
    }
)
_NON_ASCII_DIGIT = re.compile(r"(?![0-9])\d")  # `\d` on str is Unicode category Nd

# A number: optional sign/`$`, digits with well-formed thousands commas (or the no-break/thin
# spaces French and Russian use; plain spaces are too ambiguous), optional decimals or
# a `/denominator`. The sign only counts when not glued to a preceding token ("5-3").
_NUMBER = re.compile(
    r"(?:(?P<neg>(?<![0-9A-Za-z)\]])-)\s?)?\$?\s?"
    r"(?P<int>[0-9]{1,3}(?:(?:,[0-9]{3})+|(?:[\u00a0\u202f\u2009][0-9]{3})+)|[0-9]+)"
    r"(?:\.(?P<frac>[0-9]+)|/(?P<den>[0-9]+)(?![0-9.,]))?"
)
# Explicit final-answer markers, in priority order; the number must follow on the same line.
_HASH_MARK = re.compile(r"####")
_BOXED_MARK = re.compile(r"\\boxed\s*\{")
_ANSWER_MARK = re.compile(
    r"(?:answer|antwort|respuesta|r[ée]ponse|ответ|答案|答え|คำตอบ|jibu|উত্তর|సమాధానం)"
    r"\s*(?:is\b|ist\b|es\b|est\b|ni\b|是|は|คือ|:|=)",
    re.IGNORECASE,
)
_WINDOW = 40  # characters after a marker searched for its number
_MAX_MARKERS = 32  # markers tried per kind: bounds the work on degenerate "####" floods
_FORMAT_LINE = re.compile(r"####[ \t]{0,8}-?\$?[0-9][0-9,]*(?:\.[0-9]+)?(?:[ \t]{0,8}\.)?")  # on a stripped line


def normalize_digits(text: str) -> str:
    """Map every Unicode decimal digit (Bengali, Thai, Devanagari, full-width, Arabic-Indic...)
    and look-alike punctuation to ASCII. Uses `unicodedata.decimal`, not `.digit`, so that
    superscripts ("m²") and circled numbers are not mistaken for answers."""
    if text.isascii():
        return text
    text = _NON_ASCII_DIGIT.sub(lambda m: str(unicodedata.decimal(m.group(), 0)), text)
    return text.translate(_PUNCT)


def _to_float(m: re.Match[str]) -> float | None:
    try:
        value = float(re.sub(r"[^0-9]", "", m["int"]) + ("." + m["frac"] if m["frac"] else ""))
        if m["den"]:
            den = int(m["den"])
            if den == 0:
                return None
            value /= den
    except (OverflowError, ValueError):
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return -value if m["neg"] else value


def _number_after(text: str, marker: re.Pattern[str]) -> float | None:
    """First number within `_WINDOW` chars (same line) after the first of up to `_MAX_MARKERS`
    markers that has one."""
    for mark in itertools.islice(marker.finditer(text), _MAX_MARKERS):
        # Slack past the window so a long number starting inside it is not cut.
        window = text[mark.end() : mark.end() + _WINDOW + 32].split("\n", 1)[0]
        num = _NUMBER.search(window)
        if num is not None and num.start() <= _WINDOW and (value := _to_float(num)) is not None:
            return value
    return None


def extract_answer(text: str | bytes | None) -> float | None:
    """The final numeric answer in `text`, or None if it has no number.

    Order: the first `#### N`; else the first `\\boxed{N}`; else the first "answer is N" /
    "answer: N" (case-insensitive, also the MGSM languages' words for "answer"); else the last
    number anywhere. Handles "1,234", "$5", "12 dollars", "5kg", "-3", "2.5", "42.", "3/4"
    and non-ASCII digits.
    """
    text = normalize_digits(as_text(text))
    for marker in (_HASH_MARK, _BOXED_MARK, _ANSWER_MARK):
        value = _number_after(text, marker)
        if value is not None:
            return value
    for num in reversed(list(_NUMBER.finditer(text))):  # convert from the end only
        if (value := _to_float(num)) is not None:
            return value
    return None


def parse_reference(ref: Any) -> float:
    """Gold answer as a float: a GSM8K answer text ending in `#### N`, a number string, an
    int/float, or a dict with an "answer" field. Raises ValueError if there is no number."""
    if isinstance(ref, dict):
        if "answer" not in ref:
            raise ValueError(f"reference dict has no 'answer' field: keys {sorted(ref)}")
        return parse_reference(ref["answer"])
    if isinstance(ref, (int, float, np.number)) and not isinstance(ref, bool):
        return float(ref)
    if isinstance(ref, (str, bytes)):
        value = extract_answer(ref)
        if value is not None:
            return value
    raise ValueError(f"cannot parse a numeric reference from {ref!r:.200}")


def format_ok(text: str | bytes | None) -> bool:
    """True for a well-formed GSM8K answer: exactly one `####`, followed on its line by just a
    number (optional `$`, thousands commas, decimals, a trailing period), and that line is the
    last non-blank line of the text."""
    text = normalize_digits(as_text(text)).rstrip()
    if text.count("####") != 1:
        return False
    last_line = text.rsplit("\n", 1)[-1].strip()
    return _FORMAT_LINE.fullmatch(last_line) is not None


class GSM8KReward(Reward):
    """`correct` if the completion's extracted answer equals the reference within
    `tolerance` (absolute), else `incorrect` (also when no number is found)."""

    name = "gsm8k"

    def __init__(self, correct: float = 1.0, incorrect: float = 0.0, tolerance: float = 1e-4):
        self.correct, self.incorrect, self.tolerance = float(correct), float(incorrect), float(tolerance)

    def is_correct(self, completion: str, reference: Any) -> bool:
        pred = extract_answer(completion)
        return pred is not None and abs(pred - parse_reference(reference)) <= self.tolerance

    def score(self, completions: list[str], references: list[Any], prompts: list[str] | None) -> list[float]:
        return [self.correct if self.is_correct(c, r) else self.incorrect for c, r in zip(completions, references)]

    def metrics(self, completions: Sequence[str], references: Sequence[Any], scores: np.ndarray) -> dict[str, float]:
        if len(completions) == 0:
            return {}
        texts = [as_text(c) for c in completions]
        return {
            "accuracy": float(np.mean([self.is_correct(c, r) for c, r in zip(texts, references)])),
            "no_answer_frac": float(np.mean([extract_answer(c) is None for c in texts])),
            "format_ok_frac": float(np.mean([format_ok(c) for c in texts])),  # a well-formed '#### N' line
        }


class MGSMReward(GSM8KReward):
    """GSM8K logic for the multilingual MGSM set (references are bare number strings)."""

    name = "mgsm"


class GSM8KFormatReward(Reward):
    """Small bonus for a well-formed `#### N` answer (see `format_ok`); ignores references."""

    name = "format"

    def __init__(self, bonus: float = 0.1):
        self.bonus = float(bonus)

    def score(self, completions: list[str], references: list[Any], prompts: list[str] | None) -> list[float]:
        return [self.bonus if format_ok(c) else 0.0 for c in completions]

    def metrics(self, completions: Sequence[str], references: Sequence[Any], scores: np.ndarray) -> dict[str, float]:
        return {"format_ok_frac": float(np.mean([format_ok(c) for c in completions]))} if len(completions) else {}
