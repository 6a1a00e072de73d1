#!/usr/bin/env python3
"""Side-by-side IMAP benchmark: Dovecot direct vs mailgate vs nginx mail proxy.

Started by bench/run.sh (which builds the load generator, raises the limits and
sysctls, then runs this). Everything runs on loopback in one temporary directory:
one Dovecot (tests/integration/harness.py), build/mailgate in front of it, nginx's
mail proxy in front of it (with the load generator's own auth_http responder), and
build/mailgate-load driving each of the three in turn with the same scenarios.

The proxies' own CPU time comes from /proc/PID/stat (utime+stime of every process of
the proxy: mailgate's one process with its threads; nginx's master and workers; the
auth_http responder is not counted), sampled before and after each run. Resident
memory is the sum of VmRSS of the same processes, sampled before a run and while
all of its sessions sit in IDLE.

The `logins` scenario is mailgate's alone (the directory cache is mailgate's): a
private PostgreSQL 15 (tests/integration/pg.py) with mailgate's default schema
(`mailgate --init-db`) holding the bench users with SHA512-CRYPT hashes, and
mailgate instances of its own with `directory.driver: postgres`, measured once with
the auth cache off (ttl 0s: every login queries PostgreSQL and verifies the hash)
and once with it warm (ttl 5m, after a pass over all users).

The `smtp` scenario is separate from the IMAP ones: Postfix's smtp-sink as the
receiving node (it counts every message it takes), Postfix's smtp-source as the
load (20 sessions, 10 KB messages, one message per connection and then reused
connections), sent directly to the sink, through a mailgate of its own (an MX
listener, `deliver: smtp` to the sink) and through an nginx of its own (mail proxy,
`protocol smtp`, `smtp_auth none`, the auth_http responder pointing at the sink);
then `mailgate-load smtplat`, one connection, messages back to back, for the time
from the final "." to the 250.

With `--baseline-bin PATH` a second mailgate (another build, e.g. an older commit)
runs next to the first with the same configuration on ports of its own, as the
`baseline` target of the IMAP scenarios; the table gains its column and the ratio
mailgate/baseline. With `--repeats N` the sessions, latency and fetch scenarios are
run N times, the targets interleaved (each round in a rotated order), and every
figure is the median of the N rounds (each round's figures are kept in --json and
the CPU figures of every round printed below the table).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "bench"))
import harness  # noqa: E402  (tests/integration/harness.py)
import policy_conf  # noqa: E402  (bench/policy_conf.py)
import pg  # noqa: E402  (tests/integration/pg.py: a private PostgreSQL cluster)

CLK_TCK = os.sysconf("SC_CLK_TCK")
NGINX_MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
TARGETS = ("direct", "mailgate", "baseline", "epoll", "nginx")  # baseline: --baseline-bin; epoll: --epoll
TLS_MODES = ("none", "implicit", "starttls")
SCENARIOS = ("sessions", "latency", "fetch", "idle", "logins", "smtp", "flood")
DEFAULT_SCENARIOS = SCENARIOS[:6]  # flood: on request (--scenarios flood, with --policy)
IMAP_SCENARIOS = ("sessions", "latency", "fetch", "idle", "logins", "flood")  # these need Dovecot
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_MODES = ("perconn", "reused")  # smtp-source without / with -d
SMTP_MODE_TEXT = {"perconn": "1 msg/conn", "reused": "reused conns"}
# logins: the bench users live in the default schema as user<N>@BENCH_DOMAIN (the
# schema wants an address with a domain); the load generator logs in as plain user<N>.
BENCH_DOMAIN = "bench.invalid"
# The default password query (docs/postgres.md) with the domain appended to the login
# name; no `user` column, so Dovecot gets the login name (user<N>) unchanged. Same
# plan as the default: the unique index on lower(address), one row.
LOGINS_PASSWORD_QUERY = (
    "SELECT m.password, (m.active AND d.active) AS active FROM mailboxes m "
    "JOIN domains d ON d.name = m.domain WHERE lower(m.address) = %{user}::text || '@" + BENCH_DOMAIN + "'")
SMTP_RCPT = "bench@" + BENCH_DOMAIN  # the one recipient smtp-source and the probe send to


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> float:
    """The 1-minute load average (the machine's cores are shared: it says how busy)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def median(values: list):
    vals = sorted(v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))
    if not vals:
        return None
    n = len(vals)
    return vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2


def median_record(runs: list[dict]) -> dict:
    """One record whose numeric fields (nested dicts too) are the medians over runs;
    the runs themselves are kept under "runs"."""
    def merge(recs: list[dict]) -> dict:
        out: dict = {}
        keys = [k for r in recs for k in r if k != "runs"]
        for k in dict.fromkeys(keys):
            vals = [r.get(k) for r in recs]
            if any(isinstance(v, dict) for v in vals):
                out[k] = merge([v for v in vals if isinstance(v, dict)])
            elif any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                out[k] = median(vals)
            else:
                out[k] = vals[-1]
        return out
    if len(runs) == 1:
        return runs[0]
    rec = merge(runs)
    rec["runs"] = runs
    return rec


# --------------------------------------------------------------------------- /proc

def proc_cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (whole thread group)
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def postgres_pids(db: "pg.Postgres") -> list[int]:
    """The postmaster and its children (the backends of mailgate's pool, background workers)."""
    try:
        pid = int((db.data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return []
    return [pid] + harness._descendants(pid)


def scrape_metrics(port: int) -> dict[str, float]:
    """mailgate's admin /metrics (Prometheus text) as {name: value}; {} when unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            pass
    return out


def proc_rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return total


# --------------------------------------------------------------------------- daemons

class NginxMail:
    """nginx (nginx-light + libnginx-mod-mail) as an IMAP proxy, own prefix in workdir."""

    def __init__(self, workdir: Path, ports: dict[str, int], auth_port: int,
                 cert: tuple[str, str], workers: int):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = ports
        self.conf = self.dir / "nginx.conf"
        self.proc: subprocess.Popen | None = None
        self.conf.write_text(f"""\
load_module {NGINX_MAIL_MODULE};
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 12000; }}
mail {{
    server_name localhost;
    auth_http 127.0.0.1:{auth_port}/auth;
    proxy_pass_error_message on;
    imap_capabilities "IMAP4rev1" "LITERAL+" "SASL-IR" "LOGIN-REFERRALS" "ID" "ENABLE" "IDLE";
    imap_auth plain login;
    ssl_certificate {cert[0]};
    ssl_certificate_key {cert[1]};
    ssl_protocols TLSv1.2 TLSv1.3;
    timeout 60s;
    proxy_timeout 1h;
    server {{ listen 127.0.0.1:{ports['none']};            protocol imap; }}
    server {{ listen 127.0.0.1:{ports['implicit']} ssl;    protocol imap; }}
    server {{ listen 127.0.0.1:{ports['starttls']};        protocol imap; starttls on; }}
}}
""")

    def start(self) -> "NginxMail":
        out = open(self.dir / "nginx.stdout", "ab")
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.dir), "-c", str(self.conf), "-e", str(self.dir / "error.log"),
             "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        for p in self.ports.values():
            harness.wait_port(p, 10)
        return self

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid] + harness._descendants(self.proc.pid)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class AuthHttp:
    """mailgate-load authhttp: the nginx auth_http responder (not counted as nginx)."""

    def __init__(self, load_bin: str, workdir: Path, port: int, backend_port: int, password: str):
        self.args = [load_bin, "authhttp", "--listen-port", str(port), "--backend-port",
                     str(backend_port), "--password", password]
        self.port = port
        self.log = workdir / "authhttp.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "AuthHttp":
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        harness.wait_port(self.port, 10)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class NginxSmtp(NginxMail):
    """nginx's mail proxy in SMTP mode: `smtp_auth none` (nginx asks auth_http with
    Auth-Method: none once it has MAIL FROM and RCPT TO, then replays them to the node
    and relays the rest of the connection byte for byte), XCLIENT on, as mailgate
    uses it when the node offers it (smtp-sink does)."""

    def __init__(self, workdir: Path, port: int, auth_port: int, workers: int):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = {"smtp": port}
        self.conf = self.dir / "nginx.conf"
        self.proc = None
        self.conf.write_text(f"""\
load_module {NGINX_MAIL_MODULE};
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 4096; }}
mail {{
    server_name mx.bench.invalid;
    auth_http 127.0.0.1:{auth_port}/auth;
    proxy_pass_error_message on;
    smtp_auth none;
    smtp_capabilities "SIZE 52428800" "8BITMIME" "ENHANCEDSTATUSCODES";
    xclient on;
    timeout 60s;
    proxy_timeout 1h;
    server {{ listen 127.0.0.1:{port}; protocol smtp; }}
}}
""")


class NginxStreamDeny(NginxMail):
    """nginx's answer to a flood from a banned address. nginx's mail module has no
    access control (no allow/deny, no limit_conn: those are in the http and stream
    modules only), so the closest nginx offers in front of an IMAP server is a stream
    (TCP) proxy with `deny`: ngx_stream_access_module closes a denied connection at
    its access phase, before any upstream connection and without a line to the client
    (Debian package libnginx-mod-stream)."""

    def __init__(self, workdir: Path, port: int, upstream_port: int, deny: list[str], workers: int):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = {"none": port}
        self.conf = self.dir / "nginx.conf"
        self.proc = None
        self.conf.write_text(f"""\
load_module {NGINX_STREAM_MODULE};
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 12000; }}
stream {{
    server {{
        listen 127.0.0.1:{port};
        {" ".join(f"deny {d};" for d in deny)}
        allow all;
        proxy_pass 127.0.0.1:{upstream_port};
    }}
}}
""")


class SmtpSink:
    """Postfix's smtp-sink (-c: running counters, flushed to its stdout file at every
    "." it answers, so the number of messages it has taken can be read at any time)."""

    def __init__(self, workdir: Path, port: int):
        self.port = port
        self.out = workdir / "smtp-sink.out"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "SmtpSink":
        f = open(self.out, "ab")
        self.proc = subprocess.Popen([SMTP_SINK, "-c", "-u", "nobody", "-m", "1024",
                                      f"127.0.0.1:{self.port}", "1024"],
                                     stdin=subprocess.DEVNULL, stdout=f, stderr=f)
        harness.wait_port(self.port, 10)
        return self

    def counters(self) -> tuple[int, int]:
        """(sessions, messages) taken so far."""
        try:
            found = re.findall(rb"sess=(\d+) quit=\d+ mesg=(\d+)", self.out.read_bytes()[-4096:])
        except OSError:
            return -1, -1
        return (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)

    def messages(self) -> int:
        return self.counters()[1]

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def smtp_mailgate_config(port: int, sink_port: int, users_file: str, threads: int, log_level: str) -> str:
    """mailgate as an MX: one plain `smtp` listener, the recipient in a passwd-file,
    bench.invalid routed to the sink, delivered to it over SMTP."""
    return f"""\
server: {{ threads: {threads}, shutdown_grace: 2s }}
log: {{ level: {log_level}, format: json }}
listeners:
  - {{ name: mx, protocol: smtp, listen: ["127.0.0.1:{port}"], tls: none, max_messages: 1000000 }}
directory:
  driver: file
  file: {{ users: {json.dumps(users_file)}, failure_delay: 200ms }}
backends:
  - name: sink
    host: 127.0.0.1
    ports: {{ smtp: {sink_port} }}
    deliver: smtp
    tls: none
    health: {{ interval: 5s, timeout: 2s }}
routing:
  static:
    - {{ domain: "{BENCH_DOMAIN}", primary: sink }}
"""


def imap_mailgate_config(ports: dict[str, int], passwd: Path, cert: tuple[str, str], backend_port: int,
                         threads: int) -> str:
    """mailgate in front of the bench's Dovecot: three IMAP listeners (plain with
    plaintext LOGIN allowed, implicit TLS, STARTTLS), the users in a passwd-file,
    everything routed to the one backend."""
    return harness.mailgate_config(
        certificates=[cert],
        listeners=[
            {"name": "imap", "protocol": "imap", "port": ports["none"], "tls": "none",
             "allow_plaintext_auth": True},
            {"name": "imaps", "protocol": "imap", "port": ports["implicit"], "tls": "implicit"},
            {"name": "imap-starttls", "protocol": "imap", "port": ports["starttls"], "tls": "starttls"},
        ],
        users_file=str(passwd),
        backends=[{"name": "dovecot", "imap": backend_port, "health_interval": "5s", "health_timeout": "2s"}],
        routes=[{"domain": "*", "primary": "dovecot"}],
        threads=threads, log_level=os.environ.get("BENCH_MAILGATE_LOG", "warn"))


# --------------------------------------------------------------------------- mailbox

def write_bulk_mailbox(maildir: Path, count: int, size: int, uid: int, gid: int) -> None:
    """count messages of about size bytes each, written as Maildir files (LF line ends;
    Dovecot sends them with CRLF)."""
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    line = ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/" * 2)[:76] + "\n"
    now = int(time.time())
    for i in range(count):
        head = (f"From: bench@example.org\nTo: bulk@example.org\nSubject: bulk {i}\n"
                f"Message-ID: <bulk-{i}-{now}@mailgate.bench>\n"
                f"Date: Thu, 01 Jan 2026 00:00:00 +0000\nMIME-Version: 1.0\n"
                f"Content-Type: text/plain\n\n")
        body_lines = max(0, (size - len(head)) // len(line))
        data = head + line * body_lines
        (maildir / "cur" / f"{now}.M{i}P1.bench,S={len(data)}:2,S").write_text(data)
    os.chown(maildir.parent.parent, uid, gid)  # mail/_ : Dovecot creates the other homes here
    for root, dirs, files in os.walk(maildir.parent):
        os.chown(root, uid, gid)
        for f in files:
            os.chown(os.path.join(root, f), uid, gid)


def start_dovecot(work: Path, users: dict[str, str], cert: tuple[str, str]) -> tuple["harness.Dovecot", int]:
    """The bench's Dovecot (plain + STARTTLS on one port, implicit TLS on another),
    tuned so that it is not the first wall; returns it and its implicit-TLS port."""
    imaps_port = harness.free_port()
    dovecot_extra = f"""
    ssl_min_protocol = TLSv1.2
    mail_fsync = never
    default_vsz_limit = 1G
    default_client_limit = 20000
    mailbox_idle_check_interval = 30 secs
    auth_verbose = no
    service imap-login {{
      inet_listener imaps {{
        address = 127.0.0.1
        port = {imaps_port}
        ssl = yes
      }}
      service_count = 0
      process_min_avail = 2
      process_limit = 4
      client_limit = 15000
      vsz_limit = 2G
    }}
    service imap {{
      service_count = 0
      client_limit = 100
      process_limit = 200
      process_min_avail = 2
      vsz_limit = 2G
    }}
    service auth {{
      client_limit = 20000
    }}
    service anvil {{
      client_limit = 20000
    }}
    protocol imap {{
      mail_max_userip_connections = 20000
    }}
    """
    log("starting Dovecot ...")
    dovecot = harness.Dovecot(work / "dovecot", users, ssl_cert=cert, extra_config=dovecot_extra,
                              scheme="PLAIN", name="bench")
    dovecot.start()
    try:
        harness.wait_port(imaps_port, 10)
    except Exception:
        dovecot.stop()
        raise
    return dovecot, imaps_port


# --------------------------------------------------------------------------- runner

class Bench:
    def __init__(self, args):
        self.args = args
        self.load_bin = args.load_bin
        self.password = "benchpass"
        self.results: dict = {t: {} for t in TARGETS}
        self.targets: dict[str, dict] = {}  # name -> {ports: {tls: port}, pids: fn}
        self.work: Path | None = None          # set by main()
        self.mailgate_env: dict | None = None  # logins: {cert, backend_port}, set by main()
        self.loads: dict[str, list[float]] = {}  # scenario -> 1-min load averages sampled during it
        self.runs: dict[tuple[str, str], list[dict]] = {}  # (target, figure key) -> one record per round
        self.admin_port: int | None = None  # --policy: the mailgate target's admin endpoint

    def note_load(self, scenario: str) -> None:
        self.loads.setdefault(scenario, []).append(loadavg())

    def rounds(self, scenario: str):
        """(round, targets in this round's order): the targets interleaved, each round
        starting one further along, so that no target is always first after a pause."""
        names = list(self.targets)
        for i in range(self.args.repeats):
            self.note_load(scenario)
            k = i % len(names) if names else 0
            yield i, names[k:] + names[:k]
        self.note_load(scenario)

    def keep(self, target: str, key: str, rec: dict) -> None:
        """Stores one round's record; results[target][key] is the median of the rounds so far."""
        runs = self.runs.setdefault((target, key), [])
        runs.append(rec)
        self.results.setdefault(target, {})[key] = median_record(runs)

    # -- running the load generator
    def load(self, mode: str, port: int, tls: str, extra: list[str], label: str,
             on_line=None, timeout: float = 300) -> dict:
        cmd = [self.load_bin, mode, "--port", str(port), "--tls", tls, "--password", self.password,
               "--users", str(self.args.users), "--label", label] + extra
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        final = {}
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                obj = json.loads(line)
                if "event" in obj and on_line:
                    on_line(obj)
                else:
                    final = obj
                if time.monotonic() > deadline:
                    log(f"    [{label}] load generator over {timeout}s: killed")
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        proc.wait()
        if err.strip():
            log(f"    [{label}] load generator: {err.strip()[:800]}")
        return final

    def measured(self, target: str, fn):
        """Runs fn() and returns (its result, proxy CPU seconds spent meanwhile)."""
        pids = self.targets[target]["pids"]()
        c0 = proc_cpu_seconds(pids)
        r = fn()
        c1 = proc_cpu_seconds(self.targets[target]["pids"]())
        return r, (c1 - c0) if pids else None

    # -- scenarios
    def scenario_sessions(self) -> None:
        for rnd, order in self.rounds("sessions"):
            for tls in TLS_MODES:
                for t in order:
                    port = self.targets[t]["ports"][tls]
                    label = f"sessions/{tls}/{t}" + (f"/round{rnd + 1}" if self.args.repeats > 1 else "")
                    # Short warm-up (caches, process pools), not measured.
                    self.load("sessions", port, tls,
                              ["--concurrency", "32", "--duration", "0.5", "--timeout", "10"], label + "/warmup")
                    r, cpu = self.measured(t, lambda: self.load(
                        "sessions", port, tls,
                        ["--concurrency", "32", "--duration", str(self.args.duration), "--timeout", "10"],
                        label))
                    n = r.get("sessions", 0)
                    rec = {"sessions_per_s": r.get("sessions_per_s"), "sessions": n,
                           "errors": r.get("errors"), "latency_ms": r.get("latency_ms")}
                    if cpu is not None and n:
                        rec["cpu_us_per_session"] = cpu / n * 1e6
                        rec["cpu_s"] = cpu
                    rec["load1"] = loadavg()
                    self.keep(t, f"sessions_{tls}", rec)
                    log(f"  {label}: {fmt(rec.get('sessions_per_s'))} sessions/s, "
                        f"cpu/session {fmt(rec.get('cpu_us_per_session'))} us, errors {r.get('errors')}")

    def scenario_latency(self) -> None:
        for rnd, order in self.rounds("latency"):
            for t in order:
                port = self.targets[t]["ports"]["none"]
                label = f"latency/none/{t}" + (f"/round{rnd + 1}" if self.args.repeats > 1 else "")
                r = self.load("latency", port, "none",
                              ["--sessions", str(self.args.latency_sessions), "--warmup", "20",
                               "--timeout", "10"], label)
                lat = r.get("latency_ms", {})
                self.keep(t, "latency", {"median_ms": lat.get("median"), "p99_ms": lat.get("p99"),
                                         "sessions": r.get("sessions"), "errors": r.get("errors")})
                log(f"  {label}: median {fmt(lat.get('median'))} ms, p99 {fmt(lat.get('p99'))} ms")

    def scenario_fetch(self) -> None:
        # One unmeasured warm-up session per target first (one FETCH of the whole
        # mailbox: first touch of the proxy's buffers, TLS set-up, allocator growth),
        # then the measured session: --fetch-repeat FETCHes of the 100 MiB mailbox,
        # by default 10, i.e. about 1.05 GB relayed, so that CPU per GB is the steady
        # state of the relay and not its start-up cost.
        for rnd, order in self.rounds("fetch"):
            for tls in ("none", "implicit"):
                for t in order:
                    port = self.targets[t]["ports"][tls]
                    label = f"fetch/{tls}/{t}" + (f"/round{rnd + 1}" if self.args.repeats > 1 else "")
                    self.load("fetch", port, tls, ["--user", "bulk", "--concurrency", "1", "--repeat", "1",
                                                   "--timeout", "120"], label + "/warmup")
                    args = ["--user", "bulk", "--concurrency", "1", "--repeat", str(self.args.fetch_repeat),
                            "--timeout", "300"]
                    r, cpu = self.measured(t, lambda: self.load("fetch", port, tls, args, label, timeout=600))
                    nbytes = r.get("bytes", 0)
                    rec = {"mb_per_s": r.get("mb_per_s"), "bytes": nbytes, "errors": r.get("errors")}
                    if cpu is not None and nbytes:
                        rec["cpu_s_per_gb"] = cpu / (nbytes / 1e9)
                        rec["cpu_s"] = cpu
                    rec["load1"] = loadavg()
                    self.keep(t, f"fetch_{tls}", rec)
                    log(f"  {label}: {fmt(rec.get('mb_per_s'))} MB/s over {nbytes / 1e9:.2f} GB, "
                        f"cpu/GB {fmt(rec.get('cpu_s_per_gb'))} s, errors {r.get('errors')}")

    def scenario_flood(self) -> None:
        """CPU per refused connection: `mailgate-load flood` (connections bound to one
        source address) at the --policy mailgate's plain IMAP listener, twice: from
        FLOOD_SOURCE (127.0.0.2), banned through the admin endpoint (POST /bans) before
        the first round, and from RULE_SOURCE (127.0.0.3), in lists.blocked and refused
        by the policy rule blocked-nets; both get `* BYE [UNAVAILABLE]` and close at
        `connect`, before any greeting or TLS. Against nginx's stream proxy with `deny`
        for both addresses (a bare close), flooded from 127.0.0.2. Rounds interleaved
        with --repeats."""
        a = self.args
        if "mailgate" not in self.targets or not a.policy:
            log("  flood: needs the mailgate target with --policy: skipped")
            return
        assert self.work is not None
        mg = {"port": self.targets["mailgate"]["ports"]["none"], "pids": self.targets["mailgate"]["pids"]}
        targets = {"mailgate-ban": dict(mg, source=policy_conf.FLOOD_SOURCE),
                   "mailgate-rule": dict(mg, source=policy_conf.RULE_SOURCE)}
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}/bans?net={policy_conf.FLOOD_SOURCE}"
                                     "&ttl=1d&reason=bench-flood", method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            log(f"  flood: ban made: {resp.read().decode().strip()}")
        nginx = None
        wanted = set(a.targets.split(","))
        if "nginx" in wanted:
            if not os.path.exists(NGINX_STREAM_MODULE):
                log(f"  flood: {NGINX_STREAM_MODULE} not found (libnginx-mod-stream): nginx skipped")
            else:
                port = harness.free_port()
                nginx = NginxStreamDeny(self.work / "nginx-stream", port, self.mailgate_env["backend_port"]
                                        if self.mailgate_env else 1,
                                        [policy_conf.FLOOD_SOURCE, policy_conf.RULE_SOURCE], a.threads).start()
                targets["nginx"] = {"port": port, "pids": nginx.pids, "source": policy_conf.FLOOD_SOURCE}
        try:
            names = list(targets)
            for rnd in range(a.repeats):
                self.note_load("flood")
                k = rnd % len(names)
                for t in names[k:] + names[:k]:
                    tg = targets[t]
                    label = f"flood/{t}" + (f"/round{rnd + 1}" if a.repeats > 1 else "")
                    base = ["--source", tg["source"], "--concurrency", str(a.flood_concurrency),
                            "--timeout", "5"]
                    self.load("flood", tg["port"], "none", base + ["--count", "500", "--duration", "5"],
                              label + "/warmup")
                    pids = tg["pids"]()
                    c0 = proc_cpu_seconds(pids)
                    r = self.load("flood", tg["port"], "none",
                                  base + ["--count", str(a.flood_count), "--duration", str(a.flood_duration)],
                                  label, timeout=a.flood_duration + 30)
                    c1 = proc_cpu_seconds(tg["pids"]())
                    n = (r.get("refused_line") or 0) + (r.get("closed") or 0)
                    rec = {"connections": r.get("connections"), "refused": n, "refused_line": r.get("refused_line"),
                           "closed": r.get("closed"), "accepted": r.get("accepted"), "failed": r.get("failed"),
                           "per_s": r.get("per_s"), "elapsed_s": r.get("elapsed_s"), "load1": loadavg()}
                    if pids and n:
                        rec["cpu_us_per_refusal"] = (c1 - c0) / n * 1e6
                        rec["cpu_s"] = c1 - c0
                    self.keep(t, "flood", rec)
                    log(f"  {label}: {fmt(rec.get('per_s'))} refused conns/s ({rec['refused_line']} with a line, "
                        f"{rec['closed']} closed, {rec['accepted']} accepted, {rec['failed']} failed), "
                        f"cpu/refusal {fmt(rec.get('cpu_us_per_refusal'))} us")
            self.note_load("flood")
        finally:
            if nginx:
                nginx.stop()

    def scenario_idle(self) -> None:
        n = self.args.idle_sessions
        for tls in ("none", "implicit"):
            for t in self.targets:
                port = self.targets[t]["ports"][tls]
                label = f"idle/{tls}/{t}"
                pids_fn = self.targets[t]["pids"]
                restart = self.targets[t].get("restart")
                if restart and self.args.idle_fresh:
                    # A freshly started proxy: memory freed by the earlier scenarios
                    # (and kept by the allocator) would otherwise be reused by these
                    # sessions and hide part of their cost.
                    restart()
                time.sleep(1.0)
                before = proc_rss_kib(pids_fn())
                sample: dict = {}

                def on_line(obj, pids_fn=pids_fn, sample=sample):
                    if obj.get("event") == "all_idle":
                        time.sleep(1.0)  # let the last replies settle
                        sample["rss"] = proc_rss_kib(pids_fn())
                        sample["idle"] = obj.get("idle")
                        sample["failed"] = obj.get("failed")
                        sample["setup_s"] = obj.get("setup_s")

                r = self.load("idle", port, tls,
                              ["--concurrency", str(n), "--hold", str(self.args.idle_hold),
                               "--ramp", "256", "--timeout", "30"], label, on_line=on_line)
                rec = {"sessions": n, "idle": sample.get("idle"), "failed": sample.get("failed"),
                       "setup_s": sample.get("setup_s"), "logged_out": r.get("logged_out")}
                if pids_fn() and "rss" in sample and sample.get("idle"):
                    rec["rss_before_kib"] = before
                    rec["rss_idle_kib"] = sample["rss"]
                    rec["kib_per_session"] = (sample["rss"] - before) / sample["idle"]
                self.results[t][f"idle_{tls}"] = rec
                log(f"  {label}: {sample.get('idle')} idle ({sample.get('failed')} failed) in "
                    f"{fmt(sample.get('setup_s'))} s, RSS/session {fmt(rec.get('kib_per_session'))} KiB")


    # -- SMTP: smtp-source → (direct | mailgate | nginx) → smtp-sink
    def smtp_source(self, port: int, mode: str, count: int, label: str) -> dict:
        """One smtp-source run; returns wall time, exit status and its stderr."""
        a = self.args
        cmd = [SMTP_SOURCE, "-s", str(a.smtp_sessions), "-l", str(a.smtp_size), "-m", str(count),
               "-f", "sender@bench.invalid", "-t", SMTP_RCPT, "-M", "client.bench.invalid"]
        if mode == "reused":
            cmd.append("-d")
        cmd.append(f"127.0.0.1:{port}")
        t0 = time.perf_counter()
        try:
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
            rc, err = r.returncode, (r.stderr + r.stdout).strip()
        except subprocess.TimeoutExpired:
            rc, err = -1, "smtp-source over 120 s: killed"
        wall = time.perf_counter() - t0
        if rc != 0 or err:
            log(f"    [{label}] smtp-source exit {rc}: {err[:800]}")
        return {"wall_s": wall, "rc": rc, "stderr": err[:2000]}

    def scenario_smtp(self) -> None:
        a = self.args
        assert self.work is not None
        for tool in (SMTP_SOURCE, SMTP_SINK):
            if not os.access(tool, os.X_OK):
                log(f"  smtp: {tool} not found (Debian package postfix): skipped")
                return
        t_start = time.monotonic()
        work = self.work / "smtp"
        work.mkdir()
        os.chmod(work, 0o755)
        wanted = set(a.targets.split(","))
        started: list = []
        targets: dict[str, dict] = {}
        try:
            sink_port, mg_port, ng_port, auth_port = harness.free_ports(4)
            sink = SmtpSink(work, sink_port).start()
            started.append(sink)
            if "direct" in wanted:
                targets["direct"] = {"port": sink_port, "pids": lambda: []}
            if "mailgate" in wanted:
                if not os.access(a.mailgate_bin, os.X_OK):
                    log(f"  smtp: mailgate binary {a.mailgate_bin} not found: mailgate column skipped")
                else:
                    mg_dir = work / "mailgate"
                    mg_dir.mkdir()
                    passwd = mg_dir / "users.passwd"
                    passwd.write_text(f"{SMTP_RCPT}:{{PLAIN}}{self.password}\n")
                    mg = harness.Mailgate(mg_dir, smtp_mailgate_config(
                        mg_port, sink_port, str(passwd), a.threads, os.environ.get("BENCH_MAILGATE_LOG", "warn")))
                    mg.binary = a.mailgate_bin
                    try:
                        mg.start()
                        started.append(mg)
                        targets["mailgate"] = {"port": mg_port, "pids": lambda: [mg.pid] if mg.is_running() else [],
                                               "log": mg.log_path}
                    except Exception as e:  # noqa: BLE001
                        log(f"  smtp: mailgate did not start: {e}\nmailgate column skipped")
            if "nginx" in wanted:
                auth = AuthHttp(self.load_bin, work, auth_port, sink_port, self.password)
                auth.args += ["--accept-none", "1"]
                auth.start()
                started.append(auth)
                nginx = NginxSmtp(work / "nginx", ng_port, auth_port, a.threads).start()
                started.append(nginx)
                targets["nginx"] = {"port": ng_port, "pids": nginx.pids, "log": nginx.dir / "error.log",
                                    "aux_pids": lambda: [auth.proc.pid] if auth.proc and auth.proc.poll() is None
                                    else []}

            # Throughput: for each mode, each target gets an unmeasured warm-up run and
            # then the measured one; every message must have reached the sink.
            for mode in SMTP_MODES:
                for t, tg in targets.items():
                    label = f"smtp/{mode}/{t}"
                    m0 = sink.messages()
                    w = self.smtp_source(tg["port"], mode, a.smtp_warmup, label + "/warmup")
                    time.sleep(0.1)
                    s1, m1 = sink.counters()
                    aux = tg.get("aux_pids", lambda: [])
                    c0, x0 = proc_cpu_seconds(tg["pids"]()), proc_cpu_seconds(aux())
                    r = self.smtp_source(tg["port"], mode, a.smtp_messages, label)
                    c1, x1 = proc_cpu_seconds(tg["pids"]()), proc_cpu_seconds(aux())
                    time.sleep(0.2)  # both proxies answer "." only after the sink did; margin anyway
                    s2, m2 = sink.counters()
                    n = a.smtp_messages
                    rec = {"messages": n, "at_sink": m2 - m1, "lost": n - (m2 - m1),
                           "warmup_lost": a.smtp_warmup - (m1 - m0), "wall_s": r["wall_s"],
                           "sink_sessions_per_msg": (s2 - s1) / n if n else None,
                           "rc": r["rc"], "warmup_rc": w["rc"], "errors": r["stderr"] or None}
                    if r["rc"] == 0 and r["wall_s"] > 0:
                        rec["msgs_per_s"] = n / r["wall_s"]
                    if tg["pids"]() and n:
                        rec["cpu_us_per_msg"] = (c1 - c0) / n * 1e6
                        rec["cpu_s"] = c1 - c0
                    if aux() and n:
                        rec["authhttp_cpu_us_per_msg"] = (x1 - x0) / n * 1e6
                    self.results[t][f"smtp_{mode}"] = rec
                    flag = "" if rec["lost"] == 0 and rec["warmup_lost"] == 0 and r["rc"] == 0 else \
                        "  <-- MESSAGES NOT ACCOUNTED FOR / ERRORS"
                    log(f"  {label}: {fmt(rec.get('msgs_per_s'))} msgs/s ({n} in {r['wall_s']:.2f} s), "
                        f"cpu/msg {fmt(rec.get('cpu_us_per_msg'))} us, at sink {m2 - m1}/{n} "
                        f"(warm-up {m1 - m0}/{a.smtp_warmup}), exit {r['rc']}{flag}")

            # Latency: one client, one connection, messages back to back, nothing else running.
            # Primary: the final ".\r\n" in a write of its own, timed from that write.
            # Secondary ("joined"): the body and "." in one write, as smtp-source sends them.
            for variant, key in (("alone", "smtp_latency"), ("joined", "smtp_latency_joined")):
                for t, tg in targets.items():
                    label = f"smtp/latency/{t}" + ("" if variant == "alone" else "/dot-with-body")
                    m0 = sink.messages()
                    r = self.load_smtplat(tg["port"], label, variant == "joined")
                    time.sleep(0.1)
                    m1 = sink.messages()
                    lat = r.get("latency_ms", {})
                    sent = a.smtp_latency_messages + 20
                    rec = {"median_ms": lat.get("median"), "p99_ms": lat.get("p99"), "mean_ms": lat.get("mean"),
                           "max_ms": lat.get("max"), "recorded": r.get("recorded"), "accepted": r.get("accepted"),
                           "at_sink": m1 - m0, "lost": (r.get("accepted") or 0) - (m1 - m0),
                           "errors": r.get("errors"), "error": r.get("error")}
                    self.results[t][key] = rec
                    first = self.results[t].get("smtp_latency")
                    if variant == "joined" and first:
                        first["lost_both"] = first["lost"] + rec["lost"]
                    flag = "" if rec["lost"] == 0 and r.get("accepted") == sent else \
                        "  <-- MESSAGES NOT ACCOUNTED FOR / ERRORS"
                    log(f"  {label}: median {fmt(lat.get('median'))} ms, p99 {fmt(lat.get('p99'))} ms, "
                        f"accepted {r.get('accepted')}/{sent}, at sink {m1 - m0}{flag}")
        except Exception as e:  # noqa: BLE001 - report, keep the other scenarios' figures
            log(f"  smtp: failed: {e}")
        finally:
            for d in reversed(started):
                try:
                    d.stop()
                except Exception as e:  # noqa: BLE001
                    log(f"stopping {d}: {e}")
            for t, tg in targets.items():  # mailgate/nginx complaints, if any, go to stderr
                if tg.get("log"):
                    try:
                        text = Path(tg["log"]).read_text(errors="replace").strip()
                    except OSError:
                        text = ""
                    if text:
                        lines = text.splitlines()
                        log(f"  smtp: {t} log has {len(lines)} lines; last ones:\n    " +
                            "\n    ".join(lines[-5:]))
        log(f"  smtp: {time.monotonic() - t_start:.1f} s")

    def load_smtplat(self, port: int, label: str, dot_with_body: bool = False) -> dict:
        a = self.args
        cmd = [self.load_bin, "smtplat", "--port", str(port), "--to", SMTP_RCPT, "--from", "probe@bench.invalid",
               "--messages", str(a.smtp_latency_messages), "--warmup", "20", "--size", str(a.smtp_size),
               "--timeout", "10", "--label", label, "--dot-with-body", "1" if dot_with_body else "0"]
        try:
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            log(f"    [{label}] smtplat over 120 s: killed")
            return {}
        if r.stderr.strip():
            log(f"    [{label}] smtplat: {r.stderr.strip()[:800]}")
        for line in r.stdout.splitlines():
            if line.startswith("{"):
                return json.loads(line)
        return {}

    def scenario_logins(self) -> None:
        """Logins/s through mailgate with the postgres directory, auth cache cold vs warm."""
        if self.mailgate_env is None or "mailgate" not in self.targets:
            log("  logins: needs the mailgate target (the directory cache is mailgate's): skipped")
            return
        if not pg.available():
            log(f"  logins: PostgreSQL 15 not found in {pg.PG_BIN}: skipped")
            return
        assert self.work is not None
        t0 = time.monotonic()
        work = self.work / "logins"
        work.mkdir()
        os.chmod(work, 0o755)
        users = [f"user{i}" for i in range(self.args.users)]
        db = pg.Postgres(work, name="pg")
        try:
            db.start()
            # One SHA512-CRYPT hash (doveadm pw, random salt) shared by every user: they
            # all have the same password, and the cost of verifying it is the same.
            stored = harness.hash_password(self.password, "SHA512-CRYPT")
            init_cfg = work / "init-db.yaml"
            init_cfg.write_text(self.logins_config(db, "{ ttl: 0s }", *harness.free_ports(2)))
            r = harness.run_mailgate("--init-db", str(init_cfg))
            if r.returncode != 0:
                raise RuntimeError(f"mailgate --init-db failed: {(r.stdout + r.stderr).strip()}")
            sql = [f"INSERT INTO domains (name) VALUES ('{BENCH_DOMAIN}');",
                   "INSERT INTO nodes (name, host) VALUES ('dovecot', '127.0.0.1');",
                   "INSERT INTO routes (domain, primary_node) VALUES ('*', 'dovecot');",
                   "INSERT INTO mailboxes (address, domain, password) VALUES " + ",\n".join(
                       f"({pg.sql_quote(u + '@' + BENCH_DOMAIN)}, '{BENCH_DOMAIN}', {pg.sql_quote(stored)})"
                       for u in users) + ";",
                   "ANALYZE;"]
            db.psql("\n".join(sql))
            log(f"  logins: PostgreSQL up, schema applied, {len(users)} users ({time.monotonic() - t0:.1f} s)")
            for mode, cache in (("cold", "{ ttl: 0s, negative_ttl: 0s }"),
                                ("warm", "{ ttl: 5m, negative_ttl: 1m }")):
                self.logins_run(db, mode, cache, len(users))
        except Exception as e:  # noqa: BLE001 - report, keep the other scenarios' figures
            log(f"  logins: failed: {e}")
        finally:
            db.stop(mode="immediate")
        log(f"  logins: {time.monotonic() - t0:.1f} s")

    def logins_config(self, db: "pg.Postgres", cache: str, admin_port: int, port: int) -> str:
        assert self.mailgate_env is not None
        text = harness.mailgate_config(
            certificates=[self.mailgate_env["cert"]],
            listeners=[{"name": "imap", "protocol": "imap", "port": port, "tls": "none",
                        "allow_plaintext_auth": True}],
            users_file="unused",
            backends=[{"name": "dovecot", "imap": self.mailgate_env["backend_port"], "health_interval": "5s",
                       "health_timeout": "2s"}],
            routes=[{"domain": "*", "primary": "dovecot"}],
            threads=self.args.threads, log_level=os.environ.get("BENCH_MAILGATE_LOG", "warn"))
        directory = ("directory:\n  driver: postgres\n  postgres:\n"
                     f"    conninfo: {json.dumps(db.conninfo())}\n"
                     "    timeout: 2s\n    default_scheme: SHA512-CRYPT\n"
                     f"    queries: {{ password: {json.dumps(LOGINS_PASSWORD_QUERY)} }}\n"
                     f"  cache: {cache}\n")
        out, skipping = [], False
        for line in text.splitlines(keepends=True):  # replaces the file directory block
            if line.startswith("directory:"):
                skipping = True
                out.append(directory)
                continue
            if skipping and line.startswith("  "):
                continue
            skipping = False
            out.append(line)
        return "".join(out) + f"admin: {{ listen: \"127.0.0.1:{admin_port}\" }}\n"

    def logins_run(self, db: "pg.Postgres", mode: str, cache: str, nusers: int) -> None:
        assert self.work is not None
        port, admin_port = harness.free_ports(2)
        mg_dir = self.work / "logins" / f"mailgate-{mode}"
        mg_dir.mkdir()
        mg = harness.Mailgate(mg_dir, self.logins_config(db, cache, admin_port, port))
        mg.binary = self.args.mailgate_bin
        mg.start()
        label = f"logins/{mode}/mailgate"
        try:
            harness.wait_port(admin_port, 10)
            # One unmeasured pass over all users, in both modes: fills the cache (warm),
            # opens the pool's connections and warms PostgreSQL's buffers (both).
            w = self.load("sessions", port, "none", ["--concurrency", "32", "--sessions", str(nusers),
                                                     "--duration", "60", "--timeout", "10"], label + "/warmup")
            m0 = scrape_metrics(admin_port)
            pg0 = proc_cpu_seconds(postgres_pids(db))
            c0 = proc_cpu_seconds([mg.pid])
            r = self.load("sessions", port, "none",
                          ["--concurrency", "32", "--duration", str(self.args.duration), "--timeout", "10"], label)
            c1 = proc_cpu_seconds([mg.pid])
            pg1 = proc_cpu_seconds(postgres_pids(db))
            m1 = scrape_metrics(admin_port)
        finally:
            mg.stop()
        n = r.get("sessions", 0)
        rec = {"cache": cache, "logins_per_s": r.get("sessions_per_s"), "logins": n, "errors": r.get("errors"),
               "warmup_logins": w.get("sessions"), "warmup_errors": w.get("errors"),
               "latency_ms": r.get("latency_ms")}
        if n:
            rec["cpu_us_per_login"] = (c1 - c0) / n * 1e6
            rec["pg_cpu_us_per_login"] = (pg1 - pg0) / n * 1e6
        for k in ("auth_cache_hits", "auth_cache_misses"):
            key = f"mailgate_directory_{k}_total"
            if key in m0 and key in m1:
                rec[k] = int(m1[key] - m0[key])
        self.results["mailgate"][f"logins_{mode}"] = rec
        log(f"  {label}: {fmt(rec.get('logins_per_s'))} logins/s, mailgate cpu/login "
            f"{fmt(rec.get('cpu_us_per_login'))} us, postgres cpu/login {fmt(rec.get('pg_cpu_us_per_login'))} us, "
            f"cache hits/misses {rec.get('auth_cache_hits')}/{rec.get('auth_cache_misses')}, "
            f"errors {r.get('errors')}")


def fmt(v, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if abs(v) < 10 and digits < 3:
            return f"{v:.3f}"
        return f"{v:.{digits}f}"
    return str(v)


def ratio(a, b) -> str:
    if a is None or b is None or not b:
        return "n/a"
    return f"{a / b:.2f}"


def report(results: dict) -> str:
    rows = []  # (figure, key path, better)
    for tls in TLS_MODES:
        rows.append((f"IMAP sessions/s, 32 clients, {tls}", (f"sessions_{tls}", "sessions_per_s"), "higher"))
        rows.append((f"proxy CPU us/session, {tls}", (f"sessions_{tls}", "cpu_us_per_session"), "lower"))
    rows.append(("1-client session latency median ms", ("latency", "median_ms"), "lower"))
    rows.append(("1-client session latency p99 ms", ("latency", "p99_ms"), "lower"))
    for tls in ("none", "implicit"):
        rows.append((f"FETCH 100x1MB MB/s, {tls}", (f"fetch_{tls}", "mb_per_s"), "higher"))
        rows.append((f"proxy CPU s/GB, {tls}", (f"fetch_{tls}", "cpu_s_per_gb"), "lower"))
    for tls in ("none", "implicit"):
        rows.append((f"proxy RSS KiB/idle session, {tls}", (f"idle_{tls}", "kib_per_session"), "lower"))

    def get(t, path):
        v = results.get(t, {})
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        return v

    # The baseline's column and the ratio mailgate/baseline only when it was measured;
    # likewise the epoll reactor's (--epoll) and the ratio epoll/io_uring.
    base = bool(results.get("baseline"))
    ep = bool(results.get("epoll"))
    cols = ["direct", "mailgate"] + (["baseline"] if base else []) + (["epoll"] if ep else []) + ["nginx"]
    head = "| " + f"{'figure':<42} | " + " | ".join(f"{c:>9}" for c in cols) + \
        f" | {'mg/nginx':>8} | {'mg/direct':>9} |" + (f" {'mg/base':>8} |" if base else "") + \
        (f" {'ep/uring':>8} | {'ep/nginx':>8} |" if ep else "")
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for name, path, _ in rows:
        v = {t: get(t, path) for t in cols}
        if all(x is None for x in v.values()):
            continue
        m = v["mailgate"]
        lines.append(f"| {name:<42} | " + " | ".join(f"{fmt(v[c]):>9}" for c in cols) +
                     f" | {ratio(m, v['nginx']):>8} | {ratio(m, v['direct']):>9} |" +
                     (f" {ratio(m, v['baseline']):>8} |" if base else "") +
                     (f" {ratio(v['epoll'], m):>8} | {ratio(v['epoll'], v['nginx']):>8} |" if ep else ""))
    return "\n".join(lines)


def report_rounds(bench: "Bench") -> str | None:
    """With --repeats: every round's CPU figures, and with a baseline the ratio
    mailgate/baseline of each round (the two measured next to each other)."""
    if bench.args.repeats < 2:
        return None
    figures = [(f"CPU us/session, {tls}", f"sessions_{tls}", "cpu_us_per_session") for tls in TLS_MODES]
    figures += [(f"CPU s/GB, {tls}", f"fetch_{tls}", "cpu_s_per_gb") for tls in ("none", "implicit")]
    n = bench.args.repeats
    head = f"| {'figure':<26} | {'target':<11} | " + " | ".join(f"{'round ' + str(i + 1):>8}" for i in range(n)) + \
        f" | {'median':>8} |"
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for name, key, field in figures:
        series = {}
        for t in ("mailgate", "baseline", "epoll", "nginx"):
            runs = bench.runs.get((t, key))
            if runs:
                series[t] = [r.get(field) for r in runs]
        if not series:
            continue
        if "mailgate" in series and "baseline" in series:
            series["mg/base"] = [a / b if a is not None and b else None
                                 for a, b in zip(series["mailgate"], series["baseline"])]
        for t, vals in series.items():
            digits = 3 if t == "mg/base" else 1
            cells = [fmt(v, digits) if v is not None else "n/a" for v in vals] + ["" for _ in range(n - len(vals))]
            med = median(vals)
            lines.append(f"| {name:<26} | {t:<11} | " + " | ".join(f"{c:>8}" for c in cells) +
                         f" | {fmt(med, digits) if med is not None else 'n/a':>8} |")
    return "\n".join(lines)


def report_flood(bench: "Bench") -> str | None:
    """Every round of the flood scenario and the medians: mailgate (policy rule at
    connect) vs nginx (stream deny)."""
    series = {t: bench.runs.get((t, "flood")) or [] for t in ("mailgate-ban", "mailgate-rule", "nginx")}
    if not any(series.values()):
        return None
    n = max(len(v) for v in series.values())
    head = f"| {'flood, refused at connect':<34} | {'target':<13} | " + \
        " | ".join(f"{'round ' + str(i + 1):>8}" for i in range(n)) + f" | {'median':>8} |"
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for name, field in (("CPU us/refused connection", "cpu_us_per_refusal"), ("refused connections/s", "per_s"),
                        ("refused (line / bare close)", None), ("accepted + failed", None)):
        for t, runs in series.items():
            if not runs:
                continue
            if field:
                vals = [r.get(field) for r in runs]
                cells = [fmt(v) if v is not None else "n/a" for v in vals]
                med = median(vals)
                medc = fmt(med) if med is not None else "n/a"
            elif name.startswith("refused"):
                cells = [f"{r.get('refused_line')}/{r.get('closed')}" for r in runs]
                medc = ""
            else:
                cells = [f"{(r.get('accepted') or 0) + (r.get('failed') or 0)}" for r in runs]
                medc = ""
            cells += [""] * (n - len(cells))
            lines.append(f"| {name:<34} | {t:<13} | " + " | ".join(f"{c:>8}" for c in cells) + f" | {medc:>8} |")
    cn = median([r.get("cpu_us_per_refusal") for r in series.get("nginx", [])])
    for t in ("mailgate-ban", "mailgate-rule"):
        cm = median([r.get("cpu_us_per_refusal") for r in series.get(t, [])])
        if cm and cn:
            lines.append(f"| {'CPU/refusal ' + t + '/nginx':<34} | {'':<13} | " +
                         " | ".join(f"{'':>8}" for _ in range(n)) + f" | {cm / cn:>8.2f} |")
    return "\n".join(lines)


def report_logins(results: dict) -> str | None:
    cold, warm = (results.get("mailgate", {}).get(f"logins_{m}") for m in ("cold", "warm"))
    if not cold and not warm:
        return None
    cold, warm = cold or {}, warm or {}
    rows = [("logins/s, 32 clients, plain IMAP", "logins_per_s"),
            ("mailgate CPU us/login", "cpu_us_per_login"),
            ("PostgreSQL CPU us/login", "pg_cpu_us_per_login"),
            ("session latency median ms", ("latency_ms", "median")),
            ("session latency p99 ms", ("latency_ms", "p99")),
            ("auth cache hits (measured run)", "auth_cache_hits"),
            ("auth cache misses (measured run)", "auth_cache_misses")]

    def get(rec, key):
        if isinstance(key, tuple):
            return (rec.get(key[0]) or {}).get(key[1])
        return rec.get(key)

    head = f"| {'mailgate, postgres directory':<34} | {'cold':>9} | {'warm':>9} | {'warm/cold':>9} |"
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for name, key in rows:
        c, w = get(cold, key), get(warm, key)
        r = ratio(w, c) if "cache" not in name else ""
        lines.append(f"| {name:<34} | {fmt(c):>9} | {fmt(w):>9} | {r:>9} |")
    return "\n".join(lines)


def report_smtp(results: dict, args) -> str | None:
    if not any(k.startswith("smtp_") for r in results.values() for k in r):
        return None
    s = args.smtp_sessions
    kb = args.smtp_size // 1024
    rows = []
    for mode in SMTP_MODES:
        rows.append((f"SMTP msgs/s, {s} sessions, {kb} KB, {SMTP_MODE_TEXT[mode]}", (f"smtp_{mode}", "msgs_per_s")))
        rows.append((f"proxy CPU us/msg, {SMTP_MODE_TEXT[mode]}", (f"smtp_{mode}", "cpu_us_per_msg")))
        rows.append((f"auth_http CPU us/msg, {SMTP_MODE_TEXT[mode]}", (f"smtp_{mode}", "authhttp_cpu_us_per_msg")))
        rows.append((f"node connections/msg, {SMTP_MODE_TEXT[mode]}", (f"smtp_{mode}", "sink_sessions_per_msg")))
        rows.append((f"messages lost at sink, {SMTP_MODE_TEXT[mode]}", (f"smtp_{mode}", "lost")))
    rows.append(("1-client end-of-DATA->250 median ms", ("smtp_latency", "median_ms")))
    rows.append(("1-client end-of-DATA->250 p99 ms", ("smtp_latency", "p99_ms")))
    rows.append(("  same, '.' in the body's write, median ms", ("smtp_latency_joined", "median_ms")))
    rows.append(("  same, '.' in the body's write, p99 ms", ("smtp_latency_joined", "p99_ms")))
    rows.append(("messages lost at sink, latency probes", ("smtp_latency", "lost_both")))

    def get(t, path):
        v = results.get(t, {})
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        return v

    head = f"| {'figure':<46} | {'direct':>9} | {'mailgate':>9} | {'nginx':>9} | {'mg/nginx':>8} | {'mg/direct':>9} |"
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for name, path in rows:
        d, m, n = (get(t, path) for t in ("direct", "mailgate", "nginx"))
        lost = "lost" in name or "auth_http" in name or "connections" in name
        lines.append(f"| {name:<46} | {fmt(d):>9} | {fmt(m):>9} | {fmt(n):>9} | "
                     f"{'' if lost else ratio(m, n):>8} | {'' if lost else ratio(m, d):>9} |")
    return "\n".join(lines)


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # runs the finally: that stops the daemons


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    ap = argparse.ArgumentParser()
    ap.add_argument("--load-bin", default=str(REPO / "build" / "mailgate-load"))
    ap.add_argument("--mailgate-bin", default=os.environ.get("MAILGATE_BIN", str(REPO / "build" / "mailgate")))
    ap.add_argument("--baseline-bin", default=None,
                    help="a second mailgate build (e.g. an older commit) measured next to --mailgate-bin "
                         "as the `baseline` target of the IMAP scenarios, same configuration")
    ap.add_argument("--epoll", action="store_true",
                    help="also run the same mailgate binary with `server.io: epoll` as the `epoll` target "
                         "of the IMAP scenarios, next to mailgate on io_uring, nginx and direct")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds of the sessions, latency and fetch scenarios, targets interleaved; "
                         "figures are the medians")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--latency-sessions", type=int, default=500)
    ap.add_argument("--fetch-repeat", type=int, default=10,
                    help="measured FETCHes of the 100 MiB mailbox (10: ~1.05 GB per target)")
    ap.add_argument("--idle-sessions", type=int, default=5000)
    ap.add_argument("--idle-hold", type=float, default=3.0)
    ap.add_argument("--idle-fresh", action=argparse.BooleanOptionalAction, default=True,
                    help="restart each proxy before each idle measurement (default on)")
    ap.add_argument("--threads", type=int, default=2, help="mailgate threads = nginx workers")
    ap.add_argument("--smtp-messages", type=int, default=3000, help="smtp: messages per measured smtp-source run")
    ap.add_argument("--smtp-warmup", type=int, default=200, help="smtp: messages of the warm-up run before each")
    ap.add_argument("--smtp-sessions", type=int, default=20, help="smtp: smtp-source -s")
    ap.add_argument("--smtp-size", type=int, default=10240, help="smtp: message payload bytes (smtp-source -l)")
    ap.add_argument("--smtp-latency-messages", type=int, default=500,
                    help="smtp: recorded messages of the latency probe (after 20 unrecorded)")
    ap.add_argument("--policy", action="store_true",
                    help="the mailgate target with a realistic policy (bench/policy_conf.py), the baseline "
                         "target the same binary (or --baseline-bin) with no policy; mg/base = policy/no policy")
    ap.add_argument("--flood-count", type=int, default=20000, help="flood: connections per measured run (at most)")
    ap.add_argument("--flood-duration", type=float, default=20.0, help="flood: seconds per measured run (at most)")
    ap.add_argument("--flood-concurrency", type=int, default=16, help="flood: connections in flight")
    ap.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    scenarios = args.scenarios.split(",")
    for name in scenarios:
        if name not in SCENARIOS:
            ap.error(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    args.load_bin = os.path.abspath(args.load_bin)
    args.mailgate_bin = os.path.abspath(args.mailgate_bin)
    if args.baseline_bin:
        args.baseline_bin = os.path.abspath(args.baseline_bin)
    elif args.policy:
        args.baseline_bin = args.mailgate_bin  # the same binary, without the policy
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")

    work = Path(args.workdir or harness.make_workdir("mailgate-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    log(f"work directory: {work}")
    wanted = set(args.targets.split(","))
    started: list = []
    bench = Bench(args)
    bench.work = work
    t_start = time.monotonic()
    try:
        # Dovecot and the IMAP proxies: only for the IMAP scenarios (smtp starts its own).
        if any(s in IMAP_SCENARIOS for s in scenarios):
            # Certificates: one EC P-256 server certificate for every listener.
            ca = harness.make_ca(work / "certs")
            cert = harness.make_cert(ca, work / "certs", ["localhost"])
            os.chmod(cert[1], 0o644)  # Dovecot reads it as root, nginx/mailgate too; test-only key

            # Dovecot: plain + STARTTLS on one port, implicit TLS on another.
            users = {f"user{i}": bench.password for i in range(args.users)}
            users["bulk"] = bench.password
            dovecot, imaps_port = start_dovecot(work, users, cert)
            started.append(dovecot)
            if "fetch" in scenarios:
                bulk_home = dovecot.mail_dir / "_" / "bulk"
                write_bulk_mailbox(bulk_home / "Maildir", 100, 1 << 20, dovecot.mail_uid, dovecot.mail_gid)
            if "direct" in wanted:
                bench.targets["direct"] = {
                    "ports": {"none": dovecot.imap_port, "implicit": imaps_port, "starttls": dovecot.imap_port},
                    "pids": lambda: []}

            # mailgate, and with --baseline-bin a second build of it next to it: the same
            # configuration, ports of its own, its own directory (log) in the temp dir.
            builds = [("mailgate", args.mailgate_bin)] if "mailgate" in wanted else []
            if args.baseline_bin and "baseline" in wanted:
                builds.append(("baseline", args.baseline_bin))
            if args.epoll and "epoll" in wanted:
                builds.append(("epoll", args.mailgate_bin))
            # --policy: the mailgate target gets the realistic policy, the baseline none.
            extra_yaml = {}
            if args.policy:
                files = policy_conf.make_policy_files(work / "policy")
                bench.admin_port = harness.free_port()
                extra_yaml = {"mailgate": policy_conf.imap_policy(files, bench.admin_port),
                              "baseline": policy_conf.NO_POLICY}
                log(f"policy: country databases {files['country_list']}, asn {files['asn']}")
            if builds:
                os.environ["MAILGATE_BIN"] = args.mailgate_bin
            for name, binary in builds:
                mg_dir = work / name
                mg_dir.mkdir()
                mg_ports = dict(zip(TLS_MODES, harness.free_ports(3)))
                passwd = mg_dir / "users.passwd"
                passwd.write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in users.items()))
                cfg = imap_mailgate_config(mg_ports, passwd, cert, dovecot.imap_port, args.threads)
                cfg += extra_yaml.get(name, "")
                if name == "epoll":
                    cfg = cfg.replace("server: { ", "server: { io: epoll, ", 1)
                elif name in ("mailgate", "baseline") and args.epoll:
                    cfg = cfg.replace("server: { ", "server: { io: io_uring, ", 1)  # fail rather than fall back
                if not os.access(binary, os.X_OK):
                    log(f"{name} binary {binary} not found: {name} column skipped")
                    continue
                try:
                    mg = harness.Mailgate(mg_dir, cfg)
                    mg.binary = binary
                    mg.start()
                    started.append(mg)
                    bench.targets[name] = {"ports": mg_ports,
                                           "pids": lambda mg=mg: [mg.pid] if mg.is_running() else [],
                                           "restart": lambda mg=mg: (mg.stop(), mg.start())}
                    if name == "mailgate":
                        bench.mailgate_env = {"cert": cert, "backend_port": dovecot.imap_port}
                except Exception as e:  # noqa: BLE001 - report and go on with the others
                    log(f"{name} did not start: {e}\n{name} column skipped")

            # nginx mail proxy + auth_http responder.
            if "nginx" in wanted:
                auth_port = harness.free_port()
                auth = AuthHttp(bench.load_bin, work, auth_port, dovecot.imap_port, bench.password).start()
                started.append(auth)
                ng_ports = dict(zip(TLS_MODES, harness.free_ports(3)))
                nginx = NginxMail(work / "nginx", ng_ports, auth_port, cert, args.threads).start()
                started.append(nginx)
                bench.targets["nginx"] = {"ports": ng_ports, "pids": nginx.pids,
                                          "restart": lambda: (nginx.stop(), nginx.start())}

            # Warm Dovecot's index and the page cache for the bulk mailbox.
            if "fetch" in scenarios:
                log("warming the bulk mailbox ...")
                bench.load("fetch", dovecot.imap_port, "none", ["--user", "bulk", "--repeat", "1"], "warmup")

        for name in scenarios:
            log(f"scenario {name} ...")
            getattr(bench, f"scenario_{name}")()
    finally:
        for d in reversed(started):
            try:
                d.stop()
            except Exception as e:  # noqa: BLE001
                log(f"stopping {d}: {e}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    imap_table = any(s in IMAP_SCENARIOS and s not in ("logins", "flood") for s in scenarios)
    tables = []
    if imap_table:
        tables.append(report(bench.results))
        rounds = report_rounds(bench)
        if rounds:
            tables.append(rounds)
    flood = report_flood(bench) if "flood" in scenarios else None
    if flood:
        tables.append(flood)
    logins = report_logins(bench.results)
    if logins:
        tables.append(logins)
    smtp = report_smtp(bench.results, args) if "smtp" in scenarios else None
    if smtp:
        tables.append(smtp)
    print("\n\n".join(tables))
    notes = [f"total {time.monotonic() - t_start:.0f} s"]
    if bench.loads:
        notes.append("1-min load average during " + ", ".join(
            f"{sc} {min(v):.1f}-{max(v):.1f}" for sc, v in bench.loads.items()))
    if args.repeats > 1:
        notes.append(f"medians of {args.repeats} rounds, targets interleaved")
    if "baseline" in bench.targets:
        notes.append(f"mailgate = {args.mailgate_bin}, baseline = {args.baseline_bin}")
    if "epoll" in bench.targets:
        notes.append("mailgate = server.io: io_uring, epoll = the same binary with server.io: epoll; "
                     "ep/uring = epoll / io_uring")
    if args.policy:
        notes.append("--policy: mailgate = realistic policy (bench/policy_conf.py), baseline = the same binary "
                     "with `limits: { rules: [] }` and nothing else; mg/base = policy / no policy")
    if imap_table:
        notes.append("CPU = proxy processes' utime+stime; "
                     f"RSS = proxy processes' VmRSS while {args.idle_sessions} sessions IDLE, minus before"
                     f"{', on a freshly started proxy' if args.idle_fresh else ''}")
    if logins:
        notes.append("logins: sessions mode (connect, LOGIN, SELECT, LOGOUT) through mailgate with the "
                     "postgres directory, SHA512-CRYPT; cold = cache ttl 0s, warm = ttl 5m after a pass "
                     "over all users; CPU = utime+stime of mailgate / of the postmaster and its children")
    if smtp:
        notes.append(f"smtp: smtp-source -s {args.smtp_sessions} -l {args.smtp_size} -m {args.smtp_messages} "
                     "[-d for reused], msgs/s = messages / wall time of the run, every message counted at "
                     "smtp-sink; CPU = mailgate's process / nginx's master+workers (not auth_http); "
                     f"latency = mailgate-load smtplat, one connection, {args.smtp_latency_messages} "
                     "messages after 20 unrecorded, final '.' sent -> 250 received")
    print("\n(" + "; ".join(notes) + ")")
    if args.json:
        Path(args.json).write_text(json.dumps(bench.results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
