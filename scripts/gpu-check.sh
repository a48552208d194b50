#!/usr/bin/env bash
# The checks to run on a machine with a CUDA GPU, each bounded in time, about 9 minutes in
# all; everything lands in $OUT (default ./gpu-check-out):
#
#   OUT=out scripts/gpu-check.sh [--bin target/release/vitrine | --bin vitrine.gz]
#
# Build the binary elsewhere with `cargo build --release --features cuda` (strip and gzip
# it to carry it). Steps, each with its own timeout:
#   1. nvidia-smi and the driver;
#   2. `vitrine bench --parity --device cuda --profile quick` (does CUDA compute what the
#      CPU does?), timestamped, so a hang and a slow start can be told apart;
#   3. the quick bench suite on cuda, then the PyTorch peer on the same GPU
#      (scripts/peers/bench_torch.py --device cuda) and the ratio table;
#   4. configs/lm-shakespeare-gpu.toml for 300 steps, twice: the first run's and the second
#      run's time to the first step (kernel compilation and autotuning), and ms per step;
#   5. nanoGPT on the same recipe and GPU, when NANOGPT_DIR points at its source.
# The Shakespeare text is ../shared/data/tinyshakespeare/input.txt, or SHAKESPEARE=path.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-gpu-check-out}
bin=target/release/vitrine
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu-check.sh: unknown argument $1" >&2; exit 1 ;;
    esac
done
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} # NVRTC
summary="$OUT/summary.md"
echo "# gpu-check $(date -u +%FT%TZ)" >"$summary"

if [[ "$bin" == *.gz ]]; then
    gunzip -c "$bin" >"$OUT/vitrine" && chmod +x "$OUT/vitrine" && bin="$OUT/vitrine"
fi
[ -x "$bin" ] || { echo "gpu-check.sh: $bin not found: cargo build --release --features cuda" >&2; exit 1; }

# step NAME SECONDS CMD...: runs CMD with a timeout, each output line prefixed with the
# seconds since the step started; records the exit code and wall time in the summary.
step() {
    local name=$1 secs=$2
    shift 2
    local start
    start=$(date +%s.%N)
    timeout "$secs" "$@" 2>&1 | awk -v s="$start" '{
        "date +%s.%N" | getline now; close("date +%s.%N");
        printf "%7.2f %s\n", now - s, $0; fflush() }' >"$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    local wall
    wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    [ "$rc" = 124 ] && rc="124 (timed out after $secs s)"
    echo "- $name: exit $rc, $wall s" | tee -a "$summary"
}

step nvidia-smi 20 nvidia-smi
step parity 100 "$bin" bench --parity --device cuda --profile quick
step bench-cuda 150 "$bin" bench --device cuda --profile quick \
    --out "$OUT/bench-cuda.json" --markdown "$OUT/bench-cuda.md"
if python3 -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null \
    && [ -f "$OUT/bench-cuda.json" ]; then
    step peer-torch-cuda 90 python3 scripts/peers/bench_torch.py --device cuda \
        --config "$OUT/bench-cuda.json" --out "$OUT/peer-torch-cuda.json"
    python3 scripts/peers/compare.py "$OUT/bench-cuda.json" "$OUT/peer-torch-cuda.json" \
        >"$OUT/compare-cuda.md" 2>&1
else
    echo "- peer-torch-cuda: skipped (no PyTorch with CUDA, or no bench report)" | tee -a "$summary"
fi

text=${SHAKESPEARE:-../shared/data/tinyshakespeare/input.txt}
if [ -f "$text" ]; then
    # 300 steps: time to the first step and the steady rate; validation on 20 batches.
    for run in first second; do
        rm -rf "$OUT/lm-$run"
        step "lm-gpu-$run" 100 "$bin" train --config configs/lm-shakespeare-gpu.toml \
            --device cuda --run-dir "$OUT/lm-$run" --set "data.path=$text" \
            --set train.epochs=1 --set train.steps_per_epoch=300 --set train.eval_batches=20 \
            --set train.log_every_steps=1
    done
    if [ -n "${NANOGPT_DIR:-}" ] && [ -f "$NANOGPT_DIR/train.py" ]; then
        mkdir -p "$NANOGPT_DIR/data/shakespeare_char"
        cp "$text" "$NANOGPT_DIR/data/shakespeare_char/input.txt"
        (cd "$NANOGPT_DIR/data/shakespeare_char" && timeout 60 python3 prepare.py >/dev/null)
        step nanogpt 100 bash -c "cd '$NANOGPT_DIR' && python3 train.py config/train_shakespeare_char.py \
            --max_iters=300 --lr_decay_iters=5000 --eval_interval=1000 --eval_iters=20 \
            --log_interval=10 --compile=False --dtype=float32 --out_dir='$PWD/$OUT/nanogpt'"
    else
        echo "- nanogpt: skipped (set NANOGPT_DIR to karpathy/nanoGPT's source)" | tee -a "$summary"
    fi
else
    echo "- lm-gpu: skipped ($text not found; set SHAKESPEARE)" | tee -a "$summary"
fi
echo "gpu-check: logs in $OUT" | tee -a "$summary"
