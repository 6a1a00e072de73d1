"""Directory driver `http`: mailgate as a client of an nginx mail auth_http service.

Two Dovecot nodes hold the same users, each with a marker message naming the node.
tests/integration/auth_http_responder.py plays seed 004's Perl handler: it checks
md5(password) and names the node of the user's domain (Auth-Server/Auth-Port). The
gateway's own static routes point everything at storage-01, so a session that lands
on storage-02 proves that the responder's answer overrides the routing map.

Tests run in name order; the last one stops the responder."""

from __future__ import annotations

import hashlib
import json
import os
import poplib
import re
import subprocess
import sys
import time
import unittest
from pathlib import Path

import harness

ALICE, ALICE_PW = "alice@example.org", "alice-password"      # example.org → storage-02
CAROL, CAROL_PW = "carol@example.net", "carol-password"      # example.net → storage-01
DAVE, DAVE_PW = "dave@example.org", "pa ss%20word"       # escaping round trip
ERIN, ERIN_PW = "erin@example.org", "erin-password"          # only used with the responder down
LEGACY, LEGACY_PW = "legacy@example.org", "legacy-password"  # answered with Auth-User/Auth-Pass of alice
NODE_USERS = {ALICE: ALICE_PW, CAROL: CAROL_PW, DAVE: DAVE_PW, ERIN: ERIN_PW}
AUTH_WAIT_S = 2
FAILURE_DELAY = "100ms"

RESPONDER = Path(__file__).resolve().parent / "auth_http_responder.py"


def md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


class HttpAuthTest(harness.LogsOnFailure, unittest.TestCase):
    maxDiff = None

    # ------------------------------------------------------------------ set-up
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-httpauth-"))
        cls.dovecots: list[harness.Dovecot] = []
        cls.gateway = None
        cls.responder = None
        try:
            cls._start()
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def _start(cls):
        certs = cls.dir / "certs"
        cls.ca = harness.make_ca(certs)
        cert = harness.make_cert(cls.ca, certs, ["mail.example.org"])
        cls.context = harness.client_context(cls.ca.cert)

        for i in (1, 2):
            d = harness.Dovecot(cls.dir / f"storage-{i:02d}", NODE_USERS, name=f"h{i}")
            d.start()
            for user in (ALICE, CAROL, DAVE):
                d.deliver(user, f"stored on storage-{i:02d}")
            cls.dovecots.append(d)

        # The responder's tables (seed 004: mail, maps.storage1, node names resolved).
        cls.responder_port = harness.free_port()
        cls.tables_path = cls.dir / "auth_tables.json"
        cls.requests_path = cls.dir / "auth_requests.jsonl"
        cls.write_tables()
        cls.start_responder()

        names = ["imaps", "imap_plain", "pop3s"]
        cls.ports = dict(zip(names, harness.free_ports(len(names))))
        listeners = [
            {"name": "imaps", "protocol": "imap", "port": cls.ports["imaps"], "tls": "implicit"},
            {"name": "imap_plain", "protocol": "imap", "port": cls.ports["imap_plain"], "tls": "none",
             "allow_plaintext_auth": True},
            {"name": "pop3s", "protocol": "pop3", "port": cls.ports["pop3s"], "tls": "implicit"},
        ]
        backends = [{"name": f"storage-{i + 1:02d}", "imap": d.imap_port, "pop3": d.pop3_port,
                     "lmtp": d.lmtp_port, "health_interval": "1s", "health_timeout": "1s"}
                    for i, d in enumerate(cls.dovecots)]
        routes = [{"domain": "example.org", "primary": "storage-01"},
                  {"domain": "*", "primary": "storage-01"}]
        text = harness.mailgate_config(certificates=[cert], listeners=listeners,
                                       users_file="unused.passwd", backends=backends,
                                       routes=routes, failure_delay=FAILURE_DELAY)
        directory = ("directory:\n"
                     "  driver: http\n"
                     f"  file: {{ failure_delay: {FAILURE_DELAY} }}\n"
                     f"  http: {{ url: \"http://127.0.0.1:{cls.responder_port}/auth\", timeout: 2s }}\n"
                     "  cache: { ttl: 0s, negative_ttl: 0s }\n")
        text, n = re.subn(r"(?m)^directory:\n(?:  .*\n)+", directory, text)
        assert n == 1, text
        cls.gateway = harness.Mailgate(cls.dir, text)
        cls.gateway.start()

    @classmethod
    def write_tables(cls, **overrides):
        d1, d2 = cls.dovecots
        tables = {
            "mail": {ALICE: md5(ALICE_PW), CAROL: md5(CAROL_PW), DAVE: md5(DAVE_PW),
                     ERIN: md5(ERIN_PW), LEGACY: md5(LEGACY_PW)},
            "maps": {"example.org": "storage-02", "example.net": "storage-01"},
            "nodes": {"storage-01": {"host": "127.0.0.1", "imap": d1.imap_port, "pop3": d1.pop3_port},
                      "storage-02": {"host": "127.0.0.1", "imap": d2.imap_port, "pop3": d2.pop3_port}},
            "wait": AUTH_WAIT_S,
            "rewrite": {LEGACY: [ALICE, ALICE_PW]},
        }
        tables.update(overrides)
        tmp = cls.tables_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(tables))
        os.replace(tmp, cls.tables_path)

    @classmethod
    def start_responder(cls):
        out = open(cls.dir / "auth_responder.out", "ab")
        cls.responder = subprocess.Popen(
            [sys.executable, str(RESPONDER), "--listen", f"127.0.0.1:{cls.responder_port}",
             "--config", str(cls.tables_path), "--log", str(cls.requests_path)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        out.close()
        harness.wait_port(cls.responder_port, 10)

    @classmethod
    def stop_responder(cls):
        if cls.responder is not None and cls.responder.poll() is None:
            cls.responder.terminate()
            try:
                cls.responder.wait(10)
            except subprocess.TimeoutExpired:
                cls.responder.kill()
                cls.responder.wait()
        harness.wait_port_closed(cls.responder_port, 5)

    @classmethod
    def _stop(cls):
        if cls.gateway is not None:
            cls.gateway.stop()
        if cls.responder is not None:
            cls.stop_responder()
        for d in cls.dovecots:
            d.stop()
        harness.remove_workdir(cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls._stop()

    def diagnostics(self) -> str:
        out = []
        if self.gateway is not None:
            out.append("--- mailgate log (tail) ---\n" + self.gateway.log_text()[-4000:])
        for name in ("auth_requests.jsonl", "auth_responder.out"):
            try:
                out.append(f"--- {name} (tail) ---\n" + (self.dir / name).read_text()[-3000:])
            except OSError:
                pass
        for d in self.dovecots:
            out.append(f"--- {d.name} log (tail) ---\n" + d.log_text()[-1500:])
        return "\n".join(out)

    # ------------------------------------------------------------------ helpers
    def requests(self) -> list[dict]:
        try:
            lines = self.requests_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(l) for l in lines if l.strip()]

    def last_request(self, user: str) -> dict:
        for r in reversed(self.requests()):
            if r["headers"].get("Auth-User") == user:
                return r
        self.fail(f"the responder saw no request for {user}: {self.requests()}")

    def imap_node(self, user: str, password: str) -> str:
        """Logs in through the gateway (imaps) and tells which node answered."""
        return harness.imap_node_marker(self.ports["imaps"], self.context, user, password)

    def pop3_node(self, user: str, password: str) -> str:
        pop = poplib.POP3_SSL(harness.HOST, self.ports["pop3s"], context=self.context, timeout=10)
        try:
            pop.user(user)
            pop.pass_(password)
            _, lines, _ = pop.top(1, 0)
            pop.quit()
        finally:
            pop.close()
        for l in lines:
            if l.startswith(b"Subject: "):
                return l.decode().rsplit(" ", 1)[-1]
        self.fail(f"no Subject in {lines}")

    def raw_imap_login(self, user: str, password: str, port_name: str = "imaps") -> tuple[str, float]:
        c, _ = harness.imap_client(self.ports[port_name], tls=port_name == "imaps", context=self.context)
        try:
            t0 = time.monotonic()
            lines = c.command("a", f"LOGIN {harness.imap_quote(user)} {harness.imap_quote(password)}",
                              timeout=20)
            return lines[-1], time.monotonic() - t0
        finally:
            c.close()

    def raw_pop3_login(self, user: str, password: str) -> tuple[str, float]:
        c, _ = harness.pop3_client(self.ports["pop3s"], tls=True, context=self.context)
        try:
            c.send_line(f"USER {user}")
            c.read_line()
            t0 = time.monotonic()
            c.send_line(f"PASS {password}")
            return c.read_line(20), time.monotonic() - t0
        finally:
            c.close()

    # ------------------------------------------------------------------ scenario
    def test_1_login_lands_on_the_node_the_responder_named(self):
        self.assertEqual(self.imap_node(ALICE, ALICE_PW), "storage-02")   # static route: storage-01
        self.assertEqual(self.pop3_node(ALICE, ALICE_PW), "storage-02")
        self.assertEqual(self.imap_node(CAROL, CAROL_PW), "storage-01")
        self.assertEqual(self.pop3_node(CAROL, CAROL_PW), "storage-01")

    def test_2_headers_the_responder_received(self):
        self.imap_node(ALICE, ALICE_PW)
        r = self.last_request(ALICE)
        self.assertEqual(r["request"], "GET /auth HTTP/1.0")
        h = r["headers"]
        self.assertEqual(h["Host"], "127.0.0.1")
        self.assertEqual(h["Auth-Method"], "plain")
        self.assertEqual(h["Auth-Pass"], "ok")  # the responder checked it (and did not log it)
        self.assertEqual(h["Auth-Protocol"], "imap")
        self.assertEqual(h["Auth-Login-Attempt"], "1")
        self.assertEqual(h["Client-IP"], "127.0.0.1")
        self.assertEqual(h["Client-Host"], "[UNAVAILABLE]")
        self.assertEqual(h["Auth-SSL"], "on")
        self.assertEqual(r["status"], "OK")
        # nginx's header order.
        self.assertEqual(r["header_names"],
                         ["Host", "Auth-Method", "Auth-User", "Auth-Pass", "Auth-Protocol",
                          "Auth-Login-Attempt", "Client-IP", "Client-Host", "Auth-SSL"])

        self.pop3_node(CAROL, CAROL_PW)
        self.assertEqual(self.last_request(CAROL)["headers"]["Auth-Protocol"], "pop3")

        # Without TLS (a listener that allows it): no Auth-SSL header.
        line, _ = self.raw_imap_login(CAROL, CAROL_PW, "imap_plain")
        self.assertTrue(line.startswith("a OK"), line)
        h = self.last_request(CAROL)["headers"]
        self.assertNotIn("Auth-SSL", h)
        self.assertEqual(h["Auth-Protocol"], "imap")

    def test_3_escaped_credentials_round_trip(self):
        self.assertEqual(self.imap_node(DAVE, DAVE_PW), "storage-02")
        self.assertEqual(self.last_request(DAVE)["headers"]["Auth-Pass"], "ok")

    def test_4_wrong_password_after_auth_wait(self):
        line, took = self.raw_imap_login(ALICE, "wrong-password")
        self.assertTrue(line.startswith("a NO [AUTHENTICATIONFAILED]"), line)
        self.assertGreaterEqual(took, AUTH_WAIT_S - 0.1)
        self.assertEqual(self.last_request(ALICE)["status"], "Invalid login or password")

        line, took = self.raw_pop3_login(ALICE, "wrong-password")
        self.assertTrue(line.startswith("-ERR [AUTH]"), line)
        self.assertGreaterEqual(took, AUTH_WAIT_S - 0.1)

        # Without Auth-Wait the gateway's own failure delay applies.
        self.write_tables(wait=0)
        try:
            line, took = self.raw_imap_login(ALICE, "wrong-password")
        finally:
            self.write_tables()
        self.assertTrue(line.startswith("a NO [AUTHENTICATIONFAILED]"), line)
        self.assertLess(took, AUTH_WAIT_S - 0.5)

    def test_5_login_attempt_counts_within_a_session(self):
        c, _ = harness.imap_client(self.ports["imaps"], tls=True, context=self.context)
        try:
            line = c.command("a", f"LOGIN {harness.imap_quote(CAROL)} \"wrong\"", timeout=20)[-1]
            self.assertTrue(line.startswith("a NO [AUTHENTICATIONFAILED]"), line)
            self.assertEqual(self.last_request(CAROL)["headers"]["Auth-Login-Attempt"], "1")
            line = c.command("b", f"LOGIN {harness.imap_quote(CAROL)} {harness.imap_quote(CAROL_PW)}",
                             timeout=20)[-1]
            self.assertTrue(line.startswith("b OK"), line)
            self.assertEqual(self.last_request(CAROL)["headers"]["Auth-Login-Attempt"], "2")
        finally:
            c.close()

    def test_6_responder_moves_a_domain(self):
        # Seed 004's failover: edit maps.storage1; the next login goes to the other node.
        self.write_tables(maps={"example.org": "storage-01", "example.net": "storage-01"})
        try:
            self.assertEqual(self.imap_node(ALICE, ALICE_PW), "storage-01")
        finally:
            self.write_tables()
        self.assertEqual(self.imap_node(ALICE, ALICE_PW), "storage-02")

    def test_7_responder_replaces_backend_credentials(self):
        # Auth-User/Auth-Pass in the answer: the node sees alice, not legacy.
        self.assertEqual(self.imap_node(LEGACY, LEGACY_PW), "storage-02")

    def test_9_responder_down_is_a_temporary_failure(self):
        self.stop_responder()
        try:
            line, took = self.raw_imap_login(ERIN, ERIN_PW)
            self.assertTrue(line.startswith("a NO [UNAVAILABLE]"), line)
            self.assertLess(took, 5)
            line, _ = self.raw_pop3_login(ERIN, ERIN_PW)
            self.assertTrue(line.startswith("-ERR [SYS/TEMP]"), line)
            # Never a wrong-password reply while the directory is unreachable.
            line, _ = self.raw_imap_login(ALICE, "another-wrong-password")
            self.assertTrue(line.startswith("a NO [UNAVAILABLE]"), line)
            self.assertTrue(self.gateway.is_running())
        finally:
            self.start_responder()
        self.assertEqual(self.imap_node(ALICE, ALICE_PW), "storage-02")


if __name__ == "__main__":
    unittest.main()
