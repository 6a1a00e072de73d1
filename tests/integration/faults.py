"""Helpers of the fault-injection tests (test_faults.py, test_node_freeze.py): the
processes of a harness.Dovecot, how much its LMTP processes have read, the messages
of a mailbox that carry a marker, and the gateway's open descriptors."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import harness


def dovecot_pids(d: harness.Dovecot) -> list[int]:
    """The master and every process below it."""
    pid = d.master_pid
    if pid is None or not harness._pid_alive(pid):
        return []
    return [pid, *harness._descendants(pid)]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def lmtp_read_bytes(d: harness.Dovecot) -> int:
    """Bytes read so far by the node's live lmtp processes (rchar: sockets included)."""
    total = 0
    for pid in dovecot_pids(d):
        if comm(pid) != "lmtp":
            continue
        try:
            m = re.search(r"^rchar: (\d+)$", Path(f"/proc/{pid}/io").read_text(), re.M)
        except OSError:
            continue
        if m:
            total += int(m.group(1))
    return total


def signal_node(d: harness.Dovecot, sig: int) -> list[int]:
    """sig to the master first (a killed master starts no new child), then the rest."""
    pids = dovecot_pids(d)
    for pid in pids:
        harness._kill_pid(pid, sig)
    if sig == signal.SIGKILL:
        harness.wait_for(lambda: not any(harness._pid_alive(p) for p in pids), 5.0, 0.02,
                         "the node's processes to die")
    return pids


def copies(d: harness.Dovecot, mailbox: str, marker: bytes) -> int:
    """Messages in mailbox's Maildir (new and cur: what a client sees) carrying marker."""
    local, _, domain = mailbox.partition("@")
    base = d.mail_dir / domain / local / "Maildir"
    n = 0
    for sub in ("new", "cur"):
        folder = base / sub
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            try:
                with open(p, "rb") as f:
                    head = f.read(4096)
            except OSError:
                continue
            if marker in head:
                n += 1
    return n


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_fds_at_most(pid: int, limit: int, timeout: float = 15.0) -> int:
    """Waits until pid has at most limit descriptors open (health checks open one now
    and then); returns the count, or raises with the descriptors still open."""
    deadline = time.monotonic() + timeout
    while True:
        n = open_fds(pid)
        if n <= limit:
            return n
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    names = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            names.append(f"{fd} -> {os.readlink(f'/proc/{pid}/fd/{fd}')}")
        except OSError:
            pass
    raise AssertionError(f"{open_fds(pid)} descriptors open, {limit} before:\n" + "\n".join(names))


def metric(admin_port: int, sample: str) -> float | None:
    """The value of one sample line of /metrics (`name{labels}`), None when absent."""
    with urllib.request.urlopen(f"http://{harness.HOST}:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line[len(sample) + 1:])
    return None


def message(subject: str, size: int = 0) -> bytes:
    """A message whose Subject (in the first 4 KiB, where copies() looks) is its marker,
    with about size octets of body lines."""
    head = (f"From: sender@example.com\r\nTo: rcpt@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{os.urandom(8).hex()}@faults.test>\r\n\r\n").encode()
    return head + (b"x" * 998 + b"\r\n") * (size // 1000) + b"end\r\n"
