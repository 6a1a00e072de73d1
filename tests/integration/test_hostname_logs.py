"""The name the gateway gives itself (server.hostname) and per-listener banners, the
SMTP log lines an operator follows a message by (one per recipient: delivered,
deferred; one per refused RCPT) and the fields of the `login` line. Real Dovecot
nodes behind the gateway; the deferral is Dovecot's own (a mailbox over quota with
quota_full_tempfail)."""

from __future__ import annotations

import re
import smtplib
import time
import unittest
from pathlib import Path

import harness
from fixtures import ALICE, ALICE_PW, USERS

CAROL = "carol@example.net"
HOSTNAME = "mx1.gateway.test"
SMTP_BANNER = "smtp.gateway.test ESMTP ready for mail"
IMAP_BANNER = "IMAP gateway of example.org ready."
POP3_BANNER = "POP3 gateway of example.org ready."

# Node 2 keeps every mailbox at a 1 KiB quota and says so with a temporary failure.
QUOTA_CONFIG = """
mail_plugins = $mail_plugins quota
quota_full_tempfail = yes
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=1K
}
"""


def smtp_reply(c: harness.LineClient, timeout: float = 10.0) -> list[str]:
    return c.read_until(lambda l: len(l) < 4 or l[3] == " ", timeout)


class HostnameLogsTest(harness.LogsOnFailure, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-hostlogs-"))
        cls.dovecots = []
        cls.gateway = None
        try:
            certs = cls.dir / "certs"
            ca = harness.make_ca(certs)
            cert = harness.make_cert(ca, certs, ["mx.example.org"])
            cls.dovecots.append(harness.Dovecot(cls.dir / "s1", USERS, name="s1").start())
            cls.dovecots.append(harness.Dovecot(cls.dir / "s2", USERS, name="s2",
                                                extra_config=QUOTA_CONFIG).start())
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            names = ["mx", "mx_banner", "imap", "imap_banner", "pop3_banner", "mx_small", "mx_limited"]
            cls.ports = dict(zip(names, harness.free_ports(len(names))))
            q = lambda s: '"' + s + '"'  # noqa: E731
            listeners = [
                {"name": "mx", "protocol": "smtp", "port": cls.ports["mx"]},
                {"name": "mx_banner", "protocol": "smtp", "port": cls.ports["mx_banner"],
                 "banner": q(SMTP_BANNER)},
                {"name": "imap", "protocol": "imap", "port": cls.ports["imap"], "allow_plaintext_auth": True},
                {"name": "imap_banner", "protocol": "imap", "port": cls.ports["imap_banner"],
                 "banner": q(IMAP_BANNER)},
                {"name": "pop3_banner", "protocol": "pop3", "port": cls.ports["pop3_banner"],
                 "banner": q(POP3_BANNER)},
                {"name": "mx_small", "protocol": "smtp", "port": cls.ports["mx_small"], "max_recipients": 1},
                {"name": "mx_limited", "protocol": "smtp", "port": cls.ports["mx_limited"]},
            ]
            backends = [{"name": f"storage-0{i + 1}", "imap": d.imap_port, "pop3": d.pop3_port,
                         "lmtp": d.lmtp_port} for i, d in enumerate(cls.dovecots)]
            routes = [{"domain": "example.org", "primary": "storage-01"},
                      {"domain": "example.net", "primary": "storage-02"}]
            text = harness.mailgate_config(certificates=[cert], listeners=listeners, users_file=users_file,
                                           backends=backends, routes=routes)
            text = text.replace("server: {", f"server: {{ hostname: {HOSTNAME},", 1)
            # On mx_limited: two recipients (accepted or not) an hour per address (a limit), none
            # named blocked@ (a rule).
            text += ("limits:\n  rules:\n"
                     "    - { name: rcpt-hourly, when: { listener: mx_limited }, count: recipients,"
                     " key: [client.ip], rate: 2/1h, burst: 2, on_exceed: tempfail }\n"
                     "policies:\n"
                     "  - { name: no-blocked, stage: rcpt, when: { listener: mx_limited,"
                     " rcpt: { re2: '^blocked@' } }, then: reject }\n")
            cls.gateway = harness.Mailgate(cls.dir, text).start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.gateway is not None:
            cls.gateway.stop()
        for d in cls.dovecots:
            d.stop()
        harness.remove_workdir(cls.dir)

    def diagnostics(self) -> str:
        out = ["--- mailgate log (tail) ---\n" + self.gateway.log_text()[-6000:]]
        for d in self.dovecots:
            out.append(f"--- {d.name} log (tail) ---\n" + d.log_text()[-2000:])
        return "\n".join(out)

    def lines(self, msg: str, **match) -> list[dict]:
        return [l for l in self.gateway.log_lines() if l.get("msg") == msg
                and all(l.get(k) == v for k, v in match.items())]

    def wait_lines(self, msg: str, **match) -> list[dict]:
        return harness.wait_for(lambda: self.lines(msg, **match), 10, what=f"log line {msg} {match}")

    def maildir(self, node: int, user: str) -> list[bytes]:
        local, _, domain = user.partition("@")
        base = self.dovecots[node].mail_dir / domain / local / "Maildir"
        return [p.read_bytes() for sub in ("new", "cur") for p in sorted((base / sub).glob("*"))
                if p.is_file()] if base.exists() else []

    # -- the host name
    def test_smtp_greeting_and_ehlo_name_the_configured_host(self):
        with harness.LineClient(self.ports["mx"]) as c:
            self.assertEqual(smtp_reply(c), [f"220 {HOSTNAME} ESMTP mailgate"])
            c.send_line("EHLO client.example.com")
            self.assertEqual(smtp_reply(c)[0], f"250-{HOSTNAME}")
            c.send_line("HELO client.example.com")
            self.assertEqual(smtp_reply(c), [f"250 {HOSTNAME}"])

    def test_received_header_names_the_configured_host(self):
        marker = f"received-{time.time_ns()}"
        with smtplib.SMTP(harness.HOST, self.ports["mx"], timeout=20) as s:
            s.sendmail("sender@example.com", [ALICE],
                       f"From: sender@example.com\r\nTo: {ALICE}\r\nSubject: {marker}\r\n\r\nHello.\r\n")
        found = harness.wait_for(lambda: [m for m in self.maildir(0, ALICE) if marker.encode() in m], 10,
                                 what="the message in alice's maildir")
        self.assertIn(f"by {HOSTNAME} (mailgate) with ESMTP".encode(), found[0])

    # -- banners
    def test_banners_per_listener(self):
        with harness.LineClient(self.ports["mx_banner"]) as c:
            self.assertEqual(smtp_reply(c), [f"220 {SMTP_BANNER}"])
        c, greeting = harness.imap_client(self.ports["imap_banner"])
        with c:
            self.assertRegex(greeting, r"^\* OK \[CAPABILITY [^\]]*IMAP4rev1[^\]]*\] " + re.escape(IMAP_BANNER) + "$")
        c, greeting = harness.pop3_client(self.ports["pop3_banner"])
        with c:
            self.assertEqual(greeting, f"+OK {POP3_BANNER}")
        # Listeners without a banner keep the default.
        c, greeting = harness.imap_client(self.ports["imap"])
        with c:
            self.assertTrue(greeting.endswith("] mailgate ready."), greeting)

    # -- per-recipient lines
    def test_delivered_recipient_line(self):
        msgid = f"<{time.time_ns()}.delivered@client.example.com>"
        with smtplib.SMTP(harness.HOST, self.ports["mx"], timeout=20) as s:
            s.ehlo("client.example.com")
            s.mail("sender@example.com")
            s.rcpt(ALICE)
            code, text = s.data(f"From: sender@example.com\r\nTo: {ALICE}\r\nMessage-ID: {msgid}\r\n"
                                f"Subject: delivered\r\n\r\nHello.\r\n".encode())
        self.assertEqual(code, 250, text)
        queue_id = text.decode().rsplit(" ", 1)[-1]
        line = self.wait_lines("smtp recipient", message_id=msgid)[0]
        self.assertEqual(line["to"], f"<{ALICE}>")
        self.assertEqual(line["status"], "delivered")
        self.assertEqual(line["backend"], "storage-01")
        self.assertEqual(line["queue_id"], queue_id)
        self.assertEqual(line["listener"], "mx")
        self.assertTrue(line["node_reply"].startswith("250 2.0.0"), line)
        self.assertGreater(line["size"], 100)

    def test_refused_recipient_line(self):
        with smtplib.SMTP(harness.HOST, self.ports["mx"], timeout=20) as s:
            s.ehlo("client.example.com")
            s.mail("sender@example.com")
            code, _ = s.rcpt("nobody@example.org")
            self.assertEqual(code, 550)
            code, _ = s.rcpt("someone@elsewhere.example")
            self.assertEqual(code, 550)
        line = self.wait_lines("smtp recipient refused", to="<nobody@example.org>")[0]
        self.assertEqual(line["reason"], "unknown_user")
        self.assertEqual(line["from"], "<sender@example.com>")
        self.assertTrue(line["reply"].startswith("550 5.1.1"), line)
        line = self.wait_lines("smtp recipient refused", to="<someone@elsewhere.example>")[0]
        self.assertEqual(line["reason"], "relay_denied")

    def test_too_many_recipients_line(self):
        with smtplib.SMTP(harness.HOST, self.ports["mx_small"], timeout=20) as s:
            s.ehlo("client.example.com")
            s.mail("sender@example.com")
            self.assertEqual(s.rcpt("alice@example.org")[0], 250)
            code, _ = s.rcpt("bob@example.org")
            self.assertEqual(code, 452)
            s.rset()
        line = self.wait_lines("smtp recipient refused", to="<bob@example.org>", listener="mx_small")[0]
        self.assertEqual(line["reason"], "too_many_recipients", line)
        self.assertTrue(line["reply"].startswith("452 4.5.3"), line)

    def test_limit_and_rule_refusal_lines(self):
        with smtplib.SMTP(harness.HOST, self.ports["mx_limited"], timeout=20) as s:
            s.ehlo("client.example.com")
            s.mail("sender@example.com")
            self.assertEqual(s.rcpt("blocked@example.org")[0] // 100, 5)
            self.assertEqual(s.rcpt("alice@example.org")[0], 250)
            self.assertEqual(s.rcpt("bob@example.org")[0] // 100, 4)
            s.rset()
        line = self.wait_lines("smtp recipient refused", to="<blocked@example.org>", listener="mx_limited")[0]
        self.assertEqual(line["reason"], "policy", line)
        self.assertIn("no-blocked", line["detail"])
        line = self.wait_lines("smtp recipient refused", to="<bob@example.org>", listener="mx_limited")[0]
        self.assertEqual(line["reason"], "limit", line)
        self.assertIn("rcpt-hourly", line["detail"])

    def test_deferred_recipient_line(self):
        msgid = f"<{time.time_ns()}.deferred@client.example.com>"
        body = "x" * 76 + "\r\n"
        with smtplib.SMTP(harness.HOST, self.ports["mx"], timeout=30) as s:
            s.ehlo("client.example.com")
            s.mail("sender@example.com")
            s.rcpt(CAROL)
            code, text = s.data(f"From: sender@example.com\r\nTo: {CAROL}\r\nMessage-ID: {msgid}\r\n"
                                f"Subject: over quota\r\n\r\n{body * 40}".encode())
        self.assertEqual(code // 100, 4, text)
        line = self.wait_lines("smtp recipient", message_id=msgid)[0]
        self.assertEqual(line["to"], f"<{CAROL}>")
        self.assertEqual(line["status"], "deferred")
        self.assertEqual(line["backend"], "storage-02")
        self.assertTrue(line["node_reply"].startswith("4"), line)
        self.assertRegex(line["node_reply"].lower(), "quota|full")
        self.assertTrue(line["reply"].startswith("451"), line)
        self.assertEqual(self.maildir(1, CAROL), [])

    # -- the login line
    def test_login_line_carries_listener_and_client_port(self):
        c, _ = harness.imap_client(self.ports["imap"])
        with c:
            port = c.sock.getsockname()[1]
            lines = c.command("a1", f"LOGIN {ALICE} {ALICE_PW}")
            self.assertTrue(lines[-1].startswith("a1 OK"), lines)
            c.command("a2", "LOGOUT")
        line = self.wait_lines("login", client_port=port)[0]
        self.assertEqual(line["listener"], "imap")
        self.assertEqual(line["client"], "127.0.0.1")
        self.assertEqual(line["user"], ALICE)


if __name__ == "__main__":
    unittest.main()
