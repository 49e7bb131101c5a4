"""Collecting one batch of whole episodes from a lockstep token `VecEnv`.

`collect_episodes` drives any SB3 `VecEnv` in the token-MDP layout (`lm_envs.TokenVecEnv`,
possibly wrapped) with a policy that has ``act(obs, state, episode_start, deterministic)``
(`policies.CausalLMPolicy`, or `agents.engine.EngineActor` for an inference engine). It talks
to the env through the VecEnv API and its contract (`agents.env_contract`). The result,
`EpisodeBatch`-shaped tensors plus per-action rollout log-probs and values, is what
`agents.buffer.TokenRolloutBuffer` stores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agents.env_contract import token_env


@dataclass
class Episodes:
    """One batch of finished episodes.

    Sequence tensors are ``(B, L)`` in the env's layout. Per-action tensors are ``(B, T)`` with
    ``T = max_new_tokens``; action ``t`` of row ``b`` is valid where ``action_mask[b, t]``.
    ``env_rewards`` ``(B,)`` is what the env returned on each episode's last step (after reward
    wrappers); the task's own score is ``infos[b]["score"]``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    policy_mask: torch.Tensor
    action_mask: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    env_rewards: torch.Tensor
    terminated: torch.Tensor
    infos: list[dict[str, Any]] = field(default_factory=list)
    num_steps: int = 0
    seconds: float = 0.0
    complete: bool = True
    prompt_width: int | None = None  # P: the env's prompt region (columns before P); the rest is the completion

    @property
    def lengths(self) -> torch.Tensor:
        return self.action_mask.sum(-1)

    def select(self, rows: list[int]) -> Episodes:
        """These rows, in this order (a batch's step count and seconds are kept)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        return Episodes(
            **{name: getattr(self, name)[index] for name in _ROW_TENSORS},
            infos=[self.infos[r] for r in rows],
            num_steps=self.num_steps,
            seconds=self.seconds,
            complete=self.complete,
            prompt_width=self.prompt_width,
        )


_ROW_TENSORS = (
    "input_ids",
    "attention_mask",
    "policy_mask",
    "action_mask",
    "log_probs",
    "values",
    "env_rewards",
    "terminated",
)


def concat_episodes(batches: list[Episodes]) -> Episodes:
    """Several lockstep batches of one env (so the same widths) as one."""
    if len(batches) == 1:
        return batches[0]
    return Episodes(
        **{name: torch.cat([getattr(b, name) for b in batches]) for name in _ROW_TENSORS},
        infos=[info for b in batches for info in b.infos],
        num_steps=sum(b.num_steps for b in batches),
        seconds=sum(b.seconds for b in batches),
        complete=all(b.complete for b in batches),
        prompt_width=batches[0].prompt_width,
    )


def obs_to_torch(obs: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: torch.as_tensor(value, device=device) for key, value in obs.items()}


@torch.no_grad()
def collect_episodes(
    policy: Any,
    env: Any,
    last_obs: dict[str, np.ndarray] | None = None,
    deterministic: bool = False,
    callback: Any = None,
    compact: bool = True,
) -> tuple[Episodes, dict[str, np.ndarray]]:
    """Run the policy until every row of the current batch has finished.

    :param last_obs: the obs the env returned last (``None``: call ``env.reset()``). In lockstep
        mode the step that finishes a batch already returns the next batch's first obs.
    :param callback: optional SB3 callback; ``on_step()`` returning False stops early and the
        returned batch has ``complete=False`` (agents do not train on it).
    :param compact: tell the policy which rows are still generating, so finished rows leave its
        KV cache and every later forward pass (``False``: every row runs every step, as
        ``model.generate`` does).
    :return: the episodes and the obs to start the next batch from.
    """
    env = token_env(env)
    if env.autoreset:
        raise ValueError("collect_episodes needs a lockstep TokenVecEnv (autoreset=False)")
    start = time.perf_counter()
    policy.set_training_mode(False)  # e.g. gradient checkpointing would switch the KV cache off
    obs = env.reset() if last_obs is None else last_obs
    n = env.num_envs
    max_new = int(env.observation_space["num_generated"].high[0])
    device = policy.device
    log_probs = torch.zeros(n, max_new, device=device)
    values = torch.zeros(n, max_new, device=device)
    action_mask = torch.zeros(n, max_new, dtype=torch.bool, device=device)
    finished = np.zeros(n, dtype=bool)
    final_obs: dict[str, np.ndarray] = {key: np.array(value) for key, value in obs.items()}
    env_rewards = np.zeros(n, dtype=np.float32)
    terminated = np.zeros(n, dtype=bool)
    infos: list[dict[str, Any]] = [{} for _ in range(n)]
    state, episode_start, step, complete = None, np.ones(n, dtype=bool), 0, True
    taken = torch.zeros(n, dtype=torch.long, device=device)  # actions each row has taken
    rows = torch.arange(n, device=device)
    # A multi-turn env may hold rows that ended a turn until the batch has (sync_turns): they stay
    # in the policy's cache but take no action this step. Every step some row acts, so a batch
    # takes at most max_new_tokens steps per turn.
    max_steps = max_new * max(1, env.max_turns)
    while not finished.all() and step < max_steps:
        acting_np = ~finished & ~env.waiting_rows
        acting = torch.as_tensor(acting_np, device=device)
        # Rows being scored in the background (overlap_scoring) never act again: out of the cache.
        active = torch.as_tensor(~finished & ~env.scoring_rows, device=device)
        if getattr(policy, "acts_on_acting_rows", False):  # an engine (agents.engine) asks for acting rows only
            step_active = acting
        else:
            step_active = active if compact else None
        actions, step_log_probs, step_values, state = policy.act(
            obs_to_torch(obs, device), state, episode_start, deterministic, active=step_active
        )
        acting_rows, positions = rows[acting], taken[acting]
        log_probs[acting_rows, positions] = step_log_probs[acting]
        values[acting_rows, positions] = step_values[acting]
        action_mask[acting_rows, positions] = True
        taken[acting] += 1
        obs, rewards, dones, step_infos = env.step(actions.cpu().numpy())
        for row in np.flatnonzero(dones & ~finished):
            for key, value in step_infos[row]["terminal_observation"].items():
                final_obs[key][row] = value
            env_rewards[row] = rewards[row]
            terminated[row] = not step_infos[row].get("TimeLimit.truncated", False)
            infos[row] = step_infos[row]
        finished |= dones
        episode_start = np.zeros(n, dtype=bool)
        step += 1
        if callback is not None:
            callback.update_locals({"infos": step_infos, "dones": dones, "rewards": rewards})
            if not callback.on_step():
                complete = finished.all()
                break
    episodes = Episodes(
        input_ids=torch.as_tensor(final_obs["input_ids"], device=device),
        attention_mask=torch.as_tensor(final_obs["attention_mask"], device=device).long(),
        policy_mask=torch.as_tensor(final_obs["policy_mask"], device=device).long(),
        action_mask=action_mask,
        log_probs=log_probs,
        values=values,
        env_rewards=torch.as_tensor(env_rewards, device=device),
        terminated=torch.as_tensor(terminated, device=device),
        infos=infos,
        num_steps=step,
        seconds=time.perf_counter() - start,
        complete=bool(complete),
        prompt_width=int(env.observation_space["prompt_length"].high[0]),
    )
    return episodes, obs
