"""Policy rules (DESIGN.md, "Policy and content": policies) on an SMTP MX listener,
with smtplib clients and a real Dovecot LMTP node whose Maildir is checked:

- an RE2 rule on the sender at stage mail rejects MAIL FROM with its reply and a
  (ref ...), while another sender is accepted and delivered;
- an attachment-name rule at stage data rejects a message with invoice.exe (554 at
  the end of DATA) and lets one with a .pdf through;
- a shadow rule that would reject only logs (a JSON log line naming the rule) and
  the client is served;
- a tag rule at data adds its header to the delivered message;
- --check-config accepts these rules and names FILE:LINE:COL of a condition that
  cannot exist at its stage (rcpt at connect), of a reply that does not fit its
  action, and of an unknown list."""

from __future__ import annotations

import json
import re
import smtplib
import time
import unittest
from email.message import EmailMessage
from pathlib import Path

import harness
import policy_support as ps
from fixtures import ALICE, USERS

TAG_HEADER = "X-Policy-Tag: tagged-by-rule"

POLICY = r"""
policies:
  - { name: no-spammer, stage: mail, when: { sender: { re2: '(?i)@spam\.example$' } }, then: reject,
      reply: "550 5.7.1 Sender refused" }
  - { name: exe, stage: data, when: { attachment.filename: { re2: '(?i)\.(exe|scr|js)$' } }, then: reject }
  - { name: shadow-sender, stage: mail, when: { sender: { re2: '(?i)@shadow\.example$' } }, then: reject,
      reply: "550 5.7.1 Shadow refusal", mode: shadow }
  - { name: tag-sender, stage: data, when: { sender: { re2: '(?i)@tagged\.example$' } }, then: tag,
      header: "X-Policy-Tag: tagged-by-rule" }
"""


def mime_with_attachment(subject: str, filename: str, content_type: str = "application/octet-stream") -> bytes:
    msg = EmailMessage()
    msg["From"] = "billing@example.com"
    msg["To"] = ALICE
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{time.time_ns()}@policy.test>"
    msg.set_content("Please find the invoice attached.\n")
    maintype, subtype = content_type.split("/")
    msg.add_attachment(b"MZ\x90\x00" + b"\x00" * 200, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes().replace(b"\n", b"\r\n")


def plain_message(subject: str, sender: str = "someone@example.com") -> bytes:
    return (f"From: {sender}\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@policy.test>\r\n\r\nHello.\r\n").encode()


class PolicyRulesTest(harness.LogsOnFailure, unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-policyrules-"))
        cls.dovecot, cls.gateway = None, None
        try:
            certs = cls.dir / "certs"
            ca = harness.make_ca(certs)
            cls.cert = harness.make_cert(ca, certs, ["mx.example.org"])
            cls.dovecot = harness.Dovecot(cls.dir / "storage", USERS, name="pr").start()
            cls.users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(cls.users_file, USERS)
            cls.port = harness.free_port()
            text = harness.mailgate_config(
                certificates=[cls.cert], users_file=cls.users_file,
                listeners=[{"name": "mx", "protocol": "smtp", "port": cls.port}],
                backends=[{"name": "storage-01", "imap": cls.dovecot.imap_port, "lmtp": cls.dovecot.lmtp_port}],
                routes=[{"domain": "*", "primary": "storage-01"}])
            cls.base_config = text
            cls.gateway = harness.Mailgate(cls.dir, ps.with_policy(text, POLICY)).start()
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def _stop(cls):
        if cls.gateway is not None:
            cls.gateway.stop()
        if cls.dovecot is not None:
            cls.dovecot.stop()
        harness.remove_workdir(cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls._stop()

    def diagnostics(self) -> str:
        return (f"--- mailgate log (tail) ---\n{self.gateway.log_text()[-6000:]}\n"
                f"--- dovecot log (tail) ---\n{self.dovecot.log_text()[-2000:]}")

    # -- helpers
    def smtp(self) -> smtplib.SMTP:
        s = smtplib.SMTP(harness.HOST, self.port, timeout=15)
        self.addCleanup(s.close)
        code, msg = s.ehlo("client.example.com")
        self.assertEqual(code, 250, msg)
        return s

    def delivered(self, marker: bytes) -> list[bytes]:
        local, _, domain = ALICE.partition("@")
        base = self.dovecot.mail_dir / domain / local / "Maildir"
        out = []
        for sub in ("new", "cur"):
            for p in sorted((base / sub).glob("*")) if base.exists() else []:
                try:
                    data = p.read_bytes()
                except OSError:
                    continue
                if marker in data:
                    out.append(data)
        return out

    def wait_delivered(self, marker: bytes) -> bytes:
        return harness.wait_for(lambda: self.delivered(marker), 10,
                                what=f"{marker!r} delivered to {ALICE}")[0]

    def send(self, sender: str, msg: bytes) -> tuple[int, str]:
        """MAIL, RCPT, DATA; returns the DATA reply (code, text)."""
        s = self.smtp()
        code, text = s.mail(sender)
        self.assertEqual(code, 250, f"MAIL FROM:<{sender}>: {code} {text!r}")
        code, text = s.rcpt(ALICE)
        self.assertEqual(code, 250, f"RCPT TO:<{ALICE}>: {code} {text!r}")
        try:
            code, text = s.data(msg)
        except smtplib.SMTPDataError as e:
            code, text = e.smtp_code, e.smtp_error
        text = text.decode() if isinstance(text, bytes) else text
        try:
            s.quit()
        except smtplib.SMTPException:
            pass
        return code, text

    # -- stage mail
    def test_sender_rule_rejects_at_mail(self):
        s = self.smtp()
        code, text = s.mail("x@spam.example")
        text = text.decode()
        self.assertEqual(code, 550, f"MAIL FROM:<x@spam.example>: {code} {text!r}")
        self.assertTrue(text.startswith("5.7.1 Sender refused"), f"reply: {code} {text!r}")
        self.assertTrue(ps.has_ref(text), f"reply without (ref ...): {code} {text!r}")
        ref = ps.ref_of(text)
        harness.wait_for(lambda: ref in self.gateway.log_text(), 5, what=f"ref {ref} in the log")
        # Upper case matches too ((?i)); the session goes on and another sender is accepted.
        code, text = s.mail("Y@SPAM.Example")
        self.assertEqual(code, 550, text)
        code, text = s.mail("someone@example.com")
        self.assertEqual(code, 250, f"a clean sender after a refusal: {code} {text!r}")
        s.rset()
        subject = f"clean sender {time.time_ns()}"
        code, text = self.send("someone@example.com", plain_message(subject))
        self.assertEqual(code, 250, f"DATA: {code} {text!r}")
        self.wait_delivered(subject.encode())

    # -- stage data
    def test_attachment_name_rule_rejects_at_end_of_data(self):
        bad_subject = f"exe attachment {time.time_ns()}"
        code, text = self.send("billing@example.com", mime_with_attachment(bad_subject, "invoice.exe"))
        self.assertEqual(code, 554, f"end of DATA with invoice.exe: {code} {text!r}")
        self.assertTrue(ps.has_ref(text), f"reply without (ref ...): {code} {text!r}")
        code, text = self.send("billing@example.com", mime_with_attachment(f"js {time.time_ns()}", "Run.JS"))
        self.assertEqual(code, 554, f"end of DATA with Run.JS: {code} {text!r}")
        good_subject = f"pdf attachment {time.time_ns()}"
        code, text = self.send("billing@example.com",
                               mime_with_attachment(good_subject, "invoice.pdf", "application/pdf"))
        self.assertEqual(code, 250, f"end of DATA with invoice.pdf: {code} {text!r}")
        self.wait_delivered(good_subject.encode())
        self.assertEqual(self.delivered(bad_subject.encode()), [], "the refused message was delivered")

    def test_shadow_rule_only_logs(self):
        s = self.smtp()
        code, text = s.mail("x@shadow.example")
        self.assertEqual(code, 250, f"shadow rule must not refuse: {code} {text!r}")
        s.rset()
        subject = f"shadow {time.time_ns()}"
        code, text = self.send("x@shadow.example", plain_message(subject, "x@shadow.example"))
        self.assertEqual(code, 250, f"DATA: {code} {text!r}")
        self.wait_delivered(subject.encode())

        def shadow_lines():
            return [l for l in self.gateway.log_lines()
                    if "shadow-sender" in json.dumps(l) and "reject" in json.dumps(l)]
        lines = harness.wait_for(shadow_lines, 5, what="a log line naming shadow-sender and its action")
        self.assertTrue(lines, self.gateway.log_text()[-3000:])

    def test_tag_rule_adds_header(self):
        subject = f"tagged {time.time_ns()}"
        code, text = self.send("news@tagged.example", plain_message(subject, "news@tagged.example"))
        self.assertEqual(code, 250, f"DATA: {code} {text!r}")
        data = self.wait_delivered(subject.encode())
        head = data.split(b"\n\n", 1)[0].decode("utf-8", "replace")
        self.assertIn(TAG_HEADER, head.splitlines(), f"the delivered header:\n{head}")
        untagged = f"untagged {time.time_ns()}"
        code, text = self.send("someone@example.com", plain_message(untagged))
        self.assertEqual(code, 250, text)
        head = self.wait_delivered(untagged.encode()).split(b"\n\n", 1)[0].decode("utf-8", "replace")
        self.assertNotIn("X-Policy-Tag", head, head)

    # -- configuration
    def check(self, name: str, policy: str) -> tuple[str, int, str]:
        path = self.dir / name
        path.write_text(ps.with_policy(self.base_config, policy))
        r = harness.run_mailgate("--check-config", str(path))
        self.last = r
        return str(path), r.returncode, r.stdout + r.stderr

    def assertErrorAt(self, path: str, rc: int, out: str, policy: str, needle: str, words: list[str]):
        text = Path(path).read_text()
        self.assertIn(needle, text, "the config written lacks the policy (MAILGATE_POLICY_STRIP?)")
        i = text.index(needle)
        line = text.count("\n", 0, i) + 1
        self.assertEqual(rc, 1, out)
        m = re.search(rf"(?m)^{re.escape(path)}:{line}:(\d+): (.*)$", out)
        self.assertIsNotNone(m, f"no {path}:{line}:COL: message (the line of {needle!r}):\n{out}")
        for w in words:
            self.assertIn(w, m.group(2), f"the message should mention {w!r}: {m.group(0)}")

    def test_check_config_accepts_the_rules(self):
        path, rc, out = self.check("rules-ok.yaml", POLICY)
        self.assertEqual((rc, self.last.stdout.strip()), (0, "ok"), out)

    def test_check_config_condition_not_available_at_stage(self):
        policy = r"""
policies:
  - { name: rcpt-at-connect, stage: connect, when: { rcpt: { re2: '@example\.org$' } }, then: reject }
"""
        path, rc, out = self.check("rcpt-at-connect.yaml", policy)
        self.assertErrorAt(path, rc, out, policy, "rcpt:", ["rcpt", "connect"])

    def test_check_config_reply_must_fit_action(self):
        policy = """
policies:
  - { name: bad-reply, stage: mail, when: { sender: { re2: 'x' } }, then: reject, reply: "450 4.7.1 Later" }
"""
        path, rc, out = self.check("bad-reply.yaml", policy)
        self.assertErrorAt(path, rc, out, policy, '"450 4.7.1 Later"', ["450"])

    def test_check_config_unknown_list(self):
        policy = """
policies:
  - { name: no-list, stage: connect, when: { client.net: { in: no_such_list } }, then: reject }
"""
        path, rc, out = self.check("unknown-list.yaml", policy)
        self.assertErrorAt(path, rc, out, policy, "no_such_list", ["no_such_list"])


if __name__ == "__main__":
    unittest.main()
