"""SMTP submission (listener protocol submission): AUTH PLAIN/LOGIN only over TLS,
sender ownership, and relay of every message to routing.submission_relay — here
Postfix's smtp-sink, whose dump files show exactly what the relay received."""

from __future__ import annotations

import base64
import os
import shutil
import smtplib
import socket
import subprocess
import time
import unittest
from pathlib import Path

import harness
from fixtures import ALICE, ALICE_PW, BOB, USERS
from test_smtp import code, smtp_reply

SMTP_SINK = "/usr/sbin/smtp-sink"
MAX_AUTH = 2


class SmtpSink:
    """Postfix's smtp-sink on a loopback port, dumping every transaction to a file."""

    def __init__(self, directory: Path):
        if not os.access(SMTP_SINK, os.X_OK):
            raise AssertionError(f"{SMTP_SINK} is missing: install postfix (scripts/deps.sh does)")
        self.dir = directory
        self.dumps = directory / "dumps"
        self.dumps.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dumps, 0o777)
        self.port = harness.free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "SmtpSink":
        self.log = open(self.dir / "smtp-sink.log", "ab")
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-v", "-u", "nobody", "-d", str(self.dumps) + "/%M.",
             f"{harness.HOST}:{self.port}", "64"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, start_new_session=True)
        harness.wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "log", None) is not None:
            self.log.close()
            self.log = None
        harness.wait_port_closed(self.port)

    def messages(self) -> list[bytes]:
        out = []
        for p in sorted(self.dumps.glob("*")):
            if p.is_file():
                try:
                    out.append(p.read_bytes())
                except OSError:
                    pass
        return out

    def find(self, marker: bytes) -> list[bytes]:
        return [m for m in self.messages() if marker in m]

    def log_text(self) -> str:
        try:
            return (self.dir / "smtp-sink.log").read_text(errors="replace")
        except OSError:
            return ""


class SubmissionTest(harness.LogsOnFailure, unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-submission-"))
        cls.sink = SmtpSink(cls.dir).start()
        try:
            certs = cls.dir / "certs"
            ca = harness.make_ca(certs)
            cert = harness.make_cert(ca, certs, ["smtp.example.org"])
            cls.context = harness.client_context(ca.cert)
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            names = ["submit", "smtps", "plain", "any"]
            cls.ports = dict(zip(names, harness.free_ports(len(names))))
            listeners = "\n".join([
                f'  - {{ name: submit, protocol: submission, listen: ["{harness.HOST}:{cls.ports["submit"]}"],'
                f" tls: starttls, max_auth_attempts: {MAX_AUTH} }}",
                f'  - {{ name: smtps, protocol: submission, listen: ["{harness.HOST}:{cls.ports["smtps"]}"],'
                " tls: implicit }",
                f'  - {{ name: plain, protocol: submission, listen: ["{harness.HOST}:{cls.ports["plain"]}"],'
                " tls: none }",
                f'  - {{ name: any, protocol: submission, listen: ["{harness.HOST}:{cls.ports["any"]}"],'
                " tls: none, allow_plaintext_auth: true, sender_check: any }",
            ])
            text = f"""server: {{ threads: 2, shutdown_grace: 2s }}
log: {{ level: info, format: json }}
tls:
  certificates:
    - {{ cert: "{cert[0]}", key: "{cert[1]}" }}
listeners:
{listeners}
directory:
  driver: file
  file: {{ users: "{users_file}", failure_delay: 200ms }}
backends:
  - name: relay
    host: {harness.HOST}
    ports: {{ smtp: {cls.sink.port} }}
    deliver: smtp
    health: {{ interval: 1s, timeout: 1s }}
routing:
  static: []
  submission_relay: relay
"""
            cls.gateway = harness.Mailgate(cls.dir, text).start()
        except BaseException:
            cls.sink.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        cls.sink.stop()
        harness.remove_workdir(cls.dir)

    def diagnostics(self) -> str:
        return (f"--- mailgate log (tail) ---\n{self.gateway.log_text()[-6000:]}\n"
                f"--- smtp-sink ---\n{self.sink.log_text()[-3000:]}")

    # -- helpers
    def client(self, name: str = "submit") -> harness.LineClient:
        c = harness.LineClient(self.ports[name], timeout=10)
        self.addCleanup(c.close)
        self.assertEqual(code(smtp_reply(c)), "220")
        return c

    def cmd(self, c: harness.LineClient, line: str) -> list[str]:
        c.send_line(line)
        return smtp_reply(c)

    def tls_client(self) -> harness.LineClient:
        c = self.client("submit")
        self.assertEqual(code(self.cmd(c, "EHLO client.example.com")), "250")
        self.assertEqual(code(self.cmd(c, "STARTTLS")), "220")
        c.start_tls(self.context, "smtp.example.org")
        return c

    def smtplib_tls(self) -> smtplib.SMTP:
        s = smtplib.SMTP(harness.HOST, self.ports["submit"], timeout=20)
        self.addCleanup(s.close)
        s.ehlo("client.example.com")
        s.starttls(context=self.context)
        s.ehlo("client.example.com")
        return s

    def message(self, subject: str, sender: str = ALICE) -> bytes:
        return (f"From: {sender}\r\nTo: friend@elsewhere.example\r\nSubject: {subject}\r\n"
                f"Message-ID: <{time.time_ns()}@client>\r\n\r\nHello from submission.\r\n"
                ".leading dot line\r\nbye\r\n").encode()

    def wait_relayed(self, marker: bytes, timeout: float = 10.0) -> bytes:
        found = harness.wait_for(lambda: self.sink.find(marker), timeout, what=f"{marker!r} at the relay")
        return found[0]

    # -- tests
    def test_auth_not_offered_before_tls_and_refused(self):
        c = self.client("submit")
        ehlo = self.cmd(c, "EHLO client.example.com")
        self.assertFalse(any("AUTH" in l for l in ehlo), ehlo)
        self.assertTrue(any("STARTTLS" in l for l in ehlo), ehlo)
        creds = base64.b64encode(f"\0{ALICE}\0{ALICE_PW}".encode()).decode()
        r = self.cmd(c, f"AUTH PLAIN {creds}")
        self.assertEqual(r[-1][:10], "538 5.7.11", r)
        r = self.cmd(c, f"MAIL FROM:<{ALICE}>")
        self.assertEqual(r[-1][:9], "530 5.7.0", r)
        log = self.gateway.log_text()
        self.assertIn("smtp AUTH refused without TLS", log)

    def test_plain_listener_never_offers_auth(self):
        c = self.client("plain")
        ehlo = self.cmd(c, "EHLO client.example.com")
        self.assertFalse(any("AUTH" in l for l in ehlo), ehlo)
        self.assertEqual(code(self.cmd(c, "AUTH LOGIN")), "538")

    def test_submit_over_starttls_relayed_with_esmtpsa(self):
        s = self.smtplib_tls()
        self.assertIn("auth", s.esmtp_features)
        self.assertIn("PLAIN", s.esmtp_features["auth"])
        s.login(ALICE, ALICE_PW)
        subject = f"sub-{time.time_ns()}"
        body = self.message(subject)
        refused = s.sendmail(ALICE, ["friend@elsewhere.example", "other@else.example"], body)
        self.assertEqual(refused, {})
        dump = self.wait_relayed(subject.encode())
        # The relay got the message byte for byte after the trace header, from the
        # authenticated user's envelope, with both recipients.
        self.assertIn(b"X-Mail-Args: <alice@example.org>", dump)
        self.assertIn(b"X-Rcpt-Args: <friend@elsewhere.example>", dump)
        self.assertIn(b"X-Rcpt-Args: <other@else.example>", dump)
        i = dump.index(b"Received: from client.example.com")
        after = dump[i:]
        end = after.index(b"\n", after.index(b"; "))  # the Received header's last line
        received = after[:end]
        self.assertIn(b"with ESMTPSA", received)
        self.assertIn(b"version=TLSv1.", received)
        relayed = after[end + 1:].replace(b"\r\n", b"\n")
        self.assertTrue(relayed.startswith(body.replace(b"\r\n", b"\n")), relayed[:300])

    def test_implicit_tls_auth_login(self):
        with smtplib.SMTP_SSL(harness.HOST, self.ports["smtps"], timeout=20, context=self.context) as s:
            s.ehlo("client.example.com")
            s.login(ALICE, ALICE_PW, initial_response_ok=False)  # AUTH PLAIN with a 334 round trip
            subject = f"smtps-{time.time_ns()}"
            s.sendmail(ALICE, ["x@elsewhere.example"], self.message(subject))
        self.wait_relayed(subject.encode())

    def test_auth_login_mechanism_and_cancel(self):
        c = self.tls_client()
        self.assertEqual(code(self.cmd(c, "EHLO client.example.com")), "250")
        r = self.cmd(c, "AUTH LOGIN")
        self.assertEqual(r[-1], "334 VXNlcm5hbWU6", r)
        r = self.cmd(c, "*")
        self.assertEqual(code(r), "501", r)
        r = self.cmd(c, "AUTH LOGIN")
        self.assertEqual(code(r), "334")
        r = self.cmd(c, base64.b64encode(ALICE.encode()).decode())
        self.assertEqual(r[-1], "334 UGFzc3dvcmQ6", r)
        r = self.cmd(c, base64.b64encode(ALICE_PW.encode()).decode())
        self.assertEqual(r[-1][:9], "235 2.7.0", r)
        r = self.cmd(c, "AUTH PLAIN")
        self.assertEqual(r[-1][:9], "503 5.5.1", r)

    def test_wrong_password_535_then_421_after_max_attempts(self):
        c = self.tls_client()
        self.assertEqual(code(self.cmd(c, "EHLO client.example.com")), "250")
        bad = base64.b64encode(f"\0{ALICE}\0wrong".encode()).decode()
        t0 = time.monotonic()
        r = self.cmd(c, f"AUTH PLAIN {bad}")
        self.assertEqual(r[-1][:9], "535 5.7.8", r)
        self.assertGreaterEqual(time.monotonic() - t0, 0.15)  # failure_delay 200ms
        r = self.cmd(c, f"AUTH PLAIN {bad}")
        self.assertEqual(r[-1][:9], "421 4.7.0", r)
        self.assertTrue(c.at_eof())
        unknown = base64.b64encode(b"\0nobody@example.org\0x").decode()
        c2 = self.tls_client()
        self.assertEqual(code(self.cmd(c2, "EHLO client.example.com")), "250")
        self.assertEqual(code(self.cmd(c2, f"AUTH PLAIN {unknown}")), "535")

    def test_mail_before_auth_530(self):
        c = self.tls_client()
        self.assertEqual(code(self.cmd(c, "EHLO client.example.com")), "250")
        r = self.cmd(c, f"MAIL FROM:<{ALICE}>")
        self.assertEqual(r[-1][:9], "530 5.7.0", r)

    def test_sender_must_belong_to_user(self):
        s = self.smtplib_tls()
        s.login(ALICE, ALICE_PW)
        code_, msg = s.mail(BOB)
        self.assertEqual(code_, 553, msg)
        self.assertIn(b"5.7.1", msg)
        s.rset()
        code_, msg = s.mail("ALICE@Example.ORG")  # case-insensitive match
        self.assertEqual(code_, 250, msg)
        s.rset()
        code_, msg = s.mail("")  # null sender: receipts, bounces
        self.assertEqual(code_, 250, msg)
        s.rset()
        self.assertIn("sender not owned by the user", self.gateway.log_text())

    def test_sender_check_any(self):
        with smtplib.SMTP(harness.HOST, self.ports["any"], timeout=20) as s:
            s.ehlo("client.example.com")
            s.login(ALICE, ALICE_PW)
            subject = f"any-{time.time_ns()}"
            s.sendmail(BOB, ["x@elsewhere.example"], self.message(subject, sender=BOB))
        dump = self.wait_relayed(subject.encode())
        self.assertIn(b"X-Mail-Args: <bob@example.org>", dump)
        self.assertIn(b"with ESMTPA", dump)  # authenticated, no TLS

    def test_auth_during_transaction_503(self):
        with smtplib.SMTP(harness.HOST, self.ports["any"], timeout=20) as s:
            s.ehlo("client.example.com")
            s.login(ALICE, ALICE_PW)
            self.assertEqual(s.mail(ALICE)[0], 250)
            creds = base64.b64encode(f"\0{ALICE}\0{ALICE_PW}".encode()).decode()
            self.assertEqual(s.docmd("AUTH", f"PLAIN {creds}")[0], 503)

    def test_starttls_injection_discarded(self):
        c = self.client("submit")
        self.assertEqual(code(self.cmd(c, "EHLO client.example.com")), "250")
        c.send(b"STARTTLS\r\nRSET\r\n")
        self.assertEqual(code(smtp_reply(c)), "220")
        c.start_tls(self.context, "smtp.example.org")
        # The RSET sent before the handshake must not be answered after it.
        r = self.cmd(c, "NOOP")
        self.assertEqual(r, ["250 2.0.0 Ok"])
        self.assertIn("pipelined data after STARTTLS discarded", self.gateway.log_text())

    def test_swaks_auth_over_starttls(self):
        subject = f"swaks-{time.time_ns()}"
        p = subprocess.run(["swaks", "--server", f"{harness.HOST}:{self.ports['submit']}", "--tls",
                            "--tls-verify", "--tls-ca-path", str(self.dir / "certs" / "ca.pem"),
                            "--tls-sni", "smtp.example.org",
                            "--auth", "LOGIN", "--auth-user", ALICE, "--auth-password", ALICE_PW,
                            "--from", ALICE, "--to", "someone@elsewhere.example",
                            "--header", f"Subject: {subject}", "--pipeline", "--timeout", "20"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.wait_relayed(subject.encode())

    def test_relay_down_451_nothing_accepted(self):
        self.sink.stop()
        try:
            s = self.smtplib_tls()
            s.login(ALICE, ALICE_PW)
            subject = f"down-{time.time_ns()}"
            with self.assertRaises((smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError)) as cm:
                s.sendmail(ALICE, ["x@elsewhere.example"], self.message(subject))
            e = cm.exception
            codes = [v[0] for v in e.recipients.values()] if isinstance(e, smtplib.SMTPRecipientsRefused) \
                else [e.smtp_code]
            self.assertTrue(all(400 <= c_ < 500 for c_ in codes), codes)
        finally:
            self.sink.start()
        self.assertEqual(self.sink.find(subject.encode()), [])
        # Back up: delivery works again (the health check sees the relay within ~1 s).
        harness.wait_for(lambda: self._try_send(f"back-{time.time_ns()}"), 15, what="relay back")

    def _try_send(self, subject: str) -> bool:
        try:
            with smtplib.SMTP(harness.HOST, self.ports["any"], timeout=20) as s:
                s.ehlo("client.example.com")
                s.login(ALICE, ALICE_PW)
                s.sendmail(ALICE, ["x@elsewhere.example"], self.message(subject))
        except smtplib.SMTPException:
            return False
        return bool(self.sink.find(subject.encode()))


class SubmissionPostfixRelayTest(unittest.TestCase):
    """A real Postfix smtpd as the submission relay: it learns the user's login from
    XCLIENT LOGIN= and the client's address from XCLIENT ADDR=."""

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-subpf-"))
        cls.postfix = harness.Postfix(cls.dir / "postfix", ["friend@relay.example"],
                                      extra_main="smtpd_sasl_authenticated_header = yes\n").start()
        try:
            certs = cls.dir / "certs"
            ca = harness.make_ca(certs)
            cert = harness.make_cert(ca, certs, ["smtp.example.org"])
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            cls.port = harness.free_port()
            text = f"""server: {{ threads: 1, shutdown_grace: 2s }}
log: {{ level: info, format: json }}
tls:
  certificates:
    - {{ cert: "{cert[0]}", key: "{cert[1]}" }}
listeners:
  - {{ name: submit, protocol: submission, listen: ["{harness.HOST}:{cls.port}"], tls: none,
      allow_plaintext_auth: true }}
directory:
  driver: file
  file: {{ users: "{users_file}", failure_delay: 200ms }}
backends:
  - name: relay
    host: {harness.HOST}
    ports: {{ smtp: {cls.postfix.port} }}
    deliver: smtp
    health: {{ interval: 1s, timeout: 1s }}
routing:
  submission_relay: relay
"""
            cls.gateway = harness.Mailgate(cls.dir, text).start()
        except BaseException:
            cls.postfix.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        cls.postfix.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_relay_knows_the_login_and_the_client(self):
        subject = f"pf-{time.time_ns()}"
        with smtplib.SMTP(harness.HOST, self.port, timeout=30, source_address=("127.0.0.7", 0)) as s:
            s.ehlo("laptop.example.org")
            s.login(ALICE, ALICE_PW)
            s.sendmail(ALICE, ["friend@relay.example"],
                       f"From: {ALICE}\r\nSubject: {subject}\r\n\r\nhi\r\n".encode())
        found = harness.wait_for(lambda: self.postfix.find("friend@relay.example", subject.encode()), 20,
                                 what="message at the Postfix relay")
        msg = found[0]
        # Postfix's own Received header names the original client and its login.
        self.assertIn(b"from laptop.example.org (unknown [127.0.0.7])", msg)
        self.assertIn(b"(Authenticated sender: alice@example.org)", msg)
        log = harness.wait_for(lambda: "sasl_username=alice@example.org" in self.postfix.log_text()
                               and self.postfix.log_text(), 10, what="sasl_username in the Postfix log")
        self.assertIn("client=unknown[127.0.0.7]", log)


class SubmissionConfigTest(unittest.TestCase):
    def test_submission_needs_relay(self):
        d = Path(harness.make_workdir("mailgate-subcfg-"))
        self.addCleanup(shutil.rmtree, d, True)
        users = d / "users.passwd"
        harness.write_passwd(str(users), USERS)
        cfg = d / "mailgate.yaml"
        cfg.write_text(f"""listeners:
  - {{ name: submit, protocol: submission, listen: ["127.0.0.1:10587"] }}
directory:
  driver: file
  file: {{ users: "{users}" }}
""")
        p = harness.run_mailgate("--check-config", str(cfg))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn(f"{cfg}:2:5: listener \"submit\": protocol submission needs routing.submission_relay",
                      p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main()
