#!/usr/bin/env bash
# Usage: expect_fast_failure.sh LIMIT_SECONDS COMMAND...
# Passes when COMMAND exits non-zero within LIMIT_SECONDS. A command still running at
# LIMIT_SECONDS + 10 is killed (a hang) and fails the test, as does a zero exit status.
limit=$1
shift
start_ms=$(date +%s%3N)
timeout --kill-after=5 $((limit + 10)) "$@"
rc=$?
elapsed_ms=$(($(date +%s%3N) - start_ms))
echo "expect_fast_failure: exit status ${rc} after ${elapsed_ms} ms (limit ${limit} s)"
if ((rc == 0)); then
  echo "FAIL: the command succeeded; it should have failed"
  exit 1
fi
if ((rc == 124 || rc == 137 || elapsed_ms > limit * 1000)); then
  echo "FAIL: the command did not fail within ${limit} s"
  exit 1
fi
echo "PASS"
