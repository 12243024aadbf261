#!/usr/bin/env bash
# Checks that #include "folder/..." edges follow the layering
#   core -> parallel -> moe, kv -> model -> cluster -> launcher
# (a folder may include only folders listed before it, moe and kv not each other), and that
# model/text and model/media stand on core alone.
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A allowed=(
  [core]="core"
  [parallel]="core parallel"
  [moe]="core parallel moe"
  [kv]="core parallel kv"
  [model]="core parallel moe kv model"
  [cluster]="core parallel moe kv model cluster"
  [launcher]="core parallel moe kv model cluster launcher"
)
bad=0
for folder in "${!allowed[@]}"; do
  [[ -d $folder ]] || continue
  while IFS=: read -r file _ include; do
    target=$(sed -E 's/.*#include "([a-z_]+)\/.*/\1/' <<<"$include")
    [[ -d $target ]] || continue
    if [[ " ${allowed[$folder]} " != *" $target "* ]]; then
      echo "layering violation: $file includes $target/ ($folder may use: ${allowed[$folder]})"
      bad=1
    fi
  done < <(grep -rn '#include "[a-z_]*/' "$folder" --include='*.h' --include='*.cc' --include='*.cu' || true)
done
# model/text (tokenizer, chat template) and model/media (image and video decoding, processors)
# are libraries on core alone. The model proper uses only media/vision_input.h (plain data);
# model/processor.* is the one place that joins text and media.
for sub in model/text model/media; do
  [[ -d $sub ]] || continue
  while IFS=: read -r file _ include; do
    path=$(sed -E 's/.*#include "([^"]+)".*/\1/' <<<"$include")
    case $path in
      core/* | "$sub"/*) ;;
      *) [[ -d ${path%%/*} ]] || continue
         echo "layering violation: $file includes $path ($sub may use: core, $sub)"
         bad=1 ;;
    esac
  done < <(grep -rn '#include "[a-z_]*/' "$sub" --include='*.h' --include='*.cc' || true)
done
while IFS=: read -r file _ include; do
  path=$(sed -E 's/.*#include "([^"]+)".*/\1/' <<<"$include")
  [[ $file == model/processor.* || $path == model/media/vision_input.h ]] && continue
  echo "layering violation: $file includes $path (only model/processor.* joins the model with text and media)"
  bad=1
done < <(grep -n '#include "model/\(text\|media\)/' model/*.h model/*.cc 2>/dev/null || true)
# Model code never calls a communicator: collectives go through parallel/layers.h (and the MoE
# dispatchers), pipeline movement through model/pipeline_stage.h.
while IFS=: read -r file line _; do
  echo "layering violation: $file:$line calls a communicator directly (use parallel/layers.h)"
  bad=1
done < <(grep -rnE '(->|\.)(Send|Recv|Broadcast|AllReduce|AllGather|AllToAll|ReduceScatter|Barrier)\(' model \
           --include='*.h' --include='*.cc' || true)
# Optional backends stay in their sub-targets: only parallel/mpi/ includes <mpi.h>, only
# parallel/nccl/ includes <nccl.h>.
for header in mpi nccl; do
  while IFS=: read -r file _; do
    if [[ $file != parallel/$header/* ]]; then
      echo "layering violation: $file includes <$header.h> (only parallel/$header/ may)"
      bad=1
    fi
  done < <(grep -rln "#include <$header.h>" "${!allowed[@]}" 2>/dev/null || true)
done
((bad == 0)) && echo "check_deps: layering ok"
exit $bad
