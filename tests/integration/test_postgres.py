"""The postgres directory through mailgate to real Dovecot nodes: the default schema
(mailgate --init-db) with every password scheme, routing from the routes/nodes
tables with NOTIFY, a database outage, libpq multi-host failover, and the legacy
schema of seed 004 (mail, ldomain, mdomain, maps) configured by queries alone.

PostgreSQL 15 runs from /usr/lib/postgresql/15/bin in the test's work directory
(tests/integration/pg.py). Tests in a class run in name order (they share state)."""

from __future__ import annotations

import hashlib
import imaplib
import json
import re
import shutil
import subprocess
import time
import unittest
from pathlib import Path

import harness
import pg
from fixtures import NET_NAMES, ORG_NAMES

UNAVAILABLE_IMAP = "NO [UNAVAILABLE]"
UNAVAILABLE_POP3 = "-ERR [SYS/TEMP]"
AUTH_FAILED = "NO [AUTHENTICATIONFAILED]"

# One user per password scheme (DESIGN: the schemes of the directory).
SCHEME_USERS = {
    "PLAIN": "plain@example.org",
    "PLAIN-MD5": "plainmd5@example.org",
    "MD5": "md5hex@example.org",  # legacy bare 32-hex value, as in seed 004
    "SHA256-CRYPT": "sha256@example.org",
    "SHA512-CRYPT": "sha512@example.org",
    "BLF-CRYPT": "blf@example.org",
    "ARGON2ID": "argon@example.org",
}
ALICE, ALICE_PW = "alice@example.org", "alice-password"
BOB, BOB_PW = "bob@example.org", "bob-password"
CAROL, CAROL_PW = "carol@example.org", "carol-password"


def password_of(user: str) -> str:
    return user.split("@")[0] + "-pw"


def stored_hash(scheme: str, password: str) -> str:
    if scheme == "MD5":
        return "{MD5}" + hashlib.md5(password.encode()).hexdigest()  # legacy hex, as in seed 004
    return harness.hash_password(password, scheme)


def postgres_directory(conninfo: str, *, queries: dict | None = None, refresh: str = "30s",
                       default_scheme: str = "SHA512-CRYPT", cache: str = "{ ttl: 60s, negative_ttl: 1s }",
                       timeout: str = "1s") -> str:
    lines = ["directory:", "  driver: postgres", "  postgres:",
             f"    conninfo: {json.dumps(conninfo)}",
             "    pool: 4", f"    timeout: {timeout}", f"    refresh: {refresh}",
             f"    default_scheme: {default_scheme}"]
    if queries:
        lines.append("    queries:")
        for k, v in queries.items():
            lines.append(f"      {k}: {json.dumps(' '.join(v.split()))}")
    lines.append(f"  cache: {cache}")
    return "\n".join(lines) + "\n"


def with_directory(config_text: str, directory: str) -> str:
    """Replaces the file directory block written by harness.mailgate_config."""
    out, skipping = [], False
    for line in config_text.splitlines(keepends=True):
        if line.startswith("directory:"):
            skipping = True
            out.append(directory)
            continue
        if skipping and line.startswith("  "):
            continue
        skipping = False
        out.append(line)
    return "".join(out)


_SUPPORT: tuple[bool, str] | None = None


def gateway_has_postgres() -> tuple[bool, str]:
    """Whether the mailgate binary under test accepts directory.driver postgres."""
    global _SUPPORT
    if _SUPPORT is None:
        d = Path(harness.make_workdir("mailgate-pgcheck-"))
        try:
            cfg = d / "check.yaml"
            cfg.write_text(postgres_directory("host=127.0.0.1 port=1 dbname=x")
                           + "listeners: [{ name: l, protocol: imap, listen: \"127.0.0.1:1\" }]\n"
                           "backends: [{ name: b, host: 127.0.0.1, ports: { imap: 1 } }]\n")
            r = harness.run_mailgate("--check-config", str(cfg))
            _SUPPORT = (r.returncode == 0, (r.stdout + r.stderr).strip())
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return _SUPPORT


class PgGatewayCase(unittest.TestCase):
    """Base: a CA, NODES Dovecots (same users), PostgreSQL cluster(s), mailgate in front."""

    NODES = 2
    BACKEND_NAMES = ["storage-01", "storage-02"]
    CLUSTERS = 1
    LOG_LEVEL = "info"
    USERS: dict[str, str] = {}
    env_dir: Path

    @classmethod
    def directory_block(cls) -> str:
        raise NotImplementedError

    @classmethod
    def fill_database(cls, db: pg.Postgres) -> None:
        raise NotImplementedError

    @classmethod
    def setUpClass(cls):
        # scripts/deps.sh installs PostgreSQL 15 and mailgate has the driver: a missing
        # piece is a failure here, never a silent skip.
        if not pg.available():
            raise AssertionError("PostgreSQL 15 binaries not found (scripts/deps.sh installs them)")
        supported, why = gateway_has_postgres()
        if not supported:
            raise AssertionError(f"mailgate rejects the postgres driver: {why}")
        cls.dir = Path(harness.make_workdir(f"mailgate-{cls.__name__.lower()}-"))
        cls.dovecots, cls.dbs, cls.gateway = [], [], None
        try:
            cls._start()
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def _start(cls):
        certs = cls.dir / "certs"
        cls.ca = harness.make_ca(certs)
        cls.cert_org = harness.make_cert(cls.ca, certs, ORG_NAMES)
        cls.cert_net = harness.make_cert(cls.ca, certs, NET_NAMES)
        cls.context = harness.client_context(cls.ca.cert)
        for i in range(cls.NODES):
            d = harness.Dovecot(cls.dir / f"node-{i + 1}", cls.USERS, name=f"s{i + 1}")
            d.start()
            cls.dovecots.append(d)
        for i in range(cls.CLUSTERS):
            db = pg.Postgres(cls.dir, name=f"pg{i + 1}").start()
            cls.dbs.append(db)
            cls.fill_database(db)
        names = ["imaps", "pop3s"]
        cls.ports = dict(zip(names, harness.free_ports(len(names))))
        listeners = [{"name": "imaps", "protocol": "imap", "port": cls.ports["imaps"], "tls": "implicit"},
                     {"name": "pop3s", "protocol": "pop3", "port": cls.ports["pop3s"], "tls": "implicit"}]
        backends = [{"name": cls.BACKEND_NAMES[i], "imap": d.imap_port, "pop3": d.pop3_port,
                     "lmtp": d.lmtp_port, "health_interval": "1s", "health_timeout": "1s"}
                    for i, d in enumerate(cls.dovecots)]
        routes = [{"domain": "*", "primary": cls.BACKEND_NAMES[0]}]
        text = harness.mailgate_config(certificates=[cls.cert_org, cls.cert_net], listeners=listeners,
                                       users_file="unused", backends=backends, routes=routes,
                                       log_level=cls.LOG_LEVEL)
        cls.config_text = with_directory(text, cls.directory_block())
        cls.gateway = harness.Mailgate(cls.dir, cls.config_text)
        cls.gateway.start()
        cls.prepare()

    @classmethod
    def prepare(cls):
        pass

    @classmethod
    def _stop(cls):
        try:
            if cls.gateway is not None:
                cls.gateway.stop()  # may raise harness.SanitizerReport: the rest stops all the same
        finally:
            for d in cls.dovecots:
                d.stop()
            for db in cls.dbs:
                db.stop(mode="immediate")
            harness.remove_workdir(cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls._stop()

    def diagnostics(self) -> str:
        out = ["--- mailgate log (tail) ---\n" + self.gateway.log_text()[-4000:]]
        for d in self.dovecots:
            out.append(f"--- {d.name} log (tail) ---\n" + d.log_text()[-1500:])
        for db in self.dbs:
            out.append(f"--- {db.dir.name} log (tail) ---\n" + db.log_text()[-1500:])
        return "\n".join(out)

    # ------------------------------------------------------------------ clients
    def imap_login(self, user: str, password: str) -> str:
        """The tagged reply to LOGIN through the gateway."""
        c, _ = harness.imap_client(self.ports["imaps"], tls=True, context=self.context)
        try:
            return c.command("a", f"LOGIN {harness.imap_quote(user)} {harness.imap_quote(password)}",
                             timeout=20)[-1]
        finally:
            c.close()

    def pop3_login(self, user: str, password: str) -> str:
        c, _ = harness.pop3_client(self.ports["pop3s"], tls=True, context=self.context)
        try:
            c.send_line(f"USER {user}")
            c.read_line(10)
            c.send_line(f"PASS {password}")
            return c.read_line(20)
        finally:
            c.close()

    def imap_node(self, user: str, password: str) -> str:
        """Logs in and returns the node marker (last word of message 1's subject)."""
        return harness.imap_node_marker(self.ports["imaps"], self.context, user, password)

    def wait_node(self, user: str, password: str, node: str, within: float) -> float:
        """Polls new sessions until one lands on node; returns the seconds it took."""
        start = time.monotonic()
        seen = None
        while time.monotonic() - start < within:
            seen = self.imap_node(user, password)
            if seen == node:
                return time.monotonic() - start
            time.sleep(0.02)
        self.fail(f"sessions still land on {seen}, not {node}, {within}s after the change\n"
                  + self.diagnostics())

    @classmethod
    def mark_nodes(cls, user: str):
        for i, d in enumerate(cls.dovecots):
            d.deliver(user, f"stored on {cls.BACKEND_NAMES[i]}")


# ====================================================================== default schema

class PostgresDefaultSchemaTest(PgGatewayCase):
    USERS = {**{u: password_of(u) for u in SCHEME_USERS.values()},
             ALICE: ALICE_PW, BOB: BOB_PW, CAROL: CAROL_PW}

    @classmethod
    def directory_block(cls) -> str:
        return postgres_directory(cls.dbs[0].conninfo())

    @classmethod
    def fill_database(cls, db):
        cls.init_db_outputs = []
        for _ in range(2):
            cfg = cls.dir / "initdb.yaml"
            cfg.write_text(postgres_directory(db.conninfo()) + "listeners: [{ name: l, protocol: imap, "
                           "listen: \"127.0.0.1:1\" }]\nbackends: [{ name: b, host: 127.0.0.1, "
                           "ports: { imap: 1 } }]\n")
            r = harness.run_mailgate("--init-db", str(cfg))
            cls.init_db_outputs.append((r.returncode, r.stdout + r.stderr))
        sql = ["INSERT INTO domains (name) VALUES ('example.org');",
               "INSERT INTO nodes (name, host, imap_port) VALUES ('storage-01', '127.0.0.1', NULL), "
               "('storage-02', '127.0.0.1', NULL);",
               "INSERT INTO routes VALUES ('example.org', 'storage-01', 'storage-02');"]
        for scheme, user in SCHEME_USERS.items():
            sql.append(f"INSERT INTO mailboxes (address, domain, password) VALUES ({pg.sql_quote(user)}, "
                       f"'example.org', {pg.sql_quote(stored_hash(scheme, password_of(user)))});")
        for user, pw in ((ALICE, ALICE_PW), (BOB, BOB_PW), (CAROL, CAROL_PW)):
            sql.append(f"INSERT INTO mailboxes (address, domain, password) VALUES ({pg.sql_quote(user)}, "
                       f"'example.org', {pg.sql_quote(harness.hash_password(pw, 'SHA256-CRYPT'))});")
        db.psql("\n".join(sql))

    @classmethod
    def prepare(cls):
        cls.mark_nodes(ALICE)
        cls.mark_nodes(CAROL)

    def test_0_init_db_twice_is_a_no_op(self):
        (rc1, out1), (rc2, out2) = self.init_db_outputs
        self.assertEqual(rc1, 0, out1)
        self.assertIn("applied 1, 2, 3, 4, 5", out1)
        self.assertEqual(rc2, 0, out2)
        self.assertIn("up to date", out2)
        self.assertEqual(self.dbs[0].psql("SELECT version FROM mailgate_schema").strip(), "5")

    def test_1_each_password_scheme_logs_in(self):
        for scheme, user in SCHEME_USERS.items():
            with self.subTest(scheme=scheme):
                reply = self.imap_login(user, password_of(user))
                self.assertTrue(reply.startswith("a OK"), f"{scheme}: {reply}\n{self.diagnostics()}")
                self.assertTrue(self.imap_login(user, "wrong-password").startswith("a " + AUTH_FAILED))
        self.assertTrue(self.pop3_login(SCHEME_USERS["ARGON2ID"], password_of(SCHEME_USERS["ARGON2ID"]))
                        .startswith("+OK"))
        self.assertTrue(self.imap_login("nobody@example.org", "x").startswith("a " + AUTH_FAILED))

    def test_1b_auth_test_and_route_on_the_database(self):
        """--auth-test and --route ask the same PostgreSQL directory the gateway uses."""
        def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
            return subprocess.run([harness.mailgate_bin(), "--config", str(self.gateway.config_path), *args],
                                  input=stdin, capture_output=True, text=True, timeout=30)
        r = cli("--auth-test", ALICE, stdin=ALICE_PW + "\n")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, rf"(?m)^ok: {re.escape(ALICE)}$")
        self.assertNotIn(ALICE_PW, r.stdout + r.stderr)
        r = cli("--auth-test", ALICE, stdin="wrong-password\n")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"(?m)^failed: ")
        r = cli("--auth-test", "nobody@example.org", stdin="x\n")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        r = cli("--route", BOB)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"(?m)^failover order: storage-01, storage-02$")

    def test_2_disabled_mailbox_and_domain(self):
        self.dbs[0].psql(f"UPDATE mailboxes SET active = false WHERE address = {pg.sql_quote(BOB)}")
        try:
            self.assertTrue(self.imap_login(BOB, BOB_PW).startswith("a " + AUTH_FAILED))
        finally:
            self.dbs[0].psql(f"UPDATE mailboxes SET active = true WHERE address = {pg.sql_quote(BOB)}")

    def test_3_route_change_moves_new_sessions_within_a_second(self):
        self.assertEqual(self.imap_node(ALICE, ALICE_PW), "storage-01")
        idle = imaplib.IMAP4_SSL(harness.HOST, self.ports["imaps"], ssl_context=self.context, timeout=10)
        try:
            idle.login(ALICE, ALICE_PW)
            idle.select("INBOX")
            idle.send(b"i1 IDLE\r\n")
            self.assertTrue(idle.readline().startswith(b"+"), "no IDLE continuation")
            self.dbs[0].psql("UPDATE routes SET primary_node = 'storage-02', secondary_node = 'storage-01' "
                             "WHERE domain = 'example.org'")
            took = self.wait_node(ALICE, ALICE_PW, "storage-02", 1.0)
            self.assertLess(took, 1.0)
            # the established session stays on storage-01 and is still alive
            idle.send(b"DONE\r\n")
            self.assertTrue(idle.readline().startswith(b"i1 OK"), "IDLE session did not survive")
            typ, data = idle.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            self.assertEqual(typ, "OK")
            self.assertTrue(data[0][1].decode().strip().endswith("storage-01"))
            idle.logout()
        finally:
            try:
                idle.shutdown()
            except OSError:
                pass
            self.dbs[0].psql("UPDATE routes SET primary_node = 'storage-01', secondary_node = 'storage-02' "
                             "WHERE domain = 'example.org'")
        self.wait_node(ALICE, ALICE_PW, "storage-01", 1.0)

    def test_4_per_mailbox_override_and_node_drain(self):
        self.dbs[0].psql(f"UPDATE mailboxes SET route_primary = 'storage-02' WHERE address = {pg.sql_quote(CAROL)}")
        try:
            self.wait_node(CAROL, CAROL_PW, "storage-02", 1.0)
            self.assertEqual(self.imap_node(ALICE, ALICE_PW), "storage-01")
        finally:
            self.dbs[0].psql(f"UPDATE mailboxes SET route_primary = NULL WHERE address = {pg.sql_quote(CAROL)}")
        self.wait_node(CAROL, CAROL_PW, "storage-01", 1.0)
        self.dbs[0].psql("UPDATE nodes SET state = 'drain' WHERE name = 'storage-01'")
        try:
            self.wait_node(ALICE, ALICE_PW, "storage-02", 1.0)
        finally:
            self.dbs[0].psql("UPDATE nodes SET state = 'active' WHERE name = 'storage-01'")
        self.wait_node(ALICE, ALICE_PW, "storage-01", 1.0)

    def test_5_database_outage(self):
        db = self.dbs[0]
        self.assertTrue(self.imap_login(ALICE, ALICE_PW).startswith("a OK"))  # cached now
        db.stop()
        try:
            # a user not in the cache: temporary failure, never "wrong password"
            self.assertTrue(self.imap_login(BOB, BOB_PW).startswith("a " + UNAVAILABLE_IMAP),
                            self.diagnostics())
            self.assertTrue(self.pop3_login(BOB, BOB_PW).startswith(UNAVAILABLE_POP3))
            self.assertTrue(self.imap_login(BOB, "wrong").startswith("a " + UNAVAILABLE_IMAP))
            # a cached user still logs in, on the last known route
            self.assertEqual(self.imap_node(ALICE, ALICE_PW), "storage-01")
        finally:
            db.start()
        # the gateway recovers by itself (reconnect backoff is at most 1 s)
        harness.wait_for(lambda: self.imap_login(BOB, BOB_PW).startswith("a OK"), 15.0, 0.2,
                         "login after the database came back")
        # and the route watcher is listening again
        db.psql("UPDATE routes SET primary_node = 'storage-02' WHERE domain = 'example.org'")
        try:
            self.wait_node(ALICE, ALICE_PW, "storage-02", 8.0)
        finally:
            db.psql("UPDATE routes SET primary_node = 'storage-01' WHERE domain = 'example.org'")


# ====================================================================== map at start

class PostgresRouteMapAtStartTest(PgGatewayCase):
    """The first sessions after start and after a reload follow the directory's map,
    not routing.static (`*` → storage-01 here), although loading the map takes a second
    (the routes query sleeps): the gateway waits for its first map before it serves."""
    USERS = {ALICE: ALICE_PW}
    SLOW_MAP = 1.0

    @classmethod
    def directory_block(cls) -> str:
        slow_routes = (f"SELECT domain, primary_node, secondary_node FROM routes, pg_sleep({cls.SLOW_MAP}) "
                       "UNION ALL SELECT address, route_primary, route_secondary FROM mailboxes "
                       "WHERE route_primary IS NOT NULL")
        return postgres_directory(cls.dbs[0].conninfo(), queries={"routes": slow_routes}, timeout="3s")

    @classmethod
    def fill_database(cls, db):
        cfg = cls.dir / "initdb.yaml"
        cfg.write_text(postgres_directory(db.conninfo()) + "listeners: [{ name: l, protocol: imap, "
                       "listen: \"127.0.0.1:1\" }]\nbackends: [{ name: b, host: 127.0.0.1, "
                       "ports: { imap: 1 } }]\n")
        r = harness.run_mailgate("--init-db", str(cfg))
        if r.returncode != 0:
            raise AssertionError(f"mailgate --init-db failed: {r.stdout}{r.stderr}")
        db.psql("\n".join([
            "INSERT INTO domains (name) VALUES ('example.org');",
            "INSERT INTO nodes (name, host) VALUES ('storage-01', '127.0.0.1'), ('storage-02', '127.0.0.1');",
            "INSERT INTO routes VALUES ('example.org', 'storage-02', NULL);",
            f"INSERT INTO mailboxes (address, domain, password) VALUES ({pg.sql_quote(ALICE)}, "
            f"'example.org', {pg.sql_quote('{PLAIN}' + ALICE_PW)});"]))
        cls.mark_nodes(ALICE)  # before the gateway starts: the first session is the test

    def test_1_first_session_after_start_follows_the_map(self):
        self.assertEqual(self.imap_node(ALICE, ALICE_PW), "storage-02", self.diagnostics())

    def test_2_sessions_during_a_reload_follow_the_map(self):
        before = self.gateway.log_text().count("configuration reloaded")
        self.gateway.reload()
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            seen.append(self.imap_node(ALICE, ALICE_PW))
            if self.gateway.log_text().count("configuration reloaded") > before:
                break
        seen += [self.imap_node(ALICE, ALICE_PW) for _ in range(3)]  # the new snapshot's first sessions
        self.assertGreater(self.gateway.log_text().count("configuration reloaded"), before, self.diagnostics())
        self.assertEqual(set(seen), {"storage-02"}, self.diagnostics())

    def test_3_database_down_at_start_bounded_wait_then_the_map(self):
        self.gateway.stop()
        db = self.dbs[0]
        db.stop()
        try:
            started = time.monotonic()
            type(self).gateway = harness.Mailgate(self.dir, self.config_text)
            self.gateway.start()
            self.assertLess(time.monotonic() - started, 10.0)
            self.assertIn("routing map not loaded", self.gateway.log_text())
        finally:
            db.start()
        # logins, then the map, follow when the database does (reconnect backoff is at most 1 s)
        harness.wait_for(lambda: self.imap_login(ALICE, ALICE_PW).startswith("a OK"), 15.0, 0.2,
                         "login after the database came back")
        self.wait_node(ALICE, ALICE_PW, "storage-02", 10.0)

    def test_4_reload_with_the_database_down_keeps_the_map_and_the_cache(self):
        db = self.dbs[0]
        self.assertEqual(self.imap_node(ALICE, ALICE_PW), "storage-02")  # alice is in the auth cache now
        before = self.gateway.log_text().count("configuration reloaded")
        db.stop()
        try:
            self.gateway.reload()
            harness.wait_for(lambda: self.gateway.log_text().count("configuration reloaded") > before, 10.0,
                             what="the reload")
            log = self.gateway.log_text()
            self.assertIn("routing map not reloaded from the database: the previous map applies", log)
            self.assertIn("directory kept: its section is unchanged", log)
            # the cached user still logs in, and on the map's node, not routing.static's
            self.assertEqual(self.imap_node(ALICE, ALICE_PW), "storage-02", self.diagnostics())
        finally:
            db.start()
        harness.wait_for(lambda: self.imap_login(ALICE, ALICE_PW).startswith("a OK"), 15.0, 0.2,
                         "login after the database came back")
        self.assertEqual(self.imap_node(ALICE, ALICE_PW), "storage-02", self.diagnostics())

    def test_5_a_changed_directory_section_is_built_afresh(self):
        before = self.gateway.log_text().count('"directory ready"')
        reloads = self.gateway.log_text().count("configuration reloaded")
        self.gateway.write_config(self.config_text.replace("    pool: 4\n", "    pool: 3\n"))
        try:
            self.gateway.reload()
            harness.wait_for(lambda: self.gateway.log_text().count("configuration reloaded") > reloads, 10.0,
                             what="the reload")
            self.assertEqual(self.gateway.log_text().count('"directory ready"'), before + 1)
            self.assertEqual(self.imap_node(ALICE, ALICE_PW), "storage-02", self.diagnostics())
        finally:
            self.gateway.write_config(self.config_text)


# ====================================================================== multi-host

class PostgresMultiHostTest(PgGatewayCase):
    NODES = 1
    CLUSTERS = 2
    USERS = {ALICE: ALICE_PW, BOB: BOB_PW}

    @classmethod
    def directory_block(cls) -> str:
        a, b = cls.dbs
        conninfo = (f"host={harness.HOST},{harness.HOST} port={a.port},{b.port} dbname=mail user=postgres "
                    "target_session_attrs=read-write")
        # no cache: every login reaches the database
        return postgres_directory(conninfo, cache="{ ttl: 0s, negative_ttl: 0s }")

    @classmethod
    def fill_database(cls, db):
        cfg = cls.dir / f"initdb-{db.dir.name}.yaml"
        cfg.write_text(postgres_directory(db.conninfo()) + "listeners: [{ name: l, protocol: imap, "
                       "listen: \"127.0.0.1:1\" }]\nbackends: [{ name: b, host: 127.0.0.1, ports: { imap: 1 } }]\n")
        r = harness.run_mailgate("--init-db", str(cfg))
        assert r.returncode == 0, r.stdout + r.stderr
        sql = ["INSERT INTO domains (name) VALUES ('example.org');"]
        for user, pw in cls.USERS.items():
            sql.append(f"INSERT INTO mailboxes (address, domain, password) VALUES ({pg.sql_quote(user)}, "
                       f"'example.org', {pg.sql_quote('{PLAIN}' + pw)});")
        db.psql("\n".join(sql))

    def test_second_host_takes_over(self):
        self.assertTrue(self.imap_login(ALICE, ALICE_PW).startswith("a OK"), self.diagnostics())
        self.dbs[0].stop()
        try:
            harness.wait_for(lambda: self.imap_login(BOB, BOB_PW).startswith("a OK"), 15.0, 0.2,
                             "login through the second database host")
            self.assertTrue(self.pop3_login(ALICE, ALICE_PW).startswith("+OK"))
        finally:
            self.dbs[0].start()


# ====================================================================== seed 004 legacy schema

LEGACY_SCHEMA = """
CREATE TABLE mail (
  "id" BIGSERIAL PRIMARY KEY,
  "mailbox" CHARACTER VARYING(32) not null,
  "password" CHARACTER VARYING(128),
  "ldomain_id" int NOT NULL,
  "mdomain_id" int NOT NULL,
  active BOOLEAN DEFAULT TRUE NOT NULL,
  CONSTRAINT "mail_ldomain_id_check" CHECK (("ldomain_id" > 0))
);
CREATE TABLE "ldomain" (
  "id" BIGSERIAL PRIMARY KEY,
  "domain" CHARACTER VARYING(32) NOT NULL,
  "active" BOOLEAN DEFAULT TRUE NOT NULL,
  CONSTRAINT ldomain_k UNIQUE (domain)
);
CREATE TABLE "mdomain" (
  "id" BIGSERIAL PRIMARY KEY,
  "domain" CHARACTER VARYING(32) NOT NULL,
  "active" BOOLEAN DEFAULT TRUE NOT NULL,
  CONSTRAINT mdomain_k UNIQUE (domain)
);
CREATE TABLE "maps" (
  "id" SERIAL PRIMARY KEY,
  "ldomain_id" int NOT NULL,
  "mdomain_id" int NOT NULL,
  "storage1" CHARACTER VARYING(32) NOT NULL,
  "storage2" CHARACTER VARYING(32) NOT NULL,
  CONSTRAINT maps_ldomain_k UNIQUE (ldomain_id)
);
"""

# The queries of docs/postgres.md for the seed 004 schema.
LEGACY_QUERIES = {
    "password": """
        SELECT mail.password,
               (mail.active AND ldomain.active AND mdomain.active) AS active,
               mail.mailbox || '@' || ldomain.domain || '.' || mdomain.domain AS user
        FROM mail
        JOIN ldomain ON mail.ldomain_id = ldomain.id
        JOIN mdomain ON mail.mdomain_id = mdomain.id
        WHERE mail.mailbox = %{local_part} AND ldomain.domain || '.' || mdomain.domain = %{domain}""",
    "recipient": """
        SELECT 1 FROM mail
        JOIN ldomain ON mail.ldomain_id = ldomain.id
        JOIN mdomain ON mail.mdomain_id = mdomain.id
        WHERE mail.mailbox = %{local_part} AND ldomain.domain || '.' || mdomain.domain = %{domain}
          AND mail.active AND ldomain.active""",
    "routes": """
        SELECT ldomain.domain || '.' || mdomain.domain AS key, maps.storage1, maps.storage2
        FROM maps
        JOIN ldomain ON maps.ldomain_id = ldomain.id
        JOIN mdomain ON maps.mdomain_id = mdomain.id""",
}

BRANCH1 = "ivanov@branch1.domain.ru"
BRANCH2 = "petrov@branch2.domain.ru"
BRANCH2_OTHER = "sidorov@branch2.domain.ru"


class PostgresLegacySeed004Test(PgGatewayCase):
    BACKEND_NAMES = ["storage-01.domain.ru", "storage-02.domain.ru"]
    USERS = {BRANCH1: "ivanov-pw", BRANCH2: "petrov-pw", BRANCH2_OTHER: "sidorov-pw"}

    @classmethod
    def directory_block(cls) -> str:
        return postgres_directory(cls.dbs[0].conninfo(), queries=LEGACY_QUERIES, refresh="1s",
                                  default_scheme="MD5", cache="{ ttl: 60s, negative_ttl: 1s }")

    @classmethod
    def fill_database(cls, db):
        def md5(s: str) -> str:
            return hashlib.md5(s.encode()).hexdigest()
        db.psql(LEGACY_SCHEMA + f"""
INSERT INTO mdomain (id, domain) VALUES (2, 'domain.ru');
INSERT INTO ldomain (id, domain) VALUES (56, 'branch1'), (57, 'branch2');
INSERT INTO mail (mailbox, password, ldomain_id, mdomain_id) VALUES
  ('ivanov', '{md5("ivanov-pw")}', 56, 2), ('petrov', '{md5("petrov-pw")}', 57, 2),
  ('sidorov', '{md5("sidorov-pw")}', 57, 2);
INSERT INTO maps (ldomain_id, mdomain_id, storage1, storage2) VALUES
  (56, 2, 'storage-01.domain.ru', 'storage-02.domain.ru'),
  (57, 2, 'storage-02.domain.ru', 'storage-01.domain.ru');
""")

    @classmethod
    def prepare(cls):
        cls.mark_nodes(BRANCH1)
        cls.mark_nodes(BRANCH2)

    def test_1_login_and_routing_by_maps(self):
        harness.wait_for(lambda: self.imap_node(BRANCH2, "petrov-pw") == "storage-02.domain.ru", 5.0, 0.2,
                         "the maps table to be loaded")
        self.assertEqual(self.imap_node(BRANCH1, "ivanov-pw"), "storage-01.domain.ru")
        self.assertTrue(self.imap_login(BRANCH1, "wrong").startswith("a " + AUTH_FAILED))
        self.assertTrue(self.pop3_login(BRANCH2, "petrov-pw").startswith("+OK"))
        self.assertTrue(self.imap_login("sidorov@branch1.domain.ru", "x").startswith("a " + AUTH_FAILED))

    def test_2_maps_edit_is_picked_up_by_the_refresh_interval(self):
        # failover by hand, as in seed 004: edit maps.storage1 (no NOTIFY in this schema)
        self.dbs[0].psql("UPDATE maps SET storage1 = 'storage-02.domain.ru', storage2 = 'storage-01.domain.ru' "
                         "WHERE ldomain_id = 56")
        try:
            self.wait_node(BRANCH1, "ivanov-pw", "storage-02.domain.ru", 4.0)
        finally:
            self.dbs[0].psql("UPDATE maps SET storage1 = 'storage-01.domain.ru', "
                             "storage2 = 'storage-02.domain.ru' WHERE ldomain_id = 56")

    def test_3_inactive_mailbox_or_domain_is_refused(self):
        # Dovecot knows sidorov with this password: only the gateway's directory refuses him
        self.dbs[0].psql("UPDATE mail SET active = false WHERE mailbox = 'sidorov'")
        self.assertTrue(self.imap_login(BRANCH2_OTHER, "sidorov-pw").startswith("a " + AUTH_FAILED))
        self.dbs[0].psql("UPDATE mail SET active = true WHERE mailbox = 'sidorov'; "
                         "UPDATE ldomain SET active = false WHERE id = 57")
        try:
            time.sleep(1.1)  # negative_ttl
            self.assertTrue(self.imap_login(BRANCH2_OTHER, "sidorov-pw").startswith("a " + AUTH_FAILED))
        finally:
            self.dbs[0].psql("UPDATE ldomain SET active = true WHERE id = 57")
        time.sleep(1.1)
        self.assertTrue(self.imap_login(BRANCH2_OTHER, "sidorov-pw").startswith("a OK"))

if __name__ == "__main__":
    unittest.main()
