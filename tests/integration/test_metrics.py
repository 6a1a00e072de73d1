"""/metrics as Prometheus reads it: traffic through real Dovecot (IMAP, LMTP) moves
the families it should; the exposition parses with the Prometheus client's own text
parser and follows the naming rules (a lint below); a reload and a refused reload
show in the reload families; the example Grafana dashboard uses only families the
gateway exports."""

from __future__ import annotations

import imaplib
import json
import os
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import unittest
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import harness
from fixtures import ALICE, ALICE_PW, USERS

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    # scripts/deps.sh installs Debian's python3-prometheus-client (pure Python), which
    # an interpreter other than /usr/bin/python3 finds only through this path.
    sys.path.append("/usr/lib/python3/dist-packages")
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        text_string_to_metric_families = None

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "mailgate.json"
CERT_CN = "mx.example.org"

NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
# Labels whose values a client chooses: never on a metric.
FORBIDDEN_LABELS = {"client", "address", "ip", "user", "sender", "recipient", "session"}
UNIT_WORDS = ("milliseconds", "microseconds", "nanoseconds", "minutes", "hours", "kilobytes", "megabytes")


def lint(text: str) -> list[str]:
    """Problems with the exposition: one HELP and TYPE per family, before its samples;
    counters end in _total and nothing else does; base units; samples only of declared
    families; label names and escaping valid; no per-client labels; families not split."""
    problems: list[str] = []
    types: dict[str, str] = {}
    helps: set[str] = set()
    closed: set[str] = set()  # families whose samples have ended
    current = None
    for n, line in enumerate(text.splitlines(), 1):
        if not line:
            problems.append(f"{n}: empty line")
            continue
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            if name in helps:
                problems.append(f"{n}: second HELP for {name}")
            helps.add(name)
            continue
        if line.startswith("# TYPE "):
            parts = line.split(" ")
            if len(parts) != 4:
                problems.append(f"{n}: bad TYPE line {line!r}")
                continue
            name, typ = parts[2], parts[3]
            if name in types:
                problems.append(f"{n}: second TYPE for {name}")
            if name not in helps:
                problems.append(f"{n}: TYPE without HELP for {name}")
            if typ not in ("counter", "gauge", "histogram"):
                problems.append(f"{n}: {name}: type {typ}")
            if not name.startswith("mailgate_"):
                problems.append(f"{n}: {name}: no mailgate_ prefix")
            if typ == "counter" and not name.endswith("_total"):
                problems.append(f"{n}: counter {name} does not end in _total")
            if typ != "counter" and name.endswith("_total"):
                problems.append(f"{n}: {typ} {name} ends in _total")
            if any(w in name for w in UNIT_WORDS):
                problems.append(f"{n}: {name}: not in base units")
            if current is not None:
                closed.add(current)
            types[name] = typ
            current = name
            continue
        if line.startswith("#"):
            problems.append(f"{n}: stray comment {line!r}")
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m:
            problems.append(f"{n}: unparsable sample {line!r}")
            continue
        name, labels, value = m.group(1), m.group(3), m.group(4)
        family = name
        if current is not None and types.get(current) == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                if name == current + suffix:
                    family = current
        if family != current:
            problems.append(f"{n}: sample {name} outside its family (current {current})")
        if family in closed:
            problems.append(f"{n}: family {family} split")
        if labels:
            rest = LABEL_RE.sub("", labels).replace(",", "")
            if rest:
                problems.append(f"{n}: bad labels {labels!r}")
            names = [k for k, _ in LABEL_RE.findall(labels)]
            if len(names) != len(set(names)):
                problems.append(f"{n}: repeated label in {labels!r}")
            for k in names:
                if k in FORBIDDEN_LABELS:
                    problems.append(f"{n}: per-client label {k}")
        try:
            float(value)
        except ValueError:
            problems.append(f"{n}: value {value!r}")
    return problems


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value}, through the Prometheus client's parser."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(sm: dict, name: str, **labels) -> float:
    return sm.get((name, frozenset(labels.items())), 0.0)


def families(text: str) -> set[str]:
    return {line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def dashboard_metric_names(dashboard: dict) -> set[str]:
    """Every mailgate_* identifier in the dashboard's PromQL expressions and variable
    queries, without the _bucket/_sum/_count of histograms."""
    exprs: list[str] = []

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k in ("expr", "query", "definition") and isinstance(v, str):
                    exprs.append(v)
                elif k == "query" and isinstance(v, dict) and isinstance(v.get("query"), str):
                    exprs.append(v["query"])
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(dashboard)
    names = set()
    for e in exprs:
        names.update(re.findall(r"\bmailgate_[a-zA-Z0-9_]*", e))
    return names


class MetricsTest(harness.LogsOnFailure, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if text_string_to_metric_families is None:  # scripts/deps.sh installs it: a failure
            raise AssertionError("prometheus_client is not installed "
                                 "(scripts/deps.sh installs python3-prometheus-client)")
        cls.dir = Path(harness.make_workdir("mailgate-metrics-"))
        cls.node = cls.gateway = None
        try:
            certs = cls.dir / "certs"
            cls.ca = harness.make_ca(certs)
            cls.cert = harness.make_cert(cls.ca, certs, [CERT_CN, "imap.example.org"])
            cls.context = harness.client_context(cls.ca.cert)
            cls.node = harness.Dovecot(cls.dir / "storage-01", USERS, name="s1")
            cls.node.start()
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            names = ["imaps", "imap", "mx"]
            cls.ports = dict(zip(names, harness.free_ports(len(names))))
            cls.admin_port = harness.free_port()
            listeners = [
                {"name": "imaps", "protocol": "imap", "port": cls.ports["imaps"], "tls": "implicit"},
                {"name": "imap", "protocol": "imap", "port": cls.ports["imap"], "tls": "starttls"},
                {"name": "mx", "protocol": "smtp", "port": cls.ports["mx"], "tls": "starttls"},
            ]
            backends = [{"name": "storage-01", "imap": cls.node.imap_port, "lmtp": cls.node.lmtp_port,
                         "health_interval": "1s", "health_timeout": "1s"}]
            routes = [{"domain": "example.org", "primary": "storage-01"},
                      {"domain": "*", "primary": "storage-01"}]
            text = harness.mailgate_config(certificates=[cls.cert], listeners=listeners, users_file=users_file,
                                           backends=backends, routes=routes, threads=2)
            down = cls.dir / "no-clamd.sock"
            text += (f'admin: {{ listen: "127.0.0.1:{cls.admin_port}" }}\n'
                     "hooks:\n"
                     "  defaults: { timeouts: { connect: 1s, scan: 5s } }\n"
                     "  scanners:\n"
                     f'    av: {{ type: clamd, endpoints: ["unix:{down}"], on_error: accept }}\n'
                     "  flows:\n"
                     "    - { when: { listener: mx }, run: [av] }\n")
            cls.config_text = text
            cls.gateway = harness.Mailgate(cls.dir, text).start()
            harness.wait_port(cls.admin_port, 10)
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def _stop(cls):
        for d in (cls.gateway, cls.node):
            if d is not None:
                d.stop()
        harness.remove_workdir(cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls._stop()

    def diagnostics(self) -> str:
        return "--- mailgate log (tail) ---\n" + (self.gateway.log_text()[-5000:] if self.gateway else "")

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as r:
            self.assertEqual(r.status, 200)
            return r.read().decode()

    def checked(self) -> tuple[str, dict]:
        text = self.scrape()
        self.assertEqual(lint(text), [])
        return text, samples(text)

    # ------------------------------------------------------------------ tests

    def test_1_format_and_static_families(self):
        text, sm = self.checked()
        for fam in ("mailgate_build_info", "mailgate_process_start_time_seconds", "mailgate_config_generation",
                    "mailgate_config_last_reload_successful", "mailgate_config_last_reload_timestamp_seconds",
                    "mailgate_config_reload_failures_total", "mailgate_tls_certificate_expiry_timestamp_seconds",
                    "mailgate_connections_accepted_total", "mailgate_sessions_active",
                    "mailgate_connections_refused_total", "mailgate_tls_handshakes_total",
                    "mailgate_tls_handshake_failures_total", "mailgate_backend_up", "mailgate_backend_admin_state",
                    "mailgate_backend_attempts_total", "mailgate_backend_failures_total",
                    "mailgate_backend_sessions_active", "mailgate_scanner_scans_total",
                    "mailgate_scanner_duration_seconds", "mailgate_scanner_breaker_state",
                    "mailgate_executor_queue_depth", "mailgate_executor_queue_capacity",
                    "mailgate_executor_rejected_total", "mailgate_executor_wait_seconds_total",
                    "mailgate_policy_actions_total", "mailgate_bans_active"):
            self.assertIn(fam, families(text))
        build = [k for k in sm if k[0] == "mailgate_build_info"]
        self.assertEqual(len(build), 1)
        self.assertEqual(sm[build[0]], 1)
        version = subprocess.run([harness.mailgate_bin(), "--version"], capture_output=True, text=True).stdout
        self.assertIn(dict(build[0][1])["version"], version)
        started = value(sm, "mailgate_process_start_time_seconds")
        self.assertLessEqual(abs(started - time.time()), 600)
        # The certificate's notAfter, as OpenSSL reads it.
        end = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", self.cert[0]],
                             capture_output=True, text=True, check=True).stdout.strip().split("=", 1)[1]
        not_after = datetime.strptime(end, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=timezone.utc).timestamp()
        self.assertEqual(value(sm, "mailgate_tls_certificate_expiry_timestamp_seconds",
                               cert=self.cert[0], subject=CERT_CN), not_after)
        for ex in ("directory", "content", "spool"):
            self.assertGreater(value(sm, "mailgate_executor_queue_capacity", executor=ex), 0, ex)
        self.assertEqual(value(sm, "mailgate_backend_admin_state", backend="storage-01", state="active"), 1)

    def test_2_traffic_moves_the_counters(self):
        _, before = self.checked()
        # An IMAP login over implicit TLS, held open while we look.
        imap = imaplib.IMAP4_SSL(harness.HOST, self.ports["imaps"], ssl_context=self.context, timeout=10)
        imap.login(ALICE, ALICE_PW)
        _, during = self.checked()
        self.assertGreaterEqual(value(during, "mailgate_sessions_active", listener="imaps"), 1)
        self.assertEqual(value(during, "mailgate_backend_sessions_active", backend="storage-01"),
                         value(before, "mailgate_backend_sessions_active", backend="storage-01") + 1)
        imap.logout()
        # A failed login over STARTTLS.
        bad = imaplib.IMAP4(harness.HOST, self.ports["imap"], timeout=10)
        bad.starttls(ssl_context=self.context)
        with self.assertRaises(imaplib.IMAP4.error):
            bad.login(ALICE, "wrong")
        bad.logout()
        # An SMTP message, scanned by a clamd that is not there (on_error: accept).
        with smtplib.SMTP(harness.HOST, self.ports["mx"], timeout=20) as s:
            s.ehlo("client.example.com")
            s.starttls(context=self.context)
            s.ehlo("client.example.com")
            s.sendmail("sender@example.com", [ALICE], b"Subject: metrics\r\n\r\nHello.\r\n")
        # Plain text to the implicit-TLS port: a failed handshake (protocol).
        with socket.create_connection((harness.HOST, self.ports["imaps"]), timeout=5) as raw:
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
            raw.settimeout(5)
            try:
                while raw.recv(4096):
                    pass
            except OSError:
                pass
        # A client that does not trust the gateway's certificate: it ends the handshake with an alert.
        with socket.create_connection((harness.HOST, self.ports["imaps"]), timeout=5) as raw:
            with self.assertRaises(ssl.SSLError):
                ssl.create_default_context().wrap_socket(raw, server_hostname=CERT_CN)

        def settled():
            _, sm = self.checked()
            ok = (value(sm, "mailgate_tls_handshake_failures_total", listener="imaps", reason="certificate")
                  > value(before, "mailgate_tls_handshake_failures_total", listener="imaps", reason="certificate")
                  and value(sm, "mailgate_sessions_active", listener="imaps") == 0
                  and value(sm, "mailgate_backend_sessions_active", backend="storage-01") == 0)
            return sm if ok else None

        after = harness.wait_for(settled, 10, what="the counters to settle")

        def moved(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        self.assertEqual(moved("mailgate_logins_total"), 1)
        self.assertEqual(moved("mailgate_auth_failures_total"), 1)
        self.assertEqual(moved("mailgate_connections_accepted_total", listener="imaps"), 3)
        self.assertEqual(moved("mailgate_connections_accepted_total", listener="imap"), 1)
        self.assertEqual(moved("mailgate_connections_accepted_total", listener="mx"), 1)
        self.assertEqual(moved("mailgate_tls_handshakes_total", listener="imaps"), 1)
        self.assertEqual(moved("mailgate_tls_handshakes_total", listener="imap"), 1)
        self.assertEqual(moved("mailgate_tls_handshakes_total", listener="mx"), 1)
        self.assertEqual(moved("mailgate_tls_handshake_failures_total", listener="imaps", reason="protocol"), 1)
        self.assertEqual(moved("mailgate_tls_handshake_failures_total", listener="imaps", reason="certificate"), 1)
        self.assertEqual(moved("mailgate_backend_logins_total", backend="storage-01"), 1)
        self.assertGreaterEqual(moved("mailgate_backend_attempts_total", backend="storage-01"), 2)
        self.assertEqual(moved("mailgate_smtp_messages_delivered_total"), 1)
        self.assertEqual(moved("mailgate_scanner_scans_total", scanner="av", outcome="error"), 1)
        self.assertEqual(moved("mailgate_scanner_duration_seconds_count", scanner="av"), 1)
        self.assertEqual(moved("mailgate_scanner_duration_seconds_bucket", scanner="av", le="+Inf"), 1)
        self.assertEqual(value(after, "mailgate_scanner_breaker_state", scanner="av"), 0)
        self.assertGreaterEqual(moved("mailgate_executor_jobs_total", executor="directory"), 2)

    def test_3_reloads(self):
        _, before = self.checked()
        gen0 = value(before, "mailgate_config_generation")
        fail0 = value(before, "mailgate_config_reload_failures_total")
        t0 = time.time()
        self.gateway.reload()
        _, sm = harness.wait_for(
            lambda: (lambda t: t if value(t[1], "mailgate_config_generation") == gen0 + 1 else None)(self.checked()),
            10, what="the reload")
        self.assertEqual(value(sm, "mailgate_config_last_reload_successful"), 1)
        self.assertGreaterEqual(value(sm, "mailgate_config_last_reload_timestamp_seconds"), int(t0))
        # A configuration that does not load: refused, the running one kept.
        self.gateway.config_path.write_text("listeners: [ this is not a config\n")
        try:
            self.gateway.reload()
            _, sm = harness.wait_for(
                lambda: (lambda t: t if value(t[1], "mailgate_config_reload_failures_total") == fail0 + 1
                         else None)(self.checked()), 10, what="the refused reload")
            self.assertEqual(value(sm, "mailgate_config_last_reload_successful"), 0)
            self.assertEqual(value(sm, "mailgate_config_generation"), gen0 + 1)
        finally:
            self.gateway.write_config(self.config_text)
        self.gateway.reload()
        harness.wait_for(lambda: value(self.checked()[1], "mailgate_config_last_reload_successful") == 1, 10,
                         what="the good reload")
        self.assertTrue(self.gateway.is_running())

    def test_4_dashboard_uses_only_exported_families(self):
        dash = json.loads(DASHBOARD.read_text())
        self.assertEqual(dash.get("__inputs", [{}])[0].get("name"), "DS_PROMETHEUS")
        text = self.scrape()
        exported = families(text)
        used = dashboard_metric_names(dash)
        self.assertGreaterEqual(len(used), 15)
        missing = set()
        for name in used:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in exported and base not in exported:
                missing.add(name)
        self.assertEqual(missing, set())


class LintTest(unittest.TestCase):
    """The lint itself catches what it is there for."""

    def test_catches(self):
        bad = ("# HELP mailgate_x X.\n# TYPE mailgate_x counter\nmailgate_x 1\n"
               "# HELP mailgate_y_total Y.\n# TYPE mailgate_y_total gauge\nmailgate_y_total 1\n"
               "# HELP mailgate_w_milliseconds W.\n# TYPE mailgate_w_milliseconds gauge\n"
               'mailgate_w_milliseconds{client="1.2.3.4"} 1\n'
               "mailgate_x 2\n")
        problems = "\n".join(lint(bad))
        self.assertIn("does not end in _total", problems)
        self.assertIn("gauge mailgate_y_total ends in _total", problems)
        self.assertIn("not in base units", problems)
        self.assertIn("per-client label client", problems)
        self.assertIn("outside its family", problems)

    def test_good(self):
        good = ('# HELP mailgate_a_total A.\n# TYPE mailgate_a_total counter\nmailgate_a_total{l="x\\"y"} 1\n'
                "# HELP mailgate_h_seconds H.\n# TYPE mailgate_h_seconds histogram\n"
                'mailgate_h_seconds_bucket{le="+Inf"} 1\nmailgate_h_seconds_sum 0.5\nmailgate_h_seconds_count 1\n')
        self.assertEqual(lint(good), [])


if __name__ == "__main__":
    unittest.main()
