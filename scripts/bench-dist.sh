#!/usr/bin/env bash
# Data-parallel training throughput: the same recipe with 1 worker and with N workers.
#
#   scripts/bench-dist.sh --config configs/search-fashion-products.toml
#                         [--devices cpu,cpu | --mpi N] [--epochs 2] [--set key=value]...
#                         [--bin target/release/vitrine] [--out dist-results.md]
#
# Trains into a temporary directory with `--device <first of --devices>` and then with
# `--devices` (N threads of one process), or with `--mpi N` N processes under
# `mpirun -np N` on this machine (a binary built with --features mpi), each on that device;
# reads examples (or tokens) per second and the last epoch's loss from each
# run's metrics.jsonl (epochs after the first, so start-up and warm-up stay out), and prints
# a markdown table, also written to --out.
set -euo pipefail

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}
die() {
    echo "bench-dist.sh: $*" >&2
    exit 1
}

config="" devices="cpu,cpu" mpi_ranks=0 epochs=2 bin="target/release/vitrine" out="dist-results.md"
sets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --config) config=${2:?}; shift 2 ;;
        --devices) devices=${2:?}; shift 2 ;;
        --mpi) mpi_ranks=${2:?}; shift 2 ;;
        --epochs) epochs=${2:?}; shift 2 ;;
        --set) sets+=(--set "${2:?}"); shift 2 ;;
        --bin) bin=${2:?}; shift 2 ;;
        --out) out=${2:?}; shift 2 ;;
        -h|--help) usage 0 ;;
        *) usage 1 ;;
    esac
done
[ -n "$config" ] || die "--config is required"
[ -x "$bin" ] || die "$bin not found: cargo build --release"
[ "$epochs" -ge 2 ] || die "--epochs must be at least 2 (the first epoch is warm-up)"
command -v python3 >/dev/null || die "python3 is needed to read metrics.jsonl"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Mean rate over epochs 2.. and the last epoch's loss, from metrics.jsonl.
summary() {
    python3 - "$1" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
rate_key = next(k for k in lines[0] if k.endswith("_per_sec"))
rates = [l[rate_key] for l in lines[1:]]
print(f"{sum(rates) / len(rates):.1f} {rate_key.removesuffix('_per_sec')} {lines[-1]['loss']:.4f}")
EOF
}

first=${devices%%,*}
workers=$(awk -F, '{print NF}' <<<"$devices")
launch=()
if [ "$mpi_ranks" -gt 0 ]; then
    command -v mpirun >/dev/null || die "mpirun not found: bash scripts/setup.sh"
    workers=$mpi_ranks
    launch=(mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$mpi_ranks")
fi
echo "| workers | devices | rate (epochs 2..$epochs) | last epoch loss | wall |" | tee "$out"
echo "|---:|---|---:|---:|---:|" | tee -a "$out"
for mode in single multi; do
    run="$tmp/$mode"
    if [ "$mode" = single ]; then
        flags=(--device "$first"); n=1; shown=$first
    elif [ "$mpi_ranks" -gt 0 ]; then
        flags=(--device "$first"); n=$workers; shown="$first x $mpi_ranks MPI ranks"
    else
        flags=(--devices "$devices"); n=$workers; shown=$devices
    fi
    start=$(date +%s%N)
    prefix=()
    [ "$mode" = multi ] && prefix=(${launch[@]+"${launch[@]}"})
    ${prefix[@]+"${prefix[@]}"} "$bin" train --config "$config" --run-dir "$run" --quiet --set "train.epochs=$epochs" \
        ${sets[@]+"${sets[@]}"} "${flags[@]}" >"$tmp/$mode.log" 2>&1 || { cat "$tmp/$mode.log" >&2; die "$mode run failed"; }
    wall=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN { print (b - a) / 1e9 }')
    read -r rate unit loss <<<"$(summary "$run/metrics.jsonl")"
    printf '| %s | %s | %s %s/s | %s | %.1f s |\n' "$n" "$shown" "$rate" "$unit" "$loss" "$wall" | tee -a "$out"
done
