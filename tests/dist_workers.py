"""Workers for tests/test_distributed.py (spawned processes; gloo on CPU)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def slice_episodes(episodes, rows):
    from dataclasses import fields

    from agents.rollout import Episodes

    values = {}
    for f in fields(Episodes):
        value = getattr(episodes, f.name)
        if isinstance(value, torch.Tensor):
            value = value[rows]
        elif f.name == "infos":
            value = [value[i] for i in rows.tolist()]
        values[f.name] = value
    return Episodes(**values)


def update_on(agent_name, tiny_dir, episodes, rows, out_file, fsdp=False):
    """One update of ``agent_name`` on ``rows`` of ``episodes``; record the gradients (before the
    optimizer step, gathered to full tensors under FSDP), the advantages, and the KL controller's
    value. Returns the agent."""
    from helpers import echo_task

    from agents import AGENTS
    from lm_envs import TokenVecEnv
    from policies import load_lm

    torch.manual_seed(0)
    model, tokenizer = load_lm(str(tiny_dir))
    n = len(rows)
    group = 4 if agent_name in ("grpo", "rloo") else 1
    env = TokenVecEnv(
        echo_task(), tokenizer, num_envs=n, max_new_tokens=6, max_prompt_tokens=16, seed=0, completions_per_prompt=group
    )
    common = dict(
        batch_size=n, micro_batch_size=4, seed=0, learning_rate=1e-3, policy_kwargs=dict(model=model, fsdp=fsdp)
    )
    if agent_name == "ppo":
        agent = AGENTS["ppo"](
            "CausalLMPolicy", env, kl_coef=0.05, adaptive_kl=True, kl_target=0.1, kl_horizon=10, **common
        )
    else:
        agent = AGENTS[agent_name]("CausalLMPolicy", env, beta=0.05, scale_rewards="batch", **common)
    grads = {}
    step = agent.policy.optimizer.step

    def record(*args, **kwargs):
        for name, param in agent.policy.named_parameters():
            if param.grad is not None:
                grad = param.grad.detach()
                grads[name] = grad.full_tensor() if hasattr(grad, "full_tensor") else grad.clone()
        return step(*args, **kwargs)

    agent.policy.optimizer.step = record
    agent._setup_learn(1, None, True, "test", False)  # logger, callbacks: what learn() would set up
    agent._timings = {}
    agent.buffer = agent.process_episodes(slice_episodes(episodes, rows))
    agent.train()
    torch.save(
        {
            "grads": grads,
            "advantages": agent.buffer.advantages,
            "kl_coef": agent.kl_controller.value,
            "approx_kl": agent._train_stats.get("approx_kl"),
        },
        out_file,
    )
    return agent


def grad_worker(rank, world, init_file, agent_name, tiny_dir, episodes_file, out_dir, fsdp=False):
    """One update on this rank's rows; with ``fsdp`` (FSDP2, full fine-tuning), then a checkpoint
    round trip and the final model (`fsdp_round_trip`)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        episodes = torch.load(episodes_file, weights_only=False)
        per_rank = episodes.action_mask.shape[0] // world
        rows = torch.arange(rank * per_rank, (rank + 1) * per_rank)
        agent = update_on(agent_name, tiny_dir, episodes, rows, Path(out_dir) / f"rank{rank}.pt", fsdp=fsdp)
        if fsdp:
            fsdp_round_trip(agent, tiny_dir, Path(out_dir), rank)
    finally:
        dist.destroy_process_group()


def fsdp_round_trip(agent, tiny_dir, out, rank):
    """Save a checkpoint, load it into a fresh agent (the same full weights and optimizer state?),
    and write the final model with `save_trainable`."""
    from agents import PPO

    assert agent.policy.sharded
    full = {name: p.detach().full_tensor() for name, p in agent.policy.named_parameters()}
    agent.save(out / "ckpt")
    agent.policy.save_trainable(out / "final")
    loaded = PPO.load(out / "ckpt", env=agent.env, model=str(tiny_dir))
    assert loaded.policy.sharded
    same = all(torch.equal(full[name], p.detach().full_tensor()) for name, p in loaded.policy.named_parameters())
    moments = [st["exp_avg"].full_tensor() for st in agent.policy.optimizer.state.values()]
    restored = [st["exp_avg"].full_tensor() for st in loaded.policy.optimizer.state.values()]
    same_optimizer = len(moments) == len(restored) > 0 and all(torch.equal(a, b) for a, b in zip(moments, restored))
    if rank == 0:
        torch.save({"params": full, "same_after_load": same, "same_optimizer": same_optimizer}, out / "state.pt")


def normalize_worker(rank, world, init_file, tiny_dir, out_dir):
    """One PPO rollout per rank through a `Normalize` reward wrapper; record the rewards each rank
    saw and the statistics after the rollout."""
    import numpy as np
    from helpers import echo_task

    from agents import PPO
    from lm_envs import TokenVecEnv
    from lm_envs.reward_wrappers import Compose, Normalize, VecRewardWrapper
    from policies import load_lm

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    seen = []

    class Recording(Normalize):
        def __call__(self, scores, *args):
            seen.extend(np.asarray(scores, dtype=np.float64).tolist())
            return super().__call__(scores, *args)

    def varied(completions, references, prompts=None):
        return np.array([len(c) % 7 / 6 for c in completions], dtype=np.float32)

    try:
        model, tokenizer = load_lm(str(tiny_dir))
        norm = Recording()
        env = VecRewardWrapper(
            TokenVecEnv(
                echo_task(reward=varied), tokenizer, num_envs=4, max_new_tokens=6, max_prompt_tokens=16, seed=rank
            ),
            Compose([norm]),
        )
        agent = PPO("CausalLMPolicy", env, batch_size=4, seed=rank, policy_kwargs=dict(model=model))
        _, callback = agent._setup_learn(1, None, True, "test", False)
        agent.collect_rollouts(agent.env, callback, None)
        json.dump({"seen": seen, "state": norm.state_dict()}, open(Path(out_dir) / f"rank{rank}.json", "w"))
    finally:
        dist.destroy_process_group()


def audited_run_ppo():
    """``python dist_workers.py OUT AUDIT_DIR args...``: run experiments/run_ppo.py with an audit
    hook that records every write-mode open, mkdir and rename under OUT, per rank."""
    out, audit_dir, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    writes = []

    def hook(event, event_args):
        if event == "open" and event_args[0] is not None and isinstance(event_args[0], (str, Path)):
            path, mode, flags = str(event_args[0]), event_args[1], event_args[2]
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            if writing and path.startswith(out):
                writes.append(path)
        elif event in ("os.mkdir", "os.rename", "os.replace") and str(event_args[0]).startswith(out):
            writes.append(str(event_args[0]))

    sys.addaudithook(hook)
    import atexit
    import runpy

    rank = os.environ.get("RANK", "0")
    atexit.register(lambda: Path(audit_dir, f"rank{rank}.json").write_text(json.dumps(writes)))
    sys.argv = ["run_ppo.py", *args]
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "experiments" / "run_ppo.py"), run_name="__main__")


if __name__ == "__main__":
    audited_run_ppo()
