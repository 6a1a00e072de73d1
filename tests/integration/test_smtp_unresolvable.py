"""A delivery that fails at once (the only node's name does not resolve) answers the
end of data with 451 4.4.1, and the message's lines are never read as commands."""

from __future__ import annotations

import shutil
import time
import unittest
from pathlib import Path

import harness
from fixtures import ALICE, USERS
from test_smtp import code, smtp_reply


class UnresolvableNodeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-unresolvable-"))
        certs = cls.dir / "certs"
        ca = harness.make_ca(certs)
        cert = harness.make_cert(ca, certs, ["mx.example.org"])
        users_file = str(cls.dir / "users.passwd")
        harness.write_passwd(users_file, USERS)
        cls.port = harness.free_port()
        text = harness.mailgate_config(
            certificates=[cert], users_file=users_file,
            listeners=[{"name": "mx", "protocol": "smtp", "port": cls.port}],
            backends=[{"name": "gone", "host": "node1.does-not-exist.invalid", "lmtp": 24,
                       "health_interval": "1h", "health_timeout": "1s"}],
            routes=[{"domain": "*", "primary": "gone"}])
        cls.gateway = harness.Mailgate(cls.dir, text).start()

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_body_is_not_executed_after_a_synchronous_failure(self):
        c = harness.LineClient(self.port, timeout=10)
        self.addCleanup(c.close)
        self.assertEqual(code(smtp_reply(c)), "220")
        c.send_line("EHLO client.example.com")
        self.assertEqual(code(smtp_reply(c)), "250")
        c.send_line("MAIL FROM:<sender@example.com>")
        self.assertEqual(code(smtp_reply(c)), "250")
        c.send_line(f"RCPT TO:<{ALICE}>")
        self.assertEqual(code(smtp_reply(c)), "250")
        c.send_line("DATA")
        self.assertEqual(code(smtp_reply(c)), "354")
        c.send(b"Subject: x\r\n\r\nNOOP injected-1\r\nRSET\r\nHELP injected-2\r\n.\r\n")
        self.assertEqual(smtp_reply(c)[-1][:9], "451 4.4.1")
        # Nothing else: no reply to the body's lines.
        with self.assertRaises(TimeoutError):
            extra = c.read_line(timeout=1.0)
            self.fail(f"unexpected reply after 451: {extra!r}")
        c.send_line("NOOP")
        self.assertEqual(smtp_reply(c), ["250 2.0.0 Ok"])
        c.send_line("QUIT")
        self.assertEqual(code(smtp_reply(c)), "221")
        self.assertTrue(self.gateway.is_running())


if __name__ == "__main__":
    unittest.main()
