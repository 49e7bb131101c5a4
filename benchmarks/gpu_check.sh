#!/usr/bin/env bash
# The GPU check, in at most about 5 minutes on the lent machine (an H200): one iteration of every
# agent on CUDA in bf16 with its KL term on (benchmarks/agents_on_device.py), the rollout ratio
# against `generate` (variable and fixed length), absolute tokens/s in bf16, the update-FLOPs
# ratio against the GPU's bf16 GEMM, and PPO vs TRL samples/s (full and LoRA). One results file:
# $OUT/gpu_check.txt (the device tool brings $OUT back), else ./gpu_check.txt.
#
# Prepare here first (wheels, model config, prompts): bash benchmarks/prepare_gpu_check.sh
# Then the device tool: command `bash benchmarks/gpu_check.sh`, carry [".whl", ".gpu"], timeout_s 360.
# A CPU dry run of the same wiring: GPU_CHECK_DEVICE=cpu GPU_CHECK_DTYPE=float32 GPU_CHECK_QUICK=1 bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
RESULTS=${OUT:-.}/gpu_check.txt
DEVICE=${GPU_CHECK_DEVICE:-cuda}
DTYPE=${GPU_CHECK_DTYPE:-bfloat16}
MODEL=${GPU_CHECK_MODEL:-random:.gpu/smollm2-135m}
PY=${PY:-python3}
if [ -d .whl ] && ! $PY -c "import trl, gymnasium, stable_baselines3, omegaconf" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} LM_ENVS_DATA_DIR=${LM_ENVS_DATA_DIR:-$PWD/.gpu/data}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
SCALE=1  # stage time limits, sized for the GPU (4.5 minutes in all)
if [ -n "${GPU_CHECK_QUICK:-}" ]; then  # the wiring only: tiny sizes, CPU-sized limits
  SCALE=5
  ROLLOUT="--repeats 1 --batch 4 --variable-max-new-tokens 16 --max-new-tokens 8 --turn-tokens 0"
  FLOPS="--steps 1 --warmup 1 --max-new-tokens 8"; TRL="--steps 1 --warmup 0 --max-new-tokens 8 --cases full"
  AGENTS="--max-new-tokens 4"
else
  AGENTS="--max-new-tokens 32"
  ROLLOUT="--repeats 2 --batch 16 --variable-max-new-tokens 192 --max-new-tokens 64 --turn-tokens 0"
  FLOPS="--steps 2 --warmup 1"; TRL="--steps 2 --warmup 1 --cases full,lora"
fi
run() {  # a stage that runs out of time is reported, and the next one still runs
  local limit=$(( $1 * SCALE )); shift
  echo "## $* (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@"
  echo "## exit $? after $((SECONDS - start)) s"
}
{
  echo "# gpu_check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') device $DEVICE dtype $DTYPE model $MODEL"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, transformers, trl; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'trl', trl.__version__)"
  run 60 $PY benchmarks/agents_on_device.py --device "$DEVICE" --dtype "$DTYPE" --model "$MODEL" $AGENTS
  run 80 $PY benchmarks/rollout_throughput.py --device "$DEVICE" --dtype "$DTYPE" --model "$MODEL" $ROLLOUT
  run 40 $PY benchmarks/update_flops.py --device "$DEVICE" --dtype "$DTYPE" --model "$MODEL" $FLOPS
  run 90 $PY benchmarks/ppo_vs_trl.py --device "$DEVICE" --dtype "$DTYPE" --model "$MODEL" $TRL
} 2>&1 | tee "$RESULTS"
