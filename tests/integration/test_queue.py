"""The exception queue: an LMTP node (real Dovecot) accepts dave and defers frank after
the data (frank's mailbox over its quota, quota_full_tempfail); the client gets 250,
dave has exactly one copy at once and frank exactly one once his mailbox takes mail
again. A client resending the message gets no second copy; a recipient refused for
good from the queue gets the sender exactly one DSN (none for the null sender);
operators list, show, retry and delete entries. With PostgreSQL: two gateways share
the queue, one is SIGKILLed after queueing and the other delivers, exactly once; with
the database down the queue's write fails and the client gets 451."""

from __future__ import annotations

import json
import re
import smtplib
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

import harness
import pg
from test_postgres import postgres_directory, with_directory

ALICE, DAVE, FRANK = "alice@example.org", "dave@example.org", "frank@example.org"
USERS = {ALICE: "alice-pw", DAVE: "dave-pw", FRANK: "frank-pw"}

# Quotas are per user (userdb_quota_rule in the node's passwd-file): frank's is 1 KiB
# while he is "full", none otherwise.
QUOTA_CONFIG = """
mail_plugins = $mail_plugins quota
quota_full_tempfail = yes
plugin {
  quota = maildir:User quota
}
"""
FILLER = ("x" * 76 + "\r\n") * 40  # ~3 KiB: over a 1 KiB quota


def message(subject: str, sender: str, msgid: str | None = None) -> bytes:
    msgid = msgid or f"<{time.time_ns()}@queue.test>"
    return (f"From: {sender}\r\nTo: {DAVE}, {FRANK}\r\nSubject: {subject}\r\nMessage-ID: {msgid}\r\n"
            f"\r\n{FILLER}").encode()


class QueueCase(harness.LogsOnFailure, unittest.TestCase):
    maxDiff = None

    @classmethod
    def node_users(cls, frank: str) -> None:
        """frank: "full" (1 KiB quota), "free" (no quota) or "gone" (unknown to the node)."""
        d = cls.dovecot
        users = {u: p for u, p in USERS.items() if frank != "gone" or u != FRANK}
        d.users = dict(users)
        extra = {}
        for user in users:
            local, _, domain = user.partition("@")
            home = d.mail_dir / domain / local
            # (an explicit large limit when free: the node may keep the last one otherwise)
            rule = (f"userdb_quota_rule=*:storage={'1K' if frank == 'full' else '1G'}" if user == FRANK else "")
            extra[user] = f"{d.mail_uid}:{d.mail_gid}::{home}::{rule}"
        harness.write_passwd(d.passwd_path, users, d.scheme, extra)
        Path(d.passwd_path).chmod(0o644)
        time.sleep(1.1)  # Dovecot rereads the file when its mtime (seconds) changes

    def maildir(self, user: str, marker: str | None = None) -> list[bytes]:
        local, _, domain = user.partition("@")
        base = self.dovecot.mail_dir / domain / local / "Maildir"
        out = [p.read_bytes() for sub in ("new", "cur") for p in sorted((base / sub).glob("*"))
               if p.is_file()] if base.exists() else []
        return [m for m in out if marker is None or marker.encode() in m]

    def send(self, port: int, sender: str, subject: str, msgid: str | None = None) -> tuple[int, str]:
        with smtplib.SMTP(harness.HOST, port, timeout=60) as s:
            s.ehlo("client.example.com")
            code, text = s.mail(sender if sender else "<>")
            self.assertEqual(code, 250, text)
            for r in (DAVE, FRANK):
                code, text = s.rcpt(r)
                self.assertEqual(code, 250, text)
            code, text = s.data(message(subject, sender or "MAILER-DAEMON@client.example.com", msgid))
            return code, text.decode()

    def queue_id(self, text: str) -> str:
        m = re.search(r"queued as (\S+)", text)
        self.assertIsNotNone(m, text)
        return m.group(1)

    def lines(self, gateway: harness.Mailgate, msg: str, **match) -> list[dict]:
        return [l for l in gateway.log_lines() if l.get("msg") == msg
                and all(l.get(k) == v for k, v in match.items())]

    def http(self, admin: int, method: str, path: str) -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{admin}{path}", method=method,
                                     headers=harness.admin_headers())
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


class DirQueueTest(QueueCase):
    """The spool-directory store, the file directory."""

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-queue-dir-"))
        cls.dovecot, cls.gateway, cls.short = None, None, None
        try:
            certs = cls.dir / "certs"
            cert = harness.make_cert(harness.make_ca(certs), certs, ["mx.example.org"])
            cls.dovecot = harness.Dovecot(cls.dir / "storage", USERS, name="qnode",
                                          extra_config=QUOTA_CONFIG).start()
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            cls.port, cls.admin = harness.free_ports(2)
            text = harness.mailgate_config(
                certificates=[cert], users_file=users_file,
                listeners=[{"name": "mx", "protocol": "smtp", "port": cls.port}],
                backends=[{"name": "storage-01", "imap": cls.dovecot.imap_port,
                           "lmtp": cls.dovecot.lmtp_port}],
                routes=[{"domain": "*", "primary": "storage-01"}])
            text += harness.admin_block(cls.admin, cls.dir)
            text += (f"queue: {{ store: dir, dir: {cls.dir / 'queue'}, retry: 1s, max_retry: 1s, "
                     f"scan_interval: 200ms, lifetime: 1h }}\n")
            cls.gateway = harness.Mailgate(cls.dir, text).start()
            harness.wait_port(cls.admin, 10)
            # A second gateway whose entries expire after two seconds.
            short_dir = cls.dir / "short"
            short_dir.mkdir()
            cls.short_port = harness.free_port()
            short = text.replace(f'"{harness.HOST}:{cls.port}"', f'"{harness.HOST}:{cls.short_port}"')
            short = short[:short.index("admin:")] + (
                f"queue: {{ store: dir, dir: {short_dir / 'queue'}, retry: 500ms, max_retry: 500ms, "
                f"scan_interval: 200ms, lifetime: 2s, max_entries: 2 }}\n")
            cls.short = harness.Mailgate(short_dir, short, name="short").start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for gw in (cls.gateway, cls.short):
            if gw is not None:
                gw.stop()
        if cls.dovecot is not None:
            cls.dovecot.stop()
        harness.remove_workdir(cls.dir)

    def setUp(self):
        self.node_users("full")

    def diagnostics(self) -> str:
        return (f"--- mailgate log (tail) ---\n{self.gateway.log_text()[-8000:]}\n"
                f"--- dovecot log (tail) ---\n{self.dovecot.log_text()[-3000:]}")

    def entries(self) -> dict[str, dict]:
        status, body = self.http(self.admin, "GET", "/queue")
        self.assertEqual(status, 200, body)
        return {e["id"]: e for e in json.loads(body)}

    def test_1_partial_refusal_is_queued_and_each_recipient_gets_one_copy(self):
        subject = f"partial {time.time_ns()}"
        code, text = self.send(self.port, ALICE, subject)
        self.assertEqual(code, 250, text)
        qid = self.queue_id(text)
        self.assertEqual(len(self.maildir(DAVE, subject)), 1)
        self.assertEqual(self.maildir(FRANK, subject), [])
        queued = harness.wait_for(lambda: self.lines(self.gateway, "smtp message queued", queue_id=qid), 10,
                                  what="smtp message queued")
        self.assertEqual((queued[0]["delivered"], queued[0]["queued"]), (1, 1), queued)
        statuses = {l["to"]: l["status"] for l in self.lines(self.gateway, "smtp recipient", queue_id=qid)}
        self.assertEqual(statuses, {f"<{DAVE}>": "delivered", f"<{FRANK}>": "queued"})
        self.assertIn(qid, self.entries())
        # The runner keeps trying while the mailbox is full: one attempt line each time.
        harness.wait_for(lambda: self.lines(self.gateway, "queue attempt", queue_id=qid), 10, what="an attempt")
        self.node_users("free")
        harness.wait_for(lambda: self.maildir(FRANK, subject), 15, what="frank's copy")
        harness.wait_for(lambda: self.lines(self.gateway, "queue delivered", queue_id=qid), 10,
                         what="queue delivered")
        harness.wait_for(lambda: qid not in self.entries(), 10, what="the entry gone")
        time.sleep(1.5)  # two more scans: nothing is delivered again
        self.assertEqual(len(self.maildir(FRANK, subject)), 1)
        self.assertEqual(len(self.maildir(DAVE, subject)), 1)

    def test_2_a_client_resending_the_message_makes_no_second_copy(self):
        subject = f"resent {time.time_ns()}"
        msgid = f"<{time.time_ns()}.resent@queue.test>"
        code, text = self.send(self.port, ALICE, subject, msgid)
        self.assertEqual(code, 250, text)
        qid = self.queue_id(text)
        for _ in range(2):  # the client sends it again (it did not see the 250, say)
            code, text = self.send(self.port, ALICE, subject, msgid)
            self.assertEqual(code, 250, text)
            self.assertIn(f"already queued as {qid}", text)
        self.assertEqual(len(self.maildir(DAVE, subject)), 1)
        self.node_users("free")
        harness.wait_for(lambda: qid not in self.entries(), 15, what="the entry delivered")
        time.sleep(1.0)
        self.assertEqual(len(self.maildir(FRANK, subject)), 1)
        self.assertEqual(len(self.maildir(DAVE, subject)), 1)

    def test_3_a_permanent_failure_from_the_queue_gets_the_sender_one_dsn(self):
        subject = f"bounce {time.time_ns()}"
        code, text = self.send(self.port, ALICE, subject)
        self.assertEqual(code, 250, text)
        qid = self.queue_id(text)
        try:
            self.node_users("gone")  # the node now refuses frank at RCPT: 550 5.1.1
            harness.wait_for(lambda: self.lines(self.gateway, "queue failed", queue_id=qid), 15,
                             what="queue failed")
            dsns = harness.wait_for(lambda: self.maildir(ALICE, subject), 15, what="the DSN in alice's mailbox")
            harness.wait_for(lambda: qid not in self.entries(), 10, what="the entry gone")
            time.sleep(1.5)
            dsns = self.maildir(ALICE, subject)
            self.assertEqual(len(dsns), 1, "exactly one DSN")
            dsn = dsns[0].decode(errors="replace")
            self.assertRegex(dsn, r"(?i)content-type: multipart/report;\s*report-type=\"?delivery-status")
            self.assertRegex(dsn, r"(?i)final-recipient: rfc822;\s*frank@example\.org")
            self.assertRegex(dsn, r"(?i)action: failed")
            self.assertRegex(dsn, r"(?i)status: 5\.\d+\.\d+")
            self.assertRegex(dsn, r"(?i)auto-submitted: auto-replied")
            self.assertNotRegex(dsn, r"(?i)final-recipient: rfc822;\s*dave@")
            self.assertEqual(len(self.maildir(DAVE, subject)), 1)
        finally:
            self.node_users("full")

    def test_4_the_null_sender_gets_no_dsn(self):
        subject = f"null sender {time.time_ns()}"
        code, text = self.send(self.port, "", subject)
        self.assertEqual(code, 250, text)
        qid = self.queue_id(text)
        try:
            self.node_users("gone")
            harness.wait_for(lambda: self.lines(self.gateway, "queue failed", queue_id=qid), 15,
                             what="queue failed")
            harness.wait_for(lambda: qid not in self.entries(), 10, what="the entry gone")
            time.sleep(1.0)
            self.assertEqual(self.lines(self.gateway, "queue dsn queued", queue_id=qid), [])
            self.assertEqual(self.maildir(ALICE, subject), [])
        finally:
            self.node_users("full")

    def test_5_operators_list_show_retry_and_delete(self):
        subject = f"operator {time.time_ns()}"
        code, text = self.send(self.port, ALICE, subject)
        self.assertEqual(code, 250, text)
        qid = self.queue_id(text)
        entry = self.entries()[qid]
        self.assertEqual(entry["mail_from"], f"<{ALICE}>")
        status, body = self.http(self.admin, "GET", f"/queue/{qid}")
        self.assertEqual(status, 200, body)
        states = {r["addr"]: r["state"] for r in json.loads(body)["rcpts"]}
        self.assertEqual(states, {f"<{DAVE}>": "delivered", f"<{FRANK}>": "pending"})
        cfg = str(self.gateway.config_path)
        r = harness.run_mailgate("--config", cfg, "--queue")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(qid, r.stdout)
        r = harness.run_mailgate("--config", cfg, "--queue-show", qid)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(FRANK, r.stdout)
        r = harness.run_mailgate("--config", cfg, "--queue-retry", qid)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = harness.run_mailgate("--config", cfg, "--queue-delete", qid)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn(qid, self.entries())
        self.assertEqual(self.http(self.admin, "GET", f"/queue/{qid}")[0], 404)
        self.assertEqual(self.http(self.admin, "GET", "/queue/..%2Fetc")[0] // 100, 4)
        metrics = self.http(self.admin, "GET", "/metrics")[1]
        for family in ("mailgate_queue_entries", "mailgate_queue_oldest_age_seconds",
                       "mailgate_queue_dsn_total", "mailgate_queue_attempts_total"):
            self.assertRegex(metrics, rf"(?m)^{family}(\{{[^}}]*\}})? \d", family)
        self.node_users("free")
        time.sleep(1.5)
        self.assertEqual(self.maildir(FRANK, subject), [], "a deleted entry is not delivered")


    def test_6_a_recipient_past_the_lifetime_expires_with_a_dsn(self):
        subject = f"expired {time.time_ns()}"
        code, text = self.send(self.short_port, ALICE, subject)
        self.assertEqual(code, 250, text)
        qid = self.queue_id(text)
        harness.wait_for(lambda: self.lines(self.short, "queue expired", queue_id=qid), 15, what="queue expired")
        dsns = harness.wait_for(lambda: self.maildir(ALICE, subject), 15, what="the DSN")
        time.sleep(1.0)
        dsns = self.maildir(ALICE, subject)
        self.assertEqual(len(dsns), 1)
        dsn = dsns[0].decode(errors="replace")
        self.assertRegex(dsn, r"(?i)final-recipient: rfc822;\s*frank@example\.org")
        self.assertRegex(dsn, r"(?i)action: failed")
        self.assertRegex(dsn, r"(?i)status: 4\.4\.7")
        self.assertEqual(self.maildir(FRANK, subject), [])


    def test_7_a_full_queue_is_451_before_any_node_gets_the_message(self):
        tag = f"full {time.time_ns()}"
        for i in range(2):
            code, text = self.send(self.short_port, ALICE, f"{tag} {i}")
            self.assertEqual(code, 250, text)
        code, text = self.send(self.short_port, ALICE, f"{tag} 2")
        self.assertEqual(code, 451, text)
        self.assertTrue(text.startswith("4.3.1"), text)
        self.assertEqual(len(self.maildir(DAVE, f"{tag} 0")), 1)
        self.assertEqual(self.maildir(DAVE, f"{tag} 2"), [], "refused before the node got it")
        # Both entries expire (lifetime 2 s): their DSNs are queued although the queue is full.
        for i in range(2):
            harness.wait_for(lambda: self.maildir(ALICE, f"{tag} {i}"), 15, what=f"the DSN of message {i}")


class PostgresQueueTest(QueueCase):
    """The PostgreSQL store shared by two gateways."""

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-queue-pg-"))
        cls.dovecot, cls.db, cls.standby, cls.gateways = None, None, None, {}
        try:
            if not pg.available():
                raise AssertionError("PostgreSQL 15 binaries not found (scripts/deps.sh installs them)")
            cls.db = pg.Postgres(cls.dir, name="pg", replication=True).start()
            cfg = cls.dir / "initdb.yaml"
            cfg.write_text(postgres_directory(cls.db.conninfo()) + "listeners: [{ name: l, protocol: imap, "
                           "listen: \"127.0.0.1:1\" }]\nbackends: [{ name: b, host: 127.0.0.1, "
                           "ports: { imap: 1 } }]\n")
            r = harness.run_mailgate("--init-db", str(cfg))
            if r.returncode != 0:
                raise AssertionError("--init-db failed: " + r.stdout + r.stderr)
            sql = ["INSERT INTO domains (name) VALUES ('example.org');"]
            for user in USERS:
                sql.append(f"INSERT INTO mailboxes (address, domain, password) VALUES ({pg.sql_quote(user)}, "
                           f"'example.org', {pg.sql_quote(harness.hash_password('pw', 'SHA256-CRYPT'))});")
            cls.db.psql("\n".join(sql))
            # A streaming replica: the gateways name both servers and use the writable one.
            cls.standby = cls.db.standby(cls.dir, name="pg-standby").start()
            cls.db.wait_streaming(cls.standby)
            cls.conninfo = pg.multi_host_conninfo([cls.db, cls.standby])
            certs = cls.dir / "certs"
            cls.cert = harness.make_cert(harness.make_ca(certs), certs, ["mx.example.org"])
            cls.dovecot = harness.Dovecot(cls.dir / "storage", USERS, name="qpg",
                                          extra_config=QUOTA_CONFIG).start()
            for name in ("a", "b"):
                cls.start_gateway(name)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def start_gateway(cls, name: str) -> harness.Mailgate:
        port, admin = harness.free_ports(2)
        users_file = str(cls.dir / "unused.passwd")
        harness.write_passwd(users_file, USERS)
        text = harness.mailgate_config(
            certificates=[cls.cert], users_file=users_file,
            listeners=[{"name": "mx", "protocol": "smtp", "port": port}],
            backends=[{"name": "storage-01", "imap": cls.dovecot.imap_port, "lmtp": cls.dovecot.lmtp_port}],
            routes=[{"domain": "*", "primary": "storage-01"}])
        text = with_directory(text, postgres_directory(cls.conninfo))
        gdir = cls.dir / f"gw-{name}"
        gdir.mkdir(exist_ok=True)
        text += harness.admin_block(admin, gdir)
        text += "queue: { store: postgres, retry: 2s, max_retry: 2s, scan_interval: 200ms, lease: 30s }\n"
        gw = harness.Mailgate(gdir, text, name=f"mailgate-{name}").start()
        harness.wait_port(admin, 10)
        gw.smtp_port, gw.admin_port = port, admin
        cls.gateways[name] = gw
        return gw

    @classmethod
    def tearDownClass(cls):
        for gw in cls.gateways.values():
            gw.stop()
        if cls.dovecot is not None:
            cls.dovecot.stop()
        for db in (cls.db, cls.standby):
            if db is not None:
                db.stop(mode="immediate")
        harness.remove_workdir(cls.dir)

    def setUp(self):
        if not self.db.is_running():
            self.db.start()
        self.node_users("full")

    def diagnostics(self) -> str:
        out = [f"--- {n} log (tail) ---\n{g.log_text()[-6000:]}" for n, g in self.gateways.items()]
        out.append(f"--- dovecot log (tail) ---\n{self.dovecot.log_text()[-3000:]}")
        out.append(f"--- postgres log (tail) ---\n{self.db.log_text()[-2000:]}")
        out.append(f"--- standby log (tail) ---\n{self.standby.log_text()[-2000:]}")
        return "\n".join(out)

    def test_1_a_gateway_killed_after_queueing_another_delivers_once(self):
        a, b = self.gateways["a"], self.gateways["b"]
        subject = f"cluster {time.time_ns()}"
        code, text = self.send(a.smtp_port, ALICE, subject)
        self.assertEqual(code, 250, text)
        qid = self.queue_id(text)
        a.proc.kill()  # SIGKILL: before its first retry (2 s)
        a.proc.wait(10)
        self.node_users("free")
        t0 = time.monotonic()
        harness.wait_for(lambda: self.maildir(FRANK, subject), 15, what="frank's copy, from gateway b")
        took = time.monotonic() - t0
        harness.wait_for(lambda: self.lines(b, "queue delivered", queue_id=qid), 10, what="b's queue delivered")
        self.assertLess(took, 2 + 1 + 2, "within the retry interval (after the quota change is read)")
        harness.wait_for(lambda: self.db.psql("SELECT count(*) FROM mailgate_queue").strip() == "0", 10,
                         what="the queue empty")
        time.sleep(1.0)
        self.assertEqual(len(self.maildir(FRANK, subject)), 1)
        self.assertEqual(len(self.maildir(DAVE, subject)), 1)
        del self.gateways["a"]
        self.start_gateway("a")

    def test_2_database_down_when_the_queue_needs_a_write_is_451(self):
        b = self.gateways["b"]
        subject = f"db down {time.time_ns()}"
        with smtplib.SMTP(harness.HOST, b.smtp_port, timeout=60) as s:
            s.ehlo("client.example.com")
            self.assertEqual(s.mail(ALICE)[0], 250)
            for r in (DAVE, FRANK):
                self.assertEqual(s.rcpt(r)[0], 250)
            self.db.stop(mode="immediate")
            code, text = s.data(message(subject, ALICE))
        self.assertEqual(code // 100, 4, text)
        self.assertTrue(text.decode().startswith("4.3.0"), text)
        harness.wait_for(lambda: [l for l in b.log_lines() if l.get("msg", "").startswith("smtp message not queued")],
                         10, what="the not-queued line")
        self.db.start()
        # Nothing was accepted without a durable copy: no entry exists for it.
        self.assertEqual(self.db.psql("SELECT count(*) FROM mailgate_queue").strip(), "0")
        self.assertEqual(len(self.maildir(FRANK, subject)), 0)

    def test_3_queued_entries_survive_a_database_failover(self):
        b = self.gateways["b"]
        subject = f"failover {time.time_ns()}"
        code, text = self.send(b.smtp_port, ALICE, subject)
        self.assertEqual(code, 250, text)
        qid = self.queue_id(text)
        # Asynchronous replication: the entry is on the replica before the primary goes.
        harness.wait_for(lambda: self.standby.psql(
            f"SELECT count(*) FROM mailgate_queue WHERE id = {pg.sql_quote(qid)}").strip() == "1", 10,
            what="the entry replicated")
        self.db.stop(mode="immediate")
        self.standby.promote()
        self.node_users("free")
        harness.wait_for(lambda: self.maildir(FRANK, subject), 20, what="frank's copy after the failover")
        harness.wait_for(lambda: self.standby.psql(
            f"SELECT count(*) FROM mailgate_queue WHERE id = {pg.sql_quote(qid)}").strip() == "0", 10,
            what="the entry gone from the new primary")
        time.sleep(1.0)
        self.assertEqual(len(self.maildir(FRANK, subject)), 1)
        self.assertEqual(len(self.maildir(DAVE, subject)), 1)


if __name__ == "__main__":
    unittest.main()
