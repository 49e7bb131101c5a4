"""TextArena's two-player board games against a fixed, scripted opponent: ``textarena/<Game>-v0``.

The policy plays one side (``player``, 0 by default: it moves first); a scripted opponent
(`OPPONENTS`) plays the other. After each policy move the opponent answers at once, and the
game's messages since the policy's last turn (the description of both moves, the opponent's move
itself as ``Opponent's move: [4]``, and the board as it now stands) are injected as the next chat
turn: the opponent's move is context, never an action. The game's reward for the policy (1 win,
0 draw, -1 loss, TextArena's `TwoPlayerState`) is the reward of the turn that ended the game;
earlier turns earn 0. An invalid policy move gets TextArena's warning and another try (the
opponent waits); a second invalid move in a row loses.

Games are replayed from the row's seed and moves on every reply, as the single-player ones are
(`lm_envs.ecosystem.textarena.game_task`); the opponent draws its random choices from a generator
seeded with the row's seed and its move number, so a replay makes the same moves. Shipped
(`TWO_PLAYER_GAMES`): TicTacToe and ConnectFour, whose legal moves the opponent reads off the
board. May import `lm_envs.tasks`, `lm_envs.registration` and `lm_envs.ecosystem.textarena`.
"""

from __future__ import annotations

import copy
import functools
import random
from collections.abc import Callable, Sequence
from typing import Any

from lm_envs.ecosystem import require
from lm_envs.ecosystem.textarena import _INSTRUCTION, _format_move, check_game_reward, game_reward, game_task
from lm_envs.registration import register_task
from lm_envs.tasks import Task

__all__ = ["OPPONENTS", "TWO_PLAYER_GAMES", "heuristic_opponent", "random_opponent", "textarena_duel_task"]

_BOARD_KIND = "GAME_BOARD"  # textarena.ObservationType.GAME_BOARD's name: only the newest board is shown


def _tictactoe_moves(env: Any) -> list[str]:
    board = env.state.game_state["board"]
    return [f"[{r * 3 + c}]" for r in range(3) for c in range(3) if board[r][c] == ""]


def _connect_four_moves(env: Any) -> list[str]:
    board = env.state.game_state["board"]
    return [f"[col {c}]" for c in range(len(board[0])) if board[0][c] == "."]


# TextArena's id -> (its legal moves on the current board, the opponent's preferred moves in order)
TWO_PLAYER_GAMES: dict[str, tuple[Callable[[Any], list[str]], tuple[str, ...]]] = {
    "ConnectFour-v0": (_connect_four_moves, ("[col 3]", "[col 2]", "[col 4]")),
    "TicTacToe-v0": (_tictactoe_moves, ("[4]", "[0]", "[2]", "[6]", "[8]")),
}


def random_opponent(env: Any, player: int, legal: list[str], preferred: Sequence[str], rng: random.Random) -> str:
    """A legal move drawn uniformly at random."""
    return rng.choice(legal)


def _wins(env: Any, player: int, move: str) -> bool:
    """Whether ``move`` by ``player`` ends the game with ``player`` winning (tried on a copy)."""
    trial = copy.deepcopy(env)
    trial.state.current_player_id = player
    trial.step(move)
    return bool(trial.state.done) and (trial.state.rewards or {}).get(player) == 1


def heuristic_opponent(env: Any, player: int, legal: list[str], preferred: Sequence[str], rng: random.Random) -> str:
    """Win at once if it can; else block the other side's immediate win; else the first free
    preferred move (centre, then corners); else a random legal move."""
    for side in (player, 1 - player):
        for move in legal:
            if _wins(env, side, move):
                return move
    for move in preferred:
        if move in legal:
            return move
    return rng.choice(legal)


OPPONENTS: dict[str, Callable[..., str]] = {"random": random_opponent, "heuristic": heuristic_opponent}


def _render(messages: Sequence[Any], player: int) -> str:
    """The game's messages to ``player`` (not the echo of its own move), one per line, with the
    opponent's move marked and only the newest board, last."""
    lines, board = [], None
    for message in messages:
        sender, text, kind = message[0], str(message[1]).strip(), getattr(message[2], "name", "")
        if sender == player or not text:
            continue
        if kind == _BOARD_KIND:
            board = text
        elif sender == -1:  # textarena.GAME_ID
            lines.append(text)
        else:
            lines.append(f"Opponent's move: {text}")
    return "\n".join([*lines, *([board] if board else [])])


class _Duel:
    """One two-player game against a scripted opponent, reset with a seed and replayed; restores
    Python's ``random`` state afterwards."""

    def __init__(self, game_id: str, opponent: str, player: int, game_kwargs: dict[str, Any]) -> None:
        self.game_id, self.player, self.game_kwargs = game_id, player, game_kwargs
        self.opponent = OPPONENTS[opponent]
        self.legal, self.preferred = TWO_PLAYER_GAMES[game_id]

    def _answer(self, env: Any, seed: int, ply: int) -> tuple[bool, int]:
        """The opponent moves while it is its turn and the game goes on; returns (done, plies)."""
        done = bool(env.state.done)
        while not done and env.state.current_player_id != self.player:
            rng = random.Random(seed * 1_000 + ply)
            done, _ = env.step(self.opponent(env, 1 - self.player, self.legal(env), self.preferred, rng))
            ply += 1
        return bool(done), ply

    def _messages(self, env: Any) -> str:
        messages = env.state.observations[self.player]
        env.state.observations[self.player] = []
        return _render(messages, self.player)

    def _reset(self, seed: int) -> tuple[Any, int]:
        ta = require("textarena", "textarena")
        env = ta.make(f"{self.game_id}-raw", **self.game_kwargs)
        env.reset(num_players=2, seed=seed)
        _, ply = self._answer(env, seed, 0)  # the opponent opens when the policy plays second
        return env, ply

    def start(self, seed: int) -> tuple[Any, str]:
        state = random.getstate()
        try:
            env, _ = self._reset(seed)
            return env, self._messages(env)
        finally:
            random.setstate(state)

    def play(self, seed: int, moves: Sequence[str]) -> tuple[str, float, bool]:
        """Replay ``moves`` (each answered by the opponent) from the start; return the policy's
        messages since its last move, its reward (at the game's end) and whether the game is over."""
        state = random.getstate()
        try:
            env, ply = self._reset(seed)
            text, done = self._messages(env), False
            for move in moves:
                env.state.observations[self.player] = []  # only what followed the last move
                done, _ = env.step(_format_move(move))
                done, ply = self._answer(env, seed, ply) if not done else (True, ply)
                text = self._messages(env)
                if done:
                    break
            reward = 0.0
            if done:
                rewards, _ = env.close()
                reward = game_reward((rewards or {}).get(self.player, 0.0))
            return text, reward, bool(done)
        finally:
            random.setstate(state)


def textarena_duel_task(
    game: str,
    opponent: str = "random",
    player: int = 0,
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
    """A TextArena two-player game against a scripted opponent, as a multi-turn `Task`.

    :param game: TextArena's id (``"TicTacToe-v0"``), one of `TWO_PLAYER_GAMES`.
    :param opponent: the scripted opponent, a name in `OPPONENTS`: ``"random"`` (a uniformly
        random legal move) or ``"heuristic"`` (win, else block, else centre and corners).
    :param player: the policy's side: 0 moves first, 1 second (the opponent's opening move is
        then in the prompt).
    :param split: ``"train"`` (seeds from 0) or ``"test"`` (seeds from 1,000,000): the seed picks
        the opponent's random choices.
    :param size: games (seeds) in the split.
    :param seed: first seed (overrides the split's).
    :param prompt_template: around the opening messages.
    :param system_prompt: a system message (chat template only).
    :param chat_template: as `Task`.
    :param data_dir: ignored (games generate their own); accepted as every task accepts it.
    :param reward: ``None``, or a game task's own (a run's evaluation env is given its training
        env's): the game scores every turn itself, so any other reward is an error, not ignored.
    :param game_kwargs: passed to the game's constructor (e.g. ``num_rows=4`` for ConnectFour).
    """
    require("textarena", "textarena")
    check_game_reward(reward, game)
    if game not in TWO_PLAYER_GAMES:
        raise ValueError(f"two-player TextArena game {game!r} is not shipped; shipped: {sorted(TWO_PLAYER_GAMES)}")
    if opponent not in OPPONENTS:
        raise ValueError(f"unknown opponent {opponent!r}; known: {sorted(OPPONENTS)}")
    if player not in (0, 1):
        raise ValueError(f"player must be 0 (moves first) or 1 (moves second), got {player!r}")
    if split not in ("train", "test"):
        raise ValueError(f"textarena/{game} has splits ['train', 'test'], not {split!r}")
    first = seed if seed is not None else (0 if split == "train" else 1_000_000)
    return game_task(
        _Duel(game, opponent, player, game_kwargs),
        f"textarena/{game}",
        first,
        size,
        prompt_template,
        system_prompt,
        chat_template,
        metadata={"game_kwargs": dict(game_kwargs), "opponent": opponent, "player": player},
    )


# Episode budgets: every policy move of a full game plus room for a few retried invalid moves.
_EPISODES = {
    "TicTacToe-v0": {"max_turns": 8, "max_new_tokens": 128, "max_injected_tokens": 1024},
    "ConnectFour-v0": {"max_turns": 16, "max_new_tokens": 256, "max_injected_tokens": 3072},
}
_COMMON = {
    "max_turn_tokens": 16,
    "max_reply_tokens": 160,
    "max_prompt_tokens": 768,
    "truncate_prompt": "left",
}


def register_textarena_duel_ids() -> None:
    """Register ``textarena/<Game>-v0`` for every game in `TWO_PLAYER_GAMES` (imports nothing)."""
    for game in TWO_PLAYER_GAMES:
        episode = {**_COMMON, **_EPISODES[game]}
        register_task(
            f"textarena/{game}",
            functools.partial(textarena_duel_task, game),
            **episode,
            run_defaults={
                "kwargs": {"split": "train", **episode},
                "eval_kwargs": {"split": "test"},
                "reward_wrappers": [],
            },
        )
