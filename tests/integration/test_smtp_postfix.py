"""SMTP MX (listener protocol smtp) into a real Postfix smtpd as the storage node
(backend `deliver: smtp`, `ports.smtp`): the node announces XCLIENT, PIPELINING,
CHUNKING and (in the TLS class) STARTTLS, and delivers accepted mail with virtual(8)
into Maildirs that the tests read.

Each class runs its own private Postfix (harness.Postfix: own config, queue and data
directories, log file, loopback port) and its own mailgate. Clients connect from
127.0.0.5 (loopback, bound explicitly) so that the node's view of the client address
tells whether XCLIENT was honoured: mailgate itself connects from 127.0.0.1.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import subprocess
import sys
import threading
import time
import unittest
from pathlib import Path

# Importable as tests.integration.test_smtp_postfix as well as by discovery (-s tests/integration).
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

CLIENT_IP = "127.0.0.5"       # the clients' source address (mailgate's own is 127.0.0.1)
CLIENT_HELO = "client.example.com"
SENDER = "sender@example.com"

ALICE = "alice@example.org"   # a mailbox on the node and in mailgate's directory
BOB = "bob@example.org"       # in mailgate's directory only: the node refuses it (550 5.1.1)
LOAD = "load@example.org"     # the smtp-source target

NODE_SIZE_LIMIT = 200000    # the node's message_size_limit (mailgate's listener: 50M)
LOAD_SESSIONS = 5
LOAD_PER_SESSION = 40


class ClientFrom(harness.LineClient):
    """harness.LineClient connecting from CLIENT_IP."""

    def __init__(self, port: int, timeout: float = 30.0):
        self.host, self.port, self.timeout, self.buf = harness.HOST, port, timeout, b""
        self.sock = socket.create_connection((harness.HOST, port), timeout=timeout,
                                             source_address=(CLIENT_IP, 0))


def smtp_reply(c: harness.LineClient, timeout: float = 15.0) -> list[str]:
    """The lines of one SMTP reply."""
    return c.read_until(lambda l: len(l) < 4 or l[3] == " ", timeout)


def code(lines: list[str]) -> str:
    return lines[-1][:3]


def message(subject: str, to: str = ALICE, body: str = "Hello.\r\n") -> bytes:
    """A complete message (Date and Message-ID present: the node adds none)."""
    return (f"From: {SENDER}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{time.time_ns()}@client.example.com>\r\n\r\n{body}").encode()


def split_headers(data: bytes) -> list[bytes]:
    """The header fields of a stored (LF) message, each with its folded lines."""
    head = data.split(b"\n\n", 1)[0]
    fields: list[bytes] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\n" + line
        else:
            fields.append(line)
    return fields


def received_headers(data: bytes) -> list[bytes]:
    return [f for f in split_headers(data) if f.lower().startswith(b"received:")]


class PostfixTestBase(harness.LogsOnFailure, unittest.TestCase):
    """One Postfix node + one mailgate per class. Subclasses define node_setup()."""

    maxDiff = None
    dir: Path
    postfix: harness.Postfix | None = None
    gateway: harness.Mailgate | None = None

    @classmethod
    def setUpClass(cls):
        why = harness.postfix_missing()
        if why:
            raise RuntimeError(f"Postfix integration tests cannot run: {why}")
        cls.dir = Path(harness.make_workdir(f"mailgate-{cls.__name__.lower()}-"))
        cls.postfix = None
        cls.gateway = None
        try:
            cls.node_setup()
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def node_setup(cls):
        raise NotImplementedError

    @classmethod
    def _stop(cls):
        try:
            if cls.gateway is not None:
                cls.gateway.stop()
        finally:
            if cls.postfix is not None:
                cls.postfix.stop()
            harness.remove_workdir(cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls._stop()

    @classmethod
    def diagnostics(cls) -> str:
        out = []
        if cls.gateway is not None:
            out.append("--- mailgate log (tail) ---\n" + cls.gateway.log_text()[-6000:])
        if cls.postfix is not None:
            out.append("--- postfix maillog (tail) ---\n" + cls.postfix.log_text()[-6000:])
        return "\n".join(out)

    # -- helpers
    @classmethod
    def start_gateway(cls, listeners: list[dict], users: dict[str, str], backends: list[dict],
                      routes: list[dict], backend_keys: dict[str, dict], cert) -> None:
        """backend_keys: {backend: {key: value}}; every backend delivers over SMTP to
        the Postfix node's port."""
        users_file = str(cls.dir / "users.passwd")
        harness.write_passwd(users_file, users)
        text = harness.mailgate_config(certificates=[cert], listeners=listeners,
                                       users_file=users_file, backends=backends, routes=routes)
        for b in backends:
            text = harness.set_backend_keys(text, b["name"], ports={"smtp": cls.postfix.port},
                                            keys={"deliver": "smtp", **backend_keys.get(b["name"], {})})
        cls.gateway = harness.Mailgate(cls.dir, text).start()

    def smtp(self, port: int) -> smtplib.SMTP:
        s = smtplib.SMTP(harness.HOST, port, timeout=30, source_address=(CLIENT_IP, 0))
        self.addCleanup(s.close)
        return s

    def wait_delivered(self, mailbox: str, marker: bytes, timeout: float = 15.0) -> bytes:
        found = harness.wait_for(lambda: self.postfix.find(mailbox, marker), timeout,
                                 what=f"{marker!r} in {mailbox}'s Maildir on the Postfix node")
        return found[0]

    def node_log_wait(self, pattern: str, timeout: float = 10.0) -> re.Match:
        return harness.wait_for(lambda: re.search(pattern, self.postfix.log_text(), re.M), timeout,
                                what=f"/{pattern}/ in the Postfix log")


# --------------------------------------------------------------------------- plain node

class PostfixNodeTest(PostfixTestBase):
    """mailgate's MX listener → one Postfix node over plain SMTP."""

    @classmethod
    def node_setup(cls):
        certs = cls.dir / "certs"
        ca = harness.make_ca(certs)
        cert = harness.make_cert(ca, certs, ["mx.example.org"])
        cls.postfix = harness.Postfix(cls.dir / "postfix", mailboxes=[ALICE, LOAD],
                                      domains=["example.org"],
                                      extra_main=f"message_size_limit = {NODE_SIZE_LIMIT}\n").start()
        cls.mx_port = harness.free_port()
        listeners = [{"name": "mx", "protocol": "smtp", "port": cls.mx_port,
                      "max_messages": 1000, "preauth_timeout": "60s"}]
        users = {ALICE: "alice-password", BOB: "bob-password", LOAD: "load-password"}
        backends = [{"name": "postfix-01", "health_interval": "2s", "health_timeout": "1s"}]
        routes = [{"domain": "example.org", "primary": "postfix-01"}]
        cls.start_gateway(listeners, users, backends, routes, {}, cert)

    # (1)
    def test_delivered_byte_for_byte_after_received_headers(self):
        subject = f"pf-byte-for-byte {time.time_ns()}"
        body = ("line one\r\n.leading dot\r\n..two dots\r\n.\r\n\r\n\tindented \xe9\xe8\r\n"
                "a long line " + "x" * 900 + "\r\nlast\r\n")
        msg = message(subject, body="").rstrip(b"\r\n") + b"\r\n\r\n" + body.encode("latin-1")
        s = self.smtp(self.mx_port)
        s.ehlo(CLIENT_HELO)
        self.assertIn("8bitmime", s.esmtp_features)
        self.assertEqual(s.sendmail(SENDER, [ALICE], msg, mail_options=["BODY=8BITMIME"]), {})
        s.quit()
        data = self.wait_delivered(ALICE, subject.encode())
        # virtual(8) stores LF line ends; otherwise the message is unchanged.
        stored = msg.replace(b"\r\n", b"\n")
        self.assertTrue(data.endswith(stored), data)
        head = data[: len(data) - len(stored)]
        fields = split_headers(head + b"\n")
        names = [f.split(b":", 1)[0].lower() for f in fields if f]
        # Postfix's own fields first, then its Received, then mailgate's, then the message.
        self.assertEqual(names, [b"return-path", b"x-original-to", b"delivered-to",
                                 b"received", b"received"], head)
        self.assertEqual(fields[0], f"Return-Path: <{SENDER}>".encode())
        self.assertEqual(fields[2], f"Delivered-To: {ALICE}".encode())
        node_received, gate_received = fields[3], fields[4]
        self.assertIn(b"by node.example.test (Postfix) with ESMTP id ", node_received)
        self.assertRegex(gate_received + b"\n",
                         rb"^Received: from client\.example\.com \(\[127\.0\.0\.5\]\)\n\tby \S+ "
                         rb"\(mailgate\) with ESMTP\n\tid \S+\n\tfor <alice@example\.org>; "
                         rb"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000\n$")
        # Exactly one copy, and the node logged the delivery.
        self.assertEqual(len(self.postfix.find(ALICE, subject.encode())), 1)
        self.node_log_wait(r"postfix/virtual\[\d+\]: \w+: to=<alice@example\.org>, relay=virtual.*status=sent")

    # (2) XCLIENT: the node sees the original client, not mailgate
    def test_xclient_client_address_and_port_reach_the_node(self):
        subject = f"pf-xclient-addr {time.time_ns()}"
        s = self.smtp(self.mx_port)
        s.ehlo(CLIENT_HELO)
        client_port = s.sock.getsockname()[1]
        self.assertEqual(s.sendmail(SENDER, [ALICE], message(subject)), {})
        s.quit()
        data = self.wait_delivered(ALICE, subject.encode())
        node_received = received_headers(data)[0]
        self.assertIn(b"by node.example.test (Postfix)", node_received)
        self.assertIn(b"[127.0.0.5]", node_received, node_received)
        self.assertNotIn(b"[127.0.0.1]", node_received)
        # smtpd_client_port_logging: `client=unknown[127.0.0.5]:<the client's own port>`.
        self.node_log_wait(rf"postfix/smtpd\[\d+\]: \w+: client=unknown\[127\.0\.0\.5\]:{client_port}$")

    def test_xclient_helo_name_reaches_the_node(self):
        """mailgate sends XCLIENT HELO=<client's EHLO name>; Postfix's Received: header
        must name the client's HELO, not mailgate's hostname."""
        subject = f"pf-xclient-helo {time.time_ns()}"
        s = self.smtp(self.mx_port)
        s.ehlo(CLIENT_HELO)
        self.assertEqual(s.sendmail(SENDER, [ALICE], message(subject)), {})
        s.quit()
        data = self.wait_delivered(ALICE, subject.encode())
        node_received = received_headers(data)[0]
        self.assertTrue(node_received.startswith(b"Received: from client.example.com (unknown [127.0.0.5])"),
                        node_received)

    # (3) swaks (PIPELINING) and a pipelined CHUNKING session
    def test_swaks_pipelined(self):
        if shutil.which("swaks") is None:
            self.fail("swaks not installed (scripts/deps.sh installs it)")
        subject = f"pf-swaks {time.time_ns()}"
        proc = subprocess.run(["swaks", "--server", f"{harness.HOST}:{self.mx_port}",
                               "--local-interface", CLIENT_IP, "--pipeline",
                               "--helo", CLIENT_HELO, "--from", SENDER, "--to", ALICE,
                               "--header", f"Subject: {subject}", "--body", "from swaks"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        # swaks really pipelined: MAIL, RCPT and DATA went in one write.
        self.assertRegex(proc.stdout, r"(?m)^ -> MAIL FROM:<sender@example\.com>\n -> RCPT TO:<alice@example\.org>\n"
                                      r" -> DATA\n", proc.stdout)
        data = self.wait_delivered(ALICE, subject.encode())
        self.assertIn(b"from swaks", data)
        self.assertEqual(len(received_headers(data)), 2)

    def test_pipelined_bdat_chunks(self):
        """swaks 20201014 (Debian 12) has no CHUNKING: a raw client sends two
        transactions in one write, the second in two BDAT chunks."""
        s1, s2 = f"pf-bdat-1 {time.time_ns()}", f"pf-bdat-2 {time.time_ns()}"
        m1, m2 = message(s1), message(s2, body="chunked\r\n.dot line\r\nend\r\n")
        c = ClientFrom(self.mx_port)
        self.addCleanup(c.close)
        self.assertEqual(code(smtp_reply(c)), "220")
        c.send_line(f"EHLO {CLIENT_HELO}")
        keywords = {l[4:].split(" ")[0].upper() for l in smtp_reply(c)[1:]}
        self.assertTrue({"CHUNKING", "PIPELINING"} <= keywords, keywords)
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{ALICE}>\r\nBDAT {len(m1)} LAST\r\n".encode() + m1 +
               f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{ALICE}>\r\nBDAT 20\r\n".encode() + m2[:20] +
               f"BDAT {len(m2) - 20} LAST\r\n".encode() + m2[20:] + b"QUIT\r\n")
        replies = [smtp_reply(c, 30) for _ in range(8)]
        self.assertEqual([code(r) for r in replies], ["250"] * 7 + ["221"], replies)
        for subj, m in ((s1, m1), (s2, m2)):
            data = self.wait_delivered(ALICE, subj.encode())
            self.assertTrue(data.endswith(m.replace(b"\r\n", b"\n")), data)
            self.assertEqual(len(self.postfix.find(ALICE, subj.encode())), 1)

    # (5) the node refuses a recipient for good
    def test_node_refuses_recipient_5xx_nothing_delivered(self):
        subject = f"pf-refused {time.time_ns()}"
        s = self.smtp(self.mx_port)
        s.ehlo(CLIENT_HELO)
        with self.assertRaises(smtplib.SMTPDataError) as cm:
            # mailgate's directory knows bob: RCPT is accepted; the node refuses him.
            s.sendmail(SENDER, [BOB], message(subject, to=BOB))
        self.assertEqual(cm.exception.smtp_code // 100, 5, cm.exception)
        self.assertIn(b"5.1.1", cm.exception.smtp_error)
        s.quit()
        self.node_log_wait(r"NOQUEUE: reject: RCPT from unknown\[127\.0\.0\.5\]:\d+: 550 5\.1\.1 "
                           r"<bob@example\.org>: Recipient address rejected: User unknown in virtual "
                           r"mailbox table")
        time.sleep(1.0)
        self.assertEqual(self.postfix.maildir_files(BOB), [])
        self.assertFalse((self.postfix.mail_dir / "example.org" / "bob").exists())

    def test_node_refuses_one_of_two_recipients_5xx_nothing_delivered(self):
        """The node refuses bob after alice was accepted: the one DATA reply mailgate
        gives covers both, so neither gets a copy."""
        subject = f"pf-refused-mixed {time.time_ns()}"
        s = self.smtp(self.mx_port)
        s.ehlo(CLIENT_HELO)
        with self.assertRaises(smtplib.SMTPDataError) as cm:
            s.sendmail(SENDER, [ALICE, BOB], message(subject))
        self.assertEqual(cm.exception.smtp_code // 100, 5, cm.exception)
        s.quit()
        time.sleep(1.5)
        self.assertEqual(self.postfix.find(ALICE, subject.encode()), [])
        self.assertEqual(self.postfix.maildir_files(BOB), [])

    def test_smtputf8_passed_to_the_node(self):
        subject = f"pf-utf8 {time.time_ns()}"
        sender = "jos\u00e9@exampl\u00e9.com"
        msg = (f"From: {sender}\r\nTo: {ALICE}\r\nSubject: {subject} \u00fcml\u00e4ut\r\n"
               f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@x>\r\n\r\n"
               "gr\u00fc\u00dfe\r\n").encode()
        s = self.smtp(self.mx_port)
        s.ehlo(CLIENT_HELO)
        self.assertTrue(s.has_extn("smtputf8"))
        self.assertEqual(s.sendmail(sender, [ALICE], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"]), {})
        s.quit()
        data = self.wait_delivered(ALICE, subject.encode())
        self.assertTrue(data.endswith(msg.replace(b"\r\n", b"\n")), data)
        self.assertTrue(data.startswith(f"Return-Path: <{sender}>\n".encode()), data[:200])
        self.assertIn(b"(Postfix) with UTF8SMTP", received_headers(data)[0])

    def test_node_size_limit_552_nothing_delivered(self):
        """The node's own message_size_limit is below mailgate's: MAIL FROM ... SIZE= is
        refused by the node and the client gets its 552 5.3.4."""
        subject = f"pf-toobig {time.time_ns()}"
        msg = message(subject, body="y" * 900 + "\r\n") + (b"z" * 998 + b"\r\n") * 300
        s = self.smtp(self.mx_port)
        s.ehlo(CLIENT_HELO)
        with self.assertRaises(smtplib.SMTPDataError) as cm:
            s.sendmail(SENDER, [ALICE], msg)
        self.assertEqual(cm.exception.smtp_code, 552, cm.exception)
        self.assertIn(b"5.3.4", cm.exception.smtp_error)
        s.quit()
        time.sleep(1.0)
        self.assertEqual(self.postfix.find(ALICE, subject.encode()), [])

    def test_node_down_451_then_delivers_when_back(self):
        subject = f"pf-down {time.time_ns()}"
        self.postfix.stop()
        try:
            s = self.smtp(self.mx_port)
            s.ehlo(CLIENT_HELO)
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                s.sendmail(SENDER, [ALICE], message(subject))
            self.assertEqual(cm.exception.smtp_code, 451, cm.exception)
            self.assertIn(b"4.4.1", cm.exception.smtp_error)
            s.quit()
        finally:
            self.postfix.start()
        self.assertEqual(self.postfix.find(ALICE, subject.encode()), [])
        # The client's retry goes through once the node is back (health checks every 2s).
        def retry():
            try:
                with smtplib.SMTP(harness.HOST, self.mx_port, timeout=30,
                                  source_address=(CLIENT_IP, 0)) as s2:
                    s2.ehlo(CLIENT_HELO)
                    return s2.sendmail(SENDER, [ALICE], message(subject)) == {}
            except smtplib.SMTPException:
                return False
        harness.wait_for(retry, 20, interval=1.0, what="a delivery once the node is back")
        self.wait_delivered(ALICE, subject.encode())
        self.assertEqual(len(self.postfix.find(ALICE, subject.encode())), 1)

    def node_connections(self) -> int:
        return len(re.findall(r"smtpd\[\d+\]: connect from ", self.postfix.log_text()))

    def test_node_connection_kept_for_the_next_message(self):
        # Three messages on one client connection cost one node connection, each
        # delivered once; the node's replies to the pipelined MAIL/RCPT/DATA are honoured.
        before = self.node_connections()
        log_start = len(self.postfix.log_text())
        subjects = [f"pf-reuse-{i}-{time.time_ns()}" for i in range(3)]
        s = self.smtp(self.mx_port)
        s.ehlo(CLIENT_HELO)
        for subject in subjects:
            self.assertEqual(s.sendmail(SENDER, [ALICE], message(subject)), {})
        s.quit()
        for subject in subjects:
            self.wait_delivered(ALICE, subject.encode())
            self.assertEqual(len(self.postfix.find(ALICE, subject.encode())), 1)
        # One node session carried all three (health checks connect too, without mail);
        # Postfix logs the disconnect after mailgate's QUIT, a moment after the 221.
        pattern = r"disconnect from [^\n]*\[127\.0\.0\.5\][^\n]* mail=3 rcpt=3 data=3 quit=1"
        harness.wait_for(lambda: re.search(pattern, self.postfix.log_text()[log_start:]), 10,
                         what="one node session with the three messages")
        self.assertEqual(len(re.findall(pattern, self.postfix.log_text()[log_start:])), 1,
                         self.postfix.log_text()[-3000:])
        self.assertGreaterEqual(self.node_connections() - before, 1)

    def test_stale_kept_connection_replaced(self):
        # The node restarts between two messages of one client session: the kept
        # connection is dead; the second message goes over a fresh one, once.
        s = self.smtp(self.mx_port)
        s.ehlo(CLIENT_HELO)
        first, second = f"pf-stale-1-{time.time_ns()}", f"pf-stale-2-{time.time_ns()}"
        self.assertEqual(s.sendmail(SENDER, [ALICE], message(first)), {})
        self.postfix.stop()
        self.postfix.start()
        self.assertEqual(s.sendmail(SENDER, [ALICE], message(second)), {})
        s.quit()
        self.wait_delivered(ALICE, second.encode())
        self.assertEqual(len(self.postfix.find(ALICE, first.encode())), 1)
        self.assertEqual(len(self.postfix.find(ALICE, second.encode())), 1)

    # (6) load
    def not_accepted(self) -> int:
        return sum(1 for l in self.gateway.log_lines() if l.get("msg") == "smtp message not accepted")

    def test_smtp_source_load_every_message_accounted_for(self):
        if shutil.which("smtp-source") is None:
            self.fail("smtp-source not installed (scripts/deps.sh installs postfix)")
        subject = f"pf-load-{time.time_ns()}"
        total = LOAD_SESSIONS * LOAD_PER_SESSION
        refused_before = self.not_accepted()
        runs = [["-d", "-m", str(total)],               # -d: several messages per connection
                ["-m", str(LOAD_PER_SESSION)]]           # one message per connection
        for extra in runs:
            proc = subprocess.run(["smtp-source", "-s", str(LOAD_SESSIONS), *extra, "-l", "4096",
                                   "-S", subject, "-M", "client.example.com", "-f", SENDER, "-t", LOAD,
                                   f"{harness.HOST}:{self.mx_port}"],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        expected = total + LOAD_PER_SESSION
        harness.wait_for(lambda: len(self.postfix.find(LOAD, subject.encode())) >= expected, 60,
                         interval=0.25, what=f"{expected} messages in {LOAD}'s Maildir")
        time.sleep(1.0)
        stored = self.postfix.find(LOAD, subject.encode())
        self.assertEqual(len(stored), expected)
        # Every one went through mailgate (two Received: fields: the node's and mailgate's;
        # smtp-source greets with HELO, hence "with SMTP").
        for d in stored:
            received = received_headers(d)
            self.assertEqual(len(received), 2, d[:600])
            self.assertIn(b"(mailgate) with SMTP", received[1])
        # mailgate refused nothing during the load.
        self.assertEqual(self.not_accepted(), refused_before, self.gateway.log_text()[-4000:])


    def test_pipelined_bdat_load_every_message_accounted_for(self):
        """smtp-source does not pipeline: here LOAD_SESSIONS parallel clients each send
        LOAD_PER_SESSION transactions (MAIL, RCPT, BDAT LAST) in a single write."""
        subject = f"pf-pipeload-{time.time_ns()}"
        errors: list[str] = []

        def session(n: int) -> None:
            try:
                c = ClientFrom(self.mx_port, timeout=60)
                try:
                    if code(smtp_reply(c, 30)) != "220":
                        raise AssertionError("no greeting")
                    c.send_line(f"EHLO {CLIENT_HELO}")
                    smtp_reply(c, 30)
                    batch = b""
                    for i in range(LOAD_PER_SESSION):
                        m = message(f"{subject} s{n} m{i}", to=LOAD, body=f"session {n} message {i}\r\n")
                        batch += (f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{LOAD}>\r\n"
                                  f"BDAT {len(m)} LAST\r\n").encode() + m
                    c.send(batch + b"QUIT\r\n")
                    codes = [code(smtp_reply(c, 60)) for _ in range(3 * LOAD_PER_SESSION + 1)]
                    if codes != ["250"] * (3 * LOAD_PER_SESSION) + ["221"]:
                        raise AssertionError(f"session {n}: replies {codes}")
                finally:
                    c.close()
            except Exception as e:  # reported by the main thread
                errors.append(f"session {n}: {e!r}")

        threads = [threading.Thread(target=session, args=(n,)) for n in range(LOAD_SESSIONS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        self.assertFalse(any(th.is_alive() for th in threads), "a pipelining session hung")
        self.assertEqual(errors, [])
        expected = LOAD_SESSIONS * LOAD_PER_SESSION
        harness.wait_for(lambda: len(self.postfix.find(LOAD, subject.encode())) >= expected, 60,
                         interval=0.25, what=f"{expected} messages in {LOAD}'s Maildir")
        time.sleep(1.0)
        stored = self.postfix.find(LOAD, subject.encode())
        self.assertEqual(len(stored), expected)
        # Each (session, message) exactly once.
        seen = sorted(re.search(rb"Subject: [^\n]* (s\d+ m\d+)\n", d).group(1).decode() for d in stored)
        self.assertEqual(seen, sorted(f"s{n} m{i}" for n in range(LOAD_SESSIONS)
                                      for i in range(LOAD_PER_SESSION)))


# --------------------------------------------------------------------------- TLS node

class PostfixTlsNodeTest(PostfixTestBase):
    """The node offers STARTTLS with a certificate from a test CA. Three backends point
    at it: one trusting that CA, one trusting another CA, one expecting another name.
    Each has its own domain and is the only node for it."""

    @classmethod
    def node_setup(cls):
        certs = cls.dir / "certs"
        cls.ca = harness.make_ca(certs)
        cls.other_ca = harness.make_ca(cls.dir / "other-ca", name="some other CA")
        gateway_cert = harness.make_cert(cls.ca, certs, ["mx.example.org"])
        node_cert = harness.make_cert(cls.ca, certs, ["node.example.test"])
        cls.good, cls.badca, cls.wrongname = ALICE, "dave@badca.test", "erin@wrongname.test"
        cls.postfix = harness.Postfix(cls.dir / "postfix", mailboxes=[cls.good, cls.badca, cls.wrongname],
                                      tls_cert=node_cert).start()
        cls.mx_port = harness.free_port()
        listeners = [{"name": "mx", "protocol": "smtp", "port": cls.mx_port}]
        users = {cls.good: "pw1", cls.badca: "pw2", cls.wrongname: "pw3"}
        backends = [{"name": n, "tls": "starttls", "health_interval": "2s", "health_timeout": "1s"}
                    for n in ("tls-good", "tls-badca", "tls-wrongname")]
        routes = [{"domain": "example.org", "primary": "tls-good"},
                  {"domain": "badca.test", "primary": "tls-badca"},
                  {"domain": "wrongname.test", "primary": "tls-wrongname"}]
        keys = {"tls-good": {"tls_ca": cls.ca.cert},
                "tls-badca": {"tls_ca": cls.other_ca.cert},
                "tls-wrongname": {"tls_ca": cls.ca.cert, "tls_name": "wrong.test"}}
        cls.start_gateway(listeners, users, backends, routes, keys, gateway_cert)

    def test_node_offers_starttls(self):
        with smtplib.SMTP(harness.HOST, self.postfix.port, timeout=10) as s:
            s.ehlo("probe.example.test")
            self.assertTrue(s.has_extn("starttls"))

    # (4)
    def test_delivery_over_starttls_to_verified_node(self):
        subject = f"pf-tls {time.time_ns()}"
        s = self.smtp(self.mx_port)
        s.ehlo(CLIENT_HELO)
        self.assertEqual(s.sendmail(SENDER, [self.good], message(subject, to=self.good)), {})
        s.quit()
        data = self.wait_delivered(self.good, subject.encode())
        node_received = received_headers(data)[0]
        # smtpd_tls_received_header: the hop mailgate → node was TLS.
        self.assertRegex(node_received, rb"\(using TLSv1\.[23] with cipher ", node_received)
        self.assertIn(b"(Postfix) with ESMTPS id ", node_received)
        self.assertIn(b"[127.0.0.5]", node_received)
        self.node_log_wait(r"postfix/smtpd\[\d+\]: \w+ TLS connection established from unknown\[127\.0\.0\.1\]")

    def _not_delivered(self, rcpt: str, backend: str):
        subject = f"pf-tls-refused {backend} {time.time_ns()}"
        s = self.smtp(self.mx_port)
        s.ehlo(CLIENT_HELO)
        with self.assertRaises(smtplib.SMTPDataError) as cm:
            s.sendmail(SENDER, [rcpt], message(subject, to=rcpt))
        self.assertEqual(cm.exception.smtp_code, 451, cm.exception)
        self.assertIn(b"4.4.1", cm.exception.smtp_error)
        s.quit()
        line = harness.wait_for(
            lambda: [l for l in self.gateway.log_lines()
                     if l.get("msg") == "delivery attempt failed" and l.get("backend") == backend], 10,
            what=f"delivery attempt failed for {backend} in mailgate's log")[-1]
        self.assertEqual(line.get("class"), "tls", line)
        time.sleep(1.0)
        self.assertEqual(self.postfix.maildir_files(rcpt), [])
        self.assertNotIn(f"to=<{rcpt}>", self.postfix.log_text())
        self.assertNotRegex(self.postfix.log_text(), rf"RCPT TO:<{re.escape(rcpt)}>|<{re.escape(rcpt)}>")

    def test_node_certificate_from_unknown_ca_not_delivered_451(self):
        self._not_delivered(self.badca, "tls-badca")

    def test_node_certificate_wrong_name_not_delivered_451(self):
        self._not_delivered(self.wrongname, "tls-wrongname")


if __name__ == "__main__":
    unittest.main()
