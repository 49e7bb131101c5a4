"""Training rows built from (prompt ids, completion ids): what SFT, STaR, DPO and KTO learn from.

`Sequences` lays rows out as the token env does (prompt left-padded to a common width, then the
completion, a ``policy_mask`` on the completion's tokens), so `CausalLMPolicy.evaluate_actions`
scores them exactly as it scores rollouts, shared-prompt passes included. Rows come from
rollouts (`from_episodes`: a finished episode split back into its prompt and its completion) or
from text (`encode_pairs`). Data only: the agent runs the model (`log_probs`). Imports torch,
numpy and `agents.buffer.trim`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from agents.buffer import trim


@dataclass
class Sequences:
    """``N`` rows: ``input_ids``/``attention_mask``/``policy_mask`` ``(N, P + T)`` and the
    completion ``mask`` ``(N, T)`` (column ``P + t`` is completion token ``t``)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    policy_mask: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def from_ids(cls, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int,
                 device: torch.device | str = "cpu") -> "Sequences":
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if any(len(p) == 0 for p in prompts) or any(len(c) == 0 for c in completions):
            raise ValueError("every row needs a non-empty prompt and a non-empty completion")
        n = len(prompts)
        width_p = max((len(p) for p in prompts), default=1)
        width_t = max((len(c) for c in completions), default=1)
        ids = torch.full((n, width_p + width_t), pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        policy = torch.zeros_like(ids)
        mask = torch.zeros(n, width_t, dtype=torch.bool)
        for row, (prompt, completion) in enumerate(zip(prompts, completions)):
            ids[row, width_p - len(prompt):width_p] = torch.as_tensor(list(prompt))
            ids[row, width_p:width_p + len(completion)] = torch.as_tensor(list(completion))
            attention[row, width_p - len(prompt):width_p + len(completion)] = 1
            policy[row, width_p:width_p + len(completion)] = 1
            mask[row, :len(completion)] = True
        return cls(ids.to(device), attention.to(device), policy.to(device), mask.to(device))

    def __len__(self) -> int:
        return self.mask.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)

    @property
    def prompt_width(self) -> int:
        return self.input_ids.shape[1] - self.mask.shape[1]

    def prompt_ids(self, row: int) -> list[int]:
        p = self.prompt_width
        return self.input_ids[row, :p][self.attention_mask[row, :p].bool()].tolist()

    def completion_ids(self, row: int) -> list[int]:
        p = self.prompt_width
        return self.input_ids[row, p:p + int(self.lengths[row])].tolist()

    def select(self, rows: torch.Tensor | Sequence[int]) -> "Sequences":
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.mask.device)
        return Sequences(self.input_ids[rows], self.attention_mask[rows], self.policy_mask[rows], self.mask[rows])


def from_episodes(episodes: Any) -> Sequences:
    """The rows of a finished `agents.rollout.Episodes` batch, in the env's own layout."""
    return Sequences(episodes.input_ids, episodes.attention_mask, episodes.policy_mask, episodes.action_mask.bool())


def concat(parts: Sequence[Sequences], pad_id: int) -> Sequences:
    """Rows of several `Sequences` (any widths) as one."""
    prompts = [part.prompt_ids(r) for part in parts for r in range(len(part))]
    completions = [part.completion_ids(r) for part in parts for r in range(len(part))]
    device = parts[0].mask.device if parts else "cpu"
    return Sequences.from_ids(prompts, completions, pad_id, device)


def log_probs(policy: Any, sequences: Sequences, rows: torch.Tensor | Sequence[int] | None = None,
              reference: bool = False) -> torch.Tensor:
    """Per-token log-probs ``(n, T)`` of the completions of ``rows`` (all rows by default), zero off
    the mask, under the policy (with grad when enabled) or its reference (adapter off, no grad)."""
    part = sequences if rows is None else sequences.select(rows)
    ids, attention, policy_mask = trim(part.input_ids, part.attention_mask, part.policy_mask)
    out = policy.evaluate_actions(ids, attention, policy_mask, with_entropy=False, with_values=False,
                                  reference=reference)
    dense = torch.zeros(part.mask.shape, dtype=out.log_prob.dtype, device=out.log_prob.device)
    return dense.masked_scatter(part.mask, out.log_prob)


def encode_pairs(task: Any, tokenizer: Any, questions: Sequence[str], completions: Sequence[str],
                 max_prompt_tokens: int, max_completion_tokens: int, render: bool = True) -> tuple[list, list]:
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


def as_keys(sequences: Sequences) -> list[tuple[int, ...]]:
    """One hashable key per row (its completion's token ids), to spot duplicate completions."""
    return [tuple(sequences.completion_ids(r)) for r in range(len(sequences))]


def numpy_rows(values: torch.Tensor) -> np.ndarray:
    return values.detach().float().cpu().numpy()
