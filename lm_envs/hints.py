"""Hinted prompts for STaR's rationalization: the gold answer shown in the prompt.

`hinted_vec_env(env, indices, seed)` builds a lockstep `TokenVecEnv` with one row per data-row
index of ``env``'s task, whose question carries a hint with that row's gold answer
(``hint_template``), rendered, budgeted, stopped and scored like ``env`` (its reward wrappers
too, through ``wrap``). Row ``j`` answers ``indices[j]`` and reports ``info["index"] == j``.
The agent trains on the completion under the prompt *without* the hint. May import
`rewards` (through tasks); never `policies` or `agents`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

from lm_envs.tasks import Task
from lm_envs.vec_env import TokenVecEnv

DEFAULT_HINT_TEMPLATE = "{question}\n(Hint: the correct final answer is {answer}.)"


def gold_answer(reference: Any) -> str | None:
    """The short gold answer of a reference: GSM8K's number after ``####``, an MGSM number, an MMLU
    letter with its option; ``None`` when a reference has no short answer (code records)."""
    if isinstance(reference, str):
        match = re.search(r"####\s*(.+?)\s*$", reference.strip(), flags=re.S)
        return match.group(1).strip() if match else reference.strip()
    if isinstance(reference, (int, float)):
        return str(reference)
    if isinstance(reference, dict) and "choices" in reference and "answer" in reference:
        answer = reference["answer"]
        index = "ABCD".index(answer) if isinstance(answer, str) else int(answer)
        return f"{'ABCD'[index]}. {reference['choices'][index]}"
    return None


def hinted_task(task: Task, indices: Sequence[int], hint_template: str = DEFAULT_HINT_TEMPLATE) -> Task:
    """A task over rows ``indices`` of ``task`` whose questions carry the gold-answer hint."""
    questions = []
    for index in indices:
        answer = gold_answer(task.references[index])
        if answer is None:
            raise ValueError(f"task {task.name!r}: row {index} has no short gold answer to hint with")
        questions.append(hint_template.format(question=task.questions[index], answer=answer))
    return dataclasses.replace(
        task, questions=questions, references=[task.references[i] for i in indices], name=f"{task.name}-hinted"
    )


def hinted_vec_env(
    env: Any,
    indices: Sequence[int],
    seed: int = 0,
    hint_template: str = DEFAULT_HINT_TEMPLATE,
    wrap: Callable[[TokenVecEnv], Any] | None = None,
) -> Any:
    """One lockstep row per index, in order (row ``j`` gets hinted row ``indices[j]``), with ``env``'s
    tokenizer, widths, stop rules and reward (``wrap`` adds its reward wrappers)."""
    batch = env.get_attr("batch", [0])[0]
    task = hinted_task(env.get_attr("task", [0])[0], indices, hint_template)
    hinted = TokenVecEnv(
        task,
        batch.tokenizer,
        num_envs=len(indices),
        config=batch.config,
        vocab_size=batch.vocab_size,
        eos_token_ids=batch.eos_token_ids.tolist(),
        truncate_prompt="left",
        seed=seed,
    )
    # Slot j walks the rows in order from j: its first (and only) draw is row j.
    states = hinted.get_sampler_state()
    for j, state in enumerate(states):
        state.update(order=list(range(len(indices))), position=j)
    hinted.set_sampler_state(states)
    return wrap(hinted) if wrap is not None else hinted
