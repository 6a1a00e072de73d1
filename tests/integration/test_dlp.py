"""The built-in DLP scanner (hooks, type dlp) end to end: mailgate in front of a
Dovecot LMTP node, with one DLP scanner per on_match action on listeners of their own.
Card numbers travel in a base64 text attachment, IBANs in the body; the gateway's log
must name the detector and the count and never hold the numbers themselves."""

from __future__ import annotations

import base64
import json
import smtplib
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

import harness
from fixtures import ALICE, USERS

# Luhn-valid test numbers (Visa, Mastercard, Amex), and the same with the last digit changed.
CARDS = ["4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005"]
BROKEN_CARDS = ["4111 1111 1111 1112", "5555-5555-5555-4445", "378282246310006"]
IBAN = "GB82 WEST 1234 5698 7654 32"
BAD_IBAN = "GB82 WEST 1234 5698 7654 33"
# Every form in which the numbers' digits could show in a log.
SECRETS = [c for c in CARDS + BROKEN_CARDS + [IBAN, BAD_IBAN]] + \
          ["".join(ch for ch in c if ch.isalnum()) for c in CARDS + BROKEN_CARDS + [IBAN, BAD_IBAN]]

DETECTORS = ("[ { id: card, pattern: card_number, validate: luhn, min_count: 3 },"
             " { id: iban, pattern: iban, validate: iban_mod97 } ]")


def marker(what: str) -> str:
    """A unique subject without digits (a 19-digit time stamp can pass Luhn by chance)."""
    n, letters = time.time_ns(), ""
    while n:
        n, r = divmod(n, 26)
        letters += chr(ord("a") + r)
    return f"{what} {letters}"


def card_message(subject: str, cards: list[str]) -> bytes:
    text = "Customer list\r\n" + "".join(f"name{i};{c};12/29\r\n" for i, c in enumerate(cards))
    b64 = base64.encodebytes(text.encode()).decode().replace("\n", "\r\n")
    return (f"From: sender@example.com\r\nTo: {ALICE}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\n"
            "see the attachment\r\n--XX\r\nContent-Type: text/csv; name=customers.csv\r\n"
            "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=customers.csv\r\n\r\n"
            f"{b64}--XX--\r\n").encode()


def iban_message(subject: str, iban: str) -> bytes:
    return (f"From: sender@example.com\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\r\n"
            f"Please pay the invoice to {iban} by Friday.\r\n").encode()


class DlpTest(harness.LogsOnFailure, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-dlp-"))
        cls.node = cls.gateway = None
        try:
            cls.node = harness.Dovecot(cls.dir / "storage-01", USERS, name="s1")
            cls.node.start()
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            names = ["mx_reject", "mx_tag", "mx_quarantine"]
            cls.ports = dict(zip(names, harness.free_ports(len(names))))
            cls.admin = harness.free_ports(1)[0]
            listeners = [{"name": n, "protocol": "smtp", "port": cls.ports[n]} for n in names]
            backends = [{"name": "storage-01", "imap": cls.node.imap_port, "lmtp": cls.node.lmtp_port}]
            routes = [{"domain": "example.org", "primary": "storage-01"}]
            text = harness.mailgate_config(certificates=[], listeners=listeners, users_file=users_file,
                                           backends=backends, routes=routes, threads=1)
            text += harness.admin_block(cls.admin, cls.dir)
            text += (
                "hooks:\n"
                f"  quarantine: {{ store: dir, dir: {cls.dir / 'quarantine'} }}\n"
                "  defaults: { on_error: tempfail, timeouts: { scan: 10s } }\n"
                "  scanners:\n"
                f"    dlp_reject: {{ type: dlp, on_match: reject, detectors: {DETECTORS} }}\n"
                f"    dlp_tag: {{ type: dlp, on_match: tag, detectors: {DETECTORS} }}\n"
                f"    dlp_quarantine: {{ type: dlp, on_match: quarantine, detectors: {DETECTORS} }}\n"
                "  flows:\n"
                "    - { when: { listener: mx_reject }, run: [dlp_reject] }\n"
                "    - { when: { listener: mx_tag }, run: [dlp_tag] }\n"
                "    - { when: { listener: mx_quarantine }, run: [dlp_quarantine] }\n")
            cls.gateway = harness.Mailgate(cls.dir, text).start()
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
        # Whatever the tests sent, the numbers never reached the gateway's log.
        try:
            if cls.gateway is not None:
                log = cls.gateway.log_text()
                leaked = [s for s in SECRETS if s in log]
                if leaked:
                    raise AssertionError(f"matched data in the gateway log: {leaked}")
        finally:
            cls._stop()

    def diagnostics(self) -> str:
        out = []
        if self.gateway is not None:
            out.append("--- mailgate log (tail) ---\n" + self.gateway.log_text()[-6000:])
        if self.node is not None:
            out.append("--- node log (tail) ---\n" + self.node.log_text()[-2000:])
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

    def send(self, listener: str, msg: bytes) -> tuple[int, str]:
        with smtplib.SMTP(harness.HOST, self.ports[listener], timeout=20) as s:
            s.ehlo("client.example.com")
            self.assertEqual(s.mail("sender@example.com")[0], 250)
            self.assertEqual(s.rcpt(ALICE)[0], 250)
            code, text = s.data(msg)
            return code, text.decode(errors="replace")

    def assert_not_delivered(self, subject: str) -> None:
        # A message accepted after it would be delivered after it too: wait for one.
        probe = marker("probe")
        self.assertEqual(self.send("mx_reject", iban_message(probe, "nothing"))[0], 250)
        harness.wait_for(lambda: self.delivered(probe.encode()), 10, what="the probe delivered")
        self.assertEqual(self.delivered(subject.encode()), [])

    def assert_log_clean(self) -> None:
        log = self.gateway.log_text()
        for s in SECRETS:
            self.assertNotIn(s, log)

    def match_lines(self, scanner: str) -> list[dict]:
        return [l for l in self.gateway.log_lines() if l.get("msg") == "dlp match" and l.get("scanner") == scanner]

    # ------------------------------------------------------------------ tests

    def test_cards_in_base64_attachment_rejected(self):
        subject = marker("cards reject")
        code, text = self.send("mx_reject", card_message(subject, CARDS))
        self.assertEqual(code, 554, text)
        self.assertRegex(text, r"^5\.7\.1 Message refused by content policy \(DLP: card x3\) \(ref [0-9a-f]{6}\)$")
        self.assert_not_delivered(subject)
        lines = harness.wait_for(lambda: self.match_lines("dlp_reject"), 5, what="the dlp match log line")
        self.assertEqual(lines[-1]["matches"], "card=3")
        self.assertEqual(lines[-1]["action"], "reject")
        self.assertIn("dlp dlp_reject: card=3", self.gateway.log_text())
        self.assert_log_clean()

    def test_broken_check_digits_pass(self):
        for listener in ("mx_reject", "mx_tag", "mx_quarantine"):
            subject = marker(f"broken cards {listener}")
            code, text = self.send(listener, card_message(subject, BROKEN_CARDS))
            self.assertEqual(code, 250, text)
            files = harness.wait_for(lambda: self.delivered(subject.encode()), 10, what="the message delivered")
            self.assertNotIn(b"X-Mailgate-DLP", files[0].read_bytes())
        self.assert_log_clean()

    def test_two_cards_are_below_min_count(self):
        subject = marker("two cards")
        code, text = self.send("mx_reject", card_message(subject, CARDS[:2]))
        self.assertEqual(code, 250, text)
        harness.wait_for(lambda: self.delivered(subject.encode()), 10, what="the message delivered")

    def test_cards_tagged_and_delivered(self):
        subject = marker("cards tag")
        code, text = self.send("mx_tag", card_message(subject, CARDS))
        self.assertEqual(code, 250, text)
        files = harness.wait_for(lambda: self.delivered(subject.encode()), 10, what="the tagged message delivered")
        data = files[0].read_bytes()
        self.assertIn(b"X-Mailgate-DLP: card=3\r\n", data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        self.assertLess(data.index(b"X-Mailgate-DLP"), data.index(b"Subject:"))
        lines = harness.wait_for(lambda: self.match_lines("dlp_tag"), 5, what="the dlp match log line")
        self.assertEqual(lines[-1]["matches"], "card=3")
        self.assertEqual(lines[-1]["action"], "add_header")
        self.assert_log_clean()

    def test_valid_iban_caught_invalid_passes(self):
        subject = marker("iban")
        code, text = self.send("mx_reject", iban_message(subject, IBAN))
        self.assertEqual(code, 554, text)
        self.assertIn("(DLP: iban x1)", text)
        bad = marker("bad iban")
        code, text = self.send("mx_reject", iban_message(bad, BAD_IBAN))
        self.assertEqual(code, 250, text)
        harness.wait_for(lambda: self.delivered(bad.encode()), 10, what="the invalid IBAN delivered")
        self.assertEqual(self.delivered(subject.encode()), [])
        # Tagged: the header counts it.
        tagged = marker("iban tag")
        self.assertEqual(self.send("mx_tag", iban_message(tagged, IBAN))[0], 250)
        files = harness.wait_for(lambda: self.delivered(tagged.encode()), 10, what="the tagged message delivered")
        self.assertIn(b"X-Mailgate-DLP: iban=1", files[0].read_bytes())
        # The scan header records the scanner and its outcome (item 7).
        self.assertIn(b"X-Mailgate-Scan: dlp_tag=tagged", files[0].read_bytes())
        self.assert_log_clean()

    def http(self, method: str, path: str) -> tuple[int, str]:
        req = urllib.request.Request(f"http://{harness.HOST}:{self.admin}{path}", method=method,
                                     headers=harness.admin_headers())
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def test_quarantined_message_is_held_then_released_once(self):
        """Three valid card numbers in a base64 attachment on the quarantine listener:
        250 (the entry is durable first), nothing reaches the node, the entry names the
        scanner and the detector count, and a release delivers it exactly once."""
        subject = marker("cards quarantine")
        code, text = self.send("mx_quarantine", card_message(subject, CARDS))
        self.assertEqual(code, 250, text)
        self.assertIn("quarantined", text)
        self.assert_not_delivered(subject)
        lines = harness.wait_for(lambda: self.match_lines("dlp_quarantine"), 5, what="the dlp match log line")
        self.assertEqual(lines[-1]["matches"], "card=3")
        self.assertEqual(lines[-1]["action"], "quarantine")
        status, body = self.http("GET", "/quarantine")
        self.assertEqual(status, 200, body)
        entries = [e for e in json.loads(body) if "dlp_quarantine" in json.dumps(e)]
        self.assertEqual(len(entries), 1, body)
        self.assertIn("card=3", json.dumps(entries[0]))
        qid = entries[0]["id"]
        status, body = self.http("POST", f"/quarantine/{qid}/release")
        self.assertIn(status, (200, 204), body)
        harness.wait_for(lambda: self.delivered(subject.encode()), 10, what="the released message delivered")
        # A second release finds nothing: still one copy.
        self.assertNotIn(self.http("POST", f"/quarantine/{qid}/release")[0], (200, 204))
        time.sleep(0.5)
        self.assertEqual(len(self.delivered(subject.encode())), 1)
        self.assert_log_clean()


if __name__ == "__main__":
    unittest.main()
