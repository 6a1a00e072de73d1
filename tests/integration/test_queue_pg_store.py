"""The exception queue's PostgreSQL store (auth/postgres_queue.cc) on a real PostgreSQL 15,
with the table made by `mailgate --init-db` (schema version 5).

The driver is tests/tools/pg_queue_store (one store per process, one command per stdin
line); several drivers on one database act as the gateways of a cluster: a claim is
never handed to two of them (FOR UPDATE SKIP LOCKED), a dead gateway's lease runs out,
a gateway that lost its lease cannot write the entry back, the bounds hold across
gateways, and a stopped database is an error (the session answers 451), never a
stored entry."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path

import harness
import pg
from test_postgres import postgres_directory

UNBOUNDED = (1000000, 1 << 40)


def driver_bin() -> str:
    """PG_QUEUE_BIN: a sanitizer build of the driver (its stderr is checked for reports)."""
    if os.environ.get("PG_QUEUE_BIN"):
        return os.environ["PG_QUEUE_BIN"]
    return str(Path(harness.mailgate_bin()).resolve().parent / "pg_queue_store")


def fnv1a(data: bytes) -> str:
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return format(h, "x")


def pattern(size: int) -> bytes:
    return bytes(i % 256 for i in range(size))


def fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split()[1:] if "=" in item)


class Driver:
    """pg_queue_store as a child process: ask() sends one command and returns its answer."""

    def __init__(self, conninfo: str, max_entries: int = UNBOUNDED[0], max_size: int = UNBOUNDED[1]):
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
                   UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
        self.proc = subprocess.Popen([driver_bin(), conninfo, str(max_entries), str(max_size)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.stderr = ""
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._err.start()

    def _read_err(self):
        self.stderr = self.proc.stderr.read()

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float = 60.0) -> str:
        result: list[str] = []
        t = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not result or not result[0]:
            raise AssertionError(f"no answer from pg_queue_store; stderr:\n{self.stderr[-4000:]}")
        return result[0].strip()

    def ask(self, command: str, timeout: float = 60.0) -> str:
        self.send(command)
        return self.answer(timeout)

    def finish(self, timeout: float = 60.0) -> None:
        self.proc.stdin.close()
        rc = self.proc.wait(timeout)
        self._err.join(10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        for report in ("LeakSanitizer", "AddressSanitizer", "runtime error"):
            if report in self.stderr:
                raise AssertionError(f"{report} in stderr:\n{self.stderr[-6000:]}")
        if rc != 0:
            raise AssertionError(f"pg_queue_store exited {rc}:\n{self.stderr[-4000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


@unittest.skipUnless(pg.available(), "PostgreSQL 15 binaries not installed")
class PostgresQueueStoreTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(driver_bin()):
            raise unittest.SkipTest(f"{driver_bin()} not built")
        if os.environ.get("PG_QUEUE_BIN") and b"__asan_init" not in Path(driver_bin()).read_bytes():
            raise AssertionError(f"PG_QUEUE_BIN={driver_bin()} is not a sanitizer build: no leak check")
        cls.tmp = tempfile.mkdtemp(prefix="mailgate-pg-queue-")
        os.chmod(cls.tmp, 0o755)
        cls.db = pg.Postgres(cls.tmp).start()
        cfg = Path(cls.tmp) / "initdb.yaml"
        cfg.write_text(postgres_directory(cls.db.conninfo()) + "listeners: [{ name: l, protocol: imap, "
                       "listen: \"127.0.0.1:1\" }]\nbackends: [{ name: b, host: 127.0.0.1, ports: { imap: 1 } }]\n")
        r = harness.run_mailgate("--init-db", str(cfg))
        if r.returncode != 0:
            raise AssertionError("--init-db failed: " + r.stdout + r.stderr)
        cls.init_db_output = r.stdout

    @classmethod
    def tearDownClass(cls):
        try:
            cls.db.stop()
        finally:
            harness.remove_workdir(cls.tmp)

    def setUp(self):
        if not self.db.is_running():
            self.db.start()
        self.db.psql("DELETE FROM mailgate_queue")
        self.drivers: list[Driver] = []

    def tearDown(self):
        for d in self.drivers:
            d.kill()

    def driver(self, *bounds: int) -> Driver:
        d = Driver(self.db.conninfo(), *bounds)
        self.drivers.append(d)
        return d

    def finish(self, d: Driver) -> None:
        self.drivers.remove(d)
        d.finish()

    def count(self) -> int:
        return int(self.db.psql("SELECT count(*) FROM mailgate_queue").strip())

    def test_schema_version_5(self):
        self.assertIn("schema version 5", self.init_db_output)
        cols = self.db.psql("SELECT column_name FROM information_schema.columns WHERE table_name = "
                            "'mailgate_queue' ORDER BY column_name").split()
        for c in ("id", "created_ms", "next_ms", "size", "message_id", "mail_from", "lease_owner",
                  "lease_until_ms", "meta", "message"):
            self.assertIn(c, cols)
        self.assertIn("mailgate_queue_message_id", self.db.psql(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'mailgate_queue'"))

    def test_put_stores_the_message_once_with_its_entry(self):
        d = self.driver()
        self.assertEqual(d.ask("put s1-1 70000 <m1@example.com> <s@example.com>"), "stored")
        self.assertEqual(d.ask("put s1-2 0 - <>"), "stored")
        e = fields(d.ask("get s1-1"))
        self.assertEqual((e["id"], e["size"], e["msgid"], e["from"], e["owner"], e["until"], e["attempts"]),
                         ("s1-1", "70000", "<m1@example.com>", "<s@example.com>", "-", "0", "0"))
        self.assertEqual(e["rcpts"], "<dave@example.org>:delivered,<frank@example.org>:pending")
        self.assertEqual((e["client_ip"], e["helo"]), ("192.0.2.7", "client.example"))
        # Every octet value survives the round trip (the bytea).
        self.assertEqual(d.ask("body s1-1"), f"body 70000 {fnv1a(pattern(70000))}")
        self.assertEqual(d.ask("body s1-2"), f"body 0 {fnv1a(b'')}")
        self.assertEqual(self.db.psql("SELECT length(message) FROM mailgate_queue WHERE id = 's1-1'").strip(),
                         "70000")
        self.assertEqual(d.ask("list 10"), "list s1-1 s1-2")
        self.assertEqual(d.ask("list 1"), "list s1-1")
        s = fields(d.ask("summary"))
        self.assertEqual((s["entries"], s["bytes"]), ("2", "70000"))
        self.assertEqual(s["oldest"], e["created"])
        # The same id again (a retry whose COMMIT answer was lost): stored, one row.
        self.assertEqual(d.ask("put s1-1 70000 <m1@example.com> <s@example.com>"), "stored")
        self.assertEqual(self.count(), 2)
        # A message larger than one range the store reads at a time (1 MiB), of an odd
        # size: read back in several ranges, every octet in place.
        big = 3 * 1048576 + 12345
        self.assertEqual(d.ask(f"put s1-3 {big} - <>"), "stored")
        self.assertEqual(d.ask("body s1-3"), f"body {big} {fnv1a(pattern(big))}")
        self.assertEqual(d.ask("remove s1-3 -"), "true")
        self.assertEqual(d.ask("get nope-1"), "none")
        self.assertTrue(d.ask("body nope-1").startswith("error"))
        self.assertTrue(d.ask("put bad/id 10 - <>").startswith("error"))
        self.assertEqual(self.count(), 2)
        self.finish(d)

    def test_claim_lease_expiry_and_lost_lease(self):
        a, b = self.driver(), self.driver()
        self.assertEqual(a.ask("put s2-1 100 - <s@example.com>"), "stored")
        self.assertEqual(a.ask("claim gw-a 1500 10"), "claimed s2-1")
        e = fields(b.ask("get s2-1"))
        self.assertEqual(e["owner"], "gw-a")
        # Leased: nobody else gets it, and a second claim by A does not either.
        self.assertEqual(b.ask("claim gw-b 1500 10"), "claimed")
        self.assertEqual(a.ask("claim gw-a 1500 10"), "claimed")
        # Only the holder writes it back; B has no lease.
        self.assertEqual(b.ask("update s2-1 gw-b delivered 0 0"), "false")
        self.assertEqual(a.ask("update s2-1 gw-a delivered 0 0"), "true")
        self.assertEqual(fields(b.ask("get s2-1"))["rcpts"],
                         "<dave@example.org>:delivered,<frank@example.org>:delivered")
        # A dies (stops renewing): after its lease B takes the entry over ...
        time.sleep(1.7)
        self.assertEqual(b.ask("claim gw-b 60000 10"), "claimed s2-1")
        # ... and A, come back, can neither write it nor remove it.
        self.assertEqual(a.ask("update s2-1 gw-a failed 1 0"), "false")
        self.assertEqual(a.ask("remove s2-1 gw-a"), "false")
        self.assertEqual(fields(a.ask("get s2-1"))["owner"], "gw-b")
        self.assertEqual(b.ask("remove s2-1 gw-b"), "true")
        self.assertEqual(self.count(), 0)
        self.finish(a)
        self.finish(b)

    def test_renew_extends_the_lease_and_fails_once_lost(self):
        a, b = self.driver(), self.driver()
        self.assertEqual(a.ask("put s10-1 10 - <>"), "stored")
        t = int(time.time() * 1000)
        self.assertEqual(a.ask(f"claim gw-a 1000 10 {t}"), "claimed s10-1")
        # Renewed while live: the lease now ends 5 s after t + 500, and B cannot claim
        # the entry after the first lease would have run out.
        self.assertEqual(a.ask(f"renew s10-1 gw-a 5000 {t + 500}"), "true")
        self.assertEqual(fields(b.ask("get s10-1"))["until"], str(t + 5500))
        self.assertEqual(b.ask(f"claim gw-b 60000 10 {t + 2000}"), "claimed")
        # Nobody else renews it.
        self.assertEqual(b.ask(f"renew s10-1 gw-b 5000 {t + 2000}"), "false")
        self.assertEqual(b.ask(f"renew s10-404 gw-a 5000 {t + 2000}"), "false")
        # Run out: no renewal any more, even before another gateway took it ...
        self.assertEqual(a.ask(f"renew s10-1 gw-a 5000 {t + 5501}"), "false")
        # ... and after B took it over, A's renewal changes nothing.
        self.assertEqual(b.ask(f"claim gw-b 1000 10 {t + 5501}"), "claimed s10-1")
        self.assertEqual(a.ask(f"renew s10-1 gw-a 60000 {t + 5600}"), "false")
        e = fields(a.ask("get s10-1"))
        self.assertEqual((e["owner"], e["until"]), ("gw-b", str(t + 6501)))
        self.assertEqual(b.ask(f"renew s10-1 gw-b 60000 {t + 6000}"), "true")
        self.assertEqual(b.ask("remove s10-1 gw-b"), "true")
        self.finish(a)
        self.finish(b)

    def test_lease_expiry_by_the_clock(self):
        a, b = self.driver(), self.driver()
        self.assertEqual(a.ask("put s3-1 10 - <>"), "stored")
        self.assertEqual(a.ask("claim gw-a 800 10"), "claimed s3-1")
        self.assertEqual(b.ask("claim gw-b 60000 10"), "claimed")
        time.sleep(1.0)
        self.assertEqual(b.ask("claim gw-b 60000 10"), "claimed s3-1")
        self.assertEqual(a.ask("update s3-1 gw-a delivered 1 0"), "false")
        # Release: the entry is free again, not due until its next_ms (a minute ahead).
        self.assertEqual(b.ask("update s3-1 gw-b pending 1 60000"), "true")
        e = fields(a.ask("get s3-1"))
        self.assertEqual((e["owner"], e["until"], e["attempts"]), ("-", "0", "1"))
        self.assertEqual(a.ask("claim gw-a 60000 10"), "claimed")
        # The operator's "retry now" makes it due at once.
        self.assertEqual(a.ask("retry s3-1"), "true")
        self.assertEqual(a.ask("retry s3-404"), "false")
        self.assertEqual(a.ask("claim gw-a 60000 10"), "claimed s3-1")
        # The operator's delete works whoever holds the lease.
        self.assertEqual(b.ask("remove s3-1 -"), "true")
        self.assertEqual(b.ask("remove s3-1 -"), "false")
        self.finish(a)
        self.finish(b)

    def test_oldest_due_first_and_limit(self):
        d = self.driver()
        for i in range(5):
            self.assertEqual(d.ask(f"put s4-{i} 10 - <>"), "stored")
        # s4-0 and s4-1 not due for a minute (written back with a later next_ms).
        self.assertEqual(d.ask("claim gw 60000 2"), "claimed s4-0 s4-1")
        self.assertEqual(d.ask("update s4-0 gw pending 1 60000"), "true")
        self.assertEqual(d.ask("update s4-1 gw pending 1 60000"), "true")
        self.assertEqual(d.ask("claim gw 60000 2"), "claimed s4-2 s4-3")
        self.assertEqual(d.ask("claim gw 60000 10"), "claimed s4-4")
        self.assertEqual(d.ask("claim gw 60000 10"), "claimed")
        self.finish(d)

    def test_two_gateways_never_claim_one_entry(self):
        filler = self.driver()
        self.assertEqual(filler.ask("fill s5 400 300"), "filled stored=400 full=0 error=0")
        self.finish(filler)
        gws = [self.driver() for _ in range(2)]
        for i, g in enumerate(gws):
            g.send(f"drain gw-{i} 60000 3")
        answers = [g.answer(120) for g in gws]
        claimed: list[str] = []
        for a in answers:
            parts = a.split()
            self.assertEqual(parts[0], "drained", a)
            self.assertEqual(parts[2], "lost=0", a)
            self.assertEqual(int(parts[1]), len(parts) - 3)
            claimed += parts[3:]
        self.assertEqual(len(claimed), 400)
        self.assertEqual(len(set(claimed)), 400, "an entry was claimed twice")
        self.assertEqual(set(claimed), {f"s5-{i}" for i in range(400)})
        # Both did part of the work (they ran at the same time).
        for a in answers:
            self.assertGreater(int(a.split()[1]), 0, answers)
        owners = self.db.psql("SELECT lease_owner, count(*) FROM mailgate_queue GROUP BY 1 ORDER BY 1").split()
        self.assertEqual(sum(int(o.split("|")[1]) for o in owners), 400)
        for g in gws:
            self.finish(g)

    def test_full_queue(self):
        d = self.driver(5, 1 << 30)
        self.assertEqual(d.ask("fill s6 8 100"), "filled stored=5 full=3 error=0")
        self.assertEqual(self.count(), 5)
        self.assertEqual(d.ask("remove s6-0 -"), "true")
        self.assertEqual(d.ask("put s6-9 100 - <>"), "stored")
        self.assertEqual(d.ask("put s6-10 100 - <>"), "full")
        self.finish(d)
        self.db.psql("DELETE FROM mailgate_queue")
        d = self.driver(1000, 10000)
        self.assertEqual(d.ask("put s6-a 6000 - <>"), "stored")
        self.assertEqual(d.ask("put s6-b 4001 - <>"), "full")
        self.assertEqual(d.ask("put s6-c 4000 - <>"), "stored")
        self.assertEqual(d.ask("put s6-d 0 - <>"), "stored")
        self.assertEqual(d.ask("put s6-e 1 - <>"), "full")
        self.assertEqual(self.db.psql("SELECT sum(size) FROM mailgate_queue").strip(), "10000")
        self.finish(d)

    def test_bound_holds_across_gateways(self):
        gws = [self.driver(30, 1 << 30) for _ in range(4)]
        # Several rounds: each is one race of four gateways for the last places.
        for r in range(6):
            self.db.psql("DELETE FROM mailgate_queue")
            for i, g in enumerate(gws):
                g.send(f"fill s7r{r}g{i} 15 100")
            stored = full = 0
            for g in gws:
                f = fields(g.answer(120))
                self.assertEqual(f["error"], "0")
                stored += int(f["stored"])
                full += int(f["full"])
            self.assertEqual((stored, full), (30, 30), f"round {r}")
            self.assertEqual(self.count(), 30)
        for g in gws:
            self.finish(g)

    def test_find_by_message(self):
        d = self.driver()
        self.assertEqual(d.ask("put s8-1 10 <m8@example.com> <s@example.com>"), "stored")
        self.assertEqual(d.ask("put s8-2 10 <m8@example.com> <other@example.com>"), "stored")
        self.assertEqual(d.ask("put s8-3 10 <m8@example.com> <s@example.com>"), "stored")
        self.assertEqual(d.ask("put s8-4 10 - <s@example.com>"), "stored")
        self.assertEqual(d.ask("find <m8@example.com> <s@example.com>"), "found s8-1 s8-3")
        self.assertEqual(d.ask("find <m8@example.com> <other@example.com>"), "found s8-2")
        self.assertEqual(d.ask("find <m9@example.com> <s@example.com>"), "found")
        # No Message-ID: no duplicate check, even against entries without one.
        self.assertEqual(d.ask("find - <s@example.com>"), "found")
        # A Message-ID longer than a btree entry may be: stored and found.
        long_id = "<" + "x" * 5000 + "@example.com>"
        self.assertEqual(d.ask(f"put s8-5 10 {long_id} <s@example.com>"), "stored")
        self.assertEqual(d.ask(f"find {long_id} <s@example.com>"), "found s8-5")
        self.finish(d)

    def test_database_stopped_is_an_error_never_stored(self):
        d = self.driver()
        self.assertEqual(d.ask("put s9-1 10 - <>"), "stored")
        # The test cluster commits asynchronously: the WAL written before the crash.
        self.db.psql("CHECKPOINT")
        self.db.stop(mode="immediate")
        try:
            for cmd in ("put s9-2 10 - <>", "claim gw 60000 10", "update s9-1 gw delivered 1 0", "remove s9-1 gw",
                        "get s9-1", "list 10", "summary", "find <m@x> <>", "body s9-1", "retry s9-1"):
                self.assertTrue(d.ask(cmd, 30).startswith("error "), cmd)
        finally:
            self.db.start()
        # Back: a new connection once the reconnect backoff (at most 1 s) allows.
        harness.wait_for(lambda: d.ask("put s9-3 10 - <>") == "stored", 15, 0.3, what="a put after the restart")
        ids = self.db.psql("SELECT id FROM mailgate_queue WHERE id LIKE 's9-%' ORDER BY id").split()
        self.assertEqual(ids, ["s9-1", "s9-3"], "nothing was stored while the database was down")
        self.finish(d)

    def test_backend_terminated_mid_transaction(self):
        d = self.driver()
        self.assertEqual(d.ask("put s10-1 10 - <>"), "stored")
        # A lock held elsewhere makes the put wait inside its transaction; its backend is
        # then terminated: the pool retries once on a new connection, and the put is
        # stored exactly once.
        locker = subprocess.Popen(["psql", "-X", "-q", "-h", harness.HOST, "-p", str(self.db.port), "-U", "postgres",
                                   "-d", self.db.dbname, "-c",
                                   "SELECT pg_advisory_lock(7089068426741342278), pg_sleep(4)"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            harness.wait_for(lambda: self.db.psql(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted").strip() == "1", 10,
                what="the advisory lock held")
            d.send("put s10-2 20 - <>")
            sql = ("SELECT pid FROM pg_stat_activity WHERE application_name = 'mailgate' "
                   "AND wait_event_type = 'Lock'")
            pid = harness.wait_for(lambda: self.db.psql(sql).strip(), 10, what="the waiting put")
            self.assertEqual(self.db.psql(f"SELECT pg_terminate_backend({pid})").strip(), "t")
            self.assertEqual(d.answer(30), "stored")
        finally:
            locker.wait(30)
        self.assertEqual(self.db.psql("SELECT id FROM mailgate_queue ORDER BY id").split(), ["s10-1", "s10-2"])
        self.finish(d)


if __name__ == "__main__":
    unittest.main()
