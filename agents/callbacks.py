"""SB3 callbacks for token agents: periodic atomic checkpoints and held-out evaluation.

All act at ``on_rollout_start``: at that moment the previous update is done and the next batch
has not been generated, so a checkpoint written there resumes bit-for-bit. Every rank of a
``torchrun`` run reaches it once per iteration, so decisions taken there are collective-safe;
rank 0 alone evaluates and writes.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback

from agents import distributed
from agents.checkpoint import latest_checkpoint  # noqa: F401  (re-exported)
from agents.evaluation import evaluate_policy


class CheckpointEveryIterations(BaseCallback):
    """Save the agent to ``directory/iter_NNNNNN`` every ``every`` iterations, keeping ``keep``."""

    def __init__(self, directory: str | os.PathLike, every: int = 1, keep: int = 2, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.directory, self.every, self.keep = Path(directory), max(1, every), keep

    def _on_step(self) -> bool:
        return True

    def _on_training_start(self) -> None:
        self.last_saved = getattr(self.model, "iteration", 0)  # a resumed run does not rewrite its start

    def _on_rollout_start(self) -> None:
        iteration = getattr(self.model, "iteration", 0)
        if iteration and iteration % self.every == 0 and iteration != self.last_saved:
            self.save(iteration)

    def save(self, iteration: int) -> Path:
        path = self.directory / f"iter_{iteration:06d}"
        self.model.save(path)  # collective under torchrun: every rank's state, written by rank 0
        self.last_saved = iteration
        if not distributed.is_main_process():
            return path
        old = sorted(p for p in self.directory.iterdir() if p.name.startswith("iter_"))[: -self.keep]
        for stale in old:
            shutil.rmtree(stale, ignore_errors=True)
        if self.verbose:
            print(f"checkpoint: {path}")
        return path


class StopAfterSeconds(BaseCallback):
    """A safety stop: end training at the first iteration boundary after ``seconds`` of wall time
    (rank 0's clock decides for every rank). ``fired`` says whether it did."""

    def __init__(self, seconds: float, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.seconds = seconds

    fired = False

    def _on_training_start(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    def _on_rollout_start(self) -> None:
        self.fired = bool(distributed.broadcast_object(time.monotonic() >= self.deadline))
        if self.fired and self.verbose and distributed.is_main_process():
            print(
                f"time limit of {self.seconds:.0f}s reached; stopping (a safety stop: the iteration budget "
                "was not reached)"
            )

    def _on_step(self) -> bool:
        return not self.fired


class EvalEveryIterations(BaseCallback):
    """Evaluate on a held-out env every ``every`` iterations; log ``eval/*`` and call ``on_result``."""

    def __init__(
        self,
        eval_env: Any,
        every: int,
        n_episodes: int,
        on_result: Callable[[int, dict], None] | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.eval_env, self.every, self.n_episodes, self.on_result = eval_env, every, n_episodes, on_result

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        iteration = getattr(self.model, "iteration", 0)
        if not (self.every and iteration and iteration % self.every == 0):
            return
        with self.model.policy.gathered(reference=True):  # FSDP: every rank gathers the weights, rank 0 evaluates
            if distributed.is_main_process():
                summary, _ = evaluate_policy(self.model.policy, self.eval_env, self.n_episodes)
                for key, value in summary.items():
                    self.logger.record(f"eval/{key}", value)
                if self.on_result:
                    self.on_result(iteration, summary)
