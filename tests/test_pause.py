"""PauseLMPolicy, add_pause_token, the SFT warm-up and pause metrics, on tiny random Llamas."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import WORDS, echo_task

from agents import PPO, collect_episodes, evaluate_policy
from lm_envs import TokenVecEnv
from policies import PauseLMPolicy, add_pause_token, load_lm, load_pause_head
from policies.pause import PAUSE, pause_joint_log_probs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def untied_model(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
        )
    ).eval()


@pytest.fixture(scope="session")
def pause_dir(tiny_dir, tmp_path_factory) -> Path:
    """The tiny model and tokenizer with the pause token added, saved (no pause head)."""
    directory = tmp_path_factory.mktemp("tiny-pause")
    model, tokenizer = load_lm(str(tiny_dir))
    add_pause_token(model, tokenizer)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def make(directory, num_envs=4, max_new_tokens=8, seed=0, model=None, **policy_kwargs):
    loaded, tokenizer = load_lm(str(directory))
    model = loaded if model is None else model
    add_pause_token(model, tokenizer)  # as run_ppo does: the env's action space needs the token
    env = TokenVecEnv(
        echo_task(),
        tokenizer,
        num_envs=num_envs,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=16,
        seed=seed,
        vocab_size=model.config.vocab_size,
    )
    policy = PauseLMPolicy(
        env.observation_space, env.action_space, lambda _: 1e-3, model=model, tokenizer=tokenizer, **policy_kwargs
    )
    return env, policy


def set_pause_bias(policy, logit: float) -> None:
    """Make the head state-independent: p(pause) = sigmoid(logit)."""
    with torch.no_grad():
        policy.pause_head.weight.zero_()
        policy.pause_head.bias.copy_(torch.tensor([logit, 0.0]))


def generated_pauses(episodes, pause_id):
    return ((episodes.input_ids == pause_id) & episodes.policy_mask.bool()).sum(-1)


# -- the token ------------------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False])
def test_add_pause_token_resizes_and_matches_row_statistics(tiny_dir, tied, tmp_path):
    _, tokenizer = load_lm(str(tiny_dir))
    vocab = len(tokenizer)
    model = load_lm(str(tiny_dir))[0] if tied else untied_model(vocab)
    pause_id = add_pause_token(model, tokenizer)
    assert pause_id == vocab and len(tokenizer) == vocab + 1 and model.config.vocab_size == vocab + 1
    embed, output = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert embed.shape[0] == vocab + 1 and output.shape[0] == vocab + 1
    assert (output is embed) == tied
    for weight in {id(embed): embed.detach(), id(output): output.detach()}.values():
        old, row = weight[:vocab], weight[pause_id]
        # Per-dimension mean/std of the existing rows: the new row looks like one of them.
        assert abs(float(row.mean() - old.mean())) < 3 * float(old.std()) / np.sqrt(row.numel())
        assert 0.6 < float(row.std() / old.std()) < 1.4
        assert float(row.norm()) > 0
    # Idempotent: a second call changes nothing.
    before = embed.detach().clone()
    assert add_pause_token(model, tokenizer) == pause_id
    assert torch.equal(model.get_input_embeddings().weight, before)
    with pytest.raises(ValueError, match="already has pause token"):  # another token/tokenizer: no silent mix
        add_pause_token(model, load_lm(str(tiny_dir))[1], "<|other|>")
    # A special token: encoded as one id, stripped by skip_special_tokens (as the env decodes).
    ids = tokenizer("7 <|pause|> 8", add_special_tokens=False)["input_ids"]
    assert pause_id in ids and tokenizer.decode(ids, skip_special_tokens=True).split() == ["7", "8"]
    # A save_pretrained directory carries the token and the id.
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded, retok = load_lm(str(tmp_path))
    assert reloaded.config.pause_token_id == pause_id and retok.convert_tokens_to_ids("<|pause|>") == pause_id


# -- the distribution -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "policy_kwargs",
    [{}, {"temperature": 0.7, "head_temperature": 2.0}, {"top_k": 5}, {"top_p": 0.8}, {"max_pauses": 1}],
)
def test_joint_probabilities_sum_to_one(pause_dir, policy_kwargs):
    env, policy = make(pause_dir, **policy_kwargs)
    pause_id = policy.pause_token_id
    torch.manual_seed(0)
    hidden = torch.randn(6, 32)
    with torch.no_grad():
        policy.pause_head.weight.normal_()
    input_ids = torch.full((6, 5), 7)
    input_ids[3:, 2] = pause_id  # rows 3-5 already paused once
    rows, columns = torch.arange(6), torch.full((6,), 4)
    joint = policy.action_log_probs(hidden, policy.model, input_ids, rows, columns)
    assert joint.shape == (6, env.action_space.n)
    assert torch.allclose(joint.exp().sum(-1), torch.ones(6), atol=1e-5)
    head = policy.head_log_probs(hidden)
    capped = torch.zeros(6, dtype=torch.bool)
    if policy_kwargs.get("max_pauses") == 1:
        capped[3:] = True
    assert torch.allclose(joint[~capped, pause_id], head[~capped, PAUSE], atol=1e-6)
    assert torch.isneginf(joint[capped, pause_id]).all()
    # Tokens: p_head(LM) · p_LM(token), with the LM's own pause logit masked.
    lm = policy.log_probs_from_logits(
        policy.model.get_output_embeddings()(hidden).masked_fill(
            torch.arange(env.action_space.n) == pause_id, float("-inf")
        )
    )
    expected = lm + torch.where(capped, 0.0, head[:, 1 - PAUSE])[:, None]
    tokens = torch.arange(env.action_space.n) != pause_id
    assert torch.allclose(joint[:, tokens], expected[:, tokens], atol=1e-5)


def test_pause_joint_log_probs_masks_where_not_allowed():
    lm = torch.log_softmax(torch.tensor([[1.0, 2.0, float("-inf")]]), -1).repeat(2, 1)
    head = torch.log(torch.tensor([[0.25, 0.75], [0.25, 0.75]]))
    joint = pause_joint_log_probs(lm, head, 2, torch.tensor([True, False]))
    assert torch.allclose(joint[0].exp(), torch.cat([lm[0, :2].exp() * 0.75, torch.tensor([0.25])]))
    assert torch.allclose(joint[1, :2], lm[1, :2]) and torch.isneginf(joint[1, 2])


def test_zero_head_probability_never_pauses(pause_dir):
    env, policy = make(pause_dir, num_envs=8, max_new_tokens=10)
    set_pause_bias(policy, 5.0)  # control: a head that pauses a lot does pause
    torch.manual_seed(0)
    episodes, _ = collect_episodes(policy, env)
    assert generated_pauses(episodes, policy.pause_token_id).sum() > 10
    set_pause_bias(policy, -1e4)
    for _ in range(3):
        episodes, _ = collect_episodes(policy, env)
        assert generated_pauses(episodes, policy.pause_token_id).sum() == 0
        assert episodes.action_mask.any(1).all()


def test_max_pauses_masks_pause(pause_dir):
    env, policy = make(pause_dir, num_envs=6, max_new_tokens=8, max_pauses=3)
    set_pause_bias(policy, 12.0)  # p(pause) ≈ 1 until the cap
    torch.manual_seed(0)
    episodes, _ = collect_episodes(policy, env)
    counts = generated_pauses(episodes, policy.pause_token_id)
    assert (counts == 3).all(), counts
    P = env.batch.max_prompt_tokens
    assert (episodes.input_ids[:, P : P + 3] == policy.pause_token_id).all()  # the first 3 steps pause
    out = policy.evaluate_actions(episodes.input_ids, episodes.attention_mask, episodes.policy_mask)
    assert torch.allclose(out.log_prob, episodes.log_probs[episodes.action_mask], atol=1e-4)
    env0, policy0 = make(pause_dir, num_envs=6, max_new_tokens=8, max_pauses=0)
    set_pause_bias(policy0, 12.0)
    episodes, _ = collect_episodes(policy0, env0)
    assert generated_pauses(episodes, policy0.pause_token_id).sum() == 0


@pytest.mark.parametrize(
    "policy_kwargs",
    [
        {},
        {"lora": LORA},
        {"max_pauses": 2, "temperature": 0.8},
        {"top_k": 6, "lora": LORA, "max_pauses": 1},
    ],
)
def test_rollout_log_probs_equal_teacher_forced(pause_dir, policy_kwargs):
    from agents.buffer import trim as _trim

    env, policy = make(pause_dir, initial_pause_probability=0.4, **policy_kwargs)
    torch.manual_seed(0)
    episodes, _ = collect_episodes(policy, env)
    assert generated_pauses(episodes, policy.pause_token_id).sum() > 0  # pauses are really exercised
    out = policy.evaluate_actions(episodes.input_ids, episodes.attention_mask, episodes.policy_mask)
    assert torch.allclose(out.log_prob, episodes.log_probs[episodes.action_mask], atol=1e-4)
    assert torch.allclose(out.values, episodes.values[episodes.action_mask], atol=1e-4)
    assert torch.isfinite(out.entropy).all() and (out.entropy >= 0).all()
    # The buffer trims columns: pauses are counted over the whole row prefix, so nothing moves.
    trimmed = policy.evaluate_actions(
        *_trim(episodes.input_ids[1:3], episodes.attention_mask[1:3], episodes.policy_mask[1:3])
    )
    assert torch.allclose(trimmed.log_prob, episodes.log_probs[1:3][episodes.action_mask[1:3]], atol=1e-4)
    reference = policy.evaluate_actions(
        episodes.input_ids, episodes.attention_mask, episodes.policy_mask, reference=True
    )
    # The reference is scored with the tempered, untruncated distribution (top-k would give it −inf
    # log-probs and an infinite KL); at init it equals the policy's own untruncated log-probs.
    policy.top_k = 0
    untruncated = policy.evaluate_actions(episodes.input_ids, episodes.attention_mask, episodes.policy_mask)
    assert torch.allclose(reference.log_prob, untruncated.log_prob, atol=1e-6)
    assert (reference.log_prob <= out.log_prob + 1e-6).all()  # truncation only moves mass onto kept tokens


@pytest.mark.parametrize("lora", [None, LORA])
def test_reference_is_the_starting_model_and_head(pause_dir, lora):
    env, policy = make(pause_dir, initial_pause_probability=0.4, lora=lora, max_pauses=3)
    torch.manual_seed(0)
    episodes, _ = collect_episodes(policy, env)
    args = (episodes.input_ids, episodes.attention_mask, episodes.policy_mask)
    reference = policy.evaluate_actions(*args, reference=True).log_prob
    with torch.no_grad():
        for param in policy.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    assert policy._scoring_reference is False
    assert (policy.evaluate_actions(*args).log_prob - reference).abs().max() > 1e-3
    assert torch.allclose(policy.evaluate_actions(*args, reference=True).log_prob, reference, atol=1e-6)


# -- training switches ----------------------------------------------------------------------------
def test_detach_pause_head_blocks_gradient_into_the_body(pause_dir):
    for detach in (False, True):
        env, policy = make(pause_dir, detach_pause_head=detach)
        ids = torch.tensor([[5, 9, 12, policy.pause_token_id, 7]])
        out = policy.model(input_ids=ids, output_hidden_states=True)
        hidden = out.hidden_states[-1][0]
        with torch.no_grad():
            policy.pause_head.weight.normal_()  # a zero weight would pass no gradient either way
        joint = policy.action_log_probs(hidden, policy.model, ids.expand(5, -1), torch.arange(5), torch.arange(5))
        joint[:, policy.pause_token_id].sum().backward()  # log p(pause) depends on the head only
        body = [p.grad for n, p in policy.model.named_parameters() if "layers" in n]
        body_norm = sum(float(g.norm()) for g in body if g is not None)
        assert float(policy.pause_head.weight.grad.norm()) > 0  # the head still learns
        assert (body_norm == 0) == detach, body_norm


def trainable(policy):
    return {n for n, p in policy.named_parameters() if p.requires_grad}


def test_freeze_switches_with_lora(tiny_dir):
    def build(**switches):
        tok = load_lm(str(tiny_dir))[1]
        m = untied_model(len(tok))
        add_pause_token(m, tok)
        env = TokenVecEnv(
            echo_task(), tok, num_envs=2, max_new_tokens=4, max_prompt_tokens=16, vocab_size=m.config.vocab_size
        )
        return PauseLMPolicy(
            env.observation_space, env.action_space, lambda _: 1e-3, model=m, tokenizer=tok, lora=LORA, **switches
        )

    default = trainable(build())
    lora_names = {n for n in default if "lora_" in n}
    assert lora_names and {n for n in default if "trainable_tokens_delta" in n}
    assert {"pause_head.weight", "pause_head.bias", "value_head.weight", "value_head.bias"} <= default
    assert not {n for n in default if "modules_to_save" in n or "reference" in n}
    assert len(default) == len(lora_names) + 5
    assert trainable(build(train_lora=False)) == default - lora_names
    assert trainable(build(train_pause_head=False)) == default - {"pause_head.weight", "pause_head.bias"}
    assert trainable(build(train_pause_embedding=False)) == {n for n in default if "trainable_tokens" not in n}
    lm_head = trainable(build(train_lm_head=True)) - default
    assert lm_head and all("lm_head.modules_to_save" in n for n in lm_head)
    embeddings = trainable(build(train_embeddings=True))
    added = embeddings - default
    assert added and all("embed_tokens.modules_to_save" in n for n in added)
    assert not {n for n in embeddings if "trainable_tokens" in n}  # the pause row trains within the matrix
    # The optimizer holds exactly the trainable parameters.
    policy = build(train_lora=False, train_lm_head=True)
    in_optimizer = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in policy.parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"train_lm_head": True},
        {"train_pause_embedding": False},
        {"train_pause_head": False},
        {"train_embeddings": True},
    ],
)
def test_freeze_switches_full_fine_tuning_change_exactly_what_they_say(tiny_dir, switches):
    tok = load_lm(str(tiny_dir))[1]
    model = untied_model(len(tok))
    pause_id = add_pause_token(model, tok)
    env = TokenVecEnv(
        echo_task(), tok, num_envs=4, max_new_tokens=6, max_prompt_tokens=16, vocab_size=model.config.vocab_size
    )
    policy = PauseLMPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 1e-2,
        model=model,
        tokenizer=tok,
        initial_pause_probability=0.5,
        **switches,
    )
    s = {**policy.switches}
    names = trainable(policy)
    assert ("model.lm_head.weight" in names) == s["train_lm_head"]
    assert ("model.model.embed_tokens.weight" in names) == s["train_embeddings"]
    assert ("pause_embedding" in names) == (s["train_pause_embedding"] and not s["train_embeddings"])
    assert ("pause_head.weight" in names) == s["train_pause_head"]
    assert "model.model.layers.0.mlp.up_proj.weight" in names  # full fine-tuning: the body trains
    assert not {n for n in names if n.startswith(("reference_", "reference_model"))}
    # One optimizer step on sequences that contain pauses: frozen parameters do not move.
    torch.manual_seed(0)
    episodes, _ = collect_episodes(policy, env)
    assert generated_pauses(episodes, pause_id).sum() > 0
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    out = policy.evaluate_actions(episodes.input_ids, episodes.attention_mask, episodes.policy_mask)
    (-(out.log_prob.sum()) + out.values.pow(2).sum()).backward()
    policy.optimizer.step()
    moved = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    assert moved <= names
    expected = {"model.lm_head.weight"} if s["train_lm_head"] else set()
    expected |= {"pause_head.weight"} if s["train_pause_head"] else set()
    expected |= {"pause_embedding"} if s["train_pause_embedding"] and not s["train_embeddings"] else set()
    assert expected <= moved, (expected, moved)


def test_tied_embeddings_need_matching_switches(pause_dir):
    with pytest.raises(ValueError, match="ties"):
        make(pause_dir, train_lm_head=True)
    with pytest.raises(ValueError, match="pause row"):
        make(pause_dir, train_embeddings=True, train_lm_head=True, train_pause_embedding=False)
    _, policy = make(pause_dir, lora=LORA, train_embeddings=True, train_lm_head=True)
    shared = [n for n in trainable(policy) if "modules_to_save" in n]
    assert len(shared) == 1  # one shared, still tied, trainable matrix


def test_env_without_the_pause_token_is_a_clear_error(tiny_dir):
    model, tokenizer = load_lm(str(tiny_dir))
    env = TokenVecEnv(
        echo_task(), tokenizer, num_envs=1, max_new_tokens=4, max_prompt_tokens=16, vocab_size=model.config.vocab_size
    )
    with pytest.raises(ValueError, match="add the pause token first"):
        PauseLMPolicy(env.observation_space, env.action_space, lambda _: 1e-3, model=model, tokenizer=tokenizer)


# -- saving and loading ---------------------------------------------------------------------------
@pytest.mark.parametrize("lora,base", [(None, "pause"), (LORA, "pause"), (LORA, "plain")])
def test_save_load_round_trip(pause_dir, tiny_dir, lora, base, tmp_path):
    start = pause_dir if base == "pause" else tiny_dir  # "plain": the token is added at start-up
    env, policy = make(start, lora=lora, max_pauses=3, initial_pause_probability=0.3)
    torch.manual_seed(0)
    episodes, _ = collect_episodes(policy, env)
    with torch.no_grad():
        for param in policy.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    args = (episodes.input_ids, episodes.attention_mask, episodes.policy_mask)
    trained = policy.evaluate_actions(*args).log_prob
    policy.save_trainable(tmp_path / "trainable")
    meta = json.loads((tmp_path / "trainable" / "pause_config.json").read_text())
    assert meta["pause_token"] == "<|pause|>" and meta["pause_token_id"] == policy.pause_token_id
    assert (tmp_path / "trainable" / "pause_head.pt").exists() and (tmp_path / "trainable" / "tokenizer.json").exists()
    if lora:  # only what training changed: no copy of the (resized) embedding matrix
        assert (tmp_path / "trainable" / "adapter_model.safetensors").stat().st_size < 8_000
    _, fresh = make(start, lora=lora, max_pauses=3, initial_pause_probability=0.3)
    assert (fresh.evaluate_actions(*args).log_prob - trained).abs().max() > 1e-3
    fresh.load_trainable(tmp_path / "trainable")
    assert torch.allclose(fresh.evaluate_actions(*args).log_prob, trained, atol=1e-5)
    # A self-contained directory (LoRA merged): PauseLMPolicy(model=dir) reloads model, token and head.
    policy.save_pretrained(tmp_path / "pretrained")
    obs, act = env.observation_space, env.action_space
    again = PauseLMPolicy(obs, act, lambda _: 1e-3, model=str(tmp_path / "pretrained"), max_pauses=3)
    assert torch.allclose(again.evaluate_actions(*args).log_prob, trained, atol=1e-5)
    model, tokenizer = load_lm(str(tmp_path / "pretrained"))
    head = load_pause_head(tmp_path / "pretrained")
    assert tokenizer.convert_tokens_to_ids("<|pause|>") == model.config.pause_token_id == policy.pause_token_id
    assert torch.equal(head.weight, policy.pause_head.weight.detach())
    # ...and so does a loaded model object (the head is found next to it).
    third = PauseLMPolicy(obs, act, lambda _: 1e-3, model=model, max_pauses=3)
    assert torch.allclose(third.evaluate_actions(*args).log_prob, trained, atol=1e-5)


# -- PPO ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lora", [None, LORA])
def test_ppo_first_minibatch_ratio_is_one(pause_dir, lora):
    tokenizer = load_lm(str(pause_dir))[1]
    env = TokenVecEnv(
        echo_task(), tokenizer, num_envs=8, max_new_tokens=6, max_prompt_tokens=16, seed=0, vocab_size=len(tokenizer)
    )
    agent = PPO(
        "PauseLMPolicy",
        env,
        learning_rate=3e-3,
        batch_size=4,
        micro_batch_size=2,
        n_epochs=2,
        kl_coef=0.01,
        seed=0,
        policy_kwargs=dict(model=str(pause_dir), lora=lora, max_pauses=2, initial_pause_probability=0.3),
    )
    assert isinstance(agent.policy, PauseLMPolicy)
    agent.learn(8 * 6)
    stats = agent.last_iteration_stats
    assert generated_pauses(agent.buffer, agent.policy.pause_token_id).sum() > 0
    assert stats["policy/first_minibatch_ratio_max_dev"] < 1e-4
    assert stats["policy/first_minibatch_approxkl"] < 1e-6
    assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-5)


def test_ppo_checkpoint_reloads_the_pause_policy(pause_dir, tmp_path):
    """A pause run's checkpoint comes back as a PauseLMPolicy with the same weights (resume works)."""
    tokenizer = load_lm(str(pause_dir))[1]
    env = TokenVecEnv(
        echo_task(), tokenizer, num_envs=4, max_new_tokens=4, max_prompt_tokens=16, seed=0, vocab_size=len(tokenizer)
    )
    agent = PPO(
        "PauseLMPolicy",
        env,
        batch_size=4,
        seed=0,
        kl_coef=0.01,
        learning_rate=3e-3,
        policy_kwargs=dict(model=str(pause_dir), lora=LORA, max_pauses=2),
    )
    agent.learn(4 * 4)
    agent.save(tmp_path / "ckpt")
    loaded = PPO.load(tmp_path / "ckpt", env=env)
    assert isinstance(loaded.policy, PauseLMPolicy) and loaded.policy.max_pauses == 2
    for (name, a), b in zip(agent.policy.state_dict().items(), loaded.policy.state_dict().values()):
        assert torch.equal(a, b), name


# -- SFT warm-up ----------------------------------------------------------------------------------
TARGET_P = 0.5


@pytest.fixture(scope="module")
def sft_run(tiny_dir, tmp_path_factory):
    """A short LoRA SFT run (kl loss, p = 0.5) on pause-augmented synthetic answers."""
    import sft_warmup

    from policies.pause_data import augment_rows

    root = tmp_path_factory.mktemp("sft")
    rng = np.random.default_rng(0)
    rows = [
        {"question": " ".join(rng.choice(WORDS[6:16], 4)), "answer": " ".join(rng.choice(WORDS[6:40], 10)) + "\n#### 7"}
        for _ in range(32)
    ]
    augmented, _ = augment_rows(rows, pause_probability=TARGET_P, seed=0)
    (root / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in augmented))
    summary = sft_warmup.main(
        [
            f"data={root / 'data.jsonl'}",
            f"model={tiny_dir}",
            f"output_dir={root / 'out'}",
            "pause_head_loss=kl",
            f"pause_probability={TARGET_P}",
            "initial_pause_probability=0.05",
            "lora.r=4",
            "lora.target_modules=[q_proj,v_proj]",
            "max_steps=25",
            "batch_size=8",
            "learning_rate=1e-2",
            "log_every=5",
            "progress_bar=false",
            "device=cpu",
        ]
    )
    return root, summary


def head_pause_rate(directory, data):
    """Mean p(pause) of the saved head over the target positions of the data."""
    import sft_warmup

    from policies.pause_data import load_rows

    model, tokenizer = load_lm(str(directory))
    head = load_pause_head(directory)
    examples = sft_warmup.encode_rows(load_rows(str(data)), tokenizer, "question", "answer", None, 256)
    batch = sft_warmup.collate(examples[:16], tokenizer.pad_token_id)
    with torch.no_grad():
        losses = sft_warmup.sft_losses(model, head, batch, model.config.pause_token_id, "kl", TARGET_P)
    return float(losses["head_pause_prob"])


def test_sft_raises_pause_rate_toward_target(sft_run):
    root, summary = sft_run
    final = root / "out" / "final"
    assert summary["first"]["pause/head_prob_mean"] == pytest.approx(0.05, abs=1e-3)
    rate = head_pause_rate(final, root / "data.jsonl")
    assert abs(rate - TARGET_P) < 0.15, rate  # from 0.05 to near p
    assert summary["last"]["loss/lm"] < summary["first"]["loss/lm"]
    assert list((root / "out" / "tb").glob("events.out.tfevents.*"))
    tokenizer = load_lm(str(final))[1]
    pause_id = json.loads((final / "pause_config.json").read_text())["pause_token_id"]
    assert pause_id == tokenizer.convert_tokens_to_ids("<|pause|>") == len(tokenizer) - 1


def test_sft_onehot_loss_moves_head_toward_observed_pauses(tiny_dir, sft_run, tmp_path):
    import sft_warmup

    root, _ = sft_run
    summary = sft_warmup.main(
        [
            f"data={root / 'data.jsonl'}",
            f"model={tiny_dir}",
            f"output_dir={tmp_path}",
            "pause_head_loss=onehot",
            "lora=null",
            "max_steps=15",
            "learning_rate=1e-2",
            "progress_bar=false",
            "device=cpu",
        ]
    )
    observed = summary["first"]["pause/target_rate"]
    assert 0.15 < observed < 0.45  # pauses after half the words, i.e. a fraction of all targets
    assert abs(summary["last"]["pause/head_prob_mean"] - observed) < abs(0.05 - observed) / 2


def test_rl_from_sft_checkpoint_starts_at_kl_zero(sft_run):
    root, _ = sft_run
    final = root / "out" / "final"
    model, tokenizer = load_lm(str(final))
    assert model.config.pause_token_id == tokenizer.convert_tokens_to_ids("<|pause|>")
    base = load_lm(json.loads((root / "out" / "sft_args.json").read_text())["model"])[0]
    name = "model.layers.0.self_attn.q_proj.weight"  # SFT really moved the model (its adapter is merged)
    assert (model.state_dict()[name] - base.state_dict()[name]).abs().max() > 1e-4
    env = TokenVecEnv(
        echo_task(),
        tokenizer,
        num_envs=8,
        max_new_tokens=6,
        max_prompt_tokens=16,
        seed=0,
        vocab_size=model.config.vocab_size,
    )
    agent = PPO(
        "PauseLMPolicy",
        env,
        learning_rate=3e-3,
        batch_size=4,
        kl_coef=0.05,
        seed=0,
        policy_kwargs=dict(model=str(final), lora=LORA),
    )
    policy = agent.policy
    assert torch.equal(policy.pause_head.weight.detach(), load_pause_head(final).weight)  # the warmed-up head
    agent.learn(8 * 6)
    assert agent.last_iteration_stats["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    assert generated_pauses(agent.buffer, policy.pause_token_id).sum() > 0
    # The reference is the SFT model itself (adapter merged, then disabled), not the pre-SFT base.
    buffer = agent.buffer
    args = (buffer.input_ids, buffer.attention_mask, buffer.policy_mask)
    reference = policy.evaluate_actions(*args, reference=True).log_prob
    plain = PauseLMPolicy(env.observation_space, env.action_space, lambda _: 0.0, model=str(final), reference=False)
    assert torch.allclose(reference, plain.evaluate_actions(*args).log_prob, atol=1e-5)


# -- evaluation -----------------------------------------------------------------------------------
def test_evaluation_counts_pauses_from_token_ids(pause_dir):
    env, policy = make(pause_dir, num_envs=4, max_new_tokens=8, initial_pause_probability=0.4)
    summary, samples = evaluate_policy(policy, env, 8, deterministic=False)
    pauses = [s["pauses"] for s in samples]
    assert sum(pauses) > 0 and all("<|pause|>" not in s["completion"] for s in samples)
    assert summary["pauses_mean"] == pytest.approx(np.mean(pauses))
    assert summary["pause_token_pct"] == pytest.approx(100 * sum(pauses) / sum(s["length"] for s in samples))
    correct = np.array([s["score"] > 0 for s in samples])  # echo task: no is_correct, score > 0
    for key, group in (("pauses_mean_correct", correct), ("pauses_mean_incorrect", ~correct)):
        expected = np.mean(np.array(pauses)[group]) if group.any() else float("nan")
        assert summary[key] == pytest.approx(expected, nan_ok=True)


def test_evaluate_script_pause_model_and_pause_checkpoint(pause_dir, sft_run, tmp_path):
    """experiments/evaluate.py picks the pause policy for a pause model and for a pause PPO checkpoint."""
    import evaluate

    root, _ = sft_run
    small = [
        "episodes=4",
        "env.num_envs=2",
        "env.kwargs.max_new_tokens=4",
        "env.kwargs.max_prompt_tokens=256",
        "deterministic=false",
    ]
    summary = evaluate.main(
        ["checkpoint=none", f"model={root / 'out' / 'final'}", *small, f"output_dir={tmp_path / 'sft_eval'}"]
    )
    for key in ("accuracy", "pauses_mean", "pauses_mean_correct", "pauses_mean_incorrect", "pause_token_pct"):
        assert key in summary, key
    samples = [json.loads(line) for line in (tmp_path / "sft_eval" / "samples.jsonl").read_text().splitlines()]
    assert summary["pauses_mean"] == pytest.approx(np.mean([s["pauses"] for s in samples]))
    # A PPO checkpoint of a PauseLMPolicy: evaluated with its trained head and adapter.
    tokenizer = load_lm(str(pause_dir))[1]
    env = TokenVecEnv(
        echo_task(), tokenizer, num_envs=4, max_new_tokens=4, max_prompt_tokens=16, seed=0, vocab_size=len(tokenizer)
    )
    agent = PPO(
        "PauseLMPolicy",
        env,
        batch_size=4,
        seed=0,
        kl_coef=0.0,
        policy_kwargs=dict(model=str(pause_dir), lora=LORA, max_pauses=2),
    )
    with torch.no_grad():
        agent.policy.pause_head.weight.normal_()
    agent.save(tmp_path / "ckpt")
    args = evaluate.parse_args([f"checkpoint={tmp_path / 'ckpt'}", *small, f"output_dir={tmp_path / 'e'}"])
    model = load_lm(str(pause_dir))[0]
    policy = evaluate.load_policy(args, env, model)
    assert isinstance(policy, PauseLMPolicy) and policy.max_pauses == 2 and policy.uses_lora
    assert torch.equal(policy.pause_head.weight, agent.policy.pause_head.weight)


def test_peft_model_is_merged_so_the_reference_is_the_adapted_model(pause_dir):
    import peft

    model, tokenizer = load_lm(str(pause_dir))
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", **LORA))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    ids = torch.tensor([[5, 9, 12, 7, 20]])
    adapted = model(input_ids=ids).logits
    with model.disable_adapter():
        base = model(input_ids=ids).logits
    assert (adapted - base).abs().max() > 1e-2
    env = TokenVecEnv(
        echo_task(), tokenizer, num_envs=1, max_new_tokens=4, max_prompt_tokens=16, vocab_size=len(tokenizer)
    )
    policy = PauseLMPolicy(env.observation_space, env.action_space, lambda _: 1e-3, model=model, lora=LORA)
    reference, context = policy._reference()
    with torch.no_grad(), context:
        assert torch.allclose(reference(input_ids=ids).logits, adapted, atol=1e-4)


def test_env_counts_pauses_for_a_per_pause_cost(tiny_lm):
    """Pauses are stripped from the text, so the env counts them (count_tokens) and a reward
    wrapper prices them through InfoTerm."""
    from lm_envs.reward_wrappers import AddTerms, InfoTerm, VecRewardWrapper
    from policies.pause import add_pause_token

    model, tokenizer = tiny_lm
    pause_id = add_pause_token(model, tokenizer)
    env = VecRewardWrapper(
        TokenVecEnv(
            echo_task(),
            tokenizer,
            num_envs=2,
            max_new_tokens=3,
            max_prompt_tokens=16,
            vocab_size=model.config.vocab_size,
            count_tokens={"pauses": "<|pause|>"},
        ),
        AddTerms({"pause_cost": (InfoTerm("pauses"), -0.5)}),
    )
    env.reset()
    seven = tokenizer.convert_tokens_to_ids("7")
    for actions in ([pause_id, seven], [pause_id, seven], [seven, seven]):
        obs, rewards, dones, infos = env.step(np.array(actions))
    assert dones.all()
    assert [info["pauses"] for info in infos] == [2, 0]
    assert "<|pause|>" not in infos[0]["completion"]
    assert infos[0]["reward_components"]["pause_cost"] == pytest.approx(-1.0)
    assert rewards[0] == pytest.approx(infos[0]["score"] - 1.0)
