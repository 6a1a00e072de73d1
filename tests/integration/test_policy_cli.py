"""The policy command line (DESIGN.md, "CLI for policy"):

- `mailgate --explain FILE --listener L --client IP [--helo H] [--from A] [--rcpt B]
  [--user U] [--message FILE.eml]` prints, stage by stage, each rule and limit that
  matched or not, and the exact reply; exit 0;
- `mailgate --test-policy FILE CASES.yaml` runs table-driven cases offline and ends
  with `N passed, N failed` (exit 1 when one fails, and the failing case is named);
- neither changes the counters of a running gateway: 100 --explain runs for an
  address under a 1/1h connection rate leave its one connection to the gateway."""

from __future__ import annotations

import re
import time
import unittest
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import harness
import policy_support as ps
from fixtures import USERS

REFUSAL = "554 5.7.1 Not accepted from your network"
SENDER_REFUSAL = "550 5.7.1 Sender refused"
RATE_CLIENT = "127.0.0.40"

POLICY = r"""
lists:
  blocked_cc: { countries: [KP] }
geoip:
  country: { mmdb: ["@V4@", "@V6@"], field: country_code }
limits:
  rules:
    - { name: conn-rate, when: { listener: mx }, count: connections, key: [client.net], rate: 1/1h, burst: 1,
        on_exceed: tempfail }
policies:
  - { name: mx-blocked, stage: connect, when: { listener: mx, country: { in: blocked_cc } }, then: reject,
      reply: "554 5.7.1 Not accepted from your network" }
  - { name: no-spammer, stage: mail, when: { sender: { re2: '(?i)@spam\.example$' } }, then: reject,
      reply: "550 5.7.1 Sender refused" }
  - { name: exe, stage: data, when: { attachment.filename: { re2: '(?i)\.(exe|scr|js)$' } }, then: reject }
"""

EXE_MESSAGE = (
    "From: billing@example.com\r\nTo: alice@example.org\r\nSubject: invoice\r\n"
    "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
    "--b1\r\nContent-Type: text/plain\r\n\r\nAttached.\r\n"
    "--b1\r\nContent-Type: application/octet-stream\r\n"
    "Content-Disposition: attachment; filename=\"invoice.exe\"\r\n"
    "Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--b1--\r\n")


class PolicyCliTest(harness.LogsOnFailure, unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        why = ps.perl_mmdb_missing()
        if why:
            raise unittest.SkipTest(why)
        cls.dir = Path(harness.make_workdir("mailgate-policycli-"))
        cls.gateway = None
        try:
            geo = cls.dir / "geo"
            geo.mkdir()
            v4 = ps.write_mmdb(geo / "country-v4.mmdb", {"198.51.100.0/24": {"country_code": "KP"}})
            v6 = ps.write_mmdb(geo / "country-v6.mmdb", {"2001:db8:1::/48": {"country_code": "KP"}})
            certs = cls.dir / "certs"
            ca = harness.make_ca(certs)
            cert = harness.make_cert(ca, certs, ["mx.example.org"])
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            closed = harness.free_port()
            cls.port = harness.free_port()
            text = harness.mailgate_config(
                certificates=[cert], users_file=users_file,
                listeners=[{"name": "mx", "protocol": "smtp", "port": cls.port}],
                backends=[{"name": "storage-01", "imap": closed, "lmtp": closed, "health_interval": "1h"}],
                routes=[{"domain": "*", "primary": "storage-01"}])
            cls.config = ps.with_policy(text, POLICY.replace("@V4@", v4).replace("@V6@", v6))
            cls.config_path = cls.dir / "policy.yaml"
            cls.config_path.write_text(cls.config)
            cls.exe = cls.dir / "attached-invoice.eml"
            cls.exe.write_text(EXE_MESSAGE)
            # A running gateway on the same file, for the counters check.
            cls.gateway = harness.Mailgate(cls.dir, cls.config, name="gateway").start()
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def _stop(cls):
        if cls.gateway is not None:
            cls.gateway.stop()
        harness.remove_workdir(cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls._stop()

    def diagnostics(self) -> str:
        return f"--- mailgate log (tail) ---\n{self.gateway.log_text()[-4000:]}"

    def explain(self, *args: str) -> tuple[int, str]:
        r = harness.run_mailgate("--explain", str(self.config_path), *args)
        return r.returncode, r.stdout + r.stderr

    def test_check_config_accepts_the_policy(self):
        r = harness.run_mailgate("--check-config", str(self.config_path))
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "ok"), r.stdout + r.stderr)

    # -- --explain
    def test_explain_refused_at_connect(self):
        rc, out = self.explain("--listener", "mx", "--client", "198.51.100.7")
        self.assertEqual(rc, 0, out)
        self.assertIn("connect", out, out)
        self.assertIn("mx-blocked", out, out)
        self.assertIn(REFUSAL, out, f"the exact reply should be printed:\n{out}")
        self.assertIn("conn-rate", out, f"limits are explained too:\n{out}")

    def test_explain_served_then_refused_at_mail(self):
        rc, out = self.explain("--listener", "mx", "--client", "192.0.2.1", "--helo", "client.example.com",
                               "--from", "x@spam.example", "--rcpt", "alice@example.org")
        self.assertEqual(rc, 0, out)
        self.assertIn("mx-blocked", out, f"rules that did not match are listed too:\n{out}")
        self.assertIn("no-spammer", out, out)
        self.assertIn(SENDER_REFUSAL, out, out)
        self.assertNotIn(REFUSAL + " (ref", out, out)
        # Stage by stage: connect comes before mail.
        connect = re.search(r"\bconnect\b", out)
        mail = re.search(r"\bmail\b", out)
        self.assertTrue(connect and mail, f"stages connect and mail should be named:\n{out}")
        self.assertLess(connect.start(), mail.start(), f"connect should come before mail:\n{out}")

    def test_explain_message_at_data(self):
        rc, out = self.explain("--listener", "mx", "--client", "192.0.2.1", "--from", "a@example.com",
                               "--rcpt", "alice@example.org", "--message", str(self.exe))
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"\bexe\b", f"the rule exe should be named:\n{out}")
        self.assertRegex(out, r"(?m)\b554\b", f"its reply (554) should be printed:\n{out}")

    def test_explain_does_not_change_counters(self):
        args = ["--listener", "mx", "--client", RATE_CLIENT]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: self.explain(*args), range(100)))
        bad = [(rc, out) for rc, out in results if rc != 0]
        if bad:
            self.fail(f"{len(bad)} of 100 --explain runs failed; the first: exit {bad[0][0]}\n{bad[0][1][:2000]}")
        last = results[-1][1]
        rate_lines = [l for l in last.splitlines() if "conn-rate" in l]
        self.assertTrue(rate_lines, last)
        self.assertFalse(any(re.search(r"(?<!not )exceeded", l) for l in rate_lines),
                         f"conn-rate reported exceeded after 100 explains:\n{last}")
        # The gateway's counter for that address was not touched: its one connection is
        # served, and the next is over the rate (so the limit is really in force).
        c = ps.SourceClient(self.port, RATE_CLIENT)
        self.addCleanup(c.close)
        first = ps.smtp_reply(c)
        self.assertTrue(first and first[-1].startswith("220"), f"first connection from {RATE_CLIENT}: {first}")
        c.close()
        c2 = ps.SourceClient(self.port, RATE_CLIENT)
        self.addCleanup(c2.close)
        second = ps.smtp_reply(c2)
        self.assertTrue(second and second[-1].startswith("421 4.7.0"),
                        f"second connection from {RATE_CLIENT} within the hour: {second}")

    # -- --test-policy
    def cases(self, extra: str = "") -> Path:
        text = f"""- name: KP is refused on the MX
  session: {{ listener: mx, client: 198.51.100.7 }}
  expect: {{ stage: connect, action: reject, reply: "554 5.7.1*" }}
- name: KP over IPv6 too
  session: {{ listener: mx, client: "2001:db8:1::7" }}
  expect: {{ stage: connect, action: reject, reply: "554 5.7.1 Not accepted from your network*" }}
- name: spammer refused at MAIL
  session: {{ listener: mx, client: 192.0.2.1, helo: client.example.com, from: x@spam.example,
             rcpt: alice@example.org }}
  expect: {{ stage: mail, action: reject, reply: "550 5.7.1 Sender refused*" }}
- name: exe attachment refused at DATA
  session: {{ listener: mx, client: 192.0.2.1, helo: client.example.com, from: a@example.com,
             rcpt: alice@example.org, message: "{self.exe}" }}
  expect: {{ stage: data, action: reject, reply: "554*" }}
- name: a clean session is accepted
  session: {{ listener: mx, client: 192.0.2.1, helo: client.example.com, from: a@example.com,
             rcpt: alice@example.org }}
  expect: {{ action: accept }}
{extra}"""
        path = self.dir / f"cases-{time.time_ns()}.yaml"
        path.write_text(text)
        return path

    def run_test_policy(self, cases: Path) -> tuple[int, str, str]:
        r = harness.run_mailgate("--test-policy", str(self.config_path), str(cases))
        lines = [l for l in r.stdout.splitlines() if l.strip()]
        return r.returncode, (lines[-1].strip() if lines else ""), r.stdout + r.stderr

    def test_test_policy_all_pass(self):
        rc, last, out = self.run_test_policy(self.cases())
        self.assertEqual(last, "5 passed, 0 failed", out)
        self.assertEqual(rc, 0, out)

    def test_test_policy_one_fails(self):
        wrong = """- name: deliberately wrong expectation
  session: { listener: mx, client: 198.51.100.8 }
  expect: { stage: connect, action: accept }
"""
        rc, last, out = self.run_test_policy(self.cases(wrong))
        self.assertEqual(last, "5 passed, 1 failed", out)
        self.assertEqual(rc, 1, out)
        self.assertIn("deliberately wrong expectation", out, "the failing case should be named")

    def test_test_policy_does_not_touch_the_gateway(self):
        rc, last, out = self.run_test_policy(self.cases())
        self.assertEqual(rc, 0, out)
        self.assertTrue(self.gateway.is_running())
        self.assertNotIn("198.51.100.7", self.gateway.log_text(), "offline cases reached the gateway")


if __name__ == "__main__":
    unittest.main()
