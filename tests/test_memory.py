"""`agents.memory.keep_freed_memory`: freed tensors' memory is reused without page faults, the
opt-out works, and `learn` on a CPU turns it on."""

import json
import os
import platform
import subprocess
import sys

import pytest
from helpers import REPO

# Minor page faults of allocating, filling and freeing a 64 MB tensor three times, before and
# after keep_freed_memory() (one untimed round in between lets the heap grow to the size).
SCRIPT = """
import json, resource, sys
import torch
sys.path.insert(0, sys.argv[1])
from agents import memory

def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        x = torch.empty(16 * 2**20).fill_(1.0)
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

default = faults()
applied = memory.keep_freed_memory()
faults()
print(json.dumps({"default": default, "applied": applied, "kept": faults()}))
"""


def run_script(**env):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(REPO)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_reused_without_page_faults():
    counts = run_script(LM_KEEP_FREED_MEMORY="1")
    assert counts["applied"] is True
    # 3 × 64 MB in 4 KiB pages is ~49k faults by default (glibc mmaps and unmaps each block).
    assert counts["default"] > 10_000, counts
    assert counts["kept"] < counts["default"] / 20, counts


def test_opt_out_leaves_malloc_alone():
    counts = run_script(LM_KEEP_FREED_MEMORY="0")
    assert counts["applied"] is False
    assert counts["kept"] > 10_000 or platform.libc_ver()[0] != "glibc", counts


def test_learn_on_cpu_keeps_freed_memory(tiny_dir, tiny_lm, monkeypatch):
    from helpers import echo_task

    from agents import GRPO, memory
    from lm_envs import TokenVecEnv

    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(True) or True)
    env = TokenVecEnv(
        echo_task(), tiny_lm[1], num_envs=4, max_new_tokens=3, max_prompt_tokens=16, completions_per_prompt=4
    )
    agent = GRPO("CausalLMPolicy", env, batch_size=4, policy_kwargs=dict(model=str(tiny_dir)), seed=0)
    agent.learn(total_iterations=1)
    assert calls == [True]
