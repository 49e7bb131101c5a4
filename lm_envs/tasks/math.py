"""Math word problems with a numeric answer: GSM8K and MGSM (its 250 test problems in 11 languages).

Each data set has its loader (`load_gsm8k`, `load_mgsm`) and its builder (`gsm8k_task`,
`mgsm_task`); both prompt with `GSM8K_TEMPLATE`, asking for a final ``#### <number>`` line.
May import `rewards` and `lm_envs.tasks.base`; never `policies` or `agents`.
"""

from __future__ import annotations

from typing import Any

from lm_envs.tasks.base import RewardFn, Task, _build, _check_split, _limit, make_reward, validate_rows
from rewards.data import load_from_hub, local_file, read_jsonl, resolve_data_dir

__all__ = [
    "GSM8K_CALCULATOR_TEMPLATE",
    "GSM8K_TEMPLATE",
    "MGSM_LANGUAGES",
    "gsm8k_calculator_task",
    "gsm8k_task",
    "load_gsm8k",
    "load_mgsm",
    "mgsm_task",
]

# -- GSM8K ---------------------------------------------------------------------------------------
GSM8K_TEMPLATE = "{question}\nSolve step by step. End with the final answer on its own line as '#### <number>'."


def load_gsm8k(split: str = "train", data_dir: str | None = None) -> list[dict[str, Any]]:
    """GSM8K rows ``{"question", "answer"}``; the answer ends with ``#### N``."""
    if split not in ("train", "test"):
        raise ValueError(f"GSM8K has splits 'train' and 'test', not {split!r}")
    local = resolve_data_dir(data_dir)
    if local is not None:
        return read_jsonl(local_file(local, "gsm8k", f"{split}.jsonl"), lenient=True)

    def from_hub():
        import datasets

        return datasets.load_dataset("openai/gsm8k", "main", split=split)

    return load_from_hub(from_hub, f"openai/gsm8k ({split})")


def _numeric_gold(row: dict[str, Any]) -> bool:
    from rewards.math import parse_reference

    parse_reference(row["answer"])  # raises ValueError when there is no number
    return True


def gsm8k_task(
    split: str = "train",
    data_dir: str | None = None,
    reward: RewardFn | str | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    prompt_template: str = GSM8K_TEMPLATE,
    limit: int | None = None,
    on_bad_row: str = "skip",
    **task_kwargs: Any,
) -> Task:
    """GSM8K (``openai/gsm8k``, local ``gsm8k/{train,test}.jsonl``); splits train and test.

    Prompt: ``GSM8K_TEMPLATE``, i.e. the question, then "Solve step by step. End with the final
    answer on its own line as '#### <number>'.", through the tokenizer's chat template when it
    has one. Reference: the GSM8K answer text (ends with ``#### N``). Reward: ``rewards.make("gsm8k")``.
    """
    rows = validate_rows(load_gsm8k(split, data_dir), ("question", "answer"), "gsm8k", on_bad_row, _numeric_gold)
    if limit is not None:
        rows = rows[:limit]
    return Task(
        questions=[row["question"] for row in rows],
        references=[row["answer"] for row in rows],
        reward=make_reward(reward, "gsm8k", reward_kwargs),
        name="gsm8k",
        prompt_template=prompt_template,
        **{"metadata": {"split": split}, **task_kwargs},
    )


GSM8K_CALCULATOR_TEMPLATE = (
    "{question}\nSolve step by step. A calculator is available: write <<expression= and the result is "
    "filled in, as in <<48/2=24>>. End with the final answer on its own line as '#### <number>'."
)


def gsm8k_calculator_task(
    split: str = "train", prompt_template: str = GSM8K_CALCULATOR_TEMPLATE, **kwargs: Any
) -> Task:
    """GSM8K with GSM8K's own calculator annotations as a tool (``lm_envs/GSM8KCalculator-v0``).

    When the model's text ends with ``<<expression=``, the env injects ``result>>`` inline (see
    `lm_envs.tasks.tools.calculator`: safe arithmetic, never ``eval``). If the model's own token
    already carries characters after the ``=``, nothing is injected: it chose to compute itself.
    Same data, splits and reward as `gsm8k_task` (the reward reads the whole completion, injected
    results included); the prompt says how to call the calculator.
    """
    from lm_envs.tasks.tools import calculator

    task = gsm8k_task(split, prompt_template=prompt_template, **kwargs)
    task.tools, task.name = (calculator,), "gsm8k-calculator"
    return task


# -- MGSM ----------------------------------------------------------------------------------------
MGSM_LANGUAGES = ("en", "de", "es", "fr", "ru", "zh", "ja", "th", "sw", "bn", "te")


def _is_number(text: Any) -> bool:
    float(str(text).strip().replace(",", ""))  # raises ValueError on a non-numeric gold answer
    return True


def load_mgsm(language: str = "en", data_dir: str | None = None) -> list[Any]:
    """MGSM rows ``{"question", "answer"}`` (answer: the number as text); a malformed line is ``None``."""
    local = resolve_data_dir(data_dir)
    if local is not None:
        rows: list[Any] = []
        with open(local_file(local, "mgsm", f"mgsm_{language}.tsv"), encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                fields = line.rstrip("\r\n").split("\t")
                rows.append({"question": fields[0], "answer": fields[1].strip()} if len(fields) == 2 else None)
        return rows

    def from_hub():
        import datasets

        for row in datasets.load_dataset("juletxara/mgsm", language, split="test"):
            number = row.get("answer_number")
            yield {"question": row["question"], "answer": None if number is None else str(number)}

    return load_from_hub(from_hub, f"juletxara/mgsm ({language}, test)")


def mgsm_task(
    split: str = "test",
    language: str = "en",
    data_dir: str | None = None,
    reward: RewardFn | str | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    prompt_template: str = GSM8K_TEMPLATE,
    limit: int | None = None,
    on_bad_row: str = "skip",
    **task_kwargs: Any,
) -> Task:
    """MGSM: 250 GSM8K test problems in 11 languages (``language=``, see `MGSM_LANGUAGES`).

    Data: local ``mgsm/mgsm_{language}.tsv`` (``question<TAB>number``, no header), else hub
    ``juletxara/mgsm``. Only a ``test`` split exists. Prompt: the question in its language
    followed by the GSM8K instruction (English, asking for a final ``#### <number>`` line), via
    the tokenizer's chat template when it has one. Reference: the gold number as text.
    Reward: ``rewards.make("mgsm")`` (numeric match; reads non-ASCII digits too).
    """
    if language not in MGSM_LANGUAGES:
        raise ValueError(f"MGSM has no language {language!r}; languages: {list(MGSM_LANGUAGES)}")
    _check_split("MGSM", split, ("test",), " (MGSM is an evaluation set; train on lm_envs/GSM8K-v0)")
    rows = validate_rows(
        load_mgsm(language, data_dir),
        ("question", "answer"),
        f"mgsm_{language}",
        on_bad_row,
        check=lambda row: _is_number(row["answer"]),
    )
    return _build(
        _limit(rows, limit),
        lambda r: r["question"],
        lambda r: r["answer"],
        make_reward(reward, "mgsm", reward_kwargs),
        f"mgsm_{language}",
        {"split": split, "language": language},
        task_kwargs,
        prompt_template=prompt_template,
    )
