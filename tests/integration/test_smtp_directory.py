"""The SMTP MX (listener protocol smtp) asking the postgres and http directories at
RCPT time, through mailgate into a real Dovecot LMTP node (Maildirs checked):

  - postgres, default schema (mailgate --init-db): mailbox and alias delivered,
    unknown mailbox 550 5.1.1, foreign or disabled domain 550 5.7.1, database
    stopped 451 4.3.0 without a crash, and recovery when it is back;
  - postgres, the legacy schema of seed 004 (mail, ldomain, mdomain, maps)
    configured by queries alone (queries.domain over ldomain/mdomain);
  - http: the auth_http responder (tests/integration/auth_http_responder.py)
    answering the recipient checks nginx sends for `smtp_auth none`.

Dovecot resolves the alias itself (a userdb entry with the target's home): the
gateway relays RCPT TO as the client gave it. Tests in a class run in name order."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import unittest
from pathlib import Path

import harness
import pg
from test_postgres import LEGACY_QUERIES, LEGACY_SCHEMA, gateway_has_postgres, postgres_directory, with_directory
from test_smtp import code, smtp_reply

ALICE, ALICE_PW = "alice@example.org", "alice-password"
BOB, BOB_PW = "bob@example.org", "bob-password"
CAROL, CAROL_PW = "carol@example.org", "carol-password"
ALIAS = "info@example.org"  # → alice
NODE = "storage-01"

# The legacy schema's domain query: a domain is local when maps names a node for it
# and its ldomain and mdomain rows are active (seed 004's Exim LOCAL_DOMAINS lookup).
LEGACY_DOMAIN_QUERY = """
    SELECT 1 FROM maps
    JOIN ldomain ON maps.ldomain_id = ldomain.id
    JOIN mdomain ON maps.mdomain_id = mdomain.id
    WHERE ldomain.domain || '.' || mdomain.domain = %{domain} AND ldomain.active AND mdomain.active"""
# Seed 004 has no aliases: a login sends as itself.
LEGACY_SENDER_QUERY = "SELECT 1 WHERE %{address}::text = %{user}::text"


class MxDirectoryCase(harness.LogsOnFailure, unittest.TestCase):
    """Base: one Dovecot node, mailgate with an MX listener in front, a directory."""

    USERS: dict[str, str] = {}
    ALIASES: dict[str, str] = {}  # alias → target, known to Dovecot's userdb
    maxDiff = None

    @classmethod
    def directory_block(cls) -> str:
        raise NotImplementedError

    @classmethod
    def start_directory(cls) -> None:
        raise NotImplementedError

    @classmethod
    def stop_directory(cls) -> None:
        pass

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir(f"mailgate-{cls.__name__.lower()}-"))
        cls.dovecot, cls.gateway = None, None
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
        cls.dovecot = harness.Dovecot(cls.dir / "node-1", cls.USERS, name="mx1")
        cls.add_dovecot_aliases()
        cls.dovecot.start()
        cls.start_directory()
        cls.mx_port = harness.free_port()
        listeners = [{"name": "mx", "protocol": "smtp", "port": cls.mx_port}]
        backends = [{"name": cls.node_name(), "imap": cls.dovecot.imap_port, "lmtp": cls.dovecot.lmtp_port,
                     "health_interval": "1s", "health_timeout": "1s"}]
        routes = [{"domain": "*", "primary": cls.node_name()}]
        text = harness.mailgate_config(certificates=[cert], listeners=listeners, users_file="unused",
                                       backends=backends, routes=routes)
        cls.gateway = harness.Mailgate(cls.dir, with_directory(text, cls.directory_block()))
        cls.gateway.start()

    @classmethod
    def node_name(cls) -> str:
        return NODE

    @classmethod
    def add_dovecot_aliases(cls):
        """Userdb entries for the aliases, with their target's home (Dovecot reads the
        passwd-file again when it changes)."""
        if not cls.ALIASES:
            return
        d = cls.dovecot
        lines = []
        for alias, target in cls.ALIASES.items():
            local, _, domain = target.partition("@")
            home = d.mail_dir / domain / local
            lines.append(f"{alias}:{{PLAIN}}{os.urandom(12).hex()}:{d.mail_uid}:{d.mail_gid}::{home}::")
        with open(d.passwd_path, "a") as f:
            f.write("\n".join(lines) + "\n")

    @classmethod
    def _stop(cls):
        try:
            if cls.gateway is not None:
                cls.gateway.stop()  # may raise harness.SanitizerReport: the rest stops all the same
        finally:
            cls.stop_directory()
            if cls.dovecot is not None:
                cls.dovecot.stop()
            harness.remove_workdir(cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls._stop()

    def diagnostics(self) -> str:
        out = ["--- mailgate log (tail) ---\n" + self.gateway.log_text()[-5000:]]
        if self.dovecot is not None:
            out.append("--- dovecot log (tail) ---\n" + self.dovecot.log_text()[-2000:])
        return "\n".join(out)

    # ------------------------------------------------------------------ SMTP
    def client(self) -> harness.LineClient:
        c = harness.LineClient(self.mx_port, timeout=10)
        self.addCleanup(c.close)
        self.assertEqual(code(smtp_reply(c)), "220")
        c.send_line("EHLO client.example.com")
        self.assertEqual(code(smtp_reply(c)), "250")
        return c

    def rcpt(self, address: str, c: harness.LineClient | None = None) -> str:
        """The last line of the reply to RCPT TO:<address> in a fresh transaction."""
        own = c is None
        if own:
            c = self.client()
            c.send_line("MAIL FROM:<sender@example.com>")
            self.assertEqual(code(smtp_reply(c)), "250")
        c.send_line(f"RCPT TO:<{address}>")
        line = smtp_reply(c, 15)[-1]
        if own:
            c.send_line("QUIT")
        return line

    def send(self, recipients: list[str], subject: str) -> None:
        c = self.client()
        c.send_line("MAIL FROM:<sender@example.com>")
        self.assertEqual(code(smtp_reply(c)), "250")
        for r in recipients:
            line = self.rcpt(r, c)
            self.assertTrue(line.startswith("250 "), f"RCPT {r}: {line}\n{self.diagnostics()}")
        c.send_line("DATA")
        self.assertEqual(code(smtp_reply(c)), "354")
        c.send((f"From: sender@example.com\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n"
                f"Message-ID: <{time.time_ns()}@test>\r\n\r\nHello.\r\n.\r\n").encode())
        line = smtp_reply(c, 20)[-1]
        self.assertTrue(line.startswith("250 "), f"end of DATA: {line}\n{self.diagnostics()}")
        c.send_line("QUIT")

    def maildir_has(self, mailbox: str, marker: str) -> bool:
        local, _, domain = mailbox.partition("@")
        base = self.dovecot.mail_dir / domain / local / "Maildir"
        for sub in ("new", "cur"):
            for p in (base / sub).glob("*") if (base / sub).exists() else []:
                try:
                    if marker.encode() in p.read_bytes():
                        return True
                except OSError:
                    pass
        return False

    def assert_delivered(self, mailbox: str, marker: str) -> None:
        harness.wait_for(lambda: self.maildir_has(mailbox, marker), 10.0, 0.05,
                         f"{marker!r} in {mailbox}'s Maildir")

    def assert_reply(self, address: str, prefix: str) -> None:
        line = self.rcpt(address)
        self.assertTrue(line.startswith(prefix), f"RCPT {address}: {line!r}, expected {prefix!r}\n"
                        + self.diagnostics())


# ====================================================================== postgres, default schema

class PostgresCase(MxDirectoryCase):
    db: pg.Postgres

    @classmethod
    def start_directory(cls):
        if not pg.available():
            raise AssertionError("PostgreSQL 15 binaries not found (scripts/deps.sh installs them)")
        supported, why = gateway_has_postgres()
        if not supported:
            raise AssertionError(f"mailgate rejects the postgres driver: {why}")
        cls.db = pg.Postgres(cls.dir, name="pg").start()
        cls.fill_database(cls.db)

    @classmethod
    def stop_directory(cls):
        db = getattr(cls, "db", None)
        if db is not None:
            db.stop(mode="immediate")

    def diagnostics(self) -> str:
        return super().diagnostics() + "\n--- postgres log (tail) ---\n" + self.db.log_text()[-1500:]


class SmtpPostgresDirectoryTest(PostgresCase):
    USERS = {ALICE: ALICE_PW, BOB: BOB_PW, CAROL: CAROL_PW}
    ALIASES = {ALIAS: ALICE}

    @classmethod
    def directory_block(cls) -> str:
        return postgres_directory(cls.db.conninfo(), cache="{ ttl: 60s, negative_ttl: 1s }")

    @classmethod
    def fill_database(cls, db):
        cfg = cls.dir / "initdb.yaml"
        cfg.write_text(postgres_directory(db.conninfo()) + "listeners: [{ name: l, protocol: smtp, "
                       "listen: \"127.0.0.1:1\" }]\nbackends: [{ name: b, host: 127.0.0.1, "
                       "ports: { lmtp: 1 } }]\n")
        r = harness.run_mailgate("--init-db", str(cfg))
        if r.returncode != 0:
            raise AssertionError(f"mailgate --init-db failed: {r.stdout}{r.stderr}")
        sql = ["INSERT INTO domains (name) VALUES ('example.org'), ('disabled.org');",
               "UPDATE domains SET active = false WHERE name = 'disabled.org';",
               f"INSERT INTO nodes (name, host) VALUES ('{NODE}', '127.0.0.1');",
               f"INSERT INTO routes VALUES ('example.org', '{NODE}', NULL);",
               f"INSERT INTO aliases (address, target) VALUES ({pg.sql_quote(ALIAS)}, {pg.sql_quote(ALICE)}),"
               " ('off@example.org', 'bob@example.org');",
               "UPDATE aliases SET active = false WHERE address = 'off@example.org';"]
        for user, pw in ((ALICE, ALICE_PW), (BOB, BOB_PW), (CAROL, CAROL_PW),
                         ("dave@disabled.org", "dave-pw")):
            sql.append(f"INSERT INTO mailboxes (address, domain, password) VALUES ({pg.sql_quote(user)}, "
                       f"{pg.sql_quote(user.split('@')[1])}, {pg.sql_quote('{PLAIN}' + pw)});")
        db.psql("\n".join(sql))

    def test_1_mailbox_delivered(self):
        marker = f"pg mailbox {time.time_ns()}"
        self.send([ALICE], marker)
        self.assert_delivered(ALICE, marker)

    def test_2_alias_delivered_to_its_target(self):
        marker = f"pg alias {time.time_ns()}"
        self.send([ALIAS], marker)
        self.assert_delivered(ALICE, marker)

    def test_3_case_of_the_local_part_does_not_matter(self):
        self.assert_reply("Alice@EXAMPLE.org", "250 ")

    def test_4_unknown_mailbox_550_511(self):
        self.assert_reply("nobody@example.org", "550 5.1.1")
        self.assert_reply("off@example.org", "550 5.1.1")  # a switched-off alias

    def test_5_foreign_or_disabled_domain_550_571(self):
        self.assert_reply("someone@example.com", "550 5.7.1")
        self.assert_reply("dave@disabled.org", "550 5.7.1")

    def test_6_new_mailbox_accepted_after_negative_ttl(self):
        self.assert_reply("erin@example.org", "550 5.1.1")
        self.db.psql("INSERT INTO mailboxes (address, domain, password) "
                     "VALUES ('erin@example.org', 'example.org', '{PLAIN}x')")
        harness.wait_for(lambda: self.rcpt("erin@example.org").startswith("250 "), 5.0, 0.2,
                         "the new mailbox to be accepted")

    def test_9_database_outage_451_then_recovery(self):
        self.db.stop()
        try:
            # not in the cache: temporary failure, never "unknown"
            self.assert_reply(BOB, "451 4.3.0")
            self.assert_reply("nobody-else@example.org", "451 4.3.0")
            self.assertTrue(self.gateway.is_running())
            # a recipient accepted a moment ago is still answered from the cache
            self.assert_reply(ALICE, "250 ")
        finally:
            self.db.start()
        # the gateway reconnects by itself (backoff at most 5 s)
        harness.wait_for(lambda: self.rcpt(BOB).startswith("250 "), 15.0, 0.2,
                         "RCPT accepted after the database came back")
        marker = f"pg after outage {time.time_ns()}"
        self.send([BOB], marker)
        self.assert_delivered(BOB, marker)
        self.assertTrue(self.gateway.is_running())


# ====================================================================== postgres, seed 004 schema

IVANOV = "ivanov@branch1.domain.ru"
PETROV = "petrov@branch2.domain.ru"


class SmtpPostgresLegacySeed004Test(PostgresCase):
    USERS = {IVANOV: "ivanov-pw", PETROV: "petrov-pw"}

    @classmethod
    def node_name(cls) -> str:
        return "storage-01.domain.ru"

    @classmethod
    def directory_block(cls) -> str:
        queries = {**LEGACY_QUERIES, "domain": LEGACY_DOMAIN_QUERY, "sender": LEGACY_SENDER_QUERY}
        return postgres_directory(cls.db.conninfo(), queries=queries, default_scheme="MD5",
                                  cache="{ ttl: 1s, negative_ttl: 1s }")

    @classmethod
    def fill_database(cls, db):
        def md5(s: str) -> str:
            return hashlib.md5(s.encode()).hexdigest()
        db.psql(LEGACY_SCHEMA + f"""
INSERT INTO mdomain (id, domain) VALUES (2, 'domain.ru'), (3, 'other.ru');
INSERT INTO ldomain (id, domain) VALUES (56, 'branch1'), (57, 'branch2'), (58, 'branch3');
INSERT INTO mail (mailbox, password, ldomain_id, mdomain_id) VALUES
  ('ivanov', '{md5("ivanov-pw")}', 56, 2), ('petrov', '{md5("petrov-pw")}', 57, 2);
INSERT INTO maps (ldomain_id, mdomain_id, storage1, storage2) VALUES
  (56, 2, 'storage-01.domain.ru', 'storage-01.domain.ru'),
  (57, 2, 'storage-01.domain.ru', 'storage-01.domain.ru');
""")

    def test_1_mailbox_delivered(self):
        marker = f"seed 004 {time.time_ns()}"
        self.send([IVANOV], marker)
        self.assert_delivered(IVANOV, marker)

    def test_2_unknown_mailbox_in_a_local_domain_550_511(self):
        self.assert_reply("sidorov@branch1.domain.ru", "550 5.1.1")

    def test_3_domains_without_maps_are_foreign_550_571(self):
        self.assert_reply("ivanov@domain.ru", "550 5.7.1")
        self.assert_reply("ivanov@branch3.domain.ru", "550 5.7.1")  # ldomain row, no maps row
        self.assert_reply("ivanov@branch1.other.ru", "550 5.7.1")

    def test_4_inactive_ldomain_is_not_local(self):
        self.assert_reply(PETROV, "250 ")
        self.db.psql("UPDATE ldomain SET active = false WHERE id = 57")
        try:
            harness.wait_for(lambda: self.rcpt(PETROV).startswith("550 5.7.1"), 5.0, 0.2,
                             "the inactive domain to be refused")
        finally:
            self.db.psql("UPDATE ldomain SET active = true WHERE id = 57")
        harness.wait_for(lambda: self.rcpt(PETROV).startswith("250 "), 5.0, 0.2,
                         "the domain to be local again")


# ====================================================================== http (auth_http)

RESPONDER = Path(__file__).resolve().parent / "auth_http_responder.py"


class SmtpHttpDirectoryTest(MxDirectoryCase):
    USERS = {ALICE: ALICE_PW, BOB: BOB_PW}
    ALIASES = {ALIAS: ALICE}
    BUSY = "busy@example.org"

    @classmethod
    def start_directory(cls):
        cls.responder = None
        cls.responder_port = harness.free_port()
        cls.tables_path = cls.dir / "auth_tables.json"
        cls.requests_path = cls.dir / "auth_requests.jsonl"
        cls.tables_path.write_text(json.dumps({
            "mail": {ALICE: hashlib.md5(ALICE_PW.encode()).hexdigest(),
                     BOB: hashlib.md5(BOB_PW.encode()).hexdigest()},
            "aliases": {ALIAS: ALICE},
            "maps": {"example.org": NODE},
            "nodes": {NODE: {"host": "127.0.0.1", "smtp": cls.dovecot.lmtp_port}},
            "rcpt_tempfail": [cls.BUSY],
        }))
        out = open(cls.dir / "auth_responder.out", "ab")
        cls.responder = subprocess.Popen(
            [sys.executable, str(RESPONDER), "--listen", f"127.0.0.1:{cls.responder_port}",
             "--config", str(cls.tables_path), "--log", str(cls.requests_path)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        out.close()
        harness.wait_port(cls.responder_port, 10)

    @classmethod
    def stop_directory(cls):
        r = getattr(cls, "responder", None)
        if r is not None and r.poll() is None:
            r.terminate()
            try:
                r.wait(10)
            except subprocess.TimeoutExpired:
                r.kill()
                r.wait()

    @classmethod
    def directory_block(cls) -> str:
        return ("directory:\n"
                "  driver: http\n"
                f"  http: {{ url: \"http://127.0.0.1:{cls.responder_port}/auth\", timeout: 2s }}\n"
                "  cache: { ttl: 0s, negative_ttl: 0s }\n")

    def requests(self) -> list[dict]:
        try:
            return [json.loads(l) for l in self.requests_path.read_text().splitlines() if l.strip()]
        except OSError:
            return []

    def test_1_mailbox_delivered_and_asked_as_nginx_does(self):
        marker = f"http mailbox {time.time_ns()}"
        self.send([ALICE], marker)
        self.assert_delivered(ALICE, marker)
        asked = [r for r in self.requests() if r["headers"].get("Auth-SMTP-To") == f"RCPT TO:<{ALICE}>"]
        self.assertTrue(asked, self.requests())
        h = asked[-1]["headers"]
        self.assertEqual(h["Auth-Method"], "none")
        self.assertEqual(h["Auth-User"], "")
        self.assertEqual(h["Auth-Protocol"], "smtp")
        # The session's envelope travels with the check, as nginx sends it.
        self.assertEqual(h["Auth-SMTP-From"], "MAIL FROM:<sender@example.com>")
        self.assertEqual(h["Auth-SMTP-Helo"], "client.example.com")
        self.assertEqual(h["Client-IP"], harness.HOST)
        self.assertEqual(asked[-1]["status"], "OK")

    def test_2_alias_delivered(self):
        marker = f"http alias {time.time_ns()}"
        self.send([ALIAS], marker)
        self.assert_delivered(ALICE, marker)

    def test_3_refusals(self):
        self.assert_reply("nobody@example.org", "550 5.1.1")
        self.assert_reply("someone@example.com", "550 5.7.1")
        self.assert_reply(self.BUSY, "451 4.3.0")

    def test_9_responder_down_451(self):
        self.stop_directory()
        harness.wait_port_closed(self.responder_port, 5)
        self.assert_reply(BOB, "451 4.3.0")
        self.assertTrue(self.gateway.is_running())


if __name__ == "__main__":
    unittest.main()
