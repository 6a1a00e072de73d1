"""POP3 through mailgate to a real Dovecot: TLS, login, bounds, STLS rules."""

import base64
import poplib
import time
import unittest

import harness
from fixtures import (ALICE, ALICE_PW, BOB, BOB_PW, MAX_BAD, NET_NAMES, ORG_NAMES,
                      PREAUTH_TIMEOUT_S, GatewayTestCase)

WELCOME = "Welcome to POP3 via mailgate"
AUTH_FAILED = "-ERR [AUTH] Authentication failed."
PRIVACY = "-ERR [AUTH] Plaintext authentication disallowed without TLS."
POP3_MAX_LINE = 512


class Pop3Test(GatewayTestCase):

    @classmethod
    def prepare(cls):
        cls.env.dovecots[0].deliver(ALICE, WELCOME, "Hello Alice.\r\n")
        cls.env.dovecots[0].deliver(BOB, WELCOME, "Hello Bob.\r\n")

    # ------------------------------------------------------------------ helpers
    def pop3s(self) -> poplib.POP3_SSL:
        return poplib.POP3_SSL(harness.HOST, self.port("pop3s"), context=self.env.context,
                               timeout=10)

    def raw(self, port_name="pop3s", tls=True, **kw):
        c, greeting = harness.pop3_client(self.port(port_name), tls=tls,
                                          context=self.env.context if tls else None, **kw)
        self.addCleanup(c.close)
        return c, greeting

    def cmd(self, c: harness.LineClient, line: str) -> str:
        c.send_line(line)
        reply = c.read_line()
        self.assertIsNotNone(reply, f"closed after {line!r}")
        return reply

    def multiline(self, c: harness.LineClient) -> list[str]:
        return c.read_until(lambda l: l == ".")

    def assertWelcome(self, pop: poplib.POP3):
        count, size = pop.stat()
        self.assertGreaterEqual(count, 1)
        found = False
        for i in range(1, count + 1):
            _, lines, _ = pop.retr(i)
            if f"Subject: {WELCOME}".encode() in lines:
                found = True
        self.assertTrue(found, "welcome message not retrieved")

    # ------------------------------------------------------------------ greeting, CAPA
    def test_greeting(self):
        c, greeting = self.raw()
        self.assertEqual(greeting, "+OK mailgate ready.")
        c2, greeting2 = self.raw("pop3", tls=False)
        self.assertEqual(greeting2, "+OK mailgate ready.")

    def test_capa(self):
        c, _ = self.raw("pop3", tls=False)
        self.assertTrue(self.cmd(c, "CAPA").startswith("+OK"))
        caps = [l.upper() for l in self.multiline(c)]
        self.assertIn("STLS", caps)
        c2, _ = self.raw()
        self.assertTrue(self.cmd(c2, "CAPA").startswith("+OK"))
        caps2 = [l.upper() for l in self.multiline(c2)]
        self.assertNotIn("STLS", caps2)
        self.assertIn("USER", caps2)
        self.assertTrue(any(l.startswith("SASL") and "PLAIN" in l for l in caps2), caps2)

    # ------------------------------------------------------------------ successful logins
    def test_implicit_tls_user_pass_stat_retr(self):
        pop = self.pop3s()
        self.assertTrue(pop.user(ALICE).startswith(b"+OK"))
        self.assertTrue(pop.pass_(ALICE_PW).startswith(b"+OK"))
        self.assertWelcome(pop)
        pop.quit()

    def test_stls_user_pass_stat(self):
        pop = poplib.POP3(harness.HOST, self.port("pop3"), timeout=10)
        self.assertIn("STLS", pop.capa())
        self.assertTrue(pop.stls(context=self.env.context).startswith(b"+OK"))
        pop.user(BOB)
        self.assertTrue(pop.pass_(BOB_PW).startswith(b"+OK"))
        self.assertWelcome(pop)
        pop.quit()

    def test_auth_plain_initial_response(self):
        c, _ = self.raw()
        reply = self.cmd(c, f"AUTH PLAIN {harness.sasl_plain(ALICE, ALICE_PW)}")
        self.assertTrue(reply.startswith("+OK"), reply)
        self.assertTrue(self.cmd(c, "STAT").startswith("+OK"))

    def test_auth_plain_continuation(self):
        c, _ = self.raw()
        self.assertTrue(self.cmd(c, "AUTH PLAIN").startswith("+"))
        reply = self.cmd(c, harness.sasl_plain(BOB, BOB_PW))
        self.assertTrue(reply.startswith("+OK"), reply)
        self.assertTrue(self.cmd(c, "STAT").startswith("+OK"))

    def test_auth_login(self):
        c, _ = self.raw()
        self.assertTrue(self.cmd(c, "AUTH LOGIN").startswith("+ "))
        self.assertTrue(self.cmd(c, base64.b64encode(ALICE.encode()).decode()).startswith("+ "))
        reply = self.cmd(c, base64.b64encode(ALICE_PW.encode()).decode())
        self.assertTrue(reply.startswith("+OK"), reply)

    def test_curl_pop3s(self):
        r = harness.curl(f"pop3s://{harness.HOST}:{self.port('pop3s')}/1",
                         "--cacert", self.env.ca.cert, "-u", f"{ALICE}:{ALICE_PW}")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Subject:", r.stdout)

    def test_curl_pop3_stls(self):
        r = harness.curl(f"pop3://{harness.HOST}:{self.port('pop3')}/",
                         "--ssl-reqd", "--cacert", self.env.ca.cert, "-u", f"{BOB}:{BOB_PW}")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"(?m)^1 \d+")

    # ------------------------------------------------------------------ failed logins
    def test_wrong_password(self):
        c, _ = self.raw()
        self.assertTrue(self.cmd(c, f"USER {ALICE}").startswith("+OK"))
        t0 = time.monotonic()
        self.assertEqual(self.cmd(c, "PASS wrong-password"), AUTH_FAILED)
        self.assertGreaterEqual(time.monotonic() - t0, 0.15, "failure_delay (200ms) not applied")

    def test_unknown_user(self):
        c, _ = self.raw()
        reply = self.cmd(c, "USER nobody@example.org")
        if reply.startswith("+OK"):
            reply = self.cmd(c, "PASS whatever")
        self.assertEqual(reply, AUTH_FAILED)

    def test_poplib_wrong_password(self):
        pop = self.pop3s()
        pop.user(BOB)
        with self.assertRaises(poplib.error_proto) as cm:
            pop.pass_("nope")
        self.assertIn(b"[AUTH] Authentication failed.", cm.exception.args[0])
        pop.close()

    def test_auth_plain_wrong_password(self):
        c, _ = self.raw()
        self.assertEqual(self.cmd(c, f"AUTH PLAIN {harness.sasl_plain(BOB, 'bad')}"), AUTH_FAILED)

    # ------------------------------------------------------------------ plaintext before TLS
    def test_user_pass_refused_before_stls(self):
        c, _ = self.raw("pop3", tls=False)
        reply = self.cmd(c, f"USER {ALICE}")
        if reply.startswith("+OK"):
            reply = self.cmd(c, f"PASS {ALICE_PW}")
        self.assertEqual(reply, PRIVACY)
        reply = self.cmd(c, f"AUTH PLAIN {harness.sasl_plain(ALICE, ALICE_PW)}")
        self.assertTrue(reply.startswith("-ERR"), reply)
        self.assertEqual(self.cmd(c, "STLS"), "+OK Begin TLS negotiation now.")
        c.start_tls(self.env.context)
        self.assertTrue(self.cmd(c, f"USER {ALICE}").startswith("+OK"))
        self.assertTrue(self.cmd(c, f"PASS {ALICE_PW}").startswith("+OK"))

    def test_stls_injection_is_discarded(self):
        c, _ = self.raw("pop3", tls=False)
        c.send(b"STLS\r\nNOOP\r\n")  # one write
        self.assertEqual(c.read_line(), "+OK Begin TLS negotiation now.")
        time.sleep(0.2)
        c.start_tls(self.env.context)  # raises if plaintext bytes followed the +OK
        c.send_line("QUIT")
        lines = c.read_all(5)
        # Exactly one reply: QUIT's. A reply for the injected NOOP would come first.
        self.assertEqual(len(lines), 1, f"replies after TLS: {lines}")
        self.assertTrue(lines[0].startswith("+OK"), lines)

    def test_stls_on_implicit_listener_refused(self):
        c, _ = self.raw()
        self.assertTrue(self.cmd(c, "STLS").startswith("-ERR"))

    # ------------------------------------------------------------------ SNI
    def test_sni_picks_certificate(self):
        ctx = harness.client_context(self.env.ca.cert)
        ctx.check_hostname = False
        for sni, names in (("mail.example.net", NET_NAMES), ("mail.example.org", ORG_NAMES),
                           (None, ORG_NAMES)):
            c, _ = harness.pop3_client(self.port("pop3s"), tls=True, context=ctx,
                                       server_hostname=sni)
            self.addCleanup(c.close)
            self.assertEqual(harness.peer_san_dns(c.sock), names, f"SNI {sni}")

    # ------------------------------------------------------------------ bounds
    def test_line_too_long(self):
        c, _ = self.raw()
        c.send(b"USER " + b"a" * (POP3_MAX_LINE * 2) + b"\r\n")
        self.assertEqual(c.read_line(), "-ERR Line too long.")

    def test_too_many_bad_commands(self):
        c, _ = self.raw()
        seen = []
        for i in range(MAX_BAD + 2):
            try:
                c.send_line(f"FROB{i}")
            except OSError:
                break
            line = c.read_line()
            if line is None:
                break
            seen.append(line)
            if line == "-ERR Too many invalid commands.":
                break
        self.assertIn("-ERR Too many invalid commands.", seen)
        self.assertLessEqual(len(seen), MAX_BAD + 1, seen)
        self.assertTrue(c.at_eof(), f"not closed: {seen}")

    def test_preauth_idle_timeout(self):
        c, _ = self.raw("pop3_short")
        t0 = time.monotonic()
        lines = c.read_all(PREAUTH_TIMEOUT_S + 5)
        self.assertGreaterEqual(time.monotonic() - t0, PREAUTH_TIMEOUT_S * 0.8)
        self.assertTrue(all(l.startswith("-ERR") for l in lines), lines)

    def test_quit_before_login(self):
        c, _ = self.raw()
        self.assertTrue(self.cmd(c, "QUIT").startswith("+OK"))
        self.assertTrue(c.at_eof())

    def test_session_log_line(self):
        pop = self.pop3s()
        pop.user(ALICE)
        pop.pass_(ALICE_PW)
        pop.stat()
        pop.quit()

        def find():
            for obj in self.env.gateway.log_lines():
                if obj.get("user") == ALICE and obj.get("listener") == "pop3s" and "outcome" in obj:
                    return obj
            return None
        try:
            line = harness.wait_for(find, 10, what="pop3 session log line")
        except TimeoutError:
            self.fail("no end-of-session line for the pop3s session:\n"
                      + self.env.gateway.log_text()[-3000:])
        for f in ("session", "client", "tls_version", "tls_cipher", "backend", "bytes_in",
                  "bytes_out", "duration_ms"):
            self.assertIn(f, line)


if __name__ == "__main__":
    unittest.main()
