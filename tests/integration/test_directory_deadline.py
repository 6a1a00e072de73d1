"""A login that waits on the directory is bounded by its stage's deadline.

The directory here is an auth_http service that answers every request after 1.5 s,
within its own 2 s timeout, and the directory executor has one thread: logins queue
behind each other. The deadline of a lookup, queue wait included, is 3 x 2 s + 2 s =
8 s. Of eight logins started together, the first ones get their answer; the last
ones, which would wait up to 12 s behind the others, get a temporary failure at
their deadline, and their queued lookups are dropped unrun. No login waits without
bound."""
from __future__ import annotations

import http.server
import threading
import time
import unittest
import urllib.request
from pathlib import Path

import harness
from fixtures import ALICE, ALICE_PW

ANSWER_S = 1.5
DEADLINE_S = 8.0
LOGINS = 8


class SlowAuth(http.server.BaseHTTPRequestHandler):
    """auth_http that refuses every login, after ANSWER_S."""

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):  # noqa: N802
        time.sleep(ANSWER_S)
        self.send_response(200)
        self.send_header("Auth-Status", "Invalid login or password")
        self.send_header("Auth-Wait", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()


def imap_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DirectoryDeadlineTest(harness.LogsOnFailure, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-dirdeadline-"))
        cls.http = http.server.ThreadingHTTPServer((harness.HOST, 0), SlowAuth)
        cls.http.daemon_threads = True
        threading.Thread(target=cls.http.serve_forever, daemon=True).start()
        closed = harness.free_port()
        cls.port, cls.admin = harness.free_ports(2)
        h = harness.HOST
        text = f"""server: {{ threads: 1, workers: 1, shutdown_grace: 2s }}
log: {{ level: info, format: json }}
admin: {{ listen: "{h}:{cls.admin}" }}
listeners:
  - {{ name: imap, protocol: imap, listen: ["{h}:{cls.port}"], tls: none, allow_plaintext_auth: true }}
directory:
  driver: http
  file: {{ failure_delay: 100ms }}
  http: {{ url: "http://{h}:{cls.http.server_address[1]}/auth", timeout: 2s }}
  cache: {{ ttl: 0s, negative_ttl: 0s }}
backends:
  - name: storage-01
    host: {h}
    ports: {{ imap: {closed} }}
    health: {{ interval: 1s, timeout: 1s }}
routing:
  static:
    - {{ domain: "*", primary: storage-01 }}
"""
        cls.gateway = harness.Mailgate(cls.dir, text).start()

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        cls.http.shutdown()
        cls.http.server_close()
        harness.remove_workdir(cls.dir)

    def diagnostics(self) -> str:
        return f"--- mailgate log (tail) ---\n{self.gateway.log_text()[-6000:]}"

    def test_queued_logins_end_at_their_deadline(self):
        results: list[tuple[float, list[str]]] = [None] * LOGINS  # type: ignore[list-item]

        def login(i: int) -> None:
            c, _ = harness.imap_client(self.port, timeout=30)
            try:
                t0 = time.monotonic()
                lines = c.command("a1", f"LOGIN {imap_quote(ALICE)} {imap_quote(ALICE_PW)}", timeout=30)
                results[i] = (time.monotonic() - t0, lines)
            finally:
                c.close()

        threads = [threading.Thread(target=login, args=(i,)) for i in range(LOGINS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertTrue(all(r is not None for r in results), results)
        worst = max(r[0] for r in results)
        # Bounded: none waits much past the deadline (the old code waited 8 x 1.5 s = 12 s).
        self.assertLess(worst, DEADLINE_S + 1.5, results)
        refused = [r for r in results if r[1] == ["a1 NO [AUTHENTICATIONFAILED] Authentication failed."]]
        timed_out = [r for r in results if r[1] == ["a1 NO [UNAVAILABLE] Backend unavailable, try again later."]]
        self.assertGreaterEqual(len(refused), 1, results)
        self.assertGreaterEqual(len(timed_out), 1, results)
        self.assertEqual(len(refused) + len(timed_out), LOGINS, results)
        for elapsed, _ in timed_out:
            self.assertGreater(elapsed, DEADLINE_S - 0.5)
        log = self.gateway.log_text()
        self.assertIn("filter deadline passed", log)
        # The queued lookups of the sessions answered at the deadline are dropped unrun.
        metrics = harness.wait_for(lambda: self.expired_jobs(), 10, what="expired directory jobs in /metrics")
        self.assertGreaterEqual(metrics, 1)

    def expired_jobs(self) -> int:
        text = urllib.request.urlopen(f"http://{harness.HOST}:{self.admin}/metrics", timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith('mailgate_executor_timeouts_total{executor="directory"}'):
                return int(line.split()[-1])
        return 0


if __name__ == "__main__":
    unittest.main()
