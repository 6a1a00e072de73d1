"""The harness itself (no mailgate): Dovecot on loopback, LMTP delivery, direct
IMAP/POP3 logins, certificates with SAN names, the config renderer."""

import imaplib
import poplib
import shutil
import ssl
import subprocess
import unittest
from pathlib import Path

import harness

USERS = {"alice@example.org": "alice-password"}


class HarnessTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-harness-"))
        cls.dovecot = harness.Dovecot(cls.dir / "dovecot", USERS).start()

    @classmethod
    def tearDownClass(cls):
        cls.dovecot.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_dovecot_imap_direct(self):
        self.dovecot.deliver("alice@example.org", "direct imap")
        imap = imaplib.IMAP4(harness.HOST, self.dovecot.imap_port, timeout=10)
        self.assertEqual(imap.login("alice@example.org", "alice-password")[0], "OK")
        typ, data = imap.select("INBOX")
        self.assertEqual(typ, "OK")
        self.assertGreaterEqual(int(data[0]), 1)
        typ, data = imap.search(None, "SUBJECT", '"direct imap"')
        self.assertTrue(data[0].split())
        imap.logout()

    def test_dovecot_pop3_direct(self):
        self.dovecot.deliver("alice@example.org", "direct pop3")
        pop = poplib.POP3(harness.HOST, self.dovecot.pop3_port, timeout=10)
        pop.user("alice@example.org")
        pop.pass_("alice-password")
        self.assertGreaterEqual(pop.stat()[0], 1)
        pop.quit()

    def test_dovecot_rejects_wrong_password(self):
        imap = imaplib.IMAP4(harness.HOST, self.dovecot.imap_port, timeout=10)
        with self.assertRaises(imaplib.IMAP4.error):
            imap.login("alice@example.org", "wrong")
        imap.shutdown()

    def test_dovecot_stop_start(self):
        d = harness.Dovecot(self.dir / "second", USERS, name="second")
        d.start()
        self.assertTrue(d.is_running())
        pid = d.master_pid
        d.stop()
        self.assertFalse(d.is_running())
        self.assertFalse(harness.port_open(d.imap_port))
        d.start()
        self.assertNotEqual(d.master_pid, pid)
        self.assertTrue(harness.port_open(d.imap_port))
        d.stop()
        self.assertIn("starting up", d.log_text())

    def test_certificates(self):
        ca = harness.make_ca(self.dir / "certs")
        cert, key = harness.make_cert(ca, self.dir / "certs", ["a.example.org", "b.example.org"])
        out = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-ext", "subjectAltName"],
                             capture_output=True, text=True).stdout
        self.assertIn("DNS:a.example.org", out)
        self.assertIn("DNS:b.example.org", out)
        self.assertIn("IP Address:127.0.0.1", out)
        verify = subprocess.run(["openssl", "verify", "-CAfile", ca.cert, cert],
                                capture_output=True, text=True)
        self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)
        # A TLS server with it is accepted by a client trusting the CA, for IP and name.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        client = harness.client_context(ca.cert)
        self.assertTrue(client.check_hostname)

    def test_passwd_file(self):
        p = harness.write_passwd(self.dir / "p.passwd", {"u@example.org": "pw"}, "PLAIN")
        self.assertEqual(Path(p).read_text(), "u@example.org:{PLAIN}pw\n")

    def test_config_renderer_ports(self):
        text = harness.mailgate_config(
            certificates=[("/c.pem", "/c.key")], users_file="/u",
            listeners=[{"name": "a", "protocol": "imap", "port": 1234, "tls": "implicit",
                        "max_line": 100, "preauth_timeout": "1s"}],
            backends=[{"name": "s1", "imap": 1, "pop3": 2, "lmtp": 3}],
            routes=[{"domain": "*", "primary": "s1"}])
        self.assertEqual(harness.listen_ports(text), [1234])
        self.assertIn('domain: "*"', text)
        self.assertIn("max_line: 100", text)


if __name__ == "__main__":
    unittest.main()
