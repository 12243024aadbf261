#!/usr/bin/env bash
# Batch throughput of `q3vl run` (continuous batching, one queue for every replica) against
# static batching (fixed batches of B requests, each run to completion before the next starts,
# replicas splitting the input in advance: what `generate --batch` does), on one mixed workload,
# for dp=1 and dp=2. Prints one JSON object on stdout; progress on stderr.
#   benchmarks/batch_run_bench.sh [--requests N] [--batch B] [--model DIR] [--work DIR]
# The static side runs each batch as its own `q3vl run --max-concurrency B` over a file of B
# lines and sums the jobs' wall times (model loading excluded on both sides), so both sides
# share every code path but the scheduling.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=240 batch=16 model="" work=/tmp/q3vl_batch_bench
while (($#)); do
  case $1 in
    --requests) requests=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) echo "batch_run_bench: unknown argument $1" >&2; exit 2 ;;
  esac
done
q3vl=./build/launcher/q3vl
[[ -x $q3vl ]] || { echo "batch_run_bench: build q3vl first (ninja -C build q3vl)" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
rm -rf "$work" && mkdir -p "$work/media"
cp tests/data/media/shapes_333x517.jpg tests/data/media/testsrc2_320x240_4s.mp4 "$work/media/"
if [[ -z $model ]]; then
  model=$work/model
  $q3vl make-model --out "$model" --seed 0 >/dev/null 2>&1
fi

# The workload: 70% text (prompts of 1 to 60 words), 20% one image, 10% one video; completions
# of 8 to 128 tokens (ignore_eos, so every side generates exactly as many), greedy.
awk -v n="$requests" 'BEGIN {
  srand(7);
  for (i = 0; i < n; i++) {
    words = 1 + int(rand() * 60); text = "";
    for (w = 0; w < words; w++) text = text " word" int(rand() * 1000);
    r = rand(); media = "";
    if (r < 0.2) media = "{\"type\": \"image_url\", \"image_url\": {\"url\": \"media/shapes_333x517.jpg\"}}, ";
    else if (r < 0.3) media = "{\"type\": \"video_url\", \"video_url\": {\"url\": \"media/testsrc2_320x240_4s.mp4\"}}, ";
    printf "{\"custom_id\": \"r%d\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", \"body\": {\"messages\": [{\"role\": \"user\", \"content\": [%s{\"type\": \"text\", \"text\": \"%s\"}]}], \"max_tokens\": %d, \"temperature\": 0, \"ignore_eos\": true}}\n", i, media, text, 8 + int(rand() * 121);
  }
}' >"$work/requests.jsonl"

field() { grep -o "\"$2\": [0-9.e+-]*" "$1" | head -1 | awk '{print $2}'; }

# Continuous: one job; dp=2 as two single-rank replicas under mpirun.
continuous() {  # dp
  local out=$work/cont$1.jsonl sum=$work/cont$1.json
  rm -f "$out"
  echo "batch_run_bench: q3vl run, dp=$1, $requests requests, --max-concurrency $batch" >&2
  if (($1 == 1)); then
    $q3vl run --model "$model" --input "$work/requests.jsonl" --output "$out" --max-concurrency "$batch" \
      --summary "$sum" --progress none --served-model-name bench >&2
  else
    mpirun --oversubscribe -np "$1" $q3vl run --model "$model" --input "$work/requests.jsonl" --output "$out" \
      --max-concurrency "$batch" --summary "$sum" --progress none --served-model-name bench >&2
  fi
  echo "{\"wall_seconds\": $(field "$sum" wall_seconds), \"completion_tokens\": $(field "$sum" completion_tokens), \"requests_per_second\": $(field "$sum" requests_per_second), \"output_tokens_per_second\": $(field "$sum" output_tokens_per_second), \"succeeded\": $(field "$sum" succeeded)}"
}

# Static: replica r takes lines r, r + dp, ... (split in advance) and runs them B at a time.
static_replica() {  # dp replica threads -> prints "seconds tokens"
  local dir=$work/static$1_$2 secs=0 toks=0
  mkdir -p "$dir" && ln -sf "$work/media" "$dir/media"
  awk -v d="$1" -v r="$2" '(NR - 1) % d == r' "$work/requests.jsonl" | split -l "$batch" -d -a 4 - "$dir/batch."
  for f in "$dir"/batch.*; do
    $q3vl run --model "$model" --input "$f" --output "$f.out" --max-concurrency "$batch" --summary "$f.json" \
      --progress none --served-model-name bench --threads "$3" --allowed-media-dir "$work/media" 2>/dev/null
    secs=$(awk -v a="$secs" -v b="$(field "$f.json" wall_seconds)" 'BEGIN {print a + b}')
    toks=$((toks + $(field "$f.json" completion_tokens)))
  done
  echo "$secs $toks"
}
static() {  # dp
  echo "batch_run_bench: static batches of $batch, dp=$1" >&2
  local threads=$(($(nproc) / $1)); ((threads > 0)) || threads=1
  local pids=() r
  for ((r = 0; r < $1; r++)); do static_replica "$1" "$r" "$threads" >"$work/static$1_$r.txt" & pids+=($!); done
  wait "${pids[@]}"
  cat "$work"/static"$1"_*.txt | awk -v n="$requests" '{ if ($1 > s) s = $1; t += $2 }
    END { printf "{\"wall_seconds\": %.3f, \"completion_tokens\": %d, \"requests_per_second\": %.3f, \"output_tokens_per_second\": %.2f}", s, t, n / s, t / s }'
}

c1=$(continuous 1); s1=$(static 1); c2=$(continuous 2); s2=$(static 2)
ratio() { awk -v a="$(echo "$1" | grep -o '"output_tokens_per_second": [0-9.]*' | awk '{print $2}')" \
              -v b="$(echo "$2" | grep -o '"output_tokens_per_second": [0-9.]*' | awk '{print $2}')" 'BEGIN {printf "%.3f", a / b}'; }
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
cat <<JSON
{"benchmark": "batch_run_bench", "machine": {"cpu": "$cpu", "cpus": $(nproc)}, "requests": $requests, "batch": $batch,
 "workload": "70% text (1-60 words), 20% one image, 10% one video; 8-128 completion tokens, greedy, ignore_eos",
 "dp1": {"run": $c1, "static": $s1, "throughput_ratio": $(ratio "$c1" "$s1")},
 "dp2": {"run": $c2, "static": $s2, "throughput_ratio": $(ratio "$c2" "$s2")}}
JSON
