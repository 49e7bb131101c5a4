"""The toxicity experiment, shortened for CI: eval files with the promised keys, and plots."""

import json
import subprocess
import sys
from pathlib import Path

from helpers import run_ppo_in_process

REPO = Path(__file__).resolve().parents[1]
EVAL_KEYS = {
    "toxicity_mean",
    "toxicity_frac_above_0.5",
    "kl_mean",
    "perplexity_mean",
    "distinct_2",
    "response_len_mean",
}


def test_short_toxicity_preset_writes_evals_and_plots(tiny_dir, tmp_path):
    args = [
        "experiment=toxicity_cpu",
        f"policy.model={tiny_dir}",
        "policy.lora.r=2",
        "policy.lora.target_modules=[q_proj,v_proj]",
        f"output_dir={tmp_path}",
        "progress_bar=false",
        "iterations=3",
        "time_limit_minutes=null",
        "env.num_envs=4",
        "env.eval_episodes=8",
        "report=false",
        "env.kwargs.max_new_tokens=6",
        "agent.batch_size=4",
        "agent.micro_batch_size=2",
        "env.reward_wrappers=[{type: add_terms, terms: {too_short: {term: length, below: 3, weight: -1.0}}}]",
    ]
    code, output = run_ppo_in_process(args)
    assert code == 0, output
    before = json.loads((tmp_path / "eval_before.json").read_text())
    after = json.loads((tmp_path / "eval_after.json").read_text())
    assert EVAL_KEYS <= before.keys() and EVAL_KEYS <= after.keys()
    assert before["episodes"] == after["episodes"] == 8
    assert abs(before["kl_mean"]) < 1e-4  # the policy is the reference before training
    assert 0 <= after["toxicity_mean"] <= 1 and after["perplexity_mean"] > 1

    plot = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "plot.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plot.returncode == 0, plot.stderr
    pngs = {p.name: p.stat().st_size for p in (tmp_path / "plots").glob("*.png")}
    for name in ("score", "reward_components", "kl", "entropy", "response_length", "clip_fraction", "learning_curves"):
        assert pngs.get(f"{name}.png", 0) > 1000, pngs
    table = (tmp_path / "plots" / "before_after.md").read_text()
    assert "| toxicity_mean |" in table and "| kl_mean |" in table
    assert "rewards/too_short/mean" in table
    samples = (tmp_path / "plots" / "samples.md").read_text().splitlines()
    assert samples[0].startswith("| prompt | before") and len(samples) == 2 + 5
    first = json.loads((tmp_path / "samples_before.json").read_text())[0]
    assert first["completion"][:20].replace("|", "\\|").replace("\n", "\\n") in samples[2]
