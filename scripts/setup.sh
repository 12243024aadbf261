#!/usr/bin/env bash
# Installs every Debian package q3vl needs to build and test. Idempotent: packages already
# present are skipped, so a second run costs one dpkg query. Uses sudo when not root.
set -euo pipefail

# One list, one place. Grouped by what needs it.
PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config
  # fuzzing (scripts/fuzz.sh): clang with libFuzzer and the sanitizer runtimes
  clang libclang-rt-14-dev
  # core: status, containers, BLAS for the CPU backend (OpenMP build shares our thread pool)
  libabsl-dev libopenblas-openmp-dev
  # core: SHA-256 content digests (caches keyed by content)
  libssl-dev
  # model: config and checkpoint headers; tokenizer (regex, NFC); image and video decoding
  nlohmann-json3-dev libpcre2-dev libutf8proc-dev libjpeg-dev libpng-dev
  libavformat-dev libavcodec-dev libavutil-dev libswscale-dev
  # parallel: the MPI communicator and mpirun (multirank tests, CPU meshes)
  libopenmpi-dev openmpi-bin
  # launcher: command-line parsing
  libboost-dev libboost-program-options-dev
  # tests and benchmarks (the ffmpeg CLI encodes vision_preprocess_bench's long H.264 video)
  libgtest-dev libgmock-dev libbenchmark-dev ffmpeg
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
