"""Fault injection against real daemons: a storage node killed while a large body
streams through the gateway, and the postgres directory's database stopped during a
burst of logins and deliveries. (A node frozen past the reply timeout:
test_node_freeze.py.)

1. NodeKilledMidBodyTest: two Dovecot nodes; example.org routes to n1, then n2,
   example.net to n1 only. While a 24 MiB message streams from the gateway to n1's
   LMTP, every process of n1 (master and lmtp) is killed with SIGKILL. The client gets
   250 from the failover node (n2 takes the message before n1 saw its end) or 451, and
   a client-visible copy exists once at most (exactly once after 250). The gateway keeps
   serving, n1 back up takes the next message, and the gateway holds no more
   descriptors than before.
2. PostgresStoppedDuringBurstTest: the postgres directory (no cache), clients logging
   in over IMAP and POP3 and sending over SMTP in a loop while PostgreSQL stops with
   -m immediate. Every reply is a success or the protocol's temporary failure
   (NO [UNAVAILABLE], -ERR [SYS/TEMP], 451 4.3.0), never a wrong-password answer, a
   permanent refusal or a dropped connection; once the server is back, every protocol
   logs in and delivers again within 15 s, and the gateway never stopped."""

from __future__ import annotations

import signal
import smtplib
import threading
import time
import unittest
from pathlib import Path

import faults
import harness
import pg
from fixtures import ALICE, USERS
from test_postgres import gateway_has_postgres, postgres_directory, with_directory

CAROL = "carol@example.net"
BODY_BYTES = 24 << 20    # far more than the loopback socket buffers hold
KILL_AFTER = 2 << 20     # n1 has read this much of the session (the body is streaming)


class NodeKilledMidBodyTest(harness.LogsOnFailure, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-faults-kill-"))
        cls.nodes, cls.gateway = [], None
        try:
            certs = cls.dir / "certs"
            cert = harness.make_cert(harness.make_ca(certs), certs, ["mx.example.org"])
            for i in (1, 2):
                d = harness.Dovecot(cls.dir / f"n{i}", USERS, name=f"n{i}", scheme="PLAIN")
                d.start()
                cls.nodes.append(d)
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS, scheme="PLAIN")
            cls.mx_port, cls.admin_port = harness.free_ports(2)
            backends = [{"name": f"n{i + 1}", "imap": d.imap_port, "lmtp": d.lmtp_port,
                         "health_interval": "1s", "health_timeout": "1s"} for i, d in enumerate(cls.nodes)]
            routes = [{"domain": "example.org", "primary": "n1", "secondary": "n2"},
                      {"domain": "example.net", "primary": "n1"}]
            text = harness.mailgate_config(certificates=[cert], users_file=users_file, backends=backends,
                                           routes=routes,
                                           listeners=[{"name": "mx", "protocol": "smtp", "port": cls.mx_port}])
            text += f'admin: {{ listen: "{harness.HOST}:{cls.admin_port}" }}\n'
            cls.gateway = harness.Mailgate(cls.dir, text).start()
            harness.wait_port(cls.admin_port, 10)
            # Whatever the gateway opens on its first delivery (spool, node connections
            # kept for the session) is open before the baseline is taken.
            for rcpt in (ALICE, CAROL):
                cls.send(rcpt, f"warm-up {rcpt}")
            cls.baseline = cls.quiet_fds()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.gateway is not None:
                cls.gateway.stop()
        finally:
            for d in cls.nodes:
                d.stop()
            harness.remove_workdir(cls.dir)

    @classmethod
    def quiet_fds(cls) -> int:
        """The gateway's descriptors when no session is open (the least of a few looks:
        a health check holds one for a moment)."""
        n = faults.open_fds(cls.gateway.pid)
        for _ in range(10):
            time.sleep(0.05)
            n = min(n, faults.open_fds(cls.gateway.pid))
        return n

    @classmethod
    def send(cls, rcpt: str, subject: str, size: int = 0, timeout: float = 120.0) -> None:
        with smtplib.SMTP(harness.HOST, cls.mx_port, timeout=timeout) as s:
            s.sendmail("sender@example.com", [rcpt], faults.message(subject, size))

    def diagnostics(self) -> str:
        out = ["--- mailgate log (tail) ---\n" + (self.gateway.log_text()[-5000:] if self.gateway else "")]
        for d in self.nodes:
            out.append(f"--- {d.name} log (tail) ---\n" + d.log_text()[-1500:])
        return "\n".join(out)

    def setUp(self):
        n1 = self.nodes[0]
        if not n1.is_running():
            n1.start()
        for name in ("n1", "n2"):
            harness.wait_for(lambda: faults.metric(self.admin_port, f'mailgate_backend_up{{backend="{name}"}}') == 1,
                             10, 0.1, f"{name} up in /metrics")

    def kill_mid_body(self, rcpt: str, subject: str) -> dict:
        """Sends a large message to rcpt and kills n1 while its LMTP reads the body.
        Returns {"code": 250|4xx|5xx, "text": ...} or {"error": ...}."""
        n1 = self.nodes[0]
        before = faults.lmtp_read_bytes(n1)
        result: dict = {}

        def client():
            try:
                self.send(rcpt, subject, BODY_BYTES)
                result["code"] = 250
            except smtplib.SMTPResponseException as e:
                result["code"], result["text"] = e.smtp_code, e.smtp_error
            except Exception as e:  # noqa: BLE001 - any other outcome fails the test below
                result["error"] = repr(e)

        t = threading.Thread(target=client, daemon=True)
        t.start()
        harness.wait_for(lambda: faults.lmtp_read_bytes(n1) - before > KILL_AFTER or not t.is_alive(),
                         90, 0.005, "n1's LMTP reading the body")
        read = self.read_at_kill = faults.lmtp_read_bytes(n1) - before
        self.assertTrue(t.is_alive(), f"the delivery ended before n1 was killed: {result}")
        self.assertLess(read, BODY_BYTES, "n1 had read the whole body before it was killed")
        faults.signal_node(n1, signal.SIGKILL)
        n1.stop()  # the master's pid file and sockets of the dead instance
        t.join(150)
        self.assertFalse(t.is_alive(), "the client got no reply")
        self.assertTrue(self.gateway.is_running(), self.gateway.log_text()[-3000:])
        return result

    def attempt_failures(self) -> list[dict]:
        return [l for l in self.gateway.log_lines()
                if l.get("msg") == "delivery attempt failed" and l.get("backend") == "n1"]

    def check_next_session(self, rcpt: str, subject: str) -> None:
        """n1 back: the next message is delivered exactly once; no descriptor leaked."""
        n1 = self.nodes[0]
        n1.start()
        harness.wait_for(lambda: faults.metric(self.admin_port, 'mailgate_backend_up{backend="n1"}') == 1,
                         10, 0.1, "n1 up again in /metrics")
        self.send(rcpt, subject, timeout=30)
        harness.wait_for(lambda: sum(faults.copies(d, rcpt, subject.encode()) for d in self.nodes) == 1,
                         10, 0.05, f"one copy of {subject!r}")
        time.sleep(0.2)
        self.assertEqual(sum(faults.copies(d, rcpt, subject.encode()) for d in self.nodes), 1)
        faults.wait_fds_at_most(self.gateway.pid, self.baseline)

    def test_1_killed_mid_body_the_failover_node_takes_it(self):
        subject = f"killed mid-body {time.time_ns()}"
        failed_before = len(self.attempt_failures())
        result = self.kill_mid_body(ALICE, subject)
        self.assertIn(result.get("code"), (250, 451), result)
        print(f"\n  n1 killed after {self.read_at_kill >> 20} MiB read: {result}", end=" ", flush=True)
        n1, n2 = (faults.copies(d, ALICE, subject.encode()) for d in self.nodes)
        if result["code"] == 250:
            # n1 never saw the end of the body: n2 has the message, n1 none.
            self.assertEqual((n1, n2), (0, 1), result)
        else:
            # n1 may have taken the message before it died: no second node is tried.
            self.assertEqual(n2, 0, result)
            self.assertLessEqual(n1, 1, result)
        lines = harness.wait_for(lambda: self.attempt_failures()[failed_before:], 10,
                                 what="delivery attempt failed (n1) in the log")
        self.assertNotEqual(lines[0].get("class"), "connect", lines)
        self.check_next_session(ALICE, f"after the kill {time.time_ns()}")

    def test_2_killed_mid_body_without_failover_is_451(self):
        subject = f"killed mid-body, no failover {time.time_ns()}"
        result = self.kill_mid_body(CAROL, subject)
        self.assertEqual(result.get("code"), 451, result)
        self.assertLessEqual(faults.copies(self.nodes[0], CAROL, subject.encode()), 1)
        self.assertEqual(faults.copies(self.nodes[1], CAROL, subject.encode()), 0)
        self.check_next_session(CAROL, f"after the kill, no failover {time.time_ns()}")


# ======================================================================= postgres

BURST_USERS = {f"user{i:02d}@example.org": f"pw-{i:02d}" for i in range(12)}
IMAP_TEMP = "NO [UNAVAILABLE]"
POP3_TEMP = "-ERR [SYS/TEMP]"
SMTP_TEMP = "451 4.3.0"
CLIENTS_PER_PROTOCOL = 3


@unittest.skipUnless(pg.available(), "PostgreSQL 15 binaries not installed")
class PostgresStoppedDuringBurstTest(harness.LogsOnFailure, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        supported, why = gateway_has_postgres()
        if not supported:
            raise AssertionError(f"mailgate rejects the postgres driver: {why}")
        cls.dir = Path(harness.make_workdir("mailgate-faults-pg-"))
        cls.node, cls.db, cls.gateway = None, None, None
        try:
            cls.node = harness.Dovecot(cls.dir / "n1", BURST_USERS, name="n1", scheme="PLAIN")
            cls.node.start()
            cls.db = pg.Postgres(cls.dir, name="pg").start()
            cfg = cls.dir / "initdb.yaml"
            cfg.write_text(postgres_directory(cls.db.conninfo()) + "listeners: [{ name: l, protocol: smtp, "
                           "listen: \"127.0.0.1:1\" }]\nbackends: [{ name: b, host: 127.0.0.1, "
                           "ports: { lmtp: 1 } }]\n")
            r = harness.run_mailgate("--init-db", str(cfg))
            assert r.returncode == 0, r.stdout + r.stderr
            sql = ["INSERT INTO domains (name) VALUES ('example.org');",
                   "INSERT INTO nodes (name, host) VALUES ('n1', '127.0.0.1');",
                   "INSERT INTO routes VALUES ('example.org', 'n1', NULL);"]
            for user, pw in BURST_USERS.items():
                sql.append(f"INSERT INTO mailboxes (address, domain, password) VALUES ({pg.sql_quote(user)}, "
                           f"'example.org', {pg.sql_quote('{PLAIN}' + pw)});")
            cls.db.psql("\n".join(sql))
            certs = cls.dir / "certs"
            cert = harness.make_cert(harness.make_ca(certs), certs, ["mail.example.org"])
            cls.imap_port, cls.pop3_port, cls.mx_port = harness.free_ports(3)
            listeners = [{"name": "imap", "protocol": "imap", "port": cls.imap_port, "allow_plaintext_auth": True},
                         {"name": "pop3", "protocol": "pop3", "port": cls.pop3_port, "allow_plaintext_auth": True},
                         {"name": "mx", "protocol": "smtp", "port": cls.mx_port}]
            backends = [{"name": "n1", "imap": cls.node.imap_port, "pop3": cls.node.pop3_port,
                         "lmtp": cls.node.lmtp_port, "health_interval": "1s", "health_timeout": "1s"}]
            text = harness.mailgate_config(certificates=[cert], listeners=listeners, users_file="unused",
                                           backends=backends, routes=[{"domain": "*", "primary": "n1"}],
                                           failure_delay="0s")
            # No cache: every login and every recipient asks the database.
            directory = postgres_directory(cls.db.conninfo(), cache="{ ttl: 0s, negative_ttl: 0s }")
            cls.gateway = harness.Mailgate(cls.dir, with_directory(text, directory)).start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.gateway is not None:
                cls.gateway.stop()
        finally:
            if cls.node is not None:
                cls.node.stop()
            if cls.db is not None:
                cls.db.stop(mode="immediate")
            harness.remove_workdir(cls.dir)

    def diagnostics(self) -> str:
        out = ["--- mailgate log (tail) ---\n" + (self.gateway.log_text()[-5000:] if self.gateway else "")]
        if self.node is not None:
            out.append("--- n1 log (tail) ---\n" + self.node.log_text()[-1500:])
        if self.db is not None:
            out.append("--- postgres log (tail) ---\n" + self.db.log_text()[-1500:])
        return "\n".join(out)

    # ---------------------------------------------------------------- one session each
    def imap(self, user: str, pw: str) -> str:
        c = harness.LineClient(self.imap_port, timeout=15)
        try:
            c.read_line(15)
            reply = c.command("a", f"LOGIN {harness.imap_quote(user)} {harness.imap_quote(pw)}", timeout=15)[-1]
            if reply.startswith("a OK"):
                c.command("b", "LOGOUT", timeout=15)
            return reply[2:]
        finally:
            c.close()

    def pop3(self, user: str, pw: str) -> str:
        c = harness.LineClient(self.pop3_port, timeout=15)
        try:
            c.read_line(15)
            c.send_line(f"USER {user}")
            c.read_line(15)
            c.send_line(f"PASS {pw}")
            reply = c.read_line(15)
            if reply.startswith("+OK"):
                c.send_line("QUIT")
                c.read_line(15)
            return reply
        finally:
            c.close()

    def smtp(self, user: str, _pw: str) -> str:
        """The reply to RCPT, or to the end of data when the recipient was accepted."""
        with smtplib.SMTP(harness.HOST, self.mx_port, timeout=15) as s:
            s.ehlo("client.example.com")
            s.mail("sender@example.com")
            code, text = s.rcpt(user)
            if code != 250:
                return f"{code} {text.decode()}"
            code, text = s.data(faults.message(f"burst {time.time_ns()}"))
            return f"{code} {text.decode()}"

    OK = {"imap": "OK", "pop3": "+OK", "smtp": "250 "}
    TEMP = {"imap": IMAP_TEMP, "pop3": POP3_TEMP, "smtp": SMTP_TEMP}

    def test_database_stopped_during_a_burst(self):
        users = list(BURST_USERS.items())
        # Everything works with the database up.
        for proto in ("imap", "pop3", "smtp"):
            reply = getattr(self, proto)(*users[0])
            self.assertTrue(reply.startswith(self.OK[proto]), f"{proto}: {reply}\n{self.diagnostics()}")

        replies: list[tuple[str, float, str]] = []
        lock = threading.Lock()
        stop = threading.Event()

        def client(proto: str, k: int):
            i = k
            while not stop.is_set():
                user, pw = users[i % len(users)]
                i += CLIENTS_PER_PROTOCOL
                try:
                    reply = getattr(self, proto)(user, pw)
                except Exception as e:  # noqa: BLE001 - a dropped or stuck session is a failure
                    reply = f"exception {e!r}"
                with lock:
                    replies.append((proto, time.monotonic(), reply))
                time.sleep(0.02)  # a burst, not a busy loop

        threads = [threading.Thread(target=client, args=(p, k), daemon=True)
                   for p in ("imap", "pop3", "smtp") for k in range(CLIENTS_PER_PROTOCOL)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            stopped_at = time.monotonic()
            self.db.stop(mode="immediate")
            time.sleep(3.0)  # sessions that began before, during and after the stop
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        self.assertFalse(any(t.is_alive() for t in threads), "a client is stuck")

        summary = {p: (sum(r[2].startswith(self.OK[p]) for r in replies if r[0] == p),
                       sum(r[2].startswith(self.TEMP[p]) for r in replies if r[0] == p)) for p in self.OK}
        print(f"\n  (successes, temporary failures) per protocol: {summary}", end=" ", flush=True)
        bad = [r for r in replies if not (r[2].startswith(self.OK[r[0]]) or r[2].startswith(self.TEMP[r[0]]))]
        self.assertEqual(bad, [], self.diagnostics())
        for proto in ("imap", "pop3", "smtp"):
            mine = [r for r in replies if r[0] == proto]
            self.assertTrue(any(r[1] < stopped_at and r[2].startswith(self.OK[proto]) for r in mine),
                            f"no {proto} success before the stop: {mine[:5]}")
            # Well after the stop (the in-flight queries have failed), only temporary failures.
            late = [r for r in mine if r[1] > stopped_at + 1.5]
            self.assertTrue(late, f"no {proto} session late in the outage")
            self.assertTrue(all(r[2].startswith(self.TEMP[proto]) for r in late), late)
        self.assertTrue(self.gateway.is_running(), self.diagnostics())

        self.db.start()
        began = time.monotonic()
        for proto in ("imap", "pop3", "smtp"):
            user, pw = users[1]
            harness.wait_for(lambda: getattr(self, proto)(user, pw).startswith(self.OK[proto]),
                             max(0.1, 15 - (time.monotonic() - began)), 0.2, f"{proto} success after the restart")
        print(f"recovered {time.monotonic() - began:.1f}s after the restart", end=" ", flush=True)
        self.assertTrue(self.gateway.is_running(), self.diagnostics())


if __name__ == "__main__":
    unittest.main()
