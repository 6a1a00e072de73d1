"""Submission with the PostgreSQL directory (default schema): AUTH against the
mailboxes table, the sender ownership rule through queries.sender (the user's own
address and its active aliases), and the database down → 454 4.7.0 on AUTH, then
recovery without a restart. The relay is Postfix's smtp-sink."""

from __future__ import annotations

import base64
import smtplib
import time
import unittest

import harness
import test_smtp_directory as tsd
from test_submission import SmtpSink

ALICE, ALICE_PW = tsd.ALICE, tsd.ALICE_PW
BOB, BOB_PW = tsd.BOB, tsd.BOB_PW


class SubmissionPostgresTest(tsd.PostgresCase):
    USERS = {ALICE: ALICE_PW, BOB: BOB_PW}

    @classmethod
    def directory_block(cls) -> str:
        return tsd.postgres_directory(cls.db.conninfo(), cache="{ ttl: 0s, negative_ttl: 0s }")

    @classmethod
    def fill_database(cls, db):
        tsd.SmtpPostgresDirectoryTest.fill_database.__func__(cls, db)

    @classmethod
    def _start(cls):
        cls.sink = SmtpSink(cls.dir).start()
        certs = cls.dir / "certs"
        ca = harness.make_ca(certs)
        cert = harness.make_cert(ca, certs, ["smtp.example.org"])
        cls.start_directory()
        cls.port = harness.free_port()
        text = f"""server: {{ threads: 1, shutdown_grace: 2s }}
log: {{ level: info, format: json }}
tls:
  certificates:
    - {{ cert: "{cert[0]}", key: "{cert[1]}" }}
listeners:
  - {{ name: submit, protocol: submission, listen: ["{harness.HOST}:{cls.port}"], tls: none,
      allow_plaintext_auth: true }}
backends:
  - name: relay
    host: {harness.HOST}
    ports: {{ smtp: {cls.sink.port} }}
    deliver: smtp
    health: {{ interval: 1s, timeout: 1s }}
routing:
  submission_relay: relay
""" + cls.directory_block()
        cls.gateway = harness.Mailgate(cls.dir, text)
        cls.gateway.start()

    @classmethod
    def _stop(cls):
        super()._stop()
        sink = getattr(cls, "sink", None)
        if sink is not None:
            sink.stop()

    def login(self, user: str = ALICE, password: str = ALICE_PW) -> smtplib.SMTP:
        s = smtplib.SMTP(harness.HOST, self.port, timeout=20)
        self.addCleanup(s.close)
        s.ehlo("client.example.com")
        s.login(user, password)
        return s

    def test_1_own_address_and_alias_allowed_others_553(self):
        s = self.login()
        subject = f"pg-sub-{time.time_ns()}"
        self.assertEqual(s.sendmail(ALICE, ["x@elsewhere.example"],
                                    f"Subject: {subject}\r\n\r\nhi\r\n".encode()), {})
        harness.wait_for(lambda: self.sink.find(subject.encode()), 10, what="relayed")
        self.assertEqual(s.mail(tsd.ALIAS)[0], 250)  # info@ → alice
        s.rset()
        code, msg = s.mail(BOB)
        self.assertEqual(code, 553, msg)
        s.rset()
        code, msg = s.mail("off@example.org")  # an inactive alias of bob's
        self.assertEqual(code, 553, msg)
        s.rset()
        s2 = self.login(BOB, BOB_PW)
        self.assertEqual(s2.mail(tsd.ALIAS)[0], 553)  # alice's alias is not bob's

    def test_2_wrong_password_535(self):
        s = smtplib.SMTP(harness.HOST, self.port, timeout=20)
        self.addCleanup(s.close)
        s.ehlo("client.example.com")
        with self.assertRaises(smtplib.SMTPAuthenticationError) as cm:
            s.login(ALICE, "wrong")
        self.assertEqual(cm.exception.smtp_code, 535)

    def test_9_database_down_454_then_recovery(self):
        self.db.stop()
        try:
            s = smtplib.SMTP(harness.HOST, self.port, timeout=20)
            self.addCleanup(s.close)
            s.ehlo("client.example.com")
            creds = base64.b64encode(f"\0{ALICE}\0{ALICE_PW}".encode()).decode()
            code, msg = s.docmd("AUTH", f"PLAIN {creds}")
            self.assertEqual(code, 454, msg)
            self.assertIn(b"4.7.0", msg)
            self.assertTrue(self.gateway.is_running())
        finally:
            self.db.start()

        def works() -> bool:
            try:
                with smtplib.SMTP(harness.HOST, self.port, timeout=20) as s2:
                    s2.ehlo("client.example.com")
                    s2.login(ALICE, ALICE_PW)
                    return s2.mail(ALICE)[0] == 250
            except smtplib.SMTPException:
                return False
        harness.wait_for(works, 15, 0.3, "AUTH and MAIL after the database came back")


if __name__ == "__main__":
    unittest.main()
