"""Data parallelism on torch.distributed (gloo, 2 CPU processes): the same update as one process,
the same statistics on every rank, exact resume after killing both ranks, rank 0 alone writes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dist_workers
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import echo_task

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("agent_name", ["ppo", "grpo"])
def test_two_ranks_give_one_process_gradients(agent_name, tiny_dir, tiny_lm, tmp_path):
    """One update with 2 ranks × 8 rows == one process with the same 16 rows: gradients before the
    optimizer step (within 1e-5 relative), whitened advantages, the KL controller, approx-KL."""
    from agents.rollout import collect_episodes
    from lm_envs import TokenVecEnv
    from policies import CausalLMPolicy  # noqa: F401  (the policy class the agents build)

    model, tokenizer = tiny_lm
    group = 4 if agent_name == "grpo" else 1

    def varied(completions, references, prompts=None):  # a reward that differs from row to row
        return np.array([len(c) % 7 / 6 for c in completions], dtype=np.float32)

    env = TokenVecEnv(
        echo_task(reward=varied),
        tokenizer,
        num_envs=16,
        max_new_tokens=6,
        max_prompt_tokens=16,
        seed=0,
        completions_per_prompt=group,
    )
    from agents import AGENTS

    sampler = AGENTS["ppo"](
        "CausalLMPolicy", env, batch_size=16, seed=0, kl_coef=0.0, policy_kwargs=dict(model=str(tiny_dir))
    )
    torch.manual_seed(0)
    episodes, _ = collect_episodes(sampler.policy, env)
    assert len(set(episodes.lengths.tolist())) > 1  # rows of different lengths: normalisers matter
    assert episodes.env_rewards.std() > 0.1
    torch.save(episodes, tmp_path / "episodes.pt")

    single = tmp_path / "single"
    single.mkdir()
    dist_workers.update_on(agent_name, tiny_dir, episodes, torch.arange(16), single / "rank0.pt")
    double = tmp_path / "double"
    double.mkdir()
    mp.spawn(
        dist_workers.grad_worker,
        args=(2, str(tmp_path / "init"), agent_name, str(tiny_dir), str(tmp_path / "episodes.pt"), str(double)),
        nprocs=2,
        join=True,
    )
    one = torch.load(single / "rank0.pt")
    ranks = [torch.load(double / f"rank{r}.pt") for r in range(2)]
    assert one["grads"] and ranks[0]["grads"].keys() == one["grads"].keys()
    flat = torch.cat([g.reshape(-1) for g in one["grads"].values()])
    assert flat.norm() > 1e-3  # a real signal, not float noise
    for result in ranks:
        other = torch.cat([result["grads"][name].reshape(-1) for name in one["grads"]])
        assert (other - flat).norm() <= 1e-5 * flat.norm()  # the whole gradient, within 1e-5 relative
        for name, grad in one["grads"].items():  # and each parameter's, but for float-noise-sized ones
            assert (result["grads"][name] - grad).norm() <= 1e-4 * grad.norm() + 1e-7 * flat.norm(), name
    # Batch statistics are global: the ranks' advantages are the single process's rows.
    torch.testing.assert_close(torch.cat([r["advantages"] for r in ranks]), one["advantages"], rtol=1e-5, atol=1e-6)
    assert ranks[0]["kl_coef"] == ranks[1]["kl_coef"] == pytest.approx(one["kl_coef"], rel=1e-6)
    assert ranks[0]["approx_kl"] == ranks[1]["approx_kl"] == pytest.approx(one["approx_kl"], rel=1e-4, abs=1e-9)


def test_fsdp_two_ranks_give_one_process_gradients_and_save_full_weights(tiny_dir, tiny_lm, tmp_path):
    """FSDP2 (``policy.fsdp=True``, full fine-tuning, gloo on CPU): one PPO update with 2 ranks × 8
    rows gives the single process's gradients; a checkpoint round trip restores the same full
    weights and optimizer state; the final model loads as a plain model with the trained weights."""
    from agents.rollout import collect_episodes
    from lm_envs import TokenVecEnv
    from policies import load_lm

    def varied(completions, references, prompts=None):
        return np.array([len(c) % 7 / 6 for c in completions], dtype=np.float32)

    env = TokenVecEnv(echo_task(reward=varied), tiny_lm[1], num_envs=16, max_new_tokens=6, max_prompt_tokens=16, seed=0)
    from agents import PPO

    sampler = PPO("CausalLMPolicy", env, batch_size=16, seed=0, kl_coef=0.0, policy_kwargs=dict(model=str(tiny_dir)))
    torch.manual_seed(0)
    episodes, _ = collect_episodes(sampler.policy, env)
    torch.save(episodes, tmp_path / "episodes.pt")
    single = tmp_path / "single"
    single.mkdir()
    dist_workers.update_on("ppo", tiny_dir, episodes, torch.arange(16), single / "rank0.pt")
    double = tmp_path / "fsdp"
    double.mkdir()
    mp.spawn(
        dist_workers.grad_worker,
        args=(2, str(tmp_path / "init"), "ppo", str(tiny_dir), str(tmp_path / "episodes.pt"), str(double), True),
        nprocs=2,
        join=True,
    )
    one = torch.load(single / "rank0.pt")
    flat = torch.cat([g.reshape(-1) for g in one["grads"].values()])
    assert flat.norm() > 1e-3
    for r in range(2):
        result = torch.load(double / f"rank{r}.pt")
        assert result["grads"].keys() == one["grads"].keys()
        other = torch.cat([result["grads"][name].reshape(-1) for name in one["grads"]])
        assert (other - flat).norm() <= 1e-5 * flat.norm()
        assert result["kl_coef"] == pytest.approx(one["kl_coef"], rel=1e-6)
    state = torch.load(double / "state.pt")
    assert state["same_after_load"] and state["same_optimizer"]
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(str(double / "final"))
    assert "FSDP" not in json.loads((double / "final" / "config.json").read_text())["architectures"][0]
    trained = {f"model.{k}": v for k, v in final.state_dict().items()}
    checked = 0
    for name, value in state["params"].items():
        if name in trained:
            assert torch.equal(trained[name], value), name
            checked += 1
    assert checked >= len(trained) - 1  # every weight (a tied head may appear under one name only)
    start, _ = load_lm(str(tiny_dir))
    assert any(not torch.equal(a, b) for a, b in zip(start.state_dict().values(), final.state_dict().values()))


def test_normalize_statistics_are_every_ranks_after_each_rollout(tiny_dir, tmp_path):
    """A `Normalize` reward wrapper under 2 ranks: after a rollout both ranks hold the same
    statistics, those of both ranks' rewards together."""
    mp.spawn(
        dist_workers.normalize_worker,
        args=(2, str(tmp_path / "init"), str(tiny_dir), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    seen = np.array(ranks[0]["seen"] + ranks[1]["seen"])
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 4 and seen.std() > 0.05
    assert ranks[0]["seen"] != ranks[1]["seen"]  # different rows on each rank
    assert ranks[0]["state"] == ranks[1]["state"]
    state = ranks[0]["state"]
    assert state["count"] == 8 and state["pending"][2] == 0
    assert state["mean"] == pytest.approx(seen.mean(), rel=1e-9) and state["var"] == pytest.approx(seen.var(), rel=1e-9)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tiny_dir, out, audit, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(REPO / "tests" / "dist_workers.py"),
        str(out),
        str(audit),
        "experiment=tiny_test",
        f"policy.model={tiny_dir}",
        "policy.lora.r=2",
        "policy.lora.target_modules=[q_proj,v_proj]",
        f"output_dir={out}",
        "progress_bar=false",
        "env.eval_episodes=2",
        *extra,
    ]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )


def kill_run(proc):
    """SIGKILL the launcher and both ranks. torchrun starts each rank in a session of its own, so
    killing the launcher's process group alone would leave the ranks training on."""
    ranks = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == proc.pid:  # the parent pid
            ranks.append(int(stat.parent.name))
    assert len(ranks) == 2, ranks
    for pid in ranks:
        os.killpg(pid, signal.SIGKILL)  # each rank leads its own session and process group
    os.killpg(proc.pid, signal.SIGKILL)


def adapter(path):
    from safetensors.torch import load_file

    return load_file(str(path / "final" / "adapter_model.safetensors"))


def test_kill_both_ranks_then_resume_equals_the_uninterrupted_run_and_only_rank0_writes(tiny_dir, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    audits = {name: tmp_path / f"audit_{name}" for name in ("straight", "killed", "resumed")}
    for directory in audits.values():
        directory.mkdir()
    proc = torchrun(tiny_dir, straight, audits["straight"], "iterations=40")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    assert "distributed: backend=gloo ranks=2" in output
    config = (straight / "config.yaml").read_text()
    assert "world_size: 2" in config
    assert json.loads((straight / "run.json").read_text())["world_size"] == 2
    # Rank 0 alone wrote files; rank 1 wrote nothing under output_dir.
    rank0 = json.loads((audits["straight"] / "rank0.json").read_text())
    rank1 = json.loads((audits["straight"] / "rank1.json").read_text())
    assert rank0 and rank1 == []

    proc = torchrun(tiny_dir, killed, audits["killed"], "iterations=40")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(killed.glob("checkpoints/iter_00000[2-9]")):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0]
    kill_run(proc)
    proc.wait()
    done = sorted(p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith("iter_"))
    assert done and done[-1] != "iter_000040"
    resumed = torchrun(tiny_dir, killed, audits["resumed"], "iterations=40", "resume=true")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "resuming from" in output
    a, b = adapter(straight), adapter(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_fsdp_run_resumes_to_the_straight_runs_weights_and_only_rank0_writes(tiny_dir, tmp_path):
    """`run_ppo.py policy.fsdp=true` (full fine-tuning, FSDP2 over 2 gloo ranks, with a KL reference
    and evaluation every iteration): 2 iterations, then resume=true to 3, ends with the weights of a
    straight 3-iteration run; only rank 0 writes."""
    from safetensors.torch import load_file

    fsdp = ["policy.lora=null", "policy.fsdp=true", "agent.kl_coef=0.05", "eval_every=1"]
    runs = {name: tmp_path / name for name in ("straight", "split")}
    audits = {name: tmp_path / f"audit_{name}" for name in ("straight", "first", "resumed")}
    for directory in audits.values():
        directory.mkdir()
    for out, audit, extra in (
        (runs["straight"], audits["straight"], ["iterations=3"]),
        (runs["split"], audits["first"], ["iterations=2"]),
        (runs["split"], audits["resumed"], ["iterations=3", "resume=true"]),
    ):
        proc = torchrun(tiny_dir, out, audit, *fsdp, *extra)
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output
    assert "resuming from" in output and "iter_000002" in output
    for audit in audits.values():
        assert json.loads((audit / "rank0.json").read_text())
        assert json.loads((audit / "rank1.json").read_text()) == []
    a, b = (load_file(str(runs[name] / "final" / "model.safetensors")) for name in ("straight", "split"))
    start = load_file(str(tiny_dir / "model.safetensors"))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], start[k]) for k in a if k in start)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The sharded reference survived: equal to the policy before training (KL 0 up to float noise),
    # apart from it after. (kl_mean is the sampled k1 estimate, Σ log π − log π_ref over a few
    # completions, so after training its sign is the sample's; its size is not noise.)
    before, after = (
        json.loads((runs["split"] / f"eval_{tag}.json").read_text())["kl_mean"] for tag in ("before", "after")
    )
    assert abs(before) < 1e-4 and abs(after) > 1e-3, (before, after)


def test_accelerate_launch_runs_two_ranks(tiny_dir, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (torch.distributed.run underneath; gloo on a
    CPU) runs the same 2-rank job as torchrun. (`--cpu` alone would start one process: accelerate's
    multi-CPU launch goes through mpirun.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        str(REPO / "experiments" / "run_ppo.py"),
        "experiment=tiny_test",
        f"policy.model={tiny_dir}",
        "policy.lora.r=2",
        "policy.lora.target_modules=[q_proj,v_proj]",
        f"output_dir={tmp_path}",
        "progress_bar=false",
        "env.eval_episodes=2",
        "iterations=1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "distributed: backend=gloo ranks=2" in proc.stderr
    assert "world_size: 2" in (tmp_path / "config.yaml").read_text()
    assert json.loads((tmp_path / "run.json").read_text())["iterations_done"] == 1


def test_resume_with_another_world_size_is_a_clear_error(tiny_dir, tiny_lm, tmp_path):
    from agents import PPO, checkpoint
    from lm_envs import TokenVecEnv

    env = TokenVecEnv(echo_task(), tiny_lm[1], num_envs=4, max_new_tokens=4, max_prompt_tokens=16, seed=0)
    agent = PPO("CausalLMPolicy", env, batch_size=4, seed=0, policy_kwargs=dict(model=str(tiny_dir)))
    agent.save(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "meta.json").read_text())
    meta["world_size"] = 2
    (tmp_path / "ckpt" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="written by 2 ranks and this run has 1"):
        PPO.load(tmp_path / "ckpt", env=env)
    assert checkpoint.CHECKPOINT_FORMAT == meta["format"]
