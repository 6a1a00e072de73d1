#!/usr/bin/env bash
# Local demo: builds mailgate if needed, then runs it in front of a real Dovecot on
# loopback with demo users, and prints how to connect. Ctrl-C stops and cleans up.
# Usage: bash scripts/demo.sh [--self-test] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
if [ ! -f build/CMakeCache.txt ]; then
  cmake -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
cmake --build build -j"$(nproc)" --target mailgate

export MAILGATE_BIN="${MAILGATE_BIN:-$PWD/build/mailgate}"
exec python3 tests/integration/demo.py "$@"
