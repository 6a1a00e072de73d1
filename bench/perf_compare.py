#!/usr/bin/env python3
"""Where two mailgate builds spend their CPU, function by function, per IMAP session
and per GB relayed: `perf record -e cpu-clock` on each build's process during the
same phases, reported as the functions whose cost differs most between the builds.

    python3 bench/perf_compare.py --load-bin build-bench/mailgate-load \\
        --bin before=/path/to/old/mailgate --bin after=build/mailgate [--rounds 2] [--out DIR]

One Dovecot as in bench/run.py (same configuration, 100 users, the 100 x 1 MiB
`bulk` mailbox) and every build running at once with bench/run.py's mailgate
configuration, each on ports of its own. Phases: plain sessions (connect, LOGIN,
SELECT, LOGOUT), implicit-TLS sessions, FETCH of the whole mailbox plain and with
client-side TLS. For each round, phase and build (interleaved): an unmeasured
warm-up, then the phase with `perf record -e cpu-clock -F <freq>` attached to the
build's process (all threads, user and kernel), and utime+stime from /proc around
it. A sample stands for 1/freq s of CPU; samples per symbol / sessions (or GB) gives
the symbol's CPU per session (per GB). Printed: the total per build, each DSO's
total (rows "*  (dso)"), and the symbols whose cost differs most between the first
build (the reference) and each other.

Why not callgrind: valgrind 3.19 (Debian 12) keeps its big lock across
io_uring_enter (not marked as a blocking syscall), so with several threads a reactor
waiting for completions stops every other thread and sessions stall. cpu-clock is a
software event: this machine (a Firecracker VM) has no hardware counters.

Needs root (Dovecot, perf on other processes), perf; loopback only.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: Dovecot, mailbox, mailgate configuration)
import policy_conf  # noqa: E402  (bench/policy_conf.py: the --policy configurations)
from run import harness, log  # noqa: E402


def perf_symbols(data: Path, binary: str) -> dict[str, int]:
    """{"symbol  (dso)": samples} of one perf.data. The build's own binary is named
    `mailgate` whatever its file name, so that the builds' symbols pair up; addresses
    perf could not name are summed per DSO ("?  (libcrypto.so.3)"); the key
    "*  (dso)" holds each DSO's total."""
    r = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,sym",
                        "-F", "sample,dso,sym"], capture_output=True, text=True, timeout=300)
    out: dict[str, int] = {}
    own = os.path.basename(binary)
    for line in r.stdout.splitlines():
        m = re.match(r"\s*(\d+)\s+(\S+)\s+\[[.k]\]\s+(.*\S)", line)
        if not m:
            continue
        n, dso, sym = int(m.group(1)), m.group(2), m.group(3)
        if dso == own:
            dso = "mailgate"
        if re.fullmatch(r"0x[0-9a-f]+", sym):
            sym = "?"
        sym = re.sub(r"\(.*", "", sym)  # overloads and clones: one name (perf prints some with arguments)
        for key in (f"{sym}  ({dso})", f"*  ({dso})"):
            out[key] = out.get(key, 0) + n
    return out


def main() -> int:
    signal.signal(signal.SIGTERM, run._terminate)  # runs the finally: stops the daemons
    signal.signal(signal.SIGHUP, run._terminate)
    ap = argparse.ArgumentParser()
    ap.add_argument("--load-bin", required=True)
    ap.add_argument("--bin", action="append", required=True, metavar="NAME=PATH",
                    help="a mailgate build; the first is the reference of the differences")
    ap.add_argument("--sessions", type=int, default=15000, help="plain sessions per phase")
    ap.add_argument("--tls-sessions", type=int, default=5000, help="implicit-TLS sessions per phase")
    ap.add_argument("--fetch-repeat", type=int, default=20, help="FETCHes of the 100 MiB mailbox per phase")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, the builds interleaved; samples are summed")
    ap.add_argument("--freq", type=int, default=2000, help="perf sampling frequency (Hz of CPU time)")
    ap.add_argument("--top", type=int, default=15, help="symbols shown per phase")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--policy", action="append", default=[], metavar="NAME",
                    help="this build runs with bench/policy_conf.py's realistic policy, and then every other "
                         "with no policy (`limits: { rules: [] }`); the same binary may be given twice")
    ap.add_argument("--phases", default="sessions_none,sessions_implicit,fetch_none,fetch_implicit")
    ap.add_argument("--out", default=None, help="keep the perf.data files here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    builds = []
    for b in args.bin:
        name, sep, path = b.partition("=")
        if not sep or not name or not os.access(path, os.X_OK):
            ap.error(f"--bin {b!r}: want NAME=PATH of an executable")
        builds.append((name, os.path.abspath(path)))
    if not shutil.which("perf"):
        ap.error("perf not found")
    load_bin = os.path.abspath(args.load_bin)
    out = Path(args.out or harness.make_workdir("mailgate-profile-out-"))
    out.mkdir(parents=True, exist_ok=True)

    work = Path(harness.make_workdir("mailgate-profile-"))
    log(f"work directory: {work}, perf data in {out}")
    password = "benchpass"
    phases = [  # (name, load mode, tls, count, unit)
        ("sessions_none", "sessions", "none", args.sessions, "session"),
        ("sessions_implicit", "sessions", "implicit", args.tls_sessions, "session"),
        ("fetch_none", "fetch", "none", args.fetch_repeat, "GB"),
        ("fetch_implicit", "fetch", "implicit", args.fetch_repeat, "GB"),
    ]
    phases = [p for p in phases if p[0] in args.phases.split(",")]
    # (build, phase) -> {"units": sessions or GB, "cpu_s": /proc, "samples": {symbol: n}}
    acc: dict[tuple[str, str], dict] = {}
    started: list = []
    bench = run.Bench(argparse.Namespace(load_bin=load_bin, users=100))
    bench.password = password
    loads = [run.loadavg()]
    t_start = time.monotonic()
    try:
        ca = harness.make_ca(work / "certs")
        cert = harness.make_cert(ca, work / "certs", ["localhost"])
        os.chmod(cert[1], 0o644)
        users = {f"user{i}": password for i in range(100)}
        users["bulk"] = password
        dovecot, _ = run.start_dovecot(work, users, cert)
        started.append(dovecot)
        run.write_bulk_mailbox(dovecot.mail_dir / "_" / "bulk" / "Maildir", 100, 1 << 20,
                               dovecot.mail_uid, dovecot.mail_gid)
        bench.load("fetch", dovecot.imap_port, "none", ["--user", "bulk", "--repeat", "1"], "warmup")

        gates = {}
        policy_files = policy_conf.make_policy_files(work / "policy-files") if args.policy else None
        for name, binary in builds:
            mg_dir = work / name
            mg_dir.mkdir()
            ports = dict(zip(run.TLS_MODES, harness.free_ports(3)))
            passwd = mg_dir / "users.passwd"
            passwd.write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in users.items()))
            cfg = run.imap_mailgate_config(ports, passwd, cert, dovecot.imap_port, args.threads)
            if args.policy:
                cfg += policy_conf.imap_policy(policy_files, harness.free_port()) if name in args.policy \
                    else policy_conf.NO_POLICY
            mg = harness.Mailgate(mg_dir, cfg)
            mg.binary = binary
            mg.start()
            started.append(mg)
            gates[name] = (mg, ports)

        for rnd in range(args.rounds):
            order = builds[rnd % len(builds):] + builds[:rnd % len(builds)]
            for phase, mode, tls, count, unit in phases:
                for name, _ in order:
                    mg, ports = gates[name]
                    port = ports[tls]
                    label = f"{phase}/{name}/round{rnd + 1}"
                    if mode == "sessions":
                        bench.load(mode, port, tls, ["--concurrency", "32", "--duration", "0.5", "--timeout", "10"],
                                   label + "/warmup")
                        extra = ["--concurrency", "32", "--sessions", str(count), "--duration", "600",
                                 "--timeout", "10"]
                    else:
                        bench.load(mode, port, tls, ["--user", "bulk", "--concurrency", "1", "--repeat", "1",
                                                     "--timeout", "120"], label + "/warmup")
                        extra = ["--user", "bulk", "--concurrency", "1", "--repeat", str(count), "--timeout", "300"]
                    data = out / f"perf.{name}.{phase}.{rnd + 1}.data"
                    perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(args.freq),
                                             "-p", str(mg.pid), "-o", str(data)],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
                    time.sleep(0.5)  # perf attached
                    c0 = run.proc_cpu_seconds([mg.pid])
                    r = bench.load(mode, port, tls, extra, label, timeout=900)
                    c1 = run.proc_cpu_seconds([mg.pid])
                    perf.send_signal(signal.SIGINT)
                    perf.wait(60)
                    loads.append(run.loadavg())
                    units = r.get("sessions", 0) if mode == "sessions" else r.get("bytes", 0) / 1e9
                    a = acc.setdefault((name, phase), {"units": 0.0, "cpu_s": 0.0, "samples": {}})
                    a["units"] += units
                    a["cpu_s"] += c1 - c0
                    for sym, n in perf_symbols(data, dict(builds)[name]).items():
                        a["samples"][sym] = a["samples"].get(sym, 0) + n
                    log(f"  {label}: {units:.6g} {unit}s, errors {r.get('errors')}, "
                        f"CPU {(c1 - c0) / units * (1e6 if unit == 'session' else 1) if units else 0:.4g} "
                        f"{'us/session' if unit == 'session' else 's/GB'}")
    finally:
        for d in reversed(started):
            try:
                d.stop()
            except Exception as e:  # noqa: BLE001
                log(f"stopping {d}: {e}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    # Report: per phase, the totals and the symbols that differ most from the reference.
    ref = builds[0][0]
    scale = {"session": 1e6, "GB": 1e3}  # us per session, ms per GB
    unit_text = {"session": "us/session", "GB": "ms/GB"}
    blocks = []
    for phase, _, tls, _, unit in phases:
        per = {}  # build -> {symbol: cost per unit}
        totals = {}
        for name, _ in builds:
            a = acc.get((name, phase))
            if not a or not a["units"]:
                continue
            k = scale[unit] / args.freq / a["units"]
            per[name] = {s: n * k for s, n in a["samples"].items()}
            totals[name] = (sum(n for sym, n in a["samples"].items() if not sym.startswith("*  "))
                            * k, a["cpu_s"] * scale[unit] / a["units"])
        if ref not in per:
            continue
        lines = [f"{phase} ({unit_text[unit]}): " + ", ".join(
            f"{n} perf {t[0]:.4g} / proc {t[1]:.4g}" for n, t in totals.items())]
        for name, _ in builds[1:]:
            if name not in per:
                continue
            syms = set(per[ref]) | set(per[name])
            dsos = sorted((s for s in syms if s.startswith("*  ")), key=lambda s: -per[ref].get(s, 0))
            diffs = dsos + sorted((s for s in syms if not s.startswith("*  ")),
                                  key=lambda s: -abs(per[name].get(s, 0) - per[ref].get(s, 0)))[:args.top]
            head = f"| {'symbol (dso)':<70} | {ref:>9} | {name:>9} | {'diff':>9} |"
            lines += ["", head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
            for s in diffs:
                b, a = per[ref].get(s, 0.0), per[name].get(s, 0.0)
                lines.append(f"| {s[:70]:<70} | {b:>9.3f} | {a:>9.3f} | {a - b:>+9.3f} |")
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
    print(f"\n(total {time.monotonic() - t_start:.0f} s; {args.rounds} rounds summed; cpu-clock at {args.freq} Hz; "
          f"1-min load average {min(loads):.1f}-{max(loads):.1f}; perf data in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
