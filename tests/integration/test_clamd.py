"""The clamd scanner (hooks) end to end: a real clamd (Debian's clamav-daemon, with a
database of its own holding only an EICAR md5 signature), a silent fake clamd, and
a Dovecot LMTP/IMAP node behind mailgate."""

from __future__ import annotations

import base64
import hashlib
import imaplib
import os
import shutil
import smtplib
import socket
import subprocess
import threading
import time
import unittest
from pathlib import Path

import harness
from fixtures import ALICE, ALICE_PW, USERS

CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"
CLAM_EXE = "/usr/share/clamav-testfiles/clam.exe"
CLAM_ZIP = "/usr/share/clamav-testfiles/clam.zip"
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SCAN_TIMEOUT_S = 2


class Clamd:
    """A private clamd on a unix socket in `workdir`, with its own database."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.socket = workdir / "clamd.sock"
        self.proc: subprocess.Popen | None = None
        db = workdir / "db"
        db.mkdir(parents=True, exist_ok=True)
        (db / "eicar.hdb").write_text("44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature\n")
        # The ClamAV test file of clamav-testfiles (no freshclam here: its md5 is the
        # signature; clamd finds it inside clam.zip too, as it unpacks archives).
        if os.path.exists(CLAM_EXE):
            data = Path(CLAM_EXE).read_bytes()
            (db / "clamav-test.hdb").write_text(f"{hashlib.md5(data).hexdigest()}:{len(data)}:ClamAV-Test-File\n")
        (workdir / "tmp").mkdir(exist_ok=True)
        self.conf = workdir / "clamd.conf"
        self.conf.write_text(
            f"LocalSocket {self.socket}\n"
            "Foreground yes\n"
            f"DatabaseDirectory {db}\n"
            f"PidFile {workdir / 'clamd.pid'}\n"
            f"LogFile {workdir / 'clamd.log'}\n"
            f"TemporaryDirectory {workdir / 'tmp'}\n"
            "Bytecode no\n"
            "SelfCheck 3600\n")

    def start(self, timeout: float = 60.0) -> "Clamd":
        with open(self.dir / "clamd.stderr", "ab") as err:  # never the test's own stdout
            self.proc = subprocess.Popen([CLAMD, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clamd exited: {self.log_text()[-2000:]}")
            if self.ping():
                return self
            time.sleep(0.1)
        raise RuntimeError("clamd did not answer PING in time")

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.socket))
                s.sendall(b"zPING\0")
                return s.recv(16).startswith(b"PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log_text(self) -> str:
        out = ""
        for name in ("clamd.log", "clamd.stderr"):
            p = self.dir / name
            if p.exists():
                out += p.read_text(errors="replace")
        return out


class SilentScanner:
    """A fake clamd: accepts connections, reads what it is sent, never answers."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((harness.HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns: list[socket.socket] = []
        self.stopped = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(c)
            threading.Thread(target=self._drain, args=(c,), daemon=True).start()

    @staticmethod
    def _drain(c: socket.socket):
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass

    def stop(self):
        self.stopped = True
        self.sock.close()
        for c in self.conns:
            c.close()


def attachment_message(subject: str, name: str, data: bytes) -> bytes:
    b64 = base64.encodebytes(data).decode().replace("\n", "\r\n")
    return (f"From: sender@example.com\r\nTo: {ALICE}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\n"
            "see attachment\r\n--XX\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename={name}\r\n\r\n"
            f"{b64}--XX--\r\n").encode()


def eicar_message(subject: str) -> bytes:
    b64 = base64.b64encode(EICAR).decode()
    return (f"From: sender@example.com\r\nTo: {ALICE}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\n"
            "see attachment\r\n--XX\r\nContent-Type: application/octet-stream\r\n"
            "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=eicar.com\r\n\r\n"
            f"{b64}\r\n--XX--\r\n").encode()


def clean_message(subject: str, body: str = "Hello, nothing to see.\r\n") -> bytes:
    return f"From: sender@example.com\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\r\n{body}".encode()


@unittest.skipUnless(os.path.exists(CLAMD), "clamd is not installed (scripts/deps.sh installs clamav-daemon)")
class ClamdTest(harness.LogsOnFailure, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-clamd-"))
        cls.node = cls.gateway = cls.clamd = cls.silent = None
        try:
            (cls.dir / "clamd").mkdir()
            cls.clamd = Clamd(cls.dir / "clamd").start()
            cls.silent = SilentScanner()
            cls.refusing_port = harness.free_port()  # nothing listens there
            cls.node = harness.Dovecot(cls.dir / "storage-01", USERS, name="s1")
            cls.node.start()
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            certs = cls.dir / "certs"
            ca = harness.make_ca(certs)
            cert = harness.make_cert(ca, certs, ["mx.example.org"])
            names = ["mx_av", "mx_slow", "mx_failover", "mx_down", "imap"]
            cls.ports = dict(zip(names, harness.free_ports(len(names))))
            listeners = [{"name": n, "protocol": "smtp", "port": cls.ports[n]} for n in names[:-1]]
            listeners.append({"name": "imap", "protocol": "imap", "port": cls.ports["imap"],
                              "allow_plaintext_auth": True})
            backends = [{"name": "storage-01", "imap": cls.node.imap_port, "lmtp": cls.node.lmtp_port}]
            routes = [{"domain": "example.org", "primary": "storage-01"},
                      {"domain": "example.net", "primary": "storage-01"}]
            text = harness.mailgate_config(certificates=[cert], listeners=listeners, users_file=users_file,
                                           backends=backends, routes=routes, threads=1)
            sock = cls.clamd.socket
            text += (
                "hooks:\n"
                "  defaults:\n"
                "    on_error: tempfail\n"
                f"    timeouts: {{ connect: 1s, scan: {SCAN_TIMEOUT_S}s }}\n"
                "  scanners:\n"
                f"    clamav: {{ type: clamd, endpoints: [\"unix:{sock}\"] }}\n"
                f"    silent: {{ type: clamd, endpoints: [\"tcp:127.0.0.1:{cls.silent.port}\"] }}\n"
                f"    failover: {{ type: clamd, endpoints: [\"tcp:127.0.0.1:{cls.refusing_port}\", "
                f"\"unix:{sock}\"] }}\n"
                f"    down: {{ type: clamd, endpoints: [\"unix:{cls.dir / 'nothing.sock'}\"] }}\n"
                "  flows:\n"
                "    - { when: { listener: mx_av }, run: [clamav] }\n"
                "    - { when: { listener: mx_slow }, run: [silent] }\n"
                "    - { when: { listener: mx_failover }, run: [failover] }\n"
                "    - { when: { listener: mx_down }, run: [down] }\n")
            cls.gateway = harness.Mailgate(cls.dir, text).start()
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def _stop(cls):
        for d in (cls.gateway, cls.node, cls.clamd, cls.silent):
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
        if self.clamd is not None:
            out.append("--- clamd log (tail) ---\n" + self.clamd.log_text()[-2000:])
        if self.node is not None:
            out.append("--- node log (tail) ---\n" + self.node.log_text()[-2000:])
        return "\n".join(out)

    def delivered(self, marker: bytes) -> list[Path]:
        base = self.node.mail_dir / "example.org" / "alice" / "Maildir"
        out = []
        for sub in ("new", "cur"):
            for p in (base / sub).glob("*") if (base / sub).exists() else []:
                try:
                    if marker in p.read_bytes():
                        out.append(p)
                except OSError:
                    pass
        return out

    def send(self, listener: str, msg: bytes, timeout: float = 15) -> tuple[int, str]:
        with smtplib.SMTP(harness.HOST, self.ports[listener], timeout=timeout) as s:
            s.ehlo("client.example.com")
            self.assertEqual(s.mail("sender@example.com")[0], 250)
            self.assertEqual(s.rcpt(ALICE)[0], 250)
            code, text = s.data(msg)
            return code, text.decode(errors="replace")

    # ------------------------------------------------------------------ tests

    def test_clean_message_is_delivered(self):
        subject = f"clean {time.time_ns()}"
        code, text = self.send("mx_av", clean_message(subject))
        self.assertEqual(code, 250, text)
        files = harness.wait_for(lambda: self.delivered(subject.encode()), 10, what="the clean message delivered")
        self.assertIn(b"X-Mailgate-Scan: clamav=clean", files[0].read_bytes())

    def test_eicar_is_rejected_and_not_delivered(self):
        subject = f"eicar {time.time_ns()}"
        code, text = self.send("mx_av", eicar_message(subject))
        self.assertEqual(code, 554, text)
        self.assertRegex(text, r"^5\.7\.1 Message rejected: virus found \(Eicar-Test-Signature[\w.]*\) \(ref [0-9a-f]{6}\)$")
        # The session goes on: a clean message after it is delivered.
        subject2 = f"after eicar {time.time_ns()}"
        self.assertEqual(self.send("mx_av", clean_message(subject2))[0], 250)
        harness.wait_for(lambda: self.delivered(subject2.encode()), 10, what="the clean message delivered")
        self.assertEqual(self.delivered(subject.encode()), [])
        log = self.gateway.log_text()
        self.assertIn("refused by policy", log)
        self.assertIn("virus found: Eicar-Test-Signature", log)

    @unittest.skipUnless(os.path.exists(CLAM_ZIP), "clamav-testfiles is not installed (scripts/deps.sh installs it)")
    def test_clamav_testfile_in_a_zip_is_rejected(self):
        subject = f"clam.zip {time.time_ns()}"
        code, text = self.send("mx_av", attachment_message(subject, "clam.zip", Path(CLAM_ZIP).read_bytes()))
        self.assertEqual(code, 554, text)
        self.assertIn("ClamAV-Test-File", text)
        self.assertEqual(self.delivered(subject.encode()), [])

    def test_large_clean_message_streams_in_chunks(self):
        subject = f"large {time.time_ns()}"
        body = ("0123456789abcdef" * 6 + "\r\n") * 30000  # ~3 MB: spooled to a file, many chunks
        code, text = self.send("mx_av", clean_message(subject, body))
        self.assertEqual(code, 250, text)
        harness.wait_for(lambda: self.delivered(subject.encode()), 15, what="the large message delivered")

    def test_oversize_is_delivered_marked_unscanned(self):
        # A gateway of its own whose hooks.defaults.max_size is 1K: a larger message
        # is not scanned, and goes to the node marked (on_oversize: accept_unscanned).
        work = self.dir / "small-max"
        work.mkdir(exist_ok=True)
        port = harness.free_port()
        backends = [{"name": "storage-01", "imap": self.node.imap_port, "lmtp": self.node.lmtp_port}]
        text = harness.mailgate_config(certificates=[], listeners=[{"name": "mx", "protocol": "smtp", "port": port}],
                                       users_file=str(self.dir / "users.passwd"), backends=backends,
                                       routes=[{"domain": "example.org", "primary": "storage-01"}], threads=1)
        text += (
            "hooks:\n"
            "  defaults: { max_size: 1K, on_oversize: accept_unscanned }\n"
            "  scanners:\n"
            f"    clamav: {{ type: clamd, endpoints: [\"unix:{self.clamd.socket}\"] }}\n"
            "  flows:\n"
            "    - { when: { listener: mx }, run: [clamav] }\n")
        gw = harness.Mailgate(work, text).start()
        self.addCleanup(gw.stop)
        subject = f"oversize {time.time_ns()}"
        with smtplib.SMTP(harness.HOST, port, timeout=15) as s:
            s.ehlo("client.example.com")
            self.assertEqual(s.sendmail("sender@example.com", [ALICE],
                                        clean_message(subject, ("z" * 70 + "\r\n") * 40)), {})
        files = harness.wait_for(lambda: self.delivered(subject.encode()), 10, what="the oversize message delivered")
        data = files[0].read_bytes()
        self.assertRegex(data, rb"X-Mailgate-Scan: clamav=unscanned\(oversize\)\r?\n")
        self.assertNotIn(b"X-Mailgate-Unscanned", data)
        # The header comes before the message's own header fields.
        self.assertLess(data.index(b"X-Mailgate-Scan"), data.index(b"Subject:"))

    def test_second_endpoint_when_the_first_refuses(self):
        subject = f"failover clean {time.time_ns()}"
        self.assertEqual(self.send("mx_failover", clean_message(subject))[0], 250)
        harness.wait_for(lambda: self.delivered(subject.encode()), 10, what="the message delivered")
        code, text = self.send("mx_failover", eicar_message(f"failover eicar {time.time_ns()}"))
        self.assertEqual(code, 554, text)
        self.assertIn("virus found", text)
        self.assertIn("clamd endpoint failed", self.gateway.log_text())

    def test_no_endpoint_gives_tempfail(self):
        subject = f"down {time.time_ns()}"
        code, text = self.send("mx_down", clean_message(subject))
        self.assertEqual(code, 451, text)
        self.assertEqual(self.delivered(subject.encode()), [])

    def test_clamd_stopped_gives_tempfail_then_recovers(self):
        self.clamd.stop()
        try:
            subject = f"clamd stopped {time.time_ns()}"
            code, text = self.send("mx_av", clean_message(subject))
            self.assertEqual(code, 451, text)
            self.assertRegex(text, r"^4\.7\.1 ")
            self.assertIn("clamd scan failed", self.gateway.log_text())
        finally:
            self.clamd.start()
        self.assertEqual(self.delivered(subject.encode()), [])
        subject = f"clamd back {time.time_ns()}"
        self.assertEqual(self.send("mx_av", clean_message(subject))[0], 250)

    def test_silent_scanner_times_out_while_logins_go_on(self):
        """Acceptance: a scanner that never answers holds only its message: the client
        gets 451 within timeouts.scan + 1 s, and IMAP logins through the same gateway
        (one reactor thread) complete in under 1 s each meanwhile."""
        accepted_before = self.silent.accepted
        result: dict = {}

        def smtp():
            with smtplib.SMTP(harness.HOST, self.ports["mx_slow"], timeout=15) as s:
                s.ehlo("client.example.com")
                s.mail("sender@example.com")
                s.rcpt(ALICE)
                start = time.monotonic()
                code, text = s.data(clean_message(f"silent {time.time_ns()}"))
                result.update(code=code, text=text.decode(errors="replace"), elapsed=time.monotonic() - start)

        t = threading.Thread(target=smtp)
        t.start()
        harness.wait_for(lambda: self.silent.accepted > accepted_before, 5, what="the scanner connection")
        timings = []
        while t.is_alive() and len(timings) < 20:
            start = time.monotonic()
            imap = imaplib.IMAP4(harness.HOST, self.ports["imap"], timeout=5)
            try:
                typ, _ = imap.login(ALICE, ALICE_PW)
                self.assertEqual(typ, "OK")
                timings.append(time.monotonic() - start)
                imap.logout()
            finally:
                harness.close_imap(imap)
            time.sleep(0.1)
        t.join(10)
        self.assertFalse(t.is_alive())
        self.assertEqual(result.get("code"), 451, result)
        self.assertLess(result["elapsed"], SCAN_TIMEOUT_S + 1.0, result)
        self.assertGreaterEqual(result["elapsed"], SCAN_TIMEOUT_S - 0.2, result)
        self.assertGreaterEqual(len(timings), 3, timings)
        self.assertLess(max(timings), 1.0, timings)
        self.assertIn("filter deadline passed", self.gateway.log_text())
        if os.environ.get("MAILGATE_TEST_VERBOSE"):
            print(f"\nscan answered in {result['elapsed']:.2f}s; logins: {[round(x, 3) for x in timings]}")


if __name__ == "__main__":
    unittest.main()
