#!/usr/bin/env bash
# The main job on the embedded default: sets up, builds, writes a random-weight demo
# checkpoint in the Hugging Face layout with the real Qwen tokenizer and chat template (once),
# then runs greedy generation on a chat prompt with an image and a video on a 2-rank mesh under
# mpirun (attention heads and experts split over both ranks), streaming the text and printing
# the speed. (Random weights: the text is noise; the pipeline is the real one.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build q3vl
MODEL=build/demo-model
[[ -f $MODEL/tokenizer.json ]] || ./build/launcher/q3vl make-model --out "$MODEL" --seed 0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # containers often run as root
mpirun --oversubscribe -np 2 ./build/launcher/q3vl generate --model "$MODEL" --mesh tp=2,ep=2 \
  --image tests/data/media/shapes_333x517.jpg --video tests/data/media/testsrc2_320x240_4s.mp4 \
  --prompt "What happens in the video, and which shapes are in the picture?" \
  --max-new-tokens 32 --greedy --ignore-eos "$@"
