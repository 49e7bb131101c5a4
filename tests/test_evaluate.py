"""experiments/evaluate.py: base model end to end (subprocess), a PPO checkpoint, task options, and
--help on every config-style script."""

import importlib
import json
import subprocess
import sys

import pytest
import torch
from helpers import REPO, echo_task

import lm_envs
from agents import PPO, evaluate_policy
from lm_envs import TokenVecEnv

sys.path.insert(0, str(REPO / "experiments"))
import evaluate  # noqa: E402

SMALL = ["episodes=4", "env.num_envs=2", "env.kwargs.max_new_tokens=4", "env.kwargs.max_prompt_tokens=256"]


def read_samples(directory):
    return [json.loads(line) for line in (directory / "samples.jsonl").read_text().splitlines()]


def test_base_model_end_to_end_writes_summary_samples_and_table(tiny_dir, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "experiments" / "evaluate.py"),
            "env.id=lm_envs/GSM8K-v0",
            "env.kwargs.split=test",
            "checkpoint=none",
            f"model={tiny_dir}",
            *SMALL,
            "deterministic=true",
            f"output_dir={out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 4 and summary["env"] == "lm_envs/GSM8K-v0" and summary["split"] == "test"
    assert summary["decoding"] == "greedy" and summary["model"] == str(tiny_dir)
    for key in ("score_mean", "reward_mean", "response_len_mean", "accuracy", "no_answer_frac"):
        assert 0 <= summary[key] <= 4, key
    samples = read_samples(out)
    assert len(samples) == 4
    test = lm_envs.gsm8k_task(split="test")
    for sample in samples:
        assert set(sample) >= {"index", "prompt", "completion", "reference", "score", "reward", "length"}
        assert sample["reference"] == test.references[sample["index"]] and 1 <= sample["length"] <= 4
    assert summary["score_mean"] == pytest.approx(sum(s["score"] for s in samples) / 4)
    table = proc.stdout
    assert "metric" in table and "accuracy" in table and "score_mean" in table


def echo_builder(split: str = "test", **task_kwargs):
    return echo_task(**task_kwargs)


def test_checkpoint_is_evaluated_with_its_trained_weights(tiny_dir, tiny_lm, tmp_path):
    # Prompts the word-level tokenizer knows, so greedy completions are not all <unk> (= "").
    lm_envs.register_task("test_envs/Echo-v0", echo_builder)
    tokenizer = tiny_lm[1]
    env = TokenVecEnv(echo_task(), tokenizer, num_envs=4, max_new_tokens=4, max_prompt_tokens=16, seed=0)
    agent = PPO(
        "CausalLMPolicy",
        env,
        batch_size=4,
        seed=0,
        policy_kwargs=dict(model=str(tiny_dir), lora={"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}),
    )
    agent.learn(4 * 4)
    with torch.no_grad():  # make the adapter matter, so base and checkpoint surely decode differently
        for name, param in agent.policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 2.0, generator=torch.Generator().manual_seed(0))
    agent.save(tmp_path / "ckpt")

    args = [
        "env.id=test_envs/Echo-v0",
        "episodes=8",
        "env.num_envs=4",
        "env.kwargs.max_new_tokens=6",
        "env.kwargs.max_prompt_tokens=16",
    ]
    summary = evaluate.main([*args, f"checkpoint={tmp_path / 'ckpt'}", f"output_dir={tmp_path / 'trained'}"])
    assert summary["model"] == str(tiny_dir) and summary["checkpoint"] == str(tmp_path / "ckpt")
    base = evaluate.main([*args, "checkpoint=none", f"model={tiny_dir}", f"output_dir={tmp_path / 'base'}"])
    trained_samples, base_samples = read_samples(tmp_path / "trained"), read_samples(tmp_path / "base")
    # The same prompts, decoded by the trained policy exactly as evaluate_policy does in-process.
    direct_env = lm_envs.make_vec(
        "test_envs/Echo-v0", 4, tokenizer, max_new_tokens=6, max_prompt_tokens=16, truncate_prompt="left", seed=0
    )
    _, direct = evaluate_policy(agent.policy, direct_env, 8, deterministic=True, seed=0)
    assert [s["index"] for s in trained_samples] == [s["index"] for s in base_samples] == [s["index"] for s in direct]
    assert [s["completion"] for s in trained_samples] == [s["completion"] for s in direct]
    assert [s["completion"] for s in trained_samples] != [s["completion"] for s in base_samples]
    assert any(s["completion"] for s in trained_samples + base_samples)
    assert base["episodes"] == summary["episodes"] == 8


def test_task_options_and_bad_arguments(tiny_dir, tmp_path):
    summary = evaluate.main(
        [
            "env.id=lm_envs/MGSM-v0",
            f"model={tiny_dir}",
            "env.kwargs.language=de",
            "env.kwargs.limit=3",
            "episodes=2",
            "env.num_envs=2",
            "env.kwargs.max_new_tokens=2",
            "env.kwargs.max_prompt_tokens=64",
            "deterministic=false",
            f"output_dir={tmp_path / 'mgsm'}",
        ]
    )
    assert summary["task"]["language"] == "de" and summary["decoding"] == "sample" and "accuracy" in summary
    german = lm_envs.mgsm_task(language="de")
    assert all(s["prompt"].startswith(german.questions[s["index"]]) for s in read_samples(tmp_path / "mgsm"))
    with pytest.raises(SystemExit, match="not a PPO checkpoint"):
        evaluate.main([f"checkpoint={tmp_path}", f"output_dir={tmp_path / 'x'}"])
    with pytest.raises(SystemExit, match="key.sub=value"):
        evaluate.main([f"model={tiny_dir}", "env.kwargs.language", f"output_dir={tmp_path / 'y'}"])
    with pytest.raises(SystemExit, match="unknown option 'episods'"):
        evaluate.main(["episods=3", f"output_dir={tmp_path / 'y'}"])
    with pytest.raises(SystemExit, match="not flags"):
        evaluate.main(["--output-dir", str(tmp_path / "y")])
    with pytest.raises(SystemExit, match="output_dir="):
        evaluate.main([f"model={tiny_dir}"])
    with pytest.raises(ValueError, match="not 'train'"):
        evaluate.main(
            ["env.id=lm_envs/MGSM-v0", "env.kwargs.split=train", f"model={tiny_dir}", f"output_dir={tmp_path / 'z'}"]
        )


@pytest.mark.parametrize("script", ["evaluate.py", "sft_warmup.py", "run_ppo.py", "build_preferences.py"])
def test_help_lists_every_option(script, capsys, monkeypatch):
    """--help prints the script's summary and its base config, whose comments document each key
    (the script's entry point, called in this process as if it were ``__main__``)."""
    module = importlib.import_module(script.removesuffix(".py"))
    monkeypatch.setitem(sys.modules, "__main__", module)
    with pytest.raises(SystemExit) as exit_:
        getattr(module, "cli", module.main)(["--help"])
    assert exit_.value.code in (0, None)
    stdout = capsys.readouterr().out
    base = {"evaluate.py": "evaluate.yaml", "sft_warmup.py": "sft_warmup.yaml"}.get(script, "ppo.yaml")
    text = (REPO / "experiments" / "configs" / base).read_text()
    assert text.strip() in stdout
    assert stdout.splitlines()[0].startswith(("Evaluate", "SFT warm-up", "Train", "Sample"))


def test_before_after_table():
    from agents.evaluation import before_after_table

    table = before_after_table(
        {"score_mean": 0.5, "kl_mean": 0.0, "toxicity_mean": 0.2, "seconds": 3.0},
        {"score_mean": 0.75, "kl_mean": 1.5, "toxicity_mean": 0.1, "rewards/too_short/mean": -0.5},
    )
    rows = table.splitlines()
    assert rows[0] == "| metric | before | after | change |"
    assert "| score_mean | 0.5 | 0.75 | +50.0% |" in rows and "| toxicity_mean | 0.2 | 0.1 | -50.0% |" in rows
    assert "| kl_mean | 0 | 1.5 |  |" in rows  # no relative change from zero
    assert "| rewards/too_short/mean | - | -0.5 |  |" in rows and not any("seconds" in r for r in rows)


def test_a_pause_checkpoint_left_as_its_old_twin_is_read_safely(tiny_dir, tmp_path):
    """A kill between a save's two renames leaves only ``.NAME.old``: evaluate.py reads the pause
    policy's settings from it through the checkpoint module (``weights_only`` loading)."""
    import os

    from policies import PauseLMPolicy, add_pause_token, load_lm

    model, tokenizer = load_lm(str(tiny_dir))
    add_pause_token(model, tokenizer)
    env = TokenVecEnv(
        echo_task(), tokenizer, num_envs=4, max_new_tokens=4, max_prompt_tokens=16, seed=0, vocab_size=len(tokenizer)
    )
    agent = PPO("PauseLMPolicy", env, batch_size=4, seed=0, policy_kwargs=dict(model=model, max_pauses=3))
    agent.save(tmp_path / "ckpt")
    os.rename(tmp_path / "ckpt", tmp_path / ".ckpt.old")
    kwargs = evaluate.pause_policy_kwargs(str(tmp_path / "ckpt"), model)
    assert kwargs is not None and kwargs["max_pauses"] == 3 and "model" not in kwargs
    assert isinstance(agent.policy, PauseLMPolicy)
    assert evaluate.checkpoint_model(str(tmp_path / "ckpt")) == agent.policy.model_spec


def test_held_out_kl_is_the_exact_kl_over_the_vocabulary(tiny_dir, tiny_lm):
    """``kl_mean`` sums, over each completion's generated tokens, KL(π ‖ π_ref) over the whole
    vocabulary (checked against a brute-force pass), so greedy decoding never reports a negative
    KL; the sampled-token estimate it replaced does not equal it."""
    _, tokenizer = tiny_lm
    env = TokenVecEnv(echo_task(), tokenizer, num_envs=4, max_new_tokens=5, max_prompt_tokens=16, seed=0)
    agent = PPO(
        "CausalLMPolicy",
        env,
        batch_size=4,
        seed=0,
        kl_coef=0.05,
        policy_kwargs=dict(model=str(tiny_dir), lora={"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}),
    )
    with torch.no_grad():  # a policy clearly apart from its reference
        for name, param in agent.policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    from agents.evaluation import reference_statistics
    from agents.rollout import collect_episodes

    policy = agent.policy
    episodes, _ = collect_episodes(policy, env, deterministic=True)
    kl, _ = reference_statistics(policy, episodes, positions_per_pass=5)  # one row per pass
    with torch.no_grad():
        logits = policy.model(input_ids=episodes.input_ids, attention_mask=episodes.attention_mask).logits
        with policy.model.disable_adapter():
            ref = policy.model(input_ids=episodes.input_ids, attention_mask=episodes.attention_mask).logits
    decisions = episodes.policy_mask[:, 1:].bool()
    log_p, log_q = logits[:, :-1].log_softmax(-1), ref[:, :-1].log_softmax(-1)
    exact = ((log_p.exp() * (log_p - log_q)).sum(-1) * decisions).sum(-1)
    torch.testing.assert_close(torch.as_tensor(kl), exact, rtol=1e-4, atol=1e-5)
    assert (exact > 1e-3).all()
    sampled = (
        (
            episodes.log_probs
            - torch.zeros_like(episodes.log_probs).masked_scatter(
                episodes.action_mask,
                log_q[decisions].gather(-1, episodes.input_ids[:, 1:][decisions][:, None]).squeeze(-1),
            )
        )
        * episodes.action_mask
    ).sum(-1)
    assert not torch.allclose(sampled, exact, atol=1e-3)  # the old estimate is a different number
    summary, _ = evaluate_policy(policy, env, 8, deterministic=True, reference_stats=True)
    assert summary["kl_mean"] > 0


def test_summarize_seeds_reports_mean_and_spread(tmp_path):
    """The 3-seed headline table: mean ± sample std before and after, and each seed's after value."""
    import summarize_seeds

    for seed, (before, after) in enumerate([(0.2, 0.1), (0.3, 0.2), (0.25, 0.12)]):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        (run / "eval_before.json").write_text(json.dumps({"toxicity_mean": before, "kl_mean": 0.0}))
        (run / "eval_after.json").write_text(json.dumps({"toxicity_mean": after, "kl_mean": 1.0 + seed}))
    text = summarize_seeds.main([str(tmp_path / f"seed{s}") for s in range(3)])
    row = next(line for line in text.splitlines() if line.startswith("| toxicity_mean"))
    assert "0.25 ± 0.05" in row and "0.14 ± 0.053" in row and "-44.0%" in row and "0.1, 0.2, 0.12" in row
    kl = next(line for line in text.splitlines() if line.startswith("| kl_mean"))
    assert "2 ± 1" in kl and kl.split("|")[4].strip() == ""  # no relative change from 0
    with pytest.raises(SystemExit, match="no eval_before.json"):
        summarize_seeds.main([str(tmp_path)])


def test_rescore_scores_a_runs_saved_samples_with_todays_reward(tmp_path, capsys):
    """experiments/rescore.py: a run's saved held-out samples, scored again (no generation), with
    the reward's own metrics."""
    import rescore

    reference = {"question": "2 + 3?", "answer": "2 + 3 = 5\n#### 5"}
    for tag, completions in {"before": ["so #### 5", "4"], "after": ["#### 5", "it is\n#### 5"]}.items():
        rows = [{"prompt": "2 + 3?", "completion": c, "reference": reference} for c in completions]
        (tmp_path / f"samples_{tag}.json").write_text(json.dumps(rows))
    out = tmp_path / "rescored.json"
    results = rescore.main([str(tmp_path), "--reward", "gsm8k", "--out", str(out)])
    before, after = results[str(tmp_path)]["before"], results[str(tmp_path)]["after"]
    assert before["accuracy"] == 0.5 and before["score_mean"] == 0.5 and before["episodes"] == 2
    assert after["accuracy"] == 1.0 and after["score_mean"] == 1.0
    assert json.loads(out.read_text()) == results
    assert f"| {tmp_path} | after |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no samples"):
        rescore.main([str(tmp_path / "missing"), "--reward", "gsm8k"])
