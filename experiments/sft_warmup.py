"""SFT warm-up for pause tokens: teach a model (and its pause head) to emit ``<|pause|>``.

The second stage of the pause pipeline (augment -> SFT -> PPO)::

    python experiments/augment_pauses.py --dataset_location ../shared/data/gsm8k/train.jsonl \\
        --augm_dataset_save_location runs/gsm8k_pauses.jsonl --pause_probability 0.1 \\
        --tokenizer_hf_name smollm2-135m-instruct
    python experiments/sft_warmup.py data=runs/gsm8k_pauses.jsonl pause_probability=0.1 \\
        output_dir=outputs/sft
    python experiments/run_ppo.py experiment=pause_gsm8k policy.model=outputs/sft/final

The same config style as ``run_ppo.py``: ``experiments/configs/sft_warmup.yaml`` and dotted
overrides (``--help`` lists every option). Each row's prompt is the GSM8K prompt of the RL env
(`lm_envs.tasks.GSM8K_TEMPLATE`, through the chat template when the tokenizer has one); the
target is the pause-augmented answer plus EOS. The model is the one `policies.PauseLMPolicy`
samples from: the pause head on the last hidden state chooses "pause" or "let the LM choose",
and the LM's own pause logit is masked. Losses, over the target positions:

* LM: cross-entropy of the (pause-masked) LM on the targets that are not pauses;
* pause head, ``pause_head_loss=kl``: KL(Bernoulli(p) || head), with ``p = pause_probability``
  (the injection probability of ``augment_pauses.py --pause_probability``) at every position;
  ``onehot``: cross-entropy on where the pauses actually are.

LoRA (``lora.r=8``, the default; the pause row trains through peft's
``trainable_token_indices``) or full fine-tuning (``lora=null``). Logs to tensorboard under
``output_dir/tb``, shows a tqdm bar, and writes ``output_dir/final``: the merged model and
tokenizer (with the pause token), ``pause_head.pt`` and ``pause_config.json``, which
``run_ppo.py policy.class=PauseLMPolicy policy.model=output_dir/final`` starts from. A thin
script: data, loop and logging; the data readers come from `policies.pause_data` and the model
pieces from `policies.pause`.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from config import compose_script
from omegaconf import DictConfig, OmegaConf

from policies.pause import PAUSE, PAUSE_TOKEN

BASE = "sft_warmup.yaml"


def parse_args(argv: Sequence[str]) -> DictConfig:
    """The composed config (``configs/sft_warmup.yaml`` + overrides), checked."""
    cfg = compose_script(argv, BASE, __doc__)
    if cfg.pause_head_loss not in ("kl", "onehot"):
        raise SystemExit(f"pause_head_loss must be kl or onehot, got {cfg.pause_head_loss!r}")
    if cfg.pause_head_loss == "kl" and cfg.pause_probability is None:
        raise SystemExit("pause_head_loss=kl needs pause_probability (the injection probability p)")
    if cfg.pause_probability is not None and not 0 <= cfg.pause_probability <= 1:
        raise SystemExit("pause_probability must be in [0, 1]")
    cfg.pause_token = cfg.pause_token or PAUSE_TOKEN
    return cfg


# -- data ----------------------------------------------------------------------------------------
def encode_rows(
    rows: Sequence[dict[str, Any]],
    tokenizer: Any,
    question_col: str,
    answer_col: str,
    prompt_template: str | None,
    max_length: int,
) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, target ids)`` per row, the prompt tokenized exactly as the RL env does."""
    from lm_envs import Task
    from lm_envs.tasks import GSM8K_TEMPLATE

    missing = [c for c in (question_col, answer_col) if rows and c not in rows[0]]
    if missing:
        raise SystemExit(f"the data has no column(s) {missing}; columns: {sorted(rows[0])}")
    task = Task(
        questions=[r[question_col] for r in rows],
        references=[r[answer_col] for r in rows],
        reward=lambda completions, references, prompts=None: np.zeros(len(completions), np.float32),
        name="sft",
        prompt_template=prompt_template or GSM8K_TEMPLATE,
    )
    chat = task.uses_chat_template(tokenizer)
    eos = tokenizer.eos_token_id
    out = []
    for i, row in enumerate(rows):
        prompt = tokenizer(task.prompt(i, tokenizer), add_special_tokens=not chat)["input_ids"]
        target = tokenizer(row[answer_col], add_special_tokens=False)["input_ids"] + [eos]
        target = target[: max_length - 1]
        prompt = prompt[-(max_length - len(target)) :]  # keep the prompt's end, as truncate_prompt="left"
        out.append((prompt, target))
    return out


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``target_mask`` (1 on target tokens)."""
    width = max(len(p) + len(t) for p, t in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)
    for row, (p, t) in enumerate(examples):
        n = len(p) + len(t)
        ids[row, :n] = torch.tensor(p + t)
        attention[row, :n] = 1
        target[row, len(p) : n] = True
    return {"input_ids": ids, "attention_mask": attention, "target_mask": target}


# -- loss ----------------------------------------------------------------------------------------
def sft_losses(
    model: Any,
    head: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    pause_id: int,
    mode: str,
    pause_probability: float | None,
    detach_head: bool = False,
) -> dict[str, torch.Tensor]:
    """LM loss on non-pause targets, pause-head loss on every target position, and statistics."""
    from policies.pause import mask_pause_logit

    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        output_hidden_states=True,
        logits_to_keep=1,
    )
    select = batch["target_mask"][:, 1:]  # the token at c + 1 is predicted at column c
    hidden = out.hidden_states[-1][:, :-1][select]
    targets = batch["input_ids"][:, 1:][select]
    is_pause = targets == pause_id
    lm_loss = hidden.new_zeros(())
    if (~is_pause).any():
        logits = model.get_output_embeddings()(hidden[~is_pause])
        lm_log_probs = torch.log_softmax(mask_pause_logit(logits, pause_id), dim=-1)
        lm_loss = -lm_log_probs.gather(-1, targets[~is_pause, None]).mean()
    head_log_probs = torch.log_softmax(head((hidden.detach() if detach_head else hidden).float()), dim=-1)
    if mode == "kl":
        p = torch.tensor([pause_probability, 1.0 - pause_probability], device=hidden.device)
        head_loss = (p * (p.clamp(min=1e-12).log() - head_log_probs)).sum(-1).mean()
    else:
        choice = torch.where(is_pause, PAUSE, 1 - PAUSE)
        head_loss = -head_log_probs.gather(-1, choice[:, None]).mean()
    return {
        "lm": lm_loss,
        "head": head_loss,
        "head_pause_prob": head_log_probs[:, PAUSE].exp().mean().detach(),
        "target_pause_rate": is_pause.float().mean(),
    }


# -- main ----------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    from agents.checkpoint import write_json
    from policies import add_pause_token, load_lm, load_pause_head, save_pause_checkpoint
    from policies.causal_lm import _device
    from policies.pause import init_pause_head, pause_lora_config
    from policies.pause_data import load_rows

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = _device(args.device)
    out = Path(args.output_dir)
    write_json(out / "sft_args.json", OmegaConf.to_container(args, resolve=True))

    model, tokenizer = load_lm(args.model, dtype=args.dtype)
    pause_id = add_pause_token(model, tokenizer, args.pause_token)
    hidden_size = model.get_input_embeddings().weight.shape[1]
    head = load_pause_head(args.model) if Path(args.model).is_dir() else None
    head = head if head is not None else init_pause_head(hidden_size, args.initial_pause_probability)
    lora = OmegaConf.to_container(args.lora, resolve=True) if args.lora is not None else None
    if lora and lora.get("r", 0) > 0:
        import peft

        model = peft.get_peft_model(model, pause_lora_config(model, lora, pause_id))
    else:
        lora = None
    model.to(device).train()
    head.to(device).train()

    rows = load_rows(args.data, args.limit, args.split)
    if not rows:
        raise SystemExit(f"{args.data} holds no rows")
    examples = encode_rows(rows, tokenizer, args.question_col, args.answer_col, args.prompt_template, args.max_length)
    steps_per_epoch = math.ceil(len(examples) / args.batch_size)
    total = args.max_steps if args.max_steps is not None else max(1, math.ceil(args.epochs * steps_per_epoch))
    groups = [
        {"params": [p for p in model.parameters() if p.requires_grad], "lr": args.learning_rate},
        {"params": list(head.parameters()), "lr": args.head_learning_rate or args.learning_rate},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    writer = SummaryWriter(str(out / "tb"))
    order_rng = np.random.default_rng(args.seed)
    order: list[int] = []
    history: list[dict[str, float]] = []
    progress = tqdm(range(total), desc="sft", disable=not args.progress_bar, dynamic_ncols=True)
    for step in progress:
        if len(order) < args.batch_size:  # a fresh shuffled pass when the current one runs out
            order += order_rng.permutation(len(examples)).tolist()
        batch_rows, order = order[: args.batch_size], order[args.batch_size :]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in batch_rows], tokenizer.pad_token_id).items()}
        losses = sft_losses(
            model, head, batch, pause_id, args.pause_head_loss, args.pause_probability, args.detach_pause_head
        )
        loss = losses["lm"] + args.head_loss_weight * losses["head"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], args.max_grad_norm)
        optimizer.step()
        record = {
            "loss/total": loss.item(),
            "loss/lm": losses["lm"].item(),
            "loss/head": losses["head"].item(),
            "pause/head_prob_mean": losses["head_pause_prob"].item(),
            "pause/target_rate": losses["target_pause_rate"].item(),
            "train/grad_norm": float(grad_norm),
        }
        history.append(record)
        if step % args.log_every == 0 or step == total - 1:
            for key, value in record.items():
                writer.add_scalar(key, value, step)
        progress.set_postfix(loss=f"{record['loss/total']:.3f}", p_pause=f"{record['pause/head_prob_mean']:.3f}")
    writer.close()

    model.eval()
    if lora is not None:
        model = model.merge_and_unload()  # RL's reference (adapter off) is then exactly this model
    final = out / "final"
    save_pause_checkpoint(
        final,
        model.cpu(),
        tokenizer,
        head.cpu(),
        extra={
            "sft": {
                "pause_head_loss": args.pause_head_loss,
                "pause_probability": args.pause_probability,
                "steps": total,
            }
        },
    )
    summary = {"steps": total, "examples": len(examples), "final": str(final), "first": history[0], "last": history[-1]}
    write_json(out / "sft_summary.json", summary)
    print(
        f"saved {final} after {total} steps: loss {history[-1]['loss/total']:.4f}, "
        f"head p(pause) {history[0]['pause/head_prob_mean']:.3f} -> {history[-1]['pause/head_prob_mean']:.3f} "
        f"(tensorboard --logdir {out / 'tb'})",
        file=sys.stderr,
    )
    return summary


if __name__ == "__main__":
    main()
