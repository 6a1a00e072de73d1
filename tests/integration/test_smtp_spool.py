"""Messages larger than server.spool_memory are spooled to a temporary file and
streamed to the storage node: they arrive byte for byte, with failover intact."""

from __future__ import annotations

import os
import shutil
import smtplib
import time
import unittest
import urllib.request
from pathlib import Path

import harness
from fixtures import ALICE, USERS


def big_message(subject: str, lines: int) -> bytes:
    head = (f"From: sender@example.com\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@test>\r\n\r\n").encode()
    body = []
    for i in range(lines):
        if i % 97 == 0:
            body.append(b".a line that starts with a dot %d" % i)  # dot-stuffing across chunks
        elif i % 89 == 0:
            body.append(b".")
        else:
            body.append(b"line %08d " % i + b"x" * (i % 300))
    return head + b"\r\n".join(body) + b"\r\n"


class SmtpSpoolTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-spool-"))
        cls.spool = cls.dir / "spool"
        cls.spool.mkdir()
        cls.dovecots = []
        try:
            certs = cls.dir / "certs"
            ca = harness.make_ca(certs)
            cert = harness.make_cert(ca, certs, ["mx.example.org"])
            for i in range(2):
                d = harness.Dovecot(cls.dir / f"storage-{i + 1}", USERS, name=f"sp{i + 1}")
                d.start()
                cls.dovecots.append(d)
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            cls.port = harness.free_port()
            backends = [{"name": f"storage-{i + 1}", "imap": d.imap_port, "lmtp": d.lmtp_port,
                         "health_interval": "1s", "health_timeout": "1s"} for i, d in enumerate(cls.dovecots)]
            routes = [{"domain": "example.org", "primary": "storage-1", "secondary": "storage-2"}]
            text = harness.mailgate_config(certificates=[cert], listeners=[
                {"name": "mx", "protocol": "smtp", "port": cls.port, "max_message_size": "20M"}],
                users_file=users_file, backends=backends, routes=routes)
            text = text.replace("server: { threads: 2,",
                                f'server: {{ spool_dir: "{cls.spool}", spool_memory: 32K, threads: 2,')
            cls.admin_port = harness.free_port()
            text = text.replace("tls:\n", f'admin: {{ listen: "{harness.HOST}:{cls.admin_port}" }}\ntls:\n', 1)
            cls.gateway = harness.Mailgate(cls.dir, text).start()
        except BaseException:
            for d in cls.dovecots:
                d.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        for d in cls.dovecots:
            d.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def find(self, node: int, marker: bytes) -> list[bytes]:
        base = self.dovecots[node].mail_dir / "example.org" / "alice" / "Maildir"
        out = []
        for sub in ("new", "cur"):
            for p in (base / sub).glob("*") if (base / sub).exists() else []:
                data = p.read_bytes()
                if marker in data:
                    out.append(data)
        return out

    def send(self, msg: bytes) -> None:
        with smtplib.SMTP(harness.HOST, self.port, timeout=60) as s:
            s.ehlo("client.example.com")
            s.sendmail("sender@example.com", [ALICE], msg)

    def check_arrived(self, node: int, subject: str, msg: bytes) -> None:
        found = harness.wait_for(lambda: self.find(node, subject.encode()), 20, what=subject)
        self.assertEqual(len(found), 1)
        stored = found[0].replace(b"\r\n", b"\n")
        i = stored.index(b"Received: from client.example.com")
        after = stored[i:]
        j = after.index(b"\nFrom: sender@example.com")
        self.assertEqual(after[j + 1:], msg.replace(b"\r\n", b"\n"))

    def test_large_message_spooled_to_file_arrives_byte_for_byte(self):
        subject = f"big-{time.time_ns()}"
        msg = big_message(subject, 40000)  # ~6.5 MB, 200 times the memory bound
        self.assertGreater(len(msg), 5 << 20)
        self.send(msg)
        self.check_arrived(0, subject, msg)
        # Nothing is left in the spool directory (anonymous files).
        self.assertEqual(list(self.spool.iterdir()), [])

    def metric(self, name: str) -> int:
        body = urllib.request.urlopen(f"http://{harness.HOST}:{self.admin_port}/metrics", timeout=5).read().decode()
        for line in body.splitlines():
            if line.startswith(name + " "):
                return int(line.split()[1])
        raise AssertionError(f"{name} missing from /metrics")

    def test_metrics_count_spooled_and_delivered(self):
        spooled = self.metric("mailgate_smtp_spooled_to_file_total")
        delivered = self.metric("mailgate_smtp_messages_delivered_total")
        subject = f"metrics-{time.time_ns()}"
        msg = big_message(subject, 2000)
        self.send(msg)
        self.check_arrived(0, subject, msg)
        self.assertEqual(self.metric("mailgate_smtp_spooled_to_file_total"), spooled + 1)
        self.assertEqual(self.metric("mailgate_smtp_messages_delivered_total"), delivered + 1)
        small = f"small-{time.time_ns()}"
        self.send(f"Subject: {small}\r\n\r\nhi\r\n".encode())
        self.assertEqual(self.metric("mailgate_smtp_spooled_to_file_total"), spooled + 1)
        self.assertEqual(self.metric("mailgate_smtp_messages_delivered_total"), delivered + 2)

    def test_spool_file_error_is_451_and_nothing_is_accepted(self):
        # The spool directory goes away under a running gateway: the spool thread cannot
        # make the file, the message is refused with 451 4.3.0, and the session goes on.
        lost = f"nospool-{time.time_ns()}"
        kept = f"spool-back-{time.time_ns()}"
        away = self.dir / "spool-away"
        self.spool.rename(away)
        try:
            with smtplib.SMTP(harness.HOST, self.port, timeout=60) as s:
                s.ehlo("client.example.com")
                with self.assertRaises(smtplib.SMTPDataError) as cm:
                    s.sendmail("sender@example.com", [ALICE], big_message(lost, 2000))
                self.assertEqual(cm.exception.smtp_code, 451)
                self.assertTrue(cm.exception.smtp_error.startswith(b"4.3.0"), cm.exception.smtp_error)
                away.rename(self.spool)
                away = None
                msg = big_message(kept, 2000)
                s.sendmail("sender@example.com", [ALICE], msg)
        finally:
            if away is not None:
                away.rename(self.spool)
        # On either node: an earlier test may have left the primary marked down.
        harness.wait_for(lambda: self.find(0, kept.encode()) + self.find(1, kept.encode()), 20, what=kept)
        self.check_arrived(0 if self.find(0, kept.encode()) else 1, kept, msg)
        self.assertEqual(self.find(0, lost.encode()) + self.find(1, lost.encode()), [])
        self.assertIn("smtp message not spooled", self.gateway.log_text())

    def test_no_log_lines_dropped(self):
        self.assertEqual(self.metric("mailgate_log_lines_dropped_total"), 0)

    def test_bdat_large_message(self):
        subject = f"bdat-{time.time_ns()}"
        msg = big_message(subject, 8000)
        c = harness.LineClient(self.port, timeout=60)
        self.addCleanup(c.close)
        c.read_line()
        c.send_line("EHLO client.example.com")
        c.read_until(lambda l: l[3] == " ")
        c.send_line("MAIL FROM:<sender@example.com>")
        self.assertTrue(c.read_line().startswith("250"))
        c.send_line(f"RCPT TO:<{ALICE}>")
        self.assertTrue(c.read_line().startswith("250"))
        half = len(msg) // 2
        c.send(b"BDAT %d\r\n" % half + msg[:half])
        self.assertTrue(c.read_line().startswith("250"))
        c.send(b"BDAT %d LAST\r\n" % (len(msg) - half) + msg[half:])
        r = c.read_line(timeout=60)
        self.assertTrue(r.startswith("250"), r)
        self.check_arrived(0, subject, msg)

    def test_primary_down_large_message_goes_to_secondary(self):
        self.dovecots[0].stop()
        try:
            time.sleep(1.5)  # let the health check see it (connect failure fails over anyway)
            subject = f"fail-{time.time_ns()}"
            msg = big_message(subject, 20000)
            self.send(msg)
            self.check_arrived(1, subject, msg)
            self.assertEqual(self.find(0, subject.encode()), [])
        finally:
            self.dovecots[0].start()
        log = self.gateway.log_text()
        self.assertNotIn("spool", "".join(l for l in log.splitlines() if '"level":"error"' in l))


class SpoolConfigTest(unittest.TestCase):
    def test_spool_dir_must_exist(self):
        d = Path(harness.make_workdir("mailgate-spoolcfg-"))
        self.addCleanup(shutil.rmtree, d, True)
        users = d / "users.passwd"
        harness.write_passwd(str(users), USERS)
        cfg = d / "mailgate.yaml"
        cfg.write_text(f"""server: {{ spool_dir: /nonexistent/spool }}
listeners:
  - {{ name: mx, protocol: smtp, listen: ["127.0.0.1:10025"] }}
directory:
  driver: file
  file: {{ users: "{users}" }}
""")
        p = harness.run_mailgate("--check-config", str(cfg))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn(f"{cfg}:1:22: server.spool_dir: /nonexistent/spool is not a directory", p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main()
