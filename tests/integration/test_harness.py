"""The harness itself (no mailgate): Dovecot on loopback, LMTP delivery, direct
IMAP/POP3 logins, certificates with SAN names, the config renderer, and the
parallel runner's counting and port ranges."""

import imaplib
import os
import poplib
import shlex
import shutil
import ssl
import subprocess
import sys
import unittest
from pathlib import Path

import harness

USERS = {"alice@example.org": "alice-password"}


class HarnessTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-harness-"))
        cls.dovecot = harness.Dovecot(cls.dir / "dovecot", USERS).start()

    @classmethod
    def tearDownClass(cls):
        cls.dovecot.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_dovecot_imap_direct(self):
        self.dovecot.deliver("alice@example.org", "direct imap")
        imap = imaplib.IMAP4(harness.HOST, self.dovecot.imap_port, timeout=10)
        self.assertEqual(imap.login("alice@example.org", "alice-password")[0], "OK")
        typ, data = imap.select("INBOX")
        self.assertEqual(typ, "OK")
        self.assertGreaterEqual(int(data[0]), 1)
        typ, data = imap.search(None, "SUBJECT", '"direct imap"')
        self.assertTrue(data[0].split())
        imap.logout()

    def test_dovecot_pop3_direct(self):
        self.dovecot.deliver("alice@example.org", "direct pop3")
        pop = poplib.POP3(harness.HOST, self.dovecot.pop3_port, timeout=10)
        pop.user("alice@example.org")
        pop.pass_("alice-password")
        self.assertGreaterEqual(pop.stat()[0], 1)
        pop.quit()

    def test_dovecot_rejects_wrong_password(self):
        imap = imaplib.IMAP4(harness.HOST, self.dovecot.imap_port, timeout=10)
        with self.assertRaises(imaplib.IMAP4.error):
            imap.login("alice@example.org", "wrong")
        imap.shutdown()

    def test_dovecot_stop_start(self):
        d = harness.Dovecot(self.dir / "second", USERS, name="second")
        d.start()
        self.assertTrue(d.is_running())
        pid = d.master_pid
        d.stop()
        self.assertFalse(d.is_running())
        self.assertFalse(harness.port_open(d.imap_port))
        d.start()
        self.assertNotEqual(d.master_pid, pid)
        self.assertTrue(harness.port_open(d.imap_port))
        d.stop()
        self.assertIn("starting up", d.log_text())

    def test_certificates(self):
        ca = harness.make_ca(self.dir / "certs")
        cert, key = harness.make_cert(ca, self.dir / "certs", ["a.example.org", "b.example.org"])
        out = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-ext", "subjectAltName"],
                             capture_output=True, text=True).stdout
        self.assertIn("DNS:a.example.org", out)
        self.assertIn("DNS:b.example.org", out)
        self.assertIn("IP Address:127.0.0.1", out)
        verify = subprocess.run(["openssl", "verify", "-CAfile", ca.cert, cert],
                                capture_output=True, text=True)
        self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)
        # A TLS server with it is accepted by a client trusting the CA, for IP and name.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        client = harness.client_context(ca.cert)
        self.assertTrue(client.check_hostname)

    def test_passwd_file(self):
        p = harness.write_passwd(self.dir / "p.passwd", {"u@example.org": "pw"}, "PLAIN")
        self.assertEqual(Path(p).read_text(), "u@example.org:{PLAIN}pw\n")

    def test_config_renderer_ports(self):
        text = harness.mailgate_config(
            certificates=[("/c.pem", "/c.key")], users_file="/u",
            listeners=[{"name": "a", "protocol": "imap", "port": 1234, "tls": "implicit",
                        "max_line": 100, "preauth_timeout": "1s"}],
            backends=[{"name": "s1", "imap": 1, "pop3": 2, "lmtp": 3}],
            routes=[{"domain": "*", "primary": "s1"}])
        self.assertEqual(harness.listen_ports(text), [1234])
        self.assertIn('domain: "*"', text)
        self.assertIn("max_line: 100", text)


class ParallelRunnerTest(unittest.TestCase):
    """tests/integration/run_parallel.py: unittest's summary counted, port ranges apart."""

    def test_counts_from_unittest_output(self):
        import run_parallel
        ok = "test_a ... ok\n\n" + "-" * 70 + "\nRan 4 tests in 1.0s\n\nOK (skipped=1)\n"
        self.assertEqual((run_parallel.count(ok, 0)["passed"], run_parallel.count(ok, 0)["failed"]), (3, 0))
        bad = ("ERROR: setUpClass (test_x.A)\n" + "-" * 70 + "\nRan 5 tests in 2.0s\n\n"
               "FAILED (failures=1, errors=2, skipped=1)\n")
        c = run_parallel.count(bad, 1)
        self.assertEqual((c["passed"], c["failed"], c["skipped"]), (2, 3, 1))
        crashed = run_parallel.count("Traceback (most recent call last):\n", -9)
        self.assertEqual((crashed["passed"], crashed["failed"]), (0, 1))

    def test_port_ranges_of_job_slots_are_disjoint_and_below_the_ephemeral_range(self):
        import run_parallel
        for jobs in (1, 3, 8):
            spans = [tuple(map(int, run_parallel.port_range(s, jobs).split("-"))) for s in range(jobs)]
            for (a, b), (c, _) in zip(spans, spans[1:]):
                self.assertLess(b, c)
            self.assertLess(spans[-1][1], 32768)

    def test_free_ports_come_from_the_given_range(self):
        code = ("import harness; ps = harness.free_ports(20) + [harness.free_port() for _ in range(20)]; "
                "assert len(set(ps)) == 40, ps; assert all(32100 <= p <= 32199 for p in ps), ps; print('ok')")
        env = dict(os.environ, MAILGATE_PORT_RANGE="32100-32199")
        p = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.stdout.strip(), "ok", p.stderr)


class SanitizerReportTest(unittest.TestCase):
    """Mailgate.stop() fails on a sanitizer report in the gateway's stderr, and only on
    what this start of the gateway wrote (a stand-in binary writes the report)."""

    REPORTS = {
        "asan": "==42==ERROR: AddressSanitizer: heap-use-after-free on address 0x602000000010",
        "lsan": "==42==ERROR: LeakSanitizer: detected memory leaks",
        "ubsan": "gateway/x.cc:12:7: runtime error: signed integer overflow: 2147483647 + 1",
    }

    def setUp(self):
        self.dir = Path(harness.make_workdir("mailgate-harness-san-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def gateway(self, stderr_text: str) -> harness.Mailgate:
        fake = self.dir / "fake-mailgate"
        fake.write_text(f"#!/bin/sh\necho '{{\"msg\":\"mailgate started\"}}'\n"
                        f"printf '%s\\n' {shlex.quote(stderr_text)} >&2\nexec sleep 30\n")
        fake.chmod(0o755)
        gw = harness.Mailgate(self.dir, "server: { threads: 1 }\n")
        gw.binary = str(fake)
        gw.seccomp = False
        gw.start()
        harness.wait_for(lambda: stderr_text in gw.log_text(), 5, what="the stand-in's stderr in the log")
        return gw

    def test_each_report_fails_the_stop(self):
        for name, line in self.REPORTS.items():
            with self.subTest(name):
                gw = self.gateway(line)
                with self.assertRaises(harness.SanitizerReport) as cm:
                    gw.stop()
                self.assertIn(line, str(cm.exception))
                self.assertFalse(gw.is_running())

    def test_a_clean_log_and_an_earlier_run_pass(self):
        gw = self.gateway("runtime error: in a log message, not a report")
        gw.stop()
        gw = self.gateway(self.REPORTS["lsan"])
        with self.assertRaises(harness.SanitizerReport):
            gw.stop()
        # The next start of the same gateway (same log) begins clean.
        gw.binary = str(self.dir / "fake-mailgate")
        (self.dir / "fake-mailgate").write_text("#!/bin/sh\nexec sleep 30\n")
        gw.start()
        gw.stop()

    def test_sanitizer_options_are_set_unless_given(self):
        env = harness.sanitizer_env({"UBSAN_OPTIONS": "halt_on_error=0"})
        self.assertEqual(env["ASAN_OPTIONS"], os.environ.get("ASAN_OPTIONS", harness.SANITIZER_DEFAULTS["ASAN_OPTIONS"]))
        self.assertIn("detect_leaks=1", harness.SANITIZER_DEFAULTS["ASAN_OPTIONS"])
        self.assertEqual(env["UBSAN_OPTIONS"], "halt_on_error=0")


if __name__ == "__main__":
    unittest.main()
