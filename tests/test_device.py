"""Device correctness without a GPU: every agent runs an iteration under CUDA's device rule
(`device_rule.CudaDeviceRule`), and every collective the core calls gets tensors on the model's
device (NCCL refuses CPU tensors). ``pytest -k device`` runs these alone."""

import numpy as np
import pytest
import torch
from device_rule import CudaDeviceRule, DeviceMixError, is_stray
from helpers import echo_task

from agents import AGENTS, distributed, evaluate_policy
from lm_envs import TokenVecEnv

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
GROUPED = {"grpo", "rloo", "star", "dpo", "kto"}
ONLINE = ("ppo", "grpo", "rloo", "reinforce", "reinforce_pp")


def varied(completions, references, prompts=None):
    """Rewards that differ from row to row, so every estimator and pair builder has work to do."""
    return np.array([len(c) % 7 / 6 for c in completions], dtype=np.float32)


def kl_on(name: str) -> dict:
    """Each agent's KL term switched on where it has one (SFT and STaR have none)."""
    if name == "ppo":
        return {"kl_coef": 0.05, "adaptive_kl": True}
    if name in ("grpo", "rloo", "reinforce", "reinforce_pp", "dpo", "kto"):
        return {"beta": 0.05}
    return {"threshold": 0.0} if name == "star" else {}


def make_agent(name, tiny_dir, tokenizer, lora=LORA, **extra):
    env = TokenVecEnv(
        echo_task(reward=varied),
        tokenizer,
        num_envs=8,
        max_new_tokens=6,
        max_prompt_tokens=16,
        seed=0,
        completions_per_prompt=4 if name in GROUPED else 1,
    )
    settings = dict(learning_rate=1e-3, batch_size=4, micro_batch_size=2, seed=0, device="cpu", **kl_on(name))
    if name == "sft":
        settings["dataset"] = [{"prompt": q, "completion": "7 7 7"} for q in echo_task().questions]
    settings.update(extra)
    return AGENTS[name]("CausalLMPolicy", env, policy_kwargs=dict(model=str(tiny_dir), lora=lora), **settings)


# -- the rule itself ---------------------------------------------------------------------------------
def test_device_rule_refuses_what_cuda_refuses_and_allows_what_it_allows():
    model_side = torch.ones(3)  # made before the mode: stands for a tensor on the GPU
    with CudaDeviceRule():
        stray = torch.tensor([1.0, 2.0, 3.0])  # no device: on the CPU on a GPU machine
        assert is_stray(stray) and not is_stray(model_side)
        with pytest.raises(DeviceMixError, match="mul"):
            model_side * stray
        with pytest.raises(DeviceMixError, match="stack"):
            torch.stack([model_side.sum(), torch.tensor(3.0)])  # the KL controller's old line
        assert float((model_side * torch.tensor(2.0)).sum()) == 6.0  # a 0-dim CPU tensor may join
        assert float(model_side[torch.tensor([0, 2])].sum()) == 2.0  # CPU indices may index
        moved = stray.to(model_side.device)
        assert not is_stray(moved) and float((moved * model_side).sum()) == 6.0
        assert not is_stray(torch.zeros(3, device=model_side.device))
        assert is_stray(torch.zeros(3, device="cpu")) and is_stray(model_side.cpu())
        assert is_stray(stray * 2) and not is_stray(model_side * 2)  # tags propagate
        with pytest.raises(DeviceMixError, match="cat"):
            torch.cat([model_side, torch.as_tensor(np.ones(2, dtype=np.float32))])


# -- every agent, one iteration ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(AGENTS))
def test_device_every_agent_runs_an_iteration_under_cudas_rule(name, tiny_dir, tiny_lm):
    """One iteration (rollout, reference pass, shaping, update, KL controller, logging) with the KL
    term on, and a save: nothing made without a device meets the model's tensors."""
    agent = make_agent(name, tiny_dir, tiny_lm[1])
    with CudaDeviceRule():
        agent.learn(total_iterations=1)
    stats = agent.last_iteration_stats
    assert agent.iteration == 1 and np.isfinite(list(stats.values())).all()
    if "objective/kl" in stats:  # the KL term really ran
        assert abs(stats["objective/kl"]) < 1e-4


def test_device_full_fine_tuning_pause_policy_and_evaluation_under_cudas_rule(tiny_dir, tiny_lm, tmp_path):
    """Full fine-tuning (a frozen reference copy, value-head calibration), a held-out evaluation
    with reference statistics, and a save/load round trip."""
    agent = make_agent("ppo", tiny_dir, tiny_lm[1], lora=None)
    with CudaDeviceRule():
        agent.learn(total_iterations=1)
        summary, _ = evaluate_policy(agent.policy, agent.env, 8, deterministic=True, reference_stats=True)
        agent.save(tmp_path / "ckpt")
        loaded = AGENTS["ppo"].load(tmp_path / "ckpt", env=agent.env, device="cpu")
        loaded.learn(total_iterations=2)
    assert summary["kl_mean"] >= 0 and loaded.iteration == 2


def test_device_pause_policy_under_cudas_rule(tiny_dir, tmp_path):
    from policies import add_pause_token, load_lm

    model, tokenizer = load_lm(str(tiny_dir))
    add_pause_token(model, tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    env = TokenVecEnv(
        echo_task(), tokenizer, num_envs=4, max_new_tokens=6, max_prompt_tokens=16, seed=0, vocab_size=len(tokenizer)
    )
    agent = AGENTS["ppo"](
        "PauseLMPolicy",
        env,
        batch_size=4,
        seed=0,
        kl_coef=0.05,
        learning_rate=1e-3,
        device="cpu",
        policy_kwargs=dict(model=str(tmp_path), lora=LORA, max_pauses=2),
    )
    with CudaDeviceRule():
        agent.learn(total_iterations=1)
    assert np.isfinite(list(agent.last_iteration_stats.values())).all()


# -- collectives ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ONLINE)
def test_device_collectives_get_tensors_on_the_model_device(name, tiny_dir, tiny_lm, monkeypatch):
    """With the collectives patched to check their tensors (and do a one-rank all-reduce), an
    iteration under CUDA's rule hands NCCL nothing that would sit on the CPU."""
    seen = []

    def check(tensor, *args, **kwargs):
        seen.append(tuple(tensor.shape))
        assert not is_stray(tensor), f"a collective got a CPU tensor {tuple(tensor.shape)}: NCCL refuses it"

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 1)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    monkeypatch.setattr(distributed.dist, "all_reduce", check)
    monkeypatch.setattr(distributed.dist, "broadcast", check)
    monkeypatch.setattr(distributed.dist, "barrier", lambda *a, **k: None)
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj: [obj])
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj: obj)
    agent = make_agent(name, tiny_dir, tiny_lm[1])
    with CudaDeviceRule():
        agent.learn(total_iterations=1)
    assert agent.iteration == 1
    assert len(seen) >= 4  # parameters broadcast, step counts, batch statistics, gradients, the KL controller


def test_device_gpu_checks_agent_stage_runs_every_agent_on_the_cpu(tiny_dir):
    """The wiring of `benchmarks/gpu_check.sh`'s first stage: every agent, one iteration, one line each."""
    import subprocess
    import sys

    from helpers import REPO

    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "agents_on_device.py"),
            "--model",
            f"random:{tiny_dir}",
            "--max-new-tokens",
            "4",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if ": ok, " in line]
    assert len(lines) == 10 and out.stdout.strip().endswith("10 ok, 0 failed")
    for name in ("ppo", "grpo", "rloo", "reinforce", "reinforce_pp", "sft", "star", "dpo", "kto"):
        assert any(line.startswith(f"{name}: ok") for line in lines), name
    assert all("kl " in line for line in lines if line.split(":")[0] in ("ppo", "grpo", "rloo", "reinforce"))
