#!/usr/bin/env python3
"""Runs the integration test files in parallel: one `python3 -m unittest -v
tests.integration.<module>` process per file, N at a time, longest first.

    python3 tests/integration/run_parallel.py [-j N] [test_module ...]

-j N (default: $INTEGRATION_JOBS, else 3) files at a time. Each file's output goes to
a log of its own (kept when a file failed) and is printed whole when the file ends,
so outputs never interleave. Files start in the order of their durations in the last run (kept in
$INTEGRATION_DURATIONS, default build/integration-durations.json), or of EXPECTED
below for files never timed. A file still running after $INTEGRATION_FILE_TIMEOUT
seconds (default 1200) is killed and counts as failed.

At the end: a table of the files, then `N passed, N failed` on a line of its own
(test cases, from unittest's "Ran N tests" and "FAILED (failures=.., errors=..)"
lines; skipped cases are counted apart), and exit status 1 if any file failed.

Every file picks its ports at run time (harness.free_port: a range of its own per
job slot, MAILGATE_PORT_RANGE) and works in mkdtemp directories, so the
files do not collide. `python3 -m unittest discover -s tests/integration` still runs
them all one after another.
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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# Seconds per file (3 jobs on 2 busy cores); used for files the last run did not time.
EXPECTED = {
    "test_postgres": 65, "test_route_freshness": 27, "test_smtp_postfix": 18, "test_smtp": 18,
    "test_smtp_directory": 13, "test_imap": 12, "test_backend_tls": 11, "test_http_auth": 11,
    "test_failover": 10, "test_submission_postgres": 10, "test_postgres_timeouts": 9,
    "test_master_login": 7, "test_smtp_spool": 6, "test_schemes": 6, "test_smtp_alias_route": 6,
    "test_harness": 5, "test_cli": 5, "test_submission": 4, "test_pop3": 4,
    "test_proxy_protocol": 3, "test_clamd": 6, "test_demo": 2, "test_admin": 2, "test_smtp_unresolvable": 2,
    "test_policy_limits": 30, "test_policy_rules": 8, "test_policy_geoip": 9, "test_policy_cli": 6,
    "test_cluster": 60, "test_queue_pg_store": 15,
    "test_package": 120, "test_systemd": 8, "test_queue": 35, "test_node_freeze": 70, "test_faults": 25,
}
UNKNOWN = 60.0  # a new file starts early rather than last


@dataclass
class Job:
    module: str
    slot: int = -1
    log: Path | None = None
    proc: subprocess.Popen | None = None
    started: float = 0.0
    seconds: float = 0.0
    returncode: int | None = None
    timed_out: bool = False
    counts: dict = field(default_factory=dict)


def modules() -> list[str]:
    return sorted(p.stem for p in HERE.glob("test*.py"))


def durations_path() -> Path:
    return Path(os.environ.get("INTEGRATION_DURATIONS") or REPO / "build" / "integration-durations.json")


def load_durations() -> dict[str, float]:
    try:
        data = json.loads(durations_path().read_text())
        return {k: float(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def save_durations(jobs: list[Job]) -> None:
    data = load_durations()
    for j in jobs:
        if j.returncode is not None and not j.timed_out:
            data[j.module] = round(j.seconds, 1)
    path = durations_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(sorted(data.items())), indent=1) + "\n")
        tmp.replace(path)
    except OSError as e:
        print(f"(durations not saved: {e})", flush=True)


def count(output: str, returncode: int | None) -> dict:
    """Test cases of one file, from unittest's summary."""
    ran = list(re.finditer(r"^Ran (\d+) tests? in ", output, re.M))
    c = {"ran": int(ran[-1].group(1)) if ran else 0, "failures": 0, "errors": 0, "skipped": 0,
         "unexpected": 0, "expected": 0}
    tail = output[ran[-1].end():] if ran else ""
    status = re.findall(r"^(OK|FAILED)(?: \((.*)\))?\s*$", tail, re.M)
    if status:
        for item in (status[-1][1] or "").split(","):
            key, _, value = item.strip().partition("=")
            if value.isdigit():
                c[{"failures": "failures", "errors": "errors", "skipped": "skipped",
                   "expected failures": "expected", "unexpected successes": "unexpected"}.get(key, key)] = int(value)
    # class- and module-level errors are not among the tests run
    outside = len(re.findall(r"^ERROR: (?:setUpClass|tearDownClass|setUpModule|tearDownModule) ", output, re.M))
    in_ran = max(0, c["errors"] - outside)
    c["passed"] = max(0, c["ran"] - c["failures"] - in_ran - c["skipped"] - c["unexpected"])
    c["failed"] = c["failures"] + c["errors"] + c["unexpected"]
    if returncode != 0 and c["failed"] == 0:
        c["failed"] = 1  # crashed, killed, or failed to import: the file itself
    return c


# Ports for the files' daemons: below the ephemeral range (net.ipv4.ip_local_port_range,
# 32768-60999 by default; some machines start it lower, and an outgoing connection of
# any process could then take a port between its check and its bind), one part per
# job slot (harness.free_port), so that no two files running at once can pick the same
# port.
def _ephemeral_first() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


PORTS_LAST = min(32000, _ephemeral_first() - 1)
PORTS_FIRST = 12000 if PORTS_LAST - 12000 >= 6000 else 2000


def port_range(slot: int, jobs: int) -> str:
    span = min(4000, (PORTS_LAST - PORTS_FIRST + 1) // jobs)
    first = PORTS_FIRST + slot * span
    return f"{first}-{first + span - 1}"


def start(job: Job, slot: int, jobs: int, logdir: Path) -> None:
    job.slot = slot
    job.log = logdir / f"{job.module}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env["MAILGATE_PORT_RANGE"] = port_range(slot, jobs)
    env.setdefault("PYTHONUNBUFFERED", "1")
    with open(job.log, "wb") as out:
        job.proc = subprocess.Popen([sys.executable, "-m", "unittest", "-v", f"tests.integration.{job.module}"],
                                    cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
    job.started = time.monotonic()


def kill(job: Job) -> None:
    if job.proc is None or job.proc.poll() is not None:
        return
    try:
        os.killpg(job.proc.pid, signal.SIGTERM)  # the file's own process group
        try:
            job.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(job.proc.pid, signal.SIGKILL)
            job.proc.wait()
    except ProcessLookupError:
        pass


def report(job: Job) -> None:
    text = job.log.read_text(errors="replace") if job.log else ""
    job.counts = count(text, job.returncode)
    verdict = "TIMED OUT" if job.timed_out else ("ok" if job.returncode == 0 else "FAILED")
    bar = "=" * 70
    sys.stdout.write(f"\n{bar}\n{job.module}: {verdict} in {job.seconds:.1f}s\n{bar}\n{text}")
    if text and not text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("INTEGRATION_JOBS") or 3))
    ap.add_argument("modules", nargs="*", help="test modules (default: every tests/integration/test*.py)")
    args = ap.parse_args()
    jobs_n = max(1, args.jobs)
    known = modules()
    wanted = [m[:-3] if m.endswith(".py") else m for m in (Path(m).name for m in args.modules)] or known
    unknown = [m for m in wanted if m not in known]
    if unknown:
        print(f"no such test file: {', '.join(unknown)}", file=sys.stderr)
        return 2
    last = load_durations()
    expected = {m: last.get(m, EXPECTED.get(m, UNKNOWN)) for m in wanted}
    pending = [Job(m) for m in sorted(wanted, key=lambda m: (-expected[m], m))]
    timeout = float(os.environ.get("INTEGRATION_FILE_TIMEOUT") or 1200)
    logdir = Path(tempfile.mkdtemp(prefix="mailgate-it-logs-"))
    print(f"{len(pending)} files, {jobs_n} at a time; logs in {logdir}", flush=True)

    def stop_on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop_on_term)  # a cancelled CI job takes the files down too

    began = time.monotonic()
    running: list[Job] = []
    done: list[Job] = []
    free_slots = list(range(jobs_n))
    try:
        while pending or running:
            while pending and free_slots:
                job = pending.pop(0)
                start(job, free_slots.pop(0), jobs_n, logdir)
                running.append(job)
            time.sleep(0.2)
            for job in list(running):
                rc = job.proc.poll()
                if rc is None and time.monotonic() - job.started > timeout:
                    job.timed_out = True
                    kill(job)
                    rc = job.proc.returncode if job.proc.returncode is not None else -9
                if rc is None:
                    continue
                job.returncode = rc
                job.seconds = time.monotonic() - job.started
                running.remove(job)
                free_slots.append(job.slot)
                free_slots.sort()
                done.append(job)
                report(job)
    except KeyboardInterrupt:
        for job in running:
            kill(job)
        print("\ninterrupted", flush=True)
        return 130
    wall = time.monotonic() - began
    save_durations(done)

    print("\n" + "=" * 70)
    for job in sorted(done, key=lambda j: -j.seconds):
        c = job.counts
        verdict = "TIMED OUT" if job.timed_out else ("ok" if job.returncode == 0 else "FAILED")
        print(f"{job.module:28} {verdict:9} {job.seconds:7.1f}s  {c['passed']} passed, {c['failed']} failed"
              + (f", {c['skipped']} skipped" if c["skipped"] else ""))
    passed = sum(j.counts["passed"] for j in done)
    failed = sum(j.counts["failed"] for j in done)
    skipped = sum(j.counts["skipped"] for j in done)
    bad = [j.module for j in done if j.returncode != 0]
    print(f"wall time {wall:.0f}s with {jobs_n} jobs" + (f"; {skipped} skipped" if skipped else ""))
    if bad:
        print(f"failed files: {' '.join(bad)} (logs in {logdir})")
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
