"""Evaluating a policy on a token VecEnv: mean score, task metrics, samples; `before_after_table`.

Talks to the env through the VecEnv API and its contract (`agents.env_contract`) and to the policy through
``act``. Task metrics come from the reward object when it has ``metrics()`` (accuracy, compile
rate, toxicity...), looked up through the env's task. A policy with a ``pause_token_id``
(`policies.PauseLMPolicy`) also gets pause metrics, counted on the generated token ids (decoded
completions no longer hold the special pause token).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agents.buffer import trim
from agents.env_contract import token_env
from agents.rollout import Episodes, collect_episodes


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct-n: unique word n-grams over all n-grams of all texts (diversity; 1 = no repeats)."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def reference_statistics(
    policy: Any, episodes: Episodes, positions_per_pass: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Per episode: KL(policy ‖ reference) summed over its generated tokens, exact over the
    vocabulary at each one (`CausalLMPolicy.reference_kl`: never negative, greedy decoding
    included), and the reference model's perplexity of the completion. Rows go through in chunks
    of about ``positions_per_pass`` generated tokens (each holds two ``(tokens, vocab)`` tensors)."""
    mask = episodes.action_mask
    chunk = max(1, positions_per_pass // max(1, mask.shape[1]))
    kl, ref = torch.zeros_like(episodes.log_probs), torch.zeros_like(episodes.log_probs)
    for rows in torch.arange(mask.shape[0], device=mask.device).split(chunk):
        ids, attention, policy_mask = trim(
            episodes.input_ids[rows], episodes.attention_mask[rows], episodes.policy_mask[rows]
        )
        token_kl, ref_log_prob = policy.reference_kl(ids, attention, policy_mask)
        kl[rows] = torch.zeros_like(kl[rows]).masked_scatter(mask[rows], token_kl.to(kl.dtype))
        ref[rows] = torch.zeros_like(ref[rows]).masked_scatter(mask[rows], ref_log_prob.to(ref.dtype))
    perplexity = torch.exp(-(ref * mask).sum(-1) / mask.sum(-1).clamp(min=1))
    return (kl * mask).sum(-1).cpu().numpy(), perplexity.cpu().numpy()


def evaluate_policy(
    policy: Any,
    env: Any,
    n_episodes: int,
    deterministic: bool = True,
    seed: int | None = 0,
    reference_stats: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Run whole batches until ``n_episodes`` episodes finished; return (summary, samples).

    Seeding the env makes the held-out prompts the same every time it is called. ``score_mean``
    and the task metrics use the raw task score (``info["score"]``); ``reward_mean`` is the mean
    reward the env returned (different under reward wrappers, whose components are summarized
    as ``rewards/<name>/mean``). Samples carry the data row ``index``, prompt, completion,
    reference, score, reward and length of each episode.

    With ``reference_stats`` (a policy with a KL reference), also ``kl_mean`` (nats per completion,
    the exact KL over the vocabulary at each generated token) and ``perplexity_mean`` (the reference
    model's perplexity of the completions). Sampling uses
    its own seeded torch RNG, so evaluating never shifts the training run's random stream.

    A pause policy (one with ``pause_token_id``) adds ``pauses`` to each sample and the metrics of
    `pause_metrics` to the summary. Multi-turn episodes add their turns, tool calls and first
    attempt's score to each sample and `turn_metrics` to the summary.
    """
    pause_id = getattr(policy, "pause_token_id", None)
    if seed is not None:
        env.seed(seed)
    obs = env.reset()
    scores, returned, lengths, samples, pauses = [], [], [], [], []
    kls, perplexities = [], []
    components: dict[str, list[float]] = {}
    while len(scores) < n_episodes:
        # Fork the CPU generator and, on a GPU, that device's too, so evaluating never shifts
        # the training run's random stream.
        cuda = [policy.device] if getattr(policy.device, "type", "cpu") == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(0 if seed is None else seed + len(scores))
            episodes, obs = collect_episodes(policy, env, obs, deterministic=deterministic)
        if pause_id is not None:  # pauses the policy chose, from the token ids
            counts = ((episodes.input_ids == pause_id) & episodes.policy_mask.bool()).sum(-1)
        if reference_stats:
            kl, perplexity = reference_statistics(policy, episodes)
            kls.extend(kl.tolist())
            perplexities.extend(perplexity.tolist())
        for row, info in enumerate(episodes.infos):
            if len(scores) >= n_episodes:
                break
            # The task score, not the returned reward: reward wrappers may reshape the latter.
            scores.append(float(info.get("score", episodes.env_rewards[row])))
            returned.append(float(episodes.env_rewards[row]))
            lengths.append(int(episodes.lengths[row]))
            for name, value in info.get("reward_components", {}).items():
                components.setdefault(name, []).append(float(value))
            samples.append(
                {
                    **{k: info.get(k) for k in ("index", "prompt", "completion", "reference", "score")},
                    "reward": returned[-1],
                    "length": lengths[-1],
                }
            )
            samples[-1].update({k: info[k] for k in _TURN_KEYS if k in info})
            if pause_id is not None:
                pauses.append(int(counts[row]))
                samples[-1]["pauses"] = pauses[-1]
    summary = {
        "episodes": len(scores),
        "score_mean": float(np.mean(scores)),
        "reward_mean": float(np.mean(returned)),
        "response_len_mean": float(np.mean(lengths)),
    }
    summary.update({f"rewards/{name}/mean": float(np.mean(v)) for name, v in components.items() if name != "score"})
    summary["distinct_2"] = distinct_n([s["completion"] for s in samples], 2)
    if reference_stats:
        summary["kl_mean"] = float(np.mean(kls[:n_episodes]))
        summary["perplexity_mean"] = float(np.mean(perplexities[:n_episodes]))
    task = token_env(env).task
    reward = task.reward
    if "turns" in samples[0]:
        summary.update(turn_metrics(samples))
    # A task that replies between turns scores attempts itself; the completion is the whole
    # conversation, which the reward's own metrics would misread.
    if hasattr(reward, "metrics") and getattr(task, "respond", None) is None:
        metrics = reward.metrics(
            [s["completion"] for s in samples], [s["reference"] for s in samples], np.asarray(scores, dtype=np.float32)
        )
        summary.update({k: float(v) for k, v in metrics.items()})
    if pause_id is not None:
        summary.update(pause_metrics(pauses, lengths, scores, samples, reward))
    return summary, samples


_TURN_KEYS = ("turns", "tool_calls", "injected_tokens", "first_score")


def turn_metrics(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Multi-turn episodes: ``turns_mean``, ``tool_calls_mean`` and ``tool_use_rate`` (episodes with
    at least one tool call); with replies that score attempts, ``first_turn_score_mean``,
    ``first_turn_pass`` (pass@1 at the first turn: full marks) and ``final_pass`` (at the last)."""
    out = {
        "turns_mean": float(np.mean([s["turns"] for s in samples])),
        "tool_calls_mean": float(np.mean([s["tool_calls"] for s in samples])),
        "tool_use_rate": float(np.mean([s["tool_calls"] > 0 for s in samples])),
    }
    first = [s.get("first_score") for s in samples]
    if all(f is not None for f in first):
        out["first_turn_score_mean"] = float(np.mean(first))
        out["first_turn_pass"] = float(np.mean([f >= 1.0 for f in first]))
        out["final_pass"] = float(np.mean([s["score"] >= 1.0 for s in samples]))
    return out


def pause_metrics(
    pauses: list[int], lengths: list[int], scores: list[float], samples: list[dict[str, Any]], reward: Any
) -> dict[str, float]:
    """Pauses per reply (all, correct, incorrect) and the percentage of generated tokens that are pauses.

    A reply is correct when the reward says so (``is_correct``), else when its task score is > 0.
    Means over an empty group are NaN.
    """
    if hasattr(reward, "is_correct"):
        correct = np.array([bool(reward.is_correct(s["completion"], s["reference"])) for s in samples])
    else:
        correct = np.asarray(scores) > 0
    counts = np.asarray(pauses, dtype=np.float64)

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else float("nan")

    return {
        "pauses_mean": mean(counts),
        "pauses_mean_correct": mean(counts[correct]),
        "pauses_mean_incorrect": mean(counts[~correct]),
        "pause_token_pct": float(100.0 * counts.sum() / max(1, int(np.sum(lengths)))),
    }


# What a before/after table shows first, when a summary has it; then every rewards/* component.
TABLE_KEYS = [
    "score_mean",
    "toxicity_mean",
    "toxicity_frac_above_0.5",
    "accuracy",
    "compile_rate",
    "degenerate_rate",
    "pass@1",
    "test_pass_rate",
    "kl_mean",
    "perplexity_mean",
    "distinct_2",
    "response_len_mean",
]


def before_after_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A markdown table of two evaluation summaries: metric, before, after, relative change."""
    keys = [k for k in TABLE_KEYS if k in before or k in after] + sorted(k for k in after if k.startswith("rewards/"))
    lines = ["| metric | before | after | change |", "|---|---|---|---|"]

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, (int, float)) else "-"

    for key in keys:
        x, y = before.get(key), after.get(key)
        # A relative change from (almost) zero, like KL before training, says nothing.
        numbers = isinstance(x, (int, float)) and isinstance(y, (int, float))
        change = f"{(y - x) / abs(x) * 100:+.1f}%" if numbers and abs(x) > 1e-4 else ""
        lines.append(f"| {key} | {fmt(x)} | {fmt(y)} | {change} |")
    return "\n".join(lines) + "\n"
