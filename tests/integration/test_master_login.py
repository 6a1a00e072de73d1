"""backends[].login: master — the gateway logs in to Dovecot as a master user on the
user's behalf (SASL PLAIN with the user as authorization identity), so the node
needs no copy of the user's password. Here Dovecot's own password for alice differs
from the gateway's: replaying her password would fail, the master login does not."""

from __future__ import annotations

import imaplib
import poplib
import unittest
from pathlib import Path

import harness
from fixtures import ALICE, ALICE_PW

MASTER, MASTER_PW = "proxy", "master-secret"
AUTH_FAILED = "[AUTHENTICATIONFAILED]"


class MasterLoginTest(harness.Daemons, harness.LogsOnFailure, unittest.TestCase):
    DAEMONS = ("gateway", "dovecot")

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-master-"))
        cls.dovecot, cls.gateway = None, None
        try:
            master_db = cls.dir / "master.passwd"
            master_db.write_text(f"{MASTER}:{{PLAIN}}{MASTER_PW}\n")
            extra = ("passdb {\n  driver = passwd-file\n  master = yes\n  pass = yes\n"
                     f"  args = {master_db}\n}}\n")
            cls.dovecot = harness.Dovecot(cls.dir / "storage", {ALICE: "a-password-only-the-node-knows"},
                                          extra_config=extra, name="master").start()
            cls.dovecot.deliver(ALICE, "stored on the node")
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, {ALICE: ALICE_PW})
            cls.secret = cls.dir / "master.secret"
            cls.secret.write_text(MASTER_PW + "\n")
            certs = cls.dir / "certs"
            ca = harness.make_ca(certs)
            cert = harness.make_cert(ca, certs, ["mail.example.org"])
            cls.context = harness.client_context(ca.cert)
            names = ["imaps", "pop3s"]
            cls.ports = dict(zip(names, harness.free_ports(len(names))))
            text = harness.mailgate_config(
                certificates=[cert], users_file=users_file,
                listeners=[{"name": "imaps", "protocol": "imap", "port": cls.ports["imaps"], "tls": "implicit"},
                           {"name": "pop3s", "protocol": "pop3", "port": cls.ports["pop3s"], "tls": "implicit"}],
                backends=[{"name": "storage", "imap": cls.dovecot.imap_port, "pop3": cls.dovecot.pop3_port,
                           "login": "master", "master_user": MASTER, "master_password_file": str(cls.secret)}],
                routes=[{"domain": "*", "primary": "storage"}])
            cls.gateway = harness.Mailgate(cls.dir, text).start()
        except BaseException:
            cls._stop()
            raise

    def diagnostics(self) -> str:
        return (f"--- mailgate log (tail) ---\n{self.gateway.log_text()[-4000:]}\n"
                f"--- dovecot log (tail) ---\n{self.dovecot.log_text()[-3000:]}")

    def reload_with_secret(self, secret: str) -> None:
        before = self.gateway.log_text().count("configuration reloaded")
        self.secret.write_text(secret + "\n")
        self.gateway.reload()
        harness.wait_for(lambda: self.gateway.log_text().count("configuration reloaded") > before, 10,
                         what="the reload")

    def test_1_imap_reads_the_mailbox_through_a_master_login(self):
        self.assertEqual(harness.imap_node_marker(self.ports["imaps"], self.context, ALICE, ALICE_PW), "node")
        harness.wait_for(lambda: f"Master user logging in as {ALICE}" in self.dovecot.log_text(), 5,
                         what="Dovecot's master login line")

    def test_2_pop3_through_a_master_login(self):
        pop = poplib.POP3_SSL(harness.HOST, self.ports["pop3s"], context=self.context, timeout=10)
        try:
            pop.user(ALICE)
            self.assertTrue(pop.pass_(ALICE_PW).startswith(b"+OK"))
            self.assertEqual(pop.stat()[0], 1)
            pop.quit()
        finally:
            pop.close()

    def test_3_the_gateway_still_checks_the_users_password(self):
        imap = imaplib.IMAP4_SSL(harness.HOST, self.ports["imaps"], ssl_context=self.context, timeout=10)
        try:
            with self.assertRaises(imaplib.IMAP4.error) as cm:
                imap.login(ALICE, "a-password-only-the-node-knows")
            self.assertIn(AUTH_FAILED, str(cm.exception))
        finally:
            harness.close_imap(imap)

    def test_4_a_wrong_master_password_is_an_authentication_failure_then_a_reload_mends_it(self):
        self.reload_with_secret("not-the-master-password")
        try:
            imap = imaplib.IMAP4_SSL(harness.HOST, self.ports["imaps"], ssl_context=self.context, timeout=10)
            try:
                with self.assertRaises(imaplib.IMAP4.error) as cm:
                    imap.login(ALICE, ALICE_PW)
                self.assertIn(AUTH_FAILED, str(cm.exception))
            finally:
                harness.close_imap(imap)
        finally:
            self.reload_with_secret(MASTER_PW)
        self.assertEqual(harness.imap_node_marker(self.ports["imaps"], self.context, ALICE, ALICE_PW), "node")


if __name__ == "__main__":
    unittest.main()
