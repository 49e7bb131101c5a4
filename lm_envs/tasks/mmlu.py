"""Four-option multiple choice: MMLU (57 subjects, English) and MMMLU (its test set translated).

`mmlu_task` builds both (``language="en"`` reads ``cais/mmlu``, any `MMMLU_LANGUAGES` code
``openai/MMMLU``), with optional same-subject dev shots; `format_mmlu_question` is the one
question format, shots included. May import `rewards` and `lm_envs.tasks.base`; never
`policies` or `agents`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lm_envs.tasks.base import RewardFn, Task, _build, _check_split, _limit, make_reward, validate_rows
from rewards.data import DATA_DIR_ENV, load_from_hub, local_file, resolve_data_dir

__all__ = ["MMLU_SUBJECTS", "MMMLU_LANGUAGES", "format_mmlu_question", "load_mmlu", "load_mmmlu", "mmlu_task"]

MMLU_SUBJECTS = (
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
)
# openai/MMMLU configs (its test split only), by short code; the config names are accepted too.
MMMLU_LANGUAGES = {
    "ar": "AR_XY",
    "bn": "BN_BD",
    "de": "DE_DE",
    "es": "ES_LA",
    "fr": "FR_FR",
    "hi": "HI_IN",
    "id": "ID_ID",
    "it": "IT_IT",
    "ja": "JA_JP",
    "ko": "KO_KR",
    "pt": "PT_BR",
    "sw": "SW_KE",
    "yo": "YO_NG",
    "zh": "ZH_CN",
}
LETTERS = "ABCD"


def format_mmlu_question(row: dict[str, Any], with_answer: bool = False) -> str:
    """``question``, the options as ``A. ...`` to ``D. ...``, then ``Answer:`` (plus `` X`` for a shot)."""
    lines = [str(row["question"]).strip()]
    lines += [f"{LETTERS[i]}. {str(choice).strip()}" for i, choice in enumerate(row["choices"])]
    lines.append("Answer:" + (f" {LETTERS[int(row['answer'])]}" if with_answer else ""))
    return "\n".join(lines)


def _mmlu_row_ok(row: dict[str, Any]) -> bool:
    choices = row["choices"]
    return (
        len(choices) == 4
        and all(str(c).strip() for c in choices)
        and 0 <= int(row["answer"]) < len(choices)
        and not isinstance(row["answer"], bool)
    )


def _read_mmlu_csv(path: Path, subject: str) -> list[Any]:
    rows: list[Any] = []
    with open(path, newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            try:
                rows.append(
                    {
                        "question": record["question"],
                        "subject": subject,
                        "choices": [record[f"choice{i}"] for i in range(4)],
                        "answer": int(str(record["answer"]).strip()),
                    }
                )
            except (KeyError, TypeError, ValueError):  # missing column, non-numeric answer
                rows.append(None)
    return rows


def _local_mmlu_subjects(local: Path, split: str) -> list[str]:
    folder = local_file(local, "mmlu", split)
    return sorted(p.name[: -len(f"_{split}.csv")] for p in folder.glob(f"*_{split}.csv"))


def _pick_subjects(subjects: str | Sequence[str] | None, available: Sequence[str]) -> list[str]:
    if subjects is None:
        return list(available)
    wanted = [subjects] if isinstance(subjects, str) else list(subjects)
    unknown = [s for s in wanted if s not in available]
    if unknown or not wanted:
        raise ValueError(f"unknown MMLU subject(s) {unknown or wanted}; subjects: {list(available)}")
    return wanted


def load_mmlu(split: str, subjects: Sequence[str] | str | None, data_dir: str | None) -> list[Any]:
    """English MMLU rows ``{"question", "choices", "answer", "subject"}`` of the chosen subjects."""
    local = resolve_data_dir(data_dir)
    if local is not None:
        _check_split("MMLU (local data)", split, ("test", "dev"), "; the hub's cais/mmlu also has 'validation'")
        chosen = _pick_subjects(subjects, _local_mmlu_subjects(local, split))
        return [row for s in chosen for row in _read_mmlu_csv(local / "mmlu" / split / f"{s}_{split}.csv", s)]
    _check_split("MMLU", split, ("test", "dev", "validation"))
    chosen = set(_pick_subjects(subjects, MMLU_SUBJECTS))

    def from_hub():
        import datasets

        for row in datasets.load_dataset("cais/mmlu", "all", split=split):
            if row["subject"] in chosen:
                yield {k: row[k] for k in ("question", "choices", "answer", "subject")}

    return load_from_hub(from_hub, f"cais/mmlu (all, {split})")


def load_mmmlu(language: str, subjects: Sequence[str] | str | None, data_dir: str | None) -> list[Any]:
    """Translated MMLU test rows from ``openai/MMMLU``, or a local ``mmmlu/test/mmlu_XX-YY.csv``."""
    config = MMMLU_LANGUAGES.get(language, language)
    if config not in MMMLU_LANGUAGES.values():
        raise ValueError(f"MMLU has no language {language!r}; languages: ['en', *{sorted(MMMLU_LANGUAGES)}]")
    local = resolve_data_dir(data_dir)
    local_path = local / "mmmlu" / "test" / f"mmlu_{config.replace('_', '-')}.csv" if local is not None else None
    chosen = set(_pick_subjects(subjects, MMLU_SUBJECTS))

    def convert(record: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return {
                "question": record["Question"],
                "choices": [record[x] for x in LETTERS],
                "answer": LETTERS.index(str(record["Answer"]).strip()),
                "subject": record["Subject"],
            }
        except (KeyError, ValueError, TypeError):
            return None

    if local_path is not None and local_path.exists():  # same file layout as the hub repository
        with open(local_path, newline="", encoding="utf-8") as handle:
            rows = [convert(r) for r in csv.DictReader(handle)]
    else:

        def from_hub():
            import datasets

            return datasets.load_dataset("openai/MMMLU", config, split="test")

        try:
            rows = [convert(r) for r in load_from_hub(from_hub, f"openai/MMMLU ({config}, test)")]
        except ConnectionError as err:
            raise ConnectionError(
                f"{err} Non-English MMLU is not in the reference data: put the hub file at "
                f"DATA_DIR/mmmlu/test/mmlu_{config.replace('_', '-')}.csv and pass data_dir=DATA_DIR "
                f"or set {DATA_DIR_ENV}=DATA_DIR."
            ) from err.__cause__
    return [r for r in rows if r is None or r["subject"] in chosen]


def mmlu_task(
    split: str = "test",
    subjects: str | Sequence[str] | None = None,
    k_shot: int = 0,
    language: str = "en",
    data_dir: str | None = None,
    reward: RewardFn | str | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    limit: int | None = None,
    on_bad_row: str = "skip",
    **task_kwargs: Any,
) -> Task:
    """MMLU: 57 subjects of four-option multiple choice.

    Data: local ``mmlu/{test,dev}/<subject>_{split}.csv`` (header ``question,choice0..3,answer``),
    else hub ``cais/mmlu`` ("all"; also has ``validation``). ``subjects=``: one name or a list
    (default all). ``language=``: "en", or an `MMMLU_LANGUAGES` code for ``openai/MMMLU`` (test
    split only, no shots; offline it needs ``mmmlu/test/mmlu_XX-YY.csv`` in the data dir).

    Prompt (the user message, via the tokenizer's chat template when it has one)::

        The following are multiple choice questions (with answers) about <subject>.

        <k_shot solved dev examples of the same subject, each ending "Answer: X", blank-line separated>

        <question>
        A. <choice 0>
        B. <choice 1>
        C. <choice 2>
        D. <choice 3>
        Answer:

    Shots are the first ``k_shot`` (0-5) dev rows of the subject, never the row itself.
    Reference: ``{"answer": index, "choices": [...], "subject": ..., "question": ...}``.
    Reward: ``rewards.make("mmlu")``; its metrics include ``accuracy/<subject>``.
    """
    if not 0 <= int(k_shot) <= 5:
        raise ValueError(f"k_shot must be in 0..5 (MMLU has 5 dev examples per subject), got {k_shot}")
    check = _mmlu_row_ok
    if language == "en":
        rows = validate_rows(
            load_mmlu(split, subjects, data_dir), ("question", "choices", "subject"), f"mmlu_{split}", on_bad_row, check
        )
    else:
        _check_split("MMMLU", split, ("test",))
        if k_shot:
            raise ValueError("openai/MMMLU has no dev split to draw shots from; use k_shot=0 with language != 'en'")
        rows = validate_rows(
            load_mmmlu(language, subjects, data_dir),
            ("question", "choices", "subject"),
            f"mmmlu_{language}",
            on_bad_row,
            check,
        )
    shots: dict[str, list[dict[str, Any]]] = {}
    if k_shot:
        dev = (
            rows
            if split == "dev"
            else validate_rows(
                load_mmlu("dev", sorted({r["subject"] for r in rows}), data_dir),
                ("question", "choices", "subject"),
                "mmlu_dev",
                on_bad_row,
                check,
            )
        )
        for row in dev:
            shots.setdefault(row["subject"], []).append(row)

    def question(row: dict[str, Any]) -> str:
        subject = row["subject"].replace("_", " ")
        examples = [s for s in shots.get(row["subject"], []) if s is not row][: int(k_shot)]
        parts = [f"The following are multiple choice questions (with answers) about {subject}."]
        parts += [format_mmlu_question(s, with_answer=True) for s in examples]
        parts.append(format_mmlu_question(row))
        return "\n\n".join(parts)

    def reference(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "answer": int(row["answer"]),
            "choices": list(row["choices"]),
            "subject": row["subject"],
            "question": row["question"],
        }

    return _build(
        _limit(rows, limit),
        question,
        reference,
        make_reward(reward, "mmlu", reward_kwargs),
        "mmlu" if language == "en" else f"mmmlu_{language}",
        {"split": split, "language": language, "k_shot": int(k_shot), "subjects": sorted({r["subject"] for r in rows})},
        task_kwargs,
    )
