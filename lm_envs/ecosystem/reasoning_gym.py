"""reasoning-gym's procedural tasks as ``reasoning_gym/<task>-v0`` ids, and a difficulty curriculum.

Every task in reasoning-gym's registry (`TASK_NAMES`, checked against the installed package by
the tests) is registered at ``import lm_envs`` without importing reasoning_gym; the builder,
`reasoning_gym_task`, imports it when an env is built::

    env = gym.make("reasoning_gym/basic_arithmetic-v0", tokenizer=tok, max_terms=2, max_digits=1)

* **Config.** Keyword arguments that are neither episode settings nor the builder's own go to the
  task's reasoning-gym config (its difficulty parameters: ``min_digits``, ``max_word_len``...).
* **Splits.** ``split="test"`` is ``test_size`` items drawn with ``held_out_seed`` (distinct
  questions). ``split="train"`` is ``size`` items drawn with ``seed``, from which every item
  whose *question text* is a held-out question is dropped: at the easiest configs there are few
  distinct items (about a hundred one-digit sums), so different seeds alone would leak the test
  set into training. Train and test built with the same config share the held-out set.
* **Reward.** `ReasoningGymReward`: the task's own ``score_answer`` on the answer an *extractor*
  takes from the completion (`EXTRACTORS`); its metrics report ``accuracy`` (score == 1),
  ``score_mean`` (reasoning-gym gives partial credit) and ``format_rate`` (an answer was found).
* **Curriculum.** ``curriculum=True`` builds the rows of every level of the task's reasoning-gym
  curriculum (``set_global_level`` + ``generate_configuration``; built lazily, a level when it is
  first drawn); `ReasoningGymCurriculum` wraps the vec env, draws only the current level and moves
  it with the recent success rate. Its state goes into the env state, so checkpoints resume it.

May import `lm_envs.tasks`, `lm_envs.registration` and SB3; never `policies` or `agents`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvWrapper

from lm_envs.ecosystem import require
from lm_envs.registration import make_vec, register_task
from lm_envs.tasks import Task
from rewards.base import Reward

__all__ = [
    "EXTRACTORS",
    "TASK_NAMES",
    "CurriculumLogCallback",
    "ReasoningGymCurriculum",
    "ReasoningGymReward",
    "make_curriculum_vec",
    "reasoning_gym_task",
    "register_reasoning_gym_ids",
]

logger = logging.getLogger(__name__)

# reasoning-gym 0.1.25's registry (reasoning_gym.factory.DATASETS); tests/test_ecosystem_envs.py
# checks it against the installed package. ``composite`` needs ``datasets=`` (a mix of others).
TASK_NAMES = (
    "ab",
    "acre",
    "advanced_geometry",
    "aiw",
    "arc_1d",
    "arc_agi",
    "base_conversion",
    "basic_arithmetic",
    "bf",
    "binary_alternation",
    "binary_matrix",
    "bitwise_arithmetic",
    "boxnet",
    "caesar_cipher",
    "calendar_arithmetic",
    "chain_sum",
    "circuit_logic",
    "codeio",
    "coin_flip",
    "color_cube_rotation",
    "complex_arithmetic",
    "composite",
    "count_bits",
    "count_primes",
    "countdown",
    "course_schedule",
    "cryptarithm",
    "decimal_arithmetic",
    "decimal_chain_sum",
    "dice",
    "emoji_mystery",
    "family_relationships",
    "figlet_font",
    "fraction_simplification",
    "futoshiki",
    "game_of_life",
    "game_of_life_halting",
    "gcd",
    "graph_color",
    "group_anagrams",
    "gsm_symbolic",
    "intermediate_integration",
    "isomorphic_strings",
    "jugs",
    "kakurasu",
    "knight_swap",
    "knights_knaves",
    "largest_island",
    "lcm",
    "leg_counting",
    "letter_counting",
    "letter_jumble",
    "list_functions",
    "mahjong_puzzle",
    "manipulate_matrix",
    "maze",
    "mini_sudoku",
    "modulo_grid",
    "n_queens",
    "needle_haystack",
    "number_filtering",
    "number_format",
    "number_sequence",
    "number_sorting",
    "palindrome_generation",
    "palindrome_partitioning",
    "path_star",
    "polynomial_equations",
    "polynomial_multiplication",
    "pool_matrix",
    "power_function",
    "prime_factorization",
    "products",
    "propositional_logic",
    "puzzle24",
    "quantum_lock",
    "ransom_note",
    "rearc",
    "rectangle_count",
    "rotate_matrix",
    "rotten_oranges",
    "rubiks_cube",
    "rush_hour",
    "self_reference",
    "sentence_reordering",
    "shortest_path",
    "simple_equations",
    "simple_geometry",
    "simple_integration",
    "sokoban",
    "spell_backward",
    "spiral_matrix",
    "string_insertion",
    "string_manipulation",
    "string_splitting",
    "string_synthesis",
    "sudoku",
    "survo",
    "syllogism",
    "time_intervals",
    "tower_of_hanoi",
    "tsumego",
    "word_ladder",
    "word_sequence_reversal",
    "word_sorting",
    "zebra_puzzles",
)
_LEVEL_KEY = "lm_envs_level"  # added to each reference: the curriculum level its item was drawn at


# -- answer extractors ---------------------------------------------------------------------------
def _first_line(text: str) -> str | None:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else None


def _first_line_result(text: str) -> str | None:
    line = _first_line(text)
    return line.rsplit("=", 1)[-1].strip() or None if line is not None else None


def _last_line(text: str) -> str | None:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def _answer_tag(text: str) -> str | None:
    matches = re.findall(r"<answer>\s?(.*?)\s?</answer>", text, flags=re.DOTALL)
    return matches[-1].strip() if matches else None


def _full(text: str) -> str | None:
    return text.strip() or None


# name -> (extractor, the default prompt template that asks for that format)
EXTRACTORS: dict[str, tuple[Callable[[str], str | None], str]] = {
    # The first non-empty line, stripped ("Give only the final answer.": a small model's format).
    "first_line": (_first_line, "{question}\nGive only the final answer."),
    # The first non-empty line after its last "=" ("4 + 3 = 7" -> "7"): the small model's habit of
    # restating the sum, read as its answer. One line, one number after "=": nothing else scores.
    "first_line_result": (_first_line_result, "{question}\nGive only the final answer."),
    # The last non-empty line, stripped (room to reason first, the answer last).
    "last_line": (_last_line, "{question}\nThink step by step, then give the final answer alone on the last line."),
    # The last <answer>...</answer> (reasoning-gym's own convention, `reasoning_gym.utils.extract_answer`).
    "answer_tag": (_answer_tag, "{question}\nPut the final answer between <answer> and </answer>."),
    # The whole completion, stripped.
    "full": (_full, "{question}\nGive only the final answer."),
}


class ReasoningGymReward(Reward):
    """A reasoning-gym task's own ``score_answer`` on the extracted answer (0 when none is found).

    :param datasets: ``datasets(level) -> ProceduralDataset``: the dataset whose ``score_answer``
        scores items of that level (references carry their level).
    :param extractor: a name in `EXTRACTORS`.
    :param name: the reward's name (``reasoning_gym/<task>``).
    :param partial_credit: the scorer's own partial credit (``False``: 1 for an exactly right
        answer, else 0; e.g. spell_backward gives an echoed word 1/3, a score without solving).
    """

    def __init__(
        self,
        datasets: Callable[[int], Any],
        extractor: str = "first_line",
        name: str = "reasoning_gym",
        partial_credit: bool = True,
    ):
        if extractor not in EXTRACTORS:
            raise ValueError(f"unknown extractor {extractor!r}; known: {sorted(EXTRACTORS)}")
        self.datasets, self.extractor, self.name = datasets, extractor, name
        self.partial_credit = bool(partial_credit)

    def extract(self, completion: str) -> str | None:
        return EXTRACTORS[self.extractor][0](completion)

    def score(self, completions: list[str], references: list[Any], prompts: list[str] | None) -> Sequence[float]:
        scores = []
        for completion, entry in zip(completions, references):
            answer = self.extract(completion)
            if answer is None:
                scores.append(0.0)
                continue
            try:
                value = self.datasets(int(entry.get(_LEVEL_KEY, 0))).score_answer(answer, entry)
            except Exception:  # noqa: BLE001 - a scorer that chokes on odd text scores it 0, never crashes training
                value = 0.0
            value = float(value or 0.0)
            scores.append(value if self.partial_credit else float(value >= 1.0))
        return scores

    def metrics(self, completions: Sequence[str], references: Sequence[Any], scores: np.ndarray) -> dict[str, float]:
        scores = np.asarray(scores, dtype=np.float64)
        found = [self.extract(c) is not None for c in completions]
        return {
            "accuracy": float(np.mean(scores >= 1.0)),
            "score_mean": float(np.mean(scores)),
            "format_rate": float(np.mean(found)),
        }


# -- items -----------------------------------------------------------------------------------------
def _entry(item: dict[str, Any], level: int) -> dict[str, Any]:
    return {**item, _LEVEL_KEY: level}


def _level_configs(name: str, config: dict[str, Any], curriculum: bool) -> list[dict[str, Any]]:
    """The config of each level: ``[config]`` without a curriculum; else, per global level of the
    task's reasoning-gym curriculum, its ``generate_configuration``, with the user's keys that the
    curriculum does not set. (`reasoning_gym_task` keeps ``config`` itself as level 0: the
    held-out difficulty; levels 1... are the curriculum's.)"""
    if not curriculum:
        return [dict(config)]
    rg = require("reasoning_gym", "reasoning-gym")
    if name not in rg.factory.CURRICULA:
        raise ValueError(
            f"reasoning-gym has no curriculum for {name!r}; tasks with one: {sorted(rg.factory.CURRICULA)}"
        )
    levels = max(len(attr.levels) for attr in rg.factory.create_curriculum(name).attributes.values())
    configs = []
    for level in range(levels):
        schedule = rg.factory.create_curriculum(name)
        schedule.set_global_level(level)
        generated = dataclasses.asdict(schedule.generate_configuration())
        owned = _curriculum_fields(schedule)
        merged = {k: v for k, v in generated.items() if k not in ("seed", "size")}
        merged.update({k: v for k, v in config.items() if k not in owned})
        configs.append(merged)
    return configs


def _curriculum_fields(schedule: Any) -> set[str]:
    fields = set()
    for attr in schedule.attributes.values():
        for key in ("field_name", "lower_field_name", "upper_field_name"):
            if getattr(attr, key, None):
                fields.add(getattr(attr, key))
    return fields


class _Levels:
    """The task's rows: ``size`` training items (or the held-out items) per level, each level
    generated when first needed, deterministically (reasoning-gym items are a function of the
    seed and index)."""

    def __init__(
        self,
        name: str,
        configs: list[dict[str, Any]],
        split: str,
        size: int,
        seed: int,
        test_size: int,
        held_out_seed: int,
    ) -> None:
        self.name, self.configs, self.split = name, configs, split
        self.size, self.seed, self.test_size, self.held_out_seed = size, seed, test_size, held_out_seed
        self._rows: dict[int, list[dict[str, Any]]] = {}
        self._datasets: dict[int, Any] = {}
        self._held_out: list[dict[str, Any]] | None = None
        self.per_level = len(self.held_out()) if split == "test" else size

    def dataset(self, level: int, size: int = 1, seed: int = 0) -> Any:
        rg = require("reasoning_gym", "reasoning-gym")
        dataset = rg.create_dataset(self.name, **{**self.configs[level], "size": size, "seed": seed})
        self._datasets.setdefault(level, dataset)  # scores the level's items (score_answer reads the config)
        return dataset

    def scorer(self, level: int) -> Any:
        if level not in self._datasets:
            self.dataset(level, 1, self.seed)
        return self._datasets[level]

    def held_out(self) -> list[dict[str, Any]]:
        """The held-out items (level 0's config, distinct questions, in draw order)."""
        if self._held_out is None:
            dataset = self.dataset(0, self.test_size, self.held_out_seed)
            seen: set[str] = set()
            self._held_out = []
            for i in range(self.test_size):
                item = dataset[i]
                if item["question"] not in seen:
                    seen.add(item["question"])
                    self._held_out.append(_entry(item, 0))
        return self._held_out

    def rows(self, level: int) -> list[dict[str, Any]]:
        if level not in self._rows:
            self._rows[level] = self.held_out() if self.split == "test" else self._train_rows(level)
        return self._rows[level]

    def _train_rows(self, level: int) -> list[dict[str, Any]]:
        excluded = {item["question"] for item in self.held_out()}
        # Drawn in chunks (some tasks generate every item of a dataset up front), up to 20 sizes.
        chunk, kept = self.size + len(excluded), []
        for attempt in range(max(1, 20 * self.size // chunk)):
            dataset = self.dataset(level, chunk, self.seed + 1_000_003 * level + 7_919 * attempt)
            kept.extend(
                _entry(item, level) for item in (dataset[i] for i in range(chunk)) if item["question"] not in excluded
            )
            if len(kept) >= self.size:
                kept = kept[: self.size]
                break
        if not kept:
            raise ValueError(
                f"reasoning_gym/{self.name}: every training item at level {level} is a held-out "
                f"question; lower test_size or use a config with more distinct items"
            )
        if len(kept) < self.size:  # few distinct items: repeat the ones that are not held out
            logger.warning(
                "reasoning_gym/%s level %d: only %d of %d training items are not held out; repeating them",
                self.name,
                level,
                len(kept),
                self.size,
            )
            kept = [kept[i % len(kept)] for i in range(self.size)]
        return kept

    def __len__(self) -> int:
        return self.per_level * (len(self.configs) if self.split == "train" else 1)

    def item(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.rows(index // self.per_level)[index % self.per_level]


class _Column(Sequence):
    """A read-only view of one field of `_Levels`' items, indexable like a list."""

    def __init__(self, levels: _Levels, field: str | None) -> None:
        self.levels, self.field = levels, field

    def __len__(self) -> int:
        return len(self.levels)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        item = self.levels.item(int(index))
        return item if self.field is None else item[self.field]


def reasoning_gym_task(
    name: str,
    split: str = "train",
    size: int = 1000,
    seed: int = 0,
    test_size: int = 64,
    held_out_seed: int = 10_000_019,
    extractor: str = "first_line",
    partial_credit: bool = True,
    curriculum: bool = False,
    prompt_template: str | None = None,
    system_prompt: str | None = None,
    chat_template: bool | None = None,
    reward: Any = None,
    reward_kwargs: dict | None = None,
    data_dir: str | None = None,
    **config: Any,
) -> Task:
    """A reasoning-gym task as a `Task`.

    :param name: the task's name in reasoning-gym's registry (`TASK_NAMES`).
    :param split: ``"train"`` (``size`` items per level, none of them a held-out question) or
        ``"test"`` (the held-out items).
    :param size: training items per level.
    :param seed: seed of the training items.
    :param test_size: held-out items drawn (duplicates by question text are dropped).
    :param held_out_seed: seed of the held-out items.
    :param extractor: how the answer is read from a completion (`EXTRACTORS`).
    :param partial_credit: keep the task's partial credit (``False``: exact answers score 1, all
        else 0; `ReasoningGymReward`).
    :param curriculum: build every level of the task's reasoning-gym curriculum (for
        `ReasoningGymCurriculum`); the held-out items stay those of ``config``.
    :param prompt_template: around the question; defaults to the extractor's.
    :param system_prompt: a system message (chat template only).
    :param chat_template: as `Task` (``None``: the tokenizer's when it has one).
    :param reward: a reward object (or a `rewards` name) instead of `ReasoningGymReward` (a run's
        evaluation env shares the training env's).
    :param reward_kwargs: keyword arguments of a reward given by name.
    :param data_dir: ignored (the items are generated); accepted as every task accepts it.
    :param config: the task's reasoning-gym config keys (difficulty parameters). ``composite``
        takes ``datasets=[{"name": ..., "weight": ..., "config": {...}}, ...]``.
    """
    require("reasoning_gym", "reasoning-gym")
    if split not in ("train", "test"):
        raise ValueError(f"reasoning_gym/{name} has splits ['train', 'test'], not {split!r}")
    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown extractor {extractor!r}; known: {sorted(EXTRACTORS)}")
    if size < 1 or test_size < 1:
        raise ValueError("size and test_size must be at least 1")
    import reasoning_gym as rg

    if name not in rg.factory.DATASETS:
        raise ValueError(f"reasoning-gym has no task {name!r}; known: {sorted(rg.factory.DATASETS)}")
    if name == "composite" and config.get("datasets"):  # plain dicts (from YAML) -> reasoning-gym's DatasetSpec
        from reasoning_gym.composite import DatasetSpec

        config["datasets"] = [
            DatasetSpec(**{"config": {}, **spec}) if isinstance(spec, dict) else spec for spec in config["datasets"]
        ]
    base = _level_configs(name, config, False)[0]
    configs = [base] + (_level_configs(name, config, True)[1:] if curriculum else [])
    levels = _Levels(name, configs, split, size, seed, test_size, held_out_seed)
    levels.held_out()  # a config the task rejects fails here, with reasoning-gym's message
    if reward is None:
        reward = ReasoningGymReward(levels.scorer, extractor, f"reasoning_gym/{name}", partial_credit)
    else:
        from lm_envs.tasks.base import make_reward

        reward = make_reward(reward, "", reward_kwargs)
    return Task(
        questions=_Column(levels, "question"),
        references=_Column(levels, None),
        reward=reward,
        name=f"reasoning_gym/{name}",
        prompt_template=prompt_template or EXTRACTORS[extractor][1],
        system_prompt=system_prompt,
        chat_template=chat_template,
        metadata={
            "levels": len(configs) if split == "train" else 1,
            "rows_per_level": levels.per_level,
            "level_configs": configs,
        },
    )


def register_reasoning_gym_ids() -> None:
    """Register ``reasoning_gym/<task>-v0`` for every name in `TASK_NAMES` (imports nothing)."""
    for name in TASK_NAMES:
        register_task(
            f"reasoning_gym/{name}-v0",
            functools.partial(reasoning_gym_task, name),
            max_new_tokens=32,
            max_prompt_tokens=512,
            truncate_prompt="left",
            run_defaults={
                "kwargs": {"split": "train", "max_new_tokens": 32, "max_prompt_tokens": 512, "truncate_prompt": "left"},
                "eval_kwargs": {"split": "test"},
                "reward_wrappers": [],
            },
        )


# -- the curriculum ----------------------------------------------------------------------------------
class _LevelSampler:
    """Draws rows of the current level: the vec env's own sampler (over all levels' rows) taken
    modulo the rows of a level, offset to the level. Its state is the wrapped sampler's."""

    def __init__(self, inner: Any, curriculum: ReasoningGymCurriculum, per_level: int) -> None:
        self.inner, self.curriculum, self.per_level = inner, curriculum, per_level

    def next_index(self) -> int:
        return self.curriculum.level * self.per_level + self.inner.next_index() % self.per_level

    def seed(self, seed: int | None) -> None:
        self.inner.seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


class ReasoningGymCurriculum(VecEnvWrapper):
    """Moves a reasoning-gym env's difficulty with the recent success rate (score == 1).

    The env must be built with ``curriculum=True`` (`make_curriculum_vec` does both). Each episode
    that ends adds its success to a window of the last ``window`` episodes; once the window is full,
    a success rate of at least ``raise_above`` moves to the next level of the task's reasoning-gym
    curriculum and at most ``lower_below`` to the previous one, and the window starts again. New
    episodes are drawn at the current level: in lockstep, the batch loaded by the step that moved
    the level (no action taken yet) is moved to the same items of the new level, so the change
    applies from the next batch on. Ended episodes report ``info["curriculum_level"]``.
    ``get_state``/``set_state`` (also through ``env_method``, which is how checkpoints call them)
    add the level and the window under ``"curriculum"``.

    :param venv: a `lm_envs.TokenVecEnv` over ``reasoning_gym/<task>-v0`` with ``curriculum=True``
        (possibly wrapped).
    :param window: episodes per decision.
    :param raise_above: success rate at which the level goes up.
    :param lower_below: success rate at which it goes down.
    :param level: the starting level.
    """

    _OWN_METHODS = ("get_state", "set_state")

    def __init__(
        self, venv: VecEnv, window: int = 64, raise_above: float = 0.7, lower_below: float = 0.2, level: int = 0
    ) -> None:
        super().__init__(venv)
        metadata = venv.get_attr("task", [0])[0].metadata
        if "rows_per_level" not in metadata or metadata.get("levels", 1) < 2:
            raise ValueError(
                "ReasoningGymCurriculum needs a reasoning_gym env built with curriculum=True and "
                "split='train' (lm_envs.ecosystem.reasoning_gym.make_curriculum_vec builds one)"
            )
        if not 0 <= lower_below < raise_above <= 1:
            raise ValueError(f"need 0 <= lower_below < raise_above <= 1, got {lower_below}, {raise_above}")
        self.num_levels, self.per_level = int(metadata["levels"]), int(metadata["rows_per_level"])
        if not 0 <= level < self.num_levels:
            raise ValueError(f"level must be in 0..{self.num_levels - 1}, got {level}")
        self.window, self.raise_above, self.lower_below = int(window), float(raise_above), float(lower_below)
        self.level = int(level)
        self.recent: deque[float] = deque(maxlen=self.window)
        self.changes: list[tuple[int, int]] = []  # (episodes seen, new level)
        self.episodes = 0
        base = self._base_env()
        if getattr(base, "autoreset", False):
            raise ValueError("ReasoningGymCurriculum needs a lockstep env (autoreset=False)")
        base.samplers = [_LevelSampler(getattr(s, "inner", s), self, self.per_level) for s in base.samplers]

    def _base_env(self) -> Any:
        env = self.venv
        while hasattr(env, "venv"):
            env = env.venv
        return env

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        level = self.level
        for row in np.flatnonzero(dones):
            info = infos[row]
            if "score" not in info:
                continue
            info["curriculum_level"] = int(info["index"]) // self.per_level
            self.recent.append(float(info["score"] >= 1.0))
            self.episodes += 1
            if len(self.recent) == self.window:
                rate = float(np.mean(self.recent))
                if rate >= self.raise_above and self.level < self.num_levels - 1:
                    self._move(+1)
                elif rate <= self.lower_below and self.level > 0:
                    self._move(-1)
        if self.level != level and dones.any():
            obs = self._redraw(obs)
        return obs, rewards, dones, infos

    def _redraw(self, obs: Any) -> Any:
        """The level moved in the step that ended the batch, after the next batch was loaded: that
        batch has taken no action yet, so its rows move to the same items of the new level."""
        base = self._base_env()
        batch = base.batch
        if base._ended.any() or batch.num_generated.any() or getattr(self.venv, "venv", None) is not None:
            return obs  # not a fresh lockstep batch (or wrapped further): the new level starts with the next one
        rows = np.arange(base.num_envs)
        indices = [self.level * self.per_level + int(i) % self.per_level for i in batch.row_index]
        batch.load(rows, indices)
        for row, index in zip(rows, indices):
            base.reset_infos[row] = {"prompt": batch.encode_prompt(index)[1], "index": int(index)}
        return batch.observation()

    def _move(self, step: int) -> None:
        self.level += step
        self.recent.clear()
        self.changes.append((self.episodes, self.level))

    @property
    def success_rate(self) -> float:
        """Success rate over the current window (NaN when it is empty)."""
        return float(np.mean(self.recent)) if self.recent else float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "recent": list(self.recent),
            "episodes": self.episodes,
            "changes": [list(c) for c in self.changes],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.level = int(state["level"])
        self.recent = deque((float(x) for x in state["recent"]), maxlen=self.window)
        self.episodes = int(state["episodes"])
        self.changes = [tuple(c) for c in state["changes"]]

    def get_state(self) -> dict[str, Any]:
        state = dict(self.venv.env_method("get_state", indices=[0])[0])
        state["curriculum"] = self.state_dict()
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        if "curriculum" not in state:
            raise ValueError("this env state has no curriculum state: it was saved without ReasoningGymCurriculum")
        self.load_state_dict(state["curriculum"])
        self.venv.env_method("set_state", {k: v for k, v in state.items() if k != "curriculum"}, indices=[0])

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        if method_name in self._OWN_METHODS:
            return [getattr(self, method_name)(*method_args, **method_kwargs) for _ in self._get_indices(indices)]
        return self.venv.env_method(method_name, *method_args, indices=indices, **method_kwargs)


class CurriculumLogCallback(BaseCallback):
    """Logs the training env's curriculum at the start of each rollout: ``curriculum/level``,
    ``curriculum/success_rate`` (the current window's, NaN when empty) and ``curriculum/changes``.
    Does nothing when the agent's env has no `ReasoningGymCurriculum`."""

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        env = self.model.get_env()
        while env is not None and not isinstance(env, ReasoningGymCurriculum):
            env = getattr(env, "venv", None)
        if env is not None:
            self.logger.record("curriculum/level", env.level)
            self.logger.record("curriculum/success_rate", env.success_rate)
            self.logger.record("curriculum/changes", len(env.changes))


def make_curriculum_vec(
    env_id: str,
    num_envs: int,
    tokenizer: Any,
    window: int = 64,
    raise_above: float = 0.7,
    lower_below: float = 0.2,
    level: int = 0,
    **kwargs: Any,
) -> ReasoningGymCurriculum:
    """``make_vec(env_id, ..., curriculum=True)`` wrapped in `ReasoningGymCurriculum` (its
    ``window``, ``raise_above``, ``lower_below`` and starting ``level``)."""
    venv = make_vec(env_id, num_envs, tokenizer, curriculum=True, **kwargs)
    return ReasoningGymCurriculum(venv, window=window, raise_above=raise_above, lower_below=lower_below, level=level)
