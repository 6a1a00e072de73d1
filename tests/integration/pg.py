"""A private PostgreSQL 15 cluster for the integration tests.

    db = Postgres(workdir).start()          # initdb on first start
    db.psql("CREATE TABLE t (x int)")
    db.conninfo()                           # "host=127.0.0.1 port=... dbname=mail user=postgres"
    db.stop(); db.start()                   # outage tests; the data stays

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
                 dbname: str = "mail"):
        self.workdir = Path(workdir)
        self.dir = self.workdir / name
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.port = port or free_port()
        self.dbname = dbname
        self.root = os.geteuid() == 0
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

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(mode="immediate")


def sql_quote(s: str) -> str:
    """A SQL string literal (test data only)."""
    return "'" + s.replace("'", "''") + "'"


def wait_until(predicate, timeout: float, interval: float = 0.02) -> float:
    """Polls predicate; returns the seconds it took, raises TimeoutError."""
    start = time.monotonic()
    wait_for(predicate, timeout, interval, "condition")
    return time.monotonic() - start
