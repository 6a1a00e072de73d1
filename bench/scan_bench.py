#!/usr/bin/env python3
"""Content scanners: messages per second and CPU per message (bench/README.md).

The `smtp` scenario of bench/run.py with scanners on the mail path: Postfix's
smtp-sink as the node (it counts every message it takes), Postfix's smtp-source as
the client (one message per connection, as an MX sees them), the same ~10 KB MIME
message (a text part and a base64 attachment) for every target, and CPU read from
/proc/PID/stat before and after each measured run. Targets, all in one run and, with
--repeats N, in N interleaved rounds (each round starting one target further along;
every figure is the median of the rounds):

  none     mailgate MX (`deliver: smtp` to the sink), no scanner
  clamd    the same mailgate, a listener whose flow runs a `clamd` scanner against a
           clamd started here (its own clamd.conf, LocalSocket in the work directory,
           a one-line .hdb database holding EICAR's md5, as tests/integration/test_clamd.py)
  dlp      the built-in DLP scanner (`type: dlp`, card_number validated by Luhn)
  milter   a `milter` scanner: tests/integration/milters/test_milter.py (python3-milter,
           i.e. libmilter) in its pass-through mode (the subject asks for no action)
  postfix  the anchor: a private Postfix (tests/integration/harness.py) whose smtpd has
           `smtpd_milters = unix:<clamav-milter socket>`, clamav-milter running in the
           foreground against the same clamd, relaying the domain to the same sink

mailgate's CPU is its one process (all its threads). Postfix's CPU is the whole
instance: every live process carrying its MAIL_CONFIG (master, smtpd, cleanup,
trivial-rewrite, qmgr, smtp, anvil, ...) plus the master's cutime/cstime (children
that exited meanwhile). The scanners' own CPU (clamd, clamav-milter, the test milter)
is reported separately. Throughput is messages / (time from smtp-source's start until
the sink holds them all): Postfix queues and relays after its 250, mailgate answers
"." only after the node did.

Usage: python3 bench/scan_bench.py [--repeats 3] [--messages 2000] [--json out.json]
(as root: the private Postfix needs it; build/mailgate by default, MAILGATE_BIN).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import run  # noqa: E402  (bench/run.py: SmtpSink, smtp-source runner, /proc helpers)
from run import harness, log, loadavg, median_record, proc_cpu_seconds, fmt  # noqa: E402

sys.path.insert(0, str(REPO / "tests" / "integration"))
from test_clamd import Clamd  # noqa: E402  (tests/integration/test_clamd.py)
from test_milter import TestMilterDaemon, have_pymilter  # noqa: E402

CLAMAV_MILTER = shutil.which("clamav-milter") or "/usr/sbin/clamav-milter"
TARGETS = ("none", "clamd", "dlp", "milter", "postfix")
TARGET_TEXT = {
    "none": "mailgate, no scanner",
    "clamd": "mailgate + clamd",
    "dlp": "mailgate + DLP (card_number/Luhn)",
    "milter": "mailgate + milter (python3-milter, pass-through)",
    "postfix": "Postfix smtpd + clamav-milter (anchor)",
}
DOMAIN = run.BENCH_DOMAIN
RCPT = run.SMTP_RCPT


def proc_tree_cpu_seconds(pids: list[int], reaper: int | None) -> float:
    """utime+stime of pids, plus cutime+cstime of reaper (its children that exited)."""
    total = proc_cpu_seconds(pids)
    if reaper:
        try:
            with open(f"/proc/{reaper}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
            total += (int(fields[13]) + int(fields[14])) / run.CLK_TCK
        except (OSError, IndexError, ValueError):
            pass
    return total


def write_message(path: Path, size: int) -> int:
    """A MIME message of about `size` bytes: a text part (prose with a few digits that
    are no card numbers) and a base64 attachment of pseudo-random bytes. smtp-source -F
    sends it as is (CRLF appended to every line)."""
    rnd = random.Random(9)
    words = ("the quarterly report is attached please find the figures for order number "
             "and the invoice dated was sent to accounting on monday regards").split()
    text = []
    while sum(len(x) + 2 for x in text) < size // 4:
        line = " ".join(rnd.choice(words) for _ in range(11))
        text.append(f"{line} {rnd.randint(100, 99999)}.")
    raw = bytes(rnd.getrandbits(8) for _ in range((size - size // 4 - 600) * 3 // 4))
    import base64
    b64 = base64.encodebytes(raw).decode().splitlines()
    lines = [f"From: Sender <sender@{DOMAIN}>", f"To: <{RCPT}>", "Subject: quarterly report",
             "Message-ID: <scan-bench@bench.invalid>", "MIME-Version: 1.0",
             'Content-Type: multipart/mixed; boundary="b1"', "", "--b1",
             "Content-Type: text/plain; charset=utf-8", "", *text, "", "--b1",
             "Content-Type: application/pdf", "Content-Transfer-Encoding: base64",
             'Content-Disposition: attachment; filename="report.pdf"', "", *b64, "--b1--"]
    path.write_text("\n".join(lines) + "\n")
    return sum(len(x) + 2 for x in lines)


def mailgate_config(ports: dict[str, int], sink_port: int, users_file: str, threads: int,
                    clamd_sock: Path | None, milter_sock: Path | None) -> str:
    listeners = "".join(
        f'  - {{ name: mx_{t}, protocol: smtp, listen: ["127.0.0.1:{p}"], tls: none, max_messages: 1000000 }}\n'
        for t, p in ports.items())
    scanners, flows = "", ""
    if "clamd" in ports:
        scanners += f'    clamav: {{ type: clamd, endpoints: ["unix:{clamd_sock}"] }}\n'
        flows += "    - { when: { listener: mx_clamd }, run: [clamav] }\n"
    if "dlp" in ports:
        scanners += ("    dlp: { type: dlp, on_match: tag, detectors: "
                     "[ { id: card, pattern: card_number, validate: luhn } ] }\n")
        flows += "    - { when: { listener: mx_dlp }, run: [dlp] }\n"
    if "milter" in ports:
        scanners += f'    milter: {{ type: milter, endpoints: ["unix:{milter_sock}"] }}\n'
        flows += "    - { when: { listener: mx_milter }, run: [milter] }\n"
    hooks = ("hooks:\n  defaults: { on_error: tempfail, timeouts: { scan: 30s } }\n"
             f"  scanners:\n{scanners}  flows:\n{flows}") if scanners else ""
    return f"""\
server: {{ threads: {threads}, shutdown_grace: 2s }}
log: {{ level: {os.environ.get("BENCH_MAILGATE_LOG", "warn")}, format: json }}
listeners:
{listeners}directory:
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
    - {{ domain: "{DOMAIN}", primary: sink }}
{hooks}"""


class ClamavMilter:
    """clamav-milter in the foreground, its own config, against the bench's clamd."""

    def __init__(self, workdir: Path, clamd_sock: Path):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.socket = workdir / "clamav-milter.sock"
        self.conf = workdir / "clamav-milter.conf"
        self.conf.write_text(
            f"MilterSocket unix:{self.socket}\n"
            "MilterSocketMode 666\n"
            "Foreground yes\n"
            f"PidFile {workdir / 'clamav-milter.pid'}\n"
            f"TemporaryDirectory {workdir}\n"
            f"ClamdSocket unix:{clamd_sock}\n"
            "OnClean Accept\nOnInfected Reject\nOnFail Defer\n"
            "AddHeader Replace\n"
            f"LogFile {workdir / 'clamav-milter.log'}\n"
            "LogInfected Basic\n"
            "MaxFileSize 25M\n")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> "ClamavMilter":
        with open(self.dir / "clamav-milter.stderr", "ab") as err:
            self.proc = subprocess.Popen([CLAMAV_MILTER, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err)
        harness.wait_for(lambda: self.socket.exists() or self.proc.poll() is not None, timeout,
                         what="clamav-milter's socket")
        if self.proc.poll() is not None:
            raise RuntimeError("clamav-milter exited: " +
                               (self.dir / "clamav-milter.stderr").read_text(errors="replace")[-2000:])
        return self

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def postfix_anchor(workdir: Path, port: int, sink_port: int, milter_sock: Path) -> "harness.Postfix":
    """A private Postfix relaying DOMAIN to the sink, clamav-milter on its smtpd."""
    extra = (f"relay_domains = {DOMAIN}\n"
             f"transport_maps = inline:{{ {DOMAIN}=smtp:[127.0.0.1]:{sink_port} }}\n"
             f"smtpd_milters = unix:{milter_sock}\n"
             "milter_default_action = tempfail\n"
             "milter_protocol = 6\n"
             "smtp_tls_security_level = none\n"
             "max_use = 1000000\nmax_idle = 3600s\n"
             "smtpd_client_connection_rate_limit = 0\nanvil_rate_time_unit = 60s\n"
             "default_process_limit = 100\n")
    pf = harness.Postfix(workdir, mailboxes=[], domains=["unused.test"], port=port, extra_main=extra,
                         hostname="anchor.bench.invalid")
    with open(pf.config_dir / "master.cf", "a") as f:
        f.write("smtp      unix  -       -       n       -       -       smtp\n")
    return pf


class ScanBench:
    def __init__(self, args):
        self.args = args
        # run.Bench.smtp_source reads only args.smtp_sessions / smtp_size: reuse it as is.
        self.src = types.SimpleNamespace(args=types.SimpleNamespace(smtp_sessions=args.sessions,
                                                                    smtp_size=args.size))
        self.targets: dict[str, dict] = {}
        self.runs: dict[str, list[dict]] = {}
        self.results: dict[str, dict] = {}
        self.loads: list[float] = []

    def smtp_source(self, port: int, count: int, label: str) -> dict:
        r = run.Bench.smtp_source(self.src, port, "perconn", count, label)  # type: ignore[arg-type]
        return r

    def send(self, t: str, count: int, label: str, measure: bool) -> dict:
        """count messages to target t; returns the record (CPU deltas when measure)."""
        tg, sink = self.targets[t], self.sink
        m0 = sink.messages()
        cpu0 = {k: f() for k, f in tg["cpu"].items()}
        t0 = time.perf_counter()
        # -F: the message file, sent to RCPT; run.Bench.smtp_source adds -f/-t/-M.
        r = self.smtp_source(tg["port"], count, label)
        # Postfix relays after its 250: wait until the sink holds them all (or 30 s more).
        deadline = time.monotonic() + (30 if r["rc"] == 0 else 1)
        while sink.messages() - m0 < count and time.monotonic() < deadline:
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        time.sleep(0.1)
        cpu1 = {k: f() for k, f in tg["cpu"].items()}
        m1 = sink.messages()
        rec = {"messages": count, "at_sink": m1 - m0, "lost": count - (m1 - m0), "wall_s": wall,
               "smtp_source_s": r["wall_s"], "rc": r["rc"], "errors": r["stderr"] or None}
        if measure:
            if r["rc"] == 0 and rec["lost"] == 0:
                rec["msgs_per_s"] = count / wall
            for k in cpu0:
                rec[f"cpu_us_per_msg_{k}"] = (cpu1[k] - cpu0[k]) / count * 1e6
        return rec

    def run(self) -> None:
        a = self.args
        work = Path(harness.make_workdir("mailgate-scanbench-"))
        started: list = []
        try:
            msg = work / "message.eml"
            self.msg_bytes = write_message(msg, a.size)
            os.chmod(msg, 0o644)
            # smtp-source sends the file instead of its own payload (-F); the run.py
            # helper takes the rest of its options from self.src.
            orig = run.SMTP_SOURCE
            wrapper = work / "smtp-source-F"
            # (-l, the payload size, is refused next to -F: dropped)
            wrapper.write_text("#!/bin/sh\nfor a; do shift; if [ \"$skip\" ]; then skip=; continue; fi\n"
                               "  if [ \"$a\" = -l ]; then skip=1; continue; fi; set -- \"$@\" \"$a\"; done\n"
                               f"exec {orig} -F {msg} \"$@\"\n")
            os.chmod(wrapper, 0o755)
            run.SMTP_SOURCE = str(wrapper)

            wanted = [t for t in a.targets.split(",") if t in TARGETS]
            need_clamd = "clamd" in wanted or "postfix" in wanted
            ports = dict(zip(("sink", "none", "clamd", "dlp", "milter", "postfix"), harness.free_ports(6)))
            self.sink = run.SmtpSink(work, ports["sink"]).start()
            started.append(self.sink)
            clamd = milter = cmilter = None
            if need_clamd:
                (work / "clamd").mkdir()
                clamd = Clamd(work / "clamd")
                if not a.clamd_cache:
                    # Every message is the same file (smtp-source -F): clamd's cache of
                    # clean hashes would answer a byte-identical stream without scanning
                    # it (clamav-milter's stream is identical message after message;
                    # mailgate's differs in its Received: line). Real mail is unique.
                    with open(clamd.conf, "a") as f:
                        f.write("DisableCache yes\n")
                clamd.start()
                started.append(clamd)
            clamd_cpu = (lambda: proc_cpu_seconds([clamd.proc.pid] if clamd and clamd.proc else []))
            if "milter" in wanted:
                if not have_pymilter():
                    log("python3-milter missing: milter target skipped")
                    wanted.remove("milter")
                else:
                    (work / "milter").mkdir()
                    milter = TestMilterDaemon(work / "milter").start()
                    started.append(milter)
            mg_targets = [t for t in wanted if t != "postfix"]
            if mg_targets:
                passwd = work / "users.passwd"
                passwd.write_text(f"{RCPT}:{{PLAIN}}benchpass\n")
                mg = harness.Mailgate(work / "mailgate", mailgate_config(
                    {t: ports[t] for t in mg_targets}, ports["sink"], str(passwd), a.threads,
                    clamd.socket if clamd else None, milter.socket if milter else None))
                mg.binary = a.mailgate_bin
                mg.start()
                started.append(mg)
                self.mailgate = mg
                for t in mg_targets:
                    cpu = {"gateway": lambda: proc_cpu_seconds([mg.pid] if mg.is_running() else [])}
                    if t == "clamd":
                        cpu["clamd"] = clamd_cpu
                    if t == "milter":
                        cpu["milter"] = lambda: proc_cpu_seconds([milter.proc.pid] if milter.proc else [])
                    self.targets[t] = {"port": ports[t], "cpu": cpu}
            if "postfix" in wanted:
                cmilter = ClamavMilter(work / "clamav-milter", clamd.socket).start()
                started.append(cmilter)
                pf = postfix_anchor(work / "postfix", ports["postfix"], ports["sink"], cmilter.socket)
                pf.start()
                started.append(pf)
                self.targets["postfix"] = {"port": ports["postfix"], "cpu": {
                    "gateway": lambda: proc_tree_cpu_seconds(pf.pids(), pf.master_pid),
                    "clamav_milter": lambda: proc_cpu_seconds(cmilter.pids()),
                    "clamd": clamd_cpu}}

            names = list(self.targets)
            for t in names:  # warm-up: every daemon has its processes and connections
                w = self.send(t, a.warmup, f"{t}/warmup", measure=False)
                if w["lost"] or w["rc"]:
                    log(f"  {t}/warmup: {w['at_sink']}/{a.warmup} at sink, exit {w['rc']} {w['errors'] or ''}")
            for i in range(a.repeats):
                k = i % len(names)
                for t in names[k:] + names[:k]:
                    self.loads.append(loadavg())
                    rec = self.send(t, a.messages, f"{t}/round{i + 1}", measure=True)
                    rec["loadavg"] = self.loads[-1]
                    self.runs.setdefault(t, []).append(rec)
                    self.results[t] = median_record(self.runs[t])
                    flag = "" if rec["lost"] == 0 and rec["rc"] == 0 else "  <-- MESSAGES NOT ACCOUNTED FOR / ERRORS"
                    extra = ", ".join(f"{k2[len('cpu_us_per_msg_'):]} {fmt(v)} us/msg"
                                      for k2, v in rec.items() if k2.startswith("cpu_us_per_msg_"))
                    log(f"  round {i + 1} {t}: {fmt(rec.get('msgs_per_s'))} msgs/s "
                        f"({a.messages} in {rec['wall_s']:.2f} s), {extra}, at sink {rec['at_sink']}{flag}")
            self.loads.append(loadavg())
            if milter is not None:
                eoms = sum(1 for e in milter.events() if e.get("event") == "eom")
                log(f"  test milter saw {eoms} end-of-message callbacks")
        finally:
            for d in reversed(started):
                try:
                    d.stop()
                except Exception as e:  # noqa: BLE001
                    log(f"stopping {d}: {e}")
            run.SMTP_SOURCE = "/usr/sbin/smtp-source"
            mg_log = work / "mailgate" / "mailgate.log"
            if mg_log.exists():
                lines = mg_log.read_text(errors="replace").strip().splitlines()
                if lines:
                    log(f"  mailgate log has {len(lines)} lines; last ones:\n    " + "\n    ".join(lines[-5:]))
            if a.keep:
                log(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)

    def report(self) -> str:
        a = self.args
        rows = [f"| target | msgs/s | gateway CPU µs/msg | clamd CPU µs/msg | milter CPU µs/msg | lost |",
                "|---|---:|---:|---:|---:|---:|"]
        for t in TARGETS:
            r = self.results.get(t)
            if not r:
                continue
            milter = r.get("cpu_us_per_msg_milter", r.get("cpu_us_per_msg_clamav_milter"))
            rows.append(f"| {TARGET_TEXT[t]} | {fmt(r.get('msgs_per_s'))} | {fmt(r.get('cpu_us_per_msg_gateway'))} "
                        f"| {fmt(r.get('cpu_us_per_msg_clamd'))} | {fmt(milter)} "
                        f"| {sum(x['lost'] for x in self.runs[t])} |")
        loads = [x for x in self.loads if x >= 0]
        rows.append("")
        rows.append(f"{a.repeats} interleaved rounds, medians; {a.messages} messages of {self.msg_bytes} bytes "
                    f"per target and round, smtp-source -s {a.sessions}, one message per connection; "
                    f"1-min load average {min(loads):.2f}–{max(loads):.2f}" if loads else "")
        return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mailgate-bin", default=os.environ.get("MAILGATE_BIN", str(REPO / "build" / "mailgate")))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; figures are their medians")
    ap.add_argument("--messages", type=int, default=2000, help="messages per target and round")
    ap.add_argument("--warmup", type=int, default=200, help="unmeasured messages per target first")
    ap.add_argument("--sessions", type=int, default=20, help="smtp-source -s")
    ap.add_argument("--size", type=int, default=10240, help="message size, bytes (about)")
    ap.add_argument("--threads", type=int, default=2, help="mailgate threads")
    ap.add_argument("--clamd-cache", action="store_true",
                    help="leave clamd's cache of clean files on (off by default: see the code)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    # SIGTERM (e.g. from timeout(1)) unwinds through run()'s finally: no daemon left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for tool in (run.SMTP_SOURCE, run.SMTP_SINK):
        if not os.access(tool, os.X_OK):
            log(f"{tool} not found (Debian package postfix)")
            return 2
    if "postfix" in args.targets and not os.access(CLAMAV_MILTER, os.X_OK):
        log("clamav-milter not found (Debian package clamav-milter): postfix anchor skipped")
        args.targets = ",".join(t for t in args.targets.split(",") if t != "postfix")
    b = ScanBench(args)
    b.run()
    print(b.report())
    if args.json:
        Path(args.json).write_text(json.dumps({"results": b.results, "runs": b.runs, "loadavg": b.loads,
                                               "message_bytes": b.msg_bytes}, indent=1, default=str))
    lost = sum(x["lost"] + (x["rc"] != 0) for rs in b.runs.values() for x in rs)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
