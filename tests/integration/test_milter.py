"""The milter client (hooks, type milter) end to end: a real libmilter milter
(Debian's python3-milter running tests/integration/milters/test_milter.py, which acts
on the Subject or the recipient), OpenDKIM signing on a listener of its own, and a
Dovecot LMTP/IMAP node behind mailgate."""

from __future__ import annotations

import json
import os
import re
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

    def verify(self, message: bytes) -> tuple[bool, str]:
        """Checks a delivered message's signature with `opendkim -t` (test mode), the
        public key read from a TestPublicKeys file instead of DNS."""
        txt = (self.dir / "mgtest.txt").read_text()
        record = "".join(part for part in txt.split('"')[1::2])
        keys = self.dir / "public.keys"
        keys.write_text(f"mgtest._domainkey.example.org {record}\n")
        conf = self.dir / "verify.conf"
        conf.write_text(f"Mode v\nTestPublicKeys {keys}\nSyslog no\nCanonicalization relaxed/relaxed\n")
        msg = self.dir / "verify.eml"
        # The node's own header fields came after signing: the signer saw the message from
        # the gateway's Received: on. Maildir stores LF line ends.
        text = message.replace(b"\r\n", b"\n")
        start = text.index(b"DKIM-Signature:")
        msg.write_bytes(text[start:].replace(b"\n", b"\r\n"))
        r = subprocess.run([OPENDKIM, "-x", str(conf), "-vvv", "-t", str(msg)], capture_output=True, text=True,
                           timeout=30)
        out = r.stdout + r.stderr
        if os.environ.get("MAILGATE_TEST_VERBOSE"):
            print(f"\nopendkim -t: rc={r.returncode} {out.strip()}")
        return r.returncode == 0 and re.search(r"verification \(.*\) succeeded", out) is not None, out

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
        # Above the gateway's own Received: (the node adds its own above both).
        self.assertLess(data.index(b"X-Milter-First"), data.index(b"(mailgate) with"))

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

    def test_quarantine_with_a_store(self):
        """A gateway of its own with hooks.quarantine: the milter's quarantine holds the
        message there (250 once it is written), and the node never gets it."""
        work = self.dir / "with-store"
        work.mkdir(exist_ok=True)
        port = harness.free_port()
        text = harness.mailgate_config(
            certificates=[], listeners=[{"name": "mx", "protocol": "smtp", "port": port}],
            users_file=str(self.dir / "users.passwd"),
            backends=[{"name": "storage-01", "imap": self.node.imap_port, "lmtp": self.node.lmtp_port}],
            routes=[{"domain": "example.org", "primary": "storage-01"}], threads=1)
        qdir = work / "quarantine"
        text += (
            "hooks:\n"
            "  scanners:\n"
            f"    test: {{ type: milter, endpoints: [\"unix:{self.milter.socket}\"] }}\n"
            "  flows:\n"
            "    - { when: { listener: mx }, run: [test] }\n"
            f"  quarantine: {{ store: dir, dir: {qdir} }}\n")
        gw = harness.Mailgate(work, text).start()
        self.addCleanup(gw.stop)
        tag = str(time.time_ns())
        with smtplib.SMTP(harness.HOST, port, timeout=20) as s:
            s.ehlo("client.example.com")
            s.mail("sender@example.com")
            s.rcpt(ALICE)
            code, reply = s.data(message(f"quarantine {tag}"))
        self.assertEqual(code, 250, reply)
        self.assertIn(b"(quarantined)", reply)
        held = [p for p in qdir.rglob("*") if p.is_file() and tag.encode() in p.read_bytes()]
        self.assertEqual(len(held), 1, list(qdir.rglob("*")))
        self.assertEqual(self.delivered(tag.encode()), [])

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
        # Verified offline by opendkim's own test mode, the public key read from a file.
        ok, out = self.dkim.verify(data)
        self.assertTrue(ok, out)
        # A changed body does not verify: the check is real.
        ok, out = self.dkim.verify(data.replace(b"Signed body.", b"Changed body."))
        self.assertFalse(ok, out)



RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
RSPAMD_START_S = 120  # it loads and compiles its rules at start: ~35 s on a loaded 2-core machine
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


class Rspamd:
    """rspamd with Debian's rules, its proxy worker in milter mode scanning by itself
    (self_scan), every other worker on a private port, files in `workdir`."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        for sub in ("override.d", "db", "run", "log"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        self.port, normal, controller = harness.free_ports(3)
        o = workdir / "override.d"
        (o / "worker-proxy.inc").write_text(
            f'bind_socket = "127.0.0.1:{self.port}";\nmilter = yes;\ntimeout = 120s;\nself_scan = yes;\n'
            'count = 1;\nupstream "local" { default = yes; self_scan = yes; }\n')
        (o / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{normal}";\ncount = 1;\n')
        (o / "worker-controller.inc").write_text(f'bind_socket = "127.0.0.1:{controller}";\ncount = 1;\n')
        (o / "worker-fuzzy.inc").write_text("count = 0;\n")
        (o / "logging.inc").write_text(f'type = "file";\nfilename = "{workdir}/log/rspamd.log";\nlevel = "info";\n')
        (o / "options.inc").write_text(f'pidfile = "{workdir}/run/rspamd.pid";\n')
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Rspamd":
        w = self.dir
        with open(w / "rspamd.stderr", "ab") as err:
            self.proc = subprocess.Popen(
                [RSPAMD, "-f", "-i", "-c", "/etc/rspamd/rspamd.conf", "--var", f"LOCAL_CONFDIR={w}",
                 "--var", f"DBDIR={w}/db", "--var", f"RUNDIR={w}/run", "--var", f"LOGDIR={w}/log"],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=w)
        harness.wait_for(lambda: self.proc.poll() is not None or harness.port_open(self.port), RSPAMD_START_S,
                         interval=0.25, what="rspamd's milter port")
        if self.proc.poll() is not None:
            raise RuntimeError("rspamd exited: " + self.log_text()[-2000:])
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log_text(self) -> str:
        out = ""
        for p in (self.dir / "log" / "rspamd.log", self.dir / "rspamd.stderr"):
            if p.exists():
                out += p.read_text(errors="replace")
        return out


@unittest.skipUnless(os.path.exists(RSPAMD) and os.path.isdir("/etc/rspamd"),
                     "rspamd is not installed (Debian's rspamd package)")
class RspamdMilterTest(harness.LogsOnFailure, unittest.TestCase):
    """rspamd through its milter proxy: GTUBE is rejected, a plain message goes through.
    rspamd needs about half a minute to start (it loads and compiles its rules)."""

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-rspamd-"))
        cls.node = cls.gateway = cls.rspamd = None
        try:
            cls.rspamd = Rspamd(cls.dir / "rspamd").start()
            cls.node = harness.Dovecot(cls.dir / "storage-01", USERS, name="s1")
            cls.node.start()
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            cls.port = harness.free_port()
            text = harness.mailgate_config(
                certificates=[], listeners=[{"name": "mx", "protocol": "smtp", "port": cls.port}],
                users_file=users_file,
                backends=[{"name": "storage-01", "imap": cls.node.imap_port, "lmtp": cls.node.lmtp_port}],
                routes=[{"domain": "example.org", "primary": "storage-01"}], threads=1)
            text += (
                "hooks:\n"
                "  defaults: { on_error: tempfail, timeouts: { connect: 1s, scan: 30s } }\n"
                "  scanners:\n"
                f"    rspamd: {{ type: milter, endpoints: [\"tcp:127.0.0.1:{cls.rspamd.port}\"] }}\n"
                "  flows:\n"
                "    - { when: { listener: mx }, run: [rspamd] }\n")
            cls.gateway = harness.Mailgate(cls.dir, text).start()
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def _stop(cls):
        for d in (cls.gateway, cls.node, cls.rspamd):
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
        if self.rspamd is not None:
            out.append("--- rspamd log (tail) ---\n" + self.rspamd.log_text()[-4000:])
        return "\n".join(out)

    def send(self, msg: bytes) -> tuple[int, str]:
        with smtplib.SMTP(harness.HOST, self.port, timeout=60) as s:
            s.ehlo("client.example.com")
            self.assertEqual(s.mail("sender@example.com")[0], 250)
            self.assertEqual(s.rcpt(ALICE)[0], 250)
            code, text = s.data(msg)
            return code, text.decode(errors="replace")

    def test_gtube_rejected_plain_delivered(self):
        tag = str(time.time_ns())
        code, text = self.send(message(f"gtube {tag}", body=f"{GTUBE}\r\n"))
        self.assertEqual(code, 554, text)
        self.assertRegex(text, r"^5\.7\.1 .*\(ref [0-9a-f]{6}\)$")
        self.assertIn("milter rspamd: reply 554", self.gateway.log_text())
        tag2 = str(time.time_ns())
        code, text = self.send(message(f"plain {tag2}", body="A perfectly ordinary message.\r\n" * 5))
        self.assertEqual(code, 250, text)
        base = self.node.mail_dir / "example.org" / "alice" / "Maildir"

        def found():
            return [p for sub in ("new", "cur") if (base / sub).exists() for p in (base / sub).glob("*")
                    if tag2.encode() in p.read_bytes()]
        files = harness.wait_for(found, 10, what="the plain message delivered")
        self.assertIn(b"A perfectly ordinary message.", files[0].read_bytes())
        self.assertFalse([p for sub in ("new", "cur") if (base / sub).exists() for p in (base / sub).glob("*")
                          if tag.encode() in p.read_bytes()])


if __name__ == "__main__":
    unittest.main()
