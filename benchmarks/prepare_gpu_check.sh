#!/usr/bin/env bash
# Prepare `benchmarks/gpu_check.sh` for the lent GPU machine (Python 3.12 with torch, transformers,
# peft, accelerate and tensorboard; no network). Run here, where PyPI is reachable:
#   bash benchmarks/prepare_gpu_check.sh
# It writes two git-ignored folders, which the device tool's `carry` names:
#   .whl/  cp312 wheels of the pure-Python packages that machine lacks (or has at other versions),
#          at the versions this venv uses;
#   .gpu/  SmolLM2-135M-Instruct's config and tokenizer without weights (the GGUF is too large to
#          travel; `load_lm("random:.gpu/smollm2-135m")` builds fresh weights there: throughput
#          does not depend on them) and the first 64 GSM8K test problems the benchmarks prompt with.
# Then: device run, command `bash benchmarks/gpu_check.sh`, carry [".whl", ".gpu"], timeout_s 360.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${LM_ENVS_DATA_DIR:-../shared/data}
rm -rf .whl .gpu
mkdir -p .whl .gpu/data/gsm8k
PACKAGES="gymnasium farama-notifications stable-baselines3 omegaconf trl datasets dill
          multiprocess transformers peft"
for pkg in $PACKAGES; do
  version=$($PY -c "from importlib.metadata import version; print(version('$pkg'))")
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$pkg==$version"
done
$PY - <<'PYEOF'
from policies import load_lm

model, tokenizer = load_lm("smollm2-135m-instruct")
model.config.save_pretrained(".gpu/smollm2-135m")
tokenizer.save_pretrained(".gpu/smollm2-135m")
PYEOF
head -n 64 "$DATA/gsm8k/test.jsonl" > .gpu/data/gsm8k/test.jsonl
du -sh .whl .gpu
