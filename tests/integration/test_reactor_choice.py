"""server.io: which reactor the gateway runs on, and that it serves on each.

The seccomp helper (tests/tools/no_io_uring, built next to the gateway) denies
io_uring_setup/enter/register with EPERM, as the default profiles of container
runtimes do: under it `auto` must fall back to epoll and say why, and `io_uring`
must refuse to start with a clear message. IMAP, POP3 and SMTP, all over TLS, are
served on epoll; `epoll` is taken when asked for even where io_uring works."""

import imaplib
import os
import poplib
import smtplib
import time
import unittest
import urllib.request

import harness
from fixtures import ALICE, ALICE_PW, BOB, BOB_PW, USERS

HELPER = harness.seccomp_helper()


def io_uring_usable() -> bool:
    """Whether this kernel lets an unconfined process set up an io_uring."""
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return f.read().strip() == "0"
    except OSError:
        return True


@unittest.skipUnless(os.access(HELPER, os.X_OK), f"{HELPER} not built")
class ReactorChoiceTest(harness.LogsOnFailure, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = harness.make_workdir("mailgate-reactor-")
        try:
            certs = os.path.join(cls.dir, "certs")
            cls.ca = harness.make_ca(certs)
            cls.cert = harness.make_cert(cls.ca, certs, ["mail.example.org"])
            cls.context = harness.client_context(cls.ca.cert)
            cls.dovecot = harness.Dovecot(os.path.join(cls.dir, "storage"), USERS, name="s1").start()
            cls.dovecot.deliver(ALICE, "reactor welcome", "Hello Alice.\r\n")
            cls.users_file = os.path.join(cls.dir, "users.passwd")
            harness.write_passwd(cls.users_file, USERS)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "dovecot", None) is not None:
            cls.dovecot.stop()
        harness.remove_workdir(cls.dir)

    def setUp(self):
        self.gateway = None

    def tearDown(self):
        super().tearDown()
        if self.gateway is not None:
            self.gateway.stop()

    def diagnostics(self) -> str:
        return "--- mailgate log ---\n" + (self.gateway.log_text()[-6000:] if self.gateway else "")

    def config(self, io: str) -> str:
        names = ["imaps", "pop3s", "mx", "admin"]
        self.ports = dict(zip(names, harness.free_ports(len(names))))
        d = self.dovecot
        text = harness.mailgate_config(
            certificates=[self.cert],
            listeners=[
                {"name": "imaps", "protocol": "imap", "port": self.ports["imaps"], "tls": "implicit"},
                {"name": "pop3s", "protocol": "pop3", "port": self.ports["pop3s"], "tls": "implicit"},
                {"name": "mx", "protocol": "smtp", "port": self.ports["mx"], "tls": "starttls"},
            ],
            users_file=self.users_file,
            backends=[{"name": "storage-01", "imap": d.imap_port, "pop3": d.pop3_port, "lmtp": d.lmtp_port}],
            routes=[{"domain": "*", "primary": "storage-01"}])
        text = text.replace("server: { ", f"server: {{ io: {io}, ", 1)
        return text + f'admin: {{ listen: "{harness.HOST}:{self.ports["admin"]}" }}\n'

    def start(self, io: str, seccomp: bool) -> harness.Mailgate:
        name = f"mailgate-{io}-{'seccomp' if seccomp else 'plain'}-{time.time_ns()}"
        self.gateway = harness.Mailgate(self.dir, self.config(io), name=name)
        self.gateway.seccomp = seccomp
        return self.gateway.start()

    def reactor_line(self) -> dict:
        lines = [l for l in self.gateway.log_lines() if str(l.get("msg", "")).startswith("reactor: ")]
        self.assertEqual(len(lines), 1, lines)
        return lines[0]

    def metrics(self) -> str:
        harness.wait_port(self.ports["admin"])
        with urllib.request.urlopen(f"http://{harness.HOST}:{self.ports['admin']}/metrics", timeout=5) as r:
            return r.read().decode()

    def serves_all_protocols(self) -> None:
        # IMAP over implicit TLS: login, select, fetch.
        with imaplib.IMAP4_SSL(harness.HOST, self.ports["imaps"], ssl_context=self.context, timeout=10) as imap:
            imap.login(ALICE, ALICE_PW)
            typ, data = imap.select("INBOX")
            self.assertEqual(typ, "OK")
            self.assertGreaterEqual(int(data[0]), 1)
            typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            self.assertEqual(typ, "OK")
            self.assertIn(b"reactor welcome", data[0][1])
            imap.logout()
        # POP3 over implicit TLS.
        pop = poplib.POP3_SSL(harness.HOST, self.ports["pop3s"], context=self.context, timeout=10)
        try:
            pop.user(ALICE)
            pop.pass_(ALICE_PW)
            count, _ = pop.stat()
            self.assertGreaterEqual(count, 1)
            _, lines, _ = pop.retr(1)
            self.assertIn(b"Subject: reactor welcome", lines)
        finally:
            pop.quit()
        # SMTP with STARTTLS, delivered to the node over LMTP; a message big enough to
        # take many receives and sends on each side.
        subject = f"reactor {time.time_ns()}"
        body = "".join(f"line {i:06d} of a message relayed by the reactor\r\n" for i in range(6000))
        msg = (f"From: sender@example.com\r\nTo: {BOB}\r\nSubject: {subject}\r\n\r\n{body}").encode()
        with smtplib.SMTP(harness.HOST, self.ports["mx"], timeout=20) as s:
            s.starttls(context=self.context)
            s.ehlo("client.example.com")
            self.assertEqual(s.sendmail("sender@example.com", [BOB], msg), {})
        with imaplib.IMAP4_SSL(harness.HOST, self.ports["imaps"], ssl_context=self.context, timeout=10) as imap:
            imap.login(BOB, BOB_PW)
            imap.select("INBOX")
            found = harness.wait_for(lambda: imap.search(None, "SUBJECT", f'"{subject}"')[1][0].split(),
                                     10, what="the message at the node")
            typ, data = imap.fetch(found[0], "(BODY.PEEK[TEXT])")
            self.assertEqual(data[0][1].replace(b"\r\n", b"\n"), body.encode().replace(b"\r\n", b"\n"))
            imap.logout()

    def test_auto_under_seccomp_falls_back_to_epoll_and_says_why(self):
        self.start("auto", seccomp=True)
        line = self.reactor_line()
        self.assertEqual(line.get("io"), "epoll", line)
        self.assertIn("io_uring_setup failed: Operation not permitted", line.get("reason", ""), line)
        self.serves_all_protocols()
        self.assertIn('mailgate_reactor_info{io="epoll"} 1', self.metrics())

    def test_io_uring_under_seccomp_refuses_to_start(self):
        with self.assertRaises(RuntimeError) as cm:
            self.start("io_uring", seccomp=True)
        self.assertIn("exited with 1 at start", str(cm.exception))
        self.assertIn("cannot start: server.io is io_uring, but io_uring is unavailable: "
                      "io_uring_setup failed: Operation not permitted", self.gateway.log_text())

    def test_epoll_when_asked_for_and_reload_says_restart(self):
        self.start("epoll", seccomp=False)
        line = self.reactor_line()
        self.assertEqual(line.get("io"), "epoll", line)
        self.assertEqual(line.get("reason"), "server.io: epoll", line)
        self.serves_all_protocols()
        self.assertIn('mailgate_reactor_info{io="epoll"} 1', self.metrics())
        # The reactor is chosen at start only: a reload that changes it says so.
        self.gateway.write_config(self.gateway.config_text.replace("io: epoll,", "io: auto,"))
        self.gateway.reload()
        harness.wait_for(lambda: "server.io changed: restart to apply it" in self.gateway.log_text(),
                         10, what="the restart notice")
        self.assertIn('mailgate_reactor_info{io="epoll"} 1', self.metrics())

    @unittest.skipUnless(io_uring_usable(), "io_uring is disabled on this host")
    def test_auto_takes_io_uring_where_it_works(self):
        self.start("auto", seccomp=False)
        line = self.reactor_line()
        if line.get("io") != "io_uring":
            self.skipTest(f"io_uring unavailable here: {line}")
        self.assertEqual(line.get("reason"), "server.io: auto, io_uring available", line)
        self.assertIn('mailgate_reactor_info{io="io_uring"} 1', self.metrics())


if __name__ == "__main__":
    unittest.main()
