"""Listeners with proxy_protocol: true, behind a balancer that speaks HAProxy's PROXY
protocol (v1 text, v2 binary). The client's address from the header is what the
storage node sees (IMAP ID x-originating-ip, POP3 and SMTP XCLIENT ADDR) and what the
gateway logs; a connection without a valid header is closed without a reply.
Clients: curl --haproxy-protocol, and Python's imaplib/poplib/smtplib on sockets
that send the header first, as a balancer does."""

from __future__ import annotations

import imaplib
import json
import poplib
import smtplib
import socket
import ssl
import struct
import subprocess
import time
import unittest
from pathlib import Path

import harness
from fixtures import ALICE, ALICE_PW, USERS
from test_smtp import FakeNode

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src: str, sport: int, dst: str = "127.0.0.1", dport: int = 143) -> bytes:
    family = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src: str, sport: int, dst: str, dport: int, tlvs: bytes = b"") -> bytes:
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    body = socket.inet_pton(fam, src) + socket.inet_pton(fam, dst) + struct.pack("!HH", sport, dport) + tlvs
    return SIG + bytes([0x21, 0x21 if fam == socket.AF_INET6 else 0x11]) + struct.pack("!H", len(body)) + body


V2_LOCAL = SIG + b"\x20\x00\x00\x00"


def proxied(port: int, header: bytes, timeout: float = 10) -> socket.socket:
    s = socket.create_connection((harness.HOST, port), timeout=timeout)
    s.sendall(header)
    return s


class ProxiedIMAP4(imaplib.IMAP4):
    def __init__(self, port: int, header: bytes):
        self.header = header
        super().__init__(harness.HOST, port, timeout=10)

    def _create_socket(self, timeout):
        return proxied(self.port, self.header)


class ProxiedIMAP4_SSL(imaplib.IMAP4_SSL):
    def __init__(self, port: int, header: bytes, context: ssl.SSLContext):
        self.header = header
        super().__init__(harness.HOST, port, ssl_context=context, timeout=10)

    def _create_socket(self, timeout):
        return self.ssl_context.wrap_socket(proxied(self.port, self.header), server_hostname=self.host)


class ProxiedPOP3(poplib.POP3):
    def __init__(self, port: int, header: bytes):
        self.header = header
        super().__init__(harness.HOST, port, timeout=10)

    def _create_socket(self, timeout):
        return proxied(self.port, self.header)


class ProxiedSMTP(smtplib.SMTP):
    def __init__(self, port: int, header: bytes):
        self.header = header
        super().__init__(harness.HOST, port, timeout=20)

    def _get_socket(self, host, port, timeout):
        return proxied(port, self.header)


class ProxyProtocolTest(harness.Daemons, harness.LogsOnFailure, unittest.TestCase):
    DAEMONS = ("gateway", "dovecot", "node")

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-proxy-"))
        cls.dovecot, cls.node, cls.gateway = None, None, None
        try:
            certs = cls.dir / "certs"
            ca = harness.make_ca(certs)
            cert = harness.make_cert(ca, certs, ["mail.example.org"])
            cls.context = harness.client_context(ca.cert)
            cls.dovecot = harness.Dovecot(cls.dir / "storage", USERS, name="pp").start()
            cls.node = FakeNode()  # the LMTP node: it records XCLIENT
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            names = ["imap", "imaps", "pop3", "mx", "imap_slow"]
            cls.ports = dict(zip(names, harness.free_ports(len(names))))
            pp = {"proxy_protocol": True}
            plain = {"allow_plaintext_auth": True, **pp}
            listeners = [
                {"name": "imap", "protocol": "imap", "port": cls.ports["imap"], **plain},
                {"name": "imaps", "protocol": "imap", "port": cls.ports["imaps"], "tls": "implicit", **pp},
                {"name": "pop3", "protocol": "pop3", "port": cls.ports["pop3"], **plain},
                {"name": "mx", "protocol": "smtp", "port": cls.ports["mx"], **pp},
                {"name": "imap_slow", "protocol": "imap", "port": cls.ports["imap_slow"], "preauth_timeout": "1s",
                 **plain},
            ]
            # Dovecot serves IMAP and POP3; the fake node has only LMTP, so it takes the mail.
            backends = [{"name": "dovecot", "imap": cls.dovecot.imap_port, "pop3": cls.dovecot.pop3_port,
                         "health_interval": "1s", "health_timeout": "1s"},
                        {"name": "fake", "lmtp": cls.node.port, "health_interval": "1h", "health_timeout": "1s"}]
            text = harness.mailgate_config(certificates=[cert], listeners=listeners, users_file=users_file,
                                           backends=backends,
                                           routes=[{"domain": "*", "primary": "dovecot", "secondary": "fake"}])
            cls.gateway = harness.Mailgate(cls.dir, text).start()
        except BaseException:
            cls._stop()
            raise

    def diagnostics(self) -> str:
        return (f"--- mailgate log (tail) ---\n{self.gateway.log_text()[-4000:]}\n"
                f"--- dovecot log (tail) ---\n{self.dovecot.log_text()[-2000:]}")

    def session_ends(self) -> list[dict]:
        out = []
        for line in self.gateway.log_text().splitlines():
            if '"session end"' in line:
                out.append(json.loads(line))
        return out

    def wait_session_end(self, client: str) -> dict:
        found = []
        harness.wait_for(lambda: found.extend(e for e in self.session_ends() if e.get("client") == client) or found,
                         10, what=f"the session end line for {client}")
        return found[-1]

    def dovecot_saw(self, rip: str) -> None:
        harness.wait_for(lambda: f"rip={rip}," in self.dovecot.log_text(), 10,
                         what=f"Dovecot's login line with rip={rip}")

    # ------------------------------------------------------------------ IMAP
    def test_imap_v1_address_reaches_dovecot(self):
        imap = ProxiedIMAP4(self.ports["imap"], v1("203.0.113.7", 40001))
        try:
            self.assertEqual(imap.login(ALICE, ALICE_PW)[0], "OK")
            imap.logout()
        finally:
            harness.close_imap(imap)
        self.dovecot_saw("203.0.113.7")
        self.assertEqual(self.wait_session_end("203.0.113.7:40001")["user"], ALICE)

    def test_imaps_v2_ipv6_header_before_tls(self):
        header = v2("2001:db8::7", 40002, "::1", 993, tlvs=b"\x04\x00\x03abc")  # a NOOP TLV, skipped
        imap = ProxiedIMAP4_SSL(self.ports["imaps"], header, self.context)
        try:
            self.assertEqual(imap.login(ALICE, ALICE_PW)[0], "OK")
            imap.logout()
        finally:
            harness.close_imap(imap)
        self.dovecot_saw("2001:db8::7")
        end = self.wait_session_end("2001:db8::7:40002")
        self.assertTrue(end["tls_version"].startswith("TLSv1."), end)

    def test_curl_haproxy_protocol(self):
        proc = subprocess.run(["curl", "-sS", "--max-time", "20", "--haproxy-protocol", "-u", f"{ALICE}:{ALICE_PW}",
                               f"imap://{harness.HOST}:{self.ports['imap']}/"],
                              capture_output=True, text=True, timeout=30)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("INBOX", proc.stdout)

    def test_v2_local_is_the_balancers_health_check(self):
        s = proxied(self.ports["imap"], V2_LOCAL)
        try:
            self.assertTrue(s.recv(256).startswith(b"* OK"))
        finally:
            s.close()

    # ------------------------------------------------------------------ POP3
    def test_pop3_v1_address_reaches_dovecot_by_xclient(self):
        pop = ProxiedPOP3(self.ports["pop3"], v1("198.51.100.23", 40003, dport=110))
        try:
            pop.user(ALICE)
            self.assertTrue(pop.pass_(ALICE_PW).startswith(b"+OK"))
            pop.quit()
        finally:
            pop.close()
        self.dovecot_saw("198.51.100.23")

    def test_pop3_v1_unknown_keeps_the_connections_address(self):
        before = len(self.session_ends())
        pop = ProxiedPOP3(self.ports["pop3"], b"PROXY UNKNOWN\r\n")
        try:
            pop.user(ALICE)
            self.assertTrue(pop.pass_(ALICE_PW).startswith(b"+OK"))
            pop.quit()
        finally:
            pop.close()
        harness.wait_for(lambda: len(self.session_ends()) > before, 10, what="the session end line")
        self.assertTrue(self.session_ends()[-1]["client"].startswith("127.0.0.1:"))

    # ------------------------------------------------------------------ SMTP
    def test_smtp_v2_address_in_xclient_and_received(self):
        with ProxiedSMTP(self.ports["mx"], v2("192.0.2.44", 40004, "127.0.0.1", 25)) as s:
            s.ehlo("client.example.com")
            self.assertEqual(s.sendmail("sender@example.com", [ALICE], b"Subject: pp\r\n\r\nx\r\n"), {})
        t = self.node.delivered()[-1]
        self.assertRegex(t["commands"][1], r"^XCLIENT ADDR=192\.0\.2\.44 PORT=40004 HELO=client\.example\.com ")
        self.assertIn(b"[192.0.2.44]", t["data"].split(b"\r\n", 1)[0])  # the Received: line

    # ------------------------------------------------------------------ refusals
    def test_a_client_without_header_is_closed_without_reply(self):
        s = socket.create_connection((harness.HOST, self.ports["imap"]), timeout=10)
        try:
            s.sendall(b"a1 LOGIN alice@example.org alice-password\r\n")
            self.assertEqual(s.recv(256), b"")  # no greeting, no reply: closed
        finally:
            s.close()
        harness.wait_for(lambda: "PROXY protocol header refused" in self.gateway.log_text(), 5, what="the log line")
        harness.wait_for(lambda: any(e["outcome"] == "proxy_protocol_error" for e in self.session_ends()), 5,
                         what="the session end line")

    def test_bad_headers_are_refused(self):
        for header in (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
                       SIG + b"\x21\x12\x00\x0c" + bytes(12), b"PROXY UNKNOWN " + b"x" * 200):
            with self.subTest(header=header[:40]):
                s = proxied(self.ports["imap"], header)
                try:
                    self.assertEqual(s.recv(256), b"")
                finally:
                    s.close()

    def test_a_silent_peer_is_closed_in_time(self):
        started = time.monotonic()
        s = socket.create_connection((harness.HOST, self.ports["imap_slow"]), timeout=10)
        try:
            self.assertEqual(s.recv(256), b"")
        finally:
            s.close()
        self.assertLess(time.monotonic() - started, 5)
        harness.wait_for(lambda: "no PROXY protocol header in time" in self.gateway.log_text(), 5,
                         what="the log line")


if __name__ == "__main__":
    unittest.main()
