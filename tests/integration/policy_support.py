"""Helpers for the policy-layer tests (test_policy_*.py): clients bound to a chosen
loopback source address (127.x.y.z: each test its own "client network"), clients that
send a PROXY v1 header first, one login attempt per protocol with its duration, the
admin endpoint, and the policy sections appended to a config.

MAILGATE_POLICY_STRIP=1 drops the policy sections from every config these tests
write: with it the tests' served paths (logins, delivery, the harness itself) can be
checked against a binary that does not have the policy layer yet; the refusals then
fail, as they should."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import harness

REF = re.compile(r"\(ref [0-9A-Za-z]{4,16}\)")
MMDB_WRITER = Path(__file__).resolve().parent / "mmdb_writer.pl"


# --------------------------------------------------------------------------- config

def with_policy(config_text: str, policy_yaml: str) -> str:
    """config_text with the policy sections (lists, geoip, limits, policies) appended."""
    if os.environ.get("MAILGATE_POLICY_STRIP"):
        return config_text
    return config_text.rstrip("\n") + "\n" + policy_yaml.strip("\n") + "\n"


def has_ref(line: str | None) -> bool:
    return bool(line) and REF.search(line) is not None


def ref_of(line: str) -> str | None:
    m = REF.search(line or "")
    return m.group(0)[5:-1] if m else None


# --------------------------------------------------------------------------- clients

class SourceClient(harness.LineClient):
    """harness.LineClient whose socket is bound to `source` (e.g. "127.0.0.20") before
    it connects, and that may send `header` (a PROXY v1/v2 header) first."""

    def __init__(self, port: int, source: str | None = None, header: bytes | None = None,
                 timeout: float = 10.0, host: str = harness.HOST):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.buf = b""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            if source:
                s.bind((source, 0))
            s.connect((host, port))
            if header:
                s.sendall(header)
        except BaseException:
            s.close()
            raise
        self.sock = s


def proxy_v1(src: str, sport: int = 40000, dst: str = "127.0.0.1", dport: int = 25) -> bytes:
    family = "TCP6" if ":" in src else "TCP4"
    if ":" in src and ":" not in dst:
        dst = "::1"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def smtp_reply(c: harness.LineClient, timeout: float = 10.0) -> list[str]:
    """The lines of one SMTP reply ([] when the connection closed first)."""
    lines = []
    while True:
        line = c.read_line(timeout)
        if line is None:
            return lines
        lines.append(line)
        if len(line) < 4 or line[3] == " ":
            return lines


def first_line(c: harness.LineClient, timeout: float = 10.0) -> str | None:
    """The first line the server sends (None: closed without a word)."""
    try:
        return c.read_line(timeout)
    except socket.timeout:
        return "<timeout: no line within %.0fs>" % timeout


GREETING_OK = {"imap": "* OK", "pop3": "+OK", "smtp": "220", "submission": "220"}


# --------------------------------------------------------------------------- login attempts

@dataclass
class Attempt:
    """One login attempt on a new connection.

    kind: "ok" (logged in), "failed" (the protocol's normal failure reply),
    "refused" (refused in the greeting: never got to send credentials),
    "closed" (credentials sent, then a BYE/421/-ERR and close, or just a close).
    seconds: from sending the credentials to the reply (0 for "refused")."""
    protocol: str
    source: str
    kind: str
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.protocol} from {self.source}: {self.kind} in {self.seconds:.2f}s {self.lines}"


def login_attempt(protocol: str, port: int, source: str, user: str, password: str,
                  timeout: float = 30.0) -> Attempt:
    c = SourceClient(port, source, timeout=timeout)
    try:
        if protocol == "imap":
            return _imap_attempt(c, source, user, password, timeout)
        if protocol == "pop3":
            return _pop3_attempt(c, source, user, password, timeout)
        if protocol in ("submission", "smtp"):
            return _submission_attempt(c, source, user, password, timeout)
        raise ValueError(protocol)
    finally:
        c.close()


def _imap_attempt(c, source, user, password, timeout) -> Attempt:
    greeting = first_line(c, timeout)
    if greeting is None or not greeting.startswith("* OK"):
        return Attempt("imap", source, "refused", 0.0, [str(greeting)])
    t0 = time.monotonic()
    c.send_line(f"a1 LOGIN {harness.imap_quote(user)} {harness.imap_quote(password)}")
    lines = []
    while True:
        try:
            line = c.read_line(timeout)
        except socket.timeout:
            lines.append("<timeout>")
            return Attempt("imap", source, "closed", time.monotonic() - t0, lines)
        if line is None:
            return Attempt("imap", source, "closed", time.monotonic() - t0, lines)
        lines.append(line)
        if line.startswith("a1 "):
            dt = time.monotonic() - t0
            if line.startswith("a1 OK"):
                c.send_line("a2 LOGOUT")
                return Attempt("imap", source, "ok", dt, lines)
            return Attempt("imap", source, "failed", dt, lines)
        if line.startswith("* BYE"):
            return Attempt("imap", source, "closed", time.monotonic() - t0, lines)


def _pop3_attempt(c, source, user, password, timeout) -> Attempt:
    greeting = first_line(c, timeout)
    if greeting is None or not greeting.startswith("+OK"):
        return Attempt("pop3", source, "refused", 0.0, [str(greeting)])
    c.send_line(f"USER {user}")
    r = c.read_line(timeout)
    if r is None or not r.startswith("+OK"):
        return Attempt("pop3", source, "closed", 0.0, [greeting, str(r)])
    t0 = time.monotonic()
    c.send_line(f"PASS {password}")
    try:
        r = c.read_line(timeout)
    except socket.timeout:
        r = "<timeout>"
    dt = time.monotonic() - t0
    if r is None:
        return Attempt("pop3", source, "closed", dt, [])
    if r.startswith("+OK"):
        c.send_line("QUIT")
        return Attempt("pop3", source, "ok", dt, [r])
    if r.startswith("-ERR") and c.at_eof(0.3):
        return Attempt("pop3", source, "closed", dt, [r])
    return Attempt("pop3", source, "failed" if r.startswith("-ERR") else "closed", dt, [r])


def _submission_attempt(c, source, user, password, timeout) -> Attempt:
    greeting = smtp_reply(c, timeout)
    if not greeting or not greeting[-1].startswith("220"):
        return Attempt("submission", source, "refused", 0.0, greeting or ["<closed>"])
    c.send_line("EHLO client.example.com")
    ehlo = smtp_reply(c, timeout)
    if not ehlo or not ehlo[-1].startswith("250"):
        return Attempt("submission", source, "closed", 0.0, ehlo)
    t0 = time.monotonic()
    c.send_line("AUTH PLAIN " + harness.sasl_plain(user, password))
    try:
        r = smtp_reply(c, timeout)
    except socket.timeout:
        r = ["<timeout>"]
    dt = time.monotonic() - t0
    if not r:
        return Attempt("submission", source, "closed", dt, [])
    last = r[-1]
    if last.startswith("235"):
        c.send_line("QUIT")
        return Attempt("submission", source, "ok", dt, r)
    if last.startswith("535"):
        return Attempt("submission", source, "failed", dt, r)
    return Attempt("submission", source, "closed", dt, r)


# --------------------------------------------------------------------------- admin

def admin_request(port: int, path: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=b"" if method == "POST" else None,
                                 headers=harness.admin_headers())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def lists_address(body: str, address: str) -> bool:
    """True when body names address (as such or as address/32), not a longer one."""
    return re.search(rf"(?<![\d.]){re.escape(address)}(?![\d])", body) is not None


# --------------------------------------------------------------------------- mmdb

def perl_mmdb_missing() -> str | None:
    r = subprocess.run(["perl", "-MMaxMind::DB::Writer::Tree", "-e", "1"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return ("Perl's MaxMind::DB::Writer is missing (scripts/deps.sh installs "
                "libmaxmind-db-writer-perl): " + r.stderr.strip()[:200])
    return None


def write_mmdb(path: str | os.PathLike, networks: dict[str, dict]) -> str:
    """Writes an mmdb at path mapping each network ("198.51.100.0/24") to its record."""
    path = Path(path)
    src = path.with_suffix(".json")
    src.write_text(json.dumps(networks))
    r = subprocess.run(["perl", str(MMDB_WRITER), str(path), str(src)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"mmdb_writer.pl {path} failed: {r.stderr}")
    return str(path)


def mmdb_lookup(path: str, address: str) -> dict | None:
    """The record for address in an mmdb file (Perl's MaxMind::DB::Reader), or None."""
    script = ("use MaxMind::DB::Reader; use JSON::PP;"
              "my $r = MaxMind::DB::Reader->new(file => $ARGV[0]);"
              "print JSON::PP->new->canonical->encode([$r->record_for_address($ARGV[1])]);")
    r = subprocess.run(["perl", "-e", script, path, address], capture_output=True, text=True,
                       timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"mmdb lookup of {address} in {path} failed: {r.stderr}")
    return json.loads(r.stdout)[0]


def geoip_cache_dir() -> Path:
    """Where scripts/geoip-data.sh puts the ip-location-db package (same default)."""
    base = os.environ.get("MAILGATE_GEOIP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mailgate", "geoip")
    return Path(base) / "node_modules" / "@ip-location-db" / "geo-whois-asn-country-mmdb"
