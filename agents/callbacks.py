"""SB3 callbacks for token agents: periodic atomic checkpoints and held-out evaluation.

Both act at ``on_rollout_start``: at that moment the previous update is done and the next batch
has not been generated, so a checkpoint written there resumes bit-for-bit.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from stable_baselines3.common.callbacks import BaseCallback

from agents.checkpoint import latest_checkpoint  # noqa: F401  (re-exported)
from agents.evaluation import evaluate_policy


class CheckpointEveryIterations(BaseCallback):
    """Save the agent to ``directory/iter_NNNNNN`` every ``every`` iterations, keeping ``keep``."""

    def __init__(self, directory: str | os.PathLike, every: int = 1, keep: int = 2, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.directory, self.every, self.keep = Path(directory), max(1, every), keep

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        iteration = getattr(self.model, "iteration", 0)
        if iteration and iteration % self.every == 0 and not (self.directory / f"iter_{iteration:06d}").exists():
            self.save(iteration)

    def save(self, iteration: int) -> Path:
        path = self.directory / f"iter_{iteration:06d}"
        self.model.save(path)
        old = sorted(p for p in self.directory.iterdir() if p.name.startswith("iter_"))[: -self.keep]
        for stale in old:
            shutil.rmtree(stale, ignore_errors=True)
        if self.verbose:
            print(f"checkpoint: {path}")
        return path


class StopAfterSeconds(BaseCallback):
    """Stop training once ``seconds`` of wall time have passed since training started (the batch
    in flight is dropped, so no update runs on a partial batch)."""

    def __init__(self, seconds: float, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.seconds = seconds

    fired = False

    def _on_training_start(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    def _on_step(self) -> bool:
        if time.monotonic() < self.deadline:
            return True
        self.fired = True
        if self.verbose:
            print(f"time limit of {self.seconds:.0f}s reached; stopping (a safety stop: the iteration budget "
                  "was not reached)")
        return False


class EvalEveryIterations(BaseCallback):
    """Evaluate on a held-out env every ``every`` iterations; log ``eval/*`` and call ``on_result``."""

    def __init__(self, eval_env: Any, every: int, n_episodes: int,
                 on_result: Callable[[int, dict], None] | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.eval_env, self.every, self.n_episodes, self.on_result = eval_env, every, n_episodes, on_result

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        iteration = getattr(self.model, "iteration", 0)
        if self.every and iteration and iteration % self.every == 0:
            summary, _ = evaluate_policy(self.model.policy, self.eval_env, self.n_episodes)
            for key, value in summary.items():
                self.logger.record(f"eval/{key}", value)
            if self.on_result:
                self.on_result(iteration, summary)

