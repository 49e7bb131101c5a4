"""TextArena's single-player games as multi-turn ids ``textarena/<Game>-v0``.

A game is a multi-turn `Task` (`lm_envs.tasks.turns`): the prompt is the game's opening
messages, each policy turn is one move, and the game's answer to it (the new messages) is
injected as a chat turn. Row ``i`` of the task is the game reset with seed ``seed + i``. The
game's reward for each move is that turn's `Reply.reward` (per-turn rewards; TextArena's
single-player games pay at the end, so it is 0 until the last move); the episode's reward is
their sum. A move without brackets is put in brackets, as TextArena's ``ActionFormattingWrapper``
does.

The games are replayed, not kept alive: each reply resets the game with the row's seed and
replays the row's earlier moves (``respond``'s ``histories``), so nothing lives outside the env
state and a resumed batch continues exactly. The Python ``random`` state, which TextArena games
reseed, is restored after each call.

Only games that import and run with the network unavailable ship (`GAMES`; the tests check each
one in a process with no network and an empty NLTK data path). Left out: Hangman, Wordle,
WordLadder, WordSearch (they download NLTK corpora at import), GuessWho and TwentyQuestions (an
OpenRouter model plays the other side) and Klondike (a syntax error in textarena 0.7.4).
Two-player games against a scripted opponent: `lm_envs.ecosystem.textarena_duel`, which reuses
`game_task`. May import `lm_envs.tasks` and `lm_envs.registration`.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from lm_envs.ecosystem import require
from lm_envs.registration import register_task
from lm_envs.tasks import Reply, Task

__all__ = ["EXCLUDED", "GAMES", "register_textarena_ids", "textarena_task"]

# Single-player games of textarena 0.7.4 that run offline: our id textarena/<name> -> TextArena's id.
GAMES = (
    "Bandit-v0",
    "Blackjack-v0",
    "Countdown-v0",
    "Crosswords-v0",
    "Cryptarithm-v0",
    "FifteenPuzzle-v0",
    "FrozenLake-v0",
    "GuessTheNumber-v0",
    "LightsOut-v0",
    "LogicPuzzle-v0",
    "Mastermind-v0",
    "Minesweeper-v0",
    "PegJump-v0",
    "RushHour-v0",
    "Secretary-v0",
    "Set-v0",
    "Slitherlink-v0",
    "Sokoban-v0",
    "Sudoku-v0",
    "ThreeCardMonte-v0",
    "TowerOfHanoi-v0",
)
EXCLUDED = {
    "Hangman-v0": "downloads NLTK corpora at import",
    "Wordle-v0": "downloads NLTK corpora at import",
    "WordLadder-v0": "downloads NLTK corpora at import",
    "WordSearch-v0": "downloads NLTK corpora at import",
    "GuessWho-v0": "needs an OpenRouter API key",
    "TwentyQuestions-v0": "needs an OpenRouter API key",
    "Klondike-v0": "SyntaxError in textarena 0.7.4",
}
_INSTRUCTION = "\nReply with your move only."


class _Game:
    """One game, reset with a seed and replayed; restores Python's ``random`` state afterwards."""

    def __init__(self, game_id: str, game_kwargs: dict[str, Any]) -> None:
        self.game_id, self.game_kwargs = game_id, game_kwargs

    def start(self, seed: int) -> tuple[Any, str]:
        ta = require("textarena", "textarena")
        env = ta.make(f"{self.game_id}-raw", **self.game_kwargs)
        env.reset(num_players=1, seed=seed)
        _, messages = env.get_observation()
        return env, _render(messages)

    def play(self, seed: int, moves: Sequence[str]) -> tuple[str, float, bool]:
        """Replay ``moves`` from the start; return the game's messages after the last one, its
        reward and whether the game is over."""
        state = random.getstate()
        try:
            env, text = self.start(seed)
            done = False
            for move in moves:
                done, _ = env.step(_format_move(move))
                _, messages = env.get_observation()
                text = _render(messages)
                if done:
                    break
            reward = 0.0
            if done:
                closed = env.close()
                rewards = closed[0] if isinstance(closed, tuple) else closed
                reward = game_reward((rewards or {}).get(0, 0.0))
            return text, reward, bool(done)
        finally:
            random.setstate(state)


def game_reward(value: Any) -> float:
    """A game's reward as a float; 0 for a value that is not a number (textarena 0.7.4's
    ThreeCardMonte passes its invalid-move message as the reward)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _format_move(move: str) -> str:
    move = move.strip()
    return move if "[" in move else f"[{move}]"


def _render(messages: Sequence[Any]) -> str:
    """The game's messages (not the echo of the player's own move), one per line."""
    lines = []
    for message in messages:
        sender, text = (message[0], message[1]) if isinstance(message, (tuple, list)) else (-1, str(message))
        if sender == -1:  # textarena.GAME_ID
            lines.append(str(text).strip())
    return "\n".join(line for line in lines if line)


class _Openings(Sequence):
    """Row ``i``: the game's opening messages with seed ``seed + i`` (computed once, when first read)."""

    def __init__(self, game: _Game, seed: int, size: int) -> None:
        self.game, self.seed, self.size = game, seed, size
        self._cache: dict[int, str] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        index = int(index)
        if not 0 <= index < self.size:
            raise IndexError(index)
        if index not in self._cache:
            state = random.getstate()
            try:
                self._cache[index] = self.game.start(self.seed + index)[1]
            finally:
                random.setstate(state)
        return self._cache[index]


def _no_reward(completions, references, prompts=None) -> np.ndarray:
    # Every turn's reply carries the game's reward, so the episode's reward is their sum and this
    # whole-completion reward is never used; it exists because a Task needs one.
    return np.zeros(len(completions), dtype=np.float32)


def check_game_reward(reward: Any, game: str) -> None:
    """Refuse a task-level reward for a game, which scores every turn with its own."""
    if reward is not None and reward is not _no_reward:
        raise ValueError(
            f"textarena/{game} scores every turn with the game's own reward; a reward= for the whole "
            "completion would never be used: leave it out (wrap the env's rewards with env.reward_wrappers)"
        )


def textarena_task(
    game: str,
    split: str = "train",
    size: int = 1000,
    seed: int | None = None,
    prompt_template: str = "{question}" + _INSTRUCTION,
    system_prompt: str | None = None,
    chat_template: bool | None = None,
    data_dir: str | None = None,
    reward: Any = None,
    **game_kwargs: Any,
) -> Task:
    """A TextArena single-player game as a multi-turn `Task`.

    :param game: TextArena's id (``"GuessTheNumber-v0"``), one of `GAMES`.
    :param split: ``"train"`` (seeds from 0) or ``"test"`` (seeds from 1,000,000): the same game,
        different deals.
    :param size: games (seeds) in the split.
    :param seed: first seed (overrides the split's).
    :param prompt_template: around the opening messages.
    :param system_prompt: a system message (chat template only).
    :param chat_template: as `Task`.
    :param data_dir: ignored (games generate their own); accepted as every task accepts it.
    :param reward: ``None``, or a game task's own (a run's evaluation env is given its training
        env's): the game scores every turn itself, so any other reward is an error, not ignored.
    :param game_kwargs: passed to the game's constructor (e.g. ``num_disks=3``).
    """
    require("textarena", "textarena")
    check_game_reward(reward, game)
    if game not in GAMES:
        why = f" ({EXCLUDED[game]})" if game in EXCLUDED else ""
        raise ValueError(f"TextArena game {game!r} is not shipped{why}; shipped: {list(GAMES)}")
    if split not in ("train", "test"):
        raise ValueError(f"textarena/{game} has splits ['train', 'test'], not {split!r}")
    first = seed if seed is not None else (0 if split == "train" else 1_000_000)
    return game_task(
        _Game(game, game_kwargs),
        f"textarena/{game}",
        first,
        size,
        prompt_template,
        system_prompt,
        chat_template,
        metadata={"game_kwargs": dict(game_kwargs)},
    )


def game_task(
    runner: Any,
    name: str,
    first_seed: int,
    size: int,
    prompt_template: str,
    system_prompt: str | None,
    chat_template: bool | None,
    metadata: dict[str, Any],
) -> Task:
    """A multi-turn `Task` over a replayed game: row ``i`` is the game started with seed
    ``first_seed + i``; each reply replays the row's moves (``runner.play``) and carries the
    game's reward for the turn.

    :param runner: has ``start(seed) -> (env, opening text)`` and ``play(seed, moves) -> (text,
        reward, done)`` (`_Game`, or `lm_envs.ecosystem.textarena_duel`'s two-player runner).
    :param name: the task's name (``textarena/<Game>-v0``).
    :param first_seed: row 0's seed.
    :param size: rows (seeds).
    :param prompt_template: around the opening text.
    :param system_prompt: a system message (chat template only).
    :param chat_template: as `Task`.
    :param metadata: the task's metadata.
    """

    def respond(
        attempts: Sequence[str],
        references: Sequence[Any],
        turns: Sequence[int],
        histories: Sequence[Sequence[str]] = (),
    ) -> list[Reply]:
        replies = []
        for k, (attempt, reference) in enumerate(zip(attempts, references)):
            moves = [*(histories[k] if histories else ()), attempt]
            text, reward, done = runner.play(reference["seed"], moves)
            replies.append(Reply(text=None if done else (text or "(no message)"), reward=reward))
        return replies

    game = name.removeprefix("textarena/")
    references = [{"game": game, "seed": first_seed + i} for i in range(size)]
    return Task(
        questions=_Openings(runner, first_seed, size),
        references=references,
        reward=_no_reward,
        name=name,
        prompt_template=prompt_template,
        system_prompt=system_prompt,
        chat_template=chat_template,
        respond=respond,
        metadata=metadata,
    )


_EPISODE = {
    "max_turns": 8,
    "max_turn_tokens": 16,
    "max_new_tokens": 128,
    "max_reply_tokens": 160,
    "max_injected_tokens": 1536,
    "max_prompt_tokens": 768,
    "truncate_prompt": "left",
}


def register_textarena_ids() -> None:
    """Register ``textarena/<Game>-v0`` for every game in `GAMES` (imports nothing)."""
    for game in GAMES:
        register_task(
            f"textarena/{game}",
            functools.partial(textarena_task, game),
            **_EPISODE,
            run_defaults={
                "kwargs": {"split": "train", **_EPISODE},
                "eval_kwargs": {"split": "test"},
                "reward_wrappers": [],
            },
        )
