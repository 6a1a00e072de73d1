#!/usr/bin/env bash
# Side-by-side IMAP benchmark on loopback: Dovecot direct, through mailgate, through
# nginx's mail proxy. Usage (from the repository root, after building mailgate):
#   bash bench/run.sh [bench/run.py options, e.g. --idle-sessions 1000 --keep]
# Needs root (sysctls, Dovecot and nginx as root in a temp dir), dovecot-core,
# dovecot-imapd, dovecot-lmtpd, nginx-light, libnginx-mod-mail.
set -euo pipefail
cd "$(dirname "$0")/.."

# The load generator: build/mailgate-load from the main build if it is there, else
# a standalone build of bench/*.cc (the rest of the tree may not configure yet).
LOAD_BIN=${LOAD_BIN:-}
if [[ -z "$LOAD_BIN" ]]; then
  if [[ -f build/CMakeCache.txt ]] && cmake --build build --target mailgate-load -j2 >/dev/null 2>&1 \
     && [[ -x build/mailgate-load ]]; then
    LOAD_BIN=build/mailgate-load
  else
    mkdir -p build-bench
    g++ -std=c++20 -O2 -g -Wall -Wextra -Wpedantic -Wshadow -Wold-style-cast -Wswitch-enum -I. \
      bench/*.cc -o build-bench/mailgate-load -luring -lssl -lcrypto -pthread
    LOAD_BIN=build-bench/mailgate-load
  fi
fi

# Limits: file descriptors up to the hard limit for every daemon we start;
# inotify for thousands of IDLE sessions in Dovecot; ports for short sessions.
ulimit -n "$(ulimit -Hn)"
sysctl -qw fs.inotify.max_user_instances=8192 || echo "warning: cannot raise inotify instances" >&2
sysctl -qw fs.inotify.max_user_watches=1048576 || echo "warning: cannot raise inotify watches" >&2
sysctl -qw net.ipv4.ip_local_port_range="15000 64999" || true
sysctl -qw net.ipv4.tcp_tw_reuse=1 || true
sysctl -qw net.core.somaxconn=4096 || true

exec python3 bench/run.py --load-bin "$LOAD_BIN" "$@"
