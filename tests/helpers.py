"""Shared test helpers: a tiny tokenizer and a tiny random Llama, saved like a real checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LM_ENVS_DATA_DIR") or REPO.parent / "shared" / "data")

WORDS = (
    "the answer is #### 0 1 2 3 4 5 6 7 8 9 + - = . , ? ! a b c d e f g h i j k l m n o p q r s t u v w x y z "
    "how many apples does tom have if he buys more cats dogs and sells them step solve"
).split()


def build_tiny_tokenizer(directory: Path, pad_equals_eos: bool = True):
    """A word-level fast tokenizer: pad == eos by default, as for SmolLM2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"] + ([] if pad_equals_eos else ["<pad>"])
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>" if pad_equals_eos else "<pad>",
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_tiny_model(directory: Path, vocab_size: int, seed: int = 0, extra_vocab: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size + extra_vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(directory)
    return model


def echo_task(n: int = 12, reward=None):
    """A tiny synthetic task: short arithmetic-looking prompts, reward = fraction of '7' tokens."""
    from lm_envs import Task

    rng = np.random.default_rng(0)
    questions = [" ".join(rng.choice(WORDS[6:16], size=rng.integers(2, 9))) for _ in range(n)]

    def target_fraction(completions, references, prompts=None):
        return np.array([c.split().count("7") / max(1, len(c.split())) for c in completions], dtype=np.float32)

    return Task(
        questions=questions,
        references=list(range(n)),
        reward=reward or target_fraction,
        name="echo",
        chat_template=False,
    )


def echo_env(tokenizer, num_envs=4, max_new_tokens=8, seed=0, group=1, task=None, vocab_size=None):
    """A lockstep `TokenVecEnv` over ``task`` (default `echo_task`), 16-token prompts."""
    from lm_envs import TokenVecEnv

    return TokenVecEnv(
        task or echo_task(),
        tokenizer,
        num_envs=num_envs,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=16,
        seed=seed,
        completions_per_prompt=group,
        vocab_size=vocab_size,
    )


def score_tracker():
    """An SB3 callback that keeps each iteration's mean env reward (``.scores``), for learning tests."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Scores(BaseCallback):
        def __init__(self):
            super().__init__()
            self.scores: list[float] = []

        def _on_step(self):
            return True

        def _on_rollout_end(self):
            self.scores.append(float(self.model.buffer.env_rewards.mean()))

    return Scores()


def call_script(entry, args: list[str]):
    """A script's entry point (``main``/``cli``) called on ``args`` in this process, reported as
    ``python script.py ARGS`` would be: a `subprocess.CompletedProcess` with its exit status (an
    uncaught exception: 1 with its traceback, a ``SystemExit`` message: 1 with the message on
    stderr), stdout and stderr. No interpreter start-up per call."""
    import contextlib
    import io
    import subprocess
    import sys
    import traceback

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result = entry(list(args))
            code = result if isinstance(result, int) else 0  # as sys.exit(main()) for an int
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) or exit_.code is None else 1
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
        except Exception:
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(list(args), code or 0, out.getvalue(), err.getvalue())


def run_ppo_in_process(args: list[str]) -> tuple[int, str]:
    """``python experiments/run_ppo.py ARGS`` in this process (`call_script`): its exit status and
    its output (stdout then stderr). tests/test_run_ppo.py also runs the script itself, as a
    subprocess (end to end, SIGKILL)."""
    import sys

    if str(REPO / "experiments") not in sys.path:
        sys.path.insert(0, str(REPO / "experiments"))
    import run_ppo

    proc = call_script(run_ppo.cli, args)
    return proc.returncode, proc.stdout + proc.stderr
