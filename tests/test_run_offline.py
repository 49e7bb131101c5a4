"""run_ppo.py agent=sft|star|dpo|kto end to end (tiny model): the online agents' outputs, a merged
final/ that policy.model= starts from, resume mid-rounds, and the presets on the embedded defaults."""

import json
import sys
from pathlib import Path

import pytest
from helpers import run_ppo_in_process

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
from config import compose  # noqa: E402

# A length term gives the tiny model's samples different rewards, so DPO and KTO have pairs and labels.
VARIED = "env.reward_wrappers=[{type: add_terms, terms: {len: {term: length, unit: chars, weight: 0.01}}}]"
EXTRA = {
    "sft": ["agent.examples_per_round=4", "agent.max_completion_tokens=16"],
    "star": ["agent.threshold=0.0", "agent.rollout_batches=1"],
    "dpo": [VARIED, "agent.pair_strategy=all"],
    "kto": [VARIED, "agent.desirable_threshold=0.25"],
}


run = run_ppo_in_process


def tiny_args(tiny_dir, out, agent, *extra):
    return [
        "experiment=tiny_test",
        f"agent={agent}",
        f"policy.model={tiny_dir}",
        "policy.lora.r=2",
        "policy.lora.target_modules=[q_proj,v_proj]",
        f"output_dir={out}",
        "progress_bar=false",
        *EXTRA[agent],
        *extra,
    ]


@pytest.mark.parametrize("agent", ["sft", "star", "dpo", "kto"])
def test_round_agent_runs_end_to_end_writes_a_merged_model_and_resumes(agent, tiny_dir, tmp_path):
    code, output = run(tiny_args(tiny_dir, tmp_path, agent))
    assert code == 0, output
    assert "iter    2" in output
    assert list((tmp_path / "tb").glob(f"{agent}_*/events.out.tfevents.*"))
    assert (tmp_path / "checkpoints" / "iter_000002" / "agent.pt").exists()
    from agents.checkpoint import read_checkpoint

    assert read_checkpoint(tmp_path / "checkpoints" / "iter_000002")[2]["n_updates"] > 0  # rounds trained
    assert (tmp_path / "checkpoints" / "iter_000002" / "policy" / "adapter_model.safetensors").exists()
    for tag in ("before", "after"):
        assert json.loads((tmp_path / f"eval_{tag}.json").read_text())["episodes"] == 4
    # STaR evaluates the held-out split after every round (eval_every: 1), the others only before/after
    assert (tmp_path / "eval_iter_000001.json").exists() == (agent == "star")
    assert json.loads((tmp_path / "run.json").read_text())["iterations_done"] == 2
    final = tmp_path / "final"
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
    assert not (final / "adapter_config.json").exists()  # merged: a plain model directory
    # policy.model=final/ loads as a model of its own.
    from policies import load_lm

    model, tokenizer = load_lm(str(final))
    assert model.config.vocab_size == len(tokenizer) or model.config.vocab_size >= len(tokenizer)

    code, output = run(tiny_args(tiny_dir, tmp_path, agent, "iterations=3", "resume=true"))
    assert code == 0, output
    assert "resuming from" in output and "iter    3" in output and "iter    1 |" not in output
    assert json.loads((tmp_path / "run.json").read_text())["iterations_done"] == 3


def test_rl_starts_from_the_sft_model(tiny_dir, tmp_path):
    code, output = run(tiny_args(tiny_dir, tmp_path / "sft", "sft", "iterations=1"))
    assert code == 0, output
    code, output = run(
        [
            "experiment=tiny_test",
            f"policy.model={tmp_path / 'sft' / 'final'}",
            "iterations=1",
            f"output_dir={tmp_path / 'ppo'}",
            "progress_bar=false",
            "policy.lora.r=2",
            "policy.lora.target_modules=[q_proj,v_proj]",
        ]
    )
    assert code == 0, output
    assert "iter    1" in output
    assert json.loads((tmp_path / "ppo" / "checkpoints" / "iter_000001" / "meta.json").read_text())["model"] == str(
        tmp_path / "sft" / "final"
    )


def test_presets_run_on_the_embedded_defaults():
    """agent=star env.id=GSM8K and agent=dpo env.id=MBPP need no other setting: the embedded model,
    the env's own budget and wrappers, k samples per prompt."""
    star = compose(["agent=star", "env.id=lm_envs/GSM8K-v0"])
    assert star.policy.model == "smollm2-135m-instruct" and star.env.completions_per_prompt == 4
    assert star.agent.threshold == 1.0 and star.agent.filter_on == "score" and star.env.kwargs.max_new_tokens == 48
    assert star.eval_every == 1  # held-out evaluation after every round
    dpo = compose(["agent=dpo", "env.id=lm_envs/MBPP-v0"])
    assert dpo.env.kwargs.max_new_tokens == 256 and list(dpo.env.reward_wrappers) == []
    assert dpo.agent.pair_on == "reward" and dpo.env.num_envs % dpo.env.completions_per_prompt == 0
    compile_cpu = compose(["experiment=compile_cpu"])  # the preset names its agent; agent= still wins
    assert compile_cpu.agent.name == "dpo" and compile_cpu.env.eval_kwargs.split == "held_out"
    assert compile_cpu.env.kwargs.split == "train" and compile_cpu.agent.rollout_batches == 2
    assert compose(["experiment=compile_cpu", "agent=star"]).agent.threshold == 0.2
    mbpp = compose(["experiment=compile_mbpp_cpu"])
    assert mbpp.agent.name == "dpo" and mbpp.env.id == "lm_envs/MBPP-v0" and mbpp.env.eval_kwargs.split == "test"
    assert mbpp.env.kwargs.split == "train" and list(mbpp.env.reward_wrappers) == []
    for cfg in (star, dpo, compile_cpu, mbpp, compose(["agent=kto"]), compose(["agent=sft"])):
        import run_ppo

        run_ppo.agent_class(cfg)  # every agent key is one the agent takes


def test_star_rationalization_runs_and_resumes_from_the_command_line(tiny_dir, tmp_path):
    """agent.rationalize=true builds the hinted env (env.hint_template, the env's wrappers) and
    gives it again to load on resume."""
    args = tiny_args(
        tiny_dir,
        tmp_path,
        "star",
        "env.id=lm_envs/GSM8K-v0",
        "agent.threshold=1.0",
        "agent.rationalize=true",
        "env.hint_template='{question} (the answer is {answer})'",
    )
    code, output = run([*args, "iterations=1"])
    assert code == 0, output
    code, output = run([*args, "iterations=2", "resume=true"])
    assert code == 0, output
    assert "resuming from" in output and "iter    2" in output
    cfg = compose(["agent=star", "env.id=lm_envs/MGSM-v0", "env.kwargs.language=de"])
    assert cfg.env.kwargs.language == "de" and cfg.env.kwargs.split == "test"  # language= passes through
