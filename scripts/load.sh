#!/usr/bin/env bash
# Load test of a running `vitrine serve` with wrk: POST /v1/search (and /v1/generate when served).
#
#   scripts/load.sh --url http://127.0.0.1:8080 --image PATH [--keywords "summer sale"]
#                   [--duration 15s] [--connections 4] [--threads 2] [--timeout 30s]
#                   [--out load-results.md]
#
# Search requests are JSON {"image": <base64 of PATH>, "k": 10}; generate requests are
# {"keywords": ..., "n": 3}. Prints a markdown table (requests, RPS, p50/p99 latency, errors =
# non-2xx responses + socket errors) and writes it to --out. Needs wrk and curl.
set -euo pipefail

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}
die() {
    echo "load.sh: $*" >&2
    exit 1
}

url="" image="" keywords="summer sale" duration="15s" connections=4 threads=2 timeout="30s"
out="load-results.md"
while [ $# -gt 0 ]; do
    case "$1" in
        --url) url=${2:?}; shift 2 ;;
        --image) image=${2:?}; shift 2 ;;
        --keywords) keywords=${2:?}; shift 2 ;;
        --duration) duration=${2:?}; shift 2 ;;
        --connections) connections=${2:?}; shift 2 ;;
        --threads) threads=${2:?}; shift 2 ;;
        --timeout) timeout=${2:?}; shift 2 ;;
        --out) out=${2:?}; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "load.sh: unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
done
[ -n "$url" ] || die "--url is required (e.g. --url http://127.0.0.1:8080)"
url=${url%/}
[[ $connections =~ ^[1-9][0-9]*$ ]] || die "--connections must be a positive integer"
[[ $threads =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer"
# wrk needs at least one connection per thread.
[ "$threads" -le "$connections" ] || threads=$connections

command -v wrk > /dev/null || die "wrk is not installed (Debian/Ubuntu: sudo apt-get install wrk)"
command -v curl > /dev/null || die "curl is not installed (Debian/Ubuntu: sudo apt-get install curl)"
lua="$(cd "$(dirname "$0")" && pwd)/load/post.lua"
[ -f "$lua" ] || die "missing $lua"

info=$(curl -fsS --max-time 10 "$url/v1/info") || die "cannot read $url/v1/info: is the server running?"
served() {
    grep -Eq "\"$1\"[[:space:]]*:[[:space:]]*true" <<< "$info"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Escapes a string for a JSON string literal.
json_str() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    s=${s//$'\t'/\\t}
    printf '"%s"' "$s"
}

# One request first, so a bad body fails with the server's message instead of a table of errors.
probe() {
    local path=$1 body=$2 code
    code=$(curl -sS --max-time 120 -o "$tmp/probe.out" -w '%{http_code}' \
        -H 'Content-Type: application/json' --data-binary "@$body" "$url$path") \
        || die "POST $path failed"
    [[ $code == 2* ]] || die "POST $path returned HTTP $code: $(head -c 300 "$tmp/probe.out")"
}

rows=() notes=()
# Runs wrk against one endpoint and appends a table row.
run() {
    local name=$1 path=$2 body=$3 log="$tmp/$1.txt"
    probe "$path" "$body"
    echo "== POST $path: $duration, $connections connections, $threads threads ==" >&2
    WRK_BODY_FILE=$body WRK_CONTENT_TYPE=application/json \
        wrk --latency -t "$threads" -c "$connections" -d "$duration" --timeout "$timeout" \
        -s "$lua" "$url$path" > "$log" || die "wrk failed on $path: $(cat "$log")"
    cat "$log" >&2
    local requests rps p50 p99 non2xx socket errors
    requests=$(awk '/ requests in /{print $1}' "$log")
    rps=$(awk '/^Requests\/sec:/{print $2}' "$log")
    p50=$(awk '$1 == "50%" {print $2}' "$log")
    p99=$(awk '$1 == "99%" {print $2}' "$log")
    non2xx=$(awk '/^non-2xx responses:/{print $3}' "$log")
    socket=$(awk '/Socket errors:/{gsub(",", ""); print $4 + $6 + $8 + $10}' "$log")
    errors=$(( ${non2xx:-0} + ${socket:-0} ))
    [ "${socket:-0}" -eq 0 ] || errors="$errors ($socket socket)"
    rows+=("| POST $path | $connections | $duration | ${requests:-?} | ${rps:-?} | ${p50:-?} | ${p99:-?} | $errors |")
    [ "$name" != generate ] || notes+=("generate: n = 3 subject lines per request, keywords $(json_str "$keywords")")
}

if served search; then
    [ -n "$image" ] || die "--image is required to load-test search"
    [ -r "$image" ] || die "cannot read $image"
    { printf '{"image":"'; base64 < "$image" | tr -d '\n'; printf '","k":10}'; } > "$tmp/search.json"
    run search /v1/search "$tmp/search.json"
    notes+=("search: k = 10, query image $(basename "$image") ($(wc -c < "$image" | tr -d ' ') bytes, sent as base64 JSON)")
else
    notes+=("search: skipped, not served by this server")
fi

if served generate; then
    printf '{"keywords":%s,"n":3}' "$(json_str "$keywords")" > "$tmp/generate.json"
    run generate /v1/generate "$tmp/generate.json"
else
    notes+=("generate: skipped, not served by this server")
fi

{
    echo "Load test of $url with wrk (threads $threads, timeout $timeout), $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "| endpoint | connections | duration | requests | RPS | p50 | p99 | errors |"
    echo "|---|---|---|---|---|---|---|---|"
    [ ${#rows[@]} -eq 0 ] || printf '%s\n' "${rows[@]}"
    echo
    printf -- '- %s\n' "${notes[@]}"
} > "$tmp/report.md"
mkdir -p "$(dirname "$out")"
cp "$tmp/report.md" "$out"
cat "$out"
echo "wrote $out" >&2
