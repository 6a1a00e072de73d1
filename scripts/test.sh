#!/usr/bin/env bash
# The whole test suite: dependencies, build, unit tests, integration tests against
# real daemons, and a bounded libFuzzer run of every fuzz target.
# Usage: bash scripts/test.sh        (from anywhere; as root on Debian 12)
# Environment: FUZZ_SECONDS (default 30) per fuzz target; JOBS (default nproc);
#              INTEGRATION_JOBS (default 3) integration test files at a time;
#              BUILD_DIR (default build), FUZZ_BUILD_DIR (default build-fuzz),
#              ASAN_BUILD_DIR (default build-asan: the ASan/UBSan build of the gateway and
#              the test tools, on which the second integration pass runs).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
JOBS="${JOBS:-$(nproc)}"
BUILD_DIR="${BUILD_DIR:-build}"
FUZZ_BUILD_DIR="${FUZZ_BUILD_DIR:-build-fuzz}"
ASAN_BUILD_DIR="${ASAN_BUILD_DIR:-build-asan}"
started=$(date +%s)

step() { printf '\n==== %s (%ds)\n' "$*" "$(( $(date +%s) - started ))"; }

step "dependencies"
bash scripts/deps.sh

step "GeoIP test data"
# Not fatal: without it the GeoIP tests on real data skip (and say why).
bash scripts/geoip-data.sh || echo "GeoIP test data unavailable; those tests will skip" >&2

step "build"
cmake -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$BUILD_DIR" -j"$JOBS"

step "unit tests"
ctest --test-dir "$BUILD_DIR" --output-on-failure --timeout 300 -j"$JOBS"

step "integration tests (${INTEGRATION_JOBS:-3} files at a time)"
# One process per test file, each on ports and directories of its own; the output of
# each file is printed whole when it ends. (One after another, as before:
# python3 -m unittest discover -s tests/integration -v)
MAILGATE_BIN="$(readlink -f "$BUILD_DIR")/mailgate" \
  INTEGRATION_DURATIONS="$(readlink -f "$BUILD_DIR")/integration-durations.json" \
  python3 tests/integration/run_parallel.py -j "${INTEGRATION_JOBS:-3}"
step "sanitizer build (ASan/UBSan: the gateway and the test tools)"
# Debug, -fsanitize=address,undefined, only what the integration tests run: the
# gateway, the seccomp helper and the postgres drivers of tests/tools (a few minutes cold).
cmake -B "$ASAN_BUILD_DIR" -DCMAKE_BUILD_TYPE=Debug -DMAILGATE_SANITIZE=ON
cmake --build "$ASAN_BUILD_DIR" -j"$JOBS" --target mailgate no_io_uring pg_directory_fault pg_queue_store

step "integration tests again: the ASan/UBSan build on the epoll reactor (io_uring denied by no_io_uring's seccomp filter)"
# The whole suite once more, on the sanitizer build: a report (AddressSanitizer,
# LeakSanitizer at the gateway's exit, UBSan) in a gateway's stderr fails the test
# that stopped it (tests/integration/harness.py, Mailgate.stop), and the postgres
# fault tests run their driver with the leak check (PG_FAULT_BIN). The package test
# ran on the release build in the first pass and is skipped here.
asan=$(readlink -f "$ASAN_BUILD_DIR")
MAILGATE_IO_SECCOMP=1 MAILGATE_BIN="$asan/mailgate" PG_FAULT_BIN="$asan/pg_directory_fault" \
  ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  INTEGRATION_DURATIONS="$asan/integration-durations.json" \
  python3 tests/integration/run_parallel.py -j "${INTEGRATION_JOBS:-3}"

step "fuzz build"
CC=clang CXX=clang++ cmake -B "$FUZZ_BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMAILGATE_FUZZ=ON -DMAILGATE_TESTS=OFF
cmake --build "$FUZZ_BUILD_DIR" -j"$JOBS"

step "fuzz runs (${FUZZ_SECONDS}s each, ${JOBS} at a time)"
shopt -s nullglob
targets=("$FUZZ_BUILD_DIR"/tests/fuzz/fuzz_*)
fuzzers=()
for t in "${targets[@]}"; do
  [ -f "$t" ] && [ -x "$t" ] && fuzzers+=("$t")
done
if [ "${#fuzzers[@]}" -eq 0 ]; then
  echo "no fuzz targets were built" >&2
  exit 1
fi
# One target: new inputs go to a scratch dir (listed first) so the checked-in seeds
# stay untouched. Its output is printed whole when it ends.
run_fuzzer() {
  local f=$1 fabs name work corpus seeds rc=0
  fabs=$(readlink -f "$f")
  name=$(basename "$f")
  name=${name#fuzz_}
  work=$(mktemp -d)
  mkdir "$work/corpus"
  corpus=()
  for seeds in "tests/fuzz/corpus/$name" "tests/fuzz/corpus/fuzz_$name"; do
    if [ -d "$seeds" ]; then corpus+=("$repo/$seeds"); fi
  done
  if ! (cd "$work" && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
        "$fabs" -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 \
        -artifact_prefix="$work/" "$work/corpus" "${corpus[@]}" 2>"$work/log"); then
    echo "-- $f ${corpus[*]:-}"
    tail -50 "$work/log" >&2
    echo "fuzz target $name failed; artifacts in $work" >&2
    return 1
  fi
  echo "-- $f ${corpus[*]:-}"
  grep -E '^(stat::number_of_executed_units|Done)' "$work/log" || true
  rm -rf "$work"
}
# Each target is one process: JOBS of them at a time.
failed=0
pids=()
for f in "${fuzzers[@]}"; do
  run_fuzzer "$f" &
  pids+=($!)
  if [ "${#pids[@]}" -ge "$JOBS" ]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || failed=1; done
if [ "$failed" -ne 0 ]; then
  echo "a fuzz target failed" >&2
  exit 1
fi

step "all tests passed"
