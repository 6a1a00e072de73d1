"""The quarantine (hooks.quarantine; DESIGN.md "Policy and content"): quarantined
means accepted, 250 only once the entry is durable, and the message goes to its
storage node only when an operator releases it, exactly once.

With a policy rule `then: quarantine` (an RE2 rule on the sender at stage data), a
real Dovecot LMTP node whose Maildir is checked, and the admin endpoint:
- the client gets 250 "... (quarantined)", nothing reaches the node, the entry is
  listed by GET /quarantine, GET /quarantine/ID and the CLI (--quarantine);
- a release (CLI --release) delivers it to Dovecot once; a second release fails
  cleanly (404, the CLI exits 1) and the Maildir still holds one copy;
- DELETE (CLI --delete) removes an entry; the retention sweep removes an old one;
- the store is unwritable: the client gets 451 4.3.0, and a log line says why;
- the same with the postgres store, on a PostgreSQL the test starts (store: postgres
  needs the postgres directory: mailboxes and routes in the database)."""

from __future__ import annotations

import json
import os
import smtplib
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

import harness
import pg
from fixtures import ALICE, USERS
from test_postgres import postgres_directory, with_directory

POLICY = r"""
policies:
  - { name: hold-suspect, stage: data, when: { sender: { re2: '(?i)@suspect\.example$' } }, then: quarantine }
"""
RETENTION = "1h"
SHORT_RETENTION = "2s"  # test_9: set by a reload
GHOST = "ghost@" + ALICE.partition("@")[2]  # a mailbox the gateway knows and the node does not


def message(subject: str, sender: str) -> bytes:
    return (f"From: {sender}\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@quarantine.test>\r\n\r\nHello.\r\n.leading dot\r\n").encode()


class QuarantineCase(harness.LogsOnFailure, unittest.TestCase):
    """Base: one Dovecot, one mailgate with an MX listener, the admin endpoint, a store."""
    maxDiff = None
    STORE = "dir"

    @classmethod
    def store_block(cls) -> str:
        return f"  quarantine: {{ store: dir, dir: {cls.dir / 'quarantine'}, retention: {RETENTION} }}\n"

    @classmethod
    def directory(cls, text: str) -> str:
        return text

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir(f"mailgate-quarantine-{cls.STORE}-"))
        cls.dovecot, cls.gateway, cls.db = None, None, None
        try:
            cls._start()
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def _start(cls):
        certs = cls.dir / "certs"
        ca = harness.make_ca(certs)
        cert = harness.make_cert(ca, certs, ["mx.example.org"])
        cls.dovecot = harness.Dovecot(cls.dir / "storage", USERS, name="q").start()
        users_file = str(cls.dir / "users.passwd")
        harness.write_passwd(users_file, {**USERS, GHOST: "ghost-pw"})  # not on the node
        cls.port, cls.admin = harness.free_ports(2)
        text = harness.mailgate_config(
            certificates=[cert], users_file=users_file,
            listeners=[{"name": "mx", "protocol": "smtp", "port": cls.port}],
            backends=[{"name": "storage-01", "imap": cls.dovecot.imap_port, "lmtp": cls.dovecot.lmtp_port}],
            routes=[{"domain": "*", "primary": "storage-01"}])
        text = cls.directory(text)
        text += harness.admin_block(cls.admin, cls.dir)
        text += POLICY + "hooks:\n" + cls.store_block()
        cls.gateway = harness.Mailgate(cls.dir, text).start()
        harness.wait_port(cls.admin, 10)

    @classmethod
    def _stop(cls):
        if cls.gateway is not None:
            cls.gateway.stop()
        if cls.dovecot is not None:
            cls.dovecot.stop()
        if cls.db is not None:
            cls.db.stop(mode="immediate")
        harness.remove_workdir(cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls._stop()

    def diagnostics(self) -> str:
        return (f"--- mailgate log (tail) ---\n{self.gateway.log_text()[-6000:]}\n"
                f"--- dovecot log (tail) ---\n{self.dovecot.log_text()[-2000:]}")

    # -- helpers
    def http(self, method: str, path: str) -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", method=method,
                                     headers=harness.admin_headers())
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def entries(self) -> dict[str, dict]:
        status, body = self.http("GET", "/quarantine")
        self.assertEqual(status, 200, body)
        return {e["id"]: e for e in json.loads(body)}

    def cli(self, *args: str):
        return harness.run_mailgate("--config", str(self.gateway.config_path), *args, timeout=60)

    def metric(self, name: str) -> int:
        for line in self.http("GET", "/metrics")[1].splitlines():
            if line.startswith(name + " "):
                return int(line.split()[1])
        self.fail(f"{name} missing from /metrics")

    def delivered(self, marker: bytes) -> list[bytes]:
        local, _, domain = ALICE.partition("@")
        base = self.dovecot.mail_dir / domain / local / "Maildir"
        out = []
        for sub in ("new", "cur"):
            for p in sorted((base / sub).glob("*")) if base.exists() else []:
                try:
                    data = p.read_bytes()
                except OSError:
                    continue
                if marker in data:
                    out.append(data)
        return out

    def send(self, sender: str, msg: bytes, rcpts: tuple[str, ...] = (ALICE,)) -> tuple[int, str]:
        s = smtplib.SMTP(harness.HOST, self.port, timeout=30)
        try:
            self.assertEqual(s.ehlo("client.example.com")[0], 250)
            code, text = s.mail(sender)
            self.assertEqual(code, 250, text)
            for rcpt in rcpts:
                code, text = s.rcpt(rcpt)
                self.assertEqual(code, 250, text)
            try:
                code, text = s.data(msg)
            except smtplib.SMTPDataError as e:
                code, text = e.smtp_code, e.smtp_error
            s.quit()
        finally:
            s.close()
        return code, text.decode() if isinstance(text, bytes) else text

    def quarantine_one(self, subject: str, rcpts: tuple[str, ...] = (ALICE,)) -> str:
        code, text = self.send("bad@suspect.example", message(subject, "bad@suspect.example"), rcpts)
        self.assertEqual(code, 250, f"DATA: {code} {text!r}\n{self.diagnostics()}")
        self.assertIn("(quarantined)", text)
        qid = text.split("queued as ")[1].split()[0]
        self.assertRegex(qid, r"^[0-9a-f]{24}$")
        return qid

    # -- tests
    def test_1_quarantined_listed_released_once(self):
        subject = f"held {time.time_ns()}"
        stored_before = self.metric("mailgate_quarantine_stored_total")
        qid = self.quarantine_one(subject)
        # A clean sender still goes straight to the node: the node works.
        clean = f"clean {time.time_ns()}"
        code, text = self.send("ok@example.com", message(clean, "ok@example.com"))
        self.assertEqual(code, 250, text)
        harness.wait_for(lambda: self.delivered(clean.encode()), 10, what="the clean message delivered")
        self.assertEqual(self.delivered(subject.encode()), [], "a quarantined message reached the node")

        entry = self.entries().get(qid)
        self.assertIsNotNone(entry, f"{qid} not listed")
        self.assertEqual(entry["mail_from"], "<bad@suspect.example>")
        self.assertEqual(entry["rcpts"], [f"<{ALICE}>"])
        self.assertEqual(entry["filter"], "policy")
        self.assertIn("hold-suspect", entry["reason"] + entry["filter"])
        self.assertEqual(entry["listener"], "mx")
        self.assertGreater(entry["size"], 0)
        status, body = self.http("GET", f"/quarantine/{qid}")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["id"], qid)
        self.assertEqual(self.http("GET", "/quarantine/" + "0" * 24)[0], 404)
        self.assertEqual(self.metric("mailgate_quarantine_stored_total"), stored_before + 1)
        line = harness.wait_for(lambda: [l for l in self.gateway.log_lines()
                                         if l.get("msg") == "smtp message quarantined" and l.get("id") == qid],
                                5, what="the quarantine log line")[0]
        self.assertTrue(line.get("ref"), line)

        r = self.cli("--quarantine")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn(qid, r.stdout)
        self.assertIn("<bad@suspect.example>", r.stdout)

        r = self.cli("--release", qid)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + self.diagnostics())
        self.assertIn(f"released {qid}", r.stdout)
        copies = harness.wait_for(lambda: self.delivered(subject.encode()), 10, what="the released message")
        self.assertEqual(len(copies), 1)
        self.assertIn(b"\r\n.leading dot\r\n", copies[0].replace(b"\n", b"\r\n").replace(b"\r\r", b"\r"))
        # Again: refused cleanly, and still one copy.
        r = self.cli("--release", qid)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("HTTP 404", r.stderr)
        self.assertEqual(self.http("POST", f"/quarantine/{qid}/release")[0], 404)
        time.sleep(0.5)
        self.assertEqual(len(self.delivered(subject.encode())), 1, "released twice")
        self.assertNotIn(qid, self.entries())
        self.assertGreaterEqual(self.metric("mailgate_quarantine_released_total"), 1)

    def test_2_delete(self):
        subject = f"deleted {time.time_ns()}"
        qid = self.quarantine_one(subject)
        r = self.cli("--delete", qid)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn(qid, self.entries())
        self.assertEqual(self.http("DELETE", f"/quarantine/{qid}")[0], 404)
        self.assertEqual(self.cli("--release", qid).returncode, 1)
        self.assertEqual(self.delivered(subject.encode()), [])
        self.assertGreaterEqual(self.metric("mailgate_quarantine_deleted_total"), 1)

    def test_3_partial_release_keeps_the_entry_and_never_delivers_twice(self):
        subject = f"partial {time.time_ns()}"
        qid = self.quarantine_one(subject, (ALICE, GHOST))
        status, body = self.http("POST", f"/quarantine/{qid}/release")
        self.assertEqual(status, 502, body + self.diagnostics())
        outcome = json.loads(body)
        self.assertFalse(outcome["released"])
        self.assertEqual(outcome["delivered"], [f"<{ALICE}>"])
        self.assertEqual([f["rcpt"] for f in outcome["failed"]], [f"<{GHOST}>"])
        harness.wait_for(lambda: self.delivered(subject.encode()), 10, what="the accepted recipient's copy")
        entry = self.entries()[qid]
        self.assertEqual(entry["delivered"], [f"<{ALICE}>"])
        # Again: the recipient already served is skipped; the entry stays for the other.
        r = self.cli("--release", qid)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("HTTP 502", r.stderr)
        time.sleep(0.5)
        self.assertEqual(len(self.delivered(subject.encode())), 1, "delivered twice to the same recipient")
        self.assertEqual(self.cli("--delete", qid).returncode, 0)

    def test_9_retention_removes_old_entries(self):
        qid = self.quarantine_one(f"expires {time.time_ns()}")
        self.assertIn(qid, self.entries())
        # A reload with a short retention: the sweep (every half retention, at least 1s) removes it.
        self.gateway.config_path.write_text(self.gateway.config_text.replace(
            f"retention: {RETENTION}", f"retention: {SHORT_RETENTION}"))
        self.gateway.reload()
        harness.wait_for(lambda: qid not in self.entries(), 15, what="the entry expired by the retention sweep")
        harness.wait_for(lambda: [l for l in self.gateway.log_lines() if l.get("msg") == "quarantine entries expired"],
                         5, what="the sweep's log line")


class DirQuarantineTest(QuarantineCase):
    STORE = "dir"

    def test_4_unwritable_store_answers_451(self):
        if os.geteuid() == 0:
            # root writes through permissions: make the store's directory a file instead.
            qdir = self.dir / "quarantine"
            moved = self.dir / "quarantine.moved"
            qdir.rename(moved)
            qdir.write_text("not a directory")
            try:
                code, text = self.send("bad@suspect.example", message("unstored", "bad@suspect.example"))
            finally:
                qdir.unlink()
                moved.rename(qdir)
        else:
            qdir = self.dir / "quarantine"
            qdir.chmod(0o500)
            try:
                code, text = self.send("bad@suspect.example", message("unstored", "bad@suspect.example"))
            finally:
                qdir.chmod(0o750)
        self.assertEqual(code, 451, text)
        self.assertTrue(text.startswith("4.3.0"), text)
        harness.wait_for(lambda: [l for l in self.gateway.log_lines() if l.get("msg") == "smtp message not quarantined"],
                         5, what="a log line for the failed quarantine")
        self.assertEqual(self.delivered(b"unstored"), [])


class PostgresQuarantineTest(QuarantineCase):
    STORE = "postgres"

    @classmethod
    def store_block(cls) -> str:
        return f"  quarantine: {{ store: postgres, retention: {RETENTION} }}\n"

    @classmethod
    def directory(cls, text: str) -> str:
        if not pg.available():
            raise AssertionError("PostgreSQL 15 binaries not found (scripts/deps.sh installs them)")
        cls.db = pg.Postgres(cls.dir, name="pg").start()
        cfg = cls.dir / "initdb.yaml"
        cfg.write_text(postgres_directory(cls.db.conninfo()) + "listeners: [{ name: l, protocol: imap, "
                       "listen: \"127.0.0.1:1\" }]\nbackends: [{ name: b, host: 127.0.0.1, ports: { imap: 1 } }]\n")
        r = harness.run_mailgate("--init-db", str(cfg))
        if r.returncode != 0:
            raise AssertionError("--init-db failed: " + r.stdout + r.stderr)
        domain = ALICE.partition("@")[2]
        sql = [f"INSERT INTO domains (name) VALUES ({pg.sql_quote(domain)});"]
        for user in (ALICE, GHOST):
            sql.append(f"INSERT INTO mailboxes (address, domain, password) VALUES ({pg.sql_quote(user)}, "
                       f"{pg.sql_quote(domain)}, {pg.sql_quote(harness.hash_password('pw', 'SHA256-CRYPT'))});")
        cls.db.psql("\n".join(sql))
        return with_directory(text, postgres_directory(cls.db.conninfo()))

    def test_4_rows_in_the_table(self):
        qid = self.quarantine_one(f"row {time.time_ns()}")
        out = self.db.psql(f"SELECT mail_from, size > 0, length(message) = size FROM mailgate_quarantine "
                           f"WHERE id = {pg.sql_quote(qid)}")
        self.assertEqual(out.strip().replace(" ", ""), "<bad@suspect.example>|t|t")
        self.assertEqual(self.cli("--delete", qid).returncode, 0)


del QuarantineCase

if __name__ == "__main__":
    unittest.main()
