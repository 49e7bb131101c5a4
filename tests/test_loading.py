"""policies.load_lm: local paths, hub ids offline, the embedded GGUF and its atomic cache."""

import os

import pytest
import torch

import policies.loading as loading
from policies import load_lm


def test_local_path_loads_and_sets_pad(tiny_dir):
    model, tokenizer = load_lm(str(tiny_dir))
    assert tokenizer.pad_token_id is not None and not model.training


def test_random_spec_keeps_config_and_tokenizer_but_not_weights(tiny_dir, tmp_path):
    import shutil

    config_only = tmp_path / "config-only"  # what travels to a GPU machine: no weights
    config_only.mkdir()
    for name in os.listdir(tiny_dir):
        if not name.endswith(".safetensors"):
            shutil.copy(tiny_dir / name, config_only / name)
    trained, tokenizer = load_lm(str(tiny_dir))
    torch.manual_seed(0)
    fresh, fresh_tok = load_lm(f"random:{config_only}", dtype="bfloat16")
    assert fresh.config.to_dict()["num_hidden_layers"] == trained.config.num_hidden_layers
    assert fresh_tok.get_vocab() == tokenizer.get_vocab() and fresh_tok.pad_token_id is not None
    assert next(fresh.parameters()).dtype == torch.bfloat16 and not fresh.training
    w = dict(fresh.named_parameters())["model.layers.0.mlp.up_proj.weight"]
    assert not torch.equal(w.float(), dict(trained.named_parameters())["model.layers.0.mlp.up_proj.weight"])


def test_missing_local_path_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_lm(str(tmp_path / "nope"))


def test_hub_id_offline_names_local_path_option(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(OSError, match="local path"):
        load_lm("someone/some-model-that-is-not-cached")


def test_embedded_model_is_plain_and_trainable(smollm, tmp_path):
    model, tokenizer = smollm
    assert getattr(model.config, "quantization_config", None) is None
    assert not getattr(model, "is_quantized", False)
    assert model.config.vocab_size == 49152 and tokenizer.eos_token_id == tokenizer.pad_token_id == 2
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # Training and save_pretrained are what the quantized-flagged GGUF model refuses.
    ids = tokenizer("What is 2 + 2?", return_tensors="pt").input_ids
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert model.get_input_embeddings().weight.grad is not None
    model.zero_grad()
    model.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "config.json").exists()


def test_embedded_cache_write_is_atomic(monkeypatch, tmp_path, tiny_dir):
    """A conversion killed mid-write leaves neither a cache nor staging debris."""
    monkeypatch.setenv("LM_SB_CACHE", str(tmp_path))
    from transformers import PreTrainedModel

    # Dequantizing the 135M GGUF (15 s) is not what this test is about: the tiny model stands in.
    model_from, tokenizer_from = loading.AutoModelForCausalLM.from_pretrained, loading.AutoTokenizer.from_pretrained
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: model_from(str(tiny_dir)))
    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer_from(str(tiny_dir)))

    def dying_save(self, *args, **kwargs):
        os.makedirs(args[0], exist_ok=True)
        open(os.path.join(args[0], "model.safetensors"), "w").write("half")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", dying_save)
    with pytest.raises(KeyboardInterrupt):
        loading.embedded_checkpoint()
    assert list(tmp_path.iterdir()) == []
