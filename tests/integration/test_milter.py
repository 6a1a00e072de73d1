"""The milter client (hooks, type milter) end to end: a real libmilter milter
(Debian's python3-milter running tests/integration/milters/test_milter.py, which acts
on the Subject or the recipient), OpenDKIM signing on a listener of its own, and a
Dovecot LMTP/IMAP node behind mailgate."""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import socket
import subprocess
import time
import unittest
from pathlib import Path

import harness
from fixtures import ALICE, BOB, USERS

PYTHON = "/usr/bin/python3"  # Debian's, where python3-milter lives
MILTER_SCRIPT = Path(__file__).resolve().parent / "milters" / "test_milter.py"
OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"
OPENDKIM_GENKEY = shutil.which("opendkim-genkey") or "/usr/sbin/opendkim-genkey"
SCAN_TIMEOUT_S = 3


def have_pymilter() -> bool:
    if not os.path.exists(PYTHON):
        return False
    return subprocess.run([PYTHON, "-c", "import Milter"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


class TestMilterDaemon:
    """test_milter.py on a unix socket of its own; its events are JSON lines."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = workdir / "milter.sock"
        self.events_path = workdir / "events.jsonl"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> "TestMilterDaemon":
        if self.socket.exists():
            self.socket.unlink()
        with open(self.dir / "milter.stderr", "ab") as err:
            self.proc = subprocess.Popen([PYTHON, str(MILTER_SCRIPT), f"unix:{self.socket}", str(self.events_path)],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("test milter exited: " + (self.dir / "milter.stderr").read_text(errors="replace"))
            if self.socket.exists():
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(str(self.socket))
                    return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("test milter did not listen in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def events(self) -> list[dict]:
        if not self.events_path.exists():
            return []
        return [json.loads(l) for l in self.events_path.read_text().splitlines() if l.strip()]


class OpenDkim:
    """opendkim signing for example.org with a key made by opendkim-genkey."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = workdir / "opendkim.sock"
        self.proc: subprocess.Popen | None = None
        subprocess.run([OPENDKIM_GENKEY, "-D", str(workdir), "-d", "example.org", "-s", "mgtest"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.key = workdir / "mgtest.private"
        os.chmod(self.key, 0o600)
        self.conf = workdir / "opendkim.conf"
        self.conf.write_text(
            f"Socket local:{self.socket}\n"
            "Mode s\n"
            "Domain example.org\n"
            "Selector mgtest\n"
            f"KeyFile {self.key}\n"
            "Canonicalization relaxed/relaxed\n"
            "InternalHosts 0.0.0.0/0\n"
            "Background no\n"
            f"PidFile {workdir / 'opendkim.pid'}\n"
            "Syslog no\n"
            "RequireSafeKeys no\n")

    def start(self, timeout: float = 15.0) -> "OpenDkim":
        with open(self.dir / "opendkim.stderr", "ab") as err:
            self.proc = subprocess.Popen([OPENDKIM, "-f", "-x", str(self.conf)], stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err)
        harness.wait_for(lambda: self.socket.exists() or self.proc.poll() is not None, timeout,
                         what="opendkim's socket")
        if self.proc.poll() is not None:
            raise RuntimeError("opendkim exited: " + (self.dir / "opendkim.stderr").read_text(errors="replace"))
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def message(subject: str, body: str = "Hello from the milter test.\r\n", extra: str = "") -> bytes:
    return (f"From: sender@example.com\r\nTo: {ALICE}\r\nSubject: {subject}\r\n{extra}"
            f"Message-ID: <{time.time_ns()}@example.com>\r\n\r\n{body}").encode()


@unittest.skipUnless(have_pymilter(), "python3-milter is not installed (scripts/deps.sh installs it)")
class MilterTest(harness.LogsOnFailure, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-milter-"))
        cls.node = cls.gateway = cls.milter = cls.dkim = None
        try:
            cls.milter = TestMilterDaemon(cls.dir / "milter").start()
            if os.path.exists(OPENDKIM):
                cls.dkim = OpenDkim(cls.dir / "dkim").start()
            cls.node = harness.Dovecot(cls.dir / "storage-01", USERS, name="s1")
            cls.node.start()
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            names = ["mx", "mx_accept", "mx_down", "mx_dkim"]
            cls.ports = dict(zip(names, harness.free_ports(len(names))))
            listeners = [{"name": n, "protocol": "smtp", "port": cls.ports[n]} for n in names]
            backends = [{"name": "storage-01", "imap": cls.node.imap_port, "lmtp": cls.node.lmtp_port}]
            routes = [{"domain": "example.org", "primary": "storage-01"}]
            text = harness.mailgate_config(certificates=[], listeners=listeners, users_file=users_file,
                                           backends=backends, routes=routes, threads=1)
            sock = cls.milter.socket
            dkim_sock = cls.dkim.socket if cls.dkim else cls.dir / "no-dkim.sock"
            text += (
                "hooks:\n"
                "  defaults:\n"
                "    on_error: tempfail\n"
                f"    timeouts: {{ connect: 1s, scan: {SCAN_TIMEOUT_S}s }}\n"
                "  scanners:\n"
                f"    test: {{ type: milter, endpoints: [\"unix:{sock}\"] }}\n"
                f"    test_lenient: {{ type: milter, endpoints: [\"unix:{sock}\"], on_error: accept }}\n"
                f"    down: {{ type: milter, endpoints: [\"unix:{cls.dir / 'nothing.sock'}\"], on_error: accept }}\n"
                f"    dkim: {{ type: milter, endpoints: [\"unix:{dkim_sock}\"] }}\n"
                "  flows:\n"
                "    - { when: { listener: mx }, run: [test] }\n"
                "    - { when: { listener: mx_accept }, run: [test_lenient] }\n"
                "    - { when: { listener: mx_down }, run: [down] }\n"
                "    - { when: { listener: mx_dkim }, run: [dkim] }\n")
            cls.gateway = harness.Mailgate(cls.dir, text).start()
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def _stop(cls):
        for d in (cls.gateway, cls.node, cls.milter, cls.dkim):
            if d is not None:
                d.stop()
        harness.remove_workdir(cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls._stop()

    def diagnostics(self) -> str:
        out = []
        if self.gateway is not None:
            out.append("--- mailgate log (tail) ---\n" + self.gateway.log_text()[-6000:])
        if self.milter is not None:
            out.append("--- milter events (tail) ---\n" + "\n".join(json.dumps(e) for e in self.milter.events()[-30:]))
            p = self.milter.dir / "milter.stderr"
            if p.exists():
                out.append("--- milter stderr ---\n" + p.read_text(errors="replace")[-2000:])
        if self.node is not None:
            out.append("--- node log (tail) ---\n" + self.node.log_text()[-2000:])
        return "\n".join(out)

    def delivered(self, marker: bytes, user: str = "alice") -> list[Path]:
        base = self.node.mail_dir / "example.org" / user / "Maildir"
        out = []
        for sub in ("new", "cur"):
            for p in (base / sub).glob("*") if (base / sub).exists() else []:
                try:
                    if marker in p.read_bytes():
                        out.append(p)
                except OSError:
                    pass
        return out

    def send(self, listener: str, msg: bytes, rcpts=(ALICE,), timeout: float = 20) -> tuple[int, str]:
        with smtplib.SMTP(harness.HOST, self.ports[listener], timeout=timeout) as s:
            s.ehlo("client.example.com")
            self.assertEqual(s.mail("sender@example.com")[0], 250)
            for r in rcpts:
                self.assertEqual(s.rcpt(r)[0], 250)
            code, text = s.data(msg)
            return code, text.decode(errors="replace")

    def deliver_ok(self, subject: str, listener: str = "mx", **kw) -> bytes:
        code, text = self.send(listener, message(subject, **kw))
        self.assertEqual(code, 250, text)
        files = harness.wait_for(lambda: self.delivered(subject.split(" ")[-1].encode()), 10,
                                 what="the message delivered")
        return files[0].read_bytes()

    def restart_milter(self):
        self.milter.stop()
        self.milter.start()

    # ------------------------------------------------------------------ tests

    def test_stages_and_macros(self):
        tag = str(time.time_ns())
        data = self.deliver_ok(f"plain {tag}")
        self.assertIn(b"Hello from the milter test.", data)
        ev = self.milter.events()
        eom = [i for i, e in enumerate(ev) if e["event"] == "eom" and tag in e.get("subject", "")]
        self.assertTrue(eom, ev[-10:])
        # The events of this message's session, in order.
        start = max(i for i, e in enumerate(ev[:eom[-1]]) if e["event"] == "connect")
        session = ev[start:eom[-1] + 1]
        self.assertEqual([e["event"] for e in session], ["connect", "helo", "mail", "rcpt", "eoh", "eom"])
        conn, helo, mail, rcpt, eoh = session[:5]
        self.assertEqual(conn["client_addr"], "127.0.0.1")
        self.assertEqual(conn["daemon"], "mailgate")
        self.assertTrue(conn["j"])
        self.assertEqual(conn["hostname"], "[127.0.0.1]")
        self.assertEqual(helo["name"], "client.example.com")
        self.assertEqual(mail["sender"], "<sender@example.com>")
        self.assertEqual(mail["mail_addr"], "sender@example.com")
        self.assertTrue(mail["i"])
        self.assertEqual(rcpt["rcpt"], f"<{ALICE}>")
        self.assertEqual(rcpt["rcpt_addr"], ALICE)
        self.assertIn("Subject", eoh["headers"])
        self.assertIn("Received", eoh["headers"])  # the gateway's own comes first, as the node sees it

    def test_add_header(self):
        data = self.deliver_ok(f"add-header {time.time_ns()}")
        self.assertIn(b"\nX-Milter-Added: yes", data)

    def test_insert_header_at_the_top(self):
        data = self.deliver_ok(f"insert-header {time.time_ns()}")
        self.assertIn(b"X-Milter-First: first", data)
        self.assertLess(data.index(b"X-Milter-First"), data.index(b"Received:"))

    def test_change_header(self):
        tag = str(time.time_ns())
        code, text = self.send("mx", message(f"change-header {tag}", extra=f"X-Tag: {tag}\r\n"))
        self.assertEqual(code, 250, text)
        files = harness.wait_for(lambda: self.delivered(tag.encode()), 10, what="the message delivered")
        data = files[0].read_bytes()
        self.assertIn(b"Subject: changed by milter", data)
        self.assertNotIn(f"Subject: change-header {tag}".encode(), data)

    def test_delete_header(self):
        tag = str(time.time_ns())
        data = self.deliver_ok(f"delete-header {tag}", extra="X-Remove-Me: secret\r\nX-Keep: kept\r\n")
        self.assertNotIn(b"X-Remove-Me", data)
        self.assertIn(b"X-Keep: kept", data)

    def test_replace_body(self):
        tag = str(time.time_ns())
        data = self.deliver_ok(f"replace-body {tag}")
        self.assertIn(b"replaced by the test milter", data)
        self.assertIn(b"second line", data)
        self.assertNotIn(b"Hello from the milter test.", data)

    def test_large_message_rewritten_whole(self):
        tag = str(time.time_ns())
        body = "".join(f"{i:08d} 0123456789abcdefghijklmnopqrstuvwxyz\r\n" for i in range(60000))  # ~2.8 MB
        data = self.deliver_ok(f"add-header {tag}", body=body)
        self.assertIn(b"X-Milter-Added: yes", data)
        self.assertIn(b"00000000 0123", data)
        self.assertIn(b"00059999 0123", data)
        self.assertEqual(data.count(b"0123456789abcdefghijklmnopqrstuvwxyz"), 60000)

    def test_reject_tempfail_discard_quarantine(self):
        tag = str(time.time_ns())
        code, text = self.send("mx", message(f"reject {tag}"))
        self.assertEqual(code, 554, text)
        self.assertTrue(text.startswith("5.7.1 rejected by test milter"), text)
        code, text = self.send("mx", message(f"tempfail {tag}"))
        self.assertEqual(code, 451, text)
        # No quarantine store configured: held back with a tempfail and a log line.
        code, text = self.send("mx", message(f"quarantine {tag}"))
        self.assertEqual(code, 451, text)
        # Discard: accepted, never delivered.
        code, text = self.send("mx", message(f"discard {tag}"))
        self.assertEqual(code, 250, text)
        after = str(time.time_ns())
        self.deliver_ok(f"plain {after}")
        self.assertEqual(self.delivered(tag.encode()), [])
        log = self.gateway.log_text()
        self.assertIn("smtp message discarded", log)
        self.assertIn("milter quarantine without a store", log)

    def test_recipient_refused_alone(self):
        tag = str(time.time_ns())
        with smtplib.SMTP(harness.HOST, self.ports["mx"], timeout=20) as s:
            s.ehlo("client.example.com")
            self.assertEqual(s.mail("sender@example.com")[0], 250)
            code, text = s.rcpt("reject-rcpt@example.org")
            self.assertEqual(code, 550)
            self.assertIn(b"5.1.1 no such user here (test milter)", text)
            code, text = s.rcpt("tempfail-rcpt@example.org")
            self.assertEqual(code, 450, text)
            self.assertEqual(s.rcpt(ALICE)[0], 250)
            self.assertEqual(s.rcpt(BOB)[0], 250)
            code, text = s.data(message(f"two {tag}"))
            self.assertEqual(code, 250, text)
            # A second message in the same session.
            self.assertEqual(s.sendmail("sender@example.com", [ALICE], message(f"add-header second {tag}")), {})
        harness.wait_for(lambda: len(self.delivered(tag.encode())) == 2, 10, what="both messages for alice")
        harness.wait_for(lambda: self.delivered(tag.encode(), "bob"), 10, what="the message for bob")

    def test_milter_down_with_on_error_accept(self):
        self.deliver_ok(f"down {time.time_ns()}", listener="mx_down")
        self.assertIn("milter failed", self.gateway.log_text())

    def test_milter_killed_mid_message(self):
        """The milter dies while the body is sent: on_error tempfail gives 451 and the
        message is not delivered (the client keeps it); on_error accept delivers it
        unchanged. Then a new milter process serves the next sessions."""
        tag = str(time.time_ns())
        try:
            code, text = self.send("mx", message(f"die {tag}"))
            self.assertEqual(code, 451, text)
            self.assertEqual(self.delivered(tag.encode()), [])
        finally:
            self.restart_milter()
        tag2 = str(time.time_ns())
        try:
            data = self.deliver_ok(f"die {tag2}", listener="mx_accept")
            self.assertIn(b"Hello from the milter test.", data)
        finally:
            self.restart_milter()
        self.deliver_ok(f"add-header after {time.time_ns()}")

    @unittest.skipUnless(os.path.exists(OPENDKIM), "opendkim is not installed (scripts/deps.sh installs it)")
    def test_opendkim_signs(self):
        tag = str(time.time_ns())
        msg = (f"From: alice@example.org\r\nTo: {ALICE}\r\nSubject: dkim {tag}\r\nDate: Sat, 5 Dec 2026 00:00:00 +0000\r\n"
               f"Message-ID: <{tag}@example.org>\r\n\r\nSigned body.\r\n").encode()
        with smtplib.SMTP(harness.HOST, self.ports["mx_dkim"], timeout=20) as s:
            s.ehlo("client.example.com")
            self.assertEqual(s.sendmail("alice@example.org", [ALICE], msg), {})
        files = harness.wait_for(lambda: self.delivered(tag.encode()), 10, what="the signed message")
        data = files[0].read_bytes()
        self.assertIn(b"DKIM-Signature:", data)
        self.assertRegex(data.decode(errors="replace"), r"d=example\.org;\s*s=mgtest")


if __name__ == "__main__":
    unittest.main()
