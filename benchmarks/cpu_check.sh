#!/usr/bin/env bash
# Every CPU speed figure the README quotes, in one go, on an otherwise idle machine
# (the ratios are measured within one run; absolute seconds drift on a shared machine).
#   bash benchmarks/cpu_check.sh [log]     (default log: benchmarks/results/cpu_check.log)
# The end-to-end default run is separate: `rm -rf results && time make run`, then
# `python benchmarks/stage_times.py`.
set -euo pipefail
export TQDM_DISABLE=1  # no progress bars in the log
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
LOG=${1:-benchmarks/results/cpu_check.log}
mkdir -p "$(dirname "$LOG")"
{
  "$PY" benchmarks/_header.py bash benchmarks/cpu_check.sh "$@"  # command, commit, date
  echo "# $(nproc) cores  load: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "== LoRA-fit throughput (default config, S = lora.shard_size, 2 threads)"
  "$PY" benchmarks/lora_fit_throughput.py --device cpu --threads 2 --profile
  echo "== DP-SGD step vs non-private step (1 thread)"
  "$PY" benchmarks/dpsgd_step.py --threads 1
  echo "== compute on one private set: DP-DeepSets vs DP-SGD (1 thread)"
  "$PY" benchmarks/private_cost.py --threads 1 2>/dev/null  # the encoder draws its own progress bar
} 2>&1 | tee "$LOG"
