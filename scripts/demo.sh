#!/usr/bin/env bash
# The main job on the embedded default: sets up, builds, writes a random-weight demo
# checkpoint in the Hugging Face layout (once), then runs greedy generation on it and prints
# the tokens and the speed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
ninja -C build q3vl
MODEL=build/demo-model
[[ -f $MODEL/config.json ]] || ./build/launcher/q3vl make-model --out "$MODEL" --seed 0
# "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n" as Qwen token ids.
./build/launcher/q3vl generate --model "$MODEL" \
  --ids 151644,872,198,9707,151645,198,151644,77091,198 --max-new-tokens 32 --greedy --ignore-eos "$@"
