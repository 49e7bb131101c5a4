"""SFT, STaR, DPO and KTO on the rounds loop (tiny model): targets, a round of each end to end,
skipped rounds, rationalization's hint stripping, merged model directories, bit-exact resume, and
each agent raising the reward of a synthetic task."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import echo_env, echo_task, score_tracker

from agents import DPO, KTO, SFT, STaR, sequences
from agents.rounds import ScoredRolloutAlgorithm
from lm_envs import Task, TokenVecEnv
from lm_envs.hints import gold_answer, hinted_vec_env
from lm_envs.tasks.turns import Reply

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def digit_fraction(completions, references, prompts=None):
    """A reward the random tiny model's samples differ on: the fraction of digit words."""
    return np.array(
        [sum(w.isdigit() for w in c.split()) / max(1, len(c.split())) for c in completions], dtype=np.float32
    )


def make_env(tokenizer, num_envs=8, group=4, seed=0, task=None, max_new_tokens=6):
    return echo_env(tokenizer, num_envs, max_new_tokens, seed, group, task)


def make(cls, tiny_dir, tokenizer, lora=LORA, group=4, env_seed=0, task=None, **kwargs):
    settings = dict(learning_rate=3e-3, batch_size=4, seed=0)
    settings.update(kwargs)
    env = make_env(
        tokenizer, group=group if cls is not SFT else 1, seed=env_seed, task=task or echo_task(reward=digit_fraction)
    )
    return cls("CausalLMPolicy", env, policy_kwargs=dict(model=str(tiny_dir), lora=lora), **settings)


def trainable(agent):
    return {n: p.detach().clone() for n, p in agent.policy.named_parameters() if p.requires_grad}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- training rows -------------------------------------------------------------------------------
def test_sequences_lay_rows_out_like_the_env_and_score_like_rollouts(tiny_dir, tiny_lm):
    """Rows rebuilt from (prompt ids, completion ids) score exactly as the rollout scored them."""
    agent = make(STaR, tiny_dir, tiny_lm[1], threshold=0.0)
    from agents.rollout import collect_episodes

    episodes, _ = collect_episodes(agent.policy, agent.env)
    rows = sequences.from_episodes(episodes)
    rebuilt = sequences.Sequences.from_ids(
        [rows.prompt_ids(i) for i in range(len(rows))], [rows.completion_ids(i) for i in range(len(rows))], agent.pad_id
    )
    assert rebuilt.input_ids.shape[1] <= rows.input_ids.shape[1]
    for i in range(len(rows)):
        assert rebuilt.prompt_ids(i) == rows.prompt_ids(i) and rebuilt.completion_ids(i) == rows.completion_ids(i)
    with torch.no_grad():
        scored = sequences.log_probs(agent.policy, rebuilt)
    torch.testing.assert_close(scored[rebuilt.mask], episodes.log_probs[episodes.action_mask], atol=1e-4, rtol=1e-4)


# -- SFT -------------------------------------------------------------------------------------------
def test_sft_learns_completions_and_writes_a_loadable_merged_model(tiny_dir, tiny_lm, tmp_path, capfd):
    from policies import load_lm

    model, tokenizer = tiny_lm
    task = echo_task()
    data = [{"prompt": q, "completion": "7 7 7"} for q in task.questions]
    agent = SFT(
        "CausalLMPolicy",
        make_env(tokenizer, group=1, task=task),
        dataset=data,
        learning_rate=1e-2,
        batch_size=4,
        micro_batch_size=2,
        seed=0,
        policy_kwargs=dict(model=str(tiny_dir)),
    )
    agent.learn(total_iterations=6, progress_bar=True)
    assert agent.iteration == 6 and agent.num_timesteps == 6 * len(data)
    stats = agent.last_iteration_stats
    assert all(math.isfinite(v) for v in stats.values())
    bar = capfd.readouterr().err.split("\r")[-1]  # the bar's last state: a round without rollouts shows its loss
    assert "6/6" in bar and f"loss={stats['loss/policy']:.3f}" in bar and "score" not in bar
    assert stats["loss/policy"] < 1.0 and stats["sft/examples"] == len(data)
    # The completion is what it learnt: greedy decoding now writes 7s.
    from agents.evaluation import evaluate_policy

    summary, _ = evaluate_policy(agent.policy, make_env(tokenizer, group=1, task=task), 8)
    assert summary["score_mean"] > 0.5
    # LoRA: the adapter is merged into a copy; the directory is a plain model + tokenizer.
    agent = SFT(
        "CausalLMPolicy",
        make_env(tokenizer, group=1, task=task),
        dataset=data,
        learning_rate=1e-2,
        batch_size=4,
        seed=0,
        policy_kwargs=dict(model=str(tiny_dir), lora=LORA),
    )
    agent.learn(total_iterations=1)
    assert agent.policy.uses_lora
    agent.save_merged(tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert (tmp_path / "merged" / "model.safetensors").exists()
    merged, merged_tokenizer = load_lm(str(tmp_path / "merged"))
    assert len(merged_tokenizer) == len(tokenizer)
    ids = torch.tensor([tokenizer("how many 7 7").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, agent.policy.model(ids).logits, atol=1e-4, rtol=1e-4)


def test_sft_default_data_is_the_tasks_gold_references_and_a_bad_column_is_clear(tiny_dir, tiny_lm, tmp_path):
    tokenizer = tiny_lm[1]
    task = Task(
        questions=["how many apples", "how many cats"],
        references=["7 7", "3"],
        reward=lambda c, r, p=None: np.zeros(len(c), np.float32),
        name="gold",
        chat_template=False,
    )
    agent = SFT(
        "CausalLMPolicy",
        make_env(tokenizer, num_envs=2, group=1, task=task),
        batch_size=2,
        seed=0,
        policy_kwargs=dict(model=str(tiny_dir)),
    )
    prompts, completions = agent.encoded()
    assert [tokenizer.decode(c) for c in completions] == ["7 7 </s>", "3 </s>"]
    assert tokenizer.decode(prompts[0]) == "how many apples"
    # The same pairs as a jsonl file, a datasets.Dataset, or (prompt, completion) tuples.
    import datasets

    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"prompt": "how many apples", "completion": "7 7"}\n{"prompt": "how many cats", "completion": "3"}\n'
    )
    sources = [
        str(path),
        datasets.Dataset.from_dict({"prompt": ["how many apples", "how many cats"], "completion": ["7 7", "3"]}),
        [("how many apples", "7 7"), ("how many cats", "3")],
    ]
    for source in sources:
        other = SFT(
            "CausalLMPolicy",
            make_env(tokenizer, num_envs=2, group=1, task=task),
            dataset=source,
            batch_size=2,
            seed=0,
            policy_kwargs=dict(model=str(tiny_dir)),
        )
        assert other.encoded() == (prompts, completions)
    bad = SFT(
        "CausalLMPolicy",
        make_env(tokenizer, num_envs=2, group=1, task=task),
        dataset=[{"question": "a"}],
        batch_size=2,
        policy_kwargs=dict(model=str(tiny_dir)),
    )
    with pytest.raises(ValueError, match=r"no column\(s\) \['prompt', 'completion'\]"):
        bad.encoded()


def test_sft_resume_continues_the_data_stream_bit_exactly(tiny_dir, tiny_lm, tmp_path):
    tokenizer = tiny_lm[1]
    data = [{"prompt": q, "completion": "7 3"} for q in echo_task().questions]

    def build():
        return SFT(
            "CausalLMPolicy",
            make_env(tokenizer, group=1),
            dataset=data,
            examples_per_round=5,
            batch_size=4,
            micro_batch_size=2,
            learning_rate=1e-2,
            seed=3,
            policy_kwargs=dict(model=str(tiny_dir), lora=LORA),
        )

    straight = build()
    straight.learn(total_iterations=4)
    first = build()
    first.learn(total_iterations=2)
    first.save(tmp_path / "half")
    with pytest.raises(ValueError, match="pass it again"):
        SFT.load(tmp_path / "half", env=make_env(tokenizer, group=1))
    resumed = SFT.load(tmp_path / "half", env=make_env(tokenizer, group=1), dataset=data)
    assert resumed._stream == {"epoch": 0, "position": 10}
    resumed.learn(total_iterations=4, reset_num_timesteps=False)
    assert same(trainable(straight), trainable(resumed))


# -- STaR ------------------------------------------------------------------------------------------
def test_star_keeps_what_the_filter_keeps_and_skips_a_round_that_keeps_nothing(tiny_dir, tiny_lm):
    agent = make(STaR, tiny_dir, tiny_lm[1], threshold=0.2, filter_on="reward", max_per_prompt=2)
    agent.learn(total_iterations=1)
    episodes = agent.episodes
    rewards = episodes.env_rewards.numpy()
    groups = [info["index"] for info in episodes.infos]
    kept_by_prompt = {}
    for r, g in zip(rewards, groups):
        if r >= 0.2:
            kept_by_prompt[g] = kept_by_prompt.get(g, 0) + 1
    stats = agent.last_iteration_stats
    assert stats["star/kept"] == agent.num_targets() <= sum(min(2, n) for n in kept_by_prompt.values())
    assert stats["star/kept_fraction"] == pytest.approx(stats["star/kept"] / len(rewards))
    assert stats["star/accuracy"] == pytest.approx(np.mean([info["score"] for info in episodes.infos]))
    for row in range(agent.num_targets()):  # every kept completion scores above the threshold
        text = tiny_lm[1].decode(agent.targets.completion_ids(row), skip_special_tokens=True)
        assert digit_fraction([text], [None])[0] >= 0.2

    nothing = make(STaR, tiny_dir, tiny_lm[1], threshold=2.0)  # nothing can reach it
    before = trainable(nothing)
    nothing.learn(total_iterations=2)
    assert nothing.iteration == 2 and nothing.num_targets() == 0 and nothing._n_updates == 0
    assert nothing.last_iteration_stats["train/skipped_round"] == 1.0
    assert nothing.last_iteration_stats["star/kept"] == 0.0
    assert same(before, trainable(nothing))


def test_star_from_base_restarts_every_round(tiny_dir, tiny_lm):
    agent = make(STaR, tiny_dir, tiny_lm[1], threshold=0.0, from_base=True)
    base = trainable(agent)
    agent.learn(total_iterations=1)
    assert not same(base, trainable(agent))
    agent._restart_from_base()
    assert same(base, trainable(agent)) and not agent.policy.optimizer.state


def test_star_rationalization_trains_on_the_prompt_without_the_hint(tiny_dir, tiny_lm):
    """The reward accepts any completion whose prompt holds the hint, so only hinted samples pass:
    every prompt is rationalized, and each training row's prompt is the unhinted prompt."""
    tokenizer = tiny_lm[1]
    questions = ["how many apples does tom have", "how many cats", "how many dogs does tom have"]

    def hint_only(completions, references, prompts=None):
        return np.array([float("step" in p) for p in prompts], dtype=np.float32)

    task = Task(
        questions=questions,
        references=["a #### 7", "b #### 3", "c #### 5"],
        reward=hint_only,
        name="h",
        chat_template=False,
    )
    env = make_env(tokenizer, num_envs=6, group=2, task=task)
    template = "{question} step {answer}"

    def hint_env_fn(indices, seed):
        return hinted_vec_env(env, indices, seed, hint_template=template)

    agent = STaR(
        "CausalLMPolicy",
        env,
        threshold=1.0,
        rationalize=True,
        hint_env_fn=hint_env_fn,
        batch_size=2,
        seed=0,
        learning_rate=1e-3,
        policy_kwargs=dict(model=str(tiny_dir), lora=LORA),
    )
    agent.learn(total_iterations=1)
    stats = agent.last_iteration_stats
    groups = sorted({info["index"] for info in agent.episodes.infos})
    assert stats["star/kept"] == 0 and stats["star/rationalized"] == len(groups) == agent.num_targets()
    hint_id = tokenizer.convert_tokens_to_ids("step")
    assert hint_id != tokenizer.unk_token_id
    unhinted = {tuple(tokenizer(questions[g]).input_ids) for g in groups}
    for row in range(agent.num_targets()):
        prompt = agent.targets.prompt_ids(row)
        assert hint_id not in prompt and tuple(prompt) in unhinted
    # The hinted env itself: row j is indices[j] with the hint, scored by the same reward.
    hinted = hint_env_fn([2, 0], 0)
    obs = hinted.reset()
    texts = [tokenizer.decode(ids[mask.astype(bool)]) for ids, mask in zip(obs["input_ids"], obs["attention_mask"])]
    assert texts == ["how many dogs does tom have step 5", "how many apples does tom have step 7"]
    assert gold_answer({"answer": 1, "choices": ["x", "y"]}) == "B. y" and gold_answer({"code": "x"}) is None
    with pytest.raises(ValueError, match="hint_env_fn"):
        STaR("CausalLMPolicy", env, rationalize=True, policy_kwargs=dict(model=str(tiny_dir)))


# -- DPO and KTO -----------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_round_builds_pairs_and_moves_the_implicit_rewards(loss_type, tiny_dir, tiny_lm):
    agent = make(
        DPO, tiny_dir, tiny_lm[1], beta=0.5, loss_type=loss_type, n_epochs=3, pair_strategy="all", learning_rate=1e-2
    )
    agent.learn(total_iterations=1)
    stats = agent.last_iteration_stats
    assert stats["dpo/pairs"] == agent.num_targets() > 0
    rewards = agent.episodes.env_rewards
    for chosen, rejected in agent.pairs.tolist():  # pairs index the kept rows; check them by text
        assert chosen != rejected
    assert all(math.isfinite(v) for v in stats.values())
    # After training on its pairs, the policy prefers chosen over rejected relative to the reference.
    with torch.no_grad():
        rows, pairs = agent.rows, agent.pairs
        logps = (sequences.log_probs(agent.policy, rows) * rows.mask).sum(-1)
        margin = (logps - agent.ref_logps)[pairs[:, 0]] - (logps - agent.ref_logps)[pairs[:, 1]]
    assert float(margin.mean()) > 0
    assert rewards.shape[0] == 8


def test_dpo_needs_groups_and_a_round_without_pairs_is_skipped(tiny_dir, tiny_lm):
    with pytest.raises(ValueError, match="completions_per_prompt >= 2"):
        make(DPO, tiny_dir, tiny_lm[1], group=1)
    constant = echo_task(reward=lambda c, r, p=None: np.ones(len(c), np.float32))
    agent = DPO(
        "CausalLMPolicy",
        make_env(tiny_lm[1], task=constant),
        batch_size=4,
        seed=0,
        policy_kwargs=dict(model=str(tiny_dir), lora=LORA),
    )
    before = trainable(agent)
    agent.learn(total_iterations=1)
    assert agent.last_iteration_stats["dpo/pairs"] == 0.0 and agent.last_iteration_stats["train/skipped_round"] == 1
    assert same(before, trainable(agent))


def test_kto_round_and_full_fine_tuning_reference(tiny_dir, tiny_lm):
    agent = make(KTO, tiny_dir, tiny_lm[1], lora=None, desirable_threshold=0.2, beta=0.5, learning_rate=1e-3)
    assert agent.policy.reference_model is not None  # full fine-tuning: a frozen copy is the reference
    agent.learn(total_iterations=1)
    stats = agent.last_iteration_stats
    labels = agent.labels.numpy()
    assert stats["kto/desirable_fraction"] == pytest.approx(labels.mean())
    assert np.array_equal(labels, agent.episodes.env_rewards.numpy() >= 0.2)
    assert "kto/kl" in stats and stats["kto/kl"] >= 0 and all(math.isfinite(v) for v in stats.values())
    # The mismatched rows pair each prompt with another prompt's completion.
    groups = [info["index"] for info in agent.episodes.infos]
    for i in range(len(agent.rows)):
        partner = agent.mismatched.completion_ids(i)
        assert agent.mismatched.prompt_ids(i) == agent.rows.prompt_ids(i)
        assert partner in [agent.rows.completion_ids(j) for j in range(len(agent.rows)) if groups[j] != groups[i]]


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (STaR, dict(threshold=0.0, from_base=True)),
        (DPO, dict(pair_strategy="all")),
        (KTO, dict(desirable_threshold=0.2)),
    ],
)
def test_resume_mid_rounds_is_bit_exact(cls, kwargs, tiny_dir, tiny_lm, tmp_path):
    """4 rounds straight == 2 rounds, save, load (stray RNG use in between), 2 more."""
    tokenizer = tiny_lm[1]
    straight = make(cls, tiny_dir, tokenizer, seed=1, **kwargs)
    torch.manual_seed(123)
    straight.learn(total_iterations=4)
    first = make(cls, tiny_dir, tokenizer, seed=1, **kwargs)
    torch.manual_seed(123)
    first.learn(total_iterations=2)
    first.save(tmp_path / "half")
    del first
    torch.manual_seed(999)
    np.random.seed(5)
    resumed = cls.load(tmp_path / "half", env=make_env(tokenizer, seed=77, task=echo_task(reward=digit_fraction)))
    assert resumed.iteration == 2
    resumed.learn(total_iterations=4, reset_num_timesteps=False)
    assert resumed.iteration == 4 and resumed.num_timesteps == straight.num_timesteps
    assert same(trainable(straight), trainable(resumed))


def test_every_round_agent_is_a_scored_rollout_algorithm():
    assert all(issubclass(cls, ScoredRolloutAlgorithm) for cls in (SFT, STaR, DPO, KTO))


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (STaR, dict(threshold=0.5, filter_on="reward", from_base=False)),
        (DPO, dict(beta=0.3, pair_strategy="all")),
        (KTO, dict(desirable_threshold=0.3, beta=0.5)),
    ],
)
def test_each_round_agent_learns_the_synthetic_task(cls, kwargs, tiny_dir, tiny_lm):
    """reward = fraction of digit words: the untrained model's is about 0.2 (0.20–0.21 over the first
    three rounds, single batches 0.14–0.24), so the start bound only says nothing is solved yet;
    each agent must raise it by 0.2, and to more than 0.45."""
    env = make_env(tiny_lm[1], num_envs=16, task=echo_task(reward=digit_fraction))
    agent = cls(
        "CausalLMPolicy",
        env,
        seed=0,
        batch_size=8,
        n_epochs=2,
        learning_rate=3e-3,
        policy_kwargs=dict(model=str(tiny_dir)),
        **kwargs,
    )
    track = score_tracker()
    agent.learn(total_iterations=15, callback=track)
    start, end = np.mean(track.scores[:3]), np.mean(track.scores[-3:])
    assert start < 0.25 and end > start + 0.2 and end > 0.45, track.scores


def test_sft_prompts_are_the_envs_own_tokens_with_the_embedded_chat_template(smollm):
    """SFT renders each question through the env's task and the tokenizer's chat template: its
    prompt ids equal the GSM8K env's, token for token."""
    import lm_envs

    model, tokenizer = smollm
    env = lm_envs.make_vec(
        "lm_envs/GSM8K-v0", 2, tokenizer, split="test", max_new_tokens=8, vocab_size=model.config.vocab_size, limit=3
    )
    task = env.task
    assert task.uses_chat_template(tokenizer)
    prompts, completions = sequences.encode_pairs(task, tokenizer, task.questions, task.references, 512, 512)
    for i in range(len(task)):
        assert prompts[i] == env.batch.encode_prompt(i)[0].tolist()
        assert completions[i][-1] == tokenizer.eos_token_id
        assert tokenizer.decode(completions[i][:-1]) == task.references[i]


# -- multi-turn episodes, the full softmax, token-weighted accumulation, STaR's growing set --------------
def varied_replies(attempts, references, turns):
    """A reply of 1 to 4 words (by data row and turn) and a score that depends on the attempt."""
    return [
        Reply(" ".join(["a"] * (1 + (int(r) + t) % 4)), score=digit_fraction([a], [r])[0], chat=False)
        for a, r, t in zip(attempts, references, turns)
    ]


def multi_turn_env(tokenizer, num_envs=8, group=4, seed=0):
    task = dataclasses.replace(echo_task(reward=digit_fraction), respond=varied_replies)
    return TokenVecEnv(
        task,
        tokenizer,
        num_envs=num_envs,
        max_new_tokens=9,
        max_prompt_tokens=16,
        max_turns=3,
        max_turn_tokens=3,
        max_injected_tokens=24,
        seed=seed,
        completions_per_prompt=group,
    )


def test_sequences_split_multi_turn_episodes_at_the_envs_prompt_width(tiny_dir, tiny_lm):
    """A multi-turn row is its prompt (the env's first 16 columns), then a completion of policy and
    injected tokens; rebuilt from ids with its policy mask it scores exactly as the rollout did."""
    agent = make(STaR, tiny_dir, tiny_lm[1], threshold=0.0)
    from agents.rollout import collect_episodes

    torch.manual_seed(0)
    episodes, _ = collect_episodes(agent.policy, multi_turn_env(tiny_lm[1]))
    rows = sequences.from_episodes(episodes)
    assert rows.prompt_width == episodes.prompt_width == 16
    injected = 0
    for i in range(len(rows)):
        attended = episodes.attention_mask[i].bool()
        assert rows.prompt_ids(i) == episodes.input_ids[i, :16][attended[:16]].tolist()
        assert rows.completion_ids(i) == episodes.input_ids[i, 16:][attended[16:]].tolist()
        policy = rows.completion_policy_mask(i)
        assert sum(policy) == int(episodes.action_mask[i].sum())
        injected += len(policy) - sum(policy)
    assert injected > 0  # the env spoke
    prompts, completions, masks = sequences.rows_of([rows])
    rebuilt = sequences.Sequences.from_ids(prompts, completions, agent.pad_id, policy_masks=masks)
    assert sequences.as_keys(rebuilt) == sequences.as_keys(rows)
    with torch.no_grad():
        scored = sequences.log_probs(agent.policy, rebuilt)
    torch.testing.assert_close(scored[rebuilt.mask], episodes.log_probs[episodes.action_mask], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="one 0/1 entry per completion token"):
        sequences.Sequences.from_ids(prompts[:1], completions[:1], agent.pad_id, policy_masks=[[1]])


@pytest.mark.parametrize("cls", [SFT, STaR, DPO, KTO])
def test_round_agents_train_only_on_policy_tokens_of_multi_turn_episodes(cls, tiny_dir, tiny_lm):
    tokenizer = tiny_lm[1]
    settings = {
        SFT: dict(dataset=[{"prompt": q, "completion": "7 7 7"} for q in echo_task().questions]),
        STaR: dict(threshold=0.0),
        DPO: dict(pair_strategy="all"),
        KTO: dict(desirable_threshold=0.2),
    }[cls]
    env = multi_turn_env(tokenizer, group=1 if cls is SFT else 4)
    agent = cls(
        "CausalLMPolicy",
        env,
        batch_size=4,
        micro_batch_size=2,
        seed=0,
        learning_rate=1e-3,
        policy_kwargs=dict(model=str(tiny_dir), lora=LORA),
        **settings,
    )
    agent.learn(total_iterations=1)
    assert all(math.isfinite(v) for v in agent.last_iteration_stats.values())
    if cls is SFT:  # data rows: every completion token is the policy's
        assert (
            int(agent.targets.policy_mask.sum())
            == int(agent.targets.mask.sum())
            == 3 * len(agent.targets) + len(agent.targets)
        )  # "7 7 7" and EOS
        return
    episodes = sequences.from_episodes(agent.episodes)
    rollout = {key: i for i, key in enumerate(sequences.as_keys(episodes))}
    if cls is STaR:  # each target is a rollout row, with its injected tokens as context only
        targets = sequences.as_keys(agent.targets)
        assert targets and all(key in rollout for key in targets)
        assert any(0 in mask for _, mask in targets)
        assert int(agent.targets.lengths.sum()) == sum(sum(mask) for _, mask in targets)
    elif cls is DPO:  # pairs never join identical completions; reference log-probs are the rollout's
        keys = sequences.as_keys(agent.rows)
        assert agent.num_targets() > 0 and all(keys[c] != keys[r] for c, r in agent.pairs.tolist())
        rollout_sums = (agent.episodes.log_probs * agent.episodes.action_mask).sum(-1)
        expected = torch.stack([rollout_sums[rollout[key]] for key in keys])
        torch.testing.assert_close(agent.ref_logps, expected, atol=1e-4, rtol=1e-4)
    else:  # KTO: each mismatched row is another prompt's whole completion, policy mask included
        from agents import preference_math as pm

        partners = pm.mismatched_partners([info["index"] for info in agent.episodes.infos])
        for i, j in enumerate(partners):
            assert agent.mismatched.completion_ids(i) == episodes.completion_ids(j)
            assert agent.mismatched.completion_policy_mask(i) == episodes.completion_policy_mask(j)
            assert int(agent.mismatched.lengths[i]) == int(agent.episodes.action_mask[j].sum())


def test_offline_losses_score_data_with_the_full_softmax_when_top_k_is_set(tiny_dir, tiny_lm):
    """A gold token outside the policy's top-k keeps a finite log-prob: SFT trains on it."""
    data = [{"prompt": q, "completion": "7 7 7 zebra"} for q in echo_task().questions]
    agent = SFT(
        "CausalLMPolicy",
        make_env(tiny_lm[1], group=1),
        dataset=data,
        batch_size=4,
        seed=0,
        policy_kwargs=dict(model=str(tiny_dir), top_k=2),
    )
    agent.learn(total_iterations=1)
    assert math.isfinite(agent.last_iteration_stats["loss/policy"])
    with torch.no_grad():
        truncated = sequences.log_probs(agent.policy, agent.targets)
        agent.policy.top_k = 0
        full = sequences.log_probs(agent.policy, agent.targets)
    assert torch.equal(truncated, full) and torch.isfinite(full[agent.targets.mask]).all()


def first_step_gradients(agent) -> dict:
    grads = {}
    step = agent.policy.optimizer.step

    def record(*args, **kwargs):
        if not grads:
            grads.update({n: p.grad.detach().clone() for n, p in agent.policy.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    agent.policy.optimizer.step = record
    return grads


def test_sft_minibatch_loss_is_a_token_mean_whatever_the_micro_batches(tiny_dir, tiny_lm):
    """Completions of 1 to 8 tokens: micro-batches of 1, 2 or 4 give the gradient of the
    minibatch's token sum over its tokens (TRL's num_items_in_batch), not a mean of row means."""
    data = [{"prompt": q, "completion": " ".join(["7"] * (1 + i % 7))} for i, q in enumerate(echo_task().questions)]
    gradients = []
    for micro in (1, 2, 4):
        agent = SFT(
            "CausalLMPolicy",
            make_env(tiny_lm[1], group=1),
            dataset=data,
            batch_size=4,
            micro_batch_size=micro,
            seed=0,
            policy_kwargs=dict(model=str(tiny_dir)),
        )
        gradients.append(first_step_gradients(agent))
        agent.learn(total_iterations=1)
    for other in gradients[:2]:
        for name, grad in gradients[2].items():
            torch.testing.assert_close(other[name], grad, atol=1e-6, rtol=1e-5)
    # And it is the token mean of the minibatch, computed directly.
    check = SFT(
        "CausalLMPolicy",
        make_env(tiny_lm[1], group=1),
        dataset=data,
        batch_size=4,
        seed=0,
        policy_kwargs=dict(model=str(tiny_dir)),
    )
    prompts, completions = check.encoded()
    picked = check._next_examples()  # the first round's examples, in its order
    targets = sequences.Sequences.from_ids([prompts[i] for i in picked], [completions[i] for i in picked], check.pad_id)
    order = torch.randperm(len(targets), generator=check.shuffle_generator)[:4]  # its first minibatch
    log_probs = sequences.log_probs(check.policy, targets, order)
    mask = targets.mask[order]
    (-(log_probs * mask).sum() / mask.sum()).backward()
    torch.nn.utils.clip_grad_norm_(check.policy.parameters(), check.max_grad_norm)  # as the step does
    name = next(iter(gradients[2]))
    torch.testing.assert_close(
        dict(check.policy.named_parameters())[name].grad, gradients[2][name], atol=1e-6, rtol=1e-5
    )


def test_star_from_base_retrains_on_everything_kept_so_far_with_a_fresh_schedule(tiny_dir, tiny_lm):
    agent = make(
        STaR,
        tiny_dir,
        tiny_lm[1],
        threshold=0.2,
        filter_on="reward",
        from_base=True,
        learning_rate={"schedule": "linear", "start": 1e-2, "end": 0.0},
    )
    rates = []
    step = agent.policy.optimizer.step

    def record(*args, **kwargs):
        rates.append(agent.policy.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    agent.policy.optimizer.step = record
    agent.learn(total_iterations=1)
    first = set(sequences.as_keys(agent.targets))
    first_rates, rates[:] = list(rates), []
    assert first and len(first_rates) == math.ceil(len(first) / 4)
    agent.learn(total_iterations=2, reset_num_timesteps=False)
    second = sequences.as_keys(agent.targets)
    assert first < set(second) and len(second) == len(set(second))  # the union, de-duplicated
    assert agent.last_iteration_stats["star/train_set"] == len(second) > agent.last_iteration_stats["star/kept"]
    for round_rates in (first_rates, rates):  # each retrain runs the schedule from its start
        assert round_rates[0] == pytest.approx(1e-2) and round_rates == sorted(round_rates, reverse=True)
    assert len(rates) == math.ceil(len(second) / 4)


def test_finalize_writes_each_agents_final_form(tiny_dir, tiny_lm, tmp_path):
    """Online agents write their trainable weights, round agents a plain model directory:
    run_ppo calls ``finalize`` and never asks which class it has."""
    from agents import GRPO
    from policies import load_lm

    star = make(STaR, tiny_dir, tiny_lm[1], threshold=0.0)
    star.finalize(tmp_path / "star")
    model, tokenizer = load_lm(str(tmp_path / "star"))  # loads as a plain model, LoRA merged in
    assert model.config.vocab_size == star.policy.model.config.vocab_size and tokenizer is not None
    grpo = GRPO("CausalLMPolicy", make_env(tiny_lm[1]), policy_kwargs=dict(model=str(tiny_dir), lora=LORA))
    grpo.finalize(tmp_path / "grpo")
    assert (tmp_path / "grpo" / "adapter_config.json").exists() and not (tmp_path / "grpo" / "config.json").exists()
