#!/usr/bin/env bash
# GPU numbers for the README's speed section, in one go (~4 minutes on one H100/H200 with cold compile
# caches; at most 6 minutes, the sum of the steps' time limits):
#
#     bash tools/gpu_bench.sh    # from anywhere; it runs in the repository root; logs go to $OUT/ (or gpu_bench_logs/)
#
# Needs torch with CUDA plus einops, h5py, tqdm, matplotlib, pytest. The built-in benchmark is generated into
# data/synthetic on first use. Each step has its own time limit, most important first, so a slow step cannot
# take the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."  # the repository root
LOG="${OUT:-gpu_bench_logs}"
mkdir -p "$LOG"
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $LOG/NAME.txt, keep going on failure
    local name=$1 limit=$2; shift 2
    echo "=== $name: $* (limit ${limit}s)" | tee "$LOG/$name.txt"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG/$name.txt"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$LOG/$name.txt"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nproc; date -u; } 2>&1 | tee "$LOG/machine.txt"

# 1. the table: the naive loop vs ours at batch 4096, bf16 autocast, torch.compile with CUDA graphs
step bench_4096 120 python -m tools.bench --device cuda --batch-size 4096 --precision bf16 --compile
# 2. wall time to 83% and 96% validation accuracy: the default recipe, then AdamW on whitened log-density
#    (the scientist's optimizer)
step time_to_target 50 python -m tools.bench --device cuda --time-to-target
step time_to_target_adamw 50 python -m tools.bench --device cuda --time-to-target \
    --recipe "--optimizer adamw --lr 3e-3 --weight-decay 0.05"
# 3. CUDA graphs must keep weights and BatchNorm running statistics like eager training (fails if skipped)
step cudagraph_test 75 python -m pytest -q -p no:cacheprovider tests/test_train_compile.py -k cuda
# 4. a larger batch, for the scaling (the baseline runs again, briefly)
step bench_8192 60 python -m tools.bench --device cuda --batch-size 8192 --precision bf16 --compile --seconds 2
echo "logs in $LOG/"
