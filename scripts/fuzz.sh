#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-fuzz/ and fuzzes each for a
# bounded time. New interesting inputs go to build-fuzz/corpus/<name>/; a crash leaves its input
# in build-fuzz/ (crash-*) and fails the script.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
targets=(safetensors_header config tokenizer messages api_request)

cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DQ3VL_FUZZ=ON -DQ3VL_BENCHMARKS=OFF >/dev/null
ninja -C build-fuzz "${targets[@]/%/_fuzz}"

for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/corpus/$t"
  echo "fuzz: $t for ${seconds}s"
  (cd build-fuzz && "./tests/fuzz/${t}_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
     -print_final_stats=1 "corpus/$t" "../tests/fuzz/corpus/$t" 2>&1 | grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss|==[0-9]+==ERROR|SUMMARY|INFO: Seed)" || true
   test "${PIPESTATUS[0]}" -eq 0) || { echo "fuzz: $t FAILED (see build-fuzz/crash-*)"; exit 1; }
done
echo "fuzz: all targets clean"
