"""The `--policy` configurations of bench/run.py: a realistic policy for mailgate's
IMAP listeners, the bare path to compare it with, and the GeoIP and list files the
realistic one reads.

Numbers are generous on purpose: every limit is evaluated on every session (counted,
its token bucket taken) but none is exceeded by the bench's load, all of which comes
from 127.0.0.1 (the flood's sources: FLOOD_SOURCE, banned through the admin endpoint,
and RULE_SOURCE, in the `blocked` list and refused by a policy rule at `connect`)."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MMDB_WRITER = REPO / "tests" / "integration" / "mmdb_writer.pl"
FLOOD_SOURCE = "127.0.0.2"  # banned through the admin endpoint (POST /bans) by the flood scenario
RULE_SOURCE = "127.0.0.3"   # in lists.blocked: refused by the policy rule blocked-nets
# The CC0 country database of scripts/geoip-data.sh, when it is there.
REAL_COUNTRY = Path(os.environ.get("MAILGATE_GEOIP_CACHE",
                                   Path.home() / ".cache" / "mailgate" / "geoip")) / \
    "node_modules" / "@ip-location-db" / "geo-whois-asn-country-mmdb"
BLOCKED_CC = ["KP", "IR", "SY", "CU", "BY", "VE", "MM", "SD"]
COUNTRIES = ["US", "DE", "FR", "GB", "NL", "CN", "RU", "BR", "IN", "JP", "KR", "IT", "ES", "PL", "SE"] + BLOCKED_CC

# No policy: no lists, no geoip, no policies, and no limit rules (the built-in ones
# apply when `limits` is absent). user_sessions, bans and line_timeout keep their
# defaults in both configurations.
NO_POLICY = "limits: { rules: [] }\n"


def _random_networks(rng: random.Random, n: int) -> list[str]:
    """n distinct public IPv4 networks, /16 to /24 (no loopback, private or multicast)."""
    out: set[str] = set()
    while len(out) < n:
        first = rng.choice([x for x in range(1, 224) if x not in (10, 127, 169, 172, 192)])
        plen = rng.choice([16, 18, 20, 22, 24, 24, 24])
        addr = (first << 24) | rng.getrandbits(24)
        out.add(str(ipaddress.ip_network((addr, plen), strict=False)))
    return sorted(out)


def make_policy_files(work: Path, networks: int = 4000) -> dict:
    """Writes the ASN database (and a country one) with mmdb_writer.pl, covering
    `networks` random networks plus 127.0.0.0/24 (so the bench client's lookup goes
    down the whole tree and finds a record), and the `blocked` list file (2000
    networks and RULE_SOURCE). Returns the paths and what was used."""
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(8)
    nets = _random_networks(rng, networks)
    asn_map = {n: {"autonomous_system_number": 64512 + rng.randrange(3000)} for n in nets}
    asn_map["127.0.0.0/24"] = {"autonomous_system_number": 64500}
    cc_map = {n: {"country_code": rng.choice(COUNTRIES)} for n in nets}
    cc_map["127.0.0.0/24"] = {"country_code": "DE"}
    files = {}
    for name, m in (("asn", asn_map), ("country", cc_map)):
        src = work / f"{name}.json"
        src.write_text(json.dumps(m))
        out = work / f"{name}.mmdb"
        subprocess.run(["perl", str(MMDB_WRITER), str(out), str(src)], check=True,
                       stdout=subprocess.DEVNULL)
        files[name] = str(out)
    blocked = _random_networks(random.Random(9), 2000)
    (work / "blocked.cidr").write_text("# bench: blocked networks\n" + "\n".join(blocked + [RULE_SOURCE]) + "\n")
    files["blocked"] = str(work / "blocked.cidr")
    # The country lookup: the real CC0 database first (a real tree; 127.0.0.1 is not
    # in it, a miss), then the generated one (a hit at full depth). Two lookups per
    # session: on the costly side of what a real client address costs.
    real = REAL_COUNTRY / "geo-whois-asn-country-ipv4.mmdb"
    files["country_list"] = ([str(real)] if real.is_file() else []) + [files["country"]]
    files["real_country"] = real.is_file()
    return files


def imap_policy(files: dict, admin_port: int) -> str:
    """10 limit rules, GeoIP country and ASN, 20 policy rules (12 at connect, 8 at
    auth) for the bench's three IMAP listeners (imap, imaps, imap-starttls). IMAP has
    no stage with an RE2 condition (helo, sender, rcpt, header and attachment.filename
    are SMTP's); the rules here are lists, countries, AS numbers, listeners and users.
    No rule matches the bench's sessions (127.0.0.1, user0..user99): every one is
    evaluated, none decides, so no rule stops the evaluation early."""
    country = ", ".join(json.dumps(p) for p in files["country_list"])
    big = "concurrency: 100000, rate: 1000000/1s, burst: 1000000"
    asns = ", ".join(str(64512 + i * 37) for i in range(20))
    disabled = ", ".join(f"disabled{i}" for i in range(50))
    return f"""\
admin: {{ listen: "127.0.0.1:{admin_port}" }}
lists:
  trusted:    {{ cidrs: [10.0.0.0/8, 192.168.0.0/16, "2001:db8::/32"] }}
  blocked:    {{ file: {json.dumps(files['blocked'])} }}
  partners:   {{ cidrs: [198.51.100.0/24, 203.0.113.0/24, 192.0.2.0/24] }}
  tor_exits:  {{ cidrs: [185.220.100.0/22, 185.220.101.0/24, 199.249.230.0/24, 204.8.96.0/22] }}
  blocked_cc: {{ countries: [{", ".join(BLOCKED_CC)}] }}
  watch_cc:   {{ countries: [CN, RU, BR, IN] }}
geoip:
  country: {{ mmdb: [{country}], field: country_code }}
  asn:     {{ mmdb: {json.dumps(files['asn'])} }}
limits:
  defaults: {{ ipv4_prefix: 32, ipv6_prefix: 64 }}
  rules:
    - {{ name: conn-ip-listener, count: connections, key: [client.net, listener], {big}, on_exceed: tempfail }}
    - {{ name: conn-ip, count: connections, key: client.net, {big}, on_exceed: tempfail }}
    - {{ name: conn-listener, count: connections, key: listener, {big}, on_exceed: tempfail }}
    - {{ name: conn-tls-addr, when: {{ listener: [imaps, imap-starttls] }}, count: connections, key: client.ip,
        rate: 1000000/1s, burst: 1000000, on_exceed: tempfail }}
    - {{ name: conn-not-blocked-cc, when: {{ not: {{ country: {{ in: blocked_cc }} }} }}, count: connections,
        key: client.net, {big}, on_exceed: tempfail }}
    - {{ name: auth-fail-ip, count: auth_failures, key: client.net, rate: 10/10m, distinct_credentials: true,
        on_exceed: ban }}
    - {{ name: auth-fail-delay, count: auth_failures, key: client.net, rate: 3/1m, distinct_credentials: true,
        on_exceed: {{ action: delay, delay: 2s..15s }} }}
    - {{ name: auth-fail-user, count: auth_failures, key: user, rate: 30/1h, on_exceed: tempfail }}
    - {{ name: errors-ip, count: errors, key: client.net, rate: 30/1m, on_exceed: tempfail }}
    - {{ name: errors-user, count: errors, key: user, rate: 100/1h, on_exceed: tempfail }}
  bans: {{ ttl: 1h, never: [trusted] }}
policies:
  - {{ name: blocked-nets, stage: connect, when: {{ client.net: {{ in: blocked }} }}, then: reject }}
  - {{ name: tor-exits, stage: connect, when: {{ client.net: {{ in: tor_exits }} }}, then: reject }}
  - {{ name: blocked-countries, stage: connect, when: {{ country: {{ in: blocked_cc }},
        not: {{ client.net: {{ in: partners }} }} }}, then: reject }}
  - {{ name: blocked-asns, stage: connect, when: {{ asn: [{asns}] }}, then: reject }}
  - {{ name: watch-tls-only, stage: connect, when: {{ listener: imap, country: {{ in: watch_cc }} }}, then: tempfail }}
  - {{ name: hosting-asn-plain, stage: connect, when: {{ listener: imap, asn: [64600, 64601, 64602, 64603] }},
        then: reject }}
  - {{ name: pop3-foreign, stage: connect, when: {{ protocol: pop3, not: {{ country: [DE, FR, NL] }} }},
        then: reject }}
  - {{ name: kp-any, stage: connect, when: {{ country: [KP] }}, then: reject }}
  - {{ name: asn-starttls, stage: connect, when: {{ listener: imap-starttls, asn: [64700, 64701] }},
        then: tempfail }}
  - {{ name: partners-watch, stage: connect, when: {{ client.net: {{ in: partners }}, country: {{ in: watch_cc }} }},
        then: tempfail }}
  - {{ name: cc-list-imaps, stage: connect, when: {{ listener: imaps, country: [IR, SY, CU] }}, then: reject }}
  - {{ name: asn-watch, stage: connect, when: {{ asn: [64800, 64801, 64802], country: {{ in: watch_cc }} }},
        then: reject }}
  - {{ name: disabled-users, stage: auth, when: {{ user: [{disabled}] }}, then: reject }}
  - {{ name: admins-trusted-only, stage: auth, when: {{ user: [admin, root, postmaster, abuse],
        not: {{ client.net: {{ in: trusted }} }} }}, then: reject }}
  - {{ name: users-from-blocked-cc, stage: auth, when: {{ country: {{ in: blocked_cc }} }}, then: reject }}
  - {{ name: service-accounts-plain, stage: auth, when: {{ listener: imap, user: [backup, monitor, nagios] }},
        then: reject }}
  - {{ name: users-watch-asn, stage: auth, when: {{ user: [ceo, cfo], asn: [64900, 64901] }}, then: tempfail }}
  - {{ name: users-tor, stage: auth, when: {{ client.net: {{ in: tor_exits }} }}, then: reject }}
  - {{ name: imap-legacy, stage: auth, when: {{ protocol: pop3, user: [legacy1, legacy2] }}, then: reject }}
  - {{ name: users-watch-cc, stage: auth, when: {{ user: [ceo, cfo, hr], country: {{ in: watch_cc }} }},
        then: tempfail }}
"""
