"""Overlapped scoring (``EpisodeConfig.overlap_scoring``): `EpisodeBatch` hands a row that ended
to a `lm_envs.scoring.BackgroundScorer` and holds back its terminal step until the score is in,
while the other rows keep generating; once no row generates, the batch waits for the rest."""

from __future__ import annotations

import time

import numpy as np

from lm_envs.episodes.config import EpisodeConfig
from lm_envs.scoring import BackgroundScorer
from lm_envs.tasks import Task


class OverlapScoringMixin:
    """`EpisodeBatch`'s background scoring: the scorer, the rows it holds (``scoring``) and how
    each held row ended."""

    def _init_overlap(self, task: Task, config: EpisodeConfig, n: int) -> None:
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
