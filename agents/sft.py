"""Supervised fine-tuning of the policy on prompt/completion pairs (completion-only loss).

`SFT` runs on the rounds loop (`agents.rounds`): one round (iteration) takes the next
``examples_per_round`` examples of a shuffled stream over the data set (a whole pass by default)
and runs ``n_epochs`` passes of minibatches of the NLL of their completion tokens. Prompts are
rendered exactly as the env renders its own (its task's template, system prompt and the
tokenizer's chat template), and rows are scored by `CausalLMPolicy.evaluate_actions`, the route
every agent trains through; so LoRA or full fine-tuning, dtype and device are the policy's.

We chose our own loop over TRL's ``SFTTrainer``: TRL renders chat prompts with its own
collator, while the RL envs render them through `lm_envs.Task`; one renderer keeps SFT and RL
prompts token-identical, and the checkpoints, resume and logs are the other agents'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from agents import preference_math, sequences
from agents.base import constructor_args
from agents.env_contract import token_env
from agents.rounds import ScoredRolloutAlgorithm
from agents.sequences import Sequences

IN_MEMORY = "<in-memory>"  # what a checkpoint records for a data set passed as an object


def load_rows(dataset: Any, columns: tuple[str, str] = ("prompt", "completion")) -> list[dict[str, Any]]:
    """Rows of a data set: a ``datasets.Dataset``, an iterable of dicts or of ``(prompt,
    completion)`` pairs (named ``columns``), a ``save_to_disk`` directory or a ``.jsonl``/``.json`` file."""
    if dataset is None:
        raise ValueError("no data set")
    if isinstance(dataset, (str, Path)):
        path = Path(dataset)
        import datasets

        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded["train"]
        elif path.is_file():
            loaded = datasets.load_dataset("json", data_files=str(path), split="train")
        else:
            raise FileNotFoundError(f"SFT data set {path} does not exist (a .jsonl file or a save_to_disk dir)")
        return [dict(row) for row in loaded]
    return [dict(zip(columns, row)) if isinstance(row, (tuple, list)) else dict(row) for row in dataset]


def reference_text(reference: Any) -> str | None:
    """A task reference as a training completion: text as is, MBPP's ``code`` in a fenced block,
    a continuation's text; ``None`` when the reference is not a completion (e.g. MMLU's record)."""
    if isinstance(reference, str):
        return reference
    if isinstance(reference, dict):
        if isinstance(reference.get("code"), str):
            return f"```python\n{reference['code']}\n```"
        continuation = reference.get("continuation")
        if isinstance(continuation, dict) and isinstance(continuation.get("text"), str):
            return continuation["text"]
    return None


def nll(policy: Any, rows: Sequences, micro: torch.Tensor, weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Completion-only NLL (token mean) of rows ``micro``, times its minibatch share ``weight``
    (its tokens over the minibatch's, `token_share`: the minibatch's loss is then the token sum over
    its tokens, as TRL's ``num_items_in_batch`` makes it, whatever the micro-batch split)."""
    log_probs = sequences.log_probs(policy, rows, micro)
    mask = rows.mask[micro.to(rows.mask.device)]
    loss = preference_math.nll_loss(log_probs, mask)
    return loss * weight, {"policy_loss": float(loss.detach())}


def token_share(rows: Sequences, targets: torch.Tensor) -> float:
    """The policy tokens of rows ``targets``: what a token-mean loss weighs a micro-batch by."""
    return float(rows.lengths[targets.to(rows.mask.device)].sum())


class SFT(ScoredRolloutAlgorithm):
    """Supervised fine-tuning on ``(prompt, completion)`` pairs, loss on the completion only.

    :param policy: ``"CausalLMPolicy"`` or the class.
    :param env: a token VecEnv over the task whose prompts the data set's questions are rendered
        like (its tokenizer and prompt template); it is also what evaluation runs on.
    :param dataset: a ``datasets.Dataset``, an iterable of dicts or of ``(prompt, completion)``
        pairs, a ``.jsonl`` file or a ``save_to_disk`` directory with ``prompt_column`` and
        ``completion_column``; ``None``:
        the env's own task, its questions with their gold references as completions (GSM8K's
        worked answers, MBPP's code). A data set passed as an object must be passed again to ``load``.
    :param prompt_column, completion_column: column names.
    :param render_prompts: render each prompt through the env's task template and chat template
        (``False``: prompts are already rendered text).
    :param examples_per_round: examples per round (``None``: the whole data set).
    :param n_epochs: passes over each round's examples.
    :param batch_size: examples per optimizer step; ``micro_batch_size`` per forward/backward.
    :param learning_rate: float, schedule dict or callable.
    :param max_grad_norm: gradient-norm clipping.
    :param max_completion_tokens: completions keep their first N tokens (EOS included).
    :param limit: only the first N rows of the data set.
    :param log_samples, tensorboard_log, policy_kwargs, verbose, seed, device: as in PPO.
    """

    tb_name = "SFT"

    def __init__(
        self,
        policy,
        env,
        dataset: Any = None,
        prompt_column: str = "prompt",
        completion_column: str = "completion",
        render_prompts: bool = True,
        examples_per_round: int | None = None,
        n_epochs: int = 1,
        batch_size: int = 8,
        micro_batch_size: int | None = None,
        learning_rate: float | dict = 2e-4,
        max_grad_norm: float = 1.0,
        max_completion_tokens: int = 512,
        limit: int | None = None,
        log_samples: int = 2,
        tensorboard_log: str | None = None,
        policy_kwargs: dict | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        hparams = constructor_args(locals())
        if dataset == IN_MEMORY:
            raise ValueError(
                "this SFT checkpoint was trained on an in-memory data set: pass it again, "
                "SFT.load(path, env, dataset=...)"
            )
        if dataset is not None and not isinstance(dataset, (str, Path)):
            hparams["dataset"] = IN_MEMORY
        elif isinstance(dataset, Path):
            hparams["dataset"] = str(dataset)
        self.dataset, self.prompt_column, self.completion_column = dataset, prompt_column, completion_column
        self.render_prompts, self.examples_per_round = render_prompts, examples_per_round
        self.max_completion_tokens, self.limit = max_completion_tokens, limit
        self._encoded: tuple[list, list] | None = None
        self._stream = {"epoch": 0, "position": 0}
        self.targets: Sequences | None = None
        super().__init__(
            policy,
            env,
            learning_rate,
            n_epochs,
            batch_size,
            micro_batch_size,
            max_grad_norm,
            hparams,
            log_samples=log_samples,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

    # -- data ---------------------------------------------------------------------------------------
    def rows(self) -> tuple[list[str], list[str]]:
        """The data set's ``(prompts, completions)``."""
        if self.dataset is None:
            task = token_env(self.env).task
            pairs = [(q, reference_text(r)) for q, r in zip(task.questions, task.references)]
            if any(c is None for _, c in pairs):
                raise ValueError(
                    f"task {task.name!r} has references that are not completions; give SFT a "
                    f"dataset= with {self.prompt_column!r}/{self.completion_column!r} columns"
                )
        else:
            records = load_rows(self.dataset, (self.prompt_column, self.completion_column))
            missing = [c for c in (self.prompt_column, self.completion_column) if records and c not in records[0]]
            if missing:
                raise ValueError(f"the SFT data set has no column(s) {missing}; columns: {sorted(records[0])}")
            pairs = [(r[self.prompt_column], r[self.completion_column]) for r in records]
        pairs = pairs[: self.limit] if self.limit is not None else pairs
        if not pairs:
            raise ValueError("the SFT data set is empty")
        return [p for p, _ in pairs], [c for _, c in pairs]

    def encoded(self) -> tuple[list, list]:
        if self._encoded is None:
            prompts, completions = self.rows()
            task = token_env(self.env).task
            self._encoded = sequences.encode_pairs(
                task,
                self.tokenizer,
                prompts,
                completions,
                self.policy.prompt_width,
                self.max_completion_tokens,
                render=self.render_prompts,
            )
        return self._encoded

    def _next_examples(self) -> list[int]:
        """The next examples of a stream of shuffled passes (pass ``e`` is seeded by ``seed + e``)."""
        total = len(self.encoded()[0])
        wanted = self.examples_per_round or total
        picked: list[int] = []
        while len(picked) < wanted:
            epoch, position = self._stream["epoch"], self._stream["position"]
            generator = torch.Generator().manual_seed((self.seed or 0) + epoch)
            order = torch.randperm(total, generator=generator).tolist()
            take = order[position : position + wanted - len(picked)]
            picked += take
            position += len(take)
            self._stream = (
                {"epoch": epoch + 1, "position": 0} if position >= total else {"epoch": epoch, "position": position}
            )
        return picked

    # -- one round ------------------------------------------------------------------------------------
    def collect_rollouts(self, env, callback, rollout_buffer=None, n_rollout_steps: int = 1) -> bool:
        callback.on_rollout_start()
        if not callback.on_step():  # no env steps here: one step per round, so a time limit can stop us
            return False
        prompts, completions = self.encoded()
        picked = self._next_examples()
        self.targets = Sequences.from_ids(
            [prompts[i] for i in picked], [completions[i] for i in picked], self.pad_id, self.device
        )
        self.num_timesteps += len(picked)  # SFT's unit: examples
        self.buffer = None
        tokens = int(self.targets.lengths.sum())
        self._round_stats = {
            "sft/examples": float(len(picked)),
            "sft/tokens_trained": float(tokens * self.n_epochs),
            "tokens/response_len_mean": tokens / len(picked),
        }
        self._timings = {}
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def num_targets(self) -> int:
        return 0 if self.targets is None else len(self.targets)

    def target_share(self, targets: torch.Tensor) -> float:
        return token_share(self.targets, targets)

    def target_loss(self, targets: torch.Tensor, weight: float):
        return nll(self.policy, self.targets, targets, weight)

    def _extra_state(self) -> dict[str, Any]:
        return {"stream": dict(self._stream)}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._stream = dict(state["stream"])
