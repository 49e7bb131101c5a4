"""experiments/run_ppo.py end to end (tiny model), SIGKILL + resume, and every shipped config."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
from config import compose, presets  # noqa: E402


def run(args, **kwargs):
    return subprocess.Popen([sys.executable, str(REPO / "experiments" / "run_ppo.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def tiny_args(tiny_dir, out, *extra):
    return ["experiment=tiny_test", f"policy.model={tiny_dir}", "policy.lora.r=2",
            "policy.lora.target_modules=[q_proj,v_proj]", f"output_dir={out}", "progress_bar=false", *extra]


def test_end_to_end_writes_logs_checkpoints_and_evals(tiny_dir, tmp_path):
    proc = run(tiny_args(tiny_dir, tmp_path))
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert "iter    2" in output
    assert list((tmp_path / "tb").glob("ppo_*/events.out.tfevents.*"))
    assert (tmp_path / "checkpoints" / "iter_000002" / "policy" / "adapter_model.safetensors").exists()
    assert (tmp_path / "final" / "value_head.pt").exists()
    for tag in ("before", "after"):
        summary = json.loads((tmp_path / f"eval_{tag}.json").read_text())
        assert summary["episodes"] == 4 and "score_mean" in summary and "accuracy" in summary


def test_sigkill_then_resume_continues(tiny_dir, tmp_path):
    proc = run(tiny_args(tiny_dir, tmp_path, "iterations=40"))
    first = tmp_path / "checkpoints" / "iter_000002" / "agent.pt"
    deadline = time.time() + 240
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.exists(), proc.communicate()[0] if proc.poll() is not None else "no checkpoint in time"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("iter_"))
    assert done and done[-1] != "iter_000040"
    resumed = run(tiny_args(tiny_dir, tmp_path, "iterations=44", "resume=true"))
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "resuming from" in output
    last_before_kill = int(done[-1].split("_")[1])
    assert f"iter {last_before_kill + 1:4d}" in output  # continues at the next iteration, not from 1
    assert "iter    1 |" not in output
    assert (tmp_path / "checkpoints" / "iter_000044" / "agent.pt").exists()


@pytest.mark.parametrize("preset", [None, *presets()])
def test_every_shipped_config_composes_and_instantiates(preset, tiny_dir, tmp_path):
    """Configs cannot drift from the code: build envs, policy and agent for each (tiny model swapped in)."""
    import run_ppo

    argv = ([f"experiment={preset}"] if preset else []) + [f"policy.model={tiny_dir}", f"output_dir={tmp_path}"]
    cfg = compose(argv)
    agent, env, eval_env, resumed = run_ppo.prepare(cfg)
    assert resumed is None and env.num_envs == cfg.env.num_envs
    assert agent.batch_size == cfg.agent.batch_size and agent.policy.uses_lora == (cfg.policy.lora is not None)


def test_unknown_preset_and_bad_override_are_clear():
    with pytest.raises(SystemExit, match="unknown experiment"):
        compose(["experiment=nope"])
    with pytest.raises(SystemExit, match="key.sub=value"):
        compose(["agent.learning_rate"])
