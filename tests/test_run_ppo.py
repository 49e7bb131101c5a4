"""experiments/run_ppo.py end to end (tiny model), SIGKILL + resume, and every shipped config."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_ppo_in_process

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
from config import agents, compose, presets  # noqa: E402


def run(args, **kwargs):
    return subprocess.Popen(
        [sys.executable, str(REPO / "experiments" / "run_ppo.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def tiny_args(tiny_dir, out, *extra):
    return [
        "experiment=tiny_test",
        f"policy.model={tiny_dir}",
        "policy.lora.r=2",
        "policy.lora.target_modules=[q_proj,v_proj]",
        f"output_dir={out}",
        "progress_bar=false",
        *extra,
    ]


def test_end_to_end_writes_logs_checkpoints_and_evals(tiny_dir, tmp_path):
    proc = run(tiny_args(tiny_dir, tmp_path))
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert "iter    2" in output
    assert list((tmp_path / "tb").glob("ppo_*/events.out.tfevents.*"))
    assert (tmp_path / "checkpoints" / "iter_000002" / "policy" / "adapter_model.safetensors").exists()
    assert (tmp_path / "final" / "value_head.pt").exists()
    # tiny_test turns the report and its token log off (tests/test_report.py tests them).
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "tokens").exists()
    for tag in ("before", "after"):
        summary = json.loads((tmp_path / f"eval_{tag}.json").read_text())
        assert summary["episodes"] == 4 and "score_mean" in summary and "toxicity_mean" in summary
    # the run ends with the before -> after table of the held-out evaluations
    before, after = (json.loads((tmp_path / f"eval_{t}.json").read_text()) for t in ("before", "after"))
    assert "before -> after training" in output
    assert f"| toxicity_mean | {before['toxicity_mean']:.4g} | {after['toxicity_mean']:.4g} |" in output


def test_two_runs_with_the_same_seed_give_the_same_evaluations(tiny_dir, tmp_path):
    """Reproducible experiments: same seed, same machine, same eval_before/eval_after files
    (sampled evaluation included), whether the run has a fresh interpreter or this one."""
    proc = run(tiny_args(tiny_dir, tmp_path / "a", "seed=3", "env.eval_deterministic=false"))
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    code, output = run_ppo_in_process(tiny_args(tiny_dir, tmp_path / "b", "seed=3", "env.eval_deterministic=false"))
    assert code == 0, output
    outputs = [{tag: (tmp_path / n / f"eval_{tag}.json").read_text() for tag in ("before", "after")} for n in "ab"]
    assert outputs[0] == outputs[1]
    assert outputs[0]["before"] != outputs[0]["after"]  # it trained: the match is not of an untouched model


def test_sigkill_then_resume_continues(tiny_dir, tmp_path):
    proc = run(tiny_args(tiny_dir, tmp_path, "iterations=400"))
    checkpoints = tmp_path / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(checkpoints.glob("iter_*/agent.pt")):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0]  # still running: the kill lands mid-run
    assert list(checkpoints.glob("iter_*/agent.pt")), "no checkpoint in time"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("iter_"))
    assert done and done[-1] != "iter_000400"
    # The resumed run ends 3 iterations later (a budget of 400 kept the first one running until
    # the kill; the rest of it would only cost time).
    last_before_kill = int(done[-1].split("_")[1])
    end = last_before_kill + 3
    resumed = run(tiny_args(tiny_dir, tmp_path, f"iterations={end}", "resume=true"))
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "resuming from" in output
    assert f"iter {last_before_kill + 1:4d}" in output  # continues at the next iteration, not from 1
    assert "iter    1 |" not in output
    assert (checkpoints / f"iter_{end:06d}" / "agent.pt").exists()
    assert json.loads((tmp_path / "run.json").read_text())["iterations_done"] == end


# pause_gsm8k is a PPO preset: the pause head is trained through PPO's value head and KL. A recipe
# (agent=gspo, ...) is its agent class's config with other values: checked with the default and
# tiny presets, not every preset again.
RECIPES = ("dapo", "gspo", "reinforce_pp_baseline")
CASES = [
    (preset, agent)
    for preset in [None, *presets()]
    for agent in agents()
    if (preset != "pause_gsm8k" or agent == "ppo") and (agent not in RECIPES or preset in (None, "tiny_test"))
]


def own_agent(preset):
    return compose([f"experiment={preset}"] if preset else []).agent.name


# Built for real (envs, policy, agent): every agent with the default and the tiny config, and every
# preset with its own agent. Every other preset x agent pair is composed and checked without a
# model (`test_every_preset_agent_pair_composes_and_validates`): what differs between them is
# the agent node, which that check covers.
BUILT = sorted(
    {(None, agent) for agent in agents()}
    | {("tiny_test", agent) for agent in agents()}
    | {(preset, own_agent(preset)) for preset in presets()},
    key=str,
)


@pytest.mark.parametrize("preset, agent", CASES)
def test_every_preset_agent_pair_composes_and_validates(preset, agent):
    """Each pair's agent keys are ones its class takes, and its batch shape fits its env."""
    import run_ppo

    cfg = compose(([f"experiment={preset}"] if preset else []) + [f"agent={agent}"])
    cls = run_ppo.agent_class(cfg)  # unknown keys and env.num_envs vs completions_per_prompt
    rows, group = cfg.env.num_envs, cfg.env.get("completions_per_prompt", 1)
    batch = cfg.agent.get("batch_size") or rows
    assert cfg.agent.name == agent and rows % group == 0
    if cls.__name__ in ("PPO", "GRPO", "RLOO", "REINFORCE", "REINFORCEPlusPlus"):
        assert batch <= rows and rows % batch == 0, (preset, agent, batch, rows)  # the core's own check


@pytest.mark.parametrize("preset, agent", BUILT)
def test_every_shipped_config_composes_and_instantiates(preset, agent, tiny_dir, tmp_path):
    """Configs cannot drift from the code: build envs, policy and agent (tiny model swapped in)."""
    import run_ppo

    from agents import AGENTS

    argv = ([f"experiment={preset}"] if preset else []) + [
        f"agent={agent}",
        f"policy.model={tiny_dir}",
        f"output_dir={tmp_path}",
    ]
    cfg = compose(argv)
    assert cfg.agent.name == agent
    created, env, eval_env, resumed = run_ppo.prepare(cfg)
    assert type(created) is AGENTS[cfg.agent.get("algorithm") or agent]
    assert resumed is None and env.num_envs == cfg.env.num_envs
    assert created.batch_size == cfg.agent.batch_size and created.policy.uses_lora == (cfg.policy.lora is not None)
    assert (created.policy.value_head is not None) == (agent == "ppo")
    env.reset(), eval_env.reset()  # prompts load (e.g. a game's opening, with the shared reward)


def test_agent_group_replaces_the_agent_node_whatever_the_order():
    grpo = compose(["agent.learning_rate=3e-5", "agent=grpo", "experiment=tiny_test"])
    assert grpo.agent.name == "grpo" and grpo.agent.learning_rate == 3e-5  # dotted overrides win, in any order
    assert "vf_coef" not in grpo.agent and "gae_lambda" not in grpo.agent  # no PPO key survives
    assert grpo.env.completions_per_prompt == 4
    default = compose([])
    assert default.agent.name == "ppo" and "vf_coef" in default.agent and default.env.completions_per_prompt == 1
    # A preset's per-agent section reaches only its own agent.
    tox_ppo, tox_grpo = compose(["experiment=toxicity_cpu"]), compose(["experiment=toxicity_cpu", "agent=grpo"])
    assert tox_ppo.agent.adaptive_kl is True and "adaptive_kl" not in tox_grpo.agent
    assert tox_grpo.agent.kl_coef == 0.2 and "per_agent" not in tox_grpo


def test_unknown_preset_agent_key_and_bad_override_are_clear(tiny_dir, tmp_path, monkeypatch):
    import run_ppo

    monkeypatch.chdir(tmp_path)  # relative model paths of presets (outputs/sft/final) resolve here: absent

    with pytest.raises(SystemExit, match="unknown experiment"):
        compose(["experiment=nope"])
    with pytest.raises(SystemExit, match=r"unknown agent 'nope'; known: \['dapo', 'dpo', 'grpo', 'gspo', 'kto', 'ppo'"):
        compose(["agent=nope"])
    with pytest.raises(SystemExit, match="key.sub=value"):
        compose(["agent.learning_rate"])
    # A misspelt key is an error that lists the keys beside it, at the top level and nested.
    with pytest.raises(SystemExit, match=r"unknown option 'iteratons'.*known keys: \[.*'iterations'"):
        compose(["iteratons=100"])
    with pytest.raises(SystemExit, match=r"unknown option 'env.num_env'.*known keys under env: \[.*'num_envs'"):
        compose(["experiment=tiny_test", "env.num_env=3"])
    # A path through a list (a reward wrapper's term) is set in place, and checked like the rest.
    term = "env.reward_wrappers.0.terms.discriminator"
    tuned = compose(["experiment=compile_disc_cpu", f"{term}.weight=0.02", f"{term}.kwargs.output=sigmoid"])
    assert tuned.env.reward_wrappers[0].terms.discriminator.weight == 0.02
    assert tuned.env.reward_wrappers[0].terms.discriminator.kwargs.output == "sigmoid"
    with pytest.raises(SystemExit, match=r"unknown option .*discriminator.wieght.*known keys.*'weight'"):
        compose(["experiment=compile_disc_cpu", f"{term}.wieght=0.02"])
    with pytest.raises(SystemExit, match="index out of range"):
        compose(["experiment=compile_disc_cpu", "env.reward_wrappers.5.type=x"])
    free = compose(["env.kwargs.max_new_tokens=8", "policy.lora.r=4", "env.eval_kwargs.split=test"])
    assert free.env.kwargs.max_new_tokens == 8 and free.policy.lora.r == 4  # free-form nodes stay free
    with pytest.raises(SystemExit, match=r"does not take \['vf_coef'\]"):
        run_ppo.agent_class(compose(["agent=grpo", "agent.vf_coef=0.1"]))
    with pytest.raises(SystemExit, match="multiple of env.completions_per_prompt=4"):
        run_ppo.agent_class(compose(["agent=grpo", "env.num_envs=6"]))
    # A preset that starts from an earlier step's output names the step's config when it is missing.
    with pytest.raises(SystemExit, match=r"(?s)outputs/sft/final.*experiment=pause_gsm8k.*pause_gsm8k\.yaml"):
        run_ppo.prepare(compose(["experiment=pause_gsm8k", f"output_dir={tmp_path}"]))
    with pytest.raises(FileNotFoundError):  # no preset: the loader's own error
        run_ppo.prepare(compose([f"policy.model={tmp_path / 'missing'}", f"output_dir={tmp_path}"]))


def test_the_eval_env_scores_with_the_train_envs_reward_unless_it_chooses_its_own(tiny_dir, tmp_path):
    """One reward object per run (one code sandbox, one start-up canary, one classifier); an eval
    env whose eval_kwargs choose their own reward builds its own."""
    import run_ppo
    from omegaconf import OmegaConf

    base = ["experiment=tiny_test", f"policy.model={tiny_dir}", f"output_dir={tmp_path}"]
    _, env, eval_env, _ = run_ppo.prepare(compose(base))
    assert eval_env.task.reward is env.task.reward and eval_env.task is not env.task
    own = compose(base + ["env.eval_kwargs={reward_kwargs: {}}"])
    assert run_ppo.shared_reward(own, env) is None
    assert run_ppo.shared_reward(OmegaConf.create({"env": {"eval_kwargs": {"reward": "x"}}}), env) is None
    _, env, eval_env, _ = run_ppo.prepare(own)
    assert eval_env.task.reward is not env.task.reward


def test_grpo_runs_end_to_end_and_resumes(tiny_dir, tmp_path):
    code, output = run_ppo_in_process(tiny_args(tiny_dir, tmp_path, "agent=grpo"))
    assert code == 0, output
    assert "iter    2" in output and list((tmp_path / "tb").glob("grpo_*/events.out.tfevents.*"))
    assert not (tmp_path / "final" / "value_head.pt").exists()  # GRPO has no value head
    code, output = run_ppo_in_process(tiny_args(tiny_dir, tmp_path, "agent=grpo", "iterations=3", "resume=true"))
    assert code == 0, output
    assert "iter    3" in output and "iter    1 |" not in output
    # The comparison script overlays runs and tabulates their held-out evaluations.
    import compare_runs

    compare_runs.main([str(tmp_path / "compare"), f"grpo={tmp_path}"])
    assert (tmp_path / "compare" / "score_kl_vs_time.png").stat().st_size > 1000
    table = (tmp_path / "compare" / "before_after.md").read_text().splitlines()
    assert table[2].startswith("| grpo | 3 |")


def test_cli_leaves_the_process_group_together_after_a_run_and_at_once_after_a_failure(monkeypatch):
    """torchrun: rank 0 evaluates and writes after the others finish, so every rank meets at a
    barrier before the process group is destroyed; a failed run skips the barrier (the other ranks
    would wait for it forever) but still leaves the group."""
    import run_ppo

    from agents import distributed

    calls = []
    monkeypatch.setattr(distributed, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(run_ppo, "main", lambda argv: calls.append(("main", tuple(argv))) or {"score_mean": 1.0})
    assert run_ppo.cli(["iterations=1"]) == {"score_mean": 1.0}
    assert calls == [("main", ("iterations=1",)), "barrier", "shutdown"]

    calls.clear()

    def fails(argv):
        calls.append("main")
        raise RuntimeError("a rank failed")

    monkeypatch.setattr(run_ppo, "main", fails)
    with pytest.raises(RuntimeError, match="a rank failed"):
        run_ppo.cli([])
    assert calls == ["main", "shutdown"]
