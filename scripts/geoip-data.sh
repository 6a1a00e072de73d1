#!/usr/bin/env bash
# Fetches the GeoIP data the integration tests use: the CC0 country database of
# ip-location-db (geo-whois-asn-country, mmdb files for IPv4 and IPv6) from the npm
# registry into a cache directory. Idempotent: does nothing when the files are there.
# Usage: bash scripts/geoip-data.sh     (prints the directory holding the .mmdb files)
# Environment: MAILGATE_GEOIP_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/mailgate/geoip).
# The tests (tests/integration/test_policy_geoip.py) look in the same place and skip
# their real-data cases when the files are absent.
set -euo pipefail

PKG=@ip-location-db/geo-whois-asn-country-mmdb
cache="${MAILGATE_GEOIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mailgate/geoip}"
dir="$cache/node_modules/$PKG"

if [ -s "$dir/geo-whois-asn-country-ipv4.mmdb" ] && [ -s "$dir/geo-whois-asn-country-ipv6.mmdb" ]; then
  echo "$dir"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "geoip-data: npm not found (scripts/deps.sh installs it)" >&2
  exit 1
fi
mkdir -p "$cache"
# Trust the system's certificate store (Debian's npm brings its own roots otherwise,
# which a TLS-inspecting proxy's CA is not among).
ca=()
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
  export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
  ca=(--cafile /etc/ssl/certs/ca-certificates.crt)
fi
npm install "${ca[@]}" --prefix "$cache" --no-audit --no-fund --no-save "$PKG" >&2
for f in geo-whois-asn-country-ipv4.mmdb geo-whois-asn-country-ipv6.mmdb; do
  if [ ! -s "$dir/$f" ]; then
    echo "geoip-data: $dir/$f missing after npm install" >&2
    exit 1
  fi
done
echo "$dir"
