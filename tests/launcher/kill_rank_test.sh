#!/usr/bin/env bash
# A rank killed in the middle of a distributed generate (SIGKILL, no goodbye) must bring the
# whole job down with a non-zero exit within seconds, not hang the others in a collective.
#   kill_rank_test.sh MPIEXEC Q3VL_BINARY WORK_DIR
set -uo pipefail
mpiexec=$1 q3vl=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
"$q3vl" make-model --out "$work/model" --tokenizer-dir "" >/dev/null 2>&1 || { echo "make-model failed"; exit 1; }
"$mpiexec" --allow-run-as-root --oversubscribe -np 2 "$q3vl" generate --model "$work/model" --mesh tp=2 \
  --ids 151644,872,198,9707 --max-new-tokens 200000 --ignore-eos --json >"$work/log" 2>&1 &
job=$!
# Wait until both ranks are generating, then kill rank 1 outright.
for _ in $(seq 100); do
  mapfile -t ranks < <(pgrep -f -- "--model $work/model --mesh tp=2")
  ((${#ranks[@]} >= 2)) && break
  sleep 0.1
done
sleep 2
mapfile -t ranks < <(pgrep -f -- "--model $work/model --mesh tp=2" | sort -n)
if ((${#ranks[@]} < 2)); then echo "ranks did not start"; cat "$work/log"; kill $job; exit 1; fi
kill -9 "${ranks[1]}"
start=$(date +%s%N)
for _ in $(seq 300); do
  kill -0 $job 2>/dev/null || break
  sleep 0.1
done
if kill -0 $job 2>/dev/null; then
  echo "FAIL: job still running 30 s after a rank was killed"
  pkill -9 -f -- "--model $work/model" ; exit 1
fi
wait $job
code=$?
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "job exited with $code ${elapsed_ms} ms after rank 1 was killed"
((code != 0)) || { echo "FAIL: exit code 0"; exit 1; }
