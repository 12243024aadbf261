#!/usr/bin/env bash
# Sets up, builds (CPU-only default) and runs every test. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/check_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
ninja -C build
ctest --test-dir build --output-on-failure --timeout 600 -j2
# A short bounded libFuzzer run of each parser (clang, ASan + UBSan); ctest above already ran
# the deterministic replay of the same targets.
bash scripts/fuzz.sh "${Q3VL_FUZZ_SECONDS:-15}"
