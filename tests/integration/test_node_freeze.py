"""A storage node frozen (SIGSTOP) while the gateway streams a message to it, for
longer than the gateway's reply timeout.

The node client's timeouts are constants (gateway/session/smtp_node_client.h):
kNodeReplyMs, 60 s, for each reply and for each chunk of the body to drain; kNodeFinalMs,
600 s, for the reply after the end of data. The test freezes the node in the middle of
the body, where the 60 s apply (a freeze after the end of data would take 10 minutes
to time out; not in the suite's time): every process of n1 stops while its LMTP has
read a few MiB of a 24 MiB message. Meanwhile the health check marks n1 down and new
sessions go to n2 at once. After 60 s the gateway gives up on n1 (class "timeout") and,
as n1 never saw the end of the body, delivers to n2: the client gets 250 and n2 has the
message once. Resumed (SIGCONT), n1 finds its connection gone and stores nothing. The
gateway's descriptors are back to what they were. The file takes about 70 s."""

from __future__ import annotations

import signal
import smtplib
import threading
import time
import unittest
from pathlib import Path

import faults
import harness
from fixtures import ALICE, BOB, USERS

# Larger than what the kernel can hold for a frozen reader on loopback (net.ipv4.tcp_rmem's
# maximum, 32 MiB here, plus the gateway's send buffer): the end of the body is still in
# the gateway when the node stops, so the 60 s body timeout applies, not the 10 minutes
# after the end of data.
BODY_BYTES = 56 << 20
FREEZE_AFTER = 2 << 20
REPLY_TIMEOUT_S = 60  # SmtpNodeClient::kNodeReplyMs


class NodeFrozenMidBodyTest(harness.LogsOnFailure, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-faults-freeze-"))
        cls.nodes, cls.gateway = [], None
        try:
            certs = cls.dir / "certs"
            cert = harness.make_cert(harness.make_ca(certs), certs, ["mx.example.org"])
            for i in (1, 2):
                d = harness.Dovecot(cls.dir / f"n{i}", USERS, name=f"n{i}", scheme="PLAIN")
                d.start()
                cls.nodes.append(d)
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS, scheme="PLAIN")
            cls.mx_port, cls.admin_port = harness.free_ports(2)
            backends = [{"name": f"n{i + 1}", "imap": d.imap_port, "lmtp": d.lmtp_port,
                         "health_interval": "1s", "health_timeout": "1s"} for i, d in enumerate(cls.nodes)]
            routes = [{"domain": "example.org", "primary": "n1", "secondary": "n2"}]
            text = harness.mailgate_config(certificates=[cert], users_file=users_file, backends=backends,
                                           routes=routes,
                                           listeners=[{"name": "mx", "protocol": "smtp", "port": cls.mx_port,
                                                        "max_message_size": "64M"}])
            text += f'admin: {{ listen: "{harness.HOST}:{cls.admin_port}" }}\n'
            cls.gateway = harness.Mailgate(cls.dir, text).start()
            harness.wait_port(cls.admin_port, 10)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.gateway is not None:
                cls.gateway.stop()
        finally:
            for d in cls.nodes:
                faults.signal_node(d, signal.SIGCONT)
                d.stop()
            harness.remove_workdir(cls.dir)

    def diagnostics(self) -> str:
        out = ["--- mailgate log (tail) ---\n" + (self.gateway.log_text()[-5000:] if self.gateway else "")]
        for d in self.nodes:
            out.append(f"--- {d.name} log (tail) ---\n" + d.log_text()[-1500:])
        return "\n".join(out)

    def send(self, rcpt: str, subject: str, size: int = 0, timeout: float = 30.0) -> None:
        with smtplib.SMTP(harness.HOST, self.mx_port, timeout=timeout) as s:
            s.sendmail("sender@example.com", [rcpt], faults.message(subject, size))

    def copies(self, rcpt: str, subject: str) -> tuple[int, int]:
        return tuple(faults.copies(d, rcpt, subject.encode()) for d in self.nodes)

    def up(self, name: str) -> float | None:
        return faults.metric(self.admin_port, f'mailgate_backend_up{{backend="{name}"}}')

    def test_frozen_mid_body_past_the_reply_timeout(self):
        n1 = self.nodes[0]
        for name in ("n1", "n2"):
            harness.wait_for(lambda: self.up(name) == 1, 10, 0.1, f"{name} up in /metrics")
        warm = f"warm-up {time.time_ns()}"
        self.send(ALICE, warm)
        self.assertEqual(self.copies(ALICE, warm), (1, 0))
        time.sleep(0.3)
        baseline = faults.open_fds(self.gateway.pid)
        for _ in range(10):
            time.sleep(0.05)
            baseline = min(baseline, faults.open_fds(self.gateway.pid))

        subject = f"frozen mid-body {time.time_ns()}"
        before = faults.lmtp_read_bytes(n1)
        result: dict = {}

        def client():
            try:
                self.send(ALICE, subject, BODY_BYTES, timeout=REPLY_TIMEOUT_S + 60)
                result["code"] = 250
            except smtplib.SMTPResponseException as e:
                result["code"], result["text"] = e.smtp_code, e.smtp_error
            except Exception as e:  # noqa: BLE001 - any other outcome fails below
                result["error"] = repr(e)

        t = threading.Thread(target=client, daemon=True)
        t.start()
        try:
            harness.wait_for(lambda: faults.lmtp_read_bytes(n1) - before > FREEZE_AFTER or not t.is_alive(),
                             90, 0.005, "n1's LMTP reading the body")
            faults.signal_node(n1, signal.SIGSTOP)
            frozen_at = time.monotonic()
            read = faults.lmtp_read_bytes(n1) - before
            self.assertTrue(t.is_alive(), f"the delivery ended before n1 was frozen: {result}")
            self.assertLess(read, BODY_BYTES, "n1 had read the whole body before it was frozen")

            # The health check sees n1 down; a new session goes to n2 at once, while the
            # first one still waits on n1.
            harness.wait_for(lambda: self.up("n1") == 0, 10, 0.1, "n1 down in /metrics")
            other = f"while n1 is frozen {time.time_ns()}"
            began = time.monotonic()
            self.send(BOB, other, timeout=20)
            self.assertLess(time.monotonic() - began, 10)
            self.assertEqual(self.copies(BOB, other), (0, 1))
            self.assertTrue(t.is_alive(), f"the frozen delivery ended early: {result}")

            t.join(REPLY_TIMEOUT_S + 60)
            waited = time.monotonic() - frozen_at
        finally:
            faults.signal_node(n1, signal.SIGCONT)
        self.assertFalse(t.is_alive(), "no reply within the reply timeout and a margin")
        print(f"\n  n1 frozen after {read >> 20} MiB read; reply after {waited:.0f}s: {result}", end=" ",
              flush=True)
        self.assertEqual(result.get("code"), 250, f"{result}\n{self.diagnostics()}")
        self.assertGreaterEqual(waited, REPLY_TIMEOUT_S - 5)
        lines = [l for l in self.gateway.log_lines()
                 if l.get("msg") == "delivery attempt failed" and l.get("backend") == "n1"]
        self.assertEqual([l.get("class") for l in lines], ["timeout"], lines)
        self.assertEqual(self.copies(ALICE, subject)[1], 1)
        # n1, resumed, reads on to the closed connection: no copy there.
        time.sleep(1.0)
        self.assertEqual(self.copies(ALICE, subject), (0, 1))
        self.assertTrue(self.gateway.is_running())
        faults.wait_fds_at_most(self.gateway.pid, baseline)
        # n1 serves again.
        harness.wait_for(lambda: self.up("n1") == 1, 10, 0.1, "n1 up again in /metrics")
        after = f"after the freeze {time.time_ns()}"
        self.send(ALICE, after)
        self.assertEqual(self.copies(ALICE, after), (1, 0))


if __name__ == "__main__":
    unittest.main()
