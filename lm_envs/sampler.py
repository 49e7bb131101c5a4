"""Seedable prompt samplers: which data row each episode gets.

A sampler walks a shuffled permutation of the data set, epoch after epoch, without
replacement. It carries all of its state (seed, permutation, position), so a checkpoint can
restore the exact position and a resumed run draws the same prompts it would have drawn.
Imports nothing from the rest of the project.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class PromptSampler:
    """Draws row indices in ``[0, num_rows)``: shuffled epochs, or in order.

    :param num_rows: size of the data set; must be positive.
    :param seed: seed of the shuffle. ``None`` draws fresh entropy.
    :param shuffle: shuffle each epoch (default) or walk the rows in order.
    """

    def __init__(self, num_rows: int, seed: int | None = None, shuffle: bool = True) -> None:
        if num_rows <= 0:
            raise ValueError("cannot sample prompts from an empty data set")
        self.num_rows = int(num_rows)
        self.shuffle = shuffle
        self.seed(seed)

    def seed(self, seed: int | None) -> None:
        """Restart from epoch 0 with a new seed (``reset(seed=...)`` semantics)."""
        self._rng = np.random.default_rng(seed)
        self.epoch = 0
        self._new_epoch()

    def _new_epoch(self) -> None:
        self._order = self._rng.permutation(self.num_rows) if self.shuffle else np.arange(self.num_rows)
        self.position = 0

    def next_index(self) -> int:
        if self.position >= self.num_rows:
            self.epoch += 1
            self._new_epoch()
        index = int(self._order[self.position])
        self.position += 1
        return index

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self._rng.bit_generator.state,
            "order": self._order.copy(),
            "position": self.position,
            "epoch": self.epoch,
            "num_rows": self.num_rows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_rows"] != self.num_rows:
            raise ValueError(f"sampler state is for {state['num_rows']} rows, data set has {self.num_rows}")
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
        self._order = np.asarray(state["order"]).copy()
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])
