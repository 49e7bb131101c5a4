"""The run report (experiments/report.py) and the per-token logs it reads (agents.token_log).

The token log is checked against the agent's own buffer; the report is built from tiny runs and
loaded in Debian's headless Chromium (``-m browser`` selects those tests), whose DOM must show
every logged episode and token, mark injected tokens, recolour on a new quantity and give every
value on hover; its screenshot must not be blank.
"""

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import echo_task
from test_multi_turn import multi_turn_env

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
import report  # noqa: E402

from agents import GRPO, PPO, evaluate_policy  # noqa: E402
from agents.checkpoint import write_json  # noqa: E402
from agents.token_log import TokenLogCallback, code_verdict, episode_records, read_token_logs  # noqa: E402
from lm_envs import TokenVecEnv  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def tiny_multi_turn_run(tiny_dir, tiny_lm, out: Path, agent_class=PPO, iterations: int = 2, group: int = 1, **kwargs):
    """A run directory as run_ppo.py writes one (tensorboard, evals, samples, token logs), from an
    agent on the tiny multi-turn env, whose episodes hold env replies between turns."""
    env = multi_turn_env(tiny_lm[1], num_envs=4, tools=False, group=group)
    agent = agent_class(
        "CausalLMPolicy",
        env,
        learning_rate=1e-3,
        batch_size=4,
        seed=0,
        tensorboard_log=str(out / "tb"),
        policy_kwargs=dict(model=str(tiny_dir)),
        **kwargs,
    )
    for tag in ("before", "after"):
        if tag == "after":
            callback = TokenLogCallback(out / "tokens", episodes=3, recompute_budget=1.0)  # every iteration
            agent.learn(total_iterations=iterations, callback=callback, tb_log_name="ppo")
        summary, samples = evaluate_policy(agent.policy, multi_turn_env(tiny_lm[1], num_envs=4, seed=1, tools=False), 4)
        write_json(out / f"eval_{tag}.json", summary)
        write_json(out / f"samples_{tag}.json", samples)
    (out / "config.yaml").write_text("agent:\n  name: ppo\n")
    write_json(out / "run.json", {"agent": "ppo", "iterations_done": iterations})
    return agent


@pytest.fixture(scope="module")
def multi_turn_run(tiny_dir, tmp_path_factory):
    from policies import load_lm

    out = tmp_path_factory.mktemp("multi_turn_run")
    torch.manual_seed(0)
    agent = tiny_multi_turn_run(tiny_dir, load_lm(str(tiny_dir)), out, kl_coef=0.05)
    return out, agent


# -- the token log ------------------------------------------------------------------------------
def test_token_log_holds_the_buffer_s_per_token_quantities(multi_turn_run):
    out, agent = multi_turn_run
    files = sorted(p.name for p in (out / "tokens").glob("*.jsonl"))
    assert files == ["iter_000001.jsonl", "iter_000002.jsonl"]
    records = read_token_logs(out / "tokens")
    assert [(r["iteration"], r["row"]) for r in records] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    buffer = agent.buffer  # the last iteration's: its records were written after its update
    for record in (r for r in records if r["iteration"] == 2):
        row, kinds = record["row"], record["kinds"]
        assert len(record["ids"]) == len(record["tokens"]) == len(kinds)
        assert set(record["values"]) == {
            "logprob",
            "ref_logprob",
            "kl",
            "value",
            "token_reward",
            "advantage",
            "return",
            "update_logprob",
            "logprob_diff",
            "entropy",
        }
        mask = buffer.mask[row]
        for name, attr in (("logprob", "log_probs"), ("kl", "kl"), ("advantage", "advantages"), ("value", "values")):
            expected = getattr(buffer, attr)[row][mask].tolist()
            assert record["values"][name] == pytest.approx(expected, abs=1e-4), name
        # The sequence: prompt, then actions and the env's replies, as the env laid them out.
        attention = buffer.attention_mask[row].bool()
        assert record["ids"] == buffer.input_ids[row][attention].tolist()
        policy = buffer.policy_mask[row][attention].tolist()
        assert [k in "az" for k in kinds] == [bool(p) for p in policy]
        assert kinds.count("a") == int(mask.sum()) and kinds.count("p") == int(attention[:16].sum())
        assert kinds.strip("p").count("p") == 0  # the prompt comes first, and only there
        # On the CPU in fp32, sampler and learner agree; entropies are those of a real distribution.
        assert max(abs(d) for d in record["values"]["logprob_diff"]) < 1e-3
        assert all(
            0 <= e <= np.log(len(agent.env.get_attr("batch", [0])[0].tokenizer)) + 1e-3
            for e in record["values"]["entropy"]
        )
    injected = [r for r in records if "e" in r["kinds"]]
    assert injected and all(r["info"]["turns"] >= 2 for r in injected)
    assert {r["info"]["turns"] for r in records} >= {3}


def test_a_run_without_a_quantity_logs_none_of_it(tiny_dir, tiny_lm, tmp_path):
    """GRPO has no value head and, without a KL term, no reference: neither appears, nor is offered."""
    tiny_multi_turn_run(tiny_dir, tiny_lm, tmp_path, GRPO, iterations=1, group=2, beta=0.0)
    records = read_token_logs(tmp_path / "tokens")
    assert records and all(
        set(r["values"])
        == {"logprob", "token_reward", "advantage", "return", "update_logprob", "logprob_diff", "entropy"}
        for r in records
    )
    page = report.write_report(tmp_path).read_text()
    offered = json.loads(page.split('id="token-data">')[1].split("</script>")[0])["quantities"]
    assert [key for key, _ in offered] == [
        "advantage",
        "logprob",
        "logprob_diff",
        "update_logprob",
        "entropy",
        "token_reward",
        "return",
    ]


def test_rollout_only_buffers_log_what_they_have(multi_turn_run, tiny_lm):
    """The round agents' buffers (STaR, DPO, KTO) hold rollout fields only."""
    from agents.buffer import TokenRolloutBuffer

    _, agent = multi_turn_run
    full = agent.buffer
    rollout_only = TokenRolloutBuffer(
        full.input_ids,
        full.attention_mask,
        full.policy_mask,
        full.mask,
        full.log_probs,
        full.values,
        full.env_rewards,
        full.terminated,
        full.infos,
    )
    records = episode_records(rollout_only, [0, 1], tiny_lm[1], with_values=False)
    assert [set(r["values"]) for r in records] == [{"logprob"}, {"logprob"}]


def test_code_verdicts_are_read_off_the_score_bands():
    from rewards.code import CodeWeights

    weights = CodeWeights()  # 0 if it does not compile, else 0.2 + 0.8 x the fraction of tests passed
    assert [code_verdict(s, weights) for s in (0.0, 0.2, 0.6, 1.0)] == [
        "compile_error",
        "failing_test",
        "failing_test",
        "passed",
    ]
    assert code_verdict(0.5, CodeWeights(0.5, 0.5, 0.5)) is None  # overlapping bands cannot tell


def test_code_tasks_log_verdicts_and_pause_tokens_are_marked(tiny_dir, tiny_lm, tmp_path):
    """A task whose reward has code weights gets each episode's verdict; a pause token chosen by
    the policy is kind ``z`` (an action: it has values)."""
    from rewards.code import CodeWeights

    scores = (0.0, 0.6, 1.0)  # by data row

    class CodeLikeReward:  # scores in the code reward's bands: 0 (no compile), 0.2 + 0.8 x tests passed
        weights = CodeWeights()

        def __call__(self, completions, references, prompts=None):
            return np.array([scores[r % 3] for r in references], dtype=np.float32)

    env = TokenVecEnv(
        echo_task(reward=CodeLikeReward()), tiny_lm[1], num_envs=4, max_new_tokens=4, max_prompt_tokens=16, seed=0
    )
    agent = PPO("CausalLMPolicy", env, batch_size=4, seed=0, policy_kwargs=dict(model=str(tiny_dir)))
    agent.learn(total_iterations=1, callback=TokenLogCallback(tmp_path, episodes=4))
    records = read_token_logs(tmp_path)
    verdicts = {0.0: "compile_error", 0.6: "failing_test", 1.0: "passed"}
    assert [r["info"]["verdict"] for r in records] == [verdicts[scores[r["info"]["reference"] % 3]] for r in records]
    assert len({r["info"]["verdict"] for r in records}) >= 2
    first = records[0]
    pause_id = first["ids"][first["kinds"].index("a")]  # any token the policy chose stands in for a pause
    again = episode_records(agent.buffer, [0], tiny_lm[1], pause_id=pause_id, prompt_width=16)[0]
    assert again["kinds"] == "".join(
        "z" if k == "a" and t == pause_id else k for k, t in zip(first["kinds"], first["ids"])
    )
    assert "z" in again["kinds"] and len(again["values"]["logprob"]) == len(again["kinds"].strip("p"))


def test_token_log_keeps_cuda_s_device_rule(tiny_dir, tiny_lm, tmp_path):
    """On a GPU the buffer lives on the device: the callback's tensors must never mix a CPU tensor
    into the model's (checked on the CPU by tests/device_rule.py)."""
    from device_rule import CudaDeviceRule

    env = multi_turn_env(tiny_lm[1], num_envs=4, tools=False)
    agent = PPO(
        "CausalLMPolicy", env, batch_size=4, seed=0, kl_coef=0.05, device="cpu", policy_kwargs=dict(model=str(tiny_dir))
    )
    with CudaDeviceRule():
        agent.learn(total_iterations=1, callback=TokenLogCallback(tmp_path, episodes=2))
    assert len(read_token_logs(tmp_path)) == 2


def test_the_teacher_forced_pass_keeps_to_its_budget(tiny_dir, tiny_lm, tmp_path):
    """With no budget left after the first pass, later iterations log the buffer's quantities only."""
    env = TokenVecEnv(echo_task(), tiny_lm[1], num_envs=4, max_new_tokens=4, max_prompt_tokens=16, seed=0)
    agent = PPO("CausalLMPolicy", env, batch_size=4, seed=0, policy_kwargs=dict(model=str(tiny_dir)))
    callback = TokenLogCallback(tmp_path, episodes=1, recompute_budget=0.0)
    agent.learn(total_iterations=3, callback=callback)
    records = read_token_logs(tmp_path)
    assert ["entropy" in r["values"] for r in records] == [True, False, False]
    assert all({"logprob", "advantage", "value"} <= set(r["values"]) for r in records)
    assert 0 < callback.seconds


def test_newer_token_log_format_is_a_clear_error(tmp_path):
    (tmp_path / "iter_000001.jsonl").write_text(json.dumps({"v": 99}) + "\n")
    with pytest.raises(ValueError, match="format v99.*update lm-stable-baselines"):
        read_token_logs(tmp_path)


# -- the report ---------------------------------------------------------------------------------
def test_report_is_one_offline_file_with_every_section(multi_turn_run):
    out, _ = multi_turn_run
    page = report.write_report(out).read_text()
    assert page.startswith("<!DOCTYPE html>") and (out / "report.html").exists()
    # Self-contained: nothing is fetched (no external script, style, image or font).
    for pattern in ('src="http', 'href="http', "@import", "url(http", "<link"):
        assert pattern not in page, pattern
    assert page.count('src="data:image/png;base64,') == 1
    for section in (
        'id="run"',
        'id="curves"',
        'id="evaluation"',
        'id="inspector"',
        "score_mean",
        "before (score)",
        "iterations_done",
        "torch",
    ):
        assert section in page, section
    data = json.loads(page.split('id="token-data">')[1].split("</script>")[0])
    assert len(data["episodes"]) == 6 and "value" in dict(data["quantities"])


def test_report_command_line_and_its_errors(multi_turn_run, tmp_path):
    out, _ = multi_turn_run
    target = tmp_path / "elsewhere.html"
    assert report.main([str(out), "--out", str(target), "--max-iterations", "1"]) == target
    data = json.loads(target.read_text().split('id="token-data">')[1].split("</script>")[0])
    assert {e["iteration"] for e in data["episodes"]} == {2}  # the last of the logged iterations
    with pytest.raises(SystemExit, match="pass a run's output_dir"):
        report.main([str(tmp_path / "nope")])


def test_select_iterations_keeps_the_first_and_the_last():
    records = [{"iteration": i} for i in range(1, 101)]
    kept = sorted({r["iteration"] for r in report.select_iterations(records, 5)})
    assert kept[0] == 1 and kept[-1] == 100 and len(kept) == 5
    assert report.select_iterations(records[:3], 24) == records[:3]


def test_run_ppo_writes_the_report_at_the_end(tiny_dir, tmp_path, capsys):
    """Every run writes report.html from its own token logs (the shipped defaults, which tiny_test
    turns off: report: true, report_episodes: null), and says what they cost as a share of the run."""
    import re

    import run_ppo

    run_ppo.main(
        [
            "experiment=tiny_test",
            "report=true",
            "report_episodes=null",
            f"policy.model={tiny_dir}",
            "policy.lora.r=2",
            "policy.lora.target_modules=[q_proj,v_proj]",
            f"output_dir={tmp_path}",
            "progress_bar=false",
        ]
    )
    page = (tmp_path / "report.html").read_text()
    data = json.loads(page.split('id="token-data">')[1].split("</script>")[0])
    assert {(e["iteration"], e["row"]) for e in data["episodes"]} == {(1, 0), (1, 1), (2, 0), (2, 1)}  # log_samples=2
    assert "toxicity_mean" in page and "lm_envs/Toxicity-v0" in page
    printed = capsys.readouterr().err
    assert re.search(
        r"report: \S+report\.html \(\d+\.\ds to write, \d+\.\ds of token logging: \d+\.\d% of the run\)", printed
    ), printed[-2000:]


# -- in a real browser ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, driven by Selenium through Debian's chromedriver (never a downloaded build)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} missing: the browser tests need Debian's chromium and chromium-driver; "
            "install them with `make system-deps` (apt-get install chromium chromium-driver)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: pip install -e '.[test]' (or make setup)")
    import tempfile

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--no-sandbox",
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def colours(driver, selector="#episodes .tok.action"):
    """The computed background colour of every token ``selector`` finds (one round trip)."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => getComputedStyle(e).backgroundColor)", selector
    )


@pytest.mark.browser
def test_report_in_headless_chromium(multi_turn_run, browser, tmp_path_factory):
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    out, _ = multi_turn_run
    path = report.write_report(out)
    records = read_token_logs(out / "tokens")
    browser.get(path.resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []  # no script error
    find = lambda selector: browser.find_elements("css selector", selector)  # noqa: E731
    assert len(find("#episodes .episode")) == len(records) == 6
    assert len(find("#episodes .tok")) == sum(len(r["tokens"]) for r in records)
    assert len(find("#episodes .tok.injected")) == sum(r["kinds"].count("e") for r in records) > 0
    assert len(find("#episodes .tok.prompt")) == sum(r["kinds"].count("p") for r in records)
    assert len(find("#episodes .turn")) >= 2  # multi-turn episodes show their turns
    assert "6 episodes" in browser.find_element("id", "counts").text
    # Only logged quantities are offered; switching the quantity recolours the action tokens.
    quantity = Select(browser.find_element("id", "quantity"))
    offered = [o.get_attribute("value") for o in quantity.options]
    assert set(offered) == set(records[0]["values"])
    assert quantity.first_selected_option.get_attribute("value") == "advantage"
    by_advantage = colours(browser)
    assert len(set(by_advantage)) > 3  # coloured, not uniform
    quantity.select_by_value("logprob")
    by_logprob = colours(browser)
    assert len(by_logprob) == len(by_advantage) and by_logprob != by_advantage
    # Injected tokens are never coloured: they are no action.
    injected = set(colours(browser, "#episodes .tok.injected"))
    assert {tuple(int(float(c)) for c in v[v.index("(") + 1 : -1].split(",")[:3]) for v in injected} == {
        (251, 239, 255)
    }
    # A hover shows every value of that token.
    first_action = find("#episodes .tok.action")[0]
    ActionChains(browser).move_to_element(first_action).perform()
    tooltip = browser.find_element("id", "tooltip")
    assert tooltip.is_displayed()
    text = tooltip.text
    for label in ("advantage", "per-token KL", "reference log-prob", "value", "entropy", "rollout − update log-prob"):
        assert label in text, text
    expected = records[0]["values"]["logprob"][0]
    assert f"{expected:.4f}" in text
    # An iteration filter shows that iteration's episodes only.
    Select(browser.find_element("id", "iteration")).select_by_value("2")
    assert len([e for e in find("#episodes .episode") if e.is_displayed()]) == 3
    # Per-turn rewards (a game's, info["turn_rewards"]) label the turns that info["turn_ends"] mark,
    # even where the env injected a tool result within a turn.
    game = tmp_path_factory.mktemp("game")
    record = {
        "v": 1,
        "iteration": 1,
        "timesteps": 6,
        "row": 0,
        "ids": list(range(9)),
        "tokens": list("PPabTcXde"),
        "kinds": "ppaaeaeaa",
        "values": {"logprob": [-1.0, -0.5, -0.2, -2.0, -0.1]},
        "prompt": "PP",
        "completion": "abTcXde",
        "score": 1.5,
        "env_reward": 1.5,
        "terminated": True,
        "info": {"turns": 2, "turn_rewards": [0.5, 1.0], "turn_ends": [2, 4]},
    }
    (game / "tokens").mkdir()
    (game / "tokens" / "iter_000001.jsonl").write_text(json.dumps(record) + "\n")
    browser.get(report.write_report(game).resolve().as_uri())
    assert [t.text for t in find("#episodes .turn")] == ["turn 1 · reward 0.5000", "turn 2 · reward 1.0000"]
    assert len(find("#episodes .tok.injected")) == 2
    browser.back()
    # The screenshot is not blank: many colours, and real variation across the image.
    image = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")).astype(float)
    assert image.std() > 10 and len(np.unique(image.reshape(-1, 3), axis=0)) > 50
