"""The postgres directory's prepared-statement path through its pool when the database
connection breaks in the middle of a query: the backend is terminated
(pg_terminate_backend) or the server stops (-m immediate) while a login's query runs.

The driver is tests/tools/pg_directory_fault (PostgresDirectory on a real PostgreSQL,
one login per stdin line). Every run checks the answers (the pool retries a broken
reused connection once; a stopped server is a temporary failure) and a clean exit.
With a sanitizer build of the tool (PG_FAULT_BIN=build-asan/pg_directory_fault, as
scripts/test.sh runs it) LeakSanitizer must report nothing: libpqxx 6 lost the
PGresult of a query whose connection broke, and the pool's statements now run on libpq
with the result owned from the start."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import unittest
from pathlib import Path

import harness
import pg


def fault_bin() -> str:
    path = os.environ.get("PG_FAULT_BIN")
    if path:
        return path
    return str(Path(harness.mailgate_bin()).resolve().parent / "pg_directory_fault")


class Driver:
    """pg_directory_fault as a child: one login per ask(); stderr kept for the end."""

    def __init__(self, conninfo: str):
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
                   UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
        self.proc = subprocess.Popen([fault_bin(), conninfo], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.stderr = ""
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._err.start()

    def _read_err(self):
        self.stderr = self.proc.stderr.read()

    def send(self, user: str) -> None:
        self.proc.stdin.write(f"{user} secret\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float = 30.0) -> list[str]:
        result: list[str] = []
        t = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not result or not result[0]:
            raise AssertionError(f"no answer from pg_directory_fault; stderr:\n{self.stderr[-4000:]}")
        return result[0].split(" ", 2)

    def finish(self, timeout: float = 60.0) -> int:
        self.proc.stdin.close()
        rc = self.proc.wait(timeout)
        self._err.join(10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc


@unittest.skipUnless(pg.available(), "PostgreSQL 15 binaries not installed")
class PostgresFaultTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(fault_bin()):
            raise unittest.SkipTest(f"{fault_bin()} not built")
        if os.environ.get("PG_FAULT_BIN") and not harness.sanitizer_build(fault_bin()):
            raise AssertionError(f"PG_FAULT_BIN={fault_bin()} is not a sanitizer build: no leak check")
        cls.tmp = tempfile.mkdtemp(prefix="mailgate-pg-faults-")
        os.chmod(cls.tmp, 0o755)
        cls.db = pg.Postgres(cls.tmp).start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.db.stop()
        finally:
            harness.remove_workdir(cls.tmp)

    def setUp(self):
        if not self.db.is_running():
            self.db.start()

    def sleeping_backend(self) -> str:
        """The pid of the backend running the directory's sleeping query."""
        sql = ("SELECT pid FROM pg_stat_activity WHERE application_name = 'mailgate' "
               "AND state = 'active' AND query LIKE '%pg_sleep%'")
        return harness.wait_for(lambda: self.db.psql(sql).strip(), 10, what="the sleeping query")

    def check_exit(self, driver: Driver) -> None:
        rc = driver.finish()
        for report in ("LeakSanitizer", "AddressSanitizer", "runtime error"):
            self.assertFalse(report in driver.stderr, f"{report} in stderr:\n{driver.stderr[-6000:]}")
        self.assertEqual(rc, 0, driver.stderr[-6000:])

    def test_backend_terminated_mid_query(self):
        d = Driver(self.db.conninfo())
        d.send("fast")  # the pool's connection is made and reused by the next login
        self.assertEqual(d.answer()[:2], ["fast", "unknown_user"])
        d.send("sleep2")
        pid = self.sleeping_backend()
        self.assertEqual(self.db.psql(f"SELECT pg_terminate_backend({pid})").strip(), "t")
        # The reused connection broke (57P01): one fresh connection, the query again.
        self.assertEqual(d.answer()[:2], ["sleep2", "unknown_user"])
        self.check_exit(d)

    def test_server_stopped_mid_query(self):
        d = Driver(self.db.conninfo())
        d.send("fast")
        self.assertEqual(d.answer()[:2], ["fast", "unknown_user"])
        d.send("sleep5")
        self.sleeping_backend()
        self.db.stop(mode="immediate")
        self.assertEqual(d.answer()[:2], ["sleep5", "tempfail"])
        self.db.start()
        d.send("fast")  # a new connection once the reconnect backoff (at most 1 s) allows
        self.assertIn(d.answer()[:2], (["fast", "unknown_user"], ["fast", "tempfail"]))
        self.check_exit(d)


if __name__ == "__main__":
    unittest.main()
