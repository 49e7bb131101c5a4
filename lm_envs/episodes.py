"""`EpisodeBatch`: the token-level MDP for ``n`` rows at once, as numpy arrays.

Both `TokenEnv` (n = 1) and `TokenVecEnv` (n = batch) are thin shells over this class, so the
transition logic exists once. `EpisodeConfig` is the one list of episode settings they share.

Row layout (width ``L = max_prompt_tokens + max_new_tokens + max_injected_tokens``)::

    [ pad ... pad | prompt tokens ][ policy and env tokens, contiguous ... | pad ... ]
    0                             P                     P + completion_length        L

Prompts are left-padded to ``P = max_prompt_tokens``. After ``P`` each row is *compact*: the
tokens the policy chose and the tokens the env injected (tool results, feedback turns) follow
one another with no gaps, ``completion_length`` of them. ``attention_mask`` marks real tokens;
``policy_mask`` marks the policy's own (its actions); injected tokens have attention 1 and
policy 0. In a single-turn task nothing is injected, so generated token ``t`` sits at ``P + t``.
A policy that keeps one KV cache for a lockstep batch maps this layout to its own cache columns
(`policies.CausalLMPolicy.act` puts masked holes where rows injected different amounts).

Ends of episodes:

* **terminated**: the policy ended its last turn (EOS or a stop string), or the task's reply
  ended the episode (`lm_envs.tasks.turns.Reply` with ``text=None``);
* **truncated**: a budget ran out: ``max_new_tokens`` (the policy's tokens, all turns),
  ``max_turn_tokens`` on the last allowed turn, or ``max_injected_tokens`` (an injection that
  does not fit ends the episode instead of being cut).
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from lm_envs.scoring import BackgroundScorer
from lm_envs.tasks import Task
from lm_envs.tasks.turns import ChatTurns, Reply

_EOS, _STOPPED, _OUT_OF_TOKENS, _TURN_FULL = 1, 2, 4, 8  # how a turn ended (EpisodeBatch.turn_end bits)


@dataclass
class EpisodeConfig:
    """Everything about an episode that is not the task: budgets, widths and how turns end.

    :param max_new_tokens: the policy's token budget over the whole episode (all turns);
        reaching it truncates the episode.
    :param max_prompt_tokens: width of the prompt region. Longer prompts follow ``truncate_prompt``.
    :param vocab_size: size of the action space (a model's vocabulary may exceed the
        tokenizer's); defaults to ``len(tokenizer)``.
    :param eos_token_ids: token ids that end a turn; defaults to the tokenizer's EOS.
    :param stop_strings: strings that also end a turn once they appear in its decoded text.
    :param truncate_prompt: ``"error"`` (default) or ``"left"``: keep the last tokens of a
        too-long prompt (and warn once), never a silent misalignment.
    :param count_tokens: ``{info_key: token}``: count these tokens (ids or token strings) among
        the policy's tokens of each finished episode and report the count as
        ``info[info_key]``. Special tokens such as a pause token are stripped from the text,
        so this is how a reward wrapper can price them (``InfoTerm("pauses")``).
    :param max_turns: how many turns the policy gets when the task replies between turns
        (``Task.respond``); the episode ends after the last.
    :param max_turn_tokens: the policy's budget per turn (``None``: no limit but
        ``max_new_tokens``); reaching it ends the turn as EOS would.
    :param max_injected_tokens: room for env-injected tokens over the whole episode. Injected
        tokens count against the context width, never against ``max_new_tokens``.
    :param max_reply_tokens: an env message (a reply's or a tool's text, not a reply's
        ``suffix``) is cut to this many tokens before it is rendered as a turn.
    :param sync_turns: in a lockstep batch, a row that ends a turn waits (takes no action) until
        every row still in the episode has ended its turn; then the task replies to all of
        them in one batched ``respond`` call (one sandbox batch for code feedback) and the
        policy takes every reply in one step. ``False``: each row gets its reply at once.
        Per-row auto-reset envs never wait. Tools always answer at once.
    :param overlap_scoring: in a lockstep batch, score a row's completion on a background
        thread as soon as the row ends, while the other rows keep generating
        (`lm_envs.scoring.BackgroundScorer`); the row's terminal step, with its reward, is
        reported once the score is in, and when no row generates any more the batch waits for
        the rest (``info["reward_wait"]``). Off by default: it pays where generation and scoring
        use different resources (the policy on a GPU, the sandbox on idle cores); on a 2-core CPU
        both compete for the same cores and it measured slower (docs/benchmarks.md). Not for
        tasks that reply between turns (a reply's verdict is needed at once, and its reward is in
        use). Single envs and per-row auto-reset envs always score at once.
    """

    max_new_tokens: int = 64
    max_prompt_tokens: int = 256
    vocab_size: int | None = None
    eos_token_ids: Sequence[int] | None = None
    stop_strings: Sequence[str] = ()
    truncate_prompt: str = "error"
    count_tokens: dict[str, int | str] | None = None
    max_turns: int = 1
    max_turn_tokens: int | None = None
    max_injected_tokens: int = 0
    max_reply_tokens: int = 128
    sync_turns: bool = True
    overlap_scoring: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.max_prompt_tokens < 1:
            raise ValueError("max_prompt_tokens must be at least 1")
        if self.truncate_prompt not in ("error", "left"):
            raise ValueError("truncate_prompt must be 'error' or 'left'")
        if self.max_turns < 1:
            raise ValueError("max_turns must be at least 1")
        if self.max_turn_tokens is not None and self.max_turn_tokens < 1:
            raise ValueError("max_turn_tokens must be at least 1 (or None)")
        if self.max_injected_tokens < 0 or self.max_reply_tokens < 1:
            raise ValueError("max_injected_tokens must be >= 0 and max_reply_tokens >= 1")
        self.stop_strings = tuple(self.stop_strings)

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def build(cls, config: EpisodeConfig | None = None, **kwargs: Any) -> EpisodeConfig:
        """``config`` with ``kwargs`` replaced (``EpisodeConfig(**kwargs)`` without one)."""
        unknown = sorted(set(kwargs) - cls.names())
        if unknown:
            raise TypeError(f"unknown episode settings {unknown}; known: {sorted(cls.names())}")
        return dataclasses.replace(config, **kwargs) if config is not None else cls(**kwargs)

    @property
    def max_completion_tokens(self) -> int:
        """Columns after the prompt region: the policy's budget plus the injected budget."""
        return self.max_new_tokens + self.max_injected_tokens


def observation_space(
    vocab_size: int, max_prompt_tokens: int, max_new_tokens: int, max_injected_tokens: int = 0
) -> spaces.Dict:
    """The observation space shared by `TokenEnv` and `TokenVecEnv`."""
    after = max_new_tokens + max_injected_tokens
    length = max_prompt_tokens + after
    return spaces.Dict(
        {
            "input_ids": spaces.Box(0, vocab_size - 1, shape=(length,), dtype=np.int64),
            "attention_mask": spaces.Box(0, 1, shape=(length,), dtype=np.int8),
            "policy_mask": spaces.Box(0, 1, shape=(length,), dtype=np.int8),
            "prompt_length": spaces.Box(0, max_prompt_tokens, shape=(1,), dtype=np.int64),
            "num_generated": spaces.Box(0, max_new_tokens, shape=(1,), dtype=np.int64),
            "completion_length": spaces.Box(0, after, shape=(1,), dtype=np.int64),
        }
    )


class EpisodeBatch:
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
        self.tools = tuple(getattr(task, "tools", ()) or ())
        self.respond = getattr(task, "respond", None)
        self._respond_histories = self.respond is not None and _takes_keyword(self.respond, "histories")
        self.multi_turn = bool(self.tools) or self.respond is not None
        if self.multi_turn and config.max_injected_tokens == 0:
            raise ValueError(
                f"task {task.name!r} injects text (tools or respond) but max_injected_tokens=0: "
                f"give it room, e.g. max_injected_tokens=256"
            )
        if config.max_turns > 1 and self.respond is None:
            raise ValueError(f"max_turns={config.max_turns} needs a task that replies between turns (Task.respond)")
        self.max_turn_tokens = config.max_turn_tokens or config.max_new_tokens
        self._chat: ChatTurns | None = None
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
        # Overlapped scoring: rows that ended and wait for their score (terminal step held back).
        overlap = config.overlap_scoring
        if overlap and self.respond is not None:
            raise ValueError(
                f"task {task.name!r} replies between turns: its verdicts are needed at once, so "
                "overlap_scoring cannot be on"
            )
        self.overlap_scoring = bool(overlap) and n > 1  # TokenVecEnv turns it off in auto-reset mode
        self.scorer: BackgroundScorer | None = None
        self.scoring = np.zeros(n, dtype=bool)
        self.held_terminated = np.zeros(n, dtype=bool)  # how a held row ended (else truncated)
        self.reward_seconds = np.zeros(n, dtype=np.float64)  # scored in the background: its share of the call
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
            for row in rows[~turn_ends[rows]]:
                text = self._decode(row, self.segment_start[row])
                for tool in self.tools:
                    reply = tool.call(text)
                    if reply is not None:
                        inject[int(row)] = (self._trim(reply), False)
                        self.tool_calls[row] += 1
                        break
        ending = rows[turn_ends[rows]]
        self.turns[ending] += 1
        recorded = ending[self.turns[ending] <= self.config.max_turns]
        k = self.turns[recorded] - 1
        self.turn_spans[recorded, k, 0] = self.turn_start[recorded]
        self.turn_spans[recorded, k, 1] = self.completion_length[recorded]
        self.turn_last_action[recorded, k] = self.num_generated[recorded] - 1
        if self.respond is not None:
            # Rows that ended a turn wait for the task's reply; with sync_turns, until every row
            # still in the episode has ended its turn, so the task answers them in one call and
            # the policy takes every injection in one step.
            self.turn_end[ending] = (
                eos[ending] * _EOS
                | stopped[ending] * _STOPPED
                | out_of_tokens[ending] * _OUT_OF_TOKENS
                | turn_full[ending] * _TURN_FULL
            )
            self.waiting[ending] = True
            acting = ~self.finished & ~self.waiting
            ready = np.flatnonzero(self.waiting) if not (self.sync_turns and acting.any()) else ending[:0]
            for row, reply in zip(ready, self._replies(ready) if ready.size else []):
                self.waiting[row] = False
                flags = int(self.turn_end[row])
                if reply.score is not None:
                    if np.isnan(self.first_score[row]):
                        self.first_score[row] = reply.score
                    self.last_score[row] = reply.score
                if reply.reward is not None and self.turns[row] <= self.config.max_turns:
                    self.turn_rewards[row, self.turns[row] - 1] = float(reply.reward)
                out, budget_cut = bool(flags & _OUT_OF_TOKENS), bool(flags & _TURN_FULL and not flags & _STOPPED)
                if reply.text is None or self.turns[row] >= self.config.max_turns or out:
                    # The task's own end, or the model's on its last turn, terminates; a budget truncates.
                    terminated[row] = reply.text is None or not (out or budget_cut)
                    truncated[row] = not terminated[row]
                else:
                    content = self._trim(reply.text) + reply.suffix
                    text = self._chat_turns().render(content, bool(flags & _EOS)) if reply.chat else content
                    inject[int(row)] = (text, True)
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

    def _overlap(self, ended: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> tuple[np.ndarray, float]:
        """Hand rows that ended without a score to the background scorer and hold back their
        terminal step; release held rows whose score is in, and all of them once no row is
        generating. Returns the rows to report now and the seconds spent waiting."""
        if self.scorer is None:
            self.scorer = BackgroundScorer(self.task.reward)
        held = ended[np.isnan(self.last_score[ended])]
        for row in held:
            index = int(self.row_index[row])
            self.scorer.submit(
                int(row), self.completion(row), self.task.references[index], self.encode_prompt(index)[1]
            )
        self.held_terminated[held] = terminated[held]  # a row ends terminated or truncated, never both
        terminated[held] = truncated[held] = False
        self.scoring[held] = True
        scored = self.scorer.ready()
        wait = 0.0
        if self.scoring.any() and self.finished.all():  # nothing left to hide the scoring behind
            start = time.perf_counter()
            scored.update(self.scorer.wait())
            wait = time.perf_counter() - start
        for row, (score, seconds) in scored.items():
            self.last_score[row], self.reward_seconds[row] = score, seconds
            terminated[row] = self.held_terminated[row]
            truncated[row] = not self.held_terminated[row]
            self.scoring[row] = False
        released = np.fromiter(scored, dtype=np.int64, count=len(scored))
        return np.union1d(np.setdiff1d(ended, held), released), wait

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
            self.scorer = None

    def _replies(self, rows: np.ndarray) -> list[Reply]:
        attempts = [self._attempt(row) for row in rows]
        references = [self.task.references[i] for i in self.row_index[rows]]
        turns = [int(t) for t in self.turns[rows]]
        if self._respond_histories:
            histories = [[self._span_text(row, k) for k in range(turn - 1)] for row, turn in zip(rows, turns)]
            replies = list(self.respond(attempts, references, turns, histories=histories))
        else:
            replies = list(self.respond(attempts, references, turns))
        if len(replies) != len(rows) or not all(isinstance(reply, Reply) for reply in replies):
            raise TypeError(
                f"task {self.task.name!r}: respond must return one lm_envs.tasks.turns.Reply per attempt "
                f"({len(rows)}), got {replies!r:.200}"
            )
        return replies

    def _trim(self, text: str) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.config.max_reply_tokens:
            return text
        return self.tokenizer.decode(ids[: self.config.max_reply_tokens], skip_special_tokens=False)

    def _chat_turns(self) -> ChatTurns:
        if self._chat is None:
            self._chat = ChatTurns(self.tokenizer, self.task.uses_chat_template(self.tokenizer))
        return self._chat

    def _inject(self, row: int, text: str, new_turn: bool) -> bool:
        """Write env text after ``row``'s last token (``new_turn``: the policy's next turn starts
        after it); ``False`` when it does not fit."""
        ids = np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        if len(ids) == 0:
            return True
        if self.num_injected[row] + len(ids) > self.config.max_injected_tokens:
            return False
        start = self.max_prompt_tokens + self.completion_length[row]
        self.input_ids[row, start : start + len(ids)] = ids
        self.attention_mask[row, start : start + len(ids)] = 1
        self.policy_mask[row, start : start + len(ids)] = 0
        self.completion_length[row] += len(ids)
        self.num_injected[row] += len(ids)
        self.segment_start[row] = self.completion_length[row]
        if new_turn:
            self.turn_start[row] = self.completion_length[row]
            self.turn_generated[row] = self.num_generated[row]
        return True

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
                infos[row].update(
                    turns=int(self.turns[row]),
                    extra_turns=int(max(self.turns[row] - 1, 0)),
                    tool_calls=int(self.tool_calls[row]),
                    injected_tokens=int(self.num_injected[row]),
                )
                if not np.isnan(self.first_score[row]):
                    infos[row]["first_score"] = float(self.first_score[row])
                if per_turn[k]:
                    used_turns = int(min(self.turns[row], self.config.max_turns))
                    infos[row]["turn_rewards"] = [float(r) for r in turn_rewards[k, :used_turns]]
                    infos[row]["turn_ends"] = [int(a) for a in self.turn_last_action[row, :used_turns]]
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

    def _attempt(self, row: int) -> str:
        """The policy's current turn on ``row``, decoded and cut at a stop string."""
        text = self._decode(row, self.turn_start[row])
        for stop in self.stop_strings:
            if stop in text:
                text = text[: text.index(stop)]
        return text

    def _span_text(self, row: int, turn: int) -> str:
        """The policy's turn ``turn`` (0-based) on ``row``, decoded and cut at a stop string."""
        start, end = self.turn_spans[row, turn]
        text = self._decode(row, start, end)
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

    _STATE_ARRAYS = (
        "input_ids",
        "attention_mask",
        "policy_mask",
        "prompt_length",
        "num_generated",
        "completion_length",
        "num_injected",
        "turns",
        "turn_start",
        "turn_generated",
        "segment_start",
        "tool_calls",
        "first_score",
        "last_score",
        "waiting",
        "turn_end",
        "finished",
        "row_index",
        "start_time",
        "turn_spans",
        "turn_last_action",
        "turn_rewards",
    )
    _STATE_DEFAULTS = {"turn_spans": 0, "turn_last_action": -1, "turn_rewards": np.nan}  # saved before per-turn rewards

    def get_state(self) -> dict[str, np.ndarray]:
        if self.scoring.any():
            raise RuntimeError("the batch has scores in flight (overlap_scoring): save its state between batches")
        return {name: getattr(self, name).copy() for name in self._STATE_ARRAYS}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        missing = [name for name in self._STATE_ARRAYS if name not in state]
        if missing and set(missing) - {
            "completion_length",
            "num_injected",
            "turns",
            "turn_start",
            "turn_generated",
            "segment_start",
            "tool_calls",
            "first_score",
            "last_score",
            "waiting",
            "turn_end",
            *self._STATE_DEFAULTS,
        }:
            raise ValueError(f"episode state lacks {missing}")
        for name in self._STATE_ARRAYS:
            if name in state:
                getattr(self, name)[...] = state[name]
            elif name in self._STATE_DEFAULTS:
                getattr(self, name)[...] = self._STATE_DEFAULTS[name]
            else:  # saved before multi-turn episodes existed: nothing was injected
                getattr(self, name)[...] = (
                    state["num_generated"] if name == "completion_length" else (np.nan if name.endswith("score") else 0)
                )

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


def _takes_keyword(function: Any, name: str) -> bool:
    """Whether ``function`` accepts the keyword argument ``name`` (named, or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())
