#!/usr/bin/env bash
# Every CUDA benchmark in one go, for a lent GPU machine (no network there; see docs/performance.md).
#   bash bench/cuda_run.sh [TOKENIZER_DIR] [LOG_DIR] [PART]
# PART: step17 (the scorer, generation and training against Step 17's goals; sized for one 10-minute call, not
# yet timed), paths (every stage's CUDA path against the CPU, the 135M throughputs, the load options), or all
# (the default). A lent device's command may run 10 minutes: run step17 first, then paths.
# Wheels in .whl/ (bitsandbytes, the transformers of pyproject's range) are installed to /tmp/site first.
set -uo pipefail
tok=${1:-resources/models/smollm2}
log=${2:-.}
part=${3:-all}
want() { [ "$part" = all ] || [ "$part" = "$1" ]; }
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
rc=0
run() { echo "=== $*"; "$@" 2>&1 | grep -v "Loading weights\|Writing model shards\|past_key_values\|return forward_call" | tee -a "$log/cuda_bench.log"; [ "${PIPESTATUS[0]}" = 0 ] || rc=1; }
export LMDELTA_BENCH_MODELS=/tmp/bench-models  # each random model is built once for every bench below
if want step17; then
    # the scorer against the raw forward (goal: >= 0.8x raw bf16 at the 1B shape)
    run python3 bench/logprobs_throughput.py --model none --shape pythia-1b --device cuda --dtype bfloat16 --docs 32 --tokens 512 --batch 16 --threads 16
    run python3 bench/logprobs_throughput.py --model none --device cuda --dtype bfloat16 --docs 32 --tokens 512 --batch 32 --threads 16
    # generation, float32 vs bf16 (goals: bf16 >= float32 at 135M, >= 1.5x at 1B); at 135M profiled and
    # against transformers' generate with its static cache (compiled: CUDA graphs)
    run python3 bench/generation_throughput.py --model none --tokenizer "$tok" --device cuda --prompts 4 --samples 25 --tokens 64 --batch 100 --dtypes float32,bfloat16 --threads 16 --profile --library
    run python3 bench/generation_throughput.py --model none --shape pythia-1b --tokenizer "$tok" --device cuda --prompts 2 --samples 50 --tokens 64 --batch 100 --dtypes float32,bfloat16 --threads 16
    # soft-prompt training, float32 vs bf16 autocast (plain, and with the frozen weights cast once)
    run python3 bench/training_throughput.py --tokenizer "$tok" --device cuda --batch 16 --seq-len 64 --steps 10 --threads 16 --profile
    run python3 bench/training_throughput.py --shape pythia-1b --tokenizer "$tok" --device cuda --batch 16 --seq-len 64 --steps 10 --threads 16
fi
if want paths; then
    run python3 bench/cuda_paths.py --tokenizer "$tok"
    run python3 bench/logprobs_throughput.py --model none --device cuda --dtype float32 --docs 32 --tokens 512 --batch 32 --threads 16
    run python3 bench/cuda_load_options.py
fi
exit $rc
