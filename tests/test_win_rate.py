"""experiments/win_rate.py: a TextArena game's win rate from real episodes of a tiny random model
(checked against TextArena's own results, counted by hand), and base versus trained from a run
directory."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from helpers import REPO, build_tiny_model

import lm_envs
from lm_envs.ecosystem import textarena

sys.path.insert(0, str(REPO / "experiments"))
import win_rate  # noqa: E402

# GuessTheNumber between 1 and 2, one token per move: a random model that says "1" or "2" wins.
GAME = dict(min_number=1, max_number=2, max_turns=3, max_turn_tokens=1, max_new_tokens=3, max_injected_tokens=768)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """A tiny random Llama over a five-word vocabulary whose only real words are the moves 1 and 2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("digits-llama")
    vocab = {word: i for i, word in enumerate(["<unk>", "<s>", "</s>", "1", "2"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    tokenizer.save_pretrained(directory)
    build_tiny_model(directory, len(tokenizer), seed=1)
    return directory


def test_outcomes_counts_wins_and_losses():
    counted = win_rate.outcomes([1.0, 0.5, -1.0, 0.0, 1.0])
    assert counted == {"episodes": 5, "wins": 2, "losses": 1, "win_rate": 0.4, "score_mean": 0.3}
    with pytest.raises(ValueError, match="episodes >= 1"):
        win_rate.outcomes([])


def test_win_rate_of_a_tiny_random_model_matches_textarenas_own_results(digits_dir, monkeypatch):
    """Every game the env plays is replayed by TextArena (`_Game.play`); its finished games and
    their results, recorded there, are the hand count the win rate must match."""
    from policies import CausalLMPolicy, load_lm

    finished = []
    play = textarena._Game.play

    def recording(self, seed, moves):
        text, reward, done = play(self, seed, moves)
        if done:
            finished.append((seed, tuple(moves), reward))
        return text, reward, done

    monkeypatch.setattr(textarena._Game, "play", recording)
    model, tok = load_lm(str(digits_dir))
    env = lm_envs.make_vec(
        "textarena/GuessTheNumber-v0", 4, tok, split="test", chat_template=False, vocab_size=5, seed=0, **GAME
    )
    policy = CausalLMPolicy(env.observation_space, env.action_space, lambda _: 0.0, model=model, reference=False)
    torch.manual_seed(0)
    result, samples = win_rate.win_rate(policy, env, 8, deterministic=False, seed=0)
    hand_wins = sum(reward == 1.0 for _, _, reward in finished)
    assert len(samples) == result["episodes"] == 8 and len(finished) <= 8
    assert result["wins"] == hand_wins and result["win_rate"] == hand_wins / 8
    assert 0 < hand_wins < 8  # real games, some won and some not
    assert sorted(s["score"] for s in samples if s["score"] == 1.0) == [1.0] * hand_wins


def test_run_dir_base_versus_trained(digits_dir, tmp_path):
    """A run directory (config.yaml + a GRPO checkpoint with a non-zero adapter): both policies play
    the run's held-out games; the trained one is the checkpoint's."""
    import run_ppo
    from config import compose
    from omegaconf import OmegaConf

    out = tmp_path / "run"
    cfg = compose(
        [
            "agent=grpo",
            "env.id=textarena/GuessTheNumber-v0",
            f"policy.model={digits_dir}",
            "policy.lora.r=2",
            "policy.lora.target_modules=[q_proj,v_proj]",
            f"output_dir={out}",
            "env.num_envs=4",
            "agent.batch_size=4",
            *(f"env.kwargs.{k}={v}" for k, v in GAME.items()),
            "env.kwargs.chat_template=false",
        ]
    )
    agent, *_ = run_ppo.prepare(cfg)
    with torch.no_grad():
        for name, param in agent.policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 2.0)
    out.mkdir()
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    agent.save(out / "checkpoints" / "iter_000001")

    results = win_rate.main([f"run_dir={out}", "episodes=4", "env.num_envs=2", "deterministic=false"])
    assert results["env"] == "textarena/GuessTheNumber-v0" and results["split"] == "test"
    assert results["checkpoint"].endswith("iter_000001") and results["model"] == str(digits_dir)
    for name in ("base", "trained"):
        assert results[name]["episodes"] == 4 and results[name]["win_rate"] == results[name]["wins"] / 4
    saved = json.loads((out / "win_rate" / "win_rate.json").read_text())
    assert saved["base"]["wins"] == results["base"]["wins"]
    base, trained = ((out / "win_rate" / f"samples_{n}.jsonl").read_text() for n in ("base", "trained"))
    assert base != trained  # the adapter was loaded: the same games, played differently
    with pytest.raises(SystemExit, match="output_dir="):
        win_rate.main(["episodes=2"])
    with pytest.raises(SystemExit, match="no config.yaml"):
        win_rate.main([f"run_dir={tmp_path}"])
