"""mailgate to a storage node that itself requires TLS: implicit TLS and STARTTLS on
the backend side, certificate and name verification, and tls_verify: false.

One Dovecot node (ssl = required, certificate for storage-01.test from a test CA,
plain imap/pop3 listeners plus implicit imaps/pop3s listeners) and one mailgate in
front of it. The gateway has several backends that all point at that one node but
differ in their TLS settings; the user's domain picks the backend (routing.static),
so each scenario has its own users and the node's log can be searched per user.

Why the node listens on 127.0.0.2 with no login_trusted_networks: Dovecot counts a
connection as "secured" when it comes from a trusted network or when the remote and
local addresses are equal (loopback to itself). Either way ssl = required would let a
plaintext login through, and the tests could not tell a TLS link from a plain one.
With the gateway connecting from 127.0.0.1 to 127.0.0.2 and nothing trusted, the node
refuses every login that does not come over TLS (checked by test_0_node_*).
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import subprocess
import time
import unittest
from pathlib import Path

import harness

NODE_HOST = "127.0.0.2"  # the storage node; the gateway and the clients stay on 127.0.0.1
NODE_NAME = "storage-01.test"
WRONG_NAME = "wrong.test"

UNAVAILABLE_IMAP = "NO [UNAVAILABLE]"
UNAVAILABLE_POP3 = "-ERR [SYS/TEMP]"

# Scenario (= routing domain = backend name) -> how the gateway reaches the node.
#   mode: implicit | starttls; ca: "good" (signed the node's cert) | "other"; name: tls_name
#   (None = not set: the host, 127.0.0.2, is verified against the IP SAN); verify: tls_verify
#   (None = not set); ok: whether a login through this backend must succeed.
SCENARIOS = {
    "implicit":          dict(mode="implicit", ca="good", name=NODE_NAME, verify=None, ok=True),
    "implicit-ip":       dict(mode="implicit", ca="good", name=None, verify=True, ok=True),
    "starttls":          dict(mode="starttls", ca="good", name=NODE_NAME, verify=True, ok=True),
    "badca":             dict(mode="implicit", ca="other", name=NODE_NAME, verify=True, ok=False),
    "badca-starttls":    dict(mode="starttls", ca="other", name=NODE_NAME, verify=None, ok=False),
    "wrongname":         dict(mode="implicit", ca="good", name=WRONG_NAME, verify=True, ok=False),
    "wrongname-starttls": dict(mode="starttls", ca="good", name=WRONG_NAME, verify=True, ok=False),
    "noverify":          dict(mode="implicit", ca="other", name=NODE_NAME, verify=False, ok=True),
    "noverify-starttls": dict(mode="starttls", ca="other", name=WRONG_NAME, verify=False, ok=True),
}
PROTOCOLS = ("imap", "pop3")


def user_of(proto: str, scenario: str) -> str:
    return f"{proto}@{scenario}.test"


def password_of(proto: str, scenario: str) -> str:
    return f"pw-{proto}-{scenario}"


ALL_USERS = {user_of(p, s): password_of(p, s) for s in SCENARIOS for p in PROTOCOLS}
# Used only by the direct probes of the node (never through the gateway).
PROBE_USER, PROBE_PW = "probe@node.test", "probe-password"


# --------------------------------------------------------------------------- helpers

def make_node_cert(ca: harness.CA, directory: Path, names: list[str],
                   ips: list[str]) -> tuple[str, str]:
    """A server certificate for DNS names + IP addresses, signed by ca (harness.make_cert
    always names 127.0.0.1 only; the node here lives on 127.0.0.2)."""
    directory.mkdir(parents=True, exist_ok=True)
    base = names[0]
    key, csr, cert, ext = (directory / f"{base}.key", directory / f"{base}.csr",
                           directory / f"{base}.pem", directory / f"{base}.ext")
    san = ",".join([f"DNS:{n}" for n in names] + [f"IP:{ip}" for ip in ips])
    ext.write_text(f"subjectAltName={san}\n"
                   "basicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n")
    harness._openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                     "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={names[0]}")
    harness._openssl("x509", "-req", "-in", str(csr), "-CA", ca.cert, "-CAkey", ca.key,
                     "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    os.chmod(key, 0o600)
    return str(cert), str(key)


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise AssertionError(f"harness Dovecot config changed: {old!r} found "
                             f"{text.count(old)} times")
    return text.replace(old, new)


class TlsDovecot(harness.Dovecot):
    """harness.Dovecot with ssl = required, implicit imaps/pop3s listeners, on NODE_HOST,
    and no trusted networks (see the module docstring)."""

    def __init__(self, workdir, users, cert: tuple[str, str], host: str = NODE_HOST,
                 name: str = "tls-node"):
        self.node_host = host
        p = harness.free_ports(5, host)
        self.imaps_port, self.pop3s_port = p[3], p[4]
        super().__init__(workdir, users, ports={"imap": p[0], "pop3": p[1], "lmtp": p[2]},
                         ssl_cert=cert, name=name)

    def _write_files(self) -> None:
        super()._write_files()
        t = self.config_path.read_text()
        t = _replace_once(t, "ssl = yes\n", "ssl = required\nssl_min_protocol = TLSv1.2\n")
        t = _replace_once(t, "disable_plaintext_auth = no\n", "disable_plaintext_auth = yes\n")
        t = _replace_once(t, "login_trusted_networks = 127.0.0.0/8\n",
                          "# no login_trusted_networks: see tests/integration/test_backend_tls.py\n")
        t = _replace_once(t, "  inet_listener imaps {\n    port = 0\n  }",
                          f"  inet_listener imaps {{\n    address = {self.node_host}\n"
                          f"    port = {self.imaps_port}\n    ssl = yes\n  }}")
        t = _replace_once(t, "  inet_listener pop3s {\n    port = 0\n  }",
                          f"  inet_listener pop3s {{\n    address = {self.node_host}\n"
                          f"    port = {self.pop3s_port}\n    ssl = yes\n  }}")
        t = t.replace("listen = 127.0.0.1\n", f"listen = {self.node_host}\n")
        t = t.replace("address = 127.0.0.1\n", f"address = {self.node_host}\n")
        self.config_path.write_text(t)

    def all_ports(self) -> list[int]:
        return [self.imap_port, self.pop3_port, self.lmtp_port, self.imaps_port, self.pop3s_port]

    def start(self, timeout: float = 15.0) -> "TlsDovecot":
        if self.is_running():
            return self
        with open(self.workdir / "dovecot.stdout", "ab") as out:
            proc = subprocess.run(["dovecot", "-c", str(self.config_path)],
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"dovecot failed to start (exit {proc.returncode}):\n"
                               + (self.workdir / "dovecot.stdout").read_text()
                               + self.log_text())
        self._started = True
        try:
            for port in self.all_ports():
                harness.wait_port(port, timeout, self.node_host)
            harness.wait_for(self.is_running, timeout, 0.02, "dovecot master.pid")
        except TimeoutError as e:
            self.stop()
            raise RuntimeError(f"dovecot did not listen: {e}\n{self.log_text()}") from e
        return self

    def stop(self, grace: float = 1.0) -> None:
        super().stop(grace)
        for port in self.all_ports():
            try:
                harness.wait_port_closed(port, 5.0, self.node_host)
            except TimeoutError:
                pass


def add_backend_tls_keys(config: str, backend: str, keys: dict) -> str:
    """Inserts `key: value` lines after the `tls:` line of backend `backend` in a config
    rendered by harness.mailgate_config (which knows only `tls`)."""
    lines = config.split("\n")
    start = lines.index(f'  - name: "{backend}"')
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("    tls: "):
            extra = []
            for k, v in keys.items():
                if isinstance(v, bool):
                    v = "true" if v else "false"
                else:
                    v = harness.json.dumps(str(v))
                extra.append(f"    {k}: {v}")
            lines[i + 1:i + 1] = extra
            return "\n".join(lines)
        if lines[i].startswith("  - "):
            break
    raise AssertionError(f"no tls: line for backend {backend} in:\n{config}")


# --------------------------------------------------------------------------- the environment

class BackendTlsTest(harness.Daemons, harness.LogsOnFailure, unittest.TestCase):
    DAEMONS = ("gateway", "node")

    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-backendtls-"))
        cls.node = None
        cls.gateway = None
        try:
            cls._start()
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def _start(cls):
        certs = cls.dir / "certs"
        cls.ca = harness.make_ca(certs / "good", "mailgate backend test CA")
        cls.other_ca = harness.make_ca(certs / "other", "unrelated CA")
        node_cert = make_node_cert(cls.ca, certs / "node", [NODE_NAME], [NODE_HOST, "127.0.0.1"])
        gateway_cert = harness.make_cert(cls.ca, certs / "gateway", ["mail.example.org"])
        cls.context = harness.client_context(cls.ca.cert)

        users = dict(ALL_USERS)
        users[PROBE_USER] = PROBE_PW
        cls.node = TlsDovecot(cls.dir / "storage-01", users, node_cert)
        cls.node.start()

        users_file = str(cls.dir / "users.passwd")
        harness.write_passwd(users_file, ALL_USERS)

        cls.ports = dict(zip(("imaps", "pop3s"), harness.free_ports(2)))
        listeners = [
            {"name": "imaps", "protocol": "imap", "port": cls.ports["imaps"], "tls": "implicit"},
            {"name": "pop3s", "protocol": "pop3", "port": cls.ports["pop3s"], "tls": "implicit"},
        ]
        backends, routes = [], []
        for scenario, s in SCENARIOS.items():
            implicit = s["mode"] == "implicit"
            backends.append({
                "name": scenario, "host": NODE_HOST, "tls": s["mode"],
                "imap": cls.node.imaps_port if implicit else cls.node.imap_port,
                "pop3": cls.node.pop3s_port if implicit else cls.node.pop3_port,
                "health_interval": "2s", "health_timeout": "1s"})
            routes.append({"domain": f"{scenario}.test", "primary": scenario})
        config = harness.mailgate_config(certificates=[gateway_cert], listeners=listeners,
                                         users_file=users_file, backends=backends,
                                         routes=routes)
        for scenario, s in SCENARIOS.items():
            keys = {"tls_ca": cls.ca.cert if s["ca"] == "good" else cls.other_ca.cert}
            if s["verify"] is not None:
                keys["tls_verify"] = s["verify"]
            if s["name"] is not None:
                keys["tls_name"] = s["name"]
            config = add_backend_tls_keys(config, scenario, keys)
        cls.gateway = harness.Mailgate(cls.dir, config)
        cls.gateway.start()

    def diagnostics(self) -> str:
        return ("--- mailgate log (tail) ---\n" + self.gateway.log_text()[-4000:]
                + "\n--- dovecot log (tail) ---\n" + self.node.log_text()[-4000:])

    # ------------------------------------------------------------------ checks
    def node_login_line(self, proto: str, user: str, timeout: float = 5.0) -> str:
        """The node's `<proto>-login: Login: user=<user>, ...` line (waits for it)."""
        pattern = re.compile(rf"^.*{proto}-login: Info: Login: user=<{re.escape(user)}>,.*$", re.M)

        def find():
            m = pattern.search(self.node.log_text())
            return m.group(0) if m else None
        try:
            return harness.wait_for(find, timeout, 0.05, f"{proto} login of {user} on the node")
        except TimeoutError:
            self.fail(f"no {proto}-login Login line for {user} in the node's log\n"
                      + self.diagnostics())

    def assertLoggedInOverTls(self, proto: str, user: str) -> None:
        line = self.node_login_line(proto, user)
        # Dovecot's %c: "TLS" for a TLS connection, "secured" for a trusted/local plain one.
        self.assertRegex(line, r", TLS,", f"the node did not see TLS: {line}")
        self.assertIn(f"lip={NODE_HOST}", line)

    def assertNoAuthAttempt(self, user: str, settle: float = 1.0) -> None:
        """The user never reached the node's authentication (credentials never crossed)."""
        time.sleep(settle)  # give a (wrong) login the time to show up in the log
        log = self.node.log_text()
        hits = [l for l in log.splitlines() if user in l]
        self.assertEqual(hits, [], f"the node saw {user}:\n" + "\n".join(hits))

    def assertGatewayLoggedVerifyFailure(self, scenario: str) -> None:
        """The refusal came from certificate verification (not from a node that is down):
        the gateway logged a line naming the backend and the verification failure."""
        def find():
            return [obj for obj in self.gateway.log_lines()
                    if obj.get("backend") == scenario and "verif" in harness.json.dumps(obj)]
        try:
            harness.wait_for(find, 5, 0.05, f"a verification failure logged for {scenario}")
        except TimeoutError:
            self.fail(f"no log line with backend={scenario} mentioning the verification failure\n"
                      + self.diagnostics())

    # ------------------------------------------------------------------ clients
    def imap_login_ok(self, scenario: str) -> None:
        user, pw = user_of("imap", scenario), password_of("imap", scenario)
        imap = imaplib.IMAP4_SSL(harness.HOST, self.ports["imaps"], ssl_context=self.context,
                                 timeout=10)
        try:
            typ, data = imap.login(user, pw)
            self.assertEqual(typ, "OK", data)
            typ, data = imap.select("INBOX")
            self.assertEqual(typ, "OK", data)
            typ, data = imap.noop()
            self.assertEqual(typ, "OK", data)
            imap.logout()
        except imaplib.IMAP4.error as e:
            self.fail(f"IMAP login through backend {scenario} failed: {e}\n" + self.diagnostics())
        finally:
            harness.close_imap(imap)
        self.assertLoggedInOverTls("imap", user)

    def pop3_login_ok(self, scenario: str) -> None:
        user, pw = user_of("pop3", scenario), password_of("pop3", scenario)
        pop = poplib.POP3_SSL(harness.HOST, self.ports["pop3s"], context=self.context, timeout=10)
        try:
            pop.user(user)
            reply = pop.pass_(pw)
            self.assertTrue(reply.startswith(b"+OK"), reply)
            count, size = pop.stat()
            self.assertGreaterEqual(count, 0)
            pop.quit()
        except poplib.error_proto as e:
            self.fail(f"POP3 login through backend {scenario} failed: {e}\n" + self.diagnostics())
        finally:
            try:
                pop.close()
            except OSError:
                pass
        self.assertLoggedInOverTls("pop3", user)

    def imap_login_refused(self, scenario: str) -> None:
        user, pw = user_of("imap", scenario), password_of("imap", scenario)
        c, greeting = harness.imap_client(self.ports["imaps"], tls=True, context=self.context,
                                          timeout=15)
        self.addCleanup(c.close)
        self.assertTrue(greeting.startswith("* OK"), greeting)
        lines = c.command("a", f"LOGIN {harness.imap_quote(user)} {harness.imap_quote(pw)}")
        self.assertTrue(lines[-1].startswith(f"a {UNAVAILABLE_IMAP}"),
                        f"backend {scenario}: {lines}\n" + self.diagnostics())
        self.assertNoAuthAttempt(user)
        self.assertGatewayLoggedVerifyFailure(scenario)

    def pop3_login_refused(self, scenario: str) -> None:
        user, pw = user_of("pop3", scenario), password_of("pop3", scenario)
        c, greeting = harness.pop3_client(self.ports["pop3s"], tls=True, context=self.context,
                                          timeout=15)
        self.addCleanup(c.close)
        self.assertTrue(greeting.startswith("+OK"), greeting)
        c.send_line(f"USER {user}")
        self.assertTrue(c.read_line().startswith("+OK"))
        c.send_line(f"PASS {pw}")
        reply = c.read_line()
        self.assertTrue(reply is not None and reply.startswith(UNAVAILABLE_POP3),
                        f"backend {scenario}: {reply!r}\n" + self.diagnostics())
        self.assertNoAuthAttempt(user)
        self.assertGatewayLoggedVerifyFailure(scenario)

    # ------------------------------------------------------------------ the node itself
    def test_0_node_refuses_plaintext_login(self):
        """Fixture check: without TLS the node refuses the login (ssl = required bites)."""
        c = harness.LineClient(self.node.imap_port, host=NODE_HOST, timeout=10)
        self.addCleanup(c.close)
        greeting = c.read_line()
        self.assertIn("LOGINDISABLED", harness.capabilities(greeting), greeting)
        lines = c.command("a", f"LOGIN {harness.imap_quote(PROBE_USER)} {harness.imap_quote(PROBE_PW)}")
        self.assertTrue(lines[-1].startswith("a NO"), lines)
        c.close()

        c = harness.LineClient(self.node.pop3_port, host=NODE_HOST, timeout=10)
        self.addCleanup(c.close)
        self.assertTrue(c.read_line().startswith("+OK"))
        c.send_line(f"USER {PROBE_USER}")
        reply = c.read_line()
        if reply.startswith("+OK"):
            c.send_line(f"PASS {PROBE_PW}")
            reply = c.read_line()
        self.assertTrue(reply.startswith("-ERR"), reply)

    def test_0_node_accepts_tls_login(self):
        """Fixture check: over implicit TLS the node takes the probe user's login."""
        ctx = harness.client_context(self.ca.cert)
        c = harness.LineClient(self.node.imaps_port, host=NODE_HOST, tls=True, context=ctx,
                               server_hostname=NODE_NAME, timeout=10)
        self.addCleanup(c.close)
        self.assertTrue(c.read_line().startswith("* OK"))
        lines = c.command("a", f"LOGIN {harness.imap_quote(PROBE_USER)} {harness.imap_quote(PROBE_PW)}")
        self.assertTrue(lines[-1].startswith("a OK"), lines)
        c.command("b", "LOGOUT")

    # ------------------------------------------------------------------ implicit TLS
    def test_implicit_imap(self):
        self.imap_login_ok("implicit")

    def test_implicit_imap_bulk_both_ways(self):
        """A message larger than many TLS records goes up (APPEND) and comes back (FETCH)."""
        user, pw = user_of("imap", "implicit"), password_of("imap", "implicit")
        body = "".join(f"line {i:06d} {'x' * 60}\r\n" for i in range(4000))  # ~280 KB
        msg = (f"From: a@implicit.test\r\nTo: {user}\r\nSubject: bulk over backend TLS\r\n\r\n"
               + body).encode()
        imap = imaplib.IMAP4_SSL(harness.HOST, self.ports["imaps"], ssl_context=self.context,
                                 timeout=20)
        try:
            imap.login(user, pw)
            typ, data = imap.append("INBOX", None, None, msg)
            self.assertEqual(typ, "OK", data)
            typ, data = imap.select("INBOX")
            self.assertEqual(typ, "OK", data)
            typ, data = imap.search(None, "SUBJECT", '"bulk over backend TLS"')
            self.assertEqual(typ, "OK", data)
            typ, data = imap.fetch(data[0].split()[-1], "(BODY.PEEK[])")
            self.assertEqual(typ, "OK", data)
            self.assertEqual(data[0][1], msg)
            imap.logout()
        finally:
            harness.close_imap(imap)

    def test_implicit_pop3(self):
        self.pop3_login_ok("implicit")

    def test_implicit_verified_by_ip_san(self):
        """No tls_name: the host (an IP literal) is checked against the IP SAN."""
        self.imap_login_ok("implicit-ip")
        self.pop3_login_ok("implicit-ip")

    # ------------------------------------------------------------------ STARTTLS
    def test_starttls_imap(self):
        self.imap_login_ok("starttls")

    def test_starttls_pop3(self):
        self.pop3_login_ok("starttls")

    # ------------------------------------------------------------------ verification fails
    def test_wrong_ca_implicit_imap(self):
        self.imap_login_refused("badca")

    def test_wrong_ca_implicit_pop3(self):
        self.pop3_login_refused("badca")

    def test_wrong_ca_starttls_imap(self):
        self.imap_login_refused("badca-starttls")

    def test_wrong_ca_starttls_pop3(self):
        self.pop3_login_refused("badca-starttls")

    def test_wrong_name_implicit_imap(self):
        self.imap_login_refused("wrongname")

    def test_wrong_name_implicit_pop3(self):
        self.pop3_login_refused("wrongname")

    def test_wrong_name_starttls_imap(self):
        self.imap_login_refused("wrongname-starttls")

    def test_wrong_name_starttls_pop3(self):
        self.pop3_login_refused("wrongname-starttls")

    # ------------------------------------------------------------------ tls_verify: false
    def test_no_verify_wrong_ca_implicit(self):
        self.imap_login_ok("noverify")
        self.pop3_login_ok("noverify")

    def test_no_verify_wrong_ca_and_name_starttls(self):
        self.imap_login_ok("noverify-starttls")
        self.pop3_login_ok("noverify-starttls")

    # ------------------------------------------------------------------ gateway still fine
    def test_z_gateway_running(self):
        self.assertTrue(self.gateway.is_running(), self.diagnostics())


if __name__ == "__main__":
    unittest.main()
