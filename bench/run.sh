#!/usr/bin/env bash
# Side-by-side IMAP benchmark on loopback: Dovecot direct, through mailgate, through
# nginx's mail proxy; plus mailgate's logins/s with its PostgreSQL directory, auth
# cache cold and warm; plus SMTP (Postfix's smtp-source → smtp-sink directly, through
# mailgate's MX and through nginx's SMTP proxy). Usage (from the repository root,
# after building mailgate):
#   bash bench/run.sh [bench/run.py options, e.g. --mailgate-bin build-bench2/mailgate --keep]
#   bash bench/run.sh --mailgate-bin build-bench2/mailgate --scenarios logins   # ~30 s
#   bash bench/run.sh --mailgate-bin build/mailgate --scenarios smtp            # ~80 s
# Takes about 5–6 minutes with the defaults; bench/README.md has the figures.
# Needs root (sysctls, Dovecot and nginx as root in a temp dir), dovecot-core,
# dovecot-imapd, dovecot-lmtpd, nginx-light, libnginx-mod-mail, for the logins
# scenario postgresql-15 (run as the `postgres` user in the temp dir), and for the
# smtp scenario postfix (only its /usr/sbin/smtp-source and smtp-sink are used; all
# of these are in scripts/deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# The load generator: a standalone build of bench/*.cc in build-bench/ (our own
# directory: never races a build running in build/, and works while the rest of the
# tree is mid-change). The CMake target mailgate-load builds the same sources.
LOAD_BIN=${LOAD_BIN:-}
if [[ -z "$LOAD_BIN" ]]; then
  mkdir -p build-bench
  LOAD_BIN=build-bench/mailgate-load
  if [[ ! -x "$LOAD_BIN" ]] || [[ -n "$(find bench -name '*.cc' -newer "$LOAD_BIN" -o -name '*.h' -newer "$LOAD_BIN")" ]]; then
    g++ -std=c++20 -O2 -g -Wall -Wextra -Wpedantic -Wshadow -Wold-style-cast -Wswitch-enum -I. \
      bench/*.cc -o "$LOAD_BIN" -lssl -lcrypto -pthread
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
