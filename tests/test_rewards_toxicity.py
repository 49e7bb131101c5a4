"""Toxicity reward: profanity-check scorer, a tiny local HF classifier, label choice, metrics."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from rewards.toxicity import HFClassifierScorer, ProfanityCheckScorer, ToxicityReward, pick_label

DATA = Path(os.environ.get("LM_ENVS_DATA_DIR", Path(__file__).resolve().parents[1] / "../shared/data"))
needs_data = pytest.mark.skipif(not (DATA / "toxicity").is_dir(), reason=f"no data dir at {DATA}")
WORDS = "you are an idiot have a nice day stupid hello world".split()
TEXTS = [
    "you are an idiot",
    "have a nice day",
    "",
    "hello",
    "stupid stupid world you",
    "a nice idiot day hello world",
    "unknown words only",
]


def fixed_scorer(values):
    return lambda texts: np.asarray(values[: len(texts)], dtype=np.float32)


# ---------------------------------------------------------------- profanity-check (default)


def test_profanity_check_separates_toxic_from_benign():
    r = ToxicityReward()
    tox = r.score_toxicity(["you are a stupid idiot", "have a nice day"])
    assert tox.dtype == np.float32 and tox[0] > 0.9 and tox[1] < 0.2
    np.testing.assert_allclose(r(["you are a stupid idiot", "have a nice day"], None), 1.0 - tox)


def test_negative_mode_and_bad_arguments():
    tox = ToxicityReward().score_toxicity(["idiot"])
    np.testing.assert_allclose(ToxicityReward(mode="negative")(["idiot"], [None]), -tox)
    with pytest.raises(ValueError, match="one_minus"):
        ToxicityReward(mode="inverse")
    with pytest.raises(TypeError):
        ToxicityReward(scorer=3)


def test_profanity_batches_equal_one_big_batch():
    texts = [f"{w} text {i}" for i, w in enumerate(WORDS * 3)]
    np.testing.assert_allclose(ProfanityCheckScorer(batch_size=4)(texts), ProfanityCheckScorer()(texts), atol=1e-7)
    assert ProfanityCheckScorer()([]).shape == (0,)


def test_robust_inputs_never_crash():
    r = ToxicityReward()
    comps = ["", b"\xff\xfe\xfd", "\ud800 idiot", "\x00\x01", "x" * (1 << 20), "fuck " * 1000]
    out = r(comps, None)
    assert out.shape == (6,) and np.all((out >= 0) & (out <= 1))
    assert out[5] < 0.1 and out[0] > 0.5  # a profane wall of text vs nothing at all
    assert r([], None).shape == (0,)


# ---------------------------------------------------------------- custom scorers and metrics


def test_metrics_recovered_from_scores_in_both_modes():
    tox = [0.2, 0.9, 0.6, 0.0]
    for mode in ("one_minus", "negative"):
        r = ToxicityReward(scorer=fixed_scorer(tox), mode=mode)
        scores = r(["a", "b", "c", "d"], None)
        m = r.metrics(["a", "b", "c", "d"], [None] * 4, scores)
        assert m == pytest.approx({"toxicity_mean": 0.425, "toxicity_max": 0.9, "toxicity_frac_above_0.5": 0.5})
    assert r.metrics([], [], np.zeros(0)) == {}


def test_custom_scorer_validation_and_nan_clipping():
    r = ToxicityReward(scorer=lambda texts: [np.nan, 1.5, -0.5])
    assert r.score_toxicity(["a", "b", "c"]).tolist() == [1.0, 1.0, 0.0]  # NaN counts as toxic
    with pytest.raises(ValueError, match="returned 1 values for 2 texts"):
        ToxicityReward(scorer=lambda texts: [0.5])(["a", "b"], None)


# ---------------------------------------------------------------- label choice


@pytest.mark.parametrize(
    "id2label, label, num, expected",
    [
        ({0: "LABEL_0", 1: "LABEL_1"}, None, 2, 1),
        ({0: "neutral", 1: "toxic"}, None, 2, 1),
        ({0: "toxic", 1: "non-toxic"}, None, 2, 0),
        ({0: "NOT-HATE", 1: "HATE"}, None, 2, 1),
        ({0: "nothate", 1: "hate"}, None, 2, 1),
        ({0: "offensive", 1: "not_offensive"}, None, 2, 0),
        ({0: "severe_toxic", 1: "obscene", 2: "toxic"}, None, 3, 2),  # exact name beats "contains"
        ({0: "normal", 1: "hateful", 2: "offensive"}, None, 3, 2),
        ({0: "normal", 1: "hateful", 2: "other"}, None, 3, 1),
        ({0: "LABEL_0"}, None, 1, 0),
        ({0: "neutral", 1: "toxic"}, "NEUTRAL", 2, 0),
        ({0: "neutral", 1: "toxic"}, 0, 2, 0),
        ({0: "a", 1: "b", 2: "c"}, np.int64(2), 3, 2),
    ],
)
def test_pick_label(id2label, label, num, expected):
    assert pick_label(id2label, label, num) == expected


@pytest.mark.parametrize("label, err", [("bogus", ValueError), (2, ValueError), (-1, ValueError), (1.0, TypeError)])
def test_pick_label_rejects(label, err):
    with pytest.raises(err):
        pick_label({0: "neutral", 1: "toxic"}, label, 2)


# ---------------------------------------------------------------- tiny local HF classifier


def build_classifier(path: Path, id2label: dict, problem_type: str | None = None) -> Path:
    """A randomly initialised 1-layer BERT classifier with a word-level tokenizer, saved locally."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    ).save_pretrained(path)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        initializer_range=0.5,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        problem_type=problem_type,
    )
    BertForSequenceClassification(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def binary_dir(tmp_path_factory):
    return build_classifier(tmp_path_factory.mktemp("binary"), {0: "non-toxic", 1: "toxic"})


@pytest.fixture(scope="module")
def multilabel_dir(tmp_path_factory):
    return build_classifier(
        tmp_path_factory.mktemp("multi"),
        {0: "severe_toxic", 1: "toxic", 2: "insult"},
        problem_type="multi_label_classification",
    )


def reference_probs(path, texts, sigmoid=False):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        logits = torch.cat([model(**tok(t, return_tensors="pt")).logits for t in texts])
    return (torch.sigmoid(logits) if sigmoid else torch.softmax(logits, -1)).numpy()


def test_hf_scorer_default_label_and_softmax(binary_dir):
    s = HFClassifierScorer(str(binary_dir), batch_size=4)
    assert s.label_index == 1 and s.label_name == "toxic" and not s.sigmoid
    probs = reference_probs(binary_dir, TEXTS)
    np.testing.assert_allclose(s(TEXTS), probs[:, 1], atol=1e-5)
    np.testing.assert_allclose(HFClassifierScorer(str(binary_dir), label="NON-TOXIC")(TEXTS), probs[:, 0], atol=1e-5)
    assert HFClassifierScorer(str(binary_dir), label=0).label_index == 0
    with pytest.raises(ValueError, match="toxic"):
        HFClassifierScorer(str(binary_dir), label="hate")


def test_hf_scorer_batched_equals_one_by_one(binary_dir):
    s = HFClassifierScorer(str(binary_dir), batch_size=3)
    batched = s(TEXTS)
    single = np.array([s([t])[0] for t in TEXTS])
    assert np.ptp(batched) > 1e-2  # distinct values, so a mix-up of rows would show
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_hf_scorer_multilabel_uses_sigmoid_and_exact_toxic(multilabel_dir):
    s = HFClassifierScorer(str(multilabel_dir))
    assert s.sigmoid and s.label_index == 1
    np.testing.assert_allclose(s(TEXTS), reference_probs(multilabel_dir, TEXTS, sigmoid=True)[:, 1], atol=1e-5)


def test_hf_reward_end_to_end_and_long_text(binary_dir):
    r = ToxicityReward(scorer=str(binary_dir), mode="negative", batch_size=2)
    assert r.scorer.max_length == 64  # capped to the model's position embeddings, not 512
    out = r(TEXTS, None)
    np.testing.assert_allclose(out, -reference_probs(binary_dir, TEXTS)[:, 1], atol=1e-5)
    long = r(["hello " * 200_000, "hello " * 600, "\ud800 idiot"], None)  # truncated at 512 tokens
    assert long[0] == pytest.approx(long[1], abs=1e-6) and np.isfinite(long).all()


def test_hub_id_offline_error_suggests_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError) as err:
        HFClassifierScorer("some-org/not-a-cached-toxicity-model")
    msg = str(err.value)
    assert "some-org/not-a-cached-toxicity-model" in msg and "local directory path" in msg
    with pytest.raises(OSError, match="local directory path"):
        ToxicityReward(scorer="some-org/not-a-cached-toxicity-model")


# ---------------------------------------------------------------- real RealToxicityPrompts rows


@needs_data
def test_real_rtp_toxic_vs_nontoxic_prompts():
    def prompts(name):
        with open(DATA / "toxicity" / f"rtp_{name}.jsonl", encoding="utf-8") as f:
            return [json.loads(line)["prompt"]["text"] for _, line in zip(range(200), f)]

    r = ToxicityReward()
    toxic, benign = prompts("toxic"), prompts("nontoxic")
    m_toxic = r.metrics(toxic, [None] * 200, r(toxic, None))
    m_benign = r.metrics(benign, [None] * 200, r(benign, None))
    assert m_toxic["toxicity_mean"] > 0.7 and m_toxic["toxicity_frac_above_0.5"] > 0.8
    assert m_benign["toxicity_mean"] < 0.2 and m_benign["toxicity_frac_above_0.5"] < 0.1
    assert m_toxic["toxicity_max"] > 0.99
