"""Multiple-choice (MMLU) rewards: find which option letter a completion picked.

Ambiguity policy of `extract_choice`, first rule that fires wins:

1. Explicit marker: the first "answer is X" / "Answer: X" / "correct option is X" (marker
   case-insensitive; "(X)", "**X**", "option X" after it are fine). A lowercase letter counts
   only when nothing but punctuation or the end follows it ("answer: b." yes, "the answer
   is a bit..." no); a marker without a valid letter is skipped.
2. A leading standalone letter: "B", "(B)", "B)", "B.", "B:", "**B**", "[B]", "B is ...".
   "A good idea" is prose, not a letter: an uppercase letter followed by a plain word is skipped.
3. The completion equals one option's text (case/space-insensitive) -> that option.
4. Letter mentions elsewhere: "(B)", "B)", "**B**", "[B]", "option B", "choice B", or a
   standalone capital followed by punctuation, the end or " is" ("so it's C."). Exactly one
   distinct letter -> it; several distinct letters -> None (counted wrong).
5. The completion contains exactly one option's text (options that are substrings of another
   found option are dropped: the longer, more specific one wins) -> that option.
6. Otherwise None.

References: an int index, a letter "A".., a digit string "0".., or a dict record with
"answer" (and optional "choices" list or "choice0".."choice3", and "subject").
Imports: standard library, numpy, `rewards.base`.
"""

from __future__ import annotations

import functools
import operator
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from rewards.base import Reward, as_text

LETTERS = "ABCDEFGHIJ"
# Bounded repeats throughout: adjacent unbounded `\s*` runs backtrack quadratically on long text.
_END = r"(?=\s{0,8}(?:[.,;:!?)\]*\"'`]|$))"  # only punctuation or the end follows


@functools.cache
def _patterns(n: int) -> dict[str, re.Pattern[str]]:
    up, low = LETTERS[:n], LETTERS[:n].lower()
    letter = rf"(?:(?P<up>[{up}])(?![A-Za-z0-9])|(?P<low>[{low}]){_END})"
    wrap = r"[\s:*(\[\"'`]{0,8}(?:(?i:option|choice|letter)\b[\s(\[*\"'`]{0,8})?"
    return {
        "marker": re.compile(
            r"(?i:answer\s{0,8}(?:is\b|:|=)|correct\s{1,8}(?:option|choice)\s{0,8}(?:is\b|:|=))" + wrap + letter
        ),
        "leading": re.compile(
            rf"\s*(?:(?:\*\*|[(\[])[ \t]{{0,2}})?(?:(?P<up>[{up}])(?=[ \t]{{0,8}}(?:[.:)\]*\n]|$)|\s{{1,8}}is\b)"
            rf"|(?P<low>[{low}]){_END})"
        ),
        "mention": re.compile(
            rf"\((?P<a>[{up}{low}])\)|\[(?P<b>[{up}])\]|\*\*(?P<c>[{up}])\*\*"
            rf"|(?<![A-Za-z0-9(])(?P<d>[{up}])\)|(?i:option|choice)\s{{1,8}}(?P<e>[{up}])(?![A-Za-z0-9])"
            rf"|(?<![A-Za-z0-9'’-])(?P<f>[{up}])(?=[ \t]{{0,8}}(?:[.,;:!?\]\n]|$)|\s{{1,8}}is\b)"
        ),
    }


def _norm(s: str) -> str:
    return " ".join(s.casefold().split()).rstrip(".")


def _from_option_text(text: str, choices: Sequence[str], exact_only: bool) -> int | None:
    t = _norm(text)
    opts = [_norm(as_text(c)) for c in choices]
    exact = {i for i, o in enumerate(opts) if o and o == t}
    if exact_only:
        return exact.pop() if len(exact) == 1 else None
    found = {i for i, o in enumerate(opts) if o and re.search(rf"(?<!\w){re.escape(o)}(?!\w)", t)}
    # "paralysis" inside "paralysis and loss of taste": the longer, more specific option wins.
    found = {i for i in found if not any(opts[i] != opts[j] and opts[i] in opts[j] for j in found)}
    return found.pop() if len(found) == 1 else None


def extract_choice(text: str | bytes | None, choices: Sequence[str] | None = None, n_choices: int = 4) -> int | None:
    """Index (0-based) of the option a completion picked, or None; see the module docstring
    for the ambiguity policy. `choices` (option texts) also fixes the number of options."""
    text = as_text(text).rstrip()
    n = len(choices) if choices else n_choices
    if not 1 <= n <= len(LETTERS):
        raise ValueError(f"need 1..{len(LETTERS)} options, got {n}")
    pats = _patterns(n)

    def idx(m: re.Match[str]) -> int:
        return LETTERS.index(next(g for g in m.groups() if g).upper())

    if (m := pats["marker"].search(text)) is not None:
        return idx(m)
    if (m := pats["leading"].match(text)) is not None:
        return idx(m)
    if choices and (i := _from_option_text(text, choices, exact_only=True)) is not None:
        return i
    mentioned = {idx(m) for m in pats["mention"].finditer(text)}
    if mentioned:
        return mentioned.pop() if len(mentioned) == 1 else None
    return _from_option_text(text, choices, exact_only=False) if choices else None


def parse_choice_reference(ref: Any, n_choices: int = 4) -> tuple[int, list[str] | None, str | None]:
    """(gold index, option texts or None, subject or None) from any supported reference form."""
    choices, subject = None, None
    if isinstance(ref, dict):
        if "answer" not in ref:
            raise ValueError(f"MMLU reference dict has no 'answer' field: keys {sorted(ref)}")
        if ref.get("choices") is not None:
            choices = [as_text(c) for c in ref["choices"]]
        elif "choice0" in ref:
            choices = [as_text(ref[f"choice{i}"]) for i in range(len(LETTERS)) if f"choice{i}" in ref]
        subject = ref.get("subject") or None
        ref = ref["answer"]
    n = len(choices) if choices else n_choices
    if isinstance(ref, str):
        r = ref.strip()
        if r.isdigit():
            ref = int(r)
        elif len(r) == 1 and r.upper() in LETTERS[:n]:
            return LETTERS.index(r.upper()), choices, subject
    if not isinstance(ref, bool):
        try:
            i = operator.index(ref)  # int, numpy integer
        except TypeError:
            i = None
        if i is not None and 0 <= i < n:
            return i, choices, subject
    raise ValueError(f"cannot parse an answer index/letter (0..{n - 1} or A..{LETTERS[n - 1]}) from {ref!r:.200}")


class MMLUReward(Reward):
    """`correct` when `extract_choice` picks the reference's option, else `incorrect`."""

    name = "mmlu"

    def __init__(self, correct: float = 1.0, incorrect: float = 0.0, n_choices: int = 4):
        self.correct, self.incorrect, self.n_choices = float(correct), float(incorrect), n_choices

    def _judge(self, completion: str, reference: Any) -> tuple[bool, str | None]:
        gold, choices, subject = parse_choice_reference(reference, self.n_choices)
        return extract_choice(completion, choices, self.n_choices) == gold, subject

    def score(self, completions: list[str], references: list[Any], prompts: list[str] | None) -> list[float]:
        return [self.correct if self._judge(c, r)[0] else self.incorrect for c, r in zip(completions, references)]

    def metrics(self, completions: Sequence[str], references: Sequence[Any], scores: np.ndarray) -> dict[str, float]:
        """`accuracy`, plus `accuracy/<subject>` for references that carry a subject."""
        if len(completions) == 0:
            return {}
        judged = [self._judge(as_text(c), r) for c, r in zip(completions, references)]
        out = {"accuracy": float(np.mean([ok for ok, _ in judged]))}
        per_subject: dict[str, list[bool]] = defaultdict(list)
        for ok, subject in judged:
            if subject:
                per_subject[subject].append(ok)
        out.update({f"accuracy/{s}": float(np.mean(v)) for s, v in sorted(per_subject.items())})
        return out
