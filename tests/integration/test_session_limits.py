"""Session-level protections against real clients and a real Dovecot node:

- limits.line_timeout: a command line that was started must end in time, however
  slowly its bytes trickle in (IMAP and POP3 before login, SMTP commands); an idle
  session and an authenticated relay (IDLE, a partial line) are not affected.
- listener append_limit: APPENDLIMIT is advertised, and an APPEND whose literal is
  larger is refused with NO [TOOBIG] before the node sees a byte of it (proved with a
  recording fake node), the session going on.
- limits.early_talker: the greeting waits greet_wait on the listed SMTP listeners, and
  a client that sends more behind its EHLO before reading the EHLO reply is refused."""

from __future__ import annotations

import base64
import imaplib
import re
import smtplib
import socket
import threading
import time
import unittest
from pathlib import Path

import harness
from fixtures import ALICE, ALICE_PW, USERS
from test_smtp import message, smtp_reply

LINE_TIMEOUT_S = 4
GREET_WAIT_S = 1
APPEND_LIMIT = 1048576
CAROL, CAROL_PW = "carol@example.net", "carol-password"


class FakeImapNode:
    """An IMAP node that logs anyone in and records every byte a logged-in session
    sends, answering each tagged line with OK (NOOP-like)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((harness.HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.recorded: list[bytes] = []  # per logged-in session, what came after the login
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        index = None
        buf = b""
        try:
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN LITERAL+] fake node ready\r\n")
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                if index is not None:
                    with self.lock:
                        self.recorded[index] += data
                buf += data
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    tag = line.split(b" ", 1)[0]
                    if index is None and line.startswith(b"I ID"):
                        conn.sendall(b'* ID ("name" "fake")\r\nI OK ID completed\r\n')
                    elif index is None and line.startswith(b"L AUTHENTICATE"):
                        conn.sendall(b"L OK [CAPABILITY IMAP4rev1 LITERAL+ APPENDLIMIT=5000000000] Logged in\r\n")
                        with self.lock:
                            self.recorded.append(b"")
                            index = len(self.recorded) - 1
                        buf = b""
                    elif index is not None and re.fullmatch(rb"[a-z]\d+", tag):  # not literal data
                        conn.sendall(tag + b" OK done\r\n")
        except OSError:
            return
        finally:
            conn.close()

    def stop(self):
        self.stopped = True
        self.sock.close()


class SessionLimitsTest(harness.LogsOnFailure, unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-session-limits-"))
        cls.dovecot = None
        cls.fake = None
        cls.gateway = None
        try:
            certs = cls.dir / "certs"
            ca = harness.make_ca(certs)
            cert = harness.make_cert(ca, certs, ["mx.example.org"])
            cls.dovecot = harness.Dovecot(cls.dir / "storage-01", USERS, name="s1")
            cls.dovecot.start()
            cls.fake = FakeImapNode()
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            names = ["imap", "pop3", "mx", "mx_et"]
            cls.ports = dict(zip(names, harness.free_ports(len(names))))
            plain = {"allow_plaintext_auth": True, "preauth_timeout": "30s"}
            listeners = [
                {"name": "imap", "protocol": "imap", "port": cls.ports["imap"], "append_limit": APPEND_LIMIT,
                 **plain},
                {"name": "pop3", "protocol": "pop3", "port": cls.ports["pop3"], **plain},
                {"name": "mx", "protocol": "smtp", "port": cls.ports["mx"]},
                {"name": "mx_et", "protocol": "smtp", "port": cls.ports["mx_et"]},
            ]
            backends = [{"name": "storage-01", "imap": cls.dovecot.imap_port, "pop3": cls.dovecot.pop3_port,
                         "lmtp": cls.dovecot.lmtp_port},
                        {"name": "fake", "imap": cls.fake.port}]
            routes = [{"domain": "example.org", "primary": "storage-01"},
                      {"domain": "example.net", "primary": "fake"}]
            text = harness.mailgate_config(certificates=[cert], listeners=listeners, users_file=users_file,
                                           backends=backends, routes=routes)
            text += (f"limits:\n  line_timeout: {LINE_TIMEOUT_S}s\n"
                     f"  early_talker: {{ listeners: [mx_et], greet_wait: {GREET_WAIT_S}s, action: reject }}\n")
            cls.gateway = harness.Mailgate(cls.dir, text).start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.gateway is not None:
            cls.gateway.stop()
        if cls.dovecot is not None:
            cls.dovecot.stop()
        if cls.fake is not None:
            cls.fake.stop()
        harness.remove_workdir(cls.dir)

    def diagnostics(self) -> str:
        return "--- mailgate log (tail) ---\n" + self.gateway.log_text()[-4000:]

    def client(self, name: str, timeout: float = 10.0) -> harness.LineClient:
        c = harness.LineClient(self.port(name), timeout=timeout)
        self.addCleanup(c.close)
        return c

    def port(self, name: str) -> int:
        return self.ports[name]

    def logs(self, msg: str) -> list[dict]:
        return [l for l in self.gateway.log_lines() if l.get("msg") == msg]

    # ------------------------------------------------------------------ line_timeout
    def trickle(self, c: harness.LineClient, text: bytes, final: str, limit_s: float) -> float:
        """Sends text one byte every 3 s until the gateway answers; returns the time from
        the first byte to the answer, which must be `final` followed by the close."""
        start = time.monotonic()
        for b in text:
            c.send(bytes([b]))
            try:
                line = c.read_line(timeout=3)
            except socket.timeout:
                line = None
            if line is not None:
                elapsed = time.monotonic() - start
                self.assertEqual(line, final)
                self.assertTrue(c.at_eof(timeout=5))
                return elapsed
            self.assertLess(time.monotonic() - start, limit_s, "the trickling line was never cut")
        self.fail("the trickling line was never cut")

    def test_imap_trickle_before_login_is_cut(self):
        c = self.client("imap")
        self.assertTrue(c.read_line().startswith("* OK"))
        before = len(self.logs("command line timeout"))
        elapsed = self.trickle(c, b"a1 LOGIN alice@example.org alice-password", "* BYE [LIMIT] Command line timeout.",
                               LINE_TIMEOUT_S + 8)
        self.assertGreaterEqual(elapsed, LINE_TIMEOUT_S - 0.5)
        self.assertLess(elapsed, LINE_TIMEOUT_S + 3.5)
        harness.wait_for(lambda: len(self.logs("command line timeout")) > before, what="log line")

    def test_pop3_trickle_before_login_is_cut(self):
        c = self.client("pop3")
        self.assertTrue(c.read_line().startswith("+OK"))
        elapsed = self.trickle(c, b"USER alice@example.org", "-ERR [SYS/TEMP] command line timeout",
                               LINE_TIMEOUT_S + 8)
        self.assertLess(elapsed, LINE_TIMEOUT_S + 3.5)

    def test_smtp_trickle_is_cut(self):
        c = self.client("mx")
        self.assertEqual(smtp_reply(c)[-1][:3], "220")
        c.send(b"EHLO client.example\r\n")
        self.assertEqual(smtp_reply(c)[-1][:3], "250")
        elapsed = self.trickle(c, b"MAIL FROM:<someone@example.com>", "421 4.4.2 " + self.hostname() +
                               " Error: timeout exceeded", LINE_TIMEOUT_S + 8)
        self.assertLess(elapsed, LINE_TIMEOUT_S + 3.5)

    def hostname(self) -> str:
        return socket.gethostname()

    def test_complete_lines_and_idle_time_are_not_line_timed(self):
        # Nothing started: the preauth timeout (30 s) governs, not line_timeout.
        c = self.client("imap")
        self.assertTrue(c.read_line().startswith("* OK"))
        time.sleep(LINE_TIMEOUT_S + 1.5)
        self.assertTrue(c.command("a1", "NOOP")[-1].startswith("a1 OK"))
        # Complete lines sent slowly one after the other are fine too.
        for i in range(3):
            time.sleep(LINE_TIMEOUT_S / 2)
            self.assertTrue(c.command(f"b{i}", "NOOP")[-1].startswith(f"b{i} OK"))

    def test_relay_is_not_line_timed(self):
        imap = imaplib.IMAP4(harness.HOST, self.port("imap"), timeout=20)
        self.addCleanup(harness.close_imap, imap)
        imap.login(ALICE, ALICE_PW)
        imap.select("INBOX")
        tag = imap._new_tag().decode()
        imap.send(f"{tag} IDLE\r\n".encode())
        self.assertTrue(imap.readline().startswith(b"+"))
        time.sleep(LINE_TIMEOUT_S + 1.5)
        imap.send(b"DONE\r\n")
        # Untagged lines (EXISTS for mail another test delivered) may come first.
        seen = []
        for _ in range(50):
            seen.append(imap.readline().decode())
            if seen[-1].startswith(f"{tag} "):
                break
        self.assertTrue(seen[-1].startswith(f"{tag} OK"), seen)
        # A partial line left for longer than line_timeout: the node's business.
        imap.send(b"z1 NO")
        time.sleep(LINE_TIMEOUT_S + 1.5)
        imap.send(b"OP\r\n")
        self.assertTrue(imap.readline().decode().startswith("z1 OK"))

    # ------------------------------------------------------------------ APPENDLIMIT
    def test_appendlimit_is_advertised(self):
        c = self.client("imap")
        greeting = c.read_line()
        self.assertIn(f"APPENDLIMIT={APPEND_LIMIT}", harness.capabilities(greeting))
        lines = c.command("a1", "CAPABILITY")
        self.assertIn(f"APPENDLIMIT={APPEND_LIMIT}", harness.capabilities(lines[0]))

    def messages(self, imap: imaplib.IMAP4) -> int:
        typ, data = imap.status("INBOX", "(MESSAGES)")
        self.assertEqual(typ, "OK")
        return int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))

    def test_append_over_the_limit_is_refused_and_the_session_goes_on(self):
        c = self.client("imap", timeout=10)
        self.assertTrue(c.read_line().startswith("* OK"))
        lines = c.command("a1", f"LOGIN {ALICE} {ALICE_PW}")
        self.assertTrue(lines[-1].startswith("a1 OK"), lines)
        self.assertIn(f"APPENDLIMIT={APPEND_LIMIT}", lines[-1])
        lines = c.command("a2", "STATUS INBOX (MESSAGES)")
        before = int(re.search(r"MESSAGES (\d+)", lines[0]).group(1))
        c.send(b"a3 APPEND INBOX {999999999}\r\n")
        line = c.read_line(timeout=5)
        self.assertEqual(line, f"a3 NO [TOOBIG] Message too large (limit {APPEND_LIMIT})")
        # The session is usable; a message within the limit goes through to Dovecot.
        msg = message("within the limit")
        c.send(f"a4 APPEND INBOX {{{len(msg)}}}\r\n".encode())
        self.assertTrue(c.read_line(timeout=5).startswith("+"))
        c.send(msg + b"\r\n")
        self.assertTrue(c.read_tagged("a4")[-1].startswith("a4 OK"))
        # A non-synchronizing literal over the limit: refused, and the session closed.
        lines = c.command("a5", "STATUS INBOX (MESSAGES)")
        self.assertEqual(int(re.search(r"MESSAGES (\d+)", lines[0]).group(1)), before + 1)
        c.send(b"a6 APPEND INBOX {999999999+}\r\n" + b"x" * 1000)
        self.assertEqual(c.read_line(timeout=5), f"a6 NO [TOOBIG] Message too large (limit {APPEND_LIMIT})")
        self.assertEqual(c.read_line(timeout=5), "* BYE [TOOBIG] Message too large.")
        self.assertTrue(c.at_eof(timeout=5))
        refused = [l for l in self.logs("imap append too big") if l.get("user") == ALICE]
        self.assertGreaterEqual(len(refused), 2)

    def test_node_receives_nothing_of_a_refused_append(self):
        c = self.client("imap", timeout=10)
        self.assertTrue(c.read_line().startswith("* OK"))
        lines = c.command("b1", f"LOGIN {CAROL} {CAROL_PW}")
        self.assertTrue(lines[-1].startswith("b1 OK"), lines)
        # The node's larger limit is replaced by the listener's.
        self.assertIn(f"APPENDLIMIT={APPEND_LIMIT}", lines[-1])
        self.assertNotIn("APPENDLIMIT=5000000000", lines[-1])
        index = len(self.fake.recorded) - 1
        c.send(b"b2 APPEND INBOX {999999999}\r\n")
        self.assertEqual(c.read_line(timeout=5), f"b2 NO [TOOBIG] Message too large (limit {APPEND_LIMIT})")
        # A small non-synchronizing literal over the limit would be swallowed likewise;
        # other commands and literals pass untouched.
        self.assertTrue(c.command("b3", "SEARCH TEXT {5+}\r\nhello")[-1].startswith("b3 OK"))
        self.assertTrue(c.command("b4", "NOOP")[-1].startswith("b4 OK"))
        self.assertEqual(self.fake.recorded[index], b"b3 SEARCH TEXT {5+}\r\nhello\r\nb4 NOOP\r\n")

    # ------------------------------------------------------------------ early talker / pipelining
    def test_early_talker_is_refused(self):
        c = self.client("mx_et")
        c.send(b"EHLO early.example\r\n")
        line = c.read_line(timeout=5)
        self.assertRegex(line, r"^554 5\.5\.1 .* Error: talked before the greeting \(ref [0-9a-f]{6}\)$")
        self.assertTrue(c.at_eof(timeout=5))
        ref = line[-7:-1]
        harness.wait_for(lambda: any(l.get("ref") == ref for l in self.logs("smtp early talker refused")),
                         what="log line with the ref")

    def test_patient_client_is_served_after_greet_wait(self):
        start = time.monotonic()
        with smtplib.SMTP(harness.HOST, self.port("mx_et"), timeout=10) as s:
            self.assertGreaterEqual(time.monotonic() - start, GREET_WAIT_S - 0.2)
            s.ehlo("patient.example")
            refused = s.sendmail("sender@example.com", [ALICE], message("patient"))
            self.assertEqual(refused, {})

    def test_pipelining_before_the_ehlo_reply_is_refused(self):
        c = self.client("mx_et")
        self.assertEqual(smtp_reply(c)[-1][:3], "220")
        c.send(b"EHLO pipe.example\r\nMAIL FROM:<a@b.example>\r\n")
        line = c.read_line(timeout=5)
        self.assertRegex(line, r"^550 5\.5\.1 .* Protocol error: pipelining before the EHLO reply "
                               r"\(ref [0-9a-f]{6}\)$")
        self.assertTrue(c.at_eof(timeout=5))
        ref = line[-7:-1]
        harness.wait_for(lambda: any(l.get("ref") == ref and l.get("test") == "pipelining before the EHLO reply"
                                     for l in self.logs("smtp early talker refused")),
                         what="log line with the ref")

    def test_pipelining_after_ehlo_elsewhere_is_served(self):
        # Not an early-talker listener: the same write is answered.
        c = self.client("mx")
        self.assertEqual(smtp_reply(c)[-1][:3], "220")
        c.send(b"EHLO pipe.example\r\nMAIL FROM:<a@b.example>\r\n")
        self.assertEqual(smtp_reply(c)[-1][:3], "250")
        self.assertEqual(smtp_reply(c)[-1][:3], "250")

    def test_smtplib_client_is_served_on_the_early_talker_listener(self):
        with smtplib.SMTP(harness.HOST, self.port("mx_et"), timeout=10) as s:
            code, _ = s.ehlo("normal.example")
            self.assertEqual(code, 250)
            self.assertTrue(s.has_extn("pipelining"))
            s.mail("sender@example.com")
            code, _ = s.rcpt(ALICE)
            self.assertEqual(code, 250)
            s.rset()


class EarlyTalkerBanTest(harness.LogsOnFailure, unittest.TestCase):
    """early_talker.action ban: refused as with reject, and the client's network banned,
    so that its next connection is refused at connect."""

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-early-talker-ban-"))
        cls.dovecot = None
        cls.gateway = None
        try:
            certs = cls.dir / "certs"
            ca = harness.make_ca(certs)
            cert = harness.make_cert(ca, certs, ["mx.example.org"])
            cls.dovecot = harness.Dovecot(cls.dir / "storage-01", USERS, name="s1")
            cls.dovecot.start()
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            cls.mx_port = harness.free_port()
            listeners = [{"name": "mx", "protocol": "smtp", "port": cls.mx_port}]
            backends = [{"name": "storage-01", "imap": cls.dovecot.imap_port, "lmtp": cls.dovecot.lmtp_port}]
            routes = [{"domain": "example.org", "primary": "storage-01"}]
            text = harness.mailgate_config(certificates=[cert], listeners=listeners, users_file=users_file,
                                           backends=backends, routes=routes)
            text += f"limits:\n  early_talker: {{ listeners: [mx], greet_wait: {GREET_WAIT_S}s, action: ban }}\n"
            cls.gateway = harness.Mailgate(cls.dir, text).start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.gateway is not None:
            cls.gateway.stop()
        if cls.dovecot is not None:
            cls.dovecot.stop()
        harness.remove_workdir(cls.dir)

    def diagnostics(self) -> str:
        return "--- mailgate log (tail) ---\n" + self.gateway.log_text()[-4000:]

    def test_pipelining_early_talker_is_banned(self):
        with harness.LineClient(self.mx_port, timeout=10) as c:
            self.assertEqual(smtp_reply(c)[-1][:3], "220")
            c.send(b"EHLO pipe.example\r\nMAIL FROM:<a@b.example>\r\n")
            self.assertRegex(c.read_line(timeout=5), r"^550 5\.5\.1 .* Protocol error: pipelining before the EHLO reply")
            self.assertTrue(c.at_eof(timeout=5))
        harness.wait_for(lambda: any(l.get("msg") == "policy ban" and l.get("limit") == "early_talker"
                                     for l in self.gateway.log_lines()), what="ban log line")
        with harness.LineClient(self.mx_port, timeout=10) as c:
            line = c.read_line(timeout=5)
            self.assertIsNotNone(line)
            self.assertFalse(line.startswith("220"), line)
            self.assertTrue(c.at_eof(timeout=5))


if __name__ == "__main__":
    unittest.main()
