#!/usr/bin/env python3
"""Exception queue: messages per second and CPU per message when 10 % of the
recipients are deferred into the queue, against no deferrals (bench/README.md).

The node is a real Dovecot LMTP (tests/integration/harness.py) with the quota plugin
and `quota_full_tempfail = yes`; one of its mailboxes, full@, has a 1 KiB quota
(`userdb_quota_rule=*:storage=1K` in the passwd-file), so every message for it is
deferred after the data (452 4.2.2) while the other recipients of the same message
are accepted: mailgate then writes the message and the open recipient to its
exception queue and answers the client 250 ("queued as ...").

The message mix (Postfix's smtp-source as the client, two processes at once, one
message per connection as an MX sees them, 2 recipients per message with -r 2, which
smtp-source names <to> and 2<to>):

  4/5 of the messages  -t ok@      -> ok@, 2ok@          both accepted
  1/5 of the messages  -t full@    -> full@, 2full@      full@ deferred, 2full@ accepted

so 1 recipient in 10 is deferred and 1 message in 5 is queued. The "no deferrals"
targets send the fifth part to -t ok2@ (ok2@ and 2ok2@ accept): the same two
processes, sessions and recipient count. Targets (all in one run, interleaved rounds,
each round starting one target further along; figures are medians of the rounds):

  none     mailgate A (queue: store dir, which stays empty), no deferrals
  dir10    mailgate B (queue: store dir), 10 % of the recipients deferred
  dirheld  mailgate B, no deferrals, while its queue holds the entries of dir10's rounds
           (a message is then looked up in the queue before delivery: a resent copy
           must not reach the recipients the queue already holds)
  pgnone   mailgate C (postgres directory and queue; fsync on), no deferrals, empty queue
  pg10     mailgate D (postgres directory and queue, own database), 10 % deferred
  direct   no gateway: smtp-source -L speaks LMTP straight to the same Dovecot LMTP
           port, the no-deferral mix (same processes, sessions, sizes, recipients)

The report puts every mailgate target against direct: messages per second and
Dovecot CPU per message, mailgate/direct. There is no direct 10 % target:
smtp-source exits at the first non-2xx reply to the end of data ("fatal: end of
data rejected: 452 4.2.2 ..."), so the 10 % targets are compared with the direct
no-deferral mix too (their node delivers 10 % fewer recipients per message).

Every mailgate: server.threads 2, log level warn, retry 10m (no retry happens during
the run), deliver: lmtp to the one Dovecot. CPU per message is utime+stime from
/proc/PID/stat of the gateway process (all threads), of Dovecot (master, its live
children, and the master's cutime+cstime for children that exited) and, for the
postgres targets, of PostgreSQL's processes apart. Each measured run checks: the
recipients delivered to the maildirs, the queue entries written (mailgate_queue_*
from /metrics when the gateway has them, and the entries in the store) against the
messages that had a deferred recipient, and the replies the gateway gave (its
mailgate_smtp_messages_{delivered,deferred,rejected}_total counters; smtp-source
itself exits non-zero and prints the reply on a failed transaction).

Usage: python3 bench/queue_bench.py [--targets none,dir10,dirheld,pgnone,pg10,direct]
       [--repeats 3] [--messages 1000] [--json out.json]
(as root: Dovecot's mail_uid; build/mailgate by default, MAILGATE_BIN).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import run  # noqa: E402  (bench/run.py: /proc helpers, medians, metrics scrape)
from run import harness, log, loadavg, median_record, proc_cpu_seconds, postgres_pids, scrape_metrics, fmt  # noqa: E402

sys.path.insert(0, str(REPO / "tests" / "integration"))
import pg  # noqa: E402  (tests/integration/pg.py)

DOMAIN = run.BENCH_DOMAIN
SENDER = "sender@" + DOMAIN
PASSWORD = "benchpass"
FULL = "full@" + DOMAIN  # the one mailbox over its quota
# smtp-source -r 2 -t X sends to X and 2X.
USERS = [f"{p}{u}@{DOMAIN}" for u in ("ok", "ok2", "full") for p in ("", "2")]
TARGETS = ("none", "dir10", "dirheld", "pgnone", "pg10", "direct")
TARGET_TEXT = {
    "none": "dir store, no deferrals (queue empty)",
    "dir10": "dir store, 10 % of recipients deferred",
    "dirheld": "dir store, no deferrals, queue holding entries",
    "pgnone": "postgres store, no deferrals (queue empty)",
    "pg10": "postgres store, 10 % of recipients deferred",
    "direct": "direct LMTP to Dovecot, no deferrals",
}
DEFERRING = {"dir10", "pg10"}
# No gateway: smtp-source -L to Dovecot's LMTP port. Only the no-deferral mix:
# smtp-source -L exits at the first 452 after the data.
DIRECT = {"direct"}
# Which gateway serves which target.
GATEWAY_OF = {"none": "A", "dir10": "B", "dirheld": "B", "pgnone": "C", "pg10": "D"}

DOVECOT_EXTRA = """
mail_plugins = $mail_plugins quota
quota_full_tempfail = yes
plugin {
  quota = maildir:User quota
}
mail_fsync = never
auth_verbose = no
info_log_path = /dev/null
service lmtp {
  process_min_avail = 4
  process_limit = 100
}
service auth {
  client_limit = 2000
}
"""


class QuotaDovecot(harness.Dovecot):
    """The harness's Dovecot; the FULL mailbox gets a 1 KiB quota in the passwd-file."""

    def write_users(self, users: dict[str, str]) -> None:
        self.users = dict(users)
        extra = {}
        for user in self.users:
            local, _, domain = user.partition("@")
            home = self.mail_dir / (domain or "_") / local
            quota = "userdb_quota_rule=*:storage=1K" if user == FULL else ""
            extra[user] = f"{self.mail_uid}:{self.mail_gid}::{home}::{quota}"
        harness.write_passwd(self.passwd_path, self.users, self.scheme, extra)
        os.chmod(self.passwd_path, 0o644)

    def delivered(self) -> int:
        """Messages in every mailbox's Maildir/new."""
        n = 0
        for user in self.users:
            local, _, domain = user.partition("@")
            try:
                n += sum(1 for _ in os.scandir(self.mail_dir / domain / local / "Maildir" / "new"))
            except FileNotFoundError:
                pass
        return n

    def empty_mailboxes(self) -> None:
        """Removes every Maildir between runs (Dovecot makes them again at the next
        delivery): each run starts from empty mailboxes, so that the node's cost per
        delivery does not grow from round to round with the mailboxes' size."""
        for user in self.users:
            local, _, domain = user.partition("@")
            shutil.rmtree(self.mail_dir / domain / local / "Maildir", ignore_errors=True)

    def cpu_seconds(self) -> float:
        pid = self.master_pid
        if not pid:
            return 0.0
        total = proc_cpu_seconds([pid] + harness._descendants(pid))
        try:  # children that exited meanwhile
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
            total += (int(fields[13]) + int(fields[14])) / run.CLK_TCK
        except (OSError, IndexError, ValueError):
            pass
        return total


def mailgate_config(port: int, admin_port: int, lmtp_port: int, directory: str, queue: str, threads: int) -> str:
    return f"""\
server: {{ threads: {threads}, shutdown_grace: 2s }}
log: {{ level: {os.environ.get("BENCH_MAILGATE_LOG", "warn")}, format: json }}
admin: {{ listen: "127.0.0.1:{admin_port}" }}
listeners:
  - {{ name: mx, protocol: smtp, listen: ["127.0.0.1:{port}"], tls: none, max_messages: 1000000 }}
{directory}backends:
  - name: node
    host: 127.0.0.1
    ports: {{ lmtp: {lmtp_port} }}
    deliver: lmtp
    tls: none
    health: {{ interval: 5s, timeout: 2s }}
routing:
  static:
    - {{ domain: "{DOMAIN}", primary: node }}
queue: {queue}
"""


def file_directory(users_file: Path) -> str:
    return f"directory:\n  driver: file\n  file: {{ users: {json.dumps(str(users_file))}, failure_delay: 200ms }}\n"


def pg_directory(db: "pg.Postgres", dbname: str) -> str:
    return ("directory:\n  driver: postgres\n"
            f"  postgres: {{ conninfo: {json.dumps(db.conninfo(dbname))}, pool: 4, default_scheme: PLAIN }}\n"
            "  cache: { ttl: 60s, negative_ttl: 1s }\n")


class Gateway:
    """One mailgate of the bench and what is read from it."""

    def __init__(self, name: str, work: Path, text: str, binary: str, port: int, admin_port: int,
                 queue_dir: Path | None, db: "pg.Postgres | None", dbname: str | None):
        self.name, self.port, self.admin_port = name, port, admin_port
        self.queue_dir, self.db, self.dbname = queue_dir, db, dbname
        self.mg = harness.Mailgate(work / f"mailgate-{name}", text, name=f"mailgate-{name}")
        self.mg.binary = binary

    def start(self) -> "Gateway":
        self.mg.start()
        return self

    def stop(self) -> None:
        self.mg.stop()

    def cpu(self) -> float:
        return proc_cpu_seconds([self.mg.pid] if self.mg.is_running() else [])

    def metrics(self) -> dict[str, float]:
        m = scrape_metrics(self.admin_port)
        return {k: v for k, v in m.items()
                if k.startswith("mailgate_queue") or k.startswith("mailgate_smtp_messages_")}

    def stored_entries(self) -> int | None:
        """Entries in the store itself (the spool directory's entries, the table's rows)."""
        if self.queue_dir is not None:
            # gateway/queue/dir_queue_store.h: an entry is ID.msg and its metadata
            # ID~OWNER~UNTIL; dot-files are writes in progress.
            return sum(1 for e in os.scandir(self.queue_dir)
                       if not e.name.startswith(".") and "~" in e.name)
        if self.db is not None:
            try:
                out = self.db.psql("SELECT count(*) FROM mailgate_queue", dbname=self.dbname)
                return int(out.strip() or 0)
            except (RuntimeError, ValueError):
                return None
        return None


class QueueBench:
    def __init__(self, args):
        self.args = args
        self.gateways: dict[str, Gateway] = {}
        self.runs: dict[str, list[dict]] = {}
        self.results: dict[str, dict] = {}
        self.loads: list[float] = []

    # -- the client: two smtp-source processes at once
    def smtp_sources(self, port: int, count: int, deferring: bool, label: str, lmtp: bool = False) -> dict:
        a = self.args
        fifth = count // 5
        s_fifth = max(1, a.sessions // 5)
        parts = [(count - fifth, a.sessions - s_fifth, "ok@" + DOMAIN),
                 (fifth, s_fifth, (FULL if deferring else "ok2@" + DOMAIN))]
        procs = []
        t0 = time.perf_counter()
        for m, s, to in parts:
            cmd = [run.SMTP_SOURCE] + (["-L"] if lmtp else []) + [
                "-s", str(s), "-l", str(a.size), "-m", str(m), "-r", "2",
                "-f", SENDER, "-t", to, "-M", "client.bench.invalid", f"127.0.0.1:{port}"]
            procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        rcs, errs = [], []
        for p in procs:
            try:
                out, _ = p.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
                out = (out or "") + "smtp-source over 300 s: killed"
            rcs.append(p.returncode)
            if out.strip():
                errs.append(out.strip())
        wall = time.perf_counter() - t0
        err = "\n".join(errs)
        if any(rcs) or err:
            log(f"    [{label}] smtp-source exit {rcs}: {err[:800]}")
        return {"wall_s": wall, "rc": max(abs(r) for r in rcs), "stderr": err[:2000],
                "deferred_rcpts": fifth if deferring else 0, "rcpts": 2 * count}

    def send_direct(self, t: str, count: int, label: str, measure: bool) -> dict:
        """smtp-source -L straight to Dovecot's LMTP port: no gateway, no queue, the
        no-deferral mix. smtp-source exits non-zero and prints the reply at the first
        reply other than 2xx (per recipient after the data too), so rc 0 and no output
        mean every recipient got 250 from Dovecot."""
        d0, cpu0 = self.dovecot.delivered(), self.dovecot.cpu_seconds()
        r = self.smtp_sources(self.dovecot.lmtp_port, count, False, label, lmtp=True)
        time.sleep(0.1)
        cpu1, d1 = self.dovecot.cpu_seconds(), self.dovecot.delivered()
        self.dovecot.empty_mailboxes()
        expect_delivered = 2 * count
        rec = {"messages": count, "rcpts": r["rcpts"], "deferred_rcpts": 0,
               "delivered": d1 - d0, "expect_delivered": expect_delivered,
               "replies_250": None, "replies_4xx": None, "replies_5xx": None,
               "queue_metrics": {}, "queue_stored_delta": None, "queue_held_before": None,
               "queue_entries_written": None, "queue_puts_refused": 0, "queue_duplicates": 0,
               "wall_s": r["wall_s"], "rc": r["rc"], "errors": r["stderr"] or None}
        rec["ok"] = r["rc"] == 0 and not r["stderr"] and rec["delivered"] == expect_delivered
        if measure:
            rec["msgs_per_s"] = count / r["wall_s"]
            rec["cpu_us_per_msg_node"] = (cpu1 - cpu0) / count * 1e6
        return rec

    def send(self, t: str, count: int, label: str, measure: bool) -> dict:
        if t in DIRECT:
            return self.send_direct(t, count, label, measure)
        g = self.gateways[GATEWAY_OF[t]]
        deferring = t in DEFERRING
        d0, m0, q0 = self.dovecot.delivered(), g.metrics(), g.stored_entries()
        cpu0 = {"gateway": g.cpu(), "node": self.dovecot.cpu_seconds()}
        if g.db is not None:
            cpu0["postgres"] = proc_cpu_seconds(postgres_pids(g.db))
        r = self.smtp_sources(g.port, count, deferring, label)
        time.sleep(0.1)
        cpu1 = {"gateway": g.cpu(), "node": self.dovecot.cpu_seconds()}
        if g.db is not None:
            cpu1["postgres"] = proc_cpu_seconds(postgres_pids(g.db))
        d1, m1, q1 = self.dovecot.delivered(), g.metrics(), g.stored_entries()
        self.dovecot.empty_mailboxes()
        dm = {k: m1.get(k, 0) - m0.get(k, 0) for k in m1}
        expect_delivered = 2 * count - r["deferred_rcpts"]
        rec = {"messages": count, "rcpts": r["rcpts"], "deferred_rcpts": r["deferred_rcpts"],
               "delivered": d1 - d0, "expect_delivered": expect_delivered,
               "replies_250": dm.get("mailgate_smtp_messages_delivered_total"),
               "replies_4xx": dm.get("mailgate_smtp_messages_deferred_total"),
               "replies_5xx": dm.get("mailgate_smtp_messages_rejected_total"),
               "queue_metrics": {k: v for k, v in dm.items() if k.startswith("mailgate_queue")},
               "queue_stored_delta": (q1 - q0) if q0 is not None and q1 is not None else None,
               "queue_held_before": q0,
               "wall_s": r["wall_s"], "rc": r["rc"], "errors": r["stderr"] or None}
        # /metrics: the puts the sessions made, by result; none refused, no
        # recipient taken for a duplicate (every smtp-source message has its own
        # Message-Id). No retry is due during the run (retry: 10m), so the store
        # holds as many more entries as were stored.
        qm = rec["queue_metrics"]
        stored_puts = qm.get('mailgate_queue_puts_total{result="stored"}')
        refused_puts = (qm.get('mailgate_queue_puts_total{result="full"}', 0)
                        + qm.get('mailgate_queue_puts_total{result="error"}', 0))
        rec["queue_entries_written"] = stored_puts if stored_puts is not None else rec["queue_stored_delta"]
        rec["queue_puts_refused"] = refused_puts
        rec["queue_duplicates"] = qm.get("mailgate_queue_duplicates_total", 0)
        rec["ok"] = (r["rc"] == 0 and rec["delivered"] == expect_delivered
                     and rec["replies_250"] in (None, count) and not rec["replies_4xx"] and not rec["replies_5xx"]
                     and stored_puts in (None, r["deferred_rcpts"])
                     and rec["queue_stored_delta"] in (None, r["deferred_rcpts"])
                     and not refused_puts and not rec["queue_duplicates"])
        if measure:
            rec["msgs_per_s"] = count / r["wall_s"]
            for k in cpu0:
                rec[f"cpu_us_per_msg_{k}"] = (cpu1[k] - cpu0[k]) / count * 1e6
        return rec

    # -- the daemons
    def start_postgres(self, work: Path, started: list) -> "pg.Postgres":
        db = pg.Postgres(work / "pg", name="pg", dbname="mail_none")
        db.init()
        # The queue's promise is a committed (durable) write: no fsync=off here.
        with open(db.data / "postgresql.conf", "a") as f:
            f.write("\nfsync = on\nsynchronous_commit = on\nfull_page_writes = on\n")
        db.start()
        started.append(db)
        db.psql('CREATE DATABASE "mail_defer"', dbname="postgres")
        return db

    def init_db(self, db: "pg.Postgres", dbname: str, work: Path) -> None:
        """mailgate --init-db, then the bench's users in the directory."""
        cfg = work / f"initdb-{dbname}.yaml"
        cfg.write_text(mailgate_config(1, 2, 3, pg_directory(db, dbname), "{ store: none }", 1))
        r = subprocess.run([self.args.mailgate_bin, "--init-db", str(cfg)], capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"mailgate --init-db: {r.stdout}{r.stderr}")
        mailboxes = ",".join(f"('{u}', '{DOMAIN}', '{{PLAIN}}{PASSWORD}')" for u in USERS)
        db.psql(f"INSERT INTO domains (name) VALUES ('{DOMAIN}');\n"
                f"INSERT INTO nodes (name, host, lmtp_port) VALUES ('node', '127.0.0.1', {self.dovecot.lmtp_port});\n"
                f"INSERT INTO routes VALUES ('{DOMAIN}', 'node', NULL);\n"
                f"INSERT INTO mailboxes (address, domain, password) VALUES {mailboxes};", dbname=dbname)

    def run(self) -> None:
        a = self.args
        work = Path(harness.make_workdir("mailgate-queuebench-"))
        started: list = []
        try:
            wanted = [t for t in a.targets.split(",") if t in TARGETS]
            if any(t.startswith("pg") for t in wanted) and not pg.available():
                log("PostgreSQL 15 not found: postgres targets skipped")
                wanted = [t for t in wanted if not t.startswith("pg")]
            log("starting Dovecot ...")
            self.dovecot = QuotaDovecot(work / "dovecot", {u: PASSWORD for u in USERS}, scheme="PLAIN",
                                        name="qbench", extra_config=DOVECOT_EXTRA)
            self.dovecot.start()
            started.append(self.dovecot)
            passwd = work / "users.passwd"
            passwd.write_text("".join(f"{u}:{{PLAIN}}{PASSWORD}\n" for u in USERS))
            db = None
            if any(t.startswith("pg") for t in wanted):
                db = self.start_postgres(work, started)
            for name in dict.fromkeys(GATEWAY_OF[t] for t in wanted if t in GATEWAY_OF):
                port, admin = harness.free_ports(2)
                qdir, dbname = None, None
                if name in ("A", "B"):
                    qdir = work / f"queue-{name}"
                    qdir.mkdir()
                    text = mailgate_config(port, admin, self.dovecot.lmtp_port, file_directory(passwd),
                                           f'{{ store: dir, dir: {json.dumps(str(qdir))}, retry: 10m }}', a.threads)
                else:
                    dbname = "mail_none" if name == "C" else "mail_defer"
                    self.init_db(db, dbname, work)
                    text = mailgate_config(port, admin, self.dovecot.lmtp_port, pg_directory(db, dbname),
                                           "{ store: postgres, retry: 10m }", a.threads)
                g = Gateway(name, work, text, a.mailgate_bin, port, admin, qdir, db if dbname else None, dbname)
                g.start()
                started.append(g)
                self.gateways[name] = g

            # Warm-up: every gateway has its node connections, Dovecot its lmtp processes.
            for t in wanted:
                w = self.send(t, a.warmup, f"{t}/warmup", measure=False)
                if not w["ok"]:
                    log(f"  {t}/warmup: {json.dumps({k: w[k] for k in w if k != 'errors'})}")
            for i in range(a.repeats):
                k = i % len(wanted)
                order = wanted[k:] + wanted[:k]
                # dirheld measures a queue holding entries: after dir10 in every round.
                if "dirheld" in order and "dir10" in order and order.index("dirheld") < order.index("dir10"):
                    order.remove("dirheld")
                    order.insert(order.index("dir10") + 1, "dirheld")
                for t in order:
                    self.loads.append(loadavg())
                    rec = self.send(t, a.messages, f"{t}/round{i + 1}", measure=True)
                    rec["loadavg"] = self.loads[-1]
                    self.runs.setdefault(t, []).append(rec)
                    self.results[t] = median_record(self.runs[t])
                    flag = "" if rec["ok"] else "  <-- NOT AS EXPECTED"
                    extra = ", ".join(f"{k2[len('cpu_us_per_msg_'):]} {fmt(v)} us/msg"
                                      for k2, v in rec.items() if k2.startswith("cpu_us_per_msg_"))
                    log(f"  round {i + 1} {t}: {fmt(rec.get('msgs_per_s'))} msgs/s ({a.messages} in "
                        f"{rec['wall_s']:.2f} s), {extra}; delivered {rec['delivered']}/{rec['expect_delivered']}, "
                        f"queued {rec['queue_entries_written']}/{rec['deferred_rcpts']} (store +{rec['queue_stored_delta']}, "
                        f"held before {rec['queue_held_before']}), "
                        f"250 {rec['replies_250']} 4xx {rec['replies_4xx']}{flag}")
            self.loads.append(loadavg())
            for name, g in self.gateways.items():
                log(f"  gateway {name} queue metrics at the end: {g.metrics()}")
        finally:
            for d in reversed(started):
                try:
                    d.stop()
                except Exception as e:  # noqa: BLE001
                    log(f"stopping {d}: {e}")
            for name in self.gateways:
                mg_log = work / f"mailgate-{name}" / "mailgate.log"
                if mg_log.exists():
                    lines = mg_log.read_text(errors="replace").strip().splitlines()
                    if lines:
                        log(f"  mailgate {name} log has {len(lines)} lines; last ones:\n    " + "\n    ".join(lines[-5:]))
            if a.keep:
                log(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)

    def report(self) -> str:
        a = self.args
        base = {"dir10": "none", "dirheld": "none", "pg10": "pgnone"}
        rows = ["| target | msgs/s | gateway CPU µs/msg | vs no deferrals (msgs/s; CPU) "
                "| mailgate/direct (msgs/s; Dovecot CPU) | Dovecot CPU µs/msg "
                "| PostgreSQL CPU µs/msg | recipients deferred | queue entries written | replies 250 / 4xx "
                "| delivered / expected |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        d = self.results.get("direct")
        for t in TARGETS:
            r = self.results.get(t)
            if not r:
                continue
            runs = self.runs[t]
            b = self.results.get(base.get(t, ""))
            vs = "–"
            if b and r.get("msgs_per_s") and b.get("msgs_per_s"):
                vs = (f"{r['msgs_per_s'] / b['msgs_per_s']:.2f}; "
                      f"{r['cpu_us_per_msg_gateway'] / b['cpu_us_per_msg_gateway']:.2f}")
            vd = "–"
            if t not in DIRECT and d and r.get("msgs_per_s") and d.get("msgs_per_s"):
                vd = (f"{r['msgs_per_s'] / d['msgs_per_s']:.2f}; "
                      f"{r['cpu_us_per_msg_node'] / d['cpu_us_per_msg_node']:.2f}")
            tot = lambda k: int(sum(x[k] or 0 for x in runs))  # noqa: E731
            if t in DIRECT:
                gw, queued, replies = "–", "–", "– (smtp-source: every reply 2xx)"
            else:
                gw = fmt(r.get("cpu_us_per_msg_gateway"))
                queued, replies = str(tot("queue_entries_written")), f"{tot('replies_250')} / {tot('replies_4xx')}"
            rows.append(
                f"| {TARGET_TEXT[t]} | {fmt(r.get('msgs_per_s'))} | {gw} | {vs} | {vd} "
                f"| {fmt(r.get('cpu_us_per_msg_node'))} | {fmt(r.get('cpu_us_per_msg_postgres'))} "
                f"| {tot('deferred_rcpts')} of {tot('rcpts')} | {queued} "
                f"| {replies} | {tot('delivered')} / {tot('expect_delivered')} |")
        loads = [x for x in self.loads if x >= 0]
        rows.append("")
        if loads:
            rows.append(f"{a.repeats} interleaved rounds, medians (totals over the rounds in the last four "
                        f"columns); {a.messages} messages of {a.size} bytes, 2 recipients each, per target and "
                        f"round; smtp-source, {a.sessions} sessions in all, one message per connection; "
                        f"1-min load average {min(loads):.2f}–{max(loads):.2f}")
        return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mailgate-bin", default=os.environ.get("MAILGATE_BIN", str(REPO / "build" / "mailgate")))
    ap.add_argument("--targets", default="none,dir10,dirheld,pgnone,pg10,direct")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; figures are their medians")
    ap.add_argument("--messages", type=int, default=1000, help="messages per target and round (a multiple of 5)")
    ap.add_argument("--warmup", type=int, default=100, help="unmeasured messages per target first")
    ap.add_argument("--sessions", type=int, default=20, help="smtp-source sessions in all (4/5 and 1/5)")
    ap.add_argument("--size", type=int, default=10240, help="smtp-source -l, bytes")
    ap.add_argument("--threads", type=int, default=2, help="mailgate threads")
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not os.access(run.SMTP_SOURCE, os.X_OK):
        log(f"{run.SMTP_SOURCE} not found (Debian package postfix)")
        return 2
    b = QueueBench(args)
    b.run()
    print(b.report())
    if args.json:
        Path(args.json).write_text(json.dumps({"results": b.results, "runs": b.runs, "loadavg": b.loads},
                                              indent=1, default=str))
    bad = sum(not x["ok"] for rs in b.runs.values() for x in rs)
    return 1 if bad or not b.runs else 0


if __name__ == "__main__":
    sys.exit(main())
