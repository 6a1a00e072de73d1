"""The standard integration set-up: a CA with two server certificates, one or two
Dovecot nodes with the same users, and mailgate in front with implicit-TLS and
STARTTLS listeners for IMAP and POP3 (and a short-timeout listener for each)."""

from __future__ import annotations

import unittest
from pathlib import Path

import harness

USERS = {
    "alice@example.org": "alice-password",
    "bob@example.org": "bob-password",
    "carol@example.net": "carol-password",
}
ALICE, ALICE_PW = "alice@example.org", "alice-password"
BOB, BOB_PW = "bob@example.org", "bob-password"

# Names in the two certificates. The first certificate is the default.
ORG_NAMES = ["mail.example.org", "imap.example.org"]
NET_NAMES = ["mail.example.net"]

IMAP_MAX_LINE = 1024
IMAP_MAX_LITERAL = 4096
MAX_BAD = 3
PREAUTH_TIMEOUT_S = 1


class GatewayEnv:
    """Everything one test class needs; build with GatewayEnv(nodes=1|2).start()."""

    def __init__(self, nodes: int = 1, name: str = "it", users: dict | None = None,
                 gateway_passwd=None):
        """users: {user: password} on every node and in the gateway's directory.
        gateway_passwd: optional callable(path) that writes the gateway's passwd-file."""
        self.users = dict(users or USERS)
        self.gateway_passwd = gateway_passwd
        self.dir = Path(harness.make_workdir(f"mailgate-{name}-"))
        self.nodes_count = nodes
        self.ca = None
        self.dovecots: list[harness.Dovecot] = []
        self.gateway: harness.Mailgate | None = None
        self.ports: dict[str, int] = {}

    # -- building blocks
    def start(self, listener_overrides: dict | None = None) -> "GatewayEnv":
        try:
            self._start(listener_overrides or {})
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, overrides: dict) -> None:
        certs = self.dir / "certs"
        self.ca = harness.make_ca(certs)
        self.cert_org = harness.make_cert(self.ca, certs, ORG_NAMES)
        self.cert_net = harness.make_cert(self.ca, certs, NET_NAMES)
        self.context = harness.client_context(self.ca.cert)

        for i in range(self.nodes_count):
            d = harness.Dovecot(self.dir / f"storage-{i + 1:02d}", self.users, name=f"s{i + 1}")
            d.start()
            self.dovecots.append(d)

        self.users_file = str(self.dir / "users.passwd")
        if self.gateway_passwd is not None:
            self.gateway_passwd(self.users_file)
        else:
            harness.write_passwd(self.users_file, self.users)

        names = ["imaps", "imap", "imap_short", "pop3s", "pop3", "pop3_short"]
        self.ports = dict(zip(names, harness.free_ports(len(names))))
        imap_bounds = {"max_line": IMAP_MAX_LINE, "max_literal": IMAP_MAX_LITERAL,
                       "max_bad_commands": MAX_BAD, "preauth_timeout": "30s"}
        pop3_bounds = {"max_bad_commands": MAX_BAD, "preauth_timeout": "30s"}
        short = {"preauth_timeout": f"{PREAUTH_TIMEOUT_S}s"}
        self.listeners = [
            {"name": "imaps", "protocol": "imap", "port": self.ports["imaps"], "tls": "implicit", **imap_bounds},
            {"name": "imap", "protocol": "imap", "port": self.ports["imap"], "tls": "starttls", **imap_bounds},
            {"name": "imap_short", "protocol": "imap", "port": self.ports["imap_short"], "tls": "implicit", **short},
            {"name": "pop3s", "protocol": "pop3", "port": self.ports["pop3s"], "tls": "implicit", **pop3_bounds},
            {"name": "pop3", "protocol": "pop3", "port": self.ports["pop3"], "tls": "starttls", **pop3_bounds},
            {"name": "pop3_short", "protocol": "pop3", "port": self.ports["pop3_short"], "tls": "implicit", **short},
        ]
        for l in self.listeners:
            l.update(overrides.get(l["name"], {}))
        self.gateway = harness.Mailgate(self.dir, self.config_text())
        self.gateway.start()

    def backends(self) -> list[dict]:
        return [{"name": f"storage-{i + 1:02d}", "imap": d.imap_port, "pop3": d.pop3_port,
                 "lmtp": d.lmtp_port, "health_interval": "1s", "health_timeout": "1s"}
                for i, d in enumerate(self.dovecots)]

    def config_text(self) -> str:
        backends = self.backends()
        secondary = backends[1]["name"] if len(backends) > 1 else None
        routes = [{"domain": "example.org", "primary": backends[0]["name"], "secondary": secondary},
                  {"domain": "*", "primary": backends[0]["name"], "secondary": secondary}]
        return harness.mailgate_config(certificates=[self.cert_org, self.cert_net],
                                       listeners=self.listeners, users_file=self.users_file,
                                       backends=backends, routes=routes)

    def stop(self) -> None:
        try:
            if self.gateway is not None:
                self.gateway.stop()  # may raise harness.SanitizerReport: the rest stops all the same
        finally:
            for d in self.dovecots:
                d.stop()
            harness.remove_workdir(self.dir)

    def diagnostics(self) -> str:
        out = []
        if self.gateway is not None:
            out.append("--- mailgate log (tail) ---\n" + self.gateway.log_text()[-4000:])
        for d in self.dovecots:
            out.append(f"--- {d.name} log (tail) ---\n" + d.log_text()[-2000:])
        return "\n".join(out)


class GatewayTestCase(harness.LogsOnFailure, unittest.TestCase):
    """Base class: one GatewayEnv per test class, torn down after the class."""

    NODES = 1
    USERS: dict | None = None
    LISTENER_OVERRIDES: dict | None = None
    env: GatewayEnv

    @classmethod
    def gateway_passwd(cls, path: str) -> None:
        harness.write_passwd(path, cls.USERS or USERS)
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.env = GatewayEnv(nodes=cls.NODES, name=cls.__name__.lower(), users=cls.USERS,
                             gateway_passwd=cls.gateway_passwd).start(cls.LISTENER_OVERRIDES)
        cls.prepare()

    @classmethod
    def prepare(cls):
        """Hook: deliver mail etc. once per class."""

    @classmethod
    def tearDownClass(cls):
        env = getattr(cls, "env", None)
        if env is not None:
            env.stop()

    def diagnostics(self) -> str:
        return self.env.diagnostics()

    def port(self, name: str) -> int:
        return self.env.ports[name]

    def explain(self) -> str:
        return self.env.diagnostics()
