#!/usr/bin/env bash
# Sets up, builds (CPU-only default) and runs every test. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/check_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
ninja -C build
ctest --test-dir build --output-on-failure --timeout 600 -j2
# The CUDA targets (core/cuda backend, parallel/nccl) compile for sm_80 and sm_90a in their own
# build tree; their tests carry the gpu label and skip, reported as skipped, without a device.
if [[ -x /usr/local/cuda/bin/nvcc ]]; then
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DQ3VL_CUDA=ON
  ninja -C build-cuda cuda_backend_test nccl_single_gpu_test q3vl_parallel_backends
  ctest --test-dir build-cuda --output-on-failure --timeout 600 -L gpu
else
  echo "test.sh: no nvcc at /usr/local/cuda/bin: the CUDA targets were not compiled" >&2
fi
# A short bounded libFuzzer run of each parser (clang, ASan + UBSan); ctest above already ran
# the deterministic replay of the same targets.
bash scripts/fuzz.sh "${Q3VL_FUZZ_SECONDS:-15}"
