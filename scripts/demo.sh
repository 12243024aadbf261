#!/usr/bin/env bash
# The main job on the embedded default: sets up, builds, writes a random-weight demo
# checkpoint in the Hugging Face layout with the real Qwen tokenizer and chat template (once),
# then runs a batch job (`q3vl run`) over a small OpenAI batch file of text, image and video
# requests on a 2-rank mesh under mpirun (attention heads and experts split over both ranks),
# with a progress bar, and shows a few result lines and the summary. (Random weights: the text
# is noise; the pipeline is the real one.) Extra arguments go to `q3vl run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build q3vl
MODEL=build/demo-model
[[ -f $MODEL/tokenizer.json ]] || ./build/launcher/q3vl make-model --out "$MODEL" --seed 0
INPUT=tests/data/batch_demo.jsonl
OUTPUT=build/demo-results.jsonl
rm -f "$OUTPUT"  # a rerun with the same output would skip every request already done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # containers often run as root
mpirun --oversubscribe -np 2 ./build/launcher/q3vl run --model "$MODEL" --mesh tp=2,ep=2 \
  --input "$INPUT" --output "$OUTPUT" --served-model-name demo-model --summary build/demo-summary.json --progress bar "$@"
echo
echo "First results ($OUTPUT, one line per request):"
head -n 3 "$OUTPUT" | grep -o '"custom_id":"[^"]*"\|"content":"[^"]*"\|"text":"[^"]*"\|"finish_reason":"[^"]*"' | paste -sd' ' | sed 's/"custom_id"/\n"custom_id"/g'
echo
echo "Summary (build/demo-summary.json):"
cat build/demo-summary.json
