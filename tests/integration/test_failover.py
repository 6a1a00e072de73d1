"""Routing with two Dovecot nodes holding the same users: primary, failover to the
secondary, both down, primary back. Tests run in name order (they share state)."""

import imaplib
import poplib
import time
import unittest

import harness
from fixtures import ALICE, ALICE_PW, GatewayTestCase

UNAVAILABLE_IMAP = "NO [UNAVAILABLE] Backend unavailable, try again later."
UNAVAILABLE_POP3 = "-ERR [SYS/TEMP] Backend unavailable, try again later."
AUTH_FAILED = "NO [AUTHENTICATIONFAILED] Authentication failed."


class FailoverTest(GatewayTestCase):
    NODES = 2

    @classmethod
    def prepare(cls):
        cls.env.dovecots[0].deliver(ALICE, "stored on storage-01")
        cls.env.dovecots[1].deliver(ALICE, "stored on storage-02")

    # ------------------------------------------------------------------ helpers
    def imap_node(self) -> str:
        """Logs in through the gateway and tells which node answered."""
        return harness.imap_node_marker(self.port("imaps"), self.env.context, ALICE, ALICE_PW)

    def pop3_node(self) -> str:
        pop = poplib.POP3_SSL(harness.HOST, self.port("pop3s"), context=self.env.context,
                              timeout=10)
        try:
            pop.user(ALICE)
            pop.pass_(ALICE_PW)
            _, lines, _ = pop.top(1, 0)
            pop.quit()
        finally:
            pop.close()
        for l in lines:
            if l.startswith(b"Subject: "):
                return l.decode().rsplit(" ", 1)[-1]
        self.fail(f"no Subject in {lines}")

    def raw_imap_login(self, password=ALICE_PW) -> str:
        c, _ = harness.imap_client(self.port("imaps"), tls=True, context=self.env.context)
        try:
            lines = c.command("a", f"LOGIN {harness.imap_quote(ALICE)} {harness.imap_quote(password)}",
                              timeout=20)
            return lines[-1]
        finally:
            c.close()

    def raw_pop3_login(self) -> str:
        c, _ = harness.pop3_client(self.port("pop3s"), tls=True, context=self.env.context)
        try:
            c.send_line(f"USER {ALICE}")
            c.read_line()
            c.send_line(f"PASS {ALICE_PW}")
            return c.read_line(20)
        finally:
            c.close()

    # ------------------------------------------------------------------ scenario
    def test_1_primary_serves(self):
        self.assertEqual(self.imap_node(), "storage-01")
        self.assertEqual(self.pop3_node(), "storage-01")

    def test_2_primary_stopped_new_sessions_on_secondary(self):
        # An authenticated session on the primary when it goes away.
        imap = imaplib.IMAP4_SSL(harness.HOST, self.port("imaps"), ssl_context=self.env.context,
                                 timeout=10)
        imap.login(ALICE, ALICE_PW)
        self.env.dovecots[0].stop()
        # Immediately: the health check has not noticed yet; the connect fails over.
        self.assertEqual(self.imap_node(), "storage-02")
        self.assertEqual(self.pop3_node(), "storage-02")
        # After the health check has marked the primary down.
        time.sleep(2.5)
        self.assertEqual(self.imap_node(), "storage-02")
        self.assertEqual(self.pop3_node(), "storage-02")
        try:
            imap.shutdown()
        except OSError:
            pass
        self.assertTrue(self.env.gateway.is_running())

    def test_3_both_down_unavailable(self):
        self.env.dovecots[0].stop()
        self.env.dovecots[1].stop()
        self.assertEqual(self.raw_imap_login(), f"a {UNAVAILABLE_IMAP}")
        self.assertEqual(self.raw_pop3_login(), UNAVAILABLE_POP3)
        time.sleep(2.5)  # and once health checks know both are down
        self.assertEqual(self.raw_imap_login(), f"a {UNAVAILABLE_IMAP}")
        self.assertEqual(self.raw_pop3_login(), UNAVAILABLE_POP3)
        # Authentication is still the gateway's: a wrong password is still a failure.
        self.assertEqual(self.raw_imap_login("wrong"), f"a {AUTH_FAILED}")
        imap = imaplib.IMAP4_SSL(harness.HOST, self.port("imaps"), ssl_context=self.env.context,
                                 timeout=10)
        with self.assertRaises(imaplib.IMAP4.error) as cm:
            imap.login(ALICE, ALICE_PW)
        imap.shutdown()
        self.assertIn("UNAVAILABLE", str(cm.exception))

    def test_4_primary_back(self):
        self.env.dovecots[0].start()

        def primary_again():
            try:
                return self.imap_node() == "storage-01"
            except (imaplib.IMAP4.error, OSError, AssertionError):
                return False
        harness.wait_for(primary_again, 10, 0.5, "sessions back on storage-01")
        self.assertEqual(self.pop3_node(), "storage-01")

    def test_5_unavailable_logged(self):
        text = self.env.gateway.log_text()
        self.assertRegex(text, r"(?i)unavailable|backend.*down|no backend",
                         "no log line about the unavailable backends")


if __name__ == "__main__":
    unittest.main()
