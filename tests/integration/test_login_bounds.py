"""Pre-login bounds against real clients: the largest IMAP ID that RFC 2971 allows is
answered (as Dovecot answers it) and a larger one refused; input pipelined behind a
login is held only up to its bound; and temporary login failures count toward
max_auth_attempts, so a client cannot loop on them while the directory is down."""

from __future__ import annotations

import imaplib
import poplib
import socket
import unittest
from pathlib import Path

import harness
from fixtures import ALICE, ALICE_PW, GatewayTestCase

HELD_REFUSAL_IMAP = "* BYE Too much data before login completed."
HELD_REFUSAL_POP3 = "-ERR Too much data before login completed."
ID_LIMITS = "BAD [LIMIT] ID takes at most 30 pairs"
MAX_AUTH = 3


def imap_quote(s: str) -> str:
    return harness.imap_quote(s)


def id_pairs(pairs: int = 30, field_len: int = 30, value_len: int = 1024,
             value_char: str = "v", field_char: str = "f") -> list[tuple[str, str]]:
    out = []
    for i in range(pairs):
        tag = f"{i:02d}"
        field = (tag + field_char * field_len)[:field_len]
        value = (tag + value_char * value_len)[:value_len]
        out.append((field, value))
    return out


def id_quoted(pairs: list[tuple[str, str]]) -> str:
    return "ID (" + " ".join(f"{imap_quote(f)} {imap_quote(v)}" for f, v in pairs) + ")"


class ImapIdBoundsTest(GatewayTestCase):
    """IMAP listeners with the default max_line (0 = protocol default, 64K)."""

    LISTENER_OVERRIDES = {
        "imaps": {"max_line": 0},
        "imap": {"max_line": 0, "allow_plaintext_auth": True, "max_bad_commands": 10},
        "pop3": {"allow_plaintext_auth": True},
    }

    def raw_imap(self, port_name: str = "imap", tls: bool = False):
        c, greeting = harness.imap_client(self.port(port_name), tls=tls,
                                          context=self.env.context if tls else None, timeout=10)
        self.addCleanup(c.close)
        self.assertTrue(greeting.startswith("* OK"), greeting)
        return c

    def dovecot_imap(self):
        c, greeting = harness.imap_client(self.env.dovecots[0].imap_port, timeout=10)
        self.addCleanup(c.close)
        self.assertTrue(greeting.startswith("* OK"), greeting)
        return c

    def assertIdAnswered(self, lines: list[str], tag: str):
        self.assertTrue(lines[-1].startswith(f"{tag} OK"), lines[-3:])
        self.assertTrue(any(l.startswith("* ID (") for l in lines), lines[-3:])

    # ------------------------------------------------------------------ ID at the RFC 2971 maximum
    def test_largest_id_quoted_is_answered_like_dovecot(self):
        cmd = id_quoted(id_pairs())
        self.assertGreater(len(cmd), 31000)
        # The storage node itself accepts it before login ...
        d = self.dovecot_imap()
        self.assertTrue(d.command("d1", cmd, timeout=10)[-1].startswith("d1 OK"))
        # ... and so does the gateway, on both listeners, with the session still usable.
        for port_name, tls in (("imap", False), ("imaps", True)):
            c = self.raw_imap(port_name, tls)
            self.assertIdAnswered(c.command("a1", cmd, timeout=10), "a1")
            self.assertTrue(c.command("a2", "NOOP")[-1].startswith("a2 OK"))

    def test_largest_id_every_octet_escaped(self):
        # Quoted strings whose every octet is escaped: about 63 KB on one line.
        cmd = id_quoted(id_pairs(value_char='"', field_char="\\"))
        self.assertGreater(len(cmd), 62000)
        c = self.raw_imap()
        self.assertIdAnswered(c.command("a1", cmd, timeout=10), "a1")
        self.assertTrue(c.command("a2", "NOOP")[-1].startswith("a2 OK"))

    def test_largest_id_with_literal_values(self):
        pairs = id_pairs()
        # Synchronising literals: wait for "+" before each value.
        c = self.raw_imap()
        line = "a1 ID ("
        for i, (f, v) in enumerate(pairs):
            c.send_line(f"{line}{'' if i == 0 else ' '}{imap_quote(f)} {{{len(v)}}}")
            cont = c.read_line(10)
            self.assertTrue(cont.startswith("+"), cont)
            line = v
        c.send_line(line + ")")
        self.assertIdAnswered(c.read_tagged("a1", 10), "a1")
        # LITERAL+: the whole command in one write.
        c2 = self.raw_imap("imaps", tls=True)
        cmd = "a2 ID (" + " ".join(f"{imap_quote(f)} {{{len(v)}+}}\r\n{v}" for f, v in pairs) + ")\r\n"
        c2.send(cmd)
        self.assertIdAnswered(c2.read_tagged("a2", 10), "a2")
        self.assertTrue(c2.command("a3", "NOOP")[-1].startswith("a3 OK"))

    def test_largest_id_with_imaplib(self):
        imap = imaplib.IMAP4(harness.HOST, self.port("imap"), timeout=10)
        self.addCleanup(harness.close_imap, imap)
        # imaplib has no ID method: send it as a plain command.
        imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED"))
        args = "(" + " ".join(f"{imap_quote(f)} {imap_quote(v)}" for f, v in id_pairs()) + ")"
        typ, data = imap._simple_command("ID", args)
        self.assertEqual(typ, "OK", data)
        typ, data = imap._untagged_response(typ, data, "ID")
        self.assertIn(b"mailgate", data[0])
        typ, data = imap.login(ALICE, ALICE_PW)
        self.assertEqual(typ, "OK", data)

    # ------------------------------------------------------------------ over the bounds
    def test_id_over_rfc_bounds_is_refused(self):
        c = self.raw_imap()
        too_many = id_quoted(id_pairs(pairs=31))
        lines = c.command("b1", too_many, timeout=10)
        self.assertTrue(lines[-1].startswith("b1 " + ID_LIMITS), lines)
        long_value = id_quoted(id_pairs(pairs=30)[:29] + [("name", "v" * 1025)])
        lines = c.command("b2", long_value, timeout=10)
        self.assertTrue(lines[-1].startswith("b2 " + ID_LIMITS), lines)
        long_field = id_quoted([("f" * 31, "value")])
        lines = c.command("b3", long_field, timeout=10)
        self.assertTrue(lines[-1].startswith("b3 " + ID_LIMITS), lines)
        # A synchronising literal over 1024 octets: refused at once, no "+".
        lines = c.command("b4", 'ID ("name" {1025}', timeout=10)
        self.assertTrue(lines[-1].startswith("b4 " + ID_LIMITS), lines)
        self.assertFalse(any(l.startswith("+") for l in lines), lines)
        # Still in sync.
        self.assertTrue(c.command("b5", "NOOP")[-1].startswith("b5 OK"))

    def test_overlong_line_is_refused(self):
        c = self.raw_imap()
        lines = c.command("c1", 'ID ("name" "' + "v" * 70000 + '")', timeout=10)
        self.assertEqual(lines[-1], "c1 BAD [TOOBIG] Command line too long.")
        self.assertTrue(c.command("c2", "NOOP")[-1].startswith("c2 OK"))
        # Without an end within 4 x max_line: BYE and closed.
        c2 = self.raw_imap()
        prefix = "c3 NOOP "
        try:  # exactly one octet over 4 x max_line: nothing is left unread when it closes
            c2.send(prefix + "x" * (4 * 65536 + 1 - len(prefix)))
        except OSError:
            pass
        lines = c2.read_all(10)
        self.assertIn("c3 BAD [TOOBIG] Command line too long.", lines)
        self.assertIn("* BYE [TOOBIG] Command line too long.", lines)

    # ------------------------------------------------------------------ input held during a login
    def test_imap_input_pipelined_after_login_is_bounded(self):
        c = self.raw_imap()
        # A wrong password keeps the login busy for the failure delay: everything
        # after the LOGIN line is held meanwhile, and more than 64 KiB of it is refused.
        junk = b"x" * (100 * 1024)
        c.send(f"h1 LOGIN {imap_quote(ALICE)} \"wrong\"\r\n".encode() + junk)
        lines = c.read_all(10)
        self.assertIn(HELD_REFUSAL_IMAP, lines)
        self.assertFalse(any(l.startswith("h1 ") for l in lines), lines)
        # Just under the bound is kept and parsed once the login has failed.
        c2 = self.raw_imap()
        tail = "h3 NOOP\r\n"
        filler = "h2 NOOP " + "y" * (64 * 1024 - 200) + "\r\n"
        c2.send(f"h1 LOGIN {imap_quote(ALICE)} \"wrong\"\r\n{filler}{tail}")
        lines = c2.read_tagged("h3", 10)
        self.assertTrue(any(l.startswith("h1 NO [AUTHENTICATIONFAILED]") for l in lines), lines)
        self.assertTrue(lines[-1].startswith("h3 OK"), lines)

    def test_pop3_input_pipelined_after_pass_is_bounded(self):
        # POP3 holds at most 16 KiB. USER, PASS and 20 KiB in one write: the old code
        # kept all of it when it came in the same read as the PASS line.
        c, greeting = harness.pop3_client(self.port("pop3"), timeout=10)
        self.addCleanup(c.close)
        self.assertEqual(greeting, "+OK mailgate ready.")
        c.send(f"USER {ALICE}\r\nPASS wrong\r\n".encode() + b"z" * (20 * 1024))
        self.assertEqual(c.read_line(10), "+OK")
        self.assertEqual(c.read_line(10), HELD_REFUSAL_POP3)
        self.assertTrue(c.at_eof(10))
        # With the right password too: the node never sees the excess.
        c2, _ = harness.pop3_client(self.port("pop3"), timeout=10)
        self.addCleanup(c2.close)
        c2.send(f"USER {ALICE}\r\nPASS {ALICE_PW}\r\n".encode() + b"NOOP\r\n" * 4000)
        self.assertEqual(c2.read_line(10), "+OK")
        self.assertEqual(c2.read_line(10), HELD_REFUSAL_POP3)
        self.assertTrue(c2.at_eof(10))
        # Below the bound, pipelined commands after the PASS reach the node.
        pop = poplib.POP3(harness.HOST, self.port("pop3"), timeout=10)
        self.addCleanup(pop.close)
        pop._putline(f"USER {ALICE}\r\nPASS {ALICE_PW}\r\nNOOP".encode())
        self.assertTrue(pop._getresp().startswith(b"+OK"))
        self.assertTrue(pop._getresp().startswith(b"+OK"))
        self.assertTrue(pop._getresp().startswith(b"+OK"))
        pop.quit()


class TempFailuresCountTest(harness.LogsOnFailure, unittest.TestCase):
    """A directory that cannot be reached (an http directory on a closed port): each
    login is a temporary failure, and the session is closed after max_auth_attempts."""

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-loginbounds-"))
        closed = harness.free_port()  # nothing listens there
        names = ["imap", "pop3", "submit"]
        cls.ports = dict(zip(names, harness.free_ports(len(names))))
        h = harness.HOST
        text = f"""server: {{ threads: 1, shutdown_grace: 2s }}
log: {{ level: info, format: json }}
listeners:
  - {{ name: imap, protocol: imap, listen: ["{h}:{cls.ports['imap']}"], tls: none, allow_plaintext_auth: true, max_auth_attempts: {MAX_AUTH} }}
  - {{ name: pop3, protocol: pop3, listen: ["{h}:{cls.ports['pop3']}"], tls: none, allow_plaintext_auth: true, max_auth_attempts: {MAX_AUTH} }}
  - {{ name: submit, protocol: submission, listen: ["{h}:{cls.ports['submit']}"], tls: none, allow_plaintext_auth: true, max_auth_attempts: {MAX_AUTH} }}
directory:
  driver: http
  file: {{ failure_delay: 100ms }}
  http: {{ url: "http://{h}:{closed}/auth", timeout: 1s }}
  cache: {{ ttl: 0s, negative_ttl: 0s }}
backends:
  - name: storage-01
    host: {h}
    ports: {{ imap: {closed}, pop3: {closed}, smtp: {closed} }}
    deliver: smtp
    health: {{ interval: 1s, timeout: 1s }}
routing:
  static:
    - {{ domain: "*", primary: storage-01 }}
  submission_relay: storage-01
"""
        cls.gateway = harness.Mailgate(cls.dir, text).start()

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        harness.remove_workdir(cls.dir)

    def diagnostics(self) -> str:
        return f"--- mailgate log (tail) ---\n{self.gateway.log_text()[-6000:]}"

    def test_imap_closed_after_max_auth_attempts_temporary_failures(self):
        c, _ = harness.imap_client(self.ports["imap"], timeout=10)
        self.addCleanup(c.close)
        for i in range(1, MAX_AUTH):
            lines = c.command(f"t{i}", f"LOGIN {imap_quote(ALICE)} {imap_quote(ALICE_PW)}", timeout=10)
            self.assertEqual(lines, [f"t{i} NO [UNAVAILABLE] Backend unavailable, try again later."])
        # SASL counts the same.
        lines = c.command(f"t{MAX_AUTH}", "AUTHENTICATE PLAIN " + harness.sasl_plain(ALICE, ALICE_PW), timeout=10)
        self.assertEqual(lines, [f"t{MAX_AUTH} NO [UNAVAILABLE] Backend unavailable, try again later."])
        self.assertEqual(c.read_all(10), ["* BYE Too many authentication failures."])
        self.assertTrue(self.gateway.is_running())

    def test_imap_with_imaplib(self):
        imap = imaplib.IMAP4(harness.HOST, self.ports["imap"], timeout=10)
        self.addCleanup(harness.close_imap, imap)
        for _ in range(MAX_AUTH):
            with self.assertRaises(imaplib.IMAP4.error) as e:
                imap.login(ALICE, ALICE_PW)
            self.assertIn("UNAVAILABLE", str(e.exception))
        with self.assertRaises((imaplib.IMAP4.abort, OSError)):
            imap.noop()

    def test_pop3_closed_after_max_auth_attempts_temporary_failures(self):
        c, greeting = harness.pop3_client(self.ports["pop3"], timeout=10)
        self.addCleanup(c.close)
        self.assertEqual(greeting, "+OK mailgate ready.")
        for _ in range(MAX_AUTH - 1):
            c.send_line(f"USER {ALICE}")
            self.assertEqual(c.read_line(10), "+OK")
            c.send_line(f"PASS {ALICE_PW}")
            self.assertEqual(c.read_line(10), "-ERR [SYS/TEMP] Backend unavailable, try again later.")
        c.send_line("AUTH PLAIN " + harness.sasl_plain(ALICE, ALICE_PW))
        reply = c.read_line(10)
        self.assertTrue(reply.startswith("-ERR [SYS/TEMP]"), reply)
        self.assertIn("too many authentication failures", reply)
        self.assertTrue(c.at_eof(10))

    def test_pop3_with_poplib(self):
        pop = poplib.POP3(harness.HOST, self.ports["pop3"], timeout=10)
        self.addCleanup(pop.close)
        for _ in range(MAX_AUTH):
            pop.user(ALICE)
            with self.assertRaises(poplib.error_proto) as e:
                pop.pass_(ALICE_PW)
            self.assertIn(b"[SYS/TEMP]", e.exception.args[0])
        # Closed: the next command finds the end of the connection, not a reply.
        with self.assertRaises((poplib.error_proto, OSError)) as e:
            pop.noop()
        if isinstance(e.exception, poplib.error_proto):
            self.assertIn(e.exception.args[0], ("-ERR EOF", b"-ERR EOF"))

    def test_submission_closed_after_max_auth_attempts_temporary_failures(self):
        c = harness.LineClient(self.ports["submit"], timeout=10)
        self.addCleanup(c.close)
        self.assertTrue(c.read_line(10).startswith("220 "))
        c.send_line("EHLO client.example.com")
        c.read_until(lambda l: l.startswith("250 "), 10)
        for _ in range(MAX_AUTH - 1):
            c.send_line("AUTH PLAIN " + harness.sasl_plain(ALICE, ALICE_PW))
            reply = c.read_line(10)
            self.assertTrue(reply.startswith("454 4.7.0"), reply)
        c.send_line("AUTH PLAIN " + harness.sasl_plain(ALICE, ALICE_PW))
        reply = c.read_line(10)
        self.assertTrue(reply.startswith("421 4.7.0"), reply)
        self.assertIn("too many authentication failures", reply)
        self.assertTrue(c.at_eof(10))

    def test_pipelined_logins_end_at_the_limit(self):
        for _ in range(5):
            c, _ = harness.imap_client(self.ports["imap"], timeout=10)
            try:
                for i in range(MAX_AUTH):
                    c.send_line(f"x{i} LOGIN {imap_quote(ALICE)} {imap_quote(ALICE_PW)}")
                lines = c.read_all(10)
                self.assertEqual(lines[-1], "* BYE Too many authentication failures.")
            finally:
                c.close()
        temp = [l for l in self.gateway.log_lines() if l.get("msg") == "login temporarily failed"]
        self.assertGreater(len(temp), 0)


if __name__ == "__main__":
    unittest.main()
