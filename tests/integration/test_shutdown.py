"""SIGTERM: every session gets its protocol's goodbye. Idle sessions at once: IMAP
`* BYE [UNAVAILABLE] shutting down` (before login, and after it when the node has
answered the client's last command), POP3 `-ERR [SYS/TEMP] shutting down`, SMTP
`421 4.3.2`. A message being received is finished (delivered to the real Dovecot
node and answered 250) and then the 421 follows; a session busy with a command
line gets the goodbye at the end of server.shutdown_grace."""

from __future__ import annotations

import signal
import socket
import time
import unittest
from pathlib import Path

import harness
from fixtures import ALICE, ALICE_PW, USERS

GRACE_S = 4
HOSTNAME = "mx1.gateway.test"


def smtp_reply(c: harness.LineClient, timeout: float = 10.0) -> list[str]:
    return c.read_until(lambda l: len(l) < 4 or l[3] == " ", timeout)


class ShutdownTest(harness.LogsOnFailure, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-shutdown-"))
        cls.dovecot = None
        try:
            cls.certs = cls.dir / "certs"
            ca = harness.make_ca(cls.certs)
            cls.cert = harness.make_cert(ca, cls.certs, ["mx.example.org"])
            cls.dovecot = harness.Dovecot(cls.dir / "s1", USERS, name="s1").start()
            cls.users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(cls.users_file, USERS)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.dovecot is not None:
            cls.dovecot.stop()
        harness.remove_workdir(cls.dir)

    def setUp(self):
        names = ["imap", "pop3", "smtp"]
        self.ports = dict(zip(names, harness.free_ports(len(names))))
        listeners = [
            {"name": "imap", "protocol": "imap", "port": self.ports["imap"], "allow_plaintext_auth": True},
            {"name": "pop3", "protocol": "pop3", "port": self.ports["pop3"], "allow_plaintext_auth": True},
            {"name": "smtp", "protocol": "smtp", "port": self.ports["smtp"]},
        ]
        d = self.dovecot
        backends = [{"name": "storage-01", "imap": d.imap_port, "pop3": d.pop3_port, "lmtp": d.lmtp_port}]
        routes = [{"domain": "example.org", "primary": "storage-01"}]
        text = harness.mailgate_config(certificates=[self.cert], listeners=listeners,
                                       users_file=self.users_file, backends=backends, routes=routes,
                                       shutdown_grace=f"{GRACE_S}s")
        text = text.replace("server: {", f"server: {{ hostname: {HOSTNAME},", 1)
        self.wd = self.dir / f"gw-{self._testMethodName}"
        self.gateway = harness.Mailgate(self.wd, text).start()
        self.clients: list[harness.LineClient] = []

    def tearDown(self):
        for c in self.clients:
            c.close()
        super().tearDown()
        self.gateway.stop()

    def diagnostics(self) -> str:
        return "--- mailgate log (tail) ---\n" + self.gateway.log_text()[-6000:]

    def client(self, name: str) -> harness.LineClient:
        c = harness.LineClient(self.ports[name], timeout=10)
        self.clients.append(c)
        return c

    def sigterm(self) -> float:
        self.gateway.proc.send_signal(signal.SIGTERM)
        return time.monotonic()

    def assert_goodbye_then_eof(self, c: harness.LineClient, expected_prefix: str, within: float):
        start = time.monotonic()
        line = c.read_line(timeout=within + 2)
        self.assertIsNotNone(line, "closed without a goodbye")
        self.assertTrue(line.startswith(expected_prefix), line)
        self.assertLess(time.monotonic() - start, within, f"goodbye came late: {line}")
        self.assertTrue(c.at_eof(5), "not closed after the goodbye")

    def test_idle_sessions_get_the_goodbye_at_once(self):
        imap_pre = self.client("imap")
        self.assertTrue(imap_pre.read_line().startswith("* OK"))
        imap_post = self.client("imap")
        imap_post.read_line()
        lines = imap_post.command("a1", f"LOGIN {ALICE} {ALICE_PW}")
        self.assertTrue(lines[-1].startswith("a1 OK"), lines)
        lines = imap_post.command("a2", "SELECT INBOX")
        self.assertTrue(lines[-1].startswith("a2 OK"), lines)
        pop3 = self.client("pop3")
        self.assertTrue(pop3.read_line().startswith("+OK"))
        smtp = self.client("smtp")
        smtp_reply(smtp)
        smtp.send_line("EHLO client.example.com")
        smtp_reply(smtp)
        time.sleep(0.3)
        self.sigterm()
        # Well before the end of the grace: these sessions have nothing in progress.
        self.assert_goodbye_then_eof(imap_pre, "* BYE [UNAVAILABLE] shutting down", GRACE_S - 1)
        self.assert_goodbye_then_eof(imap_post, "* BYE [UNAVAILABLE] shutting down", GRACE_S - 1)
        self.assert_goodbye_then_eof(pop3, "-ERR [SYS/TEMP] shutting down", GRACE_S - 1)
        self.assert_goodbye_then_eof(smtp, f"421 4.3.2 {HOSTNAME} Service shutting down", GRACE_S - 1)
        self.assertEqual(self.gateway.proc.wait(GRACE_S + 10), 0)
        ends = [l for l in self.gateway.log_lines() if l.get("msg") == "session end"]
        self.assertEqual(sum(1 for l in ends if l.get("outcome") == "shutdown"), 4, ends)

    def test_pop3_after_login_gets_the_goodbye(self):
        pop3 = self.client("pop3")
        pop3.read_line()
        pop3.send_line(f"USER {ALICE}")
        self.assertTrue(pop3.read_line().startswith("+OK"))
        pop3.send_line(f"PASS {ALICE_PW}")
        self.assertTrue(pop3.read_line().startswith("+OK"))
        time.sleep(0.3)
        self.sigterm()
        self.assert_goodbye_then_eof(pop3, "-ERR [SYS/TEMP] shutting down", GRACE_S - 1)

    def test_smtp_message_in_data_is_finished_then_421(self):
        marker = f"shutdown-{time.time_ns()}"
        smtp = self.client("smtp")
        smtp_reply(smtp)
        smtp.send_line("EHLO client.example.com")
        smtp_reply(smtp)
        smtp.send_line("MAIL FROM:<sender@example.com>")
        self.assertEqual(smtp_reply(smtp)[-1][:3], "250")
        smtp.send_line(f"RCPT TO:<{ALICE}>")
        self.assertEqual(smtp_reply(smtp)[-1][:3], "250")
        smtp.send_line("DATA")
        self.assertEqual(smtp_reply(smtp)[-1][:3], "354")
        smtp.send(f"From: sender@example.com\r\nTo: {ALICE}\r\nSubject: {marker}\r\n\r\nfirst half\r\n")
        time.sleep(0.3)
        self.sigterm()
        time.sleep(1.0)
        with self.assertRaises(socket.timeout):  # nothing yet: the message is being received
            smtp.read_line(timeout=0.3)
        smtp.send("second half\r\n.\r\n")
        self.assertEqual(smtp_reply(smtp)[-1][:3], "250")
        self.assert_goodbye_then_eof(smtp, "421 4.3.2", GRACE_S)
        local, _, domain = ALICE.partition("@")
        base = self.dovecot.mail_dir / domain / local / "Maildir"
        found = [p for sub in ("new", "cur") for p in (base / sub).glob("*") if marker.encode() in p.read_bytes()]
        self.assertEqual(len(found), 1)

    def test_session_busy_with_a_command_line_gets_the_goodbye_at_the_end_of_the_grace(self):
        imap = self.client("imap")
        imap.read_line()
        imap.send("a1 NOOP")  # a command line begun, not ended
        time.sleep(0.3)
        start = self.sigterm()
        line = imap.read_line(timeout=GRACE_S + 3)
        self.assertEqual(line, "* BYE [UNAVAILABLE] shutting down")
        self.assertGreater(time.monotonic() - start, GRACE_S - 0.5)
        self.assertTrue(imap.at_eof(5))


if __name__ == "__main__":
    unittest.main()
