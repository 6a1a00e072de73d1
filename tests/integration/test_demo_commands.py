"""Every command the demo prints works against the running demo, as an operator
would paste it: curl over imaps/imap/pop3s/pop3, openssl s_client (STARTTLS and
implicit TLS), swaks through the MX with and without TLS, a submission with
swaks --auth, and curl on the admin listener's /metrics and /status."""

from __future__ import annotations

import imaplib
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import unittest
from pathlib import Path

import harness

DEMO = Path(__file__).resolve().parent / "demo.py"
IMAP_SESSION = ("a LOGIN alice@example.org alice-password\n"
                "b SELECT INBOX\n"
                "c FETCH 1 BODY[]\n"
                "d LOGOUT\n")


class DemoCommandsTest(unittest.TestCase):
    def setUp(self):
        env = dict(os.environ, MAILGATE_BIN=harness.mailgate_bin())
        self.proc = subprocess.Popen([sys.executable, "-u", str(DEMO), "--free-ports"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        self.addCleanup(self._stop)
        banner, deadline = [], time.monotonic() + 120
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.fail("the demo did not come up within 120 s:\n" + "".join(self.output)[-4000:])
            if line is None:
                self.fail("the demo exited at start:\n" + "".join(self.output)[-4000:])
            banner.append(line)
            if "Press Ctrl-C" in line:
                break
        self.banner = banner

    def _drain(self):
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def _stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def commands(self) -> list[str]:
        out = []
        for line in self.banner:
            s = line.strip()
            if re.match(r"^(curl|swaks|openssl) ", s) or s.startswith("http://"):
                out.append(re.split(r"\s+#\s", s)[0].strip())
        return out

    def run_command(self, cmd: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        argv = ["curl", "-sS", "--max-time", "20", cmd] if cmd.startswith("http://") else shlex.split(cmd)
        return subprocess.run(argv, input=stdin if stdin is not None else "", capture_output=True,
                              text=True, timeout=90)

    def test_every_printed_command_works(self):
        cmds = self.commands()
        kinds = {
            "curl imaps": [c for c in cmds if c.startswith("curl") and "'imaps://" in c],
            "curl imap": [c for c in cmds if c.startswith("curl") and "'imap://" in c],
            "curl pop3s": [c for c in cmds if c.startswith("curl") and "'pop3s://" in c],
            "curl pop3": [c for c in cmds if c.startswith("curl") and "'pop3://" in c],
            "curl metrics": [c for c in cmds if c.startswith("curl") and c.endswith("/metrics")],
            "status page": [c for c in cmds if c.startswith("http://") and c.endswith("/status")],
            "openssl starttls": [c for c in cmds if c.startswith("openssl") and "-starttls imap" in c],
            "openssl implicit": [c for c in cmds if c.startswith("openssl") and "-starttls" not in c],
            "swaks mx tls": [c for c in cmds if c.startswith("swaks") and "--tls" in c and "--auth" not in c],
            "swaks mx": [c for c in cmds if c.startswith("swaks") and "--tls" not in c],
            "swaks submission": [c for c in cmds if c.startswith("swaks") and "--auth" in c],
        }
        for kind, found in kinds.items():
            self.assertTrue(found, f"the demo prints no {kind} command:\n" + "".join(self.banner))

        ran = 0
        for cmd in cmds:
            with self.subTest(command=cmd):
                if cmd.startswith("openssl"):
                    r = self.run_command(cmd, IMAP_SESSION)
                    self.assertIn("Welcome to mailgate", r.stdout, r.stdout + r.stderr)
                    self.assertRegex(r.stdout, r"(?m)^d OK", r.stdout + r.stderr)
                elif cmd.startswith("swaks"):
                    r = self.run_command(cmd)
                    if "nobody@" in cmd:
                        self.assertNotEqual(r.returncode, 0, r.stdout)
                        self.assertIn("550 5.1.1", r.stdout + r.stderr)
                    else:
                        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                        self.assertRegex(r.stdout, r"<[-~]\s+250 2\.0\.0 ", r.stdout)
                        if "--auth" in cmd:
                            self.assertIn("235 ", r.stdout)
                        if "--tls" in cmd:
                            self.assertIn("TLS started", r.stdout)
                else:
                    r = self.run_command(cmd)
                    self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                    if cmd.endswith("/metrics"):
                        self.assertIn("mailgate_", r.stdout)
                    elif cmd.endswith("/status"):
                        self.assertIn("mailgate", r.stdout)
                    elif "MAILINDEX=1" in cmd or cmd.endswith("/1'"):
                        self.assertIn("Welcome to mailgate", r.stdout)
                    else:
                        self.assertRegex(r.stdout, r"(?m)^1 \d+")
                ran += 1
        self.assertEqual(ran, len(cmds))

        # The submission went through the relay and the MX into alice's mailbox.
        imaps = kinds["curl imaps"][0]
        ca = shlex.split(imaps)[shlex.split(imaps).index("--cacert") + 1]
        port = int(re.search(r"imaps://[^:]+:(\d+)/", imaps).group(1))
        imap = imaplib.IMAP4_SSL(harness.HOST, port, ssl_context=harness.client_context(ca), timeout=30)
        try:
            imap.login("alice@example.org", "alice-password")
            imap.select("INBOX", readonly=True)
            typ, data = imap.search(None, "FROM", '"bob@example.org"')
            self.assertEqual(typ, "OK")
            self.assertTrue(data[0].split(), "the submitted message is not in alice's INBOX")
        finally:
            harness.close_imap(imap)

        self._stop()
        self.assertEqual(self.proc.returncode, 0, "".join(self.output)[-3000:])


if __name__ == "__main__":
    unittest.main()
