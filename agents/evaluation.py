"""Evaluating a policy on a token VecEnv: mean score, task metrics, samples.

Talks to the env through the VecEnv API (``env_method``/``get_attr``) and to the policy through
``act``. Task metrics come from the reward object when it has ``metrics()`` (accuracy, compile
rate, toxicity...), looked up through the env's task.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from agents.rollout import collect_episodes


def evaluate_policy(policy: Any, env: Any, n_episodes: int, deterministic: bool = True,
                    seed: int | None = 0) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Run whole batches until ``n_episodes`` episodes finished; return (summary, samples).

    Seeding the env makes the held-out prompts the same every time it is called. ``score_mean``
    and the task metrics use the raw task score (``info["score"]``); ``reward_mean`` is the mean
    reward the env returned (different under reward wrappers, whose components are summarized
    as ``rewards/<name>/mean``). Samples carry the data row ``index``, prompt, completion,
    reference, score, reward and length of each episode.
    """
    if seed is not None:
        env.seed(seed)
    obs = env.reset()
    scores, returned, lengths, samples = [], [], [], []
    components: dict[str, list[float]] = {}
    while len(scores) < n_episodes:
        episodes, obs = collect_episodes(policy, env, obs, deterministic=deterministic)
        for row, info in enumerate(episodes.infos):
            if len(scores) >= n_episodes:
                break
            # The task score, not the returned reward: reward wrappers may reshape the latter.
            scores.append(float(info.get("score", episodes.scores[row])))
            returned.append(float(episodes.scores[row]))
            lengths.append(int(episodes.lengths[row]))
            for name, value in info.get("reward_components", {}).items():
                components.setdefault(name, []).append(float(value))
            samples.append({**{k: info.get(k) for k in ("index", "prompt", "completion", "reference", "score")},
                            "reward": returned[-1], "length": lengths[-1]})
    summary = {"episodes": len(scores), "score_mean": float(np.mean(scores)),
               "reward_mean": float(np.mean(returned)), "response_len_mean": float(np.mean(lengths))}
    summary.update({f"rewards/{name}/mean": float(np.mean(v)) for name, v in components.items() if name != "score"})
    reward = env.get_attr("task", [0])[0].reward
    if hasattr(reward, "metrics"):
        metrics = reward.metrics([s["completion"] for s in samples], [s["reference"] for s in samples],
                                 np.asarray(scores, dtype=np.float32))
        summary.update({k: float(v) for k, v in metrics.items()})
    return summary, samples

