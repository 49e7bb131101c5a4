"""Saving and restoring an `EpisodeBatch` (`get_state`, `set_state`): its arrays by name.

State saved by older versions still loads: arrays added since (multi-turn episodes, per-turn
rewards) take the value they would have had then (nothing injected, no turn rewards).
"""

from __future__ import annotations

import numpy as np


class SavedStateMixin:
    """The arrays of an `EpisodeBatch` that a checkpoint holds, and the migration of old ones."""

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
