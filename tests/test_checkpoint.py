"""agents.checkpoint: safe encoding, weights_only loading, fsync, the .old fallback and staging sweep."""

import os
import pickle

import numpy as np
import pytest
import torch
from helpers import echo_task

from agents import PPO, checkpoint
from lm_envs import TokenVecEnv


def make_env(tokenizer):
    return TokenVecEnv(echo_task(), tokenizer, num_envs=4, max_new_tokens=4, max_prompt_tokens=16, seed=0)


def test_encode_round_trips_numpy_state():
    state = {
        "rng": np.random.default_rng(5).bit_generator.state,
        "legacy": np.random.get_state(),
        "arrays": [np.arange(6, dtype=np.int32).reshape(2, 3), np.array([True, False]), np.float32(2.5)],
        "keys": np.array([1, 2**32 - 1], dtype=np.uint32),
    }
    decoded = checkpoint.decode(checkpoint.encode(state))
    assert decoded["rng"] == state["rng"]
    assert decoded["legacy"][0] == "MT19937" and np.array_equal(decoded["legacy"][1], state["legacy"][1])
    assert decoded["keys"].dtype == np.uint32 and np.array_equal(decoded["keys"], state["keys"])
    assert decoded["arrays"][0].dtype == np.int32 and np.array_equal(decoded["arrays"][0], state["arrays"][0])
    assert decoded["arrays"][2] == 2.5 and type(decoded["arrays"][2]) is float
    with pytest.raises(TypeError, match="dtype"):
        checkpoint.encode(np.array(["a"]))


def test_agent_checkpoint_loads_with_weights_only_and_nothing_executable(tiny_dir, tiny_lm, tmp_path):
    agent = PPO("CausalLMPolicy", make_env(tiny_lm[1]), batch_size=4, seed=0, policy_kwargs=dict(model=str(tiny_dir)))
    agent.learn(total_iterations=1)
    agent.save(tmp_path / "ckpt")
    torch.load(tmp_path / "ckpt" / "agent.pt", weights_only=True)  # raises on any pickled class or function
    raw = (tmp_path / "ckpt" / "agent.pt").read_bytes()
    assert b"numpy.core" not in raw and b"numpy._core" not in raw and b"builtins" not in raw


def test_a_kill_between_the_renames_falls_back_to_the_previous_checkpoint(tiny_dir, tiny_lm, tmp_path):
    agent = PPO("CausalLMPolicy", make_env(tiny_lm[1]), batch_size=4, seed=0, policy_kwargs=dict(model=str(tiny_dir)))
    agent.learn(total_iterations=1)
    target = tmp_path / "checkpoints" / "iter_000001"
    agent.save(target)
    # The state a kill leaves after `rename(path, old)` and before `rename(staging, path)`:
    os.rename(target, target.with_name(".iter_000001.old"))
    (tmp_path / "checkpoints" / ".iter_000001.abc123").mkdir()  # the staging dir, half written
    found = checkpoint.latest_checkpoint(tmp_path / "checkpoints")
    assert found == target
    loaded = PPO.load(found, env=make_env(tiny_lm[1]))
    assert loaded.iteration == 1
    # The next save sweeps the stale staging dir and replaces the fallback.
    loaded.save(target)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["iter_000001"]


def test_saves_are_fsynced(tiny_dir, tiny_lm, tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", spy)
    agent = PPO("CausalLMPolicy", make_env(tiny_lm[1]), batch_size=4, seed=0, policy_kwargs=dict(model=str(tiny_dir)))
    agent.save(tmp_path / "ckpt")
    assert any(path.endswith("agent.pt") for path in synced)
    assert any(path.endswith("meta.json") for path in synced)
    assert str(tmp_path) in synced  # the parent directory, after the rename


def test_loading_refuses_a_pickle_payload(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "meta.json").write_text('{"format": %d}' % checkpoint.CHECKPOINT_FORMAT)
    with open(tmp_path / "bad" / "agent.pt", "wb") as handle:
        pickle.dump({"x": Boom()}, handle)
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.read_checkpoint(tmp_path / "bad")
    assert not (tmp_path / "pwned").exists()
