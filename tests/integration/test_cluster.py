"""A gateway cluster: two mailgate gateways on one PostgreSQL primary with a
streaming replica, real Dovecot nodes, real clients, all on loopback.

The gateways reach the database through one libpq multi-host conninfo
(host=127.0.0.1,127.0.0.1 port=P1,P2 target_session_attrs=read-write), the same for
the auth pool, the route watcher (LISTEN mailgate_routes), the policy sync (bans,
LISTEN mailgate_bans) and the quarantine store. The tests, in name order (shared state):

1. a route change committed on the primary reaches new sessions on every gateway
   within 1 s (measured by logging in through each gateway and reading which node
   the session landed on);
2. the primary stops (pg_ctl stop -m immediate) and the replica is promoted: with no
   gateway restarted, a cached user logs in at once, an uncached one once the new
   primary answers; a ban made during the outage, a ban made after it and a
   quarantined message are written on the new primary; a route change made there
   reaches every gateway within 1 s;
3. a new replica of the new primary; the old primary is fenced (default_transaction_
   read_only, so its connections answer writes with SQLSTATE 25006) and the replica
   promoted: writes go to the new primary without a failed message; then the fenced
   server stops (-m fast) and the same checks as in 2 run;
4. one gateway is killed (SIGKILL) while clients send mail through both: every
   message that got 250 is in the Maildir, exactly once unless its first attempt
   broke (then at most twice: the killed gateway may have delivered it before the
   250 got out, as with any MTA); clients reconnect through the other gateway.

The measured figures (route NOTIFY latency, login outage during a failover) are
printed. The whole file runs in well under 3 minutes."""

from __future__ import annotations

import datetime
import imaplib
import json
import re
import smtplib
import threading
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

import harness
import pg
from test_postgres import gateway_has_postgres, postgres_directory, with_directory

DOMAIN = "example.org"
ALICE, ALICE_PW = "alice@example.org", "alice-pw"    # logged in before every outage (cached)
BOB, BOB_PW = "bob@example.org", "bob-pw"            # first logs in after failover 1
CAROL, CAROL_PW = "carol@example.org", "carol-pw"    # first logs in after failover 2
USERS = {ALICE: ALICE_PW, BOB: BOB_PW, CAROL: CAROL_PW}
NODES = ["storage-01", "storage-02"]
GATEWAYS = ["a", "b"]
ROUTE_LIMIT = 1.0       # seconds: a route change reaches every gateway
RECOVERY_LIMIT = 10.0   # seconds after the promotion: the gateways work on the new primary
SUSPECT = "bad@suspect.example"
POLICY = r"""
policies:
  - { name: hold-suspect, stage: data, when: { sender: { re2: '(?i)@suspect\.example$' } }, then: quarantine }
hooks:
  quarantine: { store: postgres, retention: 1h }
"""
UNAVAILABLE = "NO [UNAVAILABLE]"
MAP_LOADED = "postgres routes: loaded"  # debug line of the route watcher


def stamp(ts: str) -> float:
    """A log line's ts ("2026-12-05T02:32:49.555Z") as seconds since the epoch."""
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def message(subject: str, sender: str, rcpt: str = ALICE, lines: int = 20) -> bytes:
    body = "".join(f"line {i} of {subject}\r\n" for i in range(lines))
    return (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}.{subject.replace(' ', '.')}@cluster.test>\r\n\r\n{body}").encode()


class ClusterTest(harness.LogsOnFailure, unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        if not pg.available():
            raise AssertionError("PostgreSQL 15 binaries not found (scripts/deps.sh installs them)")
        supported, why = gateway_has_postgres()
        if not supported:
            raise AssertionError(f"mailgate rejects the postgres driver: {why}")
        cls.dir = Path(harness.make_workdir("mailgate-cluster-"))
        cls.dbs, cls.dovecots, cls.gateways = [], [], {}
        cls.figures: list[str] = []
        try:
            cls._start()
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def _start(cls):
        for i, name in enumerate(NODES):
            cls.dovecots.append(harness.Dovecot(cls.dir / f"node-{i + 1}", USERS, name=f"s{i + 1}").start())
        primary = pg.Postgres(cls.dir, name="pg1", replication=True).start()
        cls.dbs.append(primary)
        init_cfg = cls.dir / "initdb.yaml"
        init_cfg.write_text(postgres_directory(primary.conninfo()) + "listeners: [{ name: l, protocol: imap, "
                            "listen: \"127.0.0.1:1\" }]\nbackends: [{ name: b, host: 127.0.0.1, "
                            "ports: { imap: 1 } }]\n")
        r = harness.run_mailgate("--init-db", str(init_cfg))
        if r.returncode != 0:
            raise AssertionError("--init-db failed: " + r.stdout + r.stderr)
        sql = [f"INSERT INTO domains (name) VALUES ('{DOMAIN}');",
               "INSERT INTO nodes (name, host) VALUES ('storage-01', '127.0.0.1'), ('storage-02', '127.0.0.1');",
               f"INSERT INTO routes VALUES ('{DOMAIN}', 'storage-01', 'storage-02');"]
        for user, pw in USERS.items():
            sql.append(f"INSERT INTO mailboxes (address, domain, password) VALUES ({pg.sql_quote(user)}, "
                       f"'{DOMAIN}', {pg.sql_quote(harness.hash_password(pw, 'SHA256-CRYPT'))});")
        primary.psql("\n".join(sql))
        standby = primary.standby(cls.dir, name="pg2").start()
        primary.wait_streaming(standby)
        cls.dbs.append(standby)
        cls.primary = primary
        # Both servers, whichever is the primary: the order stays the same for the whole run.
        cls.conninfo = pg.multi_host_conninfo([primary, standby])
        for user in USERS:
            for i, d in enumerate(cls.dovecots):
                d.deliver(user, f"stored on {NODES[i]}")

        certs = cls.dir / "certs"
        ca = harness.make_ca(certs)
        cert = harness.make_cert(ca, certs, ["mail.example.org"])
        cls.ports = {}
        for name in GATEWAYS:
            imap, smtp, admin = harness.free_ports(3)
            cls.ports[name] = {"imap": imap, "smtp": smtp, "admin": admin}
            text = harness.mailgate_config(
                certificates=[cert], users_file="unused", threads=1, log_level="debug",
                listeners=[{"name": "imap", "protocol": "imap", "port": imap, "tls": "none",
                            "allow_plaintext_auth": True},
                           {"name": "mx", "protocol": "smtp", "port": smtp}],
                backends=[{"name": NODES[i], "imap": d.imap_port, "lmtp": d.lmtp_port}
                          for i, d in enumerate(cls.dovecots)],
                routes=[{"domain": "*", "primary": NODES[0]}])
            text = with_directory(text, postgres_directory(cls.conninfo, timeout="1s"))
            text += harness.admin_block(admin, cls.dir) + POLICY
            cls.gateways[name] = harness.Mailgate(cls.dir, text, name=f"gateway-{name}").start()
            harness.wait_port(admin, 10)

    @classmethod
    def _stop(cls):
        for gw in cls.gateways.values():
            gw.stop()
        for d in cls.dovecots:
            d.stop()
        for db in cls.dbs:
            db.stop(mode="immediate")
        if cls.figures:
            print("\ncluster figures:\n  " + "\n  ".join(cls.figures), flush=True)
        harness.remove_workdir(cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls._stop()

    def diagnostics(self) -> str:
        out = [f"--- gateway {n} log (tail) ---\n" + gw.log_text()[-5000:] for n, gw in self.gateways.items()]
        for db in self.dbs:
            out.append(f"--- {db.dir.name} log (tail) ---\n" + db.log_text()[-1500:])
        for d in self.dovecots:
            out.append(f"--- {d.name} log (tail) ---\n" + d.log_text()[-1000:])
        return "\n".join(out)

    def figure(self, text: str) -> None:
        print(f"\n  {text}", flush=True)
        type(self).figures.append(text)

    # ------------------------------------------------------------------ clients
    def imap_login(self, gw: str, user: str, password: str) -> str:
        """The tagged reply to LOGIN through gateway gw."""
        c, _ = harness.imap_client(self.ports[gw]["imap"], timeout=10)
        try:
            return c.command("a", f"LOGIN {harness.imap_quote(user)} {harness.imap_quote(password)}",
                             timeout=10)[-1]
        finally:
            c.close()

    def imap_node(self, gw: str, user: str, password: str) -> str:
        """Logs in through gw; the node the session landed on (message 1's subject)."""
        imap = imaplib.IMAP4(harness.HOST, self.ports[gw]["imap"], timeout=10)
        try:
            typ, data = imap.login(user, password)
            if typ != "OK":
                raise AssertionError(f"login as {user}: {typ} {data}")
            imap.select("INBOX", readonly=True)
            typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            if typ != "OK":
                raise AssertionError(f"fetch: {typ} {data}")
            imap.logout()
            return data[0][1].decode().strip().rsplit(" ", 1)[-1]
        finally:
            harness.close_imap(imap)

    def wait_login(self, gw: str, user: str, password: str, since: float, within: float) -> float:
        """Polls LOGIN through gw until it succeeds; seconds since `since`. Until then
        every answer must be a temporary failure, never a wrong-password one."""
        deadline = time.monotonic() + within
        while True:
            reply = self.imap_login(gw, user, password)
            if reply.startswith("a OK"):
                return time.monotonic() - since
            self.assertTrue(reply.startswith("a " + UNAVAILABLE), f"{gw}: {reply}\n{self.diagnostics()}")
            if time.monotonic() > deadline:
                self.fail(f"{user} cannot log in through gateway {gw} {within}s on ({reply})\n"
                          + self.diagnostics())
            time.sleep(0.05)

    def route_latency(self, db: pg.Postgres, node: str) -> dict[str, float]:
        """Sets the domain's primary to node on db; the seconds until a new session of
        ALICE lands there, per gateway (polled concurrently; from before the UPDATE)."""
        other = NODES[1 - NODES.index(node)]
        for gw in self.gateways:
            self.assertEqual(self.imap_node(gw, ALICE, ALICE_PW), other, f"gateway {gw} before the change")
        took: dict[str, float] = {}
        errors: list[str] = []
        start = threading.Event()

        def poll(gw: str, t0_box: list[float]):
            start.wait()
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                try:
                    seen = self.imap_node(gw, ALICE, ALICE_PW)
                except Exception as e:  # noqa: BLE001 (reported below)
                    errors.append(f"{gw}: {e}")
                    return
                if seen == node:
                    took[gw] = time.monotonic() - t0_box[0]
                    return
                time.sleep(0.005)

        t0: list[float] = [0.0]
        threads = [threading.Thread(target=poll, args=(gw, t0)) for gw in self.gateways]
        for t in threads:
            t.start()
        wall0 = time.time()
        t0[0] = time.monotonic()
        start.set()
        db.psql(f"UPDATE routes SET primary_node = '{node}', secondary_node = '{other}' WHERE domain = '{DOMAIN}'")
        for t in threads:
            t.join(10)
        self.assertEqual(errors, [], self.diagnostics())
        self.assertEqual(sorted(took), sorted(self.gateways), f"not every gateway moved: {took}\n"
                         + self.diagnostics())
        for gw, g in self.gateways.items():  # the watcher's own figure: UPDATE started -> map loaded
            loads = [stamp(l["ts"]) for l in g.log_lines() if l.get("msg") == MAP_LOADED and stamp(l["ts"]) >= wall0]
            self.map_latency.setdefault(gw, []).append(min(loads) - wall0 if loads else float("nan"))
        return took

    def route_round_trip(self, db: pg.Postgres, label: str) -> None:
        self.map_latency: dict[str, list[float]] = {}
        there = self.route_latency(db, NODES[1])
        back = self.route_latency(db, NODES[0])
        worst = max(list(there.values()) + list(back.values()))
        self.figure(f"{label}: route change -> new sessions on every gateway: "
                    + ", ".join(f"{gw} {there[gw] * 1000:.0f}/{back[gw] * 1000:.0f} ms" for gw in sorted(there))
                    + f" (worst {worst * 1000:.0f} ms); -> map loaded (log): "
                    + ", ".join(f"{gw} " + "/".join(f"{t * 1000:.0f}" for t in ts) + " ms"
                                for gw, ts in sorted(self.map_latency.items())))
        self.assertLess(worst, ROUTE_LIMIT, self.diagnostics())

    def http(self, gw: str, method: str, path: str) -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports[gw]['admin']}{path}", method=method,
                                     headers=harness.admin_headers())
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def ban(self, gw: str, net: str) -> None:
        status, body = self.http(gw, "POST", f"/bans?net={net}/32&ttl=1h&reason=cluster+test")
        self.assertEqual(status, 200, body)

    def listed(self, gw: str, net: str) -> bool:
        status, body = self.http(gw, "GET", "/bans")
        self.assertEqual(status, 200, body)
        return any(b["net"].split("/")[0] == net for b in json.loads(body))

    def wait_rows(self, db: pg.Postgres, sql: str, expected: str, within: float, what: str) -> float:
        start = time.monotonic()
        while True:
            try:
                if db.psql(sql).strip() == expected:
                    return time.monotonic() - start
            except RuntimeError:
                pass
            if time.monotonic() - start > within:
                self.fail(f"{what}: not on {db.dir.name} {within}s on\n" + self.diagnostics())
            time.sleep(0.05)

    def send(self, gw: str, sender: str, msg: bytes, before_data=None) -> tuple[int, str]:
        """One SMTP session through gw; before_data: called between RCPT and DATA."""
        s = smtplib.SMTP(harness.HOST, self.ports[gw]["smtp"], timeout=30)
        try:
            self.assertEqual(s.ehlo("client.example.com")[0], 250)
            code, text = s.mail(sender)
            self.assertEqual(code, 250, text)
            code, text = s.rcpt(ALICE)
            if code != 250:
                return code, text.decode(errors="replace")
            if before_data:
                before_data()
            try:
                code, text = s.data(msg)
            except smtplib.SMTPDataError as e:
                code, text = e.smtp_code, e.smtp_error
            s.quit()
        finally:
            s.close()
        return code, text.decode(errors="replace") if isinstance(text, bytes) else text

    def quarantine_on(self, gw: str, db: pg.Postgres) -> str:
        code, text = self.send(gw, SUSPECT, message(f"held {gw} {time.time_ns()}", SUSPECT))
        self.assertEqual(code, 250, f"gateway {gw}: {code} {text}\n{self.diagnostics()}")
        self.assertIn("(quarantined)", text)
        qid = text.split("queued as ")[1].split()[0]
        self.assertEqual(db.psql(f"SELECT count(*) FROM mailgate_quarantine WHERE id = {pg.sql_quote(qid)}")
                         .strip(), "1", f"quarantine entry {qid} of gateway {gw} not on {db.dir.name}")
        return qid

    def wait_watchers(self, since_lines: dict[str, int], within: float) -> None:
        """Until each gateway's route watcher says it reached the database again."""
        def back(gw: str) -> bool:
            lines = self.gateways[gw].log_lines()[since_lines[gw]:]
            return any(l.get("msg") == "postgres routes: database reachable again" for l in lines)
        for gw in self.gateways:
            harness.wait_for(lambda: back(gw), within, 0.05, f"the route watcher of gateway {gw} back")

    def failover_checks(self, new: pg.Postgres, stopped_at: float, promoted_at: float, user: str,
                        password: str, queued_ban: str, fresh_ban: str, label: str,
                        log_marks: dict[str, int] | None) -> None:
        """After a promotion: the uncached user logs in through every gateway, the bans
        and quarantine entries are on the new primary, the route NOTIFY is listened for there."""
        outage = {gw: self.wait_login(gw, user, password, stopped_at, RECOVERY_LIMIT + promoted_at - stopped_at)
                  for gw in self.gateways}
        self.figure(f"{label}: uncached login outage (from the stop of the primary; promoted after "
                    f"{(promoted_at - stopped_at) * 1000:.0f} ms): "
                    + ", ".join(f"{gw} {t * 1000:.0f} ms" for gw, t in sorted(outage.items())))
        # The ban made while no primary was writable, queued by gateway a, is written there...
        took = self.wait_rows(new, f"SELECT count(*) FROM mailgate_bans WHERE net = '{queued_ban}/32'", "1",
                              RECOVERY_LIMIT, f"the ban of {queued_ban} made during the outage")
        self.figure(f"{label}: ban queued during the outage written on the new primary "
                    f"{took * 1000:.0f} ms after the logins came back")
        # ... and one made now through gateway b is written there and reaches gateway a
        # through the NOTIFY on the new primary.
        self.ban("b", fresh_ban)
        self.wait_rows(new, f"SELECT count(*) FROM mailgate_bans WHERE net = '{fresh_ban}/32'", "1",
                       RECOVERY_LIMIT, f"the ban of {fresh_ban}")
        harness.wait_for(lambda: self.listed("a", fresh_ban), RECOVERY_LIMIT, 0.05,
                         f"{fresh_ban} listed on gateway a")
        for gw in self.gateways:
            self.quarantine_on(gw, new)
        if log_marks is not None:  # else the watchers are on the new primary already
            self.wait_watchers(log_marks, RECOVERY_LIMIT)
        self.route_round_trip(new, f"{label}: on the new primary")

    def log_marks(self) -> dict[str, int]:
        return {gw: len(g.log_lines()) for gw, g in self.gateways.items()}

    # ------------------------------------------------------------------ tests
    def test_1_route_change_reaches_every_gateway_within_a_second(self):
        for gw in self.gateways:
            self.assertEqual(self.imap_node(gw, ALICE, ALICE_PW), NODES[0])
        for _ in range(3):
            self.route_round_trip(self.primary, "primary")

    def test_2_primary_stopped_immediate_replica_promoted(self):
        old, new = self.dbs[0], self.dbs[1]
        for gw in self.gateways:  # ALICE in both caches
            self.assertEqual(self.imap_node(gw, ALICE, ALICE_PW), NODES[0])
        marks = self.log_marks()
        old.stop(mode="immediate")
        stopped = time.monotonic()
        for gw in self.gateways:
            reply = self.imap_login(gw, ALICE, ALICE_PW)
            self.assertTrue(reply.startswith("a OK"), f"cached login through {gw} during the outage: {reply}\n"
                            + self.diagnostics())
        cached = time.monotonic() - stopped
        self.figure(f"immediate stop: cached logins through both gateways answered {cached * 1000:.0f} ms "
                    "after the stop (no outage)")
        self.assertTrue(self.imap_login("a", BOB, BOB_PW).startswith("a " + UNAVAILABLE))
        self.ban("a", "192.0.2.10")  # enforced locally at once, queued for the database
        self.assertTrue(self.listed("a", "192.0.2.10"))
        code, text = self.send("b", SUSPECT, message("held during the outage", SUSPECT))
        self.assertEqual(code // 100, 4, f"quarantine with no database: {code} {text}")
        time.sleep(0.5)
        new.promote()
        promoted = time.monotonic()
        self.failover_checks(new, stopped, promoted, BOB, BOB_PW, "192.0.2.10", "192.0.2.11",
                             "immediate stop", marks)

    def test_3_fenced_then_fast_stop_replica_promoted(self):
        old = self.dbs[1]
        new = old.standby(self.dir, name="pg3", port=self.dbs[0].port).start()
        type(self).dbs.append(new)
        old.wait_streaming(new)
        for gw in self.gateways:
            self.assertEqual(self.imap_node(gw, ALICE, ALICE_PW), NODES[0])
            self.quarantine_on(gw, old)  # both quarantine pool connections on the old primary
        # Fencing: the old primary refuses writes (SQLSTATE 25006 on its open
        # connections) while it still runs; the replica becomes the primary.
        marks = self.log_marks()
        old.psql("ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf();")
        self.wait_rows(old, "SHOW default_transaction_read_only", "on", 5, "fencing")
        new.promote()
        for gw in self.gateways:  # no failed message: the write goes to the new primary
            self.quarantine_on(gw, new)
        self.ban("a", "192.0.2.20")
        self.wait_rows(new, "SELECT count(*) FROM mailgate_bans WHERE net = '192.0.2.20/32'", "1",
                       RECOVERY_LIMIT, "the ban of 192.0.2.20 made while the old primary was fenced")
        # The LISTEN connections leave the fenced server (which still answers reads) for
        # the new primary: route changes and the other gateway's bans arrive from there.
        self.wait_watchers(marks, RECOVERY_LIMIT)
        self.route_round_trip(new, "fenced old primary still up")
        self.ban("b", "192.0.2.23")
        harness.wait_for(lambda: self.listed("a", "192.0.2.23"), RECOVERY_LIMIT, 0.05,
                         "192.0.2.23 (banned through b) listed on gateway a")
        old.stop(mode="fast")
        stopped = time.monotonic()
        for gw in self.gateways:
            reply = self.imap_login(gw, ALICE, ALICE_PW)
            self.assertTrue(reply.startswith("a OK"), f"cached login through {gw}: {reply}\n" + self.diagnostics())
        self.ban("a", "192.0.2.21")
        self.failover_checks(new, stopped, stopped, CAROL, CAROL_PW, "192.0.2.21", "192.0.2.22",
                             "fast stop", None)

    def test_4_gateway_killed_mid_session_loses_no_accepted_message(self):
        per_client, clients = 10, 6
        lock = threading.Lock()
        results: dict[str, dict] = {}  # subject -> {"gw": ..., "broken": n, "code": ...}
        killed = threading.Event()
        parked = threading.Semaphore(0)  # sessions on gateway a held between RCPT and DATA

        def hold():
            parked.release()
            killed.wait(30)

        def client(idx: int):
            gw = GATEWAYS[idx % 2]
            for i in range(per_client):
                subject = f"cluster-msg-{idx}-{i}"
                broken = 0
                deadline = time.monotonic() + 30
                while True:
                    try:
                        # Each client on gateway a holds its 4th session open until a is killed.
                        code, text = self.send(gw, "sender@example.com", message(subject, "sender@example.com"),
                                               before_data=hold if gw == "a" and i == 3 and not broken else None)
                        break
                    except (OSError, smtplib.SMTPException) as e:
                        # the gateway died under this session: reconnect through the other one
                        broken += 1
                        if time.monotonic() > deadline:
                            code, text = 0, f"gave up: {e}"
                            break
                        if gw == "a" and killed.is_set():
                            gw = "b"
                        time.sleep(0.05)
                with lock:
                    results[subject] = {"gw": gw, "broken": broken, "code": code, "text": text,
                                        "at": time.monotonic() - began}
                time.sleep(0.01)

        # One client in the middle of DATA on gateway a when it is killed.
        mid = smtplib.SMTP(harness.HOST, self.ports["a"]["smtp"], timeout=10)
        mid.ehlo("mid.example.com")
        mid.mail("sender@example.com")
        mid.rcpt(ALICE)
        code, _ = mid.docmd("DATA")
        self.assertEqual(code, 354)
        mid_msg = message("cluster-msg-mid", "sender@example.com")
        mid.send(mid_msg[: len(mid_msg) // 2])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        began = time.monotonic()
        for t in threads:
            t.start()
        for _ in range(clients // 2):
            self.assertTrue(parked.acquire(timeout=30), "the clients of gateway a did not get going\n"
                            + self.diagnostics())
        gw_a = self.gateways["a"]
        gw_a.proc.kill()
        gw_a.proc.wait(10)
        killed.set()
        killed_at = time.monotonic()
        with lock:
            done_at_kill = len(results)
        # The mid-DATA client sees its session break and sends again through b.
        mid_broken = False
        try:
            mid.send(mid_msg[len(mid_msg) // 2:] + b".\r\n")
            mid.getreply()
        except (OSError, smtplib.SMTPException):
            mid_broken = True
        finally:
            mid.close()
        self.assertTrue(mid_broken, "the session on the killed gateway did not break")
        code, text = self.send("b", "sender@example.com", mid_msg)
        self.assertEqual(code, 250, text)
        results["cluster-msg-mid"] = {"gw": "b", "broken": 1, "code": code, "text": text}
        for t in threads:
            t.join(60)
        self.assertFalse(any(t.is_alive() for t in threads), "a client hung")
        self.assertEqual(len(results), clients * per_client + 1, "a client thread failed")
        # Clients reconnecting through the surviving gateway are served.
        self.assertEqual(self.imap_node("b", CAROL, CAROL_PW), NODES[0])
        served_after = time.monotonic() - killed_at

        copies = {s: 0 for s in results}
        for d in self.dovecots:
            maildir = d.mail_dir / DOMAIN / "alice" / "Maildir"
            for sub in ("new", "cur"):
                for p in (maildir / sub).glob("*") if (maildir / sub).exists() else []:
                    data = p.read_bytes()
                    for s in copies:
                        if re.search(rb"\nSubject: " + re.escape(s.encode()) + rb"\r?\n", data):
                            copies[s] += 1
        not_accepted = {s: r for s, r in results.items() if r["code"] != 250}
        self.assertEqual(not_accepted, {}, self.diagnostics())
        clean = {s: copies[s] for s, r in results.items() if r["broken"] == 0}
        retried = {s: copies[s] for s, r in results.items() if r["broken"] > 0}
        self.assertEqual({s: n for s, n in clean.items() if n != 1}, {},
                         "messages accepted at the first attempt must be stored exactly once")
        self.assertEqual({s: n for s, n in retried.items() if n not in (1, 2)}, {},
                         "a message sent again after its session broke is stored once (twice at most)")
        via_a = sum(1 for r in results.values() if r["gw"] == "a")
        self.figure(f"gateway killed: {len(results)} messages accepted ({via_a} by a before the kill), "
                    f"{len(retried)} sent again through b after their session broke, "
                    f"{sum(1 for n in retried.values() if n == 2)} of them stored twice; "
                    f"every 250 stored; IMAP through b served {served_after * 1000:.0f} ms after the kill; "
                    f"killed {(killed_at - began) * 1000:.0f} ms into the run with {done_at_kill} messages done, "
                    f"the last one done {max(r.get('at', 0) for r in results.values()) * 1000:.0f} ms in")
        self.assertGreater(len(retried), 0, "no session was broken by the kill")


if __name__ == "__main__":
    unittest.main()
