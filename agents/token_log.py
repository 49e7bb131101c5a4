"""Per-token logs of a few episodes per iteration, the data of the run report's token inspector.

`TokenLogCallback` is an SB3 callback: at the end of each rollout it takes the first
``episodes`` rows of the agent's `agents.buffer.TokenRolloutBuffer` and, once the iteration's
update is done, appends them to ``DIRECTORY/iter_NNNNNN.jsonl``. `experiments/report.py` reads
these files (`read_token_logs`); it never runs a model. Rank 0 alone writes. It reads the buffer
only, never changes it, and works with every agent: the online agents' buffers hold everything
below, the round agents' (STaR, DPO, KTO) only the rollout fields, and SFT's none (nothing is
written for a round without rollouts).

**Format** (``"v": 1``). One JSON object per line, one line per logged episode:

    {"v": 1, "iteration": 3, "timesteps": 1536, "row": 0,
     "ids": [...], "tokens": ["The", " cat", ...],  # the whole episode, prompt then completion, no padding
     "kinds": "ppppaaaeeaaz",                      # one letter per token (below)
     "values": {"logprob": [...], "advantage": [...], ...},  # one number per action token, in order
     "prompt": "...", "completion": "...", "score": 0.7, "env_reward": 0.7, "terminated": true,
     "info": {"turns": 2, "first_score": 0.2, "verdict": "failing_test", ...}}

``kinds``: ``p`` prompt, ``a`` a token the policy chose (an action), ``z`` a pause token the
policy chose (an action too), ``e`` a token the env injected (tool result, compiler feedback,
game observation: attention 1, policy 0, after the prompt). ``values[name]`` has one entry per
``a``/``z`` letter, in order; a name is present only when the run has that quantity:

- ``logprob``: the rollout's (sampler's) log π of the chosen token (``buffer.rollout_log_probs``
  when the agent recomputed the old log-probs, else ``buffer.log_probs``);
- ``ref_logprob``: the reference model's log-prob (``buffer.ref_log_probs``; agents with a KL term);
- ``kl``: the per-token KL estimate (``buffer.kl``);
- ``value``: the value head's estimate (``buffer.values``; policies with a value head);
- ``token_reward``: the per-token reward the estimator saw (``buffer.token_rewards``);
- ``advantage``, ``return``: the estimator's output (``buffer.advantages``, ``buffer.returns``);
- ``update_logprob``: the learner's log π of the same token with the rollout's weights: the
  agent's recomputed old log-probs (``buffer.log_probs`` beside ``buffer.rollout_log_probs``)
  when it recomputed them, or ``buffer.update_log_probs`` when it keeps them, else one no-grad
  teacher-forced pass over the logged rows (``recompute=True``, within ``recompute_budget``);
- ``logprob_diff``: ``logprob − update_logprob``, where sampler and learner disagree;
- ``is_weight``: the rollout-mismatch correction weight (``buffer.is_weights``), when applied;
- ``entropy``: the entropy of the policy's sampling distribution at that step (``buffer.entropy``
  when the agent keeps it, else the same teacher-forced pass).

``info`` holds the episode info's plain values (``turns``, ``tool_calls``, ``injected_tokens``,
``first_score``, ``reward_components``, per-turn rewards as ``turn_rewards`` when the env gives
them, ...). For code tasks ``info["verdict"]`` is ``compile_error``, ``failing_test`` or
``passed``: the env's own when its info has one, else read off the task score's bands
(`code_verdict`), with ``first_verdict`` likewise for a feedback task's first attempt.
Numbers are rounded to 4 decimals.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback

from agents import distributed
from agents.env_contract import token_env

FORMAT_VERSION = 1
# Per-action buffer fields: (name in the log, attribute of the buffer).
BUFFER_FIELDS = (
    ("ref_logprob", "ref_log_probs"),
    ("kl", "kl"),
    ("value", "values"),
    ("token_reward", "token_rewards"),
    ("advantage", "advantages"),
    ("return", "returns"),
    ("is_weight", "is_weights"),
    ("entropy", "entropy"),
)
# Episode info keys that are not plain per-episode data, or are stored at the top level.
_SKIP_INFO = {
    "terminal_observation",
    "prompt",
    "completion",
    "score",
    "TimeLimit.truncated",
    "reward_time",
    "reward_wait",
    "waiting",
}


def code_verdict(score: float, weights: Any) -> str | None:
    """``compile_error``, ``failing_test`` or ``passed`` from a code reward's score, given its
    ``weights`` (`rewards.code.CodeWeights`: compile_fail, else compile_ok + pass_weight × pass
    fraction); ``None`` when the bands overlap and the score cannot tell."""
    fail, ok, full = weights.compile_fail, weights.compile_ok, weights.compile_ok + weights.pass_weight
    if not fail < ok < full or score is None or not math.isfinite(score):
        return None
    if math.isclose(score, fail, abs_tol=1e-6):
        return "compile_error"
    return "passed" if math.isclose(score, full, abs_tol=1e-6) else "failing_test"


def _round(values: list[float]) -> list[float]:
    return [round(float(v), 4) + 0.0 if math.isfinite(v) else None for v in values]  # + 0.0: no "-0.0"


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` if it is JSON data (short strings, numbers, small lists and dicts of them), else ``None``."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return round(float(value), 4) if isinstance(value, float) else int(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return _plain(value.item(), depth)
    if isinstance(value, str):
        return value if len(value) <= 2000 else None
    if depth < 2 and isinstance(value, dict) and len(value) <= 50:
        out = {str(k): _plain(v, depth + 1) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None}
    if depth < 2 and isinstance(value, (list, tuple)) and len(value) <= 200:
        out = [_plain(v, depth + 1) for v in value]
        return out if all(v is not None for v in out) else None
    return None


class TokenLogCallback(BaseCallback):
    """Write per-token quantities of ``episodes`` episodes per iteration to ``directory`` (format:
    see the module docstring), for `experiments/report.py`.

    :param directory: where the ``iter_NNNNNN.jsonl`` files go (``RUN_DIR/tokens`` for a run).
    :param episodes: rows logged per iteration, the first of each batch (``None``: the agent's
        ``log_samples``; 0 logs nothing).
    :param recompute: when the buffer has no learner log-probs or entropies, get them from one
        no-grad teacher-forced pass over the logged rows, with the rollout's weights (skipped for
        FSDP-sharded policies, whose forward pass needs every rank).
    :param recompute_budget: the share of training time those passes may take: an iteration's
        pass runs only while the passes so far cost at most this share of the time since
        ``learn`` started (a pass is about ``episodes / batch rows`` of a reference pass; at 2 of 16
        rows and PPO's 2 epochs it would be about 2% of an iteration if it ran every time), so
        some iterations' episodes lack ``update_logprob``, ``logprob_diff`` and ``entropy``.
    :param verbose: SB3's verbosity.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        episodes: int | None = None,
        recompute: bool = True,
        recompute_budget: float = 0.01,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.directory, self.episodes, self.recompute = Path(directory), episodes, recompute
        self.recompute_budget = recompute_budget
        self._clock, self._pass_seconds = time.perf_counter(), 0.0
        self._pending: dict[str, Any] | None = None
        self.seconds = 0.0  # wall time spent logging, teacher-forced passes included

    def _on_step(self) -> bool:
        return True

    def _on_training_start(self) -> None:
        self._clock, self._pass_seconds = time.perf_counter(), 0.0

    def _count(self) -> int:
        return int(self.episodes if self.episodes is not None else getattr(self.model, "log_samples", 2))

    def _on_rollout_end(self) -> None:
        start = time.perf_counter()
        self._take()
        self.seconds += time.perf_counter() - start

    def _take(self) -> None:
        buffer = getattr(self.model, "buffer", None)
        if buffer is None or not distributed.is_main_process() or self._count() <= 0:
            return
        rows = [b for b, info in enumerate(buffer.infos) if "completion" in info][: self._count()]
        if not rows:
            return
        recomputed = self._teacher_forced(buffer, rows)
        self._pending = {
            "buffer": buffer,
            "rows": rows,
            "recomputed": recomputed,
            "iteration": int(getattr(self.model, "iteration", 0)) + 1,
            "timesteps": int(self.model.num_timesteps),
        }

    # The update has run (its quantities, if any, are in the buffer): write what was taken.
    def _on_rollout_start(self) -> None:
        self.flush()

    def _on_training_end(self) -> None:
        self.flush()

    @torch.no_grad()
    def _teacher_forced(self, buffer: Any, rows: list[int]) -> dict[str, torch.Tensor]:
        """Learner log-probs and entropies ``(len(rows), T)`` of the logged rows, when the buffer lacks them."""
        policy = self.model.policy
        wanted = ["entropy"] if getattr(buffer, "entropy", None) is None else []
        if getattr(buffer, "rollout_log_probs", None) is None and getattr(buffer, "update_log_probs", None) is None:
            wanted.append("update_log_probs")
        if not (self.recompute and wanted and hasattr(policy, "evaluate_actions")) or getattr(policy, "sharded", False):
            return {}
        start = time.perf_counter()
        if self._pass_seconds > self.recompute_budget * (start - self._clock):
            return {}  # over its budget so far: this iteration's episodes go without
        index = torch.as_tensor(rows, device=buffer.mask.device)
        ids, attn, pol = buffer.trimmed_rows(index)
        policy.set_training_mode(False)
        out = policy.evaluate_actions(ids, attn, pol, with_entropy=True, with_values=False, entropy_grad=False)
        mask = buffer.mask[index]
        result = {}
        for name, flat in (("update_log_probs", out.log_prob), ("entropy", out.entropy)):
            if name in wanted and flat is not None:
                result[name] = (
                    torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device)
                    .masked_scatter(mask, flat.detach())
                    .cpu()
                )  # on a GPU: waits for the pass, so its time is counted
        self._pass_seconds += time.perf_counter() - start
        return result

    def flush(self) -> Path | None:
        """Write the episodes taken at the last rollout's end (``None`` when there are none)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        start = time.perf_counter()
        records = episode_records(
            pending["buffer"],
            pending["rows"],
            self._tokenizer(),
            pending["recomputed"],
            self._pause_id(),
            self._code_weights(),
            self._prompt_width(),
            getattr(self.model.policy, "value_head", None) is not None,
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"iter_{pending['iteration']:06d}.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for record in records:
                record.update(iteration=pending["iteration"], timesteps=pending["timesteps"])
                handle.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.seconds += time.perf_counter() - start
        return path

    # -- what the env and the policy say, through their public surfaces ---------------------------
    def _tokenizer(self) -> Any:
        return token_env(self.model.env).tokenizer  # a clear error for an env without the contract

    def _pause_id(self) -> int | None:
        policy = self.model.policy
        for owner in (policy, getattr(getattr(policy, "model", None), "config", None)):
            value = getattr(owner, "pause_token_id", None)
            if isinstance(value, int):
                return value
        return None

    def _code_weights(self) -> Any:
        reward = getattr(token_env(self.model.env).task, "reward", None)
        weights = getattr(reward, "weights", None)
        return weights if all(hasattr(weights, k) for k in ("compile_fail", "compile_ok", "pass_weight")) else None

    def _prompt_width(self) -> int | None:
        space = getattr(self.model.env, "observation_space", None)
        try:
            return int(space["prompt_length"].high[0])
        except (KeyError, TypeError, IndexError):
            return None


def episode_records(
    buffer: Any,
    rows: list[int],
    tokenizer: Any,
    recomputed: dict[str, torch.Tensor] | None = None,
    pause_id: int | None = None,
    code_weights: Any = None,
    prompt_width: int | None = None,
    with_values: bool = True,
) -> list[dict[str, Any]]:
    """The log records (format: the module docstring) of ``rows`` of ``buffer``.

    :param buffer: a `agents.buffer.TokenRolloutBuffer` (fields it lacks are left out).
    :param rows: buffer rows to log.
    :param tokenizer: decodes each token on its own.
    :param recomputed: ``(len(rows), T)`` tensors (``update_log_probs``: the learner's
        log-probs, ``entropy``) for quantities the buffer lacks.
    :param pause_id: the pause token's id, if the policy has one.
    :param code_weights: a code reward's `rewards.code.CodeWeights`, to read verdicts off scores.
    :param prompt_width: the env's prompt region (columns before it are the prompt); ``None``:
        everything before the first action.
    :param with_values: log ``buffer.values`` (a policy without a value head stores placeholders).
    """
    recomputed = recomputed or {}
    per_action: dict[str, torch.Tensor] = {}
    rollout = getattr(buffer, "rollout_log_probs", None)
    if isinstance(rollout, torch.Tensor):  # the agent recomputed the old log-probs: log_probs are the learner's
        per_action["logprob"], per_action["update_logprob"] = rollout[rows], buffer.log_probs[rows]
    else:
        per_action["logprob"] = buffer.log_probs[rows]
        if isinstance(getattr(buffer, "update_log_probs", None), torch.Tensor):
            per_action["update_logprob"] = buffer.update_log_probs[rows]
        elif "update_log_probs" in recomputed:
            per_action["update_logprob"] = recomputed["update_log_probs"]
    per_action = {name: value.detach().float().cpu() for name, value in per_action.items()}
    for name, attr in BUFFER_FIELDS:
        value = getattr(buffer, attr, None)
        if attr == "values" and not with_values:
            value = None
        if isinstance(value, torch.Tensor) and value.shape == buffer.mask.shape:
            per_action[name] = value.detach()[rows].float().cpu()
        elif attr in recomputed:
            per_action[name] = recomputed[attr].float().cpu()
    if "logprob" in per_action and "update_logprob" in per_action:
        per_action["logprob_diff"] = per_action["logprob"] - per_action["update_logprob"]
    mask = buffer.mask[rows].cpu()
    records = []
    for k, row in enumerate(rows):
        attention = buffer.attention_mask[row].cpu().bool()
        ids = buffer.input_ids[row].cpu()[attention].tolist()
        policy = buffer.policy_mask[row].cpu()[attention].bool().tolist()
        columns = attention.nonzero().flatten().tolist()
        first_action = next((i for i, p in enumerate(policy) if p), len(policy))
        kinds = []
        for i, (token, chosen, column) in enumerate(zip(ids, policy, columns)):
            in_prompt = column < prompt_width if prompt_width is not None else i < first_action
            kinds.append("p" if in_prompt else ("z" if token == pause_id else "a") if chosen else "e")
        valid = mask[k]
        values = {name: _round(tensor[k][valid].tolist()) for name, tensor in per_action.items()}
        info = buffer.infos[row]
        extra = {key: _plain(value) for key, value in info.items() if key not in _SKIP_INFO}
        extra = {key: value for key, value in extra.items() if value is not None}
        if code_weights is not None and "verdict" not in extra:
            verdict = code_verdict(float(info.get("score", math.nan)), code_weights)
            if verdict:
                extra["verdict"] = verdict
            if "first_score" in info and (first := code_verdict(float(info["first_score"]), code_weights)):
                extra["first_verdict"] = first
        records.append(
            {
                "v": FORMAT_VERSION,
                "row": int(row),
                "ids": ids,
                "tokens": tokenizer.batch_decode(
                    [[t] for t in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False
                ),
                "kinds": "".join(kinds),
                "values": values,
                "prompt": str(info.get("prompt", "")),
                "completion": str(info.get("completion", "")),
                "score": _plain(info.get("score")),
                "env_reward": round(float(buffer.env_rewards[row]), 4),
                "terminated": bool(buffer.terminated[row]),
                "info": extra,
            }
        )
    return records


def read_token_logs(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record under ``directory`` (``iter_*.jsonl``), in iteration then row order; ``[]``
    when there is none. A record of a newer format than this reader knows is an error."""
    records = []
    for path in sorted(Path(directory).glob("iter_*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if record.get("v", 1) > FORMAT_VERSION:
                raise ValueError(
                    f"{path} holds token-log format v{record['v']}; this reader knows up to "
                    f"v{FORMAT_VERSION}: update lm-stable-baselines"
                )
            records.append(record)
    return records
