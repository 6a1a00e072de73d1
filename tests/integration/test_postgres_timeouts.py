"""The postgres directory under a slow database: a query over directory.postgres.timeout
counts as "database down" for that login (a temporary failure, never a wrong-password
reply), other logins are not held up, and the cache counters reach /metrics."""

from __future__ import annotations

import re
import time
import urllib.request

import harness
import pg
from test_postgres import ALICE, ALICE_PW, PgGatewayCase, postgres_directory, with_directory  # noqa: F401

SLOW, SLOW_PW = "slow@example.org", "slow-password"

# The default password query, with a 3 s sleep for one mailbox (the timeout is 1 s).
SLOW_QUERY = ("SELECT m.password, (m.active AND d.active) AS active, m.address AS user "
              "FROM mailboxes m JOIN domains d ON d.name = m.domain "
              "WHERE lower(m.address) = %{user} "
              "AND pg_sleep(CASE WHEN m.address = 'slow@example.org' THEN 3 ELSE 0 END) IS NOT NULL")


class PostgresSlowQueryTest(PgGatewayCase):
    NODES = 1
    BACKEND_NAMES = ["storage-01"]
    USERS = {ALICE: ALICE_PW, SLOW: SLOW_PW}

    @classmethod
    def directory_block(cls) -> str:
        return postgres_directory(cls.dbs[0].conninfo(), queries={"password": SLOW_QUERY}, timeout="1s",
                                  cache="{ ttl: 60s, negative_ttl: 1s }")

    @classmethod
    def fill_database(cls, db):
        cfg = cls.dir / "initdb.yaml"
        cfg.write_text(postgres_directory(db.conninfo()) + "listeners: [{ name: l, protocol: imap, "
                       "listen: \"127.0.0.1:1\" }]\nbackends: [{ name: b, host: 127.0.0.1, ports: { imap: 1 } }]\n")
        r = harness.run_mailgate("--init-db", str(cfg))
        assert r.returncode == 0, r.stdout + r.stderr
        sql = ["INSERT INTO domains (name) VALUES ('example.org');"]
        for user, pw in cls.USERS.items():
            sql.append(f"INSERT INTO mailboxes (address, domain, password) VALUES ({pg.sql_quote(user)}, "
                       f"'example.org', {pg.sql_quote(harness.hash_password(pw, 'SHA256-CRYPT'))});")
        db.psql("\n".join(sql))

    @classmethod
    def _start(cls):
        cls.admin_port = harness.free_port()
        original = harness.mailgate_config

        def with_admin(**kw):
            return original(**kw) + f'admin: {{ listen: "127.0.0.1:{cls.admin_port}" }}\n'

        harness.mailgate_config = with_admin
        try:
            super()._start()
        finally:
            harness.mailgate_config = original
        harness.wait_port(cls.admin_port, 10)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def counter(self, text: str, name: str) -> int:
        m = re.search(rf"^{name} (\d+)$", text, re.M)
        self.assertIsNotNone(m, f"{name} missing:\n{text}")
        return int(m.group(1))

    def test_slow_query_is_a_temporary_failure(self):
        start = time.monotonic()
        reply = self.imap_login(SLOW, SLOW_PW)
        took = time.monotonic() - start
        self.assertTrue(reply.startswith("a NO [UNAVAILABLE]"), f"{reply}\n{self.diagnostics()}")
        self.assertLess(took, 2.9, "the reply waited for the slow query instead of the timeout")
        self.assertIn("-ERR [SYS/TEMP]", self.pop3_login(SLOW, SLOW_PW))
        # Other users are served meanwhile, and the database is not marked "down" for them.
        self.assertTrue(self.imap_login(ALICE, ALICE_PW).startswith("a OK"), self.diagnostics())

    def test_cache_counters_reach_metrics(self):
        before = self.metrics()
        hits0 = self.counter(before, "mailgate_directory_auth_cache_hits_total")
        self.assertTrue(self.imap_login(ALICE, ALICE_PW).startswith("a OK"))
        self.assertTrue(self.imap_login(ALICE, ALICE_PW).startswith("a OK"))
        after = self.metrics()
        self.assertGreaterEqual(self.counter(after, "mailgate_directory_auth_cache_hits_total"), hits0 + 1)
        self.assertGreaterEqual(self.counter(after, "mailgate_directory_auth_cache_misses_total"), 1)
