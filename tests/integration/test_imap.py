"""IMAP through mailgate to a real Dovecot: TLS, login, bounds, STARTTLS rules, IDLE, logs."""

import base64
import imaplib
import re
import socket
import ssl
import time
import unittest

import harness
from fixtures import (ALICE, ALICE_PW, BOB, BOB_PW, IMAP_MAX_LINE, IMAP_MAX_LITERAL, MAX_BAD,
                      NET_NAMES, ORG_NAMES, PREAUTH_TIMEOUT_S, GatewayTestCase)

WELCOME = "Welcome to mailgate"
AUTH_FAILED = "NO [AUTHENTICATIONFAILED] Authentication failed."
PRIVACY = "NO [PRIVACYREQUIRED] Plaintext authentication disallowed without TLS."


class ImapTest(GatewayTestCase):

    @classmethod
    def prepare(cls):
        cls.env.dovecots[0].deliver(ALICE, WELCOME, "Hello Alice.\r\n")
        cls.env.dovecots[0].deliver(BOB, WELCOME, "Hello Bob.\r\n")

    # ------------------------------------------------------------------ helpers
    def imaps(self, timeout=10) -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL(harness.HOST, self.port("imaps"), ssl_context=self.env.context,
                                 timeout=timeout)

    def raw_imaps(self, port_name="imaps", **kw):
        c, greeting = harness.imap_client(self.port(port_name), tls=True,
                                          context=self.env.context, **kw)
        self.addCleanup(c.close)
        return c, greeting

    def raw_imap(self):
        c, greeting = harness.imap_client(self.port("imap"))
        self.addCleanup(c.close)
        return c, greeting

    def assertWelcomeFetched(self, imap: imaplib.IMAP4):
        typ, data = imap.select("INBOX")
        self.assertEqual(typ, "OK", data)
        self.assertGreaterEqual(int(data[0]), 1)
        typ, data = imap.search(None, "SUBJECT", f'"{WELCOME}"')
        self.assertEqual(typ, "OK", data)
        first = data[0].split()[0]
        typ, data = imap.fetch(first, "(BODY.PEEK[])")
        self.assertEqual(typ, "OK", data)
        self.assertIn(f"Subject: {WELCOME}".encode(), data[0][1])

    # ------------------------------------------------------------------ greeting, capabilities
    def test_greeting_implicit_tls(self):
        c, greeting = self.raw_imaps()
        self.assertRegex(greeting, r"^\* OK \[CAPABILITY [^\]]*\] mailgate ready\.$")
        caps = harness.capabilities(greeting)
        for cap in ("IMAP4REV1", "ID", "LITERAL+", "SASL-IR", "AUTH=PLAIN", "AUTH=LOGIN"):
            self.assertIn(cap, caps, greeting)
        self.assertNotIn("STARTTLS", caps)
        self.assertNotIn("LOGINDISABLED", caps)
        self.assertEqual(c.tls_version in ("TLSv1.2", "TLSv1.3"), True, c.tls_version)

    def test_greeting_starttls_listener(self):
        c, greeting = self.raw_imap()
        self.assertRegex(greeting, r"^\* OK \[CAPABILITY [^\]]*\] mailgate ready\.$")
        caps = harness.capabilities(greeting)
        for cap in ("IMAP4REV1", "ID", "LITERAL+", "SASL-IR", "STARTTLS", "LOGINDISABLED"):
            self.assertIn(cap, caps, greeting)
        self.assertFalse([x for x in caps if x.startswith("AUTH=")], greeting)
        lines = c.command("a", "CAPABILITY")
        self.assertTrue(lines[-1].startswith("a OK"), lines)
        self.assertIn("LOGINDISABLED", harness.capabilities(lines[0]))
        lines = c.command("b", "STARTTLS")
        self.assertEqual(lines[-1], "b OK Begin TLS negotiation now.")
        c.start_tls(self.env.context)
        lines = c.command("c", "CAPABILITY")
        caps = harness.capabilities(lines[0])
        self.assertTrue(lines[-1].startswith("c OK"), lines)
        self.assertIn("AUTH=PLAIN", caps)
        self.assertIn("AUTH=LOGIN", caps)
        self.assertNotIn("STARTTLS", caps)
        self.assertNotIn("LOGINDISABLED", caps)

    def test_noop_id_logout_before_login(self):
        c, _ = self.raw_imaps()
        self.assertTrue(c.command("a", "NOOP")[-1].startswith("a OK"))
        lines = c.command("b", 'ID ("name" "test")')
        self.assertTrue(lines[-1].startswith("b OK"), lines)
        self.assertTrue(any(l.startswith("* ID ") for l in lines), lines)
        lines = c.command("c", "LOGOUT")
        self.assertTrue(any(l.startswith("* BYE") for l in lines), lines)
        self.assertTrue(lines[-1].startswith("c OK"), lines)
        self.assertTrue(c.at_eof(), "connection not closed after LOGOUT")

    # ------------------------------------------------------------------ successful logins
    def test_implicit_tls_login_select_fetch(self):
        imap = self.imaps()
        typ, data = imap.login(ALICE, ALICE_PW)
        self.assertEqual(typ, "OK", data)
        self.assertWelcomeFetched(imap)
        imap.logout()

    def test_starttls_login_select_fetch(self):
        imap = imaplib.IMAP4(harness.HOST, self.port("imap"), timeout=10)
        self.assertIn("STARTTLS", imap.capabilities)
        self.assertIn("LOGINDISABLED", imap.capabilities)
        typ, data = imap.starttls(ssl_context=self.env.context)
        self.assertEqual(typ, "OK", data)
        self.assertNotIn("LOGINDISABLED", imap.capabilities)
        typ, data = imap.login(ALICE, ALICE_PW)
        self.assertEqual(typ, "OK", data)
        self.assertWelcomeFetched(imap)
        imap.logout()

    def test_login_reply_carries_backend_capabilities(self):
        c, _ = self.raw_imaps()
        lines = c.command("a1", f"LOGIN {harness.imap_quote(ALICE)} {harness.imap_quote(ALICE_PW)}")
        self.assertTrue(lines[-1].startswith("a1 OK [CAPABILITY "), lines)
        caps = harness.capabilities(lines[-1])
        self.assertIn("IMAP4REV1", caps)
        self.assertIn("IDLE", caps, "post-login CAPABILITY should be the backend's")
        lines = c.command("a2", "SELECT INBOX")
        self.assertTrue(lines[-1].startswith("a2 OK"), lines)
        self.assertTrue(any(re.match(r"\* \d+ EXISTS", l) for l in lines), lines)

    def test_login_with_synchronising_literals(self):
        c, _ = self.raw_imaps()
        c.send_line(f"a LOGIN {{{len(ALICE)}}}")
        self.assertTrue(c.read_line().startswith("+"))
        c.send_line(f"{ALICE} {{{len(ALICE_PW)}}}")
        self.assertTrue(c.read_line().startswith("+"))
        c.send_line(ALICE_PW)
        lines = c.read_tagged("a")
        self.assertTrue(lines[-1].startswith("a OK"), lines)
        self.assertTrue(c.command("b", "SELECT INBOX")[-1].startswith("b OK"))

    def test_login_with_literal_plus(self):
        c, _ = self.raw_imaps()
        c.send(f"a LOGIN {{{len(ALICE)}+}}\r\n{ALICE} {{{len(ALICE_PW)}+}}\r\n{ALICE_PW}\r\n")
        lines = c.read_tagged("a")
        self.assertTrue(lines[-1].startswith("a OK"), lines)
        self.assertTrue(c.command("b", "SELECT INBOX")[-1].startswith("b OK"))

    def test_authenticate_plain_sasl_ir(self):
        c, _ = self.raw_imaps()
        lines = c.command("a", f"AUTHENTICATE PLAIN {harness.sasl_plain(BOB, BOB_PW)}")
        self.assertTrue(lines[-1].startswith("a OK"), lines)
        self.assertTrue(c.command("b", "SELECT INBOX")[-1].startswith("b OK"))

    def test_authenticate_plain_continuation(self):
        c, _ = self.raw_imaps()
        c.send_line("a AUTHENTICATE PLAIN")
        self.assertTrue(c.read_line().startswith("+"))
        c.send_line(harness.sasl_plain(ALICE, ALICE_PW))
        lines = c.read_tagged("a")
        self.assertTrue(lines[-1].startswith("a OK"), lines)
        self.assertTrue(c.command("b", "SELECT INBOX")[-1].startswith("b OK"))

    def test_authenticate_login(self):
        c, _ = self.raw_imaps()
        c.send_line("a AUTHENTICATE LOGIN")
        self.assertTrue(c.read_line().startswith("+"))
        c.send_line(base64.b64encode(ALICE.encode()).decode())
        self.assertTrue(c.read_line().startswith("+"))
        c.send_line(base64.b64encode(ALICE_PW.encode()).decode())
        lines = c.read_tagged("a")
        self.assertTrue(lines[-1].startswith("a OK"), lines)

    def test_authenticate_cancelled(self):
        c, _ = self.raw_imaps()
        c.send_line("a AUTHENTICATE PLAIN")
        self.assertTrue(c.read_line().startswith("+"))
        c.send_line("*")
        lines = c.read_tagged("a")
        self.assertTrue(lines[-1].startswith("a BAD"), lines)
        self.assertTrue(c.command("b", "NOOP")[-1].startswith("b OK"))

    def test_imaplib_authenticate_plain(self):
        imap = self.imaps()
        typ, data = imap.authenticate("PLAIN", lambda _: f"\0{ALICE}\0{ALICE_PW}".encode())
        self.assertEqual(typ, "OK", data)
        self.assertWelcomeFetched(imap)
        imap.logout()

    def test_curl_imaps(self):
        r = harness.curl(f"imaps://{harness.HOST}:{self.port('imaps')}/INBOX;MAILINDEX=1",
                         "--cacert", self.env.ca.cert, "-u", f"{ALICE}:{ALICE_PW}")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"Subject: {WELCOME}", r.stdout)

    def test_curl_imap_starttls(self):
        r = harness.curl(f"imap://{harness.HOST}:{self.port('imap')}/INBOX;MAILINDEX=1",
                         "--ssl-reqd", "--cacert", self.env.ca.cert, "-u", f"{ALICE}:{ALICE_PW}")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"Subject: {WELCOME}", r.stdout)

    # ------------------------------------------------------------------ failed logins
    def test_wrong_password(self):
        c, _ = self.raw_imaps()
        t0 = time.monotonic()
        lines = c.command("a", f"LOGIN {harness.imap_quote(ALICE)} \"not-the-password\"")
        self.assertEqual(lines[-1], f"a {AUTH_FAILED}")
        self.assertGreaterEqual(time.monotonic() - t0, 0.15, "failure_delay (200ms) not applied")
        self.assertTrue(c.command("b", "NOOP")[-1].startswith("b OK"))

    def test_unknown_user(self):
        c, _ = self.raw_imaps()
        lines = c.command("b", 'LOGIN "nobody@example.org" "whatever"')
        self.assertEqual(lines[-1], f"b {AUTH_FAILED}")
        lines = c.command("c", 'LOGIN "nobody@nowhere.invalid" "whatever"')
        self.assertEqual(lines[-1], f"c {AUTH_FAILED}")

    def test_imaplib_wrong_password(self):
        imap = self.imaps()
        with self.assertRaises(imaplib.IMAP4.error) as cm:
            imap.login(BOB, "wrong")
        self.assertIn("AUTHENTICATIONFAILED", str(cm.exception))
        imap.shutdown()

    def test_authenticate_plain_wrong_password(self):
        c, _ = self.raw_imaps()
        lines = c.command("a", f"AUTHENTICATE PLAIN {harness.sasl_plain(ALICE, 'nope')}")
        self.assertEqual(lines[-1], f"a {AUTH_FAILED}")

    def test_too_many_failed_logins_closes(self):
        c, _ = self.raw_imaps()
        closed = False
        for i in range(5):
            try:
                c.send_line(f"t{i} LOGIN {harness.imap_quote(ALICE)} \"bad{i}\"")
                lines = c.read_tagged(f"t{i}")
            except (EOFError, OSError):
                closed = True
                break
            self.assertEqual(lines[-1], f"t{i} {AUTH_FAILED}")
        if not closed:
            closed = c.at_eof(3)
        self.assertTrue(closed, "session not closed after max_auth_attempts (3) failures")
        self.assertLessEqual(i, 3)

    # ------------------------------------------------------------------ plaintext before TLS
    def test_login_refused_before_starttls(self):
        c, greeting = self.raw_imap()
        self.assertIn("LOGINDISABLED", harness.capabilities(greeting))
        lines = c.command("a", f"LOGIN {harness.imap_quote(ALICE)} {harness.imap_quote(ALICE_PW)}")
        self.assertEqual(lines[-1], f"a {PRIVACY}")
        lines = c.command("b", f"AUTHENTICATE PLAIN {harness.sasl_plain(ALICE, ALICE_PW)}")
        self.assertTrue(lines[-1].startswith("b NO") or lines[-1].startswith("b BAD"), lines)
        self.assertFalse(lines[-1].startswith("b OK"), lines)
        # Still usable: STARTTLS then log in.
        self.assertEqual(c.command("c", "STARTTLS")[-1], "c OK Begin TLS negotiation now.")
        c.start_tls(self.env.context)
        lines = c.command("d", f"LOGIN {harness.imap_quote(ALICE)} {harness.imap_quote(ALICE_PW)}")
        self.assertTrue(lines[-1].startswith("d OK"), lines)

    def test_starttls_injection_is_discarded(self):
        c, _ = self.raw_imap()
        c.send(b"a STARTTLS\r\nb NOOP\r\n")  # one write
        line = c.read_line()
        self.assertEqual(line, "a OK Begin TLS negotiation now.")
        time.sleep(0.2)  # give a buggy server time to answer b in plaintext
        c.start_tls(self.env.context)  # raises if plaintext bytes arrived after a's reply
        c.send_line("c NOOP")
        lines = c.read_until(lambda l: not l.startswith("* "))
        self.assertTrue(lines[-1].startswith("c "), f"first tagged reply after TLS: {lines}")
        self.assertTrue(lines[-1].startswith("c OK"), lines)
        lines = c.command("d", f"LOGIN {harness.imap_quote(ALICE)} {harness.imap_quote(ALICE_PW)}")
        self.assertTrue(lines[-1].startswith("d OK"), lines)

    def test_starttls_on_implicit_listener_refused(self):
        c, _ = self.raw_imaps()
        lines = c.command("a", "STARTTLS")
        self.assertFalse(lines[-1].startswith("a OK"), lines)

    # ------------------------------------------------------------------ SNI
    def sni_names(self, port_name: str, sni: str | None, starttls: bool = False) -> list[str]:
        ctx = harness.client_context(self.env.ca.cert)
        ctx.check_hostname = False  # look at what we got instead of failing the handshake
        if starttls:
            c, _ = harness.imap_client(self.port(port_name))
            self.addCleanup(c.close)
            self.assertEqual(c.command("a", "STARTTLS")[-1], "a OK Begin TLS negotiation now.")
            c.start_tls(ctx, server_hostname=sni)
        else:
            c, _ = harness.imap_client(self.port(port_name), tls=True, context=ctx,
                                       server_hostname=sni)
            self.addCleanup(c.close)
        return harness.peer_san_dns(c.sock)

    def test_sni_picks_certificate(self):
        self.assertEqual(self.sni_names("imaps", "mail.example.net"), NET_NAMES)
        self.assertEqual(self.sni_names("imaps", "mail.example.org"), ORG_NAMES)
        self.assertEqual(self.sni_names("imaps", "imap.example.org"), ORG_NAMES)

    def test_sni_default_certificate(self):
        self.assertEqual(self.sni_names("imaps", None), ORG_NAMES)
        self.assertEqual(self.sni_names("imaps", "unknown.example.com"), ORG_NAMES)

    def test_sni_after_starttls(self):
        self.assertEqual(self.sni_names("imap", "mail.example.net", starttls=True), NET_NAMES)
        self.assertEqual(self.sni_names("imap", None, starttls=True), ORG_NAMES)

    def test_sni_verified_by_name(self):
        ctx = harness.client_context(self.env.ca.cert)
        c, greeting = harness.imap_client(self.port("imaps"), tls=True, context=ctx,
                                          server_hostname="mail.example.net")
        c.close()
        self.assertIn("mailgate ready", greeting)

    # ------------------------------------------------------------------ bounds
    def test_oversize_line(self):
        c, _ = self.raw_imaps()
        c.send(b"a NOOP " + b"x" * (IMAP_MAX_LINE * 4) + b"\r\n")
        line = c.read_line()
        self.assertIsNotNone(line, "closed without a reply")
        self.assertRegex(line, r"^(\*|a) BAD \[TOOBIG\]")

    def test_oversize_line_without_newline(self):
        c, _ = self.raw_imaps()
        c.send(b"a LOGIN " + b"y" * (IMAP_MAX_LINE * 2))
        try:
            line = c.read_line(3)  # an early reply is allowed ...
        except socket.timeout:
            c.send(b"\r\n")      # ... or at the end of the line
            line = c.read_line()
        self.assertIsNotNone(line, "closed without a reply")
        self.assertRegex(line, r"^(\*|a) BAD \[TOOBIG\]")

    def test_oversize_literal(self):
        c, _ = self.raw_imaps()
        c.send_line(f"a LOGIN {{{IMAP_MAX_LITERAL + 1}}}")
        line = c.read_line()
        self.assertIsNotNone(line, "closed without a reply")
        self.assertFalse(line.startswith("+"), "continuation offered for an oversize literal")
        self.assertIn("[TOOBIG]", line)
        self.assertRegex(line, r"^(\*|a) (BAD|NO) \[TOOBIG\]")

    def test_oversize_nonsync_literal(self):
        c, _ = self.raw_imaps()
        c.send_line(f"a LOGIN {{{IMAP_MAX_LITERAL * 4}+}}")
        line = c.read_line()
        self.assertIsNotNone(line, "closed without a reply")
        self.assertIn("[TOOBIG]", line)

    def test_literal_within_limit_accepted(self):
        c, _ = self.raw_imaps()
        pw = "p" * 100
        c.send_line(f"a LOGIN {harness.imap_quote(ALICE)} {{{len(pw)}}}")
        self.assertTrue(c.read_line().startswith("+"))
        c.send_line(pw)
        self.assertEqual(c.read_tagged("a")[-1], f"a {AUTH_FAILED}")

    def test_too_many_bad_commands(self):
        c, _ = self.raw_imaps()
        seen = []
        for i in range(MAX_BAD + 2):
            try:
                c.send_line(f"x{i} FROBNICATE")
            except OSError:
                break
            line = c.read_line()
            if line is None:
                break
            seen.append(line)
            if line.startswith("* BYE"):
                break
        self.assertIn("* BYE Too many invalid commands.", seen)
        self.assertLessEqual(len([l for l in seen if " BAD" in l]), MAX_BAD + 1, seen)
        self.assertTrue(c.at_eof(), f"not closed after BYE: {seen}")

    def test_bad_commands_below_limit_keep_session(self):
        c, _ = self.raw_imaps()
        for i in range(MAX_BAD - 1):
            self.assertTrue(c.command(f"x{i}", "FROBNICATE")[-1].startswith(f"x{i} BAD"))
        self.assertTrue(c.command("n", "NOOP")[-1].startswith("n OK"))

    def test_bare_lf_rejected(self):
        c, _ = self.raw_imaps()
        c.send(b"a NOOP\n")
        try:
            line = c.read_line(3)
        except socket.timeout:
            return  # not taken as a command: fine
        if line is not None:
            self.assertNotRegex(line, r"^a OK", "bare LF accepted as end of line")

    def test_preauth_idle_timeout(self):
        c, _ = self.raw_imaps("imap_short")
        t0 = time.monotonic()
        line = c.read_line(PREAUTH_TIMEOUT_S + 5)
        self.assertEqual(line, "* BYE Disconnected for inactivity.")
        self.assertGreaterEqual(time.monotonic() - t0, PREAUTH_TIMEOUT_S * 0.8)
        self.assertTrue(c.at_eof())

    def test_preauth_timeout_not_applied_after_login(self):
        c, _ = self.raw_imaps("imap_short")
        lines = c.command("a", f"LOGIN {harness.imap_quote(ALICE)} {harness.imap_quote(ALICE_PW)}")
        self.assertTrue(lines[-1].startswith("a OK"), lines)
        time.sleep(PREAUTH_TIMEOUT_S * 2 + 0.5)
        self.assertTrue(c.command("b", "NOOP")[-1].startswith("b OK"))

    # ------------------------------------------------------------------ IDLE across health checks
    def test_idle_across_health_checks(self):
        imap = self.imaps(timeout=20)
        imap.login(ALICE, ALICE_PW)
        typ, data = imap.select("INBOX")
        before = int(data[0])
        imap.send(b"i1 IDLE\r\n")
        self.assertTrue(imap.readline().startswith(b"+"), "no IDLE continuation")
        time.sleep(2.5)  # more than two health-check intervals (1s)
        self.env.dovecots[0].deliver(ALICE, "Arrived during IDLE")
        deadline = time.monotonic() + 15
        got_exists = False
        while time.monotonic() < deadline:
            line = imap.readline()
            if re.match(rb"\* \d+ EXISTS", line):
                got_exists = True
                break
        self.assertTrue(got_exists, "no EXISTS while idling")
        imap.send(b"DONE\r\n")
        while True:
            line = imap.readline()
            self.assertTrue(line, "connection closed after DONE")
            if line.startswith(b"i1 "):
                break
        self.assertTrue(line.startswith(b"i1 OK"), line)
        typ, _ = imap.noop()
        self.assertEqual(typ, "OK")
        typ, data = imap.search(None, "SUBJECT", '"Arrived during IDLE"')
        self.assertEqual(typ, "OK")
        self.assertTrue(data[0].split(), "new message not found after IDLE")
        self.assertGreater(len(data[0].split()) + before, before)
        imap.logout()

    # ------------------------------------------------------------------ logging
    def test_session_log_line(self):
        imap = self.imaps()
        imap.login(BOB, BOB_PW)
        imap.select("INBOX")
        imap.logout()
        fields = ["session", "listener", "client", "tls_version", "tls_cipher", "user", "backend",
                  "bytes_in", "bytes_out", "duration_ms", "outcome"]
        gw = self.env.gateway

        def find():
            for obj in gw.log_lines():
                if obj.get("user") == BOB and obj.get("listener") == "imaps" and "outcome" in obj:
                    return obj
            return None
        try:
            line = harness.wait_for(find, 10, what="end-of-session log line for bob")
        except TimeoutError:
            self.fail("no end-of-session JSON line with user=bob, listener=imaps:\n"
                      + gw.log_text()[-3000:])
        missing = [f for f in fields if f not in line]
        self.assertEqual(missing, [], line)
        self.assertEqual(line["backend"], "storage-01", line)
        self.assertIn("127.0.0.1", str(line["client"]))
        self.assertIn(line["tls_version"], ("TLSv1.2", "TLSv1.3"), line)
        self.assertTrue(line["tls_cipher"], line)
        self.assertGreater(int(line["bytes_in"]), 0, line)
        self.assertGreater(int(line["bytes_out"]), 0, line)
        self.assertGreaterEqual(int(line["duration_ms"]), 0, line)

    def test_passwords_never_logged(self):
        self.test_wrong_password()
        time.sleep(0.3)
        text = self.env.gateway.log_text()
        for pw in (ALICE_PW, BOB_PW, "not-the-password"):
            self.assertNotIn(pw, text)


if __name__ == "__main__":
    unittest.main()
