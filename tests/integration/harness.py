"""Shared helpers for the integration tests and the benchmarks.

Real daemons on loopback, on ports chosen free at run time:
  - Dovecot 2.3 (imap, pop3, lmtp) with its own configuration, state and logs
    inside a work directory, users from a passwd-file, Maildir storage;
  - mailgate itself (build/mailgate, or $MAILGATE_BIN) with a given YAML config;
  - a throw-away CA and certificates made with the openssl CLI;
  - small line-oriented protocol clients (plain, implicit TLS, STARTTLS).

Python 3 standard library only. The API here is used by tests/integration and
bench/; extend it, don't rename.
"""

from __future__ import annotations

import base64
import errno
import imaplib
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


# --------------------------------------------------------------------------- ports

# Test files run in parallel (tests/integration/run_parallel.py) each get a range of
# ports of their own, MAILGATE_PORT_RANGE="first-last", below the kernel's ephemeral
# range: a port chosen here and released until its daemon binds it can then be taken
# neither by another file nor by some client's outgoing connection. Without it (one
# file at a time), the kernel picks (bind to port 0).
_PORT_RANGE = os.environ.get("MAILGATE_PORT_RANGE", "")
_ports_given: set[int] = set()


def _bind_free(host: str) -> socket.socket:
    """A socket bound to a free port of this process's range (or any free port)."""
    m = re.fullmatch(r"(\d+)-(\d+)", _PORT_RANGE)
    if not m:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((host, 0))
        return s
    first, last = int(m.group(1)), int(m.group(2))
    size = last - first + 1
    for attempt in range(2):
        start = int.from_bytes(os.urandom(2), "big") % size
        for i in range(size):
            port = first + (start + i) % size
            if port in _ports_given:
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((host, port))  # no SO_REUSEADDR: a port in TIME_WAIT is not free either
            except OSError:
                s.close()
                continue
            _ports_given.add(port)
            return s
        _ports_given.clear()  # every port handed out once: reuse those free again
    raise OSError(errno.EADDRINUSE, f"no free port in {_PORT_RANGE}")


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on host right now (bound once, then released)."""
    with _bind_free(host) as s:
        return s.getsockname()[1]


def free_ports(count: int, host: str = HOST) -> list[int]:
    """count distinct free ports (sockets held until all are chosen)."""
    socks, ports = [], []
    try:
        for _ in range(count):
            s = _bind_free(host)
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 10.0, host: str = HOST) -> None:
    """Waits until host:port accepts a TCP connection; raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        if port_open(port, host):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept within {timeout}s")
        time.sleep(0.05)


def wait_port_closed(port: int, timeout: float = 10.0, host: str = HOST) -> None:
    deadline = time.monotonic() + timeout
    while port_open(port, host):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} still accepting after {timeout}s")
        time.sleep(0.05)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.1, what: str = "condition"):
    """Polls predicate() until it returns a truthy value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- certificates

def _openssl(*args: str, cwd: str | os.PathLike | None = None) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stdout}")


class CA:
    """A throw-away certificate authority. .cert and .key are file paths."""

    def __init__(self, cert: str, key: str):
        self.cert = cert
        self.key = key

    def __fspath__(self) -> str:
        return self.cert

    def __iter__(self):  # allows `cert, key = make_ca(dir)`
        return iter((self.cert, self.key))


def make_ca(directory: str | os.PathLike, name: str = "mailgate test CA") -> CA:
    """Creates ca.pem / ca.key in directory (EC P-256, 1 day). Returns a CA."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "ca.pem", d / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return CA(str(cert), str(key))


def make_cert(ca: CA | tuple[str, str], directory: str | os.PathLike,
              names: list[str], basename: str | None = None) -> tuple[str, str]:
    """Issues a server certificate signed by ca for DNS names + IP:127.0.0.1.

    Returns (cert_path, key_path). The first name is also the subject CN."""
    ca_cert, ca_key = (ca.cert, ca.key) if isinstance(ca, CA) else ca
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    base = basename or re.sub(r"[^A-Za-z0-9_.-]", "_", names[0])
    key, csr, cert, ext = (d / f"{base}.key", d / f"{base}.csr", d / f"{base}.pem",
                           d / f"{base}.ext")
    san = ",".join([f"DNS:{n}" for n in names] + ["IP:127.0.0.1"])
    ext.write_text(f"subjectAltName={san}\n"
                   "basicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={names[0]}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", ca_cert, "-CAkey", ca_key,
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    os.chmod(key, 0o600)
    return str(cert), str(key)


def client_context(cafile: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """A client SSLContext trusting cafile (hostname checked; 127.0.0.1 is in every SAN)."""
    ctx = ssl.create_default_context(cafile=cafile)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_san_dns(sock: ssl.SSLSocket) -> list[str]:
    """DNS names in the verified peer certificate's subjectAltName."""
    cert = sock.getpeercert() or {}
    return [v for (k, v) in cert.get("subjectAltName", ()) if k == "DNS"]


# --------------------------------------------------------------------------- passwords

def hash_password(password: str, scheme: str = "SHA512-CRYPT") -> str:
    """'{SCHEME}hash' from `doveadm pw` (dovecot-core)."""
    proc = subprocess.run(["doveadm", "-O", "pw", "-s", scheme, "-p", password],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"doveadm pw -s {scheme} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def write_passwd(path: str | os.PathLike, users: dict[str, str], scheme: str = "SHA512-CRYPT",
                 extra: dict[str, str] | None = None) -> str:
    """Writes a Dovecot passwd-file `user:{SCHEME}hash[:extra]` for users {user: password}.

    extra maps a user to the rest of its line (uid:gid:gecos:home:shell:extra)."""
    lines = []
    for user, password in users.items():
        line = f"{user}:{hash_password(password, scheme)}"
        if extra and user in extra:
            line += ":" + extra[user]
        lines.append(line)
    Path(path).write_text("\n".join(lines) + "\n")
    return str(path)


# --------------------------------------------------------------------------- processes

def _kill_pid(pid: int, sig: int = signal.SIGTERM) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _descendants(pid: int) -> list[int]:
    """PIDs of every process below pid (from /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def make_workdir(prefix: str = "mailgate-it-") -> str:
    """A temporary directory readable by Dovecot's unprivileged users."""
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)
    return d


def remove_workdir(path) -> None:
    """Removes a work directory, or keeps it (and says where) with MAILGATE_KEEP_TMP=1."""
    if os.environ.get("MAILGATE_KEEP_TMP"):
        print(f"\nkept {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


class Daemons:
    """Mixin for a unittest.TestCase whose class starts daemons in setUpClass: the
    attributes named in DAEMONS (each None or an object with stop()) are stopped,
    then the work directory `dir` is removed, by _stop() and tearDownClass()."""

    DAEMONS: tuple[str, ...] = ("gateway",)

    @classmethod
    def _stop(cls):
        failure = None
        for name in cls.DAEMONS:
            daemon = getattr(cls, name, None)
            if daemon is not None:
                try:
                    daemon.stop()
                except Exception as e:  # e.g. SanitizerReport: the other daemons stop first
                    failure = failure or e
        if getattr(cls, "dir", None) is not None:
            remove_workdir(cls.dir)
        if failure is not None:
            raise failure

    @classmethod
    def tearDownClass(cls):
        cls._stop()


def close_imap(imap: imaplib.IMAP4) -> None:
    """Closes an imaplib connection whatever state it is in (logout may have closed it)."""
    try:
        imap.shutdown()
    except OSError:
        pass


class LogsOnFailure:
    """Mixin for a unittest.TestCase with a diagnostics() method (the daemons' logs):
    a test that failed or raised gets them on stderr, next to its traceback."""

    def tearDown(self):
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        failed = outcome is not None and not getattr(outcome, "success", True)
        if result is not None:
            for test, _ in list(getattr(result, "errors", [])) + list(getattr(result, "failures", [])):
                if getattr(test, "test_case", test) is self:
                    failed = True
        if failed:
            sys.stderr.write(f"\n=== logs for {self.id()} ===\n{self.diagnostics()}\n")
        super().tearDown()


def imap_node_marker(port: int, context: ssl.SSLContext, user: str, password: str) -> str:
    """Logs in over implicit TLS and returns the last word of message 1's subject: the
    tests mark each storage node's copy of a mailbox that way to tell which node answered."""
    imap = imaplib.IMAP4_SSL(HOST, port, ssl_context=context, timeout=10)
    try:
        typ, data = imap.login(user, password)
        if typ != "OK":
            raise AssertionError(f"login as {user}: {typ} {data}")
        imap.select("INBOX", readonly=True)
        typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        if typ != "OK":
            raise AssertionError(f"fetch: {typ} {data}")
        subject = data[0][1].decode().strip()
        imap.logout()
    finally:
        close_imap(imap)
    return subject.rsplit(" ", 1)[-1]


# --------------------------------------------------------------------------- Dovecot

class Dovecot:
    """A private Dovecot 2.3 (imap, pop3, lmtp) on loopback.

    users: {"alice@example.org": "password"}. Mail is stored in Maildirs under
    workdir/mail, owned by mail_uid (default: nobody when running as root).
    ports: optional {"imap": p, "pop3": p, "lmtp": p}; free ports otherwise.
    ssl_cert: optional (cert, key) to enable imaps/pop3s-capable STARTTLS on the node.
    extra_config: appended to dovecot.conf (benchmarks raise process limits here).
    """

    def __init__(self, workdir: str | os.PathLike, users: dict[str, str],
                 ports: dict[str, int] | None = None, ssl_cert: tuple[str, str] | None = None,
                 extra_config: str = "", name: str = "dovecot", scheme: str = "SHA512-CRYPT"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self.users = dict(users)
        self.name = name
        self.scheme = scheme
        ports = dict(ports or {})
        chosen = free_ports(3)
        self.imap_port = ports.get("imap") or chosen[0]
        self.pop3_port = ports.get("pop3") or chosen[1]
        self.lmtp_port = ports.get("lmtp") or chosen[2]
        self.ssl_cert = ssl_cert
        self.extra_config = extra_config
        self.base_dir = self.workdir / "run"
        self.state_dir = self.workdir / "state"
        self.mail_dir = self.workdir / "mail"
        self.log_path = self.workdir / "dovecot.log"
        self.config_path = self.workdir / "dovecot.conf"
        self.passwd_path = self.workdir / "users.passwd"
        if os.geteuid() == 0:
            self.mail_uid, self.mail_gid = 65534, 65534
        else:
            self.mail_uid, self.mail_gid = os.getuid(), os.getgid()
        self._started = False
        self._write_files()

    # -- files
    def _write_files(self) -> None:
        for d in (self.base_dir, self.state_dir, self.mail_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o755)
        if os.geteuid() == 0:
            os.chown(self.mail_dir, self.mail_uid, self.mail_gid)
        self.write_users(self.users)
        ssl_block = "ssl = no\n"
        if self.ssl_cert:
            ssl_block = (f"ssl = yes\nssl_cert = <{self.ssl_cert[0]}\n"
                         f"ssl_key = <{self.ssl_cert[1]}\n")
        self.config_path.write_text(f"""\
# Generated by tests/integration/harness.py
instance_name = mailgate-it-{self.name}-{os.getpid()}-{self.imap_port}
base_dir = {self.base_dir}
state_dir = {self.state_dir}
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
protocols = imap pop3 lmtp
listen = 127.0.0.1
{ssl_block}
auth_mechanisms = plain login
disable_plaintext_auth = no
auth_failure_delay = 0
auth_verbose = yes
login_trusted_networks = 127.0.0.0/8
mail_max_userip_connections = 10000
imap_idle_notify_interval = 2 mins
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
mail_uid = {self.mail_uid}
mail_gid = {self.mail_gid}
shutdown_clients = yes
verbose_proctitle = yes

passdb {{
  driver = passwd-file
  args = scheme={self.scheme} {self.passwd_path}
}}
userdb {{
  driver = passwd-file
  args = {self.passwd_path}
}}

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp_port}
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@example.org
}}
{self.extra_config}
""")

    def write_users(self, users: dict[str, str]) -> None:
        """(Re)writes the passwd-file; Dovecot rereads it on change."""
        self.users = dict(users)
        extra = {}
        for user in self.users:
            local, _, domain = user.partition("@")
            home = self.mail_dir / (domain or "_") / local
            extra[user] = f"{self.mail_uid}:{self.mail_gid}::{home}::"
        write_passwd(self.passwd_path, self.users, self.scheme, extra)
        os.chmod(self.passwd_path, 0o644)

    # -- lifecycle
    @property
    def master_pid(self) -> int | None:
        try:
            return int((self.base_dir / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        pid = self.master_pid
        return pid is not None and _pid_alive(pid)

    def start(self, timeout: float = 15.0) -> "Dovecot":
        if self.is_running():
            return self
        with open(self.workdir / "dovecot.stdout", "ab") as out:
            proc = subprocess.run(["dovecot", "-c", str(self.config_path)],
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        if proc.returncode != 0:
            raise RuntimeError(f"dovecot failed to start (exit {proc.returncode}):\n"
                               + (self.workdir / "dovecot.stdout").read_text()
                               + self.log_text())
        self._started = True
        try:
            for p in (self.imap_port, self.pop3_port, self.lmtp_port):
                wait_port(p, timeout)
            wait_for(self.is_running, timeout, 0.02, "dovecot master.pid")
        except TimeoutError as e:
            self.stop()
            raise RuntimeError(f"dovecot did not listen: {e}\n{self.log_text()}") from e
        return self

    def stop(self, grace: float = 1.0) -> None:
        """SIGTERM to the master; after grace seconds SIGKILL to it and all its children.

        (Dovecot's master can wait several seconds for its helper processes; tests
        and benchmarks do not need a graceful shutdown of the node.)"""
        pid = self.master_pid
        if pid is None or not _pid_alive(pid):
            self._remove_pidfile()
            return
        children = _descendants(pid)
        _kill_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        children += [c for c in _descendants(pid) if c not in children]
        if _pid_alive(pid):
            _kill_pid(pid, signal.SIGKILL)
        for child in children:
            if _pid_alive(child):
                _kill_pid(child, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while (_pid_alive(pid) or any(_pid_alive(c) for c in children)) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        self._remove_pidfile()
        for p in (self.imap_port, self.pop3_port, self.lmtp_port):
            try:
                wait_port_closed(p, 5.0)
            except TimeoutError:
                pass

    def _remove_pidfile(self) -> None:
        # A killed master may stay a zombie where nothing reaps orphans; its stale
        # pid must not make the next start believe Dovecot is still running.
        try:
            (self.base_dir / "master.pid").unlink()
        except FileNotFoundError:
            pass

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- mail
    def deliver(self, recipient: str, subject: str, body: str = "Hello.\r\n",
                sender: str = "postmaster@example.org") -> None:
        """Delivers one message to recipient over LMTP."""
        msg = (f"From: {sender}\r\nTo: {recipient}\r\nSubject: {subject}\r\n"
               f"Message-ID: <{time.time_ns()}@mailgate.test>\r\n\r\n{body}")
        with smtplib.LMTP(HOST, self.lmtp_port, timeout=10) as lmtp:
            refused = lmtp.sendmail(sender, [recipient], msg.encode())
        if refused:
            raise RuntimeError(f"LMTP refused {recipient}: {refused}")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# --------------------------------------------------------------------------- mailgate

def mailgate_bin() -> str:
    return os.environ.get("MAILGATE_BIN") or str(REPO / "build" / "mailgate")


def seccomp_helper() -> str:
    """tests/tools/no_io_uring, built next to the gateway binary: runs a command with
    io_uring_setup/enter/register denied (EPERM) by a seccomp filter."""
    return str(Path(mailgate_bin()).resolve().parent / "no_io_uring")


def gateway_command(binary: str, *args: str, seccomp: bool | None = None) -> list[str]:
    """The command line that runs the gateway. With MAILGATE_IO_SECCOMP=1 (or seccomp=True)
    it runs under the seccomp helper, where io_uring is denied: `server.io: auto` then
    picks epoll (the suite's second pass, on the epoll reactor)."""
    cmd = [binary, *args]
    if seccomp is None:
        seccomp = os.environ.get("MAILGATE_IO_SECCOMP") == "1"
    if seccomp:
        helper = seccomp_helper()
        if not os.access(helper, os.X_OK):
            raise RuntimeError(f"MAILGATE_IO_SECCOMP=1 but {helper} is missing (build it with cmake)")
        cmd.insert(0, helper)
    return cmd


def listen_ports(config_text: str) -> list[int]:
    """Ports named in the listeners: section of a mailgate YAML config."""
    ports = []
    in_listeners = False
    for line in config_text.splitlines():
        if re.match(r"^[A-Za-z_]", line):
            in_listeners = line.startswith("listeners:")
        if in_listeners:
            for m in re.finditer(r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]*\]|[\w.-]+):(\d+)", line):
                ports.append(int(m.group(1)))
    return ports


# Every test client is on loopback, and the suite logs in wrongly and sends bad
# commands on purpose, many times a minute: the built-in limits (docs/configuration.md,
# "Built-in rules") would delay and ban it, and one test's failures would spoil the
# next. A config with no `lists` and no `limits` section of its own gets loopback
# exempted; the policy tests (test_policy_*, test_session_limits, test_bans_cluster)
# write their own sections, and so run with real limits, the built-in ones included.
TEST_EXEMPTION = """
lists: { harness_loopback: { cidrs: ["127.0.0.0/8", "::1"] } }
limits: { defaults: { exempt: [harness_loopback] } }
"""


def with_test_exemption(config_text: str) -> str:
    if os.environ.get("MAILGATE_TEST_NO_EXEMPTION"):
        return config_text
    for line in config_text.splitlines():
        if line.startswith("lists:") or line.startswith("limits:"):
            return config_text
    return config_text.rstrip("\n") + "\n" + TEST_EXEMPTION


# A sanitizer build of the gateway (cmake -DMAILGATE_SANITIZE=ON; scripts/test.sh runs
# the epoll pass on one) writes its reports to stderr, which the harness keeps in the
# gateway's log: a report there fails the run (Mailgate.stop raises SanitizerReport).
SANITIZER_DEFAULTS = {
    # A leak or an error stops the process with a report; LeakSanitizer checks at exit.
    "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}
_SANITIZER_REPORT = re.compile(r"ERROR: (?:AddressSanitizer|LeakSanitizer)|SUMMARY: UndefinedBehaviorSanitizer"
                               r"|:\d+:\d+: runtime error: |LeakSanitizer has encountered a fatal error")


class SanitizerReport(AssertionError):
    """The gateway's stderr has an AddressSanitizer, LeakSanitizer or UBSan report."""


def sanitizer_report(text: str) -> str | None:
    """The report in text (from a few lines before its first line on), or None."""
    m = _SANITIZER_REPORT.search(text)
    if not m:
        return None
    start = text.rfind("\n", 0, max(0, text.rfind("\n", 0, m.start()) - 1)) + 1
    return text[start:start + 12000]


_SANITIZED: dict[str, bool] = {}


def sanitizer_build(path: str | None = None) -> bool:
    """Whether the binary (the gateway under test by default) is built with AddressSanitizer."""
    path = str(Path(path or mailgate_bin()).resolve())
    if path not in _SANITIZED:
        try:
            import mmap
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                _SANITIZED[path] = m.find(b"__asan_init") >= 0
        except (OSError, ValueError):
            _SANITIZED[path] = False
    return _SANITIZED[path]


def sanitizer_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a gateway process: env over os.environ, and the sanitizer
    options of SANITIZER_DEFAULTS where neither sets them (harmless without sanitizers)."""
    out = {**os.environ, **(env or {})}
    for k, v in SANITIZER_DEFAULTS.items():
        out.setdefault(k, v)
    return out


class Mailgate:
    """build/mailgate as a subprocess with config_text written to workdir/mailgate.yaml."""

    def __init__(self, workdir: str | os.PathLike, config_text: str, name: str = "mailgate",
                 env: dict[str, str] | None = None):
        self.env = env  # added to the environment the gateway starts with
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / f"{name}.yaml"
        self.log_path = self.workdir / f"{name}.log"
        self.binary = mailgate_bin()
        self.seccomp: bool | None = None  # True/False: with/without io_uring; None: $MAILGATE_IO_SECCOMP
        self.proc: subprocess.Popen | None = None
        self.write_config(config_text)

    def write_config(self, config_text: str) -> None:
        self.config_text = config_text
        self.config_path.write_text(with_test_exemption(config_text))

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 15.0) -> "Mailgate":
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"mailgate binary not found: {self.binary} "
                               "(build it with cmake, or set MAILGATE_BIN)")
        self._log = open(self.log_path, "ab")
        self._log_start = self._log.tell()  # the log is appended to across restarts
        self.proc = subprocess.Popen(gateway_command(self.binary, "--config", str(self.config_path),
                                                     seccomp=self.seccomp),
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, cwd=self.workdir,
                                     env=sanitizer_env(self.env))
        ports = listen_ports(self.config_text)
        deadline = time.monotonic() + timeout
        pending = list(ports)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mailgate exited with {self.proc.returncode} at start:\n"
                                   + self.log_text())
            pending = [p for p in pending if not port_open(p)]
            if not pending:
                break
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"mailgate did not listen on {pending} within {timeout}s:\n"
                                   + self.log_text())
            time.sleep(0.05)
        seccomp = self.seccomp if self.seccomp is not None else os.environ.get("MAILGATE_IO_SECCOMP") == "1"
        if seccomp and '"io":"io_uring"' in self.log_text():
            # The epoll pass must really run on epoll (the reactor is chosen, and logged,
            # before the listeners are bound).
            self.stop()
            raise RuntimeError("io_uring is denied here, yet mailgate chose it:\n" + self.log_text())
        return self

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reload(self) -> None:
        if self.is_running():
            self.proc.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (SIGKILL after timeout). Returns the exit status. Raises
        SanitizerReport (once the process is gone) when its stderr since this start
        has a sanitizer's report."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            self._log.close()
        except Exception:
            pass
        self.check_sanitizer()
        return self.proc.returncode

    def check_sanitizer(self) -> None:
        """Raises SanitizerReport when the log written since the last start has one
        (each report is raised once)."""
        start = getattr(self, "_log_start", 0)
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                data = f.read()
        except OSError:
            return
        report = sanitizer_report(data.decode("utf-8", "replace"))
        if report is None:
            return
        self._log_start = start + len(data)  # raised once
        raise SanitizerReport(f"sanitizer report from {self.binary} ({self.log_path}):\n{report}")

    def _log_settle(self, quiet: float = 0.06, limit: float = 2.0) -> None:
        """The gateway writes its log on a log thread of its own: a line logged before
        a reply reaches the file a moment after the client has the reply. Wait until
        the file has stopped growing for `quiet` seconds (at most `limit`)."""
        deadline = time.monotonic() + limit
        last, still = -1, time.monotonic()
        while time.monotonic() < deadline:
            try:
                size = os.path.getsize(self.log_path)
            except OSError:
                return
            now = time.monotonic()
            if size != last:
                last, still = size, now
            elif now - still >= quiet:
                return
            time.sleep(0.02)

    def log_text(self, max_bytes: int = 8 << 20) -> str:
        """The log (its last max_bytes only: a misbehaving binary can log without end)."""
        if self.proc is not None and self.proc.poll() is None:
            self._log_settle()
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - max_bytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_lines(self, max_bytes: int = 64 << 20) -> list[dict]:
        """Every JSON object line in the log (other lines are skipped)."""
        out = []
        for line in self.log_text(max_bytes).splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# The admin listener changes state only with the token of admin.token_file.
ADMIN_TOKEN = "it-admin-token-6f1d0c2b"


def admin_block(port: int, workdir: str | os.PathLike, host: str = HOST,
                token: str | None = ADMIN_TOKEN) -> str:
    """The `admin:` section on host:port; with a token (the default) it writes
    workdir/admin.token and names it as admin.token_file."""
    if token is None:
        return f'admin: {{ listen: "{host}:{port}" }}\n'
    path = Path(workdir) / "admin.token"
    path.write_text(token + "\n")
    return f'admin: {{ listen: "{host}:{port}", token_file: "{path}" }}\n'


def admin_headers(token: str | None = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def run_mailgate(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Runs the binary with args (e.g. --version) and captures its output."""
    return subprocess.run([mailgate_bin(), *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- raw clients

class LineClient:
    """A CRLF line client over TCP, optionally TLS (implicit or after STARTTLS).

    Reads are buffered here, not in a file object, so that switching to TLS can
    check that no plaintext byte is left over."""

    def __init__(self, port: int, host: str = HOST, tls: bool = False,
                 context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 timeout: float = 5.0):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        if tls:
            self.start_tls(context, server_hostname)

    # -- TLS
    def start_tls(self, context: ssl.SSLContext | None = None,
                  server_hostname: str | None = None) -> ssl.SSLSocket:
        if self.buf:
            raise AssertionError(f"plaintext bytes left before TLS: {self.buf!r}")
        ctx = context or client_context(verify=False)
        name = server_hostname if server_hostname is not None else self.host
        self.sock = ctx.wrap_socket(self.sock, server_hostname=name)
        return self.sock

    @property
    def tls_version(self) -> str | None:
        return self.sock.version() if isinstance(self.sock, ssl.SSLSocket) else None

    # -- I/O
    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def send_line(self, line: bytes | str) -> None:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")

    def _fill(self, timeout: float | None) -> bool:
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            data = self.sock.recv(65536)
        except ssl.SSLZeroReturnError:
            data = b""
        except (ConnectionResetError, ssl.SSLEOFError, BrokenPipeError):
            data = b""
        if not data:
            return False
        self.buf += data
        return True

    def read_line(self, timeout: float | None = None) -> str | None:
        """One line without CRLF, or None at EOF. Raises socket.timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout(f"no complete line within timeout; have {self.buf!r}")
            if not self._fill(left):
                if self.buf:
                    rest, self.buf = self.buf, b""
                    return rest.decode("utf-8", "replace")
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def read_until(self, predicate, timeout: float | None = None) -> list[str]:
        """Lines up to and including the first for which predicate(line) is true."""
        lines = []
        while True:
            line = self.read_line(timeout)
            if line is None:
                raise EOFError(f"connection closed; lines so far: {lines}")
            lines.append(line)
            if predicate(line):
                return lines

    def read_tagged(self, tag: str, timeout: float | None = None) -> list[str]:
        """IMAP: lines up to and including the tagged reply for tag."""
        return self.read_until(lambda l: l.startswith(tag + " "), timeout)

    def command(self, tag: str, text: str, timeout: float | None = None) -> list[str]:
        """IMAP: sends `tag text` and returns the lines up to its tagged reply."""
        self.send_line(f"{tag} {text}")
        return self.read_tagged(tag, timeout)

    def read_all(self, timeout: float = 5.0) -> list[str]:
        """Lines until EOF (raises socket.timeout if the peer does not close)."""
        lines = []
        while True:
            line = self.read_line(timeout)
            if line is None:
                return lines
            lines.append(line)

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True when the peer closes within timeout with no more data."""
        try:
            return self.read_line(timeout) is None
        except socket.timeout:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def imap_client(port: int, tls: bool = False, context: ssl.SSLContext | None = None,
                server_hostname: str | None = None, timeout: float = 5.0) -> tuple[LineClient, str]:
    """Connects, reads the IMAP greeting. Returns (client, greeting)."""
    c = LineClient(port, tls=tls, context=context, server_hostname=server_hostname,
                   timeout=timeout)
    greeting = c.read_line()
    if greeting is None:
        c.close()
        raise EOFError("closed before greeting")
    return c, greeting


def pop3_client(port: int, tls: bool = False, context: ssl.SSLContext | None = None,
                server_hostname: str | None = None, timeout: float = 5.0) -> tuple[LineClient, str]:
    return imap_client(port, tls, context, server_hostname, timeout)


def sasl_plain(user: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def imap_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def capabilities(line: str) -> set[str]:
    """Capability atoms from `* OK [CAPABILITY ...]` or `* CAPABILITY ...`."""
    m = re.search(r"\[CAPABILITY ([^\]]*)\]", line)
    if m:
        return set(m.group(1).upper().split())
    m = re.match(r"\* CAPABILITY (.*)$", line, re.I)
    return set(m.group(1).upper().split()) if m else set()


# --------------------------------------------------------------------------- curl

def curl(*args: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
    """curl -sS with args; output captured as text."""
    return subprocess.run(["curl", "-sS", "--max-time", str(int(timeout)), *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout + 5)


# --------------------------------------------------------------------------- config

def mailgate_config(*, certificates: Iterable[tuple[str, str]], listeners: Iterable[dict],
                    users_file: str, backends: Iterable[dict], routes: Iterable[dict],
                    failure_delay: str = "200ms", threads: int | str = 2,
                    shutdown_grace: str = "2s", log_level: str = "info",
                    log_format: str = "json") -> str:
    """Renders a mailgate YAML config from plain values.

    listeners: {name, protocol, port, tls, **extra} (extra: preauth_timeout, max_line, ...)
    backends:  {name, imap, pop3, lmtp, smtp, health_interval, health_timeout, tls, **extra} (extra: login, ...)
    routes:    {domain, primary, secondary}"""

    def scalar(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        return json.dumps(str(v))

    out = [f"server: {{ threads: {threads}, shutdown_grace: {shutdown_grace} }}",
           f"log: {{ level: {log_level}, format: {log_format} }}",
           "tls:", "  certificates:"]
    for cert, key in certificates:
        out.append(f"    - {{ cert: {scalar(cert)}, key: {scalar(key)} }}")
    out.append("listeners:")
    for l in listeners:
        extra = {k: v for k, v in l.items() if k not in ("name", "protocol", "port", "tls", "host")}
        host = l.get("host", HOST)
        fields = [f"name: {scalar(l['name'])}", f"protocol: {l['protocol']}",
                  f"listen: [{scalar(host + ':' + str(l['port']))}]",
                  f"tls: {l.get('tls', 'none')}"]
        fields += [f"{k}: {scalar(v) if not isinstance(v, str) else v}" for k, v in extra.items()]
        out.append("  - { " + ", ".join(fields) + " }")
    out += ["directory:", "  driver: file",
            f"  file: {{ users: {scalar(users_file)}, failure_delay: {failure_delay} }}",
            "backends:"]
    for b in backends:
        out += [f"  - name: {scalar(b['name'])}",
                f"    host: {b.get('host', HOST)}",
                "    ports: { " + ", ".join(f"{p}: {b[p]}" for p in ("imap", "pop3", "lmtp", "smtp")
                                            if b.get(p)) + " }",
                f"    tls: {b.get('tls', 'none')}",
                f"    health: {{ interval: {b.get('health_interval', '1s')}, "
                f"timeout: {b.get('health_timeout', '1s')} }}"]
        known = ("name", "host", "imap", "pop3", "lmtp", "smtp", "tls", "health_interval", "health_timeout")
        out += [f"    {k}: {scalar(v)}" for k, v in b.items() if k not in known]
    out += ["routing:", "  static:"]
    for r in routes:
        fields = [f"domain: {scalar(r['domain'])}", f"primary: {scalar(r['primary'])}"]
        if r.get("secondary"):
            fields.append(f"secondary: {scalar(r['secondary'])}")
        out.append("    - { " + ", ".join(fields) + " }")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- Postfix

POSTFIX_DAEMON_DIR = "/usr/lib/postfix/sbin"


def postfix_missing() -> str | None:
    """Why a private Postfix cannot run here (None when it can)."""
    for tool in ("postfix", "postconf"):
        if shutil.which(tool) is None:
            return f"{tool} not found (scripts/deps.sh installs postfix)"
    for daemon in ("master", "smtpd", "cleanup", "qmgr", "virtual", "postlogd"):
        if not os.access(os.path.join(POSTFIX_DAEMON_DIR, daemon), os.X_OK):
            return f"{POSTFIX_DAEMON_DIR}/{daemon} not found (scripts/deps.sh installs postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance must be started as root"
    return None


class Postfix:
    """A private Postfix (smtpd + virtual delivery) on loopback, all state in workdir.

    Its own config_directory (main.cf, master.cf), queue_directory, data_directory and
    maillog_file. Accepted mail for `mailboxes` is delivered by virtual(8) into
    workdir/mail/<domain>/<local>/ (Maildir, owned by nobody). Other recipients of
    `domains` (the mailboxes' domains by default) are refused with 550 5.1.1.
    tls_cert: optional (cert, key) to offer STARTTLS. xclient_hosts: who may send XCLIENT.
    """

    def __init__(self, workdir: str | os.PathLike, mailboxes: Iterable[str],
                 domains: Iterable[str] | None = None, port: int | None = None,
                 tls_cert: tuple[str, str] | None = None,
                 xclient_hosts: str = "127.0.0.0/8", hostname: str = "node.example.test",
                 extra_main: str = "", name: str = "postfix"):
        why = postfix_missing()
        if why:
            raise RuntimeError(f"cannot run Postfix: {why}")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self.mailboxes = list(mailboxes)
        self.domains = sorted(set(domains or []) | {m.partition("@")[2] for m in self.mailboxes})
        self.port = port or free_port()
        self.tls_cert = tls_cert
        self.xclient_hosts = xclient_hosts
        self.hostname = hostname
        self.extra_main = extra_main
        self.name = name
        self.config_dir = self.workdir / "conf"
        self.queue_dir = self.workdir / "queue"
        self.data_dir = self.workdir / "data"
        self.mail_dir = self.workdir / "mail"
        self.log_path = self.workdir / "maillog"
        self.stdout_path = self.workdir / "postfix.stdout"
        self.mail_uid = self.mail_gid = 65534
        self._write_files()

    # -- files
    def _write_files(self) -> None:
        import pwd
        for d in (self.config_dir, self.queue_dir, self.data_dir, self.mail_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)
        pw = pwd.getpwnam("postfix")
        os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.data_dir, 0o700)
        os.chown(self.mail_dir, self.mail_uid, self.mail_gid)
        self.write_mailboxes(self.mailboxes)
        tls = "smtpd_tls_security_level = none\n"
        if self.tls_cert:
            tls = (f"smtpd_tls_security_level = may\n"
                   f"smtpd_tls_cert_file = {self.tls_cert[0]}\n"
                   f"smtpd_tls_key_file = {self.tls_cert[1]}\n"
                   "smtpd_tls_loglevel = 1\n"
                   "smtpd_tls_received_header = yes\n")
        (self.config_dir / "main.cf").write_text(f"""\
# Generated by tests/integration/harness.py
compatibility_level = 3.6
config_directory = {self.config_dir}
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
mail_owner = postfix
setgid_group = postdrop
myhostname = {self.hostname}
mydomain = example.test
myorigin = $myhostname
mydestination =
relayhost =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
maillog_file_prefixes = {self.workdir}
maillog_file = {self.log_path}
smtpd_peername_lookup = no
smtpd_client_port_logging = yes
smtpd_authorized_xclient_hosts = {self.xclient_hosts}
smtpd_recipient_restrictions = reject_unauth_destination
local_header_rewrite_clients =
alias_maps =
alias_database =
biff = no
virtual_mailbox_domains = {", ".join(self.domains)}
virtual_mailbox_maps = texthash:{self.config_dir / "vmailbox"}
virtual_mailbox_base = {self.mail_dir}
virtual_uid_maps = static:{self.mail_uid}
virtual_gid_maps = static:{self.mail_gid}
virtual_transport = virtual
{tls}{self.extra_main}
""")
        (self.config_dir / "master.cf").write_text(f"""\
# Generated by tests/integration/harness.py: smtpd on loopback, virtual delivery.
{HOST}:{self.port} inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
pickup    unix  n - n 60 1 pickup
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
virtual   unix  - n n - - virtual
postlog   unix-dgram n - n - 1 postlogd
""")

    def write_mailboxes(self, mailboxes: Iterable[str]) -> None:
        """(Re)writes virtual_mailbox_maps (texthash: is read when a daemon starts)."""
        self.mailboxes = list(mailboxes)
        lines = []
        for m in self.mailboxes:
            local, _, domain = m.partition("@")
            lines.append(f"{m} {domain}/{local}/")
        (self.config_dir / "vmailbox").write_text("\n".join(lines) + "\n")

    # -- lifecycle
    @property
    def master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        pid = self.master_pid
        return pid is not None and _pid_alive(pid)

    def pids(self) -> list[int]:
        """Every live process of this instance (MAIL_CONFIG names its config directory)."""
        want = f"MAIL_CONFIG={self.config_dir}".encode()
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if want in env and _pid_alive(int(entry)):
                out.append(int(entry))
        return out

    def postfix_command(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        with open(self.stdout_path, "ab") as out:
            return subprocess.run(["postfix", "-c", str(self.config_dir), *args],
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                  timeout=timeout)

    def start(self, timeout: float = 30.0) -> "Postfix":
        if self.is_running():
            return self
        try:
            proc = self.postfix_command("start", timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"postfix start failed (exit {proc.returncode})")
            wait_port(self.port, timeout)
            wait_for(self.is_running, timeout, 0.05, "postfix master.pid")
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as e:
            self.stop()
            raise RuntimeError(f"postfix did not start: {e}\n"
                               + self.stdout_path.read_text(errors="replace")
                               + self.log_text()) from e
        return self

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the master (what `postfix stop` does); after grace seconds
        SIGKILL to every process still running with this instance's configuration."""
        pid = self.master_pid
        if pid is not None and _pid_alive(pid):
            _kill_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.05)
        for p in self.pids():
            _kill_pid(p, signal.SIGKILL)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.05)
        left = self.pids()
        if left:
            raise RuntimeError(f"postfix processes {left} survived SIGKILL")
        try:
            (self.queue_dir / "pid" / "master.pid").unlink()
        except OSError:
            pass

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- mail
    def maildir_files(self, mailbox: str) -> list[Path]:
        local, _, domain = mailbox.partition("@")
        base = self.mail_dir / domain / local
        return [p for sub in ("new", "cur") for p in sorted((base / sub).glob("*")) if p.is_file()] \
            if base.exists() else []

    def find(self, mailbox: str, marker: bytes) -> list[bytes]:
        """Stored messages of mailbox that contain marker."""
        out = []
        for p in self.maildir_files(mailbox):
            try:
                data = p.read_bytes()
            except OSError:
                continue
            if marker in data:
                out.append(data)
        return out

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def set_backend_keys(config: str, backend: str, ports: dict[str, int] | None = None,
                     keys: dict | None = None) -> str:
    """A config rendered by mailgate_config with backend `backend` changed: its
    `ports:` line replaced by ports (e.g. {"smtp": 2525}) and `key: value` lines
    (deliver, tls_ca, tls_name, tls_verify, connect_timeout...) added after `tls:`."""
    lines = config.split("\n")
    start = lines.index(f"  - name: {json.dumps(backend)}")
    end = start + 1
    while end < len(lines) and lines[end].startswith("    "):
        end += 1
    block = lines[start + 1:end]
    if ports is not None:
        i = next(i for i, l in enumerate(block) if l.startswith("    ports: "))
        block[i] = "    ports: { " + ", ".join(f"{k}: {v}" for k, v in ports.items()) + " }"
    if keys:
        i = next(i for i, l in enumerate(block) if l.startswith("    tls: "))
        extra = []
        for k, v in keys.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif not isinstance(v, (int, float)):
                v = json.dumps(str(v))
            extra.append(f"    {k}: {v}")
        block[i + 1:i + 1] = extra
    lines[start + 1:end] = block
    return "\n".join(lines)
