"""A route changed in the database reaches new sessions of users whose login is in the
auth cache, when the directory gives route hints (directory.postgres.queries.route):
a cached hint never wins over a routing map loaded after it was read.

- Seed 004 (mail, ldomain, mdomain, maps): the route query reads maps.storage1 for the
  user's domain, as the Perl auth_http handler did. Failover is an edit of
  maps.storage1; a cached user's next session lands on the new node within a second
  (NOTIFY trigger on maps), or within `refresh` without the trigger; and when the
  database goes down right after the gateway has the new map, the map still wins
  over the cached hint.
- The default schema with a per-user route that only the route query knows (the
  routes map lists domains only): a change to it reaches new sessions of the cached
  user within a second (the NOTIFY makes the cached hint stale; it is read again).

PostgreSQL, Dovecot and mailgate run as in test_postgres.py (tests/integration/pg.py)."""

from __future__ import annotations

import hashlib
import time
import unittest

import harness
import pg
from test_postgres import LEGACY_QUERIES, LEGACY_SCHEMA, PgGatewayCase, postgres_directory

BRANCH1, BRANCH1_PW = "ivanov@branch1.domain.ru", "ivanov-pw"
S1, S2 = "storage-01.domain.ru", "storage-02.domain.ru"

# The Perl handler's lookup: the primary storage of the user's domain.
LEGACY_ROUTE_QUERY = """
    SELECT maps.storage1 AS primary, maps.storage2 AS secondary
    FROM maps
    JOIN ldomain ON maps.ldomain_id = ldomain.id
    JOIN mdomain ON maps.mdomain_id = mdomain.id
    WHERE ldomain.domain || '.' || mdomain.domain = %{domain}"""

# docs/postgres.md: the trigger that makes maps edits instant.
MAPS_NOTIFY = """
CREATE FUNCTION mailgate_notify_routes() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_notify('mailgate_routes', TG_TABLE_NAME); RETURN NULL; END $$;
CREATE TRIGGER maps_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON maps
  FOR EACH STATEMENT EXECUTE FUNCTION mailgate_notify_routes();
"""

MAP_LOADED = "postgres routes: loaded"


class RouteHintCase(PgGatewayCase):
    LOG_LEVEL = "debug"  # the route watcher's "loaded" lines tell when a map has arrived

    def map_loads(self) -> int:
        return sum(1 for obj in self.gateway.log_lines() if obj.get("msg") == MAP_LOADED)

    def wait_map_loads(self, count: int, within: float = 5.0) -> None:
        harness.wait_for(lambda: self.map_loads() >= count, within, 0.02,
                         f"{count} routing map loads in the gateway log")


class LegacyMapsEdit:
    """Seed 004 with a route query; the test classes below (with RouteHintCase) set
    the trigger and the refresh. Not a TestCase itself, so it is not run alone."""
    BACKEND_NAMES = [S1, S2]
    USERS = {BRANCH1: BRANCH1_PW}
    NOTIFY = True
    REFRESH = "30s"
    WITHIN = 1.0  # a maps edit reaches new sessions within this many seconds

    @classmethod
    def directory_block(cls) -> str:
        return postgres_directory(cls.dbs[0].conninfo(), queries={**LEGACY_QUERIES, "route": LEGACY_ROUTE_QUERY},
                                  refresh=cls.REFRESH, default_scheme="MD5",
                                  cache="{ ttl: 60s, negative_ttl: 1s }")

    @classmethod
    def fill_database(cls, db):
        md5 = hashlib.md5(BRANCH1_PW.encode()).hexdigest()
        db.psql(LEGACY_SCHEMA + (MAPS_NOTIFY if cls.NOTIFY else "") + f"""
INSERT INTO mdomain (id, domain) VALUES (2, 'domain.ru');
INSERT INTO ldomain (id, domain) VALUES (56, 'branch1');
INSERT INTO mail (mailbox, password, ldomain_id, mdomain_id) VALUES ('ivanov', '{md5}', 56, 2);
INSERT INTO maps (ldomain_id, mdomain_id, storage1, storage2) VALUES (56, 2, '{S1}', '{S2}');
""")

    @classmethod
    def prepare(cls):
        cls.mark_nodes(BRANCH1)

    def set_storage(self, primary: str, secondary: str) -> None:
        self.dbs[0].psql(f"UPDATE maps SET storage1 = {pg.sql_quote(primary)}, "
                         f"storage2 = {pg.sql_quote(secondary)} WHERE ldomain_id = 56")

    def login_cached_on_storage_01(self) -> None:
        # a session on storage-01 leaves the login, with its route hint, in the cache
        self.wait_node(BRANCH1, BRANCH1_PW, S1, 5.0)
        self.assertEqual(self.imap_node(BRANCH1, BRANCH1_PW), S1)

    def test_1_maps_edit_moves_a_cached_user(self):
        self.login_cached_on_storage_01()
        self.set_storage(S2, S1)
        try:
            took = self.wait_node(BRANCH1, BRANCH1_PW, S2, self.WITHIN)
            self.assertLess(took, self.WITHIN)
            self.assertEqual(self.imap_node(BRANCH1, BRANCH1_PW), S2)
        finally:
            self.set_storage(S1, S2)
        self.wait_node(BRANCH1, BRANCH1_PW, S1, self.WITHIN + 1.0)

    def test_2_database_down_after_the_edit_the_newer_map_wins(self):
        db = self.dbs[0]
        self.login_cached_on_storage_01()
        # the edit, and the gateway has the new map; the user's cached hint still says storage-01
        if self.NOTIFY:  # the load that the notification starts, after the COMMIT
            loads = self.map_loads()
            self.set_storage(S2, S1)
            self.wait_map_loads(loads + 1)
        else:  # the second load to end after the COMMIT began after it
            self.set_storage(S2, S1)
            self.wait_map_loads(self.map_loads() + 2)
        db.stop(mode="immediate")
        try:
            self.assertEqual(self.imap_node(BRANCH1, BRANCH1_PW), S2, self.diagnostics())
            self.assertEqual(self.imap_node(BRANCH1, BRANCH1_PW), S2)
        finally:
            db.start()
            self.set_storage(S1, S2)
        # the database is back: the hint is read again and the restored route applies
        self.wait_node(BRANCH1, BRANCH1_PW, S1, 15.0)


class LegacyMapsEditNotifyTest(LegacyMapsEdit, RouteHintCase):
    """With the NOTIFY trigger of docs/postgres.md: within a second."""


class LegacyMapsEditRefreshTest(LegacyMapsEdit, RouteHintCase):
    """Without a trigger (the seed's schema as it is): the map is polled every
    `refresh`; a map that differs from the last one makes older hints stale."""
    NOTIFY = False
    REFRESH = "500ms"
    WITHIN = 2.0


# ====================================================================== per-user route

ALICE, ALICE_PW = "alice@example.org", "alice-password"
CAROL, CAROL_PW = "carol@example.org", "carol-password"

# Routes by domain only: carol's own route is known to the route query alone.
DOMAIN_ROUTES = "SELECT domain, primary_node, secondary_node FROM routes"
MAILBOX_ROUTE = ("SELECT route_primary AS primary, route_secondary AS secondary FROM mailboxes "
                 "WHERE lower(address) = %{user} AND route_primary IS NOT NULL")


class PerUserRouteQueryTest(RouteHintCase):
    NODES = 3
    BACKEND_NAMES = ["storage-01", "storage-02", "storage-03"]
    USERS = {ALICE: ALICE_PW, CAROL: CAROL_PW}

    @classmethod
    def directory_block(cls) -> str:
        return postgres_directory(cls.dbs[0].conninfo(), queries={"routes": DOMAIN_ROUTES, "route": MAILBOX_ROUTE},
                                  cache="{ ttl: 60s, negative_ttl: 1s }")

    @classmethod
    def fill_database(cls, db):
        cfg = cls.dir / "initdb.yaml"
        cfg.write_text(postgres_directory(db.conninfo()) + "listeners: [{ name: l, protocol: imap, "
                       "listen: \"127.0.0.1:1\" }]\nbackends: [{ name: b, host: 127.0.0.1, "
                       "ports: { imap: 1 } }]\n")
        r = harness.run_mailgate("--init-db", str(cfg))
        if r.returncode != 0:
            raise AssertionError(f"mailgate --init-db failed: {r.stdout}{r.stderr}")
        sql = ["INSERT INTO domains (name) VALUES ('example.org');",
               "INSERT INTO nodes (name, host) VALUES ('storage-01', '127.0.0.1'), ('storage-02', '127.0.0.1'), "
               "('storage-03', '127.0.0.1');",
               "INSERT INTO routes VALUES ('example.org', 'storage-01', NULL);"]
        for user, pw in ((ALICE, ALICE_PW), (CAROL, CAROL_PW)):
            sql.append(f"INSERT INTO mailboxes (address, domain, password) VALUES ({pg.sql_quote(user)}, "
                       f"'example.org', {pg.sql_quote('{PLAIN}' + pw)});")
        sql.append(f"UPDATE mailboxes SET route_primary = 'storage-02' WHERE address = {pg.sql_quote(CAROL)};")
        db.psql("\n".join(sql))

    @classmethod
    def prepare(cls):
        cls.mark_nodes(ALICE)
        cls.mark_nodes(CAROL)

    def set_carol(self, node: str) -> None:
        self.dbs[0].psql(f"UPDATE mailboxes SET route_primary = {pg.sql_quote(node)} "
                         f"WHERE address = {pg.sql_quote(CAROL)}")

    def test_1_per_user_route_change_reaches_a_cached_user_within_a_second(self):
        self.wait_node(CAROL, CAROL_PW, "storage-02", 5.0)
        self.assertEqual(self.imap_node(CAROL, CAROL_PW), "storage-02")  # cached now
        self.assertEqual(self.imap_node(ALICE, ALICE_PW), "storage-01")  # the map
        self.set_carol("storage-03")
        try:
            took = self.wait_node(CAROL, CAROL_PW, "storage-03", 1.0)
            self.assertLess(took, 1.0)
            self.assertEqual(self.imap_node(ALICE, ALICE_PW), "storage-01")
        finally:
            self.set_carol("storage-02")
        self.wait_node(CAROL, CAROL_PW, "storage-02", 1.0)


if __name__ == "__main__":
    unittest.main()
