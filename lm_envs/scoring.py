"""`BackgroundScorer`: final scores computed on a background thread while a batch still generates.

A lockstep batch ends when its slowest row does. A row that finished earlier can be scored in
the meantime: `EpisodeBatch` hands its completion here the step it ends (``overlap_scoring``),
holds back its terminal step, and reports it once the score is in. So the VecEnv contract is
kept (the reward arrives on the episode's terminal step, where reward wrappers see it); scoring
just starts earlier. When no row is generating any more, the batch waits for what is left: that
wait is the only scoring time generation does not hide (``info["reward_wait"]``).

One call at a time, on one thread: whatever finished while a call ran goes into the next call
as one batch (a code reward's sandbox runs a batch's programs in parallel), and the reward never
sees two calls at once, so it needs no locking of its own. An exception in the reward (e.g.
`rewards.SandboxError`) is raised again in the caller's thread by `ready` or `wait`.

Imports: standard library only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

Reward = Callable[[list[Any], list[Any], list[Any]], Sequence[float]]


class BackgroundScorer:
    """Scores ``(key, completion, reference, prompt)`` items in batches on one worker thread.

    :param reward: ``reward(completions, references, prompts) -> scores``, the task's reward.
    """

    def __init__(self, reward: Reward) -> None:
        self.reward = reward
        self._queue: list[tuple[int, Any, Any, Any]] = []
        self._running: tuple[list[int], Future] | None = None
        self._done: dict[int, tuple[float, float]] = {}  # key -> (score, seconds of its call per item)
        self._pool: ThreadPoolExecutor | None = None

    @property
    def pending(self) -> set[int]:
        """Keys submitted and not yet collected."""
        keys = {item[0] for item in self._queue} | set(self._done)
        if self._running is not None:
            keys |= set(self._running[0])
        return keys

    def submit(self, key: int, completion: Any, reference: Any, prompt: Any) -> None:
        self._queue.append((key, completion, reference, prompt))
        self._poll()

    def ready(self) -> dict[int, tuple[float, float]]:
        """``{key: (score, reward seconds per item)}`` of everything scored so far (collected once)."""
        self._poll()
        done, self._done = self._done, {}
        return done

    def wait(self) -> dict[int, tuple[float, float]]:
        """Block until every submitted item is scored; return all that were not collected yet."""
        while self._running is not None or self._queue:
            if self._running is not None:
                self._collect()  # blocks on the call in flight
            self._poll()
        return self.ready()

    def discard(self) -> None:
        """Forget everything (a batch reset mid-way): wait for the call in flight, drop results."""
        if self._running is not None:
            try:
                self._running[1].result()
            except Exception:  # noqa: BLE001 - results of a batch nobody will report
                pass
        self._running, self._queue, self._done = None, [], {}

    def close(self) -> None:
        self.discard()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- internals ---------------------------------------------------------------------------
    def _poll(self) -> None:
        if self._running is not None and self._running[1].done():
            self._collect()
        if self._running is None and self._queue:
            batch, self._queue = self._queue, []
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lm-envs-scorer")
            keys = [item[0] for item in batch]
            self._running = (keys, self._pool.submit(self._score, batch))

    def _collect(self) -> None:
        keys, future = self._running  # type: ignore[misc]
        self._running = None  # before result() raises: a failed call is not retried here
        scores, seconds = future.result()
        if len(scores) != len(keys):
            raise ValueError(f"the reward returned {len(scores)} scores for {len(keys)} completions")
        for key, score in zip(keys, scores):
            self._done[key] = (float(score), seconds / len(keys))

    def _score(self, batch: list[tuple[int, Any, Any, Any]]) -> tuple[list[float], float]:
        start = time.perf_counter()
        scores = self.reward([b[1] for b in batch], [b[2] for b in batch], [b[3] for b in batch])
        return [float(s) for s in scores], time.perf_counter() - start
