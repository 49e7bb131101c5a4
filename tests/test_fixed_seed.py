"""A fixed-seed run of every agent (tiny model, two iterations) gives the results recorded before
the renovation of the agents' base classes: the same weights and the same logged values.

The fingerprints in ``tests/data/fixed_seed.json`` were recorded at commit f78e54a (before
`agents.base.LMAlgorithm`) with ``python tests/test_fixed_seed.py --record``; on the machine that
recorded them the refactored agents reproduce them bit for bit (``==``). The test allows a relative
1e-6, the rounding of another CPU's kernels, which is far below what any change of the random
stream, the loss or the update order moves (those move the checksums of the weight changes in the 2nd or 3rd digit).
Re-record only for a change that is meant to alter results, and say so in its commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import echo_task  # noqa: E402

RECORD = Path(__file__).resolve().parent / "data" / "fixed_seed.json"
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
STATS = ("objective/scores", "loss/policy", "train/grad_norm", "objective/kl", "tokens/response_len_mean")


def digit_fraction(completions, references, prompts=None):
    return np.array(
        [sum(w.isdigit() for w in c.split()) / max(1, len(c.split())) for c in completions], dtype=np.float32
    )


def _runs():
    """name → (agent class, group size, settings): each agent's own names, as users write them."""
    from agents import DPO, GRPO, KTO, PPO, REINFORCE, RLOO, SFT, REINFORCEPlusPlus, STaR

    common = dict(learning_rate=3e-3, batch_size=4, seed=0)
    return {
        "ppo": (PPO, 1, dict(common, n_epochs=2, kl_coef=0.01)),
        "grpo": (GRPO, 4, dict(common, num_iterations=2, beta=0.01)),
        "rloo": (RLOO, 4, dict(common, num_iterations=2, beta=0.01)),
        "reinforce": (REINFORCE, 1, dict(common, num_iterations=2, beta=0.01)),
        "reinforce_pp": (REINFORCEPlusPlus, 1, dict(common, num_iterations=2, beta=0.01)),
        "sft": (SFT, 1, dict(common, dataset=[{"prompt": q, "completion": "7 7 7"} for q in echo_task().questions])),
        "star": (STaR, 4, dict(common, threshold=0.0)),
        "dpo": (DPO, 4, dict(common, pair_strategy="all")),
        "kto": (KTO, 4, dict(common, desirable_threshold=0.2)),
    }


def fingerprint(name: str, model_dir: str) -> dict:
    """Two iterations of agent ``name`` with micro-batches of 2 rows: checksums of what training
    changed in its trainable weights, and its last logged values."""
    from lm_envs import TokenVecEnv
    from policies import load_lm

    cls, group, settings = _runs()[name]
    tokenizer = load_lm(model_dir)[1]
    env = TokenVecEnv(
        echo_task(reward=digit_fraction),
        tokenizer,
        num_envs=8,
        max_new_tokens=6,
        max_prompt_tokens=16,
        seed=0,
        completions_per_prompt=group,
    )
    agent = cls(
        "CausalLMPolicy",
        env,
        policy_kwargs=dict(model=model_dir, lora=LORA),
        micro_batch_size=2,
        **settings,
    )
    start = [p.detach().double().clone() for p in agent.policy.parameters() if p.requires_grad]
    torch.manual_seed(123)
    agent.learn(total_iterations=2)
    # What training changed (the starting weights would drown it in the sums).
    deltas = [p.detach().double() - s for p, s in zip([p for p in agent.policy.parameters() if p.requires_grad], start)]
    stats = agent.last_iteration_stats
    return {
        "delta_sum": float(sum(d.sum() for d in deltas)),
        "delta_sq": float(sum((d * d).sum() for d in deltas)),
        "stats": {k: float(stats[k]) for k in STATS if k in stats},
        "num_timesteps": int(agent.num_timesteps),
    }


@pytest.mark.parametrize("name", sorted(_runs()))
def test_a_fixed_seed_run_reproduces_its_recorded_results(name, tiny_dir):
    recorded = json.loads(RECORD.read_text())[name]
    now = fingerprint(name, str(tiny_dir))
    assert now["num_timesteps"] == recorded["num_timesteps"]
    assert now["stats"].keys() == recorded["stats"].keys()
    for key in ("delta_sum", "delta_sq"):
        assert now[key] == pytest.approx(recorded[key], rel=1e-6, abs=1e-9), key
    for key, value in recorded["stats"].items():
        assert now["stats"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


if __name__ == "__main__":  # python tests/test_fixed_seed.py --record
    import tempfile

    from helpers import build_tiny_model, build_tiny_tokenizer

    if "--record" not in sys.argv:
        sys.exit("usage: python tests/test_fixed_seed.py --record   (rewrites tests/data/fixed_seed.json)")
    with tempfile.TemporaryDirectory() as directory:
        tokenizer = build_tiny_tokenizer(Path(directory))
        build_tiny_model(Path(directory), len(tokenizer))
        results = {name: fingerprint(name, directory) for name in sorted(_runs())}
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {RECORD}")
