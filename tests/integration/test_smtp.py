"""SMTP MX (listener protocol smtp) end to end: Python smtplib and raw sockets
through mailgate into real Dovecot LMTP storage nodes, Maildirs checked."""

from __future__ import annotations

import shutil
import smtplib
import socket
import socketserver
import threading
import ssl
import subprocess
import time
import unittest
from pathlib import Path

import harness
from fixtures import ALICE, BOB, USERS

CAROL = "carol@example.net"
MAX_RCPT = 5
MAX_BAD = 4


def smtp_reply(c: harness.LineClient, timeout: float = 10.0) -> list[str]:
    """The lines of one SMTP reply."""
    return c.read_until(lambda l: len(l) < 4 or l[3] == " ", timeout)


def code(lines: list[str]) -> str:
    return lines[-1][:3]


class SmtpEnv:
    """Two Dovecot nodes; example.org → node 1 then node 2, example.net → node 2."""

    def __init__(self, name: str):
        self.dir = Path(harness.make_workdir(f"mailgate-{name}-"))
        self.dovecots: list[harness.Dovecot] = []
        self.gateway: harness.Mailgate | None = None

    def start(self) -> "SmtpEnv":
        try:
            certs = self.dir / "certs"
            self.ca = harness.make_ca(certs)
            self.cert = harness.make_cert(self.ca, certs, ["mx.example.org"])
            self.context = harness.client_context(self.ca.cert)
            for i in range(2):
                d = harness.Dovecot(self.dir / f"storage-{i + 1:02d}", USERS, name=f"s{i + 1}")
                d.start()
                self.dovecots.append(d)
            users_file = str(self.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            names = ["mx", "mx_tls", "mx_limits", "mx_short", "mx_slow"]
            self.ports = dict(zip(names, harness.free_ports(len(names))))
            listeners = [
                {"name": "mx", "protocol": "smtp", "port": self.ports["mx"], "preauth_timeout": "30s",
                 "postmaster": ALICE},
                {"name": "mx_tls", "protocol": "smtp", "port": self.ports["mx_tls"], "tls": "starttls"},
                {"name": "mx_limits", "protocol": "smtp", "port": self.ports["mx_limits"],
                 "max_recipients": MAX_RCPT, "max_bad_commands": MAX_BAD, "max_messages": 2,
                 "max_message_size": "64K"},
                {"name": "mx_short", "protocol": "smtp", "port": self.ports["mx_short"], "preauth_timeout": "1s"},
                {"name": "mx_slow", "protocol": "smtp", "port": self.ports["mx_slow"], "greeting_delay": "1s"},
            ]
            backends = [{"name": f"storage-{i + 1:02d}", "imap": d.imap_port, "lmtp": d.lmtp_port,
                         "health_interval": "1s", "health_timeout": "1s"}
                        for i, d in enumerate(self.dovecots)]
            routes = [{"domain": "example.org", "primary": "storage-01", "secondary": "storage-02"},
                      {"domain": "example.net", "primary": "storage-02", "secondary": "storage-01"}]
            text = harness.mailgate_config(certificates=[self.cert], listeners=listeners,
                                           users_file=users_file, backends=backends, routes=routes)
            self.gateway = harness.Mailgate(self.dir, text).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        for d in self.dovecots:
            d.stop()
        harness.remove_workdir(self.dir)

    def maildir_files(self, node: int, user: str) -> list[Path]:
        local, _, domain = user.partition("@")
        base = self.dovecots[node].mail_dir / domain / local / "Maildir"
        return [p for sub in ("new", "cur") for p in sorted((base / sub).glob("*")) if p.is_file()] \
            if base.exists() else []

    def find(self, node: int, user: str, marker: bytes) -> list[bytes]:
        out = []
        for p in self.maildir_files(node, user):
            try:
                data = p.read_bytes()
            except OSError:
                continue
            if marker in data:
                out.append(data)
        return out

    def anywhere(self, marker: bytes) -> int:
        return sum(len(self.find(n, u, marker)) for n in range(len(self.dovecots)) for u in USERS)

    def diagnostics(self) -> str:
        out = []
        if self.gateway is not None:
            out.append("--- mailgate log (tail) ---\n" + self.gateway.log_text()[-6000:])
        for d in self.dovecots:
            out.append(f"--- {d.name} log (tail) ---\n" + d.log_text()[-2000:])
        return "\n".join(out)


def message(subject: str, body: str = "Hello.\r\n") -> bytes:
    return (f"From: sender@example.com\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@test>\r\n\r\n{body}").encode()


class SmtpTestBase(harness.LogsOnFailure, unittest.TestCase):
    env: SmtpEnv
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.env = SmtpEnv(cls.__name__.lower()).start()

    @classmethod
    def tearDownClass(cls):
        cls.env.stop()

    def diagnostics(self) -> str:
        return self.env.diagnostics()

    def port(self, name: str) -> int:
        return self.env.ports[name]

    def client(self, name: str = "mx") -> harness.LineClient:
        c = harness.LineClient(self.port(name), timeout=10)
        self.addCleanup(c.close)
        self.assertEqual(code(smtp_reply(c)), "220")
        return c

    def cmd(self, c: harness.LineClient, line: str) -> list[str]:
        c.send_line(line)
        return smtp_reply(c)

    def wait_delivered(self, node: int, user: str, marker: bytes, timeout: float = 10.0) -> bytes:
        found = harness.wait_for(lambda: self.env.find(node, user, marker), timeout,
                                 what=f"{marker!r} in {user}'s Maildir on node {node + 1}")
        return found[0]


class SmtpMxTest(SmtpTestBase):
    def test_delivered_byte_for_byte_with_received_header(self):
        subject = f"byte-for-byte {time.time_ns()}"
        body = "line one\r\n.leading dot\r\n..two dots\r\n\r\n\tindented \xe9\r\nlast\r\n"
        msg = (f"From: sender@example.com\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\r\n").encode() + \
            body.encode("latin-1")
        with smtplib.SMTP(harness.HOST, self.port("mx"), timeout=10) as s:
            s.ehlo("client.example.com")
            refused = s.sendmail("sender@example.com", [ALICE], msg, mail_options=["BODY=8BITMIME"])
        self.assertEqual(refused, {})
        data = self.wait_delivered(0, ALICE, subject.encode())
        # Dovecot's Maildir stores LF line ends; otherwise the message is unchanged.
        stored = msg.replace(b"\r\n", b"\n")
        self.assertTrue(data.endswith(stored), data)
        head = data[: len(data) - len(stored)]
        idx = head.rfind(b"Received: from client.example.com ([127.0.0.1])")
        self.assertGreaterEqual(idx, 0, head)
        received = head[idx:]
        self.assertIn(b"(mailgate) with ESMTP", received)
        self.assertIn(f"for <{ALICE}>".encode(), received)
        self.assertRegex(received, rb"^Received: from client\.example\.com \(\[127\.0\.0\.1\]\)\n\tby \S+ "
                                   rb"\(mailgate\) with ESMTP\n\tid \S+\n\tfor <alice@example\.org>; "
                                   rb"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000\n$")
        # Nothing on the secondary.
        self.assertEqual(self.env.find(1, ALICE, subject.encode()), [])

    def test_ehlo_keywords(self):
        c = self.client()
        lines = self.cmd(c, "EHLO client.example.com")
        keywords = {l[4:].split(" ")[0] for l in lines[1:]}
        self.assertTrue({"PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                         "CHUNKING"} <= keywords, lines)
        self.assertNotIn("STARTTLS", keywords)  # listener without TLS
        self.assertIn("250-SIZE 52428800", lines)
        c2 = self.client("mx_tls")
        self.assertIn("250-STARTTLS", self.cmd(c2, "EHLO client.example.com"))

    def test_simple_commands(self):
        c = self.client()
        self.assertEqual(code(self.cmd(c, "HELO client.example.com")), "250")
        self.assertEqual(self.cmd(c, "VRFY alice")[-1][:9], "252 2.5.0")
        self.assertEqual(code(self.cmd(c, "NOOP")), "250")
        self.assertEqual(code(self.cmd(c, "HELP")), "214")
        self.assertEqual(code(self.cmd(c, "RSET")), "250")
        self.assertEqual(self.cmd(c, "RCPT TO:<alice@example.org>")[-1][:9], "503 5.5.1")
        self.assertEqual(self.cmd(c, "DATA")[-1][:9], "503 5.5.1")
        self.assertEqual(self.cmd(c, "QUIT")[-1][:9], "221 2.0.0")
        self.assertTrue(c.at_eof())

    def test_unknown_mailbox_550_511(self):
        c = self.client()
        self.cmd(c, "EHLO client.example.com")
        self.assertEqual(code(self.cmd(c, "MAIL FROM:<sender@example.com>")), "250")
        self.assertEqual(self.cmd(c, "RCPT TO:<nobody@example.org>")[-1][:9], "550 5.1.1")
        self.assertEqual(self.cmd(c, "RCPT TO:<alice@example.org>")[-1][:9], "250 2.1.5")

    def test_postmaster_without_domain(self):
        # RFC 5321 §4.5.1: <Postmaster> is accepted (any case) and goes to the
        # listener's postmaster address; a listener without one refuses it.
        subject = f"pm-{time.time_ns()}"
        with smtplib.SMTP(harness.HOST, self.port("mx"), timeout=20) as s:
            s.ehlo("client.example.com")
            self.assertEqual(s.sendmail("someone@example.com", ["PostMaster"], message(subject)), {})
        data = self.wait_delivered(0, ALICE, subject.encode())
        self.assertIn(b"for <alice@example.org>", data)
        c = self.client("mx_tls")
        self.assertEqual(code(self.cmd(c, "EHLO client.example.com")), "250")
        self.assertEqual(code(self.cmd(c, "MAIL FROM:<someone@example.com>")), "250")
        self.assertEqual(self.cmd(c, "RCPT TO:<Postmaster>")[-1][:9], "550 5.1.1")

    def test_relay_attempts_550_571(self):
        c = self.client()
        self.cmd(c, "EHLO client.example.com")
        self.assertEqual(code(self.cmd(c, "MAIL FROM:<sender@example.com>")), "250")
        for rcpt in ("<victim@example.com>", "<victim%example.com@example.org>",
                     "<example.com!victim@example.org>", "<alice@[127.0.0.1]>"):
            self.assertEqual(self.cmd(c, f"RCPT TO:{rcpt}")[-1][:9], "550 5.7.1", rcpt)
        # A source route is refused outright.
        self.assertEqual(self.cmd(c, "RCPT TO:<@relay.example.com:alice@example.org>")[-1][:3], "501")
        with smtplib.SMTP(harness.HOST, self.port("mx"), timeout=10) as s:
            with self.assertRaises(smtplib.SMTPRecipientsRefused) as cm:
                s.sendmail("sender@example.com", ["victim@example.com"], message("relay"))
            self.assertEqual(cm.exception.recipients["victim@example.com"][0], 550)

    def test_recipients_on_two_nodes_452(self):
        c = self.client()
        self.cmd(c, "EHLO client.example.com")
        self.cmd(c, "MAIL FROM:<sender@example.com>")
        self.assertEqual(code(self.cmd(c, f"RCPT TO:<{ALICE}>")), "250")
        self.assertEqual(self.cmd(c, f"RCPT TO:<{CAROL}>")[-1][:9], "452 4.5.3")
        self.assertEqual(code(self.cmd(c, f"RCPT TO:<{BOB}>")), "250")

    def test_two_recipients_one_message_each(self):
        subject = f"two-rcpt {time.time_ns()}"
        with smtplib.SMTP(harness.HOST, self.port("mx"), timeout=10) as s:
            self.assertEqual(s.sendmail("sender@example.com", [ALICE, BOB], message(subject)), {})
        self.wait_delivered(0, ALICE, subject.encode())
        self.wait_delivered(0, BOB, subject.encode())

    def test_example_net_goes_to_its_own_node(self):
        subject = f"net {time.time_ns()}"
        with smtplib.SMTP(harness.HOST, self.port("mx"), timeout=10) as s:
            self.assertEqual(s.sendmail("sender@example.com", [CAROL], message(subject)), {})
        self.wait_delivered(1, CAROL, subject.encode())

    def test_smuggling_variants_refused(self):
        variants = {
            "lf-dot-lf": b"\n.\n",
            "cr-dot-cr": b"\r.\r",
            "lf-dot-crlf": b"\n.\r\n",
            "crlf-dot-lf": b"\r\n.\n",
            "crlf-dot-cr": b"\r\n.\r",
            "cr-dot-crlf": b"\r.\r\n",
            "nul": b"\r\n\x00.\r\n",
        }
        for name, seq in variants.items():
            with self.subTest(variant=name):
                outer = f"outer-{name}-{time.time_ns()}"
                inner = f"smuggled-{name}-{time.time_ns()}"
                c = self.client()
                self.assertEqual(code(self.cmd(c, "EHLO client.example.com")), "250")
                self.assertEqual(code(self.cmd(c, "MAIL FROM:<sender@example.com>")), "250")
                self.assertEqual(code(self.cmd(c, f"RCPT TO:<{ALICE}>")), "250")
                self.assertEqual(code(self.cmd(c, "DATA")), "354")
                payload = (f"Subject: {outer}\r\n\r\nhello".encode() + seq +
                           f"MAIL FROM:<evil@example.com>\r\nRCPT TO:<{BOB}>\r\nDATA\r\n"
                           f"Subject: {inner}\r\n\r\nsmuggled\r\n.\r\n".encode())
                c.send(payload)
                replies = [smtp_reply(c)]
                # The real end of data is the last CRLF.CRLF: exactly one reply, a refusal.
                self.assertEqual(replies[0][-1][0], "5", replies)
                self.assertEqual(code(self.cmd(c, "NOOP")), "250")
                self.cmd(c, "QUIT")
        time.sleep(1.0)
        for name in variants:
            self.assertEqual(self.env.anywhere(f"smuggled-{name}".encode()), 0, name)
            self.assertEqual(self.env.anywhere(f"outer-{name}".encode()), 0, name)
        self.assertIn("possible smuggling", self.env.gateway.log_text())

    def test_bare_lf_in_command_refused(self):
        c = self.client()
        c.send(b"EHLO client.example.com\n")
        self.assertEqual(smtp_reply(c)[-1][0], "5")
        self.assertEqual(code(self.cmd(c, "EHLO client.example.com")), "250")

    def test_starttls_injection_discarded(self):
        c = self.client("mx_tls")
        self.cmd(c, "EHLO client.example.com")
        c.send(b"STARTTLS\r\nRSET\r\n")
        self.assertEqual(smtp_reply(c)[-1][:9], "220 2.0.0")
        c.start_tls(self.env.context, "mx.example.org")
        # The RSET sent before the handshake is gone: the first reply is EHLO's.
        lines = self.cmd(c, "EHLO client.example.com")
        self.assertEqual(lines[0][:4], "250-", lines)
        self.assertNotIn("250-STARTTLS", lines)
        self.assertEqual(code(self.cmd(c, "NOOP")), "250")
        harness.wait_for(lambda: "pipelined data after STARTTLS discarded" in self.env.gateway.log_text(),
                         5, what="discard log line")

    def test_delivery_over_tls_names_cipher(self):
        subject = f"tls {time.time_ns()}"
        with smtplib.SMTP(harness.HOST, self.port("mx_tls"), timeout=10) as s:
            s.starttls(context=self.env.context)
            s.ehlo("client.example.com")
            self.assertEqual(s.sendmail("sender@example.com", [ALICE], message(subject)), {})
        data = self.wait_delivered(0, ALICE, subject.encode())
        self.assertIn(b"with ESMTPS", data)
        self.assertIn(b"(version=TLSv1.3 cipher=", data)

    def test_pipelined_transactions(self):
        c = self.client()
        self.cmd(c, "EHLO client.example.com")
        s1, s2, s3 = (f"pipe-{i}-{time.time_ns()}" for i in range(3))
        c.send(f"MAIL FROM:<sender@example.com>\r\nRCPT TO:<{ALICE}>\r\nRCPT TO:<{BOB}>\r\nDATA\r\n")
        self.assertEqual([code(smtp_reply(c)) for _ in range(4)], ["250", "250", "250", "354"])
        c.send(f"Subject: {s1}\r\n\r\none\r\n.\r\n")
        self.assertEqual(smtp_reply(c)[-1][:9], "250 2.0.0")
        m2 = f"Subject: {s2}\r\n\r\ntwo\r\n".encode()
        m3 = f"Subject: {s3}\r\n\r\nthree\r\n".encode()
        c.send(f"MAIL FROM:<sender@example.com>\r\nRCPT TO:<{ALICE}>\r\nBDAT {len(m2)} LAST\r\n".encode() + m2 +
               f"MAIL FROM:<sender@example.com>\r\nRCPT TO:<{BOB}>\r\nBDAT 10\r\n".encode() + m3[:10] +
               f"BDAT {len(m3) - 10} LAST\r\n".encode() + m3[10:] + b"QUIT\r\n")
        codes = [code(smtp_reply(c)) for _ in range(8)]
        self.assertEqual(codes, ["250"] * 7 + ["221"])
        for user, subj in ((ALICE, s1), (BOB, s1), (ALICE, s2), (BOB, s3)):
            data = self.wait_delivered(0, user, subj.encode())
            self.assertEqual(data.count(subj.encode()), 1)
        self.assertTrue(self.env.find(0, BOB, s3.encode())[0].endswith(m3.replace(b"\r\n", b"\n")))

    def test_smtplib_several_messages_one_connection(self):
        subjects = [f"multi-{i}-{time.time_ns()}" for i in range(3)]
        with smtplib.SMTP(harness.HOST, self.port("mx"), timeout=10) as s:
            for subj in subjects:
                self.assertEqual(s.sendmail("sender@example.com", [ALICE], message(subj)), {})
        for subj in subjects:
            self.wait_delivered(0, ALICE, subj.encode())

    def test_recipient_limit_452(self):
        c = self.client("mx_limits")
        self.cmd(c, "EHLO client.example.com")
        self.cmd(c, "MAIL FROM:<sender@example.com>")
        for _ in range(MAX_RCPT):
            self.assertEqual(code(self.cmd(c, f"RCPT TO:<{ALICE}>")), "250")
        self.assertEqual(self.cmd(c, f"RCPT TO:<{BOB}>")[-1][:9], "452 4.5.3")

    def test_message_size_limit(self):
        c = self.client("mx_limits")
        self.cmd(c, "EHLO client.example.com")
        self.assertEqual(self.cmd(c, "MAIL FROM:<sender@example.com> SIZE=100000")[-1][:9], "552 5.3.4")
        self.cmd(c, "MAIL FROM:<sender@example.com>")
        self.cmd(c, f"RCPT TO:<{ALICE}>")
        self.assertEqual(code(self.cmd(c, "DATA")), "354")
        subject = f"toobig-{time.time_ns()}"
        c.send(f"Subject: {subject}\r\n\r\n".encode() + (b"x" * 998 + b"\r\n") * 80 + b".\r\n")
        self.assertEqual(smtp_reply(c)[-1][:9], "552 5.3.4")
        time.sleep(0.5)
        self.assertEqual(self.env.anywhere(subject.encode()), 0)

    def test_message_limit_per_session_421(self):
        c = self.client("mx_limits")
        self.cmd(c, "EHLO client.example.com")
        for _ in range(2):
            self.assertEqual(code(self.cmd(c, "MAIL FROM:<sender@example.com>")), "250")
            self.assertEqual(code(self.cmd(c, "RSET")), "250")
        self.assertEqual(self.cmd(c, "MAIL FROM:<sender@example.com>")[-1][:9], "421 4.7.0")
        self.assertTrue(c.at_eof())

    def test_command_timeout_421(self):
        c = self.client("mx_short")
        self.cmd(c, "EHLO client.example.com")
        self.assertEqual(smtp_reply(c, timeout=5)[-1][:9], "421 4.4.2")
        self.assertTrue(c.at_eof())

    def test_greeting_delay(self):
        t0 = time.monotonic()
        c = self.client("mx_slow")  # waits for the 220
        self.assertGreaterEqual(time.monotonic() - t0, 0.8)
        self.assertEqual(code(self.cmd(c, "EHLO client.example.com")), "250")
        early = harness.LineClient(self.port("mx_slow"), timeout=10)
        self.addCleanup(early.close)
        early.send(b"EHLO spam.example.com\r\n")
        self.assertEqual(smtp_reply(early)[-1][:9], "554 5.5.0")
        self.assertTrue(early.at_eof())

    def test_auth_refused_on_mx(self):
        c = self.client()
        self.cmd(c, "EHLO client.example.com")
        self.assertEqual(self.cmd(c, "AUTH PLAIN " + harness.sasl_plain(ALICE, "alice-password"))[-1][:9],
                         "503 5.5.1")

    def test_swaks_pipelined_over_starttls(self):
        self.assertIsNotNone(shutil.which("swaks"), "swaks missing (scripts/deps.sh installs it)")
        subject = f"swaks {time.time_ns()}"
        proc = subprocess.run(["swaks", "--server", f"{harness.HOST}:{self.port('mx_tls')}", "--tls",
                               "--pipeline", "--helo", "client.example.com", "--from", "sender@example.com",
                               "--to", f"{ALICE},{BOB}", "--header", f"Subject: {subject}",
                               "--body", "from swaks"], capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.wait_delivered(0, ALICE, subject.encode())
        self.wait_delivered(0, BOB, subject.encode())

    def test_smtp_source_load_all_accounted_for(self):
        self.assertIsNotNone(shutil.which("smtp-source"), "smtp-source missing (scripts/deps.sh installs postfix)")
        before = len(self.env.maildir_files(0, BOB))
        for extra in ([], ["-d"]):  # reused connections, then one message per connection
            proc = subprocess.run(["smtp-source", "-s", "5", "-m", "40", "-l", "10240", "-f", "sender@example.com",
                                   "-t", BOB, *extra, f"{harness.HOST}:{self.port('mx')}"],
                                  capture_output=True, text=True, timeout=120)
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        harness.wait_for(lambda: len(self.env.maildir_files(0, BOB)) - before >= 80, 20,
                         what="80 messages in bob's Maildir")
        time.sleep(0.5)
        self.assertEqual(len(self.env.maildir_files(0, BOB)) - before, 80)

    def test_bad_commands_421(self):
        c = self.client("mx_limits")
        lines = []
        for _ in range(MAX_BAD):
            lines += self.cmd(c, "BOGUS")
        self.assertEqual(lines[-1][:3], "500")
        self.assertEqual(smtp_reply(c)[-1][:9], "421 4.7.0")
        self.assertTrue(c.at_eof())


class SmtpFailoverTest(SmtpTestBase):
    def test_primary_down_delivers_via_secondary(self):
        d1 = self.env.dovecots[0]
        d1.stop()
        try:
            subject = f"failover {time.time_ns()}"
            with smtplib.SMTP(harness.HOST, self.port("mx"), timeout=20) as s:
                self.assertEqual(s.sendmail("sender@example.com", [ALICE], message(subject)), {})
            self.wait_delivered(1, ALICE, subject.encode())
            self.assertEqual(self.env.find(0, ALICE, subject.encode()), [])
        finally:
            d1.start()

    def test_both_down_451_and_nothing_delivered(self):
        for d in self.env.dovecots:
            d.stop()
        subject = f"both-down {time.time_ns()}"
        try:
            with smtplib.SMTP(harness.HOST, self.port("mx"), timeout=20) as s:
                with self.assertRaises(smtplib.SMTPDataError) as cm:
                    s.sendmail("sender@example.com", [ALICE], message(subject))
                self.assertEqual(cm.exception.smtp_code, 451)
                self.assertIn(b"4.4.1", cm.exception.smtp_error)
        finally:
            for d in self.env.dovecots:
                d.start()
        time.sleep(0.5)
        self.assertEqual(self.env.anywhere(subject.encode()), 0)


# --------------------------------------------------------------------------- fake node

class FakeNode(socketserver.ThreadingTCPServer):
    """A scripted LMTP node on loopback that records what it is sent.

    mode: "ok" (250 per recipient), "drop" (close after the end of data),
    "partial" (250 for the first recipient, 452 for the others), "temp" (451 for all),
    "reject_rcpt" (550 5.1.1 at RCPT)."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.smtputf8 = False  # announce SMTPUTF8
        self.transactions: list[dict] = []
        self.lock = threading.Lock()
        super().__init__((harness.HOST, 0), FakeNodeHandler)
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()

    def delivered(self) -> list[dict]:
        with self.lock:
            return [t for t in self.transactions if t.get("data") is not None]


class FakeNodeHandler(socketserver.StreamRequestHandler):
    def handle(self):
        node: FakeNode = self.server
        w = self.wfile
        w.write(b"220 fake LMTP ready\r\n")
        t = {"commands": [], "rcpts": [], "data": None}
        with node.lock:
            node.transactions.append(t)
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
            t["commands"].append(cmd)
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "LHLO":
                w.write(b"250-fake\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                        + (b"250-SMTPUTF8\r\n" if node.smtputf8 else b"")
                        + b"250-XCLIENT ADDR PORT HELO PROTO LOGIN\r\n250 ENHANCEDSTATUSCODES\r\n")
            elif verb == "XCLIENT":
                w.write(b"220 fake LMTP ready again\r\n")
            elif verb == "MAIL":
                t["mails"] = t.get("mails", 0) + 1
                if node.mode == "421_second_mail" and t["mails"] == 2:
                    # the node's idle timer or per-connection limit, just as MAIL arrives
                    w.write(b"421 4.4.2 fake closing connection\r\n")
                    w.flush()
                    return
                w.write(b"250 2.1.0 Ok\r\n")
            elif verb == "RCPT":
                if node.mode == "reject_rcpt":
                    w.write(b"550 5.1.1 No such user here\r\n")
                else:
                    t["rcpts"].append(cmd[8:])
                    w.write(b"250 2.1.5 Ok\r\n")
            elif verb == "DATA":
                w.write(b"354 Go ahead\r\n")
                w.flush()
                data = b""
                while not data.endswith(b"\r\n.\r\n") and data != b".\r\n":
                    chunk = self.rfile.readline()
                    if not chunk:
                        return
                    data += chunk
                if node.mode == "drop":
                    t["data"] = data
                    return
                # Recorded before the replies: the test may look as soon as it has its 250.
                if node.mode not in ("temp",) and not (node.mode == "partial" and len(t["rcpts"]) > 1):
                    t["data"] = data
                for i, _ in enumerate(t["rcpts"]):
                    if node.mode == "temp" or (node.mode == "partial" and i > 0):
                        w.write(b"452 4.2.2 Mailbox full\r\n")
                    else:
                        w.write(b"250 2.0.0 Saved\r\n")
            elif verb == "QUIT":
                w.write(b"221 2.0.0 Bye\r\n")
                w.flush()
                return
            else:
                w.write(b"500 5.5.1 Unknown\r\n")
            w.flush()


class SmtpFakeNodeTest(unittest.TestCase):
    """mailgate in front of two scripted LMTP nodes: XCLIENT, dot-stuffing, and the
    reply discipline when a node drops, refuses part, or refuses for now."""

    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-smtpfake-"))
        cls.nodes = [FakeNode(), FakeNode()]
        users_file = str(cls.dir / "users.passwd")
        harness.write_passwd(users_file, USERS)
        certs = cls.dir / "certs"
        ca = harness.make_ca(certs)
        cert = harness.make_cert(ca, certs, ["mx.example.org"])
        cls.mx_port = harness.free_port()
        backends = [{"name": f"fake-{i + 1}", "lmtp": n.port, "health_interval": "1h", "health_timeout": "1s"}
                    for i, n in enumerate(cls.nodes)]
        routes = [{"domain": "example.org", "primary": "fake-1", "secondary": "fake-2"}]
        text = harness.mailgate_config(certificates=[cert], listeners=[
            {"name": "mx", "protocol": "smtp", "port": cls.mx_port}],
            users_file=users_file, backends=backends, routes=routes)
        try:
            cls.gateway = harness.Mailgate(cls.dir, text).start()
        except BaseException:
            for n in cls.nodes:
                n.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        for n in cls.nodes:
            n.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        for n in self.nodes:
            n.mode = "ok"
            n.smtputf8 = False
            with n.lock:
                n.transactions.clear()

    def send(self, rcpts, body: bytes) -> tuple[int, bytes]:
        with smtplib.SMTP(harness.HOST, self.mx_port, timeout=20) as s:
            s.ehlo("client.example.com")
            try:
                s.sendmail("sender@example.com", rcpts, body)
            except smtplib.SMTPDataError as e:
                return e.smtp_code, e.smtp_error
            except smtplib.SMTPRecipientsRefused as e:
                return list(e.recipients.values())[0]
        return 250, b""

    def test_xclient_and_dot_stuffing(self):
        body = b"Subject: stuffing\r\n\r\n.one dot\r\n..two\r\n.\r\nend\r\n"
        self.assertEqual(self.send([ALICE], body)[0], 250)
        got = self.nodes[0].delivered()
        self.assertEqual(len(got), 1)
        t = got[0]
        cmds = t["commands"]
        self.assertTrue(cmds[0].startswith("LHLO "), cmds)
        self.assertRegex(cmds[1], r"^XCLIENT ADDR=127\.0\.0\.1 PORT=\d+ HELO=client\.example\.com PROTO=ESMTP$")
        self.assertTrue(cmds[2].startswith("LHLO "), cmds)
        self.assertEqual(cmds[3:6], ["MAIL FROM:<sender@example.com>", f"RCPT TO:<{ALICE}>", "DATA"])
        self.assertTrue(t["data"].startswith(b"Received: from client.example.com ([127.0.0.1])\r\n"))
        self.assertTrue(t["data"].endswith(b"\r\n\r\n..one dot\r\n...two\r\n..\r\nend\r\n.\r\n"), t["data"])
        self.assertEqual(self.nodes[1].delivered(), [])

    def test_node_drops_after_data_451_and_no_second_copy(self):
        self.nodes[0].mode = "drop"
        code_, text = self.send([ALICE], b"Subject: drop\r\n\r\nx\r\n")
        self.assertEqual(code_, 451)
        self.assertIn(b"4.4.1", text)
        self.assertEqual(len(self.nodes[0].delivered()), 1)  # the node may have it
        self.assertEqual(self.nodes[1].delivered(), [])      # the gateway made no second copy

    def test_lmtp_partial_refusal_451_and_logged(self):
        self.nodes[0].mode = "partial"
        code_, text = self.send([ALICE, BOB], b"Subject: partial\r\n\r\nx\r\n")
        self.assertEqual(code_, 451)
        self.assertIn(b"4.4.1", text)
        self.assertEqual(self.nodes[1].delivered(), [])
        harness.wait_for(lambda: "partly refused" in self.gateway.log_text(), 5, what="log line")
        self.assertIn(f"<{BOB}> 452 4.2.2", self.gateway.log_text())

    def test_kept_connection_answering_421_is_replaced(self):
        self.nodes[0].mode = "421_second_mail"
        with smtplib.SMTP(harness.HOST, self.mx_port, timeout=20) as s:
            s.ehlo("client.example.com")
            for i in range(2):
                self.assertEqual(s.sendmail("sender@example.com", [ALICE], f"Subject: keep-{i}\r\n\r\nx\r\n".encode()), {})
        delivered = [t for t in self.nodes[0].delivered()]
        self.assertEqual([b"keep-0" in t["data"] for t in delivered].count(True), 1)
        self.assertEqual([b"keep-1" in t["data"] for t in delivered].count(True), 1)
        self.assertEqual(self.nodes[1].delivered(), [])  # not failed over: a fresh connection to node 1

    def test_temporary_refusal_fails_over(self):
        self.nodes[0].mode = "temp"
        self.assertEqual(self.send([ALICE, BOB], b"Subject: temp\r\n\r\nx\r\n")[0], 250)
        self.assertEqual(self.nodes[0].delivered(), [])
        self.assertEqual(len(self.nodes[1].delivered()), 1)

    def test_both_nodes_refuse_for_now_451(self):
        for n in self.nodes:
            n.mode = "temp"
        code_, text = self.send([ALICE], b"Subject: temp2\r\n\r\nx\r\n")
        self.assertEqual(code_, 451)
        self.assertIn(b"4.4.1", text)

    def test_internationalized_address_to_a_node_without_smtputf8_554_567(self):
        # FakeNode does not offer SMTPUTF8 (RFC 6531 §3.2: such an address is never sent to it)
        with smtplib.SMTP(harness.HOST, self.mx_port, timeout=20) as s:
            s.ehlo("client.example.com")
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                s.sendmail("jörg@example.net", [ALICE], b"Subject: eai\r\n\r\nx\r\n",
                           mail_options=["SMTPUTF8"])
            self.assertEqual(cm.exception.smtp_code, 554)
            self.assertIn(b"5.6.7", cm.exception.smtp_error)
            # an all-ASCII envelope flagged SMTPUTF8 still goes, without the flag
            self.assertEqual(s.sendmail("sender@example.com", [ALICE], b"Subject: eai-ascii\r\n\r\nx\r\n",
                                        mail_options=["SMTPUTF8"]), {})
        for n in self.nodes:
            self.assertFalse(any("jörg" in c for t in n.transactions for c in t["commands"]))
        got = self.nodes[0].delivered()
        self.assertEqual(len(got), 1)
        mail = [c for c in got[0]["commands"] if c.startswith("MAIL ")]
        self.assertEqual(mail, ["MAIL FROM:<sender@example.com> BODY=8BITMIME"])  # SMTPUTF8 implies 8-bit
        self.assertIn(b"eai-ascii", got[0]["data"])

    def test_internationalized_address_goes_to_the_node_that_offers_smtputf8(self):
        self.nodes[1].smtputf8 = True  # the secondary only (a fleet half upgraded)
        failures_before = self.gateway.log_text().count("delivery attempt failed")
        with smtplib.SMTP(harness.HOST, self.mx_port, timeout=20) as s:
            s.ehlo("client.example.com")
            self.assertEqual(s.sendmail("jörg@example.net", [ALICE], b"Subject: eai-2\r\n\r\nx\r\n",
                                        mail_options=["SMTPUTF8"]), {})
        self.assertEqual(self.nodes[0].delivered(), [])
        got = self.nodes[1].delivered()
        self.assertEqual(len(got), 1)
        self.assertIn("MAIL FROM:<jörg@example.net> BODY=8BITMIME SMTPUTF8", got[0]["commands"])
        # not a node failure, and the log shows the address as it is (UTF-8)
        self.assertEqual(self.gateway.log_text().count("delivery attempt failed"), failures_before)
        self.assertIn('"from":"<jörg@example.net>"', self.gateway.log_text())

    def test_node_refuses_recipient_permanently(self):
        self.nodes[0].mode = "reject_rcpt"
        code_, text = self.send([ALICE], b"Subject: rej\r\n\r\nx\r\n")
        self.assertEqual(code_, 550)
        self.assertIn(b"5.1.1", text)
        self.assertEqual(self.nodes[1].delivered(), [])


if __name__ == "__main__":
    unittest.main()
