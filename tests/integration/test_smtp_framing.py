"""SMTP command framing with outside clients over real sockets, through mailgate into a
Dovecot LMTP node: over-long command lines are answered once and the session stays in
step; message content written before the 354 (RFC 2920 §3.1) is refused and nothing
is delivered. BDAT chunks pipelined with their command are covered by
test_smtp.SmtpMxTest.test_pipelined_transactions."""

from __future__ import annotations

import smtplib
import time
import unittest
from pathlib import Path

import harness
from fixtures import ALICE, USERS
from test_smtp import code, message, smtp_reply

MAX_BAD = 2


class SmtpFramingTest(harness.LogsOnFailure, unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-smtp-framing-"))
        cls.dovecot = None
        cls.gateway = None
        try:
            certs = cls.dir / "certs"
            ca = harness.make_ca(certs)
            cert = harness.make_cert(ca, certs, ["mx.example.org"])
            cls.dovecot = harness.Dovecot(cls.dir / "storage-01", USERS, name="s1")
            cls.dovecot.start()
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            names = ["mx", "mx_4k", "mx_64k", "mx_bad"]
            cls.ports = dict(zip(names, harness.free_ports(len(names))))
            listeners = [
                {"name": "mx", "protocol": "smtp", "port": cls.ports["mx"]},  # max_line 512
                {"name": "mx_4k", "protocol": "smtp", "port": cls.ports["mx_4k"], "max_line": "4K"},
                {"name": "mx_64k", "protocol": "smtp", "port": cls.ports["mx_64k"], "max_line": "64K"},
                {"name": "mx_bad", "protocol": "smtp", "port": cls.ports["mx_bad"],
                 "max_bad_commands": MAX_BAD},
            ]
            backends = [{"name": "storage-01", "imap": cls.dovecot.imap_port, "lmtp": cls.dovecot.lmtp_port}]
            routes = [{"domain": "example.org", "primary": "storage-01"}]
            text = harness.mailgate_config(certificates=[cert], listeners=listeners, users_file=users_file,
                                           backends=backends, routes=routes)
            cls.gateway = harness.Mailgate(cls.dir, text).start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.gateway is not None:
            cls.gateway.stop()
        if cls.dovecot is not None:
            cls.dovecot.stop()
        harness.remove_workdir(cls.dir)

    def diagnostics(self) -> str:
        out = []
        if self.gateway is not None:
            out.append("--- mailgate log (tail) ---\n" + self.gateway.log_text()[-6000:])
        if self.dovecot is not None:
            out.append("--- dovecot log (tail) ---\n" + self.dovecot.log_text()[-2000:])
        return "\n".join(out)

    def client(self, name: str) -> harness.LineClient:
        c = harness.LineClient(self.ports[name], timeout=10)
        self.addCleanup(c.close)
        self.assertEqual(code(smtp_reply(c)), "220")
        c.send_line("EHLO client.example.com")
        self.assertEqual(code(smtp_reply(c)), "250")
        return c

    def delivered(self, marker: bytes) -> int:
        """Messages holding marker in any Maildir of the node (new/ or cur/ only: the
        index files cache headers too)."""
        n = 0
        for p in self.dovecot.mail_dir.glob("*/*/Maildir/*/*"):
            try:
                if p.parent.name in ("new", "cur") and p.is_file() and marker in p.read_bytes():
                    n += 1
            except OSError:
                pass
        return n

    def send_in_chunks(self, c: harness.LineClient, data: bytes, chunk: int) -> None:
        """Separate writes, each given time to arrive as a read of its own. A gateway
        that closes meanwhile shows in the replies the test then reads."""
        try:
            for i in range(0, len(data), chunk):
                c.send(data[i:i + chunk])
                time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            pass

    # ------------------------------------------------------------ over-long lines

    def test_overlong_line_answered_once_then_in_step(self):
        for listener, limit in (("mx", 512), ("mx_4k", 4096), ("mx_64k", 65536)):
            for size in (10 * 1024, 70 * 1024):
                if size <= limit:
                    continue
                with self.subTest(listener=listener, size=size):
                    c = self.client(listener)
                    self.send_in_chunks(c, b"NOOP " + b"x" * size + b"\r\nNOOP\r\n", 3000)
                    first = smtp_reply(c)
                    self.assertEqual(first, ["500 5.5.2 Line too long"])
                    # The next reply is NOOP's: no second answer to the long line.
                    self.assertEqual(smtp_reply(c), ["250 2.0.0 Ok"])
                    c.send_line("HELP")
                    self.assertEqual(code(smtp_reply(c)), "214")
                    c.send_line("QUIT")
                    self.assertEqual(code(smtp_reply(c)), "221")

    def test_overlong_line_whole_in_one_write(self):
        c = self.client("mx")
        c.send(b"NOOP " + b"y" * (70 * 1024) + b"\r\nNOOP\r\n")
        self.assertEqual(smtp_reply(c), ["500 5.5.2 Line too long"])
        self.assertEqual(smtp_reply(c), ["250 2.0.0 Ok"])

    def test_overlong_line_counts_as_one_bad_command(self):
        c = self.client("mx_bad")
        self.send_in_chunks(c, b"NOOP " + b"z" * (10 * 1024) + b"\r\n", 2000)
        self.assertEqual(smtp_reply(c), ["500 5.5.2 Line too long"])
        c.send_line("NOOP")
        self.assertEqual(smtp_reply(c), ["250 2.0.0 Ok"])  # one bad command of MAX_BAD
        c.send_line("BOGUS")
        self.assertEqual(smtp_reply(c)[-1][:9], "500 5.5.1")
        self.assertEqual(smtp_reply(c)[-1][:9], "421 4.7.0")  # the second one closes
        self.assertTrue(c.at_eof())

    # ------------------------------------------------------------ content before the 354

    def test_content_written_with_data_refused_554_nothing_delivered(self):
        marker = f"pipelined-body-{time.time_ns()}"
        c = self.client("mx")
        c.send(f"MAIL FROM:<sender@example.com>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n"
               f"Subject: {marker}\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        self.assertEqual(code(smtp_reply(c)), "250")  # MAIL
        self.assertEqual(code(smtp_reply(c)), "250")  # RCPT
        self.assertEqual(smtp_reply(c), ["554 5.5.0 Error: improper command pipelining after DATA"])
        self.assertTrue(c.at_eof())  # disconnected: no 354, no 250 for the message, no 221
        harness.wait_for(lambda: "improper command pipelining after DATA" in self.gateway.log_text(), 5,
                         what="pipelining log line")
        time.sleep(1.0)
        self.assertEqual(self.delivered(marker.encode()), 0)

    def test_smtplib_message_still_delivered(self):
        subject = f"framing-smtplib-{time.time_ns()}"
        with smtplib.SMTP(harness.HOST, self.ports["mx"], timeout=10) as s:
            s.ehlo("client.example.com")
            self.assertEqual(s.sendmail("sender@example.com", [ALICE], message(subject)), {})
        harness.wait_for(lambda: self.delivered(subject.encode()) == 1, 10, what="delivery")

    def test_pipelined_data_waiting_for_354_still_works(self):
        # RFC 2920: MAIL, RCPT and DATA in one write is fine; the content follows the 354.
        subject = f"framing-pipelined-{time.time_ns()}"
        c = self.client("mx")
        c.send(f"MAIL FROM:<sender@example.com>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n")
        self.assertEqual([code(smtp_reply(c)) for _ in range(3)], ["250", "250", "354"])
        c.send(message(subject) + b".\r\n")
        self.assertEqual(smtp_reply(c)[-1][:9], "250 2.0.0")
        harness.wait_for(lambda: self.delivered(subject.encode()) == 1, 10, what="delivery")


if __name__ == "__main__":
    unittest.main()
