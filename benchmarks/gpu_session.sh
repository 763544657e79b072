#!/usr/bin/env bash
# The GPU checks of one lent-machine session, most important first, each under its own time limit, within about
# 9 minutes in all (a lent machine's command stops at 10):
#   1. bench_gpu_train.py on the fixed 512-token shape: MFU and RATIO against sentence-transformers, plus the
#      kalm-mini profile without kept graphs as a lever;
#   2. tests/gpu (fp32 master weights, compiled = eager, bf16 inference, the measured kept-graph budget);
#   3. bench_curation.py with the kalm-mini shape on 100k pairs (filter + mine against a bare encode);
#   4. bench_gpu_train.py on the mixed-length shape, if time is left.
# Usage (from the repository root): bash benchmarks/gpu_session.sh [OUT_DIR]
# The device image has torch, transformers and sentence-transformers but not polars: wheels in .whl/ (git-ignored,
# carried) are installed into /tmp/site first. Every part writes its log (and JSON) under OUT_DIR.
set -u
out=${1:-${OUT:-/tmp/gpu_session}}
mkdir -p "$out"
if ! python3 -c "import polars" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export TOKENIZERS_PARALLELISM=true HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python3 -c "import torch, transformers, sentence_transformers as st; print(torch.__version__, transformers.__version__, st.__version__)" >> "$out/gpu.txt" 2>&1
began=$SECONDS
part() {  # part NAME LIMIT_S COMMAND...: run it unless the session's 540 s are spent, keep its log
    local name=$1 limit=$2; shift 2
    local left=$((540 - (SECONDS - began)))
    if [ "$left" -lt 60 ]; then echo "$name: skipped, $left s left" | tee -a "$out/summary.txt"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - began)) s" | tee -a "$out/summary.txt"
    tail -n 3 "$out/$name.log" | tee -a "$out/summary.txt"
}
part train_fixed 270 python3 benchmarks/bench_gpu_train.py --shape fixed --runs 3 --levers compile \
    --json "$out/train_fixed.json"
part tests_gpu 120 python3 -m pytest -c /dev/null --noconftest --rootdir . -q -p no:cacheprovider tests/gpu
part curation 150 python3 benchmarks/bench_curation.py --model kalm-mini --pairs 100000 --no-partial
part train_mixed 240 python3 benchmarks/bench_gpu_train.py --shape mixed --runs 3 --json "$out/train_mixed.json"
