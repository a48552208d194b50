#!/usr/bin/env bash
# Approximate search against faiss HNSW on the same machine, one data set after another:
#   bash scripts/bench-ann.sh fashion-mnist            # ann-benchmarks' 60k x 784, L2
#   bash scripts/bench-ann.sh clustered                # 1M x 128 synthetic clusters, L2
#   bash scripts/bench-ann.sh index RUN_INDEX QUERY_INDEX   # a search run's embeddings, cosine
# Needs target/release/vitrine and a Python with numpy + faiss-cpu ($PYTHON, default python3;
# pip install numpy faiss-cpu). Data and reports go to $ANN_DIR (default runs/ann).
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:?usage: bench-ann.sh fashion-mnist|clustered|index [BASE_INDEX QUERY_INDEX]}"
py="${PYTHON:-python3}"
dir="${ANN_DIR:-runs/ann}/$kind"
bin=target/release/vitrine
ef="${EF:-8,10,12,16,24,32,48,64,96,128}"
queries="${QUERIES:-0}"
# Passes per setting, the fastest counted, for both engines (REPEAT=1: one pass).
repeat="${REPEAT:-3}"
mkdir -p "$dir"
if [ ! -f "$dir/truth.ivecs" ]; then
  case "$kind" in
    index) "$py" scripts/ann_data.py index --index "${2:?base index}" --queries-index "${3:?query index}" --out "$dir" ;;
    *) "$py" scripts/ann_data.py "$kind" --out "$dir" ;;
  esac
fi
metric=$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['metric'])" "$dir/meta.json")
# Filtered search (cosine, through the serving path) on the 60k sets; the 1M set skips it
# (a second graph build).
filters=(--filters 0.5,0.05,0.005)
[ "$kind" = clustered ] && filters=()
# NO_FILTERS=1 skips them (speed runs only).
[ -n "${NO_FILTERS:-}" ] && filters=()
# ANN_CONFIG=F: graph parameters (AnnConfig TOML, e.g. quantization = "f16"); SKIP_FAISS=1
# reuses the last faiss report.
ann=()
[ -n "${ANN_CONFIG:-}" ] && ann=(--ann-config "$ANN_CONFIG")
tag="${TAG:-vitrine}"
# ROUNDS=N alternates the two engines N times (ours, faiss, ours, faiss…) and counts each
# engine's fastest pass: this machine's speed drifts by tens of percent over minutes, and
# alternating keeps a slow spell from falling on one engine only.
rounds="${ROUNDS:-1}"
ours=() peer=()
for r in $(seq 1 "$rounds"); do
  sfx=""
  [ "$rounds" -gt 1 ] && sfx=".r$r"
  "$bin" bench-ann --base "$dir/base.fvecs" --queries "$dir/queries.fvecs" --truth "$dir/truth.ivecs" \
    --metric "$metric" --ef "$ef" --max-queries "$queries" --repeat "$repeat" "${filters[@]}" "${ann[@]}" \
    --out "$dir/$tag$sfx.json" > /dev/null
  [ -n "${SKIP_FAISS:-}" ] || \
    "$py" scripts/peers/ann_faiss.py --data "$dir" --ef "$ef" --max-queries "$queries" --repeat "$repeat" \
      --out "$dir/faiss$sfx.json" > /dev/null
  ours+=("$dir/$tag$sfx.json")
  peer+=("$dir/faiss$sfx.json")
done
"$py" scripts/peers/ann_compare.py "$(IFS=,; echo "${ours[*]}")" "$(IFS=,; echo "${peer[*]}")" --name "$kind" \
  | tee "$dir/$tag-table.md"
