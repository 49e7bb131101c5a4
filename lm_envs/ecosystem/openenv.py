"""OpenEnv in both directions: serve an `lm_envs` id as an OpenEnv server, or train on an OpenEnv env.

**Serving** (`serve`, `LMTextEnvironment`): any registered id becomes an OpenEnv environment at
the *text* level, which is what TRL, SkyRL and other OpenEnv consumers drive: ``reset(seed=...)``
returns the prompt (`TextObservation.prompt`: the task's question in its prompt template, without
a chat template, and the system prompt if any; ``index``: the data row, which ``seed`` picks
deterministically and ``index=`` picks directly); ``step(TextAction(text=...))`` takes one turn of
the model's text. A single-turn task ends there with the task's reward (code rewards included:
the sandbox scores on the server). A multi-turn task answers through its ``respond`` until it ends
the episode or ``max_turns`` is reached; each step's ``reward`` is the turn's own reward when the
task gives per-turn rewards, else 0 before the last step, whose reward is the episode's. The
server is OpenEnv's own FastAPI app (`openenv.core.env_server.http_server.create_app`) run by
uvicorn in a background thread of this process, on localhost; no container.

**Consuming** (`openenv_task`): any OpenEnv server becomes a multi-turn `Task` for our token-level
envs: row ``i`` is the env reset with seed ``seed + i`` (its observation, rendered as text, is
the prompt); each policy turn's text becomes an action, and the env's answer is injected as the
next turn, its reward being that turn's reward (`lm_envs.tasks.turns.Reply.reward`). Sessions are
not kept alive: every reply opens a session, resets it with the row's seed and replays the row's
earlier moves, so the served env must be deterministic given its seed (for randomness of its own,
keep one session per row instead). Register it like any task with `register_task`.

May import `lm_envs.tasks` and `lm_envs.registration`; never `policies` or `agents`.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from lm_envs.ecosystem import require
from lm_envs.episodes import EpisodeConfig, _takes_keyword
from lm_envs.sampler import PromptSampler
from lm_envs.tasks import Reply, Task

__all__ = ["OpenEnvServer", "openenv_task", "serve", "text_environment_class"]


# -- serving -------------------------------------------------------------------------------------
def _models() -> tuple[type, type]:
    """OpenEnv's Action/Observation subclasses for text (built once, when openenv-core is there)."""
    global _MODELS
    if _MODELS is None:
        require("openenv.core", "openenv-core")
        from openenv.core.env_server.types import Action, Observation
        from pydantic import Field

        class TextAction(Action):
            """One turn of the model's text."""

            text: str = Field(..., description="the model's text for this turn")

        class TextObservation(Observation):
            """The prompt (after reset) or the env's reply (after a step)."""

            prompt: str = Field(default="", description="the task's prompt text (reset)")
            system_prompt: str = Field(default="", description="the task's system message, if any")
            message: str = Field(default="", description="what the env says after a turn")
            turn: int = Field(default=0, description="turns the model has taken")
            index: int = Field(default=-1, description="the task's data row of this episode")
            score: float | None = Field(default=None, description="the episode's task score, when it ends")

        _MODELS = (TextAction, TextObservation)
    return _MODELS


_MODELS: tuple[type, type] | None = None


def _task_and_episode(env_id: str, kwargs: dict[str, Any]) -> tuple[Task, EpisodeConfig]:
    spec = gym.spec(env_id)
    merged = {**spec.kwargs, **kwargs}
    builder = merged.pop("task_builder", None)
    if builder is None:
        raise ValueError(f"{env_id!r} is not a token-level task env (registered without register_task)")
    episode_keys = EpisodeConfig.names()
    episode = {k: v for k, v in merged.items() if k in episode_keys}
    return builder(**{k: v for k, v in merged.items() if k not in episode_keys}), EpisodeConfig(**episode)


def text_environment_class(env_id: str, **kwargs: Any) -> type:
    """An OpenEnv ``Environment`` class serving ``env_id`` at the text level (see the module
    docstring); the task is built once and shared by every session.

    :param env_id: a registered `lm_envs` id.
    :param kwargs: its env and task keyword arguments (``split``, ``max_turns``...).
    """
    require("openenv.core", "openenv-core")
    from openenv.core.env_server.interfaces import Environment
    from openenv.core.env_server.types import State

    TextAction, TextObservation = _models()
    task, episode = _task_and_episode(env_id, kwargs)
    takes_histories = task.respond is not None and _takes_keyword(task.respond, "histories")

    class LMTextEnvironment(Environment):
        """``env_id`` as an OpenEnv environment: text in, text and rewards out."""

        SUPPORTS_CONCURRENT_SESSIONS = True

        def __init__(self) -> None:
            super().__init__()
            self.sampler = PromptSampler(len(task))
            self._state = State(episode_id=str(uuid.uuid4()), step_count=0)
            self.index, self.attempts, self.turn_rewards, self.done = 0, [], [], True

        def reset(
            self, seed: int | None = None, episode_id: str | None = None, index: int | None = None, **_: Any
        ) -> Any:
            if seed is not None:
                self.sampler.seed(seed)
            self.index = int(index) if index is not None else self.sampler.next_index()
            self._state = State(episode_id=episode_id or str(uuid.uuid4()), step_count=0)
            self.attempts, self.turn_rewards, self.done = [], [], False
            return TextObservation(
                prompt=task.prompt_template.format(question=task.questions[self.index]),
                system_prompt=task.system_prompt or "",
                done=False,
                reward=0.0,
                index=self.index,
            )

        def step(self, action: Any, timeout_s: float | None = None, **_: Any) -> Any:
            if self.done:
                raise RuntimeError("the episode has ended: call reset() first")
            text = action.text if hasattr(action, "text") else str(action["text"])
            self._state.step_count += 1
            reference = task.references[self.index]
            prompt = task.prompt_template.format(question=task.questions[self.index])
            if task.respond is None:  # single turn: the task's reward on the text
                score = float(task.reward([text], [reference], [prompt])[0])
                self.done = True
                return TextObservation(done=True, reward=score, score=score, turn=1)
            history = list(self.attempts)
            self.attempts.append(text)
            turn = len(self.attempts)
            extra = {"histories": [history]} if takes_histories else {}
            reply = list(task.respond([text], [reference], [turn], **extra))[0]
            if reply.reward is not None:
                self.turn_rewards.append(float(reply.reward))
            self.done = reply.text is None or turn >= episode.max_turns
            if not self.done:
                return TextObservation(
                    message=reply.text + reply.suffix, turn=turn, done=False, reward=float(reply.reward or 0.0)
                )
            if self.turn_rewards:
                score = float(sum(self.turn_rewards))
            elif reply.score is not None:
                score = float(reply.score)
            else:
                score = float(task.reward(["\n".join(self.attempts)], [reference], [prompt])[0])
            step_reward = float(reply.reward) if reply.reward is not None else score
            return TextObservation(turn=turn, done=True, reward=step_reward, score=score)

        @property
        def state(self) -> Any:
            return self._state

    LMTextEnvironment.__name__ = LMTextEnvironment.__qualname__ = "LMTextEnvironment"
    return LMTextEnvironment


class OpenEnvServer:
    """A running OpenEnv server (uvicorn in a daemon thread); `stop` shuts it down.

    :param app: the FastAPI app.
    :param host: the interface to bind (localhost by default: the server runs tasks' rewards).
    :param port: the port (0: a free one).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        if port == 0:
            with socket.socket() as probe:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
        self.host, self.port = host, port
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", ws="auto"))
        self._thread = threading.Thread(target=self._server.run, name=f"openenv-{port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the OpenEnv server on {host}:{port} did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> OpenEnvServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve(
    env_id: str, host: str = "127.0.0.1", port: int = 0, max_concurrent_envs: int = 8, **kwargs: Any
) -> OpenEnvServer:
    """Serve ``env_id`` as an OpenEnv environment on ``host:port`` (see the module docstring).

    :param env_id: a registered `lm_envs` id.
    :param host: the interface (localhost by default).
    :param port: the port (0: a free one; read it from the returned server's ``url``).
    :param max_concurrent_envs: WebSocket sessions served at once.
    :param kwargs: the id's env and task keyword arguments.
    """
    require("openenv.core", "openenv-core")
    from openenv.core.env_server.http_server import create_app

    TextAction, TextObservation = _models()
    environment = text_environment_class(env_id, **kwargs)
    app = create_app(
        environment,
        TextAction,
        TextObservation,
        env_name=env_id.replace("/", "_"),
        max_concurrent_envs=max_concurrent_envs,
    )
    return OpenEnvServer(app, host, port)


# -- consuming -----------------------------------------------------------------------------------
def _default_render(observation: dict[str, Any]) -> str:
    for key in ("prompt", "message", "text", "content"):
        if observation.get(key):
            return str(observation[key])
    return str({k: v for k, v in observation.items() if k not in ("done", "reward", "metadata")})


def openenv_task(
    base_url: str,
    size: int = 1000,
    seed: int = 0,
    action: Callable[[str], dict[str, Any]] = lambda text: {"text": text},
    render: Callable[[dict[str, Any]], str] = _default_render,
    name: str = "openenv",
    prompt_template: str = "{question}",
    system_prompt: str | None = None,
    chat_template: bool | None = None,
) -> Task:
    """A multi-turn `Task` over the OpenEnv server at ``base_url`` (see the module docstring).

    :param base_url: the server (``http://host:port``).
    :param size: rows, i.e. seeds ``seed ... seed + size - 1``.
    :param seed: the first seed.
    :param action: the model's turn text → the env's action (a dict; its Action's fields).
    :param render: the env's observation (a dict) → text for the model.
    :param name: the task's name.
    :param prompt_template, system_prompt, chat_template: as `Task`.
    """
    require("openenv.core", "openenv-core")
    from openenv.core.generic_client import GenericEnvClient

    def session() -> Any:
        return GenericEnvClient(base_url=base_url).sync()

    class Openings(Sequence):
        def __init__(self) -> None:
            self._cache: dict[int, str] = {}

        def __len__(self) -> int:
            return size

        def __getitem__(self, index):  # type: ignore[override]
            if isinstance(index, slice):
                return [self[i] for i in range(*index.indices(size))]
            index = int(index)
            if not 0 <= index < size:
                raise IndexError(index)
            if index not in self._cache:
                with session() as client:
                    self._cache[index] = render(client.reset(seed=seed + index).observation)
            return self._cache[index]

    def respond(
        attempts: Sequence[str],
        references: Sequence[Any],
        turns: Sequence[int],
        histories: Sequence[Sequence[str]] = (),
    ) -> list[Reply]:
        replies = []
        for k, (attempt, reference) in enumerate(zip(attempts, references)):
            with session() as client:
                client.reset(seed=reference["seed"])
                for move in histories[k] if histories else ():
                    client.step(action(move))
                result = client.step(action(attempt))
            reward = float(result.reward or 0.0)
            replies.append(Reply(text=None if result.done else render(result.observation), reward=reward))
        return replies

    def no_reward(completions, references, prompts=None) -> np.ndarray:
        # Every reply carries the env's step reward; the episode's reward is their sum.
        return np.zeros(len(completions), dtype=np.float32)

    return Task(
        questions=Openings(),
        references=[{"seed": seed + i} for i in range(size)],
        reward=no_reward,
        name=name,
        prompt_template=prompt_template,
        system_prompt=system_prompt,
        chat_template=chat_template,
        respond=respond,
        metadata={"base_url": base_url},
    )
