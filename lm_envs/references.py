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
from rewards.degenerate import body_end, c_family_parameter_list

LANGUAGE_OF_TASK = {"humaneval-cpp": "cpp", "humaneval-java": "java", "mbpp": "python"}
SOLUTIONS_DIR = "humaneval-x-solutions"
_NUMBER = re.compile(r"HumanEval_(\d+)_")
_LITERAL = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'')
_STD_NAMES = re.compile(r"(?<![:\w.])(vector|string|map|set|pair|tuple|unordered_map|unordered_set|make_pair)\b")
_STD_FUNCTIONS = re.compile(
    r"(?<![:\w.>])(to_string|stoi|sort|reverse|min|max|min_element|max_element|swap|accumulate|find|count)(?=\s*\()"
)
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
    """``vector<`` → ``std::vector<``, ``sort(`` → ``std::sort(``: MultiPL-E prompts have no ``using namespace std``."""
    return _STD_FUNCTIONS.sub(r"std::\1", _STD_NAMES.sub(r"std::\1", body))


def _humaneval_x_solutions(language: str, data_dir: str | None) -> dict[int, dict[str, Any]]:
    """HumanEval number → the HumanEval-X row (``canonical_solution``, ``declaration``, ...)."""
    local = resolve_data_dir(data_dir)
    path = None if local is None else local / SOLUTIONS_DIR / f"humaneval_{language}.jsonl.gz"
    if path is None or not path.exists():
        raise FileNotFoundError(
            f"HumanEval-X canonical solutions not found at {path}: set LM_ENVS_DATA_DIR (or data_dir=) to the "
            f"data dir holding {SOLUTIONS_DIR}/ (see its README)"
        )
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return {int(row["task_id"].split("/")[-1]): row for row in rows}


def _body(language: str, row: Mapping[str, Any]) -> str:
    solution = row["canonical_solution"]
    body = solution[: body_end(solution)].rstrip()
    return _qualify_std(body) if language == "cpp" else body


def reference_solutions(task_name: str, data_dir: str | None = None) -> dict[int, str]:
    """Problem key → the reference solution written as the model would complete the prompt."""
    language = language_of(task_name)
    if language == "python":
        return {int(r["task_id"]): f"```python\n{r['code'].strip()}\n```" for r in load_mbpp(None, data_dir)}
    return {key: _body(language, row) for key, row in _humaneval_x_solutions(language, data_dir).items()}


def rename_identifiers(code: str, mapping: Mapping[str, str]) -> str:
    """``code`` with each identifier of ``mapping`` renamed at once (so a swap stays a swap); string
    and character literals and members (``.x``, ``->x``, ``::x``) are left alone."""
    mapping = {old: new for old, new in mapping.items() if old != new}
    if not mapping:
        return code
    names = "|".join(re.escape(name) for name in sorted(mapping, key=len, reverse=True))
    pattern = re.compile(rf"{_LITERAL.pattern}|(?<!->)(?<!::)(?<![\w.])({names})\b")
    return pattern.sub(lambda m: mapping[m.group(1)] if m.group(1) else m.group(0), code)


def reference_candidates(
    task_name: str, records: Sequence[Mapping[str, Any]], data_dir: str | None = None
) -> dict[int, list[str]]:
    """Problem key → the reference bodies to try against each record's own prompt, best guess first.

    HumanEval-X's solutions were written for its own signatures, MultiPL-E's prompts differ: the
    parameters are renamed to the prompt's by position (``strlen(string str)`` → ``strlen(std::string
    string)``), and in C++ a second candidate also widens ``int`` to ``long`` (MultiPL-E's integer
    type). MBPP's reference is its record's code. Which candidate fits is decided by
    `verified_references`."""
    language = language_of(task_name)
    if language == "python":
        solutions = reference_solutions(task_name, data_dir)
        return {key: [solutions[key]] for key in map(problem_key, records) if key in solutions}
    rows = _humaneval_x_solutions(language, data_dir)
    out: dict[int, list[str]] = {}
    for record in records:
        key = problem_key(record)
        if key not in rows:
            continue
        body = _body(language, rows[key])
        theirs, ours = c_family_parameter_list(rows[key]["declaration"]), c_family_parameter_list(record["prompt"])
        if len(theirs) == len(ours):
            body = rename_identifiers(body, dict(zip(theirs, ours)))
        candidates = [body]
        if language == "cpp":
            candidates.append(re.sub(r"(?<![\w:])int\b", "long", body))
        out[key] = list(dict.fromkeys(candidates))
    return out


def verified_references(
    candidates: Mapping[int, Sequence[str]], records: Sequence[Mapping[str, Any]], reward: Any
) -> dict[int, str]:
    """Problem key → its first candidate that passes every test of its record under ``reward`` (the
    task's own code reward: its compiler, its sandbox); a problem with none is left out. A
    reference that does not compile against our prompt would teach a discriminator that "looks
    like a reference" is worth more than compiling."""
    todo = [(problem_key(r), r, c) for r in records if problem_key(r) in candidates for c in candidates[problem_key(r)]]
    results = reward.evaluate([c for _, _, c in todo], [r for _, r, _ in todo], [r["prompt"] for _, r, _ in todo])
    out: dict[int, str] = {}
    for (key, _, candidate), result in zip(todo, results):
        if key not in out and result.all_passed:
            out[key] = candidate
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
