#!/usr/bin/env bash
# Runs the benchmark suite (`vitrine bench`) on one or more devices and keeps the results.
#
#   scripts/bench.sh                    # CPU
#   scripts/bench.sh cuda wgpu          # on a GPU machine (set FEATURES=cuda)
#
# Writes bench-results.json (one report per device, as a JSON array) and bench-results.md
# (one table per device) in OUT_DIR (default: the repository root). Environment:
#   PROFILE=full|quick      the published suite (default) or toy sizes
#   PRECISION=f32|f16|bf16  float type of encoder and generation inference (default f32)
#   ONLY=encoder,search     run some groups only
#   FEATURES=cuda           cargo features for the build (CUDA needs it)
#   BIN=path/to/vitrine     use a prebuilt binary instead of building one
set -euo pipefail
cd "$(dirname "$0")/.."

devices=("$@")
[ ${#devices[@]} -eq 0 ] && devices=(cpu)
out_dir=${OUT_DIR:-.}
mkdir -p "$out_dir"

if [ -z "${BIN:-}" ]; then
    cargo build --release ${FEATURES:+--features "$FEATURES"}
    BIN=${CARGO_TARGET_DIR:-target}/release/vitrine
fi

# Inside OUT_DIR so the final renames stay on one file system (atomic).
tmp=$(mktemp -d "$out_dir/.bench-results.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
jsons=()
for dev in "${devices[@]}"; do
    name=${dev//:/-}
    echo "== $dev ==" >&2
    args=(bench --device "$dev" --profile "${PROFILE:-full}" --precision "${PRECISION:-f32}"
          --out "$tmp/$name.json" --markdown "$tmp/$name.md")
    [ -n "${ONLY:-}" ] && args+=(--only "$ONLY")
    "$BIN" "${args[@]}" > /dev/null
    jsons+=("$tmp/$name.json")
    { echo "### $dev"; echo; cat "$tmp/$name.md"; echo; } >> "$tmp/all.md"
done

{
    echo "["
    first=1
    for j in "${jsons[@]}"; do
        [ $first -eq 1 ] || echo ","
        cat "$j"
        first=0
    done
    echo "]"
} > "$tmp/all.json"
mv "$tmp/all.json" "$out_dir/bench-results.json"
mv "$tmp/all.md" "$out_dir/bench-results.md"
cat "$out_dir/bench-results.md"
echo "wrote $out_dir/bench-results.json and $out_dir/bench-results.md" >&2
