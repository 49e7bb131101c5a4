"""Reference solutions of the code tasks' training problems, and a discriminator's labelled data.

A discriminator (`agents.Discriminator`) learns to tell a reference solution from the policy's
sample on the same prompt, in the same language. The references, per task:

* ``humaneval-cpp``, ``humaneval-java``: the canonical solutions of HumanEval-X (CodeGeeX,
  ``humaneval-x-solutions/humaneval_{cpp,java}.jsonl.gz`` in the data dir), matched to our
  MultiPL-E problems by their HumanEval number (``CPP/23`` ↔ ``HumanEval_23_strlen``); bodies
  only (up to the brace that closes the function, as a completion ends before the stop token),
  with C++'s unqualified standard names qualified (``vector<`` → ``std::vector<``) since
  MultiPL-E prompts have no ``using namespace std``;
* ``mbpp``: the record's own ``code``, in a ```python fence as the model answers.

Held-out problems never train it: `held_out_keys` are the problems of every split but
``train`` (``held_out`` of HumanEval-X, ``test``/``validation``/``prompt`` of MBPP), and
`discriminator_examples` raises on a sample of one. Only the problems of one task (one
language) go in. May import `rewards` and `lm_envs.tasks`; never `policies` or `agents`.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rewards.data import MBPP_SPLITS, load_mbpp, resolve_data_dir
from rewards.degenerate import body_end

LANGUAGE_OF_TASK = {"humaneval-cpp": "cpp", "humaneval-java": "java", "mbpp": "python"}
SOLUTIONS_DIR = "humaneval-x-solutions"
_NUMBER = re.compile(r"HumanEval_(\d+)_")
_STD_NAMES = re.compile(r"(?<![:\w])(vector|string|map|set|pair|tuple|unordered_map|unordered_set|make_pair)\b")
# What a constant body looks like in each language: the synthetic negatives of `degenerate_negatives`.
DEGENERATE_BODIES = {
    "cpp": ("    return 0;", "    return false;", "    return {};", '    return "";'),
    "java": (
        "        return 0l;",
        "        return false;",
        "        return null;",
        "        return new ArrayList<>();",
    ),
    "python": ("return 0", "return None", "return []", 'return ""'),
}


def language_of(task_name: str) -> str:
    """The language of a code task (its reward's name: ``humaneval-cpp``, ``humaneval-java``, ``mbpp``)."""
    if task_name not in LANGUAGE_OF_TASK:
        raise ValueError(
            f"no reference solutions for task {task_name!r}; a discriminator needs one of {sorted(LANGUAGE_OF_TASK)}"
        )
    return LANGUAGE_OF_TASK[task_name]


def problem_key(record: Mapping[str, Any]) -> int:
    """The problem's number: HumanEval's for a MultiPL-E record, MBPP's ``task_id``."""
    if isinstance(record.get("task_id"), int):
        return int(record["task_id"])
    match = _NUMBER.search(str(record.get("name") or record.get("task_id") or ""))
    if match is None:
        raise ValueError(f"cannot tell which problem this record is (no MBPP task_id, no HumanEval_N_ name): {record}")
    return int(match.group(1))


def _humaneval_x_rows(language: str, split: str, data_dir: str | None) -> list[Mapping[str, Any]]:
    from lm_envs.tasks.code import humaneval_x_task

    task = humaneval_x_task(language, split=split, data_dir=data_dir, reward=lambda c, r, p=None: [0.0] * len(c))
    return list(task.references)


def held_out_keys(task_name: str, data_dir: str | None = None) -> set[int]:
    """The problems the code envs evaluate on, which a discriminator must never see."""
    language = language_of(task_name)
    if language == "python":
        return {int(r["task_id"]) for split in MBPP_SPLITS if split != "train" for r in load_mbpp(split, data_dir)}
    return {problem_key(r) for r in _humaneval_x_rows(language, "held_out", data_dir)}


def training_keys(task_name: str, data_dir: str | None = None) -> set[int]:
    """The problems of the task's ``train`` split."""
    language = language_of(task_name)
    if language == "python":
        return {int(r["task_id"]) for r in load_mbpp("train", data_dir)}
    return {problem_key(r) for r in _humaneval_x_rows(language, "train", data_dir)}


def _qualify_std(body: str) -> str:
    return _STD_NAMES.sub(r"std::\1", body)


def reference_solutions(task_name: str, data_dir: str | None = None) -> dict[int, str]:
    """Problem key → the reference solution written as the model would complete the prompt."""
    language = language_of(task_name)
    if language == "python":
        return {int(r["task_id"]): f"```python\n{r['code'].strip()}\n```" for r in load_mbpp(None, data_dir)}
    local = resolve_data_dir(data_dir)
    path = None if local is None else local / SOLUTIONS_DIR / f"humaneval_{language}.jsonl.gz"
    if path is None or not path.exists():
        raise FileNotFoundError(
            f"HumanEval-X canonical solutions not found at {path}: set LM_ENVS_DATA_DIR (or data_dir=) to the "
            f"data dir holding {SOLUTIONS_DIR}/ (see its README)"
        )
    out = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            solution = row["canonical_solution"]
            body = solution[: body_end(solution)].rstrip()
            out[int(row["task_id"].split("/")[-1])] = _qualify_std(body) if language == "cpp" else body
    return out


def _degenerate_negatives(language: str, solution: str) -> list[str]:
    if language != "python":
        return list(DEGENERATE_BODIES[language])
    header = next((line for line in solution.splitlines() if line.startswith("def ")), None)
    if header is None:
        return []
    return [f"```python\n{header}\n    {body}\n```" for body in DEGENERATE_BODIES["python"]]


def discriminator_examples(
    samples: Sequence[Mapping[str, Any]],
    task_name: str,
    solutions: Mapping[int, str],
    held_out: set[int],
    degenerate_negatives: bool = False,
) -> list[dict[str, Any]]:
    """Labelled texts: each policy sample ``{prompt, completion, reference}`` (label 0) beside the
    reference solution of its problem on the same prompt (label 1, once per sample, so the classes
    balance), and with ``degenerate_negatives`` the constant bodies of `DEGENERATE_BODIES` once per
    problem (label 0). Rows carry ``key`` (the problem) and ``kind`` (sample, reference,
    degenerate). Raises on a held-out problem."""
    language = language_of(task_name)
    rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    for sample in samples:
        key = problem_key(sample["reference"])
        if key in held_out:
            raise ValueError(
                f"problem {key} of {task_name} is held out (the envs evaluate on it); a discriminator "
                f"must not train on it: sample the train split (env.kwargs.split=train)"
            )
        if key not in solutions:
            continue
        prompt = sample["prompt"]
        rows.append({"prompt": prompt, "completion": sample["completion"], "label": 0, "key": key, "kind": "sample"})
        rows.append({"prompt": prompt, "completion": solutions[key], "label": 1, "key": key, "kind": "reference"})
        if degenerate_negatives and key not in seen:
            for body in _degenerate_negatives(language, solutions[key]):
                rows.append({"prompt": prompt, "completion": body, "label": 0, "key": key, "kind": "degenerate"})
        seen.add(key)
    if not rows:
        raise ValueError(f"no sample of {task_name} has a reference solution: nothing to train a discriminator on")
    return rows
