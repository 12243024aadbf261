#!/usr/bin/env bash
# Peak resident memory of one rank loading and serving a checkpoint, against its weight bytes
# (q3vl plan's figure). Runs `q3vl generate` (one short text request, a 4096-token KV pool)
# under GNU time and prints one JSON object. Default checkpoint: 30B-A3B width with 4 decoder
# and 4 vision layers (benchmarks/configs/, 6.6 GB), written with make-model when missing.
#   benchmarks/load_rss.sh [--model DIR] [--q3vl PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
model=/tmp/a3b-4l
q3vl=build/launcher/q3vl
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --q3vl) q3vl="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "load_rss.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -x /usr/bin/time ]] || { echo "load_rss.sh: needs GNU time (Debian package 'time')" >&2; exit 1; }
if [[ ! -f "$model/config.json" ]]; then
  echo "load_rss.sh: writing $model (30B-A3B width, 4 layers)..." >&2
  "$q3vl" make-model --out "$model" --config benchmarks/configs/qwen3-vl-30b-a3b-width-4-layers.json >&2
fi
weights=$("$q3vl" plan --model "$model" --kv-cache-memory 64MiB --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["weights_bytes_per_rank"])')
checkpoint=$(du -cb "$model"/*.safetensors | tail -1 | cut -f1)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
/usr/bin/time -v "$q3vl" generate --model "$model" --prompt "Hello there" --max-new-tokens 8 \
  --kv-cache-tokens 4096 --json > /dev/null 2> "$log"
peak_kb=$(grep "Maximum resident set size" "$log" | awk '{print $NF}')
python3 - "$weights" "$checkpoint" "$peak_kb" "$model" <<'PY'
import json, sys
weights, checkpoint, peak_kb, model = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
peak = peak_kb * 1024
print(json.dumps({"benchmark": "load_rss", "model": model, "checkpoint_bytes": checkpoint,
                  "weights_bytes": weights, "peak_rss_bytes": peak,
                  "peak_rss_over_weights": round(peak / weights, 3)}, indent=2))
PY
