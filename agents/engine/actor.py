"""`EngineActor`: the policy's ``act`` for `agents.rollout.collect_episodes`, with the tokens
chosen by an inference engine.

The env stays the source of truth. When a row needs tokens, its context (the env's own ids:
prompt, actions and injected turns, as the observation holds them) goes to the engine as token
ids; the engine samples a continuation, and its ids and sampler log-probs are fed to the env
one action per step, as the policy's would be. Nothing is decoded and re-encoded, so there is no
drift between turns. The env decides where a turn or episode ends (EOS, stop strings, tool
patterns, budgets): when it ends one before the engine did, or injects tokens, the rest of the
continuation no longer extends the context and is dropped; the row's next action starts a new
request from the context as it now is (the engine's prefix cache keeps this cheap). A row that
waits (a turn's reply pending) takes no action, so it is offered the same token again.

Values are 0: the engine has no value head. The agent recomputes the old log-probs, and PPO's
values, with the learner (`agents.core.OnPolicyLMAlgorithm.use_engine`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch


class RolloutEngine(Protocol):
    """What `EngineActor` and the agents ask of an engine (`agents.engine.deploy`)."""

    def generate(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Continue each ``prompt_ids``; per request ``token_ids`` and ``log_probs``."""

    def sync(self, policy: Any) -> float:
        """Serve the policy's current weights from now on. :return: seconds taken."""

    def close(self) -> None: ...


@dataclass
class _Plan:
    context: np.ndarray  # the ids the request continued
    tokens: list[int]
    log_probs: list[float]


class EngineActor:
    """Actions for `collect_episodes` from ``engine``, sampled as ``policy`` would sample them.

    :param engine: a `RolloutEngine`.
    :param policy: the `policies.CausalLMPolicy` being trained (its sampling settings and device).
    :param seed: seeds the per-request sampling seeds, so a seeded run draws the same tokens.
    """

    acts_on_acting_rows = True  # collect_episodes passes the rows that act this step as ``active``

    def __init__(self, engine: RolloutEngine, policy: Any, seed: int | None = None) -> None:
        self.engine, self.policy = engine, policy
        self.rng = np.random.default_rng(seed)
        self._plans: dict[int, _Plan] = {}
        self.requests = 0  # engine calls made (each may carry many rows)

    @property
    def device(self) -> torch.device:
        return self.policy.device

    def set_training_mode(self, mode: bool) -> None:
        self.policy.set_training_mode(False)

    def _request(self, context: np.ndarray, budget: int, deterministic: bool) -> dict[str, Any]:
        return {
            "prompt_ids": context.tolist(),
            "max_tokens": int(budget),
            "temperature": 0.0 if deterministic else float(self.policy.temperature),
            "top_k": int(self.policy.top_k),
            "top_p": float(self.policy.top_p),
            "seed": int(self.rng.integers(2**31 - 1)),
        }

    def act(
        self,
        obs: dict[str, torch.Tensor],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        active: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        """``(actions, log_probs, values, state)`` like `CausalLMPolicy.act`; rows outside
        ``active`` (the rows acting this step) get 0s, which the env ignores."""
        ids = obs["input_ids"].cpu().numpy()
        attention = obs["attention_mask"].cpu().numpy().astype(bool)
        budgets = int(self.policy.max_new_tokens) - obs["num_generated"].cpu().numpy().reshape(-1)
        n = ids.shape[0]
        if episode_start is not None and np.asarray(episode_start, dtype=bool).all():
            self._plans.clear()
        acting = np.ones(n, dtype=bool) if active is None else active.cpu().numpy().astype(bool)
        contexts = {int(r): ids[r][attention[r]] for r in np.flatnonzero(acting)}
        steps = {r: self._step_in_plan(r, ctx) for r, ctx in contexts.items()}
        stale = [r for r, k in steps.items() if k is None]
        if stale:
            results = self.engine.generate([self._request(contexts[r], budgets[r], deterministic) for r in stale])
            self.requests += 1
            for r, result in zip(stale, results, strict=True):
                if not result["token_ids"]:
                    raise RuntimeError(f"the engine returned no tokens for row {r} (budget {budgets[r]})")
                self._plans[r] = _Plan(contexts[r], list(result["token_ids"]), list(result["log_probs"]))
                steps[r] = 0
        # Filled row by row from the plans on the CPU, then moved to the policy's device at once.
        actions = torch.zeros(n, dtype=torch.long)
        log_probs = torch.zeros(n)
        for r, k in steps.items():
            plan = self._plans[r]
            actions[r], log_probs[r] = plan.tokens[k], plan.log_probs[k]
        device = self.device
        return actions.to(device), log_probs.to(device), torch.zeros(n, device=device), None

    def _step_in_plan(self, row: int, context: np.ndarray) -> int | None:
        """Which token of the row's plan comes next, or None when the plan no longer extends the context."""
        plan = self._plans.get(row)
        if plan is None:
            return None
        start = len(plan.context)
        k = len(context) - start
        if k < 0 or k >= len(plan.tokens) or not np.array_equal(context[:start], plan.context):
            return None
        if k and not np.array_equal(context[start:], plan.tokens[:k]):
            return None
        return k
