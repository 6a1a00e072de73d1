"""A storage node that fails after the connection is made, driven over real sockets.

The node is a small scripted LMTP server (a real Dovecot cannot be made to do this):
it takes the envelope, answers DATA with 354, reads none of the body and then resets
the connection (SO_LINGER 0) while mailgate is still sending it. The attempt failed
on the send, after connect had succeeded: its log line and the
mailgate_backend_failures_total{class} sample say "send", never "connect". The client
gets 451 (the node may have taken part of the message: no second node is tried)."""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import socketserver
import struct
import threading
import time
import unittest
import urllib.request
from pathlib import Path

import harness
from fixtures import ALICE, USERS

BODY_BYTES = 24 << 20  # more than loopback's socket buffers hold (tcp_wmem max is 4 MiB)


class ResettingNode(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self):
        self.resets = 0
        self.lock = threading.Lock()
        super().__init__((harness.HOST, 0), ResettingHandler)
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()


class ResettingHandler(socketserver.StreamRequestHandler):
    def handle(self):
        node: ResettingNode = self.server
        w = self.wfile
        w.write(b"220 fault LMTP ready\r\n")
        w.flush()
        while True:
            line = self.rfile.readline()
            if not line:
                return
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"LHLO":
                w.write(b"250-fault\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
            elif verb in (b"MAIL", b"RCPT"):
                w.write(b"250 2.1.0 Ok\r\n")
            elif verb == b"DATA":
                w.write(b"354 Go ahead\r\n")
                w.flush()
                # Read nothing: mailgate's send fills the socket buffers and waits.
                time.sleep(1.5)
                self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.request.close()  # RST
                with node.lock:
                    node.resets += 1
                return
            elif verb == b"QUIT":
                w.write(b"221 2.0.0 Bye\r\n")
                w.flush()
                return
            else:
                w.write(b"500 5.5.1 Unknown\r\n")
            w.flush()

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass  # the socket was reset on purpose


class NodeSendFailureTest(harness.LogsOnFailure, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-node-faults-"))
        cls.node = ResettingNode()
        cls.gateway = None
        try:
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            certs = cls.dir / "certs"
            ca = harness.make_ca(certs)
            cert = harness.make_cert(ca, certs, ["mx.example.org"])
            cls.mx_port = harness.free_port()
            cls.admin_port = harness.free_port()
            backends = [{"name": "fault-1", "lmtp": cls.node.port, "health_interval": "1h", "health_timeout": "1s"}]
            routes = [{"domain": "example.org", "primary": "fault-1"}]
            text = harness.mailgate_config(certificates=[cert], listeners=[
                {"name": "mx", "protocol": "smtp", "port": cls.mx_port}],
                users_file=users_file, backends=backends, routes=routes)
            text += f'admin: {{ listen: "{harness.HOST}:{cls.admin_port}" }}\n'
            cls.gateway = harness.Mailgate(cls.dir, text).start()
            harness.wait_port(cls.admin_port, 10)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.gateway is not None:
            cls.gateway.stop()
        cls.node.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def diagnostics(self) -> str:
        return "--- mailgate log (tail) ---\n" + (self.gateway.log_text()[-5000:] if self.gateway else "")

    def failures(self, klass: str) -> float:
        with urllib.request.urlopen(f"http://{harness.HOST}:{self.admin_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        want = f'mailgate_backend_failures_total{{backend="fault-1",class="{klass}"}} '
        for line in text.splitlines():
            if line.startswith(want):
                return float(line[len(want):])
        self.fail(f"no sample {want!r} in /metrics")

    def test_reset_while_sending_the_body_is_a_send_failure(self):
        body = b"Subject: reset mid-body\r\n\r\n" + (b"x" * 998 + b"\r\n") * (BODY_BYTES // 1000)
        with smtplib.SMTP(harness.HOST, self.mx_port, timeout=60) as s:
            s.ehlo("client.example.com")
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                s.sendmail("sender@example.com", [ALICE], body)
        self.assertEqual(cm.exception.smtp_code, 451)
        self.assertEqual(self.node.resets, 1)
        lines = harness.wait_for(
            lambda: [l for l in self.gateway.log_lines()
                     if l.get("msg") == "delivery attempt failed" and l.get("backend") == "fault-1"],
            10, what="delivery attempt failed in mailgate's log")
        self.assertEqual(len(lines), 1, lines)
        line = lines[0]
        self.assertNotEqual(line.get("class"), "connect", line)
        if os.environ.get("MAILGATE_IO_SECCOMP"):
            # The epoll reactor completes the waiting read before the waiting send on
            # one readiness event: the reset then shows as a read error.
            self.assertIn(line.get("class"), ("send", "protocol"), line)
        else:
            self.assertEqual(line.get("class"), "send", line)
            self.assertEqual(self.failures("send"), 1)
        self.assertEqual(self.failures("connect"), 0)


if __name__ == "__main__":
    unittest.main()
