"""Tasks: a data set's prompts, their references, and the batched reward that scores completions.

What lives where:

* `base`: `Task`, `RewardFn`, `validate_rows` (drops or rejects malformed rows), `make_reward`
  (a reward by name or a callable), and the helpers every builder shares.
* `math`: GSM8K and MGSM (`gsm8k_task`, `mgsm_task`, `GSM8K_TEMPLATE`, their loaders).
* `mmlu`: MMLU and its translations, MMMLU (`mmlu_task`, `format_mmlu_question`).
* `code`: MBPP, HumanEval and HumanEval-X (`mbpp_task`, `humaneval_task`, `humaneval_x_task` with
  its per-language `humaneval_cpp_task` and `humaneval_java_task`).
* `toxicity`: RealToxicityPrompts continuation (`toxicity_task`, `toxicity_split`).
* `turns`: how a task speaks mid-episode: `Tool` (inline calls), `Reply` (what the env says when
  the model ends a turn), `ChatTurns` (env messages as chat turns).
* `tools`: the tools and replies the built-in multi-turn tasks use: the GSM8K `calculator`
  (`safe_arithmetic`, never ``eval``) and `CodeFeedback` (compiler and test feedback). Their
  builders sit with their families: `gsm8k_calculator_task` in `math`, `mbpp_feedback_task`
  and `humaneval_cpp_feedback_task` in `code`.

Which builder each built-in id registers, and the ids' run defaults, are in `lm_envs.suite`.

Every builder returns a `Task` and takes the same core options: ``split``, ``data_dir`` (else
``$LM_ENVS_DATA_DIR``, else the Hugging Face hub through `datasets`), ``reward`` /
``reward_kwargs`` (a `rewards` name or a callable), ``limit`` (first N rows), ``on_bad_row``
(``"skip"`` with one counted warning, or ``"error"``) and the `Task` fields ``prompt_template``,
``chat_template`` and ``system_prompt``. Data is read through `rewards.data`, the one loader,
shared with the code rewards; local files follow the layout of the project's reference data
(``mgsm/mgsm_de.tsv``, ``mmlu/test/anatomy_test.csv``, ...). Each builder's docstring states its
prompt format.

May import `rewards` only, besides its own modules: not the rest of `lm_envs` (the envs and the
registry import this package), never `policies` or `agents`. Every public name is re-exported
here: ``from lm_envs.tasks import Task, gsm8k_task``.
"""

from lm_envs.tasks.base import RewardFn, Task, make_reward, validate_rows
from lm_envs.tasks.code import (
    HUMANEVAL_STOP_STRINGS,
    HUMANEVAL_X_LANGUAGES,
    MBPP_SPLITS,
    MBPP_TEMPLATE,
    humaneval_cpp_feedback_task,
    humaneval_cpp_task,
    humaneval_java_task,
    humaneval_task,
    humaneval_x_task,
    mbpp_feedback_task,
    mbpp_task,
)
from lm_envs.tasks.math import (
    GSM8K_CALCULATOR_TEMPLATE,
    GSM8K_TEMPLATE,
    MGSM_LANGUAGES,
    gsm8k_calculator_task,
    gsm8k_task,
    load_gsm8k,
    load_mgsm,
    mgsm_task,
)
from lm_envs.tasks.mmlu import (
    MMLU_SUBJECTS,
    MMMLU_LANGUAGES,
    format_mmlu_question,
    load_mmlu,
    load_mmmlu,
    mmlu_task,
)
from lm_envs.tasks.tools import CodeFeedback, calculator, safe_arithmetic
from lm_envs.tasks.toxicity import TOXICITY_SUBSETS, load_toxicity, toxicity_split, toxicity_task
from lm_envs.tasks.turns import ChatTurns, Reply, Tool

__all__ = [
    # base
    "RewardFn",
    "Task",
    "make_reward",
    "validate_rows",
    # math
    "GSM8K_CALCULATOR_TEMPLATE",
    "GSM8K_TEMPLATE",
    "MGSM_LANGUAGES",
    "gsm8k_calculator_task",
    "gsm8k_task",
    "load_gsm8k",
    "load_mgsm",
    "mgsm_task",
    # mmlu
    "MMLU_SUBJECTS",
    "MMMLU_LANGUAGES",
    "format_mmlu_question",
    "load_mmlu",
    "load_mmmlu",
    "mmlu_task",
    # code
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
    # toxicity
    "TOXICITY_SUBSETS",
    "load_toxicity",
    "toxicity_split",
    "toxicity_task",
    # multi-turn
    "ChatTurns",
    "CodeFeedback",
    "Reply",
    "Tool",
    "calculator",
    "safe_arithmetic",
]
