"""`CausalLMPolicy`: a Hugging Face causal LM behind Stable-Baselines3's policy API.

What lives here: the policy (LM + value head, optional LoRA via `peft`), KV-cache stepping for
rollouts, one-pass teacher-forced evaluation of whole sequences, and the reference model for
the KL term. Knows nothing of tasks, envs or agents; it reads observations in the layout of
the token-level MDP (a left-padded prompt region of width ``P``, then generated tokens). Why one
file of this length: its single concern is that the rollout's incremental pass and the update's
teacher-forced pass score every action with the same distribution (the first PPO ratio is 1, KL
is 0 at init), so both passes, the logits route and the sampling distribution they share stay
together; the head maths is in `policies.head_math`, the cache in `policies.kv_cache`, loading in
`policies.loading`.

Choices worth knowing:

* **Sampling.** Plain temperature sampling by default (``top_k=0, top_p=1``). When top-k or
  top-p is set, the *same* truncated, tempered distribution is used for sampling and for every
  log-prob the agent trains on, so rollout and update agree. The reference is scored with the
  tempered but *untruncated* distribution: a token outside the reference's own top-k would
  otherwise have log-prob −inf and the KL would be +inf.
* **One logits route.** Rollouts and teacher forcing both compute logits from the final hidden
  states through `output_logits` (the output layer, then the model's final logit soft-capping
  when its config has one, as Gemma 2/3 do), so the two can never disagree.
* **Dropout is always off**, in rollouts and updates alike (every dropout probability is zeroed
  at construction; train mode only enables gradient checkpointing): the first PPO ratio is then
  exactly 1 up to float noise.
* **Reference model.** With LoRA the reference is the same backbone with the adapter disabled;
  with full fine-tuning it is a frozen copy made at construction (only if ``reference=True``).
* **FSDP** (``fsdp=True``, full fine-tuning under ``torchrun``): `shard` applies FSDP2's
  ``fully_shard`` to every transformer block, then to the whole LM, the reference copy and the
  heads. Forward passes then run the full LM (whose root FSDP unit holds the embeddings, final
  norm and tied head) rather than the decoder alone, and generation and evaluation run inside
  `gathered` (full weights on every rank, no collectives, however many steps each rank takes).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import Schedule
from torch import nn
from torch.nn import functional as F

from policies.head_math import (
    LogitsWorkspace,
    linear_selected_log_probs,
    log_softmax,
    probabilities,
    sample,
    selected_log_probs,
)
from policies.kv_cache import left_padded, with_spare_columns
from policies.loading import DEFAULT_MODEL, load_lm

Obs = dict[str, torch.Tensor]


@dataclass
class RolloutState:
    """What the policy carries between env steps, like a recurrent policy's hidden state.

    ``cache`` is the KV cache of the batch ``rows`` it holds, in order; finished rows are
    compacted out of it, so a step costs only the rows still generating. Its columns are the
    policy's own: ``mask`` ``(len(rows), C)`` says which are real tokens, and ``fed`` ``(len(rows),)``
    how many observation columns of each row it has consumed. When the env injects a different
    number of tokens into different rows, every row's new tokens are fed in one step,
    right-aligned, and the shorter rows get masked hole columns: no row's prefix is re-run.
    A state with ``cache=None`` means "no cache is valid" (rows restarted out of step): every
    step then re-runs the full prefix.
    """

    cache: Any = None
    mask: torch.Tensor | None = None
    fed: torch.Tensor | None = None
    rows: torch.Tensor | None = None


@dataclass
class SequenceEval:
    """Per-action outputs of a teacher-forced pass, flattened over ``action_mask`` (row-major)."""

    log_prob: torch.Tensor
    entropy: torch.Tensor | None
    values: torch.Tensor | None


def _disable_dropout(model: nn.Module) -> None:
    """Zero every dropout (modules and float ``*dropout*`` attributes such as attention dropout)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)


@functools.cache
def _takes_cache(decoder_class: type, cache_kw: str) -> bool:
    """Whether a decoder's forward accepts the KV cache under the name its causal LM uses."""
    params = inspect.signature(decoder_class.forward).parameters
    return cache_kw in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _shared_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(pick, inverse)`` with ``rows[pick][inverse] == rows``, one picked row per distinct row;
    ``None`` when every row is distinct."""
    distinct, inverse = torch.unique(rows, dim=0, return_inverse=True)
    if len(distinct) == len(rows):
        return None
    # Any copy of a distinct row will do: they are identical.
    pick = torch.zeros(len(distinct), dtype=torch.long, device=rows.device).scatter_(
        0, inverse, torch.arange(len(rows), device=rows.device)
    )
    return pick, inverse


# A separate prompt pass costs about as much as this many padded prompt tokens (the Python of one
# more decoder call, and smaller matrix products): prompts up to this much shorter than the
# longest of a length bucket run in its pass, padded; the others start a new bucket.
PROMPT_BUCKET_SLACK = 16


def _length_buckets(lengths: torch.Tensor, slack: int = PROMPT_BUCKET_SLACK) -> list[torch.Tensor]:
    """Rows grouped for prompt passes: longest first, a row joins the current bucket while its
    length is within ``slack`` of the bucket's longest, so no row is padded by more than that."""
    buckets: list[list[int]] = []
    longest = 0
    for row in torch.argsort(lengths.cpu(), descending=True, stable=True).tolist():
        if not buckets or longest - int(lengths[row]) > slack:
            buckets.append([])
            longest = int(lengths[row])
        buckets[-1].append(row)
    return [torch.tensor(rows, device=lengths.device) for rows in buckets]


class CausalLMPolicy(BasePolicy):
    """A causal LM as an SB3 policy over the token-level MDP.

    :param observation_space: the token env's Dict space.
    :param action_space: ``Discrete(V)``; ``V`` must equal the LM's output size.
    :param lr_schedule: SB3 learning-rate schedule (used to build the optimizer).
    :param model: embedded name, hub id or local path (see `policies.load_lm`), or a loaded
        ``PreTrainedModel``.
    :param lora: ``None`` for full fine-tuning, or a `peft.LoraConfig` / dict of its fields
        (e.g. ``{"r": 8, "lora_alpha": 16}``).
    :param temperature: sampling temperature (> 0).
    :param top_k: keep the ``k`` most likely tokens (0: off).
    :param top_p: nucleus sampling mass (1.0: off).
    :param dtype: model dtype, e.g. ``"bfloat16"``; the value head stays fp32.
    :param gradient_checkpointing: trade compute for memory in the update.
    :param reference: keep a reference model for KL (adapter-off view with LoRA, a frozen copy
        without). Agents that never use KL may turn it off to save memory.
    :param value_head: build a value head (PPO). Critic-free agents (GRPO, RLOO, REINFORCE) build
        none: `value_of` then returns zeros and nothing of it is trained or saved.
    :param device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:0"``...
    :param optimizer_class, optimizer_kwargs: the optimizer over trainable parameters. AdamW
        runs fused (one kernel for the whole step, as HF Trainer's default) unless
        ``optimizer_kwargs`` says otherwise, and with ``weight_decay=0`` (TRL's default: decay
        would pull LoRA weights and the value head towards 0) unless ``optimizer_kwargs`` sets it.
    :param model_kwargs: extra ``from_pretrained`` arguments.
    :param fsdp: shard the weights, gradients and optimizer state over the ranks with FSDP2
        (``fully_shard``), for full fine-tuning of models that do not fit one device. Takes effect
        when the agent calls `shard` under an initialised process group of 2 or more ranks;
        a single process ignores it. Not with LoRA (an adapter is small: plain data parallel).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        model: str | nn.Module = DEFAULT_MODEL,
        lora: Any = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        dtype: str | None = None,
        gradient_checkpointing: bool = False,
        reference: bool = True,
        value_head: bool = True,
        device: str = "auto",
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.AdamW,
        optimizer_kwargs: dict[str, Any] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        fsdp: bool = False,
    ) -> None:
        super().__init__(
            observation_space, action_space, optimizer_class=optimizer_class, optimizer_kwargs=optimizer_kwargs or {}
        )
        if fsdp and lora is not None:
            raise ValueError(
                "fsdp=True shards full fine-tuning (lora=None); a LoRA adapter is small enough "
                "to replicate, so run LoRA plain data parallel (fsdp=False)"
            )
        self.fsdp = bool(fsdp)
        self._fsdp_roots: list[nn.Module] = []  # set by shard()
        self._fsdp_blocks: list[nn.Module] = []
        self._gathered: set[int] = set()  # ids of the FSDP units `gathered` holds unsharded
        self._logits_workspace = LogitsWorkspace()  # the update's (N, V) logits, reused: see policies.head_math
        self._bucket_prompts = True  # prompt passes in length buckets (see _prompt_pass) while the cache allows
        if temperature <= 0:
            raise ValueError("temperature must be positive; use deterministic=True for greedy decoding")
        if not 0 < top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        self.model_spec = (
            model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "<object>")
        )
        self.max_new_tokens = int(observation_space["num_generated"].high[0])
        self.prompt_width = int(observation_space["prompt_length"].high[0])

        backbone = load_lm(model, dtype=dtype, **(model_kwargs or {}))[0] if isinstance(model, str) else model
        backbone.eval()
        vocab = backbone.get_output_embeddings().weight.shape[0]
        if vocab != action_space.n:
            raise ValueError(
                f"the env's action space has {action_space.n} actions but the model has {vocab} output "
                f"tokens; build the env with vocab_size=model.config.vocab_size"
            )
        self.uses_lora = lora is not None
        self.reference_model: nn.Module | None = None
        if reference and not self.uses_lora:
            # Full fine-tuning: the KL reference is a frozen copy of the starting weights.
            self.reference_model = copy.deepcopy(backbone).requires_grad_(False).eval()
        if self.uses_lora:
            import peft

            config = (
                lora
                if isinstance(lora, peft.LoraConfig)
                else peft.LoraConfig(task_type="CAUSAL_LM", **{"lora_dropout": 0.0, **dict(lora)})
            )
            backbone = peft.get_peft_model(backbone, config)
        self.model = backbone
        _disable_dropout(self.model)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hidden = self.model.get_output_embeddings().weight.shape[1]
        self.value_head: nn.Linear | None = None
        if value_head:  # zero init: the value starts at 0 and learns from the first returns
            self.value_head = nn.Linear(hidden, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        # transformers >= 5 renamed `past_key_values` to `cache`; speak whichever this one knows.
        params = inspect.signature(type(self._base_lm()).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.to(_device(device))
        self._initial_lr = lr_schedule(1)
        self.optimizer = self._make_optimizer()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        optimizer_kwargs = dict(self.optimizer_kwargs)
        if self.optimizer_class is torch.optim.AdamW:
            if not {"fused", "foreach"} & optimizer_kwargs.keys():
                optimizer_kwargs["fused"] = True
            optimizer_kwargs.setdefault("weight_decay", 0.0)
        return self.optimizer_class(
            [p for p in self.parameters() if p.requires_grad], lr=self._initial_lr, **optimizer_kwargs
        )

    # -- FSDP --------------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        return bool(self._fsdp_roots)

    def shard(self) -> None:
        """Shard with FSDP2 (``fsdp=True``): ``fully_shard`` on each transformer block (the
        model's ``_no_split_modules`` classes, what accelerate's transformer auto-wrap uses), then
        on the LM itself (embeddings, final norm and a tied head share its unit), the reference
        copy likewise, and each head. Every rank must hold the same weights (the agents broadcast
        rank 0's first). Gradients are *summed* over ranks (divide factor 1: the agents' losses
        are normalised by global counts), and the optimizer is rebuilt over the shards."""
        import torch.distributed as dist
        from torch.distributed.fsdp import fully_shard

        if self.sharded or not (
            self.fsdp and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        ):
            return
        if type(self).save_trainable is not CausalLMPolicy.save_trainable:
            raise ValueError(f"fsdp=True is implemented for CausalLMPolicy, not {type(self).__name__}")
        for tree in (self.model, self.reference_model):
            if tree is None:
                continue
            blocks = set(getattr(tree, "_no_split_modules", None) or ())
            for module in list(tree.modules()):
                if type(module).__name__ in blocks:
                    fully_shard(module)
                    self._fsdp_blocks.append(module)
            fully_shard(tree)
            self._fsdp_roots.append(tree)
        for child in self.children():
            if child is not self.model and child is not self.reference_model and any(True for _ in child.parameters()):
                fully_shard(child)
                self._fsdp_roots.append(child)
        # FSDP2 warns that a wrapped LM returns views (its sliced logits, hidden states): an in-place
        # op on one would skip a backward hook. Nothing here modifies a model output in place.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        for module in self._fsdp_roots + self._fsdp_blocks:
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
        self.optimizer = self._make_optimizer()

    @contextlib.contextmanager
    def gathered(self, reference: bool = False):
        """Full weights on every rank while inside (FSDP; the identity otherwise): forward passes
        of the gathered models need no collectives, so ranks may generate different numbers of
        steps, and rank 0 may evaluate alone. Every rank must enter it (entering all-gathers).
        The policy's LM and heads are gathered; the reference copy too with ``reference=True``
        (evaluation's KL), else its passes stay sharded collectives. No-grad use only: gradients
        flow through the sharded forward of the update."""
        roots = [m for m in self._fsdp_roots if reference or m is not self.reference_model]
        skip = set() if reference or self.reference_model is None else {id(m) for m in self.reference_model.modules()}
        blocks = [m for m in self._fsdp_blocks if id(m) not in skip]
        fresh = [m for m in roots + blocks if id(m) not in self._gathered]
        for module in fresh:
            module.unshard()
        for module in fresh:
            if module in blocks:
                module.set_reshard_after_forward(False, recurse=False)
            self._gathered.add(id(module))
        try:
            yield
        finally:
            for module in fresh:
                self._gathered.discard(id(module))
                if module in blocks:
                    module.set_reshard_after_forward(True, recurse=False)
                module.reshard()

    def _trainable_modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, **({"value_head": self.value_head} if self.value_head is not None else {})}

    def trainable_state(self) -> dict[str, dict[str, torch.Tensor]] | None:
        """Sharded: the trainable weights as full tensors on rank 0 (empty dicts elsewhere), a
        collective every rank must call. ``None`` when not sharded (`save_trainable` reads the
        modules directly)."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return {
            name: get_model_state_dict(module, options=options) for name, module in self._trainable_modules().items()
        }

    def optimizer_state(self) -> dict[str, Any]:
        """The optimizer's state dict; sharded, the full one on rank 0 (a collective)."""
        if not self.sharded:
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            self, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Inverse of `optimizer_state` (sharded: every rank passes the full state it read)."""
        if not self.sharded:
            self.optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self, self.optimizer, state, options=StateDictOptions(full_state_dict=True))

    # -- SB3 plumbing ----------------------------------------------------------------------
    def _base_lm(self) -> nn.Module:
        model = self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def set_training_mode(self, mode: bool) -> None:
        # Train mode only switches on what needs it (gradient checkpointing); dropout was zeroed
        # at construction, so rollouts and updates compute the same function (ratio == 1).
        self.train(mode)
        if self.reference_model is not None:
            self.reference_model.eval()

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(model=self.model_spec, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return data

    # -- distributions -----------------------------------------------------------------------
    def log_probs_from_logits(self, logits: torch.Tensor, truncate: bool = True) -> torch.Tensor:
        """Log-probs of the sampling distribution: temperature, then (``truncate``) top-k and top-p."""
        logits = logits.float()
        if self.temperature != 1.0:  # skip a (N, V) copy in the common case
            logits = logits / self.temperature
        if not truncate:
            return log_softmax(logits)
        if self.top_k > 0 and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            # Drop a token when the mass before it already reaches top_p (keeps at least one).
            drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= self.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        return log_softmax(logits)

    @staticmethod
    def output_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """LM logits from final hidden states: the output layer, then the model's final logit
        soft-capping (``config.final_logit_softcapping``, Gemma 2/3) when it has one."""
        logits = model.get_output_embeddings()(hidden)
        cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def action_log_probs(
        self,
        hidden: torch.Tensor,
        model: nn.Module,
        input_ids: torch.Tensor,
        rows: torch.Tensor,
        columns: torch.Tensor,
        truncate: bool = True,
    ) -> torch.Tensor:
        """Log-probs over the action space at ``N`` decision points; the one place subclasses change.

        :param hidden: ``(N, H)`` final hidden states at the decision points.
        :param model: the model that produced them (the policy's, or the reference).
        :param input_ids, rows, columns: the token history; decision ``i`` follows
            ``input_ids[rows[i], :columns[i] + 1]`` (a pause policy counts its pauses there).
        :param truncate: apply top-k/top-p (the policy); the reference is scored untruncated.
        Rollouts and teacher-forced evaluation both go through here, so they always agree.
        """
        return self.log_probs_from_logits(self.output_logits(model, hidden), truncate)

    @staticmethod
    def entropy_from_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
        probs = log_probs.exp()
        return -(probs * log_probs.masked_fill(probs == 0, 0.0)).sum(-1)

    @staticmethod
    def kl_from_log_probs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        """KL(p ‖ q) = Σ_v p_v (log p_v − log q_v) over the last dim; tokens p excludes (−inf) add 0."""
        probs = log_p.exp()
        return (probs * (log_p - log_q)).masked_fill(probs == 0, 0.0).sum(-1)

    # -- forward passes ----------------------------------------------------------------------
    def _run(self, model: nn.Module, input_ids, attention_mask, position_ids, cache=None, use_cache=False):
        """One backbone call; returns (final hidden states (B, T, H), cache). Logits come from
        `output_logits` on the hidden states, never from the model's own output: the call runs
        the decoder alone (``get_decoder()``), so the LM head is never run twice (a causal LM's
        forward would also compute its last position's logits, a quarter of a decoding step for
        a 135M model with a 49k vocabulary)."""
        decoder = self._decoder(model)
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **({self._cache_kw: cache} if cache is not None else {}),
        )
        if decoder is None:
            out = model(**kwargs, output_hidden_states=True, logits_to_keep=1)
            hidden = out.hidden_states[-1]
        else:
            out = decoder(**kwargs)
            hidden = out.last_hidden_state
        return hidden, (getattr(out, self._cache_kw, None) if use_cache else None)

    def _decoder(self, model: nn.Module) -> nn.Module | None:
        """``model``'s decoder stack (final norm included, LM head excluded), or None where the
        model has no ``get_decoder`` that returns one (then the full forward is used)."""
        try:
            candidate = model.get_decoder() if hasattr(model, "get_decoder") else None
        except (AttributeError, NotImplementedError, TypeError):
            return None
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if self.sharded:  # the LM's root FSDP unit (embeddings, norm, head) gathers in its own forward
            return None
        if not isinstance(candidate, nn.Module) or candidate is model or candidate is base:
            return None
        return candidate if _takes_cache(type(candidate), self._cache_kw) else None

    def _prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor):
        """The first pass of a lockstep batch: `_prompt_pass` over the policy's own model."""
        return self._prompt_pass(self.model, input_ids, attention_mask, position_ids)

    def _prompt_pass(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        only_if_it_saves: bool = False,
    ) -> tuple[torch.Tensor, Any] | None:
        """Hidden states ``(B, C, H)`` and KV cache of left-padded prompt columns, without
        computing what is shared or padding (``None`` with ``only_if_it_saves`` when no row is
        shared and one pass holds every row: then nothing is saved).

        * Identical rows (a prompt with several completions, ``completions_per_prompt > 1``) are
          run once; their hidden states and cache are copied to every row that shares them
          (differentiably: the gradients of every completion reach the one prompt pass).
        * Distinct prompts of different lengths run in length buckets (`_length_buckets`), each
          pass only as wide as its longest prompt, and the caches are left-padded with zeros to
          the shared ``C`` columns (masked, never attended). Padding a short prompt to the
          longest of a batch would cost as much as real tokens. Only for a plain `DynamicCache`;
          other caches (sliding windows, ...) get one padded pass.
        """
        shared = _shared_rows(torch.cat([input_ids, attention_mask], 1))
        inverse = None
        if shared is not None:
            pick, inverse = shared
            input_ids, attention_mask, position_ids = input_ids[pick], attention_mask[pick], position_ids[pick]
        columns = input_ids.shape[1]
        real = attention_mask.bool()
        lengths = torch.where(real.any(1), columns - real.int().argmax(1), 1)  # from each row's first real column
        buckets = _length_buckets(lengths) if self._bucket_prompts else []
        if only_if_it_saves and inverse is None and len(buckets) <= 1:
            return None
        hidden = cache = None
        if len(buckets) > 1:
            parts = []
            for rows in buckets:
                width = int(lengths[rows].max())
                parts.append(
                    self._run(
                        model,
                        input_ids[rows, -width:],
                        attention_mask[rows, -width:],
                        position_ids[rows, -width:],
                        None,
                        True,
                    )
                )
            cache = left_padded([c for _, c in parts], columns)
            if cache is None:
                self._bucket_prompts = False  # this model's cache cannot be padded: one pass from now on
            else:
                hidden = torch.cat([F.pad(h, (0, 0, columns - h.shape[1], 0)) for h, _ in parts])
                order = torch.cat(buckets)
                restore = torch.empty_like(order)
                restore[order] = torch.arange(len(order), device=order.device)
                inverse = restore if inverse is None else restore[inverse]
        if cache is None:
            hidden, cache = self._run(model, input_ids, attention_mask, position_ids, None, True)
        if inverse is not None:
            cache.reorder_cache(inverse)  # public Cache API: index_select over the batch dimension
            hidden = hidden[inverse]
        return hidden, cache

    def value_of(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.value_head is None:
            return torch.zeros(hidden.shape[:-1], device=hidden.device)
        return self.value_head(hidden.float()).squeeze(-1)

    @torch.no_grad()
    def shift_values(self, delta: float) -> None:
        """Add ``delta`` to every value the head predicts (moves its bias)."""
        if self.value_head is None:
            raise RuntimeError("this policy was built with value_head=False")
        self.value_head.bias.add_(delta)

    @torch.no_grad()
    def act(
        self,
        obs: Obs,
        state: RolloutState | None = None,
        episode_start: torch.Tensor | np.ndarray | None = None,
        deterministic: bool = False,
        active: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, RolloutState]:
        """Choose the next token for every row; return ``(actions, log_probs, values, state)``.

        With a batch that starts together (all ``episode_start`` true), the KV cache is kept
        across calls, so a step costs one incremental forward over the columns each row gained
        since the last call: one action, plus whatever the env injected. If only some rows
        restart (per-row auto-reset), the cache is dropped and every step re-runs the full
        prefix: correct, but slower.

        :param active: ``(B,)`` bool, the rows still generating (lockstep). Rows that are not
            are dropped from the KV cache (an index-select on its batch dimension) and from
            every later forward pass; their outputs are 0 (the env ignores them).
        """
        input_ids = obs["input_ids"].long()
        attention = obs["attention_mask"].long()
        used = obs["completion_length"] if "completion_length" in obs else obs["num_generated"]
        ends = self.prompt_width + used.reshape(-1).long().to(input_ids.device)  # each row's end of real tokens
        full = input_ids.shape[0]
        if episode_start is not None:
            starts = torch.as_tensor(np.asarray(episode_start, dtype=bool))
            if bool(starts.all()):
                state = None
            elif bool(starts.any()):
                state = RolloutState()  # rows out of step: no shared cache
        rows = torch.arange(full, device=input_ids.device)
        hidden = None
        if state is not None and state.cache is not None:
            cache, rows, mask, fed = state.cache, state.rows, state.mask, state.fed
            if active is not None:
                keep = active.to(rows.device)[rows]
                if not bool(keep.all()):
                    kept = keep.nonzero().squeeze(-1)
                    cache.reorder_cache(kept)  # public Cache API: index_select over the batch dimension
                    rows, mask, fed = rows[kept], mask[kept], fed[kept]
            new = ends[rows] - fed
            width = int(new.max()) if len(rows) else 0
            if width > 0:
                # Incremental step: each row's new columns, right-aligned; shorter rows get holes.
                j = torch.arange(width, device=rows.device)
                valid = j[None, :] >= (width - new)[:, None]
                columns = (ends[rows, None] - width + j[None, :]).clamp(min=0)
                block_ids = input_ids[rows[:, None], columns].masked_fill(~valid, 0)
                block_mask = attention[rows[:, None], columns] * valid
                positions = (mask.sum(-1, keepdim=True) + block_mask.cumsum(-1) - 1).clamp(min=0)
                mask = torch.cat([mask, block_mask], 1)
                hidden, cache = self._run(self.model, block_ids, mask, positions, cache, True)
                last_hidden = hidden[:, -1]
                new_state = RolloutState(cache, mask, ends[rows], rows)
        if hidden is None:
            # Prefix pass: skip columns that are padding in every row.
            rows = torch.arange(full, device=input_ids.device)
            end = int(ends.max())
            real_columns = attention[:, :end].any(0).nonzero()
            offset = int(real_columns[0]) if len(real_columns) else 0
            mask = attention[:, offset:end]
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            if state is None:
                hidden, cache = self._prefill(input_ids[:, offset:end], mask, positions)
                new_state = RolloutState(with_spare_columns(cache), mask, ends.clone(), rows)
            else:
                hidden, _ = self._run(self.model, input_ids[:, offset:end], mask, positions)
                new_state = RolloutState()
            last_hidden = hidden[rows, ends - 1 - offset]  # each row's newest real token
        log_probs = self.action_log_probs(last_hidden, self.model, input_ids, rows, ends[rows] - 1)
        if deterministic:
            actions = log_probs.argmax(-1)
        else:
            actions = sample(probabilities(log_probs))
        chosen, values = log_probs.gather(-1, actions[:, None]).squeeze(-1), self.value_of(last_hidden)
        if len(rows) == full:
            return actions, chosen, values, new_state
        return (
            torch.zeros(full, dtype=actions.dtype, device=actions.device).index_copy(0, rows, actions),
            torch.zeros(full, device=chosen.device).index_copy(0, rows, chosen),
            torch.zeros(full, device=values.device).index_copy(0, rows, values),
            new_state,
        )

    def evaluate_actions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        action_mask: torch.Tensor,
        with_entropy: bool = True,
        with_values: bool = True,
        reference: bool = False,
        entropy_grad: bool = True,
        truncate: bool = True,
    ) -> SequenceEval:
        """Teacher-forced log-probs (and values, entropy) of every action, in one forward pass.

        :param input_ids, attention_mask: ``(B, T)`` whole sequences.
        :param action_mask: ``(B, T)``, 1 where the token was chosen by the policy. The token
            at column ``c`` is scored from the hidden state at ``c - 1``, and the value at
            ``c - 1`` is the value of the state it was chosen in.
        :param reference: score under the reference model (no grad) instead of the policy.
        :param entropy_grad: build the entropy's graph; agents without an entropy bonus turn it
            off, which saves several ``(N, V)`` tensors of memory traffic in the backward pass.
        :param truncate: score the policy's sampling distribution, top-k/top-p included (what
            its rollouts sampled from); ``False``: the full (tempered) softmax, which the
            learning-from-data losses use, so a gold or hinted token outside the nucleus keeps a
            finite log-prob, as in TRL. The reference is always scored untruncated.
        Logits are computed only at action positions, never for the whole sequence.
        """
        select = action_mask[:, 1:].bool()
        actions = input_ids[:, 1:][select]
        rows, columns = select.nonzero(as_tuple=True)  # decision at column c scores token c + 1
        if reference:
            model, context = self._reference()
            with torch.no_grad(), context:
                hidden, start = self._decision_hidden(model, input_ids, attention_mask, select)
                chosen = hidden[:, :-1][select[:, start:]]
                log_prob, _ = self._score_actions(chosen, model, input_ids, rows, columns, actions, False, False)
            if self.sharded and id(model) not in self._gathered:
                model.reshard()  # FSDP keeps a root unit gathered after forward, for the backward this pass never has
            return SequenceEval(log_prob, None, None)
        hidden, start = self._decision_hidden(self.model, input_ids, attention_mask, select)
        chosen = hidden[:, :-1][select[:, start:]]
        log_prob, entropy = self._score_actions(
            chosen, self.model, input_ids, rows, columns, actions, truncate, with_entropy, entropy_grad
        )
        return SequenceEval(log_prob, entropy, self.value_of(chosen) if with_values else None)

    @torch.no_grad()
    def reference_kl(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, action_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact KL(π ‖ π_ref) over the whole action space at every action, and the
        reference's log-prob of each action taken (both flat, in `evaluate_actions`' order).

        π is the sampling distribution (temperature, top-k/top-p), π_ref the tempered, untruncated
        reference. Unlike an estimate from the sampled tokens, it is never negative, greedy
        decoding included. Builds two ``(N, V)`` log-prob tensors: callers pass a few rows at a time.
        """
        select = action_mask[:, 1:].bool()
        actions = input_ids[:, 1:][select]
        rows, columns = select.nonzero(as_tuple=True)
        hidden, start = self._decision_hidden(self.model, input_ids, attention_mask, select)
        log_p = self.action_log_probs(hidden[:, :-1][select[:, start:]], self.model, input_ids, rows, columns, True)
        model, context = self._reference()
        with context:
            hidden, start = self._decision_hidden(model, input_ids, attention_mask, select)
            log_q = self.action_log_probs(hidden[:, :-1][select[:, start:]], model, input_ids, rows, columns, False)
        if self.sharded:  # no backward follows: give back what the forward passes gathered
            for used in {id(self.model): self.model, id(model): model}.values():
                if id(used) not in self._gathered:
                    used.reshard()
        return self.kl_from_log_probs(log_p, log_q), log_q.gather(-1, actions[:, None]).squeeze(-1)

    def _score_actions(
        self,
        hidden: torch.Tensor,
        model: nn.Module,
        input_ids: torch.Tensor,
        rows: torch.Tensor,
        columns: torch.Tensor,
        actions: torch.Tensor,
        truncate: bool,
        with_entropy: bool,
        entropy_grad: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log π(action), entropy or None) at ``N`` decision points. The same numbers as
        `action_log_probs` + ``gather``; when that hook is not overridden and nothing truncates
        the distribution, they come from `policies.head_math` instead, which never builds an
        ``(N, V)`` log-prob tensor (the update's largest element-wise cost), and, for a plain
        linear head, runs the head's matmul itself so the logits become their own gradient."""
        truncates = truncate and (0 < self.top_k < self.action_space.n or self.top_p < 1.0)
        if type(self).action_log_probs is CausalLMPolicy.action_log_probs and not truncates:
            head = model.get_output_embeddings()
            plain = (
                type(head) is nn.Linear
                and head.bias is None
                and not self.sharded
                and not getattr(getattr(model, "config", None), "final_logit_softcapping", None)
            )
            if plain:  # the matmul inside too: the logits turn into their own gradient
                log_prob, entropy = linear_selected_log_probs(
                    hidden, head.weight, actions, self.temperature, with_entropy, self._logits_workspace
                )
            else:
                log_prob, entropy = selected_log_probs(
                    self.output_logits(model, hidden), actions, self.temperature, with_entropy
                )
            return log_prob, (entropy if entropy_grad or entropy is None else entropy.detach())
        log_probs = self.action_log_probs(hidden, model, input_ids, rows, columns, truncate)
        entropy = None
        if with_entropy:
            with torch.set_grad_enabled(torch.is_grad_enabled() and entropy_grad):
                entropy = self.entropy_from_log_probs(log_probs)
        return log_probs.gather(-1, actions[:, None]).squeeze(-1), entropy

    def _decision_hidden(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, select: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """Final hidden states of columns ``start:``, where ``start`` is the first decision column.

        Rows whose columns before ``start`` are identical (a prompt with several completions)
        share one forward pass over that prefix: its KV cache is run once per distinct prefix,
        copied to the rows that share it (the copy is differentiable, so gradients from every
        completion reach the shared prompt pass), and only the rest of each row is run per row.
        Prompts of different lengths run that pass in length buckets (`_prompt_pass`). When
        neither saves anything (or with gradient checkpointing, which would replay the cache
        writes) this is one ordinary forward pass and ``start`` is 0.
        """
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        decision_columns = select.any(0).nonzero()
        start = int(decision_columns[0]) if len(decision_columns) else 0
        # Sharded outside `gathered`, each forward is a collective: one pass per micro-batch on every rank.
        collective = self.sharded and id(model) not in self._gathered
        if start > 0 and not (self.gradient_checkpointing and torch.is_grad_enabled()) and not collective:
            prompt = self._prompt_pass(
                model, input_ids[:, :start], attention_mask[:, :start], positions[:, :start], only_if_it_saves=True
            )
            if prompt is not None:
                hidden, _ = self._run(
                    model, input_ids[:, start:], attention_mask, positions[:, start:], prompt[1], True
                )
                return hidden, start
        hidden, _ = self._run(model, input_ids, attention_mask, positions)
        return hidden, 0

    def _reference(self):
        if self.uses_lora:
            return self.model, self.model.disable_adapter()
        if self.reference_model is None:
            raise RuntimeError("this policy was built with reference=False, so it has no KL reference")
        import contextlib

        return self.reference_model, contextlib.nullcontext()

    # -- SB3 API -----------------------------------------------------------------------------
    def forward(self, obs: Obs, deterministic: bool = False):
        actions, log_probs, values, _ = self.act(obs, None, None, deterministic)
        return actions, values, log_probs

    def _predict(self, observation: Obs, deterministic: bool = False) -> torch.Tensor:
        return self.act(observation, None, None, deterministic)[0]

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = False):
        """SB3's ``predict``, with the KV cache as the recurrent ``state``."""
        self.set_training_mode(False)
        obs_tensor, vectorized = self.obs_to_tensor(observation)
        actions, _, _, state = self.act(obs_tensor, state, episode_start, deterministic)
        actions = actions.cpu().numpy()
        return (actions if vectorized else actions[0]), state

    # -- saving what training changed --------------------------------------------------------
    def save_trainable(self, directory: str | os.PathLike, state: dict[str, Any] | None = None) -> None:
        """Write the adapter (LoRA) or full weights via ``save_pretrained``, plus the value head.

        Sharded (FSDP): every rank calls it (the full weights are gathered, see `trainable_state`,
        unless ``state`` holds them already) and rank 0 writes."""
        if self.sharded:
            import torch.distributed as dist

            state = self.trainable_state() if state is None else state
            if dist.get_rank() != 0:
                return
            os.makedirs(directory, exist_ok=True)
            self.model.save_pretrained(directory, state_dict=state["model"])
            # fully_shard subclasses the model's class (FSDPLlamaForCausalLM): record the real one.
            config_file = os.path.join(directory, "config.json")
            config = json.loads(open(config_file).read())
            config["architectures"] = [
                klass.__name__
                for klass in type(self.model).__mro__
                if "fully_shard" not in klass.__module__ and klass.__name__[:4] != "FSDP"
            ][:1]
            with open(config_file, "w") as f:
                json.dump(config, f, indent=2)
            if self.value_head is not None:
                torch.save(state["value_head"], os.path.join(directory, "value_head.pt"))
            return
        os.makedirs(directory, exist_ok=True)
        self.model.save_pretrained(directory)
        self._save_value_head(directory)

    def _save_value_head(self, directory: str | os.PathLike) -> None:
        if self.value_head is not None:
            torch.save(self.value_head.state_dict(), os.path.join(directory, "value_head.pt"))

    def load_trainable(self, directory: str | os.PathLike) -> None:
        """Inverse of `save_trainable` on a policy built from the same starting model."""
        if self.uses_lora:
            import peft

            state = peft.load_peft_weights(str(directory), device=str(self.device))
            peft.set_peft_model_state_dict(self.model, state)
        else:
            from transformers import AutoModelForCausalLM

            loaded = AutoModelForCausalLM.from_pretrained(str(directory), dtype=next(self.model.parameters()).dtype)
            if self.sharded:  # every rank read the full weights; each keeps its shards
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

                set_model_state_dict(self.model, loaded.state_dict(), options=StateDictOptions(full_state_dict=True))
            else:
                self.model.load_state_dict(loaded.state_dict())
        if self.value_head is not None:
            head = torch.load(os.path.join(directory, "value_head.pt"), map_location=self.device, weights_only=True)
            if self.sharded:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

                set_model_state_dict(self.value_head, head, options=StateDictOptions(full_state_dict=True))
            else:
                self.value_head.load_state_dict(head)
