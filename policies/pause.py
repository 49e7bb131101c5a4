"""`PauseLMPolicy`: a causal LM that may emit ``<|pause|>`` tokens, chosen by a small pause head.

What lives here: adding the pause token to a model and tokenizer (`add_pause_token`), the pause
head and its files (`init_pause_head`, `load_pause_head`, `save_pause_checkpoint`), the
hierarchical distribution (`pause_joint_log_probs`), the LoRA set-up that trains the pause row
(`pause_lora_config`) and the policy. May import `policies.causal_lm`/`policies.loading`, torch,
transformers and peft; knows nothing of tasks, envs or agents.

The distribution at every decision point is hierarchical::

    log p(pause) = log p_head(pause | h)
    log p(token) = log p_head(LM | h) + log p_LM(token | h)     (token != pause)

where ``h`` is the final hidden state, the pause head is ``Linear(hidden, 2)`` (index 0 =
"pause", index 1 = "let the LM choose"), and ``p_LM`` is the LM's sampling distribution
(temperature/top-k/top-p) with its own pause logit masked to -inf: only the head ever emits a
pause. After ``max_pauses`` pauses in the completion so far, pause gets probability 0 and the
LM all the mass. The joint log-probs go through `CausalLMPolicy.action_log_probs`, the one hook
rollouts and teacher-forced evaluation share, so sampling, the PPO ratio, the entropy and the
KL all see the same distribution.

A pause checkpoint directory (what `save_pause_checkpoint`, `PauseLMPolicy.save_pretrained`
and ``experiments/sft_warmup.py`` write) is a ``save_pretrained`` model + tokenizer that
already hold the pause token (``config.pause_token_id``), plus ``pause_head.pt`` and
``pause_config.json``. ``load_lm(dir)`` reloads the model and tokenizer, `load_pause_head(dir)`
the head, and ``PauseLMPolicy(model=dir)`` both.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from policies.causal_lm import CausalLMPolicy
from policies.loading import DEFAULT_MODEL, load_lm

PAUSE_TOKEN = "<|pause|>"
HEAD_FILE = "pause_head.pt"
CONFIG_FILE = "pause_config.json"
PAUSE, LM = 0, 1  # the pause head's two outputs


# -- the token -----------------------------------------------------------------------------------
def add_pause_token(model: nn.Module, tokenizer: Any, pause_token: str = PAUSE_TOKEN, seed: int = 0) -> int:
    """Add ``pause_token`` as a special token and give the model a row for it; return its id.

    Resizes the embeddings (tied or untied) when the id falls outside the model's vocabulary and
    initialises the new input row (and output row if untied) from the per-dimension mean/std of
    the existing rows, with a fixed ``seed`` so that adding the token to the same model twice
    gives the same weights. Idempotent: a model whose ``config.pause_token_id`` is already this
    token's id is left alone. Records ``config.pause_token_id``/``config.pause_token``, so a
    ``save_pretrained`` directory carries them.
    """
    from transformers import AddedToken

    if hasattr(model, "get_base_model"):
        raise TypeError("add_pause_token needs a plain transformers model; merge or unwrap the peft model first")
    if pause_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(pause_token, special=True, normalized=False)], special_tokens=True)
    pause_id = int(tokenizer.convert_tokens_to_ids(pause_token))
    vocab = model.get_input_embeddings().weight.shape[0]
    known = getattr(model.config, "pause_token_id", None)
    if known is not None and (known != pause_id or getattr(model.config, "pause_token", pause_token) != pause_token):
        raise ValueError(
            f"the model already has pause token {getattr(model.config, 'pause_token', None)!r} "
            f"(id {known}) but the tokenizer gives {pause_token!r} id {pause_id}"
        )
    if known == pause_id and pause_id < vocab:
        return pause_id
    if pause_id >= vocab:
        model.resize_token_embeddings(pause_id + 1, mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        embeddings = [model.get_input_embeddings().weight]
        output = model.get_output_embeddings()
        if output is not None and output.weight is not embeddings[0]:
            embeddings.append(output.weight)
        for weight in embeddings:
            # Existing rows only (ids below the pause id): padding rows beyond a tokenizer may be junk.
            existing = weight[:pause_id].float()
            mean, std = existing.mean(0), existing.std(0)
            noise = torch.randn(mean.shape, generator=generator)
            weight[pause_id] = (mean + std * noise.to(mean.device)).to(weight.dtype)
        if output is not None and getattr(output, "bias", None) is not None:
            output.bias[pause_id] = output.bias[:pause_id].mean()
    model.config.pause_token_id = pause_id
    model.config.pause_token = pause_token
    return pause_id


def tied_embeddings(model: nn.Module) -> bool:
    output = model.get_output_embeddings()
    return output is not None and output.weight is model.get_input_embeddings().weight


def _leaf_name(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name.rsplit(".", 1)[-1]
    raise ValueError("module not found in model")


# -- the head and its files ----------------------------------------------------------------------
def init_pause_head(hidden_size: int, pause_probability: float = 0.05) -> nn.Linear:
    """A fresh head that pauses with ``pause_probability`` everywhere (zero weights, bias = log-odds)."""
    if not 0 < pause_probability < 1:
        raise ValueError(f"pause_probability must be in (0, 1), got {pause_probability}")
    head = nn.Linear(hidden_size, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.log(torch.tensor([pause_probability, 1 - pause_probability])))
    return head


def load_pause_head(directory: str | os.PathLike) -> nn.Linear | None:
    """The head saved in ``directory`` (``pause_head.pt``), or ``None`` when there is none."""
    path = Path(directory) / HEAD_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    head = nn.Linear(state["weight"].shape[1], 2)
    head.load_state_dict(state)
    return head


def pause_config(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _save_head(
    head: nn.Module, directory: str | os.PathLike, pause_token: str, pause_id: int, extra: dict[str, Any] | None = None
) -> None:
    os.makedirs(directory, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in head.state_dict().items()}, Path(directory) / HEAD_FILE)
    meta = {"pause_token": pause_token, "pause_token_id": int(pause_id), **(extra or {})}
    (Path(directory) / CONFIG_FILE).write_text(json.dumps(meta, indent=2))


def save_pause_checkpoint(
    directory: str | os.PathLike, model: nn.Module, tokenizer: Any, head: nn.Module, extra: dict[str, Any] | None = None
) -> None:
    """Write a self-contained pause checkpoint: merged model, tokenizer, head and ``pause_config.json``."""
    if hasattr(model, "get_base_model"):
        raise TypeError("save_pause_checkpoint needs a merged model (peft: merge_and_unload() first)")
    pause_id = model.config.pause_token_id
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    _save_head(head, directory, model.config.pause_token, pause_id, extra)


# -- the distribution ----------------------------------------------------------------------------
def pause_counts(input_ids: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, pause_id: int) -> torch.Tensor:
    """Pauses in ``input_ids[rows[i], :columns[i] + 1]``: the whole row prefix, because a prompt
    never holds the pause token and a column-trimmed row has no fixed prompt width."""
    cumulative = (input_ids == pause_id).long().cumsum(-1)
    return cumulative[rows, columns]


def pause_joint_log_probs(
    lm_log_probs: torch.Tensor, head_log_probs: torch.Tensor, pause_id: int, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """Joint log-probs over vocabulary + pause from the LM's (pause already masked) and the head's.

    :param lm_log_probs: ``(N, V)``, ``-inf`` at ``pause_id``.
    :param head_log_probs: ``(N, 2)``: log p(pause), log p(LM).
    :param allowed: ``(N,)`` bool; where false, pause is masked and the LM gets all the mass.
    """
    log_pause, log_lm = head_log_probs[:, PAUSE], head_log_probs[:, LM]
    if allowed is not None:
        log_pause = log_pause.masked_fill(~allowed, float("-inf"))
        log_lm = log_lm.masked_fill(~allowed, 0.0)
    joint = lm_log_probs + log_lm[:, None]
    index = torch.full_like(log_pause, pause_id, dtype=torch.long)[:, None]
    return joint.scatter(-1, index, log_pause[:, None])


def mask_pause_logit(logits: torch.Tensor, pause_id: int) -> torch.Tensor:
    """LM logits (as float) with the pause logit at -inf: the LM head never emits pause."""
    logits = logits.float().clone()
    logits[..., pause_id] = float("-inf")
    return logits


# -- LoRA ----------------------------------------------------------------------------------------
def pause_lora_config(
    model: nn.Module,
    lora: Any,
    pause_id: int,
    train_pause_embedding: bool = True,
    train_lm_head: bool = False,
    train_embeddings: bool = False,
) -> Any:
    """A `peft.LoraConfig` that also trains the pause row (``trainable_token_indices``) and,
    when asked, the embeddings/LM head (``modules_to_save``; tied ones stay tied)."""
    import peft

    tied = tied_embeddings(model)
    if tied and train_lm_head != train_embeddings:
        raise ValueError(
            "this model ties its input and output embeddings: set train_lm_head and train_embeddings to the same value"
        )
    embed_name = _leaf_name(model, model.get_input_embeddings())
    head_name = _leaf_name(model, model.get_output_embeddings())
    base = (
        lora
        if isinstance(lora, peft.LoraConfig)
        else peft.LoraConfig(task_type="CAUSAL_LM", **{"lora_dropout": 0.0, **dict(lora)})
    )
    modules = list(base.modules_to_save or [])
    changes: dict[str, Any] = {}
    if train_embeddings:
        modules.append(embed_name)
    if train_lm_head:
        modules.append(head_name)
    if tied and train_embeddings:
        changes["ensure_weight_tying"] = True  # one shared trainable copy, still tied
    if train_pause_embedding and not train_embeddings:
        changes["trainable_token_indices"] = {embed_name: [int(pause_id)]}
    if modules:
        changes["modules_to_save"] = list(dict.fromkeys(modules))
    return dataclasses.replace(base, **changes) if changes else base


# -- the policy ----------------------------------------------------------------------------------
class PauseLMPolicy(CausalLMPolicy):
    """`CausalLMPolicy` whose action space has one more choice, made by a pause head.

    :param model: embedded name, hub id or local path, or a loaded model. A pause checkpoint
        directory (or a model loaded from one) brings its pause head along; any other model
        gets a fresh head (``initial_pause_probability``) and, given a tokenizer, the token.
    :param lora: as in `CausalLMPolicy`; the pause row, LM head and embeddings are added to it
        as the switches below ask.
    :param tokenizer: the tokenizer to add the token to (found next to the model if omitted);
        without one the model must already hold the token (``config.pause_token_id``).
    :param pause_token: the token string.
    :param pause_head: a directory holding ``pause_head.pt`` (default: the model's directory).
    :param initial_pause_probability: p(pause) of a fresh head.
    :param head_temperature: divides the head's logits (> 0).
    :param max_pauses: pause is masked once the completion holds this many (``None``: no cap).
    :param detach_pause_head: the head sees ``hidden.detach()``, so its loss never moves the LM.
    :param train_pause_embedding, train_pause_head, train_lm_head, train_embeddings, train_lora:
        which parameters learn. ``train_lora`` only applies with LoRA; without LoRA the
        transformer body always trains (full fine-tuning). With tied embeddings
        ``train_lm_head`` and ``train_embeddings`` must agree; ``train_embeddings`` includes
        the pause row, so it needs ``train_pause_embedding``.
    :param kwargs: the rest of `CausalLMPolicy` (temperature, top_k, top_p, dtype, device...).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        model: str | nn.Module = DEFAULT_MODEL,
        lora: Any = None,
        tokenizer: Any = None,
        pause_token: str = PAUSE_TOKEN,
        pause_head: str | os.PathLike | None = None,
        initial_pause_probability: float = 0.05,
        head_temperature: float = 1.0,
        max_pauses: int | None = None,
        detach_pause_head: bool = False,
        train_pause_embedding: bool = True,
        train_pause_head: bool = True,
        train_lm_head: bool = False,
        train_embeddings: bool = False,
        train_lora: bool = True,
        **kwargs: Any,
    ) -> None:
        if head_temperature <= 0:
            raise ValueError("head_temperature must be positive")
        if max_pauses is not None and max_pauses < 0:
            raise ValueError("max_pauses must be >= 0 or None")
        if train_embeddings and not train_pause_embedding:
            raise ValueError(
                "train_embeddings trains the whole matrix, pause row included; "
                "it cannot be combined with train_pause_embedding=False"
            )
        spec = model
        if isinstance(model, str):
            model, loaded_tokenizer = load_lm(model, dtype=kwargs.get("dtype"), **(kwargs.get("model_kwargs") or {}))
            tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
        if hasattr(model, "merge_and_unload"):
            # An SFT adapter is merged, so the RL reference (adapter off) is the warmed-up model.
            model = model.merge_and_unload()
        source = getattr(model, "name_or_path", None)
        source = source if source and os.path.isdir(source) else None
        if tokenizer is None and source is not None:
            tokenizer = _try_tokenizer(source)
        if tokenizer is not None:
            pause_id = add_pause_token(model, tokenizer, pause_token)
        else:
            pause_id = getattr(model.config, "pause_token_id", None)
            if pause_id is None:
                raise ValueError(
                    "the model has no pause token: call policies.add_pause_token(model, tokenizer) "
                    "first (before building the env) or pass tokenizer="
                )
        vocab = model.get_output_embeddings().weight.shape[0]
        if vocab != action_space.n:
            raise ValueError(
                f"the env's action space has {action_space.n} actions but the model with its pause "
                f"token has {vocab}: add the pause token first (policies.add_pause_token), then "
                f"build the env with vocab_size=model.config.vocab_size"
            )
        tied = tied_embeddings(model)
        if tied and train_lm_head != train_embeddings:
            raise ValueError(
                "this model ties its input and output embeddings: set train_lm_head and "
                "train_embeddings to the same value"
            )
        if lora is not None:
            lora = pause_lora_config(model, lora, pause_id, train_pause_embedding, train_lm_head, train_embeddings)
        super().__init__(observation_space, action_space, lr_schedule, model=model, lora=lora, **kwargs)
        if isinstance(spec, str):
            self.model_spec = spec
        self.tokenizer = tokenizer
        self.pause_token, self.pause_token_id = pause_token, int(pause_id)
        self.head_temperature, self.max_pauses = float(head_temperature), max_pauses
        self.detach_pause_head = bool(detach_pause_head)
        self.switches = dict(
            train_pause_embedding=train_pause_embedding,
            train_pause_head=train_pause_head,
            train_lm_head=train_lm_head,
            train_embeddings=train_embeddings,
            train_lora=train_lora,
        )
        head_dir = pause_head if pause_head is not None else source
        head = load_pause_head(head_dir) if head_dir is not None else None
        if pause_head is not None and head is None:
            raise FileNotFoundError(f"no {HEAD_FILE} in {pause_head}")
        hidden = self.model.get_output_embeddings().weight.shape[1]
        self.pause_head = head if head is not None else init_pause_head(hidden, initial_pause_probability)
        # The reference is the model before RL, head included: a frozen copy of the starting head.
        self.reference_pause_head = copy.deepcopy(self.pause_head).requires_grad_(False)
        self._scoring_reference = False
        self.pause_embedding: nn.Parameter | None = None
        if not self.uses_lora and train_pause_embedding and not train_embeddings:
            # Full fine-tuning with a frozen matrix: the pause row is its own parameter, swapped in
            # by a forward hook (the reference copy, made before, has no hook: it keeps the old row).
            embedding = self.model.get_input_embeddings()
            self.pause_embedding = nn.Parameter(embedding.weight[pause_id].detach().clone())
            embedding.register_forward_hook(self._swap_in_pause_row)
        self._apply_switches()
        self.to(self.device)  # the backbone is already there; bring the head (and pause row) along
        # The parent built its optimizer before the switches: rebuild it over what trains now.
        self.optimizer = self.optimizer_class(
            [p for p in self.parameters() if p.requires_grad], lr=lr_schedule(1), **self.optimizer_kwargs
        )

    # -- set-up helpers ----------------------------------------------------------------------
    def _swap_in_pause_row(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        is_pause = (args[0] == self.pause_token_id).unsqueeze(-1)
        return torch.where(is_pause, self.pause_embedding.to(output.dtype), output)

    def _apply_switches(self) -> None:
        s = self.switches
        base = self._base_lm()
        embed_name = _leaf_name(base, base.get_input_embeddings())
        head_name = _leaf_name(base, base.get_output_embeddings())
        if self.uses_lora:
            for name, param in self.model.named_parameters():
                if "lora_" in name:
                    param.requires_grad_(s["train_lora"])
                elif "trainable_tokens_delta" in name:
                    param.requires_grad_(s["train_pause_embedding"])
                elif "modules_to_save" in name:
                    is_embed, is_head = f"{embed_name}.modules_to_save" in name, f"{head_name}.modules_to_save" in name
                    param.requires_grad_(s["train_embeddings"] if is_embed else s["train_lm_head"] if is_head else True)
                else:
                    param.requires_grad_(False)
        else:
            embed = base.get_input_embeddings().weight
            output = base.get_output_embeddings()
            output_params = {id(p) for p in output.parameters()}
            for param in self.model.parameters():
                if param is embed:
                    param.requires_grad_(s["train_embeddings"])
                elif id(param) in output_params:
                    param.requires_grad_(s["train_lm_head"])
                else:
                    param.requires_grad_(True)  # full fine-tuning: the transformer body
        if self.pause_embedding is not None:
            self.pause_embedding.requires_grad_(s["train_pause_embedding"])
        self.pause_head.requires_grad_(s["train_pause_head"])

    def _sync_pause_row(self) -> None:
        """Write the separate pause row (full fine-tuning) into the embedding matrix before saving."""
        if self.pause_embedding is not None:
            with torch.no_grad():
                self.model.get_input_embeddings().weight[self.pause_token_id] = self.pause_embedding

    # -- the distribution --------------------------------------------------------------------
    def head_log_probs(self, hidden: torch.Tensor, reference: bool = False) -> torch.Tensor:
        """``(N, 2)`` log p(pause), log p(LM) of the pause head (or the reference head)."""
        head = self.reference_pause_head if reference else self.pause_head
        hidden = hidden.detach() if self.detach_pause_head else hidden
        return torch.log_softmax(head(hidden.float()) / self.head_temperature, dim=-1)

    def action_log_probs(
        self,
        hidden: torch.Tensor,
        model: nn.Module,
        input_ids: torch.Tensor,
        rows: torch.Tensor,
        columns: torch.Tensor,
        truncate: bool = True,
    ) -> torch.Tensor:
        """Joint log-probs over vocabulary + pause (see the module docstring)."""
        logits = self.output_logits(model, hidden)
        lm = self.log_probs_from_logits(mask_pause_logit(logits, self.pause_token_id), truncate)
        allowed = None
        if self.max_pauses is not None:
            allowed = pause_counts(input_ids, rows, columns, self.pause_token_id) < self.max_pauses
        return pause_joint_log_probs(
            lm, self.head_log_probs(hidden, self._scoring_reference), self.pause_token_id, allowed
        )

    def _reference(self):
        model, context = super()._reference()
        return model, self._reference_head_context(context)

    @contextlib.contextmanager
    def _reference_head_context(self, context) -> Iterator[None]:
        self._scoring_reference = True
        try:
            with context:
                yield
        finally:
            self._scoring_reference = False

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            pause_token=self.pause_token,
            head_temperature=self.head_temperature,
            max_pauses=self.max_pauses,
            detach_pause_head=self.detach_pause_head,
            **self.switches,
        )
        return data

    # -- saving --------------------------------------------------------------------------------
    def _pause_meta(self) -> dict[str, Any]:
        return {
            "vocab_size": int(self.action_space.n),
            "head_temperature": self.head_temperature,
            "max_pauses": self.max_pauses,
        }

    def save_trainable(self, directory: str | os.PathLike) -> None:
        """`CausalLMPolicy.save_trainable` plus the pause head, ``pause_config.json`` (token and id)
        and, when the policy knows it, the tokenizer."""
        self._sync_pause_row()
        if self.uses_lora:
            os.makedirs(directory, exist_ok=True)
            # peft would copy the whole resized embedding matrix; the pause row is already in the
            # adapter (trainable tokens), and the base is resized the same way again (seeded).
            self.model.save_pretrained(directory, save_embedding_layers=False)
            self._save_value_head(directory)
        else:
            super().save_trainable(directory)
        _save_head(self.pause_head, directory, self.pause_token, self.pause_token_id, self._pause_meta())
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)

    def load_trainable(self, directory: str | os.PathLike) -> None:
        """Inverse of `save_trainable` on a policy built from the same starting model."""
        meta = pause_config(directory)
        if meta is None:
            raise FileNotFoundError(f"{directory} has no {CONFIG_FILE}: not saved by a PauseLMPolicy")
        if meta["pause_token_id"] != self.pause_token_id or meta["pause_token"] != self.pause_token:
            raise ValueError(
                f"{directory} was saved with pause token {meta['pause_token']!r} (id "
                f"{meta['pause_token_id']}), this policy has {self.pause_token!r} ({self.pause_token_id})"
            )
        super().load_trainable(directory)
        head = load_pause_head(directory)
        self.pause_head.load_state_dict(head.state_dict())
        if self.pause_embedding is not None:
            with torch.no_grad():
                self.pause_embedding.copy_(self.model.get_input_embeddings().weight[self.pause_token_id])

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """A self-contained pause checkpoint (LoRA merged into a copy): reload it with
        ``PauseLMPolicy(model=directory)`` or ``load_lm(directory)`` + `load_pause_head`."""
        self._sync_pause_row()
        model = copy.deepcopy(self.model).merge_and_unload() if self.uses_lora else self.model
        save_pause_checkpoint(directory, model, self.tokenizer, self.pause_head, self._pause_meta())


def _try_tokenizer(directory: str) -> Any:
    """The tokenizer saved next to a model, or ``None`` (a model directory need not hold one)."""
    if not any((Path(directory) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError):
        return None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
