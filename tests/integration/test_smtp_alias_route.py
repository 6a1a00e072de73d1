"""An alias is routed to the node of its target mailbox. PostgreSQL default schema:
example.org lives on node 1, but carol has a per-mailbox route to node 2; mail for
team@example.org (an alias of carol's) must reach node 2, where carol's Maildir is."""

from __future__ import annotations

import os
import smtplib
import time

import harness
import pg
import test_smtp_directory as tsd

CAROL, CAROL_PW = tsd.CAROL, tsd.CAROL_PW
ALICE, ALICE_PW = tsd.ALICE, tsd.ALICE_PW
TEAM = "team@example.org"


class AliasRouteTest(tsd.PostgresCase):
    USERS = {ALICE: ALICE_PW, CAROL: CAROL_PW}

    @classmethod
    def directory_block(cls) -> str:
        return tsd.postgres_directory(cls.db.conninfo(), cache="{ ttl: 0s, negative_ttl: 0s }")

    @classmethod
    def fill_database(cls, db):
        cfg = cls.dir / "initdb.yaml"
        cfg.write_text(tsd.postgres_directory(db.conninfo()) + "listeners: [{ name: l, protocol: smtp, "
                       "listen: \"127.0.0.1:1\" }]\nbackends: [{ name: b, host: 127.0.0.1, "
                       "ports: { lmtp: 1 } }]\n")
        r = harness.run_mailgate("--init-db", str(cfg))
        if r.returncode != 0:
            raise AssertionError(f"mailgate --init-db failed: {r.stdout}{r.stderr}")
        sql = ["INSERT INTO domains (name) VALUES ('example.org');",
               "INSERT INTO nodes (name, host) VALUES ('node-1', '127.0.0.1'), ('node-2', '127.0.0.1');",
               "INSERT INTO routes VALUES ('example.org', 'node-1', NULL);",
               f"INSERT INTO aliases (address, target) VALUES ({pg.sql_quote(TEAM)}, {pg.sql_quote(CAROL)});"]
        for user, pw in ((ALICE, ALICE_PW), (CAROL, CAROL_PW)):
            sql.append(f"INSERT INTO mailboxes (address, domain, password) VALUES ({pg.sql_quote(user)}, "
                       f"'example.org', {pg.sql_quote('{PLAIN}' + pw)});")
        sql.append(f"UPDATE mailboxes SET route_primary = 'node-2' WHERE address = {pg.sql_quote(CAROL)};")
        db.psql("\n".join(sql))

    @classmethod
    def _start(cls):
        certs = cls.dir / "certs"
        ca = harness.make_ca(certs)
        cert = harness.make_cert(ca, certs, ["mx.example.org"])
        cls.nodes = []
        for i in (1, 2):
            d = harness.Dovecot(cls.dir / f"node-{i}", cls.USERS, name=f"al{i}")
            # Each node resolves the alias itself (the gateway relays RCPT as given).
            local, _, domain = CAROL.partition("@")
            with open(d.passwd_path, "a") as f:
                f.write(f"{TEAM}:{{PLAIN}}{os.urandom(8).hex()}:{d.mail_uid}:{d.mail_gid}::"
                        f"{d.mail_dir / domain / local}::\n")
            d.start()
            cls.nodes.append(d)
        cls.dovecot = cls.nodes[0]
        cls.start_directory()
        cls.mx_port = harness.free_port()
        backends = [{"name": f"node-{i + 1}", "imap": d.imap_port, "lmtp": d.lmtp_port,
                     "health_interval": "1s", "health_timeout": "1s"} for i, d in enumerate(cls.nodes)]
        text = harness.mailgate_config(certificates=[cert], listeners=[
            {"name": "mx", "protocol": "smtp", "port": cls.mx_port}], users_file="unused",
            backends=backends, routes=[{"domain": "*", "primary": "node-1"}])
        from test_postgres import with_directory
        cls.gateway = harness.Mailgate(cls.dir, with_directory(text, cls.directory_block()))
        cls.gateway.start()

    @classmethod
    def _stop(cls):
        for d in getattr(cls, "nodes", [])[1:]:
            d.stop()
        super()._stop()

    def in_maildir(self, node: int, mailbox: str, marker: bytes) -> bool:
        local, _, domain = mailbox.partition("@")
        base = self.nodes[node].mail_dir / domain / local / "Maildir"
        return any(marker in p.read_bytes() for sub in ("new", "cur") if (base / sub).exists()
                   for p in (base / sub).iterdir() if p.is_file())

    def send(self, rcpt: str, subject: str) -> None:
        with smtplib.SMTP(harness.HOST, self.mx_port, timeout=20) as s:
            s.ehlo("client.example.com")
            s.sendmail("sender@example.net", [rcpt], f"Subject: {subject}\r\n\r\nhi\r\n".encode())

    def test_alias_goes_to_its_targets_node(self):
        subject = f"alias-route-{time.time_ns()}"
        self.send(TEAM, subject)
        harness.wait_for(lambda: self.in_maildir(1, CAROL, subject.encode()), 10, what="carol's mail on node 2")
        self.assertFalse(self.in_maildir(0, CAROL, subject.encode()))
        # the mailbox itself follows its override as well; alice stays on the domain's node
        direct = f"direct-{time.time_ns()}"
        self.send(CAROL, direct)
        harness.wait_for(lambda: self.in_maildir(1, CAROL, direct.encode()), 10, what="carol direct on node 2")
        other = f"alice-{time.time_ns()}"
        self.send(ALICE, other)
        harness.wait_for(lambda: self.in_maildir(0, ALICE, other.encode()), 10, what="alice on node 1")


if __name__ == "__main__":
    import unittest
    unittest.main()
