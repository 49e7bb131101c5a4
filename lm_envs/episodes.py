"""`EpisodeBatch`: the token-level MDP for ``n`` rows at once, as numpy arrays.

Both `TokenEnv` (n = 1) and `TokenVecEnv` (n = batch) are thin shells over this class, so the
transition logic exists once.

Row layout, fixed for the whole episode (length ``L = max_prompt_tokens + max_new_tokens``)::

    [ pad ... pad | prompt tokens ][ generated tokens ... | pad ... ]
    0                             P                                 L

Prompts are left-padded to ``P = max_prompt_tokens``, so generated token ``t`` always sits at
column ``P + t`` in every row. This is the layout `model.generate` uses for a left-padded batch,
and it lets a policy keep one KV cache for the whole batch. ``attention_mask`` marks real
tokens; ``policy_mask`` marks tokens the policy chose (an env that injects tool output later
writes tokens with attention 1 and policy 0).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
from gymnasium import spaces

from lm_envs.tasks import Task


def observation_space(vocab_size: int, max_prompt_tokens: int, max_new_tokens: int) -> spaces.Dict:
    """The observation space shared by `TokenEnv` and `TokenVecEnv`."""
    length = max_prompt_tokens + max_new_tokens
    return spaces.Dict(
        {
            "input_ids": spaces.Box(0, vocab_size - 1, shape=(length,), dtype=np.int64),
            "attention_mask": spaces.Box(0, 1, shape=(length,), dtype=np.int8),
            "policy_mask": spaces.Box(0, 1, shape=(length,), dtype=np.int8),
            "prompt_length": spaces.Box(0, max_prompt_tokens, shape=(1,), dtype=np.int64),
            "num_generated": spaces.Box(0, max_new_tokens, shape=(1,), dtype=np.int64),
        }
    )


class EpisodeBatch:
    """State and transitions of ``n`` episodes of prompt-then-generate.

    :param task: prompts, references and the reward.
    :param tokenizer: a HF tokenizer; used to encode prompts and decode completions.
    :param n: number of rows.
    :param max_new_tokens: token budget; reaching it truncates the episode.
    :param max_prompt_tokens: width of the prompt region. Longer prompts follow ``truncate_prompt``.
    :param vocab_size: size of the action space (a model's vocabulary may exceed the tokenizer's).
    :param eos_token_ids: token ids that terminate; defaults to the tokenizer's EOS.
    :param stop_strings: strings that also terminate once they appear in the decoded completion.
    :param count_tokens: ``{info_key: token}``: count these tokens (ids or token strings) in each
        finished completion and report the count as ``info[info_key]``. Special tokens such as a
        pause token are stripped from the text, so this is how a reward wrapper can price them
        (``InfoTerm("pauses")``).
    :param truncate_prompt: ``"error"`` (default) or ``"left"``: keep the last tokens of a
        too-long prompt (and warn once), never a silent misalignment.
    """

    def __init__(
        self,
        task: Task,
        tokenizer: Any,
        n: int,
        max_new_tokens: int = 64,
        max_prompt_tokens: int = 256,
        vocab_size: int | None = None,
        eos_token_ids: Sequence[int] | None = None,
        stop_strings: Sequence[str] = (),
        truncate_prompt: str = "error",
        count_tokens: dict[str, int | str] | None = None,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if truncate_prompt not in ("error", "left"):
            raise ValueError("truncate_prompt must be 'error' or 'left'")
        self.task, self.tokenizer, self.n = task, tokenizer, n
        self.max_new_tokens, self.max_prompt_tokens = max_new_tokens, max_prompt_tokens
        self.vocab_size = int(vocab_size or len(tokenizer))
        if self.vocab_size < len(tokenizer):
            raise ValueError(f"vocab_size={self.vocab_size} is smaller than the tokenizer ({len(tokenizer)})")
        if eos_token_ids is None:
            eos_token_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.eos_token_ids = np.asarray(sorted(set(eos_token_ids)), dtype=np.int64)
        self.stop_strings = tuple(stop_strings)
        self.count_tokens = {key: self._token_id(token) for key, token in (count_tokens or {}).items()}
        self.truncate_prompt = truncate_prompt
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(self.eos_token_ids[0])
        self.length = max_prompt_tokens + max_new_tokens
        self.observation_space = observation_space(self.vocab_size, max_prompt_tokens, max_new_tokens)
        self._prompt_cache: dict[int, tuple[np.ndarray, str]] = {}

        L = self.length
        self.input_ids = np.full((n, L), self.pad_token_id, dtype=np.int64)
        self.attention_mask = np.zeros((n, L), dtype=np.int8)
        self.policy_mask = np.zeros((n, L), dtype=np.int8)
        self.prompt_length = np.zeros(n, dtype=np.int64)
        self.num_generated = np.zeros(n, dtype=np.int64)
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
                ids = ids[-self.max_prompt_tokens:]
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
            self.input_ids[row, P - len(ids):P] = ids
            self.attention_mask[row, P - len(ids):P] = 1
            self.prompt_length[row] = len(ids)
        self.row_index[rows] = indices
        self.num_generated[rows] = 0
        self.finished[rows] = False
        self.start_time[rows] = time.time()

    # -- transitions -----------------------------------------------------------------------
    def step(self, actions: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Append ``actions`` on ``active`` rows; return rewards, terminated, truncated, infos.

        Inactive rows are untouched (their actions are ignored) and get reward 0. Infos of
        rows that end carry everything per-episode metrics need: the decoded completion, the
        reference, the prompt, the data row index, the task score and an SB3 ``episode`` record.
        """
        actions = np.asarray(actions, dtype=np.int64).reshape(self.n)
        rows = np.flatnonzero(active & ~self.finished)
        if rows.size and (actions[rows].min() < 0 or actions[rows].max() >= self.vocab_size):
            raise ValueError(f"actions must be in [0, {self.vocab_size}), got {actions[rows]}")
        column = self.max_prompt_tokens + self.num_generated[rows]
        self.input_ids[rows, column] = actions[rows]
        self.attention_mask[rows, column] = 1
        self.policy_mask[rows, column] = 1
        self.num_generated[rows] += 1

        terminated = np.zeros(self.n, dtype=bool)
        terminated[rows] = np.isin(actions[rows], self.eos_token_ids)
        if self.stop_strings:  # decoding costs a Python call per row, so only when asked for
            for row in rows[~terminated[rows]]:
                text = self._decode(row)
                terminated[row] = any(stop in text for stop in self.stop_strings)
        truncated = np.zeros(self.n, dtype=bool)
        truncated[rows] = ~terminated[rows] & (self.num_generated[rows] >= self.max_new_tokens)
        ended = np.flatnonzero(terminated | truncated)
        self.finished[ended] = True

        rewards = np.zeros(self.n, dtype=np.float32)
        infos: list[dict] = [{} for _ in range(self.n)]
        if ended.size:
            completions = [self.completion(row) for row in ended]
            references = [self.task.references[i] for i in self.row_index[ended]]
            prompts = [self.encode_prompt(int(i))[1] for i in self.row_index[ended]]
            reward_start = time.perf_counter()
            scores = np.asarray(self.task.reward(completions, references, prompts), dtype=np.float32)
            reward_time = (time.perf_counter() - reward_start) / len(ended)
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
                    "reward_time": reward_time,
                    "episode": {"r": float(scores[k]), "l": int(self.num_generated[row]),
                                "t": round(now - self.start_time[row], 6)},
                }
                generated = self.input_ids[row, start:start + self.num_generated[row]]
                for key, token_id in self.count_tokens.items():
                    infos[row][key] = int((generated == token_id).sum())
        return rewards, terminated, truncated, infos

    def completion(self, row: int) -> str:
        """Decoded text the policy generated on ``row``: no EOS/special tokens, cut at a stop string."""
        text = self._decode(row)
        for stop in self.stop_strings:
            if stop in text:
                text = text[: text.index(stop)]
        return text

    def _decode(self, row: int) -> str:
        start = self.max_prompt_tokens
        ids = self.input_ids[row, start:start + self.num_generated[row]]
        ids = ids[self.attention_mask[row, start:start + self.num_generated[row]] == 1]
        ids = ids[ids < len(self.tokenizer)]  # ids beyond the tokenizer decode to nothing
        return self.tokenizer.decode(ids.tolist(), skip_special_tokens=True)

    _STATE_ARRAYS = ("input_ids", "attention_mask", "policy_mask", "prompt_length", "num_generated",
                     "finished", "row_index", "start_time")

    def get_state(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name).copy() for name in self._STATE_ARRAYS}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        for name in self._STATE_ARRAYS:
            getattr(self, name)[...] = state[name]

    def observation(self, rows: np.ndarray | slice = slice(None)) -> dict[str, np.ndarray]:
        """Copies of the state arrays in the observation-space layout."""
        return {
            "input_ids": self.input_ids[rows].copy(),
            "attention_mask": self.attention_mask[rows].copy(),
            "policy_mask": self.policy_mask[rows].copy(),
            "prompt_length": self.prompt_length[rows, None].copy(),
            "num_generated": self.num_generated[rows, None].copy(),
        }
