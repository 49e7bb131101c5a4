"""Training rows built from (prompt ids, completion ids): what SFT, STaR, DPO and KTO learn from.

`Sequences` lays rows out as the token env does (prompt left-padded to a common width, then the
completion, a ``policy_mask`` on the tokens the policy chose, not on those the env injected), so
`CausalLMPolicy.evaluate_actions` scores them exactly as it scores rollouts, shared-prompt passes
included. Rows come from
rollouts (`from_episodes`: a finished episode split back into its prompt and its completion) or
from text (`encode_pairs`). Data only: the agent runs the model (`log_probs`). Imports torch,
numpy and `agents.buffer.trim`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from agents.buffer import trim


@dataclass
class Sequences:
    """``N`` rows: ``input_ids``/``attention_mask``/``policy_mask`` ``(N, P + C)`` and the action
    ``mask`` ``(N, T)``. Columns before ``prompt_width`` (``P``) hold the left-padded prompt; from
    ``P`` on each row's *completion* is contiguous: the policy's tokens and, in a multi-turn
    episode, the tokens the env injected between them (``policy_mask`` 0). Only policy tokens are
    trained on: ``mask[b, :k_b]`` is true for row ``b``'s ``k_b`` policy tokens, in order."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    policy_mask: torch.Tensor
    mask: torch.Tensor
    prompt_width: int

    @classmethod
    def from_ids(
        cls,
        prompts: Sequence[Sequence[int]],
        completions: Sequence[Sequence[int]],
        pad_id: int,
        device: torch.device | str = "cpu",
        policy_masks: Sequence[Sequence[int]] | None = None,
    ) -> Sequences:
        """Rows from token ids.

        :param policy_masks: per completion, 1 for each token the policy chose and 0 for each the
            env injected (``None``: every completion token is the policy's, as in SFT data).
        """
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if any(len(p) == 0 for p in prompts) or any(len(c) == 0 for c in completions):
            raise ValueError("every row needs a non-empty prompt and a non-empty completion")
        if policy_masks is None:
            policy_masks = [[1] * len(c) for c in completions]
        if len(policy_masks) != len(completions) or any(len(m) != len(c) for m, c in zip(policy_masks, completions)):
            raise ValueError("policy_masks needs one 0/1 entry per completion token")
        if any(sum(m) == 0 for m in policy_masks):
            raise ValueError("every completion needs at least one policy token")
        n = len(prompts)
        width_p = max((len(p) for p in prompts), default=1)
        width_c = max((len(c) for c in completions), default=1)
        width_t = max((sum(m) for m in policy_masks), default=1)
        ids = torch.full((n, width_p + width_c), pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        policy = torch.zeros_like(ids)
        mask = torch.zeros(n, width_t, dtype=torch.bool)
        for row, (prompt, completion, chosen) in enumerate(zip(prompts, completions, policy_masks)):
            ids[row, width_p - len(prompt) : width_p] = torch.as_tensor(list(prompt))
            ids[row, width_p : width_p + len(completion)] = torch.as_tensor(list(completion))
            attention[row, width_p - len(prompt) : width_p + len(completion)] = 1
            policy[row, width_p : width_p + len(completion)] = torch.as_tensor(list(chosen))
            mask[row, : sum(chosen)] = True
        return cls(ids.to(device), attention.to(device), policy.to(device), mask.to(device), width_p)

    def __len__(self) -> int:
        return self.mask.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        """Policy tokens per row (what the losses train on)."""
        return self.mask.sum(-1)

    def prompt_ids(self, row: int) -> list[int]:
        p = self.prompt_width
        return self.input_ids[row, :p][self.attention_mask[row, :p].bool()].tolist()

    def completion_ids(self, row: int) -> list[int]:
        """Every token after the prompt: the policy's and, in a multi-turn episode, the env's."""
        p = self.prompt_width
        return self.input_ids[row, p:][self.attention_mask[row, p:].bool()].tolist()

    def completion_policy_mask(self, row: int) -> list[int]:
        """Per `completion_ids` token: 1 where the policy chose it, 0 where the env injected it."""
        p = self.prompt_width
        return self.policy_mask[row, p:][self.attention_mask[row, p:].bool()].tolist()

    def select(self, rows: torch.Tensor | Sequence[int]) -> Sequences:
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.mask.device)
        return Sequences(
            self.input_ids[rows], self.attention_mask[rows], self.policy_mask[rows], self.mask[rows], self.prompt_width
        )


def from_episodes(episodes: Any) -> Sequences:
    """The rows of a finished `agents.rollout.Episodes` batch, in the env's own layout, split at
    the env's prompt width (``episodes.prompt_width``)."""
    if episodes.prompt_width is None:
        raise ValueError(
            "these episodes do not say where their prompts end (Episodes.prompt_width): collect them "
            "with agents.rollout.collect_episodes"
        )
    return Sequences(
        episodes.input_ids,
        episodes.attention_mask,
        episodes.policy_mask,
        episodes.action_mask.bool(),
        int(episodes.prompt_width),
    )


def rows_of(parts: Sequence[Sequences]) -> tuple[list, list, list]:
    """``(prompts, completions, policy_masks)`` of every row of ``parts``, as token-id lists."""
    rows = [(part, r) for part in parts for r in range(len(part))]
    return (
        [part.prompt_ids(r) for part, r in rows],
        [part.completion_ids(r) for part, r in rows],
        [part.completion_policy_mask(r) for part, r in rows],
    )


def concat(parts: Sequence[Sequences], pad_id: int) -> Sequences:
    """Rows of several `Sequences` (any widths) as one."""
    prompts, completions, masks = rows_of(parts)
    device = parts[0].mask.device if parts else "cpu"
    return Sequences.from_ids(prompts, completions, pad_id, device, masks)


def log_probs(
    policy: Any, sequences: Sequences, rows: torch.Tensor | Sequence[int] | None = None, reference: bool = False
) -> torch.Tensor:
    """Per-token log-probs ``(n, T)`` of the completions' policy tokens of ``rows`` (all rows by
    default), zero off the mask, under the policy (with grad when enabled) or its reference
    (adapter off, no grad). Scored with the full softmax, never the top-k/top-p nucleus the policy
    samples from: data (a gold answer, a hinted rationale, a mismatched pair) may hold tokens
    outside it, and TRL's offline losses score the same way."""
    part = sequences if rows is None else sequences.select(rows)
    ids, attention, policy_mask = trim(part.input_ids, part.attention_mask, part.policy_mask)
    out = policy.evaluate_actions(
        ids, attention, policy_mask, with_entropy=False, with_values=False, reference=reference, truncate=False
    )
    dense = torch.zeros(part.mask.shape, dtype=out.log_prob.dtype, device=out.log_prob.device)
    return dense.masked_scatter(part.mask, out.log_prob)


def encode_pairs(
    task: Any,
    tokenizer: Any,
    questions: Sequence[str],
    completions: Sequence[str],
    max_prompt_tokens: int,
    max_completion_tokens: int,
    render: bool = True,
) -> tuple[list, list]:
    """Token ids of ``(prompt, completion)`` pairs, prompts rendered as the env renders them.

    With ``render``, each question goes through ``task``'s prompt template, system prompt and the
    tokenizer's chat template (the env's own `Task.prompt`); otherwise it is taken verbatim. The
    completion gets the tokenizer's EOS. Prompts keep their last ``max_prompt_tokens`` tokens (as
    ``truncate_prompt="left"``), completions their first ``max_completion_tokens``.
    """
    import dataclasses

    chat = task.uses_chat_template(tokenizer) if render else False
    prompts, targets = [], []
    eos = tokenizer.eos_token_id
    for question, completion in zip(questions, completions):
        if render:
            text = dataclasses.replace(task, questions=[question], references=[None]).prompt(0, tokenizer)
        else:
            text = question
        prompt = tokenizer(text, add_special_tokens=not chat)["input_ids"][-max_prompt_tokens:]
        target = (tokenizer(completion, add_special_tokens=False)["input_ids"] + [eos])[:max_completion_tokens]
        prompts.append(prompt)
        targets.append(target)
    return prompts, targets


def as_keys(sequences: Sequences) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """One hashable key per row (its completion's token ids and which of them the policy chose),
    to spot duplicate completions."""
    return [
        (tuple(sequences.completion_ids(r)), tuple(sequences.completion_policy_mask(r))) for r in range(len(sequences))
    ]


def numpy_rows(values: torch.Tensor) -> np.ndarray:
    return values.detach().float().cpu().numpy()
