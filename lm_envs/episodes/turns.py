"""Multi-turn episodes: what `EpisodeBatch` does when a task has ``tools`` or ``respond``.

Tools answer inline, in a turn that goes on; a task's ``respond`` answers a turn that ended (all
rows of a lockstep batch at once with ``sync_turns``), and its reply is injected as the next
turn's context, or ends the episode. Injected tokens have attention 1 and policy 0 and count
against ``max_injected_tokens``, never against ``max_new_tokens``. See `lm_envs.tasks.turns`.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from lm_envs.episodes.config import EpisodeConfig
from lm_envs.tasks import Task
from lm_envs.tasks.turns import ChatTurns, Reply

_EOS, _STOPPED, _OUT_OF_TOKENS, _TURN_FULL = 1, 2, 4, 8  # how a turn ended (EpisodeBatch.turn_end bits)


class MultiTurnMixin:
    """`EpisodeBatch`'s tool calls, replies between turns and injected tokens. It reads and writes
    the batch's arrays (``turns``, ``waiting``, ``turn_end``, ``num_injected``...) set up by
    `EpisodeBatch.__init__`."""

    def _init_turns(self, task: Task, config: EpisodeConfig) -> None:
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

    def _call_tools(self, rows: np.ndarray, inject: dict[int, tuple[str, bool]]) -> None:
        """Offer the text since the env last spoke on each of ``rows`` (turns that go on) to the
        task's tools; the first that answers has its reply queued in ``inject``."""
        for row in rows:
            text = self._decode(row, self.segment_start[row])
            for tool in self.tools:
                reply = tool.call(text)
                if reply is not None:
                    inject[int(row)] = (self._trim(reply), False)
                    self.tool_calls[row] += 1
                    break

    def _await_replies(
        self,
        ending: np.ndarray,
        how: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        inject: dict[int, tuple[str, bool]],
    ) -> None:
        """Rows ``ending`` a turn (``how``: `_EOS` | ... bits) wait for the task's reply. Rows whose
        reply is due get it: it ends their episode (``terminated``/``truncated``) or is queued in
        ``inject`` as their next turn's context."""
        # Rows that ended a turn wait for the task's reply; with sync_turns, until every row
        # still in the episode has ended its turn, so the task answers them in one call and
        # the policy takes every injection in one step.
        self.turn_end[ending] = how
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

    def _turn_info(self, row: int, per_turn: bool, turn_rewards: np.ndarray) -> dict[str, Any]:
        """A finished row's multi-turn info: turns, tool calls, injected tokens, the first score a
        reply gave, and the per-turn rewards with each turn's last action (when replies gave them)."""
        info: dict[str, Any] = dict(
            turns=int(self.turns[row]),
            extra_turns=int(max(self.turns[row] - 1, 0)),
            tool_calls=int(self.tool_calls[row]),
            injected_tokens=int(self.num_injected[row]),
        )
        if not np.isnan(self.first_score[row]):
            info["first_score"] = float(self.first_score[row])
        if per_turn:
            used_turns = int(min(self.turns[row], self.config.max_turns))
            info["turn_rewards"] = [float(r) for r in turn_rewards[:used_turns]]
            info["turn_ends"] = [int(a) for a in self.turn_last_action[row, :used_turns]]
        return info

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


def _takes_keyword(function: Any, name: str) -> bool:
    """Whether ``function`` accepts the keyword argument ``name`` (named, or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())
