"""`EpisodeBatch`: the state of ``n`` episodes as numpy arrays, and their transition.

Here: prompts (encoded once, left-padded), starting episodes, the step (append the policy's
tokens, find the rows whose turn ends), the rewards and infos of rows that end, and decoding.
What a multi-turn task adds (tool calls, replies, injected tokens) is `turns.MultiTurnMixin`;
scoring ended rows in the background is `overlap.OverlapScoringMixin`; saving and restoring the
arrays is `state.SavedStateMixin`. The row layout is described in `lm_envs.episodes`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from lm_envs.episodes.config import EpisodeConfig, observation_space
from lm_envs.episodes.overlap import OverlapScoringMixin
from lm_envs.episodes.state import SavedStateMixin
from lm_envs.episodes.turns import _EOS, _OUT_OF_TOKENS, _STOPPED, _TURN_FULL, MultiTurnMixin
from lm_envs.tasks import Task


class EpisodeBatch(MultiTurnMixin, OverlapScoringMixin, SavedStateMixin):
    """State and transitions of ``n`` episodes of prompt, then turns of generation.

    :param task: prompts, references, the reward, and optionally ``tools`` and ``respond``
        (see `lm_envs.tasks.turns`).
    :param tokenizer: a HF tokenizer; used to encode prompts and env text and decode completions.
    :param n: number of rows.
    :param config: an `EpisodeConfig`; keyword arguments override its fields (or build one).
    """

    def __init__(self, task: Task, tokenizer: Any, n: int, config: EpisodeConfig | None = None, **kwargs: Any) -> None:
        self.config = config = EpisodeConfig.build(config, **kwargs)
        self.task, self.tokenizer, self.n = task, tokenizer, n
        self.max_new_tokens, self.max_prompt_tokens = config.max_new_tokens, config.max_prompt_tokens
        self.vocab_size = int(config.vocab_size or len(tokenizer))
        if self.vocab_size < len(tokenizer):
            raise ValueError(f"vocab_size={self.vocab_size} is smaller than the tokenizer ({len(tokenizer)})")
        eos_token_ids = config.eos_token_ids
        if eos_token_ids is None:
            eos_token_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.eos_token_ids = np.asarray(sorted(set(eos_token_ids)), dtype=np.int64)
        self.stop_strings = config.stop_strings
        self.count_tokens = {key: self._token_id(token) for key, token in (config.count_tokens or {}).items()}
        self.truncate_prompt = config.truncate_prompt
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(self.eos_token_ids[0])
        self._init_turns(task, config)
        self.length = config.max_prompt_tokens + config.max_completion_tokens
        self.observation_space = observation_space(
            self.vocab_size, config.max_prompt_tokens, config.max_new_tokens, config.max_injected_tokens
        )
        self._prompt_cache: dict[int, tuple[np.ndarray, str]] = {}

        L = self.length
        self.input_ids = np.full((n, L), self.pad_token_id, dtype=np.int64)
        self.attention_mask = np.zeros((n, L), dtype=np.int8)
        self.policy_mask = np.zeros((n, L), dtype=np.int8)
        self.prompt_length = np.zeros(n, dtype=np.int64)
        self.num_generated = np.zeros(n, dtype=np.int64)  # the policy's tokens
        self.completion_length = np.zeros(n, dtype=np.int64)  # columns used after P (policy + env)
        self.num_injected = np.zeros(n, dtype=np.int64)
        self.turns = np.zeros(n, dtype=np.int64)  # turns the policy has ended
        self.turn_start = np.zeros(n, dtype=np.int64)  # column (after P) where this turn began
        self.turn_generated = np.zeros(n, dtype=np.int64)  # num_generated when this turn began
        self.segment_start = np.zeros(n, dtype=np.int64)  # column after the env last spoke
        self.tool_calls = np.zeros(n, dtype=np.int64)
        self.first_score = np.full(n, np.nan)
        self.last_score = np.full(n, np.nan)
        self.waiting = np.zeros(n, dtype=bool)  # ended a turn, awaiting the task's reply
        self.turn_end = np.zeros(n, dtype=np.int8)  # how the last turn ended (_EOS | ...)
        # Per turn k of each row: its columns after P [start, end), its last action's index (a
        # count of the policy's tokens) and its reward (Reply.reward; NaN: none given).
        T = config.max_turns
        self.turn_spans = np.zeros((n, T, 2), dtype=np.int64)
        self.turn_last_action = np.full((n, T), -1, dtype=np.int64)
        self.turn_rewards = np.full((n, T), np.nan)
        self.sync_turns = config.sync_turns
        self._init_overlap(task, config, n)
        self.finished = np.ones(n, dtype=bool)
        self.row_index = np.zeros(n, dtype=np.int64)
        self.start_time = np.zeros(n, dtype=np.float64)

    def _token_id(self, token: int | str) -> int:
        if isinstance(token, int):
            return token
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"count_tokens: {token!r} is not a token of this tokenizer")
        return int(token_id)

    # -- prompts ---------------------------------------------------------------------------
    def encode_prompt(self, index: int) -> tuple[np.ndarray, str]:
        """Token ids and text of data row ``index`` (cached: a row is tokenized once)."""
        if index not in self._prompt_cache:
            text = self.task.prompt(index, self.tokenizer)
            # The chat template already wrote any BOS; plain prompts get the tokenizer's default.
            ids = self.tokenizer(text, add_special_tokens=not self.task.uses_chat_template(self.tokenizer))["input_ids"]
            ids = np.asarray(ids, dtype=np.int64)
            if len(ids) == 0:
                raise ValueError(f"task {self.task.name!r}: row {index} has an empty prompt")
            if len(ids) > self.max_prompt_tokens:
                if self.truncate_prompt == "error":
                    raise ValueError(
                        f"task {self.task.name!r}: prompt of row {index} has {len(ids)} tokens, more than "
                        f"max_prompt_tokens={self.max_prompt_tokens}. Raise max_prompt_tokens or pass "
                        f"truncate_prompt='left' to keep its last tokens."
                    )
                ids = ids[-self.max_prompt_tokens :]
            self._prompt_cache[index] = (ids, text)
        return self._prompt_cache[index]

    def load(self, rows: np.ndarray, indices: Sequence[int]) -> None:
        """Start new episodes on ``rows`` with data rows ``indices``."""
        P = self.max_prompt_tokens
        self.input_ids[rows] = self.pad_token_id
        self.attention_mask[rows] = 0
        self.policy_mask[rows] = 0
        for row, index in zip(rows, indices):
            ids, _ = self.encode_prompt(int(index))
            self.input_ids[row, P - len(ids) : P] = ids
            self.attention_mask[row, P - len(ids) : P] = 1
            self.prompt_length[row] = len(ids)
        self.row_index[rows] = indices
        for name in (
            "num_generated",
            "completion_length",
            "num_injected",
            "turns",
            "turn_start",
            "turn_generated",
            "segment_start",
            "tool_calls",
        ):
            getattr(self, name)[rows] = 0
        if self.scoring[rows].any() and self.scorer is not None:  # a batch dropped mid-way
            self.scorer.discard()
            self.scoring[:] = False
        self.reward_seconds[rows] = 0.0
        self.first_score[rows] = np.nan
        self.last_score[rows] = np.nan
        self.waiting[rows] = False
        self.turn_end[rows] = 0
        self.turn_spans[rows] = 0
        self.turn_last_action[rows] = -1
        self.turn_rewards[rows] = np.nan
        self.finished[rows] = False
        self.start_time[rows] = time.time()

    # -- transitions -----------------------------------------------------------------------
    def step(self, actions: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Append ``actions`` on ``active`` rows, let the task speak; return rewards,
        terminated, truncated, infos.

        Inactive rows are untouched (their actions are ignored) and get reward 0. Infos of
        rows that end carry everything per-episode metrics need: the decoded completion, the
        reference, the prompt, the data row index, the task score, the turns and tool calls
        used, and an SB3 ``episode`` record.
        """
        actions = np.asarray(actions, dtype=np.int64).reshape(self.n)
        rows = np.flatnonzero(active & ~self.finished & ~self.waiting)
        if rows.size and (actions[rows].min() < 0 or actions[rows].max() >= self.vocab_size):
            raise ValueError(f"actions must be in [0, {self.vocab_size}), got {actions[rows]}")
        column = self.max_prompt_tokens + self.completion_length[rows]
        self.input_ids[rows, column] = actions[rows]
        self.attention_mask[rows, column] = 1
        self.policy_mask[rows, column] = 1
        self.num_generated[rows] += 1
        self.completion_length[rows] += 1

        # Which rows end their turn, and how.
        eos = np.zeros(self.n, dtype=bool)
        eos[rows] = np.isin(actions[rows], self.eos_token_ids)
        stopped = eos.copy()
        if self.stop_strings:  # decoding costs a Python call per row, so only when asked for
            for row in rows[~eos[rows]]:
                text = self._decode(row, self.turn_start[row])
                stopped[row] = any(stop in text for stop in self.stop_strings)
        out_of_tokens = np.zeros(self.n, dtype=bool)
        out_of_tokens[rows] = self.num_generated[rows] >= self.max_new_tokens
        turn_full = np.zeros(self.n, dtype=bool)
        turn_full[rows] = (self.num_generated[rows] - self.turn_generated[rows]) >= self.max_turn_tokens
        turn_ends = stopped | out_of_tokens | turn_full

        terminated = np.zeros(self.n, dtype=bool)
        truncated = np.zeros(self.n, dtype=bool)
        inject: dict[int, tuple[str, bool]] = {}  # row -> (text, starts a new turn)
        if self.tools:  # inline calls, in rows that go on with their turn
            self._call_tools(rows[~turn_ends[rows]], inject)
        ending = rows[turn_ends[rows]]
        self.turns[ending] += 1
        recorded = ending[self.turns[ending] <= self.config.max_turns]
        k = self.turns[recorded] - 1
        self.turn_spans[recorded, k, 0] = self.turn_start[recorded]
        self.turn_spans[recorded, k, 1] = self.completion_length[recorded]
        self.turn_last_action[recorded, k] = self.num_generated[recorded] - 1
        if self.respond is not None:
            how = (
                eos[ending] * _EOS
                | stopped[ending] * _STOPPED
                | out_of_tokens[ending] * _OUT_OF_TOKENS
                | turn_full[ending] * _TURN_FULL
            )
            self._await_replies(ending, how, terminated, truncated, inject)
        else:
            terminated[ending] = stopped[ending]
            truncated[ending] = ~stopped[ending]
        for row, (text, new_turn) in inject.items():
            if not self._inject(row, text, new_turn):
                truncated[row], terminated[row] = True, False
        ended = np.flatnonzero(terminated | truncated)
        self.finished[ended] = True
        wait = 0.0
        if self.overlap_scoring:
            ended, wait = self._overlap(ended, terminated, truncated)
        return self._finish(ended, terminated, truncated, wait)

    def _finish(self, ended: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, wait: float = 0.0):
        rewards = np.zeros(self.n, dtype=np.float32)
        infos: list[dict] = [{} for _ in range(self.n)]
        if not ended.size:
            return rewards, terminated, truncated, infos
        completions = [self.completion(row) for row in ended]
        references = [self.task.references[i] for i in self.row_index[ended]]
        prompts = [self.encode_prompt(int(i))[1] for i in self.row_index[ended]]
        reward_start = time.perf_counter()
        scores = self.last_score[ended].astype(np.float32)
        per_turn = ~np.isnan(self.turn_rewards[ended]).all(axis=1)  # rows whose replies gave turn rewards
        turn_rewards = np.nan_to_num(self.turn_rewards[ended], nan=0.0)
        scores[per_turn] = turn_rewards[per_turn].sum(axis=1)  # sequence-level reward: the sum over turns
        unscored = np.isnan(scores)
        if unscored.any():  # the task's reward scores what its replies did not
            picked = np.flatnonzero(unscored)
            scores[picked] = np.asarray(
                self.task.reward(
                    [completions[k] for k in picked], [references[k] for k in picked], [prompts[k] for k in picked]
                ),
                dtype=np.float32,
            )
        reward_time = (time.perf_counter() - reward_start) / len(ended) + self.reward_seconds[ended]
        rewards[ended] = scores
        now = time.time()
        start = self.max_prompt_tokens
        for k, row in enumerate(ended):
            infos[row] = {
                "completion": completions[k],
                "reference": references[k],
                "prompt": prompts[k],
                "index": int(self.row_index[row]),  # the data row, so evaluation samples can be traced
                "score": float(scores[k]),
                "reward_time": float(reward_time[k]),
                "reward_wait": wait / len(ended),  # overlapped scoring: the wait generation did not hide
                "episode": {
                    "r": float(scores[k]),
                    "l": int(self.num_generated[row]),
                    "t": round(now - self.start_time[row], 6),
                },
            }
            if self.multi_turn:
                infos[row].update(self._turn_info(row, bool(per_turn[k]), turn_rewards[k]))
            used = slice(start, start + self.completion_length[row])
            generated = self.input_ids[row, used][self.policy_mask[row, used] == 1]
            for key, token_id in self.count_tokens.items():
                infos[row][key] = int((generated == token_id).sum())
        return rewards, terminated, truncated, infos

    # -- text ------------------------------------------------------------------------------
    def completion(self, row: int) -> str:
        """Decoded text after the prompt on ``row``: the policy's tokens and any the env injected,
        without special tokens, cut at a stop string (single-turn tasks: just what the policy wrote)."""
        text = self._decode(row, 0)
        for stop in self.stop_strings:
            if stop in text:
                text = text[: text.index(stop)]
        return text

    def _decode(self, row: int, start: int, end: int | None = None) -> str:
        """Decoded columns ``[P + start, P + end)`` of ``row`` (``end``: ``completion_length``)."""
        P = self.max_prompt_tokens
        ids = self.input_ids[row, P + start : P + (self.completion_length[row] if end is None else end)]
        ids = ids[ids < len(self.tokenizer)]  # ids beyond the tokenizer decode to nothing
        return self.tokenizer.decode(ids.tolist(), skip_special_tokens=True)

    def observation(self, rows: np.ndarray | slice = slice(None)) -> dict[str, np.ndarray]:
        """Copies of the state arrays in the observation-space layout."""
        return {
            "input_ids": self.input_ids[rows].copy(),
            "attention_mask": self.attention_mask[rows].copy(),
            "policy_mask": self.policy_mask[rows].copy(),
            "prompt_length": self.prompt_length[rows, None].copy(),
            "num_generated": self.num_generated[rows, None].copy(),
            "completion_length": self.completion_length[rows, None].copy(),
        }
