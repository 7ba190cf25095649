#!/usr/bin/env bash
# One prepared GPU check (run on a lent GPU machine from the repo root): LoRA-fit throughput
# of the sequential peft loop, the batched fitter and the limit, on CUDA.
# Wheels missing on the GPU image travel in .whl/ (see README "GPU").
#   bash benchmarks/gpu_check.sh > benchmarks/results/gpu_check_<gpu>.log
# A copy of the tree without .git: set BENCHMARK_COMMIT (benchmarks/_header.py) for the log's commit line.
set -euo pipefail
python3 benchmarks/_header.py bash benchmarks/gpu_check.sh "$@"  # command, commit, date
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, diffusers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__)"
for s in 16 64 256; do
  echo "== shard size S=$s"
  python3 benchmarks/lora_fit_throughput.py --device cuda --shard-size "$s" --reps 5
done
