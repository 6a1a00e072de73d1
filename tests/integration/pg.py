"""A private PostgreSQL 15 cluster for the integration tests.

    db = Postgres(workdir).start()          # initdb on first start
    db.psql("CREATE TABLE t (x int)")
    db.conninfo()                           # "host=127.0.0.1 port=... dbname=mail user=postgres"
    db.stop(); db.start()                   # outage tests; the data stays

A primary with a streaming replica (tests/integration/test_cluster.py):

    primary = Postgres(workdir, name="pg1", replication=True).start()
    standby = primary.standby(workdir, name="pg2").start()   # pg_basebackup -R, own port
    primary.stop(mode="immediate"); standby.promote()        # returns once it takes writes
    multi_host_conninfo([primary, standby])                  # target_session_attrs=read-write

The cluster lives in workdir/<name> (owned by the unprivileged `postgres` OS user
when the tests run as root), listens on 127.0.0.1:<free port> with its unix socket
in the same directory, trusts loopback connections, and runs with fsync=off.
Daemons write to files in the work directory, never to the test's stdout.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from harness import HOST, free_port, port_open, wait_for

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def available() -> bool:
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists() and shutil.which("psql") is not None


class Postgres:
    def __init__(self, workdir: str | os.PathLike, port: int | None = None, name: str = "pg",
                 dbname: str = "mail", replication: bool = False):
        self.workdir = Path(workdir)
        self.dir = self.workdir / name
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.port = port or free_port()
        self.dbname = dbname
        self.root = os.geteuid() == 0
        self.replication = replication  # a primary that streaming replicas can follow
        self._initialised = False

    # -- running commands as the cluster owner
    def _as_owner(self, argv: list[str]) -> list[str]:
        if self.root:
            return ["runuser", "-u", "postgres", "--"] + argv
        return argv

    def _run(self, argv: list[str], timeout: float = 60.0, check: bool = True,
             input_text: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(self._as_owner(argv), input=input_text, capture_output=True, text=True,
                              timeout=timeout, cwd=self.dir, stdin=None if input_text is not None
                              else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed (exit {proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}{self.log_text()[-4000:]}")
        return proc

    # -- lifecycle
    def init(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o755)
        if not (self.data / "PG_VERSION").exists():
            self._run([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                       "-E", "UTF8", "--no-sync", "--locale=C"])
            with open(self.data / "postgresql.conf", "a") as f:
                f.write(f"\nlisten_addresses = '{HOST}'\n"
                        f"port = {self.port}\n"
                        f"unix_socket_directories = '{self.dir}'\n"
                        "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                        "max_connections = 200\nshared_buffers = 16MB\n"
                        "logging_collector = off\nlog_min_messages = warning\n")
                if self.replication:
                    f.write(REPLICATION_CONF)
            if self.replication:
                with open(self.data / "pg_hba.conf", "a") as f:
                    f.write(f"\nhost replication all {HOST}/32 trust\n")
        self._initialised = True

    def start(self, timeout: float = 30.0) -> "Postgres":
        if not self._initialised:
            self.init()
        if self.is_running():
            return self
        # pg_ctl -l sends the server's output to the log file (the test's stdout stays clean).
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w",
                   "-t", str(int(timeout)), "-o", f"-p {self.port}", "start"], timeout=timeout + 10)
        wait_for(lambda: port_open(self.port), timeout, 0.05, f"postgres on port {self.port}")
        if not self._database_exists():
            self.psql(f'CREATE DATABASE "{self.dbname}"', dbname="postgres")
        return self

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", str(int(timeout)),
                   "stop"], timeout=timeout + 10, check=False)
        wait_for(lambda: not port_open(self.port), 10.0, 0.05, f"postgres port {self.port} closed")

    def is_running(self) -> bool:
        if not (self.data / "postmaster.pid").exists():
            return False
        proc = self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"], check=False)
        return proc.returncode == 0

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def _database_exists(self) -> bool:
        out = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.dbname}'", dbname="postgres")
        return out.strip() == "1"

    # -- access
    def conninfo(self, dbname: str | None = None) -> str:
        return f"host={HOST} port={self.port} dbname={dbname or self.dbname} user=postgres"

    def psql(self, sql: str, dbname: str | None = None, timeout: float = 30.0) -> str:
        """Runs sql (may hold several statements) over TCP; returns unaligned, tuples-only output.
        Stops at the first error (RuntimeError with psql's message)."""
        env_argv = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p", str(self.port),
                    "-U", "postgres", "-d", dbname or self.dbname, "-f", "-"]
        proc = subprocess.run(env_argv, input=sql, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed (exit {proc.returncode}): {proc.stderr.strip()}\nSQL: {sql[:500]}")
        return proc.stdout

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- replication
    def standby(self, workdir: str | os.PathLike, name: str, port: int | None = None) -> "Postgres":
        """A streaming replica of this (running) cluster: pg_basebackup -R into
        workdir/<name>/data, on its own port and socket directory. Start it with start()."""
        s = Postgres(workdir, port=port, name=name, dbname=self.dbname, replication=True)
        s.dir.mkdir(parents=True, exist_ok=True)
        if s.root:
            pw = pwd.getpwnam("postgres")
            os.chown(s.dir, pw.pw_uid, pw.pw_gid)
        os.chmod(s.dir, 0o755)
        if s.data.exists():
            shutil.rmtree(s.data)
        s._run([str(PG_BIN / "pg_basebackup"), "-h", HOST, "-p", str(self.port), "-U", "postgres",
                "-D", str(s.data), "-R", "-X", "stream", "-c", "fast", "--no-sync"], timeout=120)
        with open(s.data / "postgresql.conf", "a") as f:  # the primary's lines, then ours (the last wins)
            f.write(f"\nport = {s.port}\nunix_socket_directories = '{s.dir}'\n")
        s._initialised = True
        return s

    def in_recovery(self) -> bool:
        return self.psql("SELECT pg_is_in_recovery()", dbname="postgres").strip() == "t"

    def promote(self, timeout: float = 30.0) -> float:
        """pg_ctl promote; returns (seconds) once the server accepts writes."""
        start = time.monotonic()
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", str(int(timeout)), "promote"],
                  timeout=timeout + 10)

        def writable() -> bool:
            try:
                return self.psql("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')",
                                 timeout=5).strip() == "f|off"
            except (RuntimeError, subprocess.TimeoutExpired):
                return False
        wait_for(writable, timeout, 0.02, f"postgres on port {self.port} accepting writes")
        return time.monotonic() - start

    def wait_streaming(self, standby: "Postgres", timeout: float = 30.0) -> None:
        """Until standby has replayed everything this primary has committed so far (a
        marker row in the `postgres` database: an LSN compare can wait for the next WAL
        record when the insert position sits on a page boundary)."""
        marker = time.time_ns()
        self.psql("CREATE TABLE IF NOT EXISTS replication_marker (v bigint); "
                  f"INSERT INTO replication_marker VALUES ({marker})", dbname="postgres")

        def seen() -> bool:
            try:
                return standby.psql(f"SELECT count(*) FROM replication_marker WHERE v = {marker}",
                                    dbname="postgres").strip() == "1"
            except RuntimeError:  # the table itself has not arrived yet
                return False
        wait_for(seen, timeout, 0.02, f"standby on port {standby.port} replaying the primary's commits")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(mode="immediate")


REPLICATION_CONF = ("wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\n"
                    "wal_keep_size = 64MB\nhot_standby = on\nwal_receiver_status_interval = 1s\n"
                    "wal_retrieve_retry_interval = 200ms\n"
                    # pg_basebackup from a promoted standby refuses WAL written without them
                    "full_page_writes = on\n")


def multi_host_conninfo(clusters: list[Postgres], dbname: str | None = None, **options: str) -> str:
    """One libpq conninfo naming every cluster, for whichever is the primary now."""
    opts = {"target_session_attrs": "read-write", **options}
    return (f"host={','.join(HOST for _ in clusters)} port={','.join(str(c.port) for c in clusters)} "
            f"dbname={dbname or clusters[0].dbname} user=postgres "
            + " ".join(f"{k}={v}" for k, v in opts.items()))


def sql_quote(s: str) -> str:
    """A SQL string literal (test data only)."""
    return "'" + s.replace("'", "''") + "'"


def wait_until(predicate, timeout: float, interval: float = 0.02) -> float:
    """Polls predicate; returns the seconds it took, raises TimeoutError."""
    start = time.monotonic()
    wait_for(predicate, timeout, interval, "condition")
    return time.monotonic() - start
