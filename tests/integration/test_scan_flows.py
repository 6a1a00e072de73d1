"""Failure handling of the scanners, end to end (issue 9, items 1, 6, 7): the scan
header, the circuit breaker against a clamd that is stopped, the per-scanner
overrides of hooks.defaults, and clamd's own StreamMaxLength. Real clamd (Debian's
clamav-daemon) with a database the test writes, Dovecot LMTP as the node."""

from __future__ import annotations

import os
import re
import smtplib
import time
import unittest
import urllib.request
from pathlib import Path

import harness
from fixtures import ALICE, USERS
from test_clamd import CLAMD, Clamd, SilentScanner, clean_message, eicar_message

BREAKER_OPEN_S = 2


@unittest.skipUnless(os.path.exists(CLAMD), "clamd is not installed (scripts/deps.sh installs clamav-daemon)")
class ScanFlowsTest(harness.LogsOnFailure, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-scanflows-"))
        cls.node = cls.gateway = cls.clamd = cls.flaky = cls.small = cls.silent = None
        try:
            (cls.dir / "clamd").mkdir()
            (cls.dir / "flaky").mkdir()
            (cls.dir / "small").mkdir()
            cls.clamd = Clamd(cls.dir / "clamd").start()
            cls.flaky = Clamd(cls.dir / "flaky").start()  # the one the breaker test stops
            cls.small = Clamd(cls.dir / "small")  # StreamMaxLength 1M, below the scanner's stream_max
            with open(cls.small.conf, "a") as f:
                f.write("StreamMaxLength 1M\n")
            cls.small.start()
            cls.silent = SilentScanner()
            cls.node = harness.Dovecot(cls.dir / "storage-01", USERS, name="s1")
            cls.node.start()
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            names = ["mx_av", "mx_flaky", "mx_small", "mx_strict", "mx_quick", "mx_streamcap", "mx_clamdlimit"]
            cls.ports = dict(zip(names, harness.free_ports(len(names))))
            cls.admin_port = harness.free_port()
            listeners = [{"name": n, "protocol": "smtp", "port": cls.ports[n]} for n in names]
            backends = [{"name": "storage-01", "imap": cls.node.imap_port, "lmtp": cls.node.lmtp_port}]
            routes = [{"domain": "example.org", "primary": "storage-01"}]
            text = harness.mailgate_config(certificates=[], listeners=listeners, users_file=users_file,
                                           backends=backends, routes=routes, threads=1)
            sock, down = cls.clamd.socket, cls.dir / "nothing.sock"
            text += (
                f'admin: {{ listen: "127.0.0.1:{cls.admin_port}" }}\n'
                "hooks:\n"
                "  defaults:\n"
                "    on_error: tempfail\n"
                "    timeouts: { connect: 1s, scan: 6s }\n"
                "  scanners:\n"
                f"    clamav: {{ type: clamd, endpoints: [\"unix:{sock}\"] }}\n"
                f"    flaky: {{ type: clamd, endpoints: [\"unix:{cls.flaky.socket}\"], on_error: accept,\n"
                f"             breaker: {{ failures: 2, open: {BREAKER_OPEN_S}s }} }}\n"
                f"    small: {{ type: clamd, endpoints: [\"unix:{sock}\"], max_size: 1K, on_oversize: reject }}\n"
                f"    strict: {{ type: clamd, endpoints: [\"unix:{down}\"], on_error: reject }}\n"
                f"    quick: {{ type: clamd, endpoints: [\"tcp:127.0.0.1:{cls.silent.port}\"],\n"
                "             timeouts: { scan: 1s } }\n"
                f"    streamcap: {{ type: clamd, endpoints: [\"unix:{sock}\"], stream_max: 2K }}\n"
                f"    clamdlimit: {{ type: clamd, endpoints: [\"unix:{cls.small.socket}\"], stream_max: 10M }}\n"
                "  flows:\n"
                "    - { when: { listener: mx_av }, run: [clamav] }\n"
                "    - { when: { listener: mx_flaky }, run: [flaky] }\n"
                "    - { when: { listener: mx_small }, run: [small] }\n"
                "    - { when: { listener: mx_strict }, run: [strict] }\n"
                "    - { when: { listener: mx_quick }, run: [quick] }\n"
                "    - { when: { listener: mx_streamcap }, run: [streamcap, clamav] }\n"
                "    - { when: { listener: mx_clamdlimit }, run: [clamdlimit] }\n")
            cls.gateway = harness.Mailgate(cls.dir, text).start()
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def _stop(cls):
        for d in (cls.gateway, cls.node, cls.clamd, cls.flaky, cls.small, cls.silent):
            if d is not None:
                d.stop()
        harness.remove_workdir(cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls._stop()

    def diagnostics(self) -> str:
        out = []
        if self.gateway is not None:
            out.append("--- mailgate log (tail) ---\n" + self.gateway.log_text()[-6000:])
        for c in (self.clamd, self.flaky, self.small):
            if c is not None:
                out.append(f"--- clamd {c.dir.name} log (tail) ---\n" + c.log_text()[-1500:])
        return "\n".join(out)

    def delivered(self, marker: bytes) -> list[Path]:
        base = self.node.mail_dir / "example.org" / "alice" / "Maildir"
        out = []
        for sub in ("new", "cur"):
            for p in (base / sub).glob("*") if (base / sub).exists() else []:
                try:
                    if marker in p.read_bytes():
                        out.append(p)
                except OSError:
                    pass
        return out

    def send(self, listener: str, msg: bytes, timeout: float = 20) -> tuple[int, str]:
        with smtplib.SMTP(harness.HOST, self.ports[listener], timeout=timeout) as s:
            s.ehlo("client.example.com")
            self.assertEqual(s.mail("sender@example.com")[0], 250)
            self.assertEqual(s.rcpt(ALICE)[0], 250)
            code, text = s.data(msg)
            return code, text.decode(errors="replace")

    def scan_header(self, subject: str) -> str:
        """The X-Mailgate-Scan value of the delivered message (exactly one header)."""
        files = harness.wait_for(lambda: self.delivered(subject.encode()), 15, what=f"{subject!r} delivered")
        self.assertEqual(len(files), 1)
        data = files[0].read_bytes()
        head = data.split(b"\r\n\r\n" if b"\r\n\r\n" in data else b"\n\n", 1)[0].decode(errors="replace")
        values = re.findall(r"^X-Mailgate-Scan: (.*?)\r?$", head, re.M)
        self.assertEqual(len(values), 1, head)
        self.assertNotIn("X-Mailgate-Unscanned", head)
        return values[0]

    def metric(self, name: str, scanner: str) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        m = re.search(rf'^{name}\{{scanner="{scanner}"\}} (\d+)$', text, re.M)
        self.assertIsNotNone(m, f"{name}{{scanner={scanner}}} missing from /metrics")
        return int(m.group(1))

    # ------------------------------------------------------------------ tests

    def test_clean_message_carries_the_scan_header(self):
        subject = f"clean {time.time_ns()}"
        self.assertEqual(self.send("mx_av", clean_message(subject))[0], 250)
        self.assertEqual(self.scan_header(subject), "clamav=clean")

    def test_breaker_opens_skips_then_a_trial_closes_it(self):
        """clamd stopped, on_error accept, breaker { failures: 2, open: 2s }: two scans
        fail (delivered, marked error), the breaker opens (logged once, counted), the
        next messages skip the scanner at once (marked skipped); clamd back, after the
        open time one trial scan closes it."""
        self.flaky.stop()
        try:
            for i in range(2):
                subject = f"flaky down {i} {time.time_ns()}"
                self.assertEqual(self.send("mx_flaky", clean_message(subject))[0], 250)
                self.assertEqual(self.scan_header(subject), "flaky=error(unavailable)")
            self.assertEqual(self.metric("mailgate_scanner_breaker_open_total", "flaky"), 1)
            skipped = []
            for i in range(3):
                subject = f"flaky open {i} {time.time_ns()}"
                start = time.monotonic()
                self.assertEqual(self.send("mx_flaky", clean_message(subject))[0], 250)
                skipped.append(time.monotonic() - start)
                self.assertEqual(self.scan_header(subject), "flaky=skipped(breaker)")
            self.assertEqual(self.metric("mailgate_scanner_skipped_total", "flaky"), 3)
            self.assertEqual(self.gateway.log_text().count("scanner circuit breaker opened"), 1)
        finally:
            self.flaky.start()
        time.sleep(BREAKER_OPEN_S + 0.3)
        subject = f"flaky trial {time.time_ns()}"
        self.assertEqual(self.send("mx_flaky", clean_message(subject))[0], 250)
        self.assertEqual(self.scan_header(subject), "flaky=clean")
        self.assertIn("scanner circuit breaker closed", self.gateway.log_text())
        subject = f"flaky closed {time.time_ns()}"
        self.assertEqual(self.send("mx_flaky", clean_message(subject))[0], 250)
        self.assertEqual(self.scan_header(subject), "flaky=clean")
        self.assertEqual(self.metric("mailgate_scanner_breaker_open_total", "flaky"), 1)

    def test_per_scanner_max_size_and_on_oversize(self):
        # small: max_size 1K, on_oversize reject (defaults: 50M, accept_unscanned).
        subject = f"small over {time.time_ns()}"
        code, text = self.send("mx_small", clean_message(subject, ("y" * 70 + "\r\n") * 40))
        self.assertEqual(code, 554, text)
        self.assertRegex(text, r"^5\.3\.4 ")
        subject2 = f"small under {time.time_ns()}"
        self.assertEqual(self.send("mx_small", clean_message(subject2))[0], 250)
        self.assertEqual(self.scan_header(subject2), "small=clean")
        self.assertEqual(self.delivered(subject.encode()), [])

    def test_per_scanner_on_error(self):
        # strict: on_error reject (defaults: tempfail), its endpoint down.
        subject = f"strict {time.time_ns()}"
        code, text = self.send("mx_strict", clean_message(subject))
        self.assertEqual(code, 554, text)
        self.assertEqual(self.delivered(subject.encode()), [])

    def test_per_scanner_scan_timeout(self):
        # quick: timeouts.scan 1s (defaults: 6s) against a scanner that never answers.
        start = time.monotonic()
        code, text = self.send("mx_quick", clean_message(f"quick {time.time_ns()}"))
        elapsed = time.monotonic() - start
        self.assertEqual(code, 451, text)
        self.assertLess(elapsed, 3.0)
        self.assertGreaterEqual(elapsed, 0.8)

    def test_stream_max_marks_unscanned_and_the_next_scanner_runs(self):
        # streamcap: stream_max 2K: a 3K message is not sent to it (accept_unscanned);
        # clamav in the same flow scans it; one header records both, in the order
        # they ran (scanners run in the order of their first mention in any flow:
        # clamav's is the mx_av flow).
        subject = f"streamcap {time.time_ns()}"
        self.assertEqual(self.send("mx_streamcap", clean_message(subject, ("s" * 70 + "\r\n") * 42))[0], 250)
        self.assertEqual(self.scan_header(subject), "clamav=clean; streamcap=unscanned(oversize)")
        # An infected one under stream_max is still refused by the first scanner.
        code, text = self.send("mx_streamcap", eicar_message(f"streamcap eicar {time.time_ns()}"))
        self.assertEqual(code, 554, text)

    def test_clamd_size_limit_reply_is_oversize(self):
        # clamdlimit: stream_max 10M, but that clamd's StreamMaxLength is 1M: clamd
        # answers "INSTREAM size limit exceeded", which is oversize (accept_unscanned).
        subject = f"clamdlimit {time.time_ns()}"
        body = ("0123456789abcdef" * 6 + "\r\n") * 20000  # ~2 MB
        code, text = self.send("mx_clamdlimit", clean_message(subject, body))
        self.assertEqual(code, 250, text)
        self.assertEqual(self.scan_header(subject), "clamdlimit=unscanned(oversize)")
        self.assertIn("INSTREAM size limit exceeded", self.gateway.log_text())


if __name__ == "__main__":
    unittest.main()
