"""The ICAP scanner (hooks) end to end: a real c-icap (Debian's c-icap, its echo
service, and libc-icap-mod-virus-scan's virus_scan against a private clamd that
holds only the EICAR signature), fake ICAP services in Python (one that never
answers, one that sends back a modified message), and a Dovecot LMTP node behind
mailgate."""

from __future__ import annotations

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
import test_clamd
from fixtures import ALICE, USERS

CICAP = shutil.which("c-icap") or "/usr/bin/c-icap"
CICAP_LIB = Path("/usr/lib/x86_64-linux-gnu/c_icap")
SCAN_TIMEOUT_S = 2


class CIcap:
    """A private c-icap on a loopback port: the echo service, and virus_scan (as
    `avscan`) through clamd_mod against the clamd at `clamd_socket`."""

    def __init__(self, workdir: Path, clamd_socket: Path):
        self.dir = workdir
        self.port = harness.free_port()
        self.proc: subprocess.Popen | None = None
        (workdir / "tmp").mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "c-icap.conf"
        self.conf.write_text(
            f"PidFile {workdir / 'c-icap.pid'}\n"
            f"CommandsSocket {workdir / 'c-icap.ctl'}\n"
            "Timeout 30\n"
            "StartServers 1\nMaxServers 1\nMinSpareThreads 2\nMaxSpareThreads 8\nThreadsPerChild 8\n"
            f"Port {harness.HOST}:{self.port}\n"
            f"TmpDir {workdir / 'tmp'}\n"
            "MaxMemObject 131072\n"
            "DebugLevel 1\n"
            f"ModulesDir {CICAP_LIB}\nServicesDir {CICAP_LIB}\n"
            "TemplateDir /usr/share/c_icap/templates/\nTemplateDefaultLanguage en\n"
            "LoadMagicFile /etc/c-icap/c-icap.magic\n"
            f"ServerLog {workdir / 'server.log'}\nAccessLog {workdir / 'access.log'}\n"
            "Service echo srv_echo.so\n"
            "Module common clamd_mod.so\n"
            f"clamd_mod.ClamdSocket {clamd_socket}\n"
            "Service avscan virus_scan.so\n"
            "virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE GIF JPEG MSOFFICE\n"
            "virus_scan.DefaultEngine clamd\n"
            "virus_scan.Allow204Responces on\n")

    def start(self, timeout: float = 20.0) -> "CIcap":
        with open(self.dir / "c-icap.stderr", "ab") as err:  # never the test's own stdout
            self.proc = subprocess.Popen([CICAP, "-N", "-f", str(self.conf)], stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"c-icap exited: {self.log_text()[-2000:]}")
            if self.options_ok("echo") and self.options_ok("avscan"):
                return self
            time.sleep(0.1)
        raise RuntimeError("c-icap did not answer OPTIONS in time")

    def options_ok(self, service: str) -> bool:
        try:
            with socket.create_connection((harness.HOST, self.port), timeout=2) as s:
                s.sendall(f"OPTIONS icap://{harness.HOST}:{self.port}/{service} ICAP/1.0\r\n"
                          f"Host: {harness.HOST}\r\nEncapsulated: null-body=0\r\n\r\n".encode())
                return s.recv(64).startswith(b"ICAP/1.0 200")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            children = harness._descendants(self.proc.pid)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            for pid in children:
                harness._kill_pid(pid, 9)
        self.proc = None

    def log_text(self) -> str:
        out = ""
        for name in ("server.log", "c-icap.stderr"):
            p = self.dir / name
            if p.exists():
                out += p.read_text(errors="replace")
        return out


class FakeIcap:
    """A Python ICAP service. OPTIONS is answered at once (Allow: 204, no preview).
    mode "slow": a RESPMOD is read and never answered. mode "modify": the message
    comes back (200) with a header field added in front of it, bare LF line ends in
    that field (the gateway makes them CRLF)."""

    MARK = b"X-Icap-Modified: yes\n"

    def __init__(self, mode: str):
        self.mode = mode
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((harness.HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        self.conns: list[socket.socket] = []
        self.stopped = False
        threading.Thread(target=self._run, daemon=True).start()

    def url(self, service: str = "svc") -> str:
        return f"icap://{harness.HOST}:{self.port}/{service}"

    def _run(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _read_until(c: socket.socket, buf: bytearray, sep: bytes) -> bytes | None:
        while sep not in buf:
            d = c.recv(65536)
            if not d:
                return None
            buf += d
        i = buf.index(sep) + len(sep)
        out = bytes(buf[:i])
        del buf[:i]
        return out

    @staticmethod
    def _read_n(c: socket.socket, buf: bytearray, n: int) -> bytes | None:
        while len(buf) < n:
            d = c.recv(65536)
            if not d:
                return None
            buf += d
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def _serve(self, c: socket.socket):
        buf = bytearray()
        try:
            while True:
                head = self._read_until(c, buf, b"\r\n\r\n")
                if head is None:
                    return
                first = head.split(b"\r\n", 1)[0].decode()
                self.requests.append(first)
                if first.startswith("OPTIONS"):
                    c.sendall(b"ICAP/1.0 200 OK\r\nMethods: RESPMOD, REQMOD\r\nISTag: \"fake-1\"\r\n"
                              b"Options-TTL: 60\r\nAllow: 204\r\nEncapsulated: null-body=0\r\n\r\n")
                    continue
                enc = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"encapsulated:")][0]
                body_off = int(enc.split(b"=")[-1])
                self._read_n(c, buf, body_off)
                body = bytearray()
                while True:
                    size_line = self._read_until(c, buf, b"\r\n")
                    if size_line is None:
                        return
                    size = int(size_line.split(b";")[0].strip(), 16)
                    if size == 0:
                        self._read_until(c, buf, b"\r\n")
                        break
                    body += self._read_n(c, buf, size)
                    self._read_n(c, buf, 2)
                if self.mode == "slow":
                    while c.recv(65536):
                        pass
                    return
                # The modified message behind the same kind of HTTP header as the request's.
                if first.startswith("REQMOD"):
                    http, part = b"POST / HTTP/1.1\r\nHost: mailgate\r\n\r\n", b"req"
                else:
                    http, part = b"HTTP/1.1 200 OK\r\nContent-Type: message/rfc822\r\n\r\n", b"res"
                new = self.MARK + bytes(body)
                out = (b"ICAP/1.0 200 OK\r\nISTag: \"fake-1\"\r\nEncapsulated: %s-hdr=0, %s-body=%d\r\n\r\n"
                       % (part, part, len(http))) + http
                for i in range(0, len(new), 70000):  # chunks of another size than the gateway's
                    piece = new[i:i + 70000]
                    out += b"%x\r\n" % len(piece) + piece + b"\r\n"
                out += b"0\r\n\r\n"
                c.sendall(out)
        except OSError:
            return

    def stop(self):
        self.stopped = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


@unittest.skipUnless(os.path.exists(CICAP) and (CICAP_LIB / "virus_scan.so").exists()
                     and os.path.exists(test_clamd.CLAMD),
                     "c-icap, libc-icap-mod-virus-scan or clamd missing (scripts/deps.sh installs them)")
class IcapTest(harness.LogsOnFailure, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-icap-"))
        cls.node = cls.gateway = cls.clamd = cls.cicap = cls.slow = cls.modify = None
        try:
            (cls.dir / "clamd").mkdir()
            cls.clamd = test_clamd.Clamd(cls.dir / "clamd").start()
            (cls.dir / "c-icap").mkdir()
            cls.cicap = CIcap(cls.dir / "c-icap", cls.clamd.socket).start()
            cls.slow = FakeIcap("slow")
            cls.modify = FakeIcap("modify")
            cls.node = harness.Dovecot(cls.dir / "storage-01", USERS, name="s1")
            cls.node.start()
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            names = ["mx_av", "mx_echo", "mx_slow", "mx_accept", "mx_reject", "mx_ignore"]
            cls.ports = dict(zip(names, harness.free_ports(len(names))))
            listeners = [{"name": n, "protocol": "smtp", "port": cls.ports[n]} for n in names]
            backends = [{"name": "storage-01", "imap": cls.node.imap_port, "lmtp": cls.node.lmtp_port}]
            routes = [{"domain": "example.org", "primary": "storage-01"}]
            text = harness.mailgate_config(certificates=[], listeners=listeners, users_file=users_file,
                                           backends=backends, routes=routes, threads=1)
            icap = f"icap://{harness.HOST}:{cls.cicap.port}"
            text += (
                "hooks:\n"
                "  defaults:\n"
                "    on_error: tempfail\n"
                f"    timeouts: {{ connect: 1s, scan: {SCAN_TIMEOUT_S}s }}\n"
                "  scanners:\n"
                f"    av: {{ type: icap, url: \"{icap}/avscan\", timeouts: {{ scan: 20s }} }}\n"
                f"    echo: {{ type: icap, url: \"{icap}/echo\", on_modified: reject }}\n"
                f"    slow: {{ type: icap, url: \"{cls.slow.url()}\" }}\n"
                f"    m_accept: {{ type: icap, url: \"{cls.modify.url()}\", on_modified: accept }}\n"
                f"    m_reject: {{ type: icap, url: \"{cls.modify.url()}\", on_modified: reject }}\n"
                f"    m_ignore: {{ type: icap, url: \"{cls.modify.url()}\", on_modified: ignore, method: reqmod }}\n"
                "  flows:\n"
                "    - { when: { listener: mx_av }, run: [av] }\n"
                "    - { when: { listener: mx_echo }, run: [echo] }\n"
                "    - { when: { listener: mx_slow }, run: [slow] }\n"
                "    - { when: { listener: mx_accept }, run: [m_accept] }\n"
                "    - { when: { listener: mx_reject }, run: [m_reject] }\n"
                "    - { when: { listener: mx_ignore }, run: [m_ignore] }\n")
            cls.gateway = harness.Mailgate(cls.dir, text).start()
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def _stop(cls):
        for d in (cls.gateway, cls.node, cls.cicap, cls.clamd, cls.slow, cls.modify):
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
        if self.cicap is not None:
            out.append("--- c-icap log (tail) ---\n" + self.cicap.log_text()[-3000:])
        if self.clamd is not None:
            out.append("--- clamd log (tail) ---\n" + self.clamd.log_text()[-2000:])
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

    def send(self, listener: str, msg: bytes, timeout: float = 30) -> tuple[int, str]:
        with smtplib.SMTP(harness.HOST, self.ports[listener], timeout=timeout) as s:
            s.ehlo("client.example.com")
            self.assertEqual(s.mail("sender@example.com")[0], 250)
            self.assertEqual(s.rcpt(ALICE)[0], 250)
            code, text = s.data(msg)
            return code, text.decode(errors="replace")

    def delivered_one(self, subject: str) -> bytes:
        """The delivered message, with CRLF line ends (the node stores LF)."""
        files = harness.wait_for(lambda: self.delivered(subject.encode()), 10, what="the message delivered")
        self.assertEqual(len(files), 1)
        return files[0].read_bytes().replace(b"\n", b"\r\n")

    # ------------------------------------------------------------------ tests

    def test_clean_message_through_virus_scan_is_delivered(self):
        subject = f"av clean {time.time_ns()}"
        code, text = self.send("mx_av", test_clamd.clean_message(subject))
        self.assertEqual(code, 250, text)
        data = self.delivered_one(subject)
        self.assertIn(b"Hello, nothing to see.", data)
        self.assertIn('"status":"204"', self.gateway.log_text().replace(" ", ""))

    def test_eicar_through_virus_scan_is_rejected_and_not_delivered(self):
        subject = f"av eicar {time.time_ns()}"
        code, text = self.send("mx_av", test_clamd.eicar_message(subject))
        self.assertEqual(code, 554, text)
        self.assertRegex(text, r"^5\.7\.1 Message rejected: Eicar-Test-Signature[\w.]* \(ref [0-9a-f]{6}\)$")
        # The session goes on; the message never reaches the node.
        subject2 = f"av after eicar {time.time_ns()}"
        self.assertEqual(self.send("mx_av", test_clamd.clean_message(subject2))[0], 250)
        self.delivered_one(subject2)
        self.assertEqual(self.delivered(subject.encode()), [])
        self.assertIn("infection found: Eicar-Test-Signature", self.gateway.log_text())

    def test_echo_service_delivers_the_message_unchanged(self):
        # The echo service answers 204 after the preview, or sends the same message
        # back; either way it is clean (on_modified: reject would refuse a change).
        subject = f"echo {time.time_ns()}"
        body = ("line of an echoed message, long enough to pass the preview\r\n") * 200
        msg = test_clamd.clean_message(subject, body)
        code, text = self.send("mx_echo", msg)
        self.assertEqual(code, 250, text)
        data = self.delivered_one(subject)
        self.assertTrue(msg in data, "the message, unchanged")

    def test_slow_service_gives_on_error_within_the_deadline(self):
        subject = f"slow {time.time_ns()}"
        t0 = time.monotonic()
        code, text = self.send("mx_slow", test_clamd.clean_message(subject))
        elapsed = time.monotonic() - t0
        self.assertEqual(code, 451, text)
        self.assertLess(elapsed, SCAN_TIMEOUT_S + 1.5)
        self.assertGreaterEqual(elapsed, SCAN_TIMEOUT_S - 0.2)
        self.assertTrue(any(r.startswith("RESPMOD") for r in self.slow.requests), self.slow.requests)
        time.sleep(0.5)
        self.assertEqual(self.delivered(subject.encode()), [])

    def test_modified_message_accepted_replaces_the_original(self):
        subject = f"modified accept {time.time_ns()}"
        code, text = self.send("mx_accept", test_clamd.clean_message(subject))
        self.assertEqual(code, 250, text)
        data = self.delivered_one(subject)
        self.assertIn(b"\r\nX-Icap-Modified: yes\r\nReceived: ", data)
        self.assertIn(b"Hello, nothing to see.", data)

    def test_large_modified_message_goes_through_a_file(self):
        # Over server.spool_memory (1 MiB): the modified copy is written to a file
        # and streamed from it to the node, with dot-stuffing intact.
        subject = f"modified large {time.time_ns()}"
        body = ("." + "0123456789abcdef" * 6 + "\r\n") * 25000  # ~2.4 MB, lines starting with '.'
        msg = test_clamd.clean_message(subject, body)
        code, text = self.send("mx_accept", msg)
        self.assertEqual(code, 250, text)
        data = self.delivered_one(subject)
        self.assertTrue(b"\r\nX-Icap-Modified: yes\r\nReceived: " in data, "the mark, in front of the message")
        self.assertTrue(msg in data, "the whole message, its leading dots intact")

    def test_modified_message_rejected(self):
        subject = f"modified reject {time.time_ns()}"
        code, text = self.send("mx_reject", test_clamd.clean_message(subject))
        self.assertEqual(code, 554, text)
        self.assertRegex(text, r"^5\.7\.1 Message rejected by content filter")
        time.sleep(0.5)
        self.assertEqual(self.delivered(subject.encode()), [])

    def test_modified_message_ignored_keeps_the_original(self):
        subject = f"modified ignore {time.time_ns()}"
        code, text = self.send("mx_ignore", test_clamd.clean_message(subject))
        self.assertEqual(code, 250, text)
        data = self.delivered_one(subject)
        self.assertNotIn(b"X-Icap-Modified", data)
        self.assertTrue(any(r.startswith("REQMOD") for r in self.modify.requests), self.modify.requests)


if __name__ == "__main__":
    unittest.main()
