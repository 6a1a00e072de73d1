"""The admin listener: /metrics in Prometheus text format, /healthz."""
from __future__ import annotations

import imaplib
import re
import unittest
import urllib.error
import urllib.request

import fixtures
import harness
from fixtures import ALICE, ALICE_PW


class AdminEnv(fixtures.GatewayEnv):
    def config_text(self) -> str:
        if not hasattr(self, "admin_port"):
            self.admin_port = harness.free_port()
        return super().config_text() + f'\nadmin: {{ listen: "127.0.0.1:{self.admin_port}" }}\n'


class AdminTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.env = AdminEnv(nodes=1, name="admintest").start()
        harness.wait_port(cls.env.admin_port, 10)

    @classmethod
    def tearDownClass(cls):
        cls.env.stop()

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.env.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, text: str, name: str) -> float:
        """The family's value, summed over its labels (listener, ...)."""
        found = re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\d+)$", text, re.M)
        self.assertTrue(found, f"{name} missing from /metrics:\n{text}")
        return sum(float(v) for v in found)

    def test_healthz(self):
        self.assertEqual(self.get("/healthz"), (200, "ok\n"))

    def test_unknown_path(self):
        self.assertEqual(self.get("/nope")[0], 404)

    def test_counters_follow_logins(self):
        before = self.get("/metrics")[1]
        logins0 = self.metric(before, "mailgate_logins_total")
        failures0 = self.metric(before, "mailgate_auth_failures_total")
        self.assertIn('mailgate_backend_up{backend="storage-01"} 1', before)

        imap = imaplib.IMAP4_SSL(harness.HOST, self.env.ports["imaps"], ssl_context=self.env.context, timeout=10)
        imap.login(ALICE, ALICE_PW)
        during = self.get("/metrics")[1]
        self.assertGreaterEqual(self.metric(during, "mailgate_sessions_active"), 1)
        imap.logout()
        bad = imaplib.IMAP4_SSL(harness.HOST, self.env.ports["imaps"], ssl_context=self.env.context, timeout=10)
        with self.assertRaises(imaplib.IMAP4.error):
            bad.login(ALICE, "wrong")
        bad.shutdown()

        after = self.get("/metrics")[1]
        self.assertEqual(self.metric(after, "mailgate_logins_total"), logins0 + 1)
        self.assertEqual(self.metric(after, "mailgate_auth_failures_total"), failures0 + 1)
        self.assertGreaterEqual(self.metric(after, "mailgate_connections_accepted_total"), 2)


if __name__ == "__main__":
    unittest.main()
